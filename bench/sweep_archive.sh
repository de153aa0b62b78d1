#!/usr/bin/env bash
# Keeps a long CPU sweep's finished runs across machine replacements (runs/ is git-ignored and
# goes with the machine): `save` packs every finished run of the sweep directory that is not
# packed yet, without its checkpoints, into ARCHIVE/RUN.tar.gz (one file per run, so a run is
# committed once); `restore` unpacks them into the sweep directory, where `clsnorm sweep` then
# finds them finished (summary.json) and `clsnorm report` reads their records and traces.
#
#   bench/sweep_archive.sh save runs/raw-cls-cpu docs/results/raw-cls-cpu/runs
#   bench/sweep_archive.sh restore runs/raw-cls-cpu docs/results/raw-cls-cpu/runs
#
# It never overwrites: `save` skips runs already packed, `restore` skips runs whose directory
# exists.
set -euo pipefail
usage() { echo "usage: $0 save|restore SWEEP_DIR ARCHIVE_DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
mode=$1 sweep=$2 archive=$3
case $mode in
save)
    [ -d "$sweep" ] || { echo "$sweep: no such sweep directory" >&2; exit 1; }
    mkdir -p "$archive"
    n=0
    for dir in "$sweep"/*/; do
        run=$(basename "$dir")
        [ -f "$dir/summary.json" ] || continue
        # Interrupted runs also write a summary; only finished ones are packed.
        grep -q '"interrupted": *false' "$dir/summary.json" || continue
        out="$archive/$run.tar.gz"
        [ -e "$out" ] && continue
        tar -czf "$out.tmp" -C "$sweep" --exclude="$run/best" --exclude="$run/last" \
            --exclude="$run/.lock" "$run"
        mv -n "$out.tmp" "$out"
        n=$((n + 1))
    done
    echo "packed $n new run(s) into $archive"
    ;;
restore)
    [ -d "$archive" ] || { echo "$archive: no such archive directory" >&2; exit 1; }
    mkdir -p "$sweep"
    n=0
    for f in "$archive"/*.tar.gz; do
        [ -e "$f" ] || continue
        run=$(basename "$f" .tar.gz)
        [ -e "$sweep/$run" ] && continue
        tar -xzf "$f" -C "$sweep"
        n=$((n + 1))
    done
    echo "restored $n run(s) into $sweep"
    ;;
*) usage ;;
esac
