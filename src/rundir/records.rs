//! The records of a run directory and their typed reading and writing: one line of JSON per
//! epoch (`metrics.jsonl`), per loss window (`train_loss.jsonl`) and per update
//! (`grads.jsonl`), and the run's `summary.json`. Every reader of a run uses these.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::{Error, Result};
use crate::fsread::{read_regular, Links, MAX_DATA_BYTES, MAX_SMALL_BYTES};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub global_step: usize,
    pub train_loss: f64,
    /// Dev metrics per split.
    pub dev: Vec<(String, BTreeMap<String, f64>)>,
    pub primary: f64,
    pub lr: f64,
    pub train_secs: f64,
    pub eval_secs: f64,
    /// Non-pad training tokens per second of training time.
    pub train_tokens_per_sec: f64,
    /// The [CLS] geometry on the first dev split at the epoch's end, before and after the
    /// normalizer (absent in runs from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_geometry: Option<ClsGeometry>,
    /// Where `train_secs` went (absent in runs from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_phase_secs: Option<PhaseSecs>,
}

/// Seconds of training by phase: `collate` (batches built from the tokenized examples),
/// `forward` (encoder, normalizer, head and loss), `backward`, `optimizer` (gradient norm,
/// finiteness check, clipping and the AdamW update). On a GPU, kernels run asynchronously:
/// their time lands in the phase that waits for them (`optimizer`'s finiteness check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSecs {
    pub collate: f64,
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

impl std::ops::AddAssign for PhaseSecs {
    fn add_assign(&mut self, o: PhaseSecs) {
        self.collate += o.collate;
        self.forward += o.forward;
        self.backward += o.backward;
        self.optimizer += o.optimizer;
    }
}

/// The [CLS] vectors' geometry before (`raw`) and after (`normalized`) the normalizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClsGeometry {
    pub raw: crate::analyze::Geometry,
    pub normalized: crate::analyze::Geometry,
}

/// One line of `train_loss.jsonl`: the mean training loss of the updates since the previous
/// line (written every 10 updates and at the end of each epoch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossRecord {
    /// Update number of the last update in the window (1-based).
    pub step: usize,
    /// 1-based epoch.
    pub epoch: usize,
    pub loss: f64,
    /// Updates averaged.
    pub updates: usize,
    /// Learning rate of the last update.
    pub lr: f64,
}

/// One line of `grads.jsonl` (with `--trace-grads`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradRecord {
    /// 1-based update number.
    pub step: usize,
    pub loss: f64,
    /// ||dL/d[CLS] vector|| before the normalizer (over the batch).
    pub cls_grad_norm: f64,
    /// ||dL/d normalized vector|| (the classifier's input).
    pub normalized_grad_norm: f64,
    /// Largest per-dimension gradient norm of the [CLS] vector, and its dimension.
    pub max_dim_grad: f64,
    pub max_dim: usize,
    /// Global gradient norm over all parameters, before clipping.
    pub global_grad_norm: f64,
    /// Gradient norms per group: `embeddings`, `layer.0` ..., `pooler`, `classifier`, `normalizer`.
    pub groups: BTreeMap<String, f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub task: String,
    pub primary_metric: String,
    pub best_epoch: Option<usize>,
    /// The update after which the best evaluation was made (see `--eval-every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<usize>,
    /// Stopped by `--patience`: that many evaluations without improvement.
    #[serde(default)]
    pub stopped_early: bool,
    pub best_primary: Option<f64>,
    pub best_dev: Vec<(String, std::collections::BTreeMap<String, f64>)>,
    pub final_dev: Vec<(String, std::collections::BTreeMap<String, f64>)>,
    pub epochs: usize,
    pub global_steps: usize,
    pub wall_secs: f64,
    /// True when the run stopped early and can be continued with `--resume`.
    pub interrupted: bool,
    /// Updates skipped for a non-finite loss or gradient (`--skip-nonfinite`).
    #[serde(default)]
    pub nonfinite_skipped: usize,
    /// Updates the fp16 loss scaler skipped because a gradient overflowed (fp16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale_skipped: Option<u64>,
    /// Builds of clsnorm that trained the run, in order (see [`TrainState::builds`]).
    #[serde(default)]
    pub builds: Vec<String>,
}

impl Summary {
    /// Reads a run's `summary.json`; an unreadable or malformed file is an error naming it.
    pub fn read(path: &Path) -> Result<Summary> {
        let bytes = read_regular(path, MAX_SMALL_BYTES, Links::Follow)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: format!("not a run summary (corrupt?): {e}"),
        })
    }
}

/// The bytes of a records file, or `None` when there is none yet.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match read_regular(path, MAX_DATA_BYTES, Links::Follow) {
        Ok(b) => Ok(Some(b)),
        Err(Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Appends one record as a line (fsynced: a record, once written, survives a crash).
pub fn append<R: Serialize>(path: &Path, value: &R) -> Result<()> {
    let line = serde_json::to_string(value).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Reads the records of a JSON-lines file; a missing file has none. A line that is not a
/// record (the torn last line of a killed process) is skipped.
pub fn read_all<R: DeserializeOwned>(path: &Path) -> Result<Vec<R>> {
    let Some(bytes) = read_if_present(path)? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Rewrites a JSON-lines file keeping the records that `keep` accepts (on resume, those up to
/// the checkpoint), atomically. Kept lines are written back byte for byte: a record parsed and
/// printed again could differ in the last digit of a float.
pub fn retain<R: DeserializeOwned>(path: &Path, keep: impl Fn(&R) -> bool) -> Result<Vec<R>> {
    let bytes = read_if_present(path)?.unwrap_or_default();
    let (mut kept, mut body) = (Vec::new(), String::new());
    for line in String::from_utf8_lossy(&bytes).lines() {
        if let Ok(r) = serde_json::from_str::<R>(line) {
            if keep(&r) {
                body.push_str(line);
                body.push('\n');
                kept.push(r);
            }
        }
    }
    atomic::write_bytes(path, body.as_bytes())?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_keeps_lines_verbatim_and_drops_torn_ones() {
        let dir = tempfile_dir();
        let path = dir.join("train_loss.jsonl");
        // A float whose text a parse-and-print round trip does not reproduce, and a torn line.
        let lines = [
            r#"{"step":8,"epoch":1,"loss":0.5,"updates":8,"lr":0.000038636363636363636}"#,
            r#"{"step":10,"epoch":2,"loss":0.25,"updates":2,"lr":1e-5}"#,
            r#"{"step":16,"epoch":2,"loss":0.125,"updates":6,"lr":2e-6}"#,
            r#"{"step":20,"epo"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let all: Vec<LossRecord> = read_all(&path).unwrap();
        assert_eq!(all.len(), 3);
        let kept = retain(&path, |r: &LossRecord| r.step <= 10).unwrap();
        assert_eq!(kept.len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n{}\n", lines[0], lines[1]));
        append(&path, &kept[0]).unwrap();
        assert_eq!(read_all::<LossRecord>(&path).unwrap().len(), 3);
        assert!(read_all::<LossRecord>(&dir.join("absent.jsonl"))
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("clsnorm-records-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
