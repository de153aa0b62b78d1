//! Reading and writing encoder weights in Hugging Face's formats.
//!
//! safetensors is preferred and is the only format clsnorm writes: it is a plain header plus
//! raw bytes, so loading cannot run code. `pytorch_model.bin` is a Python pickle, which can
//! execute arbitrary code when unpickled by Python, so it is only read when the caller allows
//! it, and then by clsnorm's restricted reader ([`super::pickle`]), never by Python.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use tch::{nn, Kind, Tensor};

use crate::atomic;
use crate::error::{Error, Result};

/// Name of the safetensors weight file HF uses.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Index of a sharded safetensors checkpoint.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the pickle weight file HF uses.
pub const PICKLE_FILE: &str = "pytorch_model.bin";

/// Named tensors read from a checkpoint, with the file(s) they came from.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
}

/// The weights file of the model directory `dir`: `model.safetensors`, else the sharded
/// index, else (only when allowed) `pytorch_model.bin`.
pub fn weights_file(dir: &Path, allow_pickle: bool) -> Result<PathBuf> {
    let found = [SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PICKLE_FILE]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    match found {
        Some(bin) if bin.ends_with(PICKLE_FILE) && !allow_pickle => Err(Error::Weights {
            path: bin,
            msg: "only a pickle checkpoint is present; pickles can run arbitrary code when \
                  loaded, so pass --allow-pickle if you trust this file (or convert it to \
                  model.safetensors)"
                .into(),
        }),
        Some(path) => Ok(path),
        None => Err(Error::Weights {
            path: dir.to_path_buf(),
            msg: format!("no weights found: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PICKLE_FILE}"),
        }),
    }
}

/// Finds and reads the weights of the model directory `dir`.
pub fn read_model_dir(dir: &Path, allow_pickle: bool) -> Result<Checkpoint> {
    let path = weights_file(dir, allow_pickle)?;
    let tensors = if path.ends_with(SAFETENSORS_FILE) {
        read_safetensors(&path)?
    } else if path.ends_with(SAFETENSORS_INDEX_FILE) {
        read_sharded(&path)?
    } else {
        super::pickle::read_torch_zip(&path)?
    };
    Ok(Checkpoint { path, tensors })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file onto the CPU, validating header and offsets.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    use crate::fsread::{read_regular, Links, MAX_WEIGHTS_BYTES};
    let bytes = read_regular(path, MAX_WEIGHTS_BYTES, Links::Follow)?;
    let err = |msg: String| Error::Weights {
        path: path.to_path_buf(),
        msg,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        err(format!(
            "not a valid safetensors file (truncated or corrupted?): {e}"
        ))
    })?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            err(format!(
                "tensor {name}: unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| err(format!("tensor {name}: {e}")))?;
        out.push((name.to_string(), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn read_sharded(index: &Path) -> Result<Vec<(String, Tensor)>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = crate::fsread::read_text(index, crate::fsread::MAX_SMALL_BYTES)?;
    let idx: Index = serde_json::from_str(&text).map_err(|e| Error::Weights {
        path: index.to_path_buf(),
        msg: format!("invalid shard index: {e}"),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<&String> = idx.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let mut out = Vec::new();
    for shard in shards {
        // A plain file name beside the index: no path may lead out of the model directory.
        let plain = Path::new(shard)
            .file_name()
            .is_some_and(|n| n == shard.as_str());
        if !plain {
            return Err(Error::Weights {
                path: index.to_path_buf(),
                msg: format!("shard '{}' is not a plain file name", shard.escape_debug()),
            });
        }
        out.extend(read_safetensors(&dir.join(shard))?);
    }
    Ok(out)
}

/// A tensor ready for serialisation: contiguous bytes on the CPU.
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw(name: &str, t: &Tensor) -> Result<RawTensor> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind()).ok_or_else(|| {
        Error::Invalid(format!("tensor {name}: cannot save dtype {:?}", t.kind()))
    })?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(RawTensor {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Writes named tensors as safetensors (with HF's `format: pt` metadata), atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let raws = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), raw(n, t)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), Some(meta))
        .map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            msg: format!("cannot serialise: {e}"),
        })?;
    atomic::write_bytes(path, &bytes)
}

/// How a model's parameters are named in the checkpoints it loads from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    /// Where a task model's checkpoint keeps the base model (`bert.`; empty: nowhere). Used
    /// when some tensor name starts with it; other names are then the task's own and ignored,
    /// except those under `beside`.
    pub prefix: &'a str,
    /// Name prefixes that sit beside the base model in such checkpoints and are the model's
    /// (ModernBERT's `head.`, which its masked-LM and classifier share).
    pub beside: &'a [&'a str],
    /// Name prefixes of parameters a checkpoint may lack: they keep their initialisation.
    pub optional: &'a [&'a str],
}

impl Names<'_> {
    /// The checkpoint's names are the model's.
    pub const PLAIN: Names<'static> = Names {
        prefix: "",
        beside: &[],
        optional: &[],
    };
}

/// Maps a checkpoint name to the model's name, or `None` for tensors that are not part of
/// the model (MLM/NSP heads under `cls.`, the task heads of a prefixed checkpoint, the
/// `position_ids` buffer). Old TF-converted checkpoints name LayerNorm parameters
/// `gamma`/`beta`; they are renamed as HF does.
fn encoder_name(name: &str, names: &Names, prefixed: bool) -> Option<String> {
    let inner = if prefixed {
        name.strip_prefix(names.prefix).or_else(|| {
            names
                .beside
                .iter()
                .any(|b| name.starts_with(b))
                .then_some(name)
        })?
    } else {
        name
    };
    if inner.starts_with("cls.") || inner.ends_with("position_ids") {
        return None;
    }
    let renamed = if let Some(base) = inner.strip_suffix(".gamma") {
        format!("{base}.weight")
    } else if let Some(base) = inner.strip_suffix(".beta") {
        format!("{base}.bias")
    } else {
        inner.to_string()
    };
    Some(renamed)
}

/// The checkpoint's model tensors under the model's names.
fn encoder_tensors<'c>(ckpt: &'c Checkpoint, names: &Names) -> BTreeMap<String, &'c Tensor> {
    let prefixed = !names.prefix.is_empty()
        && ckpt
            .tensors
            .iter()
            .any(|(n, _)| n.starts_with(names.prefix));
    let mut found: BTreeMap<String, &Tensor> = BTreeMap::new();
    let mut ignored = Vec::new();
    for (name, t) in &ckpt.tensors {
        match encoder_name(name, names, prefixed) {
            Some(n) => {
                found.insert(n, t);
            }
            None => ignored.push(name.as_str()),
        }
    }
    if !ignored.is_empty() {
        tracing::debug!(
            count = ignored.len(),
            "ignored non-encoder tensors: {}",
            ignored.join(", ")
        );
    }
    found
}

/// Checks that a checkpoint holds exactly the tensors `expected` names, with those shapes and
/// a floating-point dtype, the checkpoint named as `names` says. All problems are reported
/// together.
pub fn check_shapes(
    ckpt: &Checkpoint,
    expected: &BTreeMap<String, Vec<i64>>,
    names: &Names,
) -> Result<()> {
    let found = encoder_tensors(ckpt, names);
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match found.get(name) {
            None if names.optional.iter().any(|o| name.starts_with(o)) => {}
            None => problems.push(format!("missing: {name} (expected shape {shape:?})")),
            Some(t) if &t.size() != shape => problems.push(format!(
                "wrong shape: {name}: expected {shape:?}, found {:?}",
                t.size()
            )),
            Some(t) if !t.is_floating_point() => problems.push(format!(
                "wrong dtype: {name}: expected a floating-point tensor, found {:?}",
                t.kind()
            )),
            Some(_) => {}
        }
    }
    for (name, t) in &found {
        if !expected.contains_key(name) {
            problems.push(format!("unexpected: {name} (shape {:?})", t.size()));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Weights {
        path: ckpt.path.clone(),
        msg: format!(
            "checkpoint does not match the model config ({} problem(s)):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ),
    })
}

/// Refuses weights holding NaN or infinity (a diverged or corrupted model would only produce
/// meaningless metrics).
pub fn check_finite(ckpt: &Checkpoint) -> Result<()> {
    let bad: Vec<&str> = ckpt
        .tensors
        .iter()
        .filter(|(_, t)| t.is_floating_point())
        .filter(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Weights {
        path: ckpt.path.clone(),
        msg: format!(
            "{} tensor(s) hold NaN or infinite values: {}",
            bad.len(),
            bad.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Copies a checkpoint's tensors, named as `names` says, into `vs`, whose variables use HF's
/// names. Every variable must be present with its shape, except the optional ones, which keep
/// their values when absent (returned, sorted); tensors the model does not know are an error.
/// All problems are reported together.
pub fn load_into(vs: &nn::VarStore, ckpt: &Checkpoint, names: &Names) -> Result<Vec<String>> {
    let vars = vs.variables();
    let expected = vars.iter().map(|(n, v)| (n.clone(), v.size())).collect();
    check_shapes(ckpt, &expected, names)?;
    let found = encoder_tensors(ckpt, names);
    let mut absent = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            match found.get(&name) {
                Some(src) => {
                    var.f_copy_(src)?;
                }
                None => absent.push(name),
            }
        }
        Ok(())
    })?;
    absent.sort();
    Ok(absent)
}

/// All variables of `vs`, sorted by name (deterministic files).
pub fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
