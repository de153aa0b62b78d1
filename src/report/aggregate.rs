//! Aggregate: runs to rows (task x variant: spread over seeds, paired difference to `none`,
//! gradient scale) and to GLUE-style averages.
use super::stats::{self, sign_flip_p, spread};
use super::{Average, GradScale, PairRow, Paired, Row, RunResult};
use crate::sweep::{PlannedRun, RunStatus, SweepPlan};

/// One row per task x variant of `plan`, in the order of first appearance.
pub fn rows(plan: &SweepPlan, runs: &[RunResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    // Per row, the `none` variant it is compared with (itself for `none`).
    let mut baselines: Vec<Option<String>> = Vec::new();
    for ((task, variant), members) in groups(runs, |r| (r.task.clone(), r.variant.clone())) {
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
            .and_then(|base| paired(runs, &task, &variant, &base));
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
    rows
}

/// `variant` minus `baseline` on `task`, over the seeds both finished, paired within each
/// replication.
fn paired(runs: &[RunResult], task: &str, variant: &str, baseline: &str) -> Option<Paired> {
    fn of<'r>(
        runs: &'r [RunResult],
        task: &'r str,
        v: &'r str,
    ) -> impl Iterator<Item = &'r RunResult> {
        runs.iter()
            .filter(move |r| r.task == task && r.variant == v && r.best.is_some())
    }
    let pairs: Vec<(&RunResult, f64)> = of(runs, task, variant)
        .filter_map(|r| {
            let b = of(runs, task, baseline)
                .find(|b| b.seed == r.seed && b.replication == r.replication)?;
            Some((r, r.best? - b.best?))
        })
        .collect();
    let diffs: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let s = spread(&diffs)?;
    let replications: Vec<String> = pairs.iter().map(|p| p.0.replication.clone()).collect();
    Some(Paired {
        baseline: baseline.to_string(),
        seeds: pairs.iter().map(|p| p.0.seed).collect(),
        replications: if replications.iter().all(String::is_empty) {
            Vec::new()
        } else {
            replications
        },
        mean_diff: s.mean,
        median_diff: s.median,
        ci95: stats::mean_ci95(&diffs),
        p_value: sign_flip_p(&diffs, 0),
    })
}

/// The `--pair A,B` comparisons, for every task that has both variants.
pub fn pairs(runs: &[RunResult], asked: &[(String, String)]) -> crate::error::Result<Vec<PairRow>> {
    let mut out = Vec::new();
    for (a, b) in asked {
        for name in [a, b] {
            if !runs.iter().any(|r| &r.variant == name) {
                let mut known: Vec<&str> = runs.iter().map(|r| r.variant.as_str()).collect();
                known.sort_unstable();
                known.dedup();
                return Err(crate::error::Error::Invalid(format!(
                    "--pair: the sweep has no variant `{name}` (its variants: {})",
                    known.join(", ")
                )));
            }
        }
        for (task, _) in groups(runs, |r| r.task.clone()) {
            let has = |v: &str| runs.iter().any(|r| r.task == task && r.variant == v);
            if has(a) && has(b) {
                out.push(PairRow {
                    paired: paired(runs, &task, a, b),
                    task,
                    a: a.clone(),
                    b: b.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Each variant's mean over tasks of its median best-epoch metric.
pub fn averages(plan: &SweepPlan, rows: &[Row]) -> Vec<Average> {
    let tasks: Vec<String> = groups(&plan.runs, |r| r.task.clone())
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    groups(rows, |r| r.variant.clone())
        .into_iter()
        .map(|(variant, rs)| {
            let medians: Vec<f64> = rs.iter().filter_map(|r| r.best.map(|b| b.median)).collect();
            Average {
                variant,
                value: (medians.len() == tasks.len())
                    .then(|| medians.iter().sum::<f64>() / medians.len() as f64),
                tasks_with_results: medians.len(),
                tasks: tasks.len(),
            }
        })
        .collect()
}

/// Groups `items` by `key`, keeping the order of first appearance.
pub(super) fn groups<T, K: PartialEq + Clone>(
    items: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<&T>)> {
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
