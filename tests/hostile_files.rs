//! Issue 41's hostile data files, through the binary: a Parquet decompression bomb and a
//! multi-gigabyte line (with and without `--skip-bad-rows`) refused in little memory; every
//! codec pandas, pyarrow and polars write by default read; NaN labels are missing labels.
mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fails, ok, p, setup, Col, Setup};
use parquet::basic::Compression;

/// Address space for a run under test: libtorch and a tiny model fit in far less; reading a
/// bomb's rows does not.
const MEMORY_LIMIT: u64 = 3 << 30;

/// `clsnorm -v ARGS` under [`MEMORY_LIMIT`].
fn limited(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
    cmd.arg("-v")
        .args(args)
        .env("RUST_LOG", "warn,clsnorm=debug");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// Peak resident memory of a run, from its `-v` log.
fn peak_mib(o: &Output) -> u64 {
    let err = String::from_utf8_lossy(&o.stderr);
    err.lines()
        .find_map(|l| {
            let at = l.find("peak_resident_mib=")?;
            l[at + "peak_resident_mib=".len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no peak in {err}"))
}

/// A custom-file fine-tune of two updates on `train` (also the dev file).
fn finetune<'a>(s: &'a Setup, train: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = common::finetune_custom(&s.model, train, out);
    v.extend_from_slice(&["--max-steps", "2", "--batch-size", "4"]);
    v.extend_from_slice(extra);
    v
}

/// 5,000 rows that all reference one 1 MiB text through the dictionary page: a few kB on disk,
/// 5 GiB once read row by row.
fn parquet_bomb(root: &Path) -> PathBuf {
    let path = root.join("bomb.parquet");
    let text = bytes::Bytes::from(vec![b'a'; 1 << 20]);
    common::write_parquet_with(
        &path,
        &[
            Col::Repeated("text", text, 5000),
            Col::Int("label", (0..5000).map(|i| i % 2).collect()),
        ],
        None,
        Compression::ZSTD(Default::default()),
    );
    path
}

#[test]
fn a_parquet_decompression_bomb_is_refused_in_little_memory() {
    let s = setup();
    let bomb = parquet_bomb(&s.root);
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 64 << 10, "{size} bytes");
    let out = s.root.join("run");
    let o = limited(&finetune(&s, &bomb, &out, &[]));
    fails(&o, "refused as a decompression bomb");
    fails(&o, p(&bomb));
    assert!(peak_mib(&o) < 1024, "peak {} MiB", peak_mib(&o));
    assert!(!out.exists());
}

#[test]
fn a_multi_gigabyte_line_is_refused_with_or_without_skip_bad_rows() {
    let s = setup();
    // Sparse: 3 GB of one line, on no disk.
    let huge = s.root.join("huge.csv");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);
    for extra in [&[][..], &["--skip-bad-rows"][..]] {
        let out = s.root.join("run");
        let o = limited(&finetune(&s, &huge, &out, extra));
        fails(&o, "longer than 4 MiB");
        fails(&o, p(&huge));
        let err = String::from_utf8_lossy(&o.stderr);
        let error_line = err.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(error_line.len() < 400, "{error_line}");
        assert!(peak_mib(&o) < 600, "{extra:?}: peak {} MiB", peak_mib(&o));
        assert!(!out.exists());
    }
}

/// The codecs users' files come with: pandas and pyarrow (snappy), polars (zstd), and the
/// others parquet defines; each trains.
#[test]
fn parquet_files_of_every_codec_read() {
    let s = setup();
    let n = 16;
    let texts: Vec<String> = (0..n)
        .map(|i| format!("the movie was {}", if i % 2 == 0 { "good" } else { "bad" }))
        .collect();
    for (name, codec) in [
        ("zstd", Compression::ZSTD(Default::default())),
        ("snappy", Compression::SNAPPY),
        ("gzip", Compression::GZIP(Default::default())),
        ("lz4", Compression::LZ4_RAW),
        ("brotli", Compression::BROTLI(Default::default())),
        ("none", Compression::UNCOMPRESSED),
    ] {
        let file = s.root.join(format!("{name}.parquet"));
        common::write_parquet_with(
            &file,
            &[
                Col::Text("text", texts.clone()),
                Col::Int("label", (0..n as i64).map(|i| i % 2).collect()),
            ],
            None,
            codec,
        );
        let out = s.root.join(format!("run-{name}"));
        ok(&common::clsnorm(&finetune(&s, &file, &out, &[])));
        assert!(out.join("summary.json").is_file(), "{name}");
    }
}

/// pandas and polars write a missing float label as NaN: it is a missing label (refused, or
/// skipped with `--skip-bad-rows`), never a class named "NaN".
#[test]
fn a_nan_label_is_a_missing_label() {
    let s = setup();
    let n = 16;
    let file = s.root.join("nan.parquet");
    common::write_parquet_with(
        &file,
        &[
            Col::Text(
                "text",
                (0..n)
                    .map(|i| format!("the movie was {}", if i % 2 == 0 { "good" } else { "bad" }))
                    .collect(),
            ),
            Col::Float(
                "label",
                (0..n)
                    .map(|i| if i == 5 { f32::NAN } else { (i % 2) as f32 })
                    .collect(),
            ),
        ],
        None,
        Compression::SNAPPY,
    );
    let out = s.root.join("run");
    let o = common::clsnorm(&finetune(&s, &file, &out, &[]));
    fails(&o, "no label in column");
    fails(&o, p(&file));
    ok(&common::clsnorm(&finetune(
        &s,
        &file,
        &out,
        &["--skip-bad-rows"],
    )));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let labels = config.to_string();
    assert!(!labels.to_ascii_lowercase().contains("\"nan\""), "{labels}");
}
