//! The option groups several commands share, declared once.
use std::path::PathBuf;

use clap::Args;
use clsnorm::device::DeviceChoice;
use clsnorm::hub::{HubEnv, Located};
use clsnorm::normalize::{NormConfig, Normalizers, OptionMap};
use clsnorm::precision::Precision;

/// Options every command that runs a model takes.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Hugging Face model directory (config.json, tokenizer, weights), or a Hub id
    /// (`bert-base-cased`, `FacebookAI/roberta-base`, `ORG/NAME@REVISION`): from the local
    /// Hugging Face cache, else downloaded into it (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE,
    /// HF_HOME / HF_HUB_CACHE as the Hugging Face libraries read them).
    /// Default: all-MiniLM-L6-v2, from `models/all-MiniLM-L6-v2` of the working directory or of
    /// clsnorm's own checkout (`scripts/setup.sh` puts it there), else
    /// `sentence-transformers/all-MiniLM-L6-v2` from the Hub.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// libtorch CPU threads (default: all cores; with --resume, the count the run used).
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Allow reading pytorch_model.bin, a Python pickle that can run code when loaded.
    #[arg(long)]
    pub allow_pickle: bool,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

/// How the encoder computes: fp32, or mixed precision.
#[derive(Debug, Args)]
pub struct PrecisionArgs {
    /// fp32, or mixed precision as torch.autocast: bf16, or fp16 (with dynamic loss scaling
    /// in training). Weights, gradients, optimizer state and checkpoints stay fp32; the
    /// normalizer, head and loss run in fp32.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Let CUDA run fp32 matmuls in TF32 (faster, ~1e-3 relative error; off by default).
    #[arg(long)]
    pub tf32: bool,
}

impl PrecisionArgs {
    /// Checks the choice against `device` and sets TF32 if asked.
    pub fn apply(&self, device: tch::Device) -> anyhow::Result<Precision> {
        self.precision.warn_if_emulated(device);
        if self.tf32 {
            clsnorm::precision::set_tf32(true)?;
        }
        Ok(self.precision)
    }
}

impl RuntimeArgs {
    /// The model directory `--model` names (see [`RuntimeArgs::model`]).
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(self.model()?.dir)
    }

    /// The model `--model` names: a directory, else a Hub id from the local Hugging Face cache
    /// or, unless HF_HUB_OFFLINE is set, downloaded into it; with the repo and commit it came
    /// from.
    pub fn model(&self) -> anyhow::Result<Located> {
        resolve_model(
            self.model.as_deref(),
            &HubEnv::from_process()?,
            self.allow_pickle,
        )
    }
}

/// The model `--model` names (`None`: the default). `models/all-MiniLM-L6-v2`, the default
/// written out (as sweep files do), is the default wherever it runs, not a Hub repo of an
/// organisation called `models`.
pub fn resolve_model(
    model: Option<&std::path::Path>,
    env: &HubEnv,
    allow_pickle: bool,
) -> anyhow::Result<Located> {
    match model {
        Some(m) if m.is_dir() || m != std::path::Path::new(DEFAULT_MODEL_DIR) => {
            Ok(clsnorm::hub::model(m, env, allow_pickle)?)
        }
        _ => default_model(env),
    }
}

/// The default model's folder in a checkout, and its Hub id.
const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// all-MiniLM-L6-v2 wherever clsnorm runs: the working directory's `models/` (this project's
/// machines), the `models/` of the checkout the binary was built in (`target/*/clsnorm`, run
/// from anywhere), else the Hub's copy (from the Hugging Face cache, or downloaded).
fn default_model(env: &HubEnv) -> anyhow::Result<Located> {
    let mut looked = vec![PathBuf::from(DEFAULT_MODEL_DIR)];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/clsnorm -> the checkout's root.
        if let Some(root) = exe
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.parent())
        {
            looked.push(root.join(DEFAULT_MODEL_DIR));
        }
    }
    if let Some(dir) = looked.iter().find(|d| d.join("config.json").is_file()) {
        return Ok(Located {
            dir: dir.clone(),
            source: None,
        });
    }
    clsnorm::hub::model(std::path::Path::new(DEFAULT_MODEL_ID), env, false).map_err(|e| {
        anyhow::anyhow!(
            "no --model given, and the default all-MiniLM-L6-v2 is in none of {}, and not \
             available from the Hub ({e}); run scripts/setup.sh in clsnorm's checkout, or give \
             --model",
            looked
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// A batch size: 1 to 65,536.
pub fn parse_batch_size(s: &str) -> Result<usize, String> {
    parse_count(s, 1, clsnorm::train::limits::MAX_BATCH)
}

/// A thread count: 1 to 1,024.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    parse_count(s, 1, clsnorm::train::limits::MAX_THREADS)
}

/// A token count: 3 to 65,536.
pub fn parse_max_len(s: &str) -> Result<usize, String> {
    parse_count(s, 3, clsnorm::train::limits::MAX_LEN)
}

fn parse_count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: clsnorm::Error| e.to_string())
}

/// Options shared by commands that load a checkpoint.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// A checkpoint directory written by `clsnorm finetune` (e.g. runs/NAME/best).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 64, value_parser = parse_batch_size)]
    pub batch_size: usize,
    /// Skip malformed rows (counted and logged) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

/// Where data comes from: a GLUE task under a data directory, or custom files.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI; any case), or a name
    /// for a custom task given with --train-file or --dataset.
    #[arg(long)]
    pub task: Option<String>,
    /// A Hub dataset by name, as `datasets.load_dataset(NAME, CONFIG, revision=REVISION)`
    /// reads it: its Parquet, CSV or JSON Lines files, else the Hub's Parquet conversion
    /// (README, "Datasets").
    #[arg(
        long,
        value_name = "ORG/NAME[:CONFIG][@REVISION]",
        conflicts_with_all = ["train_file", "dev_file", "format", "no_header"]
    )]
    pub dataset: Option<String>,
    /// The split of --dataset to train on.
    #[arg(long, default_value = "train", requires = "dataset")]
    pub train_split: String,
    /// The split of --dataset to evaluate on (default: validation, else test, which must then
    /// be labelled).
    #[arg(long, requires = "dataset")]
    pub dev_split: Option<String>,
    /// Directory holding GLUE's TASK/{train,dev}.tsv.
    #[arg(long, env = "GLUE_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Custom training file (.tsv, .csv, .jsonl or .parquet).
    #[arg(long)]
    pub train_file: Option<PathBuf>,
    /// Custom dev file, same format as the training file.
    #[arg(long, requires = "train_file")]
    pub dev_file: Option<PathBuf>,
    /// Format of custom files (default: from the extension).
    #[arg(long, value_parser = ["tsv", "csv", "jsonl", "parquet"])]
    pub format: Option<String>,
    /// Column (name, or 0-based index with --no-header) of the text [default: text; of a
    /// --dataset, inferred].
    #[arg(long)]
    pub text_col: Option<String>,
    /// Column of the second text of a pair [of a --dataset, inferred].
    #[arg(long)]
    pub text_pair_col: Option<String>,
    /// Column of the label [default: label].
    #[arg(long)]
    pub label_col: Option<String>,
    /// Custom files have no header row.
    #[arg(long)]
    pub no_header: bool,
    /// The custom label is a real number (one output, MSE loss).
    #[arg(long)]
    pub regression: bool,
    /// Skip malformed rows (counted and logged) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_rows: bool,
}

/// The normalizer between the [CLS] vector and the classifier, and its options.
#[derive(Debug, Args)]
pub struct NormArgs {
    /// none, center, standardize, batchnorm, layernorm, isobn, whiten or l2 (README,
    /// "Normalizers").
    #[arg(long, default_value = "none")]
    pub norm: String,
    /// An option of the normalizer, KEY=VALUE (repeatable; a bare KEY sets a switch), e.g.
    /// `--norm isobn --norm-opt beta=0.25`, `--norm batchnorm --norm-opt affine`. The options
    /// and their defaults are in the README's normalizer table.
    #[arg(long = "norm-opt", value_name = "KEY=VALUE")]
    pub norm_opt: Vec<String>,
}

impl NormArgs {
    /// The normalizer config, checked against `norms`: unknown names and options, wrong types
    /// and out-of-range values are refused.
    pub fn config(&self, norms: &Normalizers) -> anyhow::Result<NormConfig> {
        let mut given = OptionMap::new();
        for opt in &self.norm_opt {
            let (key, value) = parse_option(opt);
            if given.insert(key.replace('-', "_"), value).is_some() {
                anyhow::bail!(
                    "--norm-opt {} is given twice",
                    clsnorm::excerpt::quoted(key)
                );
            }
        }
        Ok(norms.config(&self.norm, &given)?)
    }
}

/// `KEY=VALUE` as a JSON value (a number, `true`/`false`, `null`, else a string); a bare `KEY`
/// is `true`.
fn parse_option(s: &str) -> (&str, serde_json::Value) {
    match s.split_once('=') {
        Some((k, v)) => (
            k.trim(),
            serde_json::from_str(v.trim()).unwrap_or_else(|_| serde_json::Value::String(v.into())),
        ),
        None => (s.trim(), serde_json::Value::Bool(true)),
    }
}
