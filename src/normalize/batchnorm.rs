//! `batchnorm`: batch statistics in training (biased variance for normalizing, unbiased for the
//! running estimate, as PyTorch), running statistics in eval, optional affine. A batch of one has
//! no variance, so training then normalizes with the running statistics and does not update them.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{check_eps, check_momentum, NormOptions, Normalizer};

/// `--norm batchnorm` options (PyTorch `BatchNorm1d`'s defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchNormOptions {
    pub momentum: f64,
    pub eps: f64,
    /// Learnable scale and shift.
    pub affine: bool,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            momentum: 0.1,
            eps: 1e-5,
            affine: false,
        }
    }
}

impl NormOptions for BatchNormOptions {
    const NAME: &'static str = "batchnorm";
    const ABOUT: &'static str = "batch statistics in training, running statistics in eval";

    fn validate(&self) -> Result<(), String> {
        check_momentum(self.momentum)?;
        check_eps(self.eps)
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(BatchNorm::new(
            p,
            hidden,
            self.momentum,
            self.eps,
            self.affine,
        ))
    }
}

#[derive(Debug)]
pub struct BatchNorm {
    running_mean: Tensor,
    running_var: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    momentum: f64,
    eps: f64,
}

impl BatchNorm {
    pub fn new(p: &nn::Path, hidden: i64, momentum: f64, eps: f64, affine: bool) -> Self {
        BatchNorm {
            running_mean: p.zeros_no_train("running_mean", &[hidden]),
            running_var: p.ones_no_train("running_var", &[hidden]),
            weight: affine.then(|| p.ones("weight", &[hidden])),
            bias: affine.then(|| p.zeros("bias", &[hidden])),
            momentum,
            eps,
        }
    }
}

impl Normalizer for BatchNorm {
    fn check_state(&self) -> std::result::Result<(), String> {
        super::check_variances("normalizer.running_var", &self.running_var)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let use_batch = train && x.size()[0] > 1;
        Tensor::batch_norm(
            x,
            self.weight.as_ref(),
            self.bias.as_ref(),
            Some(&self.running_mean),
            Some(&self.running_var),
            use_batch,
            self.momentum,
            self.eps,
            false,
        )
    }
}
