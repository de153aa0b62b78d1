//! Unpadded execution (issue 36): a padded batch's real tokens computed alone give what the
//! padded computation gives, to float rounding, dropout included (the same masks), in
//! inference and over whole training runs of every normalizer and both [CLS] sources.
mod common;

use std::path::Path;

use clsnorm::batch::Batch;
use clsnorm::classifier::{ClsSource, HeadConfig};
use clsnorm::data::{glue_task, read_split, ReadOptions};
use clsnorm::encoder::{layers, Encoder, Execution};
use clsnorm::normalize::Normalizers;
use clsnorm::tokenize::{Encoded, TextTokenizer};
use clsnorm::train::{finetune, Finetune, TrainConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn packed_dropout_masks_are_the_padded_masks_rows() {
    let _g = common::torch_rng_lock();
    // Odd widths: value pairs straddle rows, and the last value comes alone.
    for (rows, width) in [(6usize, 4i64), (5, 3), (7, 5), (1, 1)] {
        let real: Vec<bool> = (0..rows).map(|r| r % 3 != 1).collect();
        tch::manual_seed(11);
        let full = layers::dropout(
            &Tensor::ones([rows as i64, width], (Kind::Float, Device::Cpu)),
            0.3,
            true,
        );
        tch::manual_seed(11);
        let packed = layers::keep_mask_rows(&real, width, 0.3, Kind::Float);
        let idx: Vec<i64> = (0..rows as i64).filter(|&r| real[r as usize]).collect();
        let want = full.index_select(0, &Tensor::from_slice(&idx));
        assert!(packed.equal(&want), "{rows}x{width}");
        assert!(full.ne(0.0).any().int64_value(&[]) == 1);
    }
}

fn batch(tok: &TextTokenizer, texts: &[&str]) -> Batch {
    let encs: Vec<Encoded> = texts.iter().map(|t| tok.encode(t, None).unwrap()).collect();
    let refs: Vec<&Encoded> = encs.iter().collect();
    Batch::collate(&refs, tok.pad_id(), &common::LIMITS, Device::Cpu).unwrap()
}

const FAMILIES: [&str; 7] = [
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "distilbert",
    "modernbert",
    "modernbert-mean",
];

/// A small random model of `family` under `root`.
fn family_dir(root: &Path, family: &str) -> std::path::PathBuf {
    match family {
        "bert" => {
            let d = root.join("bert");
            common::tiny_model_dir(&d, 3);
            d
        }
        // Dropout everywhere, mean pooling (the head reads every token), and sequences
        // longer than the local window (4 each side), so that padding positions attend to
        // no key at all.
        "modernbert-mean" => {
            let d = common::family_model_dir(root, "modernbert", "small");
            let path = d.join("config.json");
            let mut c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for key in ["attention_dropout", "embedding_dropout", "mlp_dropout"] {
                c[key] = 0.1.into();
            }
            c["classifier_pooling"] = "mean".into();
            std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
            d
        }
        _ => common::family_model_dir(root, family, "small"),
    }
}

const TEXTS: [&str; 5] = [
    "a",
    "a fine movie , really fine .",
    "not good",
    "it was bad and long and dull",
    "it was bad and long and dull and slow and loud and too long by far",
];

#[test]
fn every_first_token_state_and_hidden_state_equals_the_padded_computation() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let dir = family_dir(tmp.path(), family);
        let mut enc = Encoder::load(&dir, Device::Cpu, false).unwrap();
        assert_eq!(enc.execution(), Execution::Unpadded, "{family}");
        let tok = TextTokenizer::load(&dir, 32).unwrap();
        let b = batch(&tok, &TEXTS);
        assert!(b.attention_mask.is_some());
        assert!(
            b.input_ids.size()[1] > 10,
            "longer than ModernBERT's local window"
        );
        for train in [false, true] {
            let run = |enc: &Encoder, first: bool| {
                tch::manual_seed(5);
                if first {
                    enc.forward_first_token(&b, train)
                } else {
                    enc.forward(&b, train)
                }
            };
            let unpadded = (run(&enc, true), run(&enc, false));
            enc.set_unpadded(false);
            assert_eq!(enc.execution(), Execution::Padded);
            let padded = (run(&enc, true), run(&enc, false));
            enc.set_unpadded(true);
            for (u, p) in [(&unpadded.0, &padded.0), (&unpadded.1, &padded.1)] {
                let scale = p.cls.abs().max().double_value(&[]);
                let d = common::max_abs_diff(&u.cls, &p.cls);
                assert!(
                    d <= 1e-5 * scale && scale > 0.0,
                    "{family} train={train}: {d} (scale {scale})"
                );
                assert!(
                    common::max_abs_diff(&u.pooler_output, &p.pooler_output) <= 1e-5,
                    "{family}"
                );
            }
            // Every real token's state (padding positions hold zeros when unpadded).
            let mask = b
                .attention_mask
                .as_ref()
                .unwrap()
                .to_kind(Kind::Float)
                .unsqueeze(-1);
            let (u, p) = (&unpadded.1.last_hidden_state, &padded.1.last_hidden_state);
            assert!(
                common::max_abs_diff(&(u * &mask), &(p * &mask))
                    <= 1e-5 * p.abs().max().double_value(&[])
            );
        }
    }
}

/// The gradients of one training step (dropout on, the same masks) equal the padded
/// computation's for every parameter of every family. Both paths sum the same products in a
/// different order and blocking, so they differ by float32 rounding: the error of a sum of n
/// terms grows like sqrt(n) u (u = 6e-8) of the sum of magnitudes, and n is at most a few
/// thousand here (tokens x hidden), so 1e-4 of the tensor's largest gradient bounds it on any
/// CPU's kernels with a wide margin while a wrong mask or a lost token moves gradients by O(1)
/// of their scale; the test checks that one token less does move them past the bound.
#[test]
fn the_first_updates_gradients_equal_the_padded_computation() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let dir = family_dir(tmp.path(), family);
        let mut enc = Encoder::load(&dir, Device::Cpu, false).unwrap();
        let tok = TextTokenizer::load(&dir, 32).unwrap();
        let b = batch(&tok, &TEXTS);
        let mask = b
            .attention_mask
            .as_ref()
            .unwrap()
            .to_kind(Kind::Float)
            .unsqueeze(-1);
        let grads = |enc: &Encoder, b: &Batch| {
            let vars = enc.vs.variables();
            for t in vars.values() {
                let mut g = t.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            tch::manual_seed(9);
            let out = enc.forward(b, true);
            let h = out.cls.size()[1];
            // A fixed, non-symmetric function of every output a head may read.
            let w = Tensor::arange(h, (Kind::Float, Device::Cpu)).sin();
            let loss = (&out.cls * &w).sum(Kind::Float)
                + (&out.pooler_output * w.cos()).sum(Kind::Float)
                + (&out.last_hidden_state * &mask * (&w * 2.0).sin()).sum(Kind::Float);
            loss.backward();
            let mut named: Vec<(String, Tensor)> = vars
                .into_iter()
                .filter(|(_, t)| t.grad().defined())
                .map(|(n, t)| (n, t.grad().copy()))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named
        };
        let unpadded = grads(&enc, &b);
        enc.set_unpadded(false);
        let padded = grads(&enc, &b);
        // The same batch but one token less in the last text: what the bound must catch.
        let mut texts = TEXTS;
        texts[3] = "it was bad and long and";
        let other = grads(&enc, &batch(&tok, &texts));
        enc.set_unpadded(true);
        assert_eq!(unpadded.len(), padded.len(), "{family}");
        assert!(unpadded.len() > 10, "{family}: {}", unpadded.len());
        // A gradient that is zero in exact arithmetic (attention's key bias: softmax does not
        // see a shift shared by every key) is rounding noise of the terms summed into it, whose
        // size is that of the model's gradients: hence the floor at 1e-6 of the largest one.
        let largest = padded
            .iter()
            .map(|(_, g)| g.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        let bound = |p: &Tensor| 1e-4 * p.abs().max().double_value(&[]) + 1e-6 * largest;
        for ((n, u), (_, p)) in unpadded.iter().zip(&padded) {
            let d = common::max_abs_diff(u, p);
            assert!(d <= bound(p), "{family}: {n}: {d:e} (bound {:e})", bound(p));
        }
        let moved = other
            .iter()
            .zip(&padded)
            .filter(|((_, o), (_, p))| common::max_abs_diff(o, p) > 100.0 * bound(p))
            .count();
        assert!(
            moved > 0,
            "{family}: one token less moved no gradient past the bound"
        );
    }
}

fn train_run(model: &Path, data: &Path, out: &Path, norm: &str, cls: ClsSource, padded: bool) {
    let task = glue_task("sst2").unwrap();
    let (train, dev) = task.paths(Some(&data.join("SST-2")));
    let opts = ReadOptions {
        skip_bad_rows: false,
        require_label: true,
    };
    let normalizers = Normalizers::builtin();
    let norm = normalizers.defaults(norm).unwrap();
    finetune(Finetune {
        model_dir: model,
        head: HeadConfig {
            labels: task.labels.clone(),
            cls_source: cls,
            norm,
            dropout: 0.1,
            bias_init: Default::default(),
            classifier_init: Default::default(),
        },
        train: read_split(&train, &task, opts).unwrap(),
        dev: dev
            .iter()
            .map(|(n, p)| (n.clone(), read_split(p, &task, opts).unwrap()))
            .collect(),
        task,
        config: TrainConfig {
            lr: LR,
            epochs: 2,
            batch_size: 8,
            eval_batch_size: 16,
            max_len: 16,
            padded,
            ..TrainConfig::default()
        },
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
    })
    .unwrap();
}

const LR: f64 = 5e-3;

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join(clsnorm::rundir::LOSS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// How far two AdamW runs of `updates` steps (peak rate [`LR`], no weight decay, the
/// trainer's betas) can move one weight apart: each step moves it by at most
/// lr |m^/sqrt(v^)|, and by Cauchy-Schwarz |m^_t/sqrt(v^_t)| <= (1-b1) sqrt(1-b2^t)
/// sqrt(sum_k<t (b1^2/b2)^k) / ((1-b1^t) sqrt(1-b2)) (about 1.0-1.2 for t <= 8).
fn adam_bound(updates: usize) -> f64 {
    let a = TrainConfig::DEFAULT.adam;
    assert_eq!(a.weight_decay, 0.0);
    let (b1, b2) = (a.beta1, a.beta2);
    (1..=updates as i32)
        .map(|t| {
            let s: f64 = (0..t).map(|k| (b1 * b1 / b2).powi(k)).sum();
            let c = (1.0 - b1) * (1.0 - b2.powi(t)).sqrt() * s.sqrt()
                / ((1.0 - b1.powi(t)) * (1.0 - b2).sqrt());
            2.0 * LR * c
        })
        .sum()
}

/// Whole runs (2 epochs, 8 updates, dropout 0.1 in encoder and head): every normalizer, both
/// [CLS] sources, unpadded vs `--padded`: every loss within 1e-4 relative (a loss is smooth in
/// the weights, and the weights rounding can move far are those whose gradient is ~0, which the
/// loss does not see to first order); every final weight within what AdamW's steps allow; the
/// config records which ran.
#[test]
fn training_unpadded_equals_training_padded_for_every_normalizer() {
    let s = common::setup();
    let names: Vec<String> = Normalizers::builtin()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        for cls in [ClsSource::Pooler, ClsSource::Hidden] {
            let (u, p) = (
                s.root.join(format!("u-{name}-{cls:?}")),
                s.root.join(format!("p-{name}-{cls:?}")),
            );
            {
                let _g = common::torch_rng_lock();
                train_run(&s.model, &s.data, &u, name, cls, false);
                train_run(&s.model, &s.data, &p, name, cls, true);
            }
            let (lu, lp) = (losses(&u), losses(&p));
            assert_eq!(lu.len(), lp.len());
            for (a, b) in lu.iter().zip(&lp) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1e-3),
                    "{name} {cls:?}: {lu:?} vs {lp:?}"
                );
            }
            let wu = clsnorm::encoder::weights::read_model_dir(&u.join("last"), false).unwrap();
            let wp = clsnorm::encoder::weights::read_model_dir(&p.join("last"), false).unwrap();
            // Adam turns a rounding difference in a near-zero gradient into up to a whole
            // step (it divides by the gradient's own running scale), so final weights can
            // differ by as much as the steps' bound allows, whatever the CPU; the losses
            // above and the first update's gradients (the test before) are the sharp checks.
            let bound = adam_bound(lu.len());
            for ((n, a), (_, b)) in wu.tensors.iter().zip(&wp.tensors) {
                let d = common::max_abs_diff(a, b);
                assert!(d <= bound, "{name} {cls:?}: {n}: {d:e} (bound {bound:e})");
            }
            let exec = |r: &Path| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(r.join("config.json")).unwrap()).unwrap();
                v["execution"].clone()
            };
            assert_eq!((exec(&u), exec(&p)), ("unpadded".into(), "padded".into()));
        }
    }
}
