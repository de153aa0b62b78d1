//! `clsnorm fetch`: models, GLUE tasks and Hub datasets into the Hugging Face cache ahead of the runs that
//! read them, e.g. on a cluster's login node for compute nodes without internet (which then
//! run with `HF_HUB_OFFLINE=1`); `sweep --slurm` does the same for its plan before it submits.
use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use clsnorm::hub::{HubEnv, Located};
use clsnorm::sweep::{SweepConfig, SweepPlan};

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A model to fetch (a Hub id as `--model` takes it: NAME, ORG/NAME, ORG/NAME@REVISION).
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// A GLUE task to fetch from the Hub's nyu-mll/glue (train and dev splits).
    #[arg(long)]
    pub task: Vec<String>,
    /// A Hub dataset to fetch, as `--dataset` takes it (ORG/NAME[:CONFIG][@REVISION]): every
    /// split of the config.
    #[arg(long)]
    pub dataset: Vec<String>,
    /// A sweep file: every model, GLUE task and Hub dataset its runs read.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fetch pytorch_model.bin where a repo has no safetensors.
    #[arg(long)]
    pub allow_pickle: bool,
}

/// What some runs read from the Hub: models (`None`: the default model; with whether pickles
/// are allowed) and GLUE tasks read without a data folder.
#[derive(Debug, Default)]
pub struct Needs {
    pub models: BTreeSet<(Option<PathBuf>, bool)>,
    pub tasks: BTreeSet<String>,
    /// Hub datasets (`--dataset`).
    pub datasets: BTreeSet<String>,
}

impl Needs {
    /// What the runs of `plan` read: their `--model`, and their GLUE `--task` when neither
    /// `--data-dir` nor `GLUE_DIR` gives the data.
    pub fn of_plan(plan: &SweepPlan) -> Needs {
        let mut needs = Needs::default();
        let glue_dir = std::env::var_os("GLUE_DIR").is_some();
        for run in &plan.runs {
            let value = |flag: &str| {
                run.args
                    .iter()
                    .position(|a| a == flag)
                    .and_then(|i| run.args.get(i + 1))
                    .cloned()
            };
            let has = |flag: &str| run.args.iter().any(|a| a == flag);
            needs
                .models
                .insert((value("--model").map(PathBuf::from), has("--allow-pickle")));
            if let Some(d) = value("--dataset") {
                needs.datasets.insert(d);
            } else if !glue_dir && !has("--data-dir") && !has("--train-file") {
                if let Some(task) = clsnorm::data::glue_task(&run.task) {
                    needs.tasks.insert(task.name);
                }
            }
        }
        needs
    }
}

pub fn run(a: FetchArgs) -> anyhow::Result<()> {
    let mut needs = Needs::default();
    for m in &a.model {
        needs.models.insert((Some(m.clone()), a.allow_pickle));
    }
    for t in &a.task {
        let spec = clsnorm::data::glue_task(t).with_context(|| {
            format!(
                "unknown GLUE task {}: expected one of {}",
                clsnorm::excerpt::quoted(t),
                clsnorm::data::task::glue_task_names().join(", ")
            )
        })?;
        needs.tasks.insert(spec.name);
    }
    if let Some(config) = &a.config {
        let plan = SweepConfig::from_file(config)?.expand(config)?;
        let of_plan = Needs::of_plan(&plan);
        needs.models.extend(of_plan.models);
        needs.tasks.extend(of_plan.tasks);
        needs.datasets.extend(of_plan.datasets);
    }
    needs.datasets.extend(a.dataset.iter().cloned());
    if needs.models.is_empty() && needs.tasks.is_empty() && needs.datasets.is_empty() {
        bail!("nothing to fetch: give --model, --task, --dataset or --config");
    }
    for line in fetch(&needs)? {
        super::print_stdout(&line)?;
    }
    Ok(())
}

/// Fetches everything `needs` names (what is cached already is only checked); one line per
/// item saying what it resolved to.
pub fn fetch(needs: &Needs) -> anyhow::Result<Vec<String>> {
    let env = HubEnv::from_process()?;
    let mut lines = Vec::new();
    let describe = |what: String, found: &Located| match &found.source {
        Some(s) => format!("{what}: {}@{} in {}", s.repo, s.commit, found.dir.display()),
        None => format!("{what}: the folder {}", found.dir.display()),
    };
    for (model, allow_pickle) in &needs.models {
        let found = super::args::resolve_model(model.as_deref(), &env, *allow_pickle)?;
        let name = model
            .as_ref()
            .map_or("the default".to_string(), |m| m.display().to_string());
        lines.push(describe(format!("model {name}"), &found));
    }
    for task in &needs.tasks {
        let found = super::finetune::glue_from_hub(task, "main")?;
        lines.push(describe(format!("GLUE {task}"), &found));
    }
    for d in &needs.datasets {
        let found = super::hub_data::fetch(d)?;
        lines.push(describe(format!("dataset {d}"), &found));
    }
    Ok(lines)
}
