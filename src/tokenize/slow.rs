//! Fast tokenizers from slow-tokenizer files, built as `transformers` 4.57's converters build
//! them (`convert_slow_tokenizer.py`): DeBERTa-v2/v3 (`spm.model`), XLM-R and CamemBERT
//! (`sentencepiece.bpe.model`), RoBERTa (`vocab.json` + `merges.txt`). The result is the
//! `tokenizer.json` transformers would save, so a checkpoint carries it and transformers loads
//! the same tokenizer from it. Checked against transformers' ids in `tests/spm.rs`.
use serde_json::{json, Value};
use tokenizers::{AddedToken, Tokenizer};

use super::spm::{self, ModelType, PieceType, SpmModel};

/// A slow tokenizer class clsnorm converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClass {
    DebertaV2,
    XlmRoberta,
    Camembert,
    Roberta,
}

impl SlowClass {
    /// The class `tokenizer_config.json` names, else the one the file names suggest.
    pub fn choose(config: &Value, has: impl Fn(&str) -> bool) -> Option<SlowClass> {
        let named = config
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .map(|c| c.trim_end_matches("Fast"));
        match named {
            Some("DebertaV2Tokenizer") if has("spm.model") => Some(SlowClass::DebertaV2),
            Some("XLMRobertaTokenizer") if has("sentencepiece.bpe.model") => {
                Some(SlowClass::XlmRoberta)
            }
            Some("CamembertTokenizer") if has("sentencepiece.bpe.model") => {
                Some(SlowClass::Camembert)
            }
            Some("RobertaTokenizer") if has("vocab.json") && has("merges.txt") => {
                Some(SlowClass::Roberta)
            }
            _ if has("spm.model") => Some(SlowClass::DebertaV2),
            _ if has("sentencepiece.bpe.model") => Some(SlowClass::XlmRoberta),
            _ if has("vocab.json") && has("merges.txt") => Some(SlowClass::Roberta),
            _ => None,
        }
    }

    /// The file the vocabulary comes from.
    pub fn file(self) -> &'static str {
        match self {
            SlowClass::DebertaV2 => "spm.model",
            SlowClass::XlmRoberta | SlowClass::Camembert => "sentencepiece.bpe.model",
            SlowClass::Roberta => "vocab.json",
        }
    }

    /// The class's special tokens, in `transformers`' order (bos, eos, unk, sep, pad, cls,
    /// mask, additional), each with its `AddedToken` flags when the class sets them:
    /// (content, normalized, lstrip).
    fn specials(self) -> Vec<(&'static str, bool, bool)> {
        match self {
            // DebertaV2Tokenizer makes its unk token `AddedToken(normalized=True)`.
            SlowClass::DebertaV2 => vec![
                ("[CLS]", false, false),
                ("[SEP]", false, false),
                ("[UNK]", true, false),
                ("[PAD]", false, false),
                ("[MASK]", false, false),
            ],
            SlowClass::XlmRoberta => vec![
                ("<s>", false, false),
                ("</s>", false, false),
                ("<unk>", false, false),
                ("<pad>", false, false),
                ("<mask>", false, true),
            ],
            SlowClass::Camembert => vec![
                ("<s>", false, false),
                ("</s>", false, false),
                ("<unk>", false, false),
                ("<pad>", false, false),
                ("<mask>", false, true),
                ("<s>NOTUSED", false, false),
                ("</s>NOTUSED", false, false),
                ("<unk>NOTUSED", false, false),
            ],
            // RobertaTokenizer wraps its tokens in `AddedToken`s, normalized by default.
            SlowClass::Roberta => vec![
                ("<s>", true, false),
                ("</s>", true, false),
                ("<unk>", true, false),
                ("<pad>", true, false),
                ("<mask>", false, true),
            ],
        }
    }

    /// The pad token when `tokenizer_config.json` names none.
    pub fn pad(self) -> &'static str {
        match self {
            SlowClass::DebertaV2 => "[PAD]",
            _ => "<pad>",
        }
    }
}

/// The converted tokenizer and its `tokenizer.json`.
pub struct Converted {
    pub tokenizer: Tokenizer,
    pub json: String,
}

/// Converts the files of `class` (`read` gives a file's bytes) with the options of
/// `tokenizer_config.json` (`config`); the error names what is wrong.
pub fn convert(
    class: SlowClass,
    config: &Value,
    read: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Converted, String> {
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
    let file = |name: &str| read(name).ok_or_else(|| format!("no {name}"));
    let mut tok = match class {
        SlowClass::Roberta => {
            let vocab: serde_json::Map<String, Value> =
                serde_json::from_slice(&file("vocab.json")?)
                    .map_err(|e| format!("vocab.json is not a JSON object of ids: {e}"))?;
            if vocab.values().any(|v| !v.is_u64()) {
                return Err("vocab.json maps a token to something not an id".into());
            }
            let merges = roberta_merges(&file("merges.txt")?)?;
            let add_prefix_space = flag("add_prefix_space", false);
            let id = |t: &str| {
                vocab
                    .get(t)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("vocab.json has no {t}"))
            };
            let tokenizer_json = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null,
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                                  "trim_offsets": true, "use_regex": true},
                "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", id("</s>")?],
                                   "cls": ["<s>", id("<s>")?], "trim_offsets": true,
                                   "add_prefix_space": add_prefix_space},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                            "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null,
                          "continuing_subword_prefix": "", "end_of_word_suffix": "",
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                          "vocab": vocab, "merges": merges},
            });
            load(&tokenizer_json)?
        }
        _ => {
            let name = class.file();
            let model = spm::parse(&file(name)?).map_err(|e| format!("{name}: {e}"))?;
            let tokenizer_json = spm_json(class, &model, config)?;
            let mut tok = load(&tokenizer_json)?;
            // Control and user-defined pieces become added tokens, as the converter adds them.
            let added: Vec<AddedToken> = model
                .pieces
                .iter()
                .filter(|p| matches!(p.kind, PieceType::Control | PieceType::UserDefined))
                .map(|p| {
                    AddedToken::from(p.piece.clone(), p.kind == PieceType::Control)
                        .normalized(false)
                })
                .collect();
            tok.add_tokens(&added);
            tok
        }
    };
    add_specials(&mut tok, class, config);
    let json = tok
        .to_string(false)
        .map_err(|e| format!("the converted tokenizer does not serialise: {e}"))?;
    Ok(Converted {
        tokenizer: tok,
        json,
    })
}

fn load(value: &Value) -> Result<Tokenizer, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    super::guarded(|| Tokenizer::from_bytes(&bytes))?
        .map_err(|e| format!("the converted tokenizer is not valid: {e}"))
}

/// The special tokens the fast tokenizer adds on creation: `added_tokens_decoder` of
/// `tokenizer_config.json` in id order, then the class's special tokens not yet added.
fn add_specials(tok: &mut Tokenizer, class: SlowClass, config: &Value) {
    let mut tokens: Vec<AddedToken> = Vec::new();
    if let Some(decoder) = config
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
    {
        let mut entries: Vec<(u64, &Value)> = decoder
            .iter()
            .filter_map(|(id, v)| Some((id.parse().ok()?, v)))
            .collect();
        entries.sort_by_key(|(id, _)| *id);
        for (_, v) in entries {
            let Some(content) = v.get("content").and_then(Value::as_str) else {
                continue;
            };
            let b = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
            tokens.push(
                AddedToken::from(content.to_string(), b("special", false))
                    .normalized(b("normalized", false))
                    .lstrip(b("lstrip", false))
                    .rstrip(b("rstrip", false))
                    .single_word(b("single_word", false)),
            );
        }
    }
    let present = |tok: &Tokenizer, t: &str| {
        tok.get_added_tokens_decoder()
            .values()
            .any(|a| a.content == t)
    };
    for (content, normalized, lstrip) in class.specials() {
        let content = special_override(config, content);
        if present(tok, &content) || tokens.iter().any(|t| t.content == content) {
            continue;
        }
        tokens.push(
            AddedToken::from(content, true)
                .normalized(normalized)
                .lstrip(lstrip),
        );
    }
    tok.add_tokens(&tokens);
}

/// A special token as `tokenizer_config.json` renames it (`"mask_token": "[MASK]"`), else the
/// class's own.
fn special_override(config: &Value, default: &str) -> String {
    const KEYS: &[(&str, &[&str])] = &[
        ("bos_token", &["<s>"]),
        ("eos_token", &["</s>"]),
        ("unk_token", &["[UNK]", "<unk>"]),
        ("pad_token", &["[PAD]", "<pad>"]),
        ("cls_token", &["[CLS]"]),
        ("sep_token", &["[SEP]"]),
        ("mask_token", &["[MASK]", "<mask>"]),
    ];
    for (key, defaults) in KEYS {
        if defaults.contains(&default) {
            match config.get(*key) {
                Some(Value::String(s)) => return s.clone(),
                Some(Value::Object(o)) => {
                    if let Some(s) = o.get("content").and_then(Value::as_str) {
                        return s.to_string();
                    }
                }
                _ => {}
            }
        }
    }
    default.to_string()
}

/// `merges.txt` as RobertaTokenizer reads it: the first line (`#version`) and the last
/// (empty) dropped, each line two tokens.
fn roberta_merges(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "merges.txt is not UTF-8".to_string())?;
    let lines: Vec<&str> = text.split('\n').collect();
    let body = if lines.len() >= 2 {
        &lines[1..lines.len() - 1]
    } else {
        &[][..]
    };
    body.iter()
        .enumerate()
        .map(|(i, l)| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                [a, b] => Ok(json!([a, b])),
                _ => Err(format!(
                    "merges.txt:{}: expected two tokens, found {}",
                    i + 2,
                    crate::excerpt::quoted(l)
                )),
            }
        })
        .collect()
}

/// The `tokenizer.json` of a SentencePiece model, without added tokens.
fn spm_json(class: SlowClass, m: &SpmModel, config: &Value) -> Result<Value, String> {
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
    // The converter's vocabulary: XLM-R and CamemBERT put fairseq's special tokens first.
    let mut vocab: Vec<(String, f64)> = match class {
        SlowClass::XlmRoberta => ["<s>", "<pad>", "</s>", "<unk>"]
            .iter()
            .map(|t| (t.to_string(), 0.0))
            .chain(
                m.pieces
                    .iter()
                    .skip(3)
                    .map(|p| (p.piece.clone(), f64::from(p.score))),
            )
            .collect(),
        SlowClass::Camembert => [
            ("<s>NOTUSED", 0.0),
            ("<pad>", 0.0),
            ("</s>NOTUSED", 0.0),
            ("<unk>", 0.0),
            ("<unk>NOTUSED", -100.0),
        ]
        .iter()
        .map(|(t, s)| (t.to_string(), *s))
        .chain(
            m.pieces
                .iter()
                .skip(1)
                .map(|p| (p.piece.clone(), f64::from(p.score))),
        )
        .collect(),
        _ => m
            .pieces
            .iter()
            .map(|p| (p.piece.clone(), f64::from(p.score)))
            .collect(),
    };
    if matches!(class, SlowClass::XlmRoberta | SlowClass::Camembert) {
        vocab.push(("<mask>".into(), 0.0));
    }
    let unk_id = match class {
        SlowClass::XlmRoberta | SlowClass::Camembert => 3,
        _ => m.unk_id,
    };
    let model = match m.model_type {
        ModelType::Unigram => json!({
            "type": "Unigram", "unk_id": unk_id, "vocab": vocab, "byte_fallback": false,
        }),
        ModelType::Bpe => {
            // Later duplicates win, as in the converter's dict.
            let mut ids = serde_json::Map::new();
            for (i, (piece, _)) in vocab.iter().enumerate() {
                ids.insert(piece.clone(), json!(i));
            }
            json!({
                "type": "BPE", "dropout": null, "unk_token": m.unk_piece,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": false, "ignore_merges": false, "vocab": ids,
                "merges": merges(m, &vocab),
            })
        }
        other => {
            return Err(format!(
                "a SentencePiece model of type {other:?}; transformers converts only unigram and \
                 BPE models"
            ))
        }
    };
    let charsmap = (!m.charsmap.is_empty()).then(
        || json!({"type": "Precompiled", "precompiled_charsmap": base64::encode(&m.charsmap)}),
    );
    let legacy = flag("legacy", true);
    let prepend = if !flag("add_prefix_space", true) {
        "never"
    } else if legacy {
        "always"
    } else {
        "first"
    };
    let metaspace = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": prepend,
                           "split": true});
    let (normalizers, pre_tokenizer, post) = match class {
        SlowClass::DebertaV2 => {
            let mut n = Vec::new();
            if flag("do_lower_case", false) {
                n.push(json!({"type": "Lowercase"}));
            }
            n.push(json!({"type": "Strip", "strip_left": true, "strip_right": true}));
            n.extend(charsmap);
            n.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}));
            let mut pre = Vec::new();
            if flag("split_by_punct", false) {
                pre.push(json!({"type": "Punctuation", "behavior": "Isolated"}));
            }
            pre.push(metaspace.clone());
            let id = |t: &str| piece_id(&vocab, t);
            let (cls, sep) = (
                special_override(config, "[CLS]"),
                special_override(config, "[SEP]"),
            );
            let post = template(
                &format!("{cls}:0 $A:0 {sep}:0"),
                &format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"),
                &[(&cls, id(&cls)?), (&sep, id(&sep)?)],
            );
            (n, json!({"type": "Sequence", "pretokenizers": pre}), post)
        }
        _ => {
            let mut n: Vec<Value> = charsmap.into_iter().collect();
            n.push(json!({"type": "Strip", "strip_left": false, "strip_right": true}));
            n.push(json!({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "▁"}));
            let id = |t: &str| piece_id(&vocab, t);
            let post = template(
                "<s>:0 $A:0 </s>:0",
                "<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
                &[("<s>", id("<s>")?), ("</s>", id("</s>")?)],
            );
            (n, metaspace.clone(), post)
        }
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": metaspace,
        "model": model,
    }))
}

/// The id the converter's `convert_tokens_to_ids` gives `token`: its first place in the
/// vocabulary.
fn piece_id(vocab: &[(String, f64)], token: &str) -> Result<usize, String> {
    vocab
        .iter()
        .position(|(p, _)| p == token)
        .ok_or_else(|| format!("the special token {token} is not in the vocabulary"))
}

fn template(single: &str, pair: &str, specials: &[(&str, usize)]) -> Value {
    let seq = |spec: &str| -> Vec<Value> {
        spec.split(' ')
            .map(|item| {
                let (id, ty) = item.rsplit_once(':').unwrap_or((item, "0"));
                let ty: u32 = ty.parse().unwrap_or(0);
                match id {
                    "$A" => json!({"Sequence": {"id": "A", "type_id": ty}}),
                    "$B" => json!({"Sequence": {"id": "B", "type_id": ty}}),
                    t => json!({"SpecialToken": {"id": t, "type_id": ty}}),
                }
            })
            .collect()
    };
    let mut tokens = serde_json::Map::new();
    for (t, id) in specials {
        tokens.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": seq(single), "pair": seq(pair),
           "special_tokens": tokens})
}

/// BPE merges from a SentencePiece model's pieces, as `generate_merges(vocab, vocab_scores)`
/// orders them: every split of every piece whose halves are pieces, by the halves' ids, then
/// all by score, then the halves' lengths, highest first (a stable sort, as Python's).
fn merges(m: &SpmModel, vocab_scores: &[(String, f64)]) -> Vec<Value> {
    use std::collections::HashMap;
    let ids: HashMap<&str, usize> = m
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.as_str(), i))
        .collect();
    // dict(vocab_scores): first place, last score.
    let mut order: Vec<&str> = Vec::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    for (p, s) in vocab_scores {
        if score.insert(p.as_str(), *s).is_none() {
            order.push(p);
        }
    }
    let mut all: Vec<(&str, &str, f64)> = Vec::new();
    for piece in order {
        let s = score[piece];
        let mut local: Vec<(&str, &str, f64)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| (&piece[..at], &piece[at..]))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, s))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        all.extend(local);
    }
    let key = |x: &(&str, &str, f64)| (x.2, x.0.chars().count(), x.1.chars().count());
    all.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    all.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}
