//! Text to token ids, exactly as Hugging Face tokenizes, through the `tokenizers` crate.
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::data::Dataset;
use crate::error::{Error, Result};

pub mod growth;
pub mod slow;
pub mod spm;
pub use growth::Growth;

/// The tokenizer files of a model directory or checkpoint, read once into memory: a run
/// tokenizes and saves with exactly these bytes, even if the directory changes later.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// Where they were read from (for messages).
    pub dir: PathBuf,
    files: Vec<(&'static str, Vec<u8>)>,
}

impl TokenizerFiles {
    /// The files a tokenizer may come with, in the order they are looked for: a fast
    /// tokenizer, BERT's WordPiece vocabulary, or the slow files [`slow`] converts.
    pub const NAMES: &'static [&'static str] = &[
        "tokenizer.json",
        "vocab.txt",
        "spm.model",
        "sentencepiece.bpe.model",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ];

    /// Reads those of [`Self::NAMES`] that `dir` holds.
    pub fn read(dir: &Path) -> Result<Self> {
        use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
        let mut files = Vec::new();
        for name in Self::NAMES {
            let p = dir.join(name);
            if std::fs::symlink_metadata(&p).is_ok() {
                files.push((*name, read_regular(&p, MAX_SMALL_BYTES, Links::Follow)?));
            }
        }
        Ok(TokenizerFiles {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// The bytes of one file, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// Writes the files into `dir` (a checkpoint being written).
    pub fn write_into(&self, dir: &Path) -> Result<()> {
        for (name, bytes) in &self.files {
            crate::atomic::write_bytes(&dir.join(name), bytes)?;
        }
        Ok(())
    }
}

/// One tokenized example: ids and token types, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// The subset of `tokenizer_config.json` / `special_tokens_map.json` clsnorm reads.
#[derive(Debug, Deserialize)]
struct TokenizerConfig {
    #[serde(default = "yes")]
    do_lower_case: bool,
    #[serde(default)]
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    tokenize_chinese_chars: bool,
    #[serde(default)]
    pad_token: Option<TokenSpec>,
}

/// Special tokens are written either as a string or as an `AddedToken` object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Object { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            TokenSpec::Plain(s) | TokenSpec::Object { content: s } => s,
        }
    }
}

fn yes() -> bool {
    true
}

/// A BERT tokenizer with clsnorm's truncation (longest-first to `max_len`) and no padding:
/// padding is applied per batch by [`crate::batch`].
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The same tokenizer without truncation: pairs are encoded one side at a time (see
    /// [`Self::encode_one`]).
    whole: Tokenizer,
    pad_id: i64,
    max_len: usize,
    path: PathBuf,
    growth: Growth,
}

impl TextTokenizer {
    /// The tokenizer as a `tokenizer.json`, without clsnorm's truncation: what transformers
    /// loads to tokenize as clsnorm does.
    pub fn to_json(&self) -> Result<String> {
        self.whole.to_string(true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("cannot be written as tokenizer.json: {e}"),
        })
    }

    /// Loads the tokenizer of a model directory: `tokenizer.json` when present, else a BERT
    /// WordPiece tokenizer built from `vocab.txt` with the casing of `tokenizer_config.json`.
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        Self::from_files(&TokenizerFiles::read(dir)?, max_len)
    }

    /// Builds the tokenizer from files already read (see [`TokenizerFiles`]).
    pub fn from_files(files: &TokenizerFiles, max_len: usize) -> Result<Self> {
        let dir = &files.dir;
        let config_path = dir.join("tokenizer_config.json");
        let config_value: serde_json::Value = match files.get("tokenizer_config.json") {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| Error::Tokenizer {
                path: config_path.clone(),
                msg: e.to_string(),
            })?,
            None => serde_json::json!({}),
        };
        let config: TokenizerConfig =
            serde_json::from_value(config_value.clone()).map_err(|e| Error::Tokenizer {
                path: config_path.clone(),
                msg: e.to_string(),
            })?;
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let mut pad_default = "[PAD]";
        let (mut inner, path, growth) = if let Some(bytes) = files.get("tokenizer.json") {
            let err = |msg: String| Error::Tokenizer {
                path: json.clone(),
                msg,
            };
            let t = guarded(|| Tokenizer::from_bytes(bytes))
                .map_err(&err)?
                .map_err(|e| err(e.to_string()))?;
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
            let growth = Growth::of_json(&value).map_err(&err)?;
            if growth.factor() > growth::MAX_FACTOR {
                return Err(err(format!(
                    "it can make a text up to {:.0} times longer before truncating it ({}); \
                     clsnorm accepts at most {:.0}",
                    growth.factor(),
                    growth.culprit,
                    growth::MAX_FACTOR
                )));
            }
            (t, json, growth)
        } else if let Some(bytes) = files.get("vocab.txt") {
            (
                wordpiece_from_vocab(&vocab, bytes, &config)?,
                vocab,
                Growth::bert(),
            )
        } else if let Some(class) =
            slow::SlowClass::choose(&config_value, |f| files.get(f).is_some())
        {
            let path = dir.join(class.file());
            let err = |msg: String| Error::Tokenizer {
                path: path.clone(),
                msg,
            };
            // A charsmap that lies can make the `tokenizers` crate panic while it normalizes
            // the added tokens: an error naming the file.
            let converted = guarded_call(
                "(raised inside the `tokenizers` library while building the tokenizer from this \
                 file)",
                || slow::convert(class, &config_value, |f| files.get(f).map(<[u8]>::to_vec)),
            )
            .map_err(&err)?
            .map_err(&err)?;
            let value: serde_json::Value =
                serde_json::from_str(&converted.json).map_err(|e| err(e.to_string()))?;
            let growth = Growth::of_json(&value).map_err(&err)?;
            pad_default = class.pad();
            (converted.tokenizer, path, growth)
        } else {
            return Err(Error::Tokenizer {
                path: dir.to_path_buf(),
                msg: missing_tokenizer(|f| dir.join(f).is_file()),
            });
        };
        let pad_token = config
            .pad_token
            .as_ref()
            .map_or(pad_default, TokenSpec::content);
        let pad_id = inner
            .token_to_id(pad_token)
            .ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                msg: format!("pad token '{pad_token}' is not in the vocabulary"),
            })?;
        inner.with_padding(None);
        let mut whole = inner.clone();
        whole.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let mut tok = TextTokenizer {
            inner,
            whole,
            pad_id: pad_id as i64,
            max_len,
            path,
            growth,
        };
        tok.set_max_len(max_len)?;
        Ok(tok)
    }

    /// Changes the truncation length (in tokens, special tokens included).
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        if max_len < 3 {
            return Err(Error::Invalid(format!(
                "max length {max_len} is too short: [CLS] a [SEP] b [SEP] needs at least 3 tokens"
            )));
        }
        self.inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: e.to_string(),
            })?;
        self.max_len = max_len;
        Ok(())
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Id used to pad batches.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One more than the largest token id the tokenizer can produce (ids of added tokens need
    /// not be contiguous, so this can exceed [`Self::vocab_size`]).
    pub fn id_bound(&self) -> u64 {
        self.inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| u64::from(m) + 1)
            .max(self.pad_id as u64 + 1)
    }

    /// The file the tokenizer was built from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token strings of ids (for display).
    pub fn tokens(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&i| {
                self.inner
                    .id_to_token(i as u32)
                    .unwrap_or_else(|| "<?>".into())
            })
            .collect()
    }

    /// Tokenizes one sentence or sentence pair with `[CLS] a [SEP] (b [SEP])`.
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoded> {
        let err = |msg: String| Error::Tokenizer {
            path: self.path.clone(),
            msg,
        };
        for t in std::iter::once(text).chain(pair) {
            self.check_growth(t).map_err(&err)?;
        }
        guarded(|| self.encode_one(text, pair))
            .map_err(&err)?
            .map_err(|e| err(e.to_string()))
    }

    /// One example through `tokenizers`. A pair is not given to `Tokenizer::encode` as a pair:
    /// its truncation keeps every overflowing window of both sides and merges them pairwise,
    /// cubic in the windows (two texts of 6,400 words at `--max-len 16` took 5.4 GB). Each side
    /// is encoded alone, untruncated, and cut to at most `max_len` tokens (one more for the
    /// longer side when both are longer, so that which side is longer is kept); the pair is
    /// then truncated and given its special tokens by the tokenizer's own `post_process`,
    /// whose longest-first rule depends only on the two lengths and keeps prefixes, so the
    /// result is the same (tested against `Tokenizer::encode`).
    fn encode_one(&self, text: &str, pair: Option<&str>) -> tokenizers::Result<Encoded> {
        let Some(pair) = pair else {
            return Ok(Encoded::from(&self.inner.encode(text, true)?));
        };
        let mut first = self.whole.encode(text, false)?;
        let mut second = self.whole.encode(pair, false)?;
        // What `Tokenizer::encode` gives the second sequence before post-processing.
        second.set_type_ids(vec![1; second.len()]);
        let (n1, n2) = (first.len(), second.len());
        let cap = |n: usize, other: usize| n.min(self.max_len + usize::from(n > other));
        for (e, keep) in [(&mut first, cap(n1, n2)), (&mut second, cap(n2, n1))] {
            e.truncate(keep, 0, TruncationDirection::Right);
            drop(e.take_overflowing());
        }
        Ok(Encoded::from(&self.inner.post_process(
            first,
            Some(second),
            true,
        )?))
    }

    /// Tokenizes every example of a dataset (in parallel); an example the
    /// tokenizer fails on is named by its file and line.
    pub fn encode_dataset(&self, ds: &Dataset) -> Result<Vec<Encoded>> {
        for (i, e) in ds.examples.iter().enumerate() {
            for t in std::iter::once(&e.text).chain(&e.text_pair) {
                self.check_growth(t).map_err(|msg| Error::Data {
                    path: ds.file_of(i).to_path_buf(),
                    line: e.line,
                    msg: format!("{msg} (tokenizer: {})", self.path.display()),
                })?;
            }
        }
        let all = || {
            use rayon::prelude::*;
            ds.examples
                .par_iter()
                .map(|e| self.encode_one(&e.text, e.text_pair.as_deref()))
                .collect::<tokenizers::Result<Vec<Encoded>>>()
        };
        let msg = match guarded(all) {
            Ok(Ok(encs)) => return Ok(encs),
            Ok(Err(e)) => e.to_string(),
            Err(msg) => msg,
        };
        // Which example: one at a time.
        Err(self.first_failure(ds).unwrap_or_else(|| Error::Tokenizer {
            path: self.path.clone(),
            msg,
        }))
    }

    /// The first example of `ds` that the tokenizer fails on, as an error naming its line.
    fn first_failure(&self, ds: &Dataset) -> Option<Error> {
        ds.examples.iter().enumerate().find_map(|(i, e)| {
            self.encode(&e.text, e.text_pair.as_deref())
                .err()
                .map(|err| Error::Data {
                    path: ds.file_of(i).to_path_buf(),
                    line: e.line,
                    msg: format!("the tokenizer failed on this example: {err}"),
                })
        })
    }

    /// Refuses a text that the normalizer and pre-tokenizer could grow beyond
    /// [`growth::MAX_GROWN_BYTES`]. Most texts are short enough for the static bound; a longer
    /// one is normalized piece by piece (each piece small enough that even the bound's growth
    /// stays small) and its grown length measured, so only what really grows is refused.
    fn check_growth(&self, text: &str) -> std::result::Result<(), String> {
        let limit = growth::MAX_GROWN_BYTES as f64;
        if text.len() as f64 * self.growth.factor() <= limit {
            return Ok(());
        }
        let too_long = |grown: f64| {
            format!(
                "a text of {} bytes would grow to more than {} bytes in the tokenizer (at least \
                 {grown:.0}: its {} can make text up to {:.0} times longer); shorten it",
                text.len(),
                growth::MAX_GROWN_BYTES,
                self.growth.culprit,
                self.growth.factor()
            )
        };
        let Some(normalizer) = self.inner.get_normalizer() else {
            return Err(too_long(text.len() as f64 * self.growth.pre_tokenizer));
        };
        use tokenizers::{NormalizedString, Normalizer};
        let piece = ((64 << 10) as f64 / self.growth.normalizer).max(1.0) as usize;
        let mut grown = 0.0;
        let mut chars = text
            .char_indices()
            .map(|(i, _)| i)
            .step_by(piece)
            .peekable();
        while let Some(start) = chars.next() {
            let end = chars.peek().copied().unwrap_or(text.len());
            let mut n = NormalizedString::from(&text[start..end]);
            guarded(|| normalizer.normalize(&mut n))?.map_err(|e| e.to_string())?;
            grown += n.get().len() as f64 * self.growth.pre_tokenizer;
            if grown > limit {
                return Err(too_long(grown));
            }
        }
        Ok(())
    }
}

impl From<&tokenizers::Encoding> for Encoded {
    fn from(enc: &tokenizers::Encoding) -> Self {
        Encoded {
            input_ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
            token_type_ids: enc.get_type_ids().iter().map(|&i| i as i64).collect(),
        }
    }
}

/// Runs a call into `tokenizers`, turning a panic inside it into an error message: the
/// `onig` regex engine panics when a pattern of a `tokenizer.json` backtracks past its limit
/// (`retry-limit-in-match over`). While a call runs here, [`quiet_panic`] tells the binary's
/// panic hook not to print panics from the tokenizer's crates, since they are reported as
/// errors instead.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    guarded_call(
        "(raised inside the `tokenizers` library by this tokenizer.json on this text)",
        f,
    )
}

/// Runs `f`, a call into a library that can panic on hostile input (`tokenizers`, the
/// `parquet` reader), turning a panic into an error message ending in `context`; the binary's
/// panic hook stays quiet about it ([`quiet_panic`]).
pub(crate) fn guarded_call<T>(
    context: &str,
    f: impl FnOnce() -> T,
) -> std::result::Result<T, String> {
    use std::sync::atomic::Ordering;
    GUARDED_CALLS.fetch_add(1, Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED_CALLS.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        format!("{msg} {context}")
    })
}

/// Calls now inside [`guarded`] (on any thread: `tokenizers` encodes on a thread pool). A
/// count rather than a flag so that concurrent calls nest.
static GUARDED_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether a panic is one [`guarded_call`] will catch and report: raised in the guarded
/// libraries' crates (the tokenizer's, the parquet reader's and its codecs') while a guarded
/// call runs. The binary's panic hook stays quiet about those.
pub fn quiet_panic(info: &std::panic::PanicHookInfo) -> bool {
    const GUARDED: &[&str] = &[
        "/onig",
        "/tokenizers-",
        "/spm_precompiled-",
        "/parquet-",
        "/zstd",
        "/brotli",
        "/snap-",
        "/lz4_flex-",
        "/zlib-rs-",
        "/flate2-",
        "/thrift",
    ];
    GUARDED_CALLS.load(std::sync::atomic::Ordering::SeqCst) > 0
        && info
            .location()
            .is_some_and(|l| GUARDED.iter().any(|g| l.file().contains(g)))
}

/// Why a folder (or a Hub repository) has no tokenizer clsnorm can build.
pub fn missing_tokenizer(has: impl Fn(&str) -> bool) -> String {
    if has("vocab.json") && !has("merges.txt") {
        return "no tokenizer.json or vocab.txt, and vocab.json without the merges.txt a \
                byte-level BPE needs"
            .into();
    }
    "no tokenizer found: expected tokenizer.json, vocab.txt (WordPiece), spm.model or \
     sentencepiece.bpe.model (SentencePiece), or vocab.json with merges.txt (byte-level BPE)"
        .into()
}

/// Whether a folder (or a Hub repository) holds files clsnorm builds a tokenizer from.
pub fn has_tokenizer(has: impl Fn(&str) -> bool) -> bool {
    has("tokenizer.json")
        || has("vocab.txt")
        || has("spm.model")
        || has("sentencepiece.bpe.model")
        || (has("vocab.json") && has("merges.txt"))
}

/// HF `BertTokenizerFast` assembled from a WordPiece vocabulary.
fn wordpiece_from_vocab(vocab: &Path, bytes: &[u8], config: &TokenizerConfig) -> Result<Tokenizer> {
    let err = |msg: String| Error::Tokenizer {
        path: vocab.to_path_buf(),
        msg,
    };
    let words = WordPiece::read_bytes(bytes).map_err(|e| err(e.to_string()))?;
    let model = WordPiece::builder()
        .vocab(words)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut tok = Tokenizer::new(model);
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| err(format!("special token {t} is not in the vocabulary")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    tok.with_normalizer(Some(BertNormalizer::new(
        true,
        config.tokenize_chinese_chars,
        config.strip_accents,
        config.do_lower_case,
    )))
    .with_pre_tokenizer(Some(BertPreTokenizer))
    .with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )))
    .with_decoder(Some(WordPieceDecoder::default()));
    let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}
