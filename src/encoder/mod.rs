//! Encoders: the seam every model family plugs into, and the families: BERT, RoBERTa
//! (XLM-R, CamemBERT), ELECTRA, DistilBERT, ModernBERT, DeBERTa-v2/v3.
//!
//! A family reads its `config.json` ([`Family::read_config`], chosen by the file's
//! `model_type`), which knows the model's parameter names and shapes, its input limits and how
//! to build it ([`EncoderConfig`]); the built model ([`EncoderModel`]) maps a batch to what the
//! head needs ([`EncoderOutput`]). Adding a family: a module here with those two impls, and one
//! `register` line in [`Families::builtin`].
pub mod bert;
pub mod config;
pub mod deberta;
pub mod distilbert;
pub mod electra;
pub mod layers;
pub mod modernbert;
pub mod packing;
pub mod pickle;
pub mod roberta;
pub mod weights;

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Device, Tensor};

pub use bert::{BertFamily, BertModel};
pub use config::{BertConfig, HiddenAct};
pub use deberta::{DebertaV2Config, DebertaV2Family};
pub use distilbert::{DistilBertConfig, DistilBertFamily};
pub use electra::{ElectraConfig, ElectraFamily};
pub use modernbert::{ModernBertConfig, ModernBertFamily};
pub use roberta::{RobertaConfig, RobertaFamily};

use crate::batch::{Batch, InputLimits};
use crate::error::{Error, Result};
use crate::precision::Precision;

/// What an encoder returns for a batch.
#[derive(Debug)]
pub struct EncoderOutput {
    /// `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor,
    /// The raw last-layer state of the first ([CLS]) token, `[batch, hidden]`.
    pub cls: Tensor,
    /// What the family's HF sequence classifier feeds its output layer (BERT: the pooler,
    /// `tanh(W cls + b)`), `[batch, hidden]`.
    pub pooler_output: Tensor,
}

/// A model of some family, built from its [`EncoderConfig`].
pub trait EncoderModel: std::fmt::Debug + Send {
    /// Runs the encoder. `attention_mask` is `[batch, seq]` with 1 for real tokens and 0 for
    /// padding, or `None` when nothing is padded. Dropout is active only when `train`.
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput;

    /// [`EncoderModel::forward`] for a caller that reads only the first token (its state and
    /// the head input made from it): the last layer may compute the query, attention output
    /// and feed-forward block of that token alone, exact in mathematics, with
    /// `last_hidden_state` then `[batch, 1, hidden]`. Dropout draws fewer values, so a run's
    /// random stream differs from the full computation's. The default is the full forward
    /// (families whose head reads every token, e.g. mean pooling, keep it).
    fn forward_first_token(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        self.forward(input_ids, token_type_ids, attention_mask, train)
    }

    /// The switch for running padded CPU batches unpadded ([`packing`]), where the family
    /// has that path.
    fn unpadded_switch(&self) -> Option<&std::cell::Cell<bool>> {
        None
    }
}

/// A checked `config.json` of some family: what the rest of clsnorm needs to know of a model
/// before (and without) allocating it.
pub trait EncoderConfig: std::fmt::Debug + Send + Sync {
    fn hidden_size(&self) -> i64;
    /// The dropout HF's sequence classifier applies before its output layer (the head's
    /// default): `classifier_dropout` if set, else `hidden_dropout_prob` (DistilBERT:
    /// `seq_classif_dropout`).
    fn classifier_dropout(&self) -> f64;
    /// Standard deviation of HF's weight initialisation (the head's default).
    fn initializer_range(&self) -> f64;
    /// The sizes of the embedding tables, which every batch is checked against.
    fn limits(&self) -> InputLimits;
    /// The name and shape of every parameter, computed without allocating.
    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>>;
    /// How checkpoints name the parameters: where a task model keeps the base model (`bert.`
    /// for `BertForSequenceClassification`), and which parameters a checkpoint may lack (they
    /// keep their random initialisation, e.g. RoBERTa's pooler, which masked-LM checkpoints
    /// do not have).
    fn names(&self) -> weights::Names<'static>;
    /// `config.json` as Hugging Face writes it (saved with every checkpoint).
    fn to_hf_json(&self) -> serde_json::Value;
    /// Creates the model's variables under `p`, randomly initialised as HF does.
    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel>;
    fn clone_box(&self) -> Box<dyn EncoderConfig>;
}

/// `config.json` as Hugging Face writes it: the config's keys, with `architectures` naming
/// `architecture` unless the config already names one (HF picks the class by `model_type`).
pub fn hf_json(config: &impl serde::Serialize, architecture: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.entry("architectures")
            .or_insert_with(|| serde_json::json!([architecture]));
    }
    v
}

/// The attention mask as keys may be attended: boolean `[batch, 1, 1, seq]`, true for real
/// tokens, from the batch's `[batch, seq]` mask (`None`: nothing is padded).
pub fn key_mask(attention_mask: Option<&Tensor>) -> Option<Tensor> {
    attention_mask.map(|m| m.to_kind(tch::Kind::Bool).unsqueeze(1).unsqueeze(1))
}

/// A model family: the `model_type`s it reads and how.
pub trait Family: Send + Sync {
    /// The `model_type` values of `config.json` this family handles.
    fn model_types(&self) -> &'static [&'static str];
    /// Parses and checks `config.json` (the `text` of `path`), allocating nothing from it.
    fn read_config(&self, path: &Path, text: &str) -> Result<Box<dyn EncoderConfig>>;
}

/// The model families a process knows. [`Families::builtin`] has clsnorm's; code that adds
/// its own registers it on a value of its own and passes that along.
pub struct Families {
    families: Vec<Box<dyn Family>>,
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.model_types()).finish()
    }
}

impl Families {
    pub fn builtin() -> Self {
        let mut f = Families {
            families: Vec::new(),
        };
        f.register(BertFamily);
        f.register(RobertaFamily);
        f.register(ElectraFamily);
        f.register(DistilBertFamily);
        f.register(ModernBertFamily);
        f.register(DebertaV2Family);
        f
    }

    /// Adds a family; it takes over the `model_type`s it names from earlier ones.
    pub fn register(&mut self, family: impl Family + 'static) {
        self.families.insert(0, Box::new(family));
    }

    /// Every `model_type` some family reads.
    pub fn model_types(&self) -> Vec<&'static str> {
        let mut v: Vec<&str> = self
            .families
            .iter()
            .flat_map(|f| f.model_types().iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Reads `config.json` of the model directory `dir` with the family its `model_type`
    /// names (`bert` when absent, as old BERT checkpoints).
    pub fn read_config(&self, dir: &Path) -> Result<Box<dyn EncoderConfig>> {
        use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
        let path = dir.join("config.json");
        let bytes = read_regular(&path, MAX_SMALL_BYTES, Links::Follow)?;
        let text = String::from_utf8_lossy(&bytes);
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            msg: config::explain_serde(&e),
        })?;
        let model_type = match json.get("model_type") {
            None => "bert",
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(Error::Config {
                    path,
                    msg: format!("model_type must be a string, found {other}"),
                })
            }
        };
        let family = self
            .families
            .iter()
            .find(|f| f.model_types().contains(&model_type))
            .ok_or_else(|| Error::Config {
                path: path.clone(),
                msg: format!(
                    "model_type is {}, but clsnorm implements {}",
                    crate::excerpt::quoted(model_type),
                    self.model_types().join(", ")
                ),
            })?;
        family.read_config(&path, &text)
    }
}

/// How a batch with padding runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// As padded (every position computed, padding keys masked).
    Padded,
    /// The real tokens only ([`packing`]).
    Unpadded,
}

/// An encoder together with its config and the `VarStore` that owns its parameters.
pub struct Encoder {
    pub vs: nn::VarStore,
    pub config: Box<dyn EncoderConfig>,
    pub model: Box<dyn EncoderModel>,
    /// How [`Encoder::forward`] runs (fp32 unless set); the weights stay fp32 either way.
    pub precision: Precision,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish()
    }
}

impl Encoder {
    /// A randomly initialised encoder (HF's initialisation) on `device`.
    pub fn random(config: &dyn EncoderConfig, device: Device, seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let model = config.build(&vs.root());
        Encoder {
            vs,
            config: config.clone_box(),
            model,
            precision: Precision::Fp32,
        }
    }

    /// Loads `config.json` and the weights of an HF model directory of a built-in family onto
    /// `device`.
    pub fn load(dir: &Path, device: Device, allow_pickle: bool) -> Result<Self> {
        Self::load_with(dir, device, allow_pickle, &Families::builtin())
    }

    /// [`Encoder::load`] with the model families `families`.
    pub fn load_with(
        dir: &Path,
        device: Device,
        allow_pickle: bool,
        families: &Families,
    ) -> Result<Self> {
        let config = families.read_config(dir)?;
        let src = weights::open_model_dir(dir, allow_pickle)?;
        // Shapes first, from the file's header: the weights (bounded by the file's size) must
        // be what the config describes before the model is allocated from the config. The
        // tensors are then read one at a time into the model's variables.
        let names = config.names();
        weights::check_shapes(src.as_ref(), &config.expected_shapes(), &names)?;
        let enc = Self::random(config.as_ref(), device, 0);
        let absent = weights::load_into(&enc.vs, src.as_ref(), &names)?;
        if !absent.is_empty() {
            tracing::warn!(
                "{}: no {} in the checkpoint: initialised at random (HF's initialisation, seed \
                 0); fine-tuning trains them from there",
                src.path().display(),
                absent.join(", ")
            );
        }
        Ok(enc)
    }

    /// Runs the encoder on a batch (dropout only when `train`) at its [`Precision`]; the
    /// outputs are fp32 whatever the precision, so what follows (normalizer, head, loss,
    /// analysis) runs in fp32.
    pub fn forward(&self, batch: &Batch, train: bool) -> EncoderOutput {
        self.run(batch, train, false)
    }

    /// [`Encoder::forward`] when only the first token's state and the head input are read
    /// ([`EncoderModel::forward_first_token`]): the last layer computes that token alone.
    pub fn forward_first_token(&self, batch: &Batch, train: bool) -> EncoderOutput {
        self.run(batch, train, true)
    }

    /// The pooler outputs and raw first-token states of `encs` (`[n, hidden]` each, fp32, on
    /// the CPU, in input order), inferred `batch_size` at a time ([`crate::batch::infer`]) with
    /// the last layer on the first token only; `progress` is told each batch's size.
    pub fn first_token_vectors(
        &self,
        encs: &[crate::tokenize::Encoded],
        batch_size: usize,
        pad: i64,
        progress: impl FnMut(usize),
    ) -> Result<(Tensor, Tensor)> {
        let out = crate::batch::infer(
            encs,
            batch_size,
            pad,
            &self.limits(),
            self.vs.device(),
            |b| {
                let out = self.forward_first_token(b, false);
                vec![
                    out.pooler_output.to_device(Device::Cpu),
                    out.cls.to_device(Device::Cpu),
                ]
            },
            progress,
        )?;
        match <[Tensor; 2]>::try_from(out) {
            Ok([pooled, cls]) => Ok((pooled, cls)),
            Err(_) => Err(Error::Invalid("no examples to embed".into())),
        }
    }

    fn run(&self, batch: &Batch, train: bool, first_only: bool) -> EncoderOutput {
        let out = self.precision.autocast(self.vs.device(), || {
            let (ids, types, mask) = (
                &batch.input_ids,
                &batch.token_type_ids,
                batch.attention_mask.as_ref(),
            );
            if first_only {
                self.model.forward_first_token(ids, types, mask, train)
            } else {
                self.model.forward(ids, types, mask, train)
            }
        });
        if self.precision == Precision::Fp32 {
            return out;
        }
        let f32 = |t: Tensor| t.to_kind(tch::Kind::Float);
        EncoderOutput {
            last_hidden_state: f32(out.last_hidden_state),
            cls: f32(out.cls),
            pooler_output: f32(out.pooler_output),
        }
    }

    /// Runs padded batches unpadded where the family can ([`packing`]; the CPU only: on CUDA
    /// the padded path with fused attention stays); returns the execution now in effect.
    pub fn set_unpadded(&mut self, on: bool) -> Execution {
        if let Some(switch) = self.model.unpadded_switch() {
            switch.set(on);
        }
        self.execution()
    }

    /// How batches with padding run.
    pub fn execution(&self) -> Execution {
        let unpadded = self.model.unpadded_switch().is_some_and(|s| s.get());
        if unpadded && self.vs.device() == Device::Cpu {
            Execution::Unpadded
        } else {
            Execution::Padded
        }
    }

    /// What the encoder's embedding tables accept.
    pub fn limits(&self) -> InputLimits {
        self.config.limits()
    }

    /// Saves `config.json` and `model.safetensors` into `dir` in HF layout.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::atomic::write_json(&dir.join("config.json"), &self.config.to_hf_json())?;
        weights::write_safetensors(
            &dir.join(weights::SAFETENSORS_FILE),
            &weights::named_variables(&self.vs),
        )
    }
}
