//! DeBERTa-v2 and -v3 (HF `DebertaV2Model`, names and all): BERT's post-LayerNorm blocks with
//! disentangled attention, content-to-content scores plus content-to-position (`c2p`) and
//! position-to-content (`p2c`) scores against a shared table of relative-position embeddings,
//! with log-bucketed distances. Task checkpoints keep the model under `deberta.`.
//!
//! The "pooler" [CLS] source is `DebertaV2ForSequenceClassification`'s `ContextPooler`,
//! `act(W h_[CLS] + b)` (gelu by default). It sits beside the model in HF's classifier
//! (`pooler.dense`); masked-LM checkpoints, as DeBERTa-v3's pre-trained weights are, do not have
//! it, so it is then initialised as HF does and trained. The convolution layer of DeBERTa-v2
//! xlarge/xxlarge (`conv_kernel_size > 0`) is not implemented; such configs are refused.
use std::collections::BTreeMap;
use std::path::Path;

use super::layers::ApplyDropout;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{parse_checked, HiddenAct};
use super::layers::{self, check, Shapes};
use super::weights::Names;
use super::{EncoderConfig, EncoderModel, EncoderOutput, Family};
use crate::batch::InputLimits;
use crate::error::Result;

/// The DeBERTa-v2/v3 family.
#[derive(Debug, Clone, Copy)]
pub struct DebertaV2Family;

impl Family for DebertaV2Family {
    fn model_types(&self) -> &'static [&'static str] {
        &["deberta-v2"]
    }

    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>> {
        let cfg = parse_checked(path, text, DebertaV2Config::validate)?;
        Ok(Box::new(cfg))
    }
}

/// `pos_att_type`: a list, or an older `"p2c|c2p"` string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

impl PosAttType {
    fn has(&self, kind: &str) -> bool {
        match self {
            PosAttType::List(v) => v.iter().any(|k| k.trim().eq_ignore_ascii_case(kind)),
            PosAttType::Joined(s) => s.split('|').any(|k| k.trim().eq_ignore_ascii_case(kind)),
        }
    }
}

/// HF `DebertaV2Config`, with the keys HF reads through `getattr` (defaults as HF's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebertaV2Config {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d::gelu")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub type_vocab_size: i64,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "d::minus_one")]
    pub max_relative_positions: i64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "d::yes")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub pos_att_type: Option<PosAttType>,
    #[serde(default)]
    pub pooler_dropout: f64,
    #[serde(default = "d::gelu")]
    pub pooler_hidden_act: HiddenAct,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_hidden_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<i64>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default = "d::minus_one")]
    pub position_buckets: i64,
    #[serde(default = "d::norm_rel_ebd")]
    pub norm_rel_ebd: String,
    #[serde(default)]
    pub conv_kernel_size: i64,
    pub model_type: String,
    /// Keys clsnorm does not use, kept so that a saved checkpoint carries them unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod d {
    use super::HiddenAct;
    pub fn vocab_size() -> i64 {
        128100
    }
    pub fn hidden_size() -> i64 {
        1536
    }
    pub fn num_hidden_layers() -> i64 {
        24
    }
    pub fn num_attention_heads() -> i64 {
        24
    }
    pub fn intermediate_size() -> i64 {
        6144
    }
    pub fn gelu() -> HiddenAct {
        HiddenAct::Gelu
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> i64 {
        512
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-7
    }
    pub fn minus_one() -> i64 {
        -1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn norm_rel_ebd() -> String {
        "none".into()
    }
}

impl DebertaV2Config {
    fn embedding_size(&self) -> i64 {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    fn pos_att(&self, kind: &str) -> bool {
        self.relative_attention && self.pos_att_type.as_ref().is_some_and(|p| p.has(kind))
    }

    /// The largest relative distance (`max_relative_positions`, else the positions).
    fn max_relative(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions
        }
    }

    /// Rows of the relative-position table used on each side of 0.
    fn att_span(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative()
        }
    }

    fn rel_layer_norm(&self) -> bool {
        self.norm_rel_ebd
            .to_ascii_lowercase()
            .split('|')
            .any(|k| k.trim() == "layer_norm")
    }

    /// Checks that the values describe a DeBERTa-v2 that clsnorm can build.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check::sizes(&[
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 20,
            ),
            ("embedding_size", self.embedding_size(), 1 << 16),
            (
                "pooler_hidden_size",
                self.pooler_hidden_size.unwrap_or(self.hidden_size),
                1 << 16,
            ),
        ])?;
        if self
            .pooler_hidden_size
            .is_some_and(|p| p != self.hidden_size)
        {
            return Err("pooler_hidden_size must equal hidden_size".into());
        }
        if self.extra.contains_key("attention_head_size") {
            return Err("attention_head_size is not supported (heads split hidden_size)".into());
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(0..=1 << 16).contains(&self.type_vocab_size) {
            return Err(format!(
                "type_vocab_size must be from 0 to 65536, found {}",
                self.type_vocab_size
            ));
        }
        if self.conv_kernel_size > 0 {
            return Err(
                "conv_kernel_size > 0 (DeBERTa-v2 xlarge's convolution) is not supported".into(),
            );
        }
        if self.relative_attention {
            if self.max_relative() > 1 << 20 || self.position_buckets > 1 << 16 {
                return Err("max_relative_positions or position_buckets is too large".into());
            }
            if self.position_buckets > 0
                && (self.position_buckets < 4
                    || self.max_relative() <= self.position_buckets / 2 + 1)
            {
                return Err(format!(
                    "position_buckets {} does not fit max_relative_positions {}",
                    self.position_buckets,
                    self.max_relative()
                ));
            }
            if let Some(p) = &self.pos_att_type {
                let kinds: Vec<String> = match p {
                    PosAttType::List(v) => v.clone(),
                    PosAttType::Joined(s) => s.split('|').map(str::to_string).collect(),
                };
                if let Some(k) = kinds
                    .iter()
                    .map(|k| k.trim().to_ascii_lowercase())
                    .find(|k| k != "c2p" && k != "p2c")
                {
                    return Err(format!(
                        "pos_att_type {} is not supported (c2p, p2c)",
                        crate::excerpt::quoted(&k)
                    ));
                }
            }
        }
        check::probabilities(&[
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("pooler_dropout", self.pooler_dropout),
        ])?;
        check::eps_and_init(
            Some(("layer_norm_eps", self.layer_norm_eps)),
            self.initializer_range,
        )?;
        check::pad_in_vocab(self.pad_token_id, self.vocab_size)
    }

    fn linear(&self, p: nn::Path, inp: i64, out: i64, bias: bool) -> nn::Linear {
        layers::linear(p, self.initializer_range, inp, out, bias)
    }

    fn layer_norm(&self, p: nn::Path) -> nn::LayerNorm {
        layers::layer_norm(p, self.hidden_size, self.layer_norm_eps)
    }

    fn embedding(&self, p: nn::Path, n: i64, dim: i64) -> nn::Embedding {
        layers::embedding(p, self.initializer_range, n, dim)
    }
}

impl EncoderConfig for DebertaV2Config {
    fn hidden_size(&self) -> i64 {
        self.hidden_size
    }

    fn classifier_dropout(&self) -> f64 {
        // HF's classifier: `classifier_dropout`, else the hidden dropout.
        self.extra
            .get("classifier_dropout")
            .and_then(serde_json::Value::as_f64)
            .filter(|p| (0.0..1.0).contains(p))
            .unwrap_or(self.hidden_dropout_prob)
    }

    fn initializer_range(&self) -> f64 {
        self.initializer_range
    }

    fn limits(&self) -> InputLimits {
        InputLimits {
            vocab_size: self.vocab_size,
            // Without token-type embeddings (DeBERTa-v3) the types are ignored.
            type_vocab_size: (self.type_vocab_size > 0).then_some(self.type_vocab_size),
            max_positions: usize::try_from(self.max_position_embeddings).unwrap_or(0),
            pad_token_id: None,
        }
    }

    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        let (h, i, e) = (
            self.hidden_size,
            self.intermediate_size,
            self.embedding_size(),
        );
        let mut m = Shapes::default();
        m.put(
            "embeddings.word_embeddings.weight",
            vec![self.vocab_size, e],
        );
        if self.position_biased_input {
            m.put(
                "embeddings.position_embeddings.weight",
                vec![self.max_position_embeddings, e],
            );
        }
        if self.type_vocab_size > 0 {
            m.put(
                "embeddings.token_type_embeddings.weight",
                vec![self.type_vocab_size, e],
            );
        }
        if e != h {
            m.linear("embeddings.embed_proj", e, h, false);
        }
        m.norm("embeddings.LayerNorm", h, true);
        for l in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let a = format!("{p}.attention.self");
            for q in ["query_proj", "key_proj", "value_proj"] {
                m.linear(&format!("{a}.{q}"), h, h, true);
            }
            if self.relative_attention && !self.share_att_key {
                if self.pos_att("c2p") {
                    m.linear(&format!("{a}.pos_key_proj"), h, h, true);
                }
                if self.pos_att("p2c") {
                    m.linear(&format!("{a}.pos_query_proj"), h, h, true);
                }
            }
            m.linear(&format!("{p}.attention.output.dense"), h, h, true);
            m.norm(&format!("{p}.attention.output.LayerNorm"), h, true);
            m.linear(&format!("{p}.intermediate.dense"), h, i, true);
            m.linear(&format!("{p}.output.dense"), i, h, true);
            m.norm(&format!("{p}.output.LayerNorm"), h, true);
        }
        if self.relative_attention {
            m.put(
                "encoder.rel_embeddings.weight",
                vec![2 * self.att_span(), h],
            );
            if self.rel_layer_norm() {
                m.norm("encoder.LayerNorm", h, true);
            }
        }
        m.linear("pooler.dense", h, h, true);
        m.0
    }

    fn names(&self) -> Names<'static> {
        Names {
            prefix: "deberta.",
            beside: &["pooler."],
            optional: &["pooler."],
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        super::hf_json(self, "DebertaV2Model")
    }

    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        let (h, e) = (self.hidden_size, self.embedding_size());
        let emb = p / "embeddings";
        let enc = p / "encoder";
        let layers = (0..self.num_hidden_layers)
            .map(|l| {
                let lp = &enc / "layer" / l;
                let a = &lp / "attention" / "self";
                let separate = self.relative_attention && !self.share_att_key;
                Layer {
                    query_proj: self.linear(&a / "query_proj", h, h, true),
                    key_proj: self.linear(&a / "key_proj", h, h, true),
                    value_proj: self.linear(&a / "value_proj", h, h, true),
                    pos_key_proj: (separate && self.pos_att("c2p"))
                        .then(|| self.linear(&a / "pos_key_proj", h, h, true)),
                    pos_query_proj: (separate && self.pos_att("p2c"))
                        .then(|| self.linear(&a / "pos_query_proj", h, h, true)),
                    attention_output: self.linear(
                        &lp / "attention" / "output" / "dense",
                        h,
                        h,
                        true,
                    ),
                    attention_norm: self.layer_norm(&lp / "attention" / "output" / "LayerNorm"),
                    intermediate: self.linear(
                        &lp / "intermediate" / "dense",
                        h,
                        self.intermediate_size,
                        true,
                    ),
                    output: self.linear(&lp / "output" / "dense", self.intermediate_size, h, true),
                    output_norm: self.layer_norm(&lp / "output" / "LayerNorm"),
                }
            })
            .collect();
        Box::new(DebertaV2Model {
            word_embeddings: self.embedding(&emb / "word_embeddings", self.vocab_size, e),
            position_embeddings: self.position_biased_input.then(|| {
                self.embedding(
                    &emb / "position_embeddings",
                    self.max_position_embeddings,
                    e,
                )
            }),
            token_type_embeddings: (self.type_vocab_size > 0)
                .then(|| self.embedding(&emb / "token_type_embeddings", self.type_vocab_size, e)),
            embed_proj: (e != h).then(|| self.linear(&emb / "embed_proj", e, h, false)),
            embeddings_norm: self.layer_norm(&emb / "LayerNorm"),
            layers,
            rel_embeddings: self
                .relative_attention
                .then(|| self.embedding(&enc / "rel_embeddings", 2 * self.att_span(), h)),
            rel_norm: (self.relative_attention && self.rel_layer_norm())
                .then(|| self.layer_norm(&enc / "LayerNorm")),
            pooler: self.linear(p / "pooler" / "dense", h, h, true),
            cfg: self.clone(),
        })
    }

    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}

/// HF's `make_log_bucket_position`: distances beyond `bucket_size / 2` share log-spaced
/// buckets up to `max_position`, computed in f32 as HF computes them.
fn log_bucket(rel: &Tensor, bucket_size: i64, max_position: i64) -> Tensor {
    let mid = bucket_size / 2;
    let sign = rel.sign();
    let near = rel.lt(mid).logical_and(&rel.gt(-mid));
    let abs_pos = rel.abs().where_self(
        &near.logical_not(),
        &Tensor::from(mid - 1).to_device(rel.device()),
    );
    let ratio = abs_pos.to_kind(Kind::Float) / mid as f64;
    let denom = Tensor::from(((max_position - 1) as f64 / mid as f64) as f32)
        .to_device(rel.device())
        .log();
    let log_pos = (ratio.log() / denom * (mid - 1) as f64).ceil() + mid as f64;
    let bucket = rel
        .to_kind(Kind::Float)
        .where_self(&abs_pos.le(mid), &(log_pos * sign.to_kind(Kind::Float)));
    bucket.to_kind(Kind::Int64)
}

/// One block (HF `DebertaV2Layer`).
#[derive(Debug)]
struct Layer {
    query_proj: nn::Linear,
    key_proj: nn::Linear,
    value_proj: nn::Linear,
    pos_key_proj: Option<nn::Linear>,
    pos_query_proj: Option<nn::Linear>,
    attention_output: nn::Linear,
    attention_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
}

/// HF `DebertaV2Model`, plus the classifier's `ContextPooler` dense layer.
#[derive(Debug)]
pub struct DebertaV2Model {
    word_embeddings: nn::Embedding,
    position_embeddings: Option<nn::Embedding>,
    token_type_embeddings: Option<nn::Embedding>,
    embed_proj: Option<nn::Linear>,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    rel_embeddings: Option<nn::Embedding>,
    rel_norm: Option<nn::LayerNorm>,
    pooler: nn::Linear,
    cfg: DebertaV2Config,
}

impl DebertaV2Model {
    /// `[batch * heads, seq, head_dim]` from `[batch, seq, hidden]` (HF `transpose_for_scores`).
    fn heads(&self, x: &Tensor) -> Tensor {
        let (b, s, h) = x.size3().unwrap_or_else(|_| unreachable!("3-d"));
        let n = self.cfg.num_attention_heads;
        x.view([b, s, n, h / n])
            .permute([0, 2, 1, 3])
            .contiguous()
            .view([b * n, s, h / n])
    }

    fn attention(
        &self,
        l: &Layer,
        xs: &Tensor,
        mask: &Tensor,
        rel: Option<(&Tensor, &Tensor)>,
        train: bool,
    ) -> Tensor {
        let cfg = &self.cfg;
        let (b, s, h) = xs.size3().unwrap_or_else(|_| unreachable!("3-d"));
        let n = cfg.num_attention_heads;
        let d = h / n;
        let q = self.heads(&l.query_proj.forward(xs));
        let k = self.heads(&l.key_proj.forward(xs));
        let v = self.heads(&l.value_proj.forward(xs));
        let scale_factor = 1 + i64::from(cfg.pos_att("c2p")) + i64::from(cfg.pos_att("p2c"));
        let scale = ((d * scale_factor) as f32).sqrt() as f64;
        let mut scores = q.bmm(&(k.transpose(-1, -2) / scale));
        if let Some((rel_pos, rel_emb)) = rel {
            let span = cfg.att_span();
            let rel_emb = rel_emb
                .apply_dropout(cfg.hidden_dropout_prob, train)
                .narrow(0, 0, 2 * span)
                .unsqueeze(0);
            let repeat = |t: Tensor| t.repeat([b, 1, 1]);
            if cfg.pos_att("c2p") {
                let proj = match (&l.pos_key_proj, cfg.share_att_key) {
                    (Some(p), false) => p,
                    _ => &l.key_proj,
                };
                let pos_key = repeat(self.heads(&proj.forward(&rel_emb)));
                let c2p = q.bmm(&pos_key.transpose(-1, -2));
                let idx = (rel_pos + span)
                    .clamp(0, 2 * span - 1)
                    .expand([b * n, s, s], false);
                scores += c2p.gather(-1, &idx, false) / scale;
            }
            if cfg.pos_att("p2c") {
                let proj = match (&l.pos_query_proj, cfg.share_att_key) {
                    (Some(p), false) => p,
                    _ => &l.query_proj,
                };
                let pos_query = repeat(self.heads(&proj.forward(&rel_emb)));
                let p2c = k.bmm(&pos_query.transpose(-1, -2));
                let idx = (-rel_pos + span)
                    .clamp(0, 2 * span - 1)
                    .expand([b * n, s, s], false);
                scores += p2c.gather(-1, &idx, false).transpose(-1, -2) / scale;
            }
        }
        let scores = scores
            .view([b, n, s, s])
            .masked_fill(&mask.logical_not(), lowest(scores.kind()));
        let probs = scores
            .softmax(-1, Kind::Float)
            .apply_dropout(cfg.attention_probs_dropout_prob, train);
        let ctx = probs.view([b * n, s, s]).bmm(&v);
        ctx.view([b, n, s, d])
            .permute([0, 2, 1, 3])
            .contiguous()
            .view([b, s, h])
    }
}

impl EncoderModel for DebertaV2Model {
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        let cfg = &self.cfg;
        let (b, s) = input_ids.size2().unwrap_or_else(|_| unreachable!("2-d"));
        let device = input_ids.device();
        let ones = Tensor::ones([b, s], (Kind::Int64, device));
        let mask = attention_mask.unwrap_or(&ones);
        let mut e = self.word_embeddings.forward(input_ids);
        if let Some(p) = &self.position_embeddings {
            let positions = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
            e += p.forward(&positions);
        }
        if let Some(t) = &self.token_type_embeddings {
            e += t.forward(token_type_ids);
        }
        if let Some(p) = &self.embed_proj {
            e = p.forward(&e);
        }
        let e = self.embeddings_norm.forward(&e) * mask.to_kind(Kind::Float).unsqueeze(2);
        let mut xs = e.apply_dropout(cfg.hidden_dropout_prob, train);
        // [b, 1, s, s]: query and key both real tokens (HF's `get_attention_mask`).
        let m = mask.to_kind(Kind::Bool);
        let mask2 = m
            .unsqueeze(1)
            .unsqueeze(2)
            .logical_and(&m.unsqueeze(1).unsqueeze(3));
        let rel = self.rel_embeddings.as_ref().map(|table| {
            let idx = Tensor::arange(s, (Kind::Int64, device));
            let mut rel_pos = idx.unsqueeze(1) - idx.unsqueeze(0);
            if cfg.position_buckets > 0 {
                rel_pos = log_bucket(&rel_pos, cfg.position_buckets, cfg.max_relative());
            }
            let emb = match &self.rel_norm {
                Some(n) => n.forward(&table.ws),
                None => table.ws.shallow_clone(),
            };
            (rel_pos.unsqueeze(0), emb)
        });
        for l in &self.layers {
            let att = self.attention(l, &xs, &mask2, rel.as_ref().map(|(p, e)| (p, e)), train);
            let att = l.attention_norm.forward(
                &(l.attention_output
                    .forward(&att)
                    .apply_dropout(cfg.hidden_dropout_prob, train)
                    + &xs),
            );
            let inter = cfg.hidden_act.apply(&l.intermediate.forward(&att));
            xs = l.output_norm.forward(
                &(l.output
                    .forward(&inter)
                    .apply_dropout(cfg.hidden_dropout_prob, train)
                    + &att),
            );
        }
        let cls = xs.select(1, 0);
        let pooled = self
            .pooler
            .forward(&cls.apply_dropout(cfg.pooler_dropout, train));
        EncoderOutput {
            pooler_output: cfg.pooler_hidden_act.apply(&pooled),
            cls,
            last_hidden_state: xs,
        }
    }
}

/// The lowest finite value of `kind` (`torch.finfo(dtype).min`, as the reference fills its
/// mask): f32's minimum overflows bf16 and fp16.
fn lowest(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Double => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}
