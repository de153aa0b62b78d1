"""Where the [CLS] gradient goes, per run of the raw-cls-cpu sweep (issue 24).

all-MiniLM-L6-v2's last LayerNorm has two dead output dimensions (weight ~5e-33: the raw [CLS]
is constant there) and one dimension with a large constant offset (dimension 99, mean ~5.5,
over half of the second moment). A normalizer that divides by a per-dimension std multiplies
the gradient of a dead dimension by 1/sqrt(eps). This script measures, from each traced run's
grads.jsonl, which [CLS] dimension carries the largest gradient and how much of the squared
gradient norm it holds, and the gradient norms of the last layer and of the classifier; and,
from the fine-tuned checkpoints on this machine (seed 1), the last LayerNorm's weight in the
dead dimensions, before and after fine-tuning.

    bench/.venv/bin/python bench/raw_cls_dims.py runs/raw-cls-cpu \
        --weights docs/results/raw-cls-cpu/dims-weights.json > docs/results/raw-cls-cpu/dims.md

--weights keeps the fine-tuned weights' values once measured, so that the table keeps them after
the checkpoints are gone (a new machine gets the runs back from their archives without them).
"""
import argparse
import collections
import json
import pathlib
import statistics
import sys

import numpy as np
from safetensors.numpy import load_file

LN = "encoder.layer.{}.output.LayerNorm.weight"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=pathlib.Path)
    ap.add_argument("--model", type=pathlib.Path, default=pathlib.Path("models/all-MiniLM-L6-v2"))
    ap.add_argument("--weights", type=pathlib.Path, help="JSON cache of the fine-tuned weights")
    a = ap.parse_args()
    cache = json.loads(a.weights.read_text()) if a.weights and a.weights.is_file() else {}
    pre = load_file(str(a.model / "model.safetensors"))
    layers = 1 + max(int(k.split(".")[2]) for k in pre if k.startswith("encoder.layer."))
    ln = LN.format(layers - 1)
    gamma0 = np.abs(pre[ln])
    # Dead: a weight so small that the output is constant to float precision.
    dead = [int(i) for i in np.argsort(gamma0) if gamma0[i] < 1e-6]
    listed = ", ".join(f"{d} ({gamma0[d]:.2g})" for d in dead)
    print(f"Pre-trained `{ln}`: |weight| below 1e-6 in dimensions {listed}; "
          f"median {np.median(gamma0):.3f}.\n")
    print("Per run (median over its updates): the [CLS] dimension with the largest gradient most "
          "often (and in how many updates), that dimension's share of ||dL/d[CLS]||^2, "
          "||dL/d[CLS]||, and the gradient norms of the last encoder layer and the classifier. "
          "Seed-1 runs whose best checkpoint is on this machine: the fine-tuned |weight| of the "
          "dead dimensions.\n")
    names = " / ".join(str(d) for d in dead)
    print(f"| run | top dimension (updates) | its share | dL/d[CLS] | last layer | classifier "
          f"| \\|weight\\| of {names} after |")
    print("|---|---|---|---|---|---|---|")
    last_group = f"layer.{layers - 1:02d}"
    for run in sorted(p for p in a.sweep.iterdir() if (p / "grads.jsonl").is_file()):
        summary = run / "summary.json"
        if not summary.is_file() or json.loads(summary.read_text()).get("interrupted", True):
            continue
        recs = []
        for line in (run / "grads.jsonl").read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if not recs:
            continue
        dim, count = collections.Counter(r["max_dim"] for r in recs).most_common(1)[0]
        med = lambda f: statistics.median(f(r) for r in recs)
        share = med(lambda r: (r["max_dim_grad"] / r["cls_grad_norm"]) ** 2 if r["cls_grad_norm"] else 0)
        best = run / "best" / "model.safetensors"
        if run.name.endswith("_s1") and run.name not in cache and best.is_file():
            g = np.abs(load_file(str(best))[ln])
            cache[run.name] = {str(d): float(g[d]) for d in dead}
        kept = cache.get(run.name) if run.name.endswith("_s1") else None
        after = " / ".join(f"{kept[str(d)]:.2g}" for d in dead) if kept else "–"
        print(f"| {run.name} | {dim} ({count}/{len(recs)}) | {share:.2f} | "
              f"{med(lambda r: r['cls_grad_norm']):.3f} | {med(lambda r: r['groups'][last_group]):.2f} | "
              f"{med(lambda r: r['groups']['classifier']):.2f} | {after} |")
    if a.weights:
        tmp = a.weights.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
        tmp.replace(a.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
