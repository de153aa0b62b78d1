//! The stages of a fine-tuning run, which [`super::finetune`] strings together: [`Trainer::start`]
//! (run directory, data, model, resume), [`Trainer::step`] (one update),
//! [`Trainer::end_epoch`] (evaluate, record, checkpoint) and [`Trainer::finish`] (summary).
use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::checkpoint::{self, CheckpointMeta, TrainState};
use super::optim::AdamW;
use super::schedule::Schedule;
use super::{
    epoch_batches, grad_trace, step_seed, FileInfo, Finetune, RunConfig, Tokenized, BUILD,
};
use crate::atomic;
use crate::batch::{Batch, BatchOrder, InputLimits};
use crate::classifier::{label_prior, BiasInit, Classifier};
use crate::encoder::{Encoder, Execution};
use crate::error::{Error, Result};
use crate::eval;
use crate::precision::{GradScaler, Precision};
use crate::rundir::records::{
    self, ClsGeometry, EpochRecord, GradRecord, LossRecord, PhaseSecs, Summary,
};
use crate::rundir::tensorboard::EventWriter;
use crate::rundir::{Layout, RunDir};
use crate::tokenize::{Encoded, TextTokenizer, TokenizerFiles};

/// Dev metrics by split name.
type DevMetrics = Vec<(String, std::collections::BTreeMap<String, f64>)>;

/// A run in progress: what [`Trainer::start`] set up, and where training stands.
pub struct Trainer<'a> {
    job: Finetune<'a>,
    layout: Layout,
    /// Holds the run directory's lock until the trainer is dropped.
    _run_dir: RunDir,
    model: Classifier,
    tok_files: TokenizerFiles,
    pad: i64,
    limits: InputLimits,
    train: Tokenized,
    lengths: Vec<usize>,
    /// Batches replayed from `--batch-order`, instead of drawn.
    order: Option<BatchOrder>,
    dev: Vec<(String, Tokenized)>,
    opt: AdamW,
    sched: Schedule,
    steps_per_epoch: usize,
    epochs: usize,
    /// Position, running sums and best epoch: what a checkpoint saves.
    pub state: TrainState,
    /// The epoch records so far (those of earlier sessions of a resumed run included).
    records: Vec<EpochRecord>,
    /// Losses of the current logging window, summed on the device, and its updates.
    window_loss: Tensor,
    window_updates: usize,
    /// Start and non-pad tokens of the current throughput window.
    window_clock: (Instant, usize),
    started: Instant,
    elapsed_before: f64,
    bar: indicatif::ProgressBar,
    /// The run's TensorBoard curves: opened at the first value (after the run's folder holds
    /// its config), closed for good if writing fails (the records stay the run's truth).
    tensorboard: Board,
}

/// The state of a run's TensorBoard event file.
enum Board {
    NotYet,
    Open(EventWriter),
    Off,
}

impl Board {
    /// Writes `values` at update `step`; a failure is a warning, and the curves stop.
    fn scalars(&mut self, dir: &Path, step: usize, values: &[(String, f64)]) {
        if let Board::NotYet = self {
            *self = match EventWriter::create(dir) {
                Ok(w) => Board::Open(w),
                Err(e) => {
                    tracing::warn!("no TensorBoard curves for this run: {e}");
                    Board::Off
                }
            };
        }
        if let Board::Open(w) = self {
            if let Err(e) = w.scalars(step, values) {
                tracing::warn!("TensorBoard curves stopped: {e}");
                *self = Board::Off;
            }
        }
    }
}

/// The numbers of a JSON value (an object of numbers, nested), as `PREFIX/KEY` pairs.
/// Times the phases of one update: each `lap` adds the time since the previous one to a
/// phase.
struct PhaseClock {
    last: Instant,
    secs: PhaseSecs,
}

impl PhaseClock {
    fn new() -> Self {
        PhaseClock {
            last: Instant::now(),
            secs: PhaseSecs::default(),
        }
    }

    fn lap(&mut self, phase: impl FnOnce(&mut PhaseSecs) -> &mut f64) {
        let now = Instant::now();
        *phase(&mut self.secs) += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

fn numbers(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_string(), x));
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                numbers(&format!("{prefix}/{k}"), v, out);
            }
        }
        _ => {}
    }
}

/// Fits a normalizer's frozen statistics on the training set, once per run: the cache of a run
/// that started (config.json written) is reused; one left by a start that never got that far
/// is fitted again.
fn fit_if_needed(
    job: &Finetune<'_>,
    model: &Classifier,
    train: &Tokenized,
    pad: i64,
    layout: &Layout,
    run_dir: &mut RunDir,
) -> Result<()> {
    if !model.normalizer().needs_fit() {
        return Ok(());
    }
    let cache = layout.normalizer_cache();
    let reuse = job.resume && cache.is_file();
    fit_normalizer(model, train, job.config.eval_batch_size, pad, &cache, reuse)?;
    if !reuse {
        run_dir.created(cache);
    }
    Ok(())
}

/// AdamW over the trainable parameters, with layer-wise rates if asked, and a resumed run's
/// moments.
fn optimizer(
    cfg: &super::TrainConfig,
    model: &Classifier,
    saved: Option<&[(String, Tensor)]>,
    step: usize,
) -> Result<AdamW> {
    let mut opt = AdamW::new(cfg.adam, model.trainable());
    if let Some(d) = cfg.layer_decay {
        let scales = super::layer_decay::scales(opt.names(), d);
        opt.set_lr_scales(&scales);
    }
    if let Some(t) = saved {
        opt.load_state(t, step as i64)?;
    }
    Ok(opt)
}

impl<'a> Trainer<'a> {
    /// Locks the run directory, checks a resumed run's data, loads or builds the model,
    /// tokenizes, fits frozen normalizer statistics, writes `config.json` of a new run and
    /// drops the records a resumed run will write again.
    pub fn start(job: Finetune<'a>) -> Result<Self> {
        let cfg = job.config.clone();
        cfg.validate()?;
        let layout = Layout::new(job.output);
        // Before anything else: the directory is this process's to write, and locked.
        let mut run_dir = RunDir::open(job.output, job.resume)?;
        let recorded = if job.resume {
            let rc = RunConfig::read(job.output)?;
            check_same_data(&job, &rc, &layout.config())?;
            Some(rc)
        } else {
            None
        };
        let Loaded {
            mut model,
            tok_files,
            mut state,
            opt_state,
            resumed,
        } = load(&job, &layout, recorded.as_ref())?;
        let execution = set_precision(&mut model, &mut state, &cfg, job.device)?;
        let tok = TextTokenizer::from_files(&tok_files, cfg.max_len)?;
        let limits = model.encoder.limits();
        limits.check_tokenizer(&tok, job.task.text_pair.is_some())?;
        let (train, dev) = tokenize(&job, &tok)?;
        // Before the run's config is written: a plan that cannot work leaves no run behind.
        let Plan {
            steps_per_epoch,
            epochs,
            order,
            sched,
        } = plan(&cfg, train.encs.len())?;
        if !resumed {
            fit_if_needed(&job, &model, &train, tok.pad_id(), &layout, &mut run_dir)?;
        }
        note_build(&mut state);
        if recorded.is_none() {
            let config = RunConfig {
                run_id: run_dir.id().map(str::to_string),
                execution: Some(execution),
                ..RunConfig::of(&job)?
            };
            atomic::write_json(&layout.config(), &config)?;
            run_dir.commit();
        }
        let records = keep_records_up_to(&layout, &state, cfg.trace_grads)?;
        let opt = optimizer(&cfg, &model, opt_state.as_deref(), state.global_step)?;
        tracing::info!(
            examples = train.encs.len(),
            steps_per_epoch,
            total_steps = sched.total_steps,
            warmup = sched.warmup_steps,
            epochs,
            "training {}",
            job.task.name
        );
        let bar = super::progress_bar(
            job.progress,
            sched.total_steps as u64,
            state.global_step as u64,
        );
        Ok(Trainer {
            lengths: train.encs.iter().map(Encoded::len).collect(),
            order,
            pad: tok.pad_id(),
            window_loss: Tensor::zeros([], (Kind::Float, job.device)),
            window_updates: 0,
            window_clock: (Instant::now(), 0),
            started: Instant::now(),
            elapsed_before: state.elapsed_secs,
            job,
            layout,
            _run_dir: run_dir,
            model,
            tok_files,
            limits,
            train,
            dev,
            opt,
            sched,
            steps_per_epoch,
            epochs,
            state,
            records,
            bar,
            tensorboard: Board::NotYet,
        })
    }

    /// Whether training is over: every update done.
    pub fn done(&self) -> bool {
        self.state.global_step >= self.sched.total_steps
            || self.state.epoch >= self.epochs
            || self.state.stopped_early
    }

    /// Batches per update.
    pub fn grad_accum(&self) -> usize {
        self.job.config.grad_accum.max(1)
    }

    /// Updates per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    /// The batches of the current epoch (example indices), and the logging window reopened
    /// where a checkpoint taken inside the epoch left it.
    pub fn begin_epoch(&mut self) -> Vec<Vec<usize>> {
        let cfg = &self.job.config;
        let replayed = self
            .order
            .as_ref()
            .and_then(|o| o.epochs.get(self.state.epoch).cloned());
        let mut batches = replayed.unwrap_or_else(|| {
            epoch_batches(
                &self.lengths,
                cfg.batch_size,
                cfg.seed,
                self.state.epoch,
                cfg.group_by_length,
            )
        });
        if cfg.drop_last && self.order.is_none() {
            // Wherever grouping put it, the one partial batch is the one dropped.
            batches.retain(|b| b.len() == cfg.batch_size);
        }
        self.window_loss = Tensor::from(self.state.loss_pending).to_device(self.job.device);
        self.window_updates = self.state.pending_updates;
        self.state.loss_pending = 0.0;
        self.state.pending_updates = 0;
        self.window_clock = (Instant::now(), 0);
        batches
    }

    /// One update on the micro-batches `group` (one, unless `--grad-accum`): forward and
    /// backward of each, its mean loss weighted by its share of the update's examples so that
    /// the gradients add up to the whole group's mean loss (as one batch of them all); then
    /// gradient trace, finiteness check, clipping, AdamW step, and the loss record every 10
    /// updates and at the epoch's last batch (of `epoch_len`).
    pub fn step(&mut self, group: &[Vec<usize>], epoch_len: usize) -> Result<()> {
        let cfg = &self.job.config;
        let (device, model, opt) = (self.job.device, &self.model, &mut self.opt);
        let step_start = Instant::now();
        let examples: usize = group.iter().map(Vec::len).sum();
        tch::manual_seed(step_seed(cfg.seed, self.state.global_step));
        let scaler = self.state.grad_scaler;
        let mut loss = Tensor::from(0f32).to_device(device);
        let mut traced = Vec::new();
        let mut n_tokens = 0;
        let mut phases = PhaseClock::new();
        for (m, idx) in group.iter().enumerate() {
            let refs: Vec<&Encoded> = idx.iter().map(|&i| &self.train.encs[i]).collect();
            let batch = Batch::collate(&refs, self.pad, &self.limits, device)?;
            n_tokens += batch.n_tokens;
            let labels = self.train.label_tensor(idx, device);
            phases.lap(|p| &mut p.collate);
            let out = model.forward(&batch, true);
            let part = model.loss(&out.logits, &labels);
            let part = if group.len() == 1 {
                part
            } else {
                part * (idx.len() as f64 / examples as f64)
            };
            let extra: &[&Tensor] = if cfg.trace_grads {
                &[&out.cls, &out.normalized]
            } else {
                &[]
            };
            // fp16: the loss is scaled so that small gradients survive fp16's range, and the
            // gradients unscaled before anything reads them (torch.amp.GradScaler's order).
            let scaled = match scaler {
                Some(sc) => &part * sc.scale,
                None => part.shallow_clone(),
            };
            phases.lap(|p| &mut p.forward);
            if m == 0 {
                traced = opt.backward(&scaled, extra);
            } else {
                opt.accumulate(&scaled);
            }
            loss += part.detach();
            phases.lap(|p| &mut p.backward);
        }
        if let Some(sc) = scaler {
            opt.scale_grads(1.0 / sc.scale);
            traced = traced
                .into_iter()
                .map(|g| if g.defined() { g / sc.scale } else { g })
                .collect();
        }
        // One global gradient norm per update serves the trace, the finiteness check and
        // clipping.
        let grad_norm = opt.grad_norm();
        if let [cls_grad, normalized_grad] = traced.as_slice() {
            let step = self.state.global_step + 1;
            let rec = grad_trace::record(step, &loss, cls_grad, normalized_grad, &grad_norm, opt)?;
            records::append(&self.layout.grads(), &rec)?;
            self.tensorboard.scalars(
                self.layout.dir(),
                step,
                &[
                    ("grad/cls".into(), rec.cls_grad_norm),
                    ("grad/normalized".into(), rec.normalized_grad_norm),
                    ("grad/global".into(), rec.global_grad_norm),
                ],
            );
        }
        // As Hugging Face's Trainer, the schedule does not advance on updates the loss scaler
        // skipped.
        let scaler_skipped = scaler.map_or(0, |s| s.skipped as usize);
        let lr = self
            .sched
            .lr_at(self.state.global_step.saturating_sub(scaler_skipped));
        let finite = loss
            .isfinite()
            .logical_and(&grad_norm.isfinite())
            .int64_value(&[])
            != 0;
        let overflow = !finite && scaler.is_some_and(|s| s.scale > GradScaler::MIN_SCALE);
        if let Some(sc) = &mut self.state.grad_scaler {
            if finite || overflow {
                sc.update(finite);
            }
        }
        if finite {
            if let Some(c) = cfg.max_grad_norm {
                opt.clip_to(&grad_norm, c);
            }
            opt.step(lr);
            self.window_loss += loss.detach();
            self.window_updates += 1;
            self.state.loss_count += 1;
        } else if overflow {
            let scale = self.state.grad_scaler.map_or(0.0, |s| s.scale);
            self.bar.suspend(|| {
                tracing::debug!(
                    "update {}: fp16 gradient overflow; update skipped, loss scale now {scale}",
                    self.state.global_step + 1
                )
            });
        } else if cfg.skip_nonfinite {
            self.state.nonfinite_skipped += 1;
            let (update, skipped) = (self.state.global_step + 1, self.state.nonfinite_skipped);
            self.bar.suspend(|| {
                tracing::warn!(
                    "update {update}: non-finite loss or gradient ({}); update skipped ({skipped} so far)",
                    loss.double_value(&[]),
                )
            });
        } else {
            // Nothing of this state is saved: the last checkpoint stays the last good one.
            return Err(Error::Invalid(format!(
                "update {}: the loss or a gradient is not finite (loss {}); stopped without saving this state, the last good checkpoint is in {}. Lower --lr, set --max-grad-norm, or pass --skip-nonfinite to skip such updates",
                self.state.global_step + 1,
                loss.double_value(&[]),
                self.layout.last().display()
            )));
        }
        phases.lap(|p| &mut p.optimizer);
        let state = &mut self.state;
        state.epoch_phase_secs += phases.secs;
        state.global_step += 1;
        state.batch += group.len();
        state.epoch_tokens += n_tokens;
        self.window_clock.1 += n_tokens;
        state.epoch_train_secs += step_start.elapsed().as_secs_f64();
        if state.global_step.is_multiple_of(10) || state.batch == epoch_len {
            self.close_loss_window(lr)?;
        }
        self.bar.set_position(self.state.global_step as u64);
        Ok(())
    }

    /// Adds the window's losses to the epoch's sum, records their mean and shows the progress.
    fn close_loss_window(&mut self, lr: f64) -> Result<()> {
        let window_sum = self.window_loss.double_value(&[]);
        let state = &mut self.state;
        state.loss_sum += window_sum;
        if self.window_updates > 0 {
            let rec = LossRecord {
                step: state.global_step,
                epoch: state.epoch + 1,
                loss: window_sum / self.window_updates as f64,
                updates: self.window_updates,
                lr,
            };
            records::append(&self.layout.loss(), &rec)?;
            self.tensorboard.scalars(
                self.layout.dir(),
                rec.step,
                &[("train/loss".into(), rec.loss), ("train/lr".into(), rec.lr)],
            );
        }
        self.window_updates = 0;
        self.window_loss = Tensor::zeros([], (Kind::Float, self.job.device));
        let (since, tokens) = self.window_clock;
        let tps = tokens as f64 / since.elapsed().as_secs_f64().max(1e-9);
        self.window_clock = (Instant::now(), 0);
        self.bar.set_message(format!(
            "loss {:.4} lr {lr:.2e} {tps:.0} tok/s",
            state.loss_sum / state.loss_count as f64,
        ));
        Ok(())
    }

    /// Whether to stop (with a resumable checkpoint) now: `stop_after` updates reached, or a
    /// stop requested through `stop`.
    pub fn stop_requested(&self) -> bool {
        self.job
            .stop_after
            .is_some_and(|k| self.state.global_step >= k)
            || self
                .job
                .stop
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Whether `--save-every` asks for a checkpoint after this update.
    pub fn save_due(&self) -> bool {
        let every = self.job.config.save_every;
        every.is_some_and(|k| self.state.global_step.is_multiple_of(k))
    }

    /// Saves the `last` checkpoint inside an epoch, with the open logging window, so that a
    /// resumed run sums and records the losses in the same order.
    pub fn save_mid_epoch(&mut self) -> Result<()> {
        self.state.loss_pending = self.window_loss.double_value(&[]) as f32;
        self.state.pending_updates = self.window_updates;
        self.save(&self.layout.last(), true)?;
        self.state.loss_pending = 0.0;
        self.state.pending_updates = 0;
        Ok(())
    }

    /// Saves a checkpoint of the current state into `dir`, with the optimizer or without.
    fn save(&mut self, dir: &Path, with_optimizer: bool) -> Result<()> {
        self.state.elapsed_secs = self.elapsed_before + self.started.elapsed().as_secs_f64();
        let meta = CheckpointMeta {
            clsnorm_version: env!("CARGO_PKG_VERSION").into(),
            task: self.job.task.clone(),
            head: self.model.config.clone(),
            max_len: self.job.config.max_len,
            state: self.state.clone(),
        };
        let opt = with_optimizer.then(|| self.opt.state());
        checkpoint::save(dir, &self.model, &meta, opt.as_deref(), &self.tok_files)
    }

    /// Whether `--eval-every` asks for an evaluation after this update, inside the epoch (the
    /// epoch's end evaluates anyway).
    pub fn eval_due(&self, epoch_len: usize) -> bool {
        self.job
            .config
            .eval_every
            .is_some_and(|n| self.state.global_step.is_multiple_of(n))
            && self.state.batch < epoch_len
    }

    /// Whether `--patience` evaluations in a row found no better primary metric.
    pub fn stopped_early(&self) -> bool {
        self.state.stopped_early
    }

    /// Evaluates on the dev sets: the record of this moment (the epoch's training loss so
    /// far, without closing it).
    fn evaluation(&self) -> Result<EpochRecord> {
        let state = &self.state;
        let eval_start = Instant::now();
        let (dev, cls_geometry) = self.dev_metrics()?;
        let task = &self.job.task;
        let primary = dev
            .first()
            .and_then(|(_, m)| m.get(task.primary.name()).copied())
            .unwrap_or(f64::NAN);
        let pending = self.window_loss.double_value(&[]);
        Ok(EpochRecord {
            epoch: state.epoch + 1,
            global_step: state.global_step,
            train_loss: (state.loss_sum + pending) / state.loss_count.max(1) as f64,
            dev,
            primary,
            lr: self.sched.lr_at(state.global_step.saturating_sub(1)),
            train_secs: state.epoch_train_secs,
            eval_secs: eval_start.elapsed().as_secs_f64(),
            train_tokens_per_sec: state.epoch_tokens as f64 / state.epoch_train_secs.max(1e-9),
            cls_geometry,
            train_phase_secs: Some(state.epoch_phase_secs),
        })
    }

    /// After an evaluation's record is written: its curves, `best` saved if the primary metric
    /// improved, and the count of evaluations without improvement.
    fn note_evaluation(&mut self, record: &EpochRecord) -> Result<()> {
        let mut curves = vec![("train/epoch_loss".to_string(), record.train_loss)];
        for (split, m) in &record.dev {
            for (k, v) in m {
                curves.push((format!("dev/{split}/{k}"), *v));
            }
        }
        if let Some(g) = &record.cls_geometry {
            numbers(
                "cls",
                &serde_json::to_value(g).unwrap_or_default(),
                &mut curves,
            );
        }
        self.tensorboard
            .scalars(self.layout.dir(), record.global_step, &curves);
        let state = &mut self.state;
        if state.best_metric.is_none_or(|b| record.primary > b) {
            state.best_metric = Some(record.primary);
            state.best_epoch = Some(record.epoch);
            state.best_step = Some(record.global_step);
            state.evals_since_best = 0;
            self.save(&self.layout.best(), false)?;
        } else {
            state.evals_since_best += 1;
            if self
                .job
                .config
                .patience
                .is_some_and(|p| state.evals_since_best >= p)
            {
                state.stopped_early = true;
                let since = state.evals_since_best;
                self.bar.suspend(|| {
                    tracing::info!(
                        "stopping early: {since} evaluations without a better {} (--patience)",
                        self.job.task.primary.name()
                    )
                });
            }
        }
        Ok(())
    }

    /// An evaluation inside an epoch (`--eval-every`): its record in `evals.jsonl`, `best` if
    /// it improved; an early stop saves `last` here.
    pub fn evaluate_mid_epoch(&mut self) -> Result<()> {
        let record = self.evaluation()?;
        self.bar.suspend(|| {
            tracing::info!(
                "step {}: dev {} {:.4}",
                record.global_step,
                self.job.task.primary.name(),
                record.primary
            )
        });
        records::append(&self.layout.evals(), &record)?;
        self.note_evaluation(&record)?;
        if self.state.stopped_early {
            self.save_mid_epoch()?;
        }
        self.records.push(record);
        Ok(())
    }

    /// End of an epoch: evaluate on the dev sets, append the epoch's record, save `best` if
    /// the primary metric improved, and `last`.
    pub fn end_epoch(&mut self) -> Result<()> {
        self.state.loss_sum += self.window_loss.double_value(&[]);
        self.window_loss = Tensor::zeros([], (Kind::Float, self.job.device));
        let record = self.evaluation()?;
        self.bar.suspend(|| {
            tracing::info!(
                "epoch {} step {}: train loss {:.4}, dev {} {:.4} ({:.0} tok/s)",
                record.epoch,
                record.global_step,
                record.train_loss,
                self.job.task.primary.name(),
                record.primary,
                record.train_tokens_per_sec
            )
        });
        let state = &mut self.state;
        state.epoch += 1;
        state.batch = 0;
        state.loss_sum = 0.0;
        state.loss_count = 0;
        state.epoch_tokens = 0;
        state.epoch_train_secs = 0.0;
        state.epoch_phase_secs = Default::default();
        // The epoch's record goes first: if the process dies before the `last` checkpoint
        // below, a resumed run drops the record (its epoch is not in the checkpoint) and
        // writes it again; written after, it could be lost for good.
        records::append(&self.layout.metrics(), &record)?;
        self.note_evaluation(&record)?;
        self.save(&self.layout.last(), true)?;
        self.records.push(record);
        Ok(())
    }

    /// Metrics of every dev split, and the [CLS] geometry on the first.
    fn dev_metrics(&self) -> Result<(DevMetrics, Option<ClsGeometry>)> {
        let task = &self.job.task;
        let mut metrics = task.metrics.clone();
        if !metrics.contains(&task.primary) {
            metrics.push(task.primary);
        }
        let batch_size = self.job.config.eval_batch_size;
        let (model, pad) = (&self.model, self.pad);
        let mut geometry = None;
        let mut out = Vec::new();
        for (i, (name, t)) in self.dev.iter().enumerate() {
            let m = if i == 0 {
                let (m, g) = eval::evaluate_with_geometry(
                    model, &t.encs, &t.labels, &metrics, batch_size, pad,
                )?;
                geometry = g;
                m
            } else {
                eval::evaluate(model, &t.encs, &t.labels, &metrics, batch_size, pad)?
            };
            out.push((name.clone(), m));
        }
        Ok((out, geometry))
    }

    /// Writes `summary.json` (best and final dev metrics, counts, time) and returns it.
    pub fn finish(self, interrupted: bool) -> Result<Summary> {
        self.bar.finish_and_clear();
        let state = &self.state;
        let best_dev = self
            .records
            .iter()
            .rfind(|r| match state.best_step {
                Some(step) => r.global_step == step,
                None => Some(r.epoch) == state.best_epoch,
            })
            .map(|r| r.dev.clone())
            .unwrap_or_default();
        let final_dev = self
            .records
            .last()
            .map(|r| r.dev.clone())
            .unwrap_or_default();
        let summary = Summary {
            task: self.job.task.name.clone(),
            primary_metric: self.job.task.primary.name().into(),
            best_epoch: state.best_epoch,
            best_step: state.best_step,
            stopped_early: state.stopped_early,
            best_primary: state.best_metric,
            best_dev,
            final_dev,
            epochs: state.epoch,
            global_steps: state.global_step,
            wall_secs: self.elapsed_before + self.started.elapsed().as_secs_f64(),
            interrupted,
            nonfinite_skipped: state.nonfinite_skipped,
            loss_scale_skipped: state.grad_scaler.map(|s| s.skipped),
            builds: state.builds.clone(),
        };
        atomic::write_json(&self.layout.summary(), &summary)?;
        if !interrupted {
            // A convenience beside the records: a run that cannot write it is still complete.
            if let Err(e) = crate::export::card::write_run_card(self.layout.dir()) {
                tracing::warn!("the run's model card (README.md) was not written: {e}");
            }
        }
        Ok(summary)
    }
}

/// A resumed run's data must be what the run started on: same bytes, same rows.
fn check_same_data(job: &Finetune, rc: &RunConfig, config_path: &Path) -> Result<()> {
    if job.dev.len() != rc.dev_files.len() {
        return Err(Error::Invalid(format!(
            "--resume: the run has {} dev file(s), {} given",
            rc.dev_files.len(),
            job.dev.len()
        )));
    }
    let now =
        std::iter::once(("train", &job.train)).chain(job.dev.iter().map(|(n, d)| (n.as_str(), d)));
    let then = std::iter::once(&rc.train_file).chain(rc.dev_files.iter().map(|(_, i)| i));
    for ((what, ds), info) in now.zip(then) {
        if ds.sha256 != info.sha256 || ds.examples.len() != info.rows {
            return Err(Error::Invalid(format!(
                "--resume: the {what} file {} changed since the run started (its bytes or \
                 usable rows differ from those recorded in {})",
                ds.path.display(),
                config_path.display()
            )));
        }
    }
    Ok(())
}

/// What a run starts from: the model, its tokenizer's files, the training state and the
/// optimizer's (none for a fresh start), and whether they came from a checkpoint.
struct Loaded {
    model: Classifier,
    tok_files: TokenizerFiles,
    state: TrainState,
    opt_state: Option<Vec<(String, Tensor)>>,
    resumed: bool,
}

/// Model, tokenizer, optimizer and state: fresh from the model directory, or all from the
/// last checkpoint when resuming (the model directory may have changed or moved since).
fn load(job: &Finetune, layout: &Layout, recorded: Option<&RunConfig>) -> Result<Loaded> {
    let last = job
        .resume
        .then(|| checkpoint::locate(&layout.last()))
        .flatten();
    if let Some(dir) = &last {
        return load_last(job, dir, layout);
    }
    if job.resume {
        tracing::warn!(
            "no complete checkpoint in {}: starting from scratch",
            layout.last().display()
        );
    }
    let (model, tok_files) = build_fresh(job, recorded)?;
    Ok(Loaded {
        model,
        tok_files,
        state: TrainState::default(),
        opt_state: None,
        resumed: false,
    })
}

/// The run's precision, TF32 and execution on the model and state; returns the execution.
fn set_precision(
    model: &mut Classifier,
    state: &mut TrainState,
    cfg: &super::TrainConfig,
    device: Device,
) -> Result<Execution> {
    model.encoder.precision = cfg.precision;
    let execution = model.encoder.set_unpadded(!cfg.padded);
    cfg.precision.warn_if_emulated(device);
    if cfg.tf32 {
        crate::precision::set_tf32(true)?;
    }
    if cfg.precision == Precision::Fp16 && state.grad_scaler.is_none() {
        state.grad_scaler = Some(GradScaler::default());
    }
    Ok(execution)
}

/// The training and dev splits, tokenized.
fn tokenize(job: &Finetune, tok: &TextTokenizer) -> Result<(Tokenized, Vec<(String, Tokenized)>)> {
    let t0 = Instant::now();
    let train = Tokenized::new(tok, &job.train)?;
    let dev: Vec<(String, Tokenized)> = job
        .dev
        .iter()
        .map(|(n, d)| Ok((n.clone(), Tokenized::new(tok, d)?)))
        .collect::<Result<_>>()?;
    tracing::info!(
        train = train.encs.len(),
        dev = dev.iter().map(|d| d.1.encs.len()).sum::<usize>(),
        secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
        "tokenized"
    );
    Ok((train, dev))
}

/// Drops the records written after the checkpoint `state` is at (a resumed run writes them
/// again); returns the epochs' records kept.
fn keep_records_up_to(
    layout: &Layout,
    state: &TrainState,
    trace_grads: bool,
) -> Result<Vec<EpochRecord>> {
    let mut kept = records::retain(&layout.metrics(), |r: &EpochRecord| r.epoch <= state.epoch)?;
    if layout.evals().exists() {
        kept.extend(records::retain(&layout.evals(), |r: &EpochRecord| {
            r.global_step <= state.global_step
        })?);
        kept.sort_by_key(|r| (r.global_step, r.epoch));
    }
    records::retain(&layout.loss(), |r: &LossRecord| r.step <= state.global_step)?;
    if trace_grads {
        records::retain(&layout.grads(), |r: &GradRecord| {
            r.step <= state.global_step
        })?;
    }
    Ok(kept)
}

/// How the run's updates are laid out: per epoch, in all, in which batches, at which rates.
struct Plan {
    steps_per_epoch: usize,
    epochs: usize,
    order: Option<BatchOrder>,
    sched: Schedule,
}

fn plan(cfg: &super::TrainConfig, examples: usize) -> Result<Plan> {
    let (steps_per_epoch, total_steps) = cfg.steps(examples)?;
    let epochs = total_steps.div_ceil(steps_per_epoch);
    if let Some(p) = cfg.patience {
        // At most one evaluation per epoch end and one per --eval-every updates.
        let evaluations = epochs + cfg.eval_every.map_or(0, |n| total_steps / n);
        if p >= evaluations {
            return Err(Error::Invalid(format!(
                "--patience {p}: the run makes at most {evaluations} evaluations ({epochs} \
                 epoch ends{}), so it could never stop early; give a smaller --patience or \
                 evaluate more often with --eval-every",
                cfg.eval_every
                    .map(|n| format!(" and one every {n} of its {total_steps} updates"))
                    .unwrap_or_default()
            )));
        }
    }
    let order = match &cfg.batch_order {
        Some(f) => Some(f.load(examples, cfg.batch_size, steps_per_epoch, epochs)?),
        None => None,
    };
    Ok(Plan {
        steps_per_epoch,
        epochs,
        order,
        sched: Schedule {
            kind: cfg.schedule,
            lr: cfg.lr,
            warmup_steps: cfg.warmup(total_steps),
            total_steps,
        },
    })
}

/// Model, tokenizer, training state and optimizer state of the checkpoint `dir`.
fn load_last(job: &Finetune, dir: &Path, layout: &Layout) -> Result<Loaded> {
    let (model, meta) = checkpoint::load_model(dir, job.device, &job.registry)?;
    if meta.head != job.head || meta.task.labels != job.task.labels {
        return Err(Error::File {
            path: dir.join(checkpoint::META_FILE),
            msg: format!(
                "the checkpoint's head or labels differ from the run's {}",
                layout.config().display()
            ),
        });
    }
    if meta.state.best_epoch.is_some() && !checkpoint::is_complete(&layout.best()) {
        return Err(Error::Invalid(format!(
            "{}: the best checkpoint (epoch {}) is missing or incomplete, so the run cannot \
             report its best epoch; restore it, or start a new run",
            layout.best().display(),
            meta.state.best_epoch.unwrap_or_default()
        )));
    }
    let opt = crate::encoder::weights::read_safetensors(&dir.join(checkpoint::OPTIMIZER_FILE))?;
    tracing::info!(
        epoch = meta.state.epoch + 1,
        batch = meta.state.batch,
        step = meta.state.global_step,
        "resuming from {}",
        dir.display()
    );
    Ok(Loaded {
        model,
        tok_files: TokenizerFiles::read(dir)?,
        state: meta.state,
        opt_state: Some(opt),
        resumed: true,
    })
}

/// The pre-trained encoder with a new head (seeded), and the model directory's tokenizer.
fn build_fresh(
    job: &Finetune,
    recorded: Option<&RunConfig>,
) -> Result<(Classifier, TokenizerFiles)> {
    let seed = job.config.seed as i64;
    tch::manual_seed(seed);
    if let Some(rc) = recorded {
        if rc.model_weights_sha256 != super::model_weights_sha(job.model_dir, job.allow_pickle)? {
            return Err(Error::Invalid(format!(
                "--resume: the weights in {} changed since the run started, and the run has no \
                 checkpoint yet to continue from; start a new run",
                job.model_dir.display()
            )));
        }
    }
    let families = &job.registry.families;
    let encoder = Encoder::load_with(job.model_dir, job.device, job.allow_pickle, families)?;
    let model = Classifier::new(encoder, job.head.clone(), seed, &job.registry.normalizers)?;
    if job.head.bias_init == BiasInit::Prior {
        model.set_output_bias(&label_prior(&job.head.labels, &job.train)?)?;
    }
    Ok((model, TokenizerFiles::read(job.model_dir)?))
}

/// Appends this build to the run's builds when it differs from the last one.
fn note_build(state: &mut TrainState) {
    if state.builds.last().map(String::as_str) == Some(BUILD) {
        return;
    }
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

/// Fits frozen normalizer statistics on the pre-trained model's training-set vectors, and
/// caches them (the fitted `normalizer.*` tensors) in the run directory.
fn fit_normalizer(
    model: &Classifier,
    train: &Tokenized,
    batch_size: usize,
    pad: i64,
    cache: &Path,
    reuse: bool,
) -> Result<()> {
    use crate::encoder::weights;
    if reuse {
        let tensors = weights::read_safetensors(cache)?;
        let vars = model.head_vs.variables();
        return tch::no_grad(|| -> Result<()> {
            for (name, t) in &tensors {
                let dst = vars.get(name).ok_or_else(|| {
                    Error::Invalid(format!("{}: unexpected {name}", cache.display()))
                })?;
                dst.shallow_clone().f_copy_(t)?;
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let cls = model.cls_vectors(&train.encs, batch_size, pad)?;
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

impl RunConfig {
    /// The record of a new run: versions, model, data provenance and every setting.
    fn of(job: &Finetune) -> Result<Self> {
        Ok(RunConfig {
            clsnorm_version: env!("CARGO_PKG_VERSION").into(),
            clsnorm_build: BUILD.into(),
            // Of the build, not hard-coded: a GPU build may link another libtorch.
            tch_version: env!("CLSNORM_TCH_VERSION").into(),
            libtorch_version: env!("CLSNORM_LIBTORCH_VERSION").into(),
            // Absolute, so that a resume from another working directory finds it.
            model: std::path::absolute(job.model_dir).map_err(|e| Error::io(job.model_dir, e))?,
            model_weights_sha256: super::model_weights_sha(job.model_dir, job.allow_pickle)?,
            task: job.task.clone(),
            train_file: FileInfo::of(&job.train)?,
            dev_files: job
                .dev
                .iter()
                .map(|(n, d)| Ok((n.clone(), FileInfo::of(d)?)))
                .collect::<Result<_>>()?,
            head: job.head.clone(),
            train: job.config.clone(),
            device: format!("{:?}", job.device),
            threads: job.threads,
            run_id: None,
            sources: job.sources.clone(),
            execution: None,
        })
    }
}
