//! `clsnorm export`: a run's checkpoint as a folder `transformers` loads as a sequence
//! classifier, with a model card.
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use clsnorm::export::card::RunInfo;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run folder (its best checkpoint is exported) or a checkpoint folder (RUN/best,
    /// RUN/last).
    pub source: PathBuf,
    /// The folder to write: new, empty, or an earlier export (whose files are replaced).
    #[arg(long)]
    pub output: PathBuf,
}

/// The checkpoint `source` names and the run folder it belongs to, if any.
fn locate(source: &Path) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    if clsnorm::rundir::is_run_dir(source) {
        let best = clsnorm::rundir::Layout::new(source).best();
        let ck = clsnorm::train::checkpoint::locate(&best).with_context(|| {
            format!(
                "{} is a run folder without a complete best checkpoint (has it finished an \
                 epoch?); name a checkpoint folder instead",
                source.display()
            )
        })?;
        return Ok((ck, Some(source.to_path_buf())));
    }
    let run = source
        .parent()
        .filter(|p| clsnorm::rundir::is_run_dir(p))
        .map(Path::to_path_buf);
    Ok((source.to_path_buf(), run))
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let (checkpoint, run_dir) = locate(&a.source)?;
    let run = match &run_dir {
        Some(d) => {
            Some(RunInfo::read(d).with_context(|| format!("reading the run {}", d.display()))?)
        }
        None => None,
    };
    let registry = clsnorm::Registry::builtin();
    let exported = clsnorm::export::export(&checkpoint, &a.output, &registry, run.as_ref())?;
    super::print_stdout(&serde_json::to_string_pretty(&exported)?)
}
