//! `--model NAME`: a model directory, or a model that the Hugging Face libraries downloaded
//! into their local cache (`models--ORG--NAME/snapshots/REVISION/`), found offline.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache directory the Hugging Face libraries use: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`,
/// from the environment `var` reads.
pub fn cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = var("HF_HUB_CACHE") {
        return Some(d.into());
    }
    if let Some(d) = var("HF_HOME") {
        return Some(Path::new(&d).join("hub"));
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("huggingface").join("hub"))
}

/// The model directory `model` names: itself when it is a directory; else, for a Hub id
/// (`NAME` or `ORG/NAME`), its snapshot in `cache` (the revision `refs/main` names, or the
/// only one there is). A bare `NAME` also finds `ORG/NAME` when one organisation's copy is
/// cached (`roberta-base` finds `FacebookAI/roberta-base`). Errors say where it looked.
pub fn resolve(model: &Path, cache: Option<&Path>) -> Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    let not_found = |looked: String| {
        Error::Invalid(format!(
            "--model {}: no such directory{looked}",
            model.display()
        ))
    };
    // What is written as a path (`./x`, `../x`, `/x`, `~/x`, `a/b/c`) is never a Hub id.
    let Some(id) = model
        .to_str()
        .filter(|s| is_hub_id(s) && !s.starts_with('.'))
    else {
        return Err(not_found(String::new()));
    };
    let Some(cache) = cache else {
        return Err(not_found(
            ", and no Hugging Face cache to look in (set HF_HOME or HF_HUB_CACHE)".into(),
        ));
    };
    let mut repos = vec![cache.join(format!("models--{}", id.replace('/', "--")))];
    if !id.contains('/') {
        let suffix = format!("--{id}");
        let mut others: Vec<PathBuf> = std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("models--") && n.ends_with(&suffix))
                    && p.file_name() != repos[0].file_name()
            })
            .collect();
        others.sort();
        repos.extend(others);
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for r in &repos {
        found.extend(
            snapshot(r)
                .map_err(|msg| Error::Invalid(format!("--model {id}: {}: {msg}", r.display())))?,
        );
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(not_found(format!(
            ", and no snapshot of it in the Hugging Face cache (looked for {}/snapshots/)",
            repos[0].display()
        ))),
        many => Err(Error::Invalid(format!(
            "--model {id} matches several cached models ({}); give ORG/NAME or a directory",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The snapshot of dataset `id` (`ORG/NAME`) in the Hugging Face cache `cache`
/// (`datasets--ORG--NAME/snapshots/REVISION/`, as `huggingface_hub` downloads it), if there is
/// one; the same rules as for models.
pub fn cached_dataset(cache: &Path, id: &str) -> Result<Option<PathBuf>> {
    if !is_hub_id(id) {
        return Err(Error::Invalid(format!(
            "{} is not a Hub dataset id",
            crate::excerpt::quoted(id)
        )));
    }
    let repo = cache.join(format!("datasets--{}", id.replace('/', "--")));
    snapshot(&repo)
        .map_err(|msg| Error::Invalid(format!("dataset {id}: {}: {msg}", repo.display())))
}

/// `NAME` or `ORG/NAME` of letters, digits, `-`, `_` and `.` (not `.` or `..`).
fn is_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The snapshot of a cached repository: the revision `refs/main` names, else the only one;
/// `None` when there is none. A `refs/main` naming a revision that is not there, or several
/// snapshots and no `refs/main`, is an error: loading some other snapshot would be a guess.
fn snapshot(repo: &Path) -> std::result::Result<Option<PathBuf>, String> {
    let snapshots = repo.join("snapshots");
    let mut dirs: Vec<String> = std::fs::read_dir(&snapshots)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let refs = repo.join("refs").join("main");
    if std::fs::symlink_metadata(&refs).is_ok() {
        let rev = crate::fsread::read_text(&refs, 4096).map_err(|e| e.to_string())?;
        let rev = rev.trim();
        if !is_hub_id(rev) || rev.contains('/') {
            return Err(format!(
                "refs/main holds {}, which is not a revision",
                crate::excerpt::quoted(rev)
            ));
        }
        let dir = snapshots.join(rev);
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        return Err(format!(
            "refs/main names revision {rev}, which is not in the cache (snapshots there: {}); \
             download it again, or give a snapshot directory as --model",
            if dirs.is_empty() {
                "none".to_string()
            } else {
                crate::excerpt::list(&dirs)
            }
        ));
    }
    match dirs.len() {
        0 => Ok(None),
        1 => Ok(Some(snapshots.join(&dirs[0]))),
        n => Err(format!(
            "{n} snapshots ({}) and no refs/main to choose one; give a snapshot directory as \
             --model",
            crate::excerpt::list(&dirs)
        )),
    }
}
