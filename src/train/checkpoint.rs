//! Checkpoints: a directory that Hugging Face loads as a `BertModel` (config.json,
//! model.safetensors, tokenizer files), plus clsnorm's head, optimizer and training position.
//!
//! A checkpoint is written into a temporary sibling directory and renamed into place, with a
//! `manifest.json` of sha256 hashes written last; a directory without a matching manifest is
//! not used.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::atomic;
use crate::classifier::{Classifier, HeadConfig};
use crate::data::TaskSpec;
use crate::encoder::weights;
use crate::error::{Error, Result};
use crate::tokenize::TokenizerFiles;

pub const HEAD_FILE: &str = "head.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "clsnorm.json";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Tokenizer files saved with a checkpoint when the model came with them.
pub const TOKENIZER_FILES: &[&str] = TokenizerFiles::NAMES;

/// Where training stands; enough to continue exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch to run next (0-based).
    pub epoch: usize,
    /// Batch of that epoch to run next.
    pub batch: usize,
    /// Optimizer updates done so far.
    pub global_step: usize,
    /// Sum and count of training losses in the current epoch so far.
    pub loss_sum: f64,
    pub loss_count: usize,
    /// Losses added on the device since the last flush into `loss_sum` (flushes happen every
    /// 10 updates and at epoch end, so a resumed run sums in the same order).
    pub loss_pending: f32,
    /// Updates whose losses are in `loss_pending` (for `train_loss.jsonl`).
    #[serde(default)]
    pub pending_updates: usize,
    /// Updates skipped so far for a non-finite loss or gradient.
    #[serde(default)]
    pub nonfinite_skipped: usize,
    /// The fp16 loss scaler (runs in fp16 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<crate::precision::GradScaler>,
    /// Builds (`git describe`, see [`super::BUILD`]) that trained this run, in order: more than
    /// one when it was resumed by other code. `unrecorded` stands for updates made before
    /// builds were recorded.
    #[serde(default)]
    pub builds: Vec<String>,
    /// Non-pad tokens and seconds of training in the current epoch so far.
    pub epoch_tokens: usize,
    pub epoch_train_secs: f64,
    /// `epoch_train_secs` by phase.
    #[serde(default)]
    pub epoch_phase_secs: crate::rundir::records::PhaseSecs,
    /// Best primary dev metric so far and its epoch (1-based).
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
    /// The update after which the best evaluation was made (absent in runs from before
    /// `--eval-every`, whose evaluations all end an epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<usize>,
    /// Evaluations since the best one (`--patience`).
    #[serde(default)]
    pub evals_since_best: usize,
    /// The run stopped early: `--patience` evaluations without improvement.
    #[serde(default)]
    pub stopped_early: bool,
    /// Wall-clock seconds spent in the run before this checkpoint.
    pub elapsed_secs: f64,
}

/// `clsnorm.json`: what a checkpoint is, beyond the HF files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub clsnorm_version: String,
    pub task: TaskSpec,
    pub head: HeadConfig,
    pub max_len: usize,
    pub state: TrainState,
}

/// Files a checkpoint must hold.
pub const REQUIRED_FILES: &[&str] = &[
    "config.json",
    weights::SAFETENSORS_FILE,
    HEAD_FILE,
    META_FILE,
];

/// Whether `name` is a file that belongs in a checkpoint (and so in its manifest).
fn is_checkpoint_file(name: &str) -> bool {
    REQUIRED_FILES.contains(&name) || name == OPTIMIZER_FILE || TOKENIZER_FILES.contains(&name)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    crate::fsread::sha256_file(path, crate::fsread::Links::Follow)
}

/// Whether `dir` holds a checkpoint whose writing finished (its manifest, written last, is
/// there); [`verify`] checks the contents.
pub fn is_complete(dir: &Path) -> bool {
    crate::rundir::checkpoint_complete(dir)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// Writes a complete checkpoint to `dir`, replacing any previous one only once the new one
/// is complete.
pub fn save(
    dir: &Path,
    model: &Classifier,
    meta: &CheckpointMeta,
    optimizer: Option<&[(String, Tensor)]>,
    tokenizer: &TokenizerFiles,
) -> Result<()> {
    let tmp = sibling(dir, &format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    if let Err(e) = write_files(&tmp, model, meta, optimizer, tokenizer) {
        // E.g. a full disk: give the space back; the previous checkpoint is untouched.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(dir, "old");
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Writes every file of a checkpoint, and its manifest, into the fresh directory `tmp`.
fn write_files(
    tmp: &Path,
    model: &Classifier,
    meta: &CheckpointMeta,
    optimizer: Option<&[(String, Tensor)]>,
    tokenizer: &TokenizerFiles,
) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    model.encoder.save(tmp)?;
    weights::write_safetensors(
        &tmp.join(HEAD_FILE),
        &weights::named_variables(&model.head_vs),
    )?;
    if let Some(opt) = optimizer {
        weights::write_safetensors(&tmp.join(OPTIMIZER_FILE), opt)?;
    }
    tokenizer.write_into(tmp)?;
    atomic::write_json(&tmp.join(META_FILE), meta)?;
    let mut manifest = BTreeMap::new();
    for entry in std::fs::read_dir(tmp).map_err(|e| Error::io(tmp, e))? {
        let p = entry.map_err(|e| Error::io(tmp, e))?.path();
        if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            manifest.insert(name.to_string(), sha256_file(&p)?);
        }
    }
    atomic::write_json(&tmp.join(MANIFEST_FILE), &manifest)?;
    Ok(())
}

/// The directory holding the complete checkpoint `dir`: `dir` itself, or the previous version
/// left as `dir.old` by a save interrupted between its two renames.
pub fn locate(dir: &Path) -> Option<PathBuf> {
    let old = sibling(dir, "old");
    if dir.join(MANIFEST_FILE).is_file() {
        Some(dir.to_path_buf())
    } else if old.join(MANIFEST_FILE).is_file() {
        Some(old)
    } else {
        None
    }
}

/// Checks a checkpoint against its manifest, treating everything in it as untrusted: the
/// manifest may name only the plain file names a checkpoint holds (no paths, no `..`), must
/// name the required ones and every checkpoint file present, and each named file must be a
/// regular file in the directory (a link, FIFO or device is refused without being opened)
/// whose sha256 matches. Messages name files, never the hashes of other files.
pub fn verify(dir: &Path) -> Result<()> {
    use crate::fsread::{open_regular, read_regular, Links, MAX_SMALL_BYTES};
    let path = dir.join(MANIFEST_FILE);
    let bad = |msg: String| Error::File {
        path: path.clone(),
        msg,
    };
    let bytes = read_regular(&path, MAX_SMALL_BYTES, Links::Refuse)?;
    let manifest: BTreeMap<String, String> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a checkpoint manifest (name -> sha256): {e}")))?;
    for (name, hash) in &manifest {
        if !is_checkpoint_file(name) {
            let shown: String = name.chars().take(80).collect();
            return Err(bad(format!(
                "names '{}', which is not a file of a clsnorm checkpoint",
                shown.escape_debug()
            )));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "the entry of {name} is not a sha256 hex digest"
            )));
        }
    }
    for name in REQUIRED_FILES {
        if !manifest.contains_key(*name) {
            return Err(bad(format!(
                "does not list {name}, which every checkpoint holds"
            )));
        }
    }
    for name in TOKENIZER_FILES.iter().chain([&OPTIMIZER_FILE]) {
        if !manifest.contains_key(*name) && std::fs::symlink_metadata(dir.join(name)).is_ok() {
            return Err(bad(format!(
                "does not list {name}, which is in the checkpoint: the file was added afterwards"
            )));
        }
    }
    for (name, want) in manifest {
        let file = dir.join(&name);
        let (mut f, _) = open_regular(&file, u64::MAX, Links::Refuse)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(|e| Error::io(&file, e))?;
        if format!("{:x}", h.finalize()) != want.to_ascii_lowercase() {
            return Err(Error::File {
                path: file,
                msg: format!(
                    "does not match the checkpoint's manifest: checkpoint {} is corrupted or was modified",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// Reads `clsnorm.json` of a checkpoint.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
    let path = dir.join(META_FILE);
    let bytes = read_regular(&path, MAX_SMALL_BYTES, Links::Refuse)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::File {
        path,
        msg: format!("not a clsnorm checkpoint description: {e}"),
    })
}

/// Loads a verified checkpoint's model onto `device`. Every cross-reference between its files
/// is checked before anything is allocated from them: the task's labels against the head's,
/// the head's outputs and width against `head.safetensors`, the config against the weights
/// (see [`crate::encoder::Encoder::load`]); NaN or infinite weights are refused.
pub fn load_model(
    dir: &Path,
    device: tch::Device,
    registry: &crate::Registry,
) -> Result<(Classifier, CheckpointMeta)> {
    verify(dir)?;
    let meta = read_meta(dir)?;
    let meta_path = dir.join(META_FILE);
    let bad = |msg: String| Error::File {
        path: meta_path.clone(),
        msg,
    };
    if meta.head.labels != meta.task.labels {
        return Err(bad("the head's labels differ from the task's".into()));
    }
    registry
        .normalizers
        .check(&meta.head.norm)
        .map_err(|e| bad(e.to_string()))?;
    if !(0.0..1.0).contains(&meta.head.dropout) {
        return Err(bad(format!(
            "dropout {} is not in [0, 1)",
            meta.head.dropout
        )));
    }
    if meta.max_len < 3 {
        return Err(bad(format!("max_len {} is below 3", meta.max_len)));
    }
    let config = registry.families.read_config(dir)?;
    let positions = config.limits().max_positions;
    if meta.max_len > positions {
        return Err(bad(format!(
            "max_len {} exceeds the model's {positions} position embeddings",
            meta.max_len
        )));
    }
    let head_path = dir.join(HEAD_FILE);
    let head = weights::Checkpoint {
        tensors: weights::read_safetensors(&head_path)?,
        path: head_path.clone(),
    };
    let outputs = meta.head.labels.num_outputs() as i64;
    let h = config.hidden_size();
    for (name, want) in [
        ("classifier.weight", vec![outputs, h]),
        ("classifier.bias", vec![outputs]),
    ] {
        let got = head
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.size());
        if got.as_ref() != Some(&want) {
            return Err(Error::Weights {
                path: head_path,
                msg: format!(
                    "{name} has shape {got:?}, but the task's {outputs} output(s) on a hidden size of {h} need {want:?}"
                ),
            });
        }
    }
    weights::check_finite(&head)?;
    let encoder = crate::encoder::Encoder::load_with(dir, device, false, &registry.families)?;
    let model = Classifier::new(encoder, meta.head.clone(), 0, &registry.normalizers)?;
    weights::load_into(&model.head_vs, &head, &weights::Names::PLAIN)?;
    model
        .normalizer()
        .check_state()
        .map_err(|msg| Error::Weights {
            path: head_path,
            msg,
        })?;
    Ok((model, meta))
}
