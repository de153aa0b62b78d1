//! A Hugging Face Hub stand-in on 127.0.0.1 for the tests: the endpoints and headers the
//! Hub client uses (repository listing with blobs, `resolve` with ETag and commit headers,
//! LFS files redirected to file storage on another host, 127.0.0.2, as huggingface.co's is,
//! range requests), gated repositories, and faults (a connection closed mid-file, damaged
//! bytes, a listed file that is missing) and hostile answers ([`Hostile`]).
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// A file of a repository; `lfs` files are served as the Hub serves LFS files.
pub struct HubFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub lfs: bool,
}

impl HubFile {
    pub fn sha256(&self) -> String {
        format!("{:x}", sha2::Sha256::digest(&self.bytes))
    }
    pub fn git_oid(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", self.bytes.len()).as_bytes());
        h.update(&self.bytes);
        format!("{:x}", h.finalize())
    }
    fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_oid()
        }
    }
}

/// A repository: `kind` is `models` or `datasets`.
pub struct HubRepo {
    pub kind: &'static str,
    pub id: String,
    pub commit: String,
    pub files: Vec<HubFile>,
    /// Served only to requests carrying this token.
    pub token: Option<String>,
    /// The branch it is listed under besides its commit (`main`; the Hub keeps a dataset's
    /// Parquet conversion under `refs/convert/parquet`).
    pub branch: String,
}

impl HubRepo {
    /// Every file under `dir` (recursively), LFS for weights and parquet files.
    pub fn from_dir(
        kind: &'static str,
        id: &str,
        commit_seed: u8,
        dir: &std::path::Path,
    ) -> HubRepo {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                let lfs = rel.ends_with(".safetensors")
                    || rel.ends_with(".parquet")
                    || rel.ends_with(".bin");
                files.push(HubFile {
                    path: rel,
                    bytes: std::fs::read(&p).unwrap(),
                    lfs,
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        HubRepo {
            kind,
            id: id.to_string(),
            commit: format!("{:02x}", commit_seed).repeat(20),
            files,
            token: None,
            branch: "main".into(),
        }
    }
}

/// Faults to inject, each once per file path.
#[derive(Default)]
pub struct Faults {
    /// Close the connection halfway through the file's bytes.
    pub cut: HashSet<String>,
    /// Serve the file with one byte changed.
    pub damage: HashSet<String>,
    /// Answer 404 for a file the listing shows.
    pub missing: HashSet<String>,
    /// Headers of the file's `resolve` answer replaced (an empty value removes the header),
    /// on every request: a hostile or broken endpoint.
    pub forged: HashMap<String, Vec<(String, String)>>,
    /// Hostile answers by file path, or [`LISTING`] for the repository listing, on the
    /// endpoint's `resolve`, or `storage:FILE` for the storage host's answer.
    pub hostile: HashMap<String, Hostile>,
}

/// The key of [`Faults::hostile`] for the repository listing.
pub const LISTING: &str = "<listing>";

/// A server that does not answer as a Hub does. Each loop is bounded in time and bytes and
/// ends when the client hangs up.
#[derive(Clone, Debug)]
pub enum Hostile {
    /// Reads the request and says nothing (for at most 60 s).
    Silent,
    /// Sends the status line and headers one byte a second.
    DripHeaders,
    /// Sends headers promising the body, then the body one byte a second.
    DripBody,
    /// Sends headers promising the body, then nothing.
    HeadersOnly,
    /// A body without end (no length; at most 1 GiB).
    Endless,
    /// A relative redirect to itself.
    RedirectLoop,
    /// A redirect to this Location (on every request).
    RedirectTo(String),
    /// This status, with these headers, the first `times` requests; then the honest answer.
    Status {
        code: u16,
        headers: Vec<(String, String)>,
        times: usize,
    },
    /// The honest file, with `Content-Range` replaced by this value on range requests.
    ContentRange(String),
}

struct State {
    repos: Vec<HubRepo>,
    faults: Faults,
    /// (host, path, Authorization header) of each request.
    log: Vec<(String, String, Option<String>)>,
}

/// The running stand-in; its threads live as long as the test process.
pub struct HubServer {
    pub endpoint: String,
    /// The file storage LFS files are redirected to: another host, as the Hub's is.
    pub storage: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    pub fn start(repos: Vec<HubRepo>) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let storage_listener = TcpListener::bind("127.0.0.2:0").unwrap();
        let storage = format!("http://{}", storage_listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos,
            faults: Faults::default(),
            log: Vec::new(),
        }));
        for (l, host) in [
            (listener, endpoint.clone()),
            (storage_listener, storage.clone()),
        ] {
            let (st, storage) = (state.clone(), storage.clone());
            std::thread::spawn(move || {
                for conn in l.incoming().flatten() {
                    let (st, host, storage) = (st.clone(), host.clone(), storage.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &st, &host, &storage);
                    });
                }
            });
        }
        HubServer {
            endpoint,
            storage,
            state,
        }
    }

    /// Authorization headers the storage host received.
    pub fn storage_authorizations(&self) -> Vec<Option<String>> {
        let st = self.state.lock().unwrap();
        st.log
            .iter()
            .filter(|(h, ..)| *h == self.storage)
            .map(|(.., a)| a.clone())
            .collect()
    }

    pub fn with_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.lock().unwrap().faults);
    }

    /// Paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(_, p, _)| p.clone())
            .collect()
    }

    /// Authorization headers received so far.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(.., a)| a.clone())
            .collect()
    }
}

/// An address nothing listens on.
pub fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    ep
}

fn respond(
    conn: &mut TcpStream,
    code: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// Plays `h` on `conn`; `Ok(true)` when it answered, `Ok(false)` when the honest answer
/// should follow.
fn play(conn: &mut TcpStream, h: &mut Hostile, target: &str) -> std::io::Result<bool> {
    let start = std::time::Instant::now();
    let drip = |conn: &mut TcpStream, bytes: &[u8]| -> std::io::Result<bool> {
        for b in bytes {
            if start.elapsed().as_secs() > 60 {
                break;
            }
            conn.write_all(&[*b])?;
            conn.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        Ok(true)
    };
    match h {
        Hostile::Silent => {
            std::thread::sleep(std::time::Duration::from_secs(60));
            Ok(true)
        }
        Hostile::DripHeaders => drip(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
        Hostile::DripBody => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")?;
            drip(conn, &[b' '; 100])
        }
        Hostile::HeadersOnly => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")?;
            conn.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(60));
            Ok(true)
        }
        Hostile::Endless => {
            conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..(1 << 14) {
                conn.write_all(&chunk)?;
            }
            Ok(true)
        }
        Hostile::RedirectLoop => {
            let name = target.rsplit('/').next().unwrap_or("x").to_string();
            respond(conn, 302, &[("Location".into(), name)], b"")?;
            Ok(true)
        }
        Hostile::RedirectTo(to) => {
            respond(conn, 302, &[("Location".into(), to.clone())], b"")?;
            Ok(true)
        }
        Hostile::Status {
            code,
            headers,
            times,
        } if *times > 0 => {
            *times -= 1;
            respond(conn, *code, headers, b"{}")?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Plays the hostile answer registered under `key`, if any, without holding the state's lock
/// while it plays (it may take a minute); `true` when it answered.
fn play_hostile(
    conn: &mut TcpStream,
    state: &Mutex<State>,
    key: &str,
    target: &str,
) -> std::io::Result<bool> {
    let Some(mut h) = state.lock().unwrap().faults.hostile.get(key).cloned() else {
        return Ok(false);
    };
    let answered = play(conn, &mut h, target)?;
    state
        .lock()
        .unwrap()
        .faults
        .hostile
        .insert(key.to_string(), h);
    Ok(answered)
}

fn serve(
    mut conn: TcpStream,
    state: &Arc<Mutex<State>>,
    host: &str,
    storage: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut st = state.lock().unwrap();
    st.log.push((host.to_string(), path.clone(), auth.clone()));
    let at_storage = host == storage;
    let not_found = |conn: &mut TcpStream| {
        respond(
            conn,
            404,
            &[("X-Error-Code".into(), "RepoNotFound".into())],
            b"{\"error\":\"not found\"}",
        )
    };

    // LFS storage, on the other host only: /lfs/SHA256
    if at_storage {
        let found = path.strip_prefix("/lfs/").and_then(|sha| {
            st.repos
                .iter()
                .flat_map(|r| r.files.iter())
                .find(|f| f.lfs && f.sha256() == sha)
                .map(|f| (f.path.clone(), f.bytes.clone()))
        });
        let Some((file, bytes)) = found else {
            return not_found(&mut conn);
        };
        drop(st);
        if play_hostile(&mut conn, state, &format!("storage:{file}"), &target)? {
            return Ok(());
        }
        let mut st = state.lock().unwrap();
        return send_file(&mut conn, &mut st, &file, bytes, range.as_deref(), vec![]);
    }
    let (kind, rest) = if let Some(r) = path.strip_prefix("/api/models/") {
        ("api-models", r)
    } else if let Some(r) = path.strip_prefix("/api/datasets/") {
        ("api-datasets", r)
    } else if let Some(r) = path.strip_prefix("/datasets/") {
        ("datasets", r)
    } else {
        ("models", path.trim_start_matches('/'))
    };
    let repo_kind = kind.trim_start_matches("api-");
    let (id, rev, file) = if kind.starts_with("api-") {
        let Some((id, rev)) = rest.split_once("/revision/") else {
            return not_found(&mut conn);
        };
        (id.to_string(), rev.to_string(), None)
    } else {
        let Some((id, tail)) = rest.split_once("/resolve/") else {
            return not_found(&mut conn);
        };
        let Some((rev, file)) = tail.split_once('/') else {
            return not_found(&mut conn);
        };
        (id.to_string(), rev.to_string(), Some(file.to_string()))
    };
    drop(st);
    if play_hostile(
        &mut conn,
        state,
        file.as_deref().unwrap_or(LISTING),
        &target,
    )? {
        return Ok(());
    }
    let mut st = state.lock().unwrap();
    let Some(ri) = st.repos.iter().position(|r| {
        r.kind == repo_kind
            && r.id == id
            && (rev.replace("%2F", "/") == r.branch || rev == r.commit)
    }) else {
        return not_found(&mut conn);
    };
    if let Some(t) = &st.repos[ri].token {
        if auth.as_deref() != Some(&format!("Bearer {t}")) {
            return respond(&mut conn, 401, &[], b"{\"error\":\"gated\"}");
        }
    }
    let commit = st.repos[ri].commit.clone();
    let Some(file) = file else {
        let siblings: Vec<serde_json::Value> = st.repos[ri]
            .files
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({
                    "rfilename": f.path,
                    "size": f.bytes.len(),
                    "blobId": f.git_oid(),
                });
                if f.lfs {
                    v["lfs"] = serde_json::json!({"sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let body =
            serde_json::to_vec(&serde_json::json!({"id": id, "sha": commit, "siblings": siblings}))
                .unwrap();
        return respond(
            &mut conn,
            200,
            &[("Content-Type".into(), "application/json".into())],
            &body,
        );
    };
    if st.faults.missing.contains(&file) {
        return respond(
            &mut conn,
            404,
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"{}",
        );
    }
    let Some(f) = st.repos[ri].files.iter().find(|f| f.path == file) else {
        return respond(
            &mut conn,
            404,
            &[("X-Error-Code".into(), "EntryNotFound".into())],
            b"{}",
        );
    };
    let etag = f.etag();
    let forged = st.faults.forged.get(&file).cloned().unwrap_or_default();
    let forge = |mut headers: Vec<(String, String)>| {
        for (name, value) in &forged {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            if !value.is_empty() {
                headers.push((name.clone(), value.clone()));
            }
        }
        headers
    };
    if f.lfs {
        let headers = forge(vec![
            ("Location".to_string(), format!("{storage}/lfs/{etag}")),
            ("X-Linked-Etag".to_string(), format!("\"{etag}\"")),
            ("X-Linked-Size".to_string(), f.bytes.len().to_string()),
            ("X-Repo-Commit".to_string(), commit),
            ("ETag".to_string(), format!("\"{etag}\"")),
        ]);
        return respond(&mut conn, 302, &headers, b"");
    }
    let bytes = f.bytes.clone();
    let headers = forge(vec![
        ("ETag".to_string(), format!("\"{etag}\"")),
        ("X-Repo-Commit".to_string(), commit),
    ]);
    send_file(&mut conn, &mut st, &file, bytes, range.as_deref(), headers)
}

fn send_file(
    conn: &mut TcpStream,
    st: &mut State,
    file: &str,
    mut bytes: Vec<u8>,
    range: Option<&str>,
    mut headers: Vec<(String, String)>,
) -> std::io::Result<()> {
    let total = bytes.len();
    let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() {
                total.saturating_sub(1)
            } else {
                b.parse().unwrap_or(0)
            };
            (a, b.min(total.saturating_sub(1)))
        }
        None => (0, total.saturating_sub(1)),
    };
    if start >= total && total > 0 {
        return respond(conn, 416, &[], b"");
    }
    let whole_body = end + 1 - start > 1;
    if whole_body && st.faults.damage.remove(file) {
        bytes[start] ^= 0xff;
    }
    let body = &bytes[start..=end];
    let code = if range.is_some() { 206 } else { 200 };
    if range.is_some() {
        let forged = [file.to_string(), format!("storage:{file}")]
            .iter()
            .find_map(|k| match st.faults.hostile.get(k) {
                Some(Hostile::ContentRange(v)) => Some(v.clone()),
                _ => None,
            });
        headers.push((
            "Content-Range".into(),
            forged.unwrap_or_else(|| format!("bytes {start}-{end}/{total}")),
        ));
    }
    if whole_body && st.faults.cut.remove(file) {
        // Promise the whole body, send half, close.
        let mut head = format!(
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes())?;
        conn.write_all(&body[..body.len() / 2])?;
        conn.flush()?;
        return conn.shutdown(std::net::Shutdown::Both);
    }
    respond(conn, code, &headers, body)
}

/// The test's own Hugging Face environment: HF_HOME under `root`, the stand-in's address.
pub struct Hf {
    pub home: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
    /// More environment (timeouts, retries).
    pub env: Vec<(String, String)>,
}

impl Hf {
    pub fn new(root: &Path, endpoint: &str) -> Hf {
        Hf {
            home: root.join("hf"),
            endpoint: endpoint.to_string(),
            token: None,
            offline: false,
            env: Vec::new(),
        }
    }

    /// clsnorm with `args` in this environment, to run or spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
        c.args(args)
            .env("HF_HOME", &self.home)
            .env("HF_ENDPOINT", &self.endpoint)
            .env("RUST_LOG", "warn")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_DOWNLOAD_TIMEOUT")
            .env_remove("HF_HUB_ETAG_TIMEOUT")
            .env_remove("CLSNORM_HUB_RETRIES")
            .env_remove("GLUE_DIR");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(t) = &self.token {
            c.env("HF_TOKEN", t);
        }
        if self.offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn cache(&self) -> PathBuf {
        self.home.join("hub")
    }
}
