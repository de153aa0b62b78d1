//! DistilBERT (HF `DistilBertModel`, names and all): BERT's post-LayerNorm blocks under
//! `transformer.layer.N` with `q_lin`/`k_lin`/`v_lin`/`out_lin`, `ffn.lin1`/`lin2`, no token
//! types and no pooler; task checkpoints keep it under `distilbert.`.
//!
//! The "pooler" [CLS] source is what `DistilBertForSequenceClassification` computes before its
//! output layer, `relu(W h_[CLS] + b)` (its `pre_classifier`). Pre-trained DistilBERT
//! checkpoints (distilled with a masked-LM loss) do not have it: clsnorm keeps it as
//! `pooler.dense` in its model file, initialises it as HF does (N(0, initializer_range), zero
//! bias) and trains it with the rest. The head's default dropout is `seq_classif_dropout`, as in
//! HF's classifier.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{parse_checked, HiddenAct};
use super::layers::{self, check, Shapes};
use super::packing::Layout;
use super::{EncoderConfig, EncoderModel, EncoderOutput, Family};
use crate::batch::InputLimits;
use crate::error::Result;

/// DistilBERT's LayerNorm epsilon (fixed in HF's code, not configurable).
const LN_EPS: f64 = 1e-12;

/// The DistilBERT family.
#[derive(Debug, Clone, Copy)]
pub struct DistilBertFamily;

impl Family for DistilBertFamily {
    fn model_types(&self) -> &'static [&'static str] {
        &["distilbert"]
    }

    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>> {
        let cfg = parse_checked(path, text, DistilBertConfig::validate)?;
        Ok(Box::new(cfg))
    }
}

/// HF `DistilBertConfig` (defaults: distilbert-base-uncased).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistilBertConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default = "d::n_layers")]
    pub n_layers: i64,
    #[serde(default = "d::n_heads")]
    pub n_heads: i64,
    #[serde(default = "d::dim")]
    pub dim: i64,
    #[serde(default = "d::hidden_dim")]
    pub hidden_dim: i64,
    #[serde(default = "d::dropout")]
    pub dropout: f64,
    #[serde(default = "d::dropout")]
    pub attention_dropout: f64,
    #[serde(default = "d::activation")]
    pub activation: HiddenAct,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::seq_classif_dropout")]
    pub seq_classif_dropout: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    pub model_type: String,
    /// Keys clsnorm does not use, kept so that a saved checkpoint carries them unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod d {
    use super::HiddenAct;
    pub fn vocab_size() -> i64 {
        30522
    }
    pub fn max_position_embeddings() -> i64 {
        512
    }
    pub fn n_layers() -> i64 {
        6
    }
    pub fn n_heads() -> i64 {
        12
    }
    pub fn dim() -> i64 {
        768
    }
    pub fn hidden_dim() -> i64 {
        3072
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn activation() -> HiddenAct {
        HiddenAct::Gelu
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn seq_classif_dropout() -> f64 {
        0.2
    }
}

impl DistilBertConfig {
    /// Checks that the values describe a DistilBERT that clsnorm can build, with sizes bounded
    /// far beyond real encoders (as BERT's).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.sinusoidal_pos_embds {
            return Err(
                "sinusoidal_pos_embds: true is not supported (learned positions only)".into(),
            );
        }
        check::sizes(&[
            ("vocab_size", self.vocab_size, 1 << 24),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 20,
            ),
            ("n_layers", self.n_layers, 1 << 10),
            ("n_heads", self.n_heads, 1 << 12),
            ("dim", self.dim, 1 << 16),
            ("hidden_dim", self.hidden_dim, 1 << 20),
        ])?;
        if self.dim % self.n_heads != 0 {
            return Err(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        check::probabilities(&[
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("seq_classif_dropout", self.seq_classif_dropout),
        ])?;
        check::eps_and_init(None, self.initializer_range)?;
        check::pad_in_vocab(self.pad_token_id, self.vocab_size)
    }

    fn linear(&self, p: nn::Path, inp: i64, out: i64) -> nn::Linear {
        layers::linear(p, self.initializer_range, inp, out, true)
    }

    fn layer_norm(&self, p: nn::Path) -> nn::LayerNorm {
        layers::layer_norm(p, self.dim, LN_EPS)
    }

    fn embedding(&self, p: nn::Path, n: i64) -> nn::Embedding {
        layers::embedding(p, self.initializer_range, n, self.dim)
    }
}
impl EncoderConfig for DistilBertConfig {
    fn hidden_size(&self) -> i64 {
        self.dim
    }

    fn classifier_dropout(&self) -> f64 {
        self.seq_classif_dropout
    }

    fn initializer_range(&self) -> f64 {
        self.initializer_range
    }

    fn limits(&self) -> InputLimits {
        InputLimits {
            vocab_size: self.vocab_size,
            // The model takes no token types; those of a BERT tokenizer (0 and 1) are ignored.
            type_vocab_size: None,
            max_positions: usize::try_from(self.max_position_embeddings).unwrap_or(0),
            pad_token_id: None,
        }
    }

    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        let (d, h) = (self.dim, self.hidden_dim);
        let mut m = Shapes::default();
        m.put(
            "embeddings.word_embeddings.weight",
            vec![self.vocab_size, d],
        );
        m.put(
            "embeddings.position_embeddings.weight",
            vec![self.max_position_embeddings, d],
        );
        m.norm("embeddings.LayerNorm", d, true);
        for l in 0..self.n_layers {
            let p = format!("transformer.layer.{l}");
            for q in ["q_lin", "k_lin", "v_lin", "out_lin"] {
                m.linear(&format!("{p}.attention.{q}"), d, d, true);
            }
            m.norm(&format!("{p}.sa_layer_norm"), d, true);
            m.linear(&format!("{p}.ffn.lin1"), d, h, true);
            m.linear(&format!("{p}.ffn.lin2"), h, d, true);
            m.norm(&format!("{p}.output_layer_norm"), d, true);
        }
        m.linear("pooler.dense", d, d, true);
        m.0
    }

    fn names(&self) -> super::weights::Names<'static> {
        super::weights::Names {
            prefix: "distilbert.",
            beside: &[],
            optional: &["pooler."],
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        super::hf_json(self, "DistilBertModel")
    }

    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        let (d, e) = (self.dim, &(p / "embeddings"));
        let t = p / "transformer" / "layer";
        Box::new(DistilBertModel {
            word_embeddings: self.embedding(e / "word_embeddings", self.vocab_size),
            position_embeddings: self
                .embedding(e / "position_embeddings", self.max_position_embeddings),
            embeddings_norm: self.layer_norm(e / "LayerNorm"),
            layers: (0..self.n_layers)
                .map(|l| TransformerBlock::new(&(&t / l), self))
                .collect(),
            pooler: self.linear(p / "pooler" / "dense", d, d),
            dropout: self.dropout,
            unpadded: Cell::new(true),
        })
    }

    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}

/// Attention, then the feed-forward network, each post-LayerNormed (HF `TransformerBlock`).
#[derive(Debug)]
struct TransformerBlock {
    q_lin: nn::Linear,
    k_lin: nn::Linear,
    v_lin: nn::Linear,
    out_lin: nn::Linear,
    sa_layer_norm: nn::LayerNorm,
    lin1: nn::Linear,
    lin2: nn::Linear,
    output_layer_norm: nn::LayerNorm,
    n_heads: i64,
    activation: HiddenAct,
    dropout: f64,
    attention_dropout: f64,
}

impl TransformerBlock {
    fn new(p: &nn::Path, c: &DistilBertConfig) -> Self {
        let (a, f, d) = (p / "attention", p / "ffn", c.dim);
        TransformerBlock {
            q_lin: c.linear(&a / "q_lin", d, d),
            k_lin: c.linear(&a / "k_lin", d, d),
            v_lin: c.linear(&a / "v_lin", d, d),
            out_lin: c.linear(&a / "out_lin", d, d),
            sa_layer_norm: c.layer_norm(p / "sa_layer_norm"),
            lin1: c.linear(&f / "lin1", d, c.hidden_dim),
            lin2: c.linear(&f / "lin2", c.hidden_dim, d),
            output_layer_norm: c.layer_norm(p / "output_layer_norm"),
            n_heads: c.n_heads,
            activation: c.activation,
            dropout: c.dropout,
            attention_dropout: c.attention_dropout,
        }
    }

    /// The block's output for `xs` (in `layout`), in that layout; with `first_only`, for the
    /// first token alone (`[batch, 1, dim]`: keys and values of every token, the query,
    /// attention output and feed-forward block of the first).
    fn forward(
        &self,
        xs: &Tensor,
        layout: Layout,
        first_only: bool,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let k = layout.padded(&self.k_lin.forward(xs));
        let v = layout.padded(&self.v_lin.forward(xs));
        let (b, s, d) = k
            .size3()
            .unwrap_or_else(|_| unreachable!("hidden states are 3-d"));
        // The layout of the queries and everything after attention.
        let (queries, out) = if first_only {
            (layout.first_tokens(xs), Layout::Padded)
        } else {
            (xs.shallow_clone(), layout)
        };
        let q = out.padded(&self.q_lin.forward(&queries));
        let sq = q.size()[1];
        let heads = |t: Tensor, len: i64| {
            t.view([b, len, self.n_heads, d / self.n_heads])
                .transpose(1, 2)
        };
        let p = self.attention_dropout;
        let ctx =
            super::layers::attention(&heads(q, sq), &heads(k, s), &heads(v, s), mask, p, train);
        let ctx = out.from_padded(&ctx.transpose(1, 2).contiguous().view([b, sq, d]));
        let att = self
            .sa_layer_norm
            .forward(&(self.out_lin.forward(&ctx) + &queries));
        let inter = self.activation.apply(&self.lin1.forward(&att));
        let ffn = out.dropout(&self.lin2.forward(&inter), self.dropout, train);
        self.output_layer_norm.forward(&(ffn + att))
    }
}

/// HF `DistilBertModel`, plus its sequence classifier's `pre_classifier` as `pooler.dense`.
#[derive(Debug)]
pub struct DistilBertModel {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<TransformerBlock>,
    pooler: nn::Linear,
    dropout: f64,
    /// Run padded CPU batches packed ([`Layout`]).
    unpadded: Cell<bool>,
}

impl DistilBertModel {
    fn run(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
        first_only: bool,
    ) -> EncoderOutput {
        let mask = super::key_mask(attention_mask);
        let mut slot = None;
        let layout = Layout::choose(attention_mask, self.unpadded.get(), &mut slot);
        let seq_len = input_ids.size()[1];
        let positions = Tensor::arange(seq_len, (Kind::Int64, input_ids.device()))
            .unsqueeze(0)
            .expand_as(input_ids);
        let e = self.word_embeddings.forward(&layout.from_padded(input_ids))
            + self
                .position_embeddings
                .forward(&layout.from_padded(&positions));
        let mut xs = layout.dropout(&self.embeddings_norm.forward(&e), self.dropout, train);
        let n = self.layers.len();
        let mut first = false;
        for (i, layer) in self.layers.iter().enumerate() {
            first = first_only && i + 1 == n;
            xs = layer.forward(&xs, layout, first, mask.as_ref(), train);
        }
        let xs = match (first, first_only) {
            (true, _) => xs,
            // No layers: the embeddings' first tokens.
            (false, true) => layout.first_tokens(&xs),
            (false, false) => layout.padded(&xs),
        };
        let cls = xs.select(1, 0);
        let pooler_output = self.pooler.forward(&cls).relu();
        EncoderOutput {
            last_hidden_state: xs,
            cls,
            pooler_output,
        }
    }
}

impl EncoderModel for DistilBertModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        self.run(input_ids, attention_mask, train, false)
    }

    fn forward_first_token(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        self.run(input_ids, attention_mask, train, true)
    }

    fn unpadded_switch(&self) -> Option<&Cell<bool>> {
        Some(&self.unpadded)
    }
}
