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
    /// The factor of the learning rate this parameter trains at (`--layer-decay`; 1 else).
    lr_scale: f64,
}

/// AdamW over named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    /// The gradients of the last [`AdamW::backward`], one per parameter (undefined where a
    /// parameter took no part in the loss). In flat mode, views into `Flat::grad`.
    grads: Vec<Tensor>,
    /// Work space for the tensor-op update (non-CPU or non-f32 parameters): as large as the
    /// largest parameter, or as all of them in flat mode. Fresh temporaries of that size (the
    /// word embedding: 11.7M floats for MiniLM) are mmap'd and page-faulted on every step,
    /// which cost more than the arithmetic.
    scratch: Tensor,
    flat: Option<Flat>,
    /// Workers of the single-pass CPU update, created once (see [`UpdatePool`]).
    pool: UpdatePool,
    /// Number of updates taken.
    pub step: i64,
}

/// The threads that share the single-pass CPU update. They are created once, when the
/// optimizer is, not per update: spawning can fail on a loaded machine (it did, mid-epoch,
/// losing a run), and then the pool holds as many as could be created, down to none (the
/// update runs on the calling thread) instead of failing.
pub struct UpdatePool {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl UpdatePool {
    /// A pool of up to `threads` threads; fewer if the system refuses to create more.
    pub fn new(threads: usize) -> Self {
        Self::build_with(threads, |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("clsnorm-adamw-{i}"))
                .build()
                .map_err(|e| e.to_string())
        })
    }

    /// [`Self::new`] with the pool builder given (tests make it fail).
    fn build_with(
        threads: usize,
        build: impl Fn(usize) -> std::result::Result<rayon::ThreadPool, String>,
    ) -> Self {
        let mut n = threads.max(1);
        while n > 1 {
            match build(n) {
                Ok(pool) => {
                    return UpdatePool {
                        pool: Some(pool),
                        threads: n,
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot start {n} optimizer threads ({e}); trying {}", n / 2);
                    n /= 2;
                }
            }
        }
        UpdatePool {
            pool: None,
            threads: 1,
        }
    }

    /// Threads the update is shared between.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// Flat mode, for parameters off the CPU (CUDA): both moments live in one buffer each (the
/// parameters' `m` and `v` are views into them) and each backward gathers the gradients into
/// one more, so an update is ~10 kernels over all parameters instead of ~10 per tensor: on a
/// GPU, launching ~1,000 small kernels per step would cost more than MiniLM's whole forward.
struct Flat {
    m: Tensor,
    v: Tensor,
    /// All gradients of the last backward, or undefined when a parameter got none (that step
    /// then takes the per-tensor path, which skips it as torch does).
    grad: Tensor,
    /// (offset, length) of each parameter in the buffers.
    spans: Vec<(i64, i64)>,
}

/// HF's convention: biases and LayerNorm weights get no weight decay (BERT's `LayerNorm`,
/// DistilBERT's `*_layer_norm`); neither do the normalizer's own parameters.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias")
        || name.contains("LayerNorm.")
        || name.contains("layer_norm.")
        || name.starts_with("normalizer."))
}

impl AdamW {
    /// Flat mode (see [`Flat`]) is taken when all parameters share a kind and device and the
    /// single-pass CPU update does not apply.
    pub fn new(cfg: AdamWConfig, params: Vec<(String, Tensor)>) -> Self {
        let mut params = params
            .into_iter()
            .map(|(name, var)| Param {
                weight_decay: if decays(&name) { cfg.weight_decay } else { 0.0 },
                lr_scale: 1.0,
                m: var.zeros_like().detach(),
                v: var.zeros_like().detach(),
                name,
                var,
            })
            .collect::<Vec<Param>>();
        let options = params.first().map(|p| (p.var.kind(), p.var.device()));
        let uniform = params
            .iter()
            .all(|p| Some((p.var.kind(), p.var.device())) == options);
        let flat = match options {
            Some(opts) if uniform && !fused_ok(&[&params[0].var]) => {
                Some(Flat::new(&mut params, opts))
            }
            _ => None,
        };
        let size = match &flat {
            Some(f) => f.m.numel(),
            None => params.iter().map(|p| p.var.numel()).max().unwrap_or(0),
        };
        let scratch = Tensor::empty(
            [size as i64],
            options.unwrap_or((Kind::Float, tch::Device::Cpu)),
        );
        let pool = if flat.is_none() {
            UpdatePool::new(tch::get_num_threads().max(1) as usize)
        } else {
            UpdatePool::new(1)
        };
        AdamW {
            cfg,
            params,
            grads: Vec::new(),
            scratch,
            flat,
            pool,
            step: 0,
        }
    }

    /// Whether the update runs over flat buffers (see [`Flat`]).
    pub fn is_flat(&self) -> bool {
        self.flat.is_some()
    }

    /// Back-propagates `loss` into fresh gradients of every parameter and of each `extra`
    /// tensor (returned, e.g. the [CLS] vector for a gradient trace) in one backward pass.
    ///
    /// Like PyTorch's `zero_grad(set_to_none=True)` before `backward()`: nothing is zeroed and
    /// nothing accumulated into `.grad`, which saves two passes over all parameters per update.
    pub fn backward(&mut self, loss: &Tensor, extra: &[&Tensor]) -> Vec<Tensor> {
        self.grads.clear();
        let inputs: Vec<&Tensor> = self
            .params
            .iter()
            .map(|p| &p.var)
            .chain(extra.iter().copied())
            .collect();
        let mut grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let extra_grads = grads.split_off(self.params.len());
        if let Some(flat) = &mut self.flat {
            if grads.iter().all(Tensor::defined) {
                // One copy into the flat buffer, which also gives every parameter its own
                // dense gradient.
                let pieces: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
                flat.grad = Tensor::cat(&pieces, 0);
                self.grads = flat.views(&flat.grad, &self.params);
                return extra_grads;
            }
            flat.grad = Tensor::new();
        }
        // Autograd may hand one tensor to several inputs (the gradient of `a + b`) or an
        // expanded view; clipping scales gradients in place, so each gets its own dense copy.
        let mut seen = std::collections::HashSet::new();
        self.grads = grads
            .into_iter()
            .map(|g| {
                if !g.defined() {
                    g
                } else if !g.is_contiguous() || !seen.insert(g.data_ptr() as usize) {
                    g.contiguous().copy()
                } else {
                    g
                }
            })
            .collect();
        extra_grads
    }

    /// Back-propagates `loss` and adds its gradients to those of the last [`AdamW::backward`]
    /// (`--grad-accum`: the micro-batches of one update).
    pub fn accumulate(&mut self, loss: &Tensor) {
        let inputs: Vec<&Tensor> = self.params.iter().map(|p| &p.var).collect();
        let grads = Tensor::run_backward(&[loss], &inputs, false, false);
        tch::no_grad(|| {
            for (slot, g) in self.grads.iter_mut().zip(grads) {
                if !g.defined() {
                    continue;
                }
                if slot.defined() {
                    // A gradient of `backward` is the parameter's own dense tensor, or its view
                    // of the flat buffer: added in place either way.
                    let _ = slot.g_add_(&g);
                } else {
                    *slot = g.contiguous().copy();
                }
            }
        });
    }

    fn defined_grads(&self) -> impl Iterator<Item = (&Param, &Tensor)> {
        self.params
            .iter()
            .zip(&self.grads)
            .filter(|(_, g)| g.defined())
    }

    /// Global L2 norm of all gradients (a 0-d tensor, no host sync).
    pub fn grad_norm(&self) -> Tensor {
        if let Some(f) = self.flat.as_ref().filter(|f| f.grad.defined()) {
            return f.grad.to_kind(Kind::Float).norm();
        }
        let norms: Vec<Tensor> = self
            .defined_grads()
            .map(|(_, g)| g.to_kind(Kind::Float).norm())
            .collect();
        if norms.is_empty() {
            return Tensor::from(0f32);
        }
        Tensor::stack(&norms, 0).norm()
    }

    /// L2 norms of the gradients grouped by `group(name)` (e.g. one group per encoder layer).
    pub fn grad_norms_by(
        &self,
        group: impl Fn(&str) -> String,
    ) -> Result<std::collections::BTreeMap<String, f64>, tch::TchError> {
        let mut sq: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
        let (names, sums): (Vec<&str>, Vec<Tensor>) = self
            .defined_grads()
            .map(|(p, g)| {
                (
                    p.name.as_str(),
                    g.to_kind(Kind::Double).square().sum(Kind::Double),
                )
            })
            .unzip();
        if sums.is_empty() {
            return Ok(sq);
        }
        // One transfer to the host for all parameters, not one per parameter.
        let sums = Vec::<f64>::try_from(Tensor::stack(&sums, 0).to(tch::Device::Cpu))?;
        for (name, v) in names.into_iter().zip(sums) {
            *sq.entry(group(name)).or_default() += v;
        }
        Ok(sq.into_iter().map(|(k, v)| (k, v.sqrt())).collect())
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
            for g in &mut self.grads {
                if g.defined() {
                    let _ = g.g_mul_(&coef);
                }
            }
        });
    }

    /// Multiplies the gradients of the last [`AdamW::backward`] by `factor` (the fp16 loss
    /// scaler's unscaling).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| match &mut self.flat {
            Some(flat) if flat.grad.defined() => {
                let _ = flat.grad.g_mul_scalar_(factor);
            }
            _ => {
                for g in &mut self.grads {
                    if g.defined() {
                        let _ = g.g_mul_scalar_(factor);
                    }
                }
            }
        });
    }

    /// One update with learning rate `lr` from the gradients of the last
    /// [`AdamW::backward`].
    /// Sets each parameter's learning-rate factor (a parameter group's own rate, as torch's
    /// param groups with one schedule): `scale` of its name.
    pub fn set_lr_scales(&mut self, scale: &[f64]) {
        for (p, &s) in self.params.iter_mut().zip(scale) {
            p.lr_scale = s;
        }
    }

    /// The parameters' names, in the optimizer's order.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.params.iter().map(|p| p.name.as_str())
    }

    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c = Coeffs {
            one_minus_b1: 1.0 - b1,
            b2,
            one_minus_b2: 1.0 - b2,
            bc2_sqrt: (1.0 - b2.powi(self.step as i32)).sqrt(),
            eps: self.cfg.eps,
            step_size: lr / (1.0 - b1.powi(self.step as i32)),
        };
        let fused = self
            .defined_grads()
            .all(|(p, g)| fused_ok(&[&p.var, &p.m, &p.v, g]));
        if fused {
            let spans: Vec<Span> = self
                .defined_grads()
                .flat_map(|(p, g)| Span::split(p, g, lr * p.lr_scale, p.weight_decay))
                .collect();
            fused_update(&spans, c.to_f32(), &self.pool);
            return;
        }
        let scratch = &self.scratch;
        tch::no_grad(|| {
            if let Some(f) = self.flat.as_ref().filter(|f| f.grad.defined()) {
                for p in self.params.iter_mut().filter(|p| p.weight_decay != 0.0) {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * p.lr_scale * p.weight_decay);
                }
                let s = adam_step(&f.m, &f.v, &f.grad, scratch, c);
                let steps = f.views(&s, &self.params);
                for (p, s) in self.params.iter_mut().zip(steps) {
                    if p.lr_scale == 1.0 {
                        let _ = p.var.g_sub_(&s);
                    } else {
                        let _ = p.var.g_sub_(&(s * p.lr_scale));
                    }
                }
                return;
            }
            for (p, g) in self.params.iter_mut().zip(&self.grads) {
                if !g.defined() {
                    continue;
                }
                if p.weight_decay != 0.0 {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * p.lr_scale * p.weight_decay);
                }
                let s = scratch
                    .narrow(0, 0, p.var.numel() as i64)
                    .view(p.var.size().as_slice());
                let s = adam_step(&p.m, &p.v, g, &s, c);
                if p.lr_scale == 1.0 {
                    let _ = p.var.g_sub_(&s);
                } else {
                    let _ = p.var.g_sub_(&(s * p.lr_scale));
                }
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

/// Updates the moments `m` and `v` from gradient `g` and returns the step to subtract from
/// the parameter, `step_size * m / (sqrt(v) / bc2_sqrt + eps)`, written into `scratch` (of
/// `g`'s shape). The same operations as torch's single-tensor AdamW, in place.
fn adam_step(m: &Tensor, v: &Tensor, g: &Tensor, scratch: &Tensor, c: Coeffs<f64>) -> Tensor {
    let (mut m, mut v) = (m.shallow_clone(), v.shallow_clone());
    let _ = m.lerp_(g, c.one_minus_b1);
    let _ = v.g_mul_scalar_(c.b2);
    let _ = g.mul_scalar_out(scratch, c.one_minus_b2);
    let _ = v.addcmul_(g, scratch);
    let mut s = v.sqrt_out(scratch);
    let _ = s.g_div_scalar_(c.bc2_sqrt);
    let _ = s.g_add_scalar_(c.eps);
    let mut s = m.div_out(&s, &s);
    let _ = s.g_mul_scalar_(c.step_size);
    s
}

impl Flat {
    /// Moves the parameters' (zero) moments into flat buffers.
    fn new(params: &mut [Param], options: (Kind, tch::Device)) -> Self {
        let mut spans = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in params.iter() {
            spans.push((total, p.var.numel() as i64));
            total += p.var.numel() as i64;
        }
        let flat = Flat {
            m: Tensor::zeros([total], options),
            v: Tensor::zeros([total], options),
            grad: Tensor::new(),
            spans,
        };
        let (m, v) = (flat.views(&flat.m, params), flat.views(&flat.v, params));
        for ((p, m), v) in params.iter_mut().zip(m).zip(v) {
            p.m = m;
            p.v = v;
        }
        flat
    }

    /// The pieces of flat buffer `buf`, one per parameter, in its shape.
    fn views(&self, buf: &Tensor, params: &[Param]) -> Vec<Tensor> {
        params
            .iter()
            .zip(&self.spans)
            .map(|(p, &(off, len))| buf.narrow(0, off, len).view(p.var.size().as_slice()))
            .collect()
    }
}

/// The scalars of one AdamW update.
#[derive(Debug, Clone, Copy)]
struct Coeffs<T> {
    one_minus_b1: T,
    b2: T,
    one_minus_b2: T,
    bc2_sqrt: T,
    eps: T,
    step_size: T,
}

impl Coeffs<f64> {
    fn to_f32(self) -> Coeffs<f32> {
        Coeffs {
            one_minus_b1: self.one_minus_b1 as f32,
            b2: self.b2 as f32,
            one_minus_b2: self.one_minus_b2 as f32,
            bc2_sqrt: self.bc2_sqrt as f32,
            eps: self.eps as f32,
            step_size: self.step_size as f32,
        }
    }
}

/// Whether the single-pass CPU update applies: dense f32 tensors in host memory.
fn fused_ok(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous())
}

/// A piece of one parameter (weights, gradient and both moments) for the fused update.
struct Span {
    p: *mut f32,
    g: *const f32,
    m: *mut f32,
    v: *mut f32,
    len: usize,
    /// `1 - lr * weight_decay`, with the parameter's own rate.
    decay: f32,
    /// The parameter's factor of the learning rate.
    lr_scale: f32,
}

// SAFETY: a span's pointers address memory owned by tensors that outlive the scoped threads of
// `fused_update`, and no two spans overlap in the memory they write.
unsafe impl Send for Span {}
unsafe impl Sync for Span {}

impl Span {
    /// Pieces small enough to share out evenly between threads.
    const PIECE: usize = 1 << 16;

    /// Spans of parameter `p` with gradient `g`, trained at rate `lr` (its own) with weight
    /// decay `wd`.
    fn split(p: &Param, g: &Tensor, lr: f64, wd: f64) -> Vec<Span> {
        let n = p.var.numel();
        (0..n)
            .step_by(Self::PIECE)
            .map(|off| Span {
                // SAFETY (of the offsets): `off < n` and all four tensors hold `n` elements.
                p: unsafe { (p.var.data_ptr() as *mut f32).add(off) },
                g: unsafe { (g.data_ptr() as *const f32).add(off) },
                m: unsafe { (p.m.data_ptr() as *mut f32).add(off) },
                v: unsafe { (p.v.data_ptr() as *mut f32).add(off) },
                len: Self::PIECE.min(n - off),
                decay: (1.0 - lr * wd) as f32,
                lr_scale: p.lr_scale as f32,
            })
            .collect()
    }
}

/// The AdamW update in one pass over memory (torch's single-tensor AdamW makes about ten),
/// shared out over the pool's threads.
fn fused_update(spans: &[Span], c: Coeffs<f32>, pool: &UpdatePool) {
    let threads = pool.threads();
    let total: usize = spans.iter().map(|s| s.len).sum();
    let per_thread = total.div_ceil(threads.max(1)).max(1);
    let mut parts: Vec<&[Span]> = Vec::new();
    let (mut start, mut acc) = (0, 0);
    for (i, s) in spans.iter().enumerate() {
        acc += s.len;
        if acc >= per_thread {
            parts.push(&spans[start..=i]);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < spans.len() {
        parts.push(&spans[start..]);
    }
    let run = |part: &[Span]| {
        for s in part {
            // SAFETY: see `Span`; the tensors are contiguous f32 of at least `off + len`
            // elements, `g` is never written, and `p`, `m`, `v` are distinct allocations.
            let (p, g, m, v) = unsafe {
                (
                    std::slice::from_raw_parts_mut(s.p, s.len),
                    std::slice::from_raw_parts(s.g, s.len),
                    std::slice::from_raw_parts_mut(s.m, s.len),
                    std::slice::from_raw_parts_mut(s.v, s.len),
                )
            };
            adamw_kernel(p, g, m, v, s.decay, c.step_size * s.lr_scale, &c);
        }
    };
    match &pool.pool {
        Some(p) if parts.len() > 1 => p.scope(|scope| {
            for part in &parts {
                scope.spawn(|_| run(part));
            }
        }),
        _ => parts.iter().for_each(|p| run(p)),
    }
}

/// `torch.optim.AdamW`'s element-wise update, written so that it vectorizes.
fn adamw_kernel(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    decay: f32,
    step_size: f32,
    c: &Coeffs<f32>,
) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += c.one_minus_b1 * (g - *m);
        *v = *v * c.b2 + g * (g * c.one_minus_b2);
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        *p = *p * decay - step_size * (*m / denom);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_by_hand() {
        two_steps_by_hand_in(Kind::Double); // tensor-op update
        two_steps_by_hand_in(Kind::Float); // fused single-pass update
    }

    fn two_steps_by_hand_in(kind: Kind) {
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
        let w = Tensor::from_slice(&[1.0f64])
            .to_kind(kind)
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f64])
            .to_kind(kind)
            .set_requires_grad(true);
        let mut opt = AdamW::new(
            cfg,
            vec![
                ("dense.weight".into(), w.shallow_clone()),
                ("dense.bias".into(), b.shallow_clone()),
            ],
        );
        let mut after = Vec::new();
        for _ in 0..2 {
            // One gradient tensor for both inputs: clipping or updating one must not touch
            // the other.
            opt.backward(&((&w + &b) * 0.5).sum(kind), &[]);
            opt.step(0.1);
            after.push((w.double_value(&[0]), b.double_value(&[0])));
        }
        // The by-hand values ignore eps (1e-8).
        let tol = if kind == Kind::Float { 1e-6 } else { 1e-7 };
        assert!((after[0].0 - 0.899).abs() < tol, "{after:?}");
        assert!((after[1].0 - 0.798101).abs() < tol, "{after:?}");
        // The bias is exempt from weight decay: 1 - 0.1 - 0.1.
        assert!((after[1].1 - 0.8).abs() < tol, "{after:?}");
        assert_eq!(opt.step, 2);
    }

    const CFG: AdamWConfig = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
    };

    /// Random weights (a decayed matrix larger than a fused span, an exempt bias) and the
    /// targets of a quadratic loss, one per step.
    /// Serialises draws from libtorch's global generator: the tests run on parallel threads,
    /// and interleaved draws would give each test other numbers than its seed names.
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn problem(steps: usize) -> (Vec<Tensor>, Vec<Vec<Tensor>>) {
        let _draws = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        let init = vec![
            Tensor::randn([3, 50_000], (Kind::Double, tch::Device::Cpu)),
            Tensor::randn([7], (Kind::Double, tch::Device::Cpu)),
        ];
        let targets = (0..steps)
            .map(|_| init.iter().map(Tensor::randn_like).collect())
            .collect();
        (init, targets)
    }

    /// AdamW over `problem`'s weight and bias.
    fn optimizer_over(ws: &[Tensor]) -> AdamW {
        let names = ["dense.weight", "dense.bias"];
        let named = names.iter().zip(ws);
        AdamW::new(
            CFG,
            named
                .map(|(n, w)| (n.to_string(), w.shallow_clone()))
                .collect(),
        )
    }

    /// Runs AdamW from `init` towards each step's targets in `kind`; returns the weights and the
    /// optimizer.
    fn descend(kind: Kind, init: &[Tensor], targets: &[Vec<Tensor>]) -> (Vec<Tensor>, AdamW) {
        let ws: Vec<Tensor> = init
            .iter()
            .map(|t| t.to_kind(kind).copy().set_requires_grad(true))
            .collect();
        let mut opt = optimizer_over(&ws);
        for t in targets {
            step_towards(&mut opt, &ws, t, kind);
        }
        (ws, opt)
    }

    fn step_towards(opt: &mut AdamW, ws: &[Tensor], targets: &[Tensor], kind: Kind) {
        let loss = ws
            .iter()
            .zip(targets)
            .map(|(w, t)| (w - t.to_kind(kind)).square().sum(kind) * 0.5)
            .reduce(|a, b| a + b)
            .unwrap();
        opt.backward(&loss, &[]);
        opt.step(1e-2);
    }

    fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| {
                (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
                    .abs()
                    .max()
                    .double_value(&[])
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn an_update_pool_that_cannot_start_threads_degrades_and_updates_the_same() {
        // The system refuses more than 2 threads, then any: the pool takes what it gets.
        let two = UpdatePool::build_with(8, |n| {
            if n > 2 {
                return Err("Resource temporarily unavailable".into());
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| e.to_string())
        });
        assert_eq!(two.threads(), 2);
        let none = UpdatePool::build_with(8, |_| Err("no threads".into()));
        assert_eq!(none.threads(), 1);
        assert!(none.pool.is_none());
        // The update is the same, element for element, whatever the pool.
        let _draws = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(5);
        let run = |pool: &UpdatePool| {
            let p = Tensor::randn([300_000], (Kind::Float, tch::Device::Cpu));
            let g = Tensor::randn([300_000], (Kind::Float, tch::Device::Cpu));
            let param = Param {
                name: "w".into(),
                weight_decay: 0.01,
                lr_scale: 1.0,
                m: p.zeros_like(),
                v: p.zeros_like(),
                var: p.copy(),
            };
            let c = Coeffs {
                one_minus_b1: 0.1,
                b2: 0.999,
                one_minus_b2: 0.001,
                bc2_sqrt: 0.03,
                eps: 1e-6,
                step_size: 0.01,
            };
            fused_update(&Span::split(&param, &g, 0.1, 0.01), c.to_f32(), pool);
            (p, param.var)
        };
        let (p0, a) = run(&UpdatePool::new(4));
        tch::manual_seed(5);
        let (p1, b) = run(&none);
        assert!(p0.equal(&p1));
        assert!(
            a.equal(&b) && !a.equal(&p0),
            "the update differs by pool, or did nothing"
        );
    }

    #[test]
    fn fused_update_matches_the_flat_tensor_op_update() {
        // Many steps on random gradients with weight decay, in f32 through the fused CPU pass
        // and in f64 through torch's operations on flat buffers (the path CUDA takes): the
        // same trajectory up to f32 rounding.
        let (init, targets) = problem(6);
        let (fused, opt32) = descend(Kind::Float, &init, &targets);
        let (flat, opt64) = descend(Kind::Double, &init, &targets);
        assert!(!opt32.is_flat() && opt64.is_flat());
        let moved = max_diff(&flat, &init);
        let diff = max_diff(&fused, &flat);
        assert!(moved > 0.05, "the weights moved by {moved}");
        assert!(diff < 1e-5, "fused and flat updates differ by {diff}");
    }

    #[test]
    fn flat_moments_resume_from_a_checkpoint() {
        // Four steps in one go, and two steps, state() into a fresh optimizer, two more.
        let (init, targets) = problem(4);
        let (straight, _) = descend(Kind::Double, &init, &targets);
        let (half, opt) = descend(Kind::Double, &init, &targets[..2]);
        let state: Vec<(String, Tensor)> = opt
            .state()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let ws: Vec<Tensor> = half
            .iter()
            .map(|w| w.detach().copy().set_requires_grad(true))
            .collect();
        let mut resumed = optimizer_over(&ws);
        resumed.load_state(&state, opt.step).unwrap();
        for t in &targets[2..] {
            step_towards(&mut resumed, &ws, t, Kind::Double);
        }
        assert_eq!(max_diff(&ws, &straight), 0.0);
    }

    #[test]
    fn a_parameter_without_gradient_is_skipped_in_flat_mode() {
        // As torch skips a parameter whose .grad is None: an unused parameter keeps its value
        // (no weight decay, no momentum step) and the others move as without it.
        let (init, targets) = problem(3);
        let (alone, _) = descend(Kind::Double, &init, &targets);
        let ws: Vec<Tensor> = init
            .iter()
            .map(|t| t.copy().set_requires_grad(true))
            .collect();
        let unused = Tensor::ones([5], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt = AdamW::new(
            CFG,
            vec![
                ("dense.weight".into(), ws[0].shallow_clone()),
                ("dense.bias".into(), ws[1].shallow_clone()),
                ("unused.weight".into(), unused.shallow_clone()),
            ],
        );
        assert!(opt.is_flat());
        for t in &targets {
            step_towards(&mut opt, &ws, t, Kind::Double);
        }
        assert_eq!(
            max_diff(
                &[unused],
                &[Tensor::ones([5], (Kind::Double, tch::Device::Cpu))]
            ),
            0.0
        );
        assert!(max_diff(&ws, &alone) < 1e-12);
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
        let extra = opt.backward(
            &(&w * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float),
            &[&w],
        );
        assert_eq!(Vec::<f32>::try_from(&extra[0]).unwrap(), [3.0, 4.0]);
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
