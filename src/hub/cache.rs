//! The local Hugging Face cache, read offline: `models--ORG--NAME/refs/REVISION` names a
//! commit, `snapshots/COMMIT/FILE` links to `blobs/ETAG`. Nothing here trusts the cache: refs
//! must name a commit folder that is there, links must stay inside the repository's `blobs/`,
//! and a blob whose name is its hash (sha256 for LFS files, the git object id for the others)
//! must still have the bytes that hash names.
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::{is_commit, is_revision, HubSource, Located, RepoKind, RepoRef};
use crate::error::{Error, Result};

/// The hub cache directory the Hugging Face libraries use: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`,
/// from the environment `var` reads.
pub fn cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = var("HF_HUB_CACHE") {
        return Some(d.into());
    }
    Some(hf_home(&var)?.join("hub"))
}

/// The Hugging Face libraries' home folder: `HF_HOME`, else `XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface`.
pub fn hf_home(var: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(d) = var("HF_HOME") {
        return Some(d.into());
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("huggingface"))
}

/// Tokenizer files a model run can read, or that name why it cannot (small; all are fetched).
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spm.model",
    "sentencepiece.bpe.model",
];

/// The files of model folder `dir` that a run reads, when it has them all: `config.json`, a
/// tokenizer clsnorm builds, and the weights (safetensors, the sharded index and every shard
/// it names, or, when `allow_pickle`, a pickle). `None` when something is missing.
pub fn model_files(dir: &Path, allow_pickle: bool) -> Option<Vec<String>> {
    use crate::encoder::weights::{PICKLE_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
    let has = |f: &str| dir.join(f).is_file();
    if !has("config.json") || !crate::tokenize::has_tokenizer(has) {
        return None;
    }
    let mut files: Vec<String> = std::iter::once("config.json")
        .chain(TOKENIZER_FILES.iter().copied().filter(|f| has(f)))
        .map(String::from)
        .collect();
    if has(SAFETENSORS_FILE) {
        files.push(SAFETENSORS_FILE.into());
    } else if has(SAFETENSORS_INDEX_FILE) {
        let shards = index_shards(&dir.join(SAFETENSORS_INDEX_FILE)).ok()?;
        if !shards.iter().all(|s| has(s)) {
            return None;
        }
        files.push(SAFETENSORS_INDEX_FILE.into());
        files.extend(shards);
    } else if allow_pickle && has(PICKLE_FILE) {
        files.push(PICKLE_FILE.into());
    } else {
        return None;
    }
    Some(files)
}

/// The shard files a sharded checkpoint's index names (`weight_map` values), each a plain
/// file name beside the index.
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    let bytes = crate::fsread::read_regular(index, 64 << 20, crate::fsread::Links::Follow)?;
    let bad = |msg: String| Error::File {
        path: index.to_path_buf(),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .filter(|f| super::is_repo_file(f) && !f.contains('/'))
            .ok_or_else(|| {
                bad(format!(
                    "weight_map names {}, not a file name beside the index",
                    crate::excerpt::quoted(&f.to_string())
                ))
            })?;
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    if shards.len() > 10_000 {
        return Err(bad(format!("{} shards; at most 10000", shards.len())));
    }
    Ok(shards)
}

/// Model `repo` in `cache` with every file a run reads, verified. A bare `NAME` also finds
/// `ORG/NAME` when one organisation's copy is cached (`roberta-base` finds
/// `FacebookAI/roberta-base`). `None` when it is not cached, or only in part.
pub fn find_model(cache: &Path, repo: &RepoRef, allow_pickle: bool) -> Result<Option<Located>> {
    let mut candidates = vec![repo.clone()];
    if !repo.id.contains('/') {
        let suffix = format!("--{}", repo.id);
        let mut others: Vec<String> = std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n.starts_with("models--") && n.ends_with(&suffix))
            .filter_map(|n| {
                let org = n.strip_prefix("models--")?.strip_suffix(&suffix)?;
                let id = format!("{org}/{}", repo.id);
                super::is_repo_id(&id).then_some(id)
            })
            .collect();
        others.sort();
        candidates.extend(others.into_iter().map(|id| RepoRef { id, ..repo.clone() }));
    }
    let mut found: Vec<(RepoRef, PathBuf, String)> = Vec::new();
    for r in candidates {
        let folder = r.folder(cache);
        let snap = snapshot(&folder, &r.revision).map_err(|msg| {
            Error::Invalid(format!(
                "--model {}: {}: {msg}",
                r.display(),
                folder.display()
            ))
        })?;
        if let Some((dir, commit)) = snap {
            found.push((r, dir, commit));
        }
    }
    let (r, dir, commit) = match found.len() {
        0 => return Ok(None),
        1 => found.remove(0),
        _ => {
            return Err(Error::Invalid(format!(
                "--model {} matches several cached models ({}); give ORG/NAME or a directory",
                repo.display(),
                found
                    .iter()
                    .map(|(r, ..)| r.id.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    {
        use crate::encoder::weights::{PICKLE_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
        let mut names = vec![
            "config.json",
            SAFETENSORS_FILE,
            SAFETENSORS_INDEX_FILE,
            PICKLE_FILE,
        ];
        names.extend_from_slice(TOKENIZER_FILES);
        check_entries(&dir, &names)?;
    }
    let Some(files) = model_files(&dir, allow_pickle) else {
        return Ok(None);
    };
    verify(&r.folder(cache), &dir, &files)?;
    Ok(Some(located(&r, dir, commit)))
}

/// The files of a cached snapshot, as paths inside it (`data/train-0.parquet`), as its
/// listing named them: at most 10,000, at most 16 folders deep, hidden names left out.
pub fn snapshot_files(snap: &Path) -> Vec<String> {
    const MAX: usize = 10_000;
    let mut out = Vec::new();
    let mut todo = vec![(snap.to_path_buf(), String::new(), 0)];
    while let Some((dir, prefix, depth)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || out.len() >= MAX {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = e.path();
            if path.is_dir() {
                if depth < 16 {
                    todo.push((path, rel, depth + 1));
                }
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// Dataset `repo`'s snapshot in `cache` when `complete` finds in it every file needed (it
/// returns them, as paths inside the snapshot), verified.
pub fn find_dataset(
    cache: &Path,
    repo: &RepoRef,
    complete: &dyn Fn(&Path) -> Option<Vec<String>>,
) -> Result<Option<Located>> {
    let folder = repo.folder(cache);
    let snap = snapshot(&folder, &repo.revision).map_err(|msg| {
        Error::Invalid(format!(
            "dataset {}: {}: {msg}",
            repo.display(),
            folder.display()
        ))
    })?;
    let Some((dir, commit)) = snap else {
        return Ok(None);
    };
    let Some(files) = complete(&dir) else {
        return Ok(None);
    };
    verify(&folder, &dir, &files)?;
    Ok(Some(located(repo, dir, commit)))
}

fn located(repo: &RepoRef, dir: PathBuf, commit: String) -> Located {
    Located {
        dir,
        source: Some(HubSource {
            kind: repo.kind,
            repo: repo.id.clone(),
            revision: repo.revision.clone(),
            commit,
            config: None,
        }),
    }
}

/// The snapshot of `revision` in the cached repository `folder`, with its commit: a commit's
/// own folder; else the one `refs/REVISION` names; else, for `main` with no ref, the only
/// snapshot. A ref naming a missing or malformed revision, or several snapshots and no ref,
/// is an error: loading some other snapshot would be a guess.
fn snapshot(
    folder: &Path,
    revision: &str,
) -> std::result::Result<Option<(PathBuf, String)>, String> {
    let snapshots = folder.join("snapshots");
    if is_commit(revision) {
        let dir = snapshots.join(revision);
        return Ok(dir.is_dir().then(|| (dir, revision.to_string())));
    }
    if !is_revision(revision) {
        return Err(format!(
            "{} is not a revision",
            crate::excerpt::quoted(revision)
        ));
    }
    let mut dirs: Vec<String> = std::fs::read_dir(&snapshots)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let refs = folder.join("refs").join(revision);
    if std::fs::symlink_metadata(&refs).is_ok() {
        let rev = crate::fsread::read_text(&refs, 4096).map_err(|e| e.to_string())?;
        let rev = rev.trim();
        if !is_revision(rev) || rev.contains('/') {
            return Err(format!(
                "refs/{revision} holds {}, which is not a revision",
                crate::excerpt::quoted(rev)
            ));
        }
        let dir = snapshots.join(rev);
        if dir.is_dir() {
            return Ok(Some((dir, rev.to_string())));
        }
        return Err(format!(
            "refs/{revision} names revision {rev}, which is not in the cache (snapshots there: \
             {}); download it again, or give a snapshot directory as --model",
            if dirs.is_empty() {
                "none".to_string()
            } else {
                crate::excerpt::list(&dirs)
            }
        ));
    }
    if revision != "main" {
        return Ok(None);
    }
    match dirs.len() {
        0 => Ok(None),
        1 => {
            let d = dirs.remove(0);
            Ok(Some((snapshots.join(&d), d)))
        }
        n => Err(format!(
            "{n} snapshots ({}) and no refs/main to choose one; give a snapshot directory as \
             --model",
            crate::excerpt::list(&dirs)
        )),
    }
}

/// Checks `files` of snapshot `snap` in the cached repository `folder`: each a link into the
/// repository's `blobs/` (or a plain file, as caches on file systems without links hold),
/// whose bytes still hash to the blob's name when that name is a hash.
pub fn verify(folder: &Path, snap: &Path, files: &[String]) -> Result<()> {
    let blobs = folder.join("blobs");
    let blobs_real = std::fs::canonicalize(&blobs).ok();
    for f in files {
        let path = snap.join(f);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        regular(&path)?;
        if !meta.file_type().is_symlink() {
            continue;
        }
        let real = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
        let inside = blobs_real
            .as_ref()
            .is_some_and(|b| real.parent() == Some(b.as_path()));
        if !inside {
            return Err(Error::File {
                path,
                msg: format!(
                    "links to {}, outside the repository's blobs folder {}; a cache entry \
                     clsnorm will not read",
                    real.display(),
                    blobs.display()
                ),
            });
        }
        let name = real
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if let Some(found) = content_hash(&real, &name)? {
            if found != name {
                return Err(Error::File {
                    path,
                    msg: format!(
                        "its bytes changed since they were downloaded (blob {name} hashes to \
                         {found}); delete {} and fetch it again",
                        real.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `path` (through its links) must be a regular file: a FIFO would block the reader, a device
/// would never end.
fn regular(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a folder"
    } else {
        "a FIFO, socket or device"
    };
    Err(Error::File {
        path: path.to_path_buf(),
        msg: format!(
            "is {what}, not a regular file; a cache entry clsnorm will not read (delete it and \
             fetch again)"
        ),
    })
}

/// Every entry of snapshot `dir` among `names` that is there but not a regular file: an
/// error, not a file "missing from the cache".
pub fn check_entries(dir: &Path, names: &[&str]) -> Result<()> {
    for n in names {
        let path = dir.join(n);
        if std::fs::symlink_metadata(&path).is_ok() {
            regular(&path)?;
        }
    }
    Ok(())
}

/// The hash a blob named `name` is named by, of `path`'s bytes: sha256 for a 64-digit name,
/// the git object id for a 40-digit one; `None` for other names.
pub fn content_hash(path: &Path, name: &str) -> Result<Option<String>> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let io = |e| Error::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |update: &mut dyn FnMut(&[u8])| -> Result<()> {
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(());
            }
            update(&buf[..n]);
        }
    };
    if name.len() == 64 && hex(name) {
        let mut h = sha2::Sha256::new();
        feed(&mut |b| h.update(b))?;
        return Ok(Some(format!("{:x}", h.finalize())));
    }
    if name.len() == 40 && hex(name) {
        let len = std::fs::metadata(path).map_err(io)?.len();
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        feed(&mut |b| h.update(b))?;
        return Ok(Some(format!("{:x}", h.finalize())));
    }
    Ok(None)
}

impl RepoKind {
    /// The kind's word in messages.
    pub fn word(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}
