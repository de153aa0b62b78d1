"""Compares `clsnorm embed` outputs (JSON files) with Hugging Face transformers on the same
model, text and device: token ids, the [CLS] vector and the pooler output.

  python3 bench/gpu/compare_embed.py MODEL_DIR OUT.json MANIFEST.tsv

MANIFEST.tsv has one line per `clsnorm embed` output: its JSON file, the text, and the pair
text if any, tab-separated. Each clsnorm file is compared with transformers' BertModel (fp32, eval mode, its default
attention) on the device that file names; the summary (max |difference| per file, and
transformers' own CUDA-vs-CPU difference for scale) is printed and written to OUT.json.
"""

import json
import sys

import torch
from transformers import AutoModel, AutoTokenizer


def main():
    model_dir, out_path, manifest = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(model_dir)
    models = {}
    rows = []
    with open(manifest) as f:
        entries = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for path, text, *pair in entries:
        pair = pair[0] if pair else None
        with open(path) as f:
            c = json.load(f)
        device = "cuda" if c["device"].lower().startswith("cuda") else "cpu"
        if device not in models:
            models[device] = AutoModel.from_pretrained(model_dir).to(device).eval()
        enc = tok(text, pair, truncation=True, max_length=512, return_tensors="pt")
        same_ids = enc["input_ids"][0].tolist() == c["input_ids"]
        with torch.no_grad():
            out = models[device](**{k: v.to(device) for k, v in enc.items()})
            hf = {"cls": out.last_hidden_state[0, 0].cpu(), "pooler_output": out.pooler_output[0].cpu()}
            other = "cpu" if device == "cuda" else "cuda"
            if other == "cuda" and not torch.cuda.is_available():
                other = "cpu"
            if other not in models:
                models[other] = AutoModel.from_pretrained(model_dir).to(other).eval()
            o = models[other](**{k: v.to(other) for k, v in enc.items()})
        row = {"file": path, "device": c["device"], "tokens": len(c["input_ids"]), "same_token_ids": same_ids}
        for key in ("cls", "pooler_output"):
            mine = torch.tensor(c[key]["values"])
            row[f"{key}_max_abs_diff_vs_hf"] = (mine - hf[key]).abs().max().item()
            row[f"{key}_max_abs"] = hf[key].abs().max().item()
        row["hf_other_device"] = other
        row["hf_cuda_vs_cpu_cls_max_abs_diff"] = (o.last_hidden_state[0, 0].cpu() - hf["cls"]).abs().max().item()
        rows.append(row)
        print(json.dumps(row))
    with open(out_path, "w") as f:
        json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
