//! Sweeps: expansion, naming, sharding, skip/resume, the report's statistics on a partial sweep,
//! and one real sweep of a tiny model through the binary.
mod common;

use std::path::Path;
use std::process::Command;

use clsnorm::report::Report;
use clsnorm::sweep::{status, RunStatus, Shard, SweepConfig, SweepPlan};

fn config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn plan(dir: &Path, text: &str) -> clsnorm::Result<SweepPlan> {
    let path = config(dir, text);
    SweepConfig::from_file(&path)?.expand(&path)
}

const GRID: &str = r#"
output = "OUT"
tasks = ["RTE", "MRPC"]
seeds = [1, 2]
[[norm]]
name = "none"
[[norm]]
name = "isobn"
beta = [0.25, 0.5]
eps = 1e-3
[args]
lr = [2e-5, 5e-5]
epochs = 1
trace-grads = true
"#;

#[test]
fn expansion_is_the_cross_product_with_deterministic_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path(), GRID).unwrap();
    // 2 tasks x 2 lr x (none + 2 isobn betas) x 2 seeds
    assert_eq!(p.runs.len(), 24);
    assert_eq!(p.name, "sweep");
    assert_eq!(p.dir, Path::new("OUT"));
    let names: Vec<&str> = p.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        &names[..6],
        [
            "RTE_none_lr=0.00002_s1",
            "RTE_none_lr=0.00002_s2",
            "RTE_isobn-beta=0.25_lr=0.00002_s1",
            "RTE_isobn-beta=0.25_lr=0.00002_s2",
            "RTE_isobn-beta=0.5_lr=0.00002_s1",
            "RTE_isobn-beta=0.5_lr=0.00002_s2",
        ]
    );
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 24);
    let r = p
        .runs
        .iter()
        .find(|r| r.name == "MRPC_isobn-beta=0.5_lr=0.00005_s2")
        .unwrap();
    assert_eq!(r.variant, "isobn-beta=0.5_lr=0.00005");
    assert_eq!(
        (r.task.as_str(), r.norm.as_str(), r.seed),
        ("MRPC", "isobn", 2)
    );
    assert_eq!(
        r.command(Path::new("OUT")).join(" "),
        "finetune --model models/all-MiniLM-L6-v2 --task MRPC --seed 2 --norm isobn \
         --norm-opt beta=0.5 --norm-opt eps=0.001 --epochs 1 --lr 0.00005 --trace-grads \
         --output OUT/MRPC_isobn-beta=0.5_lr=0.00005_s2"
    );
    // The same file expands to the same plan.
    let again = plan(dir.path(), GRID).unwrap();
    assert_eq!(again.runs, p.runs);
}

#[test]
fn bad_sweep_files_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("tasks = []\nseeds = [1]\n", "`tasks` is empty"),
        ("tasks = [\"RTE\"]\nseeds = []\n", "`seeds` is empty"),
        ("tasks = [\"RTE\"]\nseeds = [1, 1]\n", "seed twice"),
        ("tasks = [\"RTE\"]\nseeds = [1]\n[args]\nseed = 3\n", "set by the sweep itself"),
        ("tasks = [\"RTE\"]\nseeds = [1]\n[args]\nnorm-opt = \"beta=0.3\"\n", "normalizer option"),
        ("tasks = [\"RTE\"]\nseeds = [1]\n[args]\nlr = []\n", "empty list"),
        ("tasks = [\"RTE\"]\nseeds = [1]\n[args]\nlr = [[1]]\n", "lists of lists"),
        (
            "tasks = [\"RTE\"]\nseeds = [1]\n[[norm]]\nname = \"isobn\"\nlabel = \"x\"\n[[norm]]\nname = \"none\"\nlabel = \"x\"\n",
            "both named `x`",
        ),
        ("tasks = [\"RTE\"]\nseeds = [1]\nbogus = 1\n", "unknown field"),
        ("tasks = \"RTE\"\nseeds = [1]\n", "invalid type"),
    ];
    for (text, want) in cases {
        let e = plan(dir.path(), text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(e.contains("sweep.toml"), "{e}");
    }
    // Two entries of one normalizer are told apart by their options.
    let p = plan(
        dir.path(),
        "tasks = [\"RTE\"]\nseeds = [1]\n[[norm]]\nname = \"isobn\"\nbeta = 0.25\n[[norm]]\nname = \"isobn\"\nbeta = 0.5\n",
    )
    .unwrap();
    let v: Vec<&str> = p.runs.iter().map(|r| r.variant.as_str()).collect();
    assert_eq!(v, ["isobn-beta=0.25", "isobn-beta=0.5"]);
}

/// A few option lists multiply into more runs than memory holds: the plan is counted before it
/// is built (this file used to abort the process at a 6 GB memory limit, `ulimit -v`).
#[test]
fn sweeps_beyond_the_run_bound_are_refused_before_expanding() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = |n: usize| (1..=n).map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let at_bound = format!(
        "tasks = [\"RTE\"]\nseeds = [{}]\n",
        seeds(clsnorm::sweep::MAX_RUNS)
    );
    assert_eq!(plan(dir.path(), &at_bound).unwrap().runs.len(), 100_000);
    let over = format!("tasks = [\"RTE\", \"MRPC\"]\nseeds = [{}]\n", seeds(50_001));
    let e = plan(dir.path(), &over).unwrap_err().to_string();
    assert!(e.contains("the sweep expands to 100002 runs"), "{e}");

    let ten = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]";
    let mut text = format!(
        "output = \"{}\"\ntasks = [\"RTE\"]\nseeds = [1, 2]\n",
        common::p(&dir.path().join("out"))
    );
    text.push_str(&format!(
        "[[norm]]\nname = \"isobn\"\nbeta = {ten}\n[args]\n"
    ));
    for key in [
        "epochs",
        "batch-size",
        "max-len",
        "eval-batch-size",
        "lr",
        "dropout",
    ] {
        text.push_str(&format!("{key} = {ten}\n"));
    }
    let path = config(dir.path(), &text);
    let o = clsnorm(&["sweep", "--config", common::p(&path), "--list"], &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the sweep expands to 20000000 runs (tasks x models x option lists x normalizer variants x seeds); at most 100000"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}

#[test]
fn shards_cover_every_run_exactly_once() {
    for n in 1..=7 {
        let mut seen = vec![0; 24];
        for i in 0..n {
            let s: Shard = format!("{i}/{n}").parse().unwrap();
            for (pos, count) in seen.iter_mut().enumerate() {
                if s.contains(pos) {
                    *count += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{n}: {seen:?}");
    }
    for bad in ["3/3", "1/0", "a/2", "2", "-1/2", "1/2/3"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}

#[test]
fn finished_runs_are_skipped_and_interrupted_ones_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "output = {:?}\ntasks = [\"RTE\"]\nseeds = [1, 2, 3]\n",
        dir.path().join("sw")
    );
    let p = plan(dir.path(), &text).unwrap();
    let run_dir = |i: usize| p.dir.join(&p.runs[i].dir);
    // Run 0 finished, run 1 stopped after a checkpoint, run 2 never started; a summary that
    // says "interrupted" is not finished either.
    for i in 0..2 {
        std::fs::create_dir_all(run_dir(i)).unwrap();
        std::fs::write(run_dir(i).join("config.json"), "{}").unwrap();
    }
    let summary = |interrupted: bool| {
        serde_json::json!({
            "task": "RTE", "primary_metric": "accuracy", "best_epoch": 1, "best_primary": 60.0,
            "best_dev": [], "final_dev": [], "epochs": 1, "global_steps": 3, "wall_secs": 1.0,
            "interrupted": interrupted,
        })
        .to_string()
    };
    // What `report` would refuse is no finished run for `sweep` either.
    std::fs::write(run_dir(0).join("summary.json"), r#"{"interrupted": false}"#).unwrap();
    let e = status(&run_dir(0)).unwrap_err().to_string();
    assert!(
        e.contains("summary.json") && e.contains("not a run summary"),
        "{e}"
    );
    std::fs::write(run_dir(0).join("summary.json"), summary(false)).unwrap();
    std::fs::write(run_dir(1).join("summary.json"), summary(true)).unwrap();
    assert_eq!(status(&run_dir(0)).unwrap(), RunStatus::Done);
    assert_eq!(status(&run_dir(1)).unwrap(), RunStatus::Interrupted);
    assert_eq!(status(&run_dir(2)).unwrap(), RunStatus::Pending);
    assert_eq!(
        p.next_command(&p.runs[0], status(&run_dir(0)).unwrap()),
        None
    );
    assert_eq!(
        p.next_command(&p.runs[1], status(&run_dir(1)).unwrap())
            .unwrap(),
        ["finetune", "--resume", &run_dir(1).display().to_string()]
    );
    let fresh = p
        .next_command(&p.runs[2], status(&run_dir(2)).unwrap())
        .unwrap();
    assert_eq!(fresh, p.runs[2].command(&p.dir));
    assert!(fresh.ends_with(&["--output".into(), run_dir(2).display().to_string()]));
}

/// A finished run directory as `finetune` leaves it (the fields the report reads).
fn fake_run(dir: &Path, metric: &str, per_epoch: &[f64]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let best = per_epoch.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let best_epoch = per_epoch.iter().position(|&v| v == best).unwrap() + 1;
    let last = per_epoch[per_epoch.len() - 1];
    let mut lines = String::new();
    for (i, v) in per_epoch.iter().enumerate() {
        lines.push_str(&format!(
            r#"{{"epoch":{},"global_step":{},"train_loss":0.5,"dev":[["dev",{{"{metric}":{v}}}]],"primary":{v},"lr":0.0,"train_secs":1.0,"eval_secs":1.0,"train_tokens_per_sec":1.0}}"#,
            i + 1,
            10 * (i + 1)
        ));
        lines.push('\n');
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    let loss: String = (1..=3)
        .map(|k| {
            format!(
                "{{\"step\":{},\"epoch\":1,\"loss\":{},\"updates\":10,\"lr\":0.0}}\n",
                10 * k,
                1.0 / k as f64
            )
        })
        .collect();
    std::fs::write(dir.join("train_loss.jsonl"), loss).unwrap();
    std::fs::write(
        dir.join("summary.json"),
        format!(
            r#"{{"task":"T","primary_metric":"{metric}","best_epoch":{best_epoch},"best_primary":{best},"best_dev":[["dev",{{"{metric}":{best}}}]],"final_dev":[["dev",{{"{metric}":{last}}}]],"epochs":{},"global_steps":30,"wall_secs":60.0,"interrupted":false}}"#,
            per_epoch.len()
        ),
    )
    .unwrap();
}

#[test]
fn report_on_a_partial_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sw");
    let text = format!(
        "output = {:?}\ntasks = [\"RTE\", \"CoLA\"]\nseeds = [1, 2, 3]\n[[norm]]\nname = \"none\"\n[[norm]]\nname = \"isobn\"\n",
        sweep
    );
    let p = plan(dir.path(), &text).unwrap();
    std::fs::create_dir_all(&sweep).unwrap();
    clsnorm::atomic::write_json(&sweep.join("sweep.json"), &p).unwrap();
    // RTE: none 0.50/0.60/0.55 (best), isobn 0.52/0.66/0.60 -> paired +2, +6, +5 (x100).
    // isobn seed 2's last epoch is below its best.
    let rte = [
        ("RTE_none_s1", vec![0.45, 0.50]),
        ("RTE_none_s2", vec![0.60, 0.58]),
        ("RTE_none_s3", vec![0.55]),
        ("RTE_isobn_s1", vec![0.52]),
        ("RTE_isobn_s2", vec![0.66, 0.61]),
        ("RTE_isobn_s3", vec![0.60]),
    ];
    for (name, epochs) in &rte {
        fake_run(&sweep.join(name), "accuracy", epochs);
        // Which code trained them: one run was resumed by another build.
        let builds: &[&str] = if *name == "RTE_none_s2" {
            &["unrecorded", "abc123"]
        } else {
            &["abc123"]
        };
        let path = sweep.join(name).join("summary.json");
        let mut summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        summary["builds"] = builds.into();
        std::fs::write(&path, summary.to_string()).unwrap();
    }
    // CoLA: only none seed 1 finished; isobn seed 1 stopped after one epoch.
    fake_run(&sweep.join("CoLA_none_s1"), "mcc", &[0.30]);
    let stopped = sweep.join("CoLA_isobn_s1");
    fake_run(&stopped, "mcc", &[0.2]);
    std::fs::remove_file(stopped.join("summary.json")).unwrap();

    let r = Report::build(&sweep).unwrap();
    let row = |t: &str, v: &str| {
        r.rows
            .iter()
            .find(|x| x.task == t && x.variant == v)
            .unwrap()
    };
    let none = row("RTE", "none");
    let b = none.best.unwrap();
    assert_eq!((none.done, none.planned), (3, 3));
    assert!((b.median - 55.0).abs() < 1e-9 && (b.mean - 55.0).abs() < 1e-9);
    // deviations -5, 5, 0: variance 50 / 2
    assert!((b.std.unwrap() - 5.0).abs() < 1e-9);
    assert!(none.vs_none.is_none());
    let iso = row("RTE", "isobn");
    let last = iso.last.unwrap();
    assert!((last.median - 60.0).abs() < 1e-9, "{last:?}");
    let d = iso.vs_none.as_ref().unwrap();
    assert_eq!(d.seeds, [1, 2, 3]);
    assert!((d.mean_diff - 13.0 / 3.0).abs() < 1e-9, "{}", d.mean_diff);
    assert!((d.median_diff - 5.0).abs() < 1e-9);
    assert_eq!(d.p_value, 0.25);
    // 95% t-interval: 13/3 ± t(0.975, 2) * sd / sqrt(3), sd = sqrt(13/3).
    let [lo, hi] = d.ci95.unwrap();
    let half = 4.303 * (13.0f64 / 3.0).sqrt() / 3.0f64.sqrt();
    assert!((lo - (13.0 / 3.0 - half)).abs() < 1e-9 && (hi - (13.0 / 3.0 + half)).abs() < 1e-9);
    let cola_iso = row("CoLA", "isobn");
    assert_eq!((cola_iso.done, cola_iso.planned), (0, 3));
    assert!(cola_iso.best.is_none() && cola_iso.vs_none.is_none());
    let cola_none = row("CoLA", "none");
    assert_eq!(cola_none.best.unwrap().std, None);
    assert_eq!(cola_none.metric.as_deref(), Some("mcc"));
    // The GLUE-style average needs every task: none has both (55 and 30), isobn only RTE.
    let avg = |v: &str| r.averages.iter().find(|a| a.variant == v).unwrap();
    assert!((avg("none").value.unwrap() - 42.5).abs() < 1e-9);
    assert_eq!(avg("isobn").value, None);
    assert_eq!(avg("isobn").tasks_with_results, 1);

    let out = dir.path().join("report");
    r.write(&out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("7 of 12 runs finished, 1 interrupted, 4 not started"),
        "{md}"
    );
    assert!(
        md.contains("`CoLA_isobn_s1`: interrupted after 1 epoch(s)"),
        "{md}"
    );
    assert!(md.contains("`CoLA_none_s3`: not started"), "{md}");
    assert!(
        md.contains("trained the finished runs: `abc123` (5 runs); `unrecorded` then `abc123` (1 run); not recorded (1 run)."),
        "{md}"
    );
    assert!(md.contains("| isobn | 3/3 | 60.0 |"), "{md}");
    // The summary table: normalizers x tasks, and the average only where every task has a result.
    assert!(
        md.contains("| normalizer | RTE (accuracy) | CoLA (mcc) | GLUE-style average |"),
        "{md}"
    );
    assert!(
        md.contains("| none | 55.0 [50.0, 60.0] | 30.0 (1/3 seeds) | 42.5 |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| isobn | 60.0 [52.0, 66.0]; Δ +4.3 [-0.8, +9.5], p 0.25 | – (0/3) | – (1/2 tasks) |"
        ),
        "{md}"
    );
    assert!(md.contains("+4.3 / +5.0 [-0.8, +9.5] (n=3) | 0.25"), "{md}");
    assert!(
        out.join("vs_none.png").is_file()
            && md.contains("![Paired difference to none](vs_none.png)")
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4);
    assert!(csv.contains("RTE,none,none,accuracy,3,3,55.0000,55.0000,5.0000,50.0000,60.0000"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 12);
    for pic in ["RTE_dev.png", "RTE_loss.svg", "CoLA_dev.png"] {
        assert!(out.join(pic).is_file(), "{pic}");
    }
    // No gradient traces, no gradient picture.
    assert!(!out.join("RTE_cls_grad.png").exists());

    // The same sweep run again elsewhere joins as a replication: its seeds are runs of their
    // own, paired within the replication; and any two variants can be compared.
    let rep = clsnorm::report::Records::read(&out.join("results.json")).unwrap();
    let inputs = clsnorm::report::Inputs {
        replications: vec![("gpu".into(), rep)],
        pairs: vec![("isobn".into(), "none".into())],
        ..Default::default()
    };
    let r2 = Report::assemble(&p, &inputs).unwrap();
    let iso2 = r2
        .rows
        .iter()
        .find(|x| x.task == "RTE" && x.variant == "isobn")
        .unwrap();
    assert_eq!((iso2.done, iso2.planned), (6, 6));
    let d2 = iso2.vs_none.as_ref().unwrap();
    assert_eq!(d2.seeds, [1, 2, 3, 1, 2, 3]);
    assert_eq!(d2.replications, ["", "", "", "gpu", "gpu", "gpu"]);
    // Six positive differences: the sign-flip p is 2 / 2^6.
    assert_eq!(d2.p_value, 2.0 / 64.0);
    let pair = r2.pairs.iter().find(|x| x.task == "RTE").unwrap();
    let pd = pair.paired.as_ref().unwrap();
    assert_eq!((pd.mean_diff, pd.p_value), (d2.mean_diff, d2.p_value));
    assert!(r2.runs.iter().any(|x| x.name == "RTE_isobn_s2@gpu"));
    let e = Report::assemble(
        &p,
        &clsnorm::report::Inputs {
            pairs: vec![("isobn".into(), "zca".into())],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no variant `zca`"), "{e}");
}

/// Before any run of a GLUE task finishes, its section already names the task's metric.
#[test]
fn a_task_without_finished_runs_is_headed_by_its_metric() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sw");
    let text = format!("output = {sweep:?}\ntasks = [\"MRPC\", \"mine\"]\nseeds = [1]\n[args]\ntrain-file = \"t.csv\"\n");
    let p = plan(dir.path(), &text).unwrap();
    std::fs::create_dir_all(&sweep).unwrap();
    clsnorm::atomic::write_json(&sweep.join("sweep.json"), &p).unwrap();
    let md = Report::build(&sweep).unwrap().markdown(&[]);
    assert!(md.contains("\n## MRPC (acc_and_f1)\n"), "{md}");
    assert!(md.contains("\n## mine (metric)\n"), "{md}");
}

fn clsnorm(args: &[&str], envs: &[(&str, &Path)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clsnorm"));
    c.args(args).env_remove("GLUE_DIR");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A sweep of a tiny random model on toy SST-2 with `n_train` examples: none and isobn x seeds
/// 1-2, with `args` added to its `[args]`. Returns (temp dir, GLUE dir, sweep dir, sweep file).
fn tiny_sweep(
    n_train: usize,
    args: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::tiny_model_dir(&model, 3);
    let glue = dir.path().join("glue");
    common::write_toy_sst(&glue, n_train, 16, 5);
    let sweep = dir.path().join("sw");
    let cfg = config(
        dir.path(),
        &format!(
            "output = {sweep:?}\nmodel = {model:?}\ntasks = [\"sst2\"]\nseeds = [1, 2]\n\
             [[norm]]\nname = \"none\"\n[[norm]]\nname = \"isobn\"\n\
             [args]\nbatch-size = 8\nmax-len = 16\nthreads = 1\n{args}\n"
        ),
    );
    (dir, glue, sweep, cfg)
}

#[test]
fn a_tiny_sweep_runs_skips_resumes_and_reports() {
    let (dir, glue, sweep, cfg) = tiny_sweep(48, "epochs = 2\ntrace-grads = true");
    let cfg_s = cfg.to_str().unwrap();
    let env = [("GLUE_DIR", glue.as_path())];
    let o = clsnorm(
        &["sweep", "--config", cfg_s, "--list", "--shard", "1/2"],
        &env,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with("SST-2_none_s2\tpending\tclsnorm finetune --model "),
        "{listed}"
    );
    assert!(!sweep.exists(), "--list must not write anything");

    let o = clsnorm(&["sweep", "--config", cfg_s, "--jobs", "2"], &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("4 run(s) executed, 0 already done, 0 failed"),
        "{err}"
    );
    for name in [
        "SST-2_none_s1",
        "SST-2_none_s2",
        "SST-2_isobn_s1",
        "SST-2_isobn_s2",
    ] {
        assert_eq!(
            status(&sweep.join(name)).unwrap(),
            RunStatus::Done,
            "{name}"
        );
        assert!(sweep.join("logs").join(format!("{name}.log")).is_file());
    }
    // The training loss is logged every 10 updates and at the end of each epoch (48 / 8 = 6
    // updates per epoch).
    let loss = std::fs::read_to_string(sweep.join("SST-2_none_s1/train_loss.jsonl")).unwrap();
    let steps: Vec<u64> = loss
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [6, 10, 12]);

    // A second invocation has nothing to do; an interrupted run (summary gone) is resumed.
    std::fs::remove_file(sweep.join("SST-2_isobn_s2/summary.json")).unwrap();
    let o = clsnorm(&["sweep", "--config", cfg_s], &env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("1 run(s) executed, 3 already done, 0 failed"),
        "{err}"
    );
    let log = std::fs::read_to_string(sweep.join("logs/SST-2_isobn_s2.log")).unwrap();
    assert!(log.contains("resuming from"), "{log}");

    // A changed sweep file must not reuse the directory.
    let changed = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("epochs = 2", "epochs = 3");
    std::fs::write(&cfg, changed).unwrap();
    let o = clsnorm(&["sweep", "--config", cfg_s], &env);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("other options"));

    let o = clsnorm(&["report", sweep.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(csv.contains("SST-2,none,none,accuracy,2,2,"), "{csv}");
    assert!(csv.contains("SST-2,isobn,isobn,accuracy,2,2,"), "{csv}");
    for f in [
        "report.md",
        "results.json",
        "SST-2_dev.png",
        "SST-2_loss.png",
        "SST-2_cls_grad.png",
    ] {
        assert!(sweep.join(f).is_file(), "{f}");
    }
    // The same report, planned from the sweep file, elsewhere.
    let elsewhere = dir.path().join("elsewhere");
    let o = clsnorm(
        &[
            "report",
            "--config",
            cfg_s,
            "--output",
            elsewhere.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), csv);
    assert!(elsewhere.join("report.md").is_file());
}

#[test]
fn a_signal_stops_the_sweep_and_leaves_its_runs_resumable() {
    let (_dir, glue, sweep, cfg) = tiny_sweep(800, "epochs = 3");
    let cfg_s = cfg.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clsnorm"))
        .args(["sweep", "--config", cfg_s, "--jobs", "2"])
        .env("GLUE_DIR", &glue)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both runs of the first pair are training once both have logged their first losses.
    let first = ["SST-2_none_s1", "SST-2_none_s2"];
    let t0 = std::time::Instant::now();
    while !first
        .iter()
        .all(|r| sweep.join(r).join("train_loss.jsonl").is_file())
    {
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended early");
        assert!(t0.elapsed().as_secs() < 120, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Only the sweep gets the signal, as from Ctrl-C at a terminal (the runs have their own
    // process group); it must pass it on.
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("stopped by a signal: 2 run(s) interrupted, 2 not started"),
        "{err}"
    );
    for r in first {
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(sweep.join(r).join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(s["interrupted"], true, "{r}");
        assert!(s["global_steps"].as_u64().unwrap() < 300, "{r}: {s}");
        assert_eq!(
            status(&sweep.join(r)).unwrap(),
            RunStatus::Interrupted,
            "{r}"
        );
    }
    for r in ["SST-2_isobn_s1", "SST-2_isobn_s2"] {
        assert!(!sweep.join(r).exists(), "{r} must not have started");
    }
    let inv: Vec<serde_json::Value> = std::fs::read_to_string(sweep.join("invocations.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0]["stopped"], true);
    assert_eq!(inv[0]["executed"], 2);
    assert_eq!(inv[0]["interrupted"], 2);
    assert_eq!(inv[0]["failed"], 0);

    let o = clsnorm(
        &["sweep", "--config", cfg_s, "--jobs", "2"],
        &[("GLUE_DIR", &glue)],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("4 run(s) executed, 0 already done, 0 failed, 0 interrupted"),
        "{err}"
    );
    for r in first {
        let log = std::fs::read_to_string(sweep.join("logs").join(format!("{r}.log"))).unwrap();
        assert!(log.contains("resuming from"), "{r}: {log}");
        assert_eq!(status(&sweep.join(r)).unwrap(), RunStatus::Done, "{r}");
    }
    let o = clsnorm(&["report", sweep.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(sweep.join("report.md")).unwrap();
    assert!(
        md.contains("- shard 0/1, 2 job(s): 2 run(s) executed (0 failed, 2 interrupted) in "),
        "{md}"
    );
    assert!(md.contains(" min, stopped by a signal\n"), "{md}");
    assert!(md.contains("4 of 4 runs finished"), "{md}");
}

/// Writes `grads.jsonl` with these [CLS] gradient norms (global norm: 10x each).
fn fake_grads(dir: &Path, cls: &[f64]) {
    let lines: String = cls
        .iter()
        .enumerate()
        .map(|(i, &g)| {
            let rec = clsnorm::train::GradRecord {
                step: i + 1,
                loss: 0.5,
                cls_grad_norm: g,
                normalized_grad_norm: g,
                max_dim_grad: g,
                max_dim: 0,
                global_grad_norm: 10.0 * g,
                groups: Default::default(),
            };
            serde_json::to_string(&rec).unwrap() + "\n"
        })
        .collect();
    std::fs::write(dir.join("grads.jsonl"), lines).unwrap();
}

#[test]
fn gradient_scales_are_medians_over_updates_then_seeds_relative_to_none() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sw");
    let text = format!(
        "output = {sweep:?}\ntasks = [\"RTE\"]\nseeds = [1, 2, 3]\n[[norm]]\nname = \"none\"\n[[norm]]\nname = \"isobn\"\n"
    );
    let p = plan(dir.path(), &text).unwrap();
    std::fs::create_dir_all(&sweep).unwrap();
    clsnorm::atomic::write_json(&sweep.join("sweep.json"), &p).unwrap();
    for name in p.runs.iter().map(|r| r.name.clone()) {
        fake_run(&sweep.join(&name), "accuracy", &[0.5]);
    }
    // none: per-run medians 2 and 4, seed 3 untraced -> 3 over 2 seeds.
    fake_grads(&sweep.join("RTE_none_s1"), &[1.0, 2.0, 3.0]);
    fake_grads(&sweep.join("RTE_none_s2"), &[2.0, 4.0, 6.0]);
    // isobn: 6 and 9 (an outlier update does not move a median) -> 7.5; seed 3 was interrupted,
    // so its trace is left out.
    fake_grads(&sweep.join("RTE_isobn_s1"), &[6.0, 6.0, 6.0]);
    fake_grads(&sweep.join("RTE_isobn_s2"), &[9.0, 9.0, 100.0]);
    fake_grads(&sweep.join("RTE_isobn_s3"), &[1000.0]);
    std::fs::remove_file(sweep.join("RTE_isobn_s3/summary.json")).unwrap();

    let r = Report::build(&sweep).unwrap();
    let row = |v: &str| r.rows.iter().find(|x| x.variant == v).unwrap();
    let none = row("none").cls_grad.unwrap();
    assert_eq!((none.median, none.seeds, none.vs_none), (3.0, 2, Some(1.0)));
    let iso = row("isobn").cls_grad.unwrap();
    assert_eq!((iso.median, iso.seeds, iso.vs_none), (7.5, 2, Some(2.5)));
    let iso_global = row("isobn").global_grad.unwrap();
    assert_eq!((iso_global.median, iso_global.vs_none), (75.0, Some(2.5)));

    let out = dir.path().join("report");
    r.write(&out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| none | 3.000 (1.00x; n=2) |"), "{md}");
    assert!(md.contains("| isobn | 7.500 (2.50x; n=2) |"), "{md}");
    assert!(md.contains("| isobn | 75.000 (2.50x; n=2) |"), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(
        csv.lines().any(|l| l.starts_with("RTE,isobn,")
            && l.ends_with(",7.5000,2.5000,75.0000,2.5000,0.0000,0.0000")),
        "{csv}"
    );
}

#[test]
fn a_report_takes_the_runs_it_lacks_from_an_earlier_reports_records() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sw");
    let text = format!(
        "output = {sweep:?}\ntasks = [\"RTE\"]\nseeds = [1, 2]\n[[norm]]\nname = \"none\"\n[[norm]]\nname = \"isobn\"\n"
    );
    let p = plan(dir.path(), &text).unwrap();
    std::fs::create_dir_all(&sweep).unwrap();
    clsnorm::atomic::write_json(&sweep.join("sweep.json"), &p).unwrap();
    // none 0.50/0.60, isobn 0.55/0.70 -> paired +5, +10; [CLS] gradient medians 2, 4 and 20, 40.
    for (name, acc, g) in [
        ("RTE_none_s1", 0.50, 2.0),
        ("RTE_none_s2", 0.60, 4.0),
        ("RTE_isobn_s1", 0.55, 20.0),
        ("RTE_isobn_s2", 0.70, 40.0),
    ] {
        fake_run(&sweep.join(name), "accuracy", &[acc - 0.1, acc]);
        fake_grads(&sweep.join(name), &[g, g, 100.0 * g, g]);
    }
    let earlier = dir.path().join("earlier");
    let full = Report::build(&sweep).unwrap();
    full.write(&earlier).unwrap();
    let recorded = earlier.join("results.json");

    // Three run directories go; the fourth is rerun with another result, which must win.
    for name in ["RTE_none_s1", "RTE_none_s2", "RTE_isobn_s1"] {
        std::fs::remove_dir_all(sweep.join(name)).unwrap();
    }
    std::fs::remove_dir_all(sweep.join("RTE_isobn_s2")).unwrap();
    fake_run(&sweep.join("RTE_isobn_s2"), "accuracy", &[0.80]);
    assert_eq!(
        Report::build(&sweep).unwrap().rows[0].done,
        0,
        "without records the none runs are missing"
    );

    let records = clsnorm::report::Records::read(&recorded).unwrap();
    let r = Report::from_plan_and_records(&p, &[records]).unwrap();
    let run = |n: &str| r.runs.iter().find(|x| x.name == n).unwrap();
    assert_eq!(run("RTE_none_s1").from_records.as_deref(), Some(&*recorded));
    assert_eq!(run("RTE_none_s1").epochs, [40.0, 50.0]);
    assert_eq!(run("RTE_isobn_s2").from_records, None);
    assert!((run("RTE_isobn_s2").best.unwrap() - 80.0).abs() < 1e-9);
    let row = |v: &str| r.rows.iter().find(|x| x.variant == v).unwrap();
    assert_eq!(row("none").done, 2);
    let d = row("isobn").vs_none.as_ref().unwrap();
    assert!((d.mean_diff - 12.5).abs() < 1e-9, "{}", d.mean_diff); // +5 and +20
                                                                   // Gradient medians come from the records (none: 2, 4 -> 3); the rerun has no trace.
    let none_grad = row("none").cls_grad.unwrap();
    assert_eq!((none_grad.median, none_grad.seeds), (3.0, 2));
    let iso_grad = row("isobn").cls_grad.unwrap();
    assert_eq!(
        (iso_grad.median, iso_grad.vs_none),
        (20.0, Some(20.0 / 3.0))
    );
    let out = dir.path().join("joined");
    r.write(&out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("4 of 4 runs finished"), "{md}");
    assert!(
        md.contains(&format!(
            "for want of their run directories: 3 from `{}`",
            recorded.display()
        )),
        "{md}"
    );
    // The joined report's records say where each run came from, so they can be joined again.
    let again = clsnorm::report::Records::read(&out.join("results.json")).unwrap();
    let none_s1 = again.runs.iter().find(|x| x.name == "RTE_none_s1").unwrap();
    assert_eq!(none_s1.from_records.as_deref(), Some(&*recorded));
    assert_eq!(none_s1.cls_grad_median, Some(2.0));

    // Through the binary (into a folder of its own: the library wrote `out` without the
    // binary's folder record), and what it refuses: another sweep's records, and a file that
    // is not a report's results.json.
    let out = dir.path().join("joined-cli");
    let ok = clsnorm(
        &[
            "report",
            sweep.to_str().unwrap(),
            "--runs-from",
            recorded.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let json = std::fs::read_to_string(&recorded).unwrap();
    let other = dir.path().join("other.json");
    std::fs::write(
        &other,
        json.replacen("\"sweep\": \"sweep\"", "\"sweep\": \"elsewhere\"", 1),
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"runs\": 3}").unwrap();
    for (file, expected) in [
        (
            &other,
            "holds the runs of sweep `elsewhere`, not of `sweep`",
        ),
        (&bad, "not the results.json of a `clsnorm report`"),
    ] {
        let out = clsnorm(
            &[
                "report",
                sweep.to_str().unwrap(),
                "--runs-from",
                file.to_str().unwrap(),
            ],
            &[],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&file.display().to_string()) && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn every_example_sweep_file_plans_runs_that_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("sweeps")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // `--list` validates every run's command before printing; nothing is run or written.
        let out = Command::new(env!("CARGO_BIN_EXE_clsnorm"))
            .args(["sweep", "--config", path.to_str().unwrap(), "--list"])
            .current_dir(root)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", path.display());
        assert!(!out.stdout.is_empty(), "{}: no runs", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} sweep files in sweeps/");
}

#[test]
fn slurm_scripts_run_one_run_per_array_task_and_the_report_after() {
    use clsnorm::sweep::slurm::{write_scripts, SlurmOptions};
    let dir = tempfile::tempdir().unwrap();
    let p = plan(dir.path(), GRID).unwrap();
    let p = SweepPlan {
        dir: dir.path().join("OUT"),
        ..p
    };
    let opts = SlurmOptions {
        concurrent: 3,
        cpus: 4,
        gpus: 1,
        time: Some("2:00:00".into()),
        extra: vec!["--partition=gpu".into()],
    };
    let env = [("GLUE_DIR".to_string(), "/data/glue dir".to_string())];
    let s = write_scripts(
        &p,
        Path::new("sweep.toml"),
        Path::new("/opt/clsnorm"),
        &env,
        &opts,
    )
    .unwrap();
    let array = std::fs::read_to_string(&s.array).unwrap();
    for want in [
        "#SBATCH --array=0-23%3\n",
        "#SBATCH --cpus-per-task=4\n",
        "#SBATCH --requeue\n",
        "#SBATCH --gres=gpu:1\n",
        "#SBATCH --time=2:00:00\n",
        "#SBATCH --partition=gpu\n",
        "export GLUE_DIR='/data/glue dir'\n",
        "I=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))\n",
        "--shard \"$I/24\" --jobs 1 --threads 4\n",
    ] {
        assert!(array.contains(want), "{want:?} not in\n{array}");
    }
    // The sweep file and output paths are absolute: tasks start elsewhere.
    let config = std::path::absolute("sweep.toml").unwrap();
    assert!(
        array.contains(&format!("sweep --config {}", config.display())),
        "{array}"
    );
    assert!(s.array.starts_with(dir.path().join("OUT/slurm")));
    let report = std::fs::read_to_string(&s.report).unwrap();
    assert!(
        report.contains(&format!(
            "/opt/clsnorm report {}",
            dir.path().join("OUT").display()
        )),
        "{report}"
    );
    // Each task is exactly one run of the plan.
    for i in 0..24 {
        let shard: Shard = format!("{i}/24").parse().unwrap();
        assert_eq!((0..24).filter(|&r| shard.contains(r)).count(), 1);
    }
}

#[test]
fn report_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "tasks = [\"RTE\"]\nseeds = [1]\n");
    let c = cfg.to_str().unwrap();
    for (args, want) in [
        (&["--replication", "gpu"][..], "expected LABEL=RESULTS_JSON"),
        (
            &["--replication", "gpu=/nonexistent/results.json"],
            "results.json",
        ),
        (&["--pair", "none"], "expected A,B"),
        (&["--pair", "none,zca"], "no variant `zca`"),
    ] {
        let out = dir.path().join("rep");
        let mut all = vec!["report", "--config", c, "--output", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = clsnorm(&all, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
