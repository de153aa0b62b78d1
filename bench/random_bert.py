"""A random BERT model directory (config.json + model.safetensors, N(0, 0.02) weights) of any
shape, for measuring what loading costs without downloading weights. The tokenizer files are
copied from FROM (a model directory with vocab.txt).

    bench/.venv/bin/python bench/random_bert.py OUT HIDDEN LAYERS INTERMEDIATE [--vocab N]
        [--dtype float32|float16] [--from models/all-MiniLM-L6-v2]
"""
import argparse
import json
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file

ap = argparse.ArgumentParser()
ap.add_argument("out", type=pathlib.Path)
ap.add_argument("hidden", type=int)
ap.add_argument("layers", type=int)
ap.add_argument("intermediate", type=int)
ap.add_argument("--vocab", type=int, default=30522)
ap.add_argument("--dtype", default="float32")
ap.add_argument("--from", dest="source", type=pathlib.Path,
                default=pathlib.Path("models/all-MiniLM-L6-v2"))
a = ap.parse_args()
H, V, P = a.hidden, a.vocab, 512
a.out.mkdir(parents=True, exist_ok=True)
for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (a.source / f).exists():
        shutil.copy(a.source / f, a.out / f)
config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": H,
          "num_hidden_layers": a.layers, "num_attention_heads": max(1, H // 64),
          "intermediate_size": a.intermediate, "vocab_size": V, "max_position_embeddings": P,
          "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}
(a.out / "config.json").write_text(json.dumps(config, indent=2))
rng = np.random.default_rng(0)
t = {}


def normal(name, *shape):
    t[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(a.dtype)


def norm(prefix):
    t[prefix + ".weight"] = np.ones(H, a.dtype)
    t[prefix + ".bias"] = np.zeros(H, a.dtype)


normal("embeddings.word_embeddings.weight", V, H)
normal("embeddings.position_embeddings.weight", P, H)
normal("embeddings.token_type_embeddings.weight", 2, H)
norm("embeddings.LayerNorm")
for i in range(a.layers):
    p = f"encoder.layer.{i}."
    for m in ("query", "key", "value"):
        normal(p + f"attention.self.{m}.weight", H, H)
        normal(p + f"attention.self.{m}.bias", H)
    normal(p + "attention.output.dense.weight", H, H)
    normal(p + "attention.output.dense.bias", H)
    norm(p + "attention.output.LayerNorm")
    normal(p + "intermediate.dense.weight", a.intermediate, H)
    normal(p + "intermediate.dense.bias", a.intermediate)
    normal(p + "output.dense.weight", H, a.intermediate)
    normal(p + "output.dense.bias", H)
    norm(p + "output.LayerNorm")
normal("pooler.dense.weight", H, H)
normal("pooler.dense.bias", H)
save_file(t, str(a.out / "model.safetensors"), metadata={"format": "pt"})
