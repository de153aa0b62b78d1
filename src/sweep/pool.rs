//! Runs a sweep's runs on this machine: `jobs` child processes of `clsnorm finetune` at a time,
//! each with its share of the cores and its log under `SWEEP/logs/`, passing SIGINT/SIGTERM
//! on so that every run stops with a resumable checkpoint.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::{status, RunStatus, SweepPlan};
use crate::error::{Error, Result};

/// What became of the runs [`execute`] was given.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Runs started (finished, failed or interrupted).
    pub executed: usize,
    pub failed: Vec<String>,
    /// Runs a signal stopped, left resumable.
    pub interrupted: Vec<String>,
    /// Runs another process took (or finished) between the plan and their start.
    pub elsewhere: Vec<String>,
}

/// What to do with a run when its turn comes, judged then: another sweep of the same plan (a
/// second shell, an array task) may have started or finished it since the plan was read.
enum Turn {
    Run(Vec<String>),
    Elsewhere,
}

/// The run's log, opened for appending and locked for as long as this sweep runs it: a
/// second sweep finding it locked leaves the run (and its log) to the first.
fn claim_log(log: &Path) -> Result<Option<std::fs::File>> {
    let (f, _) = crate::fsread::open_regular_with(
        std::fs::OpenOptions::new().create(true).append(true),
        log,
        u64::MAX,
        crate::fsread::Links::Refuse,
    )?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(log, e)),
    }
}

/// The run's command as it stands now, or `Elsewhere` when it is done or running elsewhere.
fn turn(plan: &SweepPlan, i: usize) -> Result<Turn> {
    let run = &plan.runs[i];
    let st = status(&plan.dir.join(&run.dir))?;
    Ok(match plan.next_command(run, st) {
        Some(cmd) => Turn::Run(cmd),
        None => Turn::Elsewhere,
    })
}

/// Runs `todo` (runs' indices in `plan`) with the executable `exe`, `jobs` at a time, each
/// with `threads` libtorch threads unless its arguments set them. Each run's command is
/// decided when it starts (new, resumed, or left to another process). After `stop` is
/// signalled no run starts, and the running ones are told to checkpoint.
pub fn execute(
    plan: &SweepPlan,
    todo: VecDeque<usize>,
    jobs: usize,
    threads: usize,
    exe: &Path,
    stop: &Stop,
    progress: bool,
) -> Outcome {
    let total = todo.len();
    let queue: Mutex<VecDeque<usize>> = Mutex::new(todo);
    let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let interrupted: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let taken_elsewhere: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let executed = std::sync::atomic::AtomicUsize::new(0);
    let bar = if progress {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::thread::scope(|s| {
        for _ in 0..jobs.min(total.max(1)) {
            s.spawn(|| loop {
                let next = queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                let Some(i) = next else { break };
                let run = &plan.runs[i];
                bar.set_message(run.name.clone());
                let t0 = Instant::now();
                let log = plan.dir.join("logs").join(format!("{}.log", run.name));
                let claimed = claim_log(&log).and_then(|f| match f {
                    Some(f) => Ok(turn(plan, i)?.into_run().map(|cmd| (f, cmd))),
                    None => Ok(None),
                });
                let started = claimed.and_then(|c| match c {
                    Some((f, cmd)) => stop
                        .spawn(child_command(exe, &cmd, threads.max(1)), f, &log)
                        .map(|c| c.map(Some)),
                    None => Ok(Some(None)),
                });
                let child = match started {
                    Ok(Some(Some(c))) => c,
                    Ok(Some(None)) => {
                        bar.suspend(|| {
                            tracing::warn!("{}: done or running elsewhere; skipped", run.name)
                        });
                        if let Ok(mut l) = taken_elsewhere.lock() {
                            l.push(run.name.clone());
                        }
                        bar.inc(1);
                        continue;
                    }
                    Ok(None) => break, // stopped before this run started
                    Err(e) => {
                        bar.suspend(|| tracing::error!("{} failed: {e}", run.name));
                        if let Ok(mut f) = failed.lock() {
                            f.push(run.name.clone());
                        }
                        bar.inc(1);
                        continue;
                    }
                };
                executed.fetch_add(1, Ordering::SeqCst);
                let result = stop.wait(child, &log);
                let secs = t0.elapsed().as_secs_f64();
                // A run the signal stopped, at whatever point, is started or resumed by a rerun.
                let stopped = stop.signalled()
                    && status(&plan.dir.join(&run.dir)).is_ok_and(|s| s != RunStatus::Done);
                // Another process took (or finished) the run between the plan and the start:
                // not a failure.
                let taken = result.is_err()
                    && !stopped
                    && status(&plan.dir.join(&run.dir))
                        .is_ok_and(|s| matches!(s, RunStatus::Running | RunStatus::Done));
                bar.suspend(|| match &result {
                    Ok(()) => tracing::info!("{} finished in {:.1} min", run.name, secs / 60.0),
                    Err(_) if taken => tracing::warn!("{}: running elsewhere; skipped", run.name),
                    Err(_) if stopped => tracing::warn!(
                        "{} interrupted after {:.1} min; rerunning the sweep resumes it",
                        run.name,
                        secs / 60.0
                    ),
                    Err(e) => tracing::error!("{} failed: {e}", run.name),
                });
                let list = match (&result, stopped) {
                    (Ok(()), _) => None,
                    (Err(_), _) if taken => Some(&taken_elsewhere),
                    (Err(_), true) => Some(&interrupted),
                    (Err(_), false) => Some(&failed),
                };
                if let Some(Ok(mut l)) = list.map(|l| l.lock()) {
                    l.push(run.name.clone());
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    Outcome {
        executed: executed.into_inner(),
        failed: failed.into_inner().unwrap_or_default(),
        interrupted: interrupted.into_inner().unwrap_or_default(),
        elsewhere: taken_elsewhere.into_inner().unwrap_or_default(),
    }
}

fn poisoned() -> Error {
    Error::Invalid("the sweep's child list lock is poisoned".into())
}

/// `clsnorm CMD --quiet` with its thread budget, in its own process group so that a Ctrl-C at
/// the terminal reaches only the sweep, which passes it on (see [`Stop`]).
fn child_command(exe: &Path, cmd: &[String], threads: usize) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(exe);
    c.args(cmd).arg("--quiet");
    if !cmd.iter().any(|w| w == "--threads") {
        c.arg("--threads").arg(threads.to_string());
    }
    c.stdin(Stdio::null()).process_group(0);
    c
}

/// What the sweep does on SIGINT/SIGTERM: start no further run, and pass every signal on to
/// the running children as SIGTERM, so that each finishes its update and leaves a resumable
/// checkpoint (a second signal makes them quit at once, as it does for `clsnorm finetune`).
#[derive(Default)]
pub struct Stop {
    signals: AtomicUsize,
    /// Process ids of the running children; spawning happens under this lock, so a child
    /// either sees the signal count before it starts or is in the list when a signal comes.
    children: Mutex<Vec<u32>>,
}

impl Turn {
    fn into_run(self) -> Option<Vec<String>> {
        match self {
            Turn::Run(cmd) => Some(cmd),
            Turn::Elsewhere => None,
        }
    }
}

impl Stop {
    /// Called by the signal handler.
    pub fn signal(&self) {
        let Ok(children) = self.children.lock() else {
            return;
        };
        if self.signals.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "interrupt: starting no more runs; the running ones checkpoint and stop (interrupt again to make them quit at once)"
            );
        }
        for &pid in children.iter() {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) only sends a signal; `pid` is a child this process spawned
                // and has not reaped yet (it leaves the list before `wait` returns it).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }

    /// Whether a signal came.
    pub fn signalled(&self) -> bool {
        self.signals.load(Ordering::SeqCst) > 0
    }

    /// Starts `cmd` with its output appended to `out` (the file `log`, locked by this
    /// process), unless the sweep was already stopped.
    fn spawn(
        &self,
        mut cmd: std::process::Command,
        out: std::fs::File,
        log: &Path,
    ) -> Result<Option<std::process::Child>> {
        let mut children = self.children.lock().map_err(|_| poisoned())?;
        if self.signalled() {
            return Ok(None);
        }
        let program = PathBuf::from(cmd.get_program());
        let child = cmd
            .stdout(out.try_clone().map_err(|e| Error::io(log, e))?)
            .stderr(out)
            .spawn()
            .map_err(|e| Error::io(&program, e))?;
        children.push(child.id());
        Ok(Some(child))
    }

    /// Waits for a child started by [`Stop::spawn`]; an error when it did not exit cleanly.
    fn wait(&self, mut child: std::process::Child, log: &Path) -> Result<()> {
        let pid = child.id();
        // Reaping and leaving the list happen under the lock, so `signal` never sends to a
        // reaped process id that the system may already have reused.
        let status = loop {
            let mut children = self.children.lock().map_err(|_| poisoned())?;
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    children.retain(|&p| p != pid);
                    break status;
                }
                Err(e) => {
                    children.retain(|&p| p != pid);
                    return Err(Error::io(log, e));
                }
            }
            drop(children);
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        if !status.success() {
            return Err(Error::Invalid(format!("{status}; see {}", log.display())));
        }
        Ok(())
    }
}
