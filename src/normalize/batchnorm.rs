//! `batchnorm`: batch statistics in training (biased variance for normalizing, unbiased for the
//! running estimate, as PyTorch), running statistics in eval, optional affine. A batch of one has
//! no variance, so training then normalizes with the running statistics and does not update them.
use tch::{nn, Tensor};

use super::Normalizer;

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
