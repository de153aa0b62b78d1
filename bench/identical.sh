#!/usr/bin/env bash
# Refactoring check: run one clsnorm binary over a fixed set of short jobs and print a digest of
# everything they compute (metrics, losses, gradient traces, saved weights, predictions,
# embeddings, analysis statistics), with wall times, paths and build ids removed. Two builds
# that print the same digest computed the same numbers, bit for bit.
#
#   bench/identical.sh target/release/clsnorm /tmp/before > before.txt
#   ... refactor, cargo build --release ...
#   bench/identical.sh target/release/clsnorm /tmp/after > after.txt && diff before.txt after.txt
#
# About 4 minutes on 2 CPU cores (threads 1, MiniLM-L6, GLUE_DIR set). Needs `jq`.
set -euo pipefail
BIN=$(realpath "$1")
OUT=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-$ROOT/models/all-MiniLM-L6-v2}
DATA=${GLUE_DIR:?set GLUE_DIR to the GLUE data directory}
mkdir "$OUT"
common=(--model "$MODEL" --data-dir "$DATA" --threads 1 --quiet)

ft() { # name task args...
    local name=$1 task=$2
    shift 2
    "$BIN" finetune "${common[@]}" --task "$task" --output "$OUT/$name" "$@" >/dev/null 2>&1
}
ft mrpc-isobn mrpc --norm isobn --trace-grads --max-steps 20
ft rte-none-hidden rte --cls-source hidden --drop-last --warmup-rounding floor \
    --classifier-init torch --max-steps 12
ft stsb-whiten stsb --norm whiten --max-steps 12
ft cola-bn cola --norm batchnorm --norm-opt affine --group-by-length --max-steps 12
ft sst2-l2 sst2 --norm l2 --max-steps 8 --batch-size 8
ft rte-std rte --norm standardize --max-steps 8 --epochs 2 --batch-size 8 --save-every 4
ft rte-ln rte --norm layernorm --norm-opt affine --max-steps 8
ft rte-center rte --norm center --max-steps 8 --cls-source hidden

"$BIN" evaluate --checkpoint "$OUT/mrpc-isobn/best" --data-dir "$DATA" --threads 1 \
    > "$OUT/evaluate.json" 2>/dev/null
head -n 40 "$DATA/MRPC/dev.tsv" > "$OUT/predict-in.tsv"
"$BIN" predict --checkpoint "$OUT/mrpc-isobn/best" --input "$OUT/predict-in.tsv" --threads 1 \
    --output "$OUT/predict.jsonl" 2>/dev/null
"$BIN" embed --model "$MODEL" --threads 1 "A sentence." "And its pair, longer." \
    > "$OUT/embed.json" 2>/dev/null
"$BIN" analyze "${common[@]}" --task rte --norm isobn --cosine-sample 100 \
    --output "$OUT/analyze" >/dev/null 2>&1

cd "$OUT"
# Timings and the build id differ between any two runs; manifests hash config.json, which holds
# the build id. Everything else must be equal. (`cls_geometry`, recorded since 2026-11-28, is
# left out so that digests compare with those of older builds.)
strip='walk(if type == "object" then with_entries(select(.key |
    test("_secs$|^clsnorm_build$|^builds$|tokens_per_sec|^cls_geometry$") | not)) else . end)'
for f in $(find . -name '*.jsonl' -o -name '*.json' | grep -v manifest.json | sort); do
    printf '%s %s\n' "$(jq -cS "$strip" "$f" | sha256sum | cut -c1-16)" "$f"
done
for f in $(find . -name '*.safetensors' | sort); do
    printf '%s %s\n' "$(sha256sum "$f" | cut -c1-16)" "$f"
done
