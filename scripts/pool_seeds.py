#!/usr/bin/env python3
"""Pools the paired differences to `none` of replications of one sweep: the results.json of
`clsnorm report` for each replication (e.g. the same sweep file run on the CPU and on a GPU,
whose seeds draw different dropout masks, so each replication's seeds are independent runs).

    python3 scripts/pool_seeds.py CPU/results.json GPU/results.json[+OTHER/results.json]

A `+` joins files into one replication; the first file holding a finished run wins. Prints,
per task and normalizer, each replication's per-seed best-epoch difference to `none` (same
seed, same replication), the mean over all pairs and the two-sided exact sign-flip p over all
pairs (the test of `clsnorm report`, src/report/stats.rs), as a Markdown table.
"""
import itertools
import json
import sys


def finished_runs(spec):
    runs = {}
    for path in spec.split("+"):
        with open(path) as f:
            for r in json.load(f)["runs"]:
                key = (r["task"], r["variant"], r["seed"])
                if r["status"] == "done" and r["best"] is not None and key not in runs:
                    runs[key] = r["best"]
    return runs


def sign_flip_p(diffs):
    observed = abs(sum(diffs))
    tol = 1e-9 * (1 + sum(abs(d) for d in diffs))
    hits = sum(
        abs(sum(-d if flip else d for d, flip in zip(diffs, signs))) >= observed - tol
        for signs in itertools.product((False, True), repeat=len(diffs))
    )
    return hits / 2 ** len(diffs)


def main(specs):
    reps = [finished_runs(s) for s in specs]
    keys = []
    for rep in reps:
        for (t, v, _) in rep:
            if v != "none" and (t, v) not in keys:
                keys.append((t, v))
    label = [s.split("+")[0].split("/")[-2] if "/" in s else s for s in specs]
    print("| task | normalizer | " + " | ".join(f"Δ per seed ({name})" for name in label)
          + " | pairs (+/−) | mean Δ | p |")
    print("|---|---|" + "---|" * len(specs) + "---|---|---|")
    for task, variant in keys:
        cells, pooled = [], []
        for rep in reps:
            d = [rep[(task, variant, s)] - rep[(task, "none", s)]
                 for (t, v, s) in sorted(rep) if (t, v) == (task, variant) and (task, "none", s) in rep]
            pooled += d
            cells.append(", ".join(f"{x:+.1f}" for x in d) or "–")
        if not pooled:
            continue
        pos = sum(d > 0 for d in pooled)
        neg = sum(d < 0 for d in pooled)
        print(f"| {task} | {variant} | " + " | ".join(cells)
              + f" | {len(pooled)} ({pos}/{neg}) | {sum(pooled) / len(pooled):+.1f} | {sign_flip_p(pooled):.3f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
