//! SentencePiece model files (`spm.model`, `sentencepiece.bpe.model`): a checked reader of the
//! few fields of their `ModelProto` that a tokenizer needs. The file is untrusted input: every
//! length is checked against what is left of it, counts and sizes are bounded, and anything
//! malformed is an error saying where, never a panic or an allocation the file asks for.
//!
//! Fields read (sentencepiece_model.proto): `pieces` (1: piece 1, score 2, type 3),
//! `trainer_spec` (2: model_type 3, byte_fallback 35, unk_id 40, unk_piece 45) and
//! `normalizer_spec` (3: precompiled_charsmap 2, add_dummy_prefix 3, remove_extra_whitespaces
//! 4). Everything else is skipped by its wire type.

/// Most pieces a model may hold (the largest real vocabularies have ~256k).
pub const MAX_PIECES: usize = 1 << 20;
/// Longest piece, in bytes.
pub const MAX_PIECE_BYTES: usize = 1 << 10;
/// Largest file read.
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// How a piece is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<PieceType> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The segmentation algorithm the model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
}

/// What a tokenizer needs of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<Piece>,
    pub model_type: ModelType,
    pub byte_fallback: bool,
    pub unk_id: usize,
    pub unk_piece: String,
    /// The normalizer's precompiled character map (empty: none).
    pub charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
}

/// A protobuf message being read: `bytes` from `base`, the offset of its first byte in the
/// file (for messages).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    base: usize,
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8], usize),
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Self {
        Reader { bytes, at: 0, base }
    }

    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("at byte {}: {msg}", self.base + self.at)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.err("the file ends inside a number"));
            };
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("a number longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "a field of {n} bytes, but only {} are left",
                    self.bytes.len() - self.at
                ))
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next field number and value, `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.err("a length beyond memory"))?;
                let start = self.base + self.at;
                Value::Bytes(self.take(n)?, start)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => {
                return Err(self.err(format!(
                    "wire type {w}, which a SentencePiece model has not"
                )))
            }
        };
        Ok(Some((field, value)))
    }
}

/// Reads a SentencePiece model from its bytes; the error says what is wrong and where.
pub fn parse(bytes: &[u8]) -> Result<SpmModel, String> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes; a SentencePiece model is at most {MAX_FILE_BYTES}",
            bytes.len()
        ));
    }
    let mut m = SpmModel {
        pieces: Vec::new(),
        model_type: ModelType::Unigram,
        byte_fallback: false,
        unk_id: 0,
        unk_piece: "<unk>".into(),
        charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
    };
    let mut r = Reader::new(bytes, 0);
    let mut saw_trainer = false;
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b, at)) => {
                if m.pieces.len() == MAX_PIECES {
                    return Err(format!("more than {MAX_PIECES} pieces"));
                }
                m.pieces.push(piece(b, at)?);
            }
            (2, Value::Bytes(b, at)) => {
                saw_trainer = true;
                trainer(b, at, &mut m)?;
            }
            (3, Value::Bytes(b, at)) => normalizer(b, at, &mut m)?,
            (1..=3, _) => return Err(r.err(format!("field {field} is not a message"))),
            _ => {}
        }
    }
    if !saw_trainer {
        return Err("no trainer_spec: not a SentencePiece model".into());
    }
    if m.pieces.is_empty() {
        return Err("no pieces: not a SentencePiece model".into());
    }
    if m.unk_id >= m.pieces.len() {
        return Err(format!(
            "unk_id {} is not one of the {} pieces",
            m.unk_id,
            m.pieces.len()
        ));
    }
    if m.pieces[m.unk_id].kind != PieceType::Unknown {
        return Err(format!(
            "unk_id {} names piece {:?}, which is not of the unknown type",
            m.unk_id, m.pieces[m.unk_id].piece
        ));
    }
    Ok(m)
}

fn piece(bytes: &[u8], base: usize) -> Result<Piece, String> {
    let mut r = Reader::new(bytes, base);
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (1, Value::Bytes(b, at)) => {
                if b.len() > MAX_PIECE_BYTES {
                    return Err(format!(
                        "at byte {at}: a piece of {} bytes; at most {MAX_PIECE_BYTES}",
                        b.len()
                    ));
                }
                p.piece = String::from_utf8(b.to_vec())
                    .map_err(|_| format!("at byte {at}: a piece that is not UTF-8"))?;
            }
            (2, Value::Fixed32(bits)) => {
                p.score = f32::from_bits(bits);
                if !p.score.is_finite() {
                    return Err(r.err(format!("piece {:?} has score {}", p.piece, p.score)));
                }
            }
            (3, Value::Varint(v)) => {
                p.kind = PieceType::from_proto(v)
                    .ok_or_else(|| r.err(format!("piece type {v}, not one of 1-6")))?;
            }
            (1..=3, _) => return Err(r.err(format!("piece field {field} of the wrong wire type"))),
            _ => {}
        }
    }
    if p.piece.is_empty() {
        return Err(format!("at byte {base}: an empty piece"));
    }
    Ok(p)
}

fn trainer(bytes: &[u8], base: usize, m: &mut SpmModel) -> Result<(), String> {
    let mut r = Reader::new(bytes, base);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (3, Value::Varint(v)) => {
                m.model_type = match v {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    _ => return Err(r.err(format!("model type {v}, not one of 1-4"))),
                }
            }
            (35, Value::Varint(v)) => m.byte_fallback = v != 0,
            (40, Value::Varint(v)) => {
                m.unk_id = usize::try_from(v)
                    .ok()
                    .filter(|&u| u < MAX_PIECES)
                    .ok_or_else(|| r.err(format!("unk_id {v}")))?;
            }
            (45, Value::Bytes(b, at)) => {
                if b.len() > MAX_PIECE_BYTES {
                    return Err(format!("at byte {at}: an unk_piece of {} bytes", b.len()));
                }
                m.unk_piece = String::from_utf8(b.to_vec())
                    .map_err(|_| format!("at byte {at}: an unk_piece that is not UTF-8"))?;
            }
            (3 | 35 | 40 | 45, _) => {
                return Err(r.err(format!("trainer_spec field {field} of the wrong wire type")))
            }
            _ => {}
        }
    }
    Ok(())
}

fn normalizer(bytes: &[u8], base: usize, m: &mut SpmModel) -> Result<(), String> {
    let mut r = Reader::new(bytes, base);
    while let Some((field, value)) = r.next()? {
        match (field, value) {
            (2, Value::Bytes(b, _)) => m.charsmap = b.to_vec(),
            (3, Value::Varint(v)) => m.add_dummy_prefix = v != 0,
            (4, Value::Varint(v)) => m.remove_extra_whitespaces = v != 0,
            (2..=4, _) => {
                return Err(r.err(format!(
                    "normalizer_spec field {field} of the wrong wire type"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(n: u64, wire: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | wire, out);
        if wire == 2 {
            varint(payload.len() as u64, out);
        }
        out.extend_from_slice(payload);
    }

    fn piece_bytes(p: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut b = Vec::new();
        field(1, 2, p.as_bytes(), &mut b);
        field(2, 5, &score.to_le_bytes(), &mut b);
        let mut k = Vec::new();
        varint(kind, &mut k);
        field(3, 0, &k, &mut b);
        b
    }

    fn model(pieces: &[(&str, f32, u64)], trainer: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, s, k) in pieces {
            field(1, 2, &piece_bytes(p, *s, *k), &mut out);
        }
        field(2, 2, trainer, &mut out);
        out
    }

    #[test]
    fn reads_pieces_and_specs() {
        let mut trainer = Vec::new();
        field(3, 0, &[2], &mut trainer);
        field(35, 0, &[1], &mut trainer);
        let mut bytes = model(&[("<unk>", 0.0, 2), ("▁a", -1.5, 1)], &trainer);
        let mut norm = Vec::new();
        field(2, 2, b"MAP", &mut norm);
        field(3, 0, &[0], &mut norm);
        field(3, 2, &norm, &mut bytes);
        let m = parse(&bytes).unwrap();
        assert_eq!(m.pieces.len(), 2);
        assert_eq!(m.pieces[1].piece, "▁a");
        assert_eq!(m.pieces[1].score, -1.5);
        assert_eq!(m.model_type, ModelType::Bpe);
        assert!(m.byte_fallback && !m.add_dummy_prefix && m.remove_extra_whitespaces);
        assert_eq!(m.charsmap, b"MAP");
    }

    #[test]
    fn malformed_files_are_errors() {
        let good = model(&[("<unk>", 0.0, 2), ("a", -1.0, 1)], &[]);
        // Every truncation of a good file is an error or a shorter model, never a panic.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
        let nan = model(&[("<unk>", 0.0, 2), ("a", f32::NAN, 1)], &[]);
        assert!(parse(&nan).unwrap_err().contains("score NaN"));
        let mut long = Vec::new();
        varint(1 << 3 | 2, &mut long);
        varint(u64::MAX >> 1, &mut long);
        assert!(parse(&long).unwrap_err().contains("only 0 are left"));
        let bad_type = model(&[("<unk>", 0.0, 9)], &[]);
        assert!(parse(&bad_type).unwrap_err().contains("piece type 9"));
        let no_unk = model(&[("a", 0.0, 1)], &[]);
        assert!(parse(&no_unk)
            .unwrap_err()
            .contains("not of the unknown type"));
        assert!(parse(b"").unwrap_err().contains("no trainer_spec"));
    }
}
