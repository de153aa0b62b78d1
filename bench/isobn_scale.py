"""IsoBN's scale vector from the running statistics a run saved (docs/results.md, issue 4).

    bench/.venv/bin/python bench/isobn_scale.py runs/none-vs-isobn/*_isobn_s*/last/head.safetensors

Per checkpoint: median gamma and gamma*s, the 5th-95th percentile of scale/median(scale), and
how many dimensions are amplified more than 2x with their share of the output variance. The
formula is the one of src/normalize/isobn.rs (beta 0.5, eps 1e-3, the official defaults).
"""
import sys

import torch
from safetensors.torch import load_file

BETA, EPS = 0.5, 1e-3

for path in sys.argv[1:]:
    h = load_file(path)
    cov = h["normalizer.running_cov"].double()
    std = h["normalizer.running_std"].double()
    rho = (cov / torch.outer(std, std)).clamp(-1, 1)
    gamma = (rho**2).mean(1)
    a = (gamma * std + EPS) ** -BETA
    a = a * torch.sqrt(torch.trace(cov) / ((torch.diag(cov) * a**2).sum() + EPS))
    r = a / a.median()
    lo, hi = torch.quantile(r, torch.tensor([0.05, 0.95], dtype=r.dtype)).tolist()
    big = r > 2
    var_out = torch.diag(cov) * a**2
    print(
        f"{path}: steps {float(h['normalizer.num_batches_tracked']):.0f}, "
        f"median gamma {float(gamma.median()):.3f}, median gamma*s {float((gamma * std).median()):.4f}, "
        f"scale/median 5-95% {lo:.2f}-{hi:.2f}, dims >2x: {int(big.sum())} "
        f"({float(var_out[big].sum() / var_out.sum()):.3f} of output variance)"
    )
