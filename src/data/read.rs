//! Reading examples from TSV (GLUE), CSV and JSONL files. Every problem names file and line.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::task::{Column, Format, LabelSpace, TaskSpec};
use super::{Dataset, Example, Label};
use crate::error::{Error, Result};

/// How strictly to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Count and skip malformed rows instead of stopping at the first.
    pub skip_bad_rows: bool,
    /// Rows without a label column are an error (training, evaluation) or allowed (prediction).
    pub require_label: bool,
}

/// A row's fields before labels are interpreted.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub line: usize,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: Option<String>,
}

struct BadRow {
    line: usize,
    msg: String,
}

/// Collects rows and bad rows; stops at the first bad row unless skipping.
struct Rows<'a> {
    path: &'a Path,
    opts: ReadOptions,
    rows: Vec<RawRow>,
    bad: Vec<BadRow>,
}

impl Rows<'_> {
    fn push(&mut self, r: std::result::Result<RawRow, BadRow>) -> Result<()> {
        match r {
            Ok(row) => self.rows.push(row),
            Err(b) if self.opts.skip_bad_rows => self.bad.push(b),
            Err(b) => {
                return Err(Error::Data {
                    path: self.path.to_path_buf(),
                    line: b.line,
                    msg: b.msg,
                })
            }
        }
        Ok(())
    }
}

fn column_label(c: &Column) -> String {
    match c {
        Column::Name(n) => crate::excerpt::quoted(n),
        Column::Index(i) => format!("{}", i + 1),
    }
}

/// Resolves the spec's columns to indices, given the header (if any).
struct Resolved {
    text: usize,
    text_pair: Option<usize>,
    label: Option<usize>,
    width: Option<usize>,
}

fn resolve(
    spec: &TaskSpec,
    header: Option<&[String]>,
    path: &Path,
    require_label: bool,
) -> Result<Resolved> {
    // A name given twice in the header: which column is meant cannot be told.
    if let Some(h) = header {
        for c in [Some(&spec.text), spec.text_pair.as_ref(), Some(&spec.label)]
            .into_iter()
            .flatten()
        {
            if let Column::Name(n) = c {
                let at: Vec<usize> = (0..h.len()).filter(|&i| h[i].trim() == n).collect();
                if at.len() > 1 {
                    return Err(Error::Data {
                        path: path.to_path_buf(),
                        line: 1,
                        msg: format!(
                            "the header names column {} twice (columns {} and {}): rename one",
                            column_label(c),
                            at[0] + 1,
                            at[1] + 1
                        ),
                    });
                }
            }
        }
    }
    let find = |c: &Column| -> Option<usize> {
        match (c, header) {
            (Column::Index(i), _) => Some(*i),
            (Column::Name(n), Some(h)) => h.iter().position(|x| x.trim() == n),
            (Column::Name(_), None) => None,
        }
    };
    let missing = |c: &Column| Error::Data {
        path: path.to_path_buf(),
        line: 1,
        msg: match header {
            Some(h) => format!(
                "header has no column {} (found: {})",
                column_label(c),
                crate::excerpt::list(h)
            ),
            None => format!(
                "column {} needs a header row, but the file has none",
                column_label(c)
            ),
        },
    };
    let text = find(&spec.text).ok_or_else(|| missing(&spec.text))?;
    let text_pair = match &spec.text_pair {
        Some(c) => Some(find(c).ok_or_else(|| missing(c))?),
        None => None,
    };
    let label = match find(&spec.label) {
        Some(i) if header.is_none_or(|h| i < h.len()) => Some(i),
        _ if require_label => return Err(missing(&spec.label)),
        _ => None,
    };
    Ok(Resolved {
        text,
        text_pair,
        label,
        width: header.map(<[String]>::len),
    })
}

/// The most rows (lines) a data file may have: a split is held in memory at ~330 bytes a row
/// besides its text (2,000,000 three-word SST-2 rows: 0.67 GB read and tokenized), so the 8 GiB
/// file bound alone would allow hundreds of GB for short rows. GLUE's largest split has 393k.
pub const MAX_ROWS: usize = 20_000_000;

/// The longest text one field may hold. Tokenizing costs ~230 bytes of memory per input byte
/// before truncation (a 10 MB line: 2.3 GB), so an unbounded field could exhaust memory;
/// natural text reaches the longest `--max-len` (65,536 tokens) in ~300 KB (estimated at 4-5 bytes
/// per WordPiece token), so no real example
/// loses a kept token.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

fn check_text(s: &str, col: &Column) -> std::result::Result<String, String> {
    if s.len() > MAX_TEXT_BYTES {
        Err(format!(
            "text of {} bytes in column {}; at most {MAX_TEXT_BYTES} bytes (1 MiB) per text",
            s.len(),
            column_label(col)
        ))
    } else if s.trim().is_empty() {
        Err(format!("empty text in column {}", column_label(col)))
    } else if s.contains('\u{feff}') {
        Err(format!(
            "byte-order mark (U+FEFF) inside the text of column {}",
            column_label(col)
        ))
    } else {
        Ok(s.to_string())
    }
}

fn row_from_fields(
    fields: &[&str],
    r: &Resolved,
    spec: &TaskSpec,
    line: usize,
) -> std::result::Result<RawRow, BadRow> {
    let bad = |msg: String| BadRow { line, msg };
    let need = [Some(r.text), r.text_pair, r.label]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
        + 1;
    match r.width {
        Some(w) if fields.len() != w => {
            let kind = match spec.format {
                Format::Csv => "comma-separated",
                _ => "tab-separated",
            };
            return Err(bad(format!(
                "expected {w} {kind} columns (as in the header), found {}",
                fields.len()
            )));
        }
        None if fields.len() < need => {
            return Err(bad(format!(
                "expected at least {need} columns, found {}",
                fields.len()
            )))
        }
        _ => {}
    }
    let text = check_text(fields[r.text], &spec.text).map_err(bad)?;
    let text_pair = match (r.text_pair, &spec.text_pair) {
        (Some(i), Some(c)) => Some(check_text(fields[i], c).map_err(bad)?),
        _ => None,
    };
    Ok(RawRow {
        line,
        text,
        text_pair,
        label: r.label.map(|i| fields[i].trim().to_string()),
    })
}

fn read_tsv(bytes: &[u8], spec: &TaskSpec, rows: &mut Rows) -> Result<()> {
    let path = rows.path;
    let mut resolved: Option<Resolved> = None;
    let n_lines = bytes.split(|&b| b == b'\n').count();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        if i + 1 == n_lines && raw.is_empty() {
            break; // the final newline
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = if i == 0 {
            raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw)
        } else {
            raw
        };
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                let r = Err(BadRow {
                    line,
                    msg: format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()),
                });
                if i == 0 && spec.header {
                    return rows.push(r);
                }
                rows.push(r)?;
                continue;
            }
        };
        let fields: Vec<&str> = text.split('\t').collect();
        if i == 0 {
            let header: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            let r = resolve(
                spec,
                spec.header.then_some(header.as_slice()),
                path,
                rows.opts.require_label,
            )?;
            resolved = Some(r);
            if spec.header {
                continue;
            }
        }
        let Some(r) = resolved.as_ref() else { continue };
        rows.push(row_from_fields(&fields, r, spec, line))?;
    }
    Ok(())
}

fn read_csv(bytes: &[u8], spec: &TaskSpec, rows: &mut Rows) -> Result<()> {
    let path = rows.path;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(spec.header)
        .flexible(true)
        .from_reader(bytes);
    let header: Option<Vec<String>> = if spec.header {
        let h = rdr.headers().map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line: 1,
            msg: e.to_string(),
        })?;
        Some(h.iter().map(str::to_string).collect())
    } else {
        None
    };
    let r = resolve(spec, header.as_deref(), path, rows.opts.require_label)?;
    let mut record = csv::ByteRecord::new();
    loop {
        let line = rdr.position().line() as usize;
        match rdr.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line() as usize);
                let start = record.position().map_or(0, |p| p.byte() as usize);
                let fields: std::result::Result<Vec<&str>, _> =
                    record.iter().map(std::str::from_utf8).collect();
                let end = (rdr.position().byte() as usize).min(bytes.len());
                let at_end = end >= bytes.len();
                let raw = &bytes[start.min(end)..end];
                let row = if at_end && unterminated_quote(&bytes[start.min(bytes.len())..]) {
                    Err(BadRow {
                        line,
                        msg: "unterminated quote: the quoted field opened on this line runs to \
                              the end of the file"
                            .into(),
                    })
                } else if text_after_closing_quote(raw) {
                    Err(BadRow {
                        line,
                        msg: "text after the closing quote of a quoted field (RFC 4180: a quoted \
                              field ends at its closing quote; write a quote inside it as \"\")"
                            .into(),
                    })
                } else {
                    match fields {
                        Ok(f) => row_from_fields(&f, &r, spec, line),
                        Err(e) => Err(BadRow {
                            line,
                            msg: format!("invalid UTF-8: {e}"),
                        }),
                    }
                };
                rows.push(row)?;
            }
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line() as usize);
                rows.push(Err(BadRow {
                    line,
                    msg: format!("malformed CSV: {e}"),
                }))?;
            }
        }
    }
    Ok(())
}

/// Whether the file's last record, from its start to the end of the file, opened a quoted
/// field and never closed it. The csv crate then reads the rest of the file into that field,
/// so without this check every later row silently becomes part of one text. Such a record
/// holds an odd number of quotes, one of them opening a field.
fn unterminated_quote(rest: &[u8]) -> bool {
    let quotes = rest.iter().filter(|&&b| b == b'"').count();
    let opens = rest.first() == Some(&b'"') || rest.windows(2).any(|w| w == b",\"");
    quotes % 2 == 1 && opens
}

/// Whether a CSV record's raw bytes hold text between a quoted field's closing quote and the
/// next comma or line end (`"abc"def`), which the csv crate silently joins into the field.
fn text_after_closing_quote(raw: &[u8]) -> bool {
    let (mut i, mut field_start, mut quoted) = (0, true, false);
    while i < raw.len() {
        let b = raw[i];
        if quoted {
            if b == b'"' {
                if raw.get(i + 1) == Some(&b'"') {
                    i += 2;
                    continue;
                }
                quoted = false;
                field_start = false;
                if !matches!(raw.get(i + 1), None | Some(b',' | b'\r' | b'\n')) {
                    return true;
                }
            }
        } else {
            quoted = b == b'"' && field_start;
            field_start = b == b',';
        }
        i += 1;
    }
    false
}

/// A JSON object whose keys are all different: serde_json keeps the last of two equal keys,
/// which silently picks one of two values.
struct UniqueKeys(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<UniqueKeys, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "key {} appears twice",
                            crate::excerpt::quoted(&k)
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueKeys(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn json_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    c: &Column,
) -> std::result::Result<Option<String>, String> {
    let Column::Name(name) = c else {
        return Err(format!(
            "JSONL columns are named, not numbered ({})",
            column_label(c)
        ));
    };
    Ok(match obj.get(name) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Some(v.to_string())
        }
        Some(_) => {
            return Err(format!(
                "field {} must be a string or number",
                crate::excerpt::quoted(name)
            ))
        }
    })
}

fn read_jsonl(bytes: &[u8], spec: &TaskSpec, rows: &mut Rows) -> Result<()> {
    let require_label = rows.opts.require_label;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = if i == 0 {
            raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw)
        } else {
            raw
        };
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row = (|| -> std::result::Result<RawRow, String> {
            let text = std::str::from_utf8(raw)
                .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
            let UniqueKeys(obj) = serde_json::from_str(text).map_err(|e| {
                if text.trim_start().starts_with('{') {
                    format!("invalid JSON: {e}")
                } else {
                    "expected a JSON object".to_string()
                }
            })?;
            let obj = &obj;
            let get_text = |c: &Column| -> std::result::Result<String, String> {
                let s = json_field(obj, c)?
                    .ok_or_else(|| format!("missing field {}", column_label(c)))?;
                check_text(&s, c)
            };
            let label = json_field(obj, &spec.label)?;
            if require_label && label.is_none() {
                return Err(format!("missing field {}", column_label(&spec.label)));
            }
            Ok(RawRow {
                line,
                text: get_text(&spec.text)?,
                text_pair: spec.text_pair.as_ref().map(get_text).transpose()?,
                label: label.map(|l| l.trim().to_string()),
            })
        })();
        rows.push(row.map_err(|msg| BadRow { line, msg }))?;
    }
    Ok(())
}

/// The longest line a data file may hold: two texts of [`MAX_TEXT_BYTES`] and the other
/// fields with room to spare. Checked before the file is read into memory, so that a file of
/// one multi-GB line is refused after reading a few MB of it.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Streams through `path` once, refusing it at the first line longer than [`MAX_LINE_BYTES`]
/// or past [`MAX_ROWS`] lines, before anything is held in memory. `--skip-bad-rows` does not
/// skip such a line: it is no row of a data file, and skipping it would mean reading it.
fn check_lines(path: &Path) -> Result<()> {
    use std::io::Read;
    let (f, _) = crate::fsread::open_regular(
        path,
        crate::fsread::MAX_DATA_BYTES,
        crate::fsread::Links::Follow,
    )?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut current) = (0usize, 0usize);
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        let mut rest = &buf[..n];
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            current += at;
            if current > MAX_LINE_BYTES {
                break;
            }
            lines += 1;
            current = 0;
            rest = &rest[at + 1..];
        }
        current += rest.len();
        if current > MAX_LINE_BYTES {
            return Err(Error::Data {
                path: path.to_path_buf(),
                line: lines + 1,
                msg: format!(
                    "the line is longer than {} MiB (at most {} MiB of text per field); is \
                     this a data file with one row per line?",
                    MAX_LINE_BYTES >> 20,
                    MAX_TEXT_BYTES >> 20
                ),
            });
        }
        if lines > MAX_ROWS {
            return Err(Error::File {
                path: path.to_path_buf(),
                msg: format!(
                    "more than {MAX_ROWS} lines; clsnorm holds a split in memory (~330 bytes a \
                     row besides its text) and reads at most {MAX_ROWS} rows: split the file"
                ),
            });
        }
    }
}

/// The class names by id of the integer column `column`, from the metadata `datasets` writes
/// into a parquet file (`huggingface`: `info.features.COLUMN.names` of a `ClassLabel`).
fn hub_class_names(
    kv: Option<&Vec<parquet::file::metadata::KeyValue>>,
    column: &str,
) -> Option<Vec<String>> {
    let text = kv?
        .iter()
        .find(|k| k.key == "huggingface")?
        .value
        .as_ref()?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let names = v.get("info")?.get("features")?.get(column)?.get("names")?;
    serde_json::from_value(names.clone()).ok()
}

/// A parquet label as the task's class name or score text: integer ids through the class
/// names (the file's, else the spec's), names through the spec's aliases; `Ok(None)` for a
/// missing label.
fn parquet_label(
    field: &parquet::record::Field,
    names: Option<&[String]>,
    spec: &TaskSpec,
) -> std::result::Result<Option<String>, String> {
    use parquet::record::Field;
    let id = match field {
        // NaN is how pandas and polars write a missing float label: no label, as null is.
        Field::Null => return Ok(None),
        Field::Float(v) if v.is_nan() => return Ok(None),
        Field::Double(v) if v.is_nan() => return Ok(None),
        Field::Byte(v) => Some(i64::from(*v)),
        Field::Short(v) => Some(i64::from(*v)),
        Field::Int(v) => Some(i64::from(*v)),
        Field::Long(v) => Some(*v),
        Field::UByte(v) => Some(i64::from(*v)),
        Field::UShort(v) => Some(i64::from(*v)),
        Field::UInt(v) => Some(i64::from(*v)),
        _ => None,
    };
    let name = match (id, names) {
        (Some(-1), Some(_)) => {
            return Err(
                "label -1: an unlabelled row (as in the Hub's test splits), which cannot be \
                 trained or evaluated on"
                    .into(),
            )
        }
        (Some(i), Some(names)) => usize::try_from(i)
            .ok()
            .and_then(|i| names.get(i))
            .cloned()
            .ok_or_else(|| format!("label id {i} is not one of the {} classes", names.len()))?,
        (Some(i), None) => i.to_string(),
        (None, _) => match field {
            Field::Str(s) => s.clone(),
            Field::Float(v) => v.to_string(),
            Field::Double(v) => v.to_string(),
            Field::Bool(b) => b.to_string(),
            Field::ULong(v) => v.to_string(),
            other => {
                return Err(format!(
                    "the label is a {}, not a number or a name",
                    field_kind(other)
                ))
            }
        },
    };
    Ok(Some(
        spec.label_aliases
            .iter()
            .find(|(from, _)| *from == name)
            .map_or(name, |(_, to)| to.clone()),
    ))
}

fn field_kind(f: &parquet::record::Field) -> &'static str {
    use parquet::record::Field;
    match f {
        Field::Null => "null",
        Field::Bool(_) => "boolean",
        Field::Str(_) => "string",
        Field::Bytes(_) => "binary value",
        Field::Group(_) => "struct",
        Field::ListInternal(_) => "list",
        Field::MapInternal(_) => "map",
        Field::Float(_) | Field::Double(_) | Field::Float16(_) | Field::Decimal(_) => "real number",
        Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => "date or time",
        _ => "integer",
    }
}

/// How much larger than its file a parquet file's rows may be. Text compresses 3-10x, and
/// dictionary encoding of repeated values adds to that; a file expanding further is refused
/// before it exhausts memory.
const PARQUET_EXPANSION: u64 = 32;
/// The least a parquet file may expand to, whatever its size.
const PARQUET_MIN_BUDGET: u64 = 64 << 20;

fn parquet_text_budget(file_bytes: usize) -> u64 {
    (file_bytes as u64)
        .saturating_mul(PARQUET_EXPANSION)
        .max(PARQUET_MIN_BUDGET)
}

/// Rows of a parquet file: columns by name (or 0-based position), one row per record; a
/// row's "line" is its 1-based row number.
fn read_parquet(bytes: Vec<u8>, spec: &TaskSpec, rows: &mut Rows) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let path = rows.path;
    let bad_file = |msg: String| Error::File {
        path: path.to_path_buf(),
        msg,
    };
    let budget = parquet_text_budget(bytes.len());
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes))
        .map_err(|e| bad_file(format!("not a parquet file that clsnorm can read: {e}")))?;
    let bomb = |what: String| {
        bad_file(format!(
            "{what}, more than {budget} bytes ({PARQUET_EXPANSION}x the file's size, at least \
             {} MiB): refused as a decompression bomb; a real dataset this large is split into \
             several files",
            PARQUET_MIN_BUDGET >> 20
        ))
    };
    let declared: i64 = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.total_byte_size().max(0))
        .fold(0i64, i64::saturating_add);
    if declared as u64 > budget {
        return Err(bomb(format!(
            "its row groups declare {declared} bytes uncompressed"
        )));
    }
    let meta = reader.metadata().file_metadata();
    if usize::try_from(meta.num_rows()).map_or(true, |n| n > MAX_ROWS) {
        return Err(bad_file(format!(
            "{} rows; clsnorm reads at most {MAX_ROWS} rows: split the file",
            meta.num_rows()
        )));
    }
    let schema = meta.schema();
    let all = schema.get_fields();
    let names: Vec<String> = all.iter().map(|f| f.name().to_string()).collect();
    let r = resolve(spec, Some(&names), path, rows.opts.require_label)?;
    let mut wanted: Vec<usize> = [Some(r.text), r.text_pair, r.label]
        .into_iter()
        .flatten()
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let projection = parquet::schema::types::Type::group_type_builder(schema.name())
        .with_fields(wanted.iter().map(|&i| all[i].clone()).collect())
        .build()
        .map_err(|e| bad_file(e.to_string()))?;
    let class_names = r
        .label
        .and_then(|i| hub_class_names(meta.key_value_metadata(), &names[i]))
        .or_else(|| spec.label_ids.clone());
    let at = |col: usize| wanted.iter().position(|&w| w == col).unwrap_or(0);
    let iter = reader
        .get_row_iter(Some(projection))
        .map_err(|e| bad_file(e.to_string()))?;
    let mut materialised = 0u64;
    for (i, row) in iter.enumerate() {
        let line = i + 1;
        let row = row.map_err(|e| bad_file(format!("row {line}: {e}")))?;
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        // A dictionary page lets every row reference one long value: count what the rows
        // become, not what the file holds.
        materialised += fields
            .iter()
            .map(|f| match f {
                Field::Str(s) => s.len() as u64,
                Field::Bytes(b) => b.len() as u64,
                _ => 8,
            })
            .sum::<u64>();
        if materialised > budget {
            return Err(bomb(format!(
                "its first {line} rows hold {materialised} bytes"
            )));
        }
        let text_of = |col: usize, c: &Column| -> std::result::Result<String, String> {
            match fields.get(at(col)) {
                Some(Field::Str(s)) => check_text(s, c),
                Some(Field::Null) | None => Err(format!("no text in column {}", column_label(c))),
                Some(other) => Err(format!(
                    "column {} holds a {}, not text",
                    column_label(c),
                    field_kind(other)
                )),
            }
        };
        let row = (|| -> std::result::Result<RawRow, String> {
            let label = match r.label {
                Some(col) => match fields.get(at(col)) {
                    Some(f) => parquet_label(f, class_names.as_deref(), spec)?,
                    None => None,
                },
                None => None,
            };
            if rows.opts.require_label && label.is_none() {
                return Err(format!("no label in column {}", column_label(&spec.label)));
            }
            Ok(RawRow {
                line,
                text: text_of(r.text, &spec.text)?,
                text_pair: match (r.text_pair, &spec.text_pair) {
                    (Some(col), Some(c)) => Some(text_of(col, c)?),
                    _ => None,
                },
                label,
            })
        })();
        rows.push(row.map_err(|msg| BadRow { line, msg }))?;
    }
    Ok(())
}

/// What a column of a data file holds, as far as choosing columns needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    Integer,
    Real,
    Boolean,
    /// Anything else (a struct such as an image or audio record, a list, bytes), named.
    Other(String),
}

/// A column of a parquet file: its name, kind, and the class names `datasets` recorded for it
/// (a `ClassLabel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ColumnKind,
    pub class_names: Option<Vec<String>>,
}

/// The top-level columns of parquet file `path`, from its footer alone.
pub fn parquet_columns(path: &Path) -> Result<Vec<ColumnInfo>> {
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |msg: String| Error::File {
        path: path.to_path_buf(),
        msg: format!("not a parquet file that clsnorm can read: {msg}"),
    };
    let (file, _) = crate::fsread::open_regular(
        path,
        crate::fsread::MAX_DATA_BYTES,
        crate::fsread::Links::Follow,
    )?;
    crate::tokenize::guarded_call("(raised inside the `parquet` reader by this file)", || {
        let reader = SerializedFileReader::new(file).map_err(|e| bad(e.to_string()))?;
        let meta = reader.metadata().file_metadata();
        let kv = meta.key_value_metadata();
        Ok(meta
            .schema()
            .get_fields()
            .iter()
            .map(|f| {
                let kind = if f.is_group() {
                    ColumnKind::Other("struct or list".into())
                } else {
                    let info = f.get_basic_info();
                    let text = matches!(info.logical_type_ref(), Some(LogicalType::String))
                        || info.converted_type() == ConvertedType::UTF8;
                    match f.get_physical_type() {
                        Physical::BYTE_ARRAY if text => ColumnKind::Text,
                        Physical::BYTE_ARRAY | Physical::FIXED_LEN_BYTE_ARRAY => {
                            ColumnKind::Other("binary value".into())
                        }
                        Physical::INT32 | Physical::INT64 | Physical::INT96 => ColumnKind::Integer,
                        Physical::FLOAT | Physical::DOUBLE => ColumnKind::Real,
                        Physical::BOOLEAN => ColumnKind::Boolean,
                    }
                };
                ColumnInfo {
                    name: f.name().to_string(),
                    class_names: hub_class_names(kv, f.name()),
                    kind,
                }
            })
            .collect())
    })
    .map_err(bad)?
}

/// The rows of one file, read once, and the sha256 of exactly the bytes they were parsed from.
#[derive(Debug, Clone)]
pub struct RawFile {
    pub path: PathBuf,
    pub rows: Vec<RawRow>,
    /// Rows dropped by `--skip-bad-rows`.
    pub skipped: usize,
    pub sha256: String,
}

/// Reads the rows of `path` in the spec's format. Only a regular file is read (a FIFO or
/// device is refused without blocking), at most [`crate::fsread::MAX_DATA_BYTES`].
pub fn read_rows(path: &Path, spec: &TaskSpec, opts: ReadOptions) -> Result<RawFile> {
    use crate::fsread::{read_regular, Links, MAX_DATA_BYTES};
    if spec.format != Format::Parquet {
        check_lines(path)?;
    }
    let bytes = read_regular(path, MAX_DATA_BYTES, Links::Follow)?;
    let sha256 = crate::fsread::sha256_hex(&bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 1,
            msg: "the file is empty".into(),
        });
    }
    let mut rows = Rows {
        path,
        opts,
        rows: Vec::new(),
        bad: Vec::new(),
    };
    match spec.format {
        Format::Tsv => read_tsv(&bytes, spec, &mut rows)?,
        Format::Csv => read_csv(&bytes, spec, &mut rows)?,
        Format::Jsonl => read_jsonl(&bytes, spec, &mut rows)?,
        Format::Parquet => {
            // The parquet crate can panic on a corrupt file: an error naming the file instead.
            crate::tokenize::guarded_call(
                "(raised inside the `parquet` reader by this file)",
                || read_parquet(bytes, spec, &mut rows),
            )
            .map_err(|msg| Error::File {
                path: path.to_path_buf(),
                msg: format!("not a parquet file that clsnorm can read: {msg}"),
            })??
        }
    }
    for b in rows.bad.iter().take(5) {
        tracing::warn!("{}:{}: skipped: {}", path.display(), b.line, b.msg);
    }
    if rows.bad.len() > 5 {
        tracing::warn!(
            "{}: {} more bad rows skipped",
            path.display(),
            rows.bad.len() - 5
        );
    }
    if rows.rows.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 1,
            msg: "no usable rows".into(),
        });
    }
    Ok(RawFile {
        path: path.to_path_buf(),
        skipped: rows.bad.len(),
        rows: rows.rows,
        sha256,
    })
}

/// Reads `path` a window of at most `window` rows at a time, in file order, handing each
/// window to `sink` (with the rows' own line numbers); returns the rows `--skip-bad-rows`
/// skipped. TSV and JSON Lines files are read a window of lines at a time, so memory does not
/// grow with the file and a file of any number of lines streams through; CSV (whose quoted
/// fields may span lines) and Parquet (columnar) are read whole, as [`read_rows`] reads them,
/// and handed on in windows.
pub fn stream_rows(
    path: &Path,
    spec: &TaskSpec,
    opts: ReadOptions,
    window: usize,
    mut sink: impl FnMut(Vec<RawRow>) -> Result<()>,
) -> Result<usize> {
    use std::io::{BufRead, Read};
    let window = window.max(1);
    if matches!(spec.format, Format::Csv | Format::Parquet) {
        let raw = read_rows(path, spec, opts)?;
        let mut rows = raw.rows.into_iter().peekable();
        while rows.peek().is_some() {
            sink(rows.by_ref().take(window).collect())?;
        }
        return Ok(raw.skipped);
    }
    let (f, _) = crate::fsread::open_regular(
        path,
        crate::fsread::MAX_DATA_BYTES,
        crate::fsread::Links::Follow,
    )?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
    let mut line_no = 0usize;
    // One line, at most MAX_LINE_BYTES, without reading a longer one into memory.
    let mut next_line = |buf: &mut Vec<u8>, line_no: &mut usize| -> Result<bool> {
        let start = buf.len();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(false);
        }
        *line_no += 1;
        if buf.len() - start > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            return Err(Error::Data {
                path: path.to_path_buf(),
                line: *line_no,
                msg: format!(
                    "the line is longer than {} MiB (at most {} MiB of text per field); is this \
                     a data file with one row per line?",
                    MAX_LINE_BYTES >> 20,
                    MAX_TEXT_BYTES >> 20
                ),
            });
        }
        if buf.last() != Some(&b'\n') {
            buf.push(b'\n');
        }
        Ok(true)
    };
    // A TSV header goes before every window's lines, so each parses as the whole file would.
    let mut header = Vec::new();
    if spec.format == Format::Tsv && spec.header && !next_line(&mut header, &mut line_no)? {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 1,
            msg: "the file is empty".into(),
        });
    }
    let lead = usize::from(!header.is_empty());
    let mut skipped = 0;
    let mut any = false;
    loop {
        let first = line_no + 1;
        let mut chunk = header.clone();
        let mut lines = 0;
        while lines < window && next_line(&mut chunk, &mut line_no)? {
            lines += 1;
        }
        if lines == 0 {
            break;
        }
        // Lines of the chunk are numbered from 1 (the header, if any): back to the file's.
        let to_file = |l: usize| l + first - 1 - lead;
        let mut rows = Rows {
            path,
            opts,
            rows: Vec::new(),
            bad: Vec::new(),
        };
        let parsed = match spec.format {
            Format::Tsv => read_tsv(&chunk, spec, &mut rows),
            _ => read_jsonl(&chunk, spec, &mut rows),
        };
        match parsed {
            Err(Error::Data { path, line, msg }) => {
                return Err(Error::Data {
                    path,
                    line: if line > lead { to_file(line) } else { line },
                    msg,
                })
            }
            other => other?,
        }
        for b in rows.bad.iter().take(5) {
            tracing::warn!("{}:{}: skipped: {}", path.display(), to_file(b.line), b.msg);
        }
        skipped += rows.bad.len();
        let mut window_rows = rows.rows;
        for r in &mut window_rows {
            r.line = to_file(r.line);
        }
        any |= !window_rows.is_empty();
        if !window_rows.is_empty() {
            sink(window_rows)?;
        }
    }
    if !any {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: 1,
            msg: "no usable rows".into(),
        });
    }
    Ok(skipped)
}

/// The class names of a custom classification file: its distinct labels, numerically sorted
/// when all are integers, else lexicographically.
///
/// Two spellings of one number (`1` and `1.0`, as a JSON or pandas float column writes them)
/// would silently become two classes; they are an error naming both lines.
pub fn infer_classes(path: &Path, rows: &[RawRow]) -> Result<Vec<String>> {
    classes_of(rows.iter().map(|r| (path, r)))
}

/// The class names of the files of one split, as [`infer_classes`] finds them in one.
pub fn infer_classes_of(files: &[RawFile]) -> Result<Vec<String>> {
    classes_of(
        files
            .iter()
            .flat_map(|f| f.rows.iter().map(|r| (f.path.as_path(), r))),
    )
}

fn classes_of<'a>(rows: impl Iterator<Item = (&'a Path, &'a RawRow)>) -> Result<Vec<String>> {
    let mut first: HashMap<&str, (&Path, usize)> = HashMap::new();
    let mut by_value: Vec<(f64, &str)> = Vec::new();
    for (path, r) in rows {
        let Some(label) = r.label.as_deref() else {
            continue;
        };
        if first.contains_key(label) {
            continue;
        }
        first.insert(label, (path, r.line));
        if let Some(v) = label.trim().parse::<f64>().ok().filter(|v| v.is_finite()) {
            if let Some((_, other)) = by_value.iter().find(|(w, _)| *w == v) {
                let (other_path, other_line) = first[other];
                let at = if other_path == path {
                    format!("line {other_line}")
                } else {
                    format!("{}:{other_line}", other_path.display())
                };
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: r.line,
                    msg: format!(
                        "label {} is the number of label {} ({at}); write each class one way, \
                         or they are two classes",
                        crate::excerpt::quoted(label),
                        crate::excerpt::quoted(other),
                    ),
                });
            }
            by_value.push((v, label));
        }
    }
    let set: BTreeSet<&str> = first.into_keys().collect();
    let mut v: Vec<String> = set.into_iter().map(str::to_string).collect();
    if v.iter().all(|s| s.parse::<i64>().is_ok()) {
        v.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    }
    Ok(v)
}

/// Reads a file into labelled (or, for prediction, possibly unlabelled) examples.
pub fn read_dataset(path: &Path, spec: &TaskSpec, opts: ReadOptions) -> Result<Dataset> {
    dataset_from_rows(read_rows(path, spec, opts)?, spec, opts)
}

/// Most files one split is read from (the Hub's largest text datasets keep a split in a few
/// hundred shards).
pub const MAX_SHARDS: usize = 1000;

/// Reads the files of one split in order as one dataset: one file as [`read_dataset`] reads
/// it; the shards of a sharded split each so, appended, with at most [`MAX_ROWS`] rows in all.
pub fn read_split(paths: &[PathBuf], spec: &TaskSpec, opts: ReadOptions) -> Result<Dataset> {
    split_from_rows(read_split_rows(paths, spec, opts)?, spec, opts)
}

/// The rows of each file of one split (see [`read_split`]).
pub fn read_split_rows(
    paths: &[PathBuf],
    spec: &TaskSpec,
    opts: ReadOptions,
) -> Result<Vec<RawFile>> {
    let Some(first) = paths.first() else {
        return Err(Error::Invalid(format!(
            "task {}: a split with no files",
            spec.name
        )));
    };
    if paths.len() > MAX_SHARDS {
        return Err(Error::File {
            path: first.clone(),
            msg: format!(
                "is the first of {} files of one split; clsnorm reads at most {MAX_SHARDS}",
                paths.len()
            ),
        });
    }
    let mut rows = 0;
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let raw = read_rows(path, spec, opts)?;
        rows += raw.rows.len();
        if rows > MAX_ROWS {
            return Err(Error::File {
                path: path.clone(),
                msg: format!(
                    "brings the split beyond {MAX_ROWS} rows, the most clsnorm holds in memory"
                ),
            });
        }
        files.push(raw);
    }
    Ok(files)
}

/// One split's examples from its files' rows (see [`read_split_rows`]).
pub fn split_from_rows(files: Vec<RawFile>, spec: &TaskSpec, opts: ReadOptions) -> Result<Dataset> {
    let several = files.len() > 1;
    let mut all: Option<Dataset> = None;
    let mut hashes = String::new();
    for raw in files {
        let ds = dataset_from_rows(raw, spec, opts)?;
        hashes.push_str(&ds.sha256);
        hashes.push('\n');
        match &mut all {
            None => all = Some(ds),
            Some(all) => {
                all.shards.push((ds.path, all.examples.len()));
                all.examples.extend(ds.examples);
                all.skipped += ds.skipped;
            }
        }
    }
    let mut all =
        all.ok_or_else(|| Error::Invalid(format!("task {}: a split with no files", spec.name)))?;
    if several {
        all.sha256 = crate::fsread::sha256_hex(hashes.as_bytes());
    }
    Ok(all)
}

/// Interprets the labels of rows already read (see [`read_rows`]).
pub fn dataset_from_rows(raw: RawFile, spec: &TaskSpec, opts: ReadOptions) -> Result<Dataset> {
    let path = raw.path.as_path();
    let (rows, mut skipped) = (raw.rows, raw.skipped);
    let index: HashMap<&str, usize> = match &spec.labels {
        LabelSpace::Classes(c) => c.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect(),
        LabelSpace::Regression => HashMap::new(),
    };
    let parse = |l: &str| -> std::result::Result<Label, String> {
        match &spec.labels {
            LabelSpace::Classes(classes) => {
                index.get(l).map(|&i| Label::Class(i)).ok_or_else(|| {
                    format!(
                        "unknown label {} (expected one of: {})",
                        crate::excerpt::quoted(l),
                        crate::excerpt::list(classes)
                    )
                })
            }
            LabelSpace::Regression => match l.parse::<f64>() {
                Ok(v) if v.is_finite() && v.abs() <= f64::from(f32::MAX) => {
                    Ok(Label::Score(v as f32))
                }
                Ok(v) if v.is_finite() => Err(format!(
                    "regression target {} is beyond the range of f32, in which targets are \
                     trained (at most 3.4e38 in magnitude)",
                    crate::excerpt::quoted(l)
                )),
                _ => Err(format!(
                    "regression target {} is not a finite number",
                    crate::excerpt::quoted(l)
                )),
            },
        }
    };
    let mut examples = Vec::with_capacity(rows.len());
    for r in rows {
        let label = match r.label.as_deref().map(parse).transpose() {
            Ok(label) => label,
            Err(msg) if opts.skip_bad_rows => {
                tracing::warn!("{}:{}: skipped: {msg}", path.display(), r.line);
                skipped += 1;
                continue;
            }
            Err(msg) => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: r.line,
                    msg,
                })
            }
        };
        examples.push(Example {
            line: r.line,
            text: r.text,
            text_pair: r.text_pair,
            label,
        });
    }
    if skipped > 0 {
        tracing::warn!(
            "{}: skipped {skipped} bad row(s) (--skip-bad-rows)",
            path.display()
        );
    }
    Ok(Dataset {
        path: PathBuf::from(path),
        examples,
        skipped,
        sha256: raw.sha256,
        shards: Vec::new(),
    })
}
