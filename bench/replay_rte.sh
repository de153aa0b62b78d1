#!/usr/bin/env bash
# Issue 36: whole runs equal PyTorch's. Three epochs of RTE with dropout off (MiniLM-L6 with its
# dropout probabilities set to 0), PyTorch + transformers drawing the batches and clsnorm
# replaying them (--batch-order), same seed, same head (--classifier-init torch, seeded right
# before it is drawn on both sides). Prints per-epoch losses and dev accuracies of both and how
# many dev predictions differ after each epoch (docs/results.md, "Whole runs").
#
#   GLUE_DIR=../shared/data/glue bench/replay_rte.sh [OUT_DIR]     # ~20 min on 2 cores
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
glue=${GLUE_DIR:-../shared/data/glue}
out=${1:-bench/out/replay-rte-$(date +%F)}
threads=${THREADS:-2}
epochs=${EPOCHS:-3}
[ -e "$out" ] && { echo "$out exists: give another folder" >&2; exit 1; }
mkdir -p "$out/model"
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt model.safetensors; do
    [ -f "models/all-MiniLM-L6-v2/$f" ] && cp "models/all-MiniLM-L6-v2/$f" "$out/model/"
done
python3 - "$out/model/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["hidden_dropout_prob"] = 0.0
c["attention_probs_dropout_prob"] = 0.0
json.dump(c, open(p, "w"), indent=1)
PY
common=(--task RTE --epochs "$epochs" --seed 1 --threads "$threads" --classifier-init torch)
bench/.venv/bin/python bench/reference/reference.py finetune --data "$glue" --model "$out/model" \
    "${common[@]}" --fused-adamw --eval-every-epoch --write-batch-order "$out/order.jsonl" \
    --write-dev-predictions "$out/reference-dev.jsonl" > "$out/reference.json"
target/release/clsnorm finetune --data-dir "$glue" --model "$out/model" "${common[@]}" \
    --batch-order "$out/order.jsonl" --output "$out/clsnorm" --quiet
bench/.venv/bin/python - "$out" "$glue" <<'PY'
import json, sys
out, glue = sys.argv[1], sys.argv[2]
ref = json.load(open(f"{out}/reference.json"))
ours = [json.loads(l) for l in open(f"{out}/clsnorm/metrics.jsonl")]
ref_preds = [json.loads(l)["predictions"] for l in open(f"{out}/reference-dev.jsonl")]
print("| epoch | train loss: PyTorch | clsnorm | difference | dev accuracy: PyTorch | clsnorm |")
print("|---|---|---|---|---|---|")
for e, r in enumerate(ours):
    rl, cl = ref["train_loss_per_epoch"][e], r["train_loss"]
    ra = ref["dev_per_epoch"][e]["accuracy"]
    ca = dict(r["dev"][0][1])["accuracy"]
    print(f"| {e + 1} | {rl:.6f} | {cl:.6f} | {cl - rl:+.2e} | {100 * ra:.2f} | {100 * ca:.2f} |")
json.dump({"reference": ref, "clsnorm": ours}, open(f"{out}/summary.json", "w"), indent=1)
PY
# clsnorm's dev predictions after the last epoch, against PyTorch's.
target/release/clsnorm predict --checkpoint "$out/clsnorm/last" --input "$glue/RTE/dev.tsv" \
    --threads "$threads" --output "$out/clsnorm-dev.jsonl"
bench/.venv/bin/python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
ref = [json.loads(l)["predictions"] for l in open(f"{out}/reference-dev.jsonl")][-1]
ours = [json.loads(l) for l in open(f"{out}/clsnorm-dev.jsonl")]
labels = sorted({o["label"] for o in ours})
ours = [o["label"] for o in ours]
names = ["entailment", "not_entailment"]
diff = sum(names[r] != o for r, o in zip(ref, ours))
print(f"dev predictions after the last epoch: {diff} of {len(ref)} differ")
PY
