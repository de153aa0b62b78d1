//! Render: `results.csv` (one column table) and `report.md`.
use std::path::PathBuf;

use super::aggregate::groups;
use super::stats::Spread;
use super::{GradScale, Report, Row, RunResult};
use crate::rundir::records::ClsGeometry;
use crate::sweep::RunStatus;

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
        if let Some([lo, hi]) = p.ci95 {
            cell.push_str(&format!(" [{lo:+.1}, {hi:+.1}]"));
        }
        if p.seeds.len() > 1 {
            cell.push_str(&format!(", p {:.2}", p.p_value));
        }
    }
    cell
}

/// "mean / median [CI] (n=k) | p" of a paired comparison.
fn paired_cells(p: &super::Paired) -> String {
    let ci = p
        .ci95
        .map_or(String::new(), |[lo, hi]| format!(" [{lo:+.1}, {hi:+.1}]"));
    format!(
        "{:+.1} / {:+.1}{ci} (n={}) | {:.2}",
        p.mean_diff,
        p.median_diff,
        p.seeds.len(),
        p.p_value
    )
}

/// `results.csv`'s columns: header and cell of a row, in order.
type Column = (&'static str, fn(&Row) -> String);

/// A number with 4 decimals, or empty.
fn num(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x:.4}"))
}

const COLUMNS: &[Column] = &[
    ("task", |r| r.task.clone()),
    ("variant", |r| r.variant.clone()),
    ("norm", |r| r.norm.clone()),
    ("metric", |r| r.metric.clone().unwrap_or_default()),
    ("planned", |r| r.planned.to_string()),
    ("done", |r| r.done.to_string()),
    ("best_median", |r| num(r.best.as_ref().map(|x| x.median))),
    ("best_mean", |r| num(r.best.as_ref().map(|x| x.mean))),
    ("best_std", |r| num(r.best.as_ref().and_then(|x| x.std))),
    ("best_min", |r| num(r.best.as_ref().map(|x| x.min))),
    ("best_max", |r| num(r.best.as_ref().map(|x| x.max))),
    ("final_median", |r| num(r.last.as_ref().map(|x| x.median))),
    ("final_mean", |r| num(r.last.as_ref().map(|x| x.mean))),
    ("final_std", |r| num(r.last.as_ref().and_then(|x| x.std))),
    ("vs_none_mean_diff", |r| {
        num(r.vs_none.as_ref().map(|x| x.mean_diff))
    }),
    ("vs_none_median_diff", |r| {
        num(r.vs_none.as_ref().map(|x| x.median_diff))
    }),
    ("vs_none_pairs", |r| {
        r.vs_none.as_ref().map_or(0, |x| x.seeds.len()).to_string()
    }),
    ("vs_none_p", |r| num(r.vs_none.as_ref().map(|x| x.p_value))),
    ("cls_grad_median", |r| num(r.cls_grad.map(|g| g.median))),
    ("cls_grad_vs_none", |r| {
        num(r.cls_grad.and_then(|g| g.vs_none))
    }),
    ("global_grad_median", |r| {
        num(r.global_grad.map(|g| g.median))
    }),
    ("global_grad_vs_none", |r| {
        num(r.global_grad.and_then(|g| g.vs_none))
    }),
    ("vs_none_ci95_low", |r| {
        num(r.vs_none.as_ref().and_then(|x| x.ci95).map(|c| c[0]))
    }),
    ("vs_none_ci95_high", |r| {
        num(r.vs_none.as_ref().and_then(|x| x.ci95).map(|c| c[1]))
    }),
];

impl Report {
    /// `results.csv`: one line per task x variant, the columns of [`COLUMNS`].
    pub fn csv(&self) -> String {
        let line = |cells: Vec<String>| cells.join(",") + "\n";
        let mut s = line(COLUMNS.iter().map(|c| c.0.to_string()).collect());
        for r in &self.rows {
            s.push_str(&line(COLUMNS.iter().map(|c| (c.1)(r)).collect()));
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

    /// What the finished runs read, by `of` (a model or data source), after `label`.
    fn sources_line(&self, label: &str, of: impl Fn(&RunResult) -> Option<String>) -> String {
        let done: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.status == RunStatus::Done && of(r).is_some())
            .collect();
        let parts: Vec<String> = groups(&done, |r| of(r))
            .iter()
            .filter_map(|(source, runs)| {
                Some(format!(
                    "`{}` ({} run{})",
                    source.as_ref()?,
                    runs.len(),
                    if runs.len() == 1 { "" } else { "s" }
                ))
            })
            .collect();
        if parts.is_empty() {
            return String::new();
        }
        format!("{label}: {}.\n", parts.join("; "))
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

    /// The `--pair` comparisons.
    fn pair_table(&self) -> String {
        if self.pairs.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n## Paired comparisons\n\nBest-epoch dev metric x100, A minus B over the seeds both finished (paired within each replication): mean / median [95% t-interval] and the sign-flip p.\n\n| task | A | B | A - B: mean / median [95% CI] | p |\n|---|---|---|---|---|\n",
        );
        for p in &self.pairs {
            let cells = p.paired.as_ref().map_or("– | –".into(), paired_cells);
            md.push_str(&format!("| {} | {} | {} | {cells} |\n", p.task, p.a, p.b));
        }
        md
    }

    /// The dev [CLS] geometry at the last recorded epoch, median over finished runs, before
    /// and after the normalizer.
    fn geometry_table(&self) -> String {
        let done: Vec<&RunResult> = self
            .runs
            .iter()
            .filter(|r| r.status == RunStatus::Done && !r.geometry.is_empty())
            .collect();
        if done.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n## [CLS] geometry after fine-tuning\n\nOn the first dev split at the last epoch, median over finished runs: centring ratio ||E h|| / E ||h||, share of the variance on the first principal component, mean |corr| between dimensions, and largest over median per-dimension std; raw [CLS] vector -> after the normalizer. The curves per epoch are in `TASK_geometry.png`.\n\n| task | normalizer | runs | centring | PC1 share | mean abs corr | std spread |\n|---|---|---|---|---|---|---|\n",
        );
        for ((task, variant), runs) in groups(&done, |r| (r.task.clone(), r.variant.clone())) {
            let last: Vec<ClsGeometry> = runs
                .iter()
                .filter_map(|r| r.geometry.last().copied())
                .collect();
            let med = |f: fn(&ClsGeometry) -> f64| {
                let v: Vec<f64> = last.iter().map(f).collect();
                super::stats::median(&v)
            };
            let cell = |raw: fn(&ClsGeometry) -> f64, norm: fn(&ClsGeometry) -> f64| {
                format!("{:.3} -> {:.3}", med(raw), med(norm))
            };
            md.push_str(&format!(
                "| {task} | {variant} | {} | {} | {} | {} | {} |\n",
                last.len(),
                cell(|g| g.raw.centring_ratio, |g| g.normalized.centring_ratio),
                cell(|g| g.raw.pc1_share, |g| g.normalized.pc1_share),
                cell(|g| g.raw.mean_abs_corr, |g| g.normalized.mean_abs_corr),
                cell(|g| g.raw.std_spread, |g| g.normalized.std_spread),
            ));
        }
        md
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
        md.push_str(
            &self.sources_line("Models fine-tuned (Hub repo@commit, or folder)", |r| {
                r.model.clone()
            }),
        );
        md.push_str(&self.sources_line(
            "Data (Hub dataset[:config]@commit, or training file)",
            |r| r.data.clone(),
        ));
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
            "\nValues are the primary dev metric x100 of each run's best epoch (\"best\", the papers' protocol) and of its last epoch (\"final\"): median, mean ± sample standard deviation over seeds, and [min, max]. \"Δ vs none\" is the mean (and median) over seeds of the paired difference to the `none` run with the same seed; p is a two-sided exact sign-flip permutation test of those differences (with n seeds the smallest possible p is 2/2^n: 0.25 for 3 seeds, 0.0625 for 5), and the bracket the 95% t-interval of their mean (mean ± t(0.975, n-1) sd / sqrt(n)). Seeds of a replication (`--replication`) are runs of their own, paired within their replication.\n",
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
                .or_else(|| {
                    // No run finished yet: a GLUE task's metric is known all the same.
                    crate::data::task::glue_task(&task).map(|t| t.primary.name().to_string())
                })
                .unwrap_or_else(|| "metric".into());
            md.push_str(&format!(
                "\n## {task} ({metric})\n\n| normalizer | seeds done | best: median | best: mean ± std [min, max] | final: median | final: mean ± std [min, max] | Δ vs none: mean / median [95% CI] | p |\n|---|---|---|---|---|---|---|---|\n"
            ));
            for r in rows {
                let d = r.vs_none.as_ref().map_or("– | –".into(), paired_cells);
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
        md.push_str(&self.pair_table());
        md.push_str(&self.geometry_table());
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
}
