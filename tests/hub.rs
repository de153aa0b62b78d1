//! Models and GLUE by Hub id (issue 35), against a Hub stand-in on 127.0.0.1
//! (`common::hub_server`): downloads into the cache layout `huggingface_hub` uses, the cache
//! reused offline, errors that name repository, file and endpoint, interrupted and damaged
//! downloads never trusted, the token never written anywhere.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::hub_server::{dead_endpoint, Hf, Hostile, HubRepo, HubServer, LISTING};
use common::Col;

/// One short epoch of GLUE RTE (no data folder: from the Hub) with `model`, into `out`.
fn finetune_rte(hf: &Hf, model: &str, out: &Path) -> Output {
    hf.run(&[
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
        common::ok(&finetune_rte(&hf, id, &run));
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
    common::ok(&finetune_rte(&offline, "org/tiny-bert", &run));
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
    // No retries: the cut connection is not resumed within the run.
    let hf = Hf {
        env: vec![("CLSNORM_HUB_RETRIES".into(), "0".into())],
        ..Hf::new(root, &server.endpoint)
    };
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
    // Timeouts and retries that are not numbers in range: refused naming the variable.
    for (var, value) in [
        ("HF_HUB_DOWNLOAD_TIMEOUT", "NaN"),
        ("HF_HUB_DOWNLOAD_TIMEOUT", "0"),
        ("HF_HUB_ETAG_TIMEOUT", "1e300"),
        ("HF_HUB_ETAG_TIMEOUT", "-5"),
        ("CLSNORM_HUB_RETRIES", "99999999999999999999"),
        ("CLSNORM_HUB_RETRIES", "1\n2"),
    ] {
        let hf = Hf {
            env: vec![(var.to_string(), value.to_string())],
            ..Hf::new(tmp.path(), &dead_endpoint())
        };
        common::fails(&hf.run(&embed), var);
    }
    assert!(
        !tmp.path().join("hf").join("hub").exists(),
        "nothing cached"
    );
}

/// The environment of a hostile-server case: short timeouts, one retry.
fn impatient(root: &Path, endpoint: &str) -> Hf {
    Hf {
        env: vec![
            ("HF_HUB_DOWNLOAD_TIMEOUT".into(), "1".into()),
            ("HF_HUB_ETAG_TIMEOUT".into(), "1".into()),
            ("CLSNORM_HUB_RETRIES".into(), "1".into()),
        ],
        ..Hf::new(root, endpoint)
    }
}

/// Every file under `root`, and the entries of `root` itself (a link or folder made there).
fn entries(root: &Path) -> Vec<PathBuf> {
    let mut all = all_files(root);
    all.extend(
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    all
}

/// What appeared under `root` since `before`, outside the cache's `blobs/`, `snapshots/`,
/// `refs/` and `.locks/` of `repo` (the folders holding them aside).
fn written_outside(root: &Path, hf: &Hf, repo: &str, before: &[PathBuf]) -> Vec<PathBuf> {
    let folder = hf.cache().join(repo);
    let locks = hf.cache().join(".locks");
    entries(root)
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            !(p.starts_with(folder.join("blobs"))
                || p.starts_with(folder.join("snapshots"))
                || p.starts_with(folder.join("refs"))
                || p.starts_with(&locks)
                || p == &hf.home
                || p == &hf.cache())
        })
        .collect()
}

/// No path comes from a header: whatever the ETag, X-Linked-Etag and X-Repo-Commit say
/// (a path outside the cache, a user's file, nothing), blobs are named by the listing's
/// hashes, the snapshot by its commit, and the bytes are checked against the listing.
#[test]
fn a_hostile_endpoint_cannot_name_paths_with_its_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = HubServer::start(model_repos(root));
    let victim = root.join("victim.txt");
    std::fs::write(&victim, b"the user's own file").unwrap();
    let v = victim.display().to_string();
    type Headers = Vec<(String, String)>;
    let cases: [(&str, Headers); 4] = [
        (
            "model.safetensors",
            vec![
                ("X-Linked-Etag".into(), "\"../../../../escaped\"".into()),
                ("ETag".into(), "\"../../../../escaped\"".into()),
                ("X-Repo-Commit".into(), "../../../../escaped".into()),
            ],
        ),
        (
            "config.json",
            vec![
                ("ETag".into(), format!("\"{v}\"")),
                ("X-Repo-Commit".into(), "../../../../escaped".into()),
            ],
        ),
        (
            "model.safetensors",
            vec![("X-Linked-Etag".into(), v.clone())],
        ),
        (
            "config.json",
            vec![
                ("ETag".into(), String::new()),
                ("X-Repo-Commit".into(), String::new()),
            ],
        ),
    ];
    for (i, (file, headers)) in cases.into_iter().enumerate() {
        let before = entries(root);
        let hf = Hf::new(&root.join(format!("case{i}")), &server.endpoint);
        server.with_faults(|f| {
            f.forged = [(file.to_string(), headers)].into_iter().collect();
        });
        common::ok(&hf.run(&["embed", "--model", "org/tiny-bert", "x"]));
        let outside = written_outside(root, &hf, "models--org--tiny-bert", &before);
        assert_eq!(outside, [root.join(format!("case{i}"))], "case {i}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"the user's own file");
        assert!(!root.join("escaped").exists() && !hf.home.join("escaped").exists());
    }
}

/// The token goes to the endpoint's host only: the file storage a redirect names never sees
/// it (huggingface_hub's rule), and the download still completes there.
#[test]
fn the_storage_host_never_sees_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = HubServer::start(model_repos(root));
    let hf = Hf {
        token: Some("hf_storageSECRET".into()),
        ..Hf::new(root, &server.endpoint)
    };
    common::ok(&hf.run(&["embed", "--model", "org/tiny-bert", "x"]));
    let at_storage = server.storage_authorizations();
    assert!(
        !at_storage.is_empty(),
        "LFS files come from the storage host"
    );
    assert!(at_storage.iter().all(Option::is_none), "{at_storage:?}");
    assert!(server
        .authorizations()
        .contains(&Some("Bearer hf_storageSECRET".into())));
}

/// A server that says nothing, drips its headers or body, never ends a body, loops its
/// redirects, points them elsewhere, or lies in Content-Range: each ends in an error naming
/// the file and endpoint within a bounded time that the test measures, with nothing written
/// beyond the listed size and nothing outside the cache.
#[test]
fn a_hostile_server_cannot_hold_flood_or_misdirect_a_download() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = HubServer::start(model_repos(root));
    let model = "org/tiny-bert";
    // One try takes at most twice the timeout for headers, or one timeout's span of a stalled
    // body; two tries and a 1 s pause: 5 s. The bound leaves room for a loaded machine.
    const BOUND_S: f64 = 30.0;
    let cases: Vec<(&str, Hostile, &str)> = vec![
        (
            LISTING,
            Hostile::Silent,
            "stopped waiting: no answer within 1 s",
        ),
        (LISTING, Hostile::DripHeaders, "stopped waiting: no"),
        (LISTING, Hostile::DripBody, "stopped waiting"),
        (
            LISTING,
            Hostile::Endless,
            "the answer is longer than 64.00 MiB",
        ),
        (
            LISTING,
            Hostile::RedirectTo("http://127.0.0.3:9/api".into()),
            "redirected to another host",
        ),
        ("config.json", Hostile::Silent, "stopped waiting"),
        ("config.json", Hostile::HeadersOnly, "stopped waiting"),
        ("config.json", Hostile::DripBody, "stopped waiting"),
        ("config.json", Hostile::Endless, "arrived damaged"),
        (
            "config.json",
            Hostile::RedirectLoop,
            "redirected more than 10 times",
        ),
        (
            "config.json",
            Hostile::RedirectTo("file:///etc/passwd".into()),
            "only http(s)",
        ),
        (
            "model.safetensors",
            Hostile::Status {
                code: 302,
                headers: vec![],
                times: usize::MAX,
            },
            "HTTP 302 without a Location",
        ),
        (
            "storage:model.safetensors",
            Hostile::DripBody,
            "stopped waiting",
        ),
        (
            "storage:model.safetensors",
            Hostile::Endless,
            "arrived damaged",
        ),
        (
            "config.json",
            Hostile::Status {
                code: 429,
                headers: vec![("Retry-After".into(), "3600".into())],
                times: usize::MAX,
            },
            "asks to wait 3600 s before trying again",
        ),
        (
            "config.json",
            Hostile::Status {
                code: 503,
                headers: vec![],
                times: usize::MAX,
            },
            "the Hub answered HTTP 503",
        ),
    ];
    for (i, (key, hostile, want)) in cases.into_iter().enumerate() {
        let before = entries(root);
        let hf = impatient(&root.join(format!("case{i}")), &server.endpoint);
        server.with_faults(|f| {
            f.hostile = [(key.to_string(), hostile.clone())].into_iter().collect();
        });
        let asked = server.requests().len();
        let start = std::time::Instant::now();
        let out = hf.run(&["fetch", "--model", model]);
        let took = start.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        eprintln!("case {i} {key} {hostile:?}: {took:.1} s: {last}");
        common::fails(&out, want);
        common::fails(&out, &server.endpoint);
        assert!(took < BOUND_S, "case {i} {hostile:?}: {took:.1} s");
        if key != LISTING {
            let file = key.trim_start_matches("storage:");
            common::fails(&out, &format!("{file} of model {model}"));
        }
        // Redirect loops end: at most 11 requests a try, two tries, and the files before.
        assert!(server.requests().len() - asked < 40, "case {i}");
        // Nothing past the listed sizes (the largest file is the weights).
        let folder = hf.cache().join("models--org--tiny-bert");
        let largest = std::fs::metadata(root.join("bert-src/model.safetensors"))
            .unwrap()
            .len();
        for f in all_files(&folder) {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(len <= largest, "case {i}: {} is {len} bytes", f.display());
        }
        let outside = written_outside(root, &hf, "models--org--tiny-bert", &before);
        let case = root.join(format!("case{i}"));
        assert!(outside.iter().all(|p| p == &case), "case {i}: {outside:?}");
    }

    // Transient failures are tried again: 503 twice, 429 with a short Retry-After, a
    // connection cut mid-file (resumed with a range request), then the honest answer.
    let hf = Hf::new(&root.join("transient"), &server.endpoint);
    server.with_faults(|f| {
        f.hostile = [
            (
                LISTING.to_string(),
                Hostile::Status {
                    code: 503,
                    headers: vec![],
                    times: 2,
                },
            ),
            (
                "config.json".to_string(),
                Hostile::Status {
                    code: 429,
                    headers: vec![("Retry-After".into(), "1".into())],
                    times: 1,
                },
            ),
        ]
        .into_iter()
        .collect();
        f.cut.insert("model.safetensors".into());
    });
    common::ok(&hf.run(&["fetch", "--model", model]));
    assert!(hf
        .cache()
        .join("models--org--tiny-bert/snapshots")
        .read_dir()
        .unwrap()
        .next()
        .is_some());

    // A resumed download whose Content-Range does not continue it: refused, naming the
    // header.
    let hf = Hf {
        env: vec![("CLSNORM_HUB_RETRIES".into(), "0".into())],
        ..Hf::new(&root.join("range"), &server.endpoint)
    };
    server.with_faults(|f| {
        f.hostile.clear();
        f.cut.insert("model.safetensors".into());
    });
    common::fails(&hf.run(&["fetch", "--model", model]), "run again to resume");
    server.with_faults(|f| {
        f.hostile = [(
            "storage:model.safetensors".to_string(),
            Hostile::ContentRange("bytes 0-1/99999999999".into()),
        )]
        .into_iter()
        .collect();
    });
    common::fails(
        &hf.run(&["fetch", "--model", model]),
        "the Content-Range header \"bytes 0-1/99999999999\" does not continue the download",
    );
    server.with_faults(|f| f.hostile.clear());
    common::ok(&hf.run(&["fetch", "--model", model]));
}

/// The hub client's smaller weak spots: a token too long for a header, a GLUE task whose split
/// is in many files (refused from the listing, before any download), cache entries that are
/// not regular files.
#[test]
fn weak_spots_of_the_hub_client() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut repos = model_repos(root);
    // GLUE whose RTE train split is in 204 files.
    let glue = root.join("glue-many");
    std::fs::create_dir_all(glue.join("rte")).unwrap();
    for k in 0..204 {
        std::fs::write(
            glue.join(format!("rte/train-{k:05}-of-00204.parquet")),
            format!("part {k}"),
        )
        .unwrap();
    }
    std::fs::write(glue.join("rte/validation-00000-of-00001.parquet"), "v").unwrap();
    repos.push(HubRepo::from_dir("datasets", "nyu-mll/glue", 0xa2, &glue));
    let server = HubServer::start(repos);

    let long = Hf {
        token: Some(format!("hf_{}", "x".repeat(5000))),
        ..Hf::new(root, &server.endpoint)
    };
    let out = long.run(&["fetch", "--model", "org/tiny-bert"]);
    common::fails(&out, "is 5003 bytes long; a token is at most 4096");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("xxxx"));

    let hf = Hf::new(root, &server.endpoint);
    let asked = server.requests().len();
    common::fails(
        &hf.run(&["fetch", "--task", "RTE"]),
        "holds the train split in 204 parquet files; clsnorm reads one file per split",
    );
    let requests = server.requests();
    assert_eq!(requests.len() - asked, 1, "{:?}", &requests[asked..]);

    // A FIFO as a blob, a snapshot entry linked to /dev/zero: errors naming them, online and
    // offline, never "not in the cache" and never a read that blocks.
    common::ok(&hf.run(&["fetch", "--model", "org/tiny-bert"]));
    let folder = hf.cache().join("models--org--tiny-bert");
    let snap = std::fs::read_dir(folder.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let config = snap.join("config.json");
    let blob = std::fs::canonicalize(&config).unwrap();
    std::fs::remove_file(&blob).unwrap();
    let fifo = std::ffi::CString::new(blob.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let offline = Hf {
        offline: true,
        ..Hf::new(root, &server.endpoint)
    };
    for h in [&hf, &offline] {
        common::fails(
            &h.run(&["embed", "--model", "org/tiny-bert", "x"]),
            "is a FIFO, socket or device, not a regular file",
        );
    }
    std::fs::remove_file(&blob).unwrap();
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    for h in [&hf, &offline] {
        common::fails(
            &h.run(&["embed", "--model", "org/tiny-bert", "x"]),
            "is a FIFO, socket or device, not a regular file",
        );
    }
}

/// What is cheap is checked before a model is downloaded: the data files and columns before
/// any request, the config and tokenizer before the weights.
#[test]
fn cheap_checks_come_before_the_weights_are_downloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut repos = model_repos(root);
    let broken = root.join("broken-src");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root.join("bert-src").join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("tokenizer.json"), b"{\"model\": 3}").unwrap();
    repos.push(HubRepo::from_dir("models", "org/broken", 0xb7, &broken));
    let server = HubServer::start(repos);
    let hf = Hf::new(root, &server.endpoint);
    let data = write_custom(root);
    let run = root.join("run");
    let missing = root.join("missing.csv");
    let out = hf.run(&common::finetune_custom(
        Path::new("org/tiny-bert"),
        &missing,
        &run,
    ));
    common::fails(&out, "missing.csv");
    let mut args = common::finetune_custom(Path::new("org/tiny-bert"), &data, &run);
    args.extend(["--text-col", "review"]);
    common::fails(&hf.run(&args), "review");
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    common::fails(
        &hf.run(&common::finetune_custom(
            Path::new("org/broken"),
            &data,
            &run,
        )),
        "tokenizer.json",
    );
    let asked = server.requests();
    assert!(
        asked.iter().any(|p| p.ends_with("/tokenizer.json")),
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|p| p.contains("model.safetensors")),
        "{asked:?}"
    );
    assert!(!run.exists());
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
    common::ok(&finetune_rte(&offline, "org/tiny-bert", &root.join("run")));

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
fn sharded_pickled_and_sentencepiece_repos_download_and_load() {
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
    // A repo whose tokenizer is only a SentencePiece model (as microsoft/deberta-v3-base),
    // and one with a vocab.json but no merges.txt.
    let spm = common::deberta_v3_spm_dir(&root.join("spm-src"));
    let half = root.join("half-src");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(pickle.join("config.json"), half.join("config.json")).unwrap();
    std::fs::write(half.join("vocab.json"), b"{}").unwrap();
    std::fs::write(half.join("model.safetensors"), b"weights never fetched").unwrap();
    let server = HubServer::start(vec![
        HubRepo::from_dir("models", "org/sharded", 0xd1, &sharded),
        HubRepo::from_dir("models", "org/pickled", 0xe1, &pickle),
        HubRepo::from_dir("models", "microsoft/spm-only", 0xf1, &spm),
        HubRepo::from_dir("models", "org/half", 0xf2, &half),
    ]);
    let hf = Hf::new(root, &server.endpoint);
    let out = hf.run(&["embed", "--model", "org/half", "x"]);
    common::fails(&out, "vocab.json without the merges.txt");
    assert!(
        server.requests().iter().all(|p| !p.contains("resolve")),
        "{:?}",
        server.requests()
    );
    // The SentencePiece-only repo downloads, fine-tunes and tokenizes as its folder does.
    let data = write_custom(root);
    let run = root.join("spm-run");
    common::ok(&hf.run(&common::finetune_custom(
        Path::new("microsoft/spm-only"),
        &data,
        &run,
    )));
    let ids =
        |out: String| serde_json::from_str::<serde_json::Value>(&out).unwrap()["input_ids"].clone();
    assert_eq!(
        ids(common::ok(&hf.run(&[
            "embed",
            "--model",
            "microsoft/spm-only",
            "the cat sat"
        ]))),
        ids(common::ok(&common::clsnorm(&[
            "embed",
            "--model",
            common::p(&spm),
            "the cat sat"
        ])))
    );

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
