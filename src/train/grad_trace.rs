//! `--trace-grads`: the gradient norms of every update, for the paper's argument that a
//! normalized [CLS] changes the gradient reaching the encoder (`RUN/grads.jsonl`).
use tch::{Kind, Tensor};

use super::optim::AdamW;
use crate::error::Result;
use crate::rundir::records::GradRecord;

/// The gradient group of a parameter name: `layer.NN` for an encoder layer (so groups sort in
/// layer order), else the name's first component (`embeddings`, `pooler`, `classifier`).
pub fn grad_group(name: &str) -> String {
    let layer = name
        .strip_prefix("encoder.layer.")
        .or_else(|| name.strip_prefix("transformer.layer."));
    if let Some(rest) = layer {
        let layer = rest.split('.').next().unwrap_or("?");
        format!("layer.{layer:0>2}")
    } else {
        name.split('.').next().unwrap_or(name).to_string()
    }
}

/// The record of update `step` from the gradients of the [CLS] vector before and after the
/// normalizer, the global gradient norm and the optimizer's per-parameter gradients.
pub fn record(
    step: usize,
    loss: &Tensor,
    cls_grad: &Tensor,
    normalized_grad: &Tensor,
    global_grad_norm: &Tensor,
    opt: &AdamW,
) -> Result<GradRecord> {
    let per_dim = cls_grad
        .to_kind(Kind::Double)
        .square()
        .sum_dim_intlist(0, false, Kind::Double)
        .sqrt();
    Ok(GradRecord {
        step,
        loss: loss.double_value(&[]),
        cls_grad_norm: cls_grad.to_kind(Kind::Double).norm().double_value(&[]),
        normalized_grad_norm: normalized_grad
            .to_kind(Kind::Double)
            .norm()
            .double_value(&[]),
        max_dim_grad: per_dim.max().double_value(&[]),
        max_dim: per_dim.argmax(0, false).int64_value(&[]) as usize,
        global_grad_norm: global_grad_norm.double_value(&[]),
        groups: opt.grad_norms_by(grad_group)?,
    })
}
