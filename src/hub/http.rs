//! The Hub's few plain HTTP requests, with every wait, size and count bounded. The server is
//! untrusted: nothing it sends names a path, its redirects are followed only to the endpoint
//! (or, for a file, on to the storage host the endpoint names, without the token), and a
//! server that stops answering, drips bytes or never ends a body ends in an error.
//!
//! Bounds (see the README's Hub section): connecting and each wait for bytes take at most the
//! timeout (`HF_HUB_DOWNLOAD_TIMEOUT` for files, `HF_HUB_ETAG_TIMEOUT` for the file list, 10 s
//! each as in `huggingface_hub`); a response's headers must be complete within twice that; a
//! body must bring at least [`MIN_BYTES_PER_WINDOW`] in every timeout's span; a transient failure
//! (connection refused or reset, a stall, HTTP 429 or 5xx) is tried again after 1, 2, 4, 8 s
//! (or the server's `Retry-After`, up to [`MAX_RETRY_AFTER`]), `CLSNORM_HUB_RETRIES` times (4).
use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use url::Url;

/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;
/// The least a body must bring in each timeout's span; slower is a stall.
pub const MIN_BYTES_PER_WINDOW: u64 = 1024;
/// The longest `Retry-After` waited for; a server asking for more is an error to retry later.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most retries `CLSNORM_HUB_RETRIES` may ask for.
pub const MAX_RETRIES: u32 = 10;
const DEFAULT_TIMEOUT_S: f64 = 10.0;
const DEFAULT_RETRIES: u32 = 4;

/// How long to wait and how often to try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connecting, and each wait for a file's bytes.
    pub download_timeout: Duration,
    /// The same for the file list.
    pub listing_timeout: Duration,
    /// Tries after the first, on transient failures.
    pub retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            download_timeout: Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
            listing_timeout: Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
            retries: DEFAULT_RETRIES,
        }
    }
}

impl Limits {
    /// From the environment `var` reads; a value that is not a number in range is an error
    /// naming the variable.
    pub fn from_env(var: &impl Fn(&str) -> Option<String>) -> Result<Limits, String> {
        let seconds = |name: &str| -> Result<Duration, String> {
            let Some(v) = var(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_S));
            };
            match v.trim().parse::<f64>() {
                Ok(s) if (0.1..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
                _ => Err(format!(
                    "{name} {} is not a number of seconds from 0.1 to 3600",
                    crate::excerpt::quoted(&v)
                )),
            }
        };
        let retries = match var("CLSNORM_HUB_RETRIES").filter(|v| !v.trim().is_empty()) {
            None => DEFAULT_RETRIES,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n <= MAX_RETRIES => n,
                _ => {
                    return Err(format!(
                        "CLSNORM_HUB_RETRIES {} is not a whole number from 0 to {MAX_RETRIES}",
                        crate::excerpt::quoted(&v)
                    ))
                }
            },
        };
        Ok(Limits {
            download_timeout: seconds("HF_HUB_DOWNLOAD_TIMEOUT")?,
            listing_timeout: seconds("HF_HUB_ETAG_TIMEOUT")?,
            retries,
        })
    }
}

/// Why a request failed, without the request's context (the caller names repository and
/// file).
#[derive(Debug)]
pub enum Failure {
    /// The endpoint answered this HTTP status (after retries, for transient ones).
    Status(u16),
    /// No connection, or it broke (after retries).
    Unreachable(String),
    /// Nothing, or too little, arrived in time (after retries).
    Stalled(String),
    /// A redirect that is not followed.
    Redirect(String),
    /// The answer is not what the Hub sends.
    Malformed(String),
    /// The server asks to come back later than clsnorm waits.
    Later(String),
    /// Writing what arrived failed here.
    Local(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "the server answered HTTP {code}"),
            Failure::Unreachable(m) | Failure::Stalled(m) => f.write_str(m),
            Failure::Redirect(m) | Failure::Malformed(m) | Failure::Later(m) => f.write_str(m),
            Failure::Local(e) => write!(f, "writing the download: {e}"),
        }
    }
}

impl Failure {
    fn transient(&self) -> bool {
        match self {
            Failure::Status(code) => *code == 429 || (500..600).contains(code),
            Failure::Unreachable(_) | Failure::Stalled(_) => true,
            _ => false,
        }
    }
}

/// What one try came to: a failure, and how long the server asked to wait before the next.
struct Attempt {
    failure: Failure,
    retry_after: Option<Duration>,
}

impl From<Failure> for Attempt {
    fn from(failure: Failure) -> Self {
        Attempt {
            failure,
            retry_after: None,
        }
    }
}

/// A client for one endpoint and its token.
pub struct Client {
    /// Read timeouts are the agent's in ureq 2 (a request's own `timeout` would also end a
    /// long body): one agent for the file list, one for files.
    listing_agent: ureq::Agent,
    file_agent: ureq::Agent,
    endpoint: Url,
    token: Option<String>,
    limits: Limits,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<&str>, limits: Limits) -> Result<Client, String> {
        let endpoint =
            Url::parse(endpoint).map_err(|e| format!("HF_ENDPOINT is not an address ({e})"))?;
        let agent = |timeout: Duration| {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .redirects(0)
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .timeout_write(timeout)
                .user_agent(concat!("clsnorm/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Client {
            listing_agent: agent(limits.listing_timeout),
            file_agent: agent(limits.download_timeout),
            endpoint,
            token: token.map(String::from),
            limits,
        })
    }

    /// `path` (starting with `/`) on the endpoint, which may itself have a path prefix.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.as_str().trim_end_matches('/'))
    }

    /// The body of `url` on the endpoint, at most `max_bytes` (redirects only within the
    /// endpoint).
    pub fn get_small(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, Failure> {
        let timeout = self.limits.listing_timeout;
        self.with_retries(url, || {
            let r = self.open(url, None, false)?;
            let mut body = Vec::new();
            let n = Watched::new(r.into_reader(), timeout)
                .take(max_bytes + 1)
                .read_to_end(&mut body)
                .map_err(|e| stall_or_broken(e, timeout))?;
            if n as u64 > max_bytes {
                return Err(Failure::Malformed(format!(
                    "the answer is longer than {}",
                    indicatif::HumanBytes(max_bytes)
                ))
                .into());
            }
            Ok(body)
        })
    }

    /// Appends `url`'s bytes to `file` (which holds `have` of them from an earlier try) until
    /// it holds `size`: resumed with a range request, never past `size` whatever the server
    /// sends. `progress` sees each chunk's length.
    pub fn download(
        &self,
        url: &str,
        file: &mut std::fs::File,
        size: u64,
        progress: &dyn Fn(u64, u64),
    ) -> Result<(), Failure> {
        let timeout = self.limits.download_timeout;
        self.with_retries(url, || {
            let have = file.metadata().map_err(Failure::Local)?.len();
            if have > size {
                // Longer than the file: not a prefix of it.
                file.set_len(0).map_err(Failure::Local)?;
                return Err(Failure::Malformed(
                    "a partial download was longer than the file; started again".into(),
                )
                .into());
            }
            if have == size {
                return Ok(());
            }
            let r = self.open(url, (have > 0).then_some(have), true)?;
            let mut have = have;
            if r.status() == 206 {
                check_content_range(r.header("Content-Range"), have, size)?;
            } else if have > 0 {
                // The whole file again.
                file.set_len(0).map_err(Failure::Local)?;
                have = 0;
            }
            progress(have, size);
            let mut body = Watched::new(r.into_reader(), timeout).take(size - have);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = body
                    .read(&mut buf)
                    .map_err(|e| stall_or_broken(e, timeout))?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n]).map_err(Failure::Local)?;
                have += n as u64;
                progress(have, size);
            }
            file.flush().map_err(Failure::Local)?;
            if have < size {
                return Err(Failure::Unreachable(format!(
                    "the connection ended after {have} of {size} bytes"
                ))
                .into());
            }
            Ok(())
        })
    }

    /// Runs `once` until it succeeds, fails for good, or the retries are spent.
    fn with_retries<T>(
        &self,
        url: &str,
        mut once: impl FnMut() -> Result<T, Attempt>,
    ) -> Result<T, Failure> {
        let mut attempt = 0;
        loop {
            match once() {
                Ok(v) => return Ok(v),
                Err(a) if a.failure.transient() && attempt < self.limits.retries => {
                    let backoff = Duration::from_secs(1 << attempt.min(3));
                    let wait = match a.retry_after {
                        Some(w) if w > MAX_RETRY_AFTER => {
                            return Err(Failure::Later(format!(
                                "{} and asks to wait {} s before trying again; run again later",
                                a.failure,
                                w.as_secs()
                            )))
                        }
                        Some(w) => w,
                        None => backoff,
                    };
                    tracing::warn!(
                        "{}: {}; trying again in {} s ({} of {})",
                        redacted(url),
                        a.failure,
                        wait.as_secs_f64(),
                        attempt + 1,
                        self.limits.retries
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(a) => return Err(a.failure),
            }
        }
    }

    /// A 2xx answer to GET `url` (with `Range: bytes=FROM-` when `from`), after following
    /// redirects: within the endpoint with the token; when `file`, also to another http(s)
    /// host the endpoint names (the Hub's file storage), never with the token and never from
    /// https to http.
    fn open(&self, url: &str, from: Option<u64>, file: bool) -> Result<ureq::Response, Attempt> {
        let (agent, timeout) = if file {
            (&self.file_agent, self.limits.download_timeout)
        } else {
            (&self.listing_agent, self.limits.listing_timeout)
        };
        let mut url = Url::parse(url).map_err(|e| Failure::Malformed(e.to_string()))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = agent.request_url("GET", &url);
            if let Some(from) = from {
                request = request.set("Range", &format!("bytes={from}-"));
            }
            if let (Some(t), true) = (&self.token, same_origin(&url, &self.endpoint)) {
                request = request.set("Authorization", &format!("Bearer {t}"));
            }
            let r = call_within(request, timeout)?;
            if !(300..400).contains(&r.status()) {
                return Ok(r);
            }
            let status = r.status();
            let Some(location) = r.header("Location") else {
                return Err(Failure::Redirect(format!(
                    "the server answered HTTP {status} without a Location"
                ))
                .into());
            };
            let next = url.join(location).map_err(|_| {
                Failure::Redirect(format!(
                    "the server redirected to {}, not an address",
                    crate::excerpt::quoted(location)
                ))
            })?;
            let scheme_ok = match (url.scheme(), next.scheme()) {
                ("https", s) => s == "https",
                ("http", s) => s == "http" || s == "https",
                _ => false,
            };
            if !scheme_ok {
                return Err(Failure::Redirect(format!(
                    "the server redirected to {}: only http(s), and never from https to http",
                    crate::excerpt::quoted(&redacted(next.as_str()))
                ))
                .into());
            }
            if !file && !same_origin(&next, &self.endpoint) {
                return Err(Failure::Redirect(format!(
                    "the server redirected to another host ({}); the file list comes from the \
                     endpoint itself",
                    crate::excerpt::quoted(&origin(&next))
                ))
                .into());
            }
            url = next;
        }
        Err(Failure::Redirect(format!("redirected more than {MAX_REDIRECTS} times")).into())
    }
}

/// Sends `request` and waits at most twice `timeout` for the status line and headers (each
/// read waits at most `timeout`): a server that
/// connects and then drips its headers cannot hold the caller. (The request's own thread
/// ends when the socket's read timeout or the server ends it.)
fn call_within(request: ureq::Request, timeout: Duration) -> Result<ureq::Response, Attempt> {
    let limit = 2 * timeout;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("hub-request".into())
        .spawn(move || {
            let _ = tx.send(request.call());
        })
        .map_err(Failure::Local)?;
    let answer = rx.recv_timeout(limit).map_err(|_| {
        Failure::Stalled(format!(
            "no complete answer within {} s",
            limit.as_secs_f64()
        ))
    })?;
    match answer {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(code, r)) => Err(Attempt {
            failure: Failure::Status(code),
            retry_after: r
                .header("Retry-After")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(86_400))),
        }),
        Err(ureq::Error::Transport(t)) => Err(transport(t, timeout).into()),
    }
}

/// A transport error in words, without the address (its query may hold a signed URL's
/// credentials; the caller names repository and file).
fn transport(t: ureq::Transport, timeout: Duration) -> Failure {
    use ureq::ErrorKind as K;
    let mut source = std::error::Error::source(&t);
    let mut timed_out = false;
    let mut cause = None;
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            timed_out |= matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
        }
        cause = Some(e.to_string());
        source = e.source();
    }
    let detail = cause
        .or_else(|| t.message().map(String::from))
        .unwrap_or_else(|| t.kind().to_string());
    if timed_out {
        return Failure::Stalled(format!("no answer within {} s", timeout.as_secs_f64()));
    }
    match t.kind() {
        K::ConnectionFailed | K::ProxyConnect => {
            Failure::Unreachable(format!("cannot connect: {detail}"))
        }
        K::Dns => Failure::Unreachable(format!("cannot resolve the host: {detail}")),
        K::Io => Failure::Unreachable(format!("the connection broke: {detail}")),
        _ => Failure::Malformed(format!("{}: {detail}", t.kind())),
    }
}

/// A read that timed out or a body that stalled is a stall; anything else broke the
/// connection.
fn stall_or_broken(e: std::io::Error, timeout: Duration) -> Attempt {
    use std::io::ErrorKind as K;
    let stalled = e
        .get_ref()
        .is_some_and(|inner| inner.to_string().starts_with(STALL));
    match e.kind() {
        K::TimedOut if stalled => Failure::Stalled(e.to_string()).into(),
        K::TimedOut | K::WouldBlock => Failure::Stalled(format!(
            "no bytes of the body within {} s",
            timeout.as_secs_f64()
        ))
        .into(),
        _ => Failure::Unreachable(format!("the connection broke ({e})")).into(),
    }
}

/// How [`Watched`]'s own stall message starts.
const STALL: &str = "the server sent";

/// `Content-Range` of a 206 answer to `Range: bytes=HAVE-` must be `bytes HAVE-(SIZE-1)/SIZE`
/// or an earlier end (the rest follows in another try).
fn check_content_range(header: Option<&str>, have: u64, size: u64) -> Result<(), Attempt> {
    let parsed = header.and_then(|h| {
        let (range, total) = h.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (start, end) = range.split_once('-')?;
        Some((
            start.trim().parse::<u64>().ok()?,
            end.trim().parse::<u64>().ok()?,
            total.trim(),
        ))
    });
    match parsed {
        Some((start, end, total))
            if start == have
                && end >= start
                && end < size
                && (total == "*" || total.parse::<u64>() == Ok(size)) =>
        {
            Ok(())
        }
        _ => Err(Failure::Malformed(format!(
            "the Content-Range header {} does not continue the download at byte {have} of \
             {size}",
            header
                .map(crate::excerpt::quoted)
                .unwrap_or_else(|| "(none)".into())
        ))
        .into()),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// `url` without its query (signed storage addresses carry credentials there).
fn redacted(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_string()
}

/// A body reader that fails when less than [`MIN_BYTES_PER_WINDOW`] arrived in a window of
/// `window` (each read itself waits at most the socket's read timeout).
struct Watched<R> {
    inner: R,
    window: Duration,
    start: Instant,
    got: u64,
}

impl<R: Read> Watched<R> {
    fn new(inner: R, window: Duration) -> Self {
        Watched {
            inner,
            window,
            start: Instant::now(),
            got: 0,
        }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.got += n as u64;
        if self.start.elapsed() >= self.window {
            if n > 0 && self.got < MIN_BYTES_PER_WINDOW {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{STALL} {} bytes in {} s (at least {MIN_BYTES_PER_WINDOW} expected)",
                        self.got,
                        self.window.as_secs_f64()
                    ),
                ));
            }
            self.start = Instant::now();
            self.got = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_must_continue_the_download() {
        assert!(check_content_range(Some("bytes 10-19/20"), 10, 20).is_ok());
        assert!(check_content_range(Some("bytes 10-14/*"), 10, 20).is_ok());
        for bad in [
            None,
            Some("bytes 0-19/20"),
            Some("bytes 10-25/26"),
            Some("bytes 10-19/x"),
            Some("bytes a-b/20"),
            Some("items 10-19/20"),
        ] {
            assert!(check_content_range(bad, 10, 20).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_token_goes_to_the_endpoints_origin_only() {
        let u = |s: &str| Url::parse(s).unwrap();
        let ep = u("https://huggingface.co");
        assert!(same_origin(&u("https://huggingface.co/api/models/x"), &ep));
        assert!(same_origin(&u("https://huggingface.co:443/x"), &ep));
        for other in [
            "https://cdn-lfs.huggingface.co/x",
            "http://huggingface.co/x",
            "https://huggingface.co:8443/x",
            "https://huggingface.co.evil.example/x",
        ] {
            assert!(!same_origin(&u(other), &ep), "{other}");
        }
    }

    #[test]
    fn limits_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Limits::from_env(&env(&[])), Ok(Limits::default()));
        let l = Limits::from_env(&env(&[
            ("HF_HUB_DOWNLOAD_TIMEOUT", "2.5"),
            ("HF_HUB_ETAG_TIMEOUT", "1"),
            ("CLSNORM_HUB_RETRIES", "0"),
        ]))
        .unwrap();
        assert_eq!(l.download_timeout, Duration::from_millis(2500));
        assert_eq!(l.listing_timeout, Duration::from_secs(1));
        assert_eq!(l.retries, 0);
        for (k, v) in [
            ("HF_HUB_DOWNLOAD_TIMEOUT", "0"),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "NaN"),
            ("HF_HUB_ETAG_TIMEOUT", "1e9"),
            ("CLSNORM_HUB_RETRIES", "11"),
            ("CLSNORM_HUB_RETRIES", "-1"),
        ] {
            let e = Limits::from_env(&|n: &str| (n == k).then(|| v.to_string())).unwrap_err();
            assert!(e.starts_with(k), "{e}");
        }
    }
}
