//! `standardize`: `(x - mu) / sqrt(var + eps)` with `mu`, `var` of the pre-trained model's
//! vectors over the training set, set once by [`Normalizer::fit`] and then frozen.
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{check_eps, NormOptions, Normalizer};
use crate::error::{Error, Result};

/// `--norm standardize` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandardizeOptions {
    pub eps: f64,
}

impl Default for StandardizeOptions {
    fn default() -> Self {
        StandardizeOptions { eps: 1e-5 }
    }
}

impl NormOptions for StandardizeOptions {
    const NAME: &'static str = "standardize";
    const ABOUT: &'static str =
        "z-score with the pre-trained model's statistics on the training set, frozen";

    fn validate(&self) -> std::result::Result<(), String> {
        check_eps(self.eps)
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(Standardize::new(p, hidden, self.eps))
    }
}

#[derive(Debug)]
pub struct Standardize {
    mean: Tensor,
    var: Tensor,
    eps: f64,
}

impl Standardize {
    pub fn new(p: &nn::Path, hidden: i64, eps: f64) -> Self {
        Standardize {
            mean: p.zeros_no_train("mean", &[hidden]),
            var: p.ones_no_train("var", &[hidden]),
            eps,
        }
    }
}

impl Normalizer for Standardize {
    fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        (x - &self.mean) / (&self.var + self.eps).sqrt()
    }

    fn needs_fit(&self) -> bool {
        true
    }

    fn fit(&self, cls: &Tensor) -> Result<()> {
        if cls.size().first().copied().unwrap_or(0) < 2 {
            return Err(Error::Invalid(
                "standardize needs at least 2 training examples".into(),
            ));
        }
        // Two-pass in f64: mean first, then the (biased) variance around it.
        let x = cls.to_kind(Kind::Double);
        let mean = x.mean_dim(0, false, Kind::Double);
        let var = (&x - &mean).square().mean_dim(0, false, Kind::Double);
        tch::no_grad(|| -> Result<()> {
            self.mean.shallow_clone().f_copy_(&mean)?;
            self.var.shallow_clone().f_copy_(&var)?;
            Ok(())
        })
    }
}
