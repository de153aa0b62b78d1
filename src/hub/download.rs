//! Downloads from the Hub into the cache, through `hf-hub` (the client candle uses): it asks
//! the endpoint for each file's commit and ETag, downloads into `blobs/ETAG.part` (resumed
//! with a range request after an interruption), renames the blob into place and links
//! `snapshots/COMMIT/FILE` to it, as `huggingface_hub` lays the cache out. On top of it,
//! clsnorm fetches only the files a run reads, checks every downloaded file against the size
//! and hash the Hub lists (sha256 for LFS files, the git object id for the others) before
//! anything reads it, and names repository, file and endpoint in every error.
use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use serde::Deserialize;

use super::cache::{self, TOKENIZER_FILES};
use super::{is_commit, is_repo_file, HubEnv, HubSource, Located, RepoKind, RepoRef};
use crate::error::{Error, Result};

/// Largest repository listing read (the Hub's are kilobytes).
const MAX_LISTING_BYTES: u64 = 64 << 20;
/// Most files one fetch downloads.
const MAX_FILES: usize = 10_000;
/// Most redirects within the endpoint followed when asking for a file's headers.
const MAX_REDIRECTS: usize = 10;

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
    api: ApiRepo,
    listing: Listing,
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
    if !(l.has("tokenizer.json") || l.has("vocab.txt")) {
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
    let files: Vec<String> = std::iter::once("config.json")
        .chain(TOKENIZER_FILES.iter().copied().filter(|t| l.has(t)))
        .chain(std::iter::once(weights))
        .map(String::from)
        .collect();
    let snap = f.fetch_all(&files)?;
    if weights == SAFETENSORS_INDEX_FILE {
        let shards = cache::index_shards(&snap.join(SAFETENSORS_INDEX_FILE))?;
        f.fetch_all(&shards)?;
    }
    Ok(f.located(snap))
}

/// Downloads the files of dataset `repo` that `wanted` picks into `cache`.
pub fn dataset(
    env: &HubEnv,
    cache: &Path,
    repo: &RepoRef,
    wanted: &dyn Fn(&str) -> bool,
    what: &str,
) -> Result<Located> {
    let f = Fetch::open(env, cache, repo)?;
    let files: Vec<String> = f
        .listing
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|n| wanted(n))
        .collect();
    if files.is_empty() {
        return Err(f.error(None, &format!("has no files for {what}")));
    }
    let snap = f.fetch_all(&files)?;
    Ok(f.located(snap))
}

impl<'a> Fetch<'a> {
    /// The client for `repo` and its listing at the revision asked for.
    fn open(env: &'a HubEnv, cache: &Path, repo: &'a RepoRef) -> Result<Fetch<'a>> {
        let hf_repo = hf_hub::Repo::with_revision(
            repo.id.clone(),
            match repo.kind {
                RepoKind::Model => hf_hub::RepoType::Model,
                RepoKind::Dataset => hf_hub::RepoType::Dataset,
            },
            repo.revision.clone(),
        );
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
            .with_endpoint(env.endpoint.clone())
            .with_token(env.token().map(String::from))
            .with_progress(false)
            .with_user_agent("clsnorm", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| Error::Invalid(format!("the Hub client: {e}")))?;
        let mut f = Fetch {
            env,
            repo,
            api: api.repo(hf_repo),
            listing: Listing {
                sha: String::new(),
                siblings: Vec::new(),
            },
            folder: repo.folder(cache),
        };
        tracing::info!(
            "asking {} for {} {}",
            env.endpoint,
            repo.kind.word(),
            repo.display()
        );
        let response = f
            .api
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| f.request_error(e, None))?;
        let mut body = Vec::new();
        response
            .into_reader()
            .take(MAX_LISTING_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| f.error(None, &format!("reading the file list: {e}")))?;
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
            }),
        }
    }

    /// Fetches `files` (those already in the snapshot and intact are kept); returns the
    /// snapshot folder.
    fn fetch_all(&self, files: &[String]) -> Result<PathBuf> {
        if files.len() > MAX_FILES {
            return Err(self.error(None, &format!("{} files; at most {MAX_FILES}", files.len())));
        }
        for file in files {
            self.fetch(file)?;
        }
        Ok(self.snapshot())
    }

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
        let size = sib.lfs.as_ref().map(|l| l.size).or(sib.size);
        tracing::info!(
            "downloading {file}{} of {} from {}",
            size.map(|s| format!(" ({})", indicatif::HumanBytes(s)))
                .unwrap_or_default(),
            self.repo.display(),
            self.env.endpoint
        );
        self.check_headers(file, sib)?;
        // hf-hub unwraps a few things an endpoint controls; the headers were checked above,
        // and whatever else it may panic on becomes this file's error, not a crash.
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.api.download_with_progress(file, Bar::new())
        }))
        .map_err(|_| self.error(Some(file), "could not be downloaded: the Hub client failed"))?
        .map_err(|e| self.api_error(e, file))?;
        if got != pointer {
            return Err(self.error(
                Some(file),
                &format!(
                    "came from another commit ({}) than the one listed ({}): the revision moved \
                     while downloading; run again",
                    got.parent()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    self.listing.sha
                ),
            ));
        }
        if let Err(msg) = check(&got, sib) {
            // Both were written by this download: remove them, so nothing trusts the bytes.
            if let Ok(blob) = std::fs::canonicalize(&got) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&got);
            return Err(self.error(
                Some(file),
                &format!("arrived damaged ({msg}); removed it: run again"),
            ));
        }
        Ok(())
    }

    /// Asks the endpoint for `file`'s headers as hf-hub does before downloading (bytes 0-0,
    /// redirects within the endpoint followed) and requires what hf-hub builds paths from to
    /// be the listing's: the ETag (the blob's file name) the listed hash and X-Repo-Commit (the
    /// snapshot's folder name) the listed commit; a redirect must say where to (hf-hub
    /// unwraps its Location). A broken or hostile endpoint so cannot make hf-hub write outside
    /// the repository's cache folder. (An endpoint that answers hf-hub's identical request
    /// otherwise is trusted that far, as `huggingface_hub` trusts it.)
    fn check_headers(&self, file: &str, sib: &Sibling) -> Result<()> {
        let Some(want) = listed_hash(sib) else {
            return Err(self.error(
                Some(file),
                "is listed without a hash (blobId or lfs.sha256); is HF_ENDPOINT a Hub?",
            ));
        };
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .redirects(0)
            .user_agent(concat!("clsnorm/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut url = self.api.url(file);
        let mut answer = None;
        for _ in 0..MAX_REDIRECTS {
            let mut request = agent.get(&url).set("Range", "bytes=0-0");
            if let Some(t) = self.env.token() {
                request = request.set("Authorization", &format!("Bearer {t}"));
            }
            let r = request
                .call()
                .map_err(|e| self.request_error(e, Some(file)))?;
            if !(300..400).contains(&r.status()) {
                answer = Some(r);
                break;
            }
            let Some(location) = r.header("Location") else {
                return Err(self.error(
                    Some(file),
                    &format!(
                        "was answered HTTP {} without a Location; is HF_ENDPOINT a Hub?",
                        r.status()
                    ),
                ));
            };
            if location.contains("://") {
                // Elsewhere (the Hub's file storage): hf-hub reads the headers of this answer.
                answer = Some(r);
                break;
            }
            match (location.strip_prefix('/'), origin(&url)) {
                (Some(path), Some(origin)) if !path.starts_with('/') => {
                    url = format!("{origin}/{path}");
                }
                _ => {
                    return Err(self.error(
                        Some(file),
                        &format!(
                            "was redirected to {}, not an absolute path or URL; is HF_ENDPOINT                              a Hub?",
                            crate::excerpt::quoted(location)
                        ),
                    ))
                }
            }
        }
        let Some(r) = answer else {
            return Err(self.error(
                Some(file),
                &format!("was redirected more than {MAX_REDIRECTS} times"),
            ));
        };
        let etag = r
            .header("X-Linked-Etag")
            .or_else(|| r.header("ETag"))
            .map(|e| e.replace('"', "").to_ascii_lowercase());
        if etag.as_deref() != Some(want.as_str()) {
            return Err(self.error(
                Some(file),
                &format!(
                    "came with ETag {}, not the hash the file list gives ({want}); is HF_ENDPOINT                      a Hub?",
                    etag.as_deref()
                        .map(crate::excerpt::quoted)
                        .unwrap_or_else(|| "(none)".into())
                ),
            ));
        }
        let commit = r.header("X-Repo-Commit");
        if commit != Some(self.listing.sha.as_str()) {
            return Err(self.error(
                Some(file),
                &format!(
                    "came from commit {}, not the listed {}: the revision moved, or HF_ENDPOINT                      is not a Hub; run again",
                    commit
                        .map(crate::excerpt::quoted)
                        .unwrap_or_else(|| "(none)".into()),
                    self.listing.sha
                ),
            ));
        }
        Ok(())
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

    fn request_error(&self, e: ureq::Error, file: Option<&str>) -> Error {
        let what = self.what(file);
        Error::Invalid(match e {
            ureq::Error::Status(401 | 403, _) => format!(
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
            ureq::Error::Status(404, _) => match file {
                Some(_) => format!(
                    "{what}: no such file at revision {} (HTTP 404)",
                    self.repo.revision
                ),
                None => format!(
                    "{what}: no such repository or revision (HTTP 404); check the id and \
                     @REVISION"
                ),
            },
            ureq::Error::Status(code, _) => format!("{what}: the Hub answered HTTP {code}"),
            ureq::Error::Transport(t) => format!(
                "{what}: cannot reach the Hub ({t}); offline, set HF_HUB_OFFLINE=1 to use only \
                 the cache, and fetch where the Hub is reachable"
            ),
        })
    }

    fn api_error(&self, e: ApiError, file: &str) -> Error {
        match e {
            ApiError::RequestError(e) => self.request_error(*e, Some(file)),
            ApiError::TooManyRetries(e) => self.api_error(*e, file),
            ApiError::IoError(io) => self.error(
                Some(file),
                &format!(
                    "stopped downloading ({io}); what arrived is kept in {}/*.part, not used: run \
                     again to resume",
                    self.folder.join("blobs").display()
                ),
            ),
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => self.error(
                Some(file),
                &format!("the server sent no usable {h} header; is HF_ENDPOINT a Hub?"),
            ),
            ApiError::InvalidResume => self.error(
                Some(file),
                &format!(
                    "a partial download in {} is longer than the file: delete its .part file \
                     and run again",
                    self.folder.join("blobs").display()
                ),
            ),
            ApiError::LockAcquisition(p) => self.error(
                Some(file),
                &format!(
                    "is being downloaded by another process (lock {}); run again when it is done",
                    p.display()
                ),
            ),
            other => self.error(Some(file), &other.to_string()),
        }
    }
}

/// The hash the listing gives for a file (sha256 for LFS files, the git object id for the
/// others), lowercase: the name of its blob in the cache.
fn listed_hash(sib: &Sibling) -> Option<String> {
    match (&sib.lfs, &sib.blob_id) {
        (Some(lfs), _) => Some(lfs.sha256.to_ascii_lowercase()),
        (None, Some(id)) => Some(id.to_ascii_lowercase()),
        _ => None,
    }
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> Option<&str> {
    let start = url.find("://")? + 3;
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    Some(&url[..end])
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
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        Bar(bar)
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
        self.0.set_message(crate::excerpt::quoted(filename));
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}
