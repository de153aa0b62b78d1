//! `clsnorm report`: reads the runs of a sweep and writes the comparison the papers make —
//! per task and normalizer, the median, mean and spread over seeds of the best-epoch and
//! final-epoch dev metric, each normalizer's paired difference to `none`, a GLUE-style
//! average, curves, and the list of runs that are missing.
pub mod plots;
pub mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::{Error, Result};
use crate::rundir::records::{self, EpochRecord, GradRecord, LossRecord, Summary};
use crate::rundir::Layout;
use crate::sweep::{status, PlannedRun, RunStatus, SweepPlan};
use stats::{sign_flip_p, spread, Spread};

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

/// Reads a JSON-lines file; a missing file is empty, and a torn last line (a run killed while
/// appending) is ignored.
/// Reads the run directory of `run` in the sweep at `sweep_dir`.
pub fn read_run(sweep_dir: &Path, run: &PlannedRun) -> Result<RunResult> {
    let dir = sweep_dir.join(&run.dir);
    let layout = Layout::new(&dir);
    let st = status(&dir)?;
    let epochs: Vec<EpochRecord> = records::read_all(&layout.metrics())?;
    let grads: Vec<GradRecord> = records::read_all(&layout.grads())?;
    let mut res = RunResult {
        name: run.name.clone(),
        task: run.task.clone(),
        variant: run.variant.clone(),
        norm: run.norm.clone(),
        seed: run.seed,
        status: st,
        metric: None,
        best: None,
        last: None,
        epochs: epochs.iter().map(|e| 100.0 * e.primary).collect(),
        wall_secs: None,
        builds: Vec::new(),
        cls_grad_median: None,
        global_grad_median: None,
        from_records: None,
        loss: records::read_all::<LossRecord>(&layout.loss())?
            .into_iter()
            .map(|r| (r.step, r.loss))
            .collect(),
        cls_grad: grads.iter().map(|r| (r.step, r.cls_grad_norm)).collect(),
        global_grad: grads.iter().map(|r| (r.step, r.global_grad_norm)).collect(),
    };
    if st == RunStatus::Done {
        let s = Summary::read(&layout.summary())?;
        let primary_of = |dev: &[(String, BTreeMap<String, f64>)]| {
            dev.first()
                .and_then(|(_, m)| m.get(&s.primary_metric))
                .map(|v| 100.0 * v)
        };
        res.best = s.best_primary.map(|v| 100.0 * v);
        res.last = primary_of(&s.final_dev);
        res.metric = Some(s.primary_metric.clone());
        res.wall_secs = Some(s.wall_secs);
        res.builds = s.builds;
        res.cls_grad_median = median_of(&res.cls_grad);
        res.global_grad_median = median_of(&res.global_grad);
    }
    Ok(res)
}

/// Median of a traced series' values; `None` for an empty or non-finite one.
fn median_of(series: &[(usize, f64)]) -> Option<f64> {
    let values: Vec<f64> = series.iter().map(|p| p.1).collect();
    (!values.is_empty())
        .then(|| stats::median(&values))
        .filter(|m| m.is_finite())
}

/// The runs recorded in the `results.json` of an earlier report of the same sweep. They stand
/// in for finished runs whose directories are gone (deleted to free disk, or left on another
/// machine): their metrics per epoch, wall time, builds and gradient medians are kept, their
/// loss and gradient curves are not.
#[derive(Debug, Clone)]
pub struct Records {
    pub path: PathBuf,
    pub sweep: String,
    pub runs: Vec<RunResult>,
    pub invocations: Vec<Invocation>,
}

impl Records {
    /// Reads the `results.json` that [`Report::write`] wrote.
    pub fn read(path: &Path) -> Result<Records> {
        #[derive(Deserialize)]
        struct File {
            sweep: String,
            runs: Vec<RunResult>,
            #[serde(default)]
            invocations: Vec<Invocation>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let f: File = serde_json::from_str(&text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: format!("not the results.json of a `clsnorm report`: {e}"),
        })?;
        Ok(Records {
            path: path.to_path_buf(),
            sweep: f.sweep,
            runs: f.runs,
            invocations: f.invocations,
        })
    }

    /// The finished record of `run`, if there is one.
    fn finished(&self, run: &PlannedRun) -> Option<RunResult> {
        self.runs
            .iter()
            .find(|r| {
                r.name == run.name
                    && r.task == run.task
                    && r.variant == run.variant
                    && r.seed == run.seed
                    && r.status == RunStatus::Done
                    && r.best.is_some()
            })
            .map(|r| RunResult {
                from_records: Some(r.from_records.clone().unwrap_or_else(|| self.path.clone())),
                ..r.clone()
            })
    }
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

impl GradScale {
    /// From the per-run medians of finished runs; runs without a trace are left out.
    fn of(per_run: &[Option<f64>]) -> Option<GradScale> {
        let per_run: Vec<f64> = per_run.iter().flatten().copied().collect();
        (!per_run.is_empty()).then(|| GradScale {
            median: stats::median(&per_run),
            seeds: per_run.len(),
            vs_none: None,
        })
    }
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

/// One cell of the summary table: "median [min, max]", the seeds finished where not all are,
/// and "Δ mean, p" against `none` (no p from a single seed).
fn summary_cell(r: &Row) -> String {
    let Some(b) = &r.best else {
        return format!("– (0/{})", r.planned);
    };
    let mut cell = if r.done > 1 {
        format!("{:.1} [{:.1}, {:.1}]", b.median, b.min, b.max)
    } else {
        format!("{:.1}", b.median)
    };
    if r.done < r.planned {
        cell.push_str(&format!(" ({}/{} seeds)", r.done, r.planned));
    }
    if let Some(p) = &r.vs_none {
        cell.push_str(&format!("; Δ {:+.1}", p.mean_diff));
        if p.seeds.len() > 1 {
            cell.push_str(&format!(", p {:.2}", p.p_value));
        }
    }
    cell
}

/// Groups `items` by `key`, keeping the order of first appearance.
fn groups<T, K: PartialEq + Clone>(items: &[T], key: impl Fn(&T) -> K) -> Vec<(K, Vec<&T>)> {
    let mut out: Vec<(K, Vec<&T>)> = Vec::new();
    for it in items {
        let k = key(it);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(it),
            None => out.push((k, vec![it])),
        }
    }
    out
}

/// The `none` variant a variant is compared with: same task and same varying options (the
/// part of the variant name after the normalizer label).
fn baseline_of(plan: &SweepPlan, run: &PlannedRun) -> Option<String> {
    let options = |r: &PlannedRun| r.variant.split_once('_').map(|(_, o)| o.to_string());
    plan.runs
        .iter()
        .find(|b| b.norm == "none" && b.task == run.task && options(b) == options(run))
        .map(|b| b.variant.clone())
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
        let sweep_dir = plan.dir.as_path();
        if let Some(other) = records.iter().find(|r| r.sweep != plan.name) {
            return Err(Error::File {
                path: other.path.clone(),
                msg: format!(
                    "holds the runs of sweep `{}`, not of `{}`",
                    other.sweep, plan.name
                ),
            });
        }
        let runs: Vec<RunResult> = plan
            .runs
            .iter()
            .map(|r| {
                let found = read_run(sweep_dir, r)?;
                if found.status == RunStatus::Done {
                    return Ok(found);
                }
                Ok(records.iter().find_map(|x| x.finished(r)).unwrap_or(found))
            })
            .collect::<Result<_>>()?;
        let mut rows = Vec::new();
        // Per row, the `none` variant it is compared with (itself for `none`).
        let mut baselines: Vec<Option<String>> = Vec::new();
        for ((task, variant), members) in groups(&runs, |r| (r.task.clone(), r.variant.clone())) {
            let done: Vec<&&RunResult> = members.iter().filter(|r| r.best.is_some()).collect();
            let best: Vec<f64> = done.iter().filter_map(|r| r.best).collect();
            let last: Vec<f64> = done.iter().filter_map(|r| r.last).collect();
            let planned_run = plan
                .runs
                .iter()
                .find(|p| p.task == task && p.variant == variant);
            let baseline = planned_run.and_then(|p| baseline_of(plan, p));
            let vs_none = planned_run
                .filter(|p| p.norm != "none")
                .and(baseline.clone())
                .and_then(|base| {
                    let pairs: Vec<(u64, f64)> = done
                        .iter()
                        .filter_map(|r| {
                            let b = runs.iter().find(|b| {
                                b.task == task && b.variant == base && b.seed == r.seed
                            })?;
                            Some((r.seed, r.best? - b.best?))
                        })
                        .collect();
                    if pairs.is_empty() {
                        return None;
                    }
                    let diffs: Vec<f64> = pairs.iter().map(|p| p.1).collect();
                    let s = spread(&diffs)?;
                    Some(Paired {
                        baseline: base,
                        seeds: pairs.iter().map(|p| p.0).collect(),
                        mean_diff: s.mean,
                        median_diff: s.median,
                        p_value: sign_flip_p(&diffs, 0),
                    })
                });
            let finished: Vec<&RunResult> = members
                .iter()
                .copied()
                .filter(|r| r.status == RunStatus::Done)
                .collect();
            baselines.push(baseline);
            let cls: Vec<Option<f64>> = finished.iter().map(|r| r.cls_grad_median).collect();
            let global: Vec<Option<f64>> = finished.iter().map(|r| r.global_grad_median).collect();
            rows.push(Row {
                cls_grad: GradScale::of(&cls),
                global_grad: GradScale::of(&global),
                norm: members[0].norm.clone(),
                metric: members.iter().find_map(|r| r.metric.clone()),
                planned: members.len(),
                done: done.len(),
                best: spread(&best),
                last: spread(&last),
                vs_none,
                task,
                variant,
            });
        }
        // Gradient scales relative to the `none` variant of the same task and options.
        let scales: Vec<(String, String, Option<GradScale>, Option<GradScale>)> = rows
            .iter()
            .map(|r| (r.task.clone(), r.variant.clone(), r.cls_grad, r.global_grad))
            .collect();
        for (row, base) in rows.iter_mut().zip(&baselines) {
            let Some(base) = base else {
                continue;
            };
            let Some((_, _, cls, global)) = scales
                .iter()
                .find(|(t, v, _, _)| *t == row.task && v == base)
            else {
                continue;
            };
            for (mine, theirs) in [(&mut row.cls_grad, cls), (&mut row.global_grad, global)] {
                if let (Some(m), Some(b)) = (mine.as_mut(), theirs) {
                    m.vs_none = Some(m.median / b.median);
                }
            }
        }
        let tasks: Vec<String> = groups(&plan.runs, |r| r.task.clone())
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let averages = groups(&rows, |r| r.variant.clone())
            .into_iter()
            .map(|(variant, rs)| {
                let medians: Vec<f64> =
                    rs.iter().filter_map(|r| r.best.map(|b| b.median)).collect();
                Average {
                    variant,
                    value: (medians.len() == tasks.len())
                        .then(|| medians.iter().sum::<f64>() / medians.len() as f64),
                    tasks_with_results: medians.len(),
                    tasks: tasks.len(),
                }
            })
            .collect();
        // The records' invocations ran the same sweep elsewhere or earlier: list them first.
        let mut invocations: Vec<Invocation> = Vec::new();
        let here: Vec<Invocation> = records::read_all(&sweep_dir.join(INVOCATIONS_FILE))?;
        for inv in records
            .iter()
            .flat_map(|r| r.invocations.iter().cloned())
            .chain(here)
        {
            if !invocations
                .iter()
                .any(|i| i.started_unix == inv.started_unix)
            {
                invocations.push(inv);
            }
        }
        Ok(Report {
            sweep: plan.name.clone(),
            invocations,
            runs,
            rows,
            averages,
        })
    }

    /// `results.csv`: one line per task x variant.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "task,variant,norm,metric,planned,done,best_median,best_mean,best_std,best_min,best_max,final_median,final_mean,final_std,vs_none_mean_diff,vs_none_median_diff,vs_none_pairs,vs_none_p,cls_grad_median,cls_grad_vs_none,global_grad_median,global_grad_vs_none\n",
        );
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        for r in &self.rows {
            let (b, l, p) = (r.best.as_ref(), r.last.as_ref(), r.vs_none.as_ref());
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                r.task,
                r.variant,
                r.norm,
                r.metric.clone().unwrap_or_default(),
                r.planned,
                r.done,
                f(b.map(|x| x.median)),
                f(b.map(|x| x.mean)),
                f(b.and_then(|x| x.std)),
                f(b.map(|x| x.min)),
                f(b.map(|x| x.max)),
                f(l.map(|x| x.median)),
                f(l.map(|x| x.mean)),
                f(l.and_then(|x| x.std)),
                f(p.map(|x| x.mean_diff)),
                f(p.map(|x| x.median_diff)),
                p.map_or(0, |x| x.seeds.len()),
                f(p.map(|x| x.p_value)),
                f(r.cls_grad.map(|g| g.median)),
                f(r.cls_grad.and_then(|g| g.vs_none)),
                f(r.global_grad.map(|g| g.median)),
                f(r.global_grad.and_then(|g| g.vs_none)),
            ));
        }
        s
    }

    /// Which code produced the finished runs: each distinct chain of builds and its run count.
    fn builds_line(&self) -> String {
        let done: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.status == RunStatus::Done)
            .collect();
        let chains = groups(&done, |r| r.builds.clone());
        if chains.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = chains
            .iter()
            .map(|(chain, runs)| {
                let name = if chain.is_empty() {
                    "not recorded".to_string()
                } else {
                    chain
                        .iter()
                        .map(|b| format!("`{b}`"))
                        .collect::<Vec<_>>()
                        .join(" then ")
                };
                format!(
                    "{name} ({} run{})",
                    runs.len(),
                    if runs.len() == 1 { "" } else { "s" }
                )
            })
            .collect();
        format!(
            "Builds of clsnorm (`git describe`) that trained the finished runs: {}.\n",
            parts.join("; ")
        )
    }

    /// Which finished runs were taken from records, and what they lack.
    fn records_line(&self) -> String {
        let from: Vec<(Option<PathBuf>, Vec<&RunResult>)> =
            groups(&self.runs, |r| r.from_records.clone());
        let parts: Vec<String> = from
            .iter()
            .filter_map(|(path, runs)| {
                let path = path.as_ref()?;
                Some(format!("{} from `{}`", runs.len(), path.display()))
            })
            .collect();
        if parts.is_empty() {
            return String::new();
        }
        format!(
            "Finished runs taken from the records of an earlier report, for want of their run directories: {} (their dev metrics per epoch, wall times, builds and gradient medians where recorded; not their loss and gradient curves).\n",
            parts.join("; ")
        )
    }

    /// Tables of the gradient scales (normalizers x tasks), when any run traced gradients.
    fn grad_tables(&self) -> String {
        if self.rows.iter().all(|r| r.cls_grad.is_none()) {
            return String::new();
        }
        let tasks: Vec<String> = self.tasks().into_iter().map(|(t, _)| t).collect();
        let mut md = String::from(
            "\n## Gradient scale\n\nMedian over updates of each run's gradient norm, then median over the traced seeds (n), and in brackets its ratio to `none`'s: the papers' argument is that normalizing the [CLS] vector rescales the gradient that reaches the encoder.\n",
        );
        type Pick = fn(&Row) -> Option<GradScale>;
        let tables: [(&str, Pick); 2] = [
            (
                "||dL/d[CLS]||, at the encoder's output before the normalizer",
                |r| r.cls_grad,
            ),
            (
                "global gradient norm over all parameters, before clipping",
                |r| r.global_grad,
            ),
        ];
        for (title, get) in tables {
            md.push_str(&format!(
                "\n{title}:\n\n| normalizer | {} |\n|---|{}\n",
                tasks.join(" | "),
                "---|".repeat(tasks.len())
            ));
            for (variant, rows) in groups(&self.rows, |r| r.variant.clone()) {
                let cells: Vec<String> = tasks
                    .iter()
                    .map(|t| {
                        rows.iter()
                            .find(|r| r.task == *t)
                            .and_then(|r| get(r))
                            .map_or("–".into(), |g| {
                                format!(
                                    "{:.3} ({}; n={})",
                                    g.median,
                                    g.vs_none.map_or("–".into(), |v| format!("{v:.2}x")),
                                    g.seeds
                                )
                            })
                    })
                    .collect();
                md.push_str(&format!("| {variant} | {} |\n", cells.join(" | ")));
            }
        }
        md
    }

    /// The sweep's tasks in order, each with its primary metric's name (once a run has one).
    fn tasks(&self) -> Vec<(String, Option<String>)> {
        groups(&self.rows, |r| r.task.clone())
            .into_iter()
            .map(|(t, rows)| (t, rows.iter().find_map(|r| r.metric.clone())))
            .collect()
    }

    /// The papers' table: normalizers x tasks, each cell the best-epoch median [min, max] over
    /// seeds with the paired difference to `none`, and the GLUE-style average.
    fn summary_table(&self) -> String {
        let tasks: Vec<(String, String)> = self
            .tasks()
            .into_iter()
            .map(|(t, metric)| {
                let head = metric.map_or(t.clone(), |m| format!("{t} ({m})"));
                (t, head)
            })
            .collect();
        let mut md = format!(
            "\n## Summary\n\nBest-epoch dev metric x100: median [min, max] over seeds (\"k/n seeds\" where not all have finished); Δ is the mean paired difference to `none` and p its sign-flip test (both explained below); the average is the GLUE-style mean over tasks of the medians, given when every task has a result.\n\n| normalizer | {} | GLUE-style average |\n|---|{}---|\n",
            tasks.iter().map(|t| t.1.as_str()).collect::<Vec<_>>().join(" | "),
            "---|".repeat(tasks.len())
        );
        for (variant, rows) in groups(&self.rows, |r| r.variant.clone()) {
            let mut cells: Vec<String> = tasks
                .iter()
                .map(|(t, _)| {
                    rows.iter()
                        .find(|r| r.task == *t)
                        .map_or("–".into(), |r| summary_cell(r))
                })
                .collect();
            cells.push(self.averages.iter().find(|a| a.variant == variant).map_or(
                "–".into(),
                |a| match a.value {
                    Some(v) => format!("{v:.1}"),
                    None => format!("– ({}/{} tasks)", a.tasks_with_results, a.tasks),
                },
            ));
            md.push_str(&format!("| {variant} | {} |\n", cells.join(" | ")));
        }
        md
    }

    /// `report.md`, referring to the pictures that [`Report::write`] draws.
    pub fn markdown(&self, pictures: &[(String, Vec<String>)]) -> String {
        let done = self
            .runs
            .iter()
            .filter(|r| r.status == RunStatus::Done)
            .count();
        let interrupted = self
            .runs
            .iter()
            .filter(|r| r.status == RunStatus::Interrupted)
            .count();
        let run_secs: f64 = self.runs.iter().filter_map(|r| r.wall_secs).sum();
        let mut md = format!(
            "# Sweep `{}`\n\n{done} of {} runs finished, {interrupted} interrupted, {} not started. Sum of the finished runs' wall times: {:.1} h.\n",
            self.sweep,
            self.runs.len(),
            self.runs.len() - done - interrupted,
            run_secs / 3600.0
        );
        md.push_str(&self.builds_line());
        md.push_str(&self.records_line());
        if !self.invocations.is_empty() {
            md.push_str("\n`clsnorm sweep` invocations (shard, parallel jobs, runs executed, wall time):\n\n");
            for i in &self.invocations {
                md.push_str(&format!(
                    "- shard {}, {} job(s): {} run(s) executed ({} failed{}) in {:.1} min{}\n",
                    i.shard,
                    i.jobs,
                    i.executed,
                    i.failed,
                    if i.interrupted > 0 {
                        format!(", {} interrupted", i.interrupted)
                    } else {
                        String::new()
                    },
                    i.wall_secs / 60.0,
                    if i.stopped {
                        ", stopped by a signal"
                    } else {
                        ""
                    }
                ));
            }
        }
        md.push_str(&self.summary_table());
        md.push_str(
            "\nValues are the primary dev metric x100 of each run's best epoch (\"best\", the papers' protocol) and of its last epoch (\"final\"): median, mean ± sample standard deviation over seeds, and [min, max]. \"Δ vs none\" is the mean (and median) over seeds of the paired difference to the `none` run with the same seed; p is a two-sided exact sign-flip permutation test of those differences (with n seeds the smallest possible p is 2/2^n: 0.25 for 3 seeds, 0.0625 for 5).\n",
        );
        let pm = |s: &Option<Spread>| match s {
            Some(s) => format!(
                "{:.1} | {:.1} ± {} [{:.1}, {:.1}]",
                s.median,
                s.mean,
                s.std.map_or("–".into(), |v| format!("{v:.1}")),
                s.min,
                s.max
            ),
            None => "– | –".into(),
        };
        for (task, rows) in groups(&self.rows, |r| r.task.clone()) {
            let metric = rows
                .iter()
                .find_map(|r| r.metric.clone())
                .unwrap_or_else(|| "metric".into());
            md.push_str(&format!(
                "\n## {task} ({metric})\n\n| normalizer | seeds done | best: median | best: mean ± std [min, max] | final: median | final: mean ± std [min, max] | Δ vs none: mean / median | p |\n|---|---|---|---|---|---|---|---|\n"
            ));
            for r in rows {
                let d = r.vs_none.as_ref().map_or("– | –".into(), |p| {
                    format!(
                        "{:+.1} / {:+.1} (n={}) | {:.2}",
                        p.mean_diff,
                        p.median_diff,
                        p.seeds.len(),
                        p.p_value
                    )
                });
                md.push_str(&format!(
                    "| {} | {}/{} | {} | {} | {d} |\n",
                    r.variant,
                    r.done,
                    r.planned,
                    pm(&r.best),
                    pm(&r.last)
                ));
            }
            if let Some((_, pics)) = pictures.iter().find(|(t, _)| *t == task) {
                md.push('\n');
                for p in pics {
                    md.push_str(&format!("![]({p})\n"));
                }
            }
        }
        md.push_str(&self.grad_tables());
        let missing: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.status != RunStatus::Done)
            .collect();
        if !missing.is_empty() {
            md.push_str("\n## Runs not finished\n\n");
            for r in missing {
                md.push_str(&format!(
                    "- `{}`: {}\n",
                    r.name,
                    match r.status {
                        RunStatus::Interrupted => format!(
                            "interrupted after {} epoch(s); `clsnorm sweep` resumes it",
                            r.epochs.len()
                        ),
                        RunStatus::Running => format!(
                            "running elsewhere (another process holds its lock), {} epoch(s) so far",
                            r.epochs.len()
                        ),
                        _ => "not started".into(),
                    }
                ));
            }
        }
        md
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
