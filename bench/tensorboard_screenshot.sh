#!/usr/bin/env bash
# A screenshot of TensorBoard showing a sweep's runs (docs/tensorboard.md), taken with headless
# Chromium (Debian: `apt install chromium`) and the TensorBoard of bench/.venv (bench/setup.sh):
#
#   bench/tensorboard_screenshot.sh runs/minilm-cola-curves docs/tensorboard/minilm-cola.png
set -euo pipefail
logdir=$1
out=$2
port=${PORT:-6123}
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/bench/.venv/bin/tensorboard" --logdir "$logdir" --port "$port" --host 127.0.0.1 \
    >"${TMPDIR:-/tmp}/tensorboard-screenshot.log" 2>&1 &
pid=$!
trap 'kill $pid' EXIT
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$port/" >/dev/null && break
    sleep 1
done
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-webgl --disable-3d-apis --hide-scrollbars --window-size=1600,1300 \
    --virtual-time-budget=30000 --screenshot="$out" \
    "http://127.0.0.1:$port/?darkMode=false&tagFilter=${TAGS:-dev%7Ctrain%2F}#timeseries"
