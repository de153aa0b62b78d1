#!/usr/bin/env bash
# Issue 24's artefacts from the raw-cls-cpu sweep (sweeps/raw-cls-cpu.toml), into docs/:
#   1. `clsnorm report` with the paired comparisons hidden vs pooler per normalizer (report.md,
#      results.json/csv, vs_none, dev curves, gradient scale and per-epoch [CLS] geometry);
#   2. the pre-trained [CLS] analysis of each task's dev set (both sources);
#   3. the fine-tuned [CLS] of every finished seed-1 run whose checkpoint is on this machine,
#      through its own trained normalizer (`analyze --checkpoint --trained-norm`); only
#      analysis.json/md go to docs (the pictures stay in bench/out/raw-cls-analysis, and the
#      md's picture links are left out);
#   4. gradient traces of seed 1, none vs standardize vs isobn, per task and source;
#   5. dims.md: where the [CLS] gradient goes, per run, and the last LayerNorm's dead dimensions
#      (bench/raw_cls_dims.py, with $PYTHON: numpy and safetensors; bench/setup.sh installs them);
#      isobn-factors.md: the scale each seed-1 IsoBN gives those dimensions (bench/isobn_factors.py).
# Existing analyses are kept (never redone or overwritten), so it can run after every batch.
#
#   GLUE_DIR=../shared/data/glue bench/raw_cls_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLSNORM=${CLSNORM:-target/release/clsnorm}
SWEEP=${SWEEP:-runs/raw-cls-cpu}
OUT=${OUT:-docs/results/raw-cls-cpu}
WORK=${WORK:-bench/out/raw-cls-analysis}
TASKS=${TASKS:-RTE MRPC}
: "${GLUE_DIR:?set GLUE_DIR to the GLUE data directory}"
export GLUE_DIR
mkdir -p "$OUT/analysis" "$WORK"

pairs=()
for norm in none standardize isobn; do
    pairs+=(--pair "${norm}_cls-source=hidden,${norm}_cls-source=pooler")
done
# clsnorm writes only into folders it made (a marker and a record with one id), so each output
# goes to a folder of its own under $WORK and its files are copied into docs.
publish() { # clsnorm output folder -> docs folder (files only, the marker stays behind)
    mkdir -p "$2"
    find "$1" -maxdepth 1 -type f ! -name '.clsnorm-*' -exec cp {} "$2/" \;
}
"$CLSNORM" report "$SWEEP" --output "$WORK/report" "${pairs[@]}"
publish "$WORK/report" "$OUT/report"

keep() { # analysis dir -> docs name: its json and md (never over an existing copy); the md's
    # picture links are replaced by a note, since the pictures stay in $WORK
    mkdir -p "$OUT/analysis/$2"
    [ -e "$OUT/analysis/$2/analysis.json" ] || cp "$1/analysis.json" "$OUT/analysis/$2/"
    [ -e "$OUT/analysis/$2/analysis.md" ] || {
        grep -v '^!\[' "$1/analysis.md"
        printf '\n(The plots of this analysis are not committed: `bench/raw_cls_report.sh` redraws them into %s.)\n' "$WORK/$2"
    } > "$OUT/analysis/$2/analysis.md"
}

for task in $TASKS; do
    name=pretrained-$task
    if [ ! -e "$WORK/$name/analysis.json" ]; then
        "$CLSNORM" analyze --task "$task" --split dev --cls-source both --output "$WORK/$name" --quiet
    fi
    keep "$WORK/$name" "$name"
done

for dir in "$SWEEP"/*_s1; do
    run=$(basename "$dir")
    task=${run%%_*}
    grep -qs '"interrupted": *false' "$dir/summary.json" || continue
    [ -d "$dir/best" ] || continue
    if [ ! -e "$WORK/$run/analysis.json" ]; then
        "$CLSNORM" analyze --checkpoint "$dir/best" --trained-norm --task "$task" --split dev \
            --cls-source both --output "$WORK/$run" --quiet
    fi
    keep "$WORK/$run" "$run"
done

for task in $TASKS; do
    for source in hidden pooler; do
        runs=()
        for norm in none standardize isobn; do
            d="$SWEEP/${task}_${norm}_cls-source=${source}_s1"
            [ -s "$d/grads.jsonl" ] && runs+=("$d")
        done
        if [ ${#runs[@]} -ge 2 ]; then
            "$CLSNORM" compare-grads "${runs[@]}" --output "$WORK/grads-$task-$source"
            publish "$WORK/grads-$task-$source" "$OUT/grads-$task-$source"
        fi
    done
done
PYTHON=${PYTHON:-bench/.venv/bin/python}
if [ -x "$PYTHON" ]; then
    "$PYTHON" bench/raw_cls_dims.py "$SWEEP" --weights "$OUT/dims-weights.json" > "$OUT/dims.md.tmp"
    mv "$OUT/dims.md.tmp" "$OUT/dims.md"
    isobn=()
    for d in "$SWEEP"/*_isobn_*_s1/best; do [ -e "$d/head.safetensors" ] && isobn+=("$d"); done
    if [ ${#isobn[@]} -gt 0 ]; then
        "$PYTHON" bench/isobn_factors.py "${isobn[@]}" > "$OUT/isobn-factors.md.tmp"
        mv "$OUT/isobn-factors.md.tmp" "$OUT/isobn-factors.md"
    fi
else
    echo "no $PYTHON: dims.md and isobn-factors.md not written (run bench/setup.sh)" >&2
fi
echo "wrote $OUT"
