"""CPU time of `perf record` profiles by kind of work, side by side: which part of a training run
is MKL's sgemm, page faults, dropout masks, copies, thread waiting and so on.

    perf record -F 499 -g -o cls.data -- target/release/clsnorm finetune --task RTE ... --max-steps 60
    perf record -F 499 -g -o ref.data -- bench/.venv/bin/python bench/reference/reference.py finetune ...
    python3 bench/perf_categories.py ref.data cls.data --freq 499

Prints a Markdown table of CPU-seconds (samples / frequency) per category and profile. Each
symbol goes to the first category whose rule matches (by shared object and symbol name); the
rules are heuristics for libtorch, MKL, libgomp, CPython and clsnorm's symbols. clsnorm's AdamW
update runs inside its rayon jobs and so lands in "threads (OpenMP, rayon, futex)".
"""

import argparse
import collections
import re
import subprocess

RULES = [
    ("sgemm (MKL)", lambda d, s: "sgemm" in s or "mkl_blas" in s),
    ("kernel: page faults, zeroing", lambda d, s: d == "[kernel.kallsyms]" and re.search(
        r"clear_page|page_fault|do_anonymous|alloc_pages|folio|lru|memcg|zap|unmap|mmap|rmqueue|__handle_mm|pte|tlb", s)),
    ("kernel: other (wake-ups, file writes)", lambda d, s: d == "[kernel.kallsyms]"),
    ("dropout masks, RNG", lambda d, s: re.search(r"bernoulli|dropout|keep_mask|mt19937|random|philox|uniform|rand", s)),
    ("masked fill, comparisons", lambda d, s: re.search(r"masked_fill|ne_kernel|eq_kernel|where_kernel|lt_kernel|gt_kernel|ge_kernel", s)),
    ("copies, packing", lambda d, s: re.search(r"copy|memmove|memcpy|index_|gather|scatter|cat_|contiguous|unfold|CatArray", s)),
    ("softmax, attention", lambda d, s: re.search(r"softmax|flash|attention|sdpa", s, re.I)),
    ("LayerNorm", lambda d, s: re.search(r"layer_norm|LayerNorm|RowwiseMoments|layernorm", s, re.I)),
    ("GELU, exp", lambda d, s: re.search(r"gelu|erf|tanh|Sleef|exp", s, re.I)),
    ("optimizer (torch's AdamW)", lambda d, s: re.search(r"adam|_foreach|lerp|addcmul|addcdiv|sqrt", s, re.I)),
    ("fill, zero", lambda d, s: re.search(r"fill_kernel|memset|zero", s)),
    ("other elementwise and reductions", lambda d, s: re.search(
        r"VectorizedLoop|cpu_kernel|binary|add_kernel|mul_kernel|div_|sum_kernel|reduce|Reduction|norm_kernel", s)),
    ("malloc, free", lambda d, s: re.search(r"malloc|free|_int_|cfree|cpu_cache|tcache|arena|Allocator", s)),
    ("Python interpreter", lambda d, s: "python" in d),
    ("threads (OpenMP, rayon, futex)", lambda d, s: re.search(r"gomp|GOMP|omp|rayon|futex|pthread|sched_yield|spin", d + s, re.I)),
    ("libtorch dispatch, autograd", lambda d, s: d.startswith("libtorch") or d.startswith("libc10")),
    ("clsnorm (tokenizing, loading)", lambda d, s: d in ("clsnorm", "[JIT]") or d.startswith("clsnorm")),
]


def samples(path):
    """(percent, dso, symbol) rows of a profile, and its sample count."""
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym", "-g", "none",
                          "--percent-limit", "0", "--stdio", "--show-nr-samples"],
                         capture_output=True, text=True, check=True).stdout
    rows, total = [], 0
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            rows.append((int(m.group(2)), m.group(3), m.group(4)))
            total += int(m.group(2))
    return rows, total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profiles", nargs="+")
    p.add_argument("--freq", type=float, default=499, help="perf record's -F")
    a = p.parse_args()
    names = [n for n, _ in RULES] + ["other"]
    secs = {}
    for path in a.profiles:
        c = collections.Counter()
        rows, total = samples(path)
        for n, d, s in rows:
            c[next((name for name, rule in RULES if rule(d, s)), "other")] += n / a.freq
        c["all"] = total / a.freq
        secs[path] = c
    print("| CPU-seconds | " + " | ".join(a.profiles) + " |")
    print("|---|" + "---|" * len(a.profiles))
    for name in names + ["all"]:
        print(f"| {name} | " + " | ".join(f"{secs[p][name]:.1f}" for p in a.profiles) + " |")


if __name__ == "__main__":
    main()
