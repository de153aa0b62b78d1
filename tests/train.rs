//! Fine-tuning on a tiny random model: learning, determinism, resume, checkpoints.
mod common;

use std::path::Path;

use clsnorm::classifier::{ClsSource, HeadConfig};
use clsnorm::data::{glue_task, read_dataset, read_split, ReadOptions};
use clsnorm::normalize::{NormConfig, Normalizers};
use clsnorm::precision::Precision;
use clsnorm::train::{
    checkpoint, epoch_batches, epoch_order, finetune, EpochRecord, Finetune, Summary, TrainConfig,
    BUILD, LENGTH_GROUP_BATCHES,
};
use tch::Device;

struct Setup {
    _tmp: tempfile::TempDir,
    model: std::path::PathBuf,
    data: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn setup() -> (Setup, std::sync::MutexGuard<'static, ()>) {
    let guard = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::tiny_model_dir(&model, 42);
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 96, 32, 5);
    let s = Setup {
        root: tmp.path().to_path_buf(),
        model,
        data,
        _tmp: tmp,
    };
    (s, guard)
}

fn config() -> TrainConfig {
    TrainConfig {
        lr: 5e-3,
        epochs: 4,
        batch_size: 8,
        eval_batch_size: 16,
        max_len: 16,
        warmup_ratio: 0.1,
        ..TrainConfig::default()
    }
}

fn run(
    s: &Setup,
    out: &Path,
    cfg: TrainConfig,
    resume: bool,
    stop_after: Option<usize>,
) -> Summary {
    let task = glue_task("sst2").unwrap();
    let (train, dev) = task.paths(Some(&s.data.join("SST-2")));
    let opts = ReadOptions {
        skip_bad_rows: false,
        require_label: true,
    };
    finetune(Finetune {
        model_dir: &s.model,
        head: HeadConfig {
            labels: task.labels.clone(),
            cls_source: ClsSource::Pooler,
            norm: NormConfig::default(),
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
        config: cfg,
        output: out,
        registry: clsnorm::Registry::builtin(),
        resume,
        device: Device::Cpu,
        threads: 1,
        allow_pickle: false,
        sources: Default::default(),
        progress: false,
        stop_after,
        stop: None,
    })
    .unwrap()
}

fn records(out: &Path) -> Vec<EpochRecord> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn learns_a_toy_task_and_is_deterministic() {
    let (s, _guard) = setup();
    let (a, b) = (s.root.join("a"), s.root.join("b"));
    let sa = run(&s, &a, config(), false, None);
    let ra = records(&a);
    assert_eq!(ra.len(), 4);
    assert!(
        ra[3].train_loss < 0.5 * ra[0].train_loss.max(0.69),
        "loss did not fall: {:?}",
        ra.iter().map(|r| r.train_loss).collect::<Vec<_>>()
    );
    assert!(
        sa.best_primary.unwrap() >= 0.9,
        "dev accuracy {:?}",
        sa.best_primary
    );
    // Same seed: bit-identical losses, metrics and weights.
    run(&s, &b, config(), false, None);
    let rb = records(&b);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((x.train_loss, x.primary), (y.train_loss, y.primary));
    }
    common::same_checkpoint_weights(&a.join("last"), &b.join("last"));
    // Every epoch records the dev [CLS] geometry; `none` leaves the vectors as they are.
    for r in &ra {
        let g = r.cls_geometry.expect("geometry recorded");
        assert_eq!(g.raw, g.normalized);
        assert!((0.0..=1.0).contains(&g.raw.centring_ratio), "{g:?}");
        assert!(g.raw.pc1_share > 0.0 && g.raw.pc1_share <= 1.0, "{g:?}");
        assert!((0.0..=1.0).contains(&g.raw.mean_abs_corr), "{g:?}");
        assert!(g.raw.std_spread >= 1.0, "{g:?}");
    }
    assert_ne!(
        ra[0].cls_geometry, ra[3].cls_geometry,
        "fine-tuning moves the [CLS]"
    );
    // Another seed: different numbers.
    let c = s.root.join("c");
    run(
        &s,
        &c,
        TrainConfig {
            seed: 2,
            ..config()
        },
        false,
        None,
    );
    assert_ne!(records(&c)[0].train_loss, ra[0].train_loss);
}

#[test]
fn resume_after_interruption_equals_uninterrupted_run() {
    resume_equals_uninterrupted(config());
}

#[test]
fn resume_in_mixed_precision_equals_uninterrupted_run() {
    // The fp16 run also checkpoints and restores its loss scaler.
    for precision in [Precision::Bf16, Precision::Fp16] {
        resume_equals_uninterrupted(TrainConfig {
            precision,
            ..config()
        });
    }
}

#[test]
fn resume_with_length_grouping_equals_uninterrupted_run() {
    resume_equals_uninterrupted(TrainConfig {
        group_by_length: true,
        ..config()
    });
}

#[test]
fn resume_with_evaluations_inside_epochs_equals_uninterrupted_run() {
    // Evaluations at updates 5, 10, ... also choose `best`; an interruption between them and
    // at update 13 resumes to the same records, weights and best checkpoint.
    resume_equals_uninterrupted(TrainConfig {
        eval_every: Some(5),
        ..config()
    });
}

#[test]
fn length_grouped_batches_cover_every_example_once_with_less_padding() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let lengths: Vec<usize> = (0..2000).map(|_| rng.random_range(3..120)).collect();
    let padded = |batches: &[Vec<usize>]| -> usize {
        batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum()
    };
    let plain = epoch_batches(&lengths, 16, 7, 0, false);
    let grouped = epoch_batches(&lengths, 16, 7, 0, true);
    for batches in [&plain, &grouped] {
        assert_eq!(batches.len(), 2000usize.div_ceil(16));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..2000).collect::<Vec<_>>(),
            "each example exactly once"
        );
    }
    // Random lengths in 3..120: a random batch of 16 pads to ~113, a grouped one to ~its mean.
    let real: usize = lengths.iter().sum();
    assert!(padded(&plain) as f64 > 1.6 * real as f64);
    assert!(
        (padded(&grouped) as f64) < 1.1 * real as f64,
        "grouped batches pad {} tokens for {real} real ones",
        padded(&grouped)
    );
    // Grouping only regroups examples within each mega-batch of the shuffled order.
    let order = epoch_order(2000, 7, 0);
    let mega = 16 * LENGTH_GROUP_BATCHES;
    for b in &grouped {
        let chunk = order.iter().position(|&i| i == b[0]).unwrap() / mega;
        assert!(b
            .iter()
            .all(|&i| order.iter().position(|&j| j == i).unwrap() / mega == chunk));
    }
    // Deterministic per (seed, epoch), different across epochs and seeds.
    assert_eq!(grouped, epoch_batches(&lengths, 16, 7, 0, true));
    assert_ne!(grouped, epoch_batches(&lengths, 16, 7, 1, true));
    assert_ne!(grouped, epoch_batches(&lengths, 16, 8, 0, true));
}

fn resume_equals_uninterrupted(cfg: TrainConfig) {
    let (s, _guard) = setup();
    let config = || cfg.clone();
    let full = s.root.join("full");
    run(&s, &full, config(), false, None);
    // Interrupt mid-epoch (update 13 of 48, epoch 2), then at an epoch boundary (update 24).
    let part = s.root.join("part");
    let first = run(&s, &part, config(), false, Some(13));
    assert!(first.interrupted);
    assert_eq!(
        checkpoint::read_meta(&part.join("last"))
            .unwrap()
            .state
            .global_step,
        13
    );
    let second = run(&s, &part, config(), true, Some(24));
    assert!(second.interrupted);
    let done = run(&s, &part, config(), true, None);
    assert!(!done.interrupted);
    assert_eq!(done.global_steps, 48);
    let (rf, rp) = (records(&full), records(&part));
    assert_eq!(rf.len(), rp.len(), "one record per epoch, none duplicated");
    for (x, y) in rf.iter().zip(&rp) {
        assert_eq!(x.epoch, y.epoch);
        assert!(
            (x.train_loss - y.train_loss).abs() < 1e-9,
            "epoch {}: {} vs {}",
            x.epoch,
            x.train_loss,
            y.train_loss
        );
        assert_eq!(x.dev, y.dev);
    }
    common::same_checkpoint_weights(&full.join("last"), &part.join("last"));
    common::same_checkpoint_weights(&full.join("best"), &part.join("best"));
    assert_eq!(
        done.builds,
        vec![BUILD.to_string()],
        "one build, recorded once"
    );
}

#[test]
fn runs_record_the_builds_that_trained_them() {
    let (s, _guard) = setup();
    let cfg = || TrainConfig {
        epochs: 1,
        ..config()
    };
    let out = s.root.join("run");
    let first = run(&s, &out, cfg(), false, Some(5));
    assert_eq!(first.builds, vec![BUILD.to_string()]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["clsnorm_build"], BUILD);
    assert!(!BUILD.is_empty());

    // A checkpoint from before builds were recorded: no `builds`, manifest updated to match.
    let last = out.join("last");
    let meta_path = last.join(checkpoint::META_FILE);
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["state"].as_object_mut().unwrap().remove("builds");
    std::fs::write(&meta_path, serde_json::to_string(&meta).unwrap()).unwrap();
    let manifest_path = last.join(checkpoint::MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest[checkpoint::META_FILE] = checkpoint::sha256_file(&meta_path).unwrap().into();
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();

    let done = run(&s, &out, cfg(), true, None);
    assert!(!done.interrupted);
    assert_eq!(
        done.builds,
        vec!["unrecorded".to_string(), BUILD.to_string()]
    );
}

#[test]
fn best_checkpoint_reloads_with_the_same_dev_metric() {
    let (s, _guard) = setup();
    let out = s.root.join("run");
    let summary = run(
        &s,
        &out,
        TrainConfig {
            epochs: 2,
            ..config()
        },
        false,
        None,
    );
    let best = out.join("best");
    let (model, meta) =
        checkpoint::load_model(&best, Device::Cpu, &clsnorm::Registry::builtin()).unwrap();
    assert_eq!(meta.state.best_epoch, summary.best_epoch);
    let tok = clsnorm::tokenize::TextTokenizer::load(&best, meta.max_len).unwrap();
    let task = glue_task("sst2").unwrap();
    let ds = read_dataset(
        &s.data.join("SST-2/dev.tsv"),
        &task,
        ReadOptions {
            skip_bad_rows: false,
            require_label: true,
        },
    )
    .unwrap();
    let t = clsnorm::train::Tokenized::new(&tok, &ds).unwrap();
    let m = clsnorm::eval::evaluate(&model, &t.encs, &t.labels, &task.metrics, 7, tok.pad_id())
        .unwrap();
    assert_eq!(Some(m["accuracy"]), summary.best_primary);
    // HF-loadable layout: config.json + model.safetensors + tokenizer, verified by manifest.
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "head.safetensors",
        "manifest.json",
    ] {
        assert!(best.join(f).is_file(), "{f} missing");
    }
    // A corrupted file is detected.
    let head = best.join("head.safetensors");
    let mut bytes = std::fs::read(&head).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&head, bytes).unwrap();
    let err = checkpoint::load_model(&best, Device::Cpu, &clsnorm::Registry::builtin())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupted") && err.contains("head.safetensors"),
        "{err}"
    );
}

#[test]
fn refuses_to_overwrite_a_run_and_validates_options() {
    let (s, _guard) = setup();
    let out = s.root.join("run");
    run(
        &s,
        &out,
        TrainConfig {
            max_steps: Some(2),
            ..config()
        },
        false,
        None,
    );
    let task = glue_task("sst2").unwrap();
    let opts = ReadOptions {
        skip_bad_rows: false,
        require_label: true,
    };
    let ds = read_dataset(&s.data.join("SST-2/train.tsv"), &task, opts).unwrap();
    fn job<'a>(
        s: &'a Setup,
        task: &clsnorm::data::TaskSpec,
        ds: &clsnorm::data::Dataset,
        out: &'a Path,
        cfg: TrainConfig,
    ) -> Finetune<'a> {
        Finetune {
            model_dir: &s.model,
            head: HeadConfig {
                labels: task.labels.clone(),
                cls_source: ClsSource::Hidden,
                norm: NormConfig::default(),
                dropout: 0.1,
                bias_init: Default::default(),
                classifier_init: Default::default(),
            },
            train: ds.clone(),
            dev: vec![("dev".into(), ds.clone())],
            task: task.clone(),
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
    let err = finetune(job(&s, &task, &ds, &out, config()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already holds a run") && err.contains("--resume"),
        "{err}"
    );
    let other = s.root.join("other");
    for (cfg, want) in [
        (
            TrainConfig {
                lr: 0.0,
                ..config()
            },
            "--lr",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..config()
            },
            "batch",
        ),
        (
            TrainConfig {
                warmup_ratio: 1.5,
                ..config()
            },
            "--warmup-ratio",
        ),
        (
            TrainConfig {
                max_len: 4096,
                ..config()
            },
            "position embeddings",
        ),
    ] {
        let err = finetune(job(&s, &task, &ds, &other, cfg))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn traced_gradients_are_recorded_per_update_and_survive_resume() {
    let (s, _guard) = setup();
    let out = s.root.join("traced");
    let cfg = TrainConfig {
        trace_grads: true,
        epochs: 2,
        ..config()
    };
    run(&s, &out, cfg.clone(), false, Some(5));
    run(&s, &out, cfg, true, None);
    let recs: Vec<clsnorm::train::GradRecord> = std::fs::read_to_string(out.join("grads.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        recs.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<_>>()
    );
    for r in &recs {
        assert!(r.global_grad_norm.is_finite() && r.global_grad_norm > 0.0);
        // With no normalizer the classifier's input is the [CLS] vector itself.
        assert!(
            (r.cls_grad_norm - r.normalized_grad_norm).abs() <= 1e-6 * r.cls_grad_norm.max(1e-12)
        );
        assert!(r.max_dim_grad <= r.cls_grad_norm + 1e-12);
        let groups: Vec<&str> = r.groups.keys().map(String::as_str).collect();
        assert_eq!(
            groups,
            ["classifier", "embeddings", "layer.00", "layer.01", "pooler"]
        );
        let total: f64 = r.groups.values().map(|v| v * v).sum::<f64>().sqrt();
        assert!(
            (total - r.global_grad_norm).abs() < 1e-4 * r.global_grad_norm,
            "{total} vs {}",
            r.global_grad_norm
        );
    }
}

fn labelled(labels: &[clsnorm::data::Label]) -> clsnorm::data::Dataset {
    clsnorm::data::Dataset {
        path: "train.tsv".into(),
        examples: labels
            .iter()
            .enumerate()
            .map(|(i, l)| clsnorm::data::Example {
                line: i + 2,
                text: ["the cat sat", "a good movie", "it was not very bad", "dog"][i % 4].into(),
                text_pair: None,
                label: Some(*l),
            })
            .collect(),
        skipped: 0,
        sha256: String::new(),
        shards: Vec::new(),
    }
}

#[test]
fn prior_bias_init_starts_the_head_at_the_label_prior() {
    use clsnorm::classifier::{label_prior, BiasInit, Classifier};
    use clsnorm::data::{Label, LabelSpace};
    let _lock = common::torch_rng_lock();
    // Regression: the mean score.
    let scores = labelled(&[
        Label::Score(1.0),
        Label::Score(2.0),
        Label::Score(4.5),
        Label::Score(0.5),
    ]);
    assert_eq!(
        label_prior(&LabelSpace::Regression, &scores).unwrap(),
        [2.0]
    );
    // Classes: log shares with one count added per class (3, 1, 0 of 4 -> 4/7, 2/7, 1/7).
    let classes = LabelSpace::Classes(vec!["a".into(), "b".into(), "c".into()]);
    let counted = labelled(&[
        Label::Class(0),
        Label::Class(1),
        Label::Class(0),
        Label::Class(0),
    ]);
    let prior = label_prior(&classes, &counted).unwrap();
    for (p, want) in prior.iter().zip([4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0_f64]) {
        assert!((p - want.ln()).abs() < 1e-12, "{prior:?}");
    }
    let empty = clsnorm::data::Dataset {
        path: "empty.tsv".into(),
        examples: Vec::new(),
        skipped: 0,
        sha256: String::new(),
        shards: Vec::new(),
    };
    let err = label_prior(&LabelSpace::Regression, &empty)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty.tsv") && err.contains("no labelled example"),
        "{err}"
    );

    // On a model with batchnorm, which removes every batch mean in training: the head's batch
    // mean prediction is its bias, so a zero bias predicts 0 and the prior predicts the mean.
    let dir = tempfile::tempdir().unwrap();
    common::tiny_model_dir(dir.path(), 5);
    let tok = clsnorm::tokenize::TextTokenizer::load(dir.path(), 16).unwrap();
    let encs: Vec<_> = scores
        .examples
        .iter()
        .map(|e| tok.encode(&e.text, None).unwrap())
        .collect();
    let refs: Vec<_> = encs.iter().collect();
    let batch =
        clsnorm::batch::Batch::collate(&refs, tok.pad_id(), &common::LIMITS, Device::Cpu).unwrap();
    let head = |bias_init| HeadConfig {
        labels: LabelSpace::Regression,
        cls_source: ClsSource::Pooler,
        norm: NormConfig::of(&clsnorm::normalize::BatchNormOptions {
            affine: true,
            ..Default::default()
        }),
        dropout: 0.0,
        bias_init,
        classifier_init: Default::default(),
    };
    for (bias_init, want) in [(BiasInit::Zero, 0.0), (BiasInit::Prior, 2.0)] {
        let encoder = clsnorm::encoder::Encoder::load(dir.path(), Device::Cpu, false).unwrap();
        let model = Classifier::new(encoder, head(bias_init), 1, &Normalizers::builtin()).unwrap();
        if bias_init == BiasInit::Prior {
            model.set_output_bias(&[2.0]).unwrap();
        }
        let logits = model.forward(&batch, true).logits;
        let mean = logits.mean(tch::Kind::Float).double_value(&[]);
        assert!((mean - want).abs() < 1e-5, "{bias_init:?}: {mean}");
        assert!(
            logits.std(true).double_value(&[]) > 1e-4,
            "not a constant output"
        );
    }
    let encoder = clsnorm::encoder::Encoder::load(dir.path(), Device::Cpu, false).unwrap();
    let model =
        Classifier::new(encoder, head(BiasInit::Prior), 1, &Normalizers::builtin()).unwrap();
    let err = model.set_output_bias(&[1.0, 2.0]).unwrap_err().to_string();
    assert!(err.contains("2 bias values for 1 outputs"), "{err}");
}

#[test]
fn classifier_init_follows_hugging_face_or_torch_linear() {
    use clsnorm::classifier::{Classifier, ClassifierInit};
    let _g = common::torch_rng_lock();
    let cfg = clsnorm::encoder::BertConfig::tiny(40, 64, 1, 4);
    let head = |init| {
        let enc = clsnorm::encoder::Encoder::random(&cfg, Device::Cpu, 0);
        let c = Classifier::new(
            enc,
            HeadConfig {
                labels: clsnorm::data::LabelSpace::Classes(
                    (0..50).map(|i| i.to_string()).collect(),
                ),
                cls_source: ClsSource::Pooler,
                norm: NormConfig::default(),
                dropout: 0.1,
                bias_init: Default::default(),
                classifier_init: init,
            },
            3,
            &Normalizers::builtin(),
        )
        .unwrap();
        let vars = c.head_vs.variables();
        (
            vars["classifier.weight"].copy(),
            vars["classifier.bias"].copy(),
        )
    };
    let (w, b) = head(ClassifierInit::Hf);
    let std = w.std(true).double_value(&[]);
    assert!((std - 0.02).abs() < 0.002, "hf weights' std {std}");
    assert_eq!(b.abs().max().double_value(&[]), 0.0);
    let (w, b) = head(ClassifierInit::Torch);
    let bound = 1.0 / 64f64.sqrt();
    for t in [&w, &b] {
        let max = t.abs().max().double_value(&[]);
        assert!(
            max <= bound && max > 0.9 * bound,
            "torch init max |x| {max}, bound {bound}"
        );
    }
    // U(-b, b) has std b / sqrt(3).
    let std = w.std(true).double_value(&[]);
    assert!(
        (std - bound / 3f64.sqrt()).abs() < 0.01,
        "torch weights' std {std}"
    );
}

/// `--batch-order` replays batches: clsnorm's own drawn order written out and replayed gives
/// the same run bit for bit; files that do not fit the run are refused with file and line.
#[test]
fn a_replayed_batch_order_is_the_same_run_and_bad_orders_are_refused() {
    let (s, guard) = setup();
    let n = 96;
    let cfg = TrainConfig {
        epochs: 2,
        ..config()
    };
    let file = s.root.join("order.jsonl");
    let mut text = String::new();
    for epoch in 0..2 {
        for b in epoch_batches(&vec![0; n], cfg.batch_size, cfg.seed, epoch, false) {
            text.push_str(&serde_json::json!({"epoch": epoch, "batch": b}).to_string());
            text.push('\n');
        }
    }
    std::fs::write(&file, &text).unwrap();
    let (a, b) = (s.root.join("drawn"), s.root.join("replayed"));
    run(&s, &a, cfg.clone(), false, None);
    let replay = TrainConfig {
        batch_order: Some(clsnorm::train::BatchOrderFile::of(&file).unwrap()),
        ..cfg
    };
    run(&s, &b, replay, false, None);
    common::same_checkpoint_weights(&a.join("last"), &b.join("last"));
    drop(guard);

    let bad = |name: &str, body: String, want: &str| {
        let f = s.root.join(name);
        std::fs::write(&f, body).unwrap();
        let out = common::clsnorm(
            &[
                &sst2_two_epochs(&s.model, &s.data, "8")[..],
                &[
                    "--batch-order",
                    common::p(&f),
                    "--output",
                    common::p(&s.root.join(format!("out-{name}"))),
                ],
            ]
            .concat(),
        );
        common::fails(&out, want);
    };
    let lines: Vec<&str> = text.lines().collect();
    bad(
        "short",
        lines[..12].join("\n"),
        "holds 1 epoch(s); the run trains 2",
    );
    bad(
        "count",
        lines[..23].join("\n"),
        "epoch 1 has 11 batches; the run makes 12 updates",
    );
    let first: Vec<usize> = serde_json::from_str::<serde_json::Value>(lines[0]).unwrap()["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    bad(
        "range",
        text.replacen(&format!("[{},", first[0]), "[96,", 1),
        "names example 96; the training data has 96",
    );
    bad(
        "twice",
        text.replacen(
            &format!("[{},{}", first[0], first[1]),
            &format!("[{},{}", first[1], first[1]),
            1,
        ),
        "names example",
    );
    bad(
        "order",
        format!("{}\n{}", lines[13], lines[0]),
        "the first batch is of epoch 1",
    );
    bad(
        "syntax",
        format!("{}\nnot json\n", lines[0]),
        "syntax:2: expected {\"epoch\": E",
    );
    bad(
        "big",
        text.replacen("]", ",1,2,3,4,5,6,7,8,9]", 1),
        "--batch-size is 8",
    );
    // The right number of batches, of one example each: most examples never seen.
    bad(
        "cover",
        (0..2)
            .flat_map(|e| (0..12).map(move |i| format!("{{\"epoch\": {e}, \"batch\": [{i}]}}\n")))
            .collect(),
        "epoch 0 covers 12 of the 96 training examples",
    );
}

/// `--schedule` through the binary: each logged update's learning rate is the schedule's (whose
/// values are transformers', `train::schedule`), the choice is recorded for `--resume`, and a
/// name clsnorm does not know is refused.
#[test]
fn schedules_set_each_updates_learning_rate_and_are_recorded() {
    use clsnorm::train::schedule::{Schedule, ScheduleKind};
    let s = common::setup();
    for (name, kind) in [
        ("linear", ScheduleKind::Linear),
        ("cosine", ScheduleKind::Cosine),
        ("constant", ScheduleKind::Constant),
    ] {
        let out = s.root.join(format!("run-{name}"));
        common::ok(&common::clsnorm(
            &[
                &sst2_two_epochs(&s.model, &s.data, "4")[..],
                &[
                    "--lr",
                    "1e-3",
                    "--warmup-steps",
                    "2",
                    "--schedule",
                    name,
                    "--output",
                    common::p(&out),
                ],
            ]
            .concat(),
        ));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["train"]["schedule"], name, "{config}");
        let sched = Schedule {
            kind,
            lr: 1e-3,
            warmup_steps: 2,
            total_steps: 8,
        };
        let lines = std::fs::read_to_string(out.join(clsnorm::rundir::LOSS_FILE)).unwrap();
        let mut seen = 0;
        for l in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let step = v["step"].as_u64().unwrap() as usize;
            let lr = v["lr"].as_f64().unwrap();
            assert!(
                (lr - sched.lr_at(step - 1)).abs() <= 1e-15,
                "{name} step {step}: {lr}"
            );
            seen += 1;
        }
        assert!(seen >= 2, "{name}: {lines}");
    }
    let o = common::clsnorm(&["finetune", "--schedule", "exponential"]);
    common::fails(&o, "possible values: linear, cosine, constant");
}

/// `--grad-accum` and `--layer-decay` through the binary: recorded for `--resume`, the updates
/// counted (an update every K batches, one for the epoch's rest), hostile values refused before
/// anything is written.
#[test]
fn accumulation_and_layer_decay_are_recorded_and_checked() {
    let s = common::setup();
    let out = s.root.join("run-accum");
    common::ok(&common::clsnorm(
        &[
            &sst2_two_epochs(&s.model, &s.data, "4")[..],
            &[
                "--grad-accum",
                "3",
                "--layer-decay",
                "0.8",
                "--save-every",
                "1",
                "--output",
                common::p(&out),
            ],
        ]
        .concat(),
    ));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["grad_accum"], 3, "{config}");
    assert_eq!(config["train"]["layer_decay"], 0.8, "{config}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    // 16 examples in batches of 4 make 4 batches an epoch: updates of 3 and 1, twice.
    assert_eq!(summary["global_steps"], 4, "{summary}");
    common::ok(&common::clsnorm(&[
        "finetune",
        "--resume",
        common::p(&out),
        "--quiet",
    ]));
    for (flag, value, want) in [
        (
            "--grad-accum",
            "0",
            "--grad-accum must be between 1 and 4096",
        ),
        (
            "--grad-accum",
            "1000000000",
            "--grad-accum must be between 1 and 4096",
        ),
        ("--layer-decay", "NaN", "--layer-decay must be in (0, 1]"),
        ("--layer-decay", "2", "--layer-decay must be in (0, 1]"),
        ("--layer-decay", "0", "--layer-decay must be in (0, 1]"),
    ] {
        let bad = s.root.join("bad");
        let o = common::clsnorm(
            &[
                &sst2_two_epochs(&s.model, &s.data, "4")[..],
                &[flag, value, "--output", common::p(&bad)],
            ]
            .concat(),
        );
        common::fails(&o, want);
        assert!(
            !bad.exists(),
            "{flag} {value}: a refused run wrote its folder"
        );
    }
    let o = common::clsnorm(
        &[
            &sst2_two_epochs(&s.model, &s.data, "4")[..],
            &["--grad-accum", "2", "--trace-grads"],
        ]
        .concat(),
    );
    common::fails(&o, "use one or the other");
}

/// `--eval-every` and `--patience` through the binary: with a learning rate too small to change
/// anything the dev metric never improves on the first evaluation, so the run stops after
/// `--patience` more; the best evaluation's checkpoint is `best`, and a resume is a no-op.
#[test]
fn evaluations_inside_epochs_choose_the_best_and_patience_stops_early() {
    let s = common::setup();
    let out = s.root.join("run-patience");
    let mut six_epochs = sst2_two_epochs(&s.model, &s.data, "4");
    let at = six_epochs.iter().position(|a| *a == "--epochs").unwrap();
    six_epochs[at + 1] = "6";
    let args = |out: &Path| -> Vec<String> {
        [
            &six_epochs[..],
            &[
                "--lr",
                "1e-20",
                "--eval-every",
                "2",
                "--patience",
                "3",
                "--output",
                common::p(out),
            ],
        ]
        .concat()
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let words = args(&out);
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    common::ok(&common::clsnorm(&refs));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    // 4 updates an epoch: evaluations at 2 (inside, best), 4 (end), 6 (inside), 8 (end): three
    // without improvement.
    assert_eq!(summary["stopped_early"], true, "{summary}");
    assert_eq!(summary["global_steps"], 8, "{summary}");
    assert_eq!(summary["best_step"], 2, "{summary}");
    assert_eq!(summary["interrupted"], false, "{summary}");
    let steps = |file: &str| -> Vec<u64> {
        std::fs::read_to_string(out.join(file))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["global_step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(steps("evals.jsonl"), [2, 6]);
    assert_eq!(steps("metrics.jsonl"), [4, 8]);
    let best = clsnorm::train::checkpoint::read_meta(&out.join("best")).unwrap();
    assert_eq!(best.state.global_step, 2);
    common::ok(&common::clsnorm(&[
        "finetune",
        "--resume",
        common::p(&out),
        "--quiet",
    ]));
    assert_eq!(
        steps("metrics.jsonl"),
        [4, 8],
        "a stopped run stays stopped"
    );
    for (extra, want) in [
        (
            &["--eval-every", "0"][..],
            "--eval-every must be between 1 and",
        ),
        (&["--patience", "0"][..], "--patience must be between 1 and"),
        (&["--patience", "9"][..], "could never stop early"),
    ] {
        let bad = s.root.join("bad");
        let o = common::clsnorm(
            &[
                &sst2_two_epochs(&s.model, &s.data, "4")[..],
                extra,
                &["--output", common::p(&bad)],
            ]
            .concat(),
        );
        common::fails(&o, want);
        assert!(!bad.exists(), "{extra:?}: a refused run left its folder");
    }
}

/// `finetune` of the toy SST-2 for 2 epochs at `batch` with the tiny model, one thread, quiet.
fn sst2_two_epochs<'a>(model: &'a Path, data: &'a Path, batch: &'a str) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        common::p(model),
        "--task",
        "sst2",
        "--data-dir",
        common::p(data),
        "--epochs",
        "2",
        "--batch-size",
        batch,
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]
}
