//! What every family builds its modules and checks its config with: Hugging Face's
//! initialisation (N(0, initializer_range) weights, zero biases, unit norms) and the value
//! checks, so that each family states only its own names, shapes and rules.
use tch::{nn, Device, Kind, Tensor};

/// A linear layer initialised as HF does.
pub fn linear(p: nn::Path, std: f64, inp: i64, out: i64, bias: bool) -> nn::Linear {
    let c = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    };
    let linear = nn::linear(p, inp, out, c);
    normal_in_place(&linear.ws, std);
    linear
}

/// An embedding table initialised as HF does.
pub fn embedding(p: nn::Path, std: f64, n: i64, dim: i64) -> nn::Embedding {
    let c = nn::EmbeddingConfig {
        ws_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    let embedding = nn::embedding(p, n, dim, c);
    normal_in_place(&embedding.ws, std);
    embedding
}

/// Fills `t` with N(0, std) draws in place: the values `Init::Randn` gives (libtorch makes
/// both from the same draws, in the same order), without its two temporaries of the
/// tensor's size, which made the largest embedding table cost three times its size while a
/// model was built (and then loaded over). libtorch draws a tensor of fewer than 16 values one
/// value at a time in double precision, where `normal_`'s rounding differs from `randn * std`
/// in the last bit, so those are drawn as `Init::Randn` draws them. `std` is a checked config
/// value (positive, finite).
fn normal_in_place(t: &Tensor, std: f64) {
    tch::no_grad(|| {
        let mut t = t.shallow_clone();
        if t.numel() < 16 {
            t.copy_(&(Tensor::randn(t.size(), (t.kind(), t.device())) * std));
        } else {
            let _ = t.normal_(0.0, std);
        }
    });
}

/// A LayerNorm with weight and bias over the last `dim` values.
pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    let c = nn::LayerNormConfig {
        eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![dim], c)
}

/// Parameter names and shapes, as [`super::EncoderConfig::expected_shapes`] lists them.
#[derive(Debug, Default)]
pub struct Shapes(pub std::collections::BTreeMap<String, Vec<i64>>);

impl Shapes {
    pub fn put(&mut self, name: impl Into<String>, shape: Vec<i64>) {
        self.0.insert(name.into(), shape);
    }

    /// `P.weight` `[out, inp]` and, with `bias`, `P.bias` `[out]`.
    pub fn linear(&mut self, p: &str, inp: i64, out: i64, bias: bool) {
        self.put(format!("{p}.weight"), vec![out, inp]);
        if bias {
            self.put(format!("{p}.bias"), vec![out]);
        }
    }

    /// A norm's `P.weight` `[dim]` and, with `bias`, `P.bias` `[dim]`.
    pub fn norm(&mut self, p: &str, dim: i64, bias: bool) {
        self.put(format!("{p}.weight"), vec![dim]);
        if bias {
            self.put(format!("{p}.bias"), vec![dim]);
        }
    }
}

/// Checks of config values, as messages naming the key.
pub mod check {
    /// Every size in 1..=max (bounds far beyond real encoders keep a hostile config from
    /// making clsnorm enumerate or allocate absurd sizes).
    pub fn sizes(sizes: &[(&str, i64, i64)]) -> Result<(), String> {
        match sizes.iter().find(|(_, v, max)| !(1..=*max).contains(v)) {
            Some((name, v, max)) => Err(format!("{name} must be from 1 to {max}, found {v}")),
            None => Ok(()),
        }
    }

    /// Every dropout probability in [0, 1).
    pub fn probabilities(ps: &[(&str, f64)]) -> Result<(), String> {
        match ps.iter().find(|(_, p)| !(0.0..1.0).contains(p)) {
            Some((name, p)) => Err(format!("{name} must be in [0, 1), found {p}")),
            None => Ok(()),
        }
    }

    /// A LayerNorm epsilon ([`crate::bounds::epsilon`]) and the initialiser's standard
    /// deviation (positive in f32, at most 1), as they are used.
    pub fn eps_and_init(eps: Option<(&str, f64)>, initializer_range: f64) -> Result<(), String> {
        if let Some((name, e)) = eps {
            crate::bounds::epsilon(name, e)?;
        }
        crate::bounds::f32_range("initializer_range", initializer_range, 1e-30, 1.0)
    }

    /// The pad id names a row of the vocabulary.
    pub fn pad_in_vocab(pad: i64, vocab: i64) -> Result<(), String> {
        if (0..vocab).contains(&pad) {
            Ok(())
        } else {
            Err(format!(
                "pad_token_id {pad} is outside the vocabulary of {vocab}"
            ))
        }
    }
}

/// Dropout as torch's (each value zeroed with probability `p`, the others scaled by
/// 1/(1-p)), only when `train`. On the CPU the keep-mask comes from a xoshiro256++ stream seeded
/// by one draw of libtorch's generator, so `tch::manual_seed` still fixes it: libtorch's CPU
/// `bernoulli_` cost 17% of an fp32 MiniLM-L6 training step and a third of a bf16 one
/// (docs/performance.md, "Dropout"). Elsewhere (CUDA) libtorch's own fused dropout.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || p >= 1.0 {
        return x.dropout(p, true);
    }
    x * keep_mask(&x.size(), p, x.kind())
}

/// `{0, 1/(1-p)}` values of shape `shape`, each nonzero with probability 1-p (to 2^-32).
/// (Filling the tensor's memory in place and on several threads measured no faster.)
fn keep_mask(shape: &[i64], p: f64, kind: Kind) -> Tensor {
    use rand::{RngCore, SeedableRng};
    let seed = Tensor::randint_low(0, i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed as u64);
    let threshold = ((1.0 - p) * 4_294_967_296.0) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let value = |r: u32| if u64::from(r) < threshold { scale } else { 0.0 };
    let n = shape.iter().product::<i64>().max(0) as usize;
    let mut mask = vec![0f32; n];
    let mut pairs = mask.chunks_exact_mut(2);
    for pair in &mut pairs {
        let r = rng.next_u64();
        pair[0] = value(r as u32);
        pair[1] = value((r >> 32) as u32);
    }
    if let [last] = pairs.into_remainder() {
        *last = value(rng.next_u32());
    }
    let mask = Tensor::from_slice(&mask).view(shape);
    if kind == Kind::Float {
        mask
    } else {
        mask.to_kind(kind)
    }
}

/// The rows of [`keep_mask`] of shape `[real.len(), width]` whose `real` entry is true, as a
/// `[rows kept, width]` tensor: the same draws (one from libtorch's generator, then the same
/// xoshiro stream over every row), so a packed tensor gets the values its padded layout would.
pub fn keep_mask_rows(real: &[bool], width: i64, p: f64, kind: Kind) -> Tensor {
    use rand::{RngCore, SeedableRng};
    let seed = Tensor::randint_low(0, i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed as u64);
    let threshold = ((1.0 - p) * 4_294_967_296.0) as u64;
    let scale = (1.0 / (1.0 - p)) as f32;
    let value = |r: u32| if u64::from(r) < threshold { scale } else { 0.0 };
    let width = width.max(0) as usize;
    let n = real.len() * width;
    let kept = real.iter().filter(|&&r| r).count();
    let mut mask = Vec::with_capacity(kept * width);
    // keep_mask's order: value i from the low half of draw i/2 (even i) or its high half (odd
    // i), and a lone last value from the high half of a fresh draw.
    let mut high = 0u32;
    let mut i = 0usize;
    for &keep in real {
        for _ in 0..width {
            let v = if i % 2 == 1 {
                value(high)
            } else if i + 1 < n {
                let r = rng.next_u64();
                high = (r >> 32) as u32;
                value(r as u32)
            } else {
                value(rng.next_u32())
            };
            if keep {
                mask.push(v);
            }
            i += 1;
        }
    }
    let mask = Tensor::from_slice(&mask).view([kept as i64, width as i64]);
    if kind == Kind::Float {
        mask
    } else {
        mask.to_kind(kind)
    }
}

/// Multi-head attention `softmax(q k^T / sqrt(d) + mask) v` over `[batch, heads, seq, dim]`,
/// with dropout `p` on the attention probabilities when `train`. `mask` is boolean (true where
/// a key may be attended to) or additive, broadcastable to `[batch, heads, seq, seq]`.
/// libtorch's fused `scaled_dot_product_attention` everywhere but in CPU training with
/// dropout, where libtorch itself falls back to these matmuls and its slow `bernoulli_`, and
/// [`dropout`]'s mask replaces that; the softmax runs in fp32 under mixed precision.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    p: f64,
    train: bool,
) -> Tensor {
    if !train || p <= 0.0 || q.device() != Device::Cpu {
        let p = if train { p } else { 0.0 };
        return Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, None, false);
    }
    let d = q.size().last().copied().unwrap_or(1);
    // The scale on the queries (`[.., seq, dim]`) rather than on the scores (`[.., seq,
    // seq]`), and the mask added rather than filled in: the backward pass then has no
    // elementwise pass over the scores but the softmax's and the dropout's.
    let scores = (q * (1.0 / (d as f64).sqrt())).matmul(&k.transpose(-2, -1));
    let probs = match mask {
        Some(m) if m.kind() == Kind::Bool && !every_row_attends(m) => {
            // A query that may attend to no key (a padding position outside every real
            // token's local window, ModernBERT) gets NaN from the softmax; the fused kernel
            // gives it zeros, and so does this path, or the NaN would reach real tokens through
            // that padding row's values. The fill (not an addition) keeps the NaN of the
            // softmax's backward out of the scores' gradient.
            let blocked = m.logical_not();
            scores
                .masked_fill(&blocked, f64::NEG_INFINITY)
                .softmax(-1, Kind::Float)
                .nan_to_num(0.0, None, None)
        }
        Some(m) if m.kind() == Kind::Bool => {
            let additive = Tensor::zeros(m.size(), (scores.kind(), m.device()))
                .masked_fill(&m.logical_not(), f64::NEG_INFINITY);
            (scores + additive).softmax(-1, Kind::Float)
        }
        Some(m) => (scores + m).softmax(-1, Kind::Float),
        None => scores.softmax(-1, Kind::Float),
    };
    dropout(&probs.to_kind(v.kind()), p, true).matmul(v)
}

/// Whether every query row of the boolean `mask` (`[.., queries, keys]`, broadcast) may attend
/// to at least one key.
fn every_row_attends(mask: &Tensor) -> bool {
    mask.any_dim(-1, false).all().int64_value(&[]) != 0
}

/// [`dropout`] as a method, for chains of layer calls.
pub trait ApplyDropout {
    fn apply_dropout(&self, p: f64, train: bool) -> Tensor;
}

impl ApplyDropout for Tensor {
    fn apply_dropout(&self, p: f64, train: bool) -> Tensor {
        dropout(self, p, train)
    }
}
