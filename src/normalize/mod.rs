//! The normalizer slot between the [CLS] vector and the classifier.
//!
//! Every normalizer keeps its state (running statistics, affine parameters) as variables of the
//! head's `VarStore` under `normalizer.`, so it is saved and restored with every checkpoint.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// A transformation of `[batch, hidden]` [CLS] vectors.
pub trait Normalizer: std::fmt::Debug + Send {
    /// Normalizes `x`. In training mode it may update running statistics (without gradient).
    fn forward(&self, x: &Tensor, train: bool) -> Tensor;
}

/// Which normalizer to use and its options; recorded in the run config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum NormConfig {
    /// The usual practice: no normalization.
    #[default]
    None,
}

impl NormConfig {
    pub fn name(&self) -> &'static str {
        match self {
            NormConfig::None => "none",
        }
    }

    /// Creates the normalizer's variables under `p` for vectors of size `hidden`.
    pub fn build(&self, _p: &nn::Path, _hidden: i64) -> Box<dyn Normalizer> {
        match self {
            NormConfig::None => Box::new(Identity),
        }
    }
}

/// `none`: returns its input.
#[derive(Debug)]
pub struct Identity;

impl Normalizer for Identity {
    fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        x.shallow_clone()
    }
}
