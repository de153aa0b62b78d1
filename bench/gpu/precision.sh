#!/usr/bin/env bash
# Issue 23's GPU measurements in one command on a lent GPU machine (torch 2.11, no network):
# mixed-precision step times and epochs against PyTorch + transformers under torch.autocast, and
# bf16-vs-fp32 sweeps for wall time and accuracy parity (docs/performance.md, "Mixed precision on a GPU").
#
#   bench/gpu/precision.sh prepare     # here: fills .gpu/ (git-ignored, < 64 MiB) to carry there
#   OUT=DIR bench/gpu/precision.sh run # there, from the checkout's root; SECTIONS optional
#
# `prepare` needs bench/gpu/build-for-torch211.sh to have built /tmp/gpubin/{clsnorm,bench_step}
# (or BIN), scripts/setup.sh's model, GLUE_DIR, and Python with numpy and safetensors (the
# weights travel as fp16 and are widened back there: both precisions and both sides load the same
# file). `run` runs SECTIONS (default "step profile epoch parity"), each bounded in time so that the whole
# fits a 10-minute call on an H200 (estimates from the fp32 runs of 2026-11-26):
#   step    bench/run.py step: bf16 at batch 16/32 x seq 64/128 on MiniLM-L6 and BERT-base, fp32
#           at 32 x 128 for the bf16 speed-up; 30 timed steps per side (~3 min)
#   epoch   one bf16 epoch of RTE, MRPC and SST-2 per side (~3 min)
#   profile torch.profiler over the reference's MiniLM-L6 32 x 128 step in fp32 and bf16 (the same
#           kernels clsnorm calls): kernel time by operator, launches per step (~30 s)
#   parity  RTE and MRPC x {none, isobn} x seeds 1-3 x {fp32, bf16}, 3 epochs, one sweep of 24
#           runs, 12 at a time: each run's wall time and the report's paired bf16-fp32 dev
#           differences with intervals (~3-4 min); PARITY_TASKS='"STS-B", "CoLA"' for the others
# and writes everything to $OUT (results.json per section, the parity sweeps' run directories
# without checkpoints in parity.tgz).
set -euo pipefail
case "${1:-}" in
  prepare)
    bin=${BIN:-/tmp/gpubin}
    rm -rf .gpu && mkdir -p .gpu/model
    m=models/all-MiniLM-L6-v2
    cp $m/config.json $m/tokenizer.json $m/tokenizer_config.json $m/special_tokens_map.json $m/vocab.txt .gpu/model/
    python3 - "$m/model.safetensors" .gpu/model/model.f16.safetensors <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in t.items()}, sys.argv[2])
PY
    tar -cJf .gpu/glue.tar.xz -C "${GLUE_DIR:?}" RTE MRPC SST-2 STS-B CoLA
    xz -T2 -6 -c "$bin/clsnorm" > .gpu/clsnorm.xz
    xz -T2 -6 -c "$bin/bench_step" > .gpu/bench_step.xz
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.gpu/' >> .git/info/exclude; }
    du -sh .gpu
    ;;
  run)
    set +e
    : "${OUT:?OUT=dir for results}"
    mkdir -p "$OUT" /tmp/bin /tmp/minilm /tmp/glue /tmp/w
    TL=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH=$TL HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
    for b in clsnorm bench_step; do xz -dc .gpu/$b.xz > /tmp/bin/$b && chmod +x /tmp/bin/$b; done
    tar -xJf .gpu/glue.tar.xz -C /tmp/glue
    cp .gpu/model/*.json .gpu/model/vocab.txt /tmp/minilm/
    python3 -c "
from safetensors.torch import load_file, save_file
t = load_file('.gpu/model/model.f16.safetensors')
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, '/tmp/minilm/model.safetensors')"
    say() { echo "== $(date -u +%H:%M:%S) $*"; }
    DEVICE=${DEVICE:-cuda}   # DEVICE=cpu: a dry run of the script's plumbing without a GPU
    say machine
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
    /tmp/bin/clsnorm --version || exit 1
    nproc
    run_py() { timeout -k 10 "$1" python3 bench/run.py "${@:2}" --device "$DEVICE" --bin-dir /tmp/bin --model /tmp/minilm \
      --glue-dir /tmp/glue --threads 4; echo "rc=$?"; }
    for s in ${SECTIONS:-step profile epoch parity}; do
      case $s in
        step)
          say "step: bf16, all settings"
          run_py 150 step --precisions bf16 --reps 30 --rounds 1 --out "$OUT/step-bf16"
          say "step: fp32 and bf16 at 32 x 128 (speed-up), fp32 with TF32 off"
          for m in /tmp/minilm base; do
            for p in fp32 bf16; do
              timeout -k 5 40 /tmp/bin/bench_step --model $m --batch 32 --seq 128 --reps 30 --device "$DEVICE" \
                --precision $p | tee -a "$OUT/step-32x128.jsonl"
            done
          done
          ;;
        profile)
          say "profile: reference step, MiniLM-L6 32 x 128"
          timeout -k 5 60 python3 bench/profile_step.py --device "$DEVICE" --model /tmp/minilm --threads 4 --batch 32 --seq 128 \
            --precision fp32 bf16 > "$OUT/profile.txt" 2>&1; echo "rc=$?"
          ;;
        epoch)
          say "epoch: RTE, MRPC, SST-2 in bf16"
          run_py 200 epoch --precisions bf16 --tasks RTE,MRPC,SST-2 --variants plain --out "$OUT/epoch-bf16"
          ;;
        parity)
          # One sweep holding both precisions, so that their runs share the GPU alike; each run's
          # summary.json has its own wall time.
          tasks=${PARITY_TASKS:-'"MRPC", "RTE"'}
          cat > "$OUT/parity.toml" <<TOML
name = "parity"
output = "/tmp/w/parity"
model = "/tmp/minilm"
tasks = [$tasks]
seeds = [1, 2, 3]
[[norm]]
name = "none"
[[norm]]
name = "isobn"
[args]
epochs = 3
max-len = 128
batch-size = 16
lr = 5e-5
device = "$DEVICE"
precision = ["fp32", "bf16"]
TOML
          say "parity: 24 runs, fp32 and bf16"
          t0=$(date +%s)
          GLUE_DIR=/tmp/glue timeout -k 25 230 /tmp/bin/clsnorm sweep --config "$OUT/parity.toml" --jobs 12 --threads 1 \
            > "$OUT/parity.log" 2>&1
          echo "parity: rc=$? wall $(( $(date +%s) - t0 )) s"
          /tmp/bin/clsnorm report /tmp/w/parity --output "$OUT/parity-report" \
            --pair none_precision=bf16,none_precision=fp32 --pair isobn_precision=bf16,isobn_precision=fp32 > /dev/null 2>&1
          tar -czf "$OUT/parity.tgz" -C /tmp/w --exclude=best --exclude=last parity
          ;;
        *) echo "precision.sh: unknown section $s (expected step, profile, epoch or parity)" >&2 ;;
      esac
    done
    say done
    ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
