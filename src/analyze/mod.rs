//! Analysis of [CLS] embeddings: the papers' diagnosis (non-zero centre, concentration on few
//! dimensions, uneven spread, correlation) made measurable.
pub mod plots;
pub mod stats;

pub use stats::{compute, state_summary, Details, EmbeddingStats, Geometry, StateSummary};

use tch::Tensor;

use crate::error::Result;
use crate::normalize::{NormConfig, Normalizers};

/// Applies a normalizer as training would leave it: frozen statistics are fitted, running
/// statistics are accumulated over one pass of shuffled batches of 16 in training mode; then
/// every vector goes through it in eval mode.
pub fn normalize_as_trained(
    norms: &Normalizers,
    norm: &NormConfig,
    x: &Tensor,
    seed: u64,
) -> Result<Tensor> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let n = norms.build(norm, &(vs.root() / "normalizer"), x.size()[1])?;
    if n.needs_fit() {
        n.fit(x)?;
    }
    let order = crate::batch::epoch_order(x.size()[0] as usize, seed, 0);
    tch::no_grad(|| {
        for chunk in order.chunks(16) {
            let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let _ = n.forward(&x.index_select(0, &Tensor::from_slice(&idx)), true);
        }
    });
    Ok(tch::no_grad(|| n.forward(x, false)))
}
