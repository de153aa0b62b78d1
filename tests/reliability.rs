//! Faults through the binary: a second process on a run directory, SIGTERM, kill -9 at random
//! moments, and non-finite losses. Tiny random model, toy data.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    glue: PathBuf,
}

fn setup(n_train: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("model");
    common::tiny_model_dir(&model, 11);
    let glue = root.join("glue");
    common::write_toy_sst(&glue, n_train, 16, 2);
    Setup {
        _tmp: tmp,
        root,
        model,
        glue,
    }
}

fn command(s: &Setup, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
    c.arg("finetune")
        .args(args)
        .env("GLUE_DIR", &s.glue)
        .stdin(Stdio::null());
    c
}

fn train_args<'a>(s: &'a Setup, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        s.model.to_str().unwrap(),
        "--task",
        "sst2",
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--max-len",
        "16",
        "--threads",
        "1",
        "--save-every",
        "1",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ]
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_for(child: &mut Child, what: impl Fn() -> bool, secs: u64) {
    let t0 = Instant::now();
    while !what() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the awaited moment"
        );
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per-epoch records and loss log of a finished run, without the timings.
fn outcome(out: &Path) -> (Vec<serde_json::Value>, String) {
    let epochs = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in [
                "train_secs",
                "eval_secs",
                "train_tokens_per_sec",
                "train_phase_secs",
            ] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect();
    let loss = std::fs::read_to_string(out.join("train_loss.jsonl")).unwrap();
    (epochs, loss)
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn second_process_is_refused_and_sigterm_leaves_a_resumable_run() {
    let s = setup(800);
    let reference = s.root.join("reference");
    let o = run(&mut command(&s, &train_args(&s, &reference, "3")));
    assert!(o.status.success(), "{}", stderr(&o));

    let out = s.root.join("run");
    let mut child = command(&s, &train_args(&s, &out, "3"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has checkpointed at least once.
    wait_for(&mut child, || out.join("last").is_dir(), 120);
    let o = run(&mut command(
        &s,
        &["--resume", out.to_str().unwrap(), "--quiet"],
    ));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is in use by another clsnorm process (pid "),
        "{}",
        stderr(&o)
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "an interrupted run exits non-zero");
    let err = stderr(&o);
    assert!(
        err.contains("interrupt: finishing the current update"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "continue with: clsnorm finetune --resume {}",
            out.display()
        )),
        "{err}"
    );
    assert_eq!(summary(&out)["interrupted"], true);
    let steps = summary(&out)["global_steps"].as_u64().unwrap();
    assert!(steps < 300, "stopped early: {steps}");

    // No --threads: the resume runs on the thread count the run recorded (1, where this machine
    // would default to all cores); libtorch's reductions split by thread, so another count
    // would change the weights in the last bits.
    let o = run(&mut command(
        &s,
        &["--resume", out.to_str().unwrap(), "--quiet"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&out)["interrupted"], false);
    assert_eq!(outcome(&out), outcome(&reference));
    common::same_checkpoint_weights(&out.join("last"), &reference.join("last"));
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    use rand::SeedableRng;
    let s = setup(64);
    let reference = s.root.join("reference");
    let t0 = Instant::now();
    let o = run(&mut command(&s, &train_args(&s, &reference, "3")));
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t0.elapsed();

    let out = s.root.join("run");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    // Kill moments are drawn as fractions of the reference run's time; when the machine got
    // faster than it was for the reference (a busy machine), runs may finish before three
    // kills, and the whole sequence starts again with moments half as late.
    let mut scale = full;
    let mut kills = 0;
    for _round in 0..6 {
        kills = kills_until_finished(&s, &out, scale, &mut rng);
        if kills >= 3 {
            break;
        }
        std::fs::remove_dir_all(&out).unwrap();
        scale /= 2;
    }
    assert!(kills >= 3, "only {kills} kills");
    eprintln!("{kills} kills before the run finished");
    assert_eq!(outcome(&out), outcome(&reference), "after {kills} kills");
    common::same_checkpoint_weights(&out.join("last"), &reference.join("last"));
}

/// Starts (or resumes) the run at `out` and SIGKILLs it at a random moment within 5-90% of
/// `scale`, over and over until it finishes; returns the number of kills.
fn kills_until_finished(
    s: &Setup,
    out: &Path,
    scale: Duration,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> usize {
    use rand::Rng;
    let mut kills = 0;
    for attempt in 0.. {
        assert!(attempt < 60, "did not finish after {attempt} attempts");
        // Fresh start until the run has written its config; resume afterwards.
        let mut c = if out.join("config.json").is_file() {
            command(s, &["--resume", out.to_str().unwrap(), "--quiet"])
        } else {
            command(s, &train_args(s, out, "3"))
        };
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = scale.mul_f64(rng.random_range(0.05..0.9));
        let t0 = Instant::now();
        while t0.elapsed() < wait && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            continue;
        }
        if out.join("summary.json").is_file() && summary(out)["interrupted"] == false {
            break;
        }
    }
    kills
}

#[test]
fn non_finite_loss_stops_without_saving_the_bad_state() {
    let s = setup(48);
    let out = s.root.join("run");
    // lr 1e30 without warmup: the first update is finite, the second overflows.
    let mut args = train_args(&s, &out, "2");
    args.extend(["--lr", "1e30", "--warmup-steps", "0"]);
    let o = run(&mut command(&s, &args));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("update 2: the loss or a gradient is not finite"),
        "{err}"
    );
    assert!(err.contains("--skip-nonfinite"), "{err}");
    // The checkpoint of update 1 is the last one.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("last/clsnorm.json")).unwrap())
            .unwrap();
    assert_eq!(meta["state"]["global_step"], 1);
    assert!(!out.join("summary.json").exists());

    let out2 = s.root.join("skipping");
    let mut args = train_args(&s, &out2, "2");
    args.extend(["--lr", "1e30", "--warmup-steps", "0", "--skip-nonfinite"]);
    let o = run(&mut command(&s, &args));
    // 48 / 8 = 6 updates per epoch: updates 2-6 are skipped, but update 1 already left weights
    // whose dev outputs are NaN, which the end-of-epoch evaluation reports instead of a metric.
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("update 6: non-finite loss or gradient"),
        "{err}"
    );
    assert!(err.contains("(5 so far)"), "{err}");
    assert!(
        err.contains("the model's outputs are NaN or infinite for 16 of 16 examples"),
        "{err}"
    );
    assert!(!out2.join("summary.json").exists());
}

/// Runs `script` (with `args` as `$@`) under `sh` in a private user and mount namespace
/// (`unshare -rm`), where it may mount a small or read-only tmpfs. `None`, with a note on
/// stderr, where this machine does not allow such namespaces.
fn in_mount_namespace(script: &str, args: &[&str]) -> Option<Output> {
    let allowed = Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !allowed {
        eprintln!("SKIPPED: `unshare -rm` is not allowed on this machine");
        return None;
    }
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", script, "sh"])
        .args(args)
        .env("CLSNORM", env!("CARGO_BIN_EXE_clsnorm"))
        .output()
        .unwrap();
    assert!(out.status.success(), "script failed: {}", stderr(&out));
    Some(out)
}

/// Bytes a directory tree takes on tmpfs (whole pages per file).
fn tmpfs_bytes(dir: &Path) -> u64 {
    let mut sum = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        sum += if meta.is_dir() {
            tmpfs_bytes(&e.path())
        } else {
            meta.len().div_ceil(4096) * 4096
        };
    }
    sum
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn disk_full_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let s = setup(64);
    // Checkpoints at epoch ends only (8 updates per epoch).
    let args = |out: &'static str, epochs: &'static str| -> Vec<String> {
        let mut a: Vec<String> = train_args(&s, Path::new(out), epochs)
            .into_iter()
            .map(String::from)
            .collect();
        let i = a.iter().position(|x| x == "--save-every").unwrap();
        a.drain(i..i + 2);
        a
    };
    let reference = s.root.join("reference");
    let mut a = args("-", "3");
    *a.last_mut().unwrap() = reference.to_str().unwrap().into();
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = run(&mut command(&s, &refs));
    assert!(o.status.success(), "{}", stderr(&o));
    // Room for everything a run has after epoch 1 plus 64 KiB: too little for epoch 2's
    // checkpoints.
    let one = s.root.join("one");
    let mut a1 = args("-", "1");
    *a1.last_mut().unwrap() = one.to_str().unwrap().into();
    let ones: Vec<&str> = a1.iter().map(String::as_str).collect();
    let o = run(&mut command(&s, &ones));
    assert!(o.status.success(), "{}", stderr(&o));
    let size = tmpfs_bytes(&one) + 64 * 1024;

    let (mnt, keep) = (s.root.join("mnt"), s.root.join("keep"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    let script = r#"
        mnt=$1; keep=$2; size=$3; glue=$4; shift 4
        mount -t tmpfs -o size=$size tmpfs "$mnt" || exit 90
        GLUE_DIR=$glue "$CLSNORM" finetune "$@" --output "$mnt/run" 2> "$keep/full.err"
        echo $? > "$keep/full.rc"
        cp -a "$mnt/run" "$keep/after-full"
        mount -o remount,size=64m "$mnt" || exit 91
        GLUE_DIR=$glue "$CLSNORM" finetune --resume "$mnt/run" --quiet 2> "$keep/resume.err"
        echo $? > "$keep/resume.rc"
        cp -a "$mnt/run" "$keep/resumed"
    "#;
    let mut sargs = vec![
        mnt.to_str().unwrap().to_string(),
        keep.to_str().unwrap().to_string(),
        size.to_string(),
        s.glue.to_str().unwrap().to_string(),
    ];
    let mut a3 = args("-", "3");
    a3.truncate(a3.len() - 2); // the script adds --output
    sargs.extend(a3);
    let sargs: Vec<&str> = sargs.iter().map(String::as_str).collect();
    if in_mount_namespace(script, &sargs).is_none() {
        return;
    }
    let err = read(&keep.join("full.err"));
    assert_ne!(read(&keep.join("full.rc")).trim(), "0", "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("/run/"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The epoch-1 checkpoint is intact, and no partial checkpoint is left taking space.
    let after = keep.join("after-full");
    clsnorm::train::checkpoint::verify(&after.join("last")).unwrap();
    let meta = clsnorm::train::checkpoint::read_meta(&after.join("last")).unwrap();
    assert_eq!(meta.state.global_step, 8);
    for e in std::fs::read_dir(&after).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("tmp-"), "left behind: {name}");
    }
    // With room again, --resume finishes with exactly the uninterrupted run's results.
    let resumed = keep.join("resumed");
    assert_eq!(
        read(&keep.join("resume.rc")).trim(),
        "0",
        "{}",
        read(&keep.join("resume.err"))
    );
    assert_eq!(outcome(&resumed), outcome(&reference));
}

#[test]
fn read_only_output_is_a_clear_error_and_earlier_checkpoints_stay_usable() {
    let s = setup(16);
    let (mnt, keep) = (s.root.join("mnt"), s.root.join("keep"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    let script = r#"
        mnt=$1; keep=$2; glue=$3; shift 3
        mount -t tmpfs tmpfs "$mnt" || exit 90
        GLUE_DIR=$glue "$CLSNORM" finetune "$@" --output "$mnt/a" 2> "$keep/a.err" || exit 92
        mount -o remount,ro "$mnt" || exit 91
        GLUE_DIR=$glue "$CLSNORM" finetune "$@" --output "$mnt/b" 2> "$keep/b.err"
        echo $? > "$keep/b.rc"
        GLUE_DIR=$glue "$CLSNORM" evaluate --checkpoint "$mnt/a/best" --device cpu \
            > "$keep/eval.out" 2> "$keep/eval.err"
        echo $? > "$keep/eval.rc"
    "#;
    let mut a = train_args(&s, Path::new("-"), "1");
    a.truncate(a.len() - 2);
    let mut sargs = vec![
        mnt.to_str().unwrap(),
        keep.to_str().unwrap(),
        s.glue.to_str().unwrap(),
    ];
    sargs.extend(a);
    if in_mount_namespace(script, &sargs).is_none() {
        return;
    }
    let err = read(&keep.join("b.err"));
    assert_ne!(read(&keep.join("b.rc")).trim(), "0");
    assert!(
        err.contains("Read-only file system") && err.contains("/b"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        read(&keep.join("eval.rc")).trim(),
        "0",
        "{}",
        read(&keep.join("eval.err"))
    );
    assert!(read(&keep.join("eval.out")).contains("accuracy"));
}
