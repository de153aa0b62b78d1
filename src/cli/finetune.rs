//! `clsnorm finetune`: train encoder and head jointly on a task, evaluating every epoch.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use clsnorm::classifier::{BiasInit, ClassifierInit, ClsSource, HeadConfig};
use clsnorm::data::read::{infer_classes, read_rows, split_from_rows, RawFile};
use clsnorm::data::{glue_task, read_split, Dataset, Format, ReadOptions, TaskSpec};
use clsnorm::device::set_threads;
use clsnorm::hub::{HubEnv, HubSource, Located, RepoRef, GLUE_DATASET};
use clsnorm::train::optim::AdamWConfig;
use clsnorm::train::schedule::ScheduleKind;
use clsnorm::train::{finetune, FileInfo, Finetune, Rounding, RunConfig, Sources, TrainConfig};
use clsnorm::Registry;

use super::{DataArgs, NormArgs, RuntimeArgs};

/// The library's defaults, which the flags' defaults are.
const DEFAULTS: TrainConfig = TrainConfig::DEFAULT;

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    #[command(flatten, next_help_heading = "Model")]
    pub rt: RuntimeArgs,
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataArgs,
    /// Training epochs.
    #[arg(long, default_value_t = DEFAULTS.epochs, help_heading = "Training")]
    pub epochs: usize,
    /// Stop after this many updates.
    #[arg(long, help_heading = "Training")]
    pub max_steps: Option<usize>,
    #[arg(long, default_value_t = DEFAULTS.batch_size, help_heading = "Training")]
    pub batch_size: usize,
    /// Batches per update (gradient accumulation): an update sees K x --batch-size examples,
    /// computed K batches at a time, as one batch of them all (README, "Training recipes").
    #[arg(long, value_name = "K", default_value_t = DEFAULTS.grad_accum, help_heading = "Training")]
    pub grad_accum: usize,
    #[arg(long, default_value_t = DEFAULTS.eval_batch_size, help_heading = "Training")]
    pub eval_batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = DEFAULTS.lr, help_heading = "Training")]
    pub lr: f64,
    #[arg(long, default_value_t = DEFAULTS.adam.weight_decay, help_heading = "Training")]
    pub weight_decay: f64,
    #[arg(long, default_value_t = DEFAULTS.adam.eps, help_heading = "Training")]
    pub adam_eps: f64,
    #[arg(long, default_value_t = DEFAULTS.adam.beta1, help_heading = "Training")]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = DEFAULTS.adam.beta2, help_heading = "Training")]
    pub adam_beta2: f64,
    /// Fraction of updates for linear warmup.
    #[arg(long, default_value_t = DEFAULTS.warmup_ratio, help_heading = "Training")]
    pub warmup_ratio: f64,
    /// Warmup updates (overrides --warmup-ratio).
    #[arg(long, help_heading = "Training")]
    pub warmup_steps: Option<usize>,
    /// Rounding of warmup updates from --warmup-ratio: ceil (Hugging Face Trainer) or floor
    /// (the IsoBN code's int()).
    #[arg(long, value_enum, default_value_t = Rounding::Ceil, help_heading = "Training")]
    pub warmup_rounding: Rounding,
    /// What follows the warmup, as transformers' get_*_schedule_with_warmup: linear decay to 0
    /// (the IsoBN protocol's), cosine (half a cycle, to 0) or constant.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Linear, help_heading = "Training")]
    pub schedule: ScheduleKind,
    /// Layer-wise learning-rate decay, as ELECTRA's and DeBERTa's recipes: each encoder layer
    /// trains at the rate of the one above times D, the embeddings lowest; pooler, normalizer
    /// and classifier at the full rate. In (0, 1]; off by default.
    #[arg(long, value_name = "D", help_heading = "Training")]
    pub layer_decay: Option<f64>,
    /// Clip the global gradient norm (off by default, as in the IsoBN protocol).
    #[arg(long, help_heading = "Training")]
    pub max_grad_norm: Option<f64>,
    /// Dropout before the classifier (default: the model's hidden_dropout_prob).
    #[arg(long, help_heading = "Training")]
    pub dropout: Option<f64>,
    /// Maximum tokens per example (longest-first truncation).
    #[arg(long, default_value_t = DEFAULTS.max_len, help_heading = "Training")]
    pub max_len: usize,
    #[arg(long, default_value_t = DEFAULTS.seed, help_heading = "Training")]
    pub seed: u64,
    /// Skip the last partial batch of every epoch (as the IsoBN code's DataLoader).
    #[arg(long, help_heading = "Training")]
    pub drop_last: bool,
    /// Batch examples of similar length together (shuffled mega-batches of 50 batches, sorted
    /// within): less padding per batch, every example still once per epoch.
    #[arg(long, help_heading = "Training")]
    pub group_by_length: bool,
    /// Compute padded batches as they are, padding included, instead of the real tokens only
    /// (the default on CPU for BERT, RoBERTa/XLM-R and ELECTRA; equal to rounding, slower).
    #[arg(long, help_heading = "Training")]
    pub padded: bool,
    /// Replay another pipeline's batches: a JSON-lines file, one batch a line,
    /// `{"epoch": E, "batch": [example indices]}` (bench/reference writes PyTorch's).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "group_by_length",
        help_heading = "Training"
    )]
    pub batch_order: Option<PathBuf>,
    /// Skip updates whose loss or gradients are not finite (counted and logged) instead of
    /// stopping at the first.
    #[arg(long, help_heading = "Training")]
    pub skip_nonfinite: bool,
    /// Also evaluate on dev every N updates (every epoch's end evaluates anyway); the best
    /// checkpoint is the best evaluation's. Records in RUN/evals.jsonl.
    #[arg(long, value_name = "N", help_heading = "Evaluation")]
    pub eval_every: Option<usize>,
    /// Early stopping: stop after P evaluations in a row without a better primary metric.
    #[arg(long, value_name = "P", help_heading = "Evaluation")]
    pub patience: Option<usize>,
    #[command(flatten, next_help_heading = "Normalizer and head")]
    pub norm: NormArgs,
    /// Vector fed to the head.
    #[arg(long, value_enum, default_value_t = ClsSource::Pooler, help_heading = "Normalizer and head")]
    pub cls_source: ClsSource,
    /// How the head's output bias starts: zero (as Hugging Face), or the training labels'
    /// prior (mean score; log class shares), which batch-centring normalizers need on
    /// regression tasks (docs/results.md, STS-B).
    #[arg(long, value_enum, default_value_t = BiasInit::Zero, help_heading = "Normalizer and head")]
    pub head_bias_init: BiasInit,
    /// How the classifier's weights start: hf (N(0, initializer_range), zero bias, as Hugging
    /// Face) or torch (nn.Linear's default uniform, as the IsoBN code).
    #[arg(long, value_enum, default_value_t = ClassifierInit::Hf, help_heading = "Normalizer and head")]
    pub classifier_init: ClassifierInit,
    /// Run directory (default: runs/TASK-NORM-seedSEED).
    #[arg(long, help_heading = "Output")]
    pub output: Option<PathBuf>,
    /// Continue the run in this directory from its last complete checkpoint; every other
    /// setting comes from the run's config.json.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["task", "train_file", "dataset", "output"], help_heading = "Output")]
    pub resume: Option<PathBuf>,
    /// Also checkpoint every N updates (always at the end of each epoch).
    #[arg(long, help_heading = "Output")]
    pub save_every: Option<usize>,
    /// Record gradient norms of every update in RUN/grads.jsonl.
    #[arg(long, help_heading = "Output")]
    pub trace_grads: bool,
    /// No progress bar.
    #[arg(long, help_heading = "Output")]
    pub quiet: bool,
}

fn format_of(args: &DataArgs, path: &Path) -> anyhow::Result<Format> {
    file_format(args.format.as_deref(), path)
}

/// The `--format` given, else the format of `path`'s extension.
pub fn file_format(given: Option<&str>, path: &Path) -> anyhow::Result<Format> {
    given
        .map_or_else(|| Format::from_path(path), Format::from_name)
        .with_context(|| {
            format!(
                "cannot tell the format of {} from its extension: pass --format tsv|csv|jsonl|parquet",
                path.display()
            )
        })
}

/// GLUE task `task` from the Hub's `nyu-mll/glue`: its parquet files from the local Hugging
/// Face cache, else (unless HF_HUB_OFFLINE is set) downloaded into it. The folder returned is
/// the dataset's snapshot, which [`locate_glue`](clsnorm::data::task::locate_glue) reads.
pub fn glue_from_hub(task: &str, revision: &str) -> anyhow::Result<Located> {
    let env = HubEnv::from_process()?;
    let Some((dir, splits)) = clsnorm::data::task::hub_glue_files(task) else {
        bail!(
            "the Hub's GLUE ({GLUE_DATASET}) has no task {task}; pass --data-dir or set GLUE_DIR"
        );
    };
    let repo = RepoRef::dataset(GLUE_DATASET, revision)?;
    let wanted = |path: &str| {
        splits
            .iter()
            .any(|s| clsnorm::data::task::is_hub_glue_file(path, dir, s))
    };
    // One file per split, as the reader takes them: decided from the listing, before any
    // download.
    let pick = |names: &[&str]| -> Result<Vec<String>, String> {
        let mut files = Vec::new();
        for split in &splits {
            let of: Vec<&str> = names
                .iter()
                .copied()
                .filter(|p| clsnorm::data::task::is_hub_glue_file(p, dir, split))
                .collect();
            match of.len() {
                1 => files.push(of[0].to_string()),
                0 => return Err(format!("holds no {dir}/{split}-*.parquet file")),
                n => {
                    return Err(format!(
                        "holds the {split} split in {n} parquet files; clsnorm reads one file \
                         per split"
                    ))
                }
            }
        }
        Ok(files)
    };
    let complete = |snap: &Path| -> Option<Vec<String>> {
        let names: Vec<String> = std::fs::read_dir(snap.join(dir))
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(|n| format!("{dir}/{n}")))
            .filter(|p| wanted(p))
            .collect();
        splits
            .iter()
            .all(|s| {
                names
                    .iter()
                    .any(|p| clsnorm::data::task::is_hub_glue_file(p, dir, s))
            })
            .then_some(names)
    };
    let what = format!(
        "GLUE {task} ({GLUE_DATASET}, {dir}/: {})",
        splits.join(", ")
    );
    let found = clsnorm::hub::dataset(&env, &repo, &pick, &complete, &what).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(no --data-dir or GLUE_DIR was given, so clsnorm reads GLUE from the Hub; a \
             local GLUE folder works too: --data-dir DIR holding {task}/train.tsv)"
        )
    })?;
    tracing::info!(
        "reading {task} from the Hugging Face cache: {}",
        found.dir.display()
    );
    Ok(found)
}

/// Most classes a custom classification task may have (each is a row of the head).
pub const MAX_CLASSES: usize = 10_000;

/// A task ready to read.
pub struct ResolvedTask {
    pub spec: TaskSpec,
    /// The directory the spec's relative file names are under (GLUE tasks).
    pub dir: Option<PathBuf>,
    /// Custom classification data: the training files' rows (read once: its classes come
    /// from them).
    pub rows: Option<Vec<RawFile>>,
    /// The Hub dataset the files are a snapshot of (GLUE read from `nyu-mll/glue`).
    pub source: Option<HubSource>,
}

/// The task `args` name, and where its files are.
pub fn resolve_task(args: &DataArgs) -> anyhow::Result<ResolvedTask> {
    let opts = ReadOptions {
        skip_bad_rows: args.skip_bad_rows,
        require_label: true,
    };
    if let Some(dataset) = &args.dataset {
        return super::hub_data::resolve(args, dataset);
    }
    if let Some(train) = &args.train_file {
        let name = args.task.clone().unwrap_or_else(|| "custom".into());
        let format = format_of(args, train)?;
        let mut spec = TaskSpec::custom(
            &name,
            format,
            !args.no_header,
            args.text_col.as_deref().unwrap_or("text"),
            args.text_pair_col.as_deref(),
            args.label_col.as_deref().unwrap_or("label"),
            args.regression,
            &train.to_string_lossy(),
            args.dev_file
                .as_ref()
                .map(|d| d.to_string_lossy())
                .as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        if !args.regression {
            let raw = read_rows(train, &spec, opts)?;
            let classes = infer_classes(train, &raw.rows)?;
            if classes.len() < 2 {
                bail!("{}: found {} distinct label(s); classification needs at least 2 (use --regression for scores)", train.display(), classes.len());
            }
            if classes.len() > MAX_CLASSES {
                bail!(
                    "{}: found {} distinct labels in column {}; clsnorm classifies into at most {MAX_CLASSES} classes (is --label-col the label? use --regression for scores)",
                    train.display(),
                    classes.len(),
                    clsnorm::excerpt::quoted(args.label_col.as_deref().unwrap_or("label"))
                );
            }
            spec.set_classes(classes);
            return Ok(ResolvedTask {
                spec,
                dir: None,
                rows: Some(vec![raw]),
                source: None,
            });
        }
        return Ok(ResolvedTask {
            spec,
            dir: None,
            rows: None,
            source: None,
        });
    }
    let Some(name) = &args.task else {
        bail!("give --task (a GLUE task) or --train-file (custom data)");
    };
    let spec = glue_task(name).with_context(|| {
        format!(
            "unknown task {}: expected one of {} or --train-file for custom data",
            clsnorm::excerpt::quoted(name),
            clsnorm::data::task::glue_task_names().join(", ")
        )
    })?;
    let hub = match &args.data_dir {
        Some(_) => None,
        None => Some(glue_from_hub(&spec.name, "main")?),
    };
    let dir: &Path = match (&args.data_dir, &hub) {
        (Some(d), _) => d,
        (None, Some(h)) => &h.dir,
        (None, None) => bail!("no data directory for {}", spec.name),
    };
    let (spec, dir) = clsnorm::data::task::locate_glue(&spec, dir).map_err(anyhow::Error::msg)?;
    Ok(ResolvedTask {
        spec,
        dir: Some(dir),
        rows: None,
        source: hub.and_then(|h| h.source),
    })
}

/// `--resume` continues a run exactly as it was configured, so any other option that would
/// change it is refused rather than silently ignored. Options about how this process runs
/// (threads, device, progress bar, logging) are allowed.
pub fn refuse_ignored_flags(m: &clap::ArgMatches) -> anyhow::Result<()> {
    use clap::CommandFactory;
    const ALLOWED: &[&str] = &[
        "resume",
        "threads",
        "device",
        "quiet",
        "allow_pickle",
        "verbose",
    ];
    let cmd = super::Cli::command();
    let args: Vec<String> = cmd
        .find_subcommand("finetune")
        .map(|c| c.get_arguments().map(|a| a.get_id().to_string()).collect())
        .unwrap_or_default();
    let ignored: Vec<String> = m
        .ids()
        .map(|id| id.as_str())
        .filter(|id| args.iter().any(|a| a == id) && !ALLOWED.contains(id))
        .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if !ignored.is_empty() {
        bail!(
            "--resume continues the run with the settings in its config.json, so {} would be ignored; \
             start a new run (another --output) to change them",
            ignored.join(", ")
        );
    }
    Ok(())
}

pub fn run(a: FinetuneArgs) -> anyhow::Result<()> {
    // What this process can build, made once for the whole command.
    let registry = Registry::builtin();
    let (job_parts, recorded) = match &a.resume {
        Some(run_dir) => {
            let (parts, threads, skip) = from_run_dir(run_dir, a.rt.allow_pickle)?;
            (parts, Some((threads, skip)))
        }
        None => (from_args(&a, &registry)?, None),
    };
    let resume = a.resume.is_some();
    let threads = set_threads(resume_threads(a.rt.threads, recorded.map(|r| r.0)))?;
    let device = a.rt.device.resolve()?;
    let JobParts {
        task,
        task_dir,
        data,
        head,
        config,
        model_dir,
        output,
        sources,
    } = job_parts;
    let (train, dev) = match data {
        Some(data) => data,
        None => {
            let opts = ReadOptions {
                // A resumed run reads its data as it did at the start.
                skip_bad_rows: recorded.map_or(a.data.skip_bad_rows, |r| r.1),
                require_label: true,
            };
            read_splits(&task, task_dir.as_deref(), None, opts)?
        }
    };
    tracing::info!(device = ?device, threads, output = %output.display(), "fine-tuning {} on {}", model_dir.display(), task.name);
    let stop = interrupt_flag()?;
    let summary = finetune(Finetune {
        model_dir: &model_dir,
        task,
        train,
        dev,
        head,
        config,
        output: &output,
        resume,
        device,
        threads,
        allow_pickle: a.rt.allow_pickle,
        sources,
        registry,
        progress: !a.quiet,
        stop_after: None,
        stop: Some(&stop),
    })?;
    super::print_stdout(&serde_json::to_string_pretty(&summary)?)?;
    if summary.interrupted {
        bail!(
            "interrupted after update {}; continue with: clsnorm finetune --resume {}",
            summary.global_steps,
            output.display()
        );
    }
    Ok(())
}

/// A flag that SIGINT or SIGTERM sets: training stops after the current update with a
/// resumable checkpoint. A second signal exits at once (the last checkpoint stays usable).
fn interrupt_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let first = std::sync::Mutex::new(None);
    ctrlc::set_handler(move || {
        let Ok(mut first) = first.lock() else {
            return;
        };
        match on_signal(&mut first, std::time::Instant::now()) {
            OnSignal::Interrupt => {
                f.store(true, Ordering::SeqCst);
                eprintln!("interrupt: finishing the current update, then writing a resumable checkpoint (interrupt again to quit at once)");
            }
            OnSignal::SameInterrupt => {}
            OnSignal::Quit => {
                eprintln!("second interrupt: exiting now; the last complete checkpoint is kept");
                std::process::exit(130);
            }
        }
    })
    .context("installing the SIGINT/SIGTERM handler")?;
    Ok(flag)
}

/// What a SIGINT/SIGTERM asks of a run.
#[derive(Debug, PartialEq)]
enum OnSignal {
    /// The first: checkpoint and stop.
    Interrupt,
    /// Within a second of the first: the same interrupt delivered twice, as when a scheduler
    /// signals every process of a job and a `clsnorm sweep` passes its own signal on.
    SameInterrupt,
    /// A later one: the user insists.
    Quit,
}

fn on_signal(first: &mut Option<std::time::Instant>, now: std::time::Instant) -> OnSignal {
    match *first {
        None => {
            *first = Some(now);
            OnSignal::Interrupt
        }
        Some(t) if now.saturating_duration_since(t) < std::time::Duration::from_secs(1) => {
            OnSignal::SameInterrupt
        }
        Some(_) => OnSignal::Quit,
    }
}

/// The training split and the dev splits of `task`, read and checked.
fn read_splits(
    task: &TaskSpec,
    task_dir: Option<&Path>,
    train_rows: Option<Vec<RawFile>>,
    opts: ReadOptions,
) -> anyhow::Result<(Dataset, Vec<(String, Dataset)>)> {
    let (train_paths, dev_paths) = task.paths(task_dir);
    let train = match train_rows {
        Some(raw) => split_from_rows(raw, task, opts)?,
        None => read_split(&train_paths, task, opts)?,
    };
    if dev_paths.is_empty() {
        bail!("task {} has no dev file: give --dev-file", task.name);
    }
    let dev = dev_paths
        .iter()
        .map(|(n, p)| Ok((n.clone(), read_split(p, task, opts)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((train, dev))
}

/// What a run is made of, from its options or from the config.json of the run it resumes.
struct JobParts {
    task: TaskSpec,
    task_dir: Option<PathBuf>,
    /// The splits, when already read (a new run reads them before it fetches the model).
    data: Option<(Dataset, Vec<(String, Dataset)>)>,
    head: HeadConfig,
    config: TrainConfig,
    model_dir: PathBuf,
    output: PathBuf,
    sources: Sources,
}

fn from_args(a: &FinetuneArgs, registry: &Registry) -> anyhow::Result<JobParts> {
    let ResolvedTask {
        spec: task,
        dir: task_dir,
        rows: train_rows,
        source: data_source,
    } = resolve_task(&a.data)?;
    // What is cheap to check comes first (options, then the data files and their columns), so
    // that a typo is found before a model of gigabytes is downloaded.
    if let Some(p) = a.dropout {
        if !(0.0..1.0).contains(&p) {
            bail!("--dropout must be in [0, 1), got {p}");
        }
    }
    let norm = a.norm.config(&registry.normalizers)?;
    let config = TrainConfig {
        lr: a.lr,
        adam: AdamWConfig {
            beta1: a.adam_beta1,
            beta2: a.adam_beta2,
            eps: a.adam_eps,
            weight_decay: a.weight_decay,
        },
        warmup_ratio: a.warmup_ratio,
        schedule: a.schedule,
        grad_accum: a.grad_accum,
        eval_every: a.eval_every,
        patience: a.patience,
        layer_decay: a.layer_decay,
        warmup_steps: a.warmup_steps,
        max_grad_norm: a.max_grad_norm,
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_size,
        eval_batch_size: a.eval_batch_size,
        max_len: a.max_len,
        seed: a.seed,
        save_every: a.save_every,
        trace_grads: a.trace_grads,
        skip_nonfinite: a.skip_nonfinite,
        group_by_length: a.group_by_length,
        warmup_rounding: a.warmup_rounding,
        drop_last: a.drop_last,
        padded: a.padded,
        batch_order: a
            .batch_order
            .as_deref()
            .map(clsnorm::train::BatchOrderFile::of)
            .transpose()?,
        precision: a.rt.precision.precision,
        tf32: a.rt.precision.tf32,
    };
    config.validate()?;
    let opts = ReadOptions {
        skip_bad_rows: a.data.skip_bad_rows,
        require_label: true,
    };
    let data = read_splits(&task, task_dir.as_deref(), train_rows, opts)?;
    let Located {
        dir: model,
        source: model_source,
    } = a.rt.model()?;
    let dropout = match a.dropout {
        Some(p) => p,
        None => registry.families.read_config(&model)?.classifier_dropout(),
    };
    if !(0.0..1.0).contains(&dropout) {
        bail!("--dropout must be in [0, 1), got {dropout}");
    }
    let head = HeadConfig {
        labels: task.labels.clone(),
        cls_source: a.cls_source,
        norm,
        dropout,
        bias_init: a.head_bias_init,
        classifier_init: a.classifier_init,
    };
    let output = a.output.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}-seed{}", task.name, head.norm.name(), a.seed))
    });
    Ok(JobParts {
        task,
        task_dir,
        data: Some(data),
        head,
        config,
        model_dir: model,
        output,
        sources: Sources {
            model_source,
            data_source,
        },
    })
}

/// The thread count for a run: `--threads` if given, else the count a resumed run recorded.
/// libtorch splits CPU reductions by thread, so resuming on another count changes the result
/// in the last bits compared with an uninterrupted run.
fn resume_threads(given: Option<usize>, recorded: Option<usize>) -> Option<usize> {
    match (given, recorded) {
        (Some(g), Some(r)) if g != r => {
            tracing::warn!(
                "resuming with {g} threads where the run used {r}: on CPU the result can differ \
                 in the last bits from an uninterrupted run"
            );
            Some(g)
        }
        (Some(g), _) => Some(g),
        (None, r) => r,
    }
}

/// The job a run directory describes, the libtorch thread count it ran with, and whether it
/// skipped bad rows.
fn from_run_dir(run_dir: &Path, allow_pickle: bool) -> anyhow::Result<(JobParts, usize, bool)> {
    let rc = RunConfig::read(run_dir).context("--resume")?;
    let mut task = rc.task.clone();
    task.train_file = rc.train_file.task_files();
    task.dev_files = rc
        .dev_files
        .iter()
        .map(|(n, i)| (n.clone(), i.task_files()))
        .collect();
    let model_dir = resumed_model(&rc, allow_pickle)?;
    resumed_data(&rc, &mut task)?;
    Ok((
        JobParts {
            task,
            task_dir: None,
            data: None,
            head: rc.head,
            config: rc.train,
            model_dir,
            output: run_dir.to_path_buf(),
            sources: rc.sources,
        },
        rc.threads,
        std::iter::once(&rc.train_file)
            .chain(rc.dev_files.iter().map(|(_, i)| i))
            .any(|i| i.skipped > 0),
    ))
}

/// The data files a resumed run reads: those it recorded, else (gone: another machine's
/// cache, a cleaned one) the same files of the same commit of its Hub dataset.
fn resumed_data(rc: &RunConfig, task: &mut TaskSpec) -> anyhow::Result<()> {
    let recorded = std::iter::once(&rc.train_file).chain(rc.dev_files.iter().map(|(_, i)| i));
    if recorded.clone().all(|i| i.files().all(Path::exists)) {
        return Ok(());
    }
    let Some(src) = &rc.sources.data_source else {
        return Ok(()); // the reader names the missing file
    };
    let Some(old) = rc
        .train_file
        .path
        .ancestors()
        .find(|a| a.file_name() == Some(std::ffi::OsStr::new(&src.commit)))
    else {
        return Ok(());
    };
    // The same files of the same commit: their paths inside the snapshot.
    let inside: Vec<String> = recorded
        .flat_map(FileInfo::files)
        .filter_map(|p| p.strip_prefix(old).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let repo = RepoRef::dataset(&src.repo, &src.commit)?;
    let pick = |_: &[&str]| -> Result<Vec<String>, String> { Ok(inside.clone()) };
    let complete = |snap: &Path| -> Option<Vec<String>> {
        inside
            .iter()
            .all(|f| snap.join(f).exists())
            .then(|| inside.clone())
    };
    let what = format!("the data of the run ({}@{})", src.repo, src.commit);
    let found = clsnorm::hub::dataset(&HubEnv::from_process()?, &repo, &pick, &complete, &what)
        .with_context(|| {
            format!(
                "--resume: the run's data in {} is gone, and {}@{} could not be fetched again",
                old.display(),
                src.repo,
                src.commit
            )
        })?;
    let moved = |p: &str| match Path::new(p).strip_prefix(old) {
        Ok(rel) => found.dir.join(rel).to_string_lossy().into_owned(),
        Err(_) => p.to_string(),
    };
    task.train_file = task.train_file.map(moved);
    for (_, f) in &mut task.dev_files {
        *f = f.map(moved);
    }
    Ok(())
}

/// The model a resumed run continues from: the folder it recorded, else (moved, or another
/// machine's cache) the same commit of its Hub repo, from this machine's cache or the Hub. A
/// run with a checkpoint continues from that and needs neither: the recorded path is kept when
/// nothing else is found, and a run without one says so when it loads it.
fn resumed_model(rc: &RunConfig, allow_pickle: bool) -> anyhow::Result<PathBuf> {
    let Some(src) = rc
        .sources
        .model_source
        .as_ref()
        .filter(|_| !rc.model.is_dir())
    else {
        return Ok(rc.model.clone());
    };
    let pinned = src.pinned();
    let env = HubEnv::from_process()?;
    match clsnorm::hub::model(Path::new(&pinned.display()), &env, allow_pickle) {
        Ok(found) => Ok(found.dir),
        Err(e) => {
            tracing::warn!(
                "--resume: the run's model folder {} is gone, and {} could not be fetched again \
                 ({e}); continuing from the run's checkpoint",
                rc.model.display(),
                pinned.display()
            );
            Ok(rc.model.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{on_signal, resume_threads, OnSignal};
    use std::time::{Duration, Instant};

    #[test]
    fn a_resume_keeps_the_recorded_thread_count_unless_told_otherwise() {
        assert_eq!(resume_threads(None, Some(3)), Some(3));
        assert_eq!(resume_threads(Some(5), Some(3)), Some(5));
        assert_eq!(resume_threads(Some(2), None), Some(2));
        assert_eq!(resume_threads(None, None), None);
    }

    #[test]
    fn a_signal_repeated_within_a_second_is_the_same_interrupt() {
        let t0 = Instant::now();
        let mut first = None;
        assert_eq!(on_signal(&mut first, t0), OnSignal::Interrupt);
        let soon = t0 + Duration::from_millis(999);
        assert_eq!(on_signal(&mut first, soon), OnSignal::SameInterrupt);
        assert_eq!(on_signal(&mut first, soon), OnSignal::SameInterrupt);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(on_signal(&mut first, later), OnSignal::Quit);
    }
}
