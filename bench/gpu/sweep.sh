#!/usr/bin/env bash
# sweeps/minilm-cpu.toml on a lent GPU machine that has torch 2.11 and no network
# (docs/performance.md, section GPU; docs/results.md, the GPU replication).
#
#   bench/gpu/sweep.sh prepare NAME   # here: fills .gpu/ (git-ignored, under 64 MiB) to carry there
#   bench/gpu/sweep.sh run            # there, from the checkout's root; SWEEP_S, JOBS optional
#
# `prepare` needs bench/gpu/build-for-torch211.sh to have built /tmp/gpubin/clsnorm (or BIN),
# scripts/setup.sh's model, GLUE_DIR, and Python with numpy and safetensors (the weights travel as
# fp16 and are widened back there). `run` bounds the sweep by SWEEP_S seconds (default 520; a
# stopped sweep resumes on the next `run` while the machine is warm) and writes the run
# directories without checkpoints to $OUT/NAME.tgz.
set -euo pipefail
case "${1:-}" in
  prepare)
    name=${2:?name of the sweep, e.g. minilm-h200}
    bin=${BIN:-/tmp/gpubin}
    rm -rf .gpu && mkdir -p .gpu/model .gpu/glue
    cp -r "${GLUE_DIR:?}"/{RTE,MRPC,STS-B,CoLA} .gpu/glue/
    m=models/all-MiniLM-L6-v2
    cp $m/config.json $m/tokenizer.json $m/tokenizer_config.json $m/special_tokens_map.json $m/vocab.txt .gpu/model/
    python3 - "$m/model.safetensors" .gpu/model/model.f16.safetensors <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in t.items()}, sys.argv[2])
PY
    xz -T2 -6 -c "$bin/clsnorm" > .gpu/clsnorm.xz
    # The CPU sweep file with the GPU's paths, device = "cuda", and the longest tasks first.
    sed -e "s|^name = \"minilm-cpu\"|name = \"$name\"\noutput = \"/tmp/w/$name\"|" -e 's|^model = .*|model = "/tmp/minilm"|' \
        -e 's|^tasks = .*|tasks = ["STS-B", "CoLA", "MRPC", "RTE"]|' sweeps/minilm-cpu.toml | grep -v '^#' > .gpu/sweep.toml
    echo 'device = "cuda"' >> .gpu/sweep.toml
    echo "$name" > .gpu/name
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.gpu/' >> .git/info/exclude; }
    du -sh .gpu
    ;;
  run)
    set +e
    name=$(cat .gpu/name)
    TL=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH=$TL
    mkdir -p /tmp/bin /tmp/minilm /tmp/w
    xz -dc .gpu/clsnorm.xz > /tmp/bin/clsnorm && chmod +x /tmp/bin/clsnorm
    cp .gpu/model/*.json .gpu/model/vocab.txt /tmp/minilm/
    python3 -c "
from safetensors.torch import load_file, save_file
t = load_file('.gpu/model/model.f16.safetensors')
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, '/tmp/minilm/model.safetensors')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    /tmp/bin/clsnorm --version || exit 1
    t0=$(date +%s)
    GLUE_DIR=$PWD/.gpu/glue timeout -k 25 "${SWEEP_S:-520}" /tmp/bin/clsnorm sweep --config .gpu/sweep.toml \
      --jobs "${JOBS:-12}" > "$OUT/sweep.log" 2>&1
    echo "sweep rc=$? wall $(( $(date +%s) - t0 )) s"
    tail -5 "$OUT/sweep.log"
    tar -czf "$OUT/$name.tgz" -C /tmp/w --exclude=best --exclude=last "$name"
    ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
