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

pub const HEAD_FILE: &str = "head.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const META_FILE: &str = "clsnorm.json";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Tokenizer files copied from the model directory when present.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

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
    /// Builds (`git describe`, see [`super::BUILD`]) that trained this run, in order: more than
    /// one when it was resumed by other code. `unrecorded` stands for updates made before
    /// builds were recorded.
    #[serde(default)]
    pub builds: Vec<String>,
    /// Non-pad tokens and seconds of training in the current epoch so far.
    pub epoch_tokens: usize,
    pub epoch_train_secs: f64,
    /// Best primary dev metric so far and its epoch (1-based).
    pub best_metric: Option<f64>,
    pub best_epoch: Option<usize>,
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

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
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
    tokenizer_dir: &Path,
) -> Result<()> {
    let tmp = sibling(dir, &format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    if let Err(e) = write_files(&tmp, model, meta, optimizer, tokenizer_dir) {
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
    tokenizer_dir: &Path,
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
    for f in TOKENIZER_FILES {
        let src = tokenizer_dir.join(f);
        if src.is_file() {
            let dst = tmp.join(f);
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
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

/// Checks every file of a checkpoint against its manifest.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    for (name, want) in manifest {
        let got = sha256_file(&dir.join(&name))?;
        if got != want {
            return Err(Error::Invalid(format!(
                "checkpoint {} is corrupted: {name} has sha256 {got}, manifest says {want}",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Reads `clsnorm.json` of a checkpoint.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Loads a verified checkpoint's model onto `device`.
pub fn load_model(dir: &Path, device: tch::Device) -> Result<(Classifier, CheckpointMeta)> {
    verify(dir)?;
    let meta = read_meta(dir)?;
    let encoder = crate::encoder::Encoder::load(dir, device, false)?;
    let model = Classifier::new(encoder, meta.head.clone(), 0);
    let head = weights::read_safetensors(&dir.join(HEAD_FILE))?;
    let ckpt = weights::Checkpoint {
        path: dir.join(HEAD_FILE),
        tensors: head,
    };
    weights::load_into(&model.head_vs, &ckpt)?;
    Ok((model, meta))
}
