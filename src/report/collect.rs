//! Collect: what every run of a sweep left behind (its run directory, or the records of an
//! earlier report), and the sweep's invocations.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{stats, Invocation, RunResult, INVOCATIONS_FILE};
use crate::error::{Error, Result};
use crate::rundir::records::{self, EpochRecord, GradRecord, LossRecord, Summary};
use crate::rundir::Layout;
use crate::sweep::{status, PlannedRun, RunStatus, SweepPlan};

/// Every run of `plan` from its sweep directory, a run that has not finished there taken from
/// the first of `records` that holds it finished; and the invocations of the sweep (the
/// records' first: they ran the same sweep elsewhere or earlier).
pub fn collect(plan: &SweepPlan, records: &[Records]) -> Result<(Vec<RunResult>, Vec<Invocation>)> {
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
    Ok((runs, invocations))
}

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
        model: None,
        data: None,
        cls_grad_median: None,
        global_grad_median: None,
        from_records: None,
        replication: String::new(),
        geometry: epochs.iter().filter_map(|e| e.cls_geometry).collect(),
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
        if let Ok(rc) = crate::train::RunConfig::read(&dir) {
            res.model = Some(match &rc.sources.model_source {
                Some(src) => format!("{}@{}", src.repo, src.commit),
                None => rc.model.display().to_string(),
            });
            res.data = Some(match &rc.sources.data_source {
                Some(src) => match &src.config {
                    Some(c) => format!("{}:{c}@{}", src.repo, src.commit),
                    None => format!("{}@{}", src.repo, src.commit),
                },
                None => rc.train_file.path.display().to_string(),
            });
        }
        res.cls_grad_median = median_of(&res.cls_grad);
        res.global_grad_median = median_of(&res.global_grad);
    }
    Ok(res)
}

/// The finished runs of a replication of `plan` (the `results.json` of a report of the same
/// design, under any sweep name) whose task and variant `plan` has, labelled `label`: each
/// keeps its seed and gets `@label` after its name. None at all is an error: the file is not a
/// replication of this sweep.
pub fn replication(plan: &SweepPlan, label: &str, rep: &Records) -> Result<Vec<RunResult>> {
    let runs: Vec<RunResult> = rep
        .runs
        .iter()
        .filter(|r| r.status == RunStatus::Done && r.best.is_some())
        .filter(|r| {
            plan.runs
                .iter()
                .any(|p| p.task == r.task && p.variant == r.variant)
        })
        .map(|r| RunResult {
            name: format!("{}@{label}", r.name),
            replication: label.to_string(),
            from_records: Some(rep.path.clone()),
            ..r.clone()
        })
        .collect();
    if runs.is_empty() {
        return Err(Error::File {
            path: rep.path.clone(),
            msg: format!(
                "has no finished run of a task and variant of sweep `{}`: not a replication of it",
                plan.name
            ),
        });
    }
    Ok(runs)
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
    /// The sweep folder's id, in reports written since folders have ids.
    pub sweep_id: Option<String>,
    pub runs: Vec<RunResult>,
    pub invocations: Vec<Invocation>,
}

impl Records {
    /// Reads the `results.json` that [`Report::write`] wrote.
    pub fn read(path: &Path) -> Result<Records> {
        #[derive(Deserialize)]
        struct File {
            sweep: String,
            #[serde(default)]
            sweep_id: Option<String>,
            runs: Vec<RunResult>,
            #[serde(default)]
            invocations: Vec<Invocation>,
        }
        let text = crate::fsread::read_text(path, crate::fsread::MAX_SMALL_BYTES)?;
        let f: File = serde_json::from_str(&text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: format!("not the results.json of a `clsnorm report`: {e}"),
        })?;
        Ok(Records {
            path: path.to_path_buf(),
            sweep: f.sweep,
            sweep_id: f.sweep_id,
            runs: f.runs,
            invocations: f.invocations,
        })
    }

    /// The finished record of `run`, if there is one.
    pub(crate) fn finished(&self, run: &PlannedRun) -> Option<RunResult> {
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
