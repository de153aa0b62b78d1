"""clsnorm against the PyTorch + transformers reference, alternately, in one invocation.

Called by bench/run.sh (which builds clsnorm and installs the reference's venv). Prints
Markdown tables with medians and clsnorm/reference ratios and writes everything it measured to
OUT/results.json. Sections:

  step   training step time on identical batches: MiniLM-L6 and a random BERT-base shape,
         batch 16/32 x sequence 64/128, at each --precisions (fp32, bf16, fp16: autocast on
         both sides), with achieved GFLOP/s next to the measured matmul peak of that dtype
  epoch  one full training epoch per task (wall time, non-pad tokens/s, dev metric, peak RSS)
         and the dev-set inference throughput of the same runs

--device cuda runs both sides on the GPU; --bin-dir and --model point at binaries and weights
elsewhere (e.g. a build copied to a GPU machine). The reference uses torch.optim.AdamW(fused=True),
PyTorch's fastest update (--reference-adamw default: its default path instead).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
REF = os.path.join(ROOT, "bench", "reference", "reference.py")
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
SHAPES = {  # (hidden, layers, intermediate) for the FLOP count
    "minilm": (384, 6, 1536),
    "base": (768, 12, 3072),
}


def run(cmd):
    """Runs cmd; returns (stdout, wall seconds, peak RSS in MiB)."""
    env = dict(os.environ, **QUIET_ENV)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN only as a maximum over all
    # children, so peak RSS comes from a /usr/bin/time wrapper when available.
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    rss = None
    for line in err.splitlines():
        if line.startswith("BENCH_MAXRSS_KB="):
            rss = int(line.split("=")[1]) / 1024
    return out, wall, rss


def timed(cmd):
    if not os.path.exists("/usr/bin/time"):
        return cmd
    return ["/usr/bin/time", "-f", "BENCH_MAXRSS_KB=%M"] + cmd


def last_json(text):
    return json.loads([l for l in text.splitlines() if l.startswith("{")][-1])


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def matmul_peak(threads, device, precision="fp32"):
    import torch

    torch.set_num_threads(threads)
    n = 2048 if device == "cpu" else 8192
    dt = getattr(torch, DTYPES[precision])
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def step_flops(model, batch, seq):
    """Matmul FLOPs of one training step (forward x 3: backward costs two forwards)."""
    h, layers, inter = SHAPES[model]
    per_token = layers * (8 * h * h + 4 * h * inter + 4 * seq * h)
    return 3 * (batch * seq * per_token + batch * 2 * h * h)


def step_section(a, results):
    for precision in a.precisions:
        step_table(a, results, precision)


def step_table(a, results, precision):
    peak = matmul_peak(a.threads, a.device, precision)
    results.setdefault("matmul_peak_gflops_by_precision", {})[precision] = peak
    if precision == "fp32":
        results["matmul_peak_gflops"] = peak
    n = 2048 if a.device == "cpu" else 8192
    print(f"\nMeasured {precision} matmul peak ({n}^3, {a.device}, {a.threads} threads): {peak:.1f} GFLOP/s\n")
    print(f"| model | batch x seq | precision | reference step s | clsnorm step s | ratio | clsnorm GFLOP/s | % of {precision} peak |")
    print("|---|---|---|---|---|---|---|---|")
    for model in a.step_models:
        reps = a.reps if model == "minilm" else max(2, a.reps // 2)
        for batch in (16, 32):
            for seq in (64, 128):
                m = a.model if model == "minilm" else "base"
                common = ["--model", m, "--batch", str(batch), "--seq", str(seq), "--reps", str(reps),
                          "--threads", str(a.threads), "--device", a.device, "--precision", precision]
                if model == "base":
                    common += ["--warmup", "1"]
                sides = {"reference": [], "clsnorm": []}
                parts = {side: {"forward": [], "backward": [], "update": []} for side in sides}
                for _ in range(a.rounds):
                    for side, cmd in (("reference", [PY, REF, "step"] + common + a.ref_adamw),
                                      ("clsnorm", [a.bench_step] + common)):
                        rec = last_json(run(cmd)[0])
                        sides[side] += rec["step_secs"]
                        for k in parts[side]:
                            parts[side][k] += rec[f"{k}_secs"]
                r, c = (statistics.median(sides[k]) for k in ("reference", "clsnorm"))
                gflops = step_flops(model, batch, seq) / c / 1e9
                results["step"].append({"model": model, "batch": batch, "seq": seq, "precision": precision,
                                        "reference": sides["reference"], "parts": parts,
                                        "clsnorm": sides["clsnorm"], "ratio": c / r, "clsnorm_gflops": gflops})
                print(f"| {model} | {batch} x {seq} | {precision} | {r:.3f} | {c:.3f} | {c / r:.2f} | {gflops:.0f} | {100 * gflops / peak:.0f}% |",
                      flush=True)


def clsnorm_epoch(a, task, variant, precision):
    out_dir = os.path.join(a.out, f"clsnorm-{task}-{variant}-{precision}")
    subprocess.run(["rm", "-rf", out_dir], check=True)
    cmd = [a.clsnorm, "finetune", "--model", a.model, "--task", task, "--data-dir", a.glue_dir, "--epochs", "1",
           "--seed", "1", "--threads", str(a.threads), "--device", a.device, "--quiet", "--output", out_dir,
           "--precision", precision]
    if a.max_steps:
        cmd += ["--max-steps", str(a.max_steps)]
    if variant == "grouped":
        cmd.append("--group-by-length")
    elif variant == "padded":
        cmd.append("--padded")
    _, wall, rss = run(timed(cmd))
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rec = json.loads(f.readline())
    dev = rec["dev"][0][1]
    return {
        "wall_secs": wall, "train_secs": rec["train_secs"], "eval_secs": rec["eval_secs"],
        "tokens_per_sec": rec["train_tokens_per_sec"], "dev": dev, "peak_rss_mib": rss,
        "phase_secs": rec.get("train_phase_secs"), "command": " ".join(cmd),
    }


def reference_epoch(a, task, precision):
    cmd = [PY, REF, "finetune", "--task", task, "--data", a.glue_dir, "--epochs", "1", "--seed", "1",
           "--threads", str(a.threads), "--model", a.model, "--device", a.device, "--precision", precision,
           *a.ref_adamw]
    if a.max_steps:
        cmd += ["--max-steps", str(a.max_steps)]
    out, wall, rss = run(timed(cmd))
    r = last_json(out)
    return {
        "wall_secs": wall, "train_secs": r["train_secs"], "eval_secs": r["eval_secs"],
        "tokens_per_sec": r["train_tokens"] / r["train_secs"], "dev": r["dev"], "peak_rss_mib": rss,
        "dev_tokens": r["dev_tokens"], "train_tokens": r["train_tokens"], "phase_secs": r.get("train_phase_secs"),
        "command": " ".join(cmd),
    }


def epoch_section(a, results):
    print("\n| task | precision | side | wall s | train s | non-pad tok/s | eval s | dev accuracy | peak RSS MiB | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task in a.tasks:
        for precision in a.precisions:
            ref = reference_epoch(a, task, precision)
            rows = {"reference": ref}
            for variant in a.variants:
                rows[f"clsnorm ({variant})"] = clsnorm_epoch(a, task, variant, precision)
            results["epoch"].append({"task": task, "precision": precision, **rows})
            for side, r in rows.items():
                acc = r["dev"].get("accuracy")
                rss = "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
                print(f"| {task} | {precision} | {side} | {r['wall_secs']:.1f} | {r['train_secs']:.1f} | {r['tokens_per_sec']:.0f} | "
                      f"{r['eval_secs']:.1f} | {acc:.4f} | {rss} | {r['wall_secs'] / ref['wall_secs']:.2f} |",
                      flush=True)
            phase_table(task, precision, rows)


PHASES = ["collate", "forward", "backward", "optimizer"]


def phase_table(task, precision, rows):
    """Training seconds by phase (each side's own timers around the same four phases), and each
    phase's ratio to the reference's."""
    ref = rows["reference"].get("phase_secs")
    if not ref:
        return
    print(f"\n{task} {precision}, training seconds by phase (ratio to the reference's):\n")
    print("| side | " + " | ".join(PHASES) + " | rest |")
    print("|---|" + "---|" * (len(PHASES) + 1))
    for side, r in rows.items():
        ph = r.get("phase_secs")
        if not ph:
            continue
        rest = r["train_secs"] - sum(ph[k] for k in PHASES)
        ref_rest = rows["reference"]["train_secs"] - sum(ref[k] for k in PHASES)
        cells = [f"{ph[k]:.1f} ({ph[k] / max(ref[k], 1e-9):.2f})" for k in PHASES]
        cells.append(f"{rest:.1f} ({rest / max(ref_rest, 1e-9):.2f})")
        print(f"| {side} | " + " | ".join(cells) + " |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", default=["step", "epoch"], choices=["step", "epoch"])
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    p.add_argument("--tasks", default="RTE,MRPC,SST-2")
    p.add_argument("--variants", default="plain,grouped", help="clsnorm variants, comma-separated: plain (the reference's batches, unpadded where the family can), padded (the same batches computed padded, --padded), grouped (--group-by-length)")
    p.add_argument("--max-steps", type=int, help="epoch section: stop each run after this many updates (a part of the epoch, the same on both sides)")
    p.add_argument("--step-models", default="minilm,base")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=6, help="timed steps per process (halved for base)")
    p.add_argument("--rounds", type=int, default=2, help="alternating processes per side and setting")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "out", datetime.date.today().isoformat()))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"), help="MiniLM-L6 directory")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--reference-adamw", default="fused", choices=["fused", "default"],
                   help="the reference's AdamW: fused (PyTorch's fastest) or its default path")
    p.add_argument("--bin-dir", help="directory with clsnorm and bench_step (default: target/release and its examples/)")
    a = p.parse_args()
    if a.bin_dir:
        a.clsnorm, a.bench_step = (os.path.abspath(os.path.join(a.bin_dir, b)) for b in ("clsnorm", "bench_step"))
    else:
        a.clsnorm = os.path.join(ROOT, "target", "release", "clsnorm")
        a.bench_step = os.path.join(ROOT, "target", "release", "examples", "bench_step")
    a.model = os.path.abspath(a.model)
    a.tasks, a.variants, a.step_models = a.tasks.split(","), a.variants.split(","), a.step_models.split(",")
    a.precisions = a.precisions.split(",")
    if any(p not in DTYPES for p in a.precisions):
        p.error(f"--precisions: expected some of {', '.join(DTYPES)}")
    a.ref_adamw = ["--fused-adamw"] if a.reference_adamw == "fused" else []
    a.glue_dir = os.path.abspath(a.glue_dir)
    os.makedirs(a.out, exist_ok=True)
    import torch

    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
        "cpu": cpu_model(), "threads": a.threads, "torch": torch.__version__, "device": a.device,
        "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None, "step": [], "epoch": [],
        "argv": sys.argv[1:], "reference_adamw": a.reference_adamw,
    }
    where = results["gpu"] or f"{results['cpu']}, {a.threads} threads"
    print(f"bench {results['date']} on {where}, torch {torch.__version__}")
    if "step" in a.sections:
        step_section(a, results)
    if "epoch" in a.sections:
        epoch_section(a, results)
    print(f"\nwrote {write_results(a.out, results)}")


def write_results(out, results):
    """Writes OUT/results.json whole (a temporary file renamed); returns its path."""
    path = os.path.join(out, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
