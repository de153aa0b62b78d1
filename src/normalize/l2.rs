//! `l2`: `s * x / ||x||`. The scalar `s` is learnable (initialised to `sqrt(hidden)`, which keeps
//! the average squared entry at 1) unless fixed.
use tch::{nn, Tensor};

use super::Normalizer;

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
