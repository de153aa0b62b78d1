//! `clsnorm analyze`: statistics and pictures of the [CLS] embeddings of a model on a dataset.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clsnorm::analyze::{self, plots, EmbeddingStats};
use clsnorm::classifier::{Classifier, ClsSource};
use clsnorm::data::{read_dataset, ReadOptions};
use clsnorm::device::set_threads;
use clsnorm::encoder::Encoder;
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
    let out = clsnorm::batch::infer(
        encs,
        batch_size,
        pad,
        &enc.limits(),
        enc.vs.device(),
        |b| {
            let out = enc.forward(b, false);
            vec![
                out.pooler_output.to_device(tch::Device::Cpu),
                out.cls.to_device(tch::Device::Cpu),
            ]
        },
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    match <[Tensor; 2]>::try_from(out) {
        Ok([pooled, cls]) => Ok((pooled, cls)),
        Err(_) => bail!("no examples to analyse"),
    }
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

pub fn run(a: AnalyzeArgs) -> anyhow::Result<()> {
    set_threads(a.rt.threads)?;
    let device = a.rt.device.resolve()?;
    let registry = Registry::builtin();
    let (task, task_dir, _) = resolve_task(&a.data)?;
    let (model_dir, mut analysed) = match &a.checkpoint {
        Some(dir) => {
            let (model, _) = clsnorm::train::checkpoint::load_model(dir, device, &registry)
                .with_context(|| format!("loading {}", dir.display()))?;
            (dir.clone(), Analysed::Checkpoint(Box::new(model)))
        }
        None => {
            let model = a.rt.model_dir()?;
            let enc = Encoder::load(&model, device, a.rt.allow_pickle)?;
            (model, Analysed::Model(enc))
        }
    };
    analysed.encoder().precision = a.rt.precision.apply(device)?;
    // The trained normalizer, and the source it normalizes.
    let trained = match (&analysed, a.trained_norm) {
        (Analysed::Checkpoint(c), true) => {
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
            Some((c.as_ref(), source))
        }
        _ => None,
    };
    let enc = match &analysed {
        Analysed::Checkpoint(c) => &c.encoder,
        Analysed::Model(e) => e,
    };
    let tok = TextTokenizer::load(&model_dir, a.max_len)?;
    enc.limits()
        .check_tokenizer(&tok, task.text_pair.is_some())?;
    let (train_path, dev_paths) = task.paths(task_dir.as_deref());
    let path = match a.split {
        Split::Train => train_path,
        Split::Dev => match dev_paths.first() {
            Some((_, p)) => p.clone(),
            None => bail!("task {} has no dev file", task.name),
        },
    };
    let opts = ReadOptions {
        skip_bad_rows: a.data.skip_bad_rows,
        require_label: false,
    };
    let ds = read_dataset(&path, &task, opts)?;
    let t0 = std::time::Instant::now();
    let encs = tok.encode_dataset(&ds)?;
    let (pooler, cls) = embed_all(enc, &encs, a.batch_size, tok.pad_id(), a.quiet)?;
    let embed_secs = t0.elapsed().as_secs_f64();
    let out_dir = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("analysis").join(&task.name));
    clsnorm::rundir::check_output_dir(&out_dir, "analysis.json")?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let norm = a.norm.config(&registry.normalizers)?;
    let norm_label = match trained {
        Some((c, _)) => format!("trained-{}", c.config.norm.name()),
        None => norm.name().to_string(),
    };
    let sources: Vec<(&str, &Tensor)> = match a.cls_source {
        Source::Pooler => vec![("pooler", &pooler)],
        Source::Hidden => vec![("hidden", &cls)],
        Source::Both => vec![("hidden", &cls), ("pooler", &pooler)],
    };
    let mut report = serde_json::Map::new();
    let mut sections: Vec<(String, EmbeddingStats, Option<EmbeddingStats>)> = Vec::new();
    for (name, x) in sources {
        let (raw, det) = analyze::compute(x, a.cosine_sample, a.seed);
        let mut entry = json!({ "raw": raw });
        let mut after = None;
        let mut after_det = None;
        let normalized = match trained {
            Some((c, source)) if source == name => Some(c.normalize(x).to_device(tch::Device::Cpu)),
            Some(_) => None,
            None if norm.is_none() => None,
            None => Some(analyze::normalize_as_trained(
                &registry.normalizers,
                &norm,
                &x.to_kind(Kind::Float),
                a.seed,
            )?),
        };
        if let Some(y) = normalized {
            let (s, d) = analyze::compute(&y, a.cosine_sample, a.seed);
            entry["normalized"] = match trained {
                Some((c, _)) => json!({ "norm": c.config.norm, "trained": true, "stats": s }),
                None => json!({ "norm": norm, "stats": s }),
            };
            after = Some(s);
            after_det = Some(d);
        }
        plots::write_all(
            &out_dir,
            name,
            &det,
            after_det.as_ref().map(|d| (norm_label.as_str(), d)),
        )?;
        report.insert(name.to_string(), entry);
        sections.push((name.to_string(), raw, after));
    }
    let state: Vec<analyze::StateSummary> = trained
        .map(|(c, _)| {
            c.normalizer_state()
                .iter()
                .map(|(name, t)| analyze::state_summary(name, t))
                .collect()
        })
        .unwrap_or_default();
    let doc = json!({
        "model": model_dir,
        "task": task.name,
        "split": format!("{:?}", a.split).to_lowercase(),
        "file": path,
        "examples": ds.examples.len(),
        "max_len": a.max_len,
        "embed_secs": embed_secs,
        "sources": report,
        "normalizer_state": state,
    });
    clsnorm::atomic::write_json(&out_dir.join("analysis.json"), &doc)?;
    let md = plots::markdown(
        &task.name,
        &format!("{:?}", a.split).to_lowercase(),
        &model_dir.display().to_string(),
        ds.examples.len(),
        embed_secs,
        &norm_label,
        &sections,
    ) + &plots::state_markdown(&norm_label, &state);
    clsnorm::atomic::write_bytes(&out_dir.join("analysis.md"), md.as_bytes())?;
    tracing::info!(
        examples = ds.examples.len(),
        secs = format!("{embed_secs:.1}"),
        "wrote {}",
        out_dir.join("analysis.md").display()
    );
    Ok(())
}
