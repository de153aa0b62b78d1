//! `clsnorm analyze`: statistics and pictures of the [CLS] embeddings of a model on a dataset.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clsnorm::analyze::{self, plots, EmbeddingStats};
use clsnorm::classifier::{Classifier, ClsSource};
use clsnorm::data::{read_split, ReadOptions};
use clsnorm::device::set_threads;
use clsnorm::encoder::Encoder;
use clsnorm::precision::Precision;
use clsnorm::rundir::owner::OutputKind;
use clsnorm::tokenize::{Encoded, TextTokenizer};
use clsnorm::Registry;
use serde_json::json;
use tch::{Kind, Tensor};

use super::finetune::resolve_task;
use super::{DataArgs, NormArgs, RuntimeArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Pooler,
    Hidden,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Dev,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Analyse the encoder of a fine-tuned checkpoint instead of --model.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Split::Train)]
    pub split: Split,
    /// Which vector: the pooler output, the raw last-layer [CLS] state, or both.
    #[arg(long, value_enum, default_value_t = Source::Both)]
    pub cls_source: Source,
    #[command(flatten)]
    pub norm: NormArgs,
    /// With --checkpoint: apply the checkpoint's own normalizer, with the statistics it saved,
    /// to the [CLS] source it was trained on (instead of fitting --norm afresh), and summarise
    /// its saved state in the report.
    #[arg(long, requires = "checkpoint", conflicts_with_all = ["norm", "norm_opt"])]
    pub trained_norm: bool,
    #[arg(long, default_value_t = 128, value_parser = super::parse_max_len)]
    pub max_len: usize,
    #[arg(long, default_value_t = 64, value_parser = super::parse_batch_size)]
    pub batch_size: usize,
    /// Vectors in the pairwise-cosine subset (at most 20,000: the pairs grow quadratically).
    #[arg(long, default_value_t = 2000, value_parser = parse_cosine_sample)]
    pub cosine_sample: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory (default analysis/TASK).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_cosine_sample(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (2..=20_000).contains(&v) => Ok(v),
        _ => Err("expected a whole number from 2 to 20000".into()),
    }
}

/// Pooler outputs and raw [CLS] states of every example, in input order.
fn embed_all(
    enc: &Encoder,
    encs: &[Encoded],
    batch_size: usize,
    pad: i64,
    quiet: bool,
) -> anyhow::Result<(Tensor, Tensor)> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(encs.len() as u64)
    };
    let (pooled, cls) = enc.first_token_vectors(encs, batch_size, pad, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    Ok((pooled, cls))
}

/// What is analysed: a fine-tuned checkpoint (encoder, normalizer and head) or a model's
/// encoder.
enum Analysed {
    Checkpoint(Box<Classifier>),
    Model(Encoder),
}

impl Analysed {
    fn encoder(&mut self) -> &mut Encoder {
        match self {
            Analysed::Checkpoint(c) => &mut c.encoder,
            Analysed::Model(e) => e,
        }
    }
}

/// The model, the optional trained normalizer and the vectors of one split.
struct Embedded {
    model_dir: PathBuf,
    analysed: Analysed,
    task: clsnorm::data::TaskSpec,
    path: PathBuf,
    examples: usize,
    embed_secs: f64,
    pooler: Tensor,
    cls: Tensor,
}

pub fn run(a: AnalyzeArgs) -> anyhow::Result<()> {
    set_threads(a.rt.threads)?;
    let registry = Registry::builtin();
    let e = embed_split(&a, &registry)?;
    let out_dir = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("analysis").join(&e.task.name));
    // Claimed before anything is written; held until the record repeats its id.
    let claim = clsnorm::rundir::owner::claim(&out_dir, OutputKind::Analysis)?;
    let trained = trained_normalizer(&a, &e.analysed)?;
    let norm = match trained {
        Some((c, source)) => Norm::Trained(c, source),
        None => Norm::Fitted(a.norm.config(&registry.normalizers)?),
    };
    let sources: Vec<(&str, &Tensor)> = match a.cls_source {
        Source::Pooler => vec![("pooler", &e.pooler)],
        Source::Hidden => vec![("hidden", &e.cls)],
        Source::Both => vec![("hidden", &e.cls), ("pooler", &e.pooler)],
    };
    let analysed: Vec<SourceAnalysis> = sources
        .into_iter()
        .map(|(name, x)| analyse_source(&a, &registry, &norm, name, x))
        .collect::<anyhow::Result<_>>()?;
    write_outputs(&a, &e, &norm, &analysed, &out_dir, &claim.id)
}

/// The normalizer an analysis applies: the checkpoint's own, on the source it was trained on,
/// or one fitted afresh (`--norm`).
enum Norm<'a> {
    Trained(&'a Classifier, &'static str),
    Fitted(clsnorm::normalize::NormConfig),
}

impl Norm<'_> {
    fn label(&self) -> String {
        match self {
            Norm::Trained(c, _) => format!("trained-{}", c.config.norm.name()),
            Norm::Fitted(n) => n.name().to_string(),
        }
    }
}

/// One source's statistics before and (if normalized) after the normalizer.
struct SourceAnalysis {
    name: &'static str,
    raw: EmbeddingStats,
    raw_details: analyze::Details,
    after: Option<(EmbeddingStats, analyze::Details)>,
    entry: serde_json::Value,
}

/// Statistics of one source's vectors, and of them after the normalizer; refuses numbers that
/// are not finite.
fn analyse_source(
    a: &AnalyzeArgs,
    registry: &Registry,
    norm: &Norm,
    name: &'static str,
    x: &Tensor,
) -> anyhow::Result<SourceAnalysis> {
    let (raw, raw_details) = analyze::compute(x, a.cosine_sample, a.seed);
    check_stats(&raw, &format!("the {name} vectors' statistics"))?;
    let mut entry = json!({ "raw": raw });
    let normalized = match norm {
        Norm::Trained(c, source) if *source == name => {
            Some(c.normalize(x).to_device(tch::Device::Cpu))
        }
        Norm::Trained(..) => None,
        Norm::Fitted(n) if n.is_none() => None,
        Norm::Fitted(n) => Some(analyze::normalize_as_trained(
            &registry.normalizers,
            n,
            &x.to_kind(Kind::Float),
            a.seed,
        )?),
    };
    let mut after = None;
    if let Some(y) = normalized {
        let what = format!("the {name} vectors after the {} normalizer", norm.label());
        clsnorm::precision::check_finite(&y, &what, Precision::Fp32)
            .map_err(|e| anyhow::anyhow!("{e} (the normalizer's statistics are extreme)"))?;
        let (s, d) = analyze::compute(&y, a.cosine_sample, a.seed);
        check_stats(&s, &format!("{what}: their statistics"))?;
        entry["normalized"] = match norm {
            Norm::Trained(c, _) => json!({ "norm": c.config.norm, "trained": true, "stats": s }),
            Norm::Fitted(n) => json!({ "norm": n, "stats": s }),
        };
        after = Some((s, d));
    }
    Ok(SourceAnalysis {
        name,
        raw,
        raw_details,
        after,
        entry,
    })
}

/// The pictures, `analysis.json` (with the folder's id) and `analysis.md`.
fn write_outputs(
    a: &AnalyzeArgs,
    e: &Embedded,
    norm: &Norm,
    analysed: &[SourceAnalysis],
    out_dir: &std::path::Path,
    output_id: &str,
) -> anyhow::Result<()> {
    let label = norm.label();
    for s in analysed {
        let after = s.after.as_ref().map(|(_, d)| (label.as_str(), d));
        plots::write_all(out_dir, s.name, &s.raw_details, after)?;
    }
    let state: Vec<analyze::StateSummary> = match norm {
        Norm::Trained(c, _) => c
            .normalizer_state()
            .iter()
            .map(|(name, t)| analyze::state_summary(name, t))
            .collect(),
        Norm::Fitted(_) => Vec::new(),
    };
    let split = format!("{:?}", a.split).to_lowercase();
    let sources: serde_json::Map<String, serde_json::Value> = analysed
        .iter()
        .map(|s| (s.name.to_string(), s.entry.clone()))
        .collect();
    let doc = json!({
        "output_id": output_id,
        "model": e.model_dir,
        "task": e.task.name,
        "split": split,
        "file": e.path,
        "examples": e.examples,
        "max_len": a.max_len,
        "embed_secs": e.embed_secs,
        "sources": sources,
        "normalizer_state": state,
    });
    check_numbers(&doc, "the analysis")?;
    clsnorm::atomic::write_json(&out_dir.join("analysis.json"), &doc)?;
    let sections: Vec<(String, EmbeddingStats, Option<EmbeddingStats>)> = analysed
        .iter()
        .map(|s| {
            let after = s.after.as_ref().map(|(st, _)| st.clone());
            (s.name.to_string(), s.raw.clone(), after)
        })
        .collect();
    let md = plots::markdown(
        &e.task.name,
        &split,
        &e.model_dir.display().to_string(),
        e.examples,
        e.embed_secs,
        &label,
        &sections,
    ) + &plots::state_markdown(&label, &state);
    clsnorm::atomic::write_bytes(&out_dir.join("analysis.md"), md.as_bytes())?;
    tracing::info!(
        examples = e.examples,
        secs = format!("{:.1}", e.embed_secs),
        "wrote {}",
        out_dir.join("analysis.md").display()
    );
    Ok(())
}

/// Refuses statistics with a NaN or infinite number (JSON would write them as `null`).
fn check_stats(s: &EmbeddingStats, what: &str) -> anyhow::Result<()> {
    check_numbers(&serde_json::to_value(s)?, what)
}

/// Refuses a JSON document with a `null`: the documents analyze writes have none but where a
/// number was NaN or infinite.
fn check_numbers(v: &serde_json::Value, what: &str) -> anyhow::Result<()> {
    fn has_null(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.iter().any(has_null),
            serde_json::Value::Object(o) => o.values().any(has_null),
            _ => false,
        }
    }
    if has_null(v) {
        bail!("{what} are not finite: the vectors' values are too large to summarise (extreme weights or normalizer statistics)");
    }
    Ok(())
}

/// Loads the model or checkpoint, reads the split and embeds every example, in the precision
/// asked for; refuses vectors that are not finite.
fn embed_split(a: &AnalyzeArgs, registry: &Registry) -> anyhow::Result<Embedded> {
    let device = a.rt.device.resolve()?;
    let super::finetune::ResolvedTask {
        spec: task,
        dir: task_dir,
        ..
    } = resolve_task(&a.data)?;
    let (model_dir, mut analysed) = match &a.checkpoint {
        Some(dir) => {
            let (model, _) = clsnorm::train::checkpoint::load_model(dir, device, registry)
                .with_context(|| format!("loading {}", dir.display()))?;
            (dir.clone(), Analysed::Checkpoint(Box::new(model)))
        }
        None => {
            let model = a.rt.model_dir()?;
            let enc = Encoder::load(&model, device, a.rt.allow_pickle)?;
            (model, Analysed::Model(enc))
        }
    };
    let precision = a.rt.precision.apply(device)?;
    analysed.encoder().precision = precision;
    let tok = TextTokenizer::load(&model_dir, a.max_len)?;
    let enc = analysed.encoder();
    enc.limits()
        .check_tokenizer(&tok, task.text_pair.is_some())?;
    let (train_paths, dev_paths) = task.paths(task_dir.as_deref());
    let paths = match a.split {
        Split::Train => train_paths,
        Split::Dev => match dev_paths.first() {
            Some((_, p)) => p.clone(),
            None => bail!("task {} has no dev file", task.name),
        },
    };
    let opts = ReadOptions {
        skip_bad_rows: a.data.skip_bad_rows,
        require_label: false,
    };
    let ds = read_split(&paths, &task, opts)?;
    let t0 = std::time::Instant::now();
    let encs = tok.encode_dataset(&ds)?;
    let (pooler, cls) = embed_all(enc, &encs, a.batch_size, tok.pad_id(), a.quiet)?;
    clsnorm::precision::check_finite(&cls, "the [CLS] vectors", precision)?;
    clsnorm::precision::check_finite(&pooler, "the pooler outputs", precision)?;
    Ok(Embedded {
        model_dir,
        analysed,
        task,
        path: ds.path.clone(),
        examples: ds.examples.len(),
        embed_secs: t0.elapsed().as_secs_f64(),
        pooler,
        cls,
    })
}

/// With `--trained-norm`: the checkpoint's normalizer and the source it was trained on.
fn trained_normalizer<'a>(
    a: &AnalyzeArgs,
    analysed: &'a Analysed,
) -> anyhow::Result<Option<(&'a Classifier, &'static str)>> {
    let Analysed::Checkpoint(c) = analysed else {
        return Ok(None);
    };
    if !a.trained_norm {
        return Ok(None);
    }
    let source = match c.config.cls_source {
        ClsSource::Pooler => "pooler",
        ClsSource::Hidden => "hidden",
    };
    if !matches!(
        (a.cls_source, c.config.cls_source),
        (Source::Both, _)
            | (Source::Pooler, ClsSource::Pooler)
            | (Source::Hidden, ClsSource::Hidden)
    ) {
        bail!("--trained-norm: the checkpoint's normalizer was trained on the {source} vectors; give --cls-source {source} or both");
    }
    Ok(Some((c.as_ref(), source)))
}
