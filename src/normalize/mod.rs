//! The normalizer slot between the [CLS] vector and the classifier, and the family of methods
//! that fill it (shared/docs/paper.md).
//!
//! Every normalizer keeps its state (running statistics, affine parameters) as variables of the
//! head's `VarStore` under `normalizer.`, so it is saved and restored with every checkpoint and
//! evaluation after a reload gives the same numbers as before it. Statistics are updated in
//! training mode only, without gradient.
//!
//! Adding a normalizer: a file here with the [`Normalizer`] and its [`NormOptions`] (serde
//! struct with defaults), and one `register` line in [`Normalizers::builtin`].
mod batchnorm;
mod center;
mod isobn;
mod l2;
mod layernorm;
mod standardize;
mod whiten;

pub use batchnorm::{BatchNorm, BatchNormOptions};
pub use center::{Center, CenterOptions};
pub use isobn::{IsoBn, IsoBnOptions};
pub use l2::{L2Options, L2};
pub use layernorm::{LayerNorm, LayerNormOptions};
pub use standardize::{Standardize, StandardizeOptions};
pub use whiten::{Whiten, WhitenOptions};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{Error, Result};

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

    /// Checks state read from a checkpoint for values training can never produce (a negative
    /// variance, a covariance that is not positive semi-definite): such a file was edited or
    /// corrupted, and its outputs would be meaningless. Names the offending tensor.
    fn check_state(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// A variance vector that training could have produced: no negative entry.
pub(crate) fn check_variances(name: &str, v: &Tensor) -> std::result::Result<(), String> {
    let min = tch::no_grad(|| v.min().double_value(&[]));
    if min < 0.0 {
        return Err(format!(
            "the saved `{name}` holds a negative variance ({min:e}); a variance is never negative"
        ));
    }
    Ok(())
}

/// A batch count and covariance that training could have produced together: the count a
/// whole number from 0, and after any batch a covariance that is not all zeros (training on
/// [CLS] vectors that differ never gives one; whitening would divide by its epsilon alone).
pub(crate) fn check_tracked(
    name: &str,
    steps: &Tensor,
    cov: &Tensor,
) -> std::result::Result<(), String> {
    tch::no_grad(|| {
        let n = steps.double_value(&[]);
        if !(n.is_finite() && n >= 0.0 && n.fract() == 0.0) {
            return Err(format!(
                "the saved `{name}` is {n}; a count of batches is a whole number from 0"
            ));
        }
        if n > 0.0 && cov.abs().max().double_value(&[]) == 0.0 {
            return Err(format!(
                "the saved covariance is all zeros after {n} batches; training never gives that"
            ));
        }
        Ok(())
    })
}

/// A covariance matrix that training could have produced: symmetric and positive
/// semi-definite up to rounding (its smallest eigenvalue above -1e-4 of its largest).
pub(crate) fn check_covariance(name: &str, c: &Tensor) -> std::result::Result<(), String> {
    tch::no_grad(|| {
        let c = c.to_kind(tch::Kind::Double);
        let asym = (&c - c.tr()).abs().max().double_value(&[]);
        let scale = c.abs().max().double_value(&[]);
        if asym > 1e-5 * scale.max(f64::MIN_POSITIVE) {
            return Err(format!("the saved `{name}` is not symmetric"));
        }
        let ev = c.linalg_eigvalsh("L");
        let (lo, hi) = (ev.min().double_value(&[]), ev.max().double_value(&[]));
        if lo < -1e-4 * hi.abs().max(f64::MIN_POSITIVE) {
            return Err(format!(
                "the saved `{name}` is not positive semi-definite (eigenvalues from {lo:e} to \
                 {hi:e}); a covariance never is"
            ));
        }
        Ok(())
    })
}

/// A normalizer's options: declared once, in the normalizer's own file, as a serde struct
/// whose `Default` holds the defaults. The CLI (`--norm NAME --norm-opt KEY=VALUE`), sweep
/// files (`[[norm]]` tables) and recorded configs all deserialize into it.
pub trait NormOptions:
    Serialize + DeserializeOwned + Default + Clone + std::fmt::Debug + 'static
{
    /// The name `--norm` takes.
    const NAME: &'static str;
    /// One line for `--help` and error messages.
    const ABOUT: &'static str;

    /// Checks option ranges (serde has checked names and types).
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Creates the normalizer's variables under `p` for vectors of size `hidden`.
    fn build(&self, p: &nn::Path, hidden: i64) -> Box<dyn Normalizer>;
}

/// Option values by name, as JSON values.
pub type OptionMap = serde_json::Map<String, serde_json::Value>;

/// A registered normalizer method, whatever its options type.
trait Method: Send + Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// The complete, checked options (defaults filled in) from those given.
    fn resolve(&self, given: &OptionMap) -> std::result::Result<OptionMap, String>;
    fn build(&self, options: &OptionMap, p: &nn::Path, hidden: i64) -> Result<Box<dyn Normalizer>>;
}

struct Registered<O>(std::marker::PhantomData<fn() -> O>);

impl<O: NormOptions> Registered<O> {
    fn parse(options: &OptionMap) -> std::result::Result<O, String> {
        let o: O = serde_json::from_value(serde_json::Value::Object(options.clone()))
            .map_err(|e| format!("--norm {}: {e}", O::NAME))?;
        o.validate()
            .map_err(|e| format!("--norm {}: {e}", O::NAME))?;
        Ok(o)
    }
}

impl<O: NormOptions> Method for Registered<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }

    fn about(&self) -> &'static str {
        O::ABOUT
    }

    fn resolve(&self, given: &OptionMap) -> std::result::Result<OptionMap, String> {
        match serde_json::to_value(Self::parse(given)?) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => Ok(OptionMap::new()),
            Err(e) => Err(format!("--norm {}: {e}", O::NAME)),
        }
    }

    fn build(&self, options: &OptionMap, p: &nn::Path, hidden: i64) -> Result<Box<dyn Normalizer>> {
        Ok(Self::parse(options)
            .map_err(Error::Invalid)?
            .build(p, hidden))
    }
}

/// The normalizers a process knows, by name. [`Normalizers::builtin`] has clsnorm's; code that
/// adds its own registers it on a registry of its own and passes that along.
pub struct Normalizers {
    methods: Vec<Box<dyn Method>>,
}

impl std::fmt::Debug for Normalizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Normalizers {
    /// clsnorm's normalizers (shared/docs/paper.md), in the order `--help` lists them.
    pub fn builtin() -> Self {
        let mut r = Normalizers {
            methods: Vec::new(),
        };
        r.register::<NoneOptions>();
        r.register::<center::CenterOptions>();
        r.register::<standardize::StandardizeOptions>();
        r.register::<batchnorm::BatchNormOptions>();
        r.register::<layernorm::LayerNormOptions>();
        r.register::<isobn::IsoBnOptions>();
        r.register::<whiten::WhitenOptions>();
        r.register::<l2::L2Options>();
        r
    }

    /// Adds a normalizer; one registered under the same name is replaced.
    pub fn register<O: NormOptions>(&mut self) {
        self.methods.retain(|m| m.name() != O::NAME);
        self.methods
            .push(Box::new(Registered::<O>(std::marker::PhantomData)));
    }

    /// The registered names.
    pub fn names(&self) -> Vec<&'static str> {
        self.methods.iter().map(|m| m.name()).collect()
    }

    /// `name: about` lines, for help texts.
    pub fn describe(&self) -> String {
        self.methods
            .iter()
            .map(|m| format!("{}: {}", m.name(), m.about()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn method(&self, name: &str) -> Result<&dyn Method> {
        self.methods
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.as_ref())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown normalizer {}: expected one of {}",
                    crate::excerpt::quoted(name),
                    self.names().join(", ")
                ))
            })
    }

    /// The config of normalizer `name` with the `given` options (names with `-` or `_`);
    /// the others take their defaults. Unknown names, wrong types and out-of-range values are
    /// errors that name the option.
    pub fn config(&self, name: &str, given: &OptionMap) -> Result<NormConfig> {
        let name = name.to_ascii_lowercase();
        let method = self.method(&name)?;
        // Option names are short identifiers; anything else is not echoed back whole.
        for k in given.keys() {
            let ok = !k.is_empty()
                && k.len() <= 64
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(Error::Invalid(format!(
                    "--norm {}: unknown option {} (options are names such as beta or eps)",
                    method.name(),
                    crate::excerpt::quoted(k)
                )));
            }
        }
        let given: OptionMap = given
            .iter()
            .map(|(k, v)| (k.replace('-', "_"), v.clone()))
            .collect();
        Ok(NormConfig {
            name: method.name().to_string(),
            options: method.resolve(&given).map_err(Error::Invalid)?,
        })
    }

    /// The config of normalizer `name` with its default options.
    pub fn defaults(&self, name: &str) -> Result<NormConfig> {
        self.config(name, &OptionMap::new())
    }

    /// Checks a recorded config (a checkpoint's, a run's) as [`Normalizers::config`] does.
    pub fn check(&self, cfg: &NormConfig) -> Result<()> {
        let resolved = self.config(&cfg.name, &cfg.options)?;
        if resolved.options != cfg.options {
            return Err(Error::Invalid(format!(
                "normalizer options {} are not those of --norm {} ({})",
                serde_json::Value::Object(cfg.options.clone()),
                cfg.name,
                serde_json::Value::Object(resolved.options)
            )));
        }
        Ok(())
    }

    /// Creates the normalizer of `cfg` under `p` for vectors of size `hidden`.
    pub fn build(
        &self,
        cfg: &NormConfig,
        p: &nn::Path,
        hidden: i64,
    ) -> Result<Box<dyn Normalizer>> {
        self.method(&cfg.name)?.build(&cfg.options, p, hidden)
    }
}

/// Which normalizer to use and its complete options; recorded in the run config and
/// checkpoints as `{"name": ..., option: value, ...}`. Made by [`Normalizers::config`] (or
/// [`NormConfig::of`]), so its options are always complete and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormConfig {
    pub name: String,
    #[serde(flatten)]
    pub options: OptionMap,
}

impl Default for NormConfig {
    fn default() -> Self {
        NormConfig::of(&NoneOptions {})
    }
}

impl NormConfig {
    /// The config of a normalizer's typed options.
    pub fn of<O: NormOptions>(options: &O) -> Self {
        let options = match serde_json::to_value(options) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => OptionMap::new(),
        };
        NormConfig {
            name: O::NAME.to_string(),
            options,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is `none` (no normalization).
    pub fn is_none(&self) -> bool {
        self.name == NoneOptions::NAME
    }
}

/// `none` has no options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneOptions {}

impl NormOptions for NoneOptions {
    const NAME: &'static str = "none";
    const ABOUT: &'static str = "no normalization (the usual practice)";

    fn build(&self, _p: &nn::Path, _hidden: i64) -> Box<dyn Normalizer> {
        Box::new(Identity)
    }
}

/// Checks that an EMA momentum is in (0, 1].
pub(crate) fn check_momentum(m: f64) -> std::result::Result<(), String> {
    crate::bounds::momentum("momentum", m)
}

/// Checks that an epsilon is positive in f32 and at most 1.
pub(crate) fn check_eps(e: f64) -> std::result::Result<(), String> {
    crate::bounds::epsilon("eps", e)
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
