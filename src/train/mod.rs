//! Fine-tuning: the training loop, per-epoch evaluation, best/last checkpoints and exact resume.
pub mod checkpoint;
pub mod optim;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::atomic;
use crate::batch::Batch;
use crate::classifier::{label_prior, BiasInit, Classifier, HeadConfig};
use crate::data::{Dataset, Label, TaskSpec};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::eval;
use crate::rundir::records;
use crate::tokenize::{Encoded, TextTokenizer, TokenizerFiles};
use checkpoint::{CheckpointMeta, TrainState};
use optim::{AdamW, AdamWConfig};
use schedule::LinearSchedule;

/// Optimisation hyper-parameters. Defaults follow the IsoBN protocol (paper.md) except
/// `epochs` (3) and `max_len` (128).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lr: f64,
    pub adam: AdamWConfig,
    /// Fraction of all updates used for linear warmup (ignored when `warmup_steps` is set).
    pub warmup_ratio: f64,
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
        TrainConfig {
            lr: 5e-5,
            adam: AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-6,
                weight_decay: 0.0,
            },
            warmup_ratio: 0.06,
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
        }
    }
}

impl TrainConfig {
    /// Rejects values that cannot work, before any work starts: every count is bounded and
    /// every real number finite, so that no later arithmetic overflows.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        for (flag, v) in [
            ("--batch-size", Some(self.batch_size)),
            ("--eval-batch-size", Some(self.eval_batch_size)),
            ("--epochs", Some(self.epochs)),
            ("--max-steps", self.max_steps),
            ("--warmup-steps", self.warmup_steps),
            ("--save-every", self.save_every),
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
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("--epochs must be at least 1 (or give --max-steps)".into());
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "--warmup-ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        if self
            .max_grad_norm
            .is_some_and(|c| !(c > 0.0 && c.is_finite()))
        {
            return bad("--max-grad-norm must be a positive number".into());
        }
        let adam_ok = self.adam.eps > 0.0
            && self.adam.eps.is_finite()
            && (0.0..1.0).contains(&self.adam.beta1)
            && (0.0..1.0).contains(&self.adam.beta2);
        if !adam_ok {
            return bad("Adam eps must be a positive number and betas in [0, 1)".into());
        }
        if !(self.adam.weight_decay >= 0.0 && self.adam.weight_decay.is_finite()) {
            return bad(format!(
                "--weight-decay must be a non-negative number, got {}",
                self.adam.weight_decay
            ));
        }
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

    /// Updates per epoch and in all, for `n` training examples.
    pub fn steps(&self, n: usize) -> Result<(usize, usize)> {
        let steps_per_epoch = if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        };
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

/// Upper bounds of the numeric options (far beyond any real use; they keep arithmetic on
/// counts from overflowing and allocations from being absurd).
pub mod limits {
    pub const MAX_EPOCHS_OR_STEPS: usize = 1_000_000_000;
    pub const MAX_BATCH: usize = 1 << 16;
    pub const MAX_LEN: usize = 1 << 16;
    pub const MAX_THREADS: usize = 1024;
}

/// Provenance of an input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub rows: usize,
    pub skipped: usize,
}

impl FileInfo {
    /// The record of a dataset: its absolute path (a resume from another working directory
    /// finds it) and the hash of the bytes that were parsed.
    pub fn of(ds: &Dataset) -> Result<Self> {
        Ok(FileInfo {
            path: std::path::absolute(&ds.path).map_err(|e| Error::io(&ds.path, e))?,
            sha256: ds.sha256.clone(),
            rows: ds.examples.len(),
            skipped: ds.skipped,
        })
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
}

/// A split ready for the model.
pub struct Tokenized {
    pub encs: Vec<Encoded>,
    pub labels: Vec<Label>,
}

impl Tokenized {
    /// Tokenizes a labelled dataset once, up front.
    pub fn new(tok: &TextTokenizer, ds: &Dataset) -> Result<Self> {
        let inputs = ds.inputs();
        let encs = tok.encode_batch(&inputs)?;
        let labels = ds
            .examples
            .iter()
            .map(|e| {
                e.label.ok_or_else(|| Error::Data {
                    path: ds.path.clone(),
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

/// The gradient group of a parameter name.
pub fn grad_group(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("encoder.layer.") {
        let layer = rest.split('.').next().unwrap_or("?");
        format!("layer.{layer:0>2}")
    } else {
        name.split('.').next().unwrap_or(name).to_string()
    }
}

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
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Stop (with a resumable checkpoint) once this many updates are done, as an interruption
    /// would.
    pub stop_after: Option<usize>,
    /// Set (e.g. by a SIGINT/SIGTERM handler) to stop after the current update with a
    /// resumable checkpoint.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl Finetune<'_> {
    /// Whether to stop (with a resumable checkpoint) after update `step`: `stop_after`
    /// reached, or a stop requested through `stop`.
    fn should_stop(&self, step: usize) -> bool {
        self.stop_after.is_some_and(|k| step >= k)
            || self
                .stop
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Seed for libtorch's generator at update `step`: dropout depends only on (seed, step), so a
/// resumed run draws the same masks as an uninterrupted one without saving RNG state.
fn step_seed(seed: u64, step: usize) -> i64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The example order of `epoch`: a pure function of (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Shuffled examples per mega-batch when grouping by length, in batches (HF's
/// `LengthGroupedSampler` uses the same factor).
pub const LENGTH_GROUP_BATCHES: usize = 50;

/// The batches of `epoch`, a pure function of (lengths, batch size, seed, epoch).
///
/// Without grouping: consecutive slices of [`epoch_order`]. With grouping: that shuffled order is
/// cut into mega-batches of [`LENGTH_GROUP_BATCHES`] batches, each sorted by length (longest
/// first) and sliced into batches, and then the batches are shuffled; every example is still
/// seen once per epoch in a random neighbourhood, but a batch pads to a similar length.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let order = epoch_order(lengths.len(), seed, epoch);
    if !group_by_length {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for mega in order.chunks(batch_size * LENGTH_GROUP_BATCHES) {
        let mut mega = mega.to_vec();
        mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(mega.chunks(batch_size).map(<[usize]>::to_vec));
    }
    // A stream of its own, so the example order above stays that of the ungrouped epoch.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((1 << 32) | epoch as u64);
    batches.shuffle(&mut rng);
    batches
}

fn dev_metrics(
    model: &Classifier,
    task: &TaskSpec,
    dev: &[(String, Tokenized)],
    cfg: &TrainConfig,
    pad: i64,
) -> Result<Vec<(String, std::collections::BTreeMap<String, f64>)>> {
    let mut metrics = task.metrics.clone();
    if !metrics.contains(&task.primary) {
        metrics.push(task.primary);
    }
    dev.iter()
        .map(|(name, t)| {
            Ok((
                name.clone(),
                eval::evaluate(
                    model,
                    &t.encs,
                    &t.labels,
                    &metrics,
                    cfg.eval_batch_size,
                    pad,
                )?,
            ))
        })
        .collect()
}

/// Runs (or resumes) fine-tuning and returns the summary; everything lands in `output`.
pub fn finetune(job: Finetune) -> Result<Summary> {
    let cfg = &job.config;
    cfg.validate()?;
    let out = job.output;
    let layout = crate::rundir::Layout::new(out);
    let run_config_path = layout.config();
    let (last_dir, best_dir) = (layout.last(), layout.best());
    let (metrics_path, grads_path, loss_path) = (layout.metrics(), layout.grads(), layout.loss());
    // Before anything else: the directory is this process's to write, and locked.
    let mut run_dir = crate::rundir::RunDir::open(out, job.resume)?;
    let recorded: Option<RunConfig> = if job.resume {
        let bytes = crate::fsread::read_regular(
            &run_config_path,
            crate::fsread::MAX_SMALL_BYTES,
            crate::fsread::Links::Refuse,
        )?;
        Some(serde_json::from_slice(&bytes).map_err(|e| Error::File {
            path: run_config_path.clone(),
            msg: format!("not a clsnorm run config: {e}"),
        })?)
    } else {
        None
    };

    if let Some(rc) = &recorded {
        // The data must be what the run started on: same bytes, same rows.
        let now = std::iter::once(("train", &job.train))
            .chain(job.dev.iter().map(|(n, d)| (n.as_str(), d)));
        let then = std::iter::once(&rc.train_file).chain(rc.dev_files.iter().map(|(_, i)| i));
        if job.dev.len() != rc.dev_files.len() {
            return Err(Error::Invalid(format!(
                "--resume: the run has {} dev file(s), {} given",
                rc.dev_files.len(),
                job.dev.len()
            )));
        }
        for ((what, ds), info) in now.zip(then) {
            if ds.sha256 != info.sha256 || ds.examples.len() != info.rows {
                return Err(Error::Invalid(format!(
                    "--resume: the {what} file {} changed since the run started (its bytes or \
                     usable rows differ from those recorded in {})",
                    ds.path.display(),
                    run_config_path.display()
                )));
            }
        }
    }

    // Model, tokenizer, optimizer, state: fresh from the model directory, or all from the last
    // checkpoint (the model directory may have changed or moved since the run started).
    let resume_from = if job.resume {
        checkpoint::locate(&last_dir)
    } else {
        None
    };
    let (model, tok_files, state, opt_state) = match &resume_from {
        Some(dir) => {
            let (model, meta) = checkpoint::load_model(dir, job.device)?;
            if meta.head != job.head || meta.task.labels != job.task.labels {
                return Err(Error::File {
                    path: dir.join(checkpoint::META_FILE),
                    msg: format!(
                        "the checkpoint's head or labels differ from the run's {}",
                        run_config_path.display()
                    ),
                });
            }
            if meta.state.best_epoch.is_some() && !checkpoint::is_complete(&best_dir) {
                return Err(Error::Invalid(format!(
                    "{}: the best checkpoint (epoch {}) is missing or incomplete, so the run \
                     cannot report its best epoch; restore it, or start a new run",
                    best_dir.display(),
                    meta.state.best_epoch.unwrap_or_default()
                )));
            }
            let opt =
                crate::encoder::weights::read_safetensors(&dir.join(checkpoint::OPTIMIZER_FILE))?;
            tracing::info!(
                epoch = meta.state.epoch + 1,
                batch = meta.state.batch,
                step = meta.state.global_step,
                "resuming from {}",
                dir.display()
            );
            (model, TokenizerFiles::read(dir)?, meta.state, Some(opt))
        }
        None => {
            if job.resume {
                tracing::warn!(
                    "no complete checkpoint in {}: starting from scratch",
                    last_dir.display()
                );
            }
            tch::manual_seed(cfg.seed as i64);
            if let Some(rc) = &recorded {
                if rc.model_weights_sha256 != model_weights_sha(job.model_dir, job.allow_pickle)? {
                    return Err(Error::Invalid(format!(
                        "--resume: the weights in {} changed since the run started, and the run \
                         has no checkpoint yet to continue from; start a new run",
                        job.model_dir.display()
                    )));
                }
            }
            let encoder = Encoder::load(job.model_dir, job.device, job.allow_pickle)?;
            let model = Classifier::new(encoder, job.head.clone(), cfg.seed as i64);
            if job.head.bias_init == BiasInit::Prior {
                model.set_output_bias(&label_prior(&job.head.labels, &job.train)?)?;
            }
            (
                model,
                TokenizerFiles::read(job.model_dir)?,
                TrainState::default(),
                None,
            )
        }
    };
    let tok = TextTokenizer::from_files(&tok_files, cfg.max_len)?;
    let limits = model.encoder.limits();
    limits.check_tokenizer(&tok, job.task.text_pair.is_some())?;
    let t0 = Instant::now();
    let train = Tokenized::new(&tok, &job.train)?;
    let dev: Vec<(String, Tokenized)> = job
        .dev
        .iter()
        .map(|(n, d)| Ok((n.clone(), Tokenized::new(&tok, d)?)))
        .collect::<Result<_>>()?;
    tracing::info!(
        train = train.encs.len(),
        dev = dev.iter().map(|d| d.1.encs.len()).sum::<usize>(),
        secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
        "tokenized"
    );
    if resume_from.is_none() && model.normalizer().needs_fit() {
        // The cache of a run that started (config.json written) is reused; one left by a
        // start that never got that far is fitted again.
        let cache = layout.normalizer_cache();
        let reuse = job.resume && cache.is_file();
        fit_normalizer(&model, &train, cfg, tok.pad_id(), &cache, reuse)?;
        if !reuse {
            run_dir.created(cache);
        }
    }
    let mut state = state;
    if state.builds.last().map(String::as_str) != Some(BUILD) {
        if state.global_step > 0 {
            // Same run, other code: the rest of its numbers come from this build.
            tracing::warn!(
                "run trained so far by build(s) {:?}, continuing with build {BUILD}",
                state.builds
            );
            if state.builds.is_empty() {
                state.builds.push("unrecorded".into());
            }
        }
        state.builds.push(BUILD.into());
    }

    if recorded.is_none() {
        let run_config = RunConfig {
            clsnorm_version: env!("CARGO_PKG_VERSION").into(),
            clsnorm_build: BUILD.into(),
            // Of the build, not hard-coded: a GPU build may link another libtorch.
            tch_version: env!("CLSNORM_TCH_VERSION").into(),
            libtorch_version: env!("CLSNORM_LIBTORCH_VERSION").into(),
            // Absolute, so that a resume from another working directory finds it.
            model: std::path::absolute(job.model_dir).map_err(|e| Error::io(job.model_dir, e))?,
            model_weights_sha256: model_weights_sha(job.model_dir, job.allow_pickle)?,
            task: job.task.clone(),
            train_file: FileInfo::of(&job.train)?,
            dev_files: job
                .dev
                .iter()
                .map(|(n, d)| Ok((n.clone(), FileInfo::of(d)?)))
                .collect::<Result<_>>()?,
            head: job.head.clone(),
            train: cfg.clone(),
            device: format!("{:?}", job.device),
            threads: job.threads,
        };
        atomic::write_json(&run_config_path, &run_config)?;
        run_dir.commit();
        let _ = std::fs::remove_file(&metrics_path);
    }
    // Records written after the checkpoint are dropped: the resumed run writes them again.
    let mut records = records::retain(&metrics_path, |r: &EpochRecord| r.epoch <= state.epoch)?;
    records::retain(&loss_path, |r: &LossRecord| r.step <= state.global_step)?;
    if cfg.trace_grads {
        records::retain(&grads_path, |r: &GradRecord| r.step <= state.global_step)?;
    }
    let mut opt = AdamW::new(cfg.adam, model.trainable());
    if let Some(t) = &opt_state {
        opt.load_state(t, state.global_step as i64)?;
    }

    let n = train.encs.len();
    let lengths: Vec<usize> = train.encs.iter().map(Encoded::len).collect();
    let (steps_per_epoch, total_steps) = cfg.steps(n)?;
    let epochs = total_steps.div_ceil(steps_per_epoch);
    let warmup = cfg.warmup(total_steps);
    let sched = LinearSchedule {
        lr: cfg.lr,
        warmup_steps: warmup,
        total_steps,
    };
    tracing::info!(
        examples = n,
        steps_per_epoch,
        total_steps,
        warmup,
        epochs,
        "training {}",
        job.task.name
    );

    let pad = tok.pad_id();
    let meta_for = |state: &TrainState| CheckpointMeta {
        clsnorm_version: env!("CARGO_PKG_VERSION").into(),
        task: job.task.clone(),
        head: model.config.clone(),
        max_len: cfg.max_len,
        state: state.clone(),
    };
    let bar = progress_bar(job.progress, total_steps as u64, state.global_step as u64);
    let run_start = Instant::now();
    let elapsed_before = state.elapsed_secs;
    let mut best_dev = Vec::new();
    let mut final_dev = Vec::new();
    let mut interrupted = false;

    while state.global_step < total_steps && state.epoch < epochs {
        let mut batches = epoch_batches(
            &lengths,
            cfg.batch_size,
            cfg.seed,
            state.epoch,
            cfg.group_by_length,
        );
        if cfg.drop_last {
            // Wherever grouping put it, the one partial batch is the one dropped.
            batches.retain(|b| b.len() == cfg.batch_size);
        }
        let mut loss_acc = Tensor::from(state.loss_pending).to_device(job.device);
        let mut window_updates = state.pending_updates;
        state.loss_pending = 0.0;
        state.pending_updates = 0;
        let mut window = (Instant::now(), 0usize);
        while state.batch < batches.len() && state.global_step < total_steps {
            let step_start = Instant::now();
            let idx = &batches[state.batch];
            let refs: Vec<&Encoded> = idx.iter().map(|&i| &train.encs[i]).collect();
            let batch = Batch::collate(&refs, pad, &limits, job.device)?;
            let labels = train.label_tensor(idx, job.device);
            tch::manual_seed(step_seed(cfg.seed, state.global_step));
            let out = model.forward(&batch, true);
            let loss = model.loss(&out.logits, &labels);
            let extra: &[&Tensor] = if cfg.trace_grads {
                &[&out.cls, &out.normalized]
            } else {
                &[]
            };
            let traced = opt.backward(&loss, extra);
            // One global gradient norm per update serves the trace, the finiteness check and
            // clipping.
            let grad_norm = opt.grad_norm();
            if let [cls_grad, normalized_grad] = traced.as_slice() {
                let per_dim = cls_grad
                    .to_kind(Kind::Double)
                    .square()
                    .sum_dim_intlist(0, false, Kind::Double)
                    .sqrt();
                let (max_dim_grad, max_dim) = (
                    per_dim.max().double_value(&[]),
                    per_dim.argmax(0, false).int64_value(&[]) as usize,
                );
                let rec = GradRecord {
                    step: state.global_step + 1,
                    loss: loss.double_value(&[]),
                    cls_grad_norm: cls_grad.to_kind(Kind::Double).norm().double_value(&[]),
                    normalized_grad_norm: normalized_grad
                        .to_kind(Kind::Double)
                        .norm()
                        .double_value(&[]),
                    max_dim_grad,
                    max_dim,
                    global_grad_norm: grad_norm.double_value(&[]),
                    groups: opt.grad_norms_by(grad_group)?,
                };
                records::append(&grads_path, &rec)?;
            }
            let lr = sched.lr_at(state.global_step);
            let finite = loss
                .isfinite()
                .logical_and(&grad_norm.isfinite())
                .int64_value(&[])
                != 0;
            if finite {
                if let Some(c) = cfg.max_grad_norm {
                    opt.clip_to(&grad_norm, c);
                }
                opt.step(lr);
                loss_acc += loss.detach();
                window_updates += 1;
                state.loss_count += 1;
            } else if cfg.skip_nonfinite {
                state.nonfinite_skipped += 1;
                bar.suspend(|| {
                    tracing::warn!(
                        "update {}: non-finite loss or gradient ({}); update skipped ({} so far)",
                        state.global_step + 1,
                        loss.double_value(&[]),
                        state.nonfinite_skipped
                    )
                });
            } else {
                // Nothing of this state is saved: the last checkpoint stays the last good one.
                return Err(Error::Invalid(format!(
                    "update {}: the loss or a gradient is not finite (loss {}); stopped without saving this state, the last good checkpoint is in {}. Lower --lr, set --max-grad-norm, or pass --skip-nonfinite to skip such updates",
                    state.global_step + 1,
                    loss.double_value(&[]),
                    last_dir.display()
                )));
            }
            state.global_step += 1;
            state.batch += 1;
            state.epoch_tokens += batch.n_tokens;
            window.1 += batch.n_tokens;
            state.epoch_train_secs += step_start.elapsed().as_secs_f64();
            if state.global_step.is_multiple_of(10) || state.batch == batches.len() {
                let window_sum = loss_acc.double_value(&[]);
                state.loss_sum += window_sum;
                if window_updates > 0 {
                    records::append(
                        &loss_path,
                        &LossRecord {
                            step: state.global_step,
                            epoch: state.epoch + 1,
                            loss: window_sum / window_updates as f64,
                            updates: window_updates,
                            lr,
                        },
                    )?;
                }
                window_updates = 0;
                loss_acc = Tensor::zeros([], (Kind::Float, job.device));
                let tps = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), 0);
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {:.0} tok/s",
                    state.loss_sum / state.loss_count as f64,
                    lr,
                    tps
                ));
            }
            bar.set_position(state.global_step as u64);
            let stop = job.should_stop(state.global_step);
            if (stop
                || cfg
                    .save_every
                    .is_some_and(|k| state.global_step.is_multiple_of(k)))
                && state.batch < batches.len()
            {
                state.loss_pending = loss_acc.double_value(&[]) as f32;
                state.pending_updates = window_updates;
                state.elapsed_secs = elapsed_before + run_start.elapsed().as_secs_f64();
                checkpoint::save(
                    &last_dir,
                    &model,
                    &meta_for(&state),
                    Some(&opt.state()),
                    &tok_files,
                )?;
                state.loss_pending = 0.0;
                state.pending_updates = 0;
                if stop {
                    interrupted = true;
                    break;
                }
            }
        }
        if interrupted {
            break;
        }
        state.loss_sum += loss_acc.double_value(&[]);

        // End of epoch: evaluate, record, checkpoint.
        let eval_start = Instant::now();
        let dev_m = dev_metrics(&model, &job.task, &dev, cfg, pad)?;
        let primary = dev_m
            .first()
            .and_then(|(_, m)| m.get(job.task.primary.name()).copied())
            .unwrap_or(f64::NAN);
        let record = EpochRecord {
            epoch: state.epoch + 1,
            global_step: state.global_step,
            train_loss: state.loss_sum / state.loss_count.max(1) as f64,
            dev: dev_m.clone(),
            primary,
            lr: sched.lr_at(state.global_step.saturating_sub(1)),
            train_secs: state.epoch_train_secs,
            eval_secs: eval_start.elapsed().as_secs_f64(),
            train_tokens_per_sec: state.epoch_tokens as f64 / state.epoch_train_secs.max(1e-9),
        };
        bar.suspend(|| {
            tracing::info!(
                "epoch {} step {}: train loss {:.4}, dev {} {:.4} ({:.0} tok/s)",
                record.epoch,
                record.global_step,
                record.train_loss,
                job.task.primary.name(),
                primary,
                record.train_tokens_per_sec
            )
        });
        let improved = state.best_metric.is_none_or(|b| primary > b);
        let finished_epoch = state.epoch + 1;
        state.epoch += 1;
        state.batch = 0;
        state.loss_sum = 0.0;
        state.loss_count = 0;
        state.epoch_tokens = 0;
        state.epoch_train_secs = 0.0;
        // The epoch's record goes first: if the process dies before the `last` checkpoint
        // below, a resumed run drops the record (its epoch is not in the checkpoint) and
        // writes it again; written after, it could be lost for good.
        records::append(&metrics_path, &record)?;
        if improved {
            state.best_metric = Some(primary);
            state.best_epoch = Some(finished_epoch);
            state.elapsed_secs = elapsed_before + run_start.elapsed().as_secs_f64();
            checkpoint::save(&best_dir, &model, &meta_for(&state), None, &tok_files)?;
        }
        state.elapsed_secs = elapsed_before + run_start.elapsed().as_secs_f64();
        checkpoint::save(
            &last_dir,
            &model,
            &meta_for(&state),
            Some(&opt.state()),
            &tok_files,
        )?;
        records.push(record);
        let stop = job.should_stop(state.global_step);
        if stop && state.global_step < total_steps {
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();

    for r in &records {
        if Some(r.epoch) == state.best_epoch {
            best_dev = r.dev.clone();
        }
        final_dev = r.dev.clone();
    }
    let summary = Summary {
        task: job.task.name.clone(),
        primary_metric: job.task.primary.name().into(),
        best_epoch: state.best_epoch,
        best_primary: state.best_metric,
        best_dev,
        final_dev,
        epochs: state.epoch,
        global_steps: state.global_step,
        wall_secs: elapsed_before + run_start.elapsed().as_secs_f64(),
        interrupted,
        nonfinite_skipped: state.nonfinite_skipped,
        builds: state.builds.clone(),
    };
    atomic::write_json(&layout.summary(), &summary)?;
    Ok(summary)
}

/// sha256 of the weights file of a model directory, without reading its tensors.
fn model_weights_sha(dir: &Path, allow_pickle: bool) -> Result<String> {
    use crate::encoder::weights::{PICKLE_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
    let found = [SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE]
        .into_iter()
        .chain(allow_pickle.then_some(PICKLE_FILE))
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    match found {
        Some(p) => checkpoint::sha256_file(&p),
        // Let the weights reader say what is missing.
        None => crate::encoder::weights::read_model_dir(dir, allow_pickle)
            .and_then(|c| checkpoint::sha256_file(&c.path)),
    }
}

/// Fits frozen normalizer statistics on the pre-trained model's training-set vectors, and
/// caches them (the fitted `normalizer.*` tensors) in the run directory.
fn fit_normalizer(
    model: &Classifier,
    train: &Tokenized,
    cfg: &TrainConfig,
    pad: i64,
    cache: &Path,
    reuse: bool,
) -> Result<()> {
    use crate::encoder::weights;
    if reuse {
        let ckpt = weights::Checkpoint {
            path: cache.to_path_buf(),
            tensors: weights::read_safetensors(cache)?,
        };
        let vars = model.head_vs.variables();
        return tch::no_grad(|| -> Result<()> {
            for (name, t) in &ckpt.tensors {
                let dst = vars.get(name).ok_or_else(|| {
                    Error::Invalid(format!("{}: unexpected {name}", cache.display()))
                })?;
                dst.shallow_clone().f_copy_(t)?;
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let cls = model.cls_vectors(&train.encs, cfg.eval_batch_size, pad)?;
    model.normalizer().fit(&cls)?;
    let tensors: Vec<(String, Tensor)> = weights::named_variables(&model.head_vs)
        .into_iter()
        .filter(|(n, _)| n.starts_with("normalizer."))
        .collect();
    weights::write_safetensors(cache, &tensors)?;
    tracing::info!(
        secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
        "fitted normalizer statistics on {} training vectors",
        train.encs.len()
    );
    Ok(())
}

fn progress_bar(show: bool, len: u64, pos: u64) -> indicatif::ProgressBar {
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
