//! The normalizer slot between the [CLS] vector and the classifier, and the family of methods
//! that fill it (shared/docs/paper.md).
//!
//! Every normalizer keeps its state (running statistics, affine parameters) as variables of the
//! head's `VarStore` under `normalizer.`, so it is saved and restored with every checkpoint and
//! evaluation after a reload gives the same numbers as before it. Statistics are updated in
//! training mode only, without gradient.
mod batchnorm;
mod center;
mod isobn;
mod l2;
mod layernorm;
mod standardize;
mod whiten;

pub use batchnorm::BatchNorm;
pub use center::Center;
pub use isobn::IsoBn;
pub use l2::L2;
pub use layernorm::LayerNorm;
pub use standardize::Standardize;
pub use whiten::Whiten;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::Result;

/// A transformation of `[batch, hidden]` [CLS] vectors.
pub trait Normalizer: std::fmt::Debug + Send {
    /// Normalizes `x`. In training mode it may first update running statistics (no gradient).
    fn forward(&self, x: &Tensor, train: bool) -> Tensor;

    /// Whether [`Normalizer::fit`] must run before training (frozen data statistics).
    fn needs_fit(&self) -> bool {
        false
    }

    /// Sets frozen statistics from `[n, hidden]` vectors of the pre-trained model.
    fn fit(&self, _cls: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// Which normalizer to use and its options; recorded in the run config and checkpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum NormConfig {
    /// The usual practice: no normalization.
    #[default]
    None,
    /// Subtract the mean (batch mean in training, running mean in eval).
    Center { momentum: f64 },
    /// z-score with per-dimension statistics of the pre-trained model on the training set,
    /// computed once before training and frozen.
    Standardize { eps: f64 },
    /// Batch normalization: batch statistics in training, running statistics in eval.
    Batchnorm {
        momentum: f64,
        eps: f64,
        affine: bool,
    },
    /// Layer normalization over the hidden dimension.
    Layernorm { eps: f64, affine: bool },
    /// IsoBN (paper B), exactly as its official code; `bias_correction` is clsnorm's variant.
    Isobn {
        momentum: f64,
        eps: f64,
        beta: f64,
        bias_correction: bool,
    },
    /// ZCA whitening from a running mean and covariance.
    Whiten {
        momentum: f64,
        eps: f64,
        grad_through_stats: bool,
    },
    /// Unit L2 norm times a scalar (learnable unless `fixed`).
    L2 { scale: Option<f64>, fixed: bool },
}

/// Names accepted by `--norm`.
pub const NORM_NAMES: &[&str] = &[
    "none",
    "center",
    "standardize",
    "batchnorm",
    "layernorm",
    "isobn",
    "whiten",
    "l2",
];

impl NormConfig {
    pub fn name(&self) -> &'static str {
        match self {
            NormConfig::None => "none",
            NormConfig::Center { .. } => "center",
            NormConfig::Standardize { .. } => "standardize",
            NormConfig::Batchnorm { .. } => "batchnorm",
            NormConfig::Layernorm { .. } => "layernorm",
            NormConfig::Isobn { .. } => "isobn",
            NormConfig::Whiten { .. } => "whiten",
            NormConfig::L2 { .. } => "l2",
        }
    }

    /// The method `name` with its default options (IsoBN: the official code's m=0.05,
    /// eps=1e-3, beta=0.5; batch statistics: PyTorch's momentum 0.1 and eps 1e-5).
    pub fn with_defaults(name: &str) -> Option<NormConfig> {
        Some(match name.to_ascii_lowercase().as_str() {
            "none" => NormConfig::None,
            "center" => NormConfig::Center { momentum: 0.1 },
            "standardize" => NormConfig::Standardize { eps: 1e-5 },
            "batchnorm" => NormConfig::Batchnorm {
                momentum: 0.1,
                eps: 1e-5,
                affine: false,
            },
            "layernorm" => NormConfig::Layernorm {
                eps: 1e-5,
                affine: false,
            },
            "isobn" => NormConfig::Isobn {
                momentum: 0.05,
                eps: 1e-3,
                beta: 0.5,
                bias_correction: false,
            },
            "whiten" => NormConfig::Whiten {
                momentum: 0.05,
                eps: 1e-3,
                grad_through_stats: false,
            },
            "l2" => NormConfig::L2 {
                scale: None,
                fixed: false,
            },
            _ => return None,
        })
    }

    /// Checks option ranges.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let momentum_ok = |m: f64| m > 0.0 && m <= 1.0;
        let eps_ok = |e: f64| e > 0.0 && e.is_finite();
        match *self {
            NormConfig::None => Ok(()),
            NormConfig::Center { momentum }
            | NormConfig::Batchnorm { momentum, .. }
            | NormConfig::Isobn { momentum, .. }
            | NormConfig::Whiten { momentum, .. }
                if !momentum_ok(momentum) =>
            {
                Err(format!(
                    "normalizer momentum must be in (0, 1], got {momentum}"
                ))
            }
            NormConfig::Standardize { eps }
            | NormConfig::Batchnorm { eps, .. }
            | NormConfig::Layernorm { eps, .. }
            | NormConfig::Isobn { eps, .. }
            | NormConfig::Whiten { eps, .. }
                if !eps_ok(eps) =>
            {
                Err(format!("normalizer eps must be positive, got {eps}"))
            }
            NormConfig::Isobn { beta, .. } if !(0.0..=1.0).contains(&beta) => {
                Err(format!("--isobn-beta must be in [0, 1], got {beta}"))
            }
            NormConfig::L2 { scale: Some(s), .. } if !(s > 0.0 && s.is_finite()) => {
                Err(format!("--l2-scale must be positive, got {s}"))
            }
            _ => Ok(()),
        }
    }

    /// Creates the normalizer's variables under `p` for vectors of size `hidden`.
    pub fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        match *self {
            NormConfig::None => Box::new(Identity),
            NormConfig::Center { momentum } => Box::new(Center::new(p, hidden, momentum)),
            NormConfig::Standardize { eps } => Box::new(Standardize::new(p, hidden, eps)),
            NormConfig::Batchnorm {
                momentum,
                eps,
                affine,
            } => Box::new(BatchNorm::new(p, hidden, momentum, eps, affine)),
            NormConfig::Layernorm { eps, affine } => {
                Box::new(LayerNorm::new(p, hidden, eps, affine))
            }
            NormConfig::Isobn {
                momentum,
                eps,
                beta,
                bias_correction,
            } => Box::new(IsoBn::new(p, hidden, momentum, eps, beta, bias_correction)),
            NormConfig::Whiten {
                momentum,
                eps,
                grad_through_stats,
            } => Box::new(Whiten::new(p, hidden, momentum, eps, grad_through_stats)),
            NormConfig::L2 { scale, fixed } => Box::new(L2::new(p, hidden, scale, fixed)),
        }
    }
}

/// `none`: returns its input.
#[derive(Debug)]
pub struct Identity;

impl Normalizer for Identity {
    fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        x.shallow_clone()
    }
}

/// `stat += momentum * (new - stat)` in place, without gradient.
pub(crate) fn ema_(stat: &Tensor, new: &Tensor, momentum: f64) {
    tch::no_grad(|| {
        let mut s = stat.shallow_clone();
        let _ = s.lerp_(new, momentum);
    });
}

/// Adds one to a scalar step counter in place.
pub(crate) fn count_(steps: &Tensor) {
    tch::no_grad(|| {
        let mut s = steps.shallow_clone();
        let _ = s.g_add_scalar_(1.0);
    });
}
