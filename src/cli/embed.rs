//! `clsnorm embed`: the encoder's view of one input, as JSON.
use anyhow::Context;
use clap::Args;
use clsnorm::batch::Batch;
use clsnorm::device::set_threads;
use clsnorm::encoder::Encoder;
use clsnorm::tokenize::TextTokenizer;
use serde_json::json;

use super::RuntimeArgs;

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// Truncate to this many tokens, special tokens included (default: the model's position
    /// embeddings, at most 512).
    #[arg(long, value_parser = super::parse_max_len)]
    pub max_len: Option<usize>,
    /// The sentence.
    pub text: String,
    /// Optional second sentence of a pair.
    pub pair_text: Option<String>,
}

fn vector_json(t: &tch::Tensor) -> anyhow::Result<serde_json::Value> {
    let v: Vec<f32> = Vec::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1))?;
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    Ok(json!({ "norm": norm, "values": v }))
}

pub fn run(a: EmbedArgs) -> anyhow::Result<()> {
    set_threads(a.rt.threads)?;
    let device = a.rt.device.resolve()?;
    let model = a.rt.model_dir()?;
    let mut enc = Encoder::load(&model, device, a.rt.allow_pickle)
        .with_context(|| format!("loading model {}", model.display()))?;
    enc.precision = a.rt.precision.apply(device)?;
    let limits = enc.limits();
    let max_len = a.max_len.unwrap_or(limits.max_positions.min(512));
    let tok = TextTokenizer::load(&model, max_len)?;
    limits.check_tokenizer(&tok, a.pair_text.is_some())?;
    let e = tok.encode(&a.text, a.pair_text.as_deref())?;
    let batch = Batch::collate(&[&e], tok.pad_id(), &limits, device)?;
    let out = tch::no_grad(|| enc.forward_first_token(&batch, false));
    clsnorm::precision::check_finite(&out.cls, "the [CLS] vector", enc.precision)?;
    clsnorm::precision::check_finite(&out.pooler_output, "the pooler output", enc.precision)?;
    let report = json!({
        "model": model,
        "device": format!("{device:?}"),
        "precision": enc.precision,
        "tokens": tok.tokens(&e.input_ids),
        "input_ids": e.input_ids,
        "token_type_ids": e.token_type_ids,
        "cls": vector_json(&out.cls)?,
        "pooler_output": vector_json(&out.pooler_output)?,
    });
    super::print_stdout(&serde_json::to_string_pretty(&report)?)
}
