"""Checks that what clsnorm saves loads into transformers, for every family.

For each family of tests/fixtures/families: builds the small model with transformers (the
formula weights of families.py) and saves it with `save_pretrained`; fine-tunes it for 3 updates
with `clsnorm finetune` (RTE, IsoBN); loads the `best` checkpoint with `AutoModel.from_pretrained`
and compares its first-token state with `clsnorm embed` on the same checkpoint.

    cargo build --release && GLUE_DIR=../shared/data/glue \\
        bench/.venv/bin/python bench/golden/hf_roundtrip.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import families as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXE = os.path.join(ROOT, "target/release/clsnorm")


def main():
    glue = os.environ.get("GLUE_DIR") or sys.exit("set GLUE_DIR")
    fixtures = os.path.join(ROOT, "tests/fixtures/families")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for family in sorted(os.listdir(fixtures)):
            src = os.path.join(fixtures, family)
            model_dir = os.path.join(tmp, family)
            cfg = AutoConfig.from_pretrained(os.path.join(src, "small"))
            model = AutoModel.from_config(cfg).eval()
            F.set_weights(model)
            model.save_pretrained(model_dir)
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(os.path.join(src, f), model_dir)
            run = os.path.join(tmp, family + "-run")
            subprocess.run([EXE, "finetune", "--model", model_dir, "--task", "rte", "--data-dir", glue,
                            "--max-steps", "3", "--batch-size", "4", "--max-len", "48", "--norm", "isobn",
                            "--threads", "1", "--quiet", "--output", run],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            best = os.path.join(run, "best")
            emb = json.loads(subprocess.run([EXE, "embed", "--model", best, "--threads", "1",
                                             "a fine movie .", "it was good"],
                                            check=True, capture_output=True, text=True).stdout)
            back = AutoModel.from_pretrained(best).eval()
            tok = AutoTokenizer.from_pretrained(best)
            enc = tok("a fine movie .", "it was good", return_tensors="pt")
            assert enc["input_ids"][0].tolist() == emb["input_ids"], family
            kw = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            if family in ("distilbert", "modernbert"):
                kw.pop("token_type_ids", None)
            with torch.no_grad():
                h = back(**kw).last_hidden_state[0, 0]
            diff = (h - torch.tensor(emb["cls"]["values"])).abs().max().item()
            worst = max(worst, diff)
            print(f"{family}: {type(back).__name__} loads clsnorm's checkpoint; "
                  f"first-token state max |diff| {diff:.1e}")
    print(f"worst {worst:.1e}")
    assert worst < 1e-5


if __name__ == "__main__":
    main()
