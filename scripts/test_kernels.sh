#!/usr/bin/env bash
# Runs the tests whose tolerances come from float rounding (numerics against golden values,
# unpadded vs padded, training against PyTorch, normalizers, precisions) under the other set
# of CPU kernels than this machine runs by default, so that no tolerance holds on one CPU only:
#   AVX-512 CPU:   ATEN_CPU_CAPABILITY=avx2    MKL_ENABLE_INSTRUCTIONS=AVX2  (an AVX2 machine's)
#   AVX2-only CPU: ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX   (scalar ATen kernels,
#                  MKL's AVX sgemm: rounding unlike either machine's own)
#   scripts/test_kernels.sh [extra cargo test arguments, e.g. --no-fail-fast]
set -euo pipefail
cd "$(dirname "$0")/.."
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
else
  export ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX
fi
echo "test_kernels: ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY MKL_ENABLE_INSTRUCTIONS=$MKL_ENABLE_INSTRUCTIONS"
cargo test "$@" --test unpadded --test train_golden --test golden_minilm --test families \
  --test normalize --test precision --test encoder --test train --test analyze
