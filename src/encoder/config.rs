//! `config.json` of a Hugging Face BERT checkpoint, with HF's defaults for absent keys.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Activation of the feed-forward block (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU with erf (HF `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation (HF `gelu_new`, numerically the same as `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluNew,
    #[serde(rename = "relu")]
    Relu,
}

impl HiddenAct {
    /// The activation applied to `x`.
    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            HiddenAct::Gelu => x.gelu("none"),
            HiddenAct::GeluNew => x.gelu("tanh"),
            HiddenAct::Relu => x.relu(),
        }
    }
}

/// The architecture hyper-parameters of a BERT encoder, as HF `BertConfig` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
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
    #[serde(default = "d::hidden_act")]
    pub hidden_act: HiddenAct,
    #[serde(default = "d::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "d::position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default = "d::model_type")]
    pub model_type: String,
    /// Keys clsnorm does not use, kept so that a saved checkpoint carries them unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// HF `BertConfig` defaults (bert-base-uncased).
mod d {
    use super::HiddenAct;
    pub fn vocab_size() -> i64 {
        30522
    }
    pub fn hidden_size() -> i64 {
        768
    }
    pub fn num_hidden_layers() -> i64 {
        12
    }
    pub fn num_attention_heads() -> i64 {
        12
    }
    pub fn intermediate_size() -> i64 {
        3072
    }
    pub fn hidden_act() -> HiddenAct {
        HiddenAct::Gelu
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> i64 {
        512
    }
    pub fn type_vocab_size() -> i64 {
        2
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
    pub fn model_type() -> String {
        "bert".into()
    }
}

impl Default for BertConfig {
    fn default() -> Self {
        serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl BertConfig {
    /// A BERT-base-shaped config (12 layers x 768 hidden x 12 heads x 3072).
    pub fn base() -> Self {
        Self::default()
    }

    /// A small config for tests: `layers` x `hidden` with `heads` heads, FFN 4x hidden.
    pub fn tiny(vocab_size: i64, hidden: i64, layers: i64, heads: i64) -> Self {
        BertConfig {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            max_position_embeddings: 128,
            ..Self::default()
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
        let bytes = read_regular(path, MAX_SMALL_BYTES, Links::Follow)?;
        Self::from_str(path, &String::from_utf8_lossy(&bytes))
    }

    /// Parses and validates the text of `config.json` read from `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Self> {
        Self::parse_as(path, text, &["bert"])
    }

    /// Parses the text of a `config.json` of the BERT module tree whose `model_type` is one of
    /// `model_types` (RoBERTa's is BERT's but for positions), and checks its values.
    pub(crate) fn parse_as(path: &Path, text: &str, model_types: &[&str]) -> Result<Self> {
        parse_checked(path, text, |cfg: &BertConfig| {
            if !model_types.contains(&cfg.model_type.as_str()) {
                return Err(format!(
                    "model_type is {}, expected {}",
                    crate::excerpt::quoted(&cfg.model_type),
                    model_types.join(" or ")
                ));
            }
            cfg.check_values()
        })
    }

    /// Checks that the values describe a BERT that clsnorm can build.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model_type != "bert" {
            return Err(format!(
                "model_type is {}, but clsnorm implements BERT ('bert') only",
                crate::excerpt::quoted(&self.model_type)
            ));
        }
        self.check_values()
    }

    /// Checks the values (not the model type): supported options, positive and bounded sizes.
    fn check_values(&self) -> std::result::Result<(), String> {
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {} is not supported (expected 'absolute')",
                crate::excerpt::quoted(&self.position_embedding_type)
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v <= 0 {
                return Err(format!("{name} must be positive, found {v}"));
            }
        }
        // Far beyond any real encoder; a hostile config must not make clsnorm enumerate
        // 10^9 layers (or allocate for them) before the weights are compared.
        for (name, v, max) in [
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
            ("type_vocab_size", self.type_vocab_size, 1 << 16),
        ] {
            if v > max {
                return Err(format!("{name} {v} is beyond what clsnorm accepts ({max})"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        use super::layers::check;
        check::probabilities(&[
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ])?;
        check::eps_and_init(
            Some(("layer_norm_eps", self.layer_norm_eps)),
            self.initializer_range,
        )?;
        check::pad_in_vocab(self.pad_token_id, self.vocab_size)
    }

    /// The name and shape of every parameter of a `BertModel` with this config, computed
    /// without allocating it (HF names). Checked against a weights file before the model is
    /// built, so that a config asking for huge matrices fails instead of allocating them.
    pub fn expected_shapes(&self) -> std::collections::BTreeMap<String, Vec<i64>> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut m = super::layers::Shapes::default();
        m.put(
            "embeddings.word_embeddings.weight",
            vec![self.vocab_size, h],
        );
        m.put(
            "embeddings.position_embeddings.weight",
            vec![self.max_position_embeddings, h],
        );
        m.put(
            "embeddings.token_type_embeddings.weight",
            vec![self.type_vocab_size, h],
        );
        m.norm("embeddings.LayerNorm", h, true);
        for l in 0..self.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for q in ["query", "key", "value"] {
                m.linear(&format!("{p}.attention.self.{q}"), h, h, true);
            }
            m.linear(&format!("{p}.attention.output.dense"), h, h, true);
            m.norm(&format!("{p}.attention.output.LayerNorm"), h, true);
            m.linear(&format!("{p}.intermediate.dense"), h, i, true);
            m.linear(&format!("{p}.output.dense"), i, h, true);
            m.norm(&format!("{p}.output.LayerNorm"), h, true);
        }
        m.linear("pooler.dense", h, h, true);
        m.0
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// The JSON written next to saved weights: the original keys plus what HF needs to
    /// recognise a `BertModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        super::hf_json(self, "BertModel")
    }
}

/// Parses the text of a `config.json` read from `path` and applies `check` to it; both kinds of
/// error name the file.
pub(crate) fn parse_checked<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    check: impl FnOnce(&T) -> std::result::Result<(), String>,
) -> Result<T> {
    let bad = |msg: String| Error::Config {
        path: path.to_path_buf(),
        msg,
    };
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(explain_serde(&e)))?;
    let cfg: T = deserialize_named(json).map_err(bad)?;
    check(&cfg).map_err(bad)?;
    Ok(cfg)
}

/// Deserializes a config object; an error names the key it is about. serde cannot say which
/// key a type error belongs to inside a struct with flattened fields (which the configs have,
/// to keep unknown keys), so the key is found by leaving each out in turn.
pub(crate) fn deserialize_named<T: serde::de::DeserializeOwned>(
    json: serde_json::Value,
) -> std::result::Result<T, String> {
    let e = match T::deserialize(&json) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => explain_serde(&e),
    };
    if let serde_json::Value::Object(map) = &json {
        for key in map.keys() {
            let mut without = map.clone();
            without.remove(key);
            if T::deserialize(&serde_json::Value::Object(without)).is_ok() {
                return Err(format!("{}: {e}", crate::excerpt::quoted(key)));
            }
        }
    }
    Err(e)
}

/// serde's message already names line and column; make unknown-variant errors list choices.
pub(crate) fn explain_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.contains("unknown variant") && msg.contains("gelu") {
        format!("unsupported hidden_act: {msg}")
    } else {
        msg
    }
}
