"""IsoBN's per-dimension scale, computed from the statistics a trained run saved, for the
dimensions the last LayerNorm of all-MiniLM-L6-v2 switches off (223, 127, 319) against the
median of the others: the [CLS] gradient through IsoBN is multiplied by the same factors.

    bench/.venv/bin/python bench/isobn_factors.py RUN/best ...   > isobn-factors.md

The scale is the official code's (src/normalize/isobn.rs): rho = clamp(C / (s s^T), -1, 1),
gamma_j = mean_k rho_jk^2, a = (gamma s + eps)^-beta, a *= sqrt(tr C / (sum_j C_jj a_j^2 + eps)),
with eps and beta from the checkpoint's clsnorm.json.
"""
import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import load_file

DEAD = [223, 127, 319]
print("Each cell: dimensions 223 / 127 / 319 ; the median of the other dimensions.\n")
print("| checkpoint | running std s | gamma (mean squared correlation) | scale a | "
      "a of 223 / 127 / 319 over the others' median | all dimensions: gamma min-max; "
      "a over its median: min / 5% / 95% / max |")
print("|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    ckpt = pathlib.Path(arg)
    norm = json.loads((ckpt / "clsnorm.json").read_text())["head"]["norm"]
    t = load_file(str(ckpt / "head.safetensors"))
    C = t["normalizer.running_cov"].astype(np.float64)
    s = t["normalizer.running_std"].astype(np.float64)
    rho = np.clip(C / np.outer(s, s), -1, 1)
    gamma = (rho ** 2).mean(1)
    a = (gamma * s + norm["eps"]) ** -norm["beta"]
    a *= np.sqrt(np.trace(C) / ((np.diag(C) * a ** 2).sum() + norm["eps"]))
    live = np.setdiff1d(np.arange(len(s)), DEAD)

    def fmt(v, digits):
        return " / ".join(f"{x:.{digits}g}" for x in v[DEAD]) + f" ; {np.median(v[live]):.{digits}g}"

    ratio = " / ".join(f"{x:.1f}" for x in a[DEAD] / np.median(a[live]))
    spread = " / ".join(f"{x:.2f}" for x in np.percentile(a / np.median(a), [0, 5, 95, 100]))
    print(f"| {ckpt.parent.name} | {fmt(s, 2)} | {fmt(gamma, 2)} | {fmt(a, 3)} | {ratio} | "
          f"{gamma.min():.3f}-{gamma.max():.3f}; {spread} |")
