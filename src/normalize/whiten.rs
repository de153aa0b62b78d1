//! `whiten`: ZCA whitening `(x - mu) W` with `W = U diag(1/sqrt(lambda + eps)) Uᵀ` from the
//! eigen-decomposition of a running covariance: the full decorrelation that IsoBN
//! approximates. The running mean and covariance are EMAs updated before use, with bias
//! correction so that they are unbiased from the first step; before any training step the layer
//! is the identity. By default no gradient flows through the statistics; with
//! `grad_through_stats` training uses the batch mean and covariance with gradient (as
//! decorrelated batch normalization), still updating the running estimate for eval.
use tch::{nn, Tensor};

use super::{count_, ema_, Normalizer};

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
