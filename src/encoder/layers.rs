//! What every family builds its modules and checks its config with: Hugging Face's
//! initialisation (N(0, initializer_range) weights, zero biases, unit norms) and the value
//! checks, so that each family states only its own names, shapes and rules.
use tch::nn;

/// A linear layer initialised as HF does.
pub fn linear(p: nn::Path, std: f64, inp: i64, out: i64, bias: bool) -> nn::Linear {
    let c = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(p, inp, out, c)
}

/// An embedding table initialised as HF does.
pub fn embedding(p: nn::Path, std: f64, n: i64, dim: i64) -> nn::Embedding {
    let c = nn::EmbeddingConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        ..Default::default()
    };
    nn::embedding(p, n, dim, c)
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

    /// Every value a positive finite number.
    pub fn positive(values: &[(&str, f64)]) -> Result<(), String> {
        match values.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
            Some((name, v)) => Err(format!("{name} must be a positive number, found {v}")),
            None => Ok(()),
        }
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
