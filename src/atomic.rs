//! Files are written to a temporary sibling and renamed into place, so a reader (or a run
//! killed half-way) sees either the old file or the complete new one, never a torn one.
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The most bytes handed to one `write` call. Linux sizes the page-cache folios of a buffered
/// write by the length of the call: from 4 MiB up they are large, taken from the free 2 MiB
/// blocks that a VM with free-page reporting has handed back to its host, and each such page
/// then faults on the host as it is filled. A 180 MiB optimizer state written in one call took
/// 1-2 s on the build machine; in 1 MiB calls, 0.06 s (docs/performance.md, "2026-12-07
/// (evening)").
const WRITE_CHUNK: usize = 1 << 20;

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// Writes what `fill` writes to `path` atomically (temp file, fsync, rename), in calls of at
/// most [`WRITE_CHUNK`] bytes whatever the sizes `fill` writes.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = Chunked(std::fs::File::create(&tmp)?);
        fill(&mut f)?;
        f.0.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A file whose `write` calls take at most [`WRITE_CHUNK`] bytes.
struct Chunked(std::fs::File);

impl Write for Chunked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(&buf[..buf.len().min(WRITE_CHUNK)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Writes pretty-printed JSON atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot serialise {}: {e}", path.display())))?;
    text.push('\n');
    write_bytes(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_longer_than_one_write_is_written_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.bin");
        let bytes: Vec<u8> = (0..WRITE_CHUNK * 5 / 2 + 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        write_bytes(&path, &bytes).expect("written");
        assert_eq!(std::fs::read(&path).expect("read back"), bytes);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listed")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["big.bin"], "no temporary file is left");
    }
}
