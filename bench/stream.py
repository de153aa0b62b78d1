#!/usr/bin/env python3
"""`predict` and `embed --input` on inputs of growing size (issue 44): peak resident memory and
lines per second at each size, one process per command and size, nothing else running.

The inputs are JSON lines of short synthetic sentences (1 to 6 words of a 40-word vocabulary,
seeded), written once per size. Peak memory is the process's own high-water mark (`VmHWM`,
which `clsnorm -v` logs at exit); the rate is lines over the whole process's wall time
(loading included). Writes OUT/results.json.

    bench/stream.py --checkpoint RUN/best --sizes 10000,100000,1000000 --out bench/out/stream
"""

import argparse
import datetime
import json
import os
import random
import re
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = (
    "the a film movie plot actor scene story was is not very quite so too good bad great dull "
    "funny slow long short fine best worst it this that and but with of on in at by for as "
    "love hate"
).split()


def write_input(path, n, seed=1):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = rng.choices(WORDS, k=rng.randint(1, 6))
            f.write(json.dumps({"sentence": " ".join(words)}) + "\n")


def run(cmd, lines):
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    peak = re.search(r"peak_resident_mib=(\d+)", p.stderr)
    return {
        "wall_s": round(wall, 2),
        "lines_per_s": round(lines / wall, 1),
        "peak_rss_mib": int(peak.group(1)) if peak else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint (predict)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"), help="embed's model")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "clsnorm"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = []
    for n in [int(s) for s in a.sizes.split(",")]:
        path = os.path.join(a.out, f"in-{n}.jsonl")
        if not os.path.exists(path):
            write_input(path, n)
        for command in ["predict", "embed"]:
            out = os.path.join(a.out, f"{command}-{n}" + (".jsonl" if command == "predict" else ".npy"))
            if os.path.exists(out):
                os.remove(out)
            if command == "predict":
                cmd = [a.bin, "-v", "predict", "--checkpoint", a.checkpoint]
            else:
                cmd = [a.bin, "-v", "embed", "--model", a.model, "--text-col", "sentence"]
            cmd += ["--input", path, "--output", out, "--threads", str(a.threads)]
            r = {"command": command, "lines": n, **run(cmd, n)}
            os.remove(out)
            print(json.dumps(r), flush=True)
            results.append(r)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(
            {
                "date": datetime.date.today().isoformat(),
                "checkpoint": a.checkpoint,
                "model": a.model,
                "threads": a.threads,
                "results": results,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
