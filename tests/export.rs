//! `clsnorm export` (issue 43): every family, with `none` and each normalizer, on both
//! `--cls-source` values, exported and compared with what transformers computes on the
//! exported folder.
//!
//! CI has no PyTorch, so transformers' side is a committed fixture: with
//! `CLSNORM_WRITE_EXPORTS=DIR` this test writes each case's export there, and
//! `bench/export_golden.py DIR` (transformers, in `bench/.venv`) writes the logits it computes
//! into `tests/fixtures/export/transformers.json`. The checkpoints are built from formulas
//! (weights, head, normalizer state; no training), so CI rebuilds exactly what was exported
//! here, to float rounding; the fixture also records the remote code's hash, so a change to
//! `modeling_clsnorm.py` without new logits fails.
mod common;

use std::path::{Path, PathBuf};

use clsnorm::classifier::{BiasInit, Classifier, ClassifierInit, ClsSource, HeadConfig};
use clsnorm::data::{Format, LabelSpace, TaskSpec};
use clsnorm::train::checkpoint::{self, CheckpointMeta};

const FAMILIES: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "electra",
    "distilbert",
    "deberta-v2",
    "modernbert",
];
const NORMS: &[&str] = &[
    "none",
    "center",
    "standardize",
    "batchnorm",
    "layernorm",
    "isobn",
    "whiten",
    "l2",
];
/// Singles, and pairs for the pair cases (the first text, then its second).
const TEXTS: &[(&str, &str)] = &[
    ("the cat sat on the mat", "a dog was not very good"),
    ("good movie", "bad"),
    ("it was not a very good movie , the dog sat", "the mat"),
];

/// One exported checkpoint of the matrix.
struct Case {
    family: &'static str,
    norm: &'static str,
    source: ClsSource,
    /// Sentence pairs (and a regression head) instead of singles into three classes.
    pairs: bool,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}-{}-{}{}",
            self.family,
            self.norm,
            match self.source {
                ClsSource::Pooler => "pooler",
                ClsSource::Hidden => "hidden",
            },
            if self.pairs { "-pairs" } else { "" }
        )
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for family in FAMILIES {
        for norm in NORMS {
            for source in [ClsSource::Pooler, ClsSource::Hidden] {
                v.push(Case {
                    family,
                    norm,
                    source,
                    pairs: false,
                });
            }
        }
        // Pairs and regression, once a family: the plain class and the remote code.
        for norm in ["none", "isobn"] {
            v.push(Case {
                family,
                norm,
                source: ClsSource::Pooler,
                pairs: true,
            });
        }
    }
    v
}

/// `sin(0.37 j + k)` scaled: the formula values of a tensor of `shape`.
fn formula(shape: &[i64], k: f64, scale: f64, offset: f64) -> tch::Tensor {
    let n: i64 = shape.iter().product();
    ((tch::Tensor::arange(n, (tch::Kind::Double, tch::Device::Cpu)) * 0.37 + k).sin() * scale
        + offset)
        .to_kind(tch::Kind::Float)
        .reshape(shape)
}

/// A model folder of `family`: its fixture's tokenizer and config (BERT: a tiny config and
/// vocabulary), formula weights.
fn model_dir(root: &Path, family: &str) -> PathBuf {
    if family != "bert" {
        return common::family_model_dir(root, family, "small");
    }
    let dir = root.join("bert-small");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = clsnorm::encoder::BertConfig::tiny(common::TINY_VOCAB.len() as i64, 32, 2, 4);
    std::fs::write(dir.join("config.json"), cfg.to_hf_json().to_string()).unwrap();
    common::write_tiny_vocab(&dir);
    let w = common::formula_weights(&dir);
    clsnorm::encoder::weights::write_safetensors(&dir.join("model.safetensors"), &w).unwrap();
    dir
}

/// The checkpoint of `case`: formula encoder, head and normalizer state (a covariance that is
/// positive definite, variances positive, five batches tracked).
fn checkpoint_of(root: &Path, case: &Case) -> PathBuf {
    let registry = clsnorm::Registry::builtin();
    let model = model_dir(root, case.family);
    let encoder =
        clsnorm::encoder::Encoder::load_with(&model, tch::Device::Cpu, false, &registry.families)
            .unwrap();
    let labels = if case.pairs {
        LabelSpace::Regression
    } else {
        LabelSpace::Classes(vec!["neg".into(), "mid".into(), "pos".into()])
    };
    let mut task = TaskSpec::custom(
        "toy",
        Format::Jsonl,
        true,
        "text",
        case.pairs.then_some("text_pair"),
        "label",
        case.pairs,
        "train.jsonl",
        Some("dev.jsonl"),
    )
    .unwrap();
    if let LabelSpace::Classes(c) = &labels {
        task.set_classes(c.clone());
    }
    let head = HeadConfig {
        labels,
        cls_source: case.source,
        norm: registry
            .normalizers
            .config(case.norm, &Default::default())
            .unwrap(),
        dropout: 0.1,
        bias_init: BiasInit::Zero,
        classifier_init: ClassifierInit::Hf,
    };
    let clf = Classifier::new(encoder, head.clone(), 7, &registry.normalizers).unwrap();
    let mut vars: Vec<(String, tch::Tensor)> = clf.head_vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (k, (name, t)) in vars.iter().enumerate() {
            let shape = t.size();
            let k = k as f64;
            let value = match name.rsplit('.').next().unwrap_or("") {
                "running_cov" => {
                    let h = shape[0];
                    let b = formula(&[h, h], k, 0.5, 0.0);
                    b.matmul(&b.tr()) / h as f64
                        + tch::Tensor::eye(h, (tch::Kind::Float, tch::Device::Cpu)) * 0.05
                }
                "var" | "running_var" => formula(&shape, k, 0.3, 0.6),
                "running_std" => formula(&shape, k, 0.2, 0.5),
                "num_batches_tracked" => tch::Tensor::from(5f32),
                "scale" => formula(&shape, k, 0.0, 3.0),
                "weight" if name.starts_with("normalizer.") => formula(&shape, k, 0.1, 1.0),
                _ => formula(&shape, k, 0.2, 0.0),
            };
            let mut t = t.shallow_clone();
            t.copy_(&value.reshape(shape.as_slice()));
        }
    });
    let dir = root.join("checkpoints").join(case.name());
    let meta = CheckpointMeta {
        clsnorm_version: env!("CARGO_PKG_VERSION").into(),
        task,
        head,
        max_len: 32,
        state: Default::default(),
    };
    let tok = clsnorm::tokenize::TokenizerFiles::read(&model).unwrap();
    checkpoint::save(&dir, &clf, &meta, None, &tok).unwrap();
    dir
}

/// The texts of a case as the JSON lines `predict` reads.
fn input(root: &Path, pairs: bool) -> PathBuf {
    let path = root.join(if pairs {
        "pairs.jsonl"
    } else {
        "singles.jsonl"
    });
    let lines: Vec<String> = TEXTS
        .iter()
        .map(|(a, b)| {
            if pairs {
                serde_json::json!({"text": a, "text_pair": b}).to_string()
            } else {
                serde_json::json!({"text": a}).to_string()
            }
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// clsnorm's logits for the case's texts, as `predict` computes them.
fn clsnorm_logits(checkpoint: &Path, pairs: bool) -> Vec<Vec<f64>> {
    let registry = clsnorm::Registry::builtin();
    let (model, meta) = checkpoint::load_model(checkpoint, tch::Device::Cpu, &registry).unwrap();
    let tok = clsnorm::tokenize::TextTokenizer::load(checkpoint, meta.max_len).unwrap();
    let encs: Vec<_> = TEXTS
        .iter()
        .map(|(a, b)| tok.encode(a, pairs.then_some(*b)).unwrap())
        .collect();
    let logits = clsnorm::eval::logits(&model, &encs, 8, tok.pad_id()).unwrap();
    Vec::<Vec<f64>>::try_from(logits.to_kind(tch::Kind::Double)).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[test]
fn exported_folders_compute_what_clsnorm_computes_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let write_to = std::env::var_os("CLSNORM_WRITE_EXPORTS").map(PathBuf::from);
    let fixture_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export/transformers.json");
    let fixture: serde_json::Value = match &write_to {
        Some(_) => serde_json::Value::Null,
        None => serde_json::from_slice(&std::fs::read(&fixture_path).unwrap()).unwrap(),
    };
    if write_to.is_none() {
        assert_eq!(
            fixture["modeling_sha256"],
            sha256(clsnorm::export::MODELING_TEMPLATE.as_bytes()).as_str(),
            "modeling_clsnorm.py changed since transformers' logits were computed: run this \
             test with CLSNORM_WRITE_EXPORTS=DIR, then bench/export_golden.py DIR"
        );
    }
    let mut worst = (0.0f64, String::new());
    for case in cases() {
        let name = case.name();
        let ck = checkpoint_of(root, &case);
        let out = match &write_to {
            Some(d) => d.join(&name),
            None => root.join("exports").join(&name),
        };
        common::ok(&common::clsnorm(&[
            "export",
            common::p(&ck),
            "--output",
            common::p(&out),
        ]));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let plain = case.norm == "none" && case.source == ClsSource::Pooler;
        // Plain transformers classes where the head is the family's own; remote code otherwise.
        assert_eq!(
            out.join("modeling_clsnorm.py").exists(),
            !plain,
            "{name}: {config}"
        );
        assert_eq!(config["auto_map"].is_object(), !plain, "{name}");
        assert_eq!(
            config["problem_type"],
            if case.pairs {
                "regression"
            } else {
                "single_label_classification"
            }
        );
        if !case.pairs {
            assert_eq!(config["id2label"]["2"], "pos", "{name}");
            assert_eq!(config["label2id"]["mid"], 1, "{name}");
        }
        let files: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            files.iter().all(|f| !f.ends_with(".bin")) && files.contains(&"README.md".into()),
            "{name}: {files:?}"
        );
        let ours = clsnorm_logits(&ck, case.pairs);
        if let Some(dir) = &write_to {
            std::fs::write(
                dir.join(&name).join("texts.json"),
                serde_json::json!({"texts": TEXTS, "pairs": case.pairs}).to_string(),
            )
            .unwrap();
            continue;
        }
        let theirs: Vec<Vec<f64>> =
            serde_json::from_value(fixture["cases"][&name]["logits"].clone())
                .unwrap_or_else(|e| panic!("{name}: not in {}: {e}", fixture_path.display()));
        // Logits of order 1 from a model of a few layers in fp32, computed by two libraries
        // (and on another CPU than the fixture's): agreement to 1e-4 is float rounding.
        for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
            let d = (a - b).abs() / b.abs().max(1.0);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        assert_eq!(ours.len(), theirs.len(), "{name}");
    }
    eprintln!(
        "largest difference from transformers: {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-4, "{worst:?}");
}

/// `predict` through the binary on an export's checkpoint gives transformers' probabilities
/// (the fixture's logits, softmaxed); and what `export` must refuse, it refuses before writing.
#[test]
fn predict_agrees_and_export_refuses_what_it_must_not_touch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export/transformers.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let case = Case {
        family: "deberta-v2",
        norm: "isobn",
        source: ClsSource::Hidden,
        pairs: false,
    };
    let ck = checkpoint_of(root, &case);
    let out = common::ok(&common::clsnorm(&[
        "predict",
        "--checkpoint",
        common::p(&ck),
        "--input",
        common::p(&input(root, false)),
        "--threads",
        "1",
    ]));
    let logits: Vec<Vec<f64>> =
        serde_json::from_value(fixture["cases"][case.name()]["logits"].clone()).unwrap();
    for (line, l) in out.lines().zip(&logits) {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let z: f64 = l.iter().map(|v| v.exp()).sum();
        for (name, v) in ["neg", "mid", "pos"].iter().zip(l) {
            let ours = p["probabilities"][name].as_f64().unwrap();
            assert!((ours - v.exp() / z).abs() < 1e-5, "{line} vs {l:?}");
        }
    }

    // Into a folder that is not an export: refused, nothing written.
    let mine = root.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let before = common::snapshot(&mine);
    common::fails(
        &common::clsnorm(&["export", common::p(&ck), "--output", common::p(&mine)]),
        "is not empty and is not a clsnorm export folder",
    );
    common::assert_same(&before, &common::snapshot(&mine));
    // Into the checkpoint itself, or a run folder.
    common::fails(
        &common::clsnorm(&["export", common::p(&ck), "--output", common::p(&ck)]),
        "not a clsnorm export folder",
    );
    let data = root.join("glue");
    common::write_toy_sst(&data, 16, 8, 1);
    let run = root.join("run");
    let model = model_dir(root, "bert");
    common::ok(&common::clsnorm(&[
        "finetune",
        "--model",
        common::p(&model),
        "--task",
        "sst2",
        "--data-dir",
        common::p(&data),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--norm",
        "center",
        "--threads",
        "1",
        "--quiet",
        "--output",
        common::p(&run),
    ]));
    // Every finished run has its card; `export RUN` takes its best checkpoint.
    let card = std::fs::read_to_string(run.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\n") && card.contains("normalizer-center"),
        "{card}"
    );
    assert!(card.contains("| 1 | dev |"), "{card}");
    common::fails(
        &common::clsnorm(&["export", common::p(&run), "--output", common::p(&run)]),
        "not a clsnorm export folder",
    );
    common::fails(
        &common::clsnorm(&[
            "export",
            common::p(&run),
            "--output",
            common::p(&run.join("best/x")),
        ]),
        "inside the run folder",
    );
    let ex = root.join("ex");
    common::ok(&common::clsnorm(&[
        "export",
        common::p(&run),
        "--output",
        common::p(&ex),
    ]));
    assert!(ex.join("modeling_clsnorm.py").is_file());
    let card = std::fs::read_to_string(ex.join("README.md")).unwrap();
    assert!(
        card.contains("trust_remote_code=True") && card.contains("model-index"),
        "{card}"
    );
    // Again into the same folder, from a plain checkpoint: its remote code goes.
    let plain = checkpoint_of(
        root,
        &Case {
            family: "bert",
            norm: "none",
            source: ClsSource::Pooler,
            pairs: false,
        },
    );
    common::ok(&common::clsnorm(&[
        "export",
        common::p(&plain),
        "--output",
        common::p(&ex),
    ]));
    assert!(!ex.join("modeling_clsnorm.py").exists());

    // A checkpoint whose head does not match its config (three classes said, two stored).
    let bad = root.join("bad");
    copy_dir(&run.join("best"), &bad);
    let meta_path = bad.join("clsnorm.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let three = serde_json::json!({"classes": ["0", "1", "2"]});
    meta["task"]["labels"] = three.clone();
    meta["head"]["labels"] = three;
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("manifest.json")).unwrap()).unwrap();
    manifest["clsnorm.json"] = sha256(&std::fs::read(&meta_path).unwrap()).into();
    std::fs::write(bad.join("manifest.json"), manifest.to_string()).unwrap();
    let target = root.join("never");
    common::fails(
        &common::clsnorm(&["export", common::p(&bad), "--output", common::p(&target)]),
        "classifier.weight has shape",
    );
    assert!(!target.exists(), "a refused export wrote its output");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
