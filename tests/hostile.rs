//! Issue 19: every entry point against hostile input, through the binary where a user would
//! meet it. Each case asserts the exit code, the message, and that no file of the user's was
//! touched. `CLSNORM_RACE_TRIES` sets the number of simultaneous starts (default 100).
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{clsnorm, fails, ok, p, setup, snapshot, Setup};

fn train_args<'a>(s: &'a Setup, out: &'a Path) -> Vec<&'a str> {
    vec![
        "finetune",
        "--model",
        p(&s.model),
        "--task",
        "sst2",
        "--data-dir",
        p(&s.data),
        "--output",
        p(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]
}

#[test]
fn output_directories_that_are_not_clsnorm_runs_are_refused_and_untouched() {
    let s = setup();
    // A folder of the user's that happens to hold files with clsnorm's names.
    let user = s.root.join("my-project");
    for f in [
        "best/model.safetensors",
        "last/notes.txt",
        "metrics.jsonl",
        "summary.json",
    ] {
        common::write_file(&user, f, b"the user's own bytes");
    }
    let before = snapshot(&user);
    fails(
        &clsnorm(&train_args(&s, &user)),
        "is not empty and holds no run that clsnorm recognises",
    );
    assert_eq!(snapshot(&user), before, "the user's folder was modified");

    fails(
        &clsnorm(&train_args(&s, Path::new("/"))),
        "holds no run that clsnorm recognises",
    );
    let file = common::write_file(&s.root, "a-file", b"keep me");
    fails(&clsnorm(&train_args(&s, &file)), "is not a directory");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // An empty folder the user made is used, and kept (empty) when the start fails.
    let empty = s.root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut bad_model = train_args(&s, &empty);
    bad_model[2] = "/nonexistent-model";
    fails(&clsnorm(&bad_model), "nonexistent-model");
    assert!(
        empty.is_dir(),
        "a folder this process did not create was removed"
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    ok(&clsnorm(&train_args(&s, &empty)));
    assert!(empty.join("summary.json").is_file());

    // A new directory whose start fails is removed again, with nothing left behind.
    let fresh = s.root.join("fresh");
    let mut bad_model = train_args(&s, &fresh);
    bad_model[2] = "/nonexistent-model";
    fails(&clsnorm(&bad_model), "nonexistent-model");
    assert!(!fresh.exists());

    // analyze writes only into a new or empty directory, or over an earlier analysis.
    let before = snapshot(&user);
    fails(
        &clsnorm(&[
            "analyze",
            "--model",
            p(&s.model),
            "--task",
            "sst2",
            "--data-dir",
            p(&s.data),
            "--output",
            p(&user),
            "--max-len",
            "16",
            "--quiet",
        ]),
        "is not empty and is not a clsnorm analysis folder",
    );
    assert_eq!(snapshot(&user), before);
}

#[test]
fn simultaneous_starts_on_one_new_output_never_lose_the_winners_run() {
    let s = setup();
    let tries: usize = std::env::var("CLSNORM_RACE_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut outcomes = BTreeMap::new();
    for i in 0..tries {
        let out = s.root.join(format!("race/{i}"));
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_clsnorm"))
                .args(train_args(&s, &out))
                .args(["--max-steps", "1"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let results = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let wins = results.iter().filter(|o| o.status.success()).count();
        for o in results.iter().filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&o.stderr);
            let known = [
                "in use by another clsnorm process",
                "already holds a run",
                "was being set up by another clsnorm process",
            ];
            let kind = known.iter().find(|k| err.contains(*k));
            assert!(kind.is_some(), "try {i}: unexpected failure:\n{err}");
            *outcomes.entry(*kind.unwrap()).or_insert(0) += 1;
        }
        assert!(wins >= 1, "try {i}: both starts failed");
        assert!(
            out.join("summary.json").is_file() && out.join("best").is_dir(),
            "try {i}: the winner's run is incomplete"
        );
        *outcomes.entry("won").or_insert(0) += wins;
    }
    eprintln!("{tries} simultaneous pairs: {outcomes:?}");
}

#[test]
fn leftovers_of_a_killed_process_are_recovered_under_the_lock() {
    let s = setup();
    let out = s.root.join("run");
    ok(&clsnorm(&train_args(&s, &out)));
    // A kill between the two renames of a checkpoint save, and temporary files of a dead pid.
    std::fs::rename(out.join("last"), out.join("last.old")).unwrap();
    common::write_file(&out, "last.tmp-999999/model.safetensors", b"partial");
    common::write_file(&out, "best.tmp-999999/head.safetensors", b"partial");
    common::write_file(&out, ".summary.json.tmp-999999", b"{");
    // A stale best.old beside a complete best.
    std::fs::create_dir(out.join("best.old")).unwrap();
    ok(&clsnorm(&["finetune", "--resume", p(&out), "--quiet"]));
    assert!(
        out.join("last/manifest.json").is_file(),
        "last not recovered"
    );
    for gone in [
        "last.old",
        "best.old",
        "last.tmp-999999",
        "best.tmp-999999",
        ".summary.json.tmp-999999",
    ] {
        assert!(!out.join(gone).exists(), "{gone} left behind");
    }
    clsnorm::train::checkpoint::verify(&out.join("last")).unwrap();
}

/// Rewrites `name` in checkpoint `dir` and puts its new hash into the manifest, as an attacker
/// who knows the format would.
fn forge(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
    rehash(dir, name);
}

fn rehash(dir: &Path, name: &str) {
    let path = dir.join("manifest.json");
    let mut m: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let sha =
        clsnorm::fsread::sha256_file(&dir.join(name), clsnorm::fsread::Links::Follow).unwrap();
    m.insert(name.into(), sha);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn checkpoints_are_untrusted_input() {
    let s = setup();
    let out = s.root.join("run");
    ok(&clsnorm(&train_args(&s, &out)));
    let good = out.join("best");
    let evaluate = |ck: &Path| {
        clsnorm(&[
            "evaluate",
            "--checkpoint",
            p(ck),
            "--data-dir",
            p(&s.data),
            "--device",
            "cpu",
        ])
    };
    ok(&evaluate(&good));
    let secret = common::write_file(&s.root, "secret.txt", b"not for the checkpoint");
    let secret_sha = clsnorm::fsread::sha256_file(&secret, clsnorm::fsread::Links::Follow).unwrap();
    let mut n = 0;
    let mut case = |edit: &dyn Fn(&Path), want: &str| {
        n += 1;
        let ck = s.root.join(format!("ck{n}"));
        copy_dir(&good, &ck);
        edit(&ck);
        let o = evaluate(&ck);
        fails(&o, want);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains(&secret_sha),
            "a message echoed another file's hash: {err}"
        );
    };
    let with_entry = |name: &str, sha: &str| {
        let (name, sha) = (name.to_string(), sha.to_string());
        move |ck: &Path| {
            let path = ck.join("manifest.json");
            let mut m: BTreeMap<String, String> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            m.insert(name.clone(), sha.clone());
            std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        }
    };
    let outside = format!("../{}", "secret.txt");
    case(
        &with_entry(&outside, &secret_sha),
        "not a file of a clsnorm checkpoint",
    );
    case(
        &with_entry(p(&secret), &secret_sha),
        "not a file of a clsnorm checkpoint",
    );
    case(
        &with_entry("/dev/zero", &secret_sha),
        "not a file of a clsnorm checkpoint",
    );
    case(
        &with_entry("head.safetensors", "not-a-hash"),
        "not a sha256 hex digest",
    );
    case(
        &|ck: &Path| {
            std::fs::remove_file(ck.join("head.safetensors")).unwrap();
            std::os::unix::fs::symlink(&secret, ck.join("head.safetensors")).unwrap();
            rehash(ck, "head.safetensors");
        },
        "is a symbolic link",
    );
    case(
        &|ck: &Path| {
            std::fs::remove_file(ck.join("head.safetensors")).unwrap();
            let fifo = std::ffi::CString::new(p(&ck.join("head.safetensors"))).unwrap();
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        },
        "is not a regular file",
    );
    case(
        &|ck: &Path| std::fs::write(ck.join("tokenizer.json"), b"{}").unwrap(),
        "the file was added afterwards",
    );
    case(
        &|ck: &Path| {
            let mut b = std::fs::read(ck.join("head.safetensors")).unwrap();
            let last = b.len() - 1;
            b[last] ^= 0xff;
            std::fs::write(ck.join("head.safetensors"), b).unwrap();
        },
        "does not match the checkpoint's manifest",
    );
    // Cross-references between the checkpoint's own files.
    fn edit_meta(f: fn(&mut serde_json::Value)) -> impl Fn(&Path) {
        move |ck: &Path| {
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ck.join("clsnorm.json")).unwrap())
                    .unwrap();
            f(&mut v);
            forge(ck, "clsnorm.json", v.to_string().as_bytes());
        }
    }
    case(
        &edit_meta(|v| v["head"]["labels"]["classes"] = serde_json::json!(["0", "1", "2"])),
        "the head's labels differ from the task's",
    );
    case(
        &edit_meta(|v| {
            v["head"]["labels"]["classes"] = serde_json::json!(["0", "1", "2"]);
            v["task"]["labels"]["classes"] = serde_json::json!(["0", "1", "2"]);
        }),
        "classifier.weight has shape Some([2, 32]), but the task's 3 output(s)",
    );
    case(
        &edit_meta(|v| v["max_len"] = serde_json::json!(100_000)),
        "exceeds the model's 128 position embeddings",
    );
    case(
        &|ck: &Path| {
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(ck.join("config.json")).unwrap())
                    .unwrap();
            v["vocab_size"] = serde_json::json!(10_000_000);
            forge(ck, "config.json", v.to_string().as_bytes());
        },
        "wrong shape: embeddings.word_embeddings.weight: expected [10000000, 32]",
    );
    case(
        &|ck: &Path| {
            let t = tch::Tensor::from_slice(&[f32::NAN, 0.0]);
            let head =
                clsnorm::encoder::weights::read_safetensors(&ck.join("head.safetensors")).unwrap();
            let head: Vec<(String, tch::Tensor)> = head
                .into_iter()
                .map(|(n, v)| {
                    if n == "classifier.bias" {
                        (n, t.shallow_clone())
                    } else {
                        (n, v)
                    }
                })
                .collect();
            clsnorm::encoder::weights::write_safetensors(&ck.join("head.safetensors"), &head)
                .unwrap();
            rehash(ck, "head.safetensors");
        },
        "hold NaN or infinite values: classifier.bias",
    );
}

#[test]
fn token_ids_are_checked_against_the_model_in_every_command() {
    let s = setup();
    // A model with a single token type cannot take sentence pairs.
    let one_type = s.root.join("one-type");
    let mut cfg = clsnorm::encoder::BertConfig::tiny(common::TINY_VOCAB.len() as i64, 32, 1, 4);
    cfg.type_vocab_size = 1;
    clsnorm::encoder::Encoder::random(&cfg, tch::Device::Cpu, 1)
        .save(&one_type)
        .unwrap();
    common::write_tiny_vocab(&one_type);
    let m = p(&one_type);
    ok(&clsnorm(&[
        "embed", "--model", m, "--device", "cpu", "the cat",
    ]));
    fails(
        &clsnorm(&["embed", "--model", m, "--device", "cpu", "the cat", "a dog"]),
        "sentence pairs need token type 1, but the model has type_vocab_size 1",
    );
    // Long text with a --max-len beyond the position embeddings.
    let long = "cat ".repeat(400);
    fails(
        &clsnorm(&[
            "embed",
            "--model",
            m,
            "--device",
            "cpu",
            "--max-len",
            "512",
            &long,
        ]),
        "max length 512 exceeds the model's 128 position embeddings",
    );
    // The default --max-len fits the model: long text is truncated, not a crash.
    ok(&clsnorm(&["embed", "--model", m, "--device", "cpu", &long]));
    // A config asking for 10^9 layers is refused before anything is enumerated or allocated.
    let huge = s.root.join("huge");
    std::fs::create_dir(&huge).unwrap();
    for f in ["model.safetensors", "vocab.txt"] {
        std::fs::copy(one_type.join(f), huge.join(f)).unwrap();
    }
    let mut cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one_type.join("config.json")).unwrap())
            .unwrap();
    cfg_json["num_hidden_layers"] = serde_json::json!(1_000_000_000);
    std::fs::write(huge.join("config.json"), cfg_json.to_string()).unwrap();
    fails(
        &clsnorm(&["embed", "--model", p(&huge), "--device", "cpu", "the cat"]),
        "num_hidden_layers 1000000000 is beyond what clsnorm accepts (1024)",
    );
    fails(
        &clsnorm(&[
            "analyze",
            "--model",
            m,
            "--task",
            "sst2",
            "--data-dir",
            p(&s.data),
            "--max-len",
            "300",
            "--output",
            p(&s.root.join("an")),
            "--quiet",
        ]),
        "max length 300 exceeds the model's 128 position embeddings",
    );
}

#[test]
fn resume_is_the_same_run_or_refuses() {
    let s = setup();
    // Relative paths, from the root as working directory.
    let run = |args: &[&str], cwd: &Path| {
        Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let args = [
        "finetune",
        "--model",
        "model",
        "--task",
        "sst2",
        "--data-dir",
        "glue",
        "--output",
        "run",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ];
    ok(&run(&args, &s.root));
    let out = s.root.join("run");
    // Flags that --resume would ignore are refused.
    fails(
        &clsnorm(&[
            "finetune",
            "--resume",
            p(&out),
            "--lr",
            "1e-3",
            "--epochs",
            "5",
        ]),
        "--lr, --epochs would be ignored",
    );
    // The model directory is gone and the working directory is another: the run's own
    // checkpoint and its absolute data paths are enough.
    std::fs::rename(&s.model, s.root.join("model-moved")).unwrap();
    ok(&run(
        &["finetune", "--resume", p(&out), "--quiet"],
        Path::new("/"),
    ));
    // Data changed since the start.
    let train = s.data.join("SST-2/train.tsv");
    let original = std::fs::read(&train).unwrap();
    let mut changed = original.clone();
    changed.extend_from_slice(b"one more good line\t1\n");
    std::fs::write(&train, &changed).unwrap();
    fails(
        &clsnorm(&["finetune", "--resume", p(&out)]),
        "changed since the run started",
    );
    std::fs::write(&train, &original).unwrap();
    // A missing best checkpoint is reported.
    std::fs::remove_dir_all(out.join("best")).unwrap();
    fails(
        &clsnorm(&["finetune", "--resume", p(&out)]),
        "the best checkpoint (epoch",
    );
    // A FIFO as data file is refused at once, not waited on.
    let fifo_dir = s.root.join("fifo-glue/SST-2");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let fifo = std::ffi::CString::new(p(&fifo_dir.join("train.tsv"))).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::copy(s.data.join("SST-2/dev.tsv"), fifo_dir.join("dev.tsv")).unwrap();
    let (fifo_run, moved) = (s.root.join("fifo-run"), s.root.join("model-moved"));
    let mut a = train_args(&s, &fifo_run);
    a[2] = p(&moved);
    a[6] = p(fifo_dir.parent().unwrap());
    fails(&clsnorm(&a), "is not a regular file");
}

/// A `torch.save` zip whose data.pkl is `pkl`.
fn torch_zip(path: &Path, pkl: &[u8]) {
    use std::io::Write;
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    z.finish().unwrap();
}

#[test]
fn small_pickles_cannot_exhaust_memory() {
    let tmp = tempfile::tempdir().unwrap();
    // "Billion laughs": a list memoized, then a pair of it memoized again, 64 times (2^64
    // values from 300 bytes).
    let mut laughs = b"\x80\x02]q\x00".to_vec();
    for _ in 0..64 {
        laughs.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    laughs.push(b'.');
    // Nesting 100,000 deep.
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 100_000));
    deep.push(b'.');
    // One 1 MiB string, fetched from the memo 100 times.
    let mut strings = b"\x80\x02X\x00\x00\x10\x00".to_vec();
    strings.extend(std::iter::repeat_n(b'a', 1 << 20));
    strings.extend_from_slice(b"q\x00(");
    for _ in 0..100 {
        strings.extend_from_slice(b"h\x00");
    }
    strings.extend_from_slice(b"l.");
    for (name, pkl, want) in [
        ("laughs", laughs, "refusing to load"),
        ("deep", deep, "nests containers deeper than 32"),
        ("strings", strings, "refusing to load"),
    ] {
        let path = tmp.path().join(format!("{name}.bin"));
        torch_zip(&path, &pkl);
        let t0 = std::time::Instant::now();
        let err = clsnorm::encoder::pickle::read_torch_zip(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            t0.elapsed().as_secs() < 20,
            "{name}: took {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn sweeps_check_task_names_and_report_locked_and_corrupt_runs() {
    let s = setup();
    let cfg = s.root.join("sweep.toml");
    let sweep_dir = s.root.join("sw");
    let write = |tasks: &str| {
        std::fs::write(
            &cfg,
            format!(
                "output = \"{}\"\nmodel = \"{}\"\ntasks = [{tasks}]\nseeds = [1, 2]\n[args]\nepochs = 1\nbatch-size = 8\nmax-len = 16\n[[norm]]\nname = \"none\"\n",
                p(&sweep_dir),
                p(&s.model)
            ),
        )
        .unwrap()
    };
    write("\"sst2\", \"RTEE\"");
    fails(
        &clsnorm(&["sweep", "--config", p(&cfg), "--list"]),
        "unknown task \"RTEE\"",
    );
    write("\"sst2\"");
    let env_sweep = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(args)
            .env("GLUE_DIR", &s.data)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    ok(&env_sweep(&["sweep", "--config", p(&cfg), "--jobs", "1"]));
    // A report goes into the sweep, a new or empty directory, or over an earlier report.
    let before = snapshot(&s.data);
    fails(
        &clsnorm(&["report", p(&sweep_dir), "--output", p(&s.data)]),
        "is not empty and is not a clsnorm report folder",
    );
    assert_eq!(snapshot(&s.data), before);
    ok(&clsnorm(&["report", p(&sweep_dir)]));
    ok(&clsnorm(&[
        "report",
        p(&sweep_dir),
        "--output",
        p(&s.root.join("rep0")),
    ]));
    ok(&clsnorm(&[
        "report",
        p(&sweep_dir),
        "--output",
        p(&s.root.join("rep0")),
    ]));
    let runs: Vec<PathBuf> = ["SST-2_none_s1", "SST-2_none_s2"]
        .iter()
        .map(|r| sweep_dir.join(r))
        .collect();
    // Another process holds run 1's lock: it is running elsewhere, not failed.
    let lock = std::fs::File::open(runs[0].join(".lock")).unwrap();
    lock.try_lock().unwrap();
    std::fs::remove_file(runs[0].join("summary.json")).unwrap();
    std::fs::write(runs[1].join("summary.json"), b"{ torn").unwrap();
    let list = env_sweep(&["sweep", "--config", p(&cfg), "--list"]);
    let text = ok(&list);
    assert!(text.contains("SST-2_none_s1\trunning elsewhere"), "{text}");
    assert!(text.contains("SST-2_none_s2\tunreadable:"), "{text}");
    assert!(text.contains("not a run summary (corrupt?)"), "{text}");
    let o = env_sweep(&["sweep", "--config", p(&cfg), "--jobs", "1"]);
    fails(&o, "1 run(s) failed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("SST-2_none_s2/summary.json: not a run summary"),
        "{err}"
    );
    assert!(err.contains("SST-2_none_s1: running elsewhere"), "{err}");
    fails(
        &clsnorm(&["report", p(&sweep_dir), "--output", p(&s.root.join("rep"))]),
        "SST-2_none_s2/summary.json: not a run summary",
    );
    drop(lock);
}

#[test]
fn a_label_column_of_ten_thousand_values_is_refused_before_a_head_is_built() {
    let s = setup();
    let mut body = String::from("text,label\n");
    for i in 0..10_001 {
        body.push_str(&format!("the cat {i},id{i}\n"));
    }
    let train = common::write_file(&s.root, "ids.csv", body.as_bytes());
    let out = s.root.join("ids-run");
    fails(
        &clsnorm(&common::finetune_custom(&s.model, &train, &out)),
        "found 10001 distinct labels in column \"label\"; clsnorm classifies into at most 10000 classes",
    );
    assert!(!out.exists());
}

/// A float column written by JSON or pandas spells class 1 as `1.0`; beside `1` it would have
/// become a third class and trained silently. Now it names both lines.
#[test]
fn one_number_spelled_two_ways_is_not_two_classes() {
    let s = setup();
    let cases: [(&str, &str, &str); 3] = [
        (
            "float.jsonl",
            "{\"text\": \"the cat\", \"label\": 1}\n{\"text\": \"a dog\", \"label\": 0}\n{\"text\": \"it sat\", \"label\": 1.0}\n",
            "float.jsonl:3: label \"1.0\" is the number of label \"1\" (line 1)",
        ),
        (
            "float.csv",
            "text,label\nthe cat,0\na dog,1.00\nit sat,1\n",
            "float.csv:4: label \"1\" is the number of label \"1.00\" (line 3)",
        ),
        (
            "names.csv",
            "text,label\nthe cat,yes\na dog,no\nit sat,1\nthe mat,01\n",
            "names.csv:5: label \"01\" is the number of label \"1\" (line 4)",
        ),
    ];
    for (name, body, want) in cases {
        let train = common::write_file(&s.root, name, body.as_bytes());
        let out = s.root.join(format!("{name}-run"));
        fails(
            &clsnorm(&common::finetune_custom(&s.model, &train, &out)),
            want,
        );
        assert!(!out.exists());
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(p(path)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// The side files of sweeps, reports and run directories are untrusted too: `/dev/zero` given
/// as a replication's results.json used to read until the OOM killer stopped the process, and
/// a FIFO would have hung it. Each is refused at once, and a run's lock is never followed out
/// of its directory (the lock is truncated and rewritten).
#[test]
fn special_files_as_side_files_are_refused_without_reading_them() {
    let s = setup();
    let sweep = s.root.join("sweep");
    let text = format!(
        "output = {:?}\ntasks = [\"SST-2\"]\nseeds = [1]\n[args]\ndata-dir = {:?}\n",
        sweep, s.data
    );
    let config = common::write_file(&s.root, "sweep.toml", text.as_bytes());
    let plan = clsnorm::sweep::SweepConfig::from_file(&config)
        .unwrap()
        .expand(&config)
        .unwrap();
    std::fs::create_dir_all(&sweep).unwrap();
    clsnorm::atomic::write_json(&sweep.join("sweep.json"), &plan).unwrap();
    let fifo = s.root.join("fifo");
    mkfifo(&fifo);
    let report = s.root.join("report");
    for bad in ["/dev/zero", p(&fifo)] {
        let rep = format!("x={bad}");
        let started = std::time::Instant::now();
        fails(
            &clsnorm(&[
                "report",
                p(&sweep),
                "--output",
                p(&report),
                "--replication",
                &rep,
            ]),
            "is not a regular file",
        );
        fails(
            &clsnorm(&["sweep", "--config", bad, "--list"]),
            "is not a regular file",
        );
        assert!(
            started.elapsed().as_secs() < 30,
            "{bad} was read or waited on"
        );
    }
    // A run whose lock is a FIFO: a sweep's status probe does not wait on it.
    let run_dir = sweep.join(&plan.runs[0].name);
    std::fs::create_dir_all(&run_dir).unwrap();
    mkfifo(&run_dir.join(".lock"));
    let started = std::time::Instant::now();
    let listed = ok(&clsnorm(&["sweep", "--config", p(&config), "--list"]));
    assert!(listed.contains("pending"), "{listed}");
    assert!(started.elapsed().as_secs() < 30);
    // A sweep directory whose plan is a FIFO.
    let fifo_sweep = s.root.join("fifo-sweep");
    std::fs::create_dir_all(&fifo_sweep).unwrap();
    mkfifo(&fifo_sweep.join("sweep.json"));
    fails(
        &clsnorm(&["report", p(&fifo_sweep), "--output", p(&report)]),
        "is not a regular file",
    );

    // An output directory whose config.json leads to /dev/zero is not taken for a run, and is
    // not read.
    let out = s.root.join("zero-run");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/zero", out.join("config.json")).unwrap();
    fails(
        &clsnorm(&train_args(&s, &out)),
        "holds no run that clsnorm recognises",
    );

    // A run (it carries the marker) whose lock is a link to a file of the user's.
    let run = s.root.join("run");
    ok(&clsnorm(&train_args(&s, &run)));
    let precious = common::write_file(&s.root, "precious.txt", b"keep me");
    std::fs::remove_file(run.join(".lock")).unwrap();
    std::os::unix::fs::symlink(&precious, run.join(".lock")).unwrap();
    fails(
        &clsnorm(&["finetune", "--resume", p(&run), "--quiet"]),
        ".lock: is a symbolic link, which is not allowed here (a run's lock must be a regular file, never a link)",
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    // ... or a FIFO (opening it for writing must not block, locking it must not be tried).
    std::fs::remove_file(run.join(".lock")).unwrap();
    mkfifo(&run.join(".lock"));
    fails(
        &clsnorm(&["finetune", "--resume", p(&run), "--quiet"]),
        ".lock: is not a regular file (a run's lock must be a regular file, never a link)",
    );

    // A gradient trace with no record in it says so.
    let traced = s.root.join("traced");
    std::fs::create_dir_all(&traced).unwrap();
    common::write_file(&traced, "grads.jsonl", b"garbage\n{\"x\": 1}\n");
    fails(
        &clsnorm(&[
            "compare-grads",
            p(&traced),
            p(&traced),
            "--output",
            p(&s.root.join("cg")),
        ]),
        "holds no gradient record written by --trace-grads",
    );
}

/// A `tokenizer.json` is code-like input too: the `onig` regex engine panics on a pattern
/// that backtracks past its limit, and a normalizer that multiplies text made `tokenizers`
/// (which normalizes a whole text before truncating it) abort on a failed allocation of
/// 3.2 GB for a 4,000-byte sentence. Both are now errors: the panic is caught and named, a
/// normalizer that can grow text more than 2^20 times is refused, and a text that would grow
/// past 4 MiB is measured and refused, naming its file and line.
#[test]
fn hostile_tokenizers_are_errors_not_panics_or_memory_exhaustion() {
    let s = setup();
    let with_tokenizer = |name: &str, json: String| {
        let dir = s.root.join(name);
        std::fs::create_dir(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(s.model.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("tokenizer.json"), json).unwrap();
        dir
    };
    let embed =
        |dir: &Path, text: &str| clsnorm(&["embed", "--model", p(dir), "--device", "cpu", text]);
    // The tokenizer.json itself is good: it tokenizes as vocab.txt does.
    let plain = with_tokenizer("plain", common::tiny_tokenizer_json(|_| {}));
    let ids = |out: String| {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["input_ids"].clone()
    };
    assert_eq!(
        ids(ok(&embed(&plain, "the cat sat"))),
        ids(ok(&embed(&s.model, "the cat sat")))
    );

    // A catastrophic regular expression: `(a+)+$` on "aaa...ab".
    let regex = with_tokenizer(
        "regex",
        common::tiny_tokenizer_json(|t| {
            t["pre_tokenizer"] = serde_json::json!({"type": "Split",
                "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false});
        }),
    );
    let evil = format!("{}b", "a".repeat(40));
    ok(&embed(&regex, "the cat"));
    fails(&embed(&regex, &evil), "retry-limit-in-match");
    // In a data file: the message names the line.
    let glue = s.root.join("glue-regex");
    common::write_toy_sst(&glue, 8, 4, 2);
    let train = glue.join("SST-2/train.tsv");
    let mut rows = std::fs::read_to_string(&train).unwrap();
    rows.push_str(&format!("{evil}\t1\n"));
    std::fs::write(&train, rows).unwrap();
    let analyze = |model: &Path, data: &Path, out: &str| {
        clsnorm(&[
            "analyze",
            "--model",
            p(model),
            "--task",
            "sst2",
            "--data-dir",
            p(data),
            "--output",
            p(&s.root.join(out)),
            "--quiet",
        ])
    };
    fails(
        &analyze(&regex, &glue, "an-regex"),
        "SST-2/train.tsv:10: the tokenizer failed on this example",
    );
    assert!(!s.root.join("an-regex").exists());

    // A normalizer that can grow text 12 x 2^21 times is refused when loaded.
    let huge = with_tokenizer(
        "huge",
        common::tiny_tokenizer_json(|t| {
            t["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
                t["normalizer"].clone(),
                {"type": "Replace", "pattern": {"String": "a"}, "content": "b".repeat(1 << 21)},
            ]});
        }),
    );
    fails(
        &embed(&huge, "the cat"),
        "it can make a text up to 25165824 times longer before truncating it (Replace \"a\" -> 2097152 bytes); clsnorm accepts at most 1048576",
    );
    // One that can grow it 12,000 times: texts that could pass 4 MiB are measured; what
    // really grows past it is refused, what does not is tokenized.
    let grows = with_tokenizer(
        "grows",
        common::tiny_tokenizer_json(|t| {
            t["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
                t["normalizer"].clone(),
                {"type": "Replace", "pattern": {"String": "a"}, "content": "b".repeat(1000)},
            ]});
        }),
    );
    ok(&embed(&grows, &"a ".repeat(3000)));
    ok(&embed(&grows, &"the dog ".repeat(10_000)));
    fails(
        &embed(&grows, &"a ".repeat(5000)),
        "a text of 10000 bytes would grow to more than 4194304 bytes in the tokenizer",
    );
    let glue = s.root.join("glue-grows");
    common::write_toy_sst(&glue, 8, 4, 2);
    let train = glue.join("SST-2/train.tsv");
    let mut rows = std::fs::read_to_string(&train).unwrap();
    rows.push_str(&format!("{}\t1\n", "a ".repeat(5000)));
    std::fs::write(&train, rows).unwrap();
    fails(
        &analyze(&grows, &glue, "an-grows"),
        "SST-2/train.tsv:10: a text of 10000 bytes would grow",
    );
}

/// `tokenizers` truncates a pair by keeping every overflowing window of both sides and merging
/// them pairwise, cubic in the windows: two texts of 6,400 words at `--max-len 16` took 7.4 GB
/// (a GLUE-style pair file with two 50,000-word texts aborted `predict` at the default
/// `--max-len 128` under an 8 GB limit). Pairs are now cut side by side first; under a 3 GB
/// address-space limit (the process needs ~0.4 GB) the pair tokenizes, to the same ids as a
/// pair of short texts with the same first words.
#[test]
fn a_pair_of_long_texts_is_tokenized_in_bounded_memory() {
    use std::os::unix::process::CommandExt;
    let s = setup();
    let long = "the cat sat on the mat ".repeat(2000);
    let embed = |a: &str, b: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
        cmd.args([
            "embed",
            "--model",
            p(&s.model),
            "--device",
            "cpu",
            "--max-len",
            "16",
            a,
            b,
        ])
        .env("RUST_LOG", "warn");
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 3 << 30,
                    rlim_max: 3 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let ids = |out: String| {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["input_ids"].clone()
    };
    let got = ids(ok(&embed(&long, &long)));
    let short = "the cat sat on the mat the cat sat";
    assert_eq!(got, ids(ok(&embed(short, short))));
    assert_eq!(got.as_array().unwrap().len(), 16);
}
