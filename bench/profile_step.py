"""Where a training step's time goes: torch.profiler over the reference's step (the same
libtorch kernels clsnorm calls), by operator, on the benchmark's fixed batch.

    bench/.venv/bin/python bench/profile_step.py --device cpu --threads 2 --precision fp32 bf16
    python3 bench/profile_step.py --device cuda --precision bf16 --batch 32 --seq 128

Prints, per precision, the operators sorted by self time (CPU, or CUDA kernel time on a GPU)
over 3 profiled steps after 2 warm-up steps, and the number of kernel launches per step on a
GPU. Dropout is on, as in training.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import reference as R  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(R.__file__.rsplit("/bench/", 1)[0], "models/all-MiniLM-L6-v2"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--rows", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = R.Classifier(R.load_encoder(a.model), 2).to(dev)
    model.train()
    opt, _ = R.optimizer_and_schedule(model, 5e-5, 1000, fused=True)
    ids = R.fixed_batch(a.batch, a.seq).to(dev)
    types, mask = torch.zeros_like(ids), torch.ones_like(ids)
    labels = (torch.arange(a.batch) % 2).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if a.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name in a.precision:
        prec = R.Precision(name, dev)

        def step():
            with prec.autocast():
                loss = loss_fn(model(ids, types, mask), labels)
            prec.backward_and_step(loss, opt)
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        if a.device == "cuda":
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(3):
                step()
            if a.device == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if a.device == "cuda" else "self_cpu_time_total"
        print(f"===== {name}, {a.device}, batch {a.batch} x seq {a.seq}, 3 steps")
        print(prof.key_averages().table(sort_by=key, row_limit=a.rows, max_name_column_width=50))
        if a.device == "cuda":
            launches = sum(e.count for e in prof.key_averages() if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
            print(f"kernel launches per step: {launches / 3:.0f}")


if __name__ == "__main__":
    main()
