//! How much longer a tokenizer can make a text before it truncates it.
//!
//! `tokenizers` normalizes and pre-tokenizes a whole text before truncating it, at ~230 bytes
//! of memory per byte, so a `tokenizer.json` whose normalizer multiplies text (a `Replace`
//! with a long content, `Sequence`s of them) could exhaust memory on an ordinary line. The
//! bound here is read from the JSON, per component, and is conservative (real tokenizers
//! reach a fraction of it); texts that could pass [`MAX_GROWN_BYTES`] are measured before they
//! are tokenized (see `TextTokenizer::check_growth`).
use serde_json::Value;

/// A tokenized text may grow to at most this many bytes in the normalizer and pre-tokenizer
/// (~1 GB of the tokenizer's memory; the 1 MiB a data file's text may have, at BERT's
/// normalization, stays under it).
pub const MAX_GROWN_BYTES: usize = 4 << 20;

/// Tokenizers whose bound exceeds this are refused when loaded (BERT's bound is 12; a real
/// SentencePiece tokenizer's is estimated at a few hundred, from its longest charsmap entry).
pub const MAX_FACTOR: f64 = (1u64 << 20) as f64;

/// Upper bounds of the bytes out per byte in of a tokenizer's normalizer and pre-tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    pub normalizer: f64,
    pub pre_tokenizer: f64,
    /// The component with the largest factor, for messages (`Replace 'a' -> 100000 bytes`).
    pub culprit: String,
}

impl Growth {
    /// The factor of the whole chain.
    pub fn factor(&self) -> f64 {
        self.normalizer * self.pre_tokenizer
    }

    /// clsnorm's own BERT tokenizer (`vocab.txt`): BertNormalizer and BertPreTokenizer.
    pub fn bert() -> Self {
        Growth {
            normalizer: BERT,
            pre_tokenizer: 1.0,
            culprit: "BertNormalizer".into(),
        }
    }

    /// The bound of a `tokenizer.json` (already accepted by `tokenizers`).
    pub fn of_json(json: &Value) -> Result<Self, String> {
        let mut worst = (1.0, String::from("no normalizer"));
        let normalizer = normalizer(&json["normalizer"], &mut worst)?;
        let pre_tokenizer = pre_tokenizer(&json["pre_tokenizer"]);
        Ok(Growth {
            normalizer,
            pre_tokenizer,
            culprit: worst.1,
        })
    }
}

/// BertNormalizer: CJK characters get a space on each side (3 -> 5 bytes), accents are
/// stripped through NFD (UTF-8 grows at most 3x, UAX #15), lowercasing grows at most 1.5x.
const BERT: f64 = 2.0 * 3.0 * 2.0;

/// Bytes out per byte in of one normalizer; `worst` keeps the largest single component.
fn normalizer(v: &Value, worst: &mut (f64, String)) -> Result<f64, String> {
    if v.is_null() {
        return Ok(1.0);
    }
    let kind = v["type"]
        .as_str()
        .ok_or("a normalizer without a \"type\"")?;
    let (factor, what) = match kind {
        "Sequence" => {
            let mut product = 1.0f64;
            for n in v["normalizers"].as_array().into_iter().flatten() {
                product *= normalizer(n, worst)?;
            }
            return Ok(product);
        }
        "BertNormalizer" | "Bert" => (BERT, kind.to_string()),
        "Strip" | "StripAccents" | "Nmt" => (1.0, kind.to_string()),
        "NFC" | "NFD" => (3.0, kind.to_string()),
        "NFKC" | "NFKD" => (11.0, kind.to_string()),
        "Lowercase" | "ByteLevel" => (2.0, kind.to_string()),
        "Prepend" => {
            let p = v["prepend"].as_str().map_or(0, str::len);
            (1.0 + p as f64, format!("Prepend of {p} bytes"))
        }
        "Replace" => {
            let content = v["content"].as_str().map_or(0, str::len) as f64;
            let pattern = &v["pattern"];
            match (pattern["String"].as_str(), pattern["Regex"].as_str()) {
                // Each match of |s| bytes becomes the content; an empty pattern (and a regex
                // that can match the empty string) inserts it at each of the n + 1 places
                // around n bytes: n + (n + 1) c <= n (1 + 2c) for n >= 1.
                (Some(s), _) if !s.is_empty() => (
                    (content / s.len() as f64).max(1.0),
                    format!("Replace {s:?} -> {content} bytes"),
                ),
                (_, Some(r)) => (
                    1.0 + 2.0 * content,
                    format!("Replace /{r}/ -> {content} bytes"),
                ),
                _ => (
                    1.0 + 2.0 * content,
                    format!("Replace \"\" -> {content} bytes"),
                ),
            }
        }
        "Precompiled" => {
            let longest = precompiled_longest(v["precompiled_charsmap"].as_str().unwrap_or(""))?;
            (
                (longest as f64).max(1.0),
                format!("Precompiled charsmap (replacements up to {longest} bytes)"),
            )
        }
        other => return Err(format!("unknown normalizer type {other:?}")),
    };
    if factor > worst.0 {
        *worst = (factor, what);
    }
    Ok(factor)
}

/// The longest replacement of a SentencePiece charsmap: `[u32 trie size][trie][replacements,
/// each ended by a NUL]` (the format `spm_precompiled` reads). A character or grapheme is
/// replaced by one of them.
fn precompiled_longest(b64: &str) -> Result<usize, String> {
    let bytes = base64::decode(b64).map_err(|e| format!("precompiled_charsmap: {e}"))?;
    let trie = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("precompiled_charsmap: shorter than its header")?;
    let blob = bytes.get(4 + trie..).unwrap_or(&[]);
    Ok(blob.split(|&c| c == 0).map(<[u8]>::len).max().unwrap_or(0))
}

/// Bytes out per byte in of a pre-tokenizer: ByteLevel maps a byte to a character of up to 2
/// bytes and may prefix every piece (at least a byte) with `Ġ` (2 bytes); Metaspace turns a
/// space into its replacement character (`▁`, 3 bytes) and may prefix every piece with one.
fn pre_tokenizer(v: &Value) -> f64 {
    match v["type"].as_str() {
        None => 1.0,
        Some("Sequence") => v["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(pre_tokenizer)
            .product(),
        Some("ByteLevel") if v["add_prefix_space"] == Value::Bool(false) => 2.0,
        Some("ByteLevel") => 4.0,
        Some("Metaspace") => 1.0 + v["replacement"].as_str().map_or(3, str::len).max(1) as f64,
        Some(
            "BertPreTokenizer" | "Whitespace" | "WhitespaceSplit" | "Split" | "Punctuation"
            | "Digits" | "UnicodeScripts" | "CharDelimiterSplit" | "FixedLength",
        ) => 1.0,
        // A type newer than this list: as much as the largest above.
        Some(_) => 5.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_compose_over_sequences_and_name_the_worst_component() {
        let g = Growth::of_json(&json!({
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFKC"},
                {"type": "Replace", "pattern": {"String": "ab"}, "content": "x".repeat(100)},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Whitespace"}, {"type": "ByteLevel"}
            ]},
        }))
        .unwrap();
        assert_eq!(g.normalizer, 11.0 * 50.0 * 3.0);
        assert_eq!(g.pre_tokenizer, 4.0);
        assert_eq!(g.culprit, "Replace \"ab\" -> 100 bytes");
        assert_eq!(Growth::of_json(&json!({})).unwrap().factor(), 1.0);
    }

    #[test]
    fn a_charsmap_is_bounded_by_its_longest_replacement() {
        // header: trie of 4 bytes; then replacements "a\0", "hello\0"
        let mut raw = 4u32.to_le_bytes().to_vec();
        raw.extend([9, 9, 9, 9]);
        raw.extend(b"a\0hello\0");
        let b64 = base64::encode(&raw);
        assert_eq!(precompiled_longest(&b64).unwrap(), 5);
        assert!(precompiled_longest("AA").is_err());
    }
}
