//! Issue 8's bad-input matrix through the binary: every defect in data, model or options ends
//! with a non-zero exit and a message naming the file (and line or field) and what was expected,
//! never a panic, and leaves no run directory behind. CRLF lines are valid and train; a 10 MB
//! line is refused (memory), or skipped with `--skip-bad-rows`.
mod common;

use std::path::{Path, PathBuf};

use common::{clsnorm, fails, ok, p};

const SST_HEADER: &str = "sentence\tlabel\n";

/// A named defect: the train file's bytes (`None`: no file) and what the message must say.
type DataCase = (&'static str, Option<Vec<u8>>, Vec<&'static str>);

/// A GLUE directory whose SST-2 train file is `train` (dev is a valid two-line file).
fn sst_dir(root: &Path, name: &str, train: Option<&[u8]>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("SST-2")).unwrap();
    if let Some(body) = train {
        std::fs::write(dir.join("SST-2/train.tsv"), body).unwrap();
    }
    std::fs::write(
        dir.join("SST-2/dev.tsv"),
        format!("{SST_HEADER}a good movie\t1\na bad movie\t0\n"),
    )
    .unwrap();
    dir
}

fn finetune_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        model,
        "--task",
        "sst2",
        "--data-dir",
        data,
        "--output",
        out,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]
}

#[test]
fn data_defects_name_the_file_line_and_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 3);
    let good = format!("{SST_HEADER}the movie was good\t1\nthe movie was bad\t0\n");
    let with = |row: &[u8]| [good.as_bytes(), row].concat();
    let cases: Vec<DataCase> = vec![
        (
            "missing file",
            None,
            vec!["SST-2/train.tsv", "No such file"],
        ),
        ("empty file", Some(vec![]), vec!["train.tsv", "empty"]),
        (
            "header mismatch",
            Some(b"text\tlabel\na\t1\n".to_vec()),
            vec!["train.tsv:1", "header has no column \"sentence\""],
        ),
        (
            "wrong column count",
            Some(with(b"good\t1\textra\n")),
            vec!["train.tsv:4", "expected 2 tab-separated columns"],
        ),
        (
            "unknown label",
            Some(with(b"good\tpositive\n")),
            vec![
                "train.tsv:4",
                "unknown label \"positive\" (expected one of: \"0\", \"1\")",
            ],
        ),
        (
            "label out of range",
            Some(with(b"good\t2\n")),
            vec![
                "train.tsv:4",
                "unknown label \"2\" (expected one of: \"0\", \"1\")",
            ],
        ),
        (
            "whitespace-only text",
            Some(with(b"  \t1\n")),
            vec!["train.tsv:4", "empty text in column \"sentence\""],
        ),
        (
            "invalid UTF-8",
            Some(with(b"go\xffod\t1\n")),
            vec!["train.tsv:4", "invalid UTF-8"],
        ),
        (
            "BOM in the middle",
            Some(with("go\u{feff}od\t1\n".as_bytes())),
            vec!["train.tsv:4", "byte-order mark"],
        ),
    ];
    for (name, body, wants) in cases {
        let data = sst_dir(tmp.path(), &name.replace(' ', "-"), body.as_deref());
        let out = tmp.path().join("runs").join(name.replace(' ', "-"));
        let o = clsnorm(&finetune_args(p(&model), p(&data), p(&out)));
        for want in wants {
            fails(&o, want);
        }
        assert!(!out.exists(), "{name}: a run directory was left behind");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.matches("os error").count(),
            usize::from(name == "missing file"),
            "{err}"
        );
    }

    // STS-B's regression target must be a number.
    let data = tmp.path().join("stsb");
    std::fs::create_dir_all(data.join("STS-B")).unwrap();
    let header =
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
    let row = |score: &str| format!("0\tg\tf\t2012\t0\tn\tn\tA cat.\tA dog.\t{score}\n");
    std::fs::write(
        data.join("STS-B/train.tsv"),
        format!("{header}{}{}", row("3.5"), row("high")),
    )
    .unwrap();
    std::fs::write(data.join("STS-B/dev.tsv"), format!("{header}{}", row("1"))).unwrap();
    let out = tmp.path().join("runs/stsb");
    let mut args = finetune_args(p(&model), p(&data), p(&out));
    args[4] = "stsb";
    let o = clsnorm(&args);
    fails(&o, "train.tsv:3");
    fails(&o, "regression target \"high\" is not a finite number");
    assert!(!out.exists());
}

#[test]
fn crlf_lines_train_and_a_10_mb_line_is_refused_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 3);
    let huge = "the movie was good ".repeat(10 * 1024 * 1024 / 19 + 1);
    assert!(huge.len() >= 10 * 1024 * 1024);
    let body = format!(
        "sentence\tlabel\r\nthe movie was good\t1\r\nthe movie was bad\t0\r\n{huge}\t1\r\n"
    );
    let data = sst_dir(tmp.path(), "odd", Some(body.as_bytes()));
    let out = tmp.path().join("run");
    // Tokenizing 10 MB would take ~2.3 GB before truncation: a text over 1 MiB is a bad row,
    // and a line over 4 MiB is refused before the file is read into memory, with or without
    // --skip-bad-rows (skipping it would mean reading it).
    for extra in [None, Some("--skip-bad-rows")] {
        let mut args = finetune_args(p(&model), p(&data), p(&out));
        args.extend(extra);
        fails(
            &clsnorm(&args),
            "train.tsv:4: the line is longer than 4 MiB (at most 1 MiB of text per field)",
        );
        assert!(!out.exists());
    }
    // A 2 MiB text on a line under 4 MiB is a bad row that --skip-bad-rows skips.
    let long = "the movie was good ".repeat(2 * 1024 * 1024 / 19 + 1);
    let body = format!(
        "sentence\tlabel\r\nthe movie was good\t1\r\nthe movie was bad\t0\r\n{long}\t1\r\n"
    );
    let data = sst_dir(tmp.path(), "long", Some(body.as_bytes()));
    fails(
        &clsnorm(&finetune_args(p(&model), p(&data), p(&out))),
        "at most 1048576 bytes (1 MiB) per text",
    );
    let mut args = finetune_args(p(&model), p(&data), p(&out));
    args.push("--skip-bad-rows");
    ok(&clsnorm(&args));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train_file"]["rows"], 2, "{}", config["train_file"]);
    // The labels parsed despite the '\r' before each newline (else "unknown label '1\r'").
    assert!(out.join("best/model.safetensors").is_file());
}

/// Rows are bounded in number as well as in size: 20,000,001 one-word rows (80 MB) would take
/// ~6.6 GB in memory; the file is refused from its line count, before a row is parsed.
#[test]
fn a_file_of_more_than_twenty_million_rows_is_refused_before_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 3);
    let mut body = b"sentence\tlabel\n".to_vec();
    body.extend(b"a\t1\n".repeat(clsnorm::data::read::MAX_ROWS));
    let data = sst_dir(tmp.path(), "many", Some(&body));
    let out = tmp.path().join("run");
    fails(
        &clsnorm(&finetune_args(p(&model), p(&data), p(&out))),
        "train.tsv: more than 20000000 lines; clsnorm holds a split in memory",
    );
    assert!(!out.exists());
}

/// A quoted CSV field that is never closed swallows the rest of the file; with the text column
/// last it would still have the header's width and pass as one long row.
#[test]
fn an_unterminated_csv_quote_is_refused_not_read_to_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 3);
    let good = "label,text\n1,the movie was good\n0,\"the movie, was bad\"\n";
    let cases = [
        (
            "open.csv",
            format!("{good}1,\"a fine film\n0,a dull film\n1,a great film\n"),
            Some("open.csv:4: unterminated quote"),
        ),
        (
            "last.csv",
            format!("{good}1,\"a fine film\n"),
            Some("last.csv:4: unterminated quote"),
        ),
        // Closed quotes, doubled quotes and a stray quote inside an unquoted field are fine.
        (
            "fine.csv",
            format!("{good}1,\"a \"\"fine\"\"\nfilm\"\n0,a 12\" vinyl\n"),
            None,
        ),
    ];
    for (name, body, want) in cases {
        let train = common::write_file(tmp.path(), name, body.as_bytes());
        let out = tmp.path().join(format!("run-{name}"));
        let o = clsnorm(&common::finetune_custom(&model, &train, &out));
        match want {
            Some(want) => {
                fails(&o, want);
                assert!(!out.exists(), "{name}");
            }
            None => {
                ok(&o);
            }
        }
    }
}

#[test]
fn model_defects_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 3);
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 8, 4, 1);
    let variant = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&model).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        edit(&dir);
        dir
    };
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "missing config",
            variant("no-config", &|d| {
                std::fs::remove_file(d.join("config.json")).unwrap()
            }),
            vec!["config.json"],
        ),
        (
            "heads do not divide hidden",
            variant("bad-heads", &|d| {
                let c = std::fs::read_to_string(d.join("config.json")).unwrap();
                let c = c.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
                assert!(c.contains("\"num_attention_heads\": 5"));
                std::fs::write(d.join("config.json"), c).unwrap();
            }),
            vec!["config.json", "not divisible"],
        ),
        (
            "truncated safetensors",
            variant("truncated", &|d| {
                let f = d.join("model.safetensors");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            }),
            vec!["model.safetensors", "truncated or corrupted"],
        ),
        (
            "tokenizer larger than the embedding matrix",
            variant("big-vocab", &|d| {
                let mut v = std::fs::read_to_string(d.join("vocab.txt")).unwrap();
                v.push_str("extra1\nextra2\n");
                std::fs::write(d.join("vocab.txt"), v).unwrap();
            }),
            vec![
                "has token ids up to 26 but the model's embedding matrix has 25 rows",
                "embedding matrix has 25 rows",
            ],
        ),
        (
            "pickle without permission",
            variant("pickle", &|d| {
                std::fs::remove_file(d.join("model.safetensors")).unwrap();
                std::fs::write(d.join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
            }),
            vec!["--allow-pickle"],
        ),
    ];
    for (name, dir, wants) in cases {
        let out = tmp.path().join("runs").join(name.replace(' ', "-"));
        let o = clsnorm(&finetune_args(p(&dir), p(&data), p(&out)));
        for want in wants {
            fails(&o, want);
        }
        assert!(!out.exists(), "{name}: a run directory was left behind");
    }
    // --max-len beyond the model's 128 positions.
    let out = tmp.path().join("runs/long");
    let mut args = finetune_args(p(&model), p(&data), p(&out));
    let i = args.iter().position(|a| *a == "--max-len").unwrap();
    args[i + 1] = "512";
    fails(
        &clsnorm(&args),
        "max length 512 exceeds the model's 128 position embeddings",
    );
    assert!(!out.exists());
}

#[test]
fn conflicting_or_out_of_range_options_are_rejected_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 3);
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 8, 4, 1);
    let out = tmp.path().join("run");
    let base = finetune_args(p(&model), p(&data), p(&out));
    let cases: &[(&[&str], &str)] = &[
        (
            &["--eval-batch-size", "0"],
            "--eval-batch-size must be between 1 and 65536",
        ),
        (
            &["--warmup-ratio", "1.5"],
            "--warmup-ratio must be in [0, 1)",
        ),
        (&["--max-steps", "0"], "--max-steps must be between 1 and"),
        (
            &["--weight-decay=-0.1"],
            "--weight-decay must be between 0 and 100",
        ),
        (
            &["--weight-decay", "inf"],
            "--weight-decay must be between 0 and 100",
        ),
        (
            &["--adam-eps", "inf"],
            "--adam-eps must be between 1e-30 and 1",
        ),
        (
            &["--max-grad-norm", "0"],
            "--max-grad-norm must be between 1e-30 and 1e30",
        ),
        (
            &["--max-grad-norm", "inf"],
            "--max-grad-norm must be between 1e-30 and 1e30",
        ),
        (
            &["--eval-batch-size", "99999999"],
            "--eval-batch-size must be between 1 and 65536",
        ),
        (
            &["--max-steps", "18446744073709551615"],
            "--max-steps must be between 1 and",
        ),
        (&["--save-every", "0"], "--save-every must be between 1 and"),
        (&["--dropout", "nan"], "--dropout must be in [0, 1)"),
        (&["--lr", "nan"], "--lr must be between 1e-30 and 1e30"),
        (&["--resume", "somewhere"], "cannot be used with"),
        (
            &["--norm", "zca"],
            "unknown normalizer \"zca\": expected one of none, center",
        ),
    ];
    for (extra, want) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        fails(&clsnorm(&args), want);
        assert!(!out.exists(), "{extra:?}: a run directory was left behind");
    }
}
