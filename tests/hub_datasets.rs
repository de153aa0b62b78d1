//! Any Hub classification dataset by name (issue 42): `--dataset ORG/NAME[:CONFIG][@REVISION]`
//! against the Hub stand-in: a card's configs, sharded splits, class names, sentence pairs, a
//! dataset only the Hub's Parquet conversion holds, CSV files split by their names; resume,
//! evaluate, offline and sweep; hostile repositories refused with their reasons.
mod common;

use std::path::{Path, PathBuf};

use common::hub_server::{Hf, HubRepo, HubServer};
use common::Col;

/// Words of the tiny vocabulary, different for each `i`.
fn words(i: usize, n: usize) -> String {
    let v = common::TINY_VOCAB;
    (0..n)
        .map(|k| v[5 + (i * 7 + k * 3) % 14])
        .collect::<Vec<_>>()
        .join(" ")
}

fn texts(from: usize, n: usize, len: usize) -> Vec<String> {
    (from..from + n).map(|i| words(i, len)).collect()
}

const CARD: &str = "---
license: mit
configs:
- config_name: sst
  data_files:
  - split: train
    path: sst/train-*
  - split: validation
    path: sst/validation-*
- config_name: pairs
  default: true
  data_files:
  - split: train
    path: pairs/train.parquet
  - split: test
    path: pairs/test.parquet
---
# Reviews

Two configs.
";

/// `org/reviews`: a card with two configs; `sst` keeps its training split in two shards and
/// names its classes; `pairs` (the default) holds sentence pairs of three classes and a
/// labelled test split, no validation.
fn reviews(root: &Path) -> HubRepo {
    let dir = root.join("reviews-src");
    std::fs::create_dir_all(dir.join("sst")).unwrap();
    std::fs::create_dir_all(dir.join("pairs")).unwrap();
    let sst = |name: &str, from: usize, n: usize| {
        common::write_parquet(
            &dir.join(format!("sst/{name}.parquet")),
            &[
                Col::Text("sentence", texts(from, n, 5)),
                Col::Int("label", (0..n).map(|i| (i % 2) as i64).collect()),
                Col::Int("idx", (from..from + n).map(|i| i as i64).collect()),
            ],
            Some(&["neg", "pos"]),
        )
    };
    sst("train-00000-of-00002", 0, 8);
    sst("train-00001-of-00002", 8, 6);
    sst("validation-00000-of-00001", 20, 6);
    let pairs = |name: &str, from: usize, n: usize| {
        common::write_parquet(
            &dir.join(format!("pairs/{name}.parquet")),
            &[
                Col::Text("premise", texts(from, n, 5)),
                Col::Text("hypothesis", texts(from + 3, n, 3)),
                Col::Int("label", (0..n).map(|i| (i % 3) as i64).collect()),
            ],
            Some(&["entailment", "neutral", "contradiction"]),
        )
    };
    pairs("train", 0, 12);
    pairs("test", 40, 6);
    std::fs::write(dir.join("README.md"), CARD).unwrap();
    HubRepo::from_dir("datasets", "org/reviews", 0xd1, &dir)
}

/// `org/scripted`: a dataset made by a script (no data files on `main`), which the Hub's
/// Parquet conversion holds under `refs/convert/parquet` (config `default`, two training
/// shards).
fn scripted(root: &Path) -> Vec<HubRepo> {
    let main = root.join("scripted-main");
    std::fs::create_dir_all(&main).unwrap();
    std::fs::write(main.join("scripted.py"), "import datasets\n").unwrap();
    std::fs::write(main.join("README.md"), "# A scripted dataset\n").unwrap();
    let conv = root.join("scripted-parquet");
    for split in ["train", "validation"] {
        std::fs::create_dir_all(conv.join(format!("default/{split}"))).unwrap();
    }
    let write = |file: &str, from: usize, n: usize| {
        common::write_parquet(
            &conv.join(file),
            &[
                Col::Text("text", texts(from, n, 4)),
                Col::Int("label", (0..n).map(|i| ((i + 1) % 2) as i64).collect()),
            ],
            Some(&["bad", "good"]),
        )
    };
    write("default/train/0000.parquet", 0, 6);
    write("default/train/0001.parquet", 6, 6);
    write("default/validation/0000.parquet", 30, 4);
    let mut converted = HubRepo::from_dir("datasets", "org/scripted", 0xd3, &conv);
    converted.branch = "refs/convert/parquet".into();
    vec![
        HubRepo::from_dir("datasets", "org/scripted", 0xd2, &main),
        converted,
    ]
}

/// `org/plain`: CSV files split by their names, string labels (classes found in the data).
fn plain(root: &Path) -> HubRepo {
    let dir = root.join("plain-src");
    std::fs::create_dir_all(&dir).unwrap();
    let csv = |from: usize, n: usize| {
        let mut s = String::from("text,label\n");
        for i in from..from + n {
            s.push_str(&format!("{},{}\n", words(i, 4), ["yes", "no"][i % 2]));
        }
        s
    };
    std::fs::write(dir.join("train.csv"), csv(0, 10)).unwrap();
    std::fs::write(dir.join("my_dev_file.csv"), csv(50, 4)).unwrap();
    HubRepo::from_dir("datasets", "org/plain", 0xd4, &dir)
}

fn config_json(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap()
}

fn finetune<'a>(model: &'a Path, dataset: &'a str, out: &'a Path) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        common::p(model),
        "--dataset",
        dataset,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-len",
        "32",
        "--threads",
        "1",
        "--quiet",
        "--output",
        common::p(out),
    ]
}

struct Stand {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    server: HubServer,
    hf: Hf,
}

fn stand(repos: impl FnOnce(&Path) -> Vec<HubRepo>) -> Stand {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("tiny");
    common::tiny_model_dir(&model, 1);
    let server = HubServer::start(repos(&root));
    let hf = Hf::new(&root, &server.endpoint);
    Stand {
        _tmp: tmp,
        root,
        model,
        server,
        hf,
    }
}

#[test]
fn a_hub_dataset_trains_by_name_from_its_cards_configs_and_shards() {
    let s = stand(|root| vec![reviews(root)]);
    let commit = format!("{:02x}", 0xd1).repeat(20);
    let run = s.root.join("run-sst");
    common::ok(&s.hf.run(&finetune(&s.model, "org/reviews:sst", &run)));
    let c = config_json(&run);
    assert_eq!(c["data_source"]["repo"], "org/reviews");
    assert_eq!(c["data_source"]["config"], "sst");
    assert_eq!(c["data_source"]["revision"], "main");
    assert_eq!(c["data_source"]["commit"], commit.as_str());
    assert_eq!(c["task"]["name"], "reviews-sst");
    // The ClassLabel's names, the two shards read as one split of 14 rows.
    assert_eq!(
        c["task"]["labels"]["classes"],
        serde_json::json!(["neg", "pos"])
    );
    assert_eq!(c["task"]["text"]["name"], "sentence");
    assert_eq!(c["train_file"]["rows"], 14);
    assert_eq!(c["train_file"]["more_files"].as_array().unwrap().len(), 1);
    assert_eq!(c["dev_files"][0][0], "validation");
    assert_eq!(c["dev_files"][0][1]["rows"], 6);
    // Only the config's files: never the other config's.
    let asked = s.server.requests();
    assert!(asked.iter().all(|p| !p.contains("pairs/")), "{asked:?}");
    common::ok(&s.hf.run(&[
        "evaluate",
        "--checkpoint",
        common::p(&run.join("best")),
        "--threads",
        "1",
    ]));

    // The default config: sentence pairs found by their names, three classes (macro F1), and
    // the labelled test split to evaluate on as it has no validation split.
    let pairs = s.root.join("run-pairs");
    common::ok(&s.hf.run(&finetune(&s.model, "org/reviews", &pairs)));
    let c = config_json(&pairs);
    assert_eq!(c["data_source"]["config"], "pairs");
    assert_eq!(c["task"]["text"]["name"], "premise");
    assert_eq!(c["task"]["text_pair"]["name"], "hypothesis");
    assert_eq!(c["dev_files"][0][0], "test");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pairs.join("summary.json")).unwrap()).unwrap();
    assert!(
        summary.to_string().contains("f1_macro"),
        "three classes are scored by macro F1: {summary}"
    );

    // Offline from the cache, with no server at all.
    let offline = Hf {
        endpoint: common::hub_server::dead_endpoint(),
        offline: true,
        ..Hf::new(&s.root, "")
    };
    common::ok(&offline.run(&finetune(
        &s.model,
        "org/reviews:sst",
        &s.root.join("run-offline"),
    )));
    // Not cached: the message says how to get it.
    let out = offline.run(&finetune(&s.model, "org/other", &s.root.join("x")));
    common::fails(&out, "clsnorm fetch --dataset org/other");

    // The cache gone: --resume fetches the same files of the same commit again.
    std::fs::remove_dir_all(&s.hf.home).unwrap();
    common::ok(&s.hf.run(&[
        "finetune",
        "--resume",
        common::p(&run),
        "--threads",
        "1",
        "--quiet",
    ]));
    assert!(s
        .hf
        .cache()
        .join("datasets--org--reviews/snapshots")
        .join(&commit)
        .join("sst/train-00001-of-00002.parquet")
        .is_file());
}

#[test]
fn a_scripted_dataset_trains_from_the_parquet_conversion_and_csv_files_from_their_names() {
    let s = stand(|root| {
        let mut r = scripted(root);
        r.push(plain(root));
        r
    });
    let run = s.root.join("run-scripted");
    common::ok(&s.hf.run(&finetune(&s.model, "org/scripted", &run)));
    let c = config_json(&run);
    assert_eq!(c["data_source"]["revision"], "refs/convert/parquet");
    assert_eq!(
        c["data_source"]["commit"],
        format!("{:02x}", 0xd3).repeat(20)
    );
    assert_eq!(c["data_source"]["config"], "default");
    assert_eq!(
        c["task"]["labels"]["classes"],
        serde_json::json!(["bad", "good"])
    );
    assert_eq!(c["train_file"]["rows"], 12);
    // huggingface_hub's layout for a ref with slashes.
    let refs =
        s.hf.cache()
            .join("datasets--org--scripted/refs/refs/convert/parquet");
    assert_eq!(
        std::fs::read_to_string(refs).unwrap(),
        format!("{:02x}", 0xd3).repeat(20)
    );

    let run = s.root.join("run-plain");
    common::ok(&s.hf.run(&finetune(&s.model, "org/plain", &run)));
    let c = config_json(&run);
    assert_eq!(c["task"]["format"], "csv");
    assert_eq!(
        c["task"]["labels"]["classes"],
        serde_json::json!(["no", "yes"])
    );
    assert_eq!(c["dev_files"][0][0], "validation");
    assert_eq!(c["dev_files"][0][1]["rows"], 4);

    // `fetch --dataset` fills the cache for offline runs.
    std::fs::remove_dir_all(&s.hf.home).unwrap();
    let out = common::ok(&s.hf.run(&["fetch", "--dataset", "org/scripted"]));
    assert!(out.contains("dataset org/scripted: org/scripted@"), "{out}");
    let offline = Hf {
        endpoint: common::hub_server::dead_endpoint(),
        offline: true,
        ..Hf::new(&s.root, "")
    };
    common::ok(&offline.run(&finetune(
        &s.model,
        "org/scripted",
        &s.root.join("run-offline"),
    )));
}

/// A repository whose card, files or names are hostile, and the reason each is refused.
#[test]
fn hostile_dataset_repos_and_options_are_refused_with_their_reasons() {
    let s = stand(|root| {
        let mut repos = vec![reviews(root)];
        let mut add = |id: &str, seed: u8, files: &[(&str, &[u8])]| {
            let dir = root.join(id.replace('/', "-"));
            for (name, bytes) in files {
                let path = dir.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            repos.push(HubRepo::from_dir("datasets", id, seed, &dir));
        };
        let bad_split = "---\nconfigs:\n- config_name: a\n  data_files:\n  - split: ../x\n    \
                         path: a/*\n---\n";
        add(
            "org/bad-split",
            0xe1,
            &[("README.md", bad_split.as_bytes()), ("a/t.parquet", b"x")],
        );
        let mut bomb = String::from("---\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("configs: *a9\n---\n");
        add(
            "org/bomb",
            0xe2,
            &[("README.md", bomb.as_bytes()), ("train.parquet", b"x")],
        );
        let shards: Vec<(String, Vec<u8>)> = (0..1001)
            .map(|i| (format!("data/train-{i:05}-of-01001.parquet"), vec![b'x']))
            .collect();
        let refs: Vec<(&str, &[u8])> = shards
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        add("org/shards", 0xe3, &refs);
        let many: Vec<(String, Vec<u8>)> = (0..10_000)
            .map(|i| (format!("data/train-{i:05}-of-10000.parquet"), vec![b'x']))
            .collect();
        let refs: Vec<(&str, &[u8])> = many
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        add("org/many", 0xe4, &refs);
        // No text: an image-like dataset of pixel values.
        let img = root.join("pixels");
        std::fs::create_dir_all(img.join("data")).unwrap();
        for split in ["train", "test"] {
            common::write_parquet(
                &img.join(format!("data/{split}-00000-of-00001.parquet")),
                &[
                    Col::Int("pixels", vec![1, 2, 3, 4]),
                    Col::Int("label", vec![0, 1, 0, 1]),
                ],
                Some(&["cat", "dog"]),
            );
        }
        repos.push(HubRepo::from_dir("datasets", "org/pixels", 0xe5, &img));
        // Unlabelled test split (label -1), the only one to evaluate on.
        let unl = root.join("unlabelled");
        std::fs::create_dir_all(unl.join("data")).unwrap();
        for (split, label) in [("train", 1), ("test", -1)] {
            common::write_parquet(
                &unl.join(format!("data/{split}-00000-of-00001.parquet")),
                &[
                    Col::Text("text", texts(0, 4, 3)),
                    Col::Int("label", vec![label.max(0), label, label.max(0), 0]),
                ],
                Some(&["a", "b"]),
            );
        }
        repos.push(HubRepo::from_dir("datasets", "org/unlabelled", 0xe6, &unl));
        repos
    });
    let run = |dataset: &str, extra: &[&str]| {
        let out = s.root.join("out");
        let mut args = finetune(&s.model, dataset, &out);
        args.extend_from_slice(extra);
        let o = s.hf.run(&args);
        assert!(
            !out.exists(),
            "{dataset}: a refused run wrote {}",
            out.display()
        );
        o
    };
    common::fails(&run("org/bad-split", &[]), "not a plain name");
    let t = std::time::Instant::now();
    common::fails(&run("org/bomb", &[]), "YAML");
    assert!(t.elapsed().as_secs() < 20, "{:?}", t.elapsed());
    common::fails(&run("org/shards", &[]), "at most 1000 files a split");
    common::fails(&run("org/many", &[]), "in 10000 files");
    common::fails(&run("org/pixels", &[]), "has no text column");
    common::fails(&run("org/unlabelled", &[]), "unlabelled row");
    common::fails(&run("../x", &[]), "is not a Hub dataset");
    common::fails(&run("org/reviews:nope", &[]), "has no config nope");
    common::fails(
        &run("org/reviews:sst", &["--dev-split", "nope"]),
        "has no split nope; its splits: train, validation",
    );
    common::fails(
        &run("org/reviews:sst", &["--train-split", "../x"]),
        "a split is a name",
    );
    common::fails(
        &run("org/reviews:sst", &["--regression"]),
        "not a number to regress on",
    );
    common::fails(
        &run("org/reviews:sst", &["--text-col", "nope"]),
        "has no column \"nope\"",
    );
    // Nothing was written outside the cache and the runs' folder.
    assert!(!s.root.join("x").exists() && !s.root.parent().unwrap().join("x").exists());
}

#[test]
fn a_sweep_takes_hub_datasets_beside_glue_tasks_and_fetches_them() {
    let s = stand(|root| vec![reviews(root)]);
    let sweep = s.root.join("sweep.toml");
    std::fs::write(
        &sweep,
        format!(
            "name = \"ds\"\noutput = \"{}\"\nmodel = \"{}\"\ndataset = \
             [\"org/reviews:sst\"]\nseeds = [1]\n[args]\nepochs = 1\nbatch-size = 4\nmax-len = \
             32\nthreads = 1\n",
            s.root.join("sweep-out").display(),
            s.model.display()
        ),
    )
    .unwrap();
    let out = common::ok(&s.hf.run(&["fetch", "--config", common::p(&sweep)]));
    assert!(out.contains("dataset org/reviews:sst"), "{out}");
    common::ok(&s.hf.run(&["sweep", "--config", common::p(&sweep)]));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.root.join("sweep-out/sweep.json")).unwrap())
            .unwrap();
    assert_eq!(plan["runs"][0]["task"], "reviews-sst");
    let c = config_json(
        &s.root
            .join("sweep-out")
            .join(plan["runs"][0]["dir"].as_str().unwrap()),
    );
    assert_eq!(c["data_source"]["config"], "sst");
}

/// The whole path: a DeBERTa-v3-layout model whose only tokenizer is `spm.model`, and
/// a dataset config with a sharded training split, both by Hub id; the run is interrupted,
/// the cache is lost, and `--resume` fetches both again and finishes; `evaluate` agrees.
#[test]
fn a_deberta_v3_spm_model_fine_tunes_on_a_hub_dataset_interrupted_and_resumed() {
    let s = stand(|root| {
        let spm = common::deberta_v3_spm_dir(&root.join("spm-src"));
        vec![
            reviews(root),
            HubRepo::from_dir("models", "org/deberta-v3-tiny", 0xf1, &spm),
        ]
    });
    let run = s.root.join("run");
    let args = [
        "finetune",
        "--model",
        "org/deberta-v3-tiny",
        "--dataset",
        "org/reviews:sst",
        "--epochs",
        "200",
        "--batch-size",
        "4",
        "--max-len",
        "32",
        "--save-every",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--output",
        common::p(&run),
    ];
    let mut child =
        s.hf.command(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("last").is_dir() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before a checkpoint"
        );
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let summary = |run: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap()
    };
    assert_eq!(summary(&run)["interrupted"], true);
    std::fs::remove_dir_all(&s.hf.home).unwrap();
    common::ok(
        &s.hf
            .run(&["finetune", "--resume", common::p(&run), "--quiet"]),
    );
    let done = summary(&run);
    assert_eq!(done["interrupted"], false);
    assert_eq!(done["global_steps"], 200 * 4);
    let out = common::ok(&s.hf.run(&[
        "evaluate",
        "--checkpoint",
        common::p(&run.join("last")),
        "--threads",
        "1",
    ]));
    let eval: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = config_json(&run);
    assert_eq!(c["model_source"]["repo"], "org/deberta-v3-tiny");
    assert_eq!(c["data_source"]["config"], "sst");
    assert!(
        eval["validation"]["metrics"]["accuracy"].is_number(),
        "{eval}"
    );
}
