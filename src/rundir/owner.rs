//! Which folders clsnorm may write into, replace files in or delete from: those it made,
//! recognised by a record it wrote, never by a file name.
//!
//! Every output folder other than a run's (a sweep, an analysis, a report written elsewhere, a
//! gradient comparison) carries a marker naming its kind and a random id, and the folder's main
//! record (`sweep.json`, `analysis.json`, `results.json`, `compare.json`) repeats that id. An
//! existing folder is taken as clsnorm's only when both agree; a new, empty folder (or one
//! holding nothing but a marker) is claimed with a new id. Whatever else a folder holds, it
//! stays untouched: the command is refused before it writes anything.
//!
//! Nothing is written inside another run's checkpoint folders (`best/`, `last/`, which a
//! resumed run replaces whole), and no run or sweep is started inside a run's folder.
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kinds of output folder, each with its marker and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Sweep,
    Analysis,
    Report,
    Compare,
    Export,
}

impl OutputKind {
    /// The marker file.
    pub fn marker(self) -> &'static str {
        match self {
            OutputKind::Sweep => ".clsnorm-sweep",
            OutputKind::Analysis => ".clsnorm-analysis",
            OutputKind::Report => ".clsnorm-report",
            OutputKind::Compare => ".clsnorm-compare",
            OutputKind::Export => ".clsnorm-export",
        }
    }

    /// The record that repeats the marker's id (as its `output_id`).
    pub fn record(self) -> &'static str {
        match self {
            OutputKind::Sweep => "sweep.json",
            OutputKind::Analysis => "analysis.json",
            OutputKind::Report => "results.json",
            OutputKind::Compare => "compare.json",
            OutputKind::Export => crate::export::RECORD_FILE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            OutputKind::Sweep => "sweep",
            OutputKind::Analysis => "analysis",
            OutputKind::Report => "report",
            OutputKind::Compare => "gradient comparison",
            OutputKind::Export => "export",
        }
    }
}

/// What a marker holds.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    clsnorm: OutputKind,
    id: String,
}

/// A new random id (128 bits, hex): a folder's identity, not an experiment's randomness.
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `id` has the form [`new_id`] gives.
pub fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An output folder claimed for this process: its id, and the marker's lock, held until the
/// value is dropped so that a process starting on the same folder at the same moment waits
/// until the record (which the caller writes next) repeats the id.
#[derive(Debug)]
pub struct Claim {
    pub id: String,
    pub dir: PathBuf,
    _lock: File,
}

/// Whether a file named `name` is a temporary file of [`crate::atomic`] (`.NAME.tmp-PID`).
pub fn is_atomic_temp(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// The `output_id` a record file repeats, if it is a JSON object with one.
fn record_id(path: &Path) -> Result<Option<String>> {
    use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
    let bytes = read_regular(path, MAX_SMALL_BYTES, Links::Refuse)?;
    #[derive(Deserialize)]
    struct Record {
        output_id: Option<String>,
    }
    let r: Record = serde_json::from_slice(&bytes).map_err(|e| Error::File {
        path: path.to_path_buf(),
        msg: format!("not a clsnorm record: {e}"),
    })?;
    Ok(r.output_id)
}

/// Up to three entries of `dir` other than those `keep` accepts, for a refusal.
pub(crate) fn foreign_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            foreign.push(crate::excerpt::quoted(&name));
            if foreign.len() == 3 {
                break;
            }
        }
    }
    foreign.sort();
    Ok(foreign)
}

fn not_ours(dir: &Path, kind: OutputKind, why: &str) -> Error {
    Error::Invalid(format!(
        "{} {why}; clsnorm writes {} only into a new or empty folder, or one it made for the \
         same kind of output: choose another --output",
        dir.display(),
        match kind {
            OutputKind::Analysis => "an analysis",
            OutputKind::Sweep => "a sweep",
            OutputKind::Report => "a report",
            OutputKind::Compare => "a gradient comparison",
            OutputKind::Export => "an export",
        }
    ))
}

/// Claims `dir` for an output of `kind`: creates it, or accepts it when it is empty or holds a
/// marker of that kind whose id its record repeats. Refuses anything else without writing.
pub fn claim(dir: &Path, kind: OutputKind) -> Result<Claim> {
    claim_adopting(dir, kind, || Ok(None))
}

/// [`claim`], and for a folder with a record but no marker (made before folders had ids),
/// `adopt` checks the record, writes an id into it and returns that id (`None`: refuse). Runs
/// under the marker's lock.
pub fn claim_adopting(
    dir: &Path,
    kind: OutputKind,
    adopt: impl FnOnce() -> Result<Option<String>>,
) -> Result<Claim> {
    let placement = if kind == OutputKind::Sweep {
        Placement::RunOrSweep
    } else {
        Placement::Output
    };
    check_placement(dir, placement)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
            if !meta.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} exists and is not a folder; choose another --output",
                    dir.display()
                )));
            }
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    let marker_path = dir.join(kind.marker());
    let created = !marker_path.exists();
    let mut f = crate::fsread::open_lock_file(&marker_path)?;
    let decided = (|| {
        f.lock().map_err(|e| Error::io(&marker_path, e))?;
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| Error::io(&marker_path, e))?;
        let marker = serde_json::from_str::<Marker>(&text)
            .ok()
            .filter(|m| m.clsnorm == kind && is_id(&m.id));
        let record = dir.join(kind.record());
        let record_exists = std::fs::symlink_metadata(&record).is_ok();
        let bookkeeping = |n: &str| n == kind.marker() || is_atomic_temp(n);
        if let (Some(m), true) = (&marker, record_exists) {
            return match record_id(&record)? {
                Some(id) if id == m.id => Ok(m.id.clone()),
                _ => Err(not_ours(
                    dir,
                    kind,
                    &format!(
                        "holds a {} whose id is not its marker's ({})",
                        kind.record(),
                        kind.marker()
                    ),
                )),
            };
        }
        let adopted = match (&marker, record_exists) {
            (None, true) => adopt()?,
            _ => None,
        };
        let foreign = foreign_entries(dir, bookkeeping)?;
        if adopted.is_none() && !foreign.is_empty() {
            return Err(not_ours(
                dir,
                kind,
                &format!(
                    "is not empty and is not a clsnorm {} folder (it holds {}{})",
                    kind.name(),
                    foreign.join(", "),
                    if foreign.len() == 3 { ", ..." } else { "" }
                ),
            ));
        }
        if let Some(m) = marker {
            return Ok(m.id);
        }
        let id = adopted.unwrap_or_else(new_id);
        let text = serde_json::to_string(&Marker {
            clsnorm: kind,
            id: id.clone(),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        (|| {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        })()
        .map_err(|e| Error::io(&marker_path, e))?;
        Ok(id)
    })();
    match decided {
        Ok(id) => Ok(Claim {
            id,
            dir: dir.to_path_buf(),
            _lock: f,
        }),
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(&marker_path);
            }
            Err(e)
        }
    }
}

/// What is placed at a path, for [`check_placement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A run or a sweep: never inside a run's folder.
    RunOrSweep,
    /// Any other output: never inside a run's checkpoint folders.
    Output,
}

/// Whether `name` is one of a run's checkpoint folders or their temporary siblings.
fn is_checkpoint_name(name: &str) -> bool {
    super::CHECKPOINTS
        .iter()
        .any(|c| name == *c || name.strip_prefix(c).is_some_and(|r| r.starts_with('.')))
}

/// Refuses `path` inside a run's checkpoint folders (a resumed run replaces them whole), and
/// for runs and sweeps inside a run's folder at all.
pub fn check_placement(path: &Path, what: Placement) -> Result<()> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let mut child: Option<&Path> = None;
    for dir in abs.ancestors() {
        if let Some(c) = child {
            if super::is_run_dir(dir) {
                let name = c.file_name().map(|n| n.to_string_lossy().into_owned());
                let in_checkpoint = name.as_deref().is_some_and(is_checkpoint_name);
                if in_checkpoint || what == Placement::RunOrSweep {
                    return Err(Error::Invalid(format!(
                        "{} is inside the run folder {}{}: a resumed run replaces its \
                         checkpoints, and its folder is the run's own; choose an --output \
                         outside it",
                        path.display(),
                        dir.display(),
                        if in_checkpoint {
                            " (in a checkpoint folder)"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
        child = Some(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_temp_names_are_recognised_by_their_exact_form() {
        assert!(is_atomic_temp(".config.json.tmp-123"));
        assert!(!is_atomic_temp(".notes.tmp-draft"));
        assert!(!is_atomic_temp("config.json.tmp-1x"));
        assert!(!is_atomic_temp(".x.tmp-"));
        assert!(is_id(&new_id()) && new_id() != new_id());
    }
}
