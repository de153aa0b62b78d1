//! Model families against Hugging Face `transformers`: token ids, first-token state and head
//! input of padded single sentences and pairs, at two sizes per family (golden values from
//! `bench/golden/families.py`, committed in `tests/fixtures/families`); and fine-tuning, saving
//! and exact resume on each family.
mod common;

use std::path::Path;

use clsnorm::batch::Batch;
use clsnorm::classifier::{ClsSource, HeadConfig};
use clsnorm::data::{glue_task, read_split, ReadOptions};
use clsnorm::encoder::{weights, Encoder, Families};
use clsnorm::tokenize::{Encoded, TextTokenizer};
use clsnorm::train::{finetune, Finetune, TrainConfig};
use clsnorm::Registry;
use tch::{Device, Kind, Tensor};

const FAMILIES: &[&str] = &[
    "roberta",
    "xlm-roberta",
    "electra",
    "distilbert",
    "modernbert",
    "deberta-v2",
];
const SIZES: &[&str] = &["small", "h256"];

use common::{family_fixture as fixture, family_model_dir as model_dir, formula_weights};

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(t.to_kind(Kind::Double)).unwrap()
}

#[test]
fn first_token_state_and_head_input_equal_transformers() {
    // Loading seeds libtorch's global generator (the random init under the weights).
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(family).join("golden.json")).unwrap())
                .unwrap();
        let examples: Vec<(String, Option<String>)> =
            serde_json::from_value(golden["examples"].clone()).unwrap();
        let want_ids: Vec<Vec<i64>> = serde_json::from_value(golden["input_ids"].clone()).unwrap();
        for size in SIZES {
            let dir = model_dir(tmp.path(), family, size);
            let enc = Encoder::load(&dir, Device::Cpu, false).unwrap();
            let tok = TextTokenizer::load(&dir, 64).unwrap();
            enc.limits().check_tokenizer(&tok, true).unwrap();
            let encs: Vec<Encoded> = examples
                .iter()
                .map(|(a, b)| tok.encode(a, b.as_deref()).unwrap())
                .collect();
            let ids: Vec<Vec<i64>> = encs.iter().map(|e| e.input_ids.clone()).collect();
            assert_eq!(ids, want_ids, "{family}: token ids");
            let refs: Vec<&Encoded> = encs.iter().collect();
            let batch = Batch::collate(&refs, tok.pad_id(), &enc.limits(), Device::Cpu).unwrap();
            let out = tch::no_grad(|| enc.forward(&batch, false));
            // The last layer computing the first token alone gives the same head input.
            let first = tch::no_grad(|| enc.forward_first_token(&batch, false));
            for (a, b) in [
                (&out.cls, &first.cls),
                (&out.pooler_output, &first.pooler_output),
            ] {
                // f32 rounding of matmuls and attention kernels of another shape (measured
                // up to 2.6e-6 here), within the 1e-5 this test allows against transformers.
                let scale = a.abs().max().double_value(&[]).max(1.0);
                let d = common::max_abs_diff(a, b);
                assert!(
                    d < 1e-5 * scale,
                    "{family} {size}: first-token-only differs by {d}"
                );
            }
            for (what, got) in [("cls", &out.cls), ("pooler", &out.pooler_output)] {
                let want: Vec<Vec<f64>> =
                    serde_json::from_value(golden["sizes"][size][what].clone()).unwrap();
                let got = rows(got);
                let diff = got
                    .iter()
                    .flatten()
                    .zip(want.iter().flatten())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(diff < 1e-5, "{family} {size} {what}: max |diff| {diff}");
            }
        }
    }
}

#[test]
fn a_checkpoint_without_a_pooler_loads_with_a_fresh_one() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "roberta", "small");
    // As a masked-LM checkpoint: `roberta.`-prefixed, an `lm_head`, no pooler.
    let w: Vec<(String, Tensor)> = formula_weights(&dir)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("pooler."))
        .map(|(n, t)| (format!("roberta.{n}"), t))
        .chain(std::iter::once((
            "lm_head.bias".to_string(),
            Tensor::zeros([400], (Kind::Float, Device::Cpu)),
        )))
        .collect();
    weights::write_safetensors(&dir.join(weights::SAFETENSORS_FILE), &w).unwrap();
    let enc = Encoder::load(&dir, Device::Cpu, false).unwrap();
    let vars = enc.vs.variables();
    let std = vars["pooler.dense.weight"].std(true).double_value(&[]);
    assert!((std - 0.02).abs() < 0.004, "HF's initialisation: std {std}");
    assert_eq!(
        vars["pooler.dense.bias"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    // Every other weight is the checkpoint's.
    assert!(vars["encoder.layer.1.output.dense.weight"].equal(
        &w[w.iter()
            .position(|(n, _)| n == "roberta.encoder.layer.1.output.dense.weight")
            .unwrap()]
        .1
    ));
    // A wrong tokenizer pad id is refused before anything is encoded.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    cfg["pad_token_id"] = 3.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let enc = Encoder::load(&dir, Device::Cpu, false).unwrap();
    let tok = TextTokenizer::load(&dir, 32).unwrap();
    let e = enc
        .limits()
        .check_tokenizer(&tok, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pads with id 1, but the model's pad_token_id is 3"),
        "{e}"
    );
}

fn run(model: &Path, data: &Path, out: &Path, stop_after: Option<usize>, resume: bool) {
    let task = glue_task("sst2").unwrap();
    let (train, dev) = task.paths(Some(&data.join("SST-2")));
    let opts = ReadOptions {
        skip_bad_rows: false,
        require_label: true,
    };
    finetune(Finetune {
        model_dir: model,
        head: HeadConfig {
            labels: task.labels.clone(),
            cls_source: ClsSource::Pooler,
            norm: Registry::builtin().normalizers.defaults("isobn").unwrap(),
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
            lr: 2e-3,
            epochs: 2,
            batch_size: 8,
            max_len: 32,
            ..TrainConfig::default()
        },
        output: out,
        registry: Registry::builtin(),
        resume,
        device: Device::Cpu,
        threads: 1,
        allow_pickle: false,
        sources: Default::default(),
        progress: false,
        stop_after,
        stop: None,
    })
    .unwrap();
}

#[test]
fn every_family_fine_tunes_saves_and_resumes_exactly() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 40, 16, 4);
    for family in FAMILIES {
        let model = model_dir(tmp.path(), family, "small");
        let full = tmp.path().join(format!("{family}-full"));
        run(&model, &data, &full, None, false);
        let losses: Vec<f64> = std::fs::read_to_string(full.join("train_loss.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert!(
            losses.len() >= 2 && losses[0] != losses[losses.len() - 1],
            "{family}: {losses:?}"
        );
        // The saved checkpoint is a model directory of the same family.
        let back = Encoder::load(&full.join("best"), Device::Cpu, false).unwrap();
        assert_eq!(back.config.to_hf_json()["model_type"], *family);
        let part = tmp.path().join(format!("{family}-part"));
        run(&model, &data, &part, Some(3), false);
        run(&model, &data, &part, None, true);
        common::same_checkpoint_weights(&full.join("last"), &part.join("last"));
        assert_eq!(
            std::fs::read_to_string(full.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["primary"].clone())
                .collect::<Vec<_>>(),
            std::fs::read_to_string(part.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["primary"].clone())
                .collect::<Vec<_>>(),
            "{family}"
        );
    }
}

#[test]
fn a_model_in_the_hugging_face_cache_is_found_by_its_id() {
    use clsnorm::hub::{self, cache, HubEnv, RepoRef};
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let hub_dir = tmp.path().join("hf/hub");
    // The cache layout huggingface_hub writes: refs/main names the snapshot in use.
    let repo = hub_dir.join("models--FacebookAI--tiny-roberta");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/old")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let built = model_dir(tmp.path(), "roberta", "small");
    std::fs::rename(&built, &snap).unwrap();

    let hf_home = tmp.path().join("hf").to_str().unwrap().to_string();
    let var = |v: &str| match v {
        "HF_HOME" => Some(hf_home.clone()),
        "HF_HUB_OFFLINE" => Some("1".to_string()),
        _ => None,
    };
    let cache_dir = cache::cache_dir(var).unwrap();
    assert_eq!(cache_dir, hub_dir);
    let find = |id: &str| cache::find_model(&cache_dir, &RepoRef::model(id).unwrap(), false);
    for id in ["FacebookAI/tiny-roberta", "tiny-roberta"] {
        let found = find(id).unwrap().unwrap();
        assert_eq!(found.dir, snap);
        let src = found.source.unwrap();
        assert_eq!(
            (src.repo.as_str(), src.commit.as_str()),
            ("FacebookAI/tiny-roberta", "0123abcd")
        );
    }
    assert!(find("FacebookAI/absent").unwrap().is_none());
    let env = HubEnv::from_env(var).unwrap();
    let e = hub::model(Path::new("FacebookAI/absent"), &env, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not in the Hugging Face cache")
            && e.contains("models--FacebookAI--absent")
            && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
    // Two organisations' copies: a bare name is ambiguous.
    std::fs::create_dir_all(hub_dir.join("models--other--tiny-roberta/snapshots/x")).unwrap();
    let e = find("tiny-roberta").unwrap_err().to_string();
    assert!(e.contains("matches several cached models"), "{e}");
    for bad in [
        "../x",
        "a/b/c",
        "/nonexistent/dir",
        "org/x@a b",
        "org/x@../y",
    ] {
        let e = hub::model(Path::new(bad), &env, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no such directory (and not a Hub id"),
            "{bad}: {e}"
        );
    }

    // Through the binary: `--model ORG/NAME` with HF_HOME set, offline.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args([
            "embed",
            "--model",
            "FacebookAI/tiny-roberta",
            "--threads",
            "1",
        ])
        .arg("a fine movie .")
        .env("HF_HOME", tmp.path().join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&common::ok(&out)).unwrap();
    assert_eq!(v["model"], snap.to_str().unwrap());
    assert_eq!(v["cls"]["values"].as_array().unwrap().len(), 32);
}

#[test]
fn family_configs_are_checked_before_anything_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"model_type": "deberta-v2", "conv_kernel_size": 3}"#,
            "conv_kernel_size > 0",
        ),
        (
            r#"{"model_type": "deberta-v2", "relative_attention": true, "pos_att_type": ["c2p", "p2p"]}"#,
            "pos_att_type \"p2p\" is not supported",
        ),
        (
            r#"{"model_type": "modernbert", "hidden_size": 36, "num_attention_heads": 4}"#,
            "heads of an even size",
        ),
        (
            r#"{"model_type": "modernbert", "num_hidden_layers": 2, "layer_types": ["full_attention"]}"#,
            "layer_types has 1 entries for 2 layers",
        ),
        (
            r#"{"model_type": "distilbert", "sinusoidal_pos_embds": true}"#,
            "sinusoidal_pos_embds",
        ),
        (
            r#"{"model_type": "distilbert", "n_layers": 100000}"#,
            "n_layers must be from 1 to 1024",
        ),
        (
            r#"{"model_type": "electra", "embedding_size": -1}"#,
            "embedding_size must be a whole number",
        ),
        (
            r#"{"model_type": "roberta", "max_position_embeddings": 2, "pad_token_id": 1}"#,
            "leaves no position after the padding id",
        ),
        (
            r#"{"model_type": "gpt2"}"#,
            "model_type is \"gpt2\", but clsnorm implements",
        ),
        (r#"{"model_type": 7}"#, "model_type must be a string"),
    ];
    for (json, want) in cases {
        std::fs::write(tmp.path().join("config.json"), json).unwrap();
        let e = Families::builtin()
            .read_config(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("config.json"), "{json}: {e}");
    }
}

/// Every family (and BERT) through the binary in every precision: fine-tune a few updates,
/// evaluate the checkpoint and embed a pair, each in that precision, with finite numbers out.
#[test]
fn every_family_runs_every_command_in_every_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 24, 8, 5);
    let bert = tmp.path().join("bert-small");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&bert, 3);
    }
    let mut models = vec![("bert".to_string(), bert)];
    for family in FAMILIES {
        let _g = common::torch_rng_lock();
        models.push((family.to_string(), model_dir(tmp.path(), family, "small")));
    }
    let p = common::p;
    for (family, model) in &models {
        for precision in ["fp32", "bf16", "fp16"] {
            let what = format!("{family} in {precision}");
            let out = tmp.path().join(format!("run-{family}-{precision}"));
            let o = common::clsnorm(&[
                "finetune",
                "--model",
                p(model),
                "--task",
                "SST-2",
                "--data-dir",
                p(&data),
                "--output",
                p(&out),
                "--precision",
                precision,
                "--max-steps",
                "2",
                "--max-len",
                "16",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--quiet",
            ]);
            assert!(
                o.status.success(),
                "{what}: finetune: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let o = common::clsnorm(&[
                "evaluate",
                "--checkpoint",
                p(&out.join("best")),
                "--data-dir",
                p(&data),
                "--precision",
                precision,
                "--threads",
                "1",
                "--device",
                "cpu",
            ]);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "{what}: evaluate: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                text.contains("accuracy") && !text.contains("null"),
                "{what}: {text}"
            );
            let o = common::clsnorm(&[
                "embed",
                "--model",
                p(model),
                "the cat sat",
                "on the mat",
                "--precision",
                precision,
                "--threads",
                "1",
                "--device",
                "cpu",
            ]);
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "{what}: embed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                !text.contains("null") && text.contains(precision),
                "{what}: {text}"
            );
        }
    }
}

/// The last layer computing only the first token is exact: head input and every parameter's
/// gradient equal those of the full computation (to f32 rounding), for every family (those
/// that keep the full forward trivially).
#[test]
fn the_first_token_only_last_layer_has_the_full_computations_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let bert = tmp.path().join("bert-small");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&bert, 3);
    }
    let mut models = vec![("bert".to_string(), bert)];
    for family in FAMILIES {
        let _g = common::torch_rng_lock();
        models.push((family.to_string(), model_dir(tmp.path(), family, "h256")));
    }
    for (family, dir) in &models {
        let enc = Encoder::load(dir, Device::Cpu, false).unwrap();
        let tok = TextTokenizer::load(dir, 32).unwrap();
        let encs: Vec<Encoded> = [
            ("the cat sat on the mat", Some("a dog")),
            ("good movie", None),
            ("it was not very good at all, the film", Some("bad")),
        ]
        .iter()
        .map(|(a, b)| tok.encode(a, *b).unwrap())
        .collect();
        let refs: Vec<&Encoded> = encs.iter().collect();
        let batch = Batch::collate(&refs, tok.pad_id(), &enc.limits(), Device::Cpu).unwrap();
        let grads = |first: bool| -> Vec<Tensor> {
            let vars = enc.vs.trainable_variables();
            for v in &vars {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            // Eval mode (no dropout), with gradients: a loss on both head inputs.
            let out = if first {
                enc.forward_first_token(&batch, false)
            } else {
                enc.forward(&batch, false)
            };
            let w = Tensor::arange(out.cls.size()[1], (Kind::Float, Device::Cpu)).sin();
            let loss =
                (&out.cls * &w).sum(Kind::Float) + (&out.pooler_output * &w).sin().sum(Kind::Float);
            loss.backward();
            vars.iter().map(|v| v.grad().copy()).collect()
        };
        let (full, first) = (grads(false), grads(true));
        // Against the largest gradient: parameters that get (almost) none differ by rounding.
        let scale = full
            .iter()
            .map(|g| g.abs().max().double_value(&[]))
            .fold(0.0, f64::max);
        for (a, b) in full.iter().zip(&first) {
            let d = common::max_abs_diff(a, b);
            assert!(
                d <= 1e-5 * scale,
                "{family}: gradient differs by {d} (largest {scale})"
            );
        }
    }
}
