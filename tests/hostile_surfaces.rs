//! Issue 34: hostile input against the surfaces added after the first round (Slurm scripts,
//! precision, families, folder ownership), one test per class of defect, through the binary.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_same, clsnorm, fails, ok, p, setup, snapshot, Setup};

fn train<'a>(s: &'a Setup, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "finetune",
        "--model",
        p(&s.model),
        "--task",
        "sst2",
        "--data-dir",
        p(&s.data),
        "--output",
        p(out),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--quiet",
    ];
    v.extend_from_slice(extra);
    v
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---- 1. Generated scripts run what a value says ---------------------------------------------

const SWEEP: &str = r#"
tasks = ["SST-2"]
seeds = [1, 2]
[args]
epochs = 1
"#;

use common::fake_sbatch;

fn sweep_slurm(cfg: &Path, path_var: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args(["sweep", "--config", p(cfg), "--slurm"])
        .args(extra)
        .env("PATH", path_var)
        .env("RUST_LOG", "warn")
        // GLUE from a folder: nothing to fetch from the Hub before submitting.
        .env("GLUE_DIR", cfg.parent().unwrap())
        .current_dir(cfg.parent().unwrap())
        .output()
        .unwrap()
}

#[test]
fn values_that_reach_slurm_scripts_are_refused_or_carried_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let path_var = fake_sbatch(dir);
    let write = |name: &str, text: &str| {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    // Refused before anything is written: no sweep folder, no scripts, no sbatch call.
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (
            write("a.toml", &format!("name = \"x\\ntouch PWNED\"\n{SWEEP}")),
            vec![],
            "control characters",
        ),
        (
            write(
                "b.toml",
                &format!("output = \"out\\ntouch PWNED\"\n{SWEEP}"),
            ),
            vec![],
            "control characters",
        ),
        (
            write("c.toml", &format!("output = \"my sweeps/x\"\n{SWEEP}")),
            vec![],
            "#SBATCH line cannot carry",
        ),
        (
            write("d.toml", &format!("output = \"out%j\"\n{SWEEP}")),
            vec![],
            "file name pattern",
        ),
        (
            write("e.toml", &format!("output = \"e-out\"\n{SWEEP}")),
            vec!["--slurm-time", "1:00:00\ntouch PWNED"],
            "--slurm-time",
        ),
        (
            write("f.toml", &format!("output = \"f-out\"\n{SWEEP}")),
            vec!["--slurm-arg=--partition=gpu\ntouch PWNED"],
            "#SBATCH line cannot carry",
        ),
        (
            write("g.toml", &format!("output = \"g-out\"\n{SWEEP}")),
            vec!["--slurm-arg=--comment=two words"],
            "#SBATCH line cannot carry",
        ),
        (
            write("h.toml", &format!("output = \"h-out\"\n{SWEEP}")),
            vec!["--slurm-arg=partition"],
            "expected an sbatch option",
        ),
    ];
    for (cfg, extra, want) in &cases {
        let o = sweep_slurm(cfg, &path_var, extra);
        fails(&o, want);
    }
    for out in [
        "out",
        "e-out",
        "f-out",
        "g-out",
        "h-out",
        "my sweeps",
        "runs",
    ] {
        assert!(
            !dir.join(out).exists(),
            "{out} was created for a refused sweep"
        );
    }
    assert!(!dir.join("fakebin/calls").exists(), "sbatch was called");
    assert!(!dir.join("PWNED").exists());

    // A name with spaces and shell syntax is only a label: the job name is sanitised.
    let cfg = write(
        "ok.toml",
        &format!("name = \"my sweep; rm -rf ~\"\noutput = \"okout\"\n{SWEEP}"),
    );
    let o = sweep_slurm(&cfg, &path_var, &["--slurm-time", "1-12:00:00"]);
    assert_eq!(ok(&o).trim(), "4242\n4242");
    let array = std::fs::read_to_string(dir.join("okout/slurm/array.sh")).unwrap();
    assert!(
        array.contains("#SBATCH --job-name=my-sweep--rm--rf--\n"),
        "{array}"
    );
    assert!(array.contains("#SBATCH --time=1-12:00:00\n"), "{array}");
    for line in array.lines().filter(|l| l.starts_with("#SBATCH")) {
        let value = line.strip_prefix("#SBATCH ").unwrap();
        assert!(!value.contains(char::is_whitespace), "{line}");
    }
}

#[test]
fn generated_scripts_run_exactly_the_values_they_were_given() {
    use clsnorm::sweep::slurm::{write_scripts, SlurmOptions};
    use clsnorm::sweep::{SweepConfig, SweepPlan};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = dir.join("sweep.toml");
    std::fs::write(&cfg, SWEEP).unwrap();
    let plan = SweepConfig::from_file(&cfg).unwrap().expand(&cfg).unwrap();
    let plan = SweepPlan {
        dir: dir.join("out"),
        ..plan
    };
    // Paths and values full of shell syntax: each must reach the program as one word.
    let odd = "we ird $(touch PWNED1) `touch PWNED2` 'q\" ;touch PWNED3";
    let exe_dir = dir.join(format!("bin {odd}"));
    std::fs::create_dir_all(&exe_dir).unwrap();
    let exe = exe_dir.join("clsnorm");
    std::fs::write(
        &exe,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$RECORD\"\n\
         printf '%s' \"$GLUE_DIR\" > \"$RECORD.env\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join(format!("{odd}.toml"));
    let glue = format!("/data/{odd}\nsecond line $(touch PWNED4)");
    let opts = SlurmOptions {
        concurrent: 2,
        cpus: 3,
        gpus: 0,
        time: Some("90".into()),
        extra: vec!["--partition=a&b|c".into()],
    };
    let s = write_scripts(
        &plan,
        &config,
        &exe,
        &[("GLUE_DIR".into(), glue.clone())],
        &opts,
    )
    .unwrap();
    let record = dir.join("record");
    for (script, task) in [(&s.array, "1"), (&s.report, "")] {
        let out = Command::new("bash")
            .arg(script)
            .env("SLURM_ARRAY_TASK_ID", task)
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("RECORD", &record)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let args: Vec<String> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let want: Vec<String> = if task.is_empty() {
            vec!["report".into(), p(&dir.join("out")).into()]
        } else {
            [
                "sweep",
                "--config",
                p(&config),
                "--shard",
                "1/2",
                "--jobs",
                "1",
                "--threads",
                "3",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        assert_eq!(args, want);
        if !task.is_empty() {
            let env = std::fs::read_to_string(dir.join("record.env")).unwrap();
            assert_eq!(env, glue);
        }
    }
    for i in 1..=4 {
        let name = format!("PWNED{i}");
        assert!(
            !dir.join(&name).exists() && !Path::new(&name).exists(),
            "{name}"
        );
    }
}

// ---- 2. Non-finite numbers are never results ---------------------------------------------

/// A copy of the tiny model whose feed-forward weights make its activations overflow fp16.
fn overflowing_model(s: &Setup) -> PathBuf {
    use clsnorm::encoder::weights;
    let dir = s.root.join("big-model");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&s.model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let file = dir.join(weights::SAFETENSORS_FILE);
    let scaled: Vec<(String, tch::Tensor)> = weights::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let t = if n.contains("intermediate.dense.weight") {
                t * 1e6
            } else {
                t
            };
            (n, t)
        })
        .collect();
    weights::write_safetensors(&file, &scaled).unwrap();
    dir
}

#[test]
fn an_fp16_overflow_is_an_error_that_says_so_in_every_command() {
    let s = setup();
    let big = overflowing_model(&s);
    let embed = |precision: &str| {
        clsnorm(&[
            "embed",
            "--model",
            p(&big),
            "the cat",
            "--precision",
            precision,
            "--device",
            "cpu",
        ])
    };
    ok(&embed("fp32"));
    let o = embed("fp16");
    fails(&o, "fp16 overflowed");
    fails(&o, "bf16");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let out = s.root.join("analysis");
    let o = clsnorm(&[
        "analyze",
        "--model",
        p(&big),
        "--task",
        "sst2",
        "--data-dir",
        p(&s.data),
        "--output",
        p(&out),
        "--precision",
        "fp16",
        "--quiet",
        "--device",
        "cpu",
    ]);
    fails(&o, "fp16 overflowed");
    assert!(!out.join("analysis.json").exists() && !out.join("analysis.md").exists());
}

/// Rewrites tensors of a checkpoint's head file (and its manifest hash) as a user editing it
/// would.
fn edit_head(ckpt: &Path, edit: impl Fn(&str, tch::Tensor) -> tch::Tensor) {
    use clsnorm::encoder::weights;
    let file = ckpt.join("head.safetensors");
    let t: Vec<(String, tch::Tensor)> = weights::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let t = edit(&n, t);
            (n, t)
        })
        .collect();
    weights::write_safetensors(&file, &t).unwrap();
    let manifest = ckpt.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["head.safetensors"] = clsnorm::train::checkpoint::sha256_file(&file)
        .unwrap()
        .into();
    std::fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

#[test]
fn saved_normalizer_states_are_checked_and_extreme_ones_give_no_numbers() {
    let s = setup();
    let run = s.root.join("bn");
    ok(&clsnorm(&train(&s, &run, &["--norm", "batchnorm"])));
    let bad = s.root.join("bad");
    let copy = |name: &str| {
        let to = bad.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(run.join("best")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let analyze = |ckpt: &Path, out: &Path| {
        clsnorm(&[
            "analyze",
            "--checkpoint",
            p(ckpt),
            "--trained-norm",
            "--task",
            "sst2",
            "--data-dir",
            p(&s.data),
            "--output",
            p(out),
            "--quiet",
            "--device",
            "cpu",
        ])
    };
    let evaluate = |ckpt: &Path| {
        clsnorm(&[
            "evaluate",
            "--checkpoint",
            p(ckpt),
            "--data-dir",
            p(&s.data),
        ])
    };
    // A negative variance: refused on loading, by both commands.
    let negative = copy("negative");
    edit_head(
        &negative,
        |n, t| if n.ends_with("running_var") { -t } else { t },
    );
    fails(&analyze(&negative, &s.root.join("a1")), "negative variance");
    fails(&evaluate(&negative), "negative variance");
    assert!(!s.root.join("a1/analysis.json").exists());
    // Finite but extreme: the normalized vectors overflow f32.
    let extreme = copy("extreme");
    // A mean near f32's limit and a zero variance: (x - mean) / sqrt(0 + eps) overflows.
    edit_head(&extreme, |n, t| {
        if n.ends_with("running_mean") {
            t.fill(3e38)
        } else if n.ends_with("running_var") {
            t.zero()
        } else {
            t
        }
    });
    let out = s.root.join("a2");
    fails(&analyze(&extreme, &out), "NaN or infinite");
    assert!(!out.join("analysis.json").exists());
    fails(&evaluate(&extreme), "NaN or infinite");
    // The untouched checkpoint analyses with every number finite.
    let good = s.root.join("a3");
    ok(&analyze(&run.join("best"), &good));
    let text = std::fs::read_to_string(good.join("analysis.json")).unwrap();
    assert!(!text.contains("null"), "{text}");
}

/// Saved covariance states training cannot produce: not positive semi-definite, a negative or
/// fractional batch count, all zeros after batches (whitening would divide by its epsilon).
#[test]
fn impossible_covariance_states_are_refused() {
    let s = setup();
    let evaluate = |ckpt: &Path| {
        clsnorm(&[
            "evaluate",
            "--checkpoint",
            p(ckpt),
            "--data-dir",
            p(&s.data),
        ])
    };
    for norm in ["whiten", "isobn"] {
        let run = s.root.join(norm);
        ok(&clsnorm(&train(&s, &run, &["--norm", norm])));
        type Edit = fn(&str, tch::Tensor) -> tch::Tensor;
        let cases: [(&str, Edit, &str); 4] = [
            (
                "indefinite",
                |n, t| {
                    if n.ends_with("running_cov") {
                        let n = t.size()[0];
                        t - tch::Tensor::eye(n, (tch::Kind::Float, tch::Device::Cpu)) * 10.0
                    } else {
                        t
                    }
                },
                "not positive semi-definite",
            ),
            (
                "negative-count",
                |n, t| {
                    if n.ends_with("num_batches_tracked") {
                        t.fill(-3)
                    } else {
                        t
                    }
                },
                "a count of batches is a whole number from 0",
            ),
            (
                "fractional-count",
                |n, t| {
                    if n.ends_with("num_batches_tracked") {
                        t.to_kind(tch::Kind::Float).fill(1.5)
                    } else {
                        t
                    }
                },
                "a count of batches is a whole number from 0",
            ),
            (
                "zero-cov",
                |n, t| {
                    if n.ends_with("running_cov") {
                        t.zero()
                    } else {
                        t
                    }
                },
                "all zeros after",
            ),
        ];
        for (name, edit, want) in cases {
            let ckpt = s.root.join(format!("{norm}-{name}"));
            std::fs::create_dir_all(&ckpt).unwrap();
            for e in std::fs::read_dir(run.join("best")).unwrap().flatten() {
                std::fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
            }
            edit_head(&ckpt, edit);
            fails(&evaluate(&ckpt), want);
        }
        ok(&evaluate(&run.join("best")));
    }
}

// ---- 4. Input excerpts in messages are bounded -------------------------------------------

// (A multi-gigabyte line: tests/hostile_files.rs.)

#[test]
fn long_keys_and_long_label_lists_are_excerpted() {
    let s = setup();
    let key = "k".repeat(100_000);
    let opt = format!("{key}=1");
    let o = clsnorm(&train(
        &s,
        &s.root.join("r1"),
        &["--norm", "isobn", "--norm-opt", &opt],
    ));
    fails(&o, "unknown option");
    assert!(stderr(&o).len() < 2000, "{} bytes", stderr(&o).len());
    // A dev file with a label the training file never has, after ten thousand classes.
    let mut train_csv = String::from("text,label\n");
    for i in 0..10_000 {
        train_csv.push_str(&format!("word {i},class{i}\n"));
    }
    let train_file = common::write_file(&s.root, "many.csv", train_csv.as_bytes());
    let dev = common::write_file(
        &s.root,
        "dev.csv",
        "text,label\nhello,\u{feff}class1\0\n".as_bytes(),
    );
    let o = clsnorm(&[
        "finetune",
        "--model",
        p(&s.model),
        "--train-file",
        p(&train_file),
        "--dev-file",
        p(&dev),
        "--output",
        p(&s.root.join("r2")),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.len() < 2000,
        "{} bytes: {}",
        err.len(),
        &err[..err.len().min(3000)]
    );
    assert!(
        err.contains("unknown label") && err.contains("\\u{feff}class1\\0"),
        "{err}"
    );
}

// ---- 5. Folders are taken over by record, not by name ----------------------------------

#[test]
fn a_forged_or_foreign_marker_never_lets_a_run_replace_files() {
    let s = setup();
    let user = s.root.join("mine");
    for (name, body) in [
        ("best/model.safetensors", &b"my weights"[..]),
        ("last/notes.txt", b"mine"),
        ("metrics.jsonl", b"{}\n"),
        (".draft.tmp-notes", b"keep"),
        (".clsnorm-run", b""),
    ] {
        common::write_file(&user, name, body);
    }
    let before = snapshot(&user);
    fails(
        &clsnorm(&train(&s, &user, &[])),
        "holds no run that clsnorm recognises",
    );
    assert_same(&snapshot(&user), &before);
    // A marker of an old clsnorm (no id) over a killed start with only a lock: adopted.
    let killed = s.root.join("killed");
    common::write_file(&killed, ".clsnorm-run", b"clsnorm run directory\n");
    common::write_file(&killed, ".lock", b"pid 1");
    ok(&clsnorm(&train(&s, &killed, &[])));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("config.json")).unwrap())
            .unwrap();
    let marker = std::fs::read_to_string(killed.join(".clsnorm-run")).unwrap();
    let id = config["run_id"].as_str().unwrap();
    assert!(marker.contains(id), "{marker} vs {id}");
    // The marker and config of one run disagree: resume refuses and changes nothing.
    let other = s.root.join("other");
    ok(&clsnorm(&train(&s, &other, &[])));
    std::fs::copy(other.join(".clsnorm-run"), killed.join(".clsnorm-run")).unwrap();
    let before = snapshot(&killed);
    fails(
        &clsnorm(&["finetune", "--resume", p(&killed), "--quiet"]),
        "is not the one its marker",
    );
    assert_same(&snapshot(&killed), &before);
}

#[test]
fn nothing_is_written_inside_another_runs_folder() {
    let s = setup();
    let run = s.root.join("run");
    ok(&clsnorm(&train(&s, &run, &[])));
    let before = snapshot(&run);
    for inner in ["last/inner", "best/x/y", "inner"] {
        let o = clsnorm(&train(&s, &run.join(inner), &[]));
        fails(&o, "inside the run folder");
    }
    let o = clsnorm(&[
        "analyze",
        "--model",
        p(&s.model),
        "--task",
        "sst2",
        "--data-dir",
        p(&s.data),
        "--output",
        p(&run.join("last/analysis")),
        "--quiet",
    ]);
    fails(&o, "inside the run folder");
    let o = clsnorm(&[
        "predict",
        "--checkpoint",
        p(&run.join("best")),
        "--input",
        p(&s.data.join("SST-2/dev.tsv")),
        "--output",
        p(&run.join("best/preds.jsonl")),
    ]);
    fails(&o, "inside the run folder");
    let cfg = common::write_file(
        &s.root,
        "inner.toml",
        format!("output = \"{}\"\n{SWEEP}", run.join("sweep").display()).as_bytes(),
    );
    fails(
        &clsnorm(&["sweep", "--config", p(&cfg)]),
        "inside the run folder",
    );
    assert_same(&snapshot(&run), &before);
}

#[test]
fn outputs_replace_only_what_clsnorm_wrote_there() {
    let s = setup();
    // A user's folder with files named as clsnorm's outputs.
    let user = s.root.join("user");
    for name in [
        "report.md",
        "results.csv",
        "results.json",
        "analysis.json",
        "analysis.md",
        "notes",
    ] {
        common::write_file(&user, name, b"mine");
    }
    let before = snapshot(&user);
    let cfg = common::write_file(
        &s.root,
        "s.toml",
        format!(
            "output = \"{}\"\nmodel = \"{}\"\n{SWEEP}",
            user.display(),
            s.model.display()
        )
        .as_bytes(),
    );
    fails(
        &clsnorm(&["sweep", "--config", p(&cfg)]),
        "is not empty and is not a clsnorm sweep",
    );
    fails(
        &clsnorm(&["report", "--config", p(&cfg)]),
        "is not empty and is not a clsnorm sweep",
    );
    let other = common::write_file(
        &s.root,
        "o.toml",
        format!("output = \"{}\"\n{SWEEP}", s.root.join("o").display()).as_bytes(),
    );
    fails(
        &clsnorm(&["report", "--config", p(&other), "--output", p(&user)]),
        "is not empty and is not a clsnorm report",
    );
    let o = clsnorm(&[
        "analyze",
        "--model",
        p(&s.model),
        "--task",
        "sst2",
        "--data-dir",
        p(&s.data),
        "--output",
        p(&user),
        "--quiet",
    ]);
    fails(&o, "is not empty and is not a clsnorm analysis");
    assert_same(&snapshot(&user), &before);
    // Its own earlier analysis is replaced; a copied marker whose record disagrees is not.
    let a = s.root.join("an");
    let analyze = |out: &Path| {
        clsnorm(&[
            "analyze",
            "--model",
            p(&s.model),
            "--task",
            "sst2",
            "--data-dir",
            p(&s.data),
            "--output",
            p(out),
            "--quiet",
            "--max-len",
            "16",
        ])
    };
    ok(&analyze(&a));
    ok(&analyze(&a));
    let b = s.root.join("an2");
    ok(&analyze(&b));
    std::fs::copy(a.join(".clsnorm-analysis"), b.join(".clsnorm-analysis")).unwrap();
    fails(&analyze(&b), "whose id is not its marker's");
    // predict: an existing file only with --overwrite.
    let run = s.root.join("run");
    ok(&clsnorm(&train(&s, &run, &[])));
    let preds = common::write_file(&s.root, "preds.jsonl", b"{\"line\": 1, \"mine\": true}\n");
    let (best, input) = (run.join("best"), s.data.join("SST-2/dev.tsv"));
    let predict = |extra: &[&str]| {
        let mut v = vec![
            "predict",
            "--checkpoint",
            p(&best),
            "--input",
            p(&input),
            "--output",
            p(&preds),
        ];
        v.extend_from_slice(extra);
        clsnorm(&v)
    };
    fails(&predict(&[]), "--overwrite");
    assert_eq!(
        std::fs::read(&preds).unwrap(),
        b"{\"line\": 1, \"mine\": true}\n"
    );
    ok(&predict(&["--overwrite"]));
    assert!(std::fs::read_to_string(&preds)
        .unwrap()
        .contains("probabilities"));
}

// ---- 6. Numbers that are finite in f64 but 0 or infinite where they are used -----------

#[test]
fn options_are_checked_in_the_precision_where_they_are_used() {
    let s = setup();
    let out = s.root.join("r");
    for (extra, want) in [
        (
            &["--norm", "isobn", "--norm-opt", "eps=1e300"][..],
            "eps must be between",
        ),
        (
            &["--norm", "batchnorm", "--norm-opt", "eps=1e300"],
            "eps must be between",
        ),
        (
            &["--norm", "layernorm", "--norm-opt", "eps=1e300"],
            "eps must be between",
        ),
        (
            &["--norm", "whiten", "--norm-opt", "eps=1e300"],
            "eps must be between",
        ),
        (
            &["--norm", "standardize", "--norm-opt", "eps=1e-300"],
            "eps must be between",
        ),
        (
            &["--norm", "l2", "--norm-opt", "scale=1e-300"],
            "scale must be between",
        ),
        (
            &["--norm", "isobn", "--norm-opt", "momentum=1e-300"],
            "momentum must be between",
        ),
        (&["--adam-eps", "1e300"], "--adam-eps must be between"),
        (&["--lr", "1e300"], "--lr must be between"),
        (&["--lr", "1e-300"], "--lr must be between"),
    ] {
        fails(&clsnorm(&train(&s, &out, extra)), want);
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
    // Config values: a copy of the model with one edited key.
    let edited = |key: &str, value: serde_json::Value| {
        let dir = s.root.join(format!("m-{key}"));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&s.model).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let path = dir.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        c[key] = value;
        std::fs::write(&path, c.to_string()).unwrap();
        dir
    };
    let m = edited("layer_norm_eps", 1e300.into());
    fails(
        &clsnorm(&["embed", "--model", p(&m), "hi"]),
        "layer_norm_eps must be between",
    );
}

// ---- 7. What is probably a mistake is said, not guessed --------------------------------

#[test]
fn data_files_that_are_ambiguous_are_refused() {
    let s = setup();
    let out = s.root.join("r");
    let run = |file: &Path, extra: &[&str]| {
        let mut v = vec![
            "finetune",
            "--model",
            p(&s.model),
            "--train-file",
            p(file),
            "--dev-file",
            p(file),
            "--output",
            p(&out),
            "--quiet",
        ];
        v.extend_from_slice(extra);
        clsnorm(&v)
    };
    let dup = common::write_file(&s.root, "dup.csv", b"text,label,text\na,1,b\nc,0,d\n");
    fails(&run(&dup, &[]), "names column \"text\" twice");
    let keys = common::write_file(
        &s.root,
        "keys.jsonl",
        b"{\"text\": \"a\", \"label\": 1, \"text\": \"b\"}\n{\"text\": \"c\", \"label\": 0}\n",
    );
    fails(&run(&keys, &[]), "key \"text\" appears twice");
    let quote = common::write_file(&s.root, "quote.csv", b"text,label\n\"abc\"def,1\nx,0\n");
    fails(&run(&quote, &[]), "text after the closing quote");
    let stsb = common::write_file(&s.root, "stsb.csv", b"text,label\na,1e39\nb,2\n");
    fails(&run(&stsb, &["--regression"]), "beyond the range of f32");
    let stsb_nan = common::write_file(&s.root, "nan.csv", b"text,label\na,nan\nb,2\n");
    fails(&run(&stsb_nan, &["--regression"]), "not a finite number");
    assert!(!out.exists());
}

#[test]
fn a_config_value_of_the_wrong_type_names_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "modernbert", "classifier_pooling": 3, "vocab_size": 50}"#,
    )
    .unwrap();
    fails(
        &clsnorm(&["embed", "--model", p(&dir), "hi"]),
        "\"classifier_pooling\"",
    );
}

#[test]
fn the_hub_cache_is_never_guessed_from() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--org--tiny");
    let model = tmp.path().join("model");
    {
        let _g = common::torch_rng_lock();
        common::tiny_model_dir(&model, 3);
    }
    let snap = |rev: &str| {
        let d = repo.join("snapshots").join(rev);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&model).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    };
    snap("aaaa");
    snap("bbbb");
    let embed = || {
        Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(["embed", "--model", "org/tiny", "hi"])
            .env("HF_HUB_CACHE", &cache)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    fails(
        &embed(),
        "2 snapshots (\"aaaa\", \"bbbb\") and no refs/main",
    );
    common::write_file(&repo, "refs/main", b"cccc");
    fails(
        &embed(),
        "refs/main names revision cccc, which is not in the cache",
    );
    common::write_file(&repo, "refs/main", b"bbbb\n");
    ok(&embed());
}

#[test]
fn reports_refuse_a_sweep_paired_with_itself() {
    let s = setup();
    let cfg = common::write_file(
        &s.root,
        "s.toml",
        format!(
            "output = \"{}\"\nmodel = \"{}\"\ntasks = [\"SST-2\"]\nseeds = [1]\n[[norm]]\nname = \"none\"\n[[norm]]\nname = \"center\"\n[args]\nmax-steps = 2\nmax-len = 16\nbatch-size = 8\ndata-dir = \"{}\"\n",
            s.root.join("sw").display(),
            s.model.display(),
            s.data.display()
        )
        .as_bytes(),
    );
    ok(&clsnorm(&["sweep", "--config", p(&cfg), "--threads", "1"]));
    let dir = s.root.join("sw");
    ok(&clsnorm(&["report", p(&dir)]));
    let own = format!("again={}", dir.join("results.json").display());
    fails(
        &clsnorm(&["report", p(&dir), "--replication", &own]),
        "this sweep's own report",
    );
    // A copy of the report elsewhere is still this sweep's (by its id).
    let copy = s.root.join("copy.json");
    std::fs::copy(dir.join("results.json"), &copy).unwrap();
    let copied = format!("again={}", copy.display());
    fails(
        &clsnorm(&["report", p(&dir), "--replication", &copied]),
        "this same sweep folder",
    );
    fails(
        &clsnorm(&["report", p(&dir), "--pair", "none,none"]),
        "compares the variant with itself",
    );
}

// ---- 8. Two identical sweeps at once -----------------------------------------------------

#[test]
fn two_identical_sweeps_at_once_both_succeed_and_share_no_log() {
    let s = setup();
    let cfg = common::write_file(
        &s.root,
        "twin.toml",
        format!(
            "output = \"{}\"\nmodel = \"{}\"\ntasks = [\"SST-2\"]\nseeds = [1, 2, 3, 4]\n[args]\nmax-steps = 3\nmax-len = 16\nbatch-size = 8\ndata-dir = \"{}\"\n",
            s.root.join("twin").display(),
            s.model.display(),
            s.data.display()
        )
        .as_bytes(),
    );
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(["sweep", "--config", p(&cfg), "--threads", "1"])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert!(o.status.success(), "{}", stderr(o));
        assert!(!stderr(o).contains("failed:"), "{}", stderr(o));
    }
    let dir = s.root.join("twin");
    for seed in 1..=4 {
        let run = dir.join(format!("SST-2_none_s{seed}"));
        assert!(
            run.join("summary.json").is_file(),
            "{} not finished",
            run.display()
        );
        // One process wrote each log: one start of training in it.
        let log = std::fs::read_to_string(dir.join(format!("logs/SST-2_none_s{seed}.log")))
            .unwrap_or_default();
        assert!(!log.contains("in use by another clsnorm process"), "{log}");
        assert!(!log.contains("already holds a run"), "{log}");
    }
}
