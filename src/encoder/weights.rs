//! Reading and writing encoder weights in Hugging Face's formats.
//!
//! safetensors is preferred and is the only format clsnorm writes: it is a plain header plus
//! raw bytes, so loading cannot run code. `pytorch_model.bin` is a Python pickle, which can
//! execute arbitrary code when unpickled by Python, so it is only read when the caller allows
//! it, and then by clsnorm's restricted reader ([`super::pickle`]), never by Python.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use tch::{nn, Kind, Tensor};

use crate::atomic;
use crate::error::{Error, Result};

/// Name of the safetensors weight file HF uses.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// Index of a sharded safetensors checkpoint.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the pickle weight file HF uses.
pub const PICKLE_FILE: &str = "pytorch_model.bin";

/// Named tensors a model is loaded from: names, shapes and dtypes known up front, the data
/// copied one tensor at a time into the model's own variables, so that a model never sits in
/// memory twice (its file's bytes, a tensor copy, and the model).
pub trait TensorSource {
    /// The file the tensors come from (the index of a sharded checkpoint), for messages.
    fn path(&self) -> &Path;
    /// Name, shape and dtype of every tensor, in a fixed order.
    fn entries(&self) -> Vec<(&str, Vec<i64>, Kind)>;
    /// Copies tensor `i` of [`TensorSource::entries`] into `dst`, which has its number of
    /// elements and any dtype (converted as `copy_` does); returns whether every value was
    /// finite.
    fn read_into(&self, i: usize, dst: &Tensor) -> Result<bool>;
}

/// Named tensors held in memory, with the file(s) they came from.
pub struct Checkpoint {
    pub path: PathBuf,
    pub tensors: Vec<(String, Tensor)>,
}

impl TensorSource for Checkpoint {
    fn path(&self) -> &Path {
        &self.path
    }
    fn entries(&self) -> Vec<(&str, Vec<i64>, Kind)> {
        self.tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.size(), t.kind()))
            .collect()
    }
    fn read_into(&self, i: usize, dst: &Tensor) -> Result<bool> {
        let (name, src) = &self.tensors[i];
        if src.numel() != dst.numel() {
            return Err(Error::Invalid(format!(
                "{name}: expected {} elements",
                dst.numel()
            )));
        }
        tch::no_grad(|| dst.shallow_clone().f_copy_(&src.f_reshape(dst.size())?))?;
        Ok(all_finite(src)?)
    }
}

fn all_finite(t: &Tensor) -> std::result::Result<bool, tch::TchError> {
    if !t.is_floating_point() {
        return Ok(true);
    }
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
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

/// Opens the weights of the model directory `dir` for loading: safetensors files are read
/// one tensor at a time when loaded; a pickle (only when allowed) is read whole.
pub fn open_model_dir(dir: &Path, allow_pickle: bool) -> Result<Box<dyn TensorSource>> {
    let path = weights_file(dir, allow_pickle)?;
    Ok(if path.ends_with(SAFETENSORS_FILE) {
        Box::new(SafetensorsFiles::open(&path)?)
    } else if path.ends_with(SAFETENSORS_INDEX_FILE) {
        Box::new(SafetensorsFiles::open_sharded(&path)?)
    } else {
        Box::new(Checkpoint {
            tensors: super::pickle::read_torch_zip(&path)?,
            path,
        })
    })
}

/// Finds and reads the weights of the model directory `dir` into memory.
pub fn read_model_dir(dir: &Path, allow_pickle: bool) -> Result<Checkpoint> {
    let src = open_model_dir(dir, allow_pickle)?;
    Ok(Checkpoint {
        tensors: read_all(src.as_ref())?,
        path: src.path().to_path_buf(),
    })
}

/// Every tensor of `src` on the CPU in its own dtype, sorted by name.
fn read_all(src: &dyn TensorSource) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (i, (name, shape, kind)) in src.entries().into_iter().enumerate() {
        let t = Tensor::f_empty(shape.as_slice(), (kind, tch::Device::Cpu))?;
        src.read_into(i, &t)?;
        out.push((name.to_string(), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
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
    read_all(&SafetensorsFiles::open(path)?)
}

/// The largest header a safetensors file may have (the `safetensors` crate's own bound).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Bytes read from a weights file at a time: a tensor of any size is copied into its
/// destination in pieces of this size, never held whole a second time.
const READ_CHUNK_BYTES: u64 = 16 << 20;

/// The tensors of one safetensors file or of the shards of a sharded checkpoint: headers read
/// and validated when opened, each tensor's bytes read from its file when it is loaded.
pub struct SafetensorsFiles {
    path: PathBuf,
    files: Vec<(PathBuf, std::fs::File)>,
    entries: Vec<Stored>,
}

/// Where a tensor's bytes lie in one of [`SafetensorsFiles`]'s files.
struct Stored {
    name: String,
    file: usize,
    kind: Kind,
    shape: Vec<i64>,
    offset: u64,
}

impl SafetensorsFiles {
    /// Opens one safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let mut files = SafetensorsFiles {
            path: path.to_path_buf(),
            files: Vec::new(),
            entries: Vec::new(),
        };
        files.add(path)?;
        files.entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Opens the shards named by a sharded checkpoint's index (`model.safetensors.index.json`),
    /// which must lie beside it.
    pub fn open_sharded(index: &Path) -> Result<Self> {
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
        let mut files = SafetensorsFiles {
            path: index.to_path_buf(),
            files: Vec::new(),
            entries: Vec::new(),
        };
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
            files.add(&dir.join(shard))?;
        }
        files.entries.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = files.entries.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::Weights {
                path: index.to_path_buf(),
                msg: format!(
                    "tensor {} is in two shards ({} and {})",
                    w[0].name,
                    files.files[w[0].file].0.display(),
                    files.files[w[1].file].0.display()
                ),
            });
        }
        Ok(files)
    }

    /// Reads and validates the header of the safetensors file `path` (the `safetensors`
    /// crate's rules: offsets contiguous and matching shapes and dtypes), and checks that the
    /// file holds exactly the data it describes.
    fn add(&mut self, path: &Path) -> Result<()> {
        use crate::fsread::{open_regular, Links, MAX_WEIGHTS_BYTES};
        use std::io::Read;
        let err = |msg: String| Error::Weights {
            path: path.to_path_buf(),
            msg: format!("not a valid safetensors file (truncated or corrupted?): {msg}"),
        };
        let (mut f, len) = open_regular(path, MAX_WEIGHTS_BYTES, Links::Follow)?;
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(|_| {
            err(format!(
                "{len} bytes, shorter than the header's length field"
            ))
        })?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES || 8 + n > len {
            return Err(err(format!(
                "a header of {n} bytes in a file of {len} bytes (at most {MAX_HEADER_BYTES})"
            )));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        let meta: safetensors::tensor::Metadata =
            serde_json::from_slice(&header).map_err(|e| err(format!("header: {e}")))?;
        let start = 8 + n;
        if start.checked_add(meta.data_len() as u64) != Some(len) {
            return Err(err(format!(
                "the header describes {} bytes of tensor data, the file holds {}",
                meta.data_len(),
                len - start
            )));
        }
        let file = self.files.len();
        for (name, info) in meta.tensors() {
            let kind = kind_of(info.dtype)
                .ok_or_else(|| err(format!("tensor {name}: unsupported dtype {:?}", info.dtype)))?;
            self.entries.push(Stored {
                shape: info.shape.iter().map(|&d| d as i64).collect(),
                offset: start + info.data_offsets.0 as u64,
                name,
                file,
                kind,
            });
        }
        self.files.push((path.to_path_buf(), f));
        Ok(())
    }
}

impl TensorSource for SafetensorsFiles {
    fn path(&self) -> &Path {
        &self.path
    }
    fn entries(&self) -> Vec<(&str, Vec<i64>, Kind)> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), e.shape.clone(), e.kind))
            .collect()
    }
    fn read_into(&self, i: usize, dst: &Tensor) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let e = &self.entries[i];
        let (path, file) = &self.files[e.file];
        let numel: i64 = e.shape.iter().product();
        if dst.numel() as i64 != numel {
            return Err(Error::Invalid(format!(
                "{}: tensor {} has {numel} elements, its destination {}",
                path.display(),
                e.name,
                dst.numel()
            )));
        }
        // A fresh tensor or a model variable: contiguous, so filled through a flat view.
        let flat = if dst.is_contiguous() {
            dst.shallow_clone()
        } else {
            Tensor::f_empty(dst.size(), (dst.kind(), dst.device()))?
        }
        .f_view([-1])?;
        let elt = e.kind.elt_size_in_bytes() as i64;
        let per_chunk = (READ_CHUNK_BYTES as i64 / elt).max(1);
        let mut buf = vec![0u8; (numel.min(per_chunk) * elt) as usize];
        let mut finite = true;
        let mut done = 0;
        while done < numel {
            let n = per_chunk.min(numel - done);
            let bytes = &mut buf[..(n * elt) as usize];
            file.read_exact_at(bytes, e.offset + (done * elt) as u64)
                .map_err(|err| match err.kind() {
                    std::io::ErrorKind::UnexpectedEof => Error::Weights {
                        path: path.clone(),
                        msg: format!("shrank while tensor {} was read from it", e.name),
                    },
                    _ => Error::io(path, err),
                })?;
            let chunk = Tensor::f_from_data_size(bytes, &[n], e.kind)?;
            finite &= all_finite(&chunk)?;
            tch::no_grad(|| flat.f_narrow(0, done, n)?.f_copy_(&chunk))?;
            done += n;
        }
        if !dst.is_contiguous() {
            tch::no_grad(|| {
                dst.shallow_clone()
                    .f_copy_(&flat.f_view(dst.size().as_slice())?)
            })?;
        }
        Ok(finite)
    }
}

/// A tensor to serialise: contiguous on the CPU (a copy only where it was not already).
struct CpuTensor {
    name: String,
    dtype: Dtype,
    tensor: Tensor,
}

impl CpuTensor {
    fn new(name: &str, t: &Tensor) -> Result<CpuTensor> {
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            Error::Invalid(format!("tensor {name}: cannot save dtype {:?}", t.kind()))
        })?;
        Ok(CpuTensor {
            name: name.to_string(),
            dtype,
            tensor: t.to_device(tch::Device::Cpu).contiguous(),
        })
    }

    fn shape(&self) -> Vec<usize> {
        self.tensor.size().iter().map(|&d| d as usize).collect()
    }

    fn bytes(&self) -> &[u8] {
        let len = self.tensor.numel() * self.tensor.kind().elt_size_in_bytes();
        if len == 0 {
            return &[];
        }
        // SAFETY: the tensor is contiguous, on the CPU and owned by `self`, so `len` bytes from
        // its data pointer are its elements, alive as long as the borrow of `self`; nothing
        // writes to it while a checkpoint is written (training waits for the save).
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, len) }
    }
}

/// Writes named tensors as safetensors (with HF's `format: pt` metadata), atomically. The
/// bytes are those of `safetensors::serialize` (the test below compares them), but go
/// from each tensor's memory to the file: no copy of the whole file in memory (fresh memory
/// costs page faults, 2x the file for the 180 MB of an optimizer state).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut cpu = tensors
        .iter()
        .map(|(n, t)| CpuTensor::new(n, t))
        .collect::<Result<Vec<_>>>()?;
    // safetensors' own order: larger dtypes first (alignment), then by name.
    cpu.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut offset = 0;
    let mut infos = Vec::with_capacity(cpu.len());
    for t in &cpu {
        let end = offset + t.bytes().len();
        infos.push((
            t.name.clone(),
            safetensors::tensor::TensorInfo {
                dtype: t.dtype,
                shape: t.shape(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let bad = |msg: String| Error::Weights {
        path: path.to_path_buf(),
        msg: format!("cannot serialise: {msg}"),
    };
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let meta =
        safetensors::tensor::Metadata::new(Some(format), infos).map_err(|e| bad(e.to_string()))?;
    let mut header = serde_json::to_vec(&meta).map_err(|e| bad(e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    atomic::write_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for t in &cpu {
            w.write_all(t.bytes())?;
        }
        Ok(())
    })
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

/// The source's model tensors under the model's names: index, shape and dtype.
fn encoder_tensors(
    src: &dyn TensorSource,
    names: &Names,
) -> BTreeMap<String, (usize, Vec<i64>, Kind)> {
    let entries = src.entries();
    let prefixed =
        !names.prefix.is_empty() && entries.iter().any(|(n, ..)| n.starts_with(names.prefix));
    let mut found = BTreeMap::new();
    let mut ignored = Vec::new();
    for (i, (name, shape, kind)) in entries.into_iter().enumerate() {
        match encoder_name(name, names, prefixed) {
            Some(n) => {
                found.insert(n, (i, shape, kind));
            }
            None => ignored.push(name),
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
/// together. Reads no tensor data.
pub fn check_shapes(
    src: &dyn TensorSource,
    expected: &BTreeMap<String, Vec<i64>>,
    names: &Names,
) -> Result<()> {
    let found = encoder_tensors(src, names);
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match found.get(name) {
            None if names.optional.iter().any(|o| name.starts_with(o)) => {}
            None => problems.push(format!("missing: {name} (expected shape {shape:?})")),
            Some((_, got, _)) if got != shape => problems.push(format!(
                "wrong shape: {name}: expected {shape:?}, found {got:?}"
            )),
            Some((_, _, kind)) if !is_float(*kind) => problems.push(format!(
                "wrong dtype: {name}: expected a floating-point tensor, found {kind:?}"
            )),
            Some(_) => {}
        }
    }
    for (name, (_, shape, _)) in &found {
        if !expected.contains_key(name) {
            problems.push(format!("unexpected: {name} (shape {shape:?})"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Weights {
        path: src.path().to_path_buf(),
        msg: format!(
            "checkpoint does not match the model config ({} problem(s)):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ),
    })
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    )
}

/// Refuses weights holding NaN or infinity (a diverged or corrupted model would only produce
/// meaningless metrics).
pub fn check_finite(ckpt: &Checkpoint) -> Result<()> {
    let mut bad = Vec::new();
    for (n, t) in &ckpt.tensors {
        if !all_finite(t)? {
            bad.push(n.as_str());
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(non_finite(&ckpt.path, &bad))
}

fn non_finite(path: &Path, bad: &[&str]) -> Error {
    Error::Weights {
        path: path.to_path_buf(),
        msg: format!(
            "{} tensor(s) hold NaN or infinite values: {}",
            bad.len(),
            bad.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Copies a checkpoint's tensors, named as `names` says, into `vs`, whose variables use HF's
/// names, one tensor at a time. Every variable must be present with its shape, except the
/// optional ones, which keep their values when absent (returned, sorted); tensors the model
/// does not know are an error, and so are NaN or infinite values in what is loaded (a
/// diverged or corrupted model would only produce meaningless metrics). All problems are
/// reported together.
pub fn load_into(vs: &nn::VarStore, src: &dyn TensorSource, names: &Names) -> Result<Vec<String>> {
    let vars = vs.variables();
    let expected = vars.iter().map(|(n, v)| (n.clone(), v.size())).collect();
    check_shapes(src, &expected, names)?;
    let found = encoder_tensors(src, names);
    let entries = src.entries();
    let mut absent = Vec::new();
    let mut nonfinite = Vec::new();
    for (name, var) in vars {
        match found.get(&name) {
            Some(&(i, ..)) => {
                if !src.read_into(i, &var)? {
                    nonfinite.push(entries[i].0);
                }
            }
            None => absent.push(name),
        }
    }
    if !nonfinite.is_empty() {
        nonfinite.sort();
        return Err(non_finite(src.path(), &nonfinite));
    }
    absent.sort();
    Ok(absent)
}

/// All variables of `vs`, sorted by name (deterministic files).
pub fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed file is byte for byte what `safetensors::serialize` makes of the same
    /// tensors: mixed dtypes (the order puts larger ones first), a transposed view, an empty
    /// tensor and one larger than a write call.
    #[test]
    fn streamed_safetensors_equal_the_crate_serialisation() {
        let opts = |k| (k, tch::Device::Cpu);
        let tensors: Vec<(String, Tensor)> = vec![
            (
                "b.weight".into(),
                Tensor::arange(6, opts(Kind::Float)).view([2, 3]).tr(),
            ),
            ("a.ids".into(), Tensor::arange(5, opts(Kind::Int64))),
            ("c.half".into(), Tensor::arange(7, opts(Kind::Half))),
            ("d.bf16".into(), Tensor::arange(3, opts(Kind::BFloat16))),
            ("e.mask".into(), Tensor::ones([4], opts(Kind::Uint8))),
            ("f.empty".into(), Tensor::zeros([0, 3], opts(Kind::Float))),
            ("g.big".into(), Tensor::randn([300_000], opts(Kind::Float))),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.safetensors");
        write_safetensors(&path, &tensors).expect("written");
        let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| {
                let t = t.contiguous();
                let mut data = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
                t.copy_data_u8(&mut data, t.numel());
                let shape = t.size().iter().map(|&d| d as usize).collect();
                (n.clone(), dtype_of(t.kind()).expect("dtype"), shape, data)
            })
            .collect();
        let views = owned.iter().map(|(n, d, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        });
        let format = HashMap::from([("format".to_string(), "pt".to_string())]);
        let want = safetensors::serialize(views, Some(format)).expect("serialised");
        assert_eq!(std::fs::read(&path).expect("read back"), want);
    }
}
