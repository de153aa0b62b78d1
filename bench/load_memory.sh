#!/usr/bin/env bash
# Peak resident memory of loading a model and embedding one sentence: clsnorm `embed` against
# transformers' from_pretrained + tokenizer + forward, on random BERT models of three shapes
# (bench/random_bert.py), best of 3 runs each (/usr/bin/time -f %M).
#
#   bench/load_memory.sh [CLSNORM...]     # default: target/release/clsnorm
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-bench/.venv/bin/python}
WORK=${WORK:-bench/out/load-memory}
[ $# -gt 0 ] || set -- target/release/clsnorm
mkdir -p "$WORK"
declare -A shape=([tiny]="64 1 64" [bert-base]="768 12 3072" [vocab-100k]="512 1 512 --vocab 100000")
best() { for _ in 1 2 3; do /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; done | sort -n | head -1; }
printf '| model | file MB |'
for b in "$@"; do printf ' %s MB |' "$b"; done
printf ' transformers MB |\n'
for m in tiny bert-base vocab-100k; do
    dir=$WORK/$m
    [ -e "$dir/model.safetensors" ] || "$PYTHON" bench/random_bert.py "$dir" ${shape[$m]} >/dev/null
    printf '| %s | %d |' "$m" $(( $(stat -c %s "$dir/model.safetensors") / 1000000 ))
    for b in "$@"; do
        printf ' %d |' $(( $(best "$b" embed --model "$dir" --device cpu "hello world") / 1000 ))
    done
    ref=$(best "$PYTHON" -c "
import torch, transformers
torch.set_num_threads(1)
m = transformers.BertModel.from_pretrained('$dir')
t = transformers.AutoTokenizer.from_pretrained('$dir')
with torch.no_grad():
    m(**t('hello world', return_tensors='pt'))")
    printf ' %d |\n' $(( ref / 1000 ))
done
