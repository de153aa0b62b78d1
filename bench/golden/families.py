"""Golden values for clsnorm's model families (tests/families.rs), from transformers.

For each family, writes into OUT/FAMILY (default tests/fixtures/families):
  tokenizer.json, tokenizer_config.json, special_tokens_map.json
                 a small tokenizer of the family's kind (byte-level BPE for RoBERTa,
                 SentencePiece-style Unigram for XLM-R, WordPiece for ELECTRA and DistilBERT),
                 trained with `tokenizers` on the first
                 2,000 sentences of GLUE's SST-2 and wrapped in the family's fast tokenizer
  SIZE/config.json
                 two configs per family (`small`: hidden 32; `h256`: hidden 256)
  golden.json    per size: the examples' token ids and, in eval mode, the first-token state and
                 the head input of every example of one padded batch: RoBERTa's pooler output;
                 for ELECTRA and DistilBERT, whose head-side dense layer is not part of HF's base
                 model, act(W h_cls + b) with W, b from the formula as clsnorm's `pooler.dense`
                 (gelu as ElectraClassificationHead, relu as DistilBERT's pre_classifier)

The weights are not stored: every parameter is a fixed formula of its position in the sorted
list of parameter names and of its element index (`formula` below, repeated in
tests/families.rs), so the Rust test rebuilds the same checkpoint. The script also checks that
transformers loads a checkpoint saved this way (`AutoModel.from_pretrained`).

    bench/setup.sh && GLUE_DIR=../shared/data/glue bench/.venv/bin/python bench/golden/families.py [--retrain] [OUT [FAMILY...]]
"""

import json
import math
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders
from transformers import AutoModel, AutoTokenizer, RobertaTokenizerFast, XLMRobertaTokenizerFast
from transformers import DistilBertTokenizerFast, ElectraTokenizerFast
from transformers import RobertaConfig, RobertaModel, XLMRobertaConfig, XLMRobertaModel
from transformers import DistilBertConfig, DistilBertModel, ElectraConfig, ElectraModel
from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast
from transformers import DebertaV2Config, DebertaV2Model, DebertaV2TokenizerFast

EXAMPLES = [
    ("a gorgeous , witty , seductive movie .", None),
    ("the plot is nothing but boilerplate clichés", "it was not very good ."),
    ("bad", None),
    ("this is a film well worth seeing , talking and singing heads and all .",
     "yes , the movie is worth it"),
]
SIZES = {
    "small": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "h256": dict(hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=512),
}
MAX_POSITIONS = 66  # 64 usable positions after RoBERTa's padding offset


def formula(t, n):
    """Values of the t-th parameter (sorted names) with n elements; scale set by the caller."""
    j = torch.arange(n, dtype=torch.float64)
    return torch.sin(0.37 * j + 1.3 * t)


def value(t, name, shape):
    """Parameter `name`, the t-th of the sorted names: LayerNorm weights 1 + 0.1 s, biases
    0.02 s, others 0.05 s."""
    n = 1
    for d in shape:
        n *= d
    s = formula(t, n).reshape(shape)
    if name.lower().endswith("norm.weight"):
        return 1.0 + 0.1 * s
    if name.endswith("bias"):
        return 0.02 * s
    return 0.05 * s


def set_weights(model, extra=None):
    """Every parameter from `formula`, numbered over the sorted names of the model's parameters
    and `extra` (name -> shape: clsnorm's own head-side layer); returns the extra tensors."""
    sd = model.state_dict()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    shapes.update(extra or {})
    out = {}
    with torch.no_grad():
        for t, name in enumerate(sorted(shapes)):
            v = value(t, name, shapes[name])
            if name in sd:
                sd[name].copy_(v.to(sd[name].dtype))
            else:
                out[name] = v.float()
    return out


def sentences(glue):
    with open(os.path.join(glue, "SST-2", "train.tsv"), encoding="utf-8") as f:
        next(f)
        return [line.split("\t")[0] for _, line in zip(range(2000), f)]


def roberta_tokenizer(texts, out):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    fast = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                pad_token="<pad>", mask_token="<mask>")
    fast.save_pretrained(out)
    return fast


def xlmr_tokenizer(texts, out):
    special = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"')])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=special, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>")
    fast.save_pretrained(out)
    return fast


def wordpiece_tokenizer(fast_class):
    def make(texts, out):
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=special,
                                            show_progress=False)
        tok.train_from_iterator(texts, trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        fast = fast_class(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                          pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
        fast.save_pretrained(out)
        return fast
    return make


def modernbert_tokenizer(texts, out):
    special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    fast.save_pretrained(out)
    return fast


def modernbert_config(tok, dims):
    # Local layers see 4 tokens either side, so the window matters at these lengths.
    layers = 4 if dims["hidden_size"] == 32 else 3
    return ModernBertConfig(vocab_size=len(tok), hidden_size=dims["hidden_size"],
                            intermediate_size=dims["intermediate_size"],
                            num_hidden_layers=layers,
                            num_attention_heads=dims["num_attention_heads"],
                            max_position_embeddings=64, local_attention=8,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                            eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id,
                            sep_token_id=tok.sep_token_id,
                            attn_implementation="sdpa")


def deberta_tokenizer(texts, out):
    special = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=special, unk_token="[UNK]",
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(["[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = DebertaV2TokenizerFast(tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]",
                                  unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]")
    fast.save_pretrained(out)
    return fast


def deberta_config(tok, dims):
    # small: DeBERTa-v3's layout (shared keys, log buckets, normed relative embeddings, no
    # absolute positions or token types); h256: separate position projections, absolute
    # positions, token types and narrower embeddings projected.
    v3 = dims["hidden_size"] == 32
    extra = {} if v3 else {"embedding_size": 128}
    return DebertaV2Config(vocab_size=len(tok), max_position_embeddings=64,
                           relative_attention=True, position_buckets=16 if v3 else -1,
                           max_relative_positions=64 if v3 else 24,
                           pos_att_type=["p2c", "c2p"], share_att_key=v3,
                           norm_rel_ebd="layer_norm" if v3 else "none",
                           position_biased_input=not v3, type_vocab_size=0 if v3 else 2,
                           layer_norm_eps=1e-7, pad_token_id=tok.pad_token_id, **extra, **dims)


def roberta_config(Config):
    def make(tok, dims):
        return Config(vocab_size=len(tok), max_position_embeddings=MAX_POSITIONS,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, type_vocab_size=1, **dims)
    return make


def electra_config(tok, dims):
    # small: embeddings narrower than the hidden states (projected); h256: as wide.
    emb = 16 if dims["hidden_size"] == 32 else dims["hidden_size"]
    return ElectraConfig(vocab_size=len(tok), max_position_embeddings=64, embedding_size=emb,
                         pad_token_id=tok.pad_token_id, **dims)


def distilbert_config(tok, dims):
    return DistilBertConfig(vocab_size=len(tok), max_position_embeddings=64,
                            pad_token_id=tok.pad_token_id, dim=dims["hidden_size"],
                            n_layers=dims["num_hidden_layers"], n_heads=dims["num_attention_heads"],
                            hidden_dim=dims["intermediate_size"])


def pooler_of(model, head, activation):
    """The head input of the families whose classification head clsnorm keeps beside the
    model: activation(W h_cls + b) (`pooler.dense`), or ModernBERT's head
    norm(gelu(W h_cls)) (`head.dense`, `head.norm`, no biases)."""
    def f(o):
        h = o.last_hidden_state[:, 0]
        if activation == "modernbert":
            x = torch.nn.functional.gelu(h @ head["head.dense.weight"].T)
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), head["head.norm.weight"],
                                                  None, model.config.norm_eps)
        return activation(h @ head["pooler.dense.weight"].T + head["pooler.dense.bias"])
    return f


# family: (config, model class, tokenizer, clsnorm's extra head-side layer?, its activation)
FAMILIES = {
    "roberta": (roberta_config(RobertaConfig), RobertaModel, roberta_tokenizer, None),
    "xlm-roberta": (roberta_config(XLMRobertaConfig), XLMRobertaModel, xlmr_tokenizer, None),
    "electra": (electra_config, ElectraModel, wordpiece_tokenizer(ElectraTokenizerFast),
                torch.nn.functional.gelu),
    "distilbert": (distilbert_config, DistilBertModel,
                   wordpiece_tokenizer(DistilBertTokenizerFast), torch.relu),
    # The head input is the classifier's head (dense, gelu, norm) of the first token.
    "modernbert": (modernbert_config, ModernBertModel, modernbert_tokenizer, "modernbert"),
    # The head input is the classifier's ContextPooler: gelu(W h_cls + b).
    "deberta-v2": (deberta_config, DebertaV2Model, deberta_tokenizer, torch.nn.functional.gelu),
}


def main():
    glue = os.environ.get("GLUE_DIR") or sys.exit("set GLUE_DIR")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    texts = sentences(glue)
    retrain = "--retrain" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--retrain"]
    out_root = args[0] if args else os.path.join(root, "tests/fixtures/families")
    only = args[1:]
    for family, (make_cfg, Model, make_tok, head_act) in FAMILIES.items():
        if only and family not in only:
            continue
        out = os.path.join(out_root, family)
        os.makedirs(out, exist_ok=True)
        # The trainers break ties in an order that varies between runs, so a tokenizer once
        # made is kept (the committed fixture); --retrain makes new ones.
        if os.path.exists(os.path.join(out, "tokenizer.json")) and not retrain:
            tok = AutoTokenizer.from_pretrained(out)
        else:
            tok = make_tok(texts, out)
        ids = [tok(a, b)["input_ids"] for a, b in EXAMPLES]
        type_ids = [tok(a, b, return_token_type_ids=True)["token_type_ids"] for a, b in EXAMPLES]
        golden = {"examples": [[a, b] for a, b in EXAMPLES], "input_ids": ids, "sizes": {}}
        for size, dims in SIZES.items():
            cfg = make_cfg(tok, dims)
            torch.manual_seed(0)
            model = Model(cfg).eval()
            h = dims["hidden_size"]
            extra = {"pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)} if head_act else None
            if head_act == "modernbert":
                extra = {"head.dense.weight": (h, h), "head.norm.weight": (h,)}
            head = set_weights(model, extra)
            os.makedirs(os.path.join(out, size), exist_ok=True)
            cfg.to_json_file(os.path.join(out, size, "config.json"))
            # One padded batch: pad id everywhere after each example, mask 0 there.
            longest = max(map(len, ids))
            input_ids = torch.full((len(ids), longest), tok.pad_token_id)
            mask = torch.zeros((len(ids), longest), dtype=torch.long)
            types = torch.zeros((len(ids), longest), dtype=torch.long)
            for i, row in enumerate(ids):
                input_ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
                types[i, : len(row)] = torch.tensor(type_ids[i])
            kw = {} if family in ("distilbert", "modernbert") else {"token_type_ids": types}
            with torch.no_grad():
                o = model(input_ids=input_ids, attention_mask=mask, **kw)
            pooled = pooler_of(model, head, head_act)(o) if head_act else o.pooler_output
            golden["sizes"][size] = {
                "cls": o.last_hidden_state[:, 0].tolist(),
                "pooler": pooled.tolist(),
            }
            # transformers loads what clsnorm writes: the same formula weights, saved as
            # safetensors under the model's own names, through AutoModel.
            with tempfile.TemporaryDirectory() as d:
                cfg.to_json_file(os.path.join(d, "config.json"))
                save_file({k: v.contiguous() for k, v in model.state_dict().items()
                           if not k.endswith(("position_ids", "token_type_ids"))},
                          os.path.join(d, "model.safetensors"))
                back = AutoModel.from_pretrained(d).eval()
                with torch.no_grad():
                    o2 = back(input_ids=input_ids, attention_mask=mask, **kw)
                assert torch.equal(o2.last_hidden_state, o.last_hidden_state), family
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(golden, f)
        print(family, "tokens per example:", [len(i) for i in ids])


if __name__ == "__main__":
    main()
