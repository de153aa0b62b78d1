//! `clsnorm sweep` runs (a shard of) a sweep, each run as a `clsnorm finetune` child process;
//! `clsnorm report` writes the comparison.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser};
use clsnorm::report::{Inputs, Invocation, Records, Report, INVOCATIONS_FILE};
use clsnorm::rundir::owner::OutputKind;
use clsnorm::sweep::pool::{self, Stop};
use clsnorm::sweep::{status, RunStatus, Shard, SweepConfig, SweepPlan};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep file (TOML; see sweeps/minilm-cpu.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Run only the runs at positions I, I+N, I+2N, ... of the plan (0-based I).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Print the runs (name, status, command) instead of running them.
    #[arg(long)]
    pub list: bool,
    /// Runs executed at the same time on this machine, each with cores/K libtorch threads
    /// unless the sweep sets `threads`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// libtorch threads of each run (default: cores / --jobs, unless the sweep sets them).
    #[arg(long, value_parser = super::parse_threads)]
    pub threads: Option<usize>,
    /// Submit the sweep to Slurm instead: a job array with one task per run (requeue-safe:
    /// runs resume), and a report job after it (README, "Slurm").
    #[arg(long, conflicts_with_all = ["shard", "list"])]
    pub slurm: bool,
    /// Slurm: array tasks running at the same time.
    #[arg(long, default_value_t = 8, requires = "slurm")]
    pub slurm_concurrent: usize,
    /// Slurm: CPUs per task (the runs' threads).
    #[arg(long, default_value_t = 4, requires = "slurm")]
    pub slurm_cpus: usize,
    /// Slurm: GPUs per task (`--gres=gpu:G`).
    #[arg(long, default_value_t = 0, requires = "slurm")]
    pub slurm_gpus: usize,
    /// Slurm: time limit of each task (e.g. 24:00:00).
    #[arg(long, requires = "slurm")]
    pub slurm_time: Option<String>,
    /// Slurm: another sbatch option for the array, verbatim (e.g. --slurm-arg=--partition=gpu).
    #[arg(long, requires = "slurm", allow_hyphen_values = true)]
    pub slurm_arg: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The sweep directory (holding sweep.json).
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub sweep_dir: Option<PathBuf>,
    /// Plan the report from a sweep file instead (e.g. before `clsnorm sweep` has run).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write report.md, results.csv, results.json and the pictures (default: the
    /// sweep directory).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Take the finished runs that the sweep directory lacks from the results.json of an
    /// earlier report of the same sweep (e.g. after deleting run directories to free disk).
    /// Repeatable; a finished run directory wins over any record.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub runs_from: Vec<PathBuf>,
    /// A replication of the same sweep design (e.g. run on a GPU, whose seeds draw other
    /// dropout masks): the finished runs of its report's results.json join this sweep's as runs
    /// of their own, paired within the replication. Repeatable; a label given twice joins its
    /// files (the first holding a run wins).
    #[arg(long, value_name = "LABEL=RESULTS_JSON")]
    pub replication: Vec<String>,
    /// Also compare variant A with variant B on every task that has both (A minus B, paired by
    /// seed), e.g. `--pair isobn_cls-source=hidden,isobn_cls-source=pooler`. Repeatable.
    #[arg(long, value_name = "A,B")]
    pub pair: Vec<String>,
}

/// Parses every run's command as `clsnorm` would, so that a typo fails now and not hours in.
fn validate(plan: &SweepPlan) -> anyhow::Result<()> {
    for run in &plan.runs {
        let words = std::iter::once("clsnorm".to_string()).chain(run.command(&plan.dir));
        let cli = super::Cli::try_parse_from(words)
            .map_err(|e| anyhow::anyhow!("run {}: {}", run.name, e.render().to_string().trim()))?;
        if let super::Command::Finetune(a) = cli.command {
            a.norm
                .config(&clsnorm::normalize::Normalizers::builtin())
                .with_context(|| format!("run {}", run.name))?;
        }
    }
    Ok(())
}

pub fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    let cfg = SweepConfig::from_file(&a.config)?;
    let mut plan = cfg.expand(&a.config)?;
    validate(&plan)?;
    let shard = a.shard.unwrap_or(Shard { index: 0, count: 1 });
    let selected: Vec<usize> = (0..plan.runs.len())
        .filter(|&i| shard.contains(i))
        .collect();
    if a.list {
        return list_runs(&plan, &selected);
    }
    if a.slurm {
        // Everything that goes into the scripts is checked before the folder is touched.
        clsnorm::sweep::slurm::check(&plan, &slurm_options(&a), &slurm_env())?;
        // Compute nodes often have no internet: what the runs read from the Hub is fetched
        // here, and the jobs run with HF_HUB_OFFLINE=1.
        for line in super::fetch::fetch(&super::fetch::Needs::of_plan(&plan))? {
            tracing::info!("fetched {line}");
        }
    }
    plan.claim_and_write()?;
    std::fs::create_dir_all(plan.dir.join("logs"))
        .with_context(|| format!("creating {}", plan.dir.display()))?;
    if a.slurm {
        return submit_to_slurm(&a, &plan);
    }
    run_shard(&a, &plan, shard, &selected)
}

/// `--list`: each selected run's name, status and the command that would run it.
fn list_runs(plan: &SweepPlan, selected: &[usize]) -> anyhow::Result<()> {
    let mut out = String::new();
    for &i in selected {
        let run = &plan.runs[i];
        let (st, cmd) = match status(&plan.dir.join(&run.dir)) {
            Ok(st) => (
                st.describe().to_string(),
                plan.next_command(run, st)
                    .unwrap_or_else(|| run.command(&plan.dir)),
            ),
            Err(e) => (format!("unreadable: {e}"), run.command(&plan.dir)),
        };
        let words = std::iter::once("clsnorm".to_string()).chain(cmd);
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            run.name,
            st,
            shell_words::join(words)
        ));
    }
    super::print_stdout(out.trim_end())
}

/// Runs the selected runs of `plan` on this machine, records the invocation, and fails when a
/// run failed or a signal stopped the sweep.
fn run_shard(
    a: &SweepArgs,
    plan: &SweepPlan,
    shard: Shard,
    selected: &[usize],
) -> anyhow::Result<()> {
    let mut todo: VecDeque<usize> = VecDeque::new();
    let mut elsewhere = Vec::new();
    let mut unreadable = Vec::new();
    for &i in selected {
        let run = &plan.runs[i];
        match status(&plan.dir.join(&run.dir)) {
            Ok(RunStatus::Running) => {
                tracing::warn!(
                    "{}: running elsewhere (another process holds its lock); skipped",
                    run.name
                );
                elsewhere.push(run.name.clone());
            }
            Ok(RunStatus::Done) => {}
            Ok(_) => todo.push_back(i),
            Err(e) => {
                tracing::error!("{}: {e}; not run (fix or remove the file)", run.name);
                unreadable.push(run.name.clone());
            }
        }
    }
    let skipped = selected.len() - todo.len() - elsewhere.len() - unreadable.len();
    let jobs = usize::from(a.jobs);
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) / jobs);
    tracing::info!(
        runs = plan.runs.len(),
        shard = format!("{}/{}", shard.index, shard.count),
        selected = selected.len(),
        already_done = skipped,
        jobs,
        "sweep {} in {}",
        plan.name,
        plan.dir.display()
    );
    let exe = std::env::current_exe().context("locating the clsnorm executable")?;
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stop = std::sync::Arc::new(Stop::default());
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.signal())
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    let total = todo.len();
    let out = pool::execute(plan, todo, jobs, threads, &exe, &stop, true);
    let mut failed = out.failed;
    failed.extend(unreadable);
    let interrupted = out.interrupted;
    elsewhere.extend(out.elsewhere);
    let inv = Invocation {
        shard: format!("{}/{}", shard.index, shard.count),
        jobs,
        started_unix,
        wall_secs: started.elapsed().as_secs_f64(),
        executed: out.executed,
        failed: failed.len(),
        interrupted: interrupted.len(),
        stopped: stop.signalled(),
    };
    append_invocation(&plan.dir, &inv)?;
    tracing::info!(
        "{} run(s) executed, {} already done, {} failed, {} interrupted, {} done or running elsewhere, in {:.1} min; `clsnorm report {}` writes the comparison",
        inv.executed,
        skipped,
        failed.len(),
        interrupted.len(),
        elsewhere.len(),
        inv.wall_secs / 60.0,
        plan.dir.display()
    );
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed (logs in {}): {}",
            failed.len(),
            plan.dir.join("logs").display(),
            clsnorm::excerpt::list(&failed)
        );
    }
    if inv.stopped {
        bail!(
            "stopped by a signal: {} run(s) interrupted, {} not started; rerun the same `clsnorm sweep` to continue",
            interrupted.len(),
            total.saturating_sub(inv.executed + inv.failed)
        );
    }
    Ok(())
}

/// The variables the Slurm tasks need from this environment, and HF_HUB_OFFLINE=1: the jobs
/// read the Hub's files from the cache `sweep --slurm` filled. HF_TOKEN is never among them
/// (the scripts are files).
fn slurm_env() -> Vec<(String, String)> {
    ["GLUE_DIR", "HF_HOME", "HF_HUB_CACHE"]
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .chain(std::iter::once(("HF_HUB_OFFLINE".into(), "1".into())))
        .collect()
}

fn slurm_options(a: &SweepArgs) -> clsnorm::sweep::slurm::SlurmOptions {
    clsnorm::sweep::slurm::SlurmOptions {
        concurrent: a.slurm_concurrent,
        cpus: a.slurm_cpus,
        gpus: a.slurm_gpus,
        time: a.slurm_time.clone(),
        extra: a.slurm_arg.clone(),
    }
}

/// `--slurm`: writes the batch scripts and submits them.
fn submit_to_slurm(a: &SweepArgs, plan: &SweepPlan) -> anyhow::Result<()> {
    use clsnorm::sweep::slurm;
    let exe = std::env::current_exe().context("locating the clsnorm executable")?;
    let scripts = slurm::write_scripts(plan, &a.config, &exe, &slurm_env(), &slurm_options(a))?;
    let (array, report) = slurm::submit(&scripts)?;
    tracing::info!(
        "submitted {} run(s) as array job {array} ({}), and the report as job {report} after it; \
         watch with `squeue -j {array}`, task logs in {}",
        plan.runs.len(),
        scripts.array.display(),
        plan.dir.join("slurm").display()
    );
    super::print_stdout(&format!("{array}\n{report}"))
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether two paths name the same folder (also when neither exists yet and they are equal).
fn same_dir(a: &Path, b: &Path) -> bool {
    same_file(a, b) || std::path::absolute(a).ok() == std::path::absolute(b).ok()
}

fn append_invocation(dir: &Path, inv: &Invocation) -> anyhow::Result<()> {
    Ok(clsnorm::rundir::records::append(
        &dir.join(INVOCATIONS_FILE),
        inv,
    )?)
}

pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let plan = match (&a.sweep_dir, &a.config) {
        (Some(dir), _) => SweepPlan::load(dir)?,
        (None, Some(cfg)) => SweepConfig::from_file(cfg)?.expand(cfg)?,
        (None, None) => bail!("give a sweep directory or --config"),
    };
    let records: Vec<Records> = a
        .runs_from
        .iter()
        .map(|p| Records::read(p))
        .collect::<Result<_, _>>()?;
    let replications = a
        .replication
        .iter()
        .map(|s| {
            let (label, path) = s
                .split_once('=')
                .filter(|(l, p)| !l.is_empty() && !p.is_empty())
                .with_context(|| format!("--replication {s}: expected LABEL=RESULTS_JSON"))?;
            let path = Path::new(path);
            // The sweep's own report holds the sweep's own runs: joined as a replication,
            // every run would count twice.
            let own = plan.dir.join("results.json");
            if same_file(path, &own) {
                bail!(
                    "--replication {}: {} is this sweep's own report; a replication is another \
                     sweep of the same design",
                    clsnorm::excerpt::quoted(label),
                    path.display()
                );
            }
            Ok((label.to_string(), Records::read(path)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pairs = a
        .pair
        .iter()
        .map(|s| {
            s.split_once(',')
                .filter(|(x, y)| !x.is_empty() && !y.is_empty())
                .map(|(x, y)| (x.to_string(), y.to_string()))
                .with_context(|| {
                    format!(
                        "--pair {}: expected A,B (two variant names)",
                        clsnorm::excerpt::quoted(s)
                    )
                })
                .and_then(|(x, y)| {
                    if x == y {
                        bail!(
                            "--pair {}: compares the variant with itself (every difference is 0); name two variants",
                            clsnorm::excerpt::quoted(s)
                        );
                    }
                    Ok((x, y))
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inputs = Inputs {
        records,
        replications,
        pairs,
    };
    let mut plan = plan;
    let out = a.output.clone().unwrap_or_else(|| plan.dir.clone());
    // The sweep's own folder (claimed as the sweep does), or a report folder of its own.
    let _claim;
    let output_id = if same_dir(&out, &plan.dir) {
        plan.claim_and_write()?;
        None
    } else {
        let c = clsnorm::rundir::owner::claim(&out, OutputKind::Report)?;
        let id = c.id.clone();
        _claim = c;
        Some(id)
    };
    let mut report = Report::assemble(&plan, &inputs)?;
    report.output_id = output_id;
    report.write(&out)?;
    let done = report.runs.iter().filter(|r| r.best.is_some()).count();
    tracing::info!(
        "{done} of {} runs finished; wrote {}",
        report.runs.len(),
        out.join("report.md").display()
    );
    super::print_stdout(&report.csv())
}
