//! Unpadded (packed) execution: a padded batch's real tokens as one `[tokens, width]` tensor,
//! so that embeddings, every linear layer, the feed-forward block and the LayerNorms run on
//! real tokens only. Attention still runs on the padded `[batch, seq]` layout (its keys
//! masked), which costs `seq²` per sequence and is a small part of a layer at GLUE lengths.
//!
//! Dropout draws exactly the values the padded path draws (the same stream over the padded
//! shape, with the padding rows skipped), so a packed run equals its padded twin to float
//! rounding, dropout included (`tests/unpadded.rs`).
use tch::{Device, Kind, Tensor};

/// Where the real tokens of a padded `[batch, seq]` batch are.
#[derive(Debug)]
pub struct Packing {
    batch: i64,
    seq: i64,
    /// Flat positions (`row * seq + col`) of the real tokens, `[tokens]`.
    index: Tensor,
    /// Position in the packed tensor of each sequence's first token, `[batch]`.
    first: Tensor,
    /// Whether each padded position (row-major) holds a real token.
    real: Vec<bool>,
}

impl Packing {
    /// The packing of `attention_mask` (`[batch, seq]`, 1 for real tokens); `None` when a
    /// sequence has no real token at all (nothing to read its first token from).
    pub fn new(attention_mask: &Tensor) -> Option<Packing> {
        let (batch, seq) = attention_mask.size2().ok()?;
        let flat: Vec<i64> = Vec::try_from(
            attention_mask
                .to_device(Device::Cpu)
                .to_kind(Kind::Int64)
                .reshape([-1]),
        )
        .ok()?;
        let real: Vec<bool> = flat.iter().map(|&m| m != 0).collect();
        let mut index = Vec::new();
        let mut first = Vec::with_capacity(batch as usize);
        for row in 0..batch as usize {
            let start = index.len() as i64;
            for col in 0..seq as usize {
                if real[row * seq as usize + col] {
                    index.push((row * seq as usize + col) as i64);
                }
            }
            if index.len() as i64 == start {
                return None;
            }
            first.push(start);
        }
        let device = attention_mask.device();
        Some(Packing {
            batch,
            seq,
            index: Tensor::from_slice(&index).to_device(device),
            first: Tensor::from_slice(&first).to_device(device),
            real,
        })
    }

    /// The real tokens' rows of `x` (`[batch, seq, ...]`): `[tokens, ...]`.
    pub fn pack(&self, x: &Tensor) -> Tensor {
        let mut flat = vec![self.batch * self.seq];
        flat.extend_from_slice(&x.size()[2..]);
        x.reshape(flat.as_slice()).index_select(0, &self.index)
    }

    /// `x` (`[tokens, width]`) back in the padded layout, `[batch, seq, width]`, zeros at the
    /// padding.
    pub fn unpack(&self, x: &Tensor) -> Tensor {
        let width = x.size()[1];
        // In place: one padded tensor per call, not a zero one and its copy.
        let mut padded = Tensor::zeros([self.batch * self.seq, width], (x.kind(), x.device()));
        padded
            .index_copy_(0, &self.index, x)
            .view([self.batch, self.seq, width])
    }

    /// Each sequence's first token of the packed `x` (`[tokens, width]`): `[batch, 1, width]`.
    pub fn first_tokens(&self, x: &Tensor) -> Tensor {
        x.index_select(0, &self.first).unsqueeze(1)
    }

    /// [`super::layers::dropout`] of the packed `x` (`[tokens, width]`) with the mask the
    /// padded `[batch, seq, width]` tensor would get, restricted to the real rows.
    pub fn dropout(&self, x: &Tensor, p: f64, train: bool) -> Tensor {
        if !train || p <= 0.0 {
            return x.shallow_clone();
        }
        if x.device() != Device::Cpu || p >= 1.0 {
            return x.dropout(p, true);
        }
        let width = x.size()[1];
        x * super::layers::keep_mask_rows(&self.real, width, p, x.kind())
    }
}

/// Where a block's token states are: the padded `[batch, seq, width]` layout or packed
/// `[tokens, width]` ([`Packing`]). Lets a family write its block once for both.
#[derive(Debug, Clone, Copy)]
pub enum Layout<'a> {
    Padded,
    Packed(&'a Packing),
}

impl<'a> Layout<'a> {
    /// Packed when `unpadded` and a CPU batch has padding; the packing lives in `slot`.
    pub fn choose(
        attention_mask: Option<&Tensor>,
        unpadded: bool,
        slot: &'a mut Option<Packing>,
    ) -> Layout<'a> {
        *slot = attention_mask
            .filter(|m| unpadded && m.device() == Device::Cpu)
            .and_then(Packing::new);
        match slot {
            Some(pk) => Layout::Packed(pk),
            None => Layout::Padded,
        }
    }

    /// `x` (this layout) in the padded layout, `[batch, seq, width]`.
    pub fn padded(&self, x: &Tensor) -> Tensor {
        match self {
            Layout::Padded => x.shallow_clone(),
            Layout::Packed(pk) => pk.unpack(x),
        }
    }

    /// `x` (`[batch, seq, ...]`) in this layout.
    pub fn from_padded(&self, x: &Tensor) -> Tensor {
        match self {
            Layout::Padded => x.shallow_clone(),
            Layout::Packed(pk) => pk.pack(x),
        }
    }

    /// Each sequence's first token of `x` (this layout): `[batch, 1, width]`.
    pub fn first_tokens(&self, x: &Tensor) -> Tensor {
        match self {
            Layout::Padded => x.narrow(1, 0, 1),
            Layout::Packed(pk) => pk.first_tokens(x),
        }
    }

    /// Dropout of `x` (this layout) with the padded path's mask.
    pub fn dropout(&self, x: &Tensor, p: f64, train: bool) -> Tensor {
        match self {
            Layout::Padded => super::layers::dropout(x, p, train),
            Layout::Packed(pk) => pk.dropout(x, p, train),
        }
    }
}
