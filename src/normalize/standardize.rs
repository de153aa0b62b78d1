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
    fn check_state(&self) -> std::result::Result<(), String> {
        super::check_variances("normalizer.var", &self.var)
    }

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
        let constant = constant_dims(&var, self.eps);
        if !constant.is_empty() {
            // all-MiniLM-L6-v2's raw [CLS] has three such dimensions (dead LayerNorm weights);
            // standardizing them took 51-84% of the [CLS] gradient (docs/results.md, issue 24).
            let shown: Vec<String> = constant.iter().take(10).map(i64::to_string).collect();
            tracing::warn!(
                "standardize: {} of {} [CLS] dimensions are constant over the training set \
                 (variance below eps = {:e}: {}{}); their gradient is multiplied by up to \
                 1/sqrt(eps) = {:.0}",
                constant.len(),
                var.size()[0],
                self.eps,
                shown.join(", "),
                if constant.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                },
                1.0 / self.eps.sqrt()
            );
        }
        tch::no_grad(|| -> Result<()> {
            self.mean.shallow_clone().f_copy_(&mean)?;
            self.var.shallow_clone().f_copy_(&var)?;
            Ok(())
        })
    }
}

/// The dimensions whose variance is below `eps`: standardizing divides their (constant)
/// deviations by ~sqrt(eps), so their gradient is scaled by up to 1/sqrt(eps).
pub fn constant_dims(var: &Tensor, eps: f64) -> Vec<i64> {
    let below = var.lt(eps).nonzero().view([-1]);
    Vec::<i64>::try_from(&below).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_dimensions_are_those_below_eps() {
        let var = Tensor::from_slice(&[0.5f64, 0.0, 1e-6, 2e-5, 1e-33]);
        assert_eq!(constant_dims(&var, 1e-5), vec![1, 2, 4]);
        assert_eq!(constant_dims(&var, 1e-40), vec![1]);
    }
}
