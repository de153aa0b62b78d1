//! `clsnorm report`: reads the runs of a sweep and writes the comparison the papers make —
//! per task and normalizer, the median, mean and spread over seeds of the best-epoch and
//! final-epoch dev metric, each normalizer's paired difference to `none`, a GLUE-style
//! average, curves, and the list of runs that are missing.
mod aggregate;
mod collect;
pub mod plots;
mod render;
pub mod stats;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::{Error, Result};
use crate::sweep::{RunStatus, SweepPlan};
pub use collect::{read_run, Records};
use stats::Spread;

/// What one run directory holds (metric values are x100, as GLUE tables print them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub task: String,
    pub variant: String,
    pub norm: String,
    pub seed: u64,
    pub status: RunStatus,
    /// Primary dev metric's name (from the run's summary or epochs).
    pub metric: Option<String>,
    /// Best-epoch and final-epoch primary dev metric, x100 (finished runs only).
    pub best: Option<f64>,
    pub last: Option<f64>,
    /// Primary dev metric per finished epoch, x100 (also for interrupted runs).
    pub epochs: Vec<f64>,
    pub wall_secs: Option<f64>,
    /// Builds of clsnorm that trained the run (finished runs; empty for runs made before
    /// builds were recorded).
    pub builds: Vec<String>,
    /// Median over updates of the [CLS] and of the global gradient norm (finished, traced
    /// runs), kept so that a report rebuilt from these records still has the gradient scale.
    #[serde(default)]
    pub cls_grad_median: Option<f64>,
    #[serde(default)]
    pub global_grad_median: Option<f64>,
    /// The `results.json` this run was taken from, when its run directory was not there
    /// ([`Records`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_records: Option<PathBuf>,
    #[serde(skip)]
    pub loss: Vec<(usize, f64)>,
    #[serde(skip)]
    pub cls_grad: Vec<(usize, f64)>,
    /// Global gradient norm over all parameters before clipping, per update (when traced).
    #[serde(skip)]
    pub global_grad: Vec<(usize, f64)>,
}

/// The paired comparison of a variant with `none` over the seeds both finished.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub baseline: String,
    pub seeds: Vec<u64>,
    /// Mean and median of (variant - baseline) per seed, x100 metric units.
    pub mean_diff: f64,
    pub median_diff: f64,
    /// Two-sided exact sign-flip permutation p-value ([`stats::sign_flip_p`]).
    pub p_value: f64,
}

/// One task x variant row of the comparison table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub task: String,
    pub variant: String,
    pub norm: String,
    pub metric: Option<String>,
    pub planned: usize,
    pub done: usize,
    pub best: Option<Spread>,
    pub last: Option<Spread>,
    pub vs_none: Option<Paired>,
    /// Size of the gradient at the [CLS] vector (before the normalizer), when traced.
    pub cls_grad: Option<GradScale>,
    /// Size of the global gradient over all parameters (before clipping), when traced.
    pub global_grad: Option<GradScale>,
}

/// A typical gradient norm of a task x variant: the median over updates of each finished,
/// traced run, then the median over those runs (seeds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GradScale {
    pub median: f64,
    pub seeds: usize,
    /// `median` divided by that of the `none` variant the row is compared with.
    pub vs_none: Option<f64>,
}

/// A normalizer variant's GLUE-style score: the mean over tasks of its median best-epoch metric.
#[derive(Debug, Clone, Serialize)]
pub struct Average {
    pub variant: String,
    pub value: Option<f64>,
    /// Tasks with at least one finished run, and tasks in the sweep.
    pub tasks_with_results: usize,
    pub tasks: usize,
}

/// One invocation of `clsnorm sweep` (appended to `invocations.jsonl` in the sweep directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    pub shard: String,
    pub jobs: usize,
    pub started_unix: u64,
    pub wall_secs: f64,
    /// Runs started (finished, failed or interrupted).
    pub executed: usize,
    pub failed: usize,
    /// Runs stopped by a signal to the sweep, left resumable (0 in records older than this
    /// field).
    #[serde(default)]
    pub interrupted: usize,
    /// Whether a signal stopped the sweep before it had run everything it selected.
    #[serde(default)]
    pub stopped: bool,
}

/// File of [`Invocation`] lines in the sweep directory.
pub const INVOCATIONS_FILE: &str = "invocations.jsonl";

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sweep: String,
    pub runs: Vec<RunResult>,
    pub rows: Vec<Row>,
    pub averages: Vec<Average>,
    pub invocations: Vec<Invocation>,
}

impl Report {
    /// Reads every run of the sweep in `sweep_dir` (missing runs included, as pending).
    pub fn build(sweep_dir: &Path) -> Result<Report> {
        Report::from_plan(&SweepPlan::load(sweep_dir)?)
    }

    /// Reads every run of `plan` from its sweep directory.
    pub fn from_plan(plan: &SweepPlan) -> Result<Report> {
        Report::from_plan_and_records(plan, &[])
    }

    /// Reads every run of `plan` from its sweep directory, taking a run that has not finished
    /// there from the first of `records` that holds it finished.
    pub fn from_plan_and_records(plan: &SweepPlan, records: &[Records]) -> Result<Report> {
        let (runs, invocations) = collect::collect(plan, records)?;
        let rows = aggregate::rows(plan, &runs);
        let averages = aggregate::averages(plan, &rows);
        Ok(Report {
            sweep: plan.name.clone(),
            invocations,
            runs,
            rows,
            averages,
        })
    }

    /// Writes `report.md`, `results.csv`, `results.json` and the pictures into `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let pictures = plots::write_curves(out, &self.runs)?;
        atomic::write_json(&out.join("results.json"), self)?;
        atomic::write_bytes(&out.join("results.csv"), self.csv().as_bytes())?;
        atomic::write_bytes(&out.join("report.md"), self.markdown(&pictures).as_bytes())?;
        Ok(())
    }
}
