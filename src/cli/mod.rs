//! Subcommands and the options they share.
mod analyze;
mod args;
mod compare;
mod embed;
mod export;
mod fetch;
mod finetune;
mod hub_data;
mod predict;
mod stream;
mod sweep;

use clap::{Parser, Subcommand};

pub use args::{
    parse_batch_size, parse_max_len, parse_threads, CheckpointArgs, DataArgs, NormArgs, RuntimeArgs,
};

/// Fine-tune BERT-family encoders with a normalized [CLS] embedding.
#[derive(Debug, Parser)]
#[command(
    name = "clsnorm",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CLSNORM_BUILD"), ")"),
    about
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tokenize a sentence (or pair) and print its [CLS] state and pooler output as JSON.
    Embed(embed::EmbedArgs),
    /// Download models, GLUE tasks and datasets from the Hugging Face Hub into its local cache, ahead of
    /// runs on machines without internet (which then set HF_HUB_OFFLINE=1).
    Fetch(fetch::FetchArgs),
    /// Fine-tune encoder and classifier jointly on a GLUE task or custom data.
    Finetune(Box<finetune::FinetuneArgs>),
    /// Label new examples with a fine-tuned checkpoint (JSON lines: label and probabilities).
    Predict(predict::PredictArgs),
    /// Recompute dev metrics from a fine-tuned checkpoint.
    Evaluate(predict::EvaluateArgs),
    /// Write a checkpoint as a folder transformers loads as a sequence classifier (with its
    /// normalizer), with a model card.
    Export(export::ExportArgs),
    /// Statistics and pictures of the [CLS] embeddings of a model on a dataset.
    Analyze(Box<analyze::AnalyzeArgs>),
    /// Overlay the gradient traces of runs trained with --trace-grads (e.g. none vs isobn).
    CompareGrads(compare::CompareGradsArgs),
    /// Run a sweep (tasks x normalizers x seeds x options) from a TOML file, or a shard of it.
    Sweep(sweep::SweepArgs),
    /// Compare the runs of a sweep: report.md, results.csv, results.json and curves.
    Report(sweep::ReportArgs),
}

/// libtorch's OpenMP threads spin at every barrier by default: on a machine where another
/// process uses a core, the spinning takes that core's time slices from the thread that has
/// work, and a 2-thread MiniLM step beside one busy process took 1.5x as long as a 1-thread
/// step (10x was seen on a loaded machine). With `OMP_WAIT_POLICY=PASSIVE` the same step costs
/// what the lost core is worth, for about 3% on an idle machine (docs/performance.md).
/// libgomp reads the variable once, when it is loaded, before `main`; so a command that will
/// run libtorch on more than one thread re-executes itself once with the variable set
/// (same pid, arguments and streams). A value the user set is kept.
pub fn passive_openmp(cli: &Cli) {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "OMP_WAIT_POLICY";
    let threads = match &cli.command {
        Command::Embed(a) => a.rt.threads,
        // A resumed run keeps the thread count it recorded.
        Command::Finetune(a) => a.rt.threads.or_else(|| {
            let dir = a.resume.as_ref()?;
            clsnorm::train::RunConfig::read(dir)
                .ok()
                .map(|rc| rc.threads)
        }),
        Command::Analyze(a) => a.rt.threads,
        Command::Predict(a) => a.ck.threads,
        Command::Evaluate(a) => a.ck.threads,
        // Its runs are processes of their own, which inherit the variable.
        Command::Sweep(_) => None,
        Command::CompareGrads(_) | Command::Report(_) | Command::Fetch(_) | Command::Export(_) => {
            return
        }
    };
    if threads == Some(1) || std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // Returns only if the exec failed; then this process simply continues.
    let e = cmd.args(args).env(VAR, "PASSIVE").exec();
    eprintln!("note: could not re-execute with {VAR}=PASSIVE ({e}); continuing");
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colour codes in log files (e.g. a sweep's logs/RUN.log).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Finetune(a) => {
            if a.resume.is_some() {
                if let Some(("finetune", sub)) = matches.subcommand() {
                    finetune::refuse_ignored_flags(sub)?;
                }
            }
            finetune::run(*a)
        }
        Command::Predict(a) => predict::predict(a),
        Command::Evaluate(a) => predict::evaluate(a),
        Command::Export(a) => export::run(a),
        Command::Analyze(a) => analyze::run(*a),
        Command::CompareGrads(a) => compare::run(a),
        Command::Sweep(a) => sweep::sweep(a),
        Command::Report(a) => sweep::report(a),
    }
}

/// Prints to stdout; a closed pipe (`clsnorm ... | head`) is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
