//! `whiten`: ZCA whitening `(x - mu) W` with `W = U diag(1/sqrt(lambda + eps)) Uᵀ` from the
//! eigen-decomposition of a running covariance: the full decorrelation that IsoBN
//! approximates. The running mean and covariance are EMAs updated before use, with bias
//! correction so that they are unbiased from the first step; before any training step the layer
//! is the identity. By default no gradient flows through the statistics; with
//! `grad_through_stats` training uses the batch mean and covariance with gradient (as
//! decorrelated batch normalization), still updating the running estimate for eval.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{check_eps, check_momentum, count_, ema_, NormOptions, Normalizer};

/// `--norm whiten` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhitenOptions {
    pub momentum: f64,
    pub eps: f64,
    /// Training uses the batch statistics, with gradient.
    pub grad_through_stats: bool,
}

impl Default for WhitenOptions {
    fn default() -> Self {
        WhitenOptions {
            momentum: 0.05,
            eps: 1e-3,
            grad_through_stats: false,
        }
    }
}

impl NormOptions for WhitenOptions {
    const NAME: &'static str = "whiten";
    const ABOUT: &'static str = "ZCA whitening from a running mean and covariance";

    fn validate(&self) -> Result<(), String> {
        check_momentum(self.momentum)?;
        check_eps(self.eps)
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(Whiten::new(
            p,
            hidden,
            self.momentum,
            self.eps,
            self.grad_through_stats,
        ))
    }
}

#[derive(Debug)]
pub struct Whiten {
    mean: Tensor,
    cov: Tensor,
    steps: Tensor,
    momentum: f64,
    eps: f64,
    grad_through_stats: bool,
}

/// `(cov + eps I)^(-1/2)` through the symmetric eigen-decomposition.
pub fn zca_matrix(cov: &Tensor, eps: f64) -> Tensor {
    let (lambda, u) = cov.linalg_eigh("L");
    let inv_sqrt = (lambda.clamp_min(0.0) + eps).rsqrt();
    (&u * inv_sqrt.unsqueeze(0)).matmul(&u.tr())
}

impl Whiten {
    pub fn new(
        p: &nn::Path,
        hidden: i64,
        momentum: f64,
        eps: f64,
        grad_through_stats: bool,
    ) -> Self {
        Whiten {
            mean: p.zeros_no_train("running_mean", &[hidden]),
            cov: p.zeros_no_train("running_cov", &[hidden, hidden]),
            steps: p.zeros_no_train("num_batches_tracked", &[]),
            momentum,
            eps,
            grad_through_stats,
        }
    }

    fn corrected(&self) -> (Tensor, Tensor) {
        let k = (Tensor::from(1.0 - self.momentum)
            .to_device(self.cov.device())
            .pow(&self.steps)
            .neg()
            + 1.0)
            .clamp_min(1e-12);
        (&self.mean / &k, &self.cov / &k)
    }
}

impl Normalizer for Whiten {
    fn check_state(&self) -> std::result::Result<(), String> {
        super::check_tracked("normalizer.num_batches_tracked", &self.steps, &self.cov)?;
        super::check_covariance("normalizer.running_cov", &self.cov)
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let n = x.size()[0];
        let xf = x.to_kind(self.cov.kind());
        if train && n > 1 {
            let batch_mean = xf.mean_dim(0, false, xf.kind());
            let y = &xf - &batch_mean;
            let batch_cov = y.tr().matmul(&y) / n as f64;
            ema_(&self.mean, &batch_mean.detach(), self.momentum);
            ema_(&self.cov, &batch_cov.detach(), self.momentum);
            count_(&self.steps);
            if self.grad_through_stats {
                return y
                    .matmul(&zca_matrix(&batch_cov, self.eps))
                    .to_kind(x.kind());
            }
        }
        let (mean, cov) = tch::no_grad(|| self.corrected());
        let w = tch::no_grad(|| zca_matrix(&cov, self.eps));
        let out = (&xf - &mean).matmul(&w).to_kind(x.kind());
        // No statistics yet: identity.
        let ready = self.steps.gt(0.0);
        out.where_self(&ready, x)
    }
}
