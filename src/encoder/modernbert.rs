//! ModernBERT (HF `ModernBertModel`, names and all): pre-LayerNorm blocks without biases,
//! rotary position embeddings (one base for global layers, another for local ones), local
//! layers attending within a sliding window, a GeGLU feed-forward network, and a final norm.
//! Task checkpoints keep the model under `model.` and the prediction head beside it as `head.`.
//!
//! The "pooler" [CLS] source is what `ModernBertForSequenceClassification` computes before its
//! output layer: its `head` (`norm(act(dense(x)))`) of the first token, or of the mean of the
//! real tokens with `classifier_pooling: "mean"`. The masked-LM checkpoints that are
//! ModernBERT's pre-trained weights have a trained head of exactly that shape under the same
//! name, which HF's classifier loads, and so does clsnorm; a checkpoint without it gets HF's
//! initialisation (N(0, initializer_range) dense, unit norm). Token types are ignored.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{parse_checked, HiddenAct};
use super::layers::{self, check, Shapes};
use super::packing::Layout;
use super::weights::Names;
use super::{EncoderConfig, EncoderModel, EncoderOutput, Family};
use crate::batch::InputLimits;
use crate::error::Result;

/// The ModernBERT family.
#[derive(Debug, Clone, Copy)]
pub struct ModernBertFamily;

impl Family for ModernBertFamily {
    fn model_types(&self) -> &'static [&'static str] {
        &["modernbert"]
    }

    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>> {
        let cfg = parse_checked(path, text, ModernBertConfig::validate)?;
        Ok(Box::new(cfg))
    }
}

/// How the classifier's head pools the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Cls,
    Mean,
}

/// Rotary base of one kind of layer (`rope_parameters.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    pub rope_theta: f64,
    #[serde(default = "d::rope_type")]
    pub rope_type: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// HF `ModernBertConfig` (defaults: ModernBERT-base). Older configs name the layer pattern
/// `global_attn_every_n_layers` and the bases `global_rope_theta`/`local_rope_theta`; both
/// forms are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModernBertConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::gelu")]
    pub hidden_activation: HiddenAct,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default = "d::pad_token_id")]
    pub pad_token_id: i64,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_attn_every_n_layers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<BTreeMap<String, Rope>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    #[serde(default = "d::local_attention")]
    pub local_attention: i64,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default = "d::pooling")]
    pub classifier_pooling: Pooling,
    #[serde(default)]
    pub classifier_dropout: f64,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "d::gelu")]
    pub classifier_activation: HiddenAct,
    pub model_type: String,
    /// Keys clsnorm does not use, kept so that a saved checkpoint carries them unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod d {
    use super::{HiddenAct, Pooling};
    pub fn vocab_size() -> i64 {
        50368
    }
    pub fn hidden_size() -> i64 {
        768
    }
    pub fn intermediate_size() -> i64 {
        1152
    }
    pub fn num_hidden_layers() -> i64 {
        22
    }
    pub fn num_attention_heads() -> i64 {
        12
    }
    pub fn gelu() -> HiddenAct {
        HiddenAct::Gelu
    }
    pub fn max_position_embeddings() -> i64 {
        8192
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn pad_token_id() -> i64 {
        50283
    }
    pub fn local_attention() -> i64 {
        128
    }
    pub fn pooling() -> Pooling {
        Pooling::Cls
    }
    pub fn rope_type() -> String {
        "default".into()
    }
}

impl ModernBertConfig {
    /// Whether layer `i` attends within the sliding window (else to the whole sequence).
    pub fn is_local(&self, i: i64) -> bool {
        match &self.layer_types {
            Some(types) => types.get(i as usize).map(String::as_str) == Some("sliding_attention"),
            None => i % self.global_attn_every_n_layers.unwrap_or(3) != 0,
        }
    }

    /// The rotary base of global (`full_attention`) or local (`sliding_attention`) layers.
    pub fn rope_theta(&self, local: bool) -> f64 {
        let key = if local {
            "sliding_attention"
        } else {
            "full_attention"
        };
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.get(key))
            .map(|r| r.rope_theta)
            .or(if local {
                self.local_rope_theta
            } else {
                self.global_rope_theta
            })
            .unwrap_or(if local { 10_000.0 } else { 160_000.0 })
    }

    /// Checks that the values describe a ModernBERT that clsnorm can build.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check::sizes(&[
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 20,
            ),
            ("local_attention", self.local_attention, 1 << 20),
        ])?;
        if self.hidden_size % self.num_attention_heads != 0
            || (self.hidden_size / self.num_attention_heads) % 2 != 0
        {
            return Err(format!(
                "hidden_size {} must split into num_attention_heads {} heads of an even size \
                 (rotary embeddings rotate pairs)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() as i64 != self.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(t) = types
                .iter()
                .find(|t| *t != "full_attention" && *t != "sliding_attention")
            {
                return Err(format!(
                    "layer type {} is not supported",
                    crate::excerpt::quoted(t)
                ));
            }
        }
        if self.global_attn_every_n_layers.is_some_and(|n| n < 1) {
            return Err("global_attn_every_n_layers must be at least 1".into());
        }
        for local in [false, true] {
            let theta = self.rope_theta(local);
            // Its powers are taken in f32: beyond ~1e30 the frequencies round to 0.
            if !(theta > 1.0 && theta <= 1e30) {
                return Err(format!(
                    "rope_theta must be a number above 1 and at most 1e30, found {theta}"
                ));
            }
        }
        if let Some((k, r)) = self
            .rope_parameters
            .iter()
            .flatten()
            .find(|(_, r)| r.rope_type != "default")
        {
            return Err(format!(
                "rope_parameters.{}.rope_type {} is not supported (only 'default')",
                crate::excerpt::quoted(k),
                crate::excerpt::quoted(&r.rope_type)
            ));
        }
        check::probabilities(&[
            ("attention_dropout", self.attention_dropout),
            ("embedding_dropout", self.embedding_dropout),
            ("mlp_dropout", self.mlp_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ])?;
        check::eps_and_init(Some(("norm_eps", self.norm_eps)), self.initializer_range)?;
        check::pad_in_vocab(self.pad_token_id, self.vocab_size)
    }

    fn linear(&self, p: nn::Path, inp: i64, out: i64, bias: bool) -> nn::Linear {
        layers::linear(p, self.initializer_range, inp, out, bias)
    }
    fn norm(&self, p: nn::Path) -> Norm {
        let h = self.hidden_size;
        Norm {
            weight: p.var("weight", &[h], nn::Init::Const(1.0)),
            bias: self
                .norm_bias
                .then(|| p.var("bias", &[h], nn::Init::Const(0.0))),
            hidden: h,
            eps: self.norm_eps,
        }
    }
}

impl EncoderConfig for ModernBertConfig {
    fn hidden_size(&self) -> i64 {
        self.hidden_size
    }

    fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout
    }

    fn initializer_range(&self) -> f64 {
        self.initializer_range
    }

    fn limits(&self) -> InputLimits {
        InputLimits {
            vocab_size: self.vocab_size,
            // Token types are not used by the model.
            type_vocab_size: None,
            max_positions: usize::try_from(self.max_position_embeddings).unwrap_or(0),
            pad_token_id: None,
        }
    }

    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        let (h, i, nb) = (self.hidden_size, self.intermediate_size, self.norm_bias);
        let mut m = Shapes::default();
        m.put("embeddings.tok_embeddings.weight", vec![self.vocab_size, h]);
        m.norm("embeddings.norm", h, nb);
        for l in 0..self.num_hidden_layers {
            let p = format!("layers.{l}");
            if l > 0 {
                m.norm(&format!("{p}.attn_norm"), h, nb);
            }
            m.linear(&format!("{p}.attn.Wqkv"), h, 3 * h, self.attention_bias);
            m.linear(&format!("{p}.attn.Wo"), h, h, self.attention_bias);
            m.norm(&format!("{p}.mlp_norm"), h, nb);
            m.linear(&format!("{p}.mlp.Wi"), h, 2 * i, self.mlp_bias);
            m.linear(&format!("{p}.mlp.Wo"), i, h, self.mlp_bias);
        }
        m.norm("final_norm", h, nb);
        m.linear("head.dense", h, h, self.classifier_bias);
        m.norm("head.norm", h, nb);
        m.0
    }

    fn names(&self) -> Names<'static> {
        Names {
            prefix: "model.",
            beside: &["head."],
            optional: &["head."],
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        super::hf_json(self, "ModernBertModel")
    }

    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let head_dim = h / self.num_attention_heads;
        let rotary = |local: bool| Rotary::new(head_dim, self.rope_theta(local));
        let layers = (0..self.num_hidden_layers)
            .map(|l| {
                let lp = p / "layers" / l;
                let local = self.is_local(l);
                Layer {
                    attn_norm: (l > 0).then(|| self.norm(&lp / "attn_norm")),
                    wqkv: self.linear(&lp / "attn" / "Wqkv", h, 3 * h, self.attention_bias),
                    wo: self.linear(&lp / "attn" / "Wo", h, h, self.attention_bias),
                    mlp_norm: self.norm(&lp / "mlp_norm"),
                    wi: self.linear(&lp / "mlp" / "Wi", h, 2 * i, self.mlp_bias),
                    mlp_wo: self.linear(&lp / "mlp" / "Wo", i, h, self.mlp_bias),
                    window: local.then_some(self.local_attention / 2),
                    rotary: rotary(local),
                    heads: self.num_attention_heads,
                    act: self.hidden_activation,
                    attention_dropout: self.attention_dropout,
                    mlp_dropout: self.mlp_dropout,
                }
            })
            .collect();
        Box::new(ModernBertModel {
            tok_embeddings: layers::embedding(
                p / "embeddings" / "tok_embeddings",
                self.initializer_range,
                self.vocab_size,
                h,
            ),
            embeddings_norm: self.norm(p / "embeddings" / "norm"),
            embedding_dropout: self.embedding_dropout,
            layers,
            final_norm: self.norm(p / "final_norm"),
            head_dense: self.linear(p / "head" / "dense", h, h, self.classifier_bias),
            head_norm: self.norm(p / "head" / "norm"),
            head_act: self.classifier_activation,
            pooling: self.classifier_pooling,
            unpadded: Cell::new(true),
        })
    }

    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}

/// LayerNorm with an optional bias (ModernBERT has none by default).
#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    hidden: i64,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.hidden],
            Some(&self.weight),
            self.bias.as_ref(),
            self.eps,
            false,
        )
    }
}

/// Rotary position embeddings of one base: `x cos + rotate_half(x) sin`, in f32.
#[derive(Debug)]
struct Rotary {
    inv_freq: Vec<f32>,
}

impl Rotary {
    fn new(head_dim: i64, theta: f64) -> Self {
        // HF computes `1 / base^(arange(0, d, 2) / d)` in f32.
        let d = head_dim as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / d))
            .collect();
        Rotary { inv_freq }
    }

    /// `cos` and `sin`, `[seq, head_dim]`.
    fn tables(&self, seq: i64, device: tch::Device) -> (Tensor, Tensor) {
        let inv = Tensor::from_slice(&self.inv_freq).to_device(device);
        let pos = Tensor::arange(seq, (Kind::Float, device));
        let freqs = pos.unsqueeze(1) * inv.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        x.to_kind(Kind::Float) * cos + rotated.to_kind(Kind::Float) * sin
    }
}

/// One pre-LayerNorm block (HF `ModernBertEncoderLayer`).
#[derive(Debug)]
struct Layer {
    attn_norm: Option<Norm>,
    wqkv: nn::Linear,
    wo: nn::Linear,
    mlp_norm: Norm,
    wi: nn::Linear,
    mlp_wo: nn::Linear,
    /// Half-width of the local window (`|i - j| <= window`), or `None` for a global layer.
    window: Option<i64>,
    rotary: Rotary,
    heads: i64,
    act: HiddenAct,
    attention_dropout: f64,
    mlp_dropout: f64,
}

impl Layer {
    /// `xs` in `layout`, the result so. `pad`: boolean `[batch, 1, 1, seq]`, true where a key
    /// may be attended to.
    fn forward(&self, xs: &Tensor, layout: Layout, pad: Option<&Tensor>, train: bool) -> Tensor {
        let normed = match &self.attn_norm {
            Some(n) => n.forward(xs),
            None => xs.shallow_clone(),
        };
        // Rotary positions count within each sequence, so attention runs padded.
        let qkv = layout.padded(&self.wqkv.forward(&normed));
        let (b, s, h3) = qkv
            .size3()
            .unwrap_or_else(|_| unreachable!("hidden states are 3-d"));
        let h = h3 / 3;
        let d = h / self.heads;
        let qkv = qkv.view([b, s, 3, self.heads, d]);
        let part = |i: i64| qkv.select(2, i).transpose(1, 2);
        let (cos, sin) = self.rotary.tables(s, xs.device());
        let q = Rotary::apply(&part(0), &cos, &sin).to_kind(xs.kind());
        let k = Rotary::apply(&part(1), &cos, &sin).to_kind(xs.kind());
        let v = part(2);
        let mask = match self.window {
            None => pad.map(Tensor::shallow_clone),
            Some(w) => {
                let idx = Tensor::arange(s, (Kind::Int64, xs.device()));
                let near = (idx.unsqueeze(1) - idx.unsqueeze(0)).abs().le(w);
                let near = near.unsqueeze(0).unsqueeze(0);
                Some(match pad {
                    Some(p) => near.logical_and(p),
                    None => near,
                })
            }
        };
        let p = self.attention_dropout;
        let ctx = super::layers::attention(&q, &k, &v, mask.as_ref(), p, train);
        let ctx = layout.from_padded(&ctx.transpose(1, 2).contiguous().view([b, s, h]));
        let att = layout.dropout(&self.wo.forward(&ctx), self.attention_dropout, train);
        let xs = xs + att;
        let inter = self.wi.forward(&self.mlp_norm.forward(&xs));
        let half = inter.size()[inter.dim() - 1] / 2;
        let (input, gate) = (inter.narrow(-1, 0, half), inter.narrow(-1, half, half));
        let mlp = layout.dropout(&(self.act.apply(&input) * gate), self.mlp_dropout, train);
        &xs + self.mlp_wo.forward(&mlp)
    }
}

/// HF `ModernBertModel`, plus the classifier's prediction head (`head.dense`, `head.norm`).
#[derive(Debug)]
pub struct ModernBertModel {
    tok_embeddings: nn::Embedding,
    embeddings_norm: Norm,
    embedding_dropout: f64,
    layers: Vec<Layer>,
    final_norm: Norm,
    head_dense: nn::Linear,
    head_norm: Norm,
    head_act: HiddenAct,
    pooling: Pooling,
    /// Run padded CPU batches packed ([`Layout`]), as HF's reference unpads.
    unpadded: Cell<bool>,
}

impl EncoderModel for ModernBertModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        let pad = super::key_mask(attention_mask);
        let mut slot = None;
        let layout = Layout::choose(attention_mask, self.unpadded.get(), &mut slot);
        let e = self.tok_embeddings.forward(&layout.from_padded(input_ids));
        let mut xs = layout.dropout(
            &self.embeddings_norm.forward(&e),
            self.embedding_dropout,
            train,
        );
        for layer in &self.layers {
            xs = layer.forward(&xs, layout, pad.as_ref(), train);
        }
        // Padding positions hold zeros when unpadded; the mean below reads real tokens only.
        let xs = layout.padded(&self.final_norm.forward(&xs));
        let cls = xs.select(1, 0);
        let pooled = match (self.pooling, attention_mask) {
            (Pooling::Cls, _) => cls.shallow_clone(),
            (Pooling::Mean, Some(m)) => {
                let m = m.to_kind(xs.kind()).unsqueeze(-1);
                (&xs * &m).sum_dim_intlist(1, false, xs.kind())
                    / m.sum_dim_intlist(1, false, xs.kind())
            }
            (Pooling::Mean, None) => xs.mean_dim(1, false, xs.kind()),
        };
        let pooler_output = self
            .head_norm
            .forward(&self.head_act.apply(&self.head_dense.forward(&pooled)));
        EncoderOutput {
            last_hidden_state: xs,
            cls,
            pooler_output,
        }
    }

    fn unpadded_switch(&self) -> Option<&Cell<bool>> {
        Some(&self.unpadded)
    }
}
