//! Fine-tuning: the training loop, per-epoch evaluation, best/last checkpoints and exact resume.
pub mod checkpoint;
pub mod grad_trace;
pub mod layer_decay;
pub mod optim;
pub mod schedule;
pub mod trainer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

pub use crate::batch::{epoch_batches, epoch_order, LENGTH_GROUP_BATCHES};
use crate::classifier::HeadConfig;
use crate::data::{Dataset, Label, TaskSpec};
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::tokenize::{Encoded, TextTokenizer};
use optim::AdamWConfig;

/// Optimisation hyper-parameters. Defaults follow the IsoBN protocol (paper.md) except
/// `epochs` (3) and `max_len` (128).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub adam: AdamWConfig,
    /// Fraction of all updates used for linear warmup (ignored when `warmup_steps` is set).
    pub warmup_ratio: f64,
    /// What follows the warmup (linear decay in runs from before this option).
    #[serde(default)]
    pub schedule: schedule::ScheduleKind,
    /// Micro-batches of `batch_size` per update (`--grad-accum`; 1 in runs from before it).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub grad_accum: usize,
    /// Also evaluate every this many updates (`--eval-every`; evaluations end every epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without a better primary metric (`--patience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Layer-wise learning-rate decay (see [`layer_decay`]); none in runs from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_decay: Option<f64>,
    pub warmup_steps: Option<usize>,
    /// Clip the global gradient norm to this value (none by default).
    pub max_grad_norm: Option<f64>,
    pub epochs: usize,
    /// Stop after this many updates (overrides `epochs` when smaller).
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub max_len: usize,
    pub seed: u64,
    /// Also write the `last` checkpoint every this many updates (always at epoch end).
    pub save_every: Option<usize>,
    /// Record gradient norms of every update in `grads.jsonl`.
    #[serde(default)]
    pub trace_grads: bool,
    /// Skip (and count) updates whose loss or gradients are not finite instead of stopping.
    #[serde(default)]
    pub skip_nonfinite: bool,
    /// Batch examples of similar length (see [`epoch_batches`]): less padding, same epochs.
    #[serde(default)]
    pub group_by_length: bool,
    /// How the warmup length is rounded from `warmup_ratio` x updates.
    #[serde(default)]
    pub warmup_rounding: Rounding,
    /// Skip the last, partial batch of every epoch (PyTorch `DataLoader(drop_last=True)`, as
    /// the IsoBN code); off by default, as Hugging Face's Trainer.
    #[serde(default)]
    pub drop_last: bool,
    /// The encoder's precision (fp32 in runs from before this option); weights, gradients and
    /// optimizer state are fp32 whatever it is.
    #[serde(default)]
    pub precision: Precision,
    /// TF32 for fp32 matmuls on CUDA (`--tf32`).
    #[serde(default)]
    pub tf32: bool,
    /// Compute padded batches padding included (`--padded`), not unpadded where the family
    /// can ([`crate::encoder::packing`]).
    #[serde(default)]
    pub padded: bool,
    /// Batches replayed from a file (`--batch-order`) instead of drawn from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_order: Option<BatchOrderFile>,
}

/// A `--batch-order` file, with the sha256 of its bytes: a resumed run replays the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOrderFile {
    pub path: PathBuf,
    pub sha256: String,
}

impl BatchOrderFile {
    /// Records `path` (absolute, with its hash).
    pub fn of(path: &Path) -> Result<Self> {
        let path = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
        let sha256 = crate::fsread::sha256_file(&path, crate::fsread::Links::Follow)?;
        Ok(BatchOrderFile { path, sha256 })
    }

    /// Reads the order, unchanged since it was recorded, and checks it against the run.
    pub fn load(
        &self,
        n: usize,
        batch_size: usize,
        steps_per_epoch: usize,
        epochs: usize,
    ) -> Result<crate::batch::BatchOrder> {
        if crate::fsread::sha256_file(&self.path, crate::fsread::Links::Follow)? != self.sha256 {
            return Err(Error::File {
                path: self.path.clone(),
                msg: "changed since the run started (its sha256 differs); a resumed run must \
                      replay the same batches"
                    .into(),
            });
        }
        let order = crate::batch::BatchOrder::read(&self.path)?;
        order.check(&self.path, n, batch_size, steps_per_epoch, epochs)?;
        Ok(order)
    }
}

/// Rounding of the warmup length: `ceil` as Hugging Face's Trainer (clsnorm's default), `floor`
/// as the IsoBN code's `int(warmup_ratio * total)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    #[default]
    Ceil,
    Floor,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::DEFAULT
    }
}

impl TrainConfig {
    /// The defaults (also those of `clsnorm finetune`'s flags).
    pub const DEFAULT: TrainConfig = TrainConfig {
        lr: 5e-5,
        adam: AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
        },
        warmup_ratio: 0.06,
        schedule: schedule::ScheduleKind::Linear,
        grad_accum: 1,
        eval_every: None,
        patience: None,
        layer_decay: None,
        warmup_steps: None,
        max_grad_norm: None,
        epochs: 3,
        max_steps: None,
        batch_size: 16,
        eval_batch_size: 64,
        max_len: 128,
        seed: 1,
        save_every: None,
        trace_grads: false,
        skip_nonfinite: false,
        group_by_length: false,
        warmup_rounding: Rounding::Ceil,
        drop_last: false,
        precision: Precision::Fp32,
        tf32: false,
        padded: false,
        batch_order: None,
    };

    /// Rejects values that cannot work, before any work starts: every count is bounded and
    /// every real number finite, so that no later arithmetic overflows.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        crate::bounds::f32_range("--lr", self.lr, 1e-30, 1e30).or_else(bad)?;
        for (flag, v) in [
            ("--batch-size", Some(self.batch_size)),
            ("--eval-batch-size", Some(self.eval_batch_size)),
            ("--epochs", Some(self.epochs)),
            ("--max-steps", self.max_steps),
            ("--warmup-steps", self.warmup_steps),
            ("--save-every", self.save_every),
            ("--eval-every", self.eval_every),
            ("--patience", self.patience),
            ("--max-len", Some(self.max_len)),
        ] {
            let (min, max) = match flag {
                "--epochs" | "--warmup-steps" => (0, limits::MAX_EPOCHS_OR_STEPS),
                "--batch-size" | "--eval-batch-size" => (1, limits::MAX_BATCH),
                "--max-len" => (3, limits::MAX_LEN),
                _ => (1, limits::MAX_EPOCHS_OR_STEPS),
            };
            if let Some(v) = v {
                if v < min || v > max {
                    return bad(format!("{flag} must be between {min} and {max}, got {v}"));
                }
            }
        }
        if !(1..=limits::MAX_GRAD_ACCUM).contains(&self.grad_accum) {
            return bad(format!(
                "--grad-accum must be between 1 and {}, got {}",
                limits::MAX_GRAD_ACCUM,
                self.grad_accum
            ));
        }
        if self.grad_accum > 1 && self.trace_grads {
            return bad(
                "--trace-grads records the [CLS] gradients of one batch per update; with \
                 --grad-accum an update has several: use one or the other"
                    .into(),
            );
        }
        if self.grad_accum > 1 && self.batch_order.is_some() {
            return bad(
                "--batch-order replays another pipeline's batches one per update; with \
                 --grad-accum give the large batches with --batch-size instead"
                    .into(),
            );
        }
        if let Some(d) = self.layer_decay {
            if !(d > 0.0 && d <= 1.0) {
                return bad(format!(
                    "--layer-decay must be in (0, 1] (each layer's rate is the one above's \
                     times it; 1 is no decay), got {d}"
                ));
            }
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("--epochs must be at least 1 (or give --max-steps)".into());
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if let Some(c) = self.max_grad_norm {
            crate::bounds::f32_range("--max-grad-norm", c, 1e-30, 1e30).or_else(bad)?;
        }
        crate::bounds::epsilon("--adam-eps", self.adam.eps).or_else(bad)?;
        let betas_ok =
            (0.0..1.0).contains(&self.adam.beta1) && (0.0..1.0).contains(&self.adam.beta2);
        if !betas_ok {
            return bad("Adam betas must be in [0, 1)".into());
        }
        crate::bounds::f32_range("--weight-decay", self.adam.weight_decay, 0.0, 100.0)
            .or_else(bad)?;
        Ok(())
    }

    /// Warmup updates for a run of `total` updates.
    pub fn warmup(&self, total: usize) -> usize {
        self.warmup_steps.unwrap_or_else(|| {
            let w = self.warmup_ratio * total as f64;
            match self.warmup_rounding {
                Rounding::Ceil => w.ceil() as usize,
                Rounding::Floor => w.floor() as usize,
            }
        })
    }

    /// Updates per epoch and in all, for `n` training examples: an update every
    /// `grad_accum` batches, and one for the epoch's last few (as HF's Trainer).
    pub fn steps(&self, n: usize) -> Result<(usize, usize)> {
        let batches = if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        };
        let steps_per_epoch = batches.div_ceil(self.grad_accum.max(1));
        if steps_per_epoch == 0 {
            return Err(Error::Invalid(format!(
                "{n} training examples make no full batch of {} (--drop-last)",
                self.batch_size
            )));
        }
        let all = self.epochs.checked_mul(steps_per_epoch).ok_or_else(|| {
            Error::Invalid(format!(
                "--epochs {} x {steps_per_epoch} updates per epoch is too many updates",
                self.epochs
            ))
        })?;
        let total = match self.max_steps {
            Some(m) if self.epochs == 0 => m,
            Some(m) => m.min(all),
            None => all,
        };
        Ok((steps_per_epoch, total))
    }
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Upper bounds of the numeric options (far beyond any real use; they keep arithmetic on
/// counts from overflowing and allocations from being absurd).
pub mod limits {
    pub const MAX_EPOCHS_OR_STEPS: usize = 1_000_000_000;
    pub const MAX_BATCH: usize = 1 << 16;
    pub const MAX_LEN: usize = 1 << 16;
    pub const MAX_THREADS: usize = 1024;
    pub const MAX_GRAD_ACCUM: usize = 4096;
}

/// Provenance of an input split: its file (the first, of a sharded split), the hash of what
/// was parsed, and its rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub rows: usize,
    pub skipped: usize,
    /// Of a sharded split, the files after the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_files: Vec<PathBuf>,
}

impl FileInfo {
    /// The record of a dataset: its absolute paths (a resume from another working directory
    /// finds them) and the hash of the bytes that were parsed.
    pub fn of(ds: &Dataset) -> Result<Self> {
        let absolute = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
        Ok(FileInfo {
            path: absolute(&ds.path)?,
            sha256: ds.sha256.clone(),
            rows: ds.examples.len(),
            skipped: ds.skipped,
            more_files: ds
                .shards
                .iter()
                .map(|(p, _)| absolute(p))
                .collect::<Result<_>>()?,
        })
    }

    /// Every file of the split, in the order read.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.path.as_path()).chain(self.more_files.iter().map(PathBuf::as_path))
    }

    /// The split's files as a task names them.
    pub fn task_files(&self) -> crate::data::Files {
        crate::data::Files::shards(
            self.files()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        )
    }
}

/// Everything that defines a run; written to `RUN/config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub clsnorm_version: String,
    /// `git describe` of the code that started the run (see `build.rs`); empty in runs made
    /// before it was recorded.
    #[serde(default)]
    pub clsnorm_build: String,
    pub tch_version: String,
    pub libtorch_version: String,
    pub model: PathBuf,
    pub model_weights_sha256: String,
    pub task: TaskSpec,
    pub train_file: FileInfo,
    pub dev_files: Vec<(String, FileInfo)>,
    pub head: HeadConfig,
    pub train: TrainConfig,
    pub device: String,
    pub threads: usize,
    /// The run's id, as its folder's marker holds it (absent in runs made before runs had
    /// ids): `--resume` checks that the two agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Where the model and the data came from when read from the Hub (repo and commit).
    #[serde(default, flatten)]
    pub sources: Sources,
    /// How batches with padding ran (absent in runs made before unpadded execution: padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<crate::encoder::Execution>,
}

/// The Hub repositories a run read, each with the commit it resolved to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    /// The model's repo (`--model ORG/NAME`); absent for a local folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_source: Option<crate::hub::HubSource>,
    /// The data's repo (GLUE from `nyu-mll/glue`); absent for local files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<crate::hub::HubSource>,
}

impl RunConfig {
    /// Reads `config.json` of the run directory `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
        let path = crate::rundir::Layout::new(dir).config();
        let bytes = read_regular(&path, MAX_SMALL_BYTES, Links::Refuse)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::File {
            path,
            msg: format!("not a clsnorm run config: {e}"),
        })
    }
}

/// A split ready for the model.
pub struct Tokenized {
    pub encs: Vec<Encoded>,
    pub labels: Vec<Label>,
}

impl Tokenized {
    /// Tokenizes a labelled dataset once, up front.
    pub fn new(tok: &TextTokenizer, ds: &Dataset) -> Result<Self> {
        let encs = tok.encode_dataset(ds)?;
        let labels = ds
            .examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.label.ok_or_else(|| Error::Data {
                    path: ds.file_of(i).to_path_buf(),
                    line: e.line,
                    msg: "missing label".into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tokenized { encs, labels })
    }

    fn label_tensor(&self, idx: &[usize], device: Device) -> Tensor {
        match self.labels.first() {
            Some(Label::Score(_)) => {
                let v: Vec<f32> = idx
                    .iter()
                    .map(|&i| match self.labels[i] {
                        Label::Score(s) => s,
                        Label::Class(c) => c as f32,
                    })
                    .collect();
                Tensor::from_slice(&v).to_device(device)
            }
            _ => {
                let v: Vec<i64> = idx
                    .iter()
                    .map(|&i| match self.labels[i] {
                        Label::Class(c) => c as i64,
                        Label::Score(s) => s as i64,
                    })
                    .collect();
                Tensor::from_slice(&v).to_device(device)
            }
        }
    }
}

pub use crate::rundir::records::{EpochRecord, GradRecord, LossRecord, Summary};
pub use crate::rundir::LOSS_FILE;

/// `git describe` of the code this binary was built from (`unknown` outside git).
pub const BUILD: &str = env!("CLSNORM_BUILD");

pub use grad_trace::grad_group;
pub use trainer::Trainer;

/// Inputs of a fine-tuning run.
pub struct Finetune<'a> {
    pub model_dir: &'a Path,
    pub task: TaskSpec,
    pub train: Dataset,
    pub dev: Vec<(String, Dataset)>,
    pub head: HeadConfig,
    pub config: TrainConfig,
    pub output: &'a Path,
    pub resume: bool,
    pub device: Device,
    pub threads: usize,
    pub allow_pickle: bool,
    /// Where the model and data came from (recorded in `config.json`).
    pub sources: Sources,
    /// The normalizers and model families the run may use (`head.norm`, the model's
    /// `model_type`).
    pub registry: crate::Registry,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Stop (with a resumable checkpoint) once this many updates are done, as an interruption
    /// would.
    pub stop_after: Option<usize>,
    /// Set (e.g. by a SIGINT/SIGTERM handler) to stop after the current update with a
    /// resumable checkpoint.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

/// Seed for libtorch's generator at update `step`: dropout depends only on (seed, step), so a
/// resumed run draws the same masks as an uninterrupted one without saving RNG state.
fn step_seed(seed: u64, step: usize) -> i64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Runs (or resumes) fine-tuning and returns the summary; everything lands in `output`.
pub fn finetune(job: Finetune) -> Result<Summary> {
    let mut t = Trainer::start(job)?;
    while !t.done() {
        let batches = t.begin_epoch();
        let per_update = t.grad_accum();
        while t.state.batch < batches.len() && !t.done() {
            let end = (t.state.batch + per_update).min(batches.len());
            t.step(&batches[t.state.batch..end], batches.len())?;
            if t.eval_due(batches.len()) {
                t.evaluate_mid_epoch()?;
                if t.stopped_early() {
                    return t.finish(false);
                }
            }
            let stop = t.stop_requested();
            if (stop || t.save_due()) && t.state.batch < batches.len() {
                t.save_mid_epoch()?;
                if stop {
                    return t.finish(true);
                }
            }
        }
        t.end_epoch()?;
        if t.stop_requested() && !t.done() {
            return t.finish(true);
        }
    }
    t.finish(false)
}

/// sha256 of the weights file of a model directory, without reading its tensors.
fn model_weights_sha(dir: &Path, allow_pickle: bool) -> Result<String> {
    checkpoint::sha256_file(&crate::encoder::weights::weights_file(dir, allow_pickle)?)
}

pub(crate) fn progress_bar(show: bool, len: u64, pos: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_position(pos);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rounding_and_drop_last_reproduce_both_protocols() {
        // RTE: 2,490 examples, batch 16, 3 epochs, warmup 6%.
        let hf = TrainConfig::default();
        let (per_epoch, total) = hf.steps(2490).unwrap();
        assert_eq!((per_epoch, total, hf.warmup(total)), (156, 468, 29));
        let isobn = TrainConfig {
            drop_last: true,
            warmup_rounding: Rounding::Floor,
            ..TrainConfig::default()
        };
        let (per_epoch, total) = isobn.steps(2490).unwrap();
        assert_eq!((per_epoch, total, isobn.warmup(total)), (155, 465, 27));
        // --warmup-steps wins over the ratio either way.
        let fixed = TrainConfig {
            warmup_steps: Some(5),
            ..isobn.clone()
        };
        assert_eq!(fixed.warmup(465), 5);
        // Fewer examples than a batch: no full batch to train on.
        assert!(isobn.steps(15).is_err());
        assert_eq!(hf.steps(15).unwrap(), (1, 3));
    }
}
