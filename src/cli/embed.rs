//! `clsnorm embed`: the encoder's view of one input, as JSON; or of every row of a file, as
//! JSON lines or a NumPy matrix, streamed a window at a time.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use clsnorm::batch::Batch;
use clsnorm::classifier::ClsSource;
use clsnorm::data::{ReadOptions, TaskSpec};
use clsnorm::device::set_threads;
use clsnorm::encoder::Encoder;
use clsnorm::tokenize::TextTokenizer;
use serde_json::json;

use super::RuntimeArgs;

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// Truncate to this many tokens, special tokens included (default: the model's position
    /// embeddings, at most 512).
    #[arg(long, value_parser = super::parse_max_len)]
    pub max_len: Option<usize>,
    /// The sentence (or --input).
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    pub text: Option<String>,
    /// Optional second sentence of a pair.
    pub pair_text: Option<String>,
    #[command(flatten)]
    pub file: EmbedFileArgs,
}

/// `embed --input`: one vector per row of a file.
#[derive(Debug, Args)]
#[command(next_help_heading = "Embedding a file")]
pub struct EmbedFileArgs {
    /// A file of texts (.tsv, .csv, .jsonl or .parquet): one vector per row, in input order.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where to write: a `.npy` file (a float32 matrix [rows, hidden] that `numpy.load` reads;
    /// a run stopped early leaves the rows before it) or JSON lines (`{"line": N, "cls":
    /// [...]}`, or "pooler_output"), by default to standard output. A new or empty file; an
    /// existing one only with --overwrite. Rows --skip-bad-rows skips have no vector (the
    /// JSON lines name their line; the log counts them).
    #[arg(long, requires = "input")]
    pub output: Option<PathBuf>,
    /// Replace the --output file if it exists.
    #[arg(long, requires = "output")]
    pub overwrite: bool,
    /// Which vector: the pooler output or the raw last-layer [CLS] state.
    #[arg(long, value_enum, default_value_t = ClsSource::default(), requires = "input")]
    pub cls_source: ClsSource,
    /// Column (name, or 0-based index with --no-header) of the text.
    #[arg(long, default_value = "text", requires = "input")]
    pub text_col: String,
    /// Column of the second text of a pair.
    #[arg(long, requires = "input")]
    pub text_pair_col: Option<String>,
    /// Format of the input (default: from its extension).
    #[arg(long, value_parser = ["tsv", "csv", "jsonl", "parquet"], requires = "input")]
    pub format: Option<String>,
    /// The input has no header row.
    #[arg(long, requires = "input")]
    pub no_header: bool,
    /// Skip malformed rows (counted and logged) instead of stopping at the first.
    #[arg(long, requires = "input")]
    pub skip_bad_rows: bool,
    #[arg(long, default_value_t = 64, value_parser = super::parse_batch_size)]
    pub batch_size: usize,
    /// Rows read, tokenized and computed at a time (sorted by length within).
    #[arg(long, default_value_t = 8192, value_parser = super::parse_batch_size)]
    pub window: usize,
}

fn vector_json(t: &tch::Tensor) -> anyhow::Result<serde_json::Value> {
    let v: Vec<f32> = Vec::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1))?;
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    Ok(json!({ "norm": norm, "values": v }))
}

pub fn run(a: EmbedArgs) -> anyhow::Result<()> {
    set_threads(a.rt.threads)?;
    let device = a.rt.device.resolve()?;
    let model = a.rt.model_dir()?;
    let mut enc = Encoder::load(&model, device, a.rt.allow_pickle)
        .with_context(|| format!("loading model {}", model.display()))?;
    enc.precision = a.rt.precision.apply(device)?;
    let limits = enc.limits();
    let max_len = a.max_len.unwrap_or(limits.max_positions.min(512));
    let tok = TextTokenizer::load(&model, max_len)?;
    let Some(text) = &a.text else {
        return embed_file(&a.file, &enc, &tok);
    };
    limits.check_tokenizer(&tok, a.pair_text.is_some())?;
    let e = tok.encode(text, a.pair_text.as_deref())?;
    let batch = Batch::collate(&[&e], tok.pad_id(), &limits, device)?;
    let out = tch::no_grad(|| enc.forward_first_token(&batch, false));
    clsnorm::precision::check_finite(&out.cls, "the [CLS] vector", enc.precision)?;
    clsnorm::precision::check_finite(&out.pooler_output, "the pooler output", enc.precision)?;
    let report = json!({
        "model": model,
        "device": format!("{device:?}"),
        "precision": enc.precision,
        "tokens": tok.tokens(&e.input_ids),
        "input_ids": e.input_ids,
        "token_type_ids": e.token_type_ids,
        "cls": vector_json(&out.cls)?,
        "pooler_output": vector_json(&out.pooler_output)?,
    });
    super::print_stdout(&serde_json::to_string_pretty(&report)?)
}

/// Where `embed --input` writes.
enum Sink {
    Npy(clsnorm::npy::NpyWriter),
    Lines(super::stream::JsonLines),
}

fn embed_file(a: &EmbedFileArgs, enc: &Encoder, tok: &TextTokenizer) -> anyhow::Result<()> {
    let Some(input) = &a.input else {
        bail!("give a TEXT or --input FILE");
    };
    let format = super::finetune::file_format(a.format.as_deref(), input)?;
    // A task of texts only: labels, where the file has a column of that name, are ignored.
    let task = TaskSpec::custom(
        "embed",
        format,
        !a.no_header,
        &a.text_col,
        a.text_pair_col.as_deref(),
        "label",
        true,
        &input.to_string_lossy(),
        None,
    )
    .map_err(anyhow::Error::msg)?;
    let limits = enc.limits();
    limits.check_tokenizer(tok, task.text_pair.is_some())?;
    let opts = ReadOptions {
        skip_bad_rows: a.skip_bad_rows,
        require_label: false,
    };
    let (mut sink, created) = match &a.output {
        Some(p) if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) => {
            let (f, created) = super::stream::create_output(p, input, a.overwrite)?;
            let cols = usize::try_from(enc.config.hidden_size())?;
            let writer = clsnorm::npy::NpyWriter::new(p, f, cols);
            let writer = created.keep_or_remove(writer, 0)?;
            (Sink::Npy(writer), created)
        }
        p => {
            let (out, created) = super::stream::JsonLines::open(p.as_deref(), input, a.overwrite)?;
            (Sink::Lines(out), created)
        }
    };
    let key = match a.cls_source {
        ClsSource::Pooler => "pooler_output",
        ClsSource::Hidden => "cls",
    };
    let bar = super::stream::spinner();
    let mut written = 0usize;
    let result = clsnorm::data::read::stream_rows(input, &task, opts, a.window, |mut rows| {
        rows.iter_mut().for_each(|r| r.label = None);
        let lines: Vec<usize> = rows.iter().map(|r| r.line).collect();
        let encs = encode_rows(tok, input, &task, rows)?;
        let vectors = window_vectors(enc, &encs, a.batch_size, tok.pad_id(), a.cls_source)?;
        let values: Vec<f32> =
            Vec::try_from(vectors.flatten(0, -1)).map_err(super::stream::invalid)?;
        match &mut sink {
            Sink::Npy(w) => w.append(&values)?,
            Sink::Lines(out) => {
                let cols = values.len() / lines.len().max(1);
                let mut text = String::new();
                for (line, v) in lines.iter().zip(values.chunks(cols.max(1))) {
                    text.push_str(&json!({ "line": line, key: v }).to_string());
                    text.push('\n');
                }
                out.write_window(&text)?;
            }
        }
        written += lines.len();
        bar.set_position(written as u64);
        Ok(())
    });
    bar.finish_and_clear();
    let skipped = created.keep_or_remove(result, written)?;
    tracing::info!(examples = written, skipped, "embedded");
    Ok(())
}

fn encode_rows(
    tok: &TextTokenizer,
    input: &Path,
    task: &TaskSpec,
    rows: Vec<clsnorm::data::read::RawRow>,
) -> clsnorm::Result<Vec<clsnorm::tokenize::Encoded>> {
    let raw = clsnorm::data::read::RawFile {
        path: input.to_path_buf(),
        rows,
        skipped: 0,
        sha256: String::new(),
    };
    let ds = clsnorm::data::read::dataset_from_rows(raw, task, ReadOptions::default())?;
    tok.encode_dataset(&ds)
}

/// The vectors of one window's encodings, `[n, hidden]` in fp32, in input order.
fn window_vectors(
    enc: &Encoder,
    encs: &[clsnorm::tokenize::Encoded],
    batch_size: usize,
    pad: i64,
    source: ClsSource,
) -> clsnorm::Result<tch::Tensor> {
    let (pooled, cls) = enc.first_token_vectors(encs, batch_size, pad, |_| {})?;
    let v = match source {
        ClsSource::Pooler => pooled,
        ClsSource::Hidden => cls,
    };
    clsnorm::precision::check_finite(&v, "the [CLS] vectors", enc.precision)?;
    Ok(v)
}
