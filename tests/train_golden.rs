//! Training proven equal to PyTorch + transformers: `clsnorm finetune` on a small random BERT
//! and 16 padded, partly truncated sentence pairs, dropout off, 4 AdamW updates with warmup and
//! decay, must give PyTorch's loss at every update and PyTorch's parameters after the last, for
//! both classifier initialisations. The golden values come from `bench/golden/train_golden.py`
//! (committed in `tests/fixtures/train-golden`); this test needs no Python. The same runs with
//! the schedule, the optimizer, the gradient or the weight decay perturbed must fail the
//! comparison, so the tolerances are shown to be tight enough to catch such errors.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{clsnorm, ok, p};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train-golden")
}

/// Largest loss difference, largest parameter difference (relative to 1e-2 + |golden|, over all
/// parameters but the attention key biases, whose true gradient is zero: both sides move them
/// by rounding noise only), and that parameter's name.
struct Diff {
    loss: f64,
    param: f64,
    worst: String,
}

fn run(scenario: &str, extra: &[&str]) -> Diff {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("golden.json")).unwrap())
            .unwrap();
    let sc = &golden["scenarios"][scenario];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = fixture().join("data/train.tsv");
    let model = fixture().join("model");
    let (lr, wd, warmup) = (
        sc["lr"].to_string(),
        sc["weight_decay"].to_string(),
        sc["warmup_steps"].to_string(),
    );
    let mut args: Vec<&str> = vec![
        "finetune",
        "--model",
        p(&model),
        "--train-file",
        p(&data),
        "--dev-file",
        p(&data),
        "--text-col",
        "a",
        "--text-pair-col",
        "b",
        "--label-col",
        "label",
        "--max-len",
        "24",
        "--batch-size",
        "16",
        "--epochs",
        "4",
        "--dropout",
        "0",
        "--seed",
        "7",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--output",
        p(&out),
        "--classifier-init",
        sc["classifier_init"].as_str().unwrap(),
        "--lr",
        &lr,
        "--weight-decay",
        &wd,
        "--warmup-steps",
        &warmup,
    ];
    // A later flag of the same name wins: extra arguments perturb the run.
    let mut extra = extra.to_vec();
    for pair in extra.chunks(2) {
        if let Some(i) = args.iter().position(|a| *a == pair[0]) {
            args.drain(i..i + 2);
        }
    }
    args.append(&mut extra);
    ok(&clsnorm(&args));

    let losses: Vec<f64> = std::fs::read_to_string(out.join("train_loss.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let want: Vec<f64> = sc["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), want.len(), "one loss record per update");
    let loss = losses
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);

    let read = |path: &Path| -> BTreeMap<String, tch::Tensor> {
        clsnorm::encoder::weights::read_safetensors(path)
            .unwrap()
            .into_iter()
            .collect()
    };
    let mut ours = read(&out.join("last/model.safetensors"));
    ours.extend(read(&out.join("last/head.safetensors")));
    let theirs = read(&fixture().join(format!("{scenario}.safetensors")));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same parameters"
    );
    let (mut param, mut worst) = (0.0, String::new());
    for (name, b) in &theirs {
        if name.ends_with("attention.self.key.bias") {
            continue;
        }
        let a = &ours[name];
        let d = (a - b).abs() / (b.abs() + 1e-2);
        let d = d.max().double_value(&[]);
        if d > param {
            (param, worst) = (d, name.clone());
        }
    }
    Diff { loss, param, worst }
}

/// Losses agree to float rounding; parameters after 4 updates to 2e-5 of their size.
const LOSS_TOL: f64 = 1e-6;
const PARAM_TOL: f64 = 2e-5;

#[test]
fn training_equals_pytorch_for_both_classifier_inits() {
    for scenario in ["hf", "torch"] {
        let d = run(scenario, &[]);
        eprintln!(
            "{scenario}: loss diff {:.2e}, parameter diff {:.2e} ({})",
            d.loss, d.param, d.worst
        );
        assert!(d.loss <= LOSS_TOL, "{scenario}: loss differs by {}", d.loss);
        assert!(
            d.param <= PARAM_TOL,
            "{scenario}: {} differs by {} (relative)",
            d.worst,
            d.param
        );
    }
}

/// `--layer-decay 0.7`: PyTorch with one parameter group per depth (embeddings 0, layer `i`
/// at `i + 1`, pooler and head at `L + 1`), each at `lr * 0.7^(L + 1 - depth)`, one schedule.
#[test]
fn layer_decay_equals_pytorch_param_groups() {
    let d = run("layer_decay", &["--layer-decay", "0.7"]);
    eprintln!(
        "layer_decay: loss diff {:.2e}, parameter diff {:.2e} ({})",
        d.loss, d.param, d.worst
    );
    assert!(d.loss <= LOSS_TOL, "loss differs by {}", d.loss);
    assert!(d.param <= PARAM_TOL, "{} differs by {}", d.worst, d.param);
    // Without the decay the same run is another one.
    let d = run("layer_decay", &[]);
    assert!(
        d.param > 10.0 * PARAM_TOL,
        "no decay not caught: {}",
        d.param
    );
}

/// `--grad-accum 2` with batches of 8 is PyTorch's one batch of 16 (the `hf` scenario):
/// the micro-batches' losses weighted by their share of the update, gradients added.
#[test]
fn gradient_accumulation_equals_the_large_batch() {
    let d = run("hf", &["--batch-size", "8", "--grad-accum", "2"]);
    eprintln!(
        "accumulation: loss diff {:.2e}, parameter diff {:.2e} ({})",
        d.loss, d.param, d.worst
    );
    assert!(d.loss <= LOSS_TOL, "loss differs by {}", d.loss);
    assert!(d.param <= PARAM_TOL, "{} differs by {}", d.worst, d.param);
    // Ragged groups (5 + 5 + 5 + 1 examples in one update) weigh each example alike too.
    let d = run("hf", &["--batch-size", "5", "--grad-accum", "4"]);
    assert!(
        d.loss <= LOSS_TOL && d.param <= PARAM_TOL,
        "ragged: {} {}",
        d.loss,
        d.param
    );
    // Batches of 8 without accumulation are twice the updates: caught.
    let d = run("hf", &["--batch-size", "8"]);
    assert!(
        d.param > 10.0 * PARAM_TOL,
        "eight updates of 8 pass as four of 16: {}",
        d.param
    );
}

#[test]
fn a_perturbed_schedule_optimizer_or_gradient_is_caught() {
    for (what, extra) in [
        (
            "schedule: one more warmup update",
            &["--warmup-steps", "2"][..],
        ),
        ("optimizer: beta2 0.99", &["--adam-beta2", "0.99"]),
        ("optimizer: eps 1e-8", &["--adam-eps", "1e-8"]),
        ("weight decay 0.5", &["--weight-decay", "0.5"]),
        ("gradient: clipped to 1e-4", &["--max-grad-norm", "1e-4"]),
        (
            "gradient: the raw [CLS] instead of the pooler",
            &["--cls-source", "hidden"],
        ),
    ] {
        let d = run("hf", extra);
        eprintln!(
            "{what}: loss diff {:.2e}, parameter diff {:.2e}",
            d.loss, d.param
        );
        assert!(
            d.param > 10.0 * PARAM_TOL,
            "{what}: not caught (parameter diff {})",
            d.param
        );
    }
}
