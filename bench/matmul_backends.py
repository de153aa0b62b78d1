"""MKL's sgemm (what libtorch's fp32 matmuls call on the CPU) against oneDNN's matmul (libtorch's
other fp32 path, `torch.ops.mkldnn._linear_pointwise`) on the encoder's shapes: MiniLM-L6
(hidden 384, feed-forward 1536) with the tokens of a training batch, forward and both backward
products (dX = dY W, dW = dY^T X).

    bench/.venv/bin/python bench/matmul_backends.py --threads 2 --tokens 1100 --json out.json

Prints per shape the milliseconds and GFLOP/s of each backend (median of `--reps` calls after
3 warm-up calls) and their largest difference; `lscpu`'s flags decide which kernels either
library takes, so run it on each kind of machine.
"""

import argparse
import json
import statistics
import time

import torch


def timed(f, reps):
    for _ in range(3):
        f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=1100, help="rows of a batch's packed activations")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--ffn", type=int, default=1536)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t, h, f = a.tokens, a.hidden, a.ffn
    # (rows, inner, cols, what): a [rows, inner] x [inner, cols] product.
    shapes = [
        (t, h, 3 * h, "q/k/v projections, forward (one fused)"),
        (t, h, h, "attention output, forward"),
        (t, h, f, "feed-forward in, forward"),
        (t, f, h, "feed-forward out, forward"),
        (t, f, h, "feed-forward in, dX"),
        (f, t, h, "feed-forward in, dW"),
        (h, t, f, "feed-forward out, dW"),
    ]
    linear = torch.ops.mkldnn._linear_pointwise
    rows = []
    print(f"torch {torch.__version__}, {a.threads} threads, {torch.backends.cpu.get_cpu_capability()}")
    print("| product | rows x inner x cols | MKL ms | MKL GFLOP/s | oneDNN ms | oneDNN GFLOP/s | oneDNN / MKL time | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for m, k, n, what in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        mkl = timed(lambda: torch.nn.functional.linear(x, w), a.reps)
        dnn = timed(lambda: linear(x, w, None, "none", [], ""), a.reps)
        diff = (torch.nn.functional.linear(x, w) - linear(x, w, None, "none", [], "")).abs().max().item()
        flops = 2 * m * k * n
        rows.append({"product": what, "m": m, "k": k, "n": n, "mkl_secs": mkl, "onednn_secs": dnn, "max_diff": diff})
        print(f"| {what} | {m} x {k} x {n} | {mkl * 1e3:.2f} | {flops / mkl / 1e9:.0f} | {dnn * 1e3:.2f} | "
              f"{flops / dnn / 1e9:.0f} | {dnn / mkl:.2f} | {diff:.1e} |", flush=True)
    total_mkl = sum(r["mkl_secs"] for r in rows)
    total_dnn = sum(r["onednn_secs"] for r in rows)
    print(f"\nall products: MKL {total_mkl * 1e3:.1f} ms, oneDNN {total_dnn * 1e3:.1f} ms ({total_dnn / total_mkl:.2f})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": a.threads,
                       "capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
