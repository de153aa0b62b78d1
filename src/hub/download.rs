//! Downloads from the Hub into the cache, over the Hub's plain HTTP API ([`super::http`]):
//! one listing of the repository at a revision (`/api/.../revision/REV?blobs=true`) gives the
//! commit and each file's size and hash; each file the run reads comes from
//! `/ID/resolve/COMMIT/FILE` into `blobs/HASH.incomplete` (resumed with a range request
//! after an interruption), is checked against the listed size and hash, renamed to
//! `blobs/HASH` and linked from `snapshots/COMMIT/FILE`, as `huggingface_hub` lays the cache
//! out. Every name in the cache comes from the validated listing, none from a header.
//!
//! Why not `hf-hub`: it builds cache paths from the ETag and X-Repo-Commit headers of a request
//! clsnorm cannot see, sends the token to the storage host a redirect names, and has no
//! timeouts, size bounds or redirect limit; the Hub's two endpoints above are all a run needs.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cache::{self, TOKENIZER_FILES};
use super::http::{Client, Failure};
use super::{is_commit, is_repo_file, HubEnv, HubSource, Located, RepoKind, RepoRef};
use crate::data::hub_dataset::{
    converted_layout, repo_layout, DatasetId, Layout, CONVERTED, MAX_CARD_BYTES,
};
use crate::error::{Error, Result};

/// Largest repository listing read (the Hub's are kilobytes).
const MAX_LISTING_BYTES: u64 = 64 << 20;
/// Most files one fetch downloads.
const MAX_FILES: usize = 10_000;
/// Largest file downloaded (the largest encoders' shards are a few GB).
const MAX_FILE_BYTES: u64 = 64 << 30;
/// Longest wait for another process downloading the same blob.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// A repository's files at one commit, as `GET /api/{models,datasets}/ID/revision/REV?blobs=true`
/// lists them.
#[derive(Debug, Deserialize)]
struct Listing {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "blobId")]
    blob_id: Option<String>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Listing {
    fn has(&self, f: &str) -> bool {
        self.siblings.iter().any(|s| s.rfilename == f)
    }
}

/// One repository being fetched: the client, the listing, where its files go.
struct Fetch<'a> {
    env: &'a HubEnv,
    repo: &'a RepoRef,
    client: Client,
    listing: Listing,
    cache: PathBuf,
    folder: PathBuf,
}

/// Downloads what a run reads from model `repo` (see [`cache::model_files`]) into `cache`.
pub fn model(env: &HubEnv, cache: &Path, repo: &RepoRef, allow_pickle: bool) -> Result<Located> {
    use crate::encoder::weights::{PICKLE_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
    let f = Fetch::open(env, cache, repo)?;
    let l = &f.listing;
    if !l.has("config.json") {
        return Err(f.error(
            None,
            "has no config.json: not a model repository transformers loads",
        ));
    }
    if !crate::tokenize::has_tokenizer(|name| l.has(name)) {
        let why = crate::tokenize::missing_tokenizer(|name| l.has(name));
        return Err(f.error(
            None,
            &why.replace("the folder holds", "the repository holds"),
        ));
    }
    let weights = if l.has(SAFETENSORS_FILE) {
        SAFETENSORS_FILE
    } else if l.has(SAFETENSORS_INDEX_FILE) {
        SAFETENSORS_INDEX_FILE
    } else if l.has(PICKLE_FILE) && allow_pickle {
        PICKLE_FILE
    } else if l.has(PICKLE_FILE) {
        return Err(f.error(
            None,
            "has only pytorch_model.bin, a Python pickle that can run code when loaded: pass \
             --allow-pickle if you trust it (clsnorm then reads it with its restricted reader, \
             never Python's)",
        ));
    } else {
        return Err(f.error(
            None,
            &format!(
                "has no weights clsnorm reads ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or \
                 {PICKLE_FILE})"
            ),
        ));
    };
    let small: Vec<String> = std::iter::once("config.json")
        .chain(TOKENIZER_FILES.iter().copied().filter(|t| l.has(t)))
        .map(String::from)
        .collect();
    let snap = f.fetch_all(&small)?;
    check_before_weights(&snap)?;
    f.fetch_all(&[weights.to_string()])?;
    if weights == SAFETENSORS_INDEX_FILE {
        let shards = cache::index_shards(&snap.join(SAFETENSORS_INDEX_FILE))?;
        f.fetch_all(&shards)?;
    }
    Ok(f.located(snap))
}

/// The config and tokenizer of a partly fetched model, checked before its weights (gigabytes)
/// are downloaded: a tokenizer clsnorm cannot build, or a config of a built-in family that
/// does not read, ends the fetch there. (A `model_type` of no built-in family is left to the
/// run's own families.)
fn check_before_weights(snap: &Path) -> Result<()> {
    let families = crate::encoder::Families::builtin();
    let config: Option<serde_json::Value> = crate::fsread::read_regular(
        &snap.join("config.json"),
        1 << 20,
        crate::fsread::Links::Follow,
    )
    .ok()
    .and_then(|b| serde_json::from_slice(&b).ok());
    let known = match config.as_ref().and_then(|c| c.get("model_type")) {
        Some(serde_json::Value::String(t)) => families.model_types().contains(&t.as_str()),
        _ => true,
    };
    if known {
        families.read_config(snap)?;
    }
    crate::tokenize::TextTokenizer::load(snap, 512)?;
    Ok(())
}

/// Downloads the files of dataset `repo` that `pick` chooses from its listing into `cache`.
pub fn dataset(
    env: &HubEnv,
    cache: &Path,
    repo: &RepoRef,
    pick: &super::PickFiles<'_>,
    what: &str,
) -> Result<Located> {
    let f = Fetch::open(env, cache, repo)?;
    let names: Vec<&str> = f
        .listing
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .collect();
    let files = pick(&names).map_err(|msg| f.error(None, &format!("{msg} ({what})")))?;
    if files.is_empty() {
        return Err(f.error(None, &format!("has no files for {what}")));
    }
    let snap = f.fetch_all(&files)?;
    Ok(f.located(snap))
}

/// Dataset `id` by its name: the layout of its config (from the card's `configs:` or its file
/// names, else from the Hub's Parquet conversion when the repository holds no data files
/// clsnorm reads), and the files of it that `pick` chooses, downloaded into `cache`.
pub fn dataset_by_id(
    env: &HubEnv,
    cache: &Path,
    id: &DatasetId,
    pick: &super::PickSplits<'_>,
) -> Result<(Located, Layout)> {
    let what = format!("dataset {id}");
    let repo = RepoRef::dataset(&id.repo, &id.revision)?;
    let f = Fetch::open(env, cache, &repo)?;
    let names: Vec<&str> = f.names();
    let layout = if id.revision == CONVERTED {
        Some(converted_layout(&names, id.config.as_deref()).map_err(|m| f.error(None, &m))?)
    } else {
        let card = f.card()?;
        repo_layout(&names, card.as_deref(), id.config.as_deref()).map_err(|m| f.error(None, &m))?
    };
    let Some(layout) = layout else {
        tracing::info!(
            "{what}: no data files clsnorm reads in the repository; reading the Hub's Parquet \
             conversion ({CONVERTED})"
        );
        let converted = RepoRef::dataset(&id.repo, CONVERTED)?;
        return converted_fetch(env, cache, &converted, id, pick);
    };
    let files = pick(&layout).map_err(|m| f.error(None, &format!("{m} ({what})")))?;
    let snap = f.fetch_all(&files)?;
    Ok((f.located(snap), layout))
}

fn converted_fetch(
    env: &HubEnv,
    cache: &Path,
    converted: &RepoRef,
    id: &DatasetId,
    pick: &super::PickSplits<'_>,
) -> Result<(Located, Layout)> {
    let f = Fetch::open(env, cache, converted).map_err(|e| {
        Error::Invalid(format!(
            "dataset {id}: its repository holds no data files clsnorm reads (Parquet, CSV, TSV, \
             JSON Lines; a dataset made by a script, or of images or audio), and its Parquet \
             conversion could not be read: {e}"
        ))
    })?;
    let layout =
        converted_layout(&f.names(), id.config.as_deref()).map_err(|m| f.error(None, &m))?;
    let files = pick(&layout).map_err(|m| f.error(None, &format!("{m} (dataset {id})")))?;
    let snap = f.fetch_all(&files)?;
    Ok((f.located(snap), layout))
}

impl<'a> Fetch<'a> {
    fn names(&self) -> Vec<&str> {
        self.listing
            .siblings
            .iter()
            .map(|s| s.rfilename.as_str())
            .collect()
    }

    /// The dataset card (`README.md`), fetched first when the repository has one: its YAML
    /// header says which files make which config.
    fn card(&self) -> Result<Option<String>> {
        const CARD: &str = "README.md";
        let Some(sib) = self.listing.siblings.iter().find(|s| s.rfilename == CARD) else {
            return Ok(None);
        };
        let size = sib.lfs.as_ref().map(|l| l.size).or(sib.size).unwrap_or(0);
        if size > MAX_CARD_BYTES {
            return Err(self.error(
                Some(CARD),
                &format!(
                    "is listed at {size} bytes; a dataset card is read up to {MAX_CARD_BYTES}"
                ),
            ));
        }
        self.fetch(CARD)?;
        let path = self.snapshot().join(CARD);
        crate::fsread::read_text(&path, MAX_CARD_BYTES).map(Some)
    }

    /// The client for `repo` and its listing at the revision asked for.
    fn open(env: &'a HubEnv, cache: &Path, repo: &'a RepoRef) -> Result<Fetch<'a>> {
        let client = Client::new(&env.endpoint, env.token(), env.limits)
            .map_err(|e| Error::Invalid(format!("{e}: {}", env.endpoint)))?;
        let mut f = Fetch {
            env,
            repo,
            client,
            listing: Listing {
                sha: String::new(),
                siblings: Vec::new(),
            },
            cache: cache.to_path_buf(),
            folder: repo.folder(cache),
        };
        tracing::info!(
            "asking {} for {} {}",
            env.endpoint,
            repo.kind.word(),
            repo.display()
        );
        // `refs/pr/1` is one path segment, as huggingface_hub quotes it.
        let url = f.client.url(&format!(
            "/api/{}/{}/revision/{}?blobs=true",
            repo.kind.prefix(),
            repo.id,
            repo.revision.replace('/', "%2F")
        ));
        let body = f
            .client
            .get_small(&url, MAX_LISTING_BYTES)
            .map_err(|e| f.failure(e, None))?;
        let listing: Listing = serde_json::from_slice(&body).map_err(|e| {
            f.error(
                None,
                &format!("the file list is not what the Hub sends ({e}); is HF_ENDPOINT a Hub?"),
            )
        })?;
        if !is_commit(&listing.sha) {
            return Err(f.error(
                None,
                &format!(
                    "the Hub named commit {}, not a 40-digit commit",
                    crate::excerpt::quoted(&listing.sha)
                ),
            ));
        }
        if listing.siblings.len() > MAX_FILES {
            return Err(f.error(
                None,
                &format!(
                    "lists {} files; at most {MAX_FILES}",
                    listing.siblings.len()
                ),
            ));
        }
        f.listing = listing;
        Ok(f)
    }

    fn snapshot(&self) -> PathBuf {
        self.folder.join("snapshots").join(&self.listing.sha)
    }

    fn located(&self, dir: PathBuf) -> Located {
        Located {
            dir,
            source: Some(HubSource {
                kind: self.repo.kind,
                repo: self.repo.id.clone(),
                revision: self.repo.revision.clone(),
                commit: self.listing.sha.clone(),
                config: None,
            }),
        }
    }

    /// Fetches `files` (those already in the snapshot and intact are kept), then points
    /// `refs/REVISION` at the commit; returns the snapshot folder.
    fn fetch_all(&self, files: &[String]) -> Result<PathBuf> {
        if files.len() > MAX_FILES {
            return Err(self.error(None, &format!("{} files; at most {MAX_FILES}", files.len())));
        }
        for file in files {
            self.fetch(file)?;
        }
        if self.repo.revision != self.listing.sha {
            let path = self.folder.join("refs").join(&self.repo.revision);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            crate::atomic::write_bytes(&path, self.listing.sha.as_bytes())?;
        }
        Ok(self.snapshot())
    }

    /// One file: its blob named by the listed hash, downloaded into `blobs/HASH.incomplete`
    /// (resumed on the next try), checked against the listed size and hash, renamed into
    /// place, and linked from `snapshots/COMMIT/FILE`. No name comes from the server's headers.
    fn fetch(&self, file: &str) -> Result<()> {
        if !is_repo_file(file) {
            return Err(self.error(
                None,
                &format!(
                    "names a file {}, which is not a plain path inside a repository",
                    crate::excerpt::quoted(file)
                ),
            ));
        }
        let Some(sib) = self.listing.siblings.iter().find(|s| s.rfilename == file) else {
            return Err(self.error(Some(file), "is not in the repository"));
        };
        let pointer = self.snapshot().join(file);
        if std::fs::symlink_metadata(&pointer).is_ok() {
            // Cached before: the blob-name check (bytes changed since), then the listing's.
            cache::verify(&self.folder, &self.snapshot(), &[file.to_string()])?;
            return check(&pointer, sib).map_err(|msg| Error::File {
                path: pointer.clone(),
                msg: format!(
                    "the cached file differs from {} of {} at {} ({msg}); delete it and fetch \
                     again",
                    file,
                    self.repo.display(),
                    self.env.endpoint
                ),
            });
        }
        let Some(hash) = listed_hash(sib) else {
            return Err(self.error(
                Some(file),
                "is listed without a sha256 or git object id (lfs.sha256, blobId); is \
                 HF_ENDPOINT a Hub?",
            ));
        };
        let Some(size) = sib.lfs.as_ref().map(|l| l.size).or(sib.size) else {
            return Err(self.error(
                Some(file),
                "is listed without a size; is HF_ENDPOINT a Hub?",
            ));
        };
        if size > MAX_FILE_BYTES {
            return Err(self.error(
                Some(file),
                &format!(
                    "is listed at {size} bytes; at most {MAX_FILE_BYTES} a file are downloaded"
                ),
            ));
        }
        let blobs = self.folder.join("blobs");
        let blob = blobs.join(&hash);
        let _lock = self.lock(file, &hash)?;
        if blob.is_file() && check(&blob, sib).is_ok() {
            // Another revision (or process) brought the same bytes.
            return self.link(file, &hash);
        }
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
        let part = blobs.join(format!("{hash}.incomplete"));
        tracing::info!(
            "downloading {file} ({}) of {} from {}",
            indicatif::HumanBytes(size),
            self.repo.display(),
            self.env.endpoint
        );
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .map_err(|e| Error::io(&part, e))?;
        let bar = progress_bar(file);
        let url = self.client.url(&format!(
            "/{}{}/resolve/{}/{file}",
            match self.repo.kind {
                RepoKind::Model => "",
                RepoKind::Dataset => "datasets/",
            },
            self.repo.id,
            self.listing.sha
        ));
        let got = self.client.download(&url, &mut out, size, &|have, total| {
            bar.set_length(total);
            bar.set_position(have);
        });
        bar.finish_and_clear();
        drop(out);
        got.map_err(|e| self.failure(e, Some(file)))?;
        if let Err(msg) = check(&part, sib) {
            // Written by this download under the listed hash: nothing may trust these bytes.
            let _ = std::fs::remove_file(&part);
            return Err(self.error(
                Some(file),
                &format!("arrived damaged ({msg}); removed it: run again"),
            ));
        }
        std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))?;
        self.link(file, &hash)
    }

    /// `snapshots/COMMIT/FILE` as a relative link to `blobs/HASH`, put in place by a rename.
    fn link(&self, file: &str, hash: &str) -> Result<()> {
        let pointer = self.snapshot().join(file);
        let parent = pointer.parent().unwrap_or(&self.folder);
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let up = "../".repeat(file.matches('/').count() + 2);
        let target = PathBuf::from(format!("{up}blobs/{hash}"));
        let tmp = parent.join(format!(
            ".{}.link-{}",
            pointer
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let made = symlink(&target, &tmp).and_then(|()| std::fs::rename(&tmp, &pointer));
        made.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&pointer, e)
        })
    }

    /// Holds `.locks/REPO_FOLDER/HASH.lock` (as huggingface_hub does), waiting a bounded time
    /// for another process downloading the same blob.
    fn lock(&self, file: &str, hash: &str) -> Result<std::fs::File> {
        let dir = self.cache.join(".locks").join(
            self.folder
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default(),
        );
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("{hash}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let start = std::time::Instant::now();
        let mut said = false;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(lock),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                    if !said {
                        tracing::warn!(
                            "another process is downloading {file} of {}; waiting for it",
                            self.repo.display()
                        );
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(self.error(
                        Some(file),
                        &format!(
                            "is being downloaded by another process (lock {}) for over {} \
                             min; run again when it is done",
                            path.display(),
                            LOCK_WAIT.as_secs() / 60
                        ),
                    ))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }

    fn what(&self, file: Option<&str>) -> String {
        let repo = format!("{} {}", self.repo.kind.word(), self.repo.display());
        match file {
            Some(f) => format!("{f} of {repo} at {}", self.env.endpoint),
            None => format!("{repo} at {}", self.env.endpoint),
        }
    }

    fn error(&self, file: Option<&str>, msg: &str) -> Error {
        Error::Invalid(format!("{} {msg}", self.what(file)))
    }

    /// A request's failure, said with what was asked for and what the user can do.
    fn failure(&self, e: Failure, file: Option<&str>) -> Error {
        let what = self.what(file);
        let resume = match file {
            Some(_) => format!(
                "; what arrived is kept in {}/*.incomplete: run again to resume",
                self.folder.join("blobs").display()
            ),
            None => String::new(),
        };
        let tries = self.env.limits.retries + 1;
        let offline = "; where the Hub cannot be reached, set HF_HUB_OFFLINE=1 to use only the \
                       cache, and fetch where it can";
        Error::Invalid(match e {
            Failure::Status(401 | 403) => format!(
                "{what}: access denied (HTTP 401/403): a gated or private repository needs a \
                 token with access to it: {} (the Hub also answers so for a repository that \
                 does not exist)",
                if self.env.has_token() {
                    "the token set (HF_TOKEN or the token file) has none; ask for access on the \
                     repository's page"
                } else {
                    "set HF_TOKEN, or run `huggingface-cli login`"
                }
            ),
            Failure::Status(404) => match file {
                Some(_) => format!(
                    "{what}: no such file at revision {} (HTTP 404)",
                    self.repo.revision
                ),
                None => format!(
                    "{what}: no such repository or revision (HTTP 404); check the id and \
                     @REVISION"
                ),
            },
            Failure::Status(code @ (429 | 500..=599)) => {
                format!("{what}: the Hub answered HTTP {code} (tried {tries} times){resume}")
            }
            Failure::Status(code) => format!("{what}: the Hub answered HTTP {code}{resume}"),
            Failure::Later(m) => format!("{what}: {m}"),
            Failure::Unreachable(m) if file.is_none() => {
                format!("{what}: cannot reach the Hub ({m}; tried {tries} times){offline}")
            }
            Failure::Unreachable(m) => {
                format!("{what}: stopped downloading ({m}; tried {tries} times){resume}{offline}")
            }
            Failure::Stalled(m) => format!(
                "{what}: stopped waiting: {m} (tried {tries} times; HF_HUB_DOWNLOAD_TIMEOUT and \
                 HF_HUB_ETAG_TIMEOUT set the wait, CLSNORM_HUB_RETRIES the tries){resume}{offline}"
            ),
            Failure::Redirect(m) => format!("{what}: {m}; is HF_ENDPOINT a Hub?"),
            Failure::Malformed(m) => format!("{what}: {m}; is HF_ENDPOINT a Hub?{resume}"),
            Failure::Local(io) => format!("{what}: stopped downloading ({io}){resume}",),
        })
    }
}

fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(not(unix))]
    {
        let _ = (target, link);
        Err(std::io::Error::other("the cache needs symbolic links"))
    }
}

/// The hash the listing gives for a file (sha256 for LFS files, the git object id for the
/// others), lowercase: the name of its blob in the cache. `None` unless it is one (64 or 40
/// hex digits), so a listing cannot name a path.
fn listed_hash(sib: &Sibling) -> Option<String> {
    let hash = match (&sib.lfs, &sib.blob_id) {
        (Some(lfs), _) => lfs.sha256.to_ascii_lowercase(),
        (None, Some(id)) => id.to_ascii_lowercase(),
        _ => return None,
    };
    let want = if sib.lfs.is_some() { 64 } else { 40 };
    (hash.len() == want && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// `path` against the listing: its size, and its hash where the Hub gives one.
fn check(path: &Path, sib: &Sibling) -> std::result::Result<(), String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let want_size = sib.lfs.as_ref().map(|l| l.size).or(sib.size);
    if let Some(want) = want_size {
        if len != want {
            return Err(format!("{len} bytes, the Hub lists {want}"));
        }
    }
    if let Some(want) = listed_hash(sib) {
        match cache::content_hash(path, &want).map_err(|e| e.to_string())? {
            Some(got) if got != want => {
                return Err(format!("its hash is {got}, the Hub lists {want}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A download's progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(file: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(crate::excerpt::quoted(file));
    bar
}
