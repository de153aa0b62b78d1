#!/usr/bin/env bash
# clsnorm vs the PyTorch + transformers reference, side by side (see docs/performance.md):
#
#   GLUE_DIR=../shared/data/glue bench/run.sh            # step and epoch sections, all cores
#   bench/run.sh step --threads 2 --rounds 3             # one section, other settings
#   bench/run.sh --help
#
# Builds clsnorm (release) and the step timer, installs the reference venv (bench/setup.sh),
# then runs bench/run.py with that venv's Python. Run it on an otherwise idle machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh >/dev/null
bench/setup.sh
cargo build --release --quiet --bin clsnorm --example bench_step
exec bench/.venv/bin/python bench/run.py "$@"
