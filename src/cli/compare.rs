//! `clsnorm compare-grads`: overlays the gradient traces (`grads.jsonl`) of several runs.
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use clsnorm::analyze::plots::{grad_curves, Curve};
use clsnorm::rundir::owner::OutputKind;
use clsnorm::train::GradRecord;

#[derive(Debug, Args)]
pub struct CompareGradsArgs {
    /// Run directories trained with --trace-grads.
    #[arg(required = true, num_args = 2..)]
    pub runs: Vec<PathBuf>,
    /// Where to write the pictures (default: the current directory).
    #[arg(long, default_value = ".")]
    pub output: PathBuf,
}

pub fn run(a: CompareGradsArgs) -> anyhow::Result<()> {
    let mut traces = Vec::new();
    for run in &a.runs {
        let path = clsnorm::rundir::Layout::new(run).grads();
        if !path.is_file() {
            bail!(
                "{}: no gradient trace (was the run trained with --trace-grads?)",
                path.display()
            );
        }
        let recs: Vec<GradRecord> = clsnorm::rundir::records::read_all(&path)?;
        if recs.is_empty() {
            bail!(
                "{} holds no gradient record written by --trace-grads",
                path.display()
            );
        }
        let label = run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        traces.push((label, recs));
    }
    // Claimed before anything is written; held until compare.json repeats its id.
    let claim = clsnorm::rundir::owner::claim(&a.output, OutputKind::Compare)?;
    let curves = |f: &dyn Fn(&GradRecord) -> f64| -> Vec<Curve> {
        traces
            .iter()
            .map(|(label, recs)| Curve {
                label: label.clone(),
                points: recs.iter().map(|r| (r.step as f64, f(r))).collect(),
            })
            .collect()
    };
    grad_curves(
        &a.output,
        "grads_cls",
        "Gradient norm w.r.t. the [CLS] vector (before the normalizer)",
        "||dL/d[CLS]|| (log scale)",
        &curves(&|r| r.cls_grad_norm),
    )?;
    grad_curves(
        &a.output,
        "grads_global",
        "Global gradient norm",
        "||grad|| (log scale)",
        &curves(&|r| r.global_grad_norm),
    )?;
    grad_curves(
        &a.output,
        "grads_max_dim",
        "Largest per-dimension [CLS] gradient",
        "max_j ||dL/dh_j|| (log scale)",
        &curves(&|r| r.max_dim_grad),
    )?;
    let mut summary = serde_json::Map::new();
    for (label, recs) in &traces {
        let mean =
            |f: &dyn Fn(&GradRecord) -> f64| recs.iter().map(f).sum::<f64>() / recs.len() as f64;
        let max = |f: &dyn Fn(&GradRecord) -> f64| recs.iter().map(f).fold(0.0, f64::max);
        summary.insert(
            label.clone(),
            serde_json::json!({
                "updates": recs.len(),
                "cls_grad_norm_mean": mean(&|r| r.cls_grad_norm),
                "cls_grad_norm_max": max(&|r| r.cls_grad_norm),
                "global_grad_norm_mean": mean(&|r| r.global_grad_norm),
                "global_grad_norm_max": max(&|r| r.global_grad_norm),
            }),
        );
    }
    let text = serde_json::to_string_pretty(&summary)?;
    clsnorm::atomic::write_json(
        &a.output.join(OutputKind::Compare.record()),
        &serde_json::json!({ "output_id": claim.id, "runs": summary }),
    )?;
    super::print_stdout(&text)
}
