//! Models and GLUE by Hub id (issue 35), against a Hub stand-in on 127.0.0.1
//! (`common::hub_server`): downloads into the cache layout `huggingface_hub` uses, the cache
//! reused offline, errors that name repository, file and endpoint, interrupted and damaged
//! downloads never trusted, the token never written anywhere.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::hub_server::{dead_endpoint, HubRepo, HubServer};
use common::Col;

/// The test's own Hugging Face environment: HF_HOME under `root`, the stand-in's address.
struct Hf {
    home: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

impl Hf {
    fn new(root: &Path, endpoint: &str) -> Hf {
        Hf {
            home: root.join("hf"),
            endpoint: endpoint.to_string(),
            token: None,
            offline: false,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
        c.args(args)
            .env("HF_HOME", &self.home)
            .env("HF_ENDPOINT", &self.endpoint)
            .env("RUST_LOG", "warn")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("GLUE_DIR");
        if let Some(t) = &self.token {
            c.env("HF_TOKEN", t);
        }
        if self.offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        c.output().unwrap()
    }

    fn cache(&self) -> PathBuf {
        self.home.join("hub")
    }

    /// One short epoch of GLUE RTE (no data folder: from the Hub) with `model`, into `out`.
    fn finetune_rte(&self, model: &str, out: &Path) -> Output {
        self.run(&[
            "finetune",
            "--model",
            model,
            "--task",
            "RTE",
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
        ])
    }
}

fn words(i: usize, n: usize) -> String {
    let v = common::TINY_VOCAB;
    // Words only (no `,`, which the CSV would split on).
    (0..n)
        .map(|k| v[5 + (i * 7 + k * 3) % 14])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `nyu-mll/glue` with RTE (train, validation, an unlabelled test split) and a CoLA file that
/// an RTE run must not fetch.
fn glue_repo(root: &Path) -> HubRepo {
    let dir = root.join("glue-src");
    std::fs::create_dir_all(dir.join("rte")).unwrap();
    std::fs::create_dir_all(dir.join("cola")).unwrap();
    let split = |name: &str, n: usize, test: bool| {
        common::write_parquet(
            &dir.join(format!("rte/{name}-00000-of-00001.parquet")),
            &[
                Col::Text("sentence1", (0..n).map(|i| words(i, 5)).collect()),
                Col::Text("sentence2", (0..n).map(|i| words(i + 3, 3)).collect()),
                Col::Int(
                    "label",
                    (0..n)
                        .map(|i| if test { -1 } else { (i % 2) as i64 })
                        .collect(),
                ),
                Col::Int("idx", (0..n as i64).collect()),
            ],
            Some(&["entailment", "not_entailment"]),
        );
    };
    split("train", 12, false);
    split("validation", 6, false);
    split("test", 4, true);
    std::fs::write(
        dir.join("cola/train-00000-of-00001.parquet"),
        b"not fetched",
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), b"GLUE").unwrap();
    HubRepo::from_dir("datasets", "nyu-mll/glue", 0xa1, &dir)
}

/// A tiny BERT (WordPiece vocab.txt) and a tiny RoBERTa (tokenizer.json) as Hub repos.
fn model_repos(root: &Path) -> Vec<HubRepo> {
    let bert = root.join("bert-src");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&bert, 5);
    }
    let roberta = common::family_model_dir(root, "roberta", "small");
    vec![
        HubRepo::from_dir("models", "org/tiny-bert", 0xb1, &bert),
        HubRepo::from_dir("models", "FacebookAI/tiny-roberta", 0xc1, &roberta),
    ]
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn config_json(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap()
}

#[test]
fn models_and_glue_come_from_the_hub_into_the_shared_cache_and_then_work_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut repos = model_repos(root);
    repos.push(glue_repo(root));
    let commits: Vec<(String, String)> = repos
        .iter()
        .map(|r| (r.id.clone(), r.commit.clone()))
        .collect();
    let server = HubServer::start(repos);
    let hf = Hf::new(root, &server.endpoint);

    for (id, commit) in &commits[..2] {
        let run = root.join(format!("run-{}", id.replace('/', "-")));
        common::ok(&hf.finetune_rte(id, &run));
        // The run names exactly what it read.
        let c = config_json(&run);
        assert_eq!(c["model_source"]["repo"], id.as_str());
        assert_eq!(c["model_source"]["revision"], "main");
        assert_eq!(c["model_source"]["commit"], commit.as_str());
        assert_eq!(c["model_source"]["kind"], "model");
        assert_eq!(c["data_source"]["repo"], "nyu-mll/glue");
        assert_eq!(c["data_source"]["commit"], commits[2].1.as_str());
        // huggingface_hub's layout: refs/main -> commit, snapshot links into blobs/.
        let folder = hf
            .cache()
            .join(format!("models--{}", id.replace('/', "--")));
        assert_eq!(
            std::fs::read_to_string(folder.join("refs/main"))
                .unwrap()
                .trim(),
            commit
        );
        let cfg = folder.join("snapshots").join(commit).join("config.json");
        assert!(std::fs::symlink_metadata(&cfg)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::canonicalize(&cfg)
            .unwrap()
            .starts_with(std::fs::canonicalize(folder.join("blobs")).unwrap()));
        assert_eq!(
            c["model"],
            folder.join("snapshots").join(commit).to_str().unwrap()
        );
    }
    // Only what a run reads: never the test split, never another task.
    let asked = server.requests();
    assert!(
        asked
            .iter()
            .all(|p| !p.contains("/test-") && !p.contains("cola/")),
        "{asked:?}"
    );
    let glue_snap = hf
        .cache()
        .join("datasets--nyu-mll--glue/snapshots")
        .join(&commits[2].1);
    assert!(glue_snap.join("rte/train-00000-of-00001.parquet").is_file());
    assert!(!glue_snap.join("rte/test-00000-of-00001.parquet").exists());
    assert!(!glue_snap.join("cola").exists());

    // Cached: a second run asks the Hub nothing.
    let before = server.requests().len();
    common::ok(&hf.run(&[
        "embed",
        "--model",
        "org/tiny-bert",
        "--threads",
        "1",
        "the cat sat",
    ]));
    assert_eq!(server.requests().len(), before);

    // Offline, with no server at all: training, evaluation, resume and embedding from the cache.
    let offline = Hf {
        endpoint: dead_endpoint(),
        offline: true,
        ..Hf::new(root, "")
    };
    let run = root.join("run-offline");
    common::ok(&offline.finetune_rte("org/tiny-bert", &run));
    common::ok(&offline.run(&[
        "evaluate",
        "--checkpoint",
        common::p(&run.join("best")),
        "--threads",
        "1",
    ]));
    common::ok(&offline.run(&[
        "finetune",
        "--resume",
        common::p(&run),
        "--threads",
        "1",
        "--quiet",
    ]));
    // The recorded snapshot gone (another machine, a cleaned cache): --resume fetches the
    // same commit again.
    let first = root.join("run-org-tiny-bert");
    std::fs::rename(&hf.home, root.join("hf-moved")).unwrap();
    common::ok(&hf.run(&[
        "finetune",
        "--resume",
        common::p(&first),
        "--threads",
        "1",
        "--quiet",
    ]));
    let pinned = hf
        .cache()
        .join("models--org--tiny-bert/snapshots")
        .join(&commits[0].1);
    assert!(pinned.join("model.safetensors").is_file());
    std::fs::remove_dir_all(&hf.home).unwrap();
    std::fs::rename(root.join("hf-moved"), &hf.home).unwrap();
    // Offline and not cached: the message says how to get it.
    let out = offline.run(&["embed", "--model", "org/other", "x"]);
    common::fails(&out, "HF_HUB_OFFLINE is set");
    common::fails(&out, "clsnorm fetch --model org/other");
    // Not offline, but the Hub unreachable: the error says so.
    let down = Hf {
        endpoint: dead_endpoint(),
        ..Hf::new(root, "")
    };
    common::fails(
        &down.run(&["embed", "--model", "org/other", "x"]),
        "cannot reach the Hub",
    );
}

#[test]
fn hub_errors_name_repository_file_and_endpoint_and_the_token_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut repos = model_repos(root);
    repos[0].token = Some("hf_gatedSECRETtoken".into());
    let server = HubServer::start(repos);
    let mut hf = Hf::new(root, &server.endpoint);

    // A repository that does not exist, a file the listing shows but the Hub does not serve.
    let out = hf.run(&["embed", "--model", "org/absent", "x"]);
    common::fails(&out, "org/absent");
    common::fails(&out, &server.endpoint);
    common::fails(&out, "HTTP 404");
    server.with_faults(|f| {
        f.missing.insert("tokenizer.json".into());
    });
    let out = hf.run(&["embed", "--model", "FacebookAI/tiny-roberta", "x"]);
    common::fails(&out, "tokenizer.json of model FacebookAI/tiny-roberta at");
    common::fails(&out, "no such file at revision main (HTTP 404)");
    server.with_faults(|f| f.missing.clear());

    // Gated: no token, a wrong one (never echoed), the right one.
    let out = hf.run(&["embed", "--model", "org/tiny-bert", "x"]);
    common::fails(&out, "set HF_TOKEN");
    hf.token = Some("hf_wrongSECRETtoken".into());
    let out = hf.run(&["embed", "--model", "org/tiny-bert", "x"]);
    common::fails(&out, "has none; ask for access");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("SECRET"), "{text}");
    hf.token = Some("hf_gatedSECRETtoken".into());
    let run = root.join("run");
    let data = write_custom(root);
    common::ok(&hf.run(&[
        "finetune",
        "--model",
        "org/tiny-bert",
        "--train-file",
        common::p(&data),
        "--dev-file",
        common::p(&data),
        "--epochs",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--output",
        common::p(&run),
    ]));
    assert!(server
        .authorizations()
        .contains(&Some("Bearer hf_gatedSECRETtoken".into())));
    for f in all_files(&hf.home).into_iter().chain(all_files(&run)) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes.windows(6).any(|w| w == b"SECRET"),
            "{} holds the token",
            f.display()
        );
    }

    // Ids with `..`, `/` or odd revisions are never looked up; nothing is asked of the Hub.
    let before = server.requests().len();
    for bad in [
        "../evil",
        "org/../x",
        "a/b/c",
        "org/x@../../y",
        "org/x@a b",
        ".hidden/x",
    ] {
        common::fails(&hf.run(&["embed", "--model", bad, "x"]), "not a Hub id");
    }
    // A crafted refs/main: refused before anything is read or fetched.
    let crafted = hf.cache().join("models--org--crafted");
    std::fs::create_dir_all(crafted.join("refs")).unwrap();
    std::fs::create_dir_all(crafted.join("snapshots/abc")).unwrap();
    std::fs::write(crafted.join("refs/main"), "../../../../../etc").unwrap();
    common::fails(
        &hf.run(&["embed", "--model", "org/crafted", "x"]),
        "which is not a revision",
    );
    assert_eq!(server.requests().len(), before);
    // A snapshot entry linking outside the cache's blobs is not read.
    let snap = crafted.join("snapshots/abc");
    std::fs::write(crafted.join("refs/main"), "abc").unwrap();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for f in ["config.json", "vocab.txt", "model.safetensors"] {
        std::fs::copy(root.join("bert-src").join(f), outside.join(f)).unwrap();
        std::os::unix::fs::symlink(outside.join(f), snap.join(f)).unwrap();
    }
    common::fails(
        &hf.run(&["embed", "--model", "org/crafted", "x"]),
        "outside the repository's blobs folder",
    );
}

fn write_custom(root: &Path) -> PathBuf {
    let path = root.join("custom.csv");
    let mut s = String::from("text,label\n");
    for i in 0..8 {
        s.push_str(&format!("{},{}\n", words(i, 4), i % 2));
    }
    std::fs::write(&path, s).unwrap();
    path
}

#[test]
fn an_interrupted_or_damaged_download_is_never_trusted_and_a_rerun_completes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let repos = model_repos(root);
    let commit = repos[0].commit.clone();
    let sha = repos[0]
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap()
        .sha256();
    let server = HubServer::start(repos);
    let hf = Hf::new(root, &server.endpoint);
    let folder = hf.cache().join("models--org--tiny-bert");
    let pointer = folder
        .join("snapshots")
        .join(&commit)
        .join("model.safetensors");
    let blob = folder.join("blobs").join(&sha);

    // The connection closes halfway: no blob, no snapshot entry; the rerun resumes.
    server.with_faults(|f| {
        f.cut.insert("model.safetensors".into());
    });
    let out = hf.run(&["embed", "--model", "org/tiny-bert", "x"]);
    common::fails(&out, "stopped downloading");
    common::fails(&out, "run again to resume");
    assert!(!blob.exists() && std::fs::symlink_metadata(&pointer).is_err());
    common::ok(&hf.run(&["embed", "--model", "org/tiny-bert", "x"]));
    assert!(blob.is_file());

    // Bytes damaged in transit: removed, and the rerun gets them right.
    let folder = hf.cache().join("models--FacebookAI--tiny-roberta");
    server.with_faults(|f| {
        f.damage.insert("model.safetensors".into());
    });
    let out = hf.run(&["embed", "--model", "FacebookAI/tiny-roberta", "x"]);
    common::fails(&out, "arrived damaged");
    let blobs: Vec<_> = std::fs::read_dir(folder.join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        blobs.iter().all(|b| b.to_string_lossy().len() != 64),
        "{blobs:?}"
    );
    common::ok(&hf.run(&["embed", "--model", "FacebookAI/tiny-roberta", "x"]));

    // A cached file whose bytes changed afterwards: detected, offline and online.
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let offline = Hf {
        offline: true,
        ..Hf::new(root, &server.endpoint)
    };
    for h in [&hf, &offline] {
        common::fails(
            &h.run(&["embed", "--model", "org/tiny-bert", "x"]),
            "its bytes changed since they were downloaded",
        );
    }
}

/// An endpoint or token that no request could carry is refused before any request, and the
/// token is not echoed.
#[test]
fn control_characters_in_the_endpoint_or_token_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let embed = ["embed", "--model", "org/tiny-bert", "x"];
    for endpoint in [
        "http://127.0.0.1:9/\u{1}x",
        "http://127.0.0.1:9/a b",
        "ftp://127.0.0.1:9",
    ] {
        let hf = Hf::new(tmp.path(), endpoint);
        common::fails(&hf.run(&embed), "is not an http(s) address");
    }
    for token in [
        "hf_secret\u{7}bell",
        "hf_secret with space",
        "hf_secret\u{1b}[31m",
    ] {
        let hf = Hf {
            token: Some(token.to_string()),
            ..Hf::new(tmp.path(), &dead_endpoint())
        };
        let out = hf.run(&embed);
        common::fails(&out, "holds characters a token cannot have");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("hf_secret"), "{all}");
    }
    assert!(
        !tmp.path().join("hf").join("hub").exists(),
        "nothing cached"
    );
}

/// hf-hub names the blob after the ETag and the snapshot after X-Repo-Commit, and unwraps a
/// redirect's Location: an endpoint whose headers disagree with its own file list is refused
/// before anything is written, and never crashes the client.
#[test]
fn a_hostile_endpoint_cannot_name_paths_or_crash_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = HubServer::start(model_repos(root));
    let h = |n: &str| (n.to_string(), String::new());
    type Headers = Vec<(String, String)>;
    let cases: [(&str, Headers, &str); 5] = [
        // LFS file: the ETag of the redirect names a path outside the cache.
        (
            "model.safetensors",
            vec![
                ("X-Linked-Etag".into(), "\"../../../../escaped\"".into()),
                ("ETag".into(), "\"../../../../escaped\"".into()),
            ],
            "came with ETag \"../../../../escaped\"",
        ),
        // Plain file: the commit names a path outside the cache.
        (
            "config.json",
            vec![("X-Repo-Commit".into(), "../../../../escaped".into())],
            "came from commit \"../../../../escaped\"",
        ),
        // No ETag at all.
        ("config.json", vec![h("ETag")], "came with ETag (none)"),
        // A redirect that does not say where to (hf-hub unwraps it).
        (
            "model.safetensors",
            vec![h("Location")],
            "without a Location",
        ),
        // A relative redirect hf-hub cannot join to the endpoint.
        (
            "model.safetensors",
            vec![("Location".into(), "lfs/x".into())],
            "not an absolute path or URL",
        ),
    ];
    for (i, (file, headers, want)) in cases.into_iter().enumerate() {
        let hf = Hf::new(&root.join(format!("case{i}")), &server.endpoint);
        server.with_faults(|f| {
            f.forged = [(file.to_string(), headers)].into_iter().collect();
        });
        let out = hf.run(&["embed", "--model", "org/tiny-bert", "x"]);
        common::fails(&out, want);
        common::fails(
            &out,
            &format!("{file} of model org/tiny-bert at {}", server.endpoint),
        );
        let blobs = hf.cache().join("models--org--tiny-bert").join("blobs");
        let written: Vec<PathBuf> = all_files(root)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("escaped") || p.starts_with(&blobs))
            .filter(|p| !p.to_string_lossy().ends_with(".lock"))
            .collect();
        // Only the files fetched before the refused one, each under its own hash.
        assert!(
            written.iter().all(|p| p.starts_with(&blobs)
                && p.file_name().unwrap().len() >= 40
                && !p.to_string_lossy().contains("escaped")),
            "case {i}: {written:?}"
        );
    }
    // The same endpoint, honest again: the download completes.
    server.with_faults(|f| f.forged.clear());
    common::ok(&Hf::new(&root.join("case0"), &server.endpoint).run(&[
        "embed",
        "--model",
        "org/tiny-bert",
        "x",
    ]));
}

#[test]
fn fetch_fills_the_cache_for_offline_runs_and_sweep_slurm_fetches_before_submitting() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut repos = model_repos(root);
    repos.push(glue_repo(root));
    let commits: Vec<String> = repos.iter().map(|r| r.commit.clone()).collect();
    let server = HubServer::start(repos);
    let mut hf = Hf::new(root, &server.endpoint);

    let out = common::ok(&hf.run(&["fetch", "--model", "org/tiny-bert", "--task", "RTE"]));
    assert!(
        out.contains(&format!(
            "model org/tiny-bert: org/tiny-bert@{}",
            commits[0]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("GLUE RTE: nyu-mll/glue@{}", commits[2])),
        "{out}"
    );
    common::fails(&hf.run(&["fetch"]), "nothing to fetch");
    common::fails(&hf.run(&["fetch", "--task", "XNLI"]), "unknown GLUE task");
    let offline = Hf {
        endpoint: dead_endpoint(),
        offline: true,
        ..Hf::new(root, "")
    };
    common::ok(&offline.finetune_rte("org/tiny-bert", &root.join("run")));

    // A sweep of Hub models, offline from the cache: the report names repo and commit.
    let local = root.join("local.toml");
    std::fs::write(
        &local,
        "model = \"org/tiny-bert\"\ntasks = [\"RTE\"]\nseeds = [1]\noutput = \"local\"\n[args]\nepochs = 1\nmax-len = 32\n",
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
    c.current_dir(root)
        .env("HF_HOME", &offline.home)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", &offline.endpoint)
        .env_remove("HF_HUB_CACHE")
        .env_remove("GLUE_DIR")
        .env("RUST_LOG", "warn");
    common::ok(
        &c.args(["sweep", "--config", common::p(&local), "--threads", "1"])
            .output()
            .unwrap(),
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
    common::ok(
        &c.args(["report", common::p(&root.join("local"))])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap(),
    );
    let report = std::fs::read_to_string(root.join("local/report.md")).unwrap();
    assert!(
        report.contains(&format!("`org/tiny-bert@{}` (1 run)", commits[0])),
        "{report}"
    );

    // sweep --slurm fetches the plan's models and data, then its jobs run offline; the token
    // used to fetch is not in the scripts.
    let cfg = root.join("sweep.toml");
    std::fs::write(
        &cfg,
        "model = \"FacebookAI/tiny-roberta\"\ntasks = [\"RTE\"]\nseeds = [1]\noutput = \"sw\"\n[args]\nepochs = 1\nmax-len = 32\n",
    )
    .unwrap();
    let path_var = common::fake_sbatch(root);
    hf.token = Some("hf_sweepSECRET".into());
    let out = Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args(["sweep", "--config", common::p(&cfg), "--slurm"])
        .env("PATH", path_var)
        .env("HF_HOME", &hf.home)
        .env("HF_ENDPOINT", &hf.endpoint)
        .env("HF_TOKEN", "hf_sweepSECRET")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("GLUE_DIR")
        .env("RUST_LOG", "warn")
        .current_dir(root)
        .output()
        .unwrap();
    common::ok(&out);
    let snap = hf
        .cache()
        .join("models--FacebookAI--tiny-roberta/snapshots")
        .join(&commits[1]);
    assert!(snap.join("model.safetensors").is_file());
    let array = std::fs::read_to_string(root.join("sw/slurm/array.sh")).unwrap();
    assert!(array.contains("export HF_HUB_OFFLINE=1\n"), "{array}");
    assert!(!array.contains("SECRET"), "{array}");
}

#[test]
fn sharded_checkpoints_download_whole_and_pickles_only_when_allowed() {
    use clsnorm::encoder::weights;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The tiny BERT split into two shards with an index, as large checkpoints are.
    let sharded = root.join("sharded-src");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&sharded, 5);
    }
    let ck = weights::read_model_dir(&sharded, false).unwrap();
    std::fs::remove_file(sharded.join(weights::SAFETENSORS_FILE)).unwrap();
    let half = ck.tensors.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&ck.tensors[..half], &ck.tensors[half..]]
        .into_iter()
        .enumerate()
    {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        let tensors: Vec<(String, tch::Tensor)> = part
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        weights::write_safetensors(&sharded.join(&name), &tensors).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), name.clone().into());
        }
    }
    std::fs::write(
        sharded.join(weights::SAFETENSORS_INDEX_FILE),
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap(),
    )
    .unwrap();
    // A repo with only a pickle checkpoint.
    let pickle = root.join("pickle-src");
    std::fs::create_dir_all(&pickle).unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-pickle");
    for f in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(fx.join(f), pickle.join(f)).unwrap();
    }
    std::fs::write(
        pickle.join("vocab.txt"),
        common::TINY_VOCAB[..8].join("\n") + "\n",
    )
    .unwrap();
    // A repo whose tokenizer is only a SentencePiece model (as microsoft/deberta-v3-base).
    let spm = root.join("spm-src");
    std::fs::create_dir_all(&spm).unwrap();
    std::fs::copy(pickle.join("config.json"), spm.join("config.json")).unwrap();
    std::fs::write(spm.join("spm.model"), b"sentencepiece").unwrap();
    std::fs::write(spm.join("model.safetensors"), b"weights never fetched").unwrap();
    let server = HubServer::start(vec![
        HubRepo::from_dir("models", "org/sharded", 0xd1, &sharded),
        HubRepo::from_dir("models", "org/pickled", 0xe1, &pickle),
        HubRepo::from_dir("models", "microsoft/spm-only", 0xf1, &spm),
    ]);
    let out = Hf::new(root, &server.endpoint).run(&["embed", "--model", "microsoft/spm-only", "x"]);
    common::fails(&out, "the repository holds spm.model");
    assert!(
        server.requests().iter().all(|p| !p.contains("resolve")),
        "{:?}",
        server.requests()
    );
    let hf = Hf::new(root, &server.endpoint);

    let want = common::ok(&common::clsnorm(&[
        "embed",
        "--model",
        common::p(&sharded),
        "--threads",
        "1",
        "the cat sat",
    ]));
    let got = common::ok(&hf.run(&[
        "embed",
        "--model",
        "org/sharded",
        "--threads",
        "1",
        "the cat sat",
    ]));
    let cls =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["cls"]["values"].clone();
    assert_eq!(cls(&got), cls(&want));

    let out = hf.run(&[
        "embed",
        "--model",
        "org/pickled",
        "--max-len",
        "8",
        "the cat",
    ]);
    common::fails(&out, "pass --allow-pickle if you trust it");
    assert!(server
        .requests()
        .iter()
        .all(|p| !p.contains("pytorch_model.bin")));
    common::ok(&hf.run(&[
        "embed",
        "--model",
        "org/pickled",
        "--allow-pickle",
        "--max-len",
        "8",
        "the cat",
    ]));
}
