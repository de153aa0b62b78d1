//! Models and datasets by Hugging Face Hub id: a local folder, else the local Hugging Face
//! cache, else a download from the Hub into that same cache (the layout `huggingface_hub`
//! uses, so Python tools and clsnorm share one cache in both directions).
//!
//! The environment is the one the Hugging Face libraries read: `HF_ENDPOINT`, `HF_TOKEN` (or
//! the token file `huggingface-cli login` writes), `HF_HUB_OFFLINE`, `HF_HOME` /
//! `HF_HUB_CACHE`, `HF_HUB_DOWNLOAD_TIMEOUT`, `HF_HUB_ETAG_TIMEOUT` (and clsnorm's own
//! `CLSNORM_HUB_RETRIES`). The token goes into request headers to the endpoint's host only:
//! it is never sent elsewhere, printed, logged or written anywhere.
pub mod cache;
pub mod download;
pub mod http;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The Hub's own address, when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The Hub's GLUE, as `datasets.load_dataset("nyu-mll/glue", task)` reads it.
pub const GLUE_DATASET: &str = "nyu-mll/glue";

/// What a repository holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    /// A model repository (`models--ORG--NAME` in the cache).
    Model,
    /// A dataset repository (`datasets--ORG--NAME`).
    Dataset,
}

impl RepoKind {
    fn prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// A repository on the Hub at a revision (a branch, a tag or a commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub kind: RepoKind,
    /// `NAME` or `ORG/NAME`.
    pub id: String,
    pub revision: String,
}

impl RepoRef {
    /// `NAME`, `ORG/NAME` or either with `@REVISION`, as a model id; `None` for anything else
    /// (paths such as `./x`, `a/b/c`, `../x` are never Hub ids).
    pub fn model(s: &str) -> Option<RepoRef> {
        let (id, revision) = match s.rsplit_once('@') {
            Some((id, rev)) => (id, rev),
            None => (s, "main"),
        };
        (is_repo_id(id) && is_revision(revision)).then(|| RepoRef {
            kind: RepoKind::Model,
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// Dataset `id` at `revision`, checked as [`RepoRef::model`] checks a model's.
    pub fn dataset(id: &str, revision: &str) -> Result<RepoRef> {
        if !is_repo_id(id) || !is_revision(revision) {
            return Err(Error::Invalid(format!(
                "{}@{} is not a Hub dataset id and revision",
                crate::excerpt::quoted(id),
                crate::excerpt::quoted(revision)
            )));
        }
        Ok(RepoRef {
            kind: RepoKind::Dataset,
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The repository's folder in the cache: `models--ORG--NAME`.
    pub fn folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!(
            "{}--{}",
            self.kind.prefix(),
            self.id.replace('/', "--")
        ))
    }

    /// `ORG/NAME@REVISION`, `@main` left out.
    pub fn display(&self) -> String {
        if self.revision == "main" {
            self.id.clone()
        } else {
            format!("{}@{}", self.id, self.revision)
        }
    }
}

/// Where a model or dataset came from, recorded in a run's `config.json`: enough to fetch
/// exactly the same files again (`ORG/NAME@COMMIT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSource {
    pub kind: RepoKind,
    pub repo: String,
    /// The revision asked for (`main` unless `@REVISION` was given).
    pub revision: String,
    /// The commit that revision resolved to: the snapshot the files were read from.
    pub commit: String,
    /// The dataset's config (`NAME:CONFIG`), when one was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl HubSource {
    /// The same files again: the repo at its commit.
    pub fn pinned(&self) -> RepoRef {
        RepoRef {
            kind: self.kind,
            id: self.repo.clone(),
            revision: self.commit.clone(),
        }
    }
}

/// A folder to read, and the Hub repository it is a snapshot of (none for a local folder).
#[derive(Debug, Clone)]
pub struct Located {
    pub dir: PathBuf,
    pub source: Option<HubSource>,
}

/// The Hugging Face environment: where the cache is, which Hub to ask, whether to ask at all.
#[derive(Clone)]
pub struct HubEnv {
    /// The hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache: Option<PathBuf>,
    /// `HF_ENDPOINT`, without a trailing `/`.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE`: the cache only, no network.
    pub offline: bool,
    /// Timeouts and retries of every request.
    pub limits: http::Limits,
    token: Option<String>,
}

impl std::fmt::Debug for HubEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEnv")
            .field("cache", &self.cache)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("limits", &self.limits)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Longest token read from the environment or the token file.
const MAX_TOKEN_BYTES: u64 = 4096;

impl HubEnv {
    /// The environment `var` reads, as `huggingface_hub` reads it.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<HubEnv> {
        let endpoint = var("HF_ENDPOINT")
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
            || endpoint
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::Invalid(format!(
                "HF_ENDPOINT {} is not an http(s) address",
                crate::excerpt::quoted(&endpoint)
            )));
        }
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        let cache = cache::cache_dir(&var);
        let token = match var("HF_TOKEN").filter(|t| !t.trim().is_empty()) {
            Some(t) => Some(t),
            None => match token_file(&var) {
                Some(p) if p.exists() => {
                    Some(crate::fsread::read_text(&p, MAX_TOKEN_BYTES).map_err(|e| {
                        Error::Invalid(format!(
                            "the Hugging Face token file cannot be read ({e}); a token is at \
                             most {MAX_TOKEN_BYTES} bytes"
                        ))
                    })?)
                }
                _ => None,
            },
        }
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
        if let Some(t) = &token {
            // A header value cannot carry these; an HTTP client's error could show the value,
            // so the message names neither.
            if t.len() as u64 > MAX_TOKEN_BYTES {
                return Err(Error::Invalid(format!(
                    "HF_TOKEN (or the Hugging Face token file) is {} bytes long; a token is at \
                     most {MAX_TOKEN_BYTES}",
                    t.len()
                )));
            }
            if !t.chars().all(|c| c.is_ascii_graphic()) {
                return Err(Error::Invalid(
                    "HF_TOKEN (or the Hugging Face token file) holds characters a token cannot \
                     have"
                        .into(),
                ));
            }
        }
        let limits = http::Limits::from_env(&var).map_err(Error::Invalid)?;
        Ok(HubEnv {
            cache,
            endpoint,
            offline,
            limits,
            token,
        })
    }

    /// This process's environment.
    pub fn from_process() -> Result<HubEnv> {
        HubEnv::from_env(|v| std::env::var(v).ok())
    }

    /// Whether a token will be sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn cache_or_err(&self, what: &str) -> Result<&Path> {
        self.cache.as_deref().ok_or_else(|| {
            Error::Invalid(format!(
                "{what}: no Hugging Face cache folder (HOME is unset): set HF_HOME or HF_HUB_CACHE"
            ))
        })
    }
}

/// `huggingface_hub`'s reading of a boolean variable.
fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

/// Where `huggingface-cli login` keeps the token: `HF_TOKEN_PATH`, else `HF_HOME/token`, else
/// `~/.cache/huggingface/token`.
fn token_file(var: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = var("HF_TOKEN_PATH") {
        return Some(p.into());
    }
    Some(cache::hf_home(var)?.join("token"))
}

/// `NAME` or `ORG/NAME` of letters, digits, `-`, `_` and `.` (not `.` or `..`, not starting
/// with `.`), at most 96 characters a part as the Hub allows.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !s.starts_with('.')
        && parts.len() <= 2
        && parts.iter().all(|p| is_name_part(p) && p.len() <= 96)
}

/// A branch, tag or commit: parts of letters, digits, `-`, `_` and `.` joined by `/` (as in
/// `refs/pr/1`), no `.` or `..` part.
pub fn is_revision(s: &str) -> bool {
    s.len() <= 256 && s.split('/').all(is_name_part)
}

/// A file inside a repository: parts joined by `/`, none empty, `.` or `..`, none starting
/// with `.`, of the characters repository files are named with.
pub fn is_repo_file(s: &str) -> bool {
    s.len() <= 512
        && s.split('/').all(|p| {
            is_name_part(p)
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn is_name_part(p: &str) -> bool {
    !p.is_empty()
        && p != "."
        && p != ".."
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A 40-digit commit hash.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The model `spec` names (`--model`): a folder; else a Hub id found in the cache with the
/// files a run reads; else, unless offline, downloaded from the Hub into the cache. A pickle
/// checkpoint is fetched only when `allow_pickle`.
pub fn model(spec: &Path, env: &HubEnv, allow_pickle: bool) -> Result<Located> {
    if spec.is_dir() {
        return Ok(Located {
            dir: spec.to_path_buf(),
            source: None,
        });
    }
    let shown = spec.display().to_string();
    let Some(repo) = spec.to_str().and_then(RepoRef::model) else {
        return Err(Error::Invalid(format!(
            "--model {}: no such directory (and not a Hub id: ORG/NAME or ORG/NAME@REVISION)",
            crate::excerpt::quoted(&shown)
        )));
    };
    let cache = env.cache_or_err(&format!("--model {}", repo.display()))?;
    if let Some(found) = cache::find_model(cache, &repo, allow_pickle)? {
        return Ok(found);
    }
    if env.offline {
        return Err(Error::Invalid(format!(
            "--model {}: not in the Hugging Face cache ({}), and HF_HUB_OFFLINE is set: fetch it \
             where the Hub is reachable (`clsnorm fetch --model {}`, with the same HF_HOME or \
             HF_HUB_CACHE), or give a model folder",
            repo.display(),
            repo.folder(cache).display(),
            repo.display()
        )));
    }
    download::model(env, cache, &repo, allow_pickle)
}

/// Chooses the files to fetch from a repository listing's file names, or says why the listing
/// lacks what is needed.
pub type PickFiles<'a> = dyn Fn(&[&str]) -> std::result::Result<Vec<String>, String> + 'a;

/// The files of dataset `repo` that `pick` chooses from its listing (paths inside the repo;
/// an error says why the listing does not hold what is needed, before anything is
/// downloaded), from the cache when `complete` finds in its snapshot all it needs, else
/// (unless offline) downloaded. `what` names the data in messages.
pub fn dataset(
    env: &HubEnv,
    repo: &RepoRef,
    pick: &PickFiles<'_>,
    complete: &dyn Fn(&Path) -> Option<Vec<String>>,
    what: &str,
) -> Result<Located> {
    let cache = env.cache_or_err(what)?;
    if let Some(found) = cache::find_dataset(cache, repo, complete)? {
        return Ok(found);
    }
    if env.offline {
        return Err(Error::Invalid(format!(
            "{what}: not in the Hugging Face cache ({}), and HF_HUB_OFFLINE is set: fetch it \
             where the Hub is reachable (`clsnorm fetch`, with the same HF_HOME or \
             HF_HUB_CACHE), or give --data-dir / GLUE_DIR",
            repo.folder(cache).display()
        )));
    }
    download::dataset(env, cache, repo, pick, what)
}

/// Chooses the files to fetch from a Hub dataset's layout (those of the splits a run reads),
/// or says why the layout lacks what is needed.
pub type PickSplits<'a> =
    dyn Fn(&crate::data::hub_dataset::Layout) -> std::result::Result<Vec<String>, String> + 'a;

/// Hub dataset `id` by name: the layout of its config and the files `pick` chooses from it
/// (paths inside the snapshot returned), downloaded into the cache, or with HF_HUB_OFFLINE
/// read from the cache alone (the repository's snapshot, else that of its Parquet
/// conversion).
pub fn dataset_by_id(
    env: &HubEnv,
    id: &crate::data::hub_dataset::DatasetId,
    pick: &PickSplits<'_>,
) -> Result<(Located, crate::data::hub_dataset::Layout, Vec<String>)> {
    use crate::data::hub_dataset::{converted_layout, repo_layout, CONVERTED, MAX_CARD_BYTES};
    let what = format!("dataset {id}");
    let cache = env.cache_or_err(&what)?;
    if !env.offline {
        let (found, layout) = download::dataset_by_id(env, cache, id, pick)?;
        let files = pick(&layout).map_err(Error::Invalid)?;
        return Ok((found, layout, files));
    }
    // Offline: the snapshot's own files, as the listing would name them.
    let mut last = None;
    for revision in [id.revision.as_str(), CONVERTED] {
        let repo = RepoRef::dataset(&id.repo, revision)?;
        let chosen = std::cell::RefCell::new(None);
        let complete = |snap: &Path| -> Option<Vec<String>> {
            let names = cache::snapshot_files(snap);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let layout = if revision == CONVERTED {
                converted_layout(&refs, id.config.as_deref())
            } else {
                let card = names
                    .iter()
                    .any(|n| n == "README.md")
                    .then(|| crate::fsread::read_text(&snap.join("README.md"), MAX_CARD_BYTES))
                    .transpose()
                    .map_err(|e| e.to_string());
                card.and_then(|c| repo_layout(&refs, c.as_deref(), id.config.as_deref()))
                    .and_then(|l| l.ok_or_else(|| "no data files".to_string()))
            };
            let picked = layout.and_then(|l| Ok((pick(&l)?, l)));
            match picked {
                Ok((files, l)) if files.iter().all(|f| snap.join(f).exists()) => {
                    *chosen.borrow_mut() = Some(l);
                    Some(files)
                }
                Ok(_) => None,
                Err(msg) => {
                    *chosen.borrow_mut() = None;
                    tracing::debug!("{what}: the cached {revision} snapshot: {msg}");
                    None
                }
            }
        };
        match cache::find_dataset(cache, &repo, &complete) {
            Ok(Some(found)) => {
                if let Some(layout) = chosen.into_inner() {
                    let files = pick(&layout).map_err(Error::Invalid)?;
                    return Ok((found, layout, files));
                }
            }
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if id.revision == CONVERTED {
            break;
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    Err(Error::Invalid(format!(
        "{what}: not in the Hugging Face cache ({}) with the files this run reads, and \
         HF_HUB_OFFLINE is set: fetch it where the Hub is reachable (`clsnorm fetch --dataset \
         {id}`, with the same HF_HOME or HF_HUB_CACHE)",
        RepoRef::dataset(&id.repo, &id.revision)?
            .folder(cache)
            .display()
    )))
}
