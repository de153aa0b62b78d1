//! `layernorm`: each vector to mean 0 and variance 1 over its dimensions, optional affine.
use tch::{nn, Tensor};

use super::Normalizer;

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
