//! Tokenized examples to padded tensors (dynamic padding: each batch to its own longest).
use tch::{Device, Tensor};

use crate::tokenize::Encoded;

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
    /// Pads `examples` to the longest of them with `pad_id`.
    pub fn collate(examples: &[&Encoded], pad_id: i64, device: Device) -> Batch {
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
        Batch {
            input_ids: t(&ids),
            token_type_ids: t(&types),
            attention_mask: (n_tokens < b * s).then(|| t(&mask)),
            n_tokens,
        }
    }

    pub fn size(&self) -> i64 {
        self.input_ids.size()[0]
    }
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
