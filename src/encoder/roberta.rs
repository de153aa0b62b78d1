//! RoBERTa and XLM-RoBERTa (also CamemBERT): BERT's module tree (HF `RobertaModel` keeps
//! BERT's tensor names) with positions numbered after the padding id, one token type, and the
//! base model under `roberta.` in task checkpoints.
//!
//! The "pooler" [CLS] source is `RobertaModel`'s pooler, `tanh(W h_<s> + b)`: the dense layer
//! and activation that `RobertaForSequenceClassification`'s head applies to the first token
//! before its output layer (HF's head puts dropout before the dense layer too). RoBERTa was
//! pre-trained without next-sentence prediction, so that layer was never trained: checkpoints
//! saved from `RobertaForMaskedLM` (as `roberta-base`'s weights are used) or from a sequence
//! classifier lack it, and clsnorm then initialises it as HF does (N(0, initializer_range),
//! zero bias) and says so; it is trained with the rest. `--cls-source hidden` uses the raw
//! first-token state instead, with no untrained layer in between.
use std::collections::BTreeMap;
use std::path::Path;

use tch::nn;

use super::bert::{BertModel, Positions};
use super::config::BertConfig;
use super::{EncoderConfig, EncoderModel, Family};
use crate::batch::InputLimits;
use crate::error::{Error, Result};

/// The `model_type`s of the RoBERTa module tree.
const MODEL_TYPES: &[&str] = &["roberta", "xlm-roberta", "camembert"];

/// The RoBERTa family.
#[derive(Debug, Clone, Copy)]
pub struct RobertaFamily;

impl Family for RobertaFamily {
    fn model_types(&self) -> &'static [&'static str] {
        MODEL_TYPES
    }

    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>> {
        let cfg = BertConfig::parse_as(path, text, MODEL_TYPES)?;
        if cfg.max_position_embeddings <= cfg.pad_token_id + 1 {
            return Err(Error::Config {
                path: path.to_path_buf(),
                msg: format!(
                    "max_position_embeddings {} leaves no position after the padding id {} \
                     (RoBERTa numbers positions from pad_token_id + 1)",
                    cfg.max_position_embeddings, cfg.pad_token_id
                ),
            });
        }
        Ok(Box::new(RobertaConfig(cfg)))
    }
}

/// A RoBERTa `config.json` (HF `RobertaConfig`: `BertConfig`'s keys).
#[derive(Debug, Clone, PartialEq)]
pub struct RobertaConfig(pub BertConfig);

impl EncoderConfig for RobertaConfig {
    fn hidden_size(&self) -> i64 {
        self.0.hidden_size
    }

    fn classifier_dropout(&self) -> f64 {
        self.0.classifier_dropout()
    }

    fn initializer_range(&self) -> f64 {
        self.0.initializer_range
    }

    fn limits(&self) -> InputLimits {
        let c = &self.0;
        InputLimits {
            vocab_size: c.vocab_size,
            type_vocab_size: Some(c.type_vocab_size),
            // Positions pad_token_id + 1 .. max_position_embeddings - 1 hold real tokens.
            max_positions: usize::try_from(c.max_position_embeddings - c.pad_token_id - 1)
                .unwrap_or(0),
            pad_token_id: Some(c.pad_token_id),
        }
    }

    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        self.0.expected_shapes()
    }

    fn names(&self) -> super::weights::Names<'static> {
        super::weights::Names {
            prefix: "roberta.",
            beside: &[],
            optional: &["pooler."],
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        let arch = match self.0.model_type.as_str() {
            "xlm-roberta" => "XLMRobertaModel",
            "camembert" => "CamembertModel",
            _ => "RobertaModel",
        };
        super::hf_json(&self.0, arch)
    }

    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        let positions = Positions::AfterPadding {
            padding_idx: self.0.pad_token_id,
        };
        Box::new(BertModel::with_positions(p, &self.0, positions))
    }

    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}
