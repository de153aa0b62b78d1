"""Issue 20's RTE question: clsnorm vs the PyTorch reference over many seeds, same protocol.

Runs `clsnorm finetune` and `bench/reference/reference.py finetune` on one task for every
(normalizer, seed), one at a time, with the IsoBN code's protocol on both sides (last partial
batch dropped, warmup rounded down, nn.Linear's classifier init, dropout 0.1, lr 5e-5, batch 16,
max length 128, best of the epochs' dev accuracies). Results are appended to OUT/results.jsonl
as they finish, so the script can be stopped and started again: finished (side, norm, seed)
triples are skipped, and clsnorm's interrupted runs resume from their checkpoints. Several
processes may share the study (e.g. `--threads 1` each, one per core): each claims a triple
before running it (OUT/claims). Then
`--summarize` prints the comparison (mean, median, std per side; Mann-Whitney rank test;
bootstrap interval of the difference of means).

    GLUE_DIR=../shared/data/glue bench/.venv/bin/python bench/rte_seeds.py --seeds 1-10
    bench/.venv/bin/python bench/rte_seeds.py --summarize
"""

import argparse
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = ["--drop-last", "--warmup-rounding", "floor", "--classifier-init", "torch"]


def done(results):
    if not os.path.exists(results):
        return set()
    with open(results) as f:
        return {(r["side"], r["norm"], r["seed"]) for r in map(json.loads, f) if "best" in r}


def claim(out, side, norm, seed):
    """Claims a triple for this process (so that several study processes can share the work,
    e.g. one per core); a claim whose process is gone is taken over. Returns the claim's path,
    or None when another live process holds it."""
    d = os.path.join(out, "claims")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{side}-{norm}-s{seed}")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    os.kill(int(f.read().strip() or 0), 0)
                return None
            except (ProcessLookupError, ValueError):
                os.remove(path)  # stale: its process died
                continue
            except FileNotFoundError:
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    return None


def run_clsnorm(a, norm, seed):
    out = os.path.join(a.out, "runs", f"{a.task}-{norm}-s{seed}")
    exe = a.clsnorm
    if os.path.exists(os.path.join(out, "config.json")):
        cmd = [exe, "finetune", "--resume", out, "--threads", str(a.threads), "--quiet"]
    else:
        cmd = [exe, "finetune", "--task", a.task, "--data-dir", a.data, "--norm", norm,
               "--seed", str(seed), "--epochs", str(a.epochs), "--threads", str(a.threads),
               "--device", a.device, "--output", out, "--quiet", *PROTOCOL]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        epochs = [json.loads(l)["primary"] for l in f]
    return {"best": s["best_primary"], "epochs": epochs, "wall_secs": s["wall_secs"]}


def run_reference(a, norm, seed):
    cmd = [sys.executable, os.path.join(ROOT, "bench/reference/reference.py"), "finetune",
           "--task", a.task, "--data", a.data, "--norm", norm, "--seed", str(seed),
           "--epochs", str(a.epochs), "--threads", str(a.threads), "--eval-every-epoch",
           "--device", a.device,
           "--model", os.path.join(ROOT, "models/all-MiniLM-L6-v2"), *PROTOCOL]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    return {"best": r["best_accuracy"], "epochs": [e["accuracy"] for e in r["dev_per_epoch"]],
            "wall_secs": r["setup_secs"] + r["train_secs"] + r["eval_secs"]}


def mann_whitney_p(x, y):
    """Two-sided exact permutation p of the rank-sum statistic (normal approximation past
    20,000 permutations' worth: sampled)."""
    pooled = x + y
    ranks = {v: 0.0 for v in pooled}
    order = sorted(pooled)
    for v in ranks:
        first = order.index(v)
        ranks[v] = first + (order.count(v) + 1) / 2
    stat = lambda xs: sum(ranks[v] for v in xs)
    observed = stat(x)
    mean = len(x) * (len(pooled) + 1) / 2
    rng = random.Random(0)
    extreme = 0
    trials = 20000
    for _ in range(trials):
        perm = rng.sample(pooled, len(pooled))
        if abs(stat(perm[: len(x)]) - mean) >= abs(observed - mean) - 1e-12:
            extreme += 1
    return (extreme + 1) / (trials + 1)


def summarize(a):
    with open(os.path.join(a.out, "results.jsonl")) as f:
        rows = [json.loads(l) for l in f]
    rng = random.Random(1)
    print("| norm | side | runs | mean | median | std | min | max |")
    print("|---|---|---|---|---|---|---|---|")
    first = {}  # a triple run twice counts once (its first result)
    for r in rows:
        first.setdefault((r["side"], r["norm"], r["seed"]), r)
    groups = {}
    for (side, norm, _), r in first.items():
        groups.setdefault((norm, side), []).append(100 * r["best"])
    for (norm, side), v in sorted(groups.items()):
        m = sum(v) / len(v)
        sd = (sum((x - m) ** 2 for x in v) / max(1, len(v) - 1)) ** 0.5
        med = sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1: len(v) // 2 + 1]) / 2
        print(f"| {norm} | {side} | {len(v)} | {m:.2f} | {med:.2f} | {sd:.2f} | {min(v):.2f} | {max(v):.2f} |")
    print()
    # Per seed, and the mean dev accuracy after each epoch (training dynamics side by side).
    def epochs_of(side, norm):
        return [r["epochs"] for k, r in first.items() if k[:2] == (side, norm) and r.get("epochs")]

    cols = [(n, side) for n in sorted({n for n, _ in groups}) for side in ("clsnorm", "reference")]
    print("| seed | " + " | ".join(f"{n} {side}" for n, side in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for seed in sorted({k[2] for k in first}):
        cells = [first.get((side, n, seed)) for n, side in cols]
        print(f"| {seed} | " + " | ".join(f"{100 * c['best']:.2f}" if c else "" for c in cells) + " |")
    print()
    print("| norm | side | runs | mean dev accuracy after epoch 1 / 2 / 3 |")
    print("|---|---|---|---|")
    for n, side in cols:
        eps = epochs_of(side, n)
        if eps:
            means = [100 * sum(e[i] for e in eps) / len(eps) for i in range(min(map(len, eps)))]
            print(f"| {n} | {side} | {len(eps)} | " + " / ".join(f"{m:.2f}" for m in means) + " |")
    print()
    for n in sorted({n for n, _ in groups}):
        per_side = [epochs_of(side, n) for side in ("clsnorm", "reference")]
        if min(map(len, per_side)) < 2:
            continue
        parts = []
        for i in range(min(len(e) for side in per_side for e in side)):
            x, y = ([100 * e[i] for e in side] for side in per_side)
            parts.append(f"epoch {i + 1} {sum(x) / len(x) - sum(y) / len(y):+.2f} (p {mann_whitney_p(x, y):.2f})")
        print(f"{n} per epoch, clsnorm - reference: " + ", ".join(parts))
    print()
    for norm in sorted({n for n, _ in groups}):
        x, y = groups.get((norm, "clsnorm"), []), groups.get((norm, "reference"), [])
        if len(x) < 2 or len(y) < 2:
            continue
        diffs = sorted(
            sum(rng.choices(x, k=len(x))) / len(x) - sum(rng.choices(y, k=len(y))) / len(y)
            for _ in range(10000)
        )
        d = sum(x) / len(x) - sum(y) / len(y)
        print(f"{norm}: clsnorm - reference = {d:+.2f} points, 95% bootstrap interval "
              f"[{diffs[250]:+.2f}, {diffs[9750]:+.2f}], Mann-Whitney p = {mann_whitney_p(x, y):.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="RTE")
    p.add_argument("--data", default=os.environ.get("GLUE_DIR"))
    p.add_argument("--norms", default="none,isobn")
    p.add_argument("--seeds", default="1-10", help="A-B or a comma list")
    p.add_argument("--sides", default="clsnorm,reference")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda, for both sides")
    p.add_argument("--clsnorm", default=os.path.join(ROOT, "target/release/clsnorm"),
                   help="the clsnorm binary (a copy keeps a long study off a binary being rebuilt)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench/out/rte-seeds"))
    p.add_argument("--summarize", action="store_true")
    a = p.parse_args()
    if a.summarize:
        return summarize(a)
    if not a.data:
        sys.exit("give --data or set GLUE_DIR")
    a.data = os.path.abspath(a.data)
    seeds = (range(int(a.seeds.split("-")[0]), int(a.seeds.split("-")[1]) + 1)
             if "-" in a.seeds else [int(s) for s in a.seeds.split(",")])
    os.makedirs(a.out, exist_ok=True)
    results = os.path.join(a.out, "results.jsonl")
    for seed in seeds:
        for norm in a.norms.split(","):
            for side in a.sides.split(","):
                if (side, norm, seed) in done(results):
                    continue
                held = claim(a.out, side, norm, seed)
                if held is None:
                    continue
                try:
                    if (side, norm, seed) in done(results):
                        continue
                    r = (run_clsnorm if side == "clsnorm" else run_reference)(a, norm, seed)
                    r.update({"side": side, "norm": norm, "seed": seed, "task": a.task})
                    with open(results, "a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(json.dumps(r), flush=True)
                finally:
                    os.remove(held)


if __name__ == "__main__":
    sys.exit(main())
