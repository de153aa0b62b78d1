"""Golden values for `--precision bf16|fp16` (tests/golden_minilm.rs): all-MiniLM-L6-v2 under
torch.autocast on the CPU, as Hugging Face Trainer's --bf16/--fp16 would run it.

Writes OUT (default tests/fixtures/autocast/minilm.json): for one padded batch of singles and
pairs, the token ids, and per precision (fp32, bf16, fp16) the [CLS] state and the pooler output
of every example, from transformers' BertModel in eval mode, cast to fp32 after the forward.

    bench/setup.sh && bench/.venv/bin/python bench/golden/autocast.py [OUT]
"""

import json
import os
import sys

import torch
from transformers import AutoTokenizer, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = [
    ("A man is eating food.", None),
    ("The quick brown fox jumps over the lazy dog.", "A fast animal leaps."),
    ("Normalization of the [CLS] embedding, re-visited: does it help fine-tuning?", None),
]
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/fixtures/autocast/minilm.json")
    model_dir = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    # One batch of singles and pairs, padded by hand (a batch call takes pairs for all or none).
    rows = [tok(a, b) if b else tok(a) for a, b in EXAMPLES]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        types[i, :n] = torch.tensor(r["token_type_ids"])
        mask[i, :n] = 1
    golden = {
        "torch": torch.__version__,
        "input_ids": [r["input_ids"] for r in rows],
        "token_type_ids": [r["token_type_ids"] for r in rows],
    }
    with torch.no_grad():
        for name, dtype in DTYPES.items():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                o = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
            golden[name] = {
                "cls": o.last_hidden_state[:, 0].float().tolist(),
                "pooler": o.pooler_output.float().tolist(),
            }
    for name in ("bf16", "fp16"):
        d = (torch.tensor(golden[name]["cls"]) - torch.tensor(golden["fp32"]["cls"])).abs().max().item()
        print(f"{name} vs fp32, max |cls difference|: {d:.3e}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(golden, f)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
