//! TensorBoard curves (issue 44): every run writes `RUN/tensorboard/events.out.tfevents.*`.
//! clsnorm's reader must find in a committed event file exactly what TensorBoard's own reader
//! found (`bench/tensorboard_check.py`), and in a fresh run's file exactly the run's records:
//! the loss and learning rate of each `train_loss.jsonl` line, the gradient norms of each
//! `grads.jsonl` line, the dev metrics and [CLS] geometry of each `metrics.jsonl` line.
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use clsnorm::rundir::tensorboard::{read_events, What};

/// Every scalar of the event files in `dir`, by tag: (step, value).
fn scalars(dir: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            continue;
        }
        let events = read_events(&std::fs::read(&path).unwrap()).unwrap();
        assert!(
            matches!(&events[0].what, Some(What::FileVersion(v)) if v == "brain.Event:2"),
            "{path:?}"
        );
        for ev in events {
            if let Some(What::Summary(s)) = ev.what {
                for v in s.value {
                    out.entry(v.tag)
                        .or_default()
                        .push((ev.step, v.simple_value.unwrap()));
                }
            }
        }
    }
    out
}

#[test]
fn clsnorms_reader_finds_what_tensorboards_reader_found() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorboard");
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("read_by_tensorboard.json")).unwrap())
            .unwrap();
    let ours = scalars(&dir);
    let theirs: BTreeMap<String, Vec<(i64, f32)>> =
        serde_json::from_value(theirs["scalars"].clone()).unwrap();
    assert_eq!(ours, theirs);
    assert!(ours.contains_key("train/loss") && ours.contains_key("dev/dev/accuracy"));
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_runs_curves_are_its_records() {
    let s = common::setup();
    let out = s.root.join("run");
    common::ok(&common::clsnorm(&[
        "finetune",
        "--model",
        common::p(&s.model),
        "--task",
        "sst2",
        "--data-dir",
        common::p(&s.data),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--norm",
        "isobn",
        "--trace-grads",
        "--threads",
        "1",
        "--quiet",
        "--output",
        common::p(&out),
    ]));
    let tb = scalars(&out.join("tensorboard"));
    let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    let loss: Vec<(i64, f32)> = lines(&out.join("train_loss.jsonl"))
        .iter()
        .map(|r| (r["step"].as_i64().unwrap(), f(&r["loss"])))
        .collect();
    assert_eq!(tb["train/loss"], loss);
    assert_eq!(tb["train/lr"].len(), loss.len());
    let grads = lines(&out.join("grads.jsonl"));
    assert_eq!(tb["grad/global"].len(), grads.len());
    for (g, (step, v)) in grads.iter().zip(&tb["grad/cls"]) {
        assert_eq!(
            (g["step"].as_i64().unwrap(), f(&g["cls_grad_norm"])),
            (*step, *v)
        );
    }
    let epochs = lines(&out.join("metrics.jsonl"));
    assert_eq!(tb["dev/dev/accuracy"].len(), epochs.len());
    for (e, (step, v)) in epochs.iter().zip(&tb["dev/dev/accuracy"]) {
        assert_eq!(
            (
                e["global_step"].as_i64().unwrap(),
                f(&e["dev"][0][1]["accuracy"])
            ),
            (*step, *v)
        );
    }
    for (e, (_, v)) in epochs.iter().zip(&tb["cls/raw/pc1_share"]) {
        assert_eq!(f(&e["cls_geometry"]["raw"]["pc1_share"]), *v);
    }
}
