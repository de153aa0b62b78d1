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
    /// The model the run fine-tuned: `REPO@COMMIT` for a Hub model, else its folder (finished
    /// runs; absent in records made before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The data the run trained on: `REPO:CONFIG@COMMIT` for a Hub dataset, `REPO@COMMIT` for
    /// GLUE from the Hub, else its training file (finished runs; absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Median over updates of the [CLS] and of the global gradient norm (finished, traced
    /// runs), kept so that a report rebuilt from these records still has the gradient scale.
    #[serde(default)]
    pub cls_grad_median: Option<f64>,
    #[serde(default)]
    pub global_grad_median: Option<f64>,
    /// The replication this run belongs to (`--replication LABEL=...`; empty: this sweep's
    /// own runs, or runs standing in for them). Seeds of different replications are
    /// different runs; pairs are formed within a replication.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replication: String,
    /// The dev [CLS] geometry at each epoch's end (runs that recorded it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub geometry: Vec<crate::rundir::records::ClsGeometry>,
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
    /// The pairs' seeds, and the replication each comes from (empty: this sweep directory).
    pub seeds: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replications: Vec<String>,
    /// Mean and median of (variant - baseline) per seed, x100 metric units.
    pub mean_diff: f64,
    pub median_diff: f64,
    /// 95% t-interval of the mean difference ([`stats::mean_ci95`]; none for one pair).
    pub ci95: Option<[f64; 2]>,
    /// Two-sided exact sign-flip permutation p-value ([`stats::sign_flip_p`]).
    pub p_value: f64,
}

/// A paired comparison asked for with `--pair A,B`: variant `a` minus variant `b` per task.
#[derive(Debug, Clone, Serialize)]
pub struct PairRow {
    pub task: String,
    pub a: String,
    pub b: String,
    pub paired: Option<Paired>,
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

/// What a report takes besides the sweep directory.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Records of earlier reports standing in for finished runs whose directories are gone.
    pub records: Vec<Records>,
    /// Replications of the sweep (e.g. the same sweep file run on a GPU), by label: their
    /// finished runs join this sweep's as runs of their own.
    pub replications: Vec<(String, Records)>,
    /// Variant pairs (a, b) to compare per task, a minus b, paired by seed.
    pub pairs: Vec<(String, String)>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sweep: String,
    /// The id of the sweep folder the runs came from ([`SweepPlan::output_id`]): a replication
    /// with the same id is this sweep itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_id: Option<String>,
    /// The id of the report folder this was written to, when it is not the sweep's
    /// ([`crate::rundir::owner`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_id: Option<String>,
    pub runs: Vec<RunResult>,
    pub rows: Vec<Row>,
    /// The comparisons asked for with `--pair`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairRow>,
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
        Report::assemble(
            plan,
            &Inputs {
                records: records.to_vec(),
                ..Inputs::default()
            },
        )
    }

    /// The report of `plan` with what `inputs` adds.
    pub fn assemble(plan: &SweepPlan, inputs: &Inputs) -> Result<Report> {
        let (mut runs, invocations) = collect::collect(plan, &inputs.records)?;
        for (label, rep) in &inputs.replications {
            if rep.sweep_id.is_some() && rep.sweep_id == plan.output_id {
                return Err(Error::File {
                    path: rep.path.clone(),
                    msg: format!(
                        "--replication {label}: a report of this same sweep folder; its runs are \
                         already this sweep's (a replication is another sweep of the same design)"
                    ),
                });
            }
            // A label given twice joins its files; the first that holds a run wins.
            for run in collect::replication(plan, label, rep)? {
                let known = runs.iter().any(|r| {
                    r.replication == run.replication
                        && (&r.task, &r.variant, r.seed) == (&run.task, &run.variant, run.seed)
                });
                if !known {
                    runs.push(run);
                }
            }
        }
        let rows = aggregate::rows(plan, &runs);
        let averages = aggregate::averages(plan, &rows);
        let pairs = aggregate::pairs(&runs, &inputs.pairs)?;
        Ok(Report {
            sweep: plan.name.clone(),
            sweep_id: plan.output_id.clone(),
            output_id: None,
            invocations,
            runs,
            rows,
            pairs,
            averages,
        })
    }

    /// Writes `report.md`, `results.csv`, `results.json` and the pictures into `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let pictures = plots::write_curves(out, &self.runs)?;
        let mut variants: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !variants.contains(&r.variant.as_str()) {
                variants.push(&r.variant);
            }
        }
        let overview: Vec<plots::Interval> = self
            .rows
            .iter()
            .filter_map(|r| {
                let p = r.vs_none.as_ref()?;
                Some(plots::Interval {
                    color: variants.iter().position(|v| *v == r.variant).unwrap_or(0),
                    label: format!("{} {}", r.task, r.variant),
                    mean: p.mean_diff,
                    ci: p.ci95,
                })
            })
            .collect();
        let overview = plots::write_overview(out, &overview)?;
        atomic::write_json(&out.join("results.json"), self)?;
        atomic::write_bytes(&out.join("results.csv"), self.csv().as_bytes())?;
        let mut md = self.markdown(&pictures);
        if let Some(png) = overview {
            // First thing after the title and provenance: the figure a reader looks at first.
            let at = md.find("\n## Summary").unwrap_or(md.len());
            md.insert_str(at, &format!("\n![Paired difference to none]({png})\n"));
        }
        atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
        Ok(())
    }
}
