//! ELECTRA (the discriminator, HF `ElectraModel`): BERT's layers on embeddings of their own
//! width (`embedding_size`), projected to the hidden size when the two differ, and no pooler.
//! Task checkpoints keep the model under `electra.`.
//!
//! The "pooler" [CLS] source is what `ElectraForSequenceClassification`'s head computes before
//! its output layer, `gelu(W h_[CLS] + b)`. That dense layer belongs to HF's task head, so no
//! pre-trained ELECTRA checkpoint has it: clsnorm keeps it as `pooler.dense` in its model file
//! (transformers' `ElectraModel` ignores it when loading), initialises it as HF initialises
//! its head (N(0, initializer_range), zero bias) and trains it with the rest, as HF does.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::{self, Module};
use tch::Tensor;

use super::bert::{linear, BertEmbeddings, BertLayer, Positions};
use super::config::{explain_serde, BertConfig};
use super::{EncoderConfig, EncoderModel, EncoderOutput, Family};
use crate::batch::InputLimits;
use crate::error::{Error, Result};

/// HF `ElectraConfig`'s defaults (the small discriminator) where they differ from BERT's.
const DEFAULTS: &[(&str, i64)] = &[
    ("embedding_size", 128),
    ("hidden_size", 256),
    ("num_attention_heads", 4),
    ("intermediate_size", 1024),
];

/// The ELECTRA family.
#[derive(Debug, Clone, Copy)]
pub struct ElectraFamily;

impl Family for ElectraFamily {
    fn model_types(&self) -> &'static [&'static str] {
        &["electra"]
    }

    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>> {
        let bad = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let mut json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(explain_serde(&e)))?;
        if let Some(map) = json.as_object_mut() {
            for (k, v) in DEFAULTS {
                map.entry(*k).or_insert_with(|| (*v).into());
            }
        }
        let bert = BertConfig::parse_as(path, &json.to_string(), &["electra"])?;
        let embedding_size = bert
            .extra
            .get("embedding_size")
            .and_then(serde_json::Value::as_i64)
            .filter(|e| (1..=1 << 16).contains(e))
            .ok_or_else(|| bad("embedding_size must be a whole number from 1 to 65536".into()))?;
        Ok(Box::new(ElectraConfig {
            bert,
            embedding_size,
        }))
    }
}

/// An ELECTRA `config.json`: BERT's keys plus `embedding_size`.
#[derive(Debug, Clone, PartialEq)]
pub struct ElectraConfig {
    pub bert: BertConfig,
    pub embedding_size: i64,
}

impl ElectraConfig {
    /// The config of the embeddings: BERT's, at the embedding width.
    fn embedding_config(&self) -> BertConfig {
        BertConfig {
            hidden_size: self.embedding_size,
            ..self.bert.clone()
        }
    }

    fn projected(&self) -> bool {
        self.embedding_size != self.bert.hidden_size
    }
}

impl EncoderConfig for ElectraConfig {
    fn hidden_size(&self) -> i64 {
        self.bert.hidden_size
    }

    fn classifier_dropout(&self) -> f64 {
        self.bert.classifier_dropout()
    }

    fn initializer_range(&self) -> f64 {
        self.bert.initializer_range
    }

    fn limits(&self) -> InputLimits {
        self.bert.limits()
    }

    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        let (h, e) = (self.bert.hidden_size, self.embedding_size);
        let mut m: BTreeMap<String, Vec<i64>> = self
            .bert
            .expected_shapes()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("embeddings."))
            .collect();
        m.extend(
            self.embedding_config()
                .expected_shapes()
                .into_iter()
                .filter(|(n, _)| n.starts_with("embeddings.")),
        );
        if self.projected() {
            m.insert("embeddings_project.weight".into(), vec![h, e]);
            m.insert("embeddings_project.bias".into(), vec![h]);
        }
        m
    }

    fn names(&self) -> super::weights::Names<'static> {
        super::weights::Names {
            prefix: "electra.",
            beside: &[],
            optional: &["pooler."],
        }
    }

    fn to_hf_json(&self) -> serde_json::Value {
        super::hf_json(&self.bert, "ElectraModel")
    }

    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        let cfg = &self.bert;
        let (h, e) = (cfg.hidden_size, self.embedding_size);
        let enc = p / "encoder" / "layer";
        Box::new(ElectraModel {
            embeddings: BertEmbeddings::new(
                p / "embeddings",
                &self.embedding_config(),
                Positions::Absolute,
            ),
            embeddings_project: self
                .projected()
                .then(|| linear(p / "embeddings_project", cfg, e, h)),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| BertLayer::new(&enc / i, cfg))
                .collect(),
            pooler: linear(p / "pooler" / "dense", cfg, h, h),
            unpadded: Cell::new(true),
        })
    }

    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}

/// HF `ElectraModel`, plus the dense layer of its sequence classifier's head.
#[derive(Debug)]
pub struct ElectraModel {
    embeddings: BertEmbeddings,
    embeddings_project: Option<nn::Linear>,
    layers: Vec<BertLayer>,
    pooler: nn::Linear,
    /// Run padded CPU batches packed ([`super::bert::encode`]).
    unpadded: Cell<bool>,
}

impl ElectraModel {
    fn run(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
        first_only: bool,
    ) -> EncoderOutput {
        let xs = super::bert::encode(
            &self.embeddings,
            self.embeddings_project.as_ref(),
            &self.layers,
            input_ids,
            token_type_ids,
            attention_mask,
            train,
            first_only,
            self.unpadded.get(),
        );
        let cls = xs.select(1, 0);
        let pooler_output = self.pooler.forward(&cls).gelu("none");
        EncoderOutput {
            last_hidden_state: xs,
            cls,
            pooler_output,
        }
    }
}

impl EncoderModel for ElectraModel {
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
