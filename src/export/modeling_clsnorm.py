"""A sequence classifier fine-tuned by clsnorm: encoder -> [CLS] vector -> normalizer -> linear.

Written by `clsnorm export` beside the weights, for
`AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)`. It is
inference code: every normalizer applies the statistics it kept in training, as clsnorm does
when it evaluates. The normalizers are those of "Improving BERT Fine-tuning with Embedding
Normalization" (Zhou, Du, Ren 2019) and "IsoBN" (Zhou, Lin, Ren, AAAI 2021); config.json's
`clsnorm` entry says which one, with its options, and where the [CLS] vector comes from.
"""

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import __CONFIG_CLASS__ as FamilyConfig
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput


class Identity(nn.Module):
    """`none`."""

    def __init__(self, hidden, options):
        super().__init__()

    def forward(self, x):
        return x


class Center(nn.Module):
    """`center`: x - running mean."""

    def __init__(self, hidden, options):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(hidden))

    def forward(self, x):
        return x - self.running_mean


class Standardize(nn.Module):
    """`standardize`: (x - mean) / sqrt(var + eps), statistics of the training set."""

    def __init__(self, hidden, options):
        super().__init__()
        self.eps = options["eps"]
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("var", torch.ones(hidden))

    def forward(self, x):
        return (x - self.mean) / torch.sqrt(self.var + self.eps)


class BatchNorm(nn.Module):
    """`batchnorm`: BatchNorm1d in eval mode (running statistics, optional affine)."""

    def __init__(self, hidden, options):
        super().__init__()
        self.eps = options["eps"]
        self.register_buffer("running_mean", torch.zeros(hidden))
        self.register_buffer("running_var", torch.ones(hidden))
        if options["affine"]:
            self.weight = nn.Parameter(torch.ones(hidden))
            self.bias = nn.Parameter(torch.zeros(hidden))
        else:
            self.weight = self.bias = None

    def forward(self, x):
        y = (x - self.running_mean) / torch.sqrt(self.running_var + self.eps)
        return y if self.weight is None else y * self.weight + self.bias


class LayerNorm(nn.Module):
    """`layernorm`: each vector to zero mean and unit variance (optional affine)."""

    def __init__(self, hidden, options):
        super().__init__()
        self.eps = options["eps"]
        self.hidden = hidden
        if options["affine"]:
            self.weight = nn.Parameter(torch.ones(hidden))
            self.bias = nn.Parameter(torch.zeros(hidden))
        else:
            self.weight = self.bias = None

    def forward(self, x):
        return nn.functional.layer_norm(x, (self.hidden,), self.weight, self.bias, self.eps)


def bias_corrected(value, steps, momentum):
    """A running average divided by 1 - (1 - m)^t, as Adam corrects its moments."""
    return value / torch.clamp(1.0 - (1.0 - momentum) ** steps, min=1e-12)


class IsoBN(nn.Module):
    """`isobn`, IsoBN's scale from its running covariance C and standard deviations s:

    rho = clamp(C / (s s^T), -1, 1);  gamma_j = mean_k rho_jk^2;  a = (gamma s + eps)^-beta;
    a *= sqrt(tr C / (sum_j C_jj a_j^2 + eps));  out = x a   (the identity before statistics)
    """

    def __init__(self, hidden, options):
        super().__init__()
        self.eps = options["eps"]
        self.beta = options["beta"]
        self.momentum = options["momentum"]
        self.bias_correction = options["bias_correction"]
        self.register_buffer("running_cov", torch.zeros(hidden, hidden))
        self.register_buffer("running_std", torch.zeros(hidden))
        self.register_buffer("num_batches_tracked", torch.zeros(()))

    def scale(self):
        c, s = self.running_cov, self.running_std
        if self.bias_correction:
            c = bias_corrected(c, self.num_batches_tracked, self.momentum)
            s = bias_corrected(s, self.num_batches_tracked, self.momentum)
        denom = torch.outer(s, s)
        rho = torch.where(denom > 0, c / denom, torch.zeros_like(denom)).clamp(-1.0, 1.0)
        gamma = rho.square().mean(dim=1)
        a = (gamma * s + self.eps) ** -self.beta
        diag = torch.diagonal(c)
        trace = diag.sum()
        a = a * torch.sqrt(trace / ((diag * a.square()).sum() + self.eps))
        return torch.where(trace > 0, a, torch.ones_like(a))

    def forward(self, x):
        return x * self.scale().to(x.dtype)


class Whiten(nn.Module):
    """`whiten`: ZCA whitening with the bias-corrected running mean and covariance:
    (x - mean) U diag((max(lambda, 0) + eps)^-1/2) U^T  (the identity before statistics)."""

    def __init__(self, hidden, options):
        super().__init__()
        self.eps = options["eps"]
        self.momentum = options["momentum"]
        self.register_buffer("running_mean", torch.zeros(hidden))
        self.register_buffer("running_cov", torch.zeros(hidden, hidden))
        self.register_buffer("num_batches_tracked", torch.zeros(()))

    def forward(self, x):
        if self.num_batches_tracked <= 0:
            return x
        t = self.num_batches_tracked
        mean = bias_corrected(self.running_mean, t, self.momentum)
        cov = bias_corrected(self.running_cov, t, self.momentum)
        lam, u = torch.linalg.eigh(cov)
        w = (u * torch.rsqrt(lam.clamp(min=0.0) + self.eps).unsqueeze(0)) @ u.T
        return ((x.to(cov.dtype) - mean) @ w).to(x.dtype)


class L2(nn.Module):
    """`l2`: each vector to unit length, times a (learned or fixed) scale."""

    def __init__(self, hidden, options):
        super().__init__()
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12) * self.scale


NORMALIZERS = {
    "none": Identity,
    "center": Center,
    "standardize": Standardize,
    "batchnorm": BatchNorm,
    "layernorm": LayerNorm,
    "isobn": IsoBN,
    "whiten": Whiten,
    "l2": L2,
}


class ClsnormForSequenceClassification(PreTrainedModel):
    config_class = FamilyConfig
    base_model_prefix = "__PREFIX__"

    def __init__(self, config):
        super().__init__(config)
        c = config.clsnorm
        self.cls_source = c["cls_source"]
        self.family = c["family"]
        hidden = config.hidden_size
        self.__PREFIX__ = AutoModel.from_config(config)
        # The pooler of the family's own sequence classifier, where its base model has none.
        if self.cls_source == "pooler" and self.family in ("electra", "distilbert", "deberta-v2"):
            self.pooler = nn.Module()
            self.pooler.dense = nn.Linear(hidden, hidden)
        if self.cls_source == "pooler" and self.family == "modernbert":
            from transformers.models.modernbert.modeling_modernbert import ModernBertPredictionHead

            self.head = ModernBertPredictionHead(config)
        self.normalizer = NORMALIZERS[c["norm"]](hidden, c["norm_options"])
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def cls_vector(self, out, attention_mask):
        first = out.last_hidden_state[:, 0]
        if self.cls_source == "hidden":
            return first
        if self.family in ("bert", "roberta", "xlm-roberta", "camembert"):
            return out.pooler_output
        if self.family == "electra":
            return ACT2FN["gelu"](self.pooler.dense(first))
        if self.family == "distilbert":
            return torch.relu(self.pooler.dense(first))
        if self.family == "deberta-v2":
            return ACT2FN[self.config.pooler_hidden_act](self.pooler.dense(first))
        # ModernBERT: its head, of the first token or of the mean of the real tokens.
        if self.config.classifier_pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            first = (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1)
        return self.head(first)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.family in ("bert", "electra", "deberta-v2"):
            inputs["token_type_ids"] = token_type_ids
        out = getattr(self, self.base_model_prefix)(**inputs)
        cls = self.cls_vector(out, attention_mask).float()
        logits = self.classifier(self.normalizer(cls))
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
