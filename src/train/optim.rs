//! AdamW with decoupled weight decay, written out so that its state can be checkpointed and
//! resumed exactly. The update is `torch.optim.AdamW`'s:
//!
//! ```text
//! p -= lr * wd * p
//! m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Optimizer hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    var: Tensor,
    m: Tensor,
    v: Tensor,
    weight_decay: f64,
}

/// AdamW over named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    /// Work space as large as the largest parameter. Fresh temporaries of that size (the word
    /// embedding: 11.7M floats for MiniLM) are mmap'd and page-faulted on every step, which
    /// cost more than the arithmetic.
    scratch: Tensor,
    /// Number of updates taken.
    pub step: i64,
}

/// HF's convention: biases and LayerNorm weights get no weight decay; neither do the
/// normalizer's own parameters.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm.") || name.starts_with("normalizer."))
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: Vec<(String, Tensor)>) -> Self {
        let params = params
            .into_iter()
            .map(|(name, var)| Param {
                weight_decay: if decays(&name) { cfg.weight_decay } else { 0.0 },
                m: var.zeros_like().detach(),
                v: var.zeros_like().detach(),
                name,
                var,
            })
            .collect::<Vec<Param>>();
        let largest = params.iter().map(|p| p.var.numel()).max().unwrap_or(0);
        let scratch = match params.first() {
            Some(p) => Tensor::empty([largest as i64], (p.var.kind(), p.var.device())),
            None => Tensor::empty([0], (Kind::Float, tch::Device::Cpu)),
        };
        AdamW {
            cfg,
            params,
            scratch,
            step: 0,
        }
    }

    /// Clears gradients (sets them to `None` semantics by zeroing in place).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// Global L2 norm of all gradients (a 0-d tensor, no host sync).
    pub fn grad_norm(&self) -> Tensor {
        let sq: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        if sq.is_empty() {
            return Tensor::from(0f32);
        }
        Tensor::stack(&sq, 0).sum(Kind::Float).sqrt()
    }

    /// L2 norms of the gradients grouped by `group(name)` (e.g. one group per encoder layer).
    pub fn grad_norms_by(
        &self,
        group: impl Fn(&str) -> String,
    ) -> std::collections::BTreeMap<String, f64> {
        let mut sq: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
        for p in &self.params {
            let g = p.var.grad();
            if g.defined() {
                let v = g
                    .to_kind(Kind::Double)
                    .square()
                    .sum(Kind::Double)
                    .double_value(&[]);
                *sq.entry(group(&p.name)).or_default() += v;
            }
        }
        sq.into_iter().map(|(k, v)| (k, v.sqrt())).collect()
    }

    /// Scales gradients so that their global norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let norm = self.grad_norm();
        self.clip_to(&norm, max_norm);
        norm
    }

    /// Scales gradients whose global norm is `norm` (from [`AdamW::grad_norm`]) to at most
    /// `max_norm`.
    pub fn clip_to(&mut self, norm: &Tensor, max_norm: f64) {
        let coef = (norm + 1e-6).reciprocal() * max_norm;
        let coef = coef.clamp_max(1.0);
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.var.grad();
                if g.defined() {
                    let _ = g.g_mul_(&coef);
                }
            }
        });
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let eps = self.cfg.eps;
        let step_size = lr / bc1;
        let scratch = &self.scratch;
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                // The same operations as torch's single-tensor AdamW, in place, with one
                // reused buffer `s` for the temporaries.
                let s = scratch
                    .narrow(0, 0, p.var.numel() as i64)
                    .view(p.var.size().as_slice());
                if p.weight_decay != 0.0 {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * p.weight_decay);
                }
                let _ = p.m.lerp_(&g, 1.0 - b1);
                let _ = p.v.g_mul_scalar_(b2);
                let _ = g.mul_scalar_out(&s, 1.0 - b2);
                let _ = p.v.addcmul_(&g, &s);
                let mut s = p.v.sqrt_out(&s);
                let _ = s.g_div_scalar_(bc2_sqrt);
                let _ = s.g_add_scalar_(eps);
                let mut s = p.m.div_out(&s, &s);
                let _ = s.g_mul_scalar_(step_size);
                let _ = p.var.g_sub_(&s);
            }
        });
    }

    /// Moment tensors for a checkpoint: `exp_avg.NAME`, `exp_avg_sq.NAME`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.m.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", p.name), p.v.shallow_clone()));
        }
        out
    }

    /// Restores moments written by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], step: i64) -> Result<()> {
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (prefix, dst) in [("exp_avg", &mut p.m), ("exp_avg_sq", &mut p.v)] {
                    let key = format!("{prefix}.{}", p.name);
                    let src = map
                        .get(key.as_str())
                        .ok_or_else(|| Error::Invalid(format!("optimizer state lacks {key}")))?;
                    if src.size() != dst.size() {
                        return Err(Error::Invalid(format!(
                            "optimizer state {key} has shape {:?}, expected {:?}",
                            src.size(),
                            dst.size()
                        )));
                    }
                    dst.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_by_hand() {
        // p = 1, constant gradient 0.5, lr 0.1, wd 0.01, betas (0.9, 0.999):
        // step 1: p = 1 - 0.1*0.01*1 = 0.999; m = 0.05, v = 2.5e-4; m/(1-b1) = 0.5,
        //         sqrt(v/(1-b2)) = 0.5, so p -= 0.1 * 0.5/0.5 -> 0.899
        // step 2: p *= 1 - 0.001 -> 0.898101; m = 0.095, v = 4.9975e-4; m/(1-b1^2) = 0.5,
        //         sqrt(v/(1-b2^2)) = 0.5, so p -= 0.1 -> 0.798101
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let w = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = AdamW::new(
            cfg,
            vec![
                ("dense.weight".into(), w.shallow_clone()),
                ("dense.bias".into(), b.shallow_clone()),
            ],
        );
        let mut after = Vec::new();
        for _ in 0..2 {
            opt.zero_grad();
            ((&w + &b) * 0.5).sum(Kind::Double).backward();
            opt.step(0.1);
            after.push((w.double_value(&[0]), b.double_value(&[0])));
        }
        assert!((after[0].0 - 0.899).abs() < 1e-7, "{after:?}");
        assert!((after[1].0 - 0.798101).abs() < 1e-7, "{after:?}");
        // The bias is exempt from weight decay: 1 - 0.1 - 0.1.
        assert!((after[1].1 - 0.8).abs() < 1e-7, "{after:?}");
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let w = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            vec![("w".into(), w.shallow_clone())],
        );
        (&w * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let before = opt.clip_grad_norm(1.0).double_value(&[]);
        assert!((before - 5.0).abs() < 1e-6);
        assert!((opt.grad_norm().double_value(&[]) - 1.0).abs() < 1e-5);
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(
            !decays("embeddings.LayerNorm.weight")
                && !decays("classifier.bias")
                && !decays("normalizer.weight")
        );
    }
}
