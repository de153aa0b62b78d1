//! `center`: `x - mean`, with the batch mean in training (gradient flows through it, as in
//! batch normalization) and the running mean in eval. With a batch of one the batch mean is the
//! example itself, so training then uses the running mean instead.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{check_momentum, ema_, NormOptions, Normalizer};

/// `--norm center` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CenterOptions {
    /// EMA momentum of the running mean.
    pub momentum: f64,
}

impl Default for CenterOptions {
    fn default() -> Self {
        CenterOptions { momentum: 0.1 }
    }
}

impl NormOptions for CenterOptions {
    const NAME: &'static str = "center";
    const ABOUT: &'static str = "x - mean (batch mean in training, running mean in eval)";

    fn validate(&self) -> Result<(), String> {
        check_momentum(self.momentum)
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(Center::new(p, hidden, self.momentum))
    }
}

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
