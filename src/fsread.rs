//! Reading files that a user controls: only regular files (a FIFO or a device would hang or
//! never end), never more than a stated size, and, inside checkpoints, never through a link.
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Upper bound of a data file (a GLUE split is at most a few hundred MB).
pub const MAX_DATA_BYTES: u64 = 8 << 30;
/// Upper bound of a JSON or text side file (configs, manifests, vocabularies, summaries).
pub const MAX_SMALL_BYTES: u64 = 256 << 20;
/// Upper bound of a weights file.
pub const MAX_WEIGHTS_BYTES: u64 = 64 << 30;

/// How to treat a symbolic link at the last component of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it (data files and model directories are often links).
    Follow,
    /// Refuse it without opening its target (files inside a checkpoint).
    Refuse,
}

/// Opens `path` for reading if it is a regular file of at most `limit` bytes; returns the file
/// and its size. Opening does not block on a FIFO (`O_NONBLOCK`), and a FIFO, device, socket
/// or directory is refused.
pub fn open_regular(path: &Path, limit: u64, links: Links) -> Result<(std::fs::File, u64)> {
    open_regular_with(std::fs::OpenOptions::new().read(true), path, limit, links)
}

/// A small bookkeeping file clsnorm locks and rewrites (a run's lock, an output folder's
/// marker): opened read-write and created if missing, never through a link, a regular file of
/// at most [`MAX_SMALL_BYTES`].
pub fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    Ok(open_regular_with(&mut options, path, MAX_SMALL_BYTES, Links::Refuse)?.0)
}

/// [`open_regular`] with the caller's access mode (e.g. read-write, created if missing): the
/// same non-blocking open, link rule, regular-file check and size bound.
pub fn open_regular_with(
    options: &mut std::fs::OpenOptions,
    path: &Path,
    limit: u64,
    links: Links,
) -> Result<(std::fs::File, u64)> {
    let mut flags = libc::O_NONBLOCK;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let f = options.custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            Error::File {
                path: path.to_path_buf(),
                msg: "is a symbolic link, which is not allowed here".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::File {
            path: path.to_path_buf(),
            msg: "is not a regular file".into(),
        });
    }
    if meta.len() > limit {
        return Err(Error::File {
            path: path.to_path_buf(),
            msg: format!(
                "is {} bytes, more than the {} bytes clsnorm reads from such a file",
                meta.len(),
                limit
            ),
        });
    }
    Ok((f, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes (see [`open_regular`]).
pub fn read_regular(path: &Path, limit: u64, links: Links) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path, limit, links)?;
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: a file that grows while it is read still stops at the limit.
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::File {
            path: path.to_path_buf(),
            msg: format!("grew beyond {limit} bytes while being read"),
        });
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file of at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    let bytes = read_regular(path, limit, Links::Follow)?;
    String::from_utf8(bytes).map_err(|e| Error::File {
        path: path.to_path_buf(),
        msg: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })
}

/// sha256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// sha256 of a regular file (streamed, any size), hex.
pub fn sha256_file(path: &Path, links: Links) -> Result<String> {
    let (mut f, _) = open_regular(path, u64::MAX, links)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}
