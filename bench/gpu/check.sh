#!/usr/bin/env bash
# clsnorm on a CUDA GPU, against PyTorch + transformers on the same machine: one script, meant
# for a short lease of a GPU machine (docs/performance.md, section GPU, has what it measured).
#
#   BIN=DIR MODEL=DIR GLUE_DIR=DIR OUT=DIR bench/gpu/check.sh [embed] [epoch] [step] [sweep]
#
# BIN holds `clsnorm` and `bench_step` built against the machine's CUDA libtorch (optionally
# `bench_step-pertensor`, a build with the per-tensor optimizer update, for the lever
# measurement); MODEL is a MiniLM-L6 directory; python3 must have torch and transformers.
# Sections (all by default):
#   embed  [CLS] and pooler of `clsnorm embed` on CUDA and CPU against transformers
#   epoch  one RTE and one MRPC epoch, clsnorm (plain and length-grouped batching) vs reference
#   step   training-step times on identical batches (bench/run.py step), MiniLM-L6 and BERT-base
#   sweep  RTE, the six normalizers of sweeps/minilm-cpu.toml, seed 1, 3 epochs, on CUDA
# CUDA_DEVICE=cpu runs the embed section without a GPU (a dry run of the script).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
: "${BIN:?BIN=dir with clsnorm and bench_step}" "${MODEL:?MODEL=model dir}" "${GLUE_DIR:?}" "${OUT:?}"
sections=${*:-embed epoch step sweep}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
say() { echo "== $(date -u +%H:%M:%S) $*"; }

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, torch.version.git_version[:12], "transformers", transformers.__version__)'
"$BIN/clsnorm" --version || { ldd "$BIN/clsnorm" | grep "not found"; exit 1; }
nproc

for s in $sections; do
  case $s in
    embed)
      say "embed: clsnorm vs transformers"
      : > "$OUT/embed.tsv"
      i=0
      while IFS=$'\t' read -r text pair; do
        for dev in "${CUDA_DEVICE:-cuda}" cpu; do
          i=$((i + 1))
          f=$OUT/embed-$dev-$i.json
          # shellcheck disable=SC2086
          "$BIN/clsnorm" embed --model "$MODEL" --device $dev "$text" ${pair:+"$pair"} > "$f" || { say "embed on $dev FAILED"; exit 1; }
          printf '%s\t%s\t%s\n' "$f" "$text" "$pair" >> "$OUT/embed.tsv"
        done
      done <<'TEXTS'
The quick brown fox jumps over the lazy dog.
A man is playing a guitar.	Someone plays an instrument.
Normalization of the [CLS] embedding, re-visited: does it help fine-tuning?
TEXTS
      python3 "$root/bench/gpu/compare_embed.py" "$MODEL" "$OUT/embed-compare.json" "$OUT/embed.tsv"
      ;;
    epoch)
      say "epoch: RTE and MRPC, one epoch each side"
      python3 "$root/bench/run.py" epoch --device cuda --tasks RTE,MRPC --bin-dir "$BIN" --model "$MODEL" \
        --glue-dir "$GLUE_DIR" --out "$OUT/epoch"
      ;;
    step)
      say "step: identical batches"
      python3 "$root/bench/run.py" step --device cuda --reps 30 --rounds 1 --bin-dir "$BIN" --model "$MODEL" --out "$OUT/step"
      if [[ -x $BIN/bench_step-pertensor ]]; then
        say "step: per-tensor optimizer update (before the flat update)"
        for shape in "--model $MODEL --batch 16 --seq 128" "--model $MODEL --batch 32 --seq 128" "--model base --batch 32 --seq 128"; do
          # shellcheck disable=SC2086
          "$BIN/bench_step-pertensor" $shape --reps 30 --device cuda | tee -a "$OUT/step/pertensor.jsonl"
        done
      fi
      ;;
    sweep)
      say "sweep: six normalizers on RTE"
      cat > "$OUT/rte-gpu.toml" <<TOML
name = "minilm-gpu-rte"
output = "$OUT/runs"
model = "$MODEL"
tasks = ["RTE"]
seeds = [1]
[[norm]]
name = "none"
[[norm]]
name = "isobn"
[[norm]]
name = "batchnorm"
[[norm]]
name = "layernorm"
[[norm]]
name = "standardize"
[[norm]]
name = "whiten"
[args]
epochs = 3
max-len = 128
batch-size = 16
lr = 5e-5
trace-grads = true
device = "cuda"
TOML
      t0=$(date +%s)
      GLUE_DIR=$GLUE_DIR "$BIN/clsnorm" sweep --config "$OUT/rte-gpu.toml" --jobs 3
      say "sweep took $(( $(date +%s) - t0 )) s"
      "$BIN/clsnorm" report "$OUT/runs" --output "$OUT/report"
      ;;
    *) echo "check.sh: unknown section $s (expected embed, epoch, step or sweep)" >&2; exit 2 ;;
  esac
done
say "done"
