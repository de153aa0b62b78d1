//! A restricted reader for PyTorch's `torch.save` checkpoints (`pytorch_model.bin`).
//!
//! A pickle is a program for a stack machine that may call any Python function. This reader
//! interprets only the opcodes `torch.save` emits for a state dict and only the globals that
//! rebuild tensors (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`, `torch.*Storage`); any other global is refused, so
//! nothing in the file is ever executed. libtorch's own unpickler cannot be used here: it turns
//! the `OrderedDict` that every `state_dict()` is into `None`.
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    /// `torch.FloatStorage` etc.: the dtype of a storage.
    StorageType(Kind),
    /// A storage reference: (dtype, key of `data/KEY` in the archive).
    Storage(Kind, String),
    Tensor(Box<TensorRef>),
    Mark,
}

#[derive(Debug, Clone)]
struct TensorRef {
    kind: Kind,
    key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
];

/// Resource budgets: a few hundred bytes of pickle can ask for exponential memory (a memoized
/// list appended to itself, fetched again and again) or unbounded nesting. A state dict of
/// even a large model needs a small fraction of these.
pub mod budget {
    /// Values created in all (memo fetches copy, and count again).
    pub const MAX_NODES: usize = 4_000_000;
    /// Bytes of strings created in all.
    pub const MAX_STRING_BYTES: usize = 64 << 20;
    /// Nesting of containers.
    pub const MAX_DEPTH: usize = 32;
    /// Bytes of the pickle program (`data.pkl`).
    pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    nodes: usize,
    string_bytes: usize,
}

/// Values and string bytes in `v`, and its nesting depth. The recursion is bounded by
/// [`budget::MAX_DEPTH`]: no container deeper than that is ever built.
fn measure(v: &Value) -> (usize, usize, usize) {
    let items: &[Value] = match v {
        Value::Str(s) => return (1, s.len(), 0),
        Value::Tuple(x) | Value::List(x) => x,
        Value::Dict(d) => {
            let (mut n, mut b, mut depth) = (1, 0, 0);
            for (k, v) in d {
                for x in [k, v] {
                    let (n2, b2, d2) = measure(x);
                    n += n2;
                    b += b2;
                    depth = depth.max(d2 + 1);
                }
            }
            return (n, b, depth);
        }
        Value::Tensor(t) => return (1 + t.size.len() + t.stride.len(), t.key.len(), 1),
        Value::Storage(_, k) => return (1, k.len(), 0),
        Value::Global(g) => return (1, g.len(), 0),
        _ => return (1, 0, 0),
    };
    let (mut n, mut b, mut depth) = (1, 0, 0);
    for x in items {
        let (n2, b2, d2) = measure(x);
        n += n2;
        b += b2;
        depth = depth.max(d2 + 1);
    }
    (n, b, depth)
}

type R<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    /// Counts `nodes` new values and `bytes` new string bytes against the budgets.
    fn charge(&mut self, nodes: usize, bytes: usize) -> R<()> {
        self.nodes = self.nodes.saturating_add(nodes);
        self.string_bytes = self.string_bytes.saturating_add(bytes);
        if self.nodes > budget::MAX_NODES || self.string_bytes > budget::MAX_STRING_BYTES {
            return Err(format!(
                "refusing to load: the pickle builds more than {} values or {} bytes of strings, far beyond any state dict",
                budget::MAX_NODES,
                budget::MAX_STRING_BYTES
            ));
        }
        Ok(())
    }

    /// A copy of `v` (memo put and fetch), charged in full.
    fn copy(&mut self, v: &Value) -> R<Value> {
        let (n, b, _) = measure(v);
        self.charge(n, b)?;
        Ok(v.clone())
    }

    /// Checks that `items` may go into a container.
    fn nest(items: &[Value]) -> R<()> {
        items.iter().try_for_each(Self::nest_one)
    }

    fn nest_one(x: &Value) -> R<()> {
        if measure(x).2 + 1 > budget::MAX_DEPTH {
            return Err(format!(
                "refusing to load: the pickle nests containers deeper than {}",
                budget::MAX_DEPTH
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> R<()> {
        self.charge(1, 0)?;
        self.stack.push(v);
        Ok(())
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("pickle truncated at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short read")?,
        ))
    }
    fn line(&mut self) -> R<String> {
        let start = self.pos;
        let nl = self.data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line in pickle")?;
        self.pos = start + nl + 1;
        String::from_utf8(self.data[start..start + nl].to_vec()).map_err(|e| e.to_string())
    }
    fn pop(&mut self) -> R<Value> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> R<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack empty".into())
    }
    fn str(&mut self, n: usize) -> R<()> {
        let bytes = self.take(n)?;
        self.charge(1, n)?;
        let s = String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?;
        self.stack.push(Value::Str(s));
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) -> R<Value> {
        let full = format!("{module}.{name}");
        if module == "torch" {
            if let Some(kind) = storage_kind(name) {
                return Ok(Value::StorageType(kind));
            }
        }
        if ALLOWED_GLOBALS.contains(&full.as_str()) {
            Ok(Value::Global(full))
        } else {
            Err(format!(
                "refusing to load: the pickle references {}, which is not part of a \
                 plain tensor state dict",
                crate::excerpt::quoted(&full)
            ))
        }
    }

    fn reduce(&mut self, f: Value, args: Value) -> R<Value> {
        let Value::Global(name) = f else {
            return Err("pickle REDUCE on a non-callable".into());
        };
        let Value::Tuple(args) = args else {
            return Err("pickle REDUCE without an argument tuple".into());
        };
        match name.as_str() {
            "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
            "torch._utils._rebuild_parameter" => args
                .into_iter()
                .next()
                .ok_or_else(|| "_rebuild_parameter without a tensor".into()),
            "torch._utils._rebuild_tensor_v2" => {
                let ints = |v: &Value| -> R<Vec<i64>> {
                    match v {
                        Value::Tuple(xs) => xs
                            .iter()
                            .map(|x| match x {
                                Value::Int(i) => Ok(*i),
                                _ => Err("tensor size/stride must be integers".to_string()),
                            })
                            .collect(),
                        _ => Err("tensor size/stride must be a tuple".into()),
                    }
                };
                match (args.first(), args.get(1)) {
                    (Some(Value::Storage(kind, key)), Some(Value::Int(offset))) => {
                        Ok(Value::Tensor(Box::new(TensorRef {
                            kind: *kind,
                            key: key.clone(),
                            offset: *offset,
                            size: ints(args.get(2).ok_or("missing size")?)?,
                            stride: ints(args.get(3).ok_or("missing stride")?)?,
                        })))
                    }
                    _ => Err("_rebuild_tensor_v2 arguments are not (storage, offset, ...)".into()),
                }
            }
            other => Err(format!("cannot call {}", crate::excerpt::quoted(other))),
        }
    }

    fn persistent_load(&mut self, pid: Value) -> R<Value> {
        // ('storage', storage_type, key, location, numel)
        match pid {
            Value::Tuple(t) if t.len() >= 3 => match (&t[0], &t[1], &t[2]) {
                (Value::Str(tag), Value::StorageType(kind), Value::Str(key))
                    if tag == "storage" =>
                {
                    Ok(Value::Storage(*kind, key.clone()))
                }
                _ => Err("unsupported persistent id".into()),
            },
            _ => Err("unsupported persistent id".into()),
        }
    }

    fn run(&mut self) -> R<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.push(Value::Mark)?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool)?,
                0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("integer too large".into());
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    self.str(n)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.str(n)?;
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    self.str(n)?;
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    self.str(n)?;
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    Self::nest(&items)?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    Self::nest(&items)?;
                    self.push(Value::Tuple(items))?;
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b'a' => {
                    let v = self.pop()?;
                    Self::nest(std::slice::from_ref(&v))?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    Self::nest(&items)?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    Self::nest_one(&k)?;
                    Self::nest_one(&v)?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    Self::nest(&items)?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.push(g)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(&m, &n)?;
                            self.push(g)?;
                        }
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD: state for an object; tensors and dicts ignore it.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let top = self.top()?.clone();
                    let v = self.copy(&top)?;
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let top = self.top()?.clone();
                    let v = self.copy(&top)?;
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let top = self.top()?.clone();
                    let v = self.copy(&top)?;
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let m = self.memo.get(&i).cloned().ok_or("pickle memo miss")?;
                    let v = self.copy(&m)?;
                    self.push(v)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    let m = self.memo.get(&i).cloned().ok_or("pickle memo miss")?;
                    let v = self.copy(&m)?;
                    self.push(v)?;
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

/// Checks that a tensor's view lies inside its storage and has no more elements than it (a view
/// with zero strides could otherwise ask for any amount of memory when made contiguous).
fn check_view(t: &TensorRef, storage_len: u64) -> R<()> {
    if t.size.len() != t.stride.len() {
        return Err("size and stride differ in length".into());
    }
    if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&v| v < 0) {
        return Err("negative size, stride or offset".into());
    }
    let mut numel: u64 = 1;
    let mut last: u64 = t.offset as u64;
    for (&n, &st) in t.size.iter().zip(&t.stride) {
        numel = numel.checked_mul(n as u64).ok_or("size overflows")?;
        if n > 0 {
            let reach = (n as u64 - 1)
                .checked_mul(st as u64)
                .ok_or("stride overflows")?;
            last = last.checked_add(reach).ok_or("stride overflows")?;
        }
    }
    if numel > 0 && (last >= storage_len || numel > storage_len) {
        return Err(format!(
            "size {:?} with stride {:?} and offset {} does not fit its storage of {storage_len} elements",
            t.size, t.stride, t.offset
        ));
    }
    Ok(())
}

/// Reads the named tensors of a `torch.save` zip archive without executing any code.
pub fn read_torch_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let err = |msg: String| Error::Weights {
        path: path.to_path_buf(),
        msg,
    };
    let (file, file_len) = crate::fsread::open_regular(
        path,
        crate::fsread::MAX_WEIGHTS_BYTES,
        crate::fsread::Links::Follow,
    )?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        err(format!(
            "not a torch.save zip archive (legacy pre-1.6 pickles are not supported): {e}"
        ))
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(|n| n.ok())
                .map(|n| n.to_string())
        })
        .find(|n| n.ends_with("/data.pkl"))
        .ok_or_else(|| err("archive has no data.pkl".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    // torch.save stores entries uncompressed, so none can be larger than the archive; the
    // limit holds whatever an entry's header claims (a zip bomb stops there).
    let mut read_entry = |name: &str, limit: u64| -> Result<Vec<u8>> {
        let f = zip.by_name(name).map_err(|e| err(format!("{name}: {e}")))?;
        let mut buf = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        if buf.len() as u64 > limit {
            return Err(err(format!(
                "{name}: larger than the archive itself ({limit} bytes)"
            )));
        }
        Ok(buf)
    };
    let pkl = read_entry(&pkl_name, file_len.min(budget::MAX_PICKLE_BYTES))?;
    let mut m = Machine {
        data: &pkl,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
        string_bytes: 0,
    };
    let root = m.run().map_err(err)?;
    let Value::Dict(items) = root else {
        return Err(err("the pickle is not a state dict (name -> tensor)".into()));
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            return Err(err("state dict entries must be name -> tensor".into()));
        };
        if !storages.contains_key(&t.key) {
            let bytes = read_entry(&format!("{prefix}data/{}", t.key), file_len)?;
            storages.insert(t.key.clone(), bytes);
        }
        let bytes = &storages[&t.key];
        let elt = t.kind.elt_size_in_bytes();
        check_view(&t, (bytes.len() / elt) as u64)
            .map_err(|m| err(format!("tensor {name}: {m}")))?;
        let storage = Tensor::f_from_data_size(bytes, &[(bytes.len() / elt) as i64], t.kind)
            .map_err(|e| err(format!("tensor {name}: {e}")))?;
        let view = storage
            .f_as_strided(&t.size, &t.stride, Some(t.offset))
            .map_err(|e| {
                err(format!(
                    "tensor {name}: size/stride outside its storage: {e}"
                ))
            })?;
        out.push((name, view.contiguous()));
    }
    Ok(out)
}
