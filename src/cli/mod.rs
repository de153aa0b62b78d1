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

/// libtorch's OpenMP threads wait for the next parallel region between regions: libgomp's
/// default spins a few milliseconds first, which answers the hundreds of regions of a training
/// step at once (an RTE update on 2 threads took 10% longer with sleeping threads, measured
/// 2026-12-07: docs/performance.md). But on a machine where another process occupies a core,
/// the spinning takes that core's time slices from the thread that has work: a 2-thread MiniLM
/// step beside one busy process took 1.5x as long as a 1-thread step (10x was seen on a loaded
/// machine), and with `OMP_WAIT_POLICY=PASSIVE` it costs what the lost core is worth. So a
/// command that will run libtorch on more than one thread looks, when it starts, whether the
/// machine has a core free for each of its threads ([`cores_free_for`]); when it has not, the
/// command re-executes itself once with `OMP_WAIT_POLICY=PASSIVE` (libgomp reads the variable
/// once, when it is loaded, before `main`; same pid, arguments and streams). A value the user
/// set (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`) is kept.
pub fn openmp_wait_policy(cli: &Cli) {
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.unwrap_or(cores);
    if threads <= 1
        || std::env::var_os(VAR).is_some()
        || std::env::var_os("GOMP_SPINCOUNT").is_some()
    {
        return;
    }
    if cores_free_for(threads, cores) {
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

/// Whether `threads` threads find a core each among the `cores` this process may use, beside
/// the tasks running on the machine now: the fewest runnable tasks other than this one in
/// three looks 10 ms apart (`/proc/loadavg`; a busy process is runnable at every look, a
/// passing one not). Unknown (no `/proc`): not free.
fn cores_free_for(threads: usize, cores: usize) -> bool {
    let mut others = usize::MAX;
    for look in 0..3 {
        if look > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let Some(runnable) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .as_deref()
            .and_then(runnable_tasks)
        else {
            return false;
        };
        // The count includes this process, which is running as it reads.
        others = others.min(runnable.saturating_sub(1));
    }
    others.saturating_add(threads) <= cores
}

/// The runnable tasks of a `/proc/loadavg` line (`0.52 0.58 0.59 3/245 12345`: the `3`).
fn runnable_tasks(loadavg: &str) -> Option<usize> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
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

#[cfg(test)]
mod tests {
    #[test]
    fn runnable_tasks_are_read_from_loadavg() {
        assert_eq!(
            super::runnable_tasks("0.52 0.58 0.59 3/245 12345\n"),
            Some(3)
        );
        assert_eq!(super::runnable_tasks("0.52 0.58 0.59"), None);
        assert_eq!(super::runnable_tasks("0.52 0.58 0.59 x/245 1"), None);
    }
}
