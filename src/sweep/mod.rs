//! Sweeps: a TOML file naming tasks, normalizers, seeds and `clsnorm finetune` options, any of
//! which may be a list, expanded into the cross product of runs. Each run has a deterministic
//! name, its own directory under the sweep directory, and the exact `finetune` arguments that
//! make it, so that any launcher (this crate's `sweep`, a Slurm array, a shell loop) can run it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod pool;
pub mod slurm;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One `[[norm]]` entry: a normalizer and its options (those of `--norm-opt`, e.g.
/// `beta = 0.5`, `affine = true`); a list value expands into several variants.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NormEntry {
    pub name: String,
    /// Name used in run names and tables (default: the name and its options).
    pub label: Option<String>,
    #[serde(flatten)]
    pub options: BTreeMap<String, toml::Value>,
}

/// The sweep file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Sweep name (default: the file's stem).
    pub name: Option<String>,
    /// Sweep directory (default: `runs/NAME`); relative paths are taken from the working
    /// directory, like every other path of clsnorm.
    pub output: Option<PathBuf>,
    /// Model directory, or a list of them.
    #[serde(default = "default_model")]
    pub model: toml::Value,
    /// GLUE tasks (or the names of custom data given in `args`).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Hub datasets (`ORG/NAME[:CONFIG][@REVISION]`, as `--dataset` takes them), one or a
    /// list; each is a task of the sweep beside `tasks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<toml::Value>,
    pub seeds: Vec<u64>,
    /// Normalizers (default: `none` only).
    #[serde(default)]
    pub norm: Vec<NormEntry>,
    /// Other `finetune` options; a list value makes the sweep a cross product over it.
    #[serde(default)]
    pub args: BTreeMap<String, toml::Value>,
}

fn default_model() -> toml::Value {
    toml::Value::String("models/all-MiniLM-L6-v2".into())
}

/// Options that the sweep sets itself.
const RESERVED: &[&str] = &[
    "task", "dataset", "seed", "norm", "output", "resume", "model", "quiet",
];

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    /// `TASK_VARIANT_sSEED`: unique within the sweep, usable as a file name.
    pub name: String,
    pub task: String,
    /// Normalizer label plus the varying options: what a report compares across seeds.
    pub variant: String,
    /// The normalizer's name (`none`, `isobn`, ...).
    pub norm: String,
    pub seed: u64,
    /// Run directory, relative to the sweep directory.
    pub dir: PathBuf,
    /// `finetune` arguments without the output directory (added by [`PlannedRun::command`]).
    pub args: Vec<String>,
}

impl PlannedRun {
    /// The full `clsnorm finetune ...` argument list (without the program name) for a sweep
    /// in `sweep_dir`.
    pub fn command(&self, sweep_dir: &Path) -> Vec<String> {
        let mut c = vec!["finetune".to_string()];
        c.extend(self.args.iter().cloned());
        c.push("--output".into());
        c.push(sweep_dir.join(&self.dir).display().to_string());
        c
    }
}

/// The expanded sweep, written as `sweep.json` in the sweep directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPlan {
    pub name: String,
    pub dir: PathBuf,
    pub config: SweepConfig,
    pub runs: Vec<PlannedRun>,
    /// The sweep folder's id, as its marker holds it ([`crate::rundir::owner`]); absent in a
    /// plan not yet written, and in sweeps made before folders had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_id: Option<String>,
}

/// File name of the plan in the sweep directory.
pub const PLAN_FILE: &str = "sweep.json";

fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// A TOML value as a command-line word; `None` for a false flag.
fn word(key: &str, v: &toml::Value) -> std::result::Result<Option<String>, String> {
    Ok(match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(true) => Some(String::new()),
        toml::Value::Boolean(false) => None,
        other => {
            return Err(format!(
                "`{key}`: expected a string, number, boolean or a list of them, got {}",
                other.type_str()
            ))
        }
    })
}

/// The alternatives of a value: a list's elements, or the value itself.
fn alternatives(key: &str, v: &toml::Value) -> std::result::Result<Vec<toml::Value>, String> {
    match v {
        toml::Value::Array(a) if a.is_empty() => Err(format!("`{key}`: empty list")),
        toml::Value::Array(a) => {
            if a.iter().any(|x| x.is_array() || x.is_table()) {
                return Err(format!("`{key}`: lists of lists are not supported"));
            }
            Ok(a.clone())
        }
        v => Ok(vec![v.clone()]),
    }
}

/// How many combinations lists of alternatives make (`None` past `usize`), without making them.
/// A malformed list counts once: the expansion reports it.
fn alternatives_product<'a>(mut values: impl Iterator<Item = &'a toml::Value>) -> Option<usize> {
    values.try_fold(1usize, |n, v| match v {
        toml::Value::Array(a) if !a.is_empty() => n.checked_mul(a.len()),
        _ => Some(n),
    })
}

/// Cross product of `key -> alternatives`, in key order; each element is `(key, value)` pairs.
fn cross(choices: &[(String, Vec<toml::Value>)]) -> Vec<Vec<(String, toml::Value)>> {
    let mut out: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
    for (k, alts) in choices {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                alts.iter().map(move |a| {
                    let mut p = prefix.clone();
                    p.push((k.clone(), a.clone()));
                    p
                })
            })
            .collect();
    }
    out
}

/// `--key value` words for `(key, value)` pairs (a true boolean is a bare flag).
fn flags(pairs: &[(String, toml::Value)]) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        if let Some(w) = word(k, v)? {
            out.push(format!("--{k}"));
            if !v.is_bool() {
                out.push(w);
            }
        }
    }
    Ok(out)
}

/// `--norm-opt key=value` words for a normalizer's options.
fn norm_flags(pairs: &[(String, toml::Value)]) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let w = match v {
            toml::Value::Boolean(b) => b.to_string(),
            v => word(k, v)?.unwrap_or_default(),
        };
        out.push("--norm-opt".into());
        out.push(format!("{k}={w}"));
    }
    Ok(out)
}

/// `key=value` for a name: booleans become the bare key (true) or nothing (false).
fn tag(key: &str, v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::Boolean(true) => Some(key.to_string()),
        toml::Value::Boolean(false) => None,
        v => word(key, v).ok().flatten().map(|w| format!("{key}={w}")),
    }
}

/// Keeps characters safe in file names and shell words (letters, digits, `=+-.`); anything
/// else becomes `-`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "=+-.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl SweepConfig {
    /// Reads and validates a sweep file.
    pub fn from_file(path: &Path) -> Result<SweepConfig> {
        let text = crate::fsread::read_text(path, crate::fsread::MAX_SMALL_BYTES)?;
        let cfg: SweepConfig = toml::from_str(&text).map_err(|e| invalid(path, e))?;
        Ok(cfg)
    }

    /// The sweep's name: `name`, or the file stem of `path`.
    pub fn resolved_name(&self, path: &Path) -> String {
        self.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "sweep".into(), |s| s.to_string_lossy().into_owned())
        })
    }

    /// Expands the cross product. Runs are ordered task, model, options, normalizer, seed, so
    /// that a shard's runs are spread over tasks and the seeds of a variant end up together.
    pub fn expand(&self, path: &Path) -> Result<SweepPlan> {
        let err = |m: String| invalid(path, m);
        let name = self.resolved_name(path);
        self.check_fields(&name).map_err(&err)?;
        let dir = self
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(sanitize(&name)));
        let models = self.models().map_err(&err)?;
        let arg_choices: Vec<(String, Vec<toml::Value>)> = self
            .args
            .iter()
            .map(|(k, v)| Ok((k.clone(), alternatives(k, v)?)))
            .collect::<std::result::Result<_, String>>()
            .map_err(&err)?;
        let norms = self.norm_entries();
        self.check_run_count(&models, &norms).map_err(&err)?;
        let variants = norm_variants(&norms).map_err(&err)?;
        let runs = self
            .plan_runs(&models, &arg_choices, &variants)
            .map_err(&err)?;
        Ok(SweepPlan {
            name,
            dir,
            config: self.clone(),
            runs,
            output_id: None,
        })
    }

    /// Checks the fields that need no expansion: names, tasks, seeds, and `args` keys.
    fn check_fields(&self, name: &str) -> std::result::Result<(), String> {
        // The name and folder reach file names, logs and Slurm scripts: a control character
        // there is a mistake (or an attack), never a name.
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(format!(
                "`name` {}: expected a non-empty name without control characters",
                crate::excerpt::quoted(name)
            ));
        }
        if let Some(o) = &self.output {
            let text = o.to_string_lossy();
            if text.is_empty() || text.chars().any(char::is_control) {
                return Err(format!(
                    "`output` {}: expected a folder name without control characters",
                    crate::excerpt::quoted(&text)
                ));
            }
        }
        let datasets = self.datasets()?;
        if self.tasks.is_empty() && datasets.is_empty() {
            return Err("`tasks` is empty, and no `dataset` is given".into());
        }
        if self.seeds.is_empty() {
            return Err("`seeds` is empty".into());
        }
        // A task name is a GLUE task, or the name of custom data given with `train_file`: a
        // typo fails now, not when its runs start.
        let custom = self.args.contains_key("train_file") || self.args.contains_key("train-file");
        for t in &self.tasks {
            if crate::data::task::glue_task(t).is_none() && !custom {
                return Err(format!(
                    "unknown task {}: expected one of {} (or give custom data with `args.train_file`)",
                    crate::excerpt::quoted(t),
                    crate::data::task::glue_task_names().join(", ")
                ));
            }
        }
        let mut seen_seeds = self.seeds.clone();
        seen_seeds.sort_unstable();
        seen_seeds.dedup();
        if seen_seeds.len() != self.seeds.len() {
            return Err("`seeds` lists a seed twice".into());
        }
        for k in self.args.keys() {
            let shown = crate::excerpt::quoted(k);
            if RESERVED.contains(&k.as_str()) {
                return Err(format!(
                    "`args.{k}` is set by the sweep itself; use the top-level `tasks`, `seeds`, `model` or `[[norm]]`"
                ));
            }
            if k == "norm-opt" || k == "norm_opt" {
                return Err(format!(
                    "`args.{k}` is a normalizer option: put it in the `[[norm]]` entry it belongs to"
                ));
            }
            if k.starts_with('-') {
                return Err(format!(
                    "`args` key {shown}: write option names without dashes"
                ));
            }
        }
        Ok(())
    }

    /// The Hub datasets, each with the task name its runs have (`NAME` or `NAME-CONFIG`).
    fn datasets(&self) -> std::result::Result<Vec<(String, String)>, String> {
        let Some(v) = &self.dataset else {
            return Ok(Vec::new());
        };
        alternatives("dataset", v)?
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => {
                    let id: crate::data::hub_dataset::DatasetId =
                        s.parse().map_err(|e| format!("`dataset`: {e}"))?;
                    Ok((s.clone(), id.task_name()))
                }
                _ => Err("`dataset`: expected ORG/NAME[:CONFIG][@REVISION]".into()),
            })
            .collect()
    }

    /// The models, one or a list.
    fn models(&self) -> std::result::Result<Vec<String>, String> {
        alternatives("model", &self.model)?
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                _ => Err("`model`: expected a directory name".into()),
            })
            .collect()
    }

    /// The `[[norm]]` entries, or `none` alone.
    fn norm_entries(&self) -> Vec<NormEntry> {
        if self.norm.is_empty() {
            vec![NormEntry {
                name: "none".into(),
                label: None,
                options: BTreeMap::new(),
            }]
        } else {
            self.norm.clone()
        }
    }

    /// Counts the runs before expanding: a few lists of options multiply into more runs than
    /// memory holds.
    fn check_run_count(
        &self,
        models: &[String],
        norms: &[NormEntry],
    ) -> std::result::Result<(), String> {
        let norm_variants = norms.iter().try_fold(0usize, |n, entry| {
            n.checked_add(alternatives_product(entry.options.values())?)
        });
        let total = [
            self.tasks
                .len()
                .checked_add(self.datasets().map_or(0, |d| d.len())),
            Some(models.len()),
            alternatives_product(self.args.values()),
            norm_variants,
            Some(self.seeds.len()),
        ]
        .into_iter()
        .try_fold(1usize, |n, k| n.checked_mul(k?));
        match total {
            Some(n) if n <= MAX_RUNS => Ok(()),
            _ => Err(format!(
                "the sweep expands to {} runs (tasks x models x option lists x normalizer \
                 variants x seeds); at most {MAX_RUNS}",
                total.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            )),
        }
    }

    /// Every run of the plan, in plan order; refuses two runs of one name.
    fn plan_runs(
        &self,
        models: &[String],
        arg_choices: &[(String, Vec<toml::Value>)],
        variants: &[NormVariant],
    ) -> std::result::Result<Vec<PlannedRun>, String> {
        // GLUE names in their canonical spelling (`sst2` -> `SST-2`), so names and tables agree
        // whatever the file says; other names are custom tasks and stay as written.
        // Each task with the words that give its data: `--task NAME`, or `--dataset ID --task
        // NAME` for a Hub dataset.
        let mut tasks: Vec<(String, Vec<String>)> = self
            .tasks
            .iter()
            .map(|t| crate::data::task::glue_task(t).map_or_else(|| t.clone(), |s| s.name))
            .map(|t| (t.clone(), vec!["--task".to_string(), t]))
            .collect();
        for (id, name) in self.datasets()? {
            tasks.push((
                name.clone(),
                vec!["--dataset".into(), id, "--task".into(), name],
            ));
        }
        let mut runs = Vec::new();
        for (task, data_words) in &tasks {
            for model in models {
                for combo in cross(arg_choices) {
                    let hp = hyperparameter_tags(models.len() > 1, model, arg_choices, &combo);
                    let arg_flags = flags(&combo)?;
                    for v in variants {
                        let variant = std::iter::once(v.label.clone())
                            .chain(hp.iter().cloned())
                            .collect::<Vec<_>>()
                            .join("_");
                        for &seed in &self.seeds {
                            let name = format!("{}_{variant}_s{seed}", sanitize(task));
                            let mut args = vec!["--model".to_string(), model.clone()];
                            args.extend(data_words.iter().cloned());
                            args.extend([
                                "--seed".into(),
                                seed.to_string(),
                                "--norm".into(),
                                v.norm.clone(),
                            ]);
                            args.extend(v.flags.iter().cloned());
                            args.extend(arg_flags.iter().cloned());
                            runs.push(PlannedRun {
                                dir: PathBuf::from(&name),
                                name,
                                task: task.clone(),
                                variant: variant.clone(),
                                norm: v.norm.clone(),
                                seed,
                                args,
                            });
                        }
                    }
                }
            }
        }
        let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two runs would share the name `{}`", w[0]));
        }
        Ok(runs)
    }
}

/// One normalizer variant of a sweep: its label in names and tables, the normalizer and its
/// `--norm-opt` words.
struct NormVariant {
    label: String,
    norm: String,
    flags: Vec<String>,
}

/// The variants of the `[[norm]]` entries; refuses two of one label.
fn norm_variants(norms: &[NormEntry]) -> std::result::Result<Vec<NormVariant>, String> {
    let mut variants: Vec<NormVariant> = Vec::new();
    for n in norms {
        let choices: Vec<(String, Vec<toml::Value>)> = n
            .options
            .iter()
            .map(|(k, v)| Ok((k.clone(), alternatives(k, v)?)))
            .collect::<std::result::Result<_, String>>()?;
        let varying: Vec<&str> = choices
            .iter()
            .filter(|(_, a)| a.len() > 1)
            .map(|(k, _)| k.as_str())
            .collect();
        // Options name the variant when they vary within the entry (a list) or tell it apart
        // from another entry of the same normalizer.
        let shared_name = norms.iter().filter(|m| m.name == n.name).count() > 1;
        for combo in cross(&choices) {
            let mut label = n.label.clone().unwrap_or_else(|| n.name.clone());
            for (k, v) in &combo {
                let named = varying.contains(&k.as_str()) || (shared_name && n.label.is_none());
                if !named {
                    continue;
                }
                if let Some(t) = tag(k, v) {
                    label.push('-');
                    label.push_str(&t);
                }
            }
            variants.push(NormVariant {
                label: sanitize(&label),
                norm: n.name.clone(),
                flags: norm_flags(&combo)?,
            });
        }
    }
    let mut labels: Vec<&str> = variants.iter().map(|v| v.label.as_str()).collect();
    labels.sort_unstable();
    if let Some(w) = labels.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "two normalizer entries are both named `{}`: give one a `label`",
            w[0]
        ));
    }
    Ok(variants)
}

/// The parts of a variant's name that tell its model and varying `args` apart.
fn hyperparameter_tags(
    several_models: bool,
    model: &str,
    arg_choices: &[(String, Vec<toml::Value>)],
    combo: &[(String, toml::Value)],
) -> Vec<String> {
    let mut hp = Vec::new();
    if several_models {
        let stem = Path::new(model)
            .file_name()
            .map_or_else(|| model.to_string(), |s| s.to_string_lossy().into_owned());
        hp.push(sanitize(&stem));
    }
    for (k, v) in combo {
        if arg_choices.iter().any(|(ck, a)| ck == k && a.len() > 1) {
            hp.extend(tag(k, v).map(|t| sanitize(&t)));
        }
    }
    hp
}

/// The most runs one sweep may plan (its plan, `sweep.json`, lists every run).
pub const MAX_RUNS: usize = 100_000;

/// `--shard I/N`: the runs whose position in the plan is I modulo N (0-based I, as Slurm's
/// `SLURM_ARRAY_TASK_ID` with `--array=0-(N-1)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::Invalid(format!("--shard: expected I/N with 0 <= I < N, got `{s}`"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether the run at `position` in the plan belongs to this shard.
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index
    }
}

/// Where a run stands, judged from its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// `summary.json` says the run finished.
    Done,
    /// The directory holds a run that did not finish: continue it with `finetune --resume`.
    Interrupted,
    /// Nothing there yet.
    Pending,
    /// Another process (another sweep, shard or user) holds the run's lock: it is training.
    Running,
}

impl RunStatus {
    /// How the status reads in listings.
    pub fn describe(self) -> &'static str {
        match self {
            RunStatus::Done => "done",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Pending => "pending",
            RunStatus::Running => "running elsewhere",
        }
    }
}

/// The status of the run in `dir`. A `summary.json` that cannot be read or is not a run
/// summary is an error naming the file (never taken for "not finished", which would train the
/// run again over it).
pub fn status(dir: &Path) -> Result<RunStatus> {
    if crate::rundir::is_locked(dir) {
        return Ok(RunStatus::Running);
    }
    let layout = crate::rundir::Layout::new(dir);
    let path = layout.summary();
    // The whole summary, as `report` reads it: a run `sweep` calls done is one it can report.
    if std::fs::symlink_metadata(&path).is_ok()
        && !crate::rundir::records::Summary::read(&path)?.interrupted
    {
        return Ok(RunStatus::Done);
    }
    Ok(if layout.config().is_file() {
        RunStatus::Interrupted
    } else {
        RunStatus::Pending
    })
}

impl SweepPlan {
    /// The `finetune` arguments that bring the run to completion from where it stands, or
    /// `None` when there is nothing for this process to do (done, or running elsewhere).
    pub fn next_command(&self, run: &PlannedRun, status: RunStatus) -> Option<Vec<String>> {
        let dir = self.dir.join(&run.dir);
        match status {
            RunStatus::Done | RunStatus::Running => None,
            RunStatus::Interrupted => Some(vec![
                "finetune".into(),
                "--resume".into(),
                dir.display().to_string(),
            ]),
            RunStatus::Pending => Some(run.command(&self.dir)),
        }
    }

    /// Claims the sweep folder ([`crate::rundir::owner::claim`]) and writes the plan into it
    /// with the folder's id, unless the same plan is there. A folder of an earlier sweep of
    /// the same file keeps its id; one whose runs were planned with other arguments is
    /// refused. A sweep folder made before folders had ids (a `sweep.json` without one) is
    /// given an id.
    pub fn claim_and_write(&mut self) -> Result<()> {
        use crate::rundir::owner::{self, OutputKind};
        owner::check_placement(&self.dir, owner::Placement::RunOrSweep)?;
        let path = self.dir.join(PLAN_FILE);
        let claim = owner::claim_adopting(&self.dir, OutputKind::Sweep, || {
            // Only a plan clsnorm wrote counts: anything else makes the claim refuse.
            let mut old = SweepPlan::load(&self.dir)?;
            if old.output_id.is_none() {
                old.output_id = Some(owner::new_id());
                crate::atomic::write_json(&path, &old)?;
            }
            Ok(old.output_id)
        })?;
        self.output_id = Some(claim.id.clone());
        if std::fs::symlink_metadata(&path).is_ok() {
            let old = SweepPlan::load(&self.dir)?;
            for run in &self.runs {
                if let Some(o) = old.runs.iter().find(|o| o.name == run.name) {
                    if o.args != run.args {
                        return Err(invalid(
                            &path,
                            format!(
                                "plans run {} with other options ({}); use another `output` for a changed sweep",
                                run.name,
                                shell_words::join(&o.args)
                            ),
                        ));
                    }
                }
            }
            // Array tasks and other shards find it in place and equal; a sweep file that
            // grew (more seeds, say) writes the larger plan.
            if old.runs == self.runs && old.output_id == self.output_id {
                return Ok(());
            }
        }
        crate::atomic::write_json(&path, self)
    }

    /// Reads the `sweep.json` of a sweep directory.
    pub fn load(sweep_dir: &Path) -> Result<SweepPlan> {
        let path = sweep_dir.join(PLAN_FILE);
        let text = crate::fsread::read_text(&path, crate::fsread::MAX_SMALL_BYTES)?;
        let mut plan: SweepPlan = serde_json::from_str(&text).map_err(|e| invalid(&path, e))?;
        // The directory may have moved (e.g. copied off a cluster): trust where it is now.
        plan.dir = sweep_dir.to_path_buf();
        Ok(plan)
    }
}
