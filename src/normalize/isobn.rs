//! `isobn`: Isotropic Batch Normalization (Zhou, Lin, Ren, AAAI 2021), step for step as the
//! official code (shared/docs/paper.md):
//!
//! ```text
//! train:  y = x - mean(x);  C += m (yᵀy/n - C);  s += m (sqrt(mean(y²)) - s)   (x detached)
//! both:   rho = clamp(C / (s sᵀ), -1, 1);  gamma_j = mean_k rho_jk²
//!         a = (gamma s + eps)^-beta;  a *= sqrt(tr C / (Σ_j C_jj a_j² + eps));  out = h a
//! ```
//!
//! `a` is detached. Two fixes of the official code's flaws: the state lives in the checkpoint,
//! and until statistics exist (no training step yet, or a zero covariance) the layer is the
//! identity instead of dividing 0 by 0. With `bias_correction` (clsnorm's variant, off by
//! default) `C` and `s` are divided by `1 - (1 - m)^t` before use, as Adam corrects its moments,
//! so that early correlations are not inflated by the zero initialisation.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{check_eps, check_momentum, count_, ema_, NormOptions, Normalizer};

/// `--norm isobn` options; the defaults are the official code's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsoBnOptions {
    pub momentum: f64,
    pub eps: f64,
    /// The exponent of the scale, in [0, 1].
    pub beta: f64,
    /// clsnorm's variant: bias-corrected running statistics (off in the paper).
    pub bias_correction: bool,
}

impl Default for IsoBnOptions {
    fn default() -> Self {
        IsoBnOptions {
            momentum: 0.05,
            eps: 1e-3,
            beta: 0.5,
            bias_correction: false,
        }
    }
}

impl NormOptions for IsoBnOptions {
    const NAME: &'static str = "isobn";
    const ABOUT: &'static str = "IsoBN exactly as the official code";

    fn validate(&self) -> Result<(), String> {
        check_momentum(self.momentum)?;
        check_eps(self.eps)?;
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(format!("beta must be in [0, 1], got {}", self.beta));
        }
        Ok(())
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(IsoBn::new(
            p,
            hidden,
            self.momentum,
            self.eps,
            self.beta,
            self.bias_correction,
        ))
    }
}

#[derive(Debug)]
pub struct IsoBn {
    cov: Tensor,
    std: Tensor,
    steps: Tensor,
    momentum: f64,
    eps: f64,
    beta: f64,
    bias_correction: bool,
}

impl IsoBn {
    pub fn new(
        p: &nn::Path,
        hidden: i64,
        momentum: f64,
        eps: f64,
        beta: f64,
        bias_correction: bool,
    ) -> Self {
        IsoBn {
            cov: p.zeros_no_train("running_cov", &[hidden, hidden]),
            std: p.zeros_no_train("running_std", &[hidden]),
            steps: p.zeros_no_train("num_batches_tracked", &[]),
            momentum,
            eps,
            beta,
            bias_correction,
        }
    }

    /// The per-dimension scale `a` (detached), from the current state.
    pub fn scale(&self) -> Tensor {
        tch::no_grad(|| {
            let (mut c, mut s) = (self.cov.shallow_clone(), self.std.shallow_clone());
            if self.bias_correction {
                // 1 - (1-m)^t, computed on the device from the step counter.
                let k = Tensor::from(1.0 - self.momentum)
                    .to_device(c.device())
                    .pow(&self.steps)
                    .neg()
                    + 1.0;
                let k = k.clamp_min(1e-12);
                c = &c / &k;
                s = &s / &k;
            }
            let denom = s.outer(&s);
            // Dimensions with zero std have no defined correlation: 0 (masking the 0/0).
            let rho = (&c / &denom).where_self(&denom.gt(0.0), &denom.zeros_like());
            let rho = rho.clamp(-1.0, 1.0);
            let gamma = rho.square().mean_dim(1, false, c.kind());
            let a = (gamma * &s + self.eps).pow_tensor_scalar(-self.beta);
            let diag = c.diagonal(0, 0, 1);
            let trace = diag.sum(c.kind());
            let a = &a * (&trace / ((&diag * a.square()).sum(c.kind()) + self.eps)).sqrt();
            // No statistics yet: identity.
            a.where_self(&trace.gt(0.0), &a.ones_like())
        })
    }
}

impl Normalizer for IsoBn {
    fn check_state(&self) -> std::result::Result<(), String> {
        // running_std is an average of standard deviations: never negative.
        super::check_variances("normalizer.running_std", &self.std)?;
        super::check_tracked("normalizer.num_batches_tracked", &self.steps, &self.cov)?;
        super::check_covariance("normalizer.running_cov", &self.cov)
    }

    fn forward(&self, h: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let x = h.detach().to_kind(self.cov.kind());
                let n = x.size()[0] as f64;
                let y = &x - x.mean_dim(0, true, x.kind());
                let cov_b = y.tr().matmul(&y) / n;
                let std_b = y.square().mean_dim(0, false, x.kind()).sqrt();
                ema_(&self.cov, &cov_b, self.momentum);
                ema_(&self.std, &std_b, self.momentum);
                count_(&self.steps);
            });
        }
        h * self.scale().to_kind(h.kind())
    }
}
