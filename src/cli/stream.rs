//! What `predict` and `embed --input` share: an output that may be replaced only when the user
//! says so, windows written and flushed as they complete, and a spinner with lines/s.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// `--output` may name a new file or an empty one; an existing file with content only with
/// `overwrite`; never the input itself, a folder, or a place inside clsnorm's own folders.
pub fn check_output(path: &Path, input: &Path, overwrite: bool) -> anyhow::Result<()> {
    clsnorm::rundir::owner::check_placement(path, clsnorm::rundir::owner::Placement::Output)?;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if !meta.is_file() {
        bail!(
            "{} exists and is not a file; choose another --output",
            path.display()
        );
    }
    if std::fs::metadata(input).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino()) == (meta.dev(), meta.ino())
    }) {
        bail!("--output {} is the --input file", path.display());
    }
    if meta.len() > 0 && !overwrite {
        bail!(
            "{} exists; pass --overwrite to replace it, or choose another --output",
            path.display()
        );
    }
    Ok(())
}

/// The checked `--output` file, created (or truncated, when allowed) for writing, and whether
/// this process created it.
pub fn create_output(
    path: &Path,
    input: &Path,
    overwrite: bool,
) -> anyhow::Result<(std::fs::File, Created)> {
    check_output(path, input, overwrite)?;
    let context = || format!("creating {}", path.display());
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => Ok((f, Created(Some(path.to_path_buf())))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let f = std::fs::File::create(path).with_context(context)?;
            Ok((f, Created(None)))
        }
        Err(e) => Err(e).with_context(context),
    }
}

/// The output file this process created, if it did: removed again when the command fails
/// before writing a row into it, so that a failed start leaves no empty (or 0-row) file behind.
/// A file that was there before is left as it is.
#[derive(Debug, Default)]
pub struct Created(Option<PathBuf>);

impl Created {
    /// `result`, after removing the created file if `result` is an error and `rows` is 0.
    pub fn keep_or_remove<T>(&self, result: clsnorm::Result<T>, rows: usize) -> anyhow::Result<T> {
        if let (Err(_), 0, Some(p)) = (&result, rows, &self.0) {
            let _ = std::fs::remove_file(p);
        }
        Ok(result?)
    }
}

/// Lines of JSON, to a file or to standard output (where a closed pipe ends the output
/// quietly, as `head` expects).
pub struct JsonLines {
    out: Box<dyn Write>,
    to_stdout: bool,
}

impl JsonLines {
    pub fn open(
        output: Option<&Path>,
        input: &Path,
        overwrite: bool,
    ) -> anyhow::Result<(Self, Created)> {
        Ok(match output {
            Some(p) => {
                let (f, created) = create_output(p, input, overwrite)?;
                let out = JsonLines {
                    out: Box::new(std::io::BufWriter::new(f)),
                    to_stdout: false,
                };
                (out, created)
            }
            None => {
                let out = JsonLines {
                    out: Box::new(std::io::stdout().lock()),
                    to_stdout: true,
                };
                (out, Created::default())
            }
        })
    }

    /// Writes one window's lines and flushes them, so a run stopped later leaves them whole.
    pub fn write_window(&mut self, text: &str) -> clsnorm::Result<()> {
        match self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
        {
            Err(e) if self.to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(clsnorm::Error::Invalid(format!("writing the output: {e}"))),
            Ok(()) => Ok(()),
        }
    }
}

/// Lines done and lines per second, on standard error (hidden where that is not a terminal).
pub fn spinner() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} lines, {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar
}

/// A library error for the window callback of [`clsnorm::data::read::stream_rows`].
pub fn invalid(e: impl std::fmt::Display) -> clsnorm::Error {
    clsnorm::Error::Invalid(e.to_string())
}
