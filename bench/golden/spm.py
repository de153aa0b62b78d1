"""Golden token ids for tokenizers built from SentencePiece models and RoBERTa's vocab/merges
(issue 42): trains small SentencePiece models on GLUE sentences, converts each folder the way
transformers 4.57 does (AutoTokenizer without a tokenizer.json), and writes the ids of single
sentences and pairs, with sentencepiece's own ids beside them, into tests/fixtures/spm/.

    python3 -m venv bench/.venv-spm
    bench/.venv-spm/bin/pip install transformers==4.57.1 sentencepiece==0.2.3 protobuf
    GLUE_DIR=../shared/data/glue bench/.venv-spm/bin/python bench/golden/spm.py

transformers 5.x mis-converts DeBERTa's spm models (all [UNK]; its issue #42583), so 4.57.
"""

import csv
import json
import os
import pathlib
import shutil
import sys

import sentencepiece as spm
import transformers
from transformers import AutoTokenizer

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "tests" / "fixtures" / "spm"
glue = pathlib.Path(os.environ.get("GLUE_DIR", root.parent / "shared" / "data" / "glue"))


def glue_sentences(n):
    texts = []
    with open(glue / "SST-2" / "train.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["sentence"])
    with open(glue / "RTE" / "train.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["sentence1"])
    return texts[:n]


# Hostile text: accents, CJK, emoji, control characters, NFKC-sensitive forms, long runs of
# spaces, the special tokens' own spellings, empty and blank text.
HOSTILE = [
    "Ça coûte 5 € à Zürich, naïve café déjà vu",
    "日本語のテキストと中文文本",
    "emoji 👍🏽 and 🇫🇷 flags, zero\u200bwidth",
    "tab\there\u0007bell\u0000nul and\u0085next line",
    "ﬁne ｆｕｌｌｗｉｄｔｈ ① Ⅸ ㎏ ½ ﬀ",
    "many      spaces   and trailing   ",
    "   leading spaces",
    "[CLS] [SEP] [MASK] <s> </s> <mask> <unk> [UNK] <pad>",
    "",
    " ",
    "a" * 300,
    "UPPER lower MiXeD",
]

# (folder, model file, tokenizer_config, trainer options)
MODELS = [
    (
        "deberta-v3-unigram",
        "spm.model",
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False},
        dict(model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
             pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
             user_defined_symbols=["[MASK]"]),
    ),
    (
        "deberta-v3-bytes-lower",
        "spm.model",
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": True, "split_by_punct": True},
        dict(model_type="unigram", byte_fallback=True, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
             pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
             control_symbols=["[MASK]"]),
    ),
    (
        "xlm-roberta-unigram",
        "sentencepiece.bpe.model",
        {"tokenizer_class": "XLMRobertaTokenizer"},
        dict(model_type="unigram"),
    ),
    (
        "xlm-roberta-bpe",
        "sentencepiece.bpe.model",
        {"tokenizer_class": "XLMRobertaTokenizer"},
        dict(model_type="bpe"),
    ),
    (
        "camembert-unigram",
        "sentencepiece.bpe.model",
        {"tokenizer_class": "CamembertTokenizer"},
        dict(model_type="unigram", control_symbols=["<s>NOTUSED", "</s>NOTUSED"]),
    ),
]


def encode_all(tok, texts):
    singles = [tok(t)["input_ids"] for t in texts]
    pairs = [tok(a, b)["input_ids"] for a, b in zip(texts, reversed(texts))]
    types = [tok(a, b).get("token_type_ids") for a, b in zip(texts, reversed(texts))]
    return singles, pairs, types


def main():
    texts = glue_sentences(40) + HOSTILE
    corpus = out / "corpus.txt"
    out.mkdir(parents=True, exist_ok=True)
    corpus.write_text("\n".join(glue_sentences(3000)) + "\n", encoding="utf-8")
    goldens = {"transformers": transformers.__version__, "sentencepiece": spm.__version__,
               "texts": texts, "models": {}}
    for name, file, config, opts in MODELS:
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(d / "m"), vocab_size=600,
            character_coverage=0.9995, num_threads=1, minloglevel=2, **opts)
        (d / "m.model").rename(d / file)
        (d / "m.vocab").unlink()
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
        tok = AutoTokenizer.from_pretrained(str(d), use_fast=True)
        assert tok.is_fast, name
        singles, pairs, types = encode_all(tok, texts)
        sp = spm.SentencePieceProcessor(model_file=str(d / file))
        goldens["models"][name] = {
            "file": file, "singles": singles, "pairs": pairs, "pair_types": types,
            "sentencepiece": [sp.encode(t) for t in texts],
        }
        print(name, tok.__class__.__name__, len(tok), file=sys.stderr)
    # RoBERTa's byte-level BPE from vocab.json + merges.txt (no tokenizer.json), taken from the
    # family fixture's tokenizer.json.
    fam = json.loads((root / "tests/fixtures/families/roberta/tokenizer.json").read_text())
    d = out / "roberta-vocab-merges"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(fam["model"]["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in fam["model"]["merges"]]
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}) + "\n")
    tok = AutoTokenizer.from_pretrained(str(d), use_fast=True)
    singles, pairs, types = encode_all(tok, texts)
    goldens["models"]["roberta-vocab-merges"] = {
        "file": "vocab.json", "singles": singles, "pairs": pairs, "pair_types": types,
    }
    corpus.unlink()
    (out / "golden.json").write_text(json.dumps(goldens, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
