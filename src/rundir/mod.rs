//! A run directory: created by clsnorm or recognised as one of its runs, locked before anything
//! is written in it, and cleaned up only of what this process created.
//!
//! Users point `--output` at folders they did not make (a home directory, `/`, a shared sweep
//! directory), and several processes may start on the same new directory at the same moment
//! (sweeps, cluster array jobs). The rules that keep their files safe:
//! - a fresh run goes into a directory that this process creates (atomically, `mkdir`), into
//!   an empty one, or into one where a start of a run was killed before the run's `config.json`
//!   existed (its [`MARKER`] carries the run's id; the only other files are the lock, temporary
//!   files and the normalizer cache); any other existing directory is refused without writing
//!   anything in it, and so is a directory inside another run's (see [`owner`]);
//! - a run's `config.json` repeats the marker's id: `--resume` refuses a folder whose two
//!   disagree;
//! - the lock ([`LOCK_FILE`], an advisory `flock`) is taken before anything else is written;
//! - a start that fails before the run's `config.json` exists removes the files it created,
//!   and the directory only when it created it and it is then empty (`rmdir`, never a
//!   recursive delete), and only while it still holds the lock;
//! - leftovers of a killed process (temporary checkpoint directories and files, a checkpoint
//!   left as `NAME.old` between its two renames) are recovered or removed under the lock.
pub mod owner;
pub mod records;
pub mod tensorboard;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Marks a directory as a clsnorm run directory (written when a run starts in it).
pub const MARKER: &str = ".clsnorm-run";
/// Name of the lock file in a run directory.
pub const LOCK_FILE: &str = ".lock";
/// The file whose presence means a run was started in a directory.
pub const CONFIG_FILE: &str = "config.json";
/// The checkpoint directories of a run.
pub const CHECKPOINTS: &[&str] = &["best", "last"];
/// The training-loss log.
pub const LOSS_FILE: &str = "train_loss.jsonl";
/// Frozen normalizer statistics fitted before training.
pub const NORMALIZER_CACHE: &str = "normalizer_stats.safetensors";

/// Whether `name` is a checkpoint being written (`best.tmp-PID`, as `checkpoint::save` names
/// them).
fn is_checkpoint_temp(name: &str) -> bool {
    CHECKPOINTS.iter().any(|c| {
        name.strip_prefix(c)
            .and_then(|r| r.strip_prefix(".tmp-"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Where each file of a run directory is.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    /// Every setting of the run ([`crate::train::RunConfig`]).
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }
    /// One [`records::EpochRecord`] per epoch.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    /// [`records::LossRecord`]s.
    pub fn loss(&self) -> PathBuf {
        self.dir.join(LOSS_FILE)
    }
    /// One [`records::GradRecord`] per update (with `--trace-grads`).
    pub fn grads(&self) -> PathBuf {
        self.dir.join("grads.jsonl")
    }
    /// Evaluations inside epochs (`--eval-every`), in `metrics.jsonl`'s format.
    pub fn evals(&self) -> PathBuf {
        self.dir.join("evals.jsonl")
    }

    /// The [`records::Summary`].
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    /// The best epoch's checkpoint.
    pub fn best(&self) -> PathBuf {
        self.dir.join(CHECKPOINTS[0])
    }
    /// The latest position's checkpoint.
    pub fn last(&self) -> PathBuf {
        self.dir.join(CHECKPOINTS[1])
    }
    /// Frozen normalizer statistics fitted before training.
    pub fn normalizer_cache(&self) -> PathBuf {
        self.dir.join(NORMALIZER_CACHE)
    }
}

/// Whether the checkpoint `dir` was written to the end (its manifest, written last, is there);
/// `crate::train::checkpoint::verify` checks its contents.
pub fn checkpoint_complete(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join("manifest.json")).is_ok_and(|m| m.is_file())
}

/// An open, locked run directory. Dropping it without [`RunDir::commit`] undoes what this
/// process created in it.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Held for the life of the value: the kernel releases it however the process ends.
    lock: Option<File>,
    /// Whether this process made the directory itself.
    created_dir: bool,
    /// The run's id ([`MARKER`]), repeated in its `config.json`; `None` for a run started
    /// before runs had ids (resumed as before).
    id: Option<String>,
    /// Files this process created in it, removed again if the start fails.
    created: Vec<PathBuf>,
    committed: bool,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Whether `name` is a file clsnorm itself puts into a fresh run directory before the run
/// starts (an empty directory holding only these may be used for a new run).
fn is_bookkeeping(name: &str) -> bool {
    // Temporary files too: another process may be writing the marker right now.
    name == MARKER || name == LOCK_FILE || owner::is_atomic_temp(name)
}

/// The id in the run marker of `dir`, when the marker is one that carries an id.
pub fn marker_id(dir: &Path) -> Option<String> {
    use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
    let bytes = read_regular(&dir.join(MARKER), MAX_SMALL_BYTES, Links::Refuse).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let id = v.get("id")?.as_str()?;
    (v.get("clsnorm")?.as_str()? == "run" && owner::is_id(id)).then(|| id.to_string())
}

/// Whether `dir` is a clsnorm run directory: it carries the [`MARKER`], or (runs from before
/// the marker) its `config.json` is a clsnorm run config.
pub fn is_run_dir(dir: &Path) -> bool {
    if dir.join(MARKER).is_file() {
        return true;
    }
    use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
    read_regular(&dir.join(CONFIG_FILE), MAX_SMALL_BYTES, Links::Refuse)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("clsnorm_version").is_some() && v.get("train").is_some())
}

/// Whether another process holds the lock of the run directory `dir` (a run in progress).
/// Never creates the lock file. The probe takes the lock for an instant when it is free;
/// [`RunDir::open`] retries for ~100 ms, so a start never fails because of a probe.
pub fn is_locked(dir: &Path) -> bool {
    // Without blocking on a FIFO or following a link; only a regular file can be a lock.
    let Ok((f, _)) =
        crate::fsread::open_regular(&dir.join(LOCK_FILE), u64::MAX, crate::fsread::Links::Refuse)
    else {
        return false;
    };
    matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

impl RunDir {
    /// Opens `path` for a new run (`resume == false`) or to continue the run in it.
    pub fn open(path: &Path, resume: bool) -> Result<RunDir> {
        if path.as_os_str().is_empty() {
            return Err(invalid("the run directory path is empty".into()));
        }
        let mut run = RunDir {
            path: path.to_path_buf(),
            lock: None,
            created_dir: false,
            id: None,
            created: Vec::new(),
            committed: false,
        };
        owner::check_placement(path, owner::Placement::RunOrSweep)?;
        if resume {
            if !path.join(CONFIG_FILE).is_file() || !is_run_dir(path) {
                return Err(invalid(format!(
                    "--resume: {} is not a clsnorm run directory (no run config.json)",
                    path.display()
                )));
            }
            run.committed = true; // nothing of an existing run is ever removed
                                  // Before the lock: a refused folder gets nothing written, not even the lock's pid.
            run.id = run.check_identity()?;
        } else {
            run.create_or_adopt()?;
        }
        run.lock()?;
        if !resume {
            // Checked again under the lock: another process may have started a run here.
            if path.join(CONFIG_FILE).exists() {
                return Err(invalid(format!(
                    "{} already holds a run; pass --resume to continue it, or choose another --output",
                    path.display()
                )));
            }
            run.check_adoptable()?;
            let id = match marker_id(path) {
                Some(id) => id,
                None => {
                    let id = owner::new_id();
                    let marker = path.join(MARKER);
                    let existed = marker.exists();
                    let text = format!("{{\"clsnorm\": \"run\", \"id\": \"{id}\"}}\n");
                    crate::atomic::write_bytes(&marker, text.as_bytes())?;
                    if !existed {
                        run.created.push(marker);
                    }
                    id
                }
            };
            run.id = Some(id);
        }
        run.recover_leftovers()?;
        Ok(run)
    }

    /// The run's id, recorded in its `config.json`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// On resume: the marker's id must be the one `config.json` repeats. A run from before
    /// runs had ids has neither.
    fn check_identity(&self) -> Result<Option<String>> {
        use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
        let config = self.path.join(CONFIG_FILE);
        let bytes = read_regular(&config, MAX_SMALL_BYTES, Links::Refuse)?;
        let recorded = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("run_id")?.as_str().map(str::to_string));
        let marked = marker_id(&self.path);
        match (&recorded, &marked) {
            (None, None) => Ok(None),
            (Some(r), Some(m)) if r == m => Ok(recorded),
            _ => Err(invalid(format!(
                "--resume: the run id in {} ({}) is not the one its marker {} holds ({}); \
                 the folder's files are not all of one run, so nothing in it is replaced",
                config.display(),
                recorded.as_deref().unwrap_or("none"),
                MARKER,
                marked.as_deref().unwrap_or("none")
            ))),
        }
    }

    /// A new run in an existing folder without a `config.json`: only what a killed start of a
    /// run leaves may be there (the lock, temporary files, and, when the marker carries an id,
    /// the normalizer cache that start fitted). Checked under the lock.
    fn check_adoptable(&self) -> Result<()> {
        let with_id = marker_id(&self.path).is_some();
        let foreign = owner::foreign_entries(&self.path, |name| {
            is_bookkeeping(name)
                || (with_id && name == NORMALIZER_CACHE)
                || is_checkpoint_temp(name)
        })?;
        if foreign.is_empty() {
            return Ok(());
        }
        Err(invalid(format!(
            "{} is not empty and holds no run that clsnorm recognises (it holds {}{}); clsnorm \
             writes a new run only into a new or empty directory: choose another --output",
            self.path.display(),
            foreign.join(", "),
            if foreign.len() == 3 { ", ..." } else { "" }
        )))
    }

    /// Creates the directory, or accepts an existing one that is empty or a clsnorm run
    /// directory; anything else is refused before a file is written in it.
    fn create_or_adopt(&mut self) -> Result<()> {
        let path = self.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {
                self.created_dir = true;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !meta.is_dir() {
            return Err(invalid(format!(
                "{} exists and is not a directory; choose another --output",
                path.display()
            )));
        }
        if path.join(CONFIG_FILE).exists() && is_run_dir(&path) {
            // Refused under the lock, with the hint to resume.
            return Ok(());
        }
        // Before the lock file is created in it: a foreign folder gets nothing written.
        match self.check_adoptable() {
            // Another process started a run here while the folder was listed: refused under
            // the lock, with the hint to resume.
            Err(_) if path.join(CONFIG_FILE).exists() && is_run_dir(&path) => Ok(()),
            other => other,
        }
    }

    /// Takes the advisory lock on `RUN/.lock`.
    fn lock(&mut self) -> Result<()> {
        use std::io::{Read, Seek, Write};
        let path = self.path.join(LOCK_FILE);
        let existed = path.exists();
        // Never through a link, and only a regular file: the lock is truncated and rewritten.
        let mut f = match crate::fsread::open_lock_file(&path) {
            Ok(f) => f,
            Err(Error::File { path, msg }) => {
                return Err(Error::File {
                    path,
                    msg: format!("{msg} (a run's lock must be a regular file, never a link)"),
                })
            }
            Err(e) => return Err(e),
        };
        // A few tries: `is_locked` (a sweep's status probe) holds the lock for an instant.
        let mut result = f.try_lock();
        for _ in 0..10 {
            if !matches!(result, Err(std::fs::TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            result = f.try_lock();
        }
        match result {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                return Err(invalid(format!(
                    "{} is in use by another clsnorm process ({}); wait for it to finish or stop it first",
                    self.path.display(),
                    holder.trim()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        // A process that failed its start may have removed the lock file after we opened it:
        // then the lock we hold is on a file nobody else will ever see.
        if !same_file(&f, &path) {
            return Err(invalid(format!(
                "{} was being set up by another clsnorm process at the same moment; try again",
                self.path.display()
            )));
        }
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = write!(f, "pid {}", std::process::id());
        if !existed {
            self.created.push(path);
        }
        self.lock = Some(f);
        Ok(())
    }

    /// Removes what killed processes left behind, and puts back a checkpoint that a kill left
    /// as `NAME.old` between its two renames. Only runs under the lock.
    fn recover_leftovers(&self) -> Result<()> {
        for name in CHECKPOINTS {
            let dir = self.path.join(name);
            let old = self.path.join(format!("{name}.old"));
            if !old.exists() {
                continue;
            }
            if checkpoint_complete(&dir) {
                remove_dir_all(&old)?;
            } else if checkpoint_complete(&old) {
                if dir.exists() {
                    remove_dir_all(&dir)?;
                }
                std::fs::rename(&old, &dir).map_err(|e| Error::io(&old, e))?;
                tracing::info!(
                    "recovered the checkpoint {} from {}",
                    dir.display(),
                    old.display()
                );
            }
        }
        let entries = std::fs::read_dir(&self.path).map_err(|e| Error::io(&self.path, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            let is_tmp_checkpoint = is_checkpoint_temp(&name);
            let is_tmp_file = owner::is_atomic_temp(&name);
            let Ok(ft) = entry.file_type() else { continue };
            if is_tmp_checkpoint && ft.is_dir() {
                tracing::info!("removing {} left by an interrupted process", p.display());
                remove_dir_all(&p)?;
            } else if is_tmp_file && ft.is_file() {
                tracing::info!("removing {} left by an interrupted process", p.display());
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a file this process created, to be removed if the start fails.
    pub fn created(&mut self, path: PathBuf) {
        self.created.push(path);
    }

    /// The run has started (its `config.json` is written): from now on nothing is removed.
    pub fn commit(&mut self) {
        self.committed = true;
    }
}

fn remove_dir_all(p: &Path) -> Result<()> {
    std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))
}

fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.committed || self.lock.is_none() {
            return;
        }
        // Lock file last: while it exists and is locked, no other process starts here.
        for p in self.created.iter().rev() {
            let _ = std::fs::remove_file(p);
        }
        if self.created_dir {
            // Fails, and so keeps the directory, if anything else is in it.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
