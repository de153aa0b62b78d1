//! Tokenized examples to padded tensors (dynamic padding: each batch to its own longest).
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::tokenize::{Encoded, TextTokenizer};

/// What an encoder accepts: the sizes of its embedding tables. Every batch is checked against
/// them before it reaches libtorch, whose index errors abort the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    pub vocab_size: i64,
    /// Token types the model embeds; `None` for models that take none (DistilBERT, ModernBERT,
    /// DeBERTa-v3), whatever types the tokenizer gives.
    pub type_vocab_size: Option<i64>,
    pub max_positions: usize,
    /// The pad id the model numbers positions around (RoBERTa), which the tokenizer must pad
    /// with; `None` where padding is only masked (BERT).
    pub pad_token_id: Option<i64>,
}

impl InputLimits {
    /// Checks a tokenizer against the model before any text is encoded, so that a mismatch is
    /// reported as such and not as a bad example: every token id must have an embedding row,
    /// the truncation length a position, and sentence pairs need two token types.
    pub fn check_tokenizer(&self, tok: &TextTokenizer, pairs: bool) -> Result<()> {
        let ids = tok.id_bound();
        if ids > self.vocab_size as u64 {
            return Err(Error::Invalid(format!(
                "the tokenizer ({}) has token ids up to {} but the model's embedding matrix has {} rows",
                tok.path().display(),
                ids.saturating_sub(1),
                self.vocab_size
            )));
        }
        if tok.max_len() > self.max_positions {
            return Err(Error::Invalid(format!(
                "max length {} exceeds the model's {} position embeddings (lower --max-len)",
                tok.max_len(),
                self.max_positions
            )));
        }
        if let (true, Some(types)) = (pairs, self.type_vocab_size) {
            // The family's pair template decides the token types (BERT: 0 and 1; RoBERTa: 0).
            let probe = tok.encode("a", Some("b"))?;
            let top = probe.token_type_ids.iter().copied().max().unwrap_or(0);
            if top >= types {
                return Err(Error::Invalid(format!(
                    "sentence pairs need token type {top}, but the model has type_vocab_size {types}"
                )));
            }
        }
        if let Some(pad) = self.pad_token_id.filter(|&p| p != tok.pad_id()) {
            return Err(Error::Invalid(format!(
                "the tokenizer ({}) pads with id {}, but the model's pad_token_id is {pad}",
                tok.path().display(),
                tok.pad_id()
            )));
        }
        Ok(())
    }

    /// Checks one example.
    fn check(&self, e: &Encoded, pad_id: i64) -> Result<()> {
        if e.len() > self.max_positions {
            return Err(Error::Invalid(format!(
                "an input of {} tokens is longer than the model's {} position embeddings (lower --max-len)",
                e.len(),
                self.max_positions
            )));
        }
        if let Some(id) = e
            .input_ids
            .iter()
            .chain([&pad_id])
            .find(|&&i| !(0..self.vocab_size).contains(&i))
        {
            return Err(Error::Invalid(format!(
                "token id {id} is outside the model's vocabulary of {} (does the tokenizer belong to this model?)",
                self.vocab_size
            )));
        }
        if let Some(types) = self.type_vocab_size {
            if let Some(t) = e.token_type_ids.iter().find(|&&t| !(0..types).contains(&t)) {
                return Err(Error::Invalid(format!(
                    "token type {t} is outside the model's {types} token types (sentence pairs need 2)"
                )));
            }
        }
        if e.token_type_ids.len() != e.input_ids.len() {
            return Err(Error::Invalid(
                "token ids and token types differ in length".into(),
            ));
        }
        Ok(())
    }
}

/// Model inputs for one batch, on the target device.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64.
    pub input_ids: Tensor,
    /// `[batch, seq]` int64.
    pub token_type_ids: Tensor,
    /// `[batch, seq]` int64, 1 for tokens and 0 for padding; `None` when nothing is padded
    /// (lets attention use its unmasked fast path).
    pub attention_mask: Option<Tensor>,
    /// Number of real (non-pad) tokens.
    pub n_tokens: usize,
}

impl Batch {
    /// Pads `examples` to the longest of them with `pad_id`, after checking every id against
    /// the model's `limits`.
    pub fn collate(
        examples: &[&Encoded],
        pad_id: i64,
        limits: &InputLimits,
        device: Device,
    ) -> Result<Batch> {
        for e in examples {
            limits.check(e, pad_id)?;
        }
        let b = examples.len();
        let s = examples.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; b * s];
        let mut types = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        let mut n_tokens = 0;
        for (row, e) in examples.iter().enumerate() {
            let off = row * s;
            ids[off..off + e.len()].copy_from_slice(&e.input_ids);
            types[off..off + e.len()].copy_from_slice(&e.token_type_ids);
            mask[off..off + e.len()].fill(1);
            n_tokens += e.len();
        }
        let shape = [b as i64, s as i64];
        let t = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        Ok(Batch {
            input_ids: t(&ids),
            token_type_ids: t(&types),
            attention_mask: (n_tokens < b * s).then(|| t(&mask)),
            n_tokens,
        })
    }

    pub fn size(&self) -> i64 {
        self.input_ids.size()[0]
    }
}

/// Runs `f` without gradient over batches of `encs` taken in length order (little padding) and
/// returns each of its outputs concatenated over all examples, back in input order. `f` gets
/// one checked batch and returns its outputs (`[batch, ...]` each, on any device).
pub fn infer(
    encs: &[Encoded],
    batch_size: usize,
    pad_id: i64,
    limits: &InputLimits,
    device: Device,
    mut f: impl FnMut(&Batch) -> Vec<Tensor>,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Tensor>> {
    let order = length_order(encs);
    let mut parts: Vec<Vec<Tensor>> = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(batch_size.max(1)) {
            let refs: Vec<&Encoded> = chunk.iter().map(|&i| &encs[i]).collect();
            let batch = Batch::collate(&refs, pad_id, limits, device)?;
            for (k, t) in f(&batch).into_iter().enumerate() {
                if parts.len() <= k {
                    parts.push(Vec::new());
                }
                parts[k].push(t);
            }
            progress(chunk.len());
        }
        Ok(())
    })?;
    Ok(parts
        .iter()
        .map(|p| restore_order(&Tensor::cat(p, 0), &order))
        .collect())
}

/// Example indices sorted by length, for inference batches with little padding.
pub fn length_order(encs: &[Encoded]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..encs.len()).collect();
    order.sort_by_key(|&i| encs[i].len());
    order
}

/// Puts rows computed in `order` (concatenated along dim 0) back into input order.
pub fn restore_order(sorted: &Tensor, order: &[usize]) -> Tensor {
    let mut inverse = vec![0i64; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos as i64;
    }
    sorted.index_select(0, &Tensor::from_slice(&inverse).to_device(sorted.device()))
}

/// The example order of `epoch`: a pure function of (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Shuffled examples per mega-batch when grouping by length, in batches (HF's
/// `LengthGroupedSampler` uses the same factor).
pub const LENGTH_GROUP_BATCHES: usize = 50;

/// The batches of `epoch`, a pure function of (lengths, batch size, seed, epoch).
///
/// Without grouping: consecutive slices of [`epoch_order`]. With grouping: that shuffled order is
/// cut into mega-batches of [`LENGTH_GROUP_BATCHES`] batches, each sorted by length (longest
/// first) and sliced into batches, and then the batches are shuffled; every example is still
/// seen once per epoch in a random neighbourhood, but a batch pads to a similar length.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let order = epoch_order(lengths.len(), seed, epoch);
    if !group_by_length {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for mega in order.chunks(batch_size * LENGTH_GROUP_BATCHES) {
        let mut mega = mega.to_vec();
        mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(mega.chunks(batch_size).map(<[usize]>::to_vec));
    }
    // A stream of its own, so the example order above stays that of the ungrouped epoch.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((1 << 32) | epoch as u64);
    batches.shuffle(&mut rng);
    batches
}

/// Batches drawn by another pipeline (`--batch-order FILE`), replayed so that a run sees the
/// same examples in the same batches in the same order: per epoch, each batch's example
/// indices (0-based, in training-file order).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOrder {
    pub epochs: Vec<Vec<Vec<usize>>>,
}

/// One line of a batch-order file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    epoch: usize,
    batch: Vec<usize>,
}

/// Most epochs a batch-order file may hold.
const MAX_ORDER_EPOCHS: usize = 10_000;

impl BatchOrder {
    /// Reads a JSON-lines file, one batch a line: `{"epoch": E, "batch": [i, ...]}`, epochs from
    /// 0, each after the previous one (`bench/reference/reference.py --write-batch-order`
    /// writes PyTorch's).
    pub fn read(path: &std::path::Path) -> Result<BatchOrder> {
        use crate::fsread::{read_regular, Links, MAX_SMALL_BYTES};
        let bytes = read_regular(path, MAX_SMALL_BYTES, Links::Follow)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::File {
            path: path.to_path_buf(),
            msg: "not UTF-8 text".into(),
        })?;
        let mut epochs: Vec<Vec<Vec<usize>>> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |msg: String| Error::Data {
                path: path.to_path_buf(),
                line: i + 1,
                msg,
            };
            if line.trim().is_empty() {
                continue;
            }
            let b: BatchLine = serde_json::from_str(line).map_err(|e| {
                bad(format!(
                    "expected {{\"epoch\": E, \"batch\": [indices]}}: {e}"
                ))
            })?;
            if epochs.is_empty() && b.epoch != 0 {
                return Err(bad(format!(
                    "the first batch is of epoch {}: epochs must come in order from 0",
                    b.epoch
                )));
            }
            if !epochs.is_empty() && b.epoch != epochs.len() - 1 && b.epoch != epochs.len() {
                return Err(bad(format!(
                    "epoch {} follows epoch {}: epochs must come in order from 0",
                    b.epoch,
                    epochs.len() - 1
                )));
            }
            if b.epoch == epochs.len() {
                if epochs.len() == MAX_ORDER_EPOCHS {
                    return Err(bad(format!("more than {MAX_ORDER_EPOCHS} epochs")));
                }
                epochs.push(Vec::new());
            }
            if b.batch.is_empty() {
                return Err(bad("an empty batch".into()));
            }
            epochs[b.epoch].push(b.batch);
        }
        if epochs.is_empty() {
            return Err(Error::File {
                path: path.to_path_buf(),
                msg: "holds no batch".into(),
            });
        }
        Ok(BatchOrder { epochs })
    }

    /// Checks the order against the run: `epochs` epochs of `steps_per_epoch` batches of at
    /// most `batch_size` of the `n` training examples, none twice in an epoch.
    pub fn check(
        &self,
        path: &std::path::Path,
        n: usize,
        batch_size: usize,
        steps_per_epoch: usize,
        epochs: usize,
    ) -> Result<()> {
        let bad = |msg: String| Error::File {
            path: path.to_path_buf(),
            msg,
        };
        if self.epochs.len() < epochs {
            return Err(bad(format!(
                "holds {} epoch(s); the run trains {epochs}",
                self.epochs.len()
            )));
        }
        for (e, batches) in self.epochs.iter().take(epochs).enumerate() {
            if batches.len() != steps_per_epoch {
                return Err(bad(format!(
                    "epoch {e} has {} batches; the run makes {steps_per_epoch} updates an epoch \
                     (batch size {batch_size}{})",
                    batches.len(),
                    if !n.is_multiple_of(batch_size) {
                        ", --drop-last changes it"
                    } else {
                        ""
                    }
                )));
            }
            let mut seen = vec![false; n];
            for b in batches {
                if b.len() > batch_size {
                    return Err(bad(format!(
                        "epoch {e} has a batch of {}; --batch-size is {batch_size}",
                        b.len()
                    )));
                }
                for &i in b {
                    match seen.get_mut(i) {
                        None => {
                            return Err(bad(format!(
                                "epoch {e} names example {i}; the training data has {n}"
                            )))
                        }
                        Some(true) => {
                            return Err(bad(format!("epoch {e} names example {i} twice")))
                        }
                        Some(s) => *s = true,
                    }
                }
            }
            // An epoch sees every example once (all but the last partial batch's under
            // --drop-last): an order that leaves examples out trains on another data set.
            let covered = seen.iter().filter(|s| **s).count();
            let want = n.min(steps_per_epoch * batch_size);
            if covered != want {
                return Err(bad(format!(
                    "epoch {e} covers {covered} of the {n} training examples; an epoch's batches \
                     cover {want} (each example once{})",
                    if want < n {
                        ", but the last partial batch dropped"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }
}
