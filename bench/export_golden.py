"""transformers' logits on the folders `clsnorm export` wrote, for tests/export.rs.

    CLSNORM_WRITE_EXPORTS=/tmp/exports cargo test --test export
    bench/.venv/bin/python bench/export_golden.py /tmp/exports

Loads every exported folder with AutoModelForSequenceClassification (trust_remote_code=True:
the folders without a normalizer are plain transformers classes and need none) and its
tokenizer with AutoTokenizer, and writes tests/fixtures/export/transformers.json: the logits of
each case's texts (singles, or pairs), transformers' version, and the sha256 of the remote
code's template they were computed with.
"""

import hashlib
import json
import pathlib
import sys

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

root = pathlib.Path(__file__).resolve().parent.parent
exports = pathlib.Path(sys.argv[1])
transformers.logging.set_verbosity_error()
cases = {}
for d in sorted(p for p in exports.iterdir() if (p / "config.json").is_file()):
    spec = json.loads((d / "texts.json").read_text())
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForSequenceClassification.from_pretrained(d, trust_remote_code=True).eval()
    firsts = [a for a, _ in spec["texts"]]
    seconds = [b for _, b in spec["texts"]] if spec["pairs"] else None
    enc = tok(firsts, seconds, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits.double()
    cases[d.name] = {"class": type(model).__name__, "logits": logits.tolist()}
    print(d.name, type(model).__name__, [round(x, 4) for x in logits[0].tolist()])
template = (root / "src/export/modeling_clsnorm.py").read_bytes()
out = {
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "modeling_sha256": hashlib.sha256(template).hexdigest(),
    "cases": cases,
}
path = root / "tests/fixtures/export/transformers.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"{len(cases)} cases -> {path}")
