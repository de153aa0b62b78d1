//! Mixed precision (`--precision bf16|fp16`) on the CPU: forward numerics against fp32, a few
//! training updates against fp32, the fp16 loss scaler on a forced overflow, and the CLI.
mod common;

use std::path::Path;

use clsnorm::batch::Batch;
use clsnorm::classifier::{ClsSource, HeadConfig};
use clsnorm::data::{glue_task, read_split};
use clsnorm::encoder::{BertConfig, Encoder};
use clsnorm::precision::{GradScaler, Precision};
use clsnorm::tokenize::TextTokenizer;
use clsnorm::train::{finetune, Finetune, GradRecord, TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

/// A random BERT without dropout (hidden 64, 2 layers), so that runs in different precisions
/// see the same computation.
fn model_dir(dir: &Path) {
    let cfg = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..BertConfig::tiny(common::TINY_VOCAB.len() as i64, 64, 2, 4)
    };
    Encoder::random(&cfg, Device::Cpu, 7).save(dir).unwrap();
    common::write_tiny_vocab(dir);
}

/// Largest difference relative to the largest fp32 magnitude.
fn rel_diff(x: &Tensor, reference: &Tensor) -> f64 {
    common::max_abs_diff(x, reference) / reference.abs().max().double_value(&[])
}

#[test]
fn mixed_precision_forward_is_close_to_fp32_and_returns_fp32() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    model_dir(tmp.path());
    let mut enc = Encoder::load(tmp.path(), Device::Cpu, false).unwrap();
    let tok = TextTokenizer::load(tmp.path(), 32).unwrap();
    let encs: Vec<_> = [
        ("the cat sat on the mat", Some("a dog is good")),
        ("it was not very good", None),
        ("bad movie .", Some("the dog sat")),
    ]
    .iter()
    .map(|(a, b)| tok.encode(a, *b).unwrap())
    .collect();
    let refs: Vec<_> = encs.iter().collect();
    let batch = Batch::collate(&refs, tok.pad_id(), &enc.limits(), Device::Cpu).unwrap();
    assert!(batch.attention_mask.is_some(), "the batch is padded");
    let fp32 = tch::no_grad(|| enc.forward(&batch, false));
    // bf16 keeps 8 mantissa bits, fp16 11: relative errors of ~2^-8 and ~2^-11 per rounding.
    for (p, tol) in [(Precision::Bf16, 3e-2), (Precision::Fp16, 4e-3)] {
        enc.precision = p;
        let out = tch::no_grad(|| enc.forward(&batch, false));
        for (name, x, r) in [
            ("hidden", &out.last_hidden_state, &fp32.last_hidden_state),
            ("cls", &out.cls, &fp32.cls),
            ("pooler", &out.pooler_output, &fp32.pooler_output),
        ] {
            assert_eq!(x.kind(), Kind::Float, "{p} {name}");
            let d = rel_diff(x, r);
            // Not equal: the matmuls really ran in the lower precision.
            assert!(d > 1e-5 && d < tol, "{p} {name}: relative difference {d}");
        }
    }
    enc.precision = Precision::Fp32;
    let again = tch::no_grad(|| enc.forward(&batch, false));
    assert!(
        again.cls.equal(&fp32.cls),
        "fp32 after mixed precision is fp32 again"
    );
}

struct Toy {
    _tmp: tempfile::TempDir,
    model: std::path::PathBuf,
    data: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn toy() -> Toy {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_dir(&model);
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 64, 16, 3);
    Toy {
        root: tmp.path().to_path_buf(),
        model,
        data,
        _tmp: tmp,
    }
}

fn config(precision: Precision) -> TrainConfig {
    TrainConfig {
        lr: 1e-3,
        epochs: 1,
        batch_size: 8,
        eval_batch_size: 16,
        max_len: 16,
        warmup_ratio: 0.25,
        trace_grads: true,
        precision,
        ..TrainConfig::default()
    }
}

fn job<'a>(t: &'a Toy, out: &'a Path, cfg: TrainConfig) -> Finetune<'a> {
    let task = glue_task("sst2").unwrap();
    let (train, dev) = task.paths(Some(&t.data.join("SST-2")));
    Finetune {
        model_dir: &t.model,
        head: HeadConfig {
            labels: task.labels.clone(),
            cls_source: ClsSource::Pooler,
            norm: Default::default(),
            dropout: 0.0,
            bias_init: Default::default(),
            classifier_init: Default::default(),
        },
        train: read_split(&train, &task, common::STRICT).unwrap(),
        dev: dev
            .iter()
            .map(|(n, p)| (n.clone(), read_split(p, &task, common::STRICT).unwrap()))
            .collect(),
        task,
        config: cfg,
        output: out,
        registry: clsnorm::Registry::builtin(),
        resume: false,
        device: Device::Cpu,
        threads: 1,
        allow_pickle: false,
        sources: Default::default(),
        progress: false,
        stop_after: None,
        stop: None,
    }
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("grads.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<GradRecord>(l).unwrap().loss)
        .collect()
}

fn weights(ckpt: &Path) -> Vec<(String, Tensor)> {
    clsnorm::encoder::weights::read_safetensors(&ckpt.join("model.safetensors")).unwrap()
}

#[test]
fn training_in_bf16_and_fp16_follows_fp32() {
    let _g = common::torch_rng_lock();
    let t = toy();
    let run = |p: Precision| {
        let out = t.root.join(p.to_string());
        let s = finetune(job(&t, &out, config(p))).unwrap();
        (out, s)
    };
    let (fp32, _) = run(Precision::Fp32);
    let (l32, w32) = (losses(&fp32), weights(&fp32.join("last")));
    assert_eq!(l32.len(), 8);
    for (p, loss_tol, weight_tol) in [(Precision::Bf16, 2e-2, 5e-2), (Precision::Fp16, 3e-3, 1e-2)]
    {
        let (dir, summary) = run(p);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["train"]["precision"], p.to_string());
        let l = losses(&dir);
        assert_eq!(l.len(), l32.len());
        for (step, (a, b)) in l.iter().zip(&l32).enumerate() {
            assert!(
                (a - b).abs() < loss_tol * b.abs(),
                "{p} update {}: loss {a} vs fp32 {b}",
                step + 1
            );
        }
        // The weights moved as in fp32: the update (not the weight) is compared, relative to
        // fp32's update; checkpoints stay fp32.
        let init = weights(&t.model);
        let w = weights(&dir.join("last"));
        // Adam's update is ~lr * sign(g) where |g| is tiny, so single coordinates may differ
        // by a whole update; the norm over all parameters is what must agree.
        let (mut diff, mut moved) = (0.0f64, 0.0f64);
        for (((name, x), (_, r)), (_, w0)) in w.iter().zip(&w32).zip(&init) {
            assert_eq!(x.kind(), Kind::Float, "{p} {name}");
            diff += (x - r).square().sum(Kind::Double).double_value(&[]);
            moved += (r - w0).square().sum(Kind::Double).double_value(&[]);
        }
        let ratio = (diff / moved).sqrt();
        eprintln!("{p}: |w - w_fp32| / |w_fp32 - w0| = {ratio:.4}");
        assert!(moved > 0.0);
        assert!(
            ratio < weight_tol,
            "{p}: weights differ by {ratio} of fp32's update"
        );
        let scaler_skips = summary.loss_scale_skipped;
        assert_eq!(scaler_skips, (p == Precision::Fp16).then_some(0), "{p}");
    }
}

#[test]
fn an_fp16_overflow_skips_the_update_and_halves_the_loss_scale() {
    let _g = common::torch_rng_lock();
    let t = toy();
    let out = t.root.join("fp16");
    let mut tr = Trainer::start(job(&t, &out, config(Precision::Fp16))).unwrap();
    assert_eq!(tr.state.grad_scaler, Some(GradScaler::default()));
    let batches = tr.begin_epoch();
    // A scale that overflows fp16 in backward (max 65504) whatever the gradients.
    tr.state.grad_scaler = Some(GradScaler {
        scale: 1e30,
        ..GradScaler::default()
    });
    tr.step(&batches[0..1], batches.len()).unwrap();
    let s = tr.state.grad_scaler.unwrap();
    assert_eq!((s.scale, s.skipped, s.growth_tracker), (5e29, 1, 0));
    assert_eq!((tr.state.global_step, tr.state.loss_count), (1, 0));
    tr.save_mid_epoch().unwrap();
    let before = weights(&t.model);
    for ((name, a), (_, b)) in weights(&out.join("last")).iter().zip(&before) {
        assert!(a.equal(b), "{name} changed on a skipped update");
    }
    // A workable scale: the next updates are taken. The schedule did not advance on the
    // skipped one (as Hugging Face's Trainer), so the first taken update has warm-up's lr 0
    // and the second moves the weights.
    tr.state.grad_scaler = Some(GradScaler { scale: 1024.0, ..s });
    tr.step(&batches[1..2], batches.len()).unwrap();
    tr.step(&batches[2..3], batches.len()).unwrap();
    let s = tr.state.grad_scaler.unwrap();
    assert_eq!((s.scale, s.skipped, s.growth_tracker), (1024.0, 1, 2));
    assert_eq!((tr.state.global_step, tr.state.loss_count), (3, 2));
    tr.save_mid_epoch().unwrap();
    let after = weights(&out.join("last"));
    assert!(after
        .iter()
        .zip(&before)
        .any(|((_, a), (_, b))| !a.equal(b)));
    // The scaler is part of the checkpoint.
    let meta = clsnorm::train::checkpoint::read_meta(&out.join("last")).unwrap();
    assert_eq!(meta.state.grad_scaler, Some(s));
}

#[test]
fn the_cli_records_precision_keeps_it_on_resume_and_runs_inference_in_it() {
    // toy() draws the model from libtorch's global generator.
    let guard = common::torch_rng_lock();
    let t = toy();
    drop(guard);
    let out = t.root.join("run");
    let (m, d, o) = (common::p(&t.model), common::p(&t.data), common::p(&out));
    let base = [
        "finetune",
        "--model",
        m,
        "--task",
        "SST-2",
        "--data-dir",
        d,
        "--output",
        o,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--max-len",
        "16",
        "--quiet",
    ];
    common::fails(
        &common::clsnorm(&[&base[..], &["--precision", "fp8"]].concat()),
        "fp8",
    );
    common::ok(&common::clsnorm(
        &[&base[..], &["--precision", "bf16", "--max-steps", "3"]].concat(),
    ));
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains(r#""precision": "bf16""#), "{config}");
    common::fails(
        &common::clsnorm(&["finetune", "--resume", o, "--precision", "fp32"]),
        "--precision",
    );
    let best = out.join("best");
    let eval = |p: &str| -> serde_json::Value {
        let o = common::clsnorm(&[
            "evaluate",
            "--checkpoint",
            common::p(&best),
            "--data-dir",
            d,
            "--device",
            "cpu",
            "--precision",
            p,
        ]);
        serde_json::from_str(&common::ok(&o)).unwrap()
    };
    let (e32, e16) = (eval("fp32"), eval("bf16"));
    assert!(e32.to_string().contains("accuracy") && e16.to_string().contains("accuracy"));
    let embed = common::ok(&common::clsnorm(&[
        "embed",
        "--model",
        m,
        "the cat",
        "--device",
        "cpu",
        "--precision",
        "fp16",
    ]));
    assert!(embed.contains(r#""precision": "fp16""#), "{embed}");
}
