"""Golden values for clsnorm's training test (tests/train_golden.rs), from PyTorch + transformers.

Writes, deterministically, into OUT (default tests/fixtures/train-golden):
  model/       a small random BERT (transformers' own init), its vocab.txt and tokenizer config
  data/        16 sentence pairs in a custom TSV, some long enough to be truncated at 24 tokens
  golden.json  the run's options, the loss of each update, and where each scenario's weights are
  SCENARIO.safetensors  every parameter after the updates (HF encoder names + classifier.*)

Each scenario is what `clsnorm finetune` does with the options in golden.json: one batch of all
16 pairs (padded to its longest, longest-first truncation), dropout off, the head initialised
from the same seed as clsnorm's (`hf`: torch.randn * initializer_range; `torch`: nn.Linear's
default), cross-entropy, AdamW (torch.optim.AdamW; no weight decay on biases and LayerNorm
weights), linear warmup then decay (HF's get_linear_schedule_with_warmup), 4 updates.

    bench/setup.sh && bench/.venv/bin/python bench/golden/train_golden.py
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = (
    "the a cat dog movie film was is very quite good bad it on mat sat runs slowly and but "
    "not really plot actor long short story"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ly", "##ed"]
SEED = 7
MAX_LEN = 24
UPDATES = 4
SCENARIOS = {
    # name: (classifier init, lr, weight decay, warmup updates, layer-wise lr decay)
    "hf": ("hf", 1e-3, 0.01, 1, None),
    "torch": ("torch", 2e-3, 0.0, 2, None),
    # ELECTRA's / DeBERTa's recipe: depth 0 embeddings, i + 1 layer i, L + 1 pooler and head;
    # each parameter at lr * decay^(L + 1 - depth), one schedule for all.
    "layer_decay": ("hf", 1e-3, 0.01, 1, 0.7),
}


def depth(name, layers):
    """The layer-wise decay's depth of a parameter (clsnorm's src/train/layer_decay.rs)."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layer", "layers") and b.isdigit():
            return int(b) + 1
    return 0 if parts[0] == "embeddings" else layers + 1


def pairs():
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(16):
        n_a = int(torch.randint(2, 16, (1,), generator=g))
        n_b = int(torch.randint(1, 12, (1,), generator=g))
        a = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (n_a,), generator=g)]
        b = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (n_b,), generator=g)]
        label = i % 2
        a.insert(int(torch.randint(0, len(a) + 1, (1,), generator=g)), "good" if label else "bad")
        out.append((" ".join(a), " ".join(b), label))
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/train-golden"
    model_dir, data_dir = os.path.join(out, "model"), os.path.join(out, "data")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    torch.manual_seed(0)
    # The committed model is kept: a new scenario must not change the others' golden values.
    keep_model = os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    cfg = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if not keep_model:
        BertModel(cfg).save_pretrained(model_dir)
    with open(os.path.join(model_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)
    rows = pairs()
    with open(os.path.join(data_dir, "train.tsv"), "w") as f:
        f.write("a\tb\tlabel\n")
        for a, b, label in rows:
            f.write(f"{a}\t{b}\t{label}\n")

    tok = BertTokenizerFast(os.path.join(model_dir, "vocab.txt"), do_lower_case=True)
    enc = tok(
        [r[0] for r in rows],
        [r[1] for r in rows],
        truncation="longest_first",
        max_length=MAX_LEN,
        padding=True,
        return_tensors="pt",
    )
    labels = torch.tensor([r[2] for r in rows])
    golden = {"seed": SEED, "max_len": MAX_LEN, "updates": UPDATES, "scenarios": {}}
    torch.set_num_threads(1)
    for name, (init, lr, wd, warmup, decay) in SCENARIOS.items():
        model = BertModel.from_pretrained(model_dir).train()
        torch.manual_seed(SEED)
        head = torch.nn.Linear(cfg.hidden_size, 2)
        if init == "hf":
            torch.manual_seed(SEED)
            with torch.no_grad():
                head.weight.copy_(torch.randn(2, cfg.hidden_size) * cfg.initializer_range)
                head.bias.zero_()
        named = [(n, p) for n, p in model.named_parameters()] + [
            ("classifier." + n, p) for n, p in head.named_parameters()
        ]
        no_decay = lambda n: n.endswith("bias") or "LayerNorm." in n
        layers = cfg.num_hidden_layers
        rate = lambda n: lr if decay is None else lr * decay ** (layers + 1 - depth(n, layers))
        opt = torch.optim.AdamW(
            [
                {"params": [p], "weight_decay": 0.0 if no_decay(n) else wd, "lr": rate(n)}
                for n, p in named
            ],
            lr=lr,
            betas=(0.9, 0.999),
            eps=1e-6,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: s / max(1, warmup)
            if s < warmup
            else max(0.0, (UPDATES - s) / max(1, UPDATES - warmup)),
        )
        losses = []
        for _ in range(UPDATES):
            out_ = model(**enc).pooler_output
            loss = torch.nn.functional.cross_entropy(head(out_), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        save_file(
            {n: p.detach().contiguous() for n, p in named},
            os.path.join(out, f"{name}.safetensors"),
        )
        golden["scenarios"][name] = {
            "classifier_init": init,
            "lr": lr,
            "weight_decay": wd,
            "warmup_steps": warmup,
            "layer_decay": decay,
            "losses": losses,
        }
    golden["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
