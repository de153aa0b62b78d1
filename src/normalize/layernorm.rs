//! `layernorm`: each vector to mean 0 and variance 1 over its dimensions, optional affine.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{check_eps, NormOptions, Normalizer};

/// `--norm layernorm` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerNormOptions {
    pub eps: f64,
    /// Learnable scale and shift.
    pub affine: bool,
}

impl Default for LayerNormOptions {
    fn default() -> Self {
        LayerNormOptions {
            eps: 1e-5,
            affine: false,
        }
    }
}

impl NormOptions for LayerNormOptions {
    const NAME: &'static str = "layernorm";
    const ABOUT: &'static str = "each vector to mean 0, variance 1";

    fn validate(&self) -> Result<(), String> {
        check_eps(self.eps)
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(LayerNorm::new(p, hidden, self.eps, self.affine))
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    hidden: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(p: &nn::Path, hidden: i64, eps: f64, affine: bool) -> Self {
        LayerNorm {
            weight: affine.then(|| p.ones("weight", &[hidden])),
            bias: affine.then(|| p.zeros("bias", &[hidden])),
            hidden,
            eps,
        }
    }
}

impl Normalizer for LayerNorm {
    fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        x.layer_norm(
            [self.hidden],
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
            false,
        )
    }
}
