//! `predict` and `embed --input` on inputs of any size (issue 44): the file is read, computed
//! and written a window at a time, so the outputs and their line numbers do not depend on the
//! window, memory does not grow with the input, and a run that stops at line N has written
//! every complete window before it.
mod common;

use std::path::{Path, PathBuf};

struct Trained {
    _setup: common::Setup,
    root: PathBuf,
    best: PathBuf,
}

/// A tiny model fine-tuned on the toy SST-2 for one epoch.
fn trained() -> Trained {
    let s = common::setup();
    let run = s.root.join("run");
    common::ok(&common::clsnorm(&[
        "finetune",
        "--model",
        common::p(&s.model),
        "--task",
        "sst2",
        "--data-dir",
        common::p(&s.data),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--quiet",
        "--output",
        common::p(&run),
    ]));
    Trained {
        best: run.join("best"),
        root: s.root.clone(),
        _setup: s,
    }
}

fn sentence(i: usize) -> String {
    let w = [
        "the", "cat", "sat", "on", "a", "good", "bad", "movie", "mat", "dog",
    ];
    (0..1 + i % 7)
        .map(|k| w[(i * 3 + k * 7) % w.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` JSON lines of sentences; line `bad` (1-based) has no text.
fn jsonl(root: &Path, name: &str, n: usize, bad: Option<usize>) -> PathBuf {
    let mut s = String::with_capacity(n * 40);
    for i in 1..=n {
        if Some(i) == bad {
            s.push_str("{\"other\": 1}\n");
        } else {
            s.push_str(&format!("{{\"sentence\": \"{}\"}}\n", sentence(i)));
        }
    }
    common::write_file(root, name, s.as_bytes())
}

fn predict(best: &Path, input: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "predict",
        "--checkpoint",
        common::p(best),
        "--input",
        common::p(input),
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    common::clsnorm(&args)
}

/// The same lines and labels, probabilities to float rounding (batches of other shapes sum
/// in another order: a few units in the last place of f32).
fn same_predictions(a: &str, b: &str) {
    assert_eq!(a.lines().count(), b.lines().count());
    for (x, y) in a.lines().zip(b.lines()) {
        let (x, y): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(x).unwrap(),
            serde_json::from_str(y).unwrap(),
        );
        assert_eq!((&x["line"], &x["label"]), (&y["line"], &y["label"]));
        for (k, v) in x["probabilities"].as_object().unwrap() {
            let w = y["probabilities"][k].as_f64().unwrap();
            assert!((v.as_f64().unwrap() - w).abs() < 1e-6, "{x} vs {y}");
        }
    }
}

#[test]
fn windows_change_neither_predictions_nor_line_numbers() {
    let t = trained();
    let input = jsonl(&t.root, "in.jsonl", 100, None);
    let whole = common::ok(&predict(&t.best, &input, &[]));
    let windowed = common::ok(&predict(&t.best, &input, &["--window", "7"]));
    same_predictions(&whole, &windowed);
    let lines: Vec<u64> = whole
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, (1..=100).collect::<Vec<u64>>());
    // A TSV with a header: its data lines are lines 2..=101 whatever the window.
    let mut tsv = String::from("sentence\n");
    for i in 1..=100 {
        tsv.push_str(&format!("{}\n", sentence(i)));
    }
    let tsv = common::write_file(&t.root, "in.tsv", tsv.as_bytes());
    let a = common::ok(&predict(&t.best, &tsv, &["--window", "9"]));
    let b = common::ok(&predict(&t.best, &tsv, &[]));
    same_predictions(&a, &b);
    assert!(a.lines().next().unwrap().contains("\"line\":2"), "{a}");
    assert!(a.lines().last().unwrap().contains("\"line\":101"), "{a}");
}

#[test]
fn a_run_stopped_at_a_line_has_written_every_window_before_it() {
    let t = trained();
    let input = jsonl(&t.root, "bad.jsonl", 1000, Some(500));
    let out = t.root.join("preds.jsonl");
    let o = predict(
        &t.best,
        &input,
        &["--window", "10", "--output", common::p(&out)],
    );
    common::fails(&o, "bad.jsonl:500");
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 490, "windows 1-49, complete");
    for l in written.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    assert!(written.ends_with('\n'));
    // Skipping the bad row: every other line, numbered as in the file.
    let o = predict(
        &t.best,
        &input,
        &[
            "--window",
            "10",
            "--skip-bad-rows",
            "--output",
            common::p(&out),
            "--overwrite",
        ],
    );
    common::ok(&o);
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 999);
    assert!(!written.contains("\"line\":500,"));
    assert!(written.contains("\"line\":501,"));
}

/// Peak resident memory of `predict -v` on `input`, MiB, from its log.
fn peak_mib(best: &Path, input: &Path) -> f64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args([
            "-v",
            "predict",
            "--checkpoint",
            common::p(best),
            "--input",
            common::p(input),
            "--threads",
            "1",
            "--window",
            "2048",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    log.split("peak_resident_mib=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {log}"))
}

/// clsnorm's caching CPU allocator keeps large tensors out of glibc's heap, whose freed blocks
/// stay resident: without it, the peak grew 1.3x from 10^4 to 10^5 lines of MiniLM.
#[test]
fn memory_does_not_grow_with_the_input() {
    let t = trained();
    let small = jsonl(&t.root, "small.jsonl", 10_000, None);
    let large = jsonl(&t.root, "large.jsonl", 100_000, None);
    let (a, b) = (peak_mib(&t.best, &small), peak_mib(&t.best, &large));
    eprintln!("peak: 10^4 lines {a} MiB, 10^5 lines {b} MiB");
    assert!(b <= 1.2 * a, "10x the lines took {b} MiB against {a}");
}

fn embed(model: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["embed", "--model", common::p(model), "--threads", "1"];
    args.extend_from_slice(extra);
    common::clsnorm(&args)
}

/// The rows of a `.npy` float32 matrix as `embed` writes it, checked against the format.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "the data is aligned");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{header}");
    (shape, data)
}

/// One text's vector as `embed TEXT` gives it.
fn single(model: &Path, text: &str, key: &str) -> Vec<f32> {
    let out = common::ok(&embed(model, &[text]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[key]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Batched with padding vs alone: equal to float rounding (the padded keys are masked, and
/// sums run over other shapes: a few units in the last place of values of order 1).
fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
}

#[test]
fn a_file_is_embedded_row_by_row_as_single_texts_are() {
    let s = common::setup();
    let input = jsonl(&s.root, "in.jsonl", 40, None);
    let npy = s.root.join("v.npy");
    common::ok(&embed(
        &s.model,
        &[
            "--input",
            common::p(&input),
            "--text-col",
            "sentence",
            "--output",
            common::p(&npy),
            "--window",
            "7",
        ],
    ));
    let (shape, data) = read_npy(&npy);
    let hidden = shape[1];
    assert_eq!(shape[0], 40);
    let lines = common::ok(&embed(
        &s.model,
        &[
            "--input",
            common::p(&input),
            "--text-col",
            "sentence",
            "--cls-source",
            "hidden",
        ],
    ));
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    for i in [1usize, 2, 7, 8, 40] {
        let row = &data[(i - 1) * hidden..i * hidden];
        close(row, &single(&s.model, &sentence(i), "pooler_output"));
        assert_eq!(lines[i - 1]["line"], i);
        let cls: Vec<f32> = lines[i - 1]["cls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        close(&cls, &single(&s.model, &sentence(i), "cls"));
    }
}

#[test]
fn an_embedding_stopped_at_a_line_leaves_a_matrix_of_the_windows_before_it() {
    let s = common::setup();
    let input = jsonl(&s.root, "bad.jsonl", 100, Some(35));
    let npy = s.root.join("v.npy");
    let args = [
        "--input",
        common::p(&input),
        "--text-col",
        "sentence",
        "--output",
        common::p(&npy),
        "--window",
        "10",
    ];
    common::fails(&embed(&s.model, &args), "bad.jsonl:35");
    let (shape, _) = read_npy(&npy);
    assert_eq!(shape[0], 30, "windows 1-3, whole");
    // The file is the user's now: replaced only when asked.
    common::fails(&embed(&s.model, &args), "--overwrite");
    let mut skip = args.to_vec();
    skip.extend(["--overwrite", "--skip-bad-rows"]);
    common::ok(&embed(&s.model, &skip));
    assert_eq!(read_npy(&npy).0[0], 99);
    // Nothing to embed from a column the file lacks, named with the file and line.
    common::fails(
        &embed(
            &s.model,
            &["--input", common::p(&input), "--text-col", "body"],
        ),
        "bad.jsonl:1",
    );
    // A text and a file at once, or a file's options without one.
    common::fails(
        &embed(&s.model, &["a text", "--input", common::p(&input)]),
        "cannot be used with",
    );
    common::fails(&embed(&s.model, &["a text", "--window", "0"]), "--window");
}

/// A run that fails before its first row leaves no file it created (neither an empty JSON
/// lines file nor a 0-row matrix); a file that was there before stays.
#[test]
fn a_run_that_writes_no_row_leaves_no_file_behind() {
    let t = trained();
    let input = jsonl(&t.root, "bad-early.jsonl", 30, Some(3));
    let preds = t.root.join("early.jsonl");
    let o = predict(&t.best, &input, &["--output", common::p(&preds)]);
    common::fails(&o, "bad-early.jsonl:3");
    assert!(!preds.exists(), "predict left {}", preds.display());
    for name in ["early.npy", "early-lines.jsonl"] {
        let out = t.root.join(name);
        let args = [
            "--input",
            common::p(&input),
            "--text-col",
            "sentence",
            "--output",
            common::p(&out),
        ];
        common::fails(&embed(&t._setup.model, &args), "bad-early.jsonl:3");
        assert!(!out.exists(), "embed left {}", out.display());
        // An empty file of the user's may be written into, and is kept when nothing is.
        std::fs::write(&out, "").unwrap();
        common::fails(&embed(&t._setup.model, &args), "bad-early.jsonl:3");
        assert!(out.exists(), "embed removed the user's {}", out.display());
    }
    // The window that fails is the first, but rows before it in an earlier window stay.
    let o = predict(
        &t.best,
        &input,
        &["--window", "2", "--output", common::p(&preds)],
    );
    common::fails(&o, "bad-early.jsonl:3");
    assert_eq!(std::fs::read_to_string(&preds).unwrap().lines().count(), 2);
}

#[test]
fn the_caching_allocator_changes_no_output() {
    let t = trained();
    let input = jsonl(&t.root, "in.jsonl", 300, None);
    let cached = common::ok(&predict(&t.best, &input, &["--window", "64"]));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .env("CLSNORM_CPU_ALLOCATOR", "system")
        .args([
            "predict",
            "--checkpoint",
            common::p(&t.best),
            "--input",
            common::p(&input),
        ])
        .args(["--threads", "1", "--window", "64"])
        .output()
        .unwrap();
    assert_eq!(common::ok(&out), cached, "byte for byte");
}
