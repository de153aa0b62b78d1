//! BERT, mirroring Hugging Face's `modeling_bert.BertModel` module for module, with the same
//! parameter names, so HF checkpoints load into it and it saves checkpoints HF can load.
use super::layers::ApplyDropout;
use super::packing::{Layout, Packing};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use super::config::{BertConfig, HiddenAct};
use super::{EncoderConfig, EncoderModel, EncoderOutput, Family};
use crate::batch::InputLimits;
use crate::error::Result;

pub(crate) fn linear(p: nn::Path, cfg: &BertConfig, inp: i64, out: i64) -> nn::Linear {
    super::layers::linear(p, cfg.initializer_range, inp, out, true)
}

fn layer_norm(p: nn::Path, cfg: &BertConfig) -> nn::LayerNorm {
    super::layers::layer_norm(p, cfg.hidden_size, cfg.layer_norm_eps)
}

fn embedding(p: nn::Path, cfg: &BertConfig, n: i64) -> nn::Embedding {
    super::layers::embedding(p, cfg.initializer_range, n, cfg.hidden_size)
}

/// How token positions are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, ... (BERT).
    Absolute,
    /// Real tokens from `padding_idx + 1` on, padding at `padding_idx` (RoBERTa's
    /// `create_position_ids_from_input_ids`).
    AfterPadding { padding_idx: i64 },
}

/// Word, position and token-type embeddings, summed, then LayerNorm and dropout.
#[derive(Debug)]
pub struct BertEmbeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    dropout: f64,
    positions: Positions,
}

impl BertEmbeddings {
    pub fn new(p: nn::Path, cfg: &BertConfig, positions: Positions) -> Self {
        BertEmbeddings {
            positions,
            word_embeddings: embedding(&p / "word_embeddings", cfg, cfg.vocab_size),
            position_embeddings: embedding(
                &p / "position_embeddings",
                cfg,
                cfg.max_position_embeddings,
            ),
            token_type_embeddings: embedding(
                &p / "token_type_embeddings",
                cfg,
                cfg.type_vocab_size,
            ),
            layer_norm: layer_norm(&p / "LayerNorm", cfg),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    /// Position ids of `input_ids` (`[batch or 1, seq]`).
    fn position_ids(&self, input_ids: &Tensor) -> Tensor {
        match self.positions {
            Positions::Absolute => {
                let seq_len = input_ids.size()[1];
                Tensor::arange(seq_len, (Kind::Int64, input_ids.device())).unsqueeze(0)
            }
            Positions::AfterPadding { padding_idx } => {
                let real = input_ids.ne(padding_idx).to_kind(Kind::Int64);
                real.cumsum(1, Kind::Int64) * &real + padding_idx
            }
        }
    }

    fn sum(&self, input_ids: &Tensor, token_type_ids: &Tensor, position_ids: &Tensor) -> Tensor {
        self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(position_ids)
    }

    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, train: bool) -> Tensor {
        let e = self.sum(input_ids, token_type_ids, &self.position_ids(input_ids));
        self.layer_norm
            .forward(&e)
            .apply_dropout(self.dropout, train)
    }

    /// [`BertEmbeddings::forward`] of the real tokens only, `[tokens, hidden]`.
    pub fn forward_packed(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        pk: &Packing,
        train: bool,
    ) -> Tensor {
        let positions = self.position_ids(input_ids).expand_as(input_ids);
        let e = self.sum(
            &pk.pack(input_ids),
            &pk.pack(token_type_ids),
            &pk.pack(&positions),
        );
        pk.dropout(&self.layer_norm.forward(&e), self.dropout, train)
    }
}

/// Multi-head self-attention (`attention.self`), through [`super::layers::attention`]
/// (libtorch's fused `scaled_dot_product_attention` but in CPU training with dropout).
#[derive(Debug)]
pub struct BertSelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    num_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl BertSelfAttention {
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        BertSelfAttention {
            query: linear(&p / "query", cfg, h, h),
            key: linear(&p / "key", cfg, h, h),
            value: linear(&p / "value", cfg, h, h),
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.attention_probs_dropout_prob,
        }
    }

    /// `mask`: boolean `[batch, 1, 1, seq]`, true where a key may be attended to; `None` when
    /// the batch has no padding.
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        self.attend(xs, xs, mask, train)
    }

    /// Attention of the `queries` (`[batch, q, hidden]`, e.g. the first token alone) over the
    /// keys and values of `xs` (`[batch, seq, hidden]`).
    pub fn attend(
        &self,
        queries: &Tensor,
        xs: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let (b, s, h) = xs
            .size3()
            .unwrap_or_else(|_| unreachable!("hidden states are 3-d"));
        let sq = queries.size()[1];
        let heads = |t: Tensor, len: i64| {
            t.view([b, len, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(self.query.forward(queries), sq);
        let k = heads(self.key.forward(xs), s);
        let v = heads(self.value.forward(xs), s);
        let p = self.dropout;
        let ctx = super::layers::attention(&q, &k, &v, mask, p, train);
        ctx.transpose(1, 2).contiguous().view([b, sq, h])
    }

    /// [`BertSelfAttention::attend`] of packed states `xs` (`[tokens, hidden]`): projections
    /// on the real tokens, attention in the padded layout. `queries`: `None` for every token
    /// (the result packed, `[tokens, hidden]`), else `[batch, q, hidden]` (the result so).
    pub fn attend_packed(
        &self,
        queries: Option<&Tensor>,
        xs: &Tensor,
        pk: &Packing,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let k = pk.unpack(&self.key.forward(xs));
        let v = pk.unpack(&self.value.forward(xs));
        let (b, s, h) = k
            .size3()
            .unwrap_or_else(|_| unreachable!("unpacked states are 3-d"));
        let q = match queries {
            None => pk.unpack(&self.query.forward(xs)),
            Some(q) => self.query.forward(q),
        };
        let sq = q.size()[1];
        let heads = |t: Tensor, len: i64| {
            t.view([b, len, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let ctx = super::layers::attention(
            &heads(q, sq),
            &heads(k, s),
            &heads(v, s),
            mask,
            self.dropout,
            train,
        );
        let ctx = ctx.transpose(1, 2).contiguous().view([b, sq, h]);
        match queries {
            None => pk.pack(&ctx),
            Some(_) => ctx,
        }
    }
}

/// Dense + dropout + residual LayerNorm after attention (`attention.output`) or after the
/// feed-forward block (`output`).
#[derive(Debug)]
pub struct BertResidualOutput {
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl BertResidualOutput {
    pub fn new(p: nn::Path, cfg: &BertConfig, inp: i64) -> Self {
        BertResidualOutput {
            dense: linear(&p / "dense", cfg, inp, cfg.hidden_size),
            layer_norm: layer_norm(&p / "LayerNorm", cfg),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    pub fn forward(&self, xs: &Tensor, residual: &Tensor, train: bool) -> Tensor {
        let ys = self.dense.forward(xs).apply_dropout(self.dropout, train);
        self.layer_norm.forward(&(ys + residual))
    }

    /// [`BertResidualOutput::forward`] of packed states.
    pub fn forward_packed(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        pk: &Packing,
        train: bool,
    ) -> Tensor {
        let ys = pk.dropout(&self.dense.forward(xs), self.dropout, train);
        self.layer_norm.forward(&(ys + residual))
    }
}

/// One transformer block: attention, then the feed-forward network, each post-LayerNormed.
#[derive(Debug)]
pub struct BertLayer {
    attention_self: BertSelfAttention,
    attention_output: BertResidualOutput,
    intermediate: nn::Linear,
    output: BertResidualOutput,
    act: HiddenAct,
}

impl BertLayer {
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let att = &p / "attention";
        BertLayer {
            attention_self: BertSelfAttention::new(&att / "self", cfg),
            attention_output: BertResidualOutput::new(&att / "output", cfg, cfg.hidden_size),
            intermediate: linear(
                &p / "intermediate" / "dense",
                cfg,
                cfg.hidden_size,
                cfg.intermediate_size,
            ),
            output: BertResidualOutput::new(&p / "output", cfg, cfg.intermediate_size),
            act: cfg.hidden_act,
        }
    }

    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        self.forward_queries(xs, xs, mask, train)
    }

    /// The block's output for the first token only, `[batch, 1, hidden]`: keys and values of
    /// every token, but the query, attention output and feed-forward block of the first. Equal
    /// in mathematics to the first row of [`BertLayer::forward`].
    pub fn forward_first(&self, xs: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        self.forward_queries(&xs.narrow(1, 0, 1), xs, mask, train)
    }

    fn forward_queries(
        &self,
        queries: &Tensor,
        xs: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let att = self.attention_self.attend(queries, xs, mask, train);
        self.after_attention(&att, queries, train)
    }

    /// Attention output, then the feed-forward block.
    fn after_attention(&self, att: &Tensor, queries: &Tensor, train: bool) -> Tensor {
        let att = self.attention_output.forward(att, queries, train);
        let inter = self.intermediate.forward(&att);
        let inter = self.act.apply(&inter);
        self.output.forward(&inter, &att, train)
    }

    /// [`BertLayer::forward`] of packed states `xs` (`[tokens, hidden]`), packed.
    pub fn forward_packed(
        &self,
        xs: &Tensor,
        pk: &Packing,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let att = self.attention_self.attend_packed(None, xs, pk, mask, train);
        let att = self.attention_output.forward_packed(&att, xs, pk, train);
        let inter = self.act.apply(&self.intermediate.forward(&att));
        self.output.forward_packed(&inter, &att, pk, train)
    }

    /// [`BertLayer::forward_first`] of packed states: `[batch, 1, hidden]`.
    pub fn forward_first_packed(
        &self,
        xs: &Tensor,
        pk: &Packing,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let queries = pk.first_tokens(xs);
        let att = self
            .attention_self
            .attend_packed(Some(&queries), xs, pk, mask, train);
        self.after_attention(&att, &queries, train)
    }
}

/// Runs `layers` over `xs`; with `first_only`, the last one computes the first token alone
/// ([`BertLayer::forward_first`]).
pub fn run_layers(
    layers: &[BertLayer],
    mut xs: Tensor,
    mask: Option<&Tensor>,
    train: bool,
    first_only: bool,
) -> Tensor {
    let n = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        xs = if first_only && i + 1 == n {
            layer.forward_first(&xs, mask, train)
        } else {
            layer.forward(&xs, mask, train)
        };
    }
    xs
}

/// The last layer's states for a batch, `[batch, seq, hidden]` (with `first_only`, the first
/// token alone, `[batch, 1, hidden]`): embeddings (then `project`, ELECTRA's), then `layers`.
/// With `unpadded`, a CPU batch with padding runs packed ([`Packing`]); the result is the same
/// to float rounding, but padding positions hold zeros instead of states nobody reads.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    embeddings: &BertEmbeddings,
    project: Option<&nn::Linear>,
    layers: &[BertLayer],
    input_ids: &Tensor,
    token_type_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    train: bool,
    first_only: bool,
    unpadded: bool,
) -> Tensor {
    let mask = super::key_mask(attention_mask);
    let mut slot = None;
    let Layout::Packed(pk) = Layout::choose(attention_mask, unpadded, &mut slot) else {
        let mut xs = embeddings.forward(input_ids, token_type_ids, train);
        if let Some(p) = project {
            xs = p.forward(&xs);
        }
        return run_layers(layers, xs, mask.as_ref(), train, first_only);
    };
    let mut xs = embeddings.forward_packed(input_ids, token_type_ids, pk, train);
    if let Some(p) = project {
        xs = p.forward(&xs);
    }
    let n = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        if first_only && i + 1 == n {
            return layer.forward_first_packed(&xs, pk, mask.as_ref(), train);
        }
        xs = layer.forward_packed(&xs, pk, mask.as_ref(), train);
    }
    if first_only {
        // No layers: the embeddings' first tokens.
        return pk.first_tokens(&xs);
    }
    pk.unpack(&xs)
}

/// `tanh(W h_cls + b)`, HF's pooler.
#[derive(Debug)]
pub struct BertPooler {
    dense: nn::Linear,
}

impl BertPooler {
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        BertPooler {
            dense: linear(&p / "dense", cfg, cfg.hidden_size, cfg.hidden_size),
        }
    }

    pub fn forward(&self, cls: &Tensor) -> Tensor {
        self.dense.forward(cls).tanh()
    }
}

/// The BERT encoder with pooler (HF `BertModel`).
#[derive(Debug)]
pub struct BertModel {
    pub config: BertConfig,
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: BertPooler,
    /// Run padded CPU batches packed ([`encode`]).
    unpadded: Cell<bool>,
}

impl BertModel {
    /// Creates the encoder's variables under `p` (use the root of a `VarStore` to get HF's
    /// tensor names), randomly initialised as HF does: N(0, initializer_range) weights, zero
    /// biases, unit LayerNorm.
    pub fn new(p: &nn::Path, config: &BertConfig) -> Self {
        Self::with_positions(p, config, Positions::Absolute)
    }

    /// [`BertModel::new`] with another numbering of positions (RoBERTa's).
    pub fn with_positions(p: &nn::Path, config: &BertConfig, positions: Positions) -> Self {
        let enc = p / "encoder" / "layer";
        BertModel {
            config: config.clone(),
            embeddings: BertEmbeddings::new(p / "embeddings", config, positions),
            layers: (0..config.num_hidden_layers)
                .map(|i| BertLayer::new(&enc / i, config))
                .collect(),
            pooler: BertPooler::new(p / "pooler", config),
            unpadded: Cell::new(true),
        }
    }
}

impl BertModel {
    fn run(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
        first_only: bool,
    ) -> EncoderOutput {
        let xs = encode(
            &self.embeddings,
            None,
            &self.layers,
            input_ids,
            token_type_ids,
            attention_mask,
            train,
            first_only,
            self.unpadded.get(),
        );
        let cls = xs.select(1, 0);
        let pooler_output = self.pooler.forward(&cls);
        EncoderOutput {
            last_hidden_state: xs,
            cls,
            pooler_output,
        }
    }
}

impl EncoderModel for BertModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        self.run(input_ids, token_type_ids, attention_mask, train, false)
    }

    fn forward_first_token(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        self.run(input_ids, token_type_ids, attention_mask, train, true)
    }

    fn unpadded_switch(&self) -> Option<&Cell<bool>> {
        Some(&self.unpadded)
    }
}

/// The BERT family (`model_type` `bert`; MiniLM and other BERT-shaped checkpoints).
#[derive(Debug, Clone, Copy)]
pub struct BertFamily;

impl Family for BertFamily {
    fn model_types(&self) -> &'static [&'static str] {
        &["bert"]
    }

    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>> {
        Ok(Box::new(BertConfig::from_str(path, text)?))
    }
}

impl EncoderConfig for BertConfig {
    fn hidden_size(&self) -> i64 {
        self.hidden_size
    }

    fn classifier_dropout(&self) -> f64 {
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
            type_vocab_size: Some(self.type_vocab_size),
            max_positions: usize::try_from(self.max_position_embeddings).unwrap_or(0),
            pad_token_id: None,
        }
    }

    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        BertConfig::expected_shapes(self)
    }

    fn names(&self) -> super::weights::Names<'static> {
        super::weights::Names {
            prefix: "bert.",
            beside: &[],
            optional: &[],
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        BertConfig::to_hf_json(self)
    }

    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        Box::new(BertModel::new(p, self))
    }

    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}
