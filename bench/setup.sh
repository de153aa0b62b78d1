#!/usr/bin/env bash
# Installs the PyTorch reference's own venv in bench/.venv (git-ignored; ~5 GB, a few minutes):
# torch 2.13.0 (the libtorch clsnorm runs on) and Hugging Face transformers, pinned.
# Only the benchmark needs it; clsnorm and its tests never do. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/bench/.venv
PY=${PYTHON:-python3}
pins=(torch==2.13.0 transformers==5.24.0 numpy)
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import torch, transformers
assert torch.__version__.startswith("2.13.0") and transformers.__version__ == "5.24.0"' 2>/dev/null; then
  echo "bench/setup: reference venv ready in $venv"
  exit 0
fi
echo "bench/setup: installing ${pins[*]} into $venv"
rm -rf "$venv"
"$PY" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
"$venv/bin/python" -c 'import torch, transformers; print("bench/setup: torch", torch.__version__, "transformers", transformers.__version__)'
