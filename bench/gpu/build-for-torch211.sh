#!/usr/bin/env bash
# Builds clsnorm and the step timer against the libtorch of a torch 2.11.0 wheel, for a GPU
# machine that has torch 2.11 and no network (docs/performance.md, section GPU). tch 0.26 is
# generated for libtorch 2.13; its wrapper compiles against 2.11 once the 14 operators that 2.11
# lacks are stubbed out (clsnorm uses none of them: calling one would raise an error).
#
#   bench/gpu/build-for-torch211.sh OUT_DIR
#
# Needs network here (pip download of the torch 2.11.0 wheel, ~530 MB) and scripts/setup.sh
# (for the CUDA runtime libraries the link step resolves). Writes OUT_DIR/clsnorm and
# OUT_DIR/bench_step; on the GPU machine run them with LD_LIBRARY_PATH set to its torch/lib.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
work=${WORK:-$root/target/torch211}
mkdir -p "$work"
if [[ ! -f $work/torch/version.py ]]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 torch==2.11.0 -d "$work/wheel"
  python3 - "$work" <<'PY'
import sys, zipfile, glob
work = sys.argv[1]
z = zipfile.ZipFile(glob.glob(work + "/wheel/torch-2.11.0-*.whl")[0])
z.extractall(work, [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/", "torch/share/", "torch/version.py"))])
PY
  rm -rf "$work/wheel"
fi
ln -sfn "$root/deps/libtorch/nvidia" "$work/nvidia"   # libcudart/libcupti for the link step
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.26.0 | head -1)
rm -rf "$work/torch-sys" && cp -r "$src" "$work/torch-sys"
python3 - "$work/torch-sys/libtch/torch_api_generated.cpp" <<'PY'
import re, sys
missing = {"_flash_attention_forward_no_dropout_inplace", "_philox_key_fold_in", "_philox_key_split",
           "_philox_normal", "_philox_normal_", "_philox_normal_out", "_philox_uniform", "_philox_uniform_",
           "_philox_uniform_out", "_upsample_lanczos2d_aa", "_upsample_lanczos2d_aa_backward",
           "_upsample_lanczos2d_aa_backward_out", "_upsample_lanczos2d_aa_out",
           "_scaled_dot_product_attention_math_for_mps"}  # the last has another signature in 2.11
lines, out, i = open(sys.argv[1]).read().split("\n"), [], 0
while i < len(lines):
    m = re.match(r"\s+auto outputs__ = torch::(\w+)\(", lines[i])
    if m and m.group(1) in missing:
        out.append(f'    throw std::runtime_error("{m.group(1)}: not in this libtorch");')
        while lines[i].strip() != ")":
            i += 1
        continue
    out.append(lines[i])
    i += 1
open(sys.argv[1], "w").write("\n".join(out))
PY
cd "$root"
# The patch rewrites Cargo.lock's torch-sys source; the checkout's lock file is put back after.
cp Cargo.lock "$work/Cargo.lock.orig"
trap 'cp "$work/Cargo.lock.orig" Cargo.lock' EXIT
CARGO_TARGET_DIR=$work/target LIBTORCH=$work/torch LIBTORCH_BYPASS_VERSION_CHECK=1 CLSNORM_LINK_CUDA=1 \
  RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" \
  cargo build --release --bin clsnorm --example bench_step \
  --config "patch.crates-io.torch-sys.path=\"$work/torch-sys\""
cp "$work/target/release/clsnorm" "$work/target/release/examples/bench_step" "$out/"
echo "built $out/clsnorm and $out/bench_step against libtorch 2.11.0"
