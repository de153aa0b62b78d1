//! A sweep as a Slurm job array: one array task per run (task I runs shard I/N, i.e. run I of
//! the plan), requeue-safe because runs resume from their checkpoints, and a report job that
//! starts when the array has ended, whatever became of its tasks (`afterany`).
use std::path::{Path, PathBuf};

use super::SweepPlan;
use crate::error::{Error, Result};

/// How the array is submitted.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Array tasks running at the same time (`--array=0-(N-1)%K`).
    pub concurrent: usize,
    /// CPUs per task (also the runs' `--threads`).
    pub cpus: usize,
    /// GPUs per task (`--gres=gpu:G`; 0: none).
    pub gpus: usize,
    /// `--time` of each task, e.g. `24:00:00`.
    pub time: Option<String>,
    /// More `sbatch` options, verbatim (e.g. `--partition=gpu`).
    pub extra: Vec<String>,
}

/// The two batch scripts of a sweep, written into `SWEEP/slurm/`.
#[derive(Debug)]
pub struct Scripts {
    pub array: PathBuf,
    pub report: PathBuf,
}

/// Quotes a word for a POSIX shell.
fn q(s: &str) -> String {
    shell_words::quote(s).into_owned()
}

/// Checks a value for an `#SBATCH` line, which is not a shell line: sbatch splits it at
/// whitespace and reads quotes and `#` itself, and a newline would end the directive and make
/// the rest a command of the script. What such a line cannot carry is refused, not escaped.
fn sbatch_word(what: &str, value: &str) -> Result<()> {
    let bad = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'\\#`$".contains(*c));
    if value.is_empty() || bad.is_some() {
        return Err(Error::Invalid(format!(
            "{what} {}: an #SBATCH line cannot carry {}; use a value without spaces, quotes, \
             `#`, `$`, backslashes or control characters",
            crate::excerpt::quoted(value),
            match bad {
                Some(c) => format!("the character {c:?}"),
                None => "an empty value".to_string(),
            }
        )));
    }
    Ok(())
}

/// Checks `--time`: Slurm's forms `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, or
/// `UNLIMITED`/`INFINITE`.
fn check_time(t: &str) -> Result<()> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let ok = if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("infinite") {
        true
    } else {
        let (days, rest) = match t.split_once('-') {
            Some((d, r)) => (Some(d), r),
            None => (None, t),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        days.is_none_or(digits) && parts.iter().all(|p| digits(p)) && parts.len() <= 3
    };
    if !ok {
        return Err(Error::Invalid(format!(
            "--slurm-time {}: expected a Slurm time limit such as 90, 2:00:00 or 1-12:00:00",
            crate::excerpt::quoted(t)
        )));
    }
    Ok(())
}

/// Checks every value that [`write_scripts`] puts into an `#SBATCH` line or a shell line,
/// before anything is written.
pub fn check(plan: &SweepPlan, opts: &SlurmOptions, env: &[(String, String)]) -> Result<()> {
    check_options(opts, env)?;
    let dir = std::path::absolute(plan.dir.join("slurm")).map_err(|e| Error::io(&plan.dir, e))?;
    // Task logs go to `--output=DIR/...`: the folder must fit an #SBATCH line, and `%` would
    // be read as one of Slurm's file name patterns.
    let dir_text = dir.to_str().ok_or_else(|| {
        Error::Invalid(format!(
            "the sweep folder {} is not valid UTF-8, which an #SBATCH line cannot name",
            dir.display()
        ))
    })?;
    sbatch_word("the sweep folder", dir_text)?;
    if dir_text.contains('%') {
        return Err(Error::Invalid(format!(
            "the sweep folder {dir_text} holds `%`, which Slurm reads as a file name pattern \
             in --output: choose an `output` without it"
        )));
    }
    Ok(())
}

fn check_options(opts: &SlurmOptions, env: &[(String, String)]) -> Result<()> {
    if let Some(t) = &opts.time {
        check_time(t)?;
    }
    for a in &opts.extra {
        sbatch_word("--slurm-arg", a)?;
        if !a.starts_with('-') {
            return Err(Error::Invalid(format!(
                "--slurm-arg {}: expected an sbatch option such as --partition=gpu",
                crate::excerpt::quoted(a)
            )));
        }
    }
    for (k, _) in env {
        let ident = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(Error::Invalid(format!(
                "environment variable name {} cannot be exported by a script",
                crate::excerpt::quoted(k)
            )));
        }
    }
    Ok(())
}

/// Writes `SWEEP/slurm/array.sh` and `report.sh` for `plan`, whose sweep file is `config`;
/// `exe` is the clsnorm binary the tasks run, `env` the variables they need (e.g. `GLUE_DIR`).
/// Paths are made absolute, since Slurm starts jobs in the submission directory of another node.
pub fn write_scripts(
    plan: &SweepPlan,
    config: &Path,
    exe: &Path,
    env: &[(String, String)],
    opts: &SlurmOptions,
) -> Result<Scripts> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let dir = abs(&plan.dir.join("slurm"))?;
    let n = plan.runs.len();
    if n == 0 {
        return Err(Error::Invalid("the sweep has no runs".into()));
    }
    check(plan, opts, env)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The job name is a label: kept to characters every Slurm tool prints as they are.
    let job_name = super::sanitize(&plan.name);
    let (config, exe, sweep_dir) = (abs(config)?, abs(exe)?, abs(&plan.dir)?);
    let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?;
    let lines = |s: &mut String, words: &[String]| {
        for w in words {
            s.push_str(&format!("#SBATCH {w}\n"));
        }
    };
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", q(v)))
        .collect();
    let mut array = String::from("#!/bin/bash\n");
    let mut head = vec![
        format!("--job-name={job_name}"),
        format!("--array=0-{}%{}", n - 1, opts.concurrent.max(1)),
        format!("--cpus-per-task={}", opts.cpus.max(1)),
        "--requeue".into(),
        format!("--output={}", dir.join("task-%A_%a.out").display()),
    ];
    if opts.gpus > 0 {
        head.push(format!("--gres=gpu:{}", opts.gpus));
    }
    if let Some(t) = &opts.time {
        head.push(format!("--time={t}"));
    }
    head.extend(opts.extra.iter().cloned());
    lines(&mut array, &head);
    array.push_str(&format!(
        "# Task I runs run I of the plan ({n} runs); a requeued task resumes it from its checkpoint.\n\
         set -euo pipefail\ncd {}\n{exports}\
         I=$((SLURM_ARRAY_TASK_ID - ${{SLURM_ARRAY_TASK_MIN:-0}}))\n\
         exec {} sweep --config {} --shard \"$I/{n}\" --jobs 1 --threads {}\n",
        q(&cwd.display().to_string()),
        q(&exe.display().to_string()),
        q(&config.display().to_string()),
        opts.cpus.max(1)
    ));
    let mut report = String::from("#!/bin/bash\n");
    lines(
        &mut report,
        &[
            format!("--job-name={job_name}-report"),
            "--cpus-per-task=1".into(),
            format!("--output={}", dir.join("report-%j.out").display()),
        ],
    );
    report.push_str(&format!(
        "# After the array, whatever became of its tasks: the report of what finished.\n\
         set -euo pipefail\ncd {}\nexec {} report {}\n",
        q(&cwd.display().to_string()),
        q(&exe.display().to_string()),
        q(&sweep_dir.display().to_string())
    ));
    let scripts = Scripts {
        array: dir.join("array.sh"),
        report: dir.join("report.sh"),
    };
    crate::atomic::write_bytes(&scripts.array, array.as_bytes())?;
    crate::atomic::write_bytes(&scripts.report, report.as_bytes())?;
    Ok(scripts)
}

/// Submits the array and the report job after it (`sbatch --parsable`); returns their job ids.
pub fn submit(scripts: &Scripts) -> Result<(String, String)> {
    let sbatch = |args: &[String]| -> Result<String> {
        let out = std::process::Command::new("sbatch")
            .arg("--parsable")
            .args(args)
            .output()
            .map_err(|e| {
                Error::Invalid(format!(
                    "cannot run sbatch ({e}): is Slurm installed and on PATH?"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "sbatch failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // `--parsable` prints `ID` or `ID;CLUSTER`.
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string())
    };
    let array = sbatch(&[scripts.array.display().to_string()])?;
    let report = sbatch(&[
        format!("--dependency=afterany:{array}"),
        scripts.report.display().to_string(),
    ])?;
    Ok((array, report))
}
