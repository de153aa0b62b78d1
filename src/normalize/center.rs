//! `center`: `x - mean`, with the batch mean in training (gradient flows through it, as in
//! batch normalization) and the running mean in eval. With a batch of one the batch mean is the
//! example itself, so training then uses the running mean instead.
use tch::{nn, Tensor};

use super::{ema_, Normalizer};

#[derive(Debug)]
pub struct Center {
    running_mean: Tensor,
    momentum: f64,
}

impl Center {
    pub fn new(p: &nn::Path, hidden: i64, momentum: f64) -> Self {
        Center {
            running_mean: p.zeros_no_train("running_mean", &[hidden]),
            momentum,
        }
    }
}

impl Normalizer for Center {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train && x.size()[0] > 1 {
            let mean = x.mean_dim(0, false, x.kind());
            ema_(&self.running_mean, &mean.detach(), self.momentum);
            x - mean
        } else {
            x - &self.running_mean
        }
    }
}
