//! The `clsnorm` binary end to end on a tiny random model: finetune, resume, evaluate,
//! predict, and errors with a non-zero exit.
mod common;

use std::path::Path;

use common::{clsnorm, fails, ok, p};

/// `clsnorm finetune` of a tiny model on toy SST-2 data on the CPU (batch 8, length 16,
/// quiet), then `rest`.
fn toy_finetune<'a>(model: &'a Path, data: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let shared = [
        "finetune",
        "--model",
        p(model),
        "--task",
        "sst2",
        "--data-dir",
        p(data),
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--device",
        "cpu",
        "--quiet",
    ];
    [&shared[..], rest].concat()
}

#[test]
fn finetune_evaluate_predict_round_trip() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run) = (
        tmp.path().join("m"),
        tmp.path().join("glue"),
        tmp.path().join("run"),
    );
    common::tiny_model_dir(&model, 3);
    common::write_toy_sst(&data, 48, 16, 1);
    let base = [
        "finetune",
        "--model",
        p(&model),
        "--task",
        "SST2",
        "--data-dir",
        p(&data),
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--lr",
        "5e-3",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--quiet",
    ];
    let out = ok(&clsnorm(
        &[&base[..], &["--epochs", "2", "--output", p(&run)]].concat(),
    ));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["task"], "SST-2");
    assert_eq!(summary["global_steps"], 12);
    let best = summary["best_primary"].as_f64().unwrap();
    // evaluate recomputes the best epoch's dev metric from the checkpoint.
    let best_dir = run.join("best");
    let ev: serde_json::Value = serde_json::from_str(&ok(&clsnorm(&[
        "evaluate",
        "--checkpoint",
        p(&best_dir),
        "--data-dir",
        p(&data),
        "--device",
        "cpu",
    ])))
    .unwrap();
    assert_eq!(ev["dev"]["metrics"]["accuracy"].as_f64().unwrap(), best);
    // predict: one JSON line per input row, labels from the task's label set.
    let input = tmp.path().join("in.tsv");
    std::fs::write(&input, "sentence\nthe movie was good\nthe movie was bad\n").unwrap();
    let preds = tmp.path().join("preds.jsonl");
    let predict_to = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "predict",
            "--checkpoint",
            p(&best_dir),
            "--input",
            p(&input),
            "--output",
            p(out),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        clsnorm(&args)
    };
    ok(&predict_to(&preds, &[]));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["line"], 2);
    // An existing file is replaced only with --overwrite (its form cannot tell who wrote it).
    fails(&predict_to(&preds, &[]), "pass --overwrite to replace it");
    ok(&predict_to(&preds, &["--overwrite"]));
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    fails(&predict_to(&notes, &[]), "pass --overwrite to replace it");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    let probs = lines[0]["probabilities"].as_object().unwrap();
    let total: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(["0", "1"].contains(&lines[0]["label"].as_str().unwrap()));
    // A second finetune into the same directory is refused; --resume of a finished run is a no-op.
    fails(
        &clsnorm(&[&base[..], &["--epochs", "2", "--output", p(&run)]].concat()),
        "--resume",
    );
    let again: serde_json::Value = serde_json::from_str(&ok(&clsnorm(&[
        "finetune",
        "--resume",
        p(&run),
        "--quiet",
        "--device",
        "cpu",
    ])))
    .unwrap();
    assert_eq!(again["global_steps"], 12);
    assert_eq!(again["best_primary"].as_f64().unwrap(), best);
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    // Draws from libtorch's global generator, as the other tests here do.
    let _guard = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    common::tiny_model_dir(&model, 3);
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 8, 4, 1);
    let m = p(&model);
    fails(
        &clsnorm(&["finetune", "--model", m, "--task", "sst2"]),
        "GLUE_DIR",
    );
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            m,
            "--task",
            "nope",
            "--data-dir",
            p(&data),
        ]),
        "unknown task \"nope\"",
    );
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            m,
            "--task",
            "rte",
            "--data-dir",
            p(&data),
        ]),
        "RTE/train.tsv",
    );
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            m,
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
            "--device",
            "tpu",
        ]),
        "expected auto, cpu, cuda or cuda:N",
    );
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            m,
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
            "--lr=-1",
            "--output",
            p(&tmp.path().join("x")),
        ]),
        "--lr",
    );
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            m,
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
            "--dropout",
            "1.5",
        ]),
        "--dropout",
    );
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            p(&tmp.path().join("none")),
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
        ]),
        "none\": no such directory",
    );
    // A directory that is not a model says which file it lacks.
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            p(&data),
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
        ]),
        "config.json",
    );
    fails(
        &clsnorm(&[
            "embed",
            "--model",
            m,
            "--device",
            "cpu",
            "--max-len",
            "2",
            "cat",
        ]),
        "expected a whole number from 3 to 65536",
    );
    fails(
        &clsnorm(&["finetune", "--resume", p(&tmp.path().join("nothing"))]),
        "config.json",
    );
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "text\tlabel\nfine\t1\n\tmissing text\n").unwrap();
    fails(
        &clsnorm(&[
            "finetune",
            "--model",
            m,
            "--train-file",
            p(&bad),
            "--dev-file",
            p(&bad),
        ]),
        "bad.tsv:3",
    );
}

#[test]
fn every_normalizer_fine_tunes() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("m"), tmp.path().join("glue"));
    common::tiny_model_dir(&model, 3);
    common::write_toy_sst(&data, 32, 8, 1);
    for (norm, extra) in [
        ("none", &[][..]),
        ("center", &[][..]),
        ("standardize", &[][..]),
        ("batchnorm", &["--norm-opt", "affine"][..]),
        ("layernorm", &["--norm-opt", "affine=true"][..]),
        (
            "isobn",
            &[
                "--norm-opt",
                "beta=0.5",
                "--norm-opt",
                "momentum=0.05",
                "--norm-opt",
                "eps=1e-3",
                "--norm-opt",
                "bias-correction",
            ][..],
        ),
        ("whiten", &[][..]),
        ("l2", &[][..]),
    ] {
        let run = tmp.path().join(norm);
        let args = toy_finetune(
            &model,
            &data,
            &[
                &["--max-steps", "6", "--norm", norm, "--output", p(&run)][..],
                extra,
            ]
            .concat(),
        );
        let summary: serde_json::Value = serde_json::from_str(&ok(&clsnorm(&args))).unwrap();
        assert!(
            summary["best_primary"].as_f64().unwrap().is_finite(),
            "{norm}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["head"]["norm"]["name"], norm,
            "the normalizer is recorded in the run config"
        );
        // Evaluation after a reload gives the recorded number (normalizer state restored).
        let ev: serde_json::Value = serde_json::from_str(&ok(&clsnorm(&[
            "evaluate",
            "--checkpoint",
            p(&run.join("best")),
            "--data-dir",
            p(&data),
            "--device",
            "cpu",
        ])))
        .unwrap();
        assert_eq!(
            ev["dev"]["metrics"]["accuracy"], summary["best_primary"],
            "{norm}"
        );
    }
    // Options that do not apply, or are out of range, are rejected before any work.
    for (norm_flags, want) in [
        (
            &["isobn", "--norm-opt", "affine"][..],
            "unknown field `affine`, expected one of `momentum`, `eps`, `beta`, `bias_correction`",
        ),
        (
            &["isobn", "--norm-opt", "beta=2"],
            "--norm isobn: beta must be in [0, 1], got 2",
        ),
        (
            &["isobn", "--norm-opt", "beta=high"],
            "invalid type: string \"high\", expected f64",
        ),
        (
            &["isobn", "--norm-opt", "beta=0.5", "--norm-opt", "beta=0.25"],
            "--norm-opt \"beta\" is given twice",
        ),
        (
            &["fancy"],
            "unknown normalizer \"fancy\": expected one of none, center",
        ),
    ] {
        let mut args = vec![
            "finetune",
            "--model",
            p(&model),
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
            "--norm",
        ];
        args.extend_from_slice(norm_flags);
        fails(&clsnorm(&args), want);
    }
}

#[test]
fn analyze_and_compare_grads_write_reports_and_pictures() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("m"), tmp.path().join("glue"));
    common::tiny_model_dir(&model, 3);
    common::write_toy_sst(&data, 40, 8, 1);
    let out = tmp.path().join("an");
    ok(&clsnorm(&[
        "analyze",
        "--model",
        p(&model),
        "--task",
        "sst2",
        "--data-dir",
        p(&data),
        "--norm",
        "isobn",
        "--output",
        p(&out),
        "--device",
        "cpu",
        "--quiet",
    ]));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("analysis.json")).unwrap()).unwrap();
    assert_eq!(doc["examples"], 40);
    assert_eq!(doc["sources"]["pooler"]["raw"]["d"], 32);
    assert!(
        doc["sources"]["hidden"]["normalized"]["stats"]["effective_dim"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    for f in [
        "analysis.md",
        "pooler_std_hist.png",
        "hidden_spectrum.svg",
        "pooler_corr_isobn.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let mut runs = Vec::new();
    for norm in ["none", "isobn"] {
        let run = tmp.path().join(norm);
        ok(&clsnorm(&toy_finetune(
            &model,
            &data,
            &[
                "--max-steps",
                "4",
                "--trace-grads",
                "--norm",
                norm,
                "--output",
                p(&run),
            ],
        )));
        runs.push(run);
    }
    // The checkpoints' own normalizers, with the statistics they saved.
    let analyse_trained = |run: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "analyze",
            "--checkpoint",
            p(run),
            "--trained-norm",
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
            "--max-len",
            "16",
            "--output",
            p(out),
            "--device",
            "cpu",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        clsnorm(&args)
    };
    let read = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("analysis.json")).unwrap()).unwrap()
    };
    let an_isobn = tmp.path().join("an-isobn");
    ok(&analyse_trained(&runs[1].join("last"), &an_isobn, &[]));
    let doc = read(&an_isobn);
    let names: Vec<&str> = doc["normalizer_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "normalizer.num_batches_tracked",
            "normalizer.running_cov",
            "normalizer.running_std"
        ]
    );
    // Four updates: four training batches went through the normalizer.
    assert_eq!(doc["normalizer_state"][0]["value"], 4.0);
    assert_eq!(
        doc["normalizer_state"][1]["shape"],
        serde_json::json!([32, 32])
    );
    assert_eq!(doc["sources"]["pooler"]["normalized"]["trained"], true);
    assert!(doc["sources"]["hidden"].get("normalized").is_none());
    let md = std::fs::read_to_string(an_isobn.join("analysis.md")).unwrap();
    assert!(
        md.contains("Saved state of the normalizer (trained-isobn)"),
        "{md}"
    );
    assert!(an_isobn.join("pooler_corr_trained-isobn.png").is_file());
    // IsoBN rescales the pooler output: the statistics after it differ from the raw ones.
    let pooler = &doc["sources"]["pooler"];
    assert_ne!(
        pooler["raw"]["mean_norm"],
        pooler["normalized"]["stats"]["mean_norm"]
    );
    // `none` is the identity: after equals before, exactly.
    let an_none = tmp.path().join("an-none");
    ok(&analyse_trained(&runs[0].join("last"), &an_none, &[]));
    let doc = read(&an_none);
    let pooler = &doc["sources"]["pooler"];
    assert_eq!(pooler["raw"], pooler["normalized"]["stats"]);
    assert_eq!(doc["normalizer_state"], serde_json::json!([]));
    // The source must be the one the normalizer was trained on; no --norm beside it; and it
    // needs a checkpoint.
    fails(
        &analyse_trained(
            &runs[1].join("last"),
            &tmp.path().join("x"),
            &["--cls-source", "hidden"],
        ),
        "--cls-source pooler or both",
    );
    fails(
        &analyse_trained(
            &runs[1].join("last"),
            &tmp.path().join("x"),
            &["--norm", "center"],
        ),
        "cannot be used with",
    );
    fails(
        &clsnorm(&[
            "analyze",
            "--trained-norm",
            "--task",
            "sst2",
            "--data-dir",
            p(&data),
        ]),
        "--checkpoint",
    );
    let pics = tmp.path().join("pics");
    let summary: serde_json::Value = serde_json::from_str(&ok(&clsnorm(&[
        "compare-grads",
        p(&runs[0]),
        p(&runs[1]),
        "--output",
        p(&pics),
    ])))
    .unwrap();
    assert_eq!(summary["isobn"]["updates"], 4);
    assert!(pics.join("grads_cls.png").is_file() && pics.join("grads_global.svg").is_file());
    fails(
        &clsnorm(&["compare-grads", p(&runs[0]), p(&tmp.path().join("nothing"))]),
        "--trace-grads",
    );
}

#[test]
fn head_bias_init_prior_reaches_the_trained_head() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("m"), tmp.path().join("glue"));
    common::tiny_model_dir(&model, 3);
    common::write_toy_sst(&data, 40, 8, 2);
    // Unbalance the classes, so that the prior differs between them.
    let train_file = data.join("SST-2/train.tsv");
    let mut text = std::fs::read_to_string(&train_file).unwrap();
    text.push_str(&"a good movie\t1\n".repeat(12));
    std::fs::write(&train_file, text).unwrap();
    let bias_after_one_tiny_update = |init: &str| {
        let run = tmp.path().join(init);
        ok(&clsnorm(&toy_finetune(
            &model,
            &data,
            &[
                "--max-steps",
                "1",
                "--lr",
                "1e-12",
                "--threads",
                "1",
                "--head-bias-init",
                init,
                "--output",
                p(&run),
            ],
        )));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["head"]["bias_init"], init);
        let head =
            tch::Tensor::read_safetensors(run.join("last").join("head.safetensors")).unwrap();
        let (_, bias) = head
            .into_iter()
            .find(|(n, _)| n == "classifier.bias")
            .unwrap();
        Vec::<f64>::try_from(bias.to_kind(tch::Kind::Double)).unwrap()
    };
    let task = clsnorm::data::glue_task("sst2").unwrap();
    let opts = clsnorm::data::ReadOptions {
        skip_bad_rows: false,
        require_label: true,
    };
    let train = clsnorm::data::read_dataset(&train_file, &task, opts).unwrap();
    let prior = clsnorm::classifier::label_prior(&task.labels, &train).unwrap();
    assert!(
        (prior[0] - prior[1]).abs() > 1e-3,
        "the toy classes should not be balanced"
    );
    for (init, want) in [("zero", vec![0.0, 0.0]), ("prior", prior)] {
        let got = bias_after_one_tiny_update(init);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{init}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn protocol_options_of_other_codebases_are_applied_and_recorded() {
    // Draws from libtorch's global generator, as the other tests here do.
    let _guard = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("m"), tmp.path().join("glue"));
    common::tiny_model_dir(&model, 4);
    // 20 examples in batches of 8: 3 batches an epoch, the last of 4 examples.
    common::write_toy_sst(&data, 20, 4, 2);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let args = toy_finetune(
            &model,
            &data,
            &[
                &["--epochs", "2", "--threads", "1"],
                extra,
                &["--output", p(&out)],
            ]
            .concat(),
        );
        ok(&clsnorm(&args));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let sm: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let head = clsnorm::encoder::weights::read_safetensors(&out.join("best/head.safetensors"))
            .unwrap();
        (cfg, sm, head)
    };
    let (cfg, sm, _) = run("default", &[]);
    assert_eq!(sm["global_steps"], 6);
    assert_eq!(cfg["train"]["drop_last"], false);
    assert_eq!(cfg["train"]["warmup_rounding"], "ceil");
    assert_eq!(cfg["head"]["classifier_init"], "hf");
    // The versions of this build, not constants.
    let installed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deps/libtorch/torch/version.py"),
    )
    .unwrap();
    let v = cfg["libtorch_version"].as_str().unwrap();
    assert!(
        v.starts_with("2.13.0") && installed.contains(&format!("'{v}'")),
        "{v}"
    );
    assert_eq!(cfg["tch_version"], "0.26.0");
    let (cfg, sm, _) = run(
        "isobn-protocol",
        &[
            "--drop-last",
            "--warmup-rounding",
            "floor",
            "--classifier-init",
            "torch",
        ],
    );
    // The partial batch is dropped: 2 updates an epoch.
    assert_eq!(sm["global_steps"], 4);
    assert_eq!(cfg["train"]["drop_last"], true);
    assert_eq!(cfg["train"]["warmup_rounding"], "floor");
    assert_eq!(cfg["head"]["classifier_init"], "torch");
}

/// Without --model, clsnorm finds all-MiniLM-L6-v2 from any working directory (the checkout's
/// `models/`, else the Hugging Face cache); what is written as a path is never taken for a Hub
/// id.
#[test]
fn the_default_model_is_found_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(args)
            .current_dir(tmp.path())
            .env("HF_HUB_CACHE", tmp.path().join("no-cache"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let o = run(&["embed", "hello world"]);
    let out: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert!(
        out["model"]
            .as_str()
            .unwrap()
            .ends_with("models/all-MiniLM-L6-v2"),
        "{}",
        out["model"]
    );
    for path in ["./nope", "../nope", "/nope/x", "a/b/c"] {
        let o = run(&["embed", "--model", path, "hi"]);
        fails(&o, &format!("--model \"{path}\": no such directory"));
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("cache"),
            "{path}"
        );
    }
}

/// Every command's help reads as text: no rustdoc link syntax from doc comments, and
/// finetune's options grouped under headings in the order a run is set up.
#[test]
fn help_is_plain_text_and_finetune_is_grouped() {
    for cmd in [
        "finetune",
        "sweep",
        "analyze",
        "embed",
        "predict",
        "evaluate",
        "export",
        "fetch",
        "report",
        "compare-grads",
    ] {
        let help = ok(&clsnorm(&[cmd, "--help"]));
        assert!(
            !help.contains("[`") && !help.contains("`]"),
            "{cmd}: {help}"
        );
    }
    let help = ok(&clsnorm(&["finetune", "--help"]));
    let at = |h: &str| {
        help.find(&format!("\n{h}:\n"))
            .unwrap_or_else(|| panic!("no heading {h}: {help}"))
    };
    let order = [
        "Model",
        "Data",
        "Training",
        "Evaluation",
        "Normalizer and head",
        "Output",
    ]
    .map(at);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Each option under its own heading.
    for (opt, heading) in [
        ("--grad-accum", "Training"),
        ("--patience", "Evaluation"),
        ("--norm-opt", "Normalizer and head"),
        ("--resume", "Output"),
        ("--data-dir", "Data"),
        ("--precision", "Model"),
    ] {
        let pos = help.find(&format!("  {opt} ")).unwrap();
        let before = order
            .iter()
            .zip([
                "Model",
                "Data",
                "Training",
                "Evaluation",
                "Normalizer and head",
                "Output",
            ])
            .rfind(|(p, _)| **p < pos)
            .unwrap()
            .1;
        assert_eq!(before, heading, "{opt}");
    }
}

/// The OpenMP wait policy a `clsnorm finetune` process ends up with (after the re-execution
/// that may set it), read from its environment while it runs.
fn openmp_policy_of(extra_env: &[(&str, &str)]) -> Option<String> {
    let s = common::setup();
    let out = s.root.join("run");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.max(2).to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"));
    cmd.args(toy_finetune(&s.model, &s.data, &["--output", p(&out)]))
        .args(["--threads", &threads, "--epochs", "3"])
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let environ = format!("/proc/{}/environ", child.id());
    let mut policy = None;
    // The first process reads the machine's load for ~20 ms, then re-executes itself (same
    // pid) or goes on; the run lasts much longer than that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(10));
        if let Ok(bytes) = std::fs::read(&environ) {
            policy = bytes
                .split(|&b| b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix("OMP_WAIT_POLICY=").map(str::to_string));
        }
        if policy.is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    policy
}

/// With another process busy on the machine, a run on every core gets sleeping OpenMP threads
/// (spinning ones would take time slices from the thread with work); a policy the user set is
/// kept.
#[test]
fn a_busy_machine_gets_sleeping_openmp_threads() {
    let mut busy = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let chosen = openmp_policy_of(&[]);
    let kept = openmp_policy_of(&[("OMP_WAIT_POLICY", "ACTIVE")]);
    let _ = busy.kill();
    let _ = busy.wait();
    assert_eq!(chosen.as_deref(), Some("PASSIVE"));
    assert_eq!(kept.as_deref(), Some("ACTIVE"));
}
