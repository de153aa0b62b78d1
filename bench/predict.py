"""`clsnorm predict` against a batched transformers text-classification pipeline (issue 36).

Both sides label the same TSV files (a `sentence` column, SST-2's layout) with the same
checkpoint and batch size, one process per side and file, alternately, --rounds times:

  clsnorm    clsnorm predict --checkpoint CKPT --input FILE --batch-size B --output ...
  pipeline   transformers.pipeline("text-classification", BertForSequenceClassification loaded
             from CKPT with clsnorm's head weights, batch_size=B, truncation to the same
             max_len, top_k=None), the way the transformers docs batch a pipeline

The checkpoint should be fine-tuned with `--cls-source pooler --norm none`: then HF's
BertForSequenceClassification computes exactly clsnorm's head, and the script checks that both
sides chose the same label for every example (and reports the largest probability difference).

Wall time is the whole process (imports, loading, reading, tokenizing, the model, writing);
the pipeline's own inference time (after loading) is reported beside it. Writes OUT/results.json.

    bench/.venv/bin/python bench/predict.py --checkpoint CKPT --inputs dev.tsv,train.tsv
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

from run import cpu_model, write_results  # bench/run.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def pipeline_worker(a):
    """One pipeline process: prints a JSON line with its timings."""
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertForSequenceClassification, pipeline

    torch.set_num_threads(a.threads)
    with open(os.path.join(a.checkpoint, "clsnorm.json")) as f:
        meta = json.load(f)
    classes = meta["head"]["labels"]["classes"]
    max_len = meta.get("max_len") or a.max_len
    model = BertForSequenceClassification.from_pretrained(a.checkpoint, num_labels=len(classes))
    head = load_file(os.path.join(a.checkpoint, "head.safetensors"))
    with torch.no_grad():
        model.classifier.weight.copy_(head["classifier.weight"])
        model.classifier.bias.copy_(head["classifier.bias"])
    model.config.id2label = dict(enumerate(classes))
    model.config.label2id = {c: i for i, c in enumerate(classes)}
    model.eval()
    tok = AutoTokenizer.from_pretrained(a.checkpoint)
    clf = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    with open(a.input, newline="") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = header.index("sentence")
        texts = [line.rstrip("\n").split("\t")[col] for line in f]
    t_loaded = time.perf_counter()
    out = clf(texts, batch_size=a.batch_size, truncation=True, max_length=max_len, top_k=None)
    t_done = time.perf_counter()
    with open(a.output, "w") as f:
        for scores in out:
            probs = {s["label"]: s["score"] for s in scores}
            best = max(probs, key=probs.get)
            f.write(json.dumps({"label": best, "probabilities": {c: probs[c] for c in classes}}) + "\n")
    print(json.dumps({"load_secs": t_loaded - t0, "infer_secs": t_done - t_loaded, "examples": len(texts),
                      "max_len": max_len}))


def timed(cmd):
    """Runs cmd under /usr/bin/time; returns (stdout, wall seconds, peak RSS MiB)."""
    env = dict(os.environ, **QUIET_ENV)
    wrapped = ["/usr/bin/time", "-f", "BENCH_MAXRSS_KB=%M", *cmd] if os.path.exists("/usr/bin/time") else cmd
    t0 = time.perf_counter()
    p = subprocess.run(wrapped, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = None
    for line in p.stderr.splitlines():
        if line.startswith("BENCH_MAXRSS_KB="):
            rss = int(line.split("=")[1]) / 1024
    return p.stdout, wall, rss


def read_predictions(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def compare(ours, theirs):
    """Examples whose labels differ, and the largest probability difference."""
    if len(ours) != len(theirs):
        sys.exit(f"bench: {len(ours)} predictions from clsnorm, {len(theirs)} from the pipeline")
    differ = sum(o["label"] != t["label"] for o, t in zip(ours, theirs))
    dp = max(abs(x - y) for o, t in zip(ours, theirs) for x, y in ((o["probabilities"][c], t["probabilities"][c]) for c in t["probabilities"]))
    return differ, dp


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--inputs", help="comma-separated TSV files with a sentence column")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-len", type=int, default=128, help="if the checkpoint does not record one")
    p.add_argument("--clsnorm", default=os.path.join(ROOT, "target", "release", "clsnorm"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "out", f"predict-{datetime.date.today().isoformat()}"))
    p.add_argument("--pipeline-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.checkpoint = os.path.abspath(a.checkpoint)
    if a.pipeline_worker:
        return pipeline_worker(a)
    if not a.inputs:
        p.error("--inputs is required")
    os.makedirs(a.out, exist_ok=True)
    import torch
    import transformers

    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
               "threads": a.threads, "torch": torch.__version__, "transformers": transformers.__version__,
               "batch_size": a.batch_size, "checkpoint": a.checkpoint, "argv": sys.argv[1:], "files": []}
    print(f"bench {results['date']} on {results['cpu']}, {a.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, batch {a.batch_size}")
    print("\n| file | examples | side | wall s (median) | inference s | peak RSS MiB | wall ratio |")
    print("|---|---|---|---|---|---|---|")
    for path in a.inputs.split(","):
        path = os.path.abspath(path)
        name = os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)
        ours_out = os.path.abspath(os.path.join(a.out, "clsnorm-" + name.replace("/", "-") + ".jsonl"))
        theirs_out = os.path.abspath(os.path.join(a.out, "pipeline-" + name.replace("/", "-") + ".jsonl"))
        ours_cmd = [a.clsnorm, "predict", "--checkpoint", a.checkpoint, "--input", path, "--batch-size",
                    str(a.batch_size), "--threads", str(a.threads), "--device", "cpu", "--output", ours_out,
                    "--overwrite"]
        theirs_cmd = [sys.executable, os.path.abspath(__file__), "--pipeline-worker", "--checkpoint", a.checkpoint,
                      "--input", path, "--output", theirs_out, "--batch-size", str(a.batch_size),
                      "--threads", str(a.threads), "--max-len", str(a.max_len)]
        runs = {"clsnorm": [], "pipeline": []}
        for _ in range(a.rounds):
            out, wall, rss = timed(theirs_cmd)
            runs["pipeline"].append({"wall_secs": wall, "peak_rss_mib": rss, **json.loads(out.strip().splitlines()[-1])})
            _, wall, rss = timed(ours_cmd)
            runs["clsnorm"].append({"wall_secs": wall, "peak_rss_mib": rss})
        differ, dp = compare(read_predictions(ours_out), read_predictions(theirs_out))
        n = runs["pipeline"][0]["examples"]
        med = {s: statistics.median(r["wall_secs"] for r in rs) for s, rs in runs.items()}
        infer = statistics.median(r["infer_secs"] for r in runs["pipeline"])
        for side in ("pipeline", "clsnorm"):
            rss = max(r["peak_rss_mib"] or 0 for r in runs[side])
            inf = f"{infer:.1f}" if side == "pipeline" else "-"
            print(f"| {name} | {n} | {side} | {med[side]:.1f} | {inf} | {rss:.0f} | {med[side] / med['pipeline']:.2f} |",
                  flush=True)
        print(f"\n{name}: {differ} of {n} labels differ; largest probability difference {dp:.2e}\n")
        results["files"].append({"file": path, "examples": n, "runs": runs, "median_wall_secs": med,
                                 "ratio": med["clsnorm"] / med["pipeline"], "pipeline_infer_secs": infer,
                                 "labels_differ": differ, "max_probability_diff": dp,
                                 "commands": {"clsnorm": " ".join(ours_cmd), "pipeline": " ".join(theirs_cmd)}})
    print(f"wrote {write_results(a.out, results)}")


if __name__ == "__main__":
    main()
