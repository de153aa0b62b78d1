//! The BERT encoder: config, model and checkpoint I/O.
pub mod bert;
pub mod config;
pub mod pickle;
pub mod weights;

use std::path::Path;

use tch::{nn, Device};

pub use bert::{BertModel, BertOutput};
pub use config::{BertConfig, HiddenAct};

use crate::error::Result;

/// A BERT encoder together with the `VarStore` that owns its parameters.
pub struct Encoder {
    pub vs: nn::VarStore,
    pub model: BertModel,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.model.config)
            .finish()
    }
}

impl Encoder {
    /// A randomly initialised encoder (HF's initialisation) on `device`.
    pub fn random(config: &BertConfig, device: Device, seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let model = BertModel::new(&vs.root(), config);
        Encoder { vs, model }
    }

    /// Loads `config.json` and the weights of an HF model directory onto `device`.
    pub fn load(dir: &Path, device: Device, allow_pickle: bool) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let ckpt = weights::read_model_dir(dir, allow_pickle)?;
        // Shapes first: the weights (bounded by the file's size) must be what the config
        // describes before the model is allocated from the config.
        weights::check_shapes(&ckpt, &config.expected_shapes())?;
        let enc = Self::random(&config, device, 0);
        weights::load_into(&enc.vs, &ckpt)?;
        weights::check_finite(&ckpt)?;
        Ok(enc)
    }

    /// Runs the encoder on a batch (dropout only when `train`).
    pub fn forward(&self, batch: &crate::batch::Batch, train: bool) -> BertOutput {
        self.model.forward(
            &batch.input_ids,
            &batch.token_type_ids,
            batch.attention_mask.as_ref(),
            train,
        )
    }

    /// What the encoder's embedding tables accept.
    pub fn limits(&self) -> crate::batch::InputLimits {
        crate::batch::InputLimits::of(&self.model.config)
    }

    /// Saves `config.json` and `model.safetensors` into `dir` in HF `BertModel` layout.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::io(dir, e))?;
        crate::atomic::write_json(&dir.join("config.json"), &self.model.config.to_hf_json())?;
        weights::write_safetensors(
            &dir.join(weights::SAFETENSORS_FILE),
            &weights::named_variables(&self.vs),
        )
    }
}
