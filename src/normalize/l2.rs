//! `l2`: `s * x / ||x||`. The scalar `s` is learnable (initialised to `sqrt(hidden)`, which keeps
//! the average squared entry at 1) unless fixed.
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{NormOptions, Normalizer};

/// `--norm l2` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2Options {
    /// The scale (default `sqrt(hidden)`).
    pub scale: Option<f64>,
    /// Keep the scale fixed instead of learning it.
    pub fixed: bool,
}

impl NormOptions for L2Options {
    const NAME: &'static str = "l2";
    const ABOUT: &'static str = "s x / ||x||, s learnable unless fixed";

    fn validate(&self) -> Result<(), String> {
        // The default is sqrt(hidden) (~20-40); outside this range the logits vanish or
        // overflow.
        match self.scale {
            Some(s) => crate::bounds::f32_range("scale", s, 1e-4, 1e4),
            None => Ok(()),
        }
    }

    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer> {
        Box::new(L2::new(p, hidden, self.scale, self.fixed))
    }
}

#[derive(Debug)]
pub struct L2 {
    scale: Tensor,
}

impl L2 {
    pub fn new(p: &nn::Path, hidden: i64, scale: Option<f64>, fixed: bool) -> Self {
        let value = scale.unwrap_or((hidden as f64).sqrt());
        let scale = if fixed {
            let mut s = p.zeros_no_train("scale", &[1]);
            tch::no_grad(|| {
                let _ = s.fill_(value);
            });
            s
        } else {
            p.var("scale", &[1], nn::Init::Const(value))
        };
        L2 { scale }
    }
}

impl Normalizer for L2 {
    fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        let norm = x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        x / norm * &self.scale
    }
}
