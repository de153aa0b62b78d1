//! Parquet data (issue 35): the Hub's GLUE layout (`nyu-mll/glue`: `rte/train-*.parquet`,
//! integer labels named in the files' metadata) gives the same examples, label ids and training
//! as the classic TSV files; custom `.parquet` files take the same column options as CSV.
mod common;

use std::path::{Path, PathBuf};

use clsnorm::data::task::locate_glue;
use clsnorm::data::{glue_task, read_dataset, read_split, Label, ReadOptions};
use common::{clsnorm, fails, ok, p, write_parquet, Col};

const STRICT: ReadOptions = ReadOptions {
    skip_bad_rows: false,
    require_label: true,
};

/// How the Hub lays out a task of shared/data/glue: its folder, text columns, and the Hub's
/// class names by id with the classic file's name of each (independent of clsnorm's table).
struct Hub {
    task: &'static str,
    dir: &'static str,
    text: &'static str,
    pair: Option<&'static str>,
    classes: &'static [(&'static str, &'static str)],
}

const HUB: &[Hub] = &[
    Hub {
        task: "CoLA",
        dir: "cola",
        text: "sentence",
        pair: None,
        classes: &[("unacceptable", "0"), ("acceptable", "1")],
    },
    Hub {
        task: "SST-2",
        dir: "sst2",
        text: "sentence",
        pair: None,
        classes: &[("negative", "0"), ("positive", "1")],
    },
    Hub {
        task: "MRPC",
        dir: "mrpc",
        text: "sentence1",
        pair: Some("sentence2"),
        classes: &[("not_equivalent", "0"), ("equivalent", "1")],
    },
    Hub {
        task: "STS-B",
        dir: "stsb",
        text: "sentence1",
        pair: Some("sentence2"),
        classes: &[],
    },
    Hub {
        task: "RTE",
        dir: "rte",
        text: "sentence1",
        pair: Some("sentence2"),
        classes: &[
            ("entailment", "entailment"),
            ("not_entailment", "not_entailment"),
        ],
    },
];

fn shared_glue() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue")
}

/// Writes the Hub's parquet version of a TSV split (and a test split of `-1` labels).
fn hub_split(h: &Hub, tsv: &Path, out: &Path) {
    let spec = glue_task(h.task).unwrap();
    let ds = read_dataset(tsv, &spec, STRICT).unwrap();
    let n = ds.examples.len();
    let mut cols = vec![Col::Text(
        h.text,
        ds.examples.iter().map(|e| e.text.clone()).collect(),
    )];
    if let Some(pair) = h.pair {
        cols.push(Col::Text(
            pair,
            ds.examples
                .iter()
                .map(|e| e.text_pair.clone().unwrap())
                .collect(),
        ));
    }
    let classes = match &spec.labels {
        clsnorm::data::LabelSpace::Classes(c) => c.clone(),
        clsnorm::data::LabelSpace::Regression => Vec::new(),
    };
    if h.classes.is_empty() {
        let scores = ds
            .examples
            .iter()
            .map(|e| match e.label {
                Some(Label::Score(s)) => s,
                _ => panic!("not a score"),
            })
            .collect();
        cols.push(Col::Float("label", scores));
    } else {
        let ids = ds
            .examples
            .iter()
            .map(|e| match e.label {
                Some(Label::Class(i)) => h
                    .classes
                    .iter()
                    .position(|(_, tsv)| *tsv == classes[i])
                    .unwrap() as i64,
                _ => panic!("not a class"),
            })
            .collect();
        cols.push(Col::Int("label", ids));
    }
    cols.push(Col::Int("idx", (0..n as i64).collect()));
    let names: Vec<&str> = h.classes.iter().map(|(hub, _)| *hub).collect();
    write_parquet(out, &cols, (!names.is_empty()).then_some(names.as_slice()));
}

/// shared/data/glue's tasks in the Hub's layout under `root`.
fn hub_glue(root: &Path) -> PathBuf {
    let out = root.join("nyu-mll-glue");
    for h in HUB {
        let dir = shared_glue().join(h.task);
        hub_split(
            h,
            &dir.join("train.tsv"),
            &out.join(h.dir).join("train-00000-of-00001.parquet"),
        );
        hub_split(
            h,
            &dir.join("dev.tsv"),
            &out.join(h.dir).join("validation-00000-of-00001.parquet"),
        );
    }
    out
}

#[test]
fn the_hubs_glue_gives_the_examples_and_label_ids_of_the_tsv_files() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub_glue(tmp.path());
    for h in HUB {
        let spec = glue_task(h.task).unwrap();
        let (classic, cdir) = locate_glue(&spec, &shared_glue()).unwrap();
        let (parquet, pdir) = locate_glue(&spec, &hub).unwrap();
        assert_eq!(parquet.format, clsnorm::data::Format::Parquet, "{}", h.task);
        assert_eq!(
            parquet.labels, classic.labels,
            "{}: one head for both",
            h.task
        );
        let (ct, cdev) = classic.paths(Some(&cdir));
        let (pt, pdev) = parquet.paths(Some(&pdir));
        for (c, p) in std::iter::once((ct, pt)).chain(
            cdev.into_iter()
                .map(|d| d.1)
                .zip(pdev.into_iter().map(|d| d.1)),
        ) {
            let a = read_split(&c, &classic, STRICT).unwrap();
            let b = read_split(&p, &parquet, STRICT).unwrap();
            assert_eq!(a.examples.len(), b.examples.len(), "{p:?}");
            for (x, y) in a.examples.iter().zip(&b.examples) {
                assert_eq!(
                    (&x.text, &x.text_pair, &x.label),
                    (&y.text, &y.text_pair, &y.label),
                    "{p:?}"
                );
            }
        }
    }
}

#[test]
fn parquet_and_tsv_glue_train_byte_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&model, 3);
    }
    // RTE's first rows, in both layouts.
    let classic = tmp.path().join("classic");
    let rte = shared_glue().join("RTE");
    for (split, rows) in [("train", 41), ("dev", 17)] {
        let text = std::fs::read_to_string(rte.join(format!("{split}.tsv"))).unwrap();
        let head: Vec<&str> = text.lines().take(rows).collect();
        common::write_file(
            &classic,
            &format!("RTE/{split}.tsv"),
            (head.join("\n") + "\n").as_bytes(),
        );
    }
    let hub = tmp.path().join("hub");
    let h = &HUB[4];
    hub_split(
        h,
        &classic.join("RTE/train.tsv"),
        &hub.join("rte/train-00000-of-00001.parquet"),
    );
    hub_split(
        h,
        &classic.join("RTE/dev.tsv"),
        &hub.join("rte/validation-00000-of-00001.parquet"),
    );
    let run = |data: &Path, out: &Path| {
        ok(&clsnorm(&[
            "finetune",
            "--model",
            p(&model),
            "--task",
            "rte",
            "--data-dir",
            p(data),
            "--output",
            p(out),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--max-len",
            "24",
            "--threads",
            "1",
            "--quiet",
        ]))
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(&classic, &a);
    run(&hub, &b);
    let metrics = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                serde_json::json!([v["epoch"], v["train_loss"], v["dev"]])
            })
            .collect()
    };
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(
        std::fs::read(a.join("last/model.safetensors")).unwrap(),
        std::fs::read(b.join("last/model.safetensors")).unwrap()
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["task"]["format"], "parquet");
    // Evaluating the parquet-trained checkpoint finds either layout.
    for data in [&hub, &classic] {
        let o = clsnorm(&[
            "evaluate",
            "--checkpoint",
            p(&b.join("best")),
            "--data-dir",
            p(data),
        ]);
        assert!(ok(&o).contains("accuracy"));
    }
}

#[test]
fn labels_are_mapped_by_name_and_unlabelled_rows_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // MNLI: the Hub's ids are entailment, neutral, contradiction; the classic classes sorted.
    let dir = tmp.path().join("glue/mnli");
    let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cols = |labels: Vec<i64>| {
        vec![
            Col::Text("premise", texts(&["a", "b", "c"])),
            Col::Text("hypothesis", texts(&["x", "y", "z"])),
            Col::Int("label", labels),
            Col::Int("idx", vec![0, 1, 2]),
        ]
    };
    let names = ["entailment", "neutral", "contradiction"];
    write_parquet(
        &dir.join("train-00000-of-00001.parquet"),
        &cols(vec![0, 1, 2]),
        Some(&names),
    );
    for split in ["validation_matched", "validation_mismatched"] {
        write_parquet(
            &dir.join(format!("{split}-00000-of-00001.parquet")),
            &cols(vec![2, 2, 0]),
            Some(&names),
        );
    }
    let spec = glue_task("mnli").unwrap();
    let (parquet, pdir) = locate_glue(&spec, &tmp.path().join("glue")).unwrap();
    let (train, dev) = parquet.paths(Some(&pdir));
    assert_eq!(dev.len(), 2);
    let ds = read_split(&train, &parquet, STRICT).unwrap();
    // Classic order: contradiction 0, entailment 1, neutral 2.
    let ids: Vec<Option<Label>> = ds.examples.iter().map(|e| e.label).collect();
    assert_eq!(
        ids,
        vec![
            Some(Label::Class(1)),
            Some(Label::Class(2)),
            Some(Label::Class(0))
        ]
    );
    // A test split's -1 labels are never trained on.
    let test = dir.join("test-00000-of-00001.parquet");
    write_parquet(&test, &cols(vec![-1, -1, -1]), Some(&names));
    let e = read_dataset(&test, &parquet, STRICT)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test-00000-of-00001.parquet:1: label -1: an unlabelled row"),
        "{e}"
    );
    // An id outside the names, and two files for one split.
    write_parquet(&test, &cols(vec![0, 7, 1]), Some(&names));
    let e = read_dataset(&test, &parquet, STRICT)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2: label id 7 is not one of the 3 classes"),
        "{e}"
    );
    std::fs::copy(
        dir.join("train-00000-of-00001.parquet"),
        dir.join("train-00001-of-00002.parquet"),
    )
    .unwrap();
    let e = locate_glue(&spec, &tmp.path().join("glue")).unwrap_err();
    assert!(e.contains("the train split is in 2 parquet files"), "{e}");
}

#[test]
fn custom_parquet_files_take_the_column_options() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&model, 3);
    }
    let n = 24;
    let file = tmp.path().join("reviews.parquet");
    write_parquet(
        &file,
        &[
            Col::Text(
                "review",
                (0..n)
                    .map(|i| format!("the movie was {}", if i % 2 == 0 { "good" } else { "bad" }))
                    .collect(),
            ),
            Col::Text(
                "stars",
                (0..n)
                    .map(|i| {
                        if i % 2 == 0 {
                            "pos".into()
                        } else {
                            "neg".into()
                        }
                    })
                    .collect(),
            ),
        ],
        None,
    );
    let out = tmp.path().join("run");
    let o = clsnorm(&[
        "finetune",
        "--model",
        p(&model),
        "--train-file",
        p(&file),
        "--dev-file",
        p(&file),
        "--text-col",
        "review",
        "--label-col",
        "stars",
        "--output",
        p(&out),
        "--max-steps",
        "2",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]);
    ok(&o);
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        config.contains("\"neg\"") && config.contains("\"pos\""),
        "{config}"
    );
    // A missing column is named; a file that is not parquet is refused as such.
    let o = clsnorm(&[
        "finetune",
        "--model",
        p(&model),
        "--train-file",
        p(&file),
        "--text-col",
        "text",
        "--label-col",
        "stars",
        "--output",
        p(&tmp.path().join("r2")),
        "--quiet",
    ]);
    fails(
        &o,
        "header has no column \"text\" (found: \"review\", \"stars\")",
    );
    let fake = common::write_file(tmp.path(), "fake.parquet", b"text,label\na,1\n");
    let o = clsnorm(&[
        "finetune",
        "--model",
        p(&model),
        "--train-file",
        p(&fake),
        "--output",
        p(&tmp.path().join("r3")),
        "--quiet",
    ]);
    fails(&o, "fake.parquet: not a parquet file that clsnorm can read");
}

#[test]
fn glue_is_read_from_the_hugging_face_cache_without_a_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&model, 3);
    }
    let cache = tmp.path().join("hub");
    let snap = cache.join("datasets--nyu-mll--glue/snapshots/0123abcd");
    let h = &HUB[4];
    let rte = shared_glue().join("RTE");
    hub_split(
        h,
        &rte.join("dev.tsv"),
        &snap.join("rte/train-00000-of-00001.parquet"),
    );
    hub_split(
        h,
        &rte.join("dev.tsv"),
        &snap.join("rte/validation-00000-of-00001.parquet"),
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(args)
            .env_remove("GLUE_DIR")
            .env("HF_HUB_CACHE", &cache)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = tmp.path().join("run");
    ok(&run(&[
        "finetune",
        "--model",
        p(&model),
        "--task",
        "rte",
        "--output",
        p(&out),
        "--max-steps",
        "2",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]));
    let o = run(&["evaluate", "--checkpoint", p(&out.join("best"))]);
    assert!(
        ok(&o).contains("\"examples\": 277"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Offline and not cached: a message saying where the data can come from (tests/hub.rs
    // downloads it from a Hub stand-in).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args([
            "finetune",
            "--model",
            p(&model),
            "--task",
            "rte",
            "--output",
            p(&tmp.path().join("r2")),
        ])
        .env_remove("GLUE_DIR")
        .env("HF_HUB_CACHE", tmp.path().join("empty"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    fails(
        &o,
        "HF_HUB_OFFLINE is set: fetch it where the Hub is reachable",
    );
    fails(&o, "--data-dir DIR holding RTE/train.tsv");
}
