//! `clsnorm predict` and `clsnorm evaluate`: use a fine-tuned checkpoint.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clsnorm::data::{read_split, Format, LabelSpace, ReadOptions};
use clsnorm::device::set_threads;
use clsnorm::tokenize::TextTokenizer;
use clsnorm::train::{checkpoint, Tokenized};
use serde_json::json;

use super::CheckpointArgs;

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub ck: CheckpointArgs,
    /// Examples to label, with the task's text columns (label column optional).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write JSON lines of predictions (default: standard output). A new or empty
    /// file; an existing one only with --overwrite.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Replace the --output file if it exists (whatever it holds: clsnorm cannot tell an
    /// earlier prediction from a user's file of the same form).
    #[arg(long, requires = "output")]
    pub overwrite: bool,
    /// Examples read, tokenized and computed at a time (sorted by length within): memory
    /// stays bounded whatever the file's length, and each window's lines are written and
    /// flushed before the next is read.
    #[arg(long, default_value_t = 8192, value_parser = super::parse_batch_size)]
    pub window: usize,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub ck: CheckpointArgs,
    /// GLUE data directory (GLUE tasks).
    #[arg(long, env = "GLUE_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Evaluate on this file instead of the task's dev split(s).
    #[arg(long)]
    pub file: Option<PathBuf>,
}

type Loaded = (
    clsnorm::classifier::Classifier,
    checkpoint::CheckpointMeta,
    TextTokenizer,
);

fn load(ck: &CheckpointArgs) -> anyhow::Result<Loaded> {
    set_threads(ck.threads)?;
    let device = ck.device.resolve()?;
    let (mut model, meta) =
        checkpoint::load_model(&ck.checkpoint, device, &clsnorm::Registry::builtin())
            .with_context(|| format!("loading checkpoint {}", ck.checkpoint.display()))?;
    model.encoder.precision = ck.precision.apply(device)?;
    let tok = TextTokenizer::load(&ck.checkpoint, meta.max_len)?;
    model
        .encoder
        .limits()
        .check_tokenizer(&tok, meta.task.text_pair.is_some())?;
    Ok((model, meta, tok))
}

pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let (model, meta, tok) = load(&a.ck)?;
    let mut task = meta.task.clone();
    if let Some(f) = Format::from_path(&a.input) {
        task.format = f;
    }
    let opts = ReadOptions {
        skip_bad_rows: a.ck.skip_bad_rows,
        require_label: false,
    };
    let (mut out, created) =
        super::stream::JsonLines::open(a.output.as_deref(), &a.input, a.overwrite)?;
    let bar = super::stream::spinner();
    let mut written = 0usize;
    // A window at a time: read, tokenize, compute (sorted by length inside), and write in
    // input order; each window's lines are complete and flushed before the next is read.
    let result = clsnorm::data::read::stream_rows(&a.input, &task, opts, a.window, |rows| {
        let raw = clsnorm::data::read::RawFile {
            path: a.input.clone(),
            rows,
            skipped: 0,
            sha256: String::new(),
        };
        let ds = clsnorm::data::read::dataset_from_rows(raw, &task, opts)?;
        let encs = tok.encode_dataset(&ds)?;
        let logits = clsnorm::eval::logits(&model, &encs, a.ck.batch_size, tok.pad_id())
            .map_err(super::stream::invalid)?;
        let text =
            prediction_lines(&meta.task.labels, &ds, &logits).map_err(super::stream::invalid)?;
        out.write_window(&text)?;
        written += ds.examples.len();
        bar.set_position(written as u64);
        Ok(())
    });
    bar.finish_and_clear();
    let skipped = created.keep_or_remove(result, written)?;
    tracing::info!(examples = written, skipped, "predicted");
    Ok(())
}

/// One JSON line per example: its class and every class's probability, or its score.
fn prediction_lines(
    labels: &LabelSpace,
    ds: &clsnorm::data::Dataset,
    logits: &tch::Tensor,
) -> anyhow::Result<String> {
    let mut text = String::new();
    match labels {
        LabelSpace::Classes(classes) => {
            let probs: Vec<Vec<f32>> = Vec::try_from(logits.softmax(-1, tch::Kind::Float))?;
            for (e, p) in ds.examples.iter().zip(&probs) {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map_or(0, |(i, _)| i);
                let scores: serde_json::Map<String, serde_json::Value> = classes
                    .iter()
                    .zip(p)
                    .map(|(c, v)| (c.clone(), json!(v)))
                    .collect();
                text.push_str(
                    &json!({"line": e.line, "label": classes[best], "probabilities": scores})
                        .to_string(),
                );
                text.push('\n');
            }
        }
        LabelSpace::Regression => {
            let scores: Vec<f32> = Vec::try_from(logits.squeeze_dim(-1))?;
            for (e, s) in ds.examples.iter().zip(&scores) {
                text.push_str(&json!({"line": e.line, "score": s}).to_string());
                text.push('\n');
            }
        }
    }
    Ok(text)
}

pub fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let (model, meta, tok) = load(&a.ck)?;
    let mut task = meta.task.clone();
    let is_glue = clsnorm::data::glue_task(&task.name).is_some();
    let hub = match (&a.file, &a.data_dir) {
        (None, None) if is_glue => Some(super::finetune::glue_from_hub(&task.name, "main")?.dir),
        _ => None,
    };
    let files: Vec<(String, Vec<PathBuf>)> = match (&a.file, a.data_dir.as_ref().or(hub.as_ref())) {
        (Some(f), _) => vec![("file".into(), vec![f.clone()])],
        (None, _) if !is_glue => task.paths(None).1,
        (None, Some(d)) => {
            // The layout found there (classic TSV or the Hub's parquet), whichever the
            // checkpoint was trained on.
            let (spec, dir) =
                clsnorm::data::task::locate_glue(&task, d).map_err(anyhow::Error::msg)?;
            task = spec;
            task.paths(Some(&dir)).1
        }
        (None, None) => bail!("no data directory: pass --data-dir or set GLUE_DIR, or give --file"),
    };
    let task = &task;
    let opts = ReadOptions {
        skip_bad_rows: a.ck.skip_bad_rows,
        require_label: true,
    };
    let mut report = serde_json::Map::new();
    for (name, paths) in files {
        let ds = read_split(&paths, task, opts)?;
        let t = Tokenized::new(&tok, &ds)?;
        let mut metrics = task.metrics.clone();
        if !metrics.contains(&task.primary) {
            metrics.push(task.primary);
        }
        let m = clsnorm::eval::evaluate(
            &model,
            &t.encs,
            &t.labels,
            &metrics,
            a.ck.batch_size,
            tok.pad_id(),
        )?;
        let mut entry = json!({"file": ds.path, "examples": ds.examples.len(), "metrics": m});
        if !ds.shards.is_empty() {
            entry["more_files"] = json!(ds.shards.iter().map(|(p, _)| p).collect::<Vec<_>>());
        }
        report.insert(name, entry);
    }
    super::print_stdout(&serde_json::to_string_pretty(&report)?)
}
