//! Batched no-grad inference over a tokenized dataset, and the task's metrics on it.
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::analyze::Geometry;
use crate::classifier::Classifier;
use crate::data::{Label, LabelSpace};
use crate::error::Result;
use crate::metrics::{self, Metric, Outputs};
use crate::rundir::records::ClsGeometry;
use crate::tokenize::Encoded;

/// Runs the model in eval mode over `encs` and returns the logits `[n, outputs]` on the CPU,
/// in input order. Examples are batched by length so that little padding is computed.
/// Outputs that are NaN or infinite are an error naming the first such example (0-based
/// position in `encs`), not a metric.
pub fn logits(
    model: &Classifier,
    encs: &[Encoded],
    batch_size: usize,
    pad_id: i64,
) -> Result<Tensor> {
    Ok(head_outputs(model, encs, batch_size, pad_id, false)?.0)
}

/// The logits (checked as [`logits`]) and, with `vectors`, the [CLS] vectors before and after
/// the normalizer, `[n, hidden]` each; all on the CPU, in input order.
fn head_outputs(
    model: &Classifier,
    encs: &[Encoded],
    batch_size: usize,
    pad_id: i64,
    vectors: bool,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let limits = model.encoder.limits();
    let out = crate::batch::infer(
        encs,
        batch_size,
        pad_id,
        &limits,
        model.device(),
        |batch| {
            let o = model.forward(batch, false);
            let mut v = vec![o.logits.to_kind(Kind::Float)];
            if vectors {
                v.push(o.cls.to_kind(Kind::Float));
                v.push(o.normalized.to_kind(Kind::Float));
            }
            v
        },
        |_| {},
    )?;
    let mut out = out.into_iter().map(|t| t.to_device(Device::Cpu));
    let Some(logits) = out.next() else {
        return Ok((
            Tensor::zeros(
                [0, model.config.labels.num_outputs() as i64],
                (Kind::Float, Device::Cpu),
            ),
            None,
        ));
    };
    let vectors = match (out.next(), out.next()) {
        (Some(c), Some(n)) => Some((c, n)),
        _ => None,
    };
    crate::precision::check_finite(&logits, "the model's outputs", model.encoder.precision)?;
    Ok((logits, vectors))
}

/// Predicted class indices (argmax) or scores from logits.
pub fn decode(labels: &LabelSpace, logits: &Tensor) -> Outputs {
    match labels {
        LabelSpace::Classes(_) => Outputs::Classes {
            pred: Vec::<i64>::try_from(logits.argmax(-1, false))
                .unwrap_or_default()
                .into_iter()
                .map(|i| i as usize)
                .collect(),
            gold: Vec::new(),
        },
        LabelSpace::Regression => Outputs::Scores {
            pred: Vec::<f32>::try_from(logits.squeeze_dim(-1))
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect(),
            gold: Vec::new(),
        },
    }
}

/// Attaches gold labels to decoded predictions.
pub fn with_gold(outputs: Outputs, gold: &[Label]) -> Outputs {
    match outputs {
        Outputs::Classes { pred, .. } => Outputs::Classes {
            pred,
            gold: gold
                .iter()
                .map(|l| match l {
                    Label::Class(c) => *c,
                    Label::Score(s) => *s as usize,
                })
                .collect(),
        },
        Outputs::Scores { pred, .. } => Outputs::Scores {
            pred,
            gold: gold
                .iter()
                .map(|l| match l {
                    Label::Score(s) => f64::from(*s),
                    Label::Class(c) => *c as f64,
                })
                .collect(),
        },
    }
}

/// Evaluates `metrics` of the model on labelled examples.
pub fn evaluate(
    model: &Classifier,
    encs: &[Encoded],
    gold: &[Label],
    metrics: &[Metric],
    batch_size: usize,
    pad_id: i64,
) -> Result<BTreeMap<String, f64>> {
    let l = logits(model, encs, batch_size, pad_id)?;
    let out = with_gold(decode(&model.config.labels, &l), gold);
    Ok(metrics::compute(metrics, &out))
}

/// [`evaluate`], and the geometry of the [CLS] vectors before and after the normalizer, from
/// the same forward pass.
pub fn evaluate_with_geometry(
    model: &Classifier,
    encs: &[Encoded],
    gold: &[Label],
    metrics: &[Metric],
    batch_size: usize,
    pad_id: i64,
) -> Result<(BTreeMap<String, f64>, Option<ClsGeometry>)> {
    let (l, vectors) = head_outputs(model, encs, batch_size, pad_id, true)?;
    let out = with_gold(decode(&model.config.labels, &l), gold);
    let geometry = vectors
        .filter(|(c, _)| c.size()[0] >= 2)
        .map(|(c, n)| ClsGeometry {
            raw: Geometry::of(&c),
            normalized: Geometry::of(&n),
        });
    Ok((metrics::compute(metrics, &out), geometry))
}
