//! Times clsnorm training steps on the benchmark's fixed batches (the same token ids as
//! `bench/reference/reference.py step`): one JSON line per setting on stdout.
//!
//! `cargo run --release --example bench_step -- --model models/all-MiniLM-L6-v2 --batch 32 --seq 64`
//! (`--model base` for a randomly initialised BERT-base shape; `--device cuda` on a GPU; see
//! `bench/run.sh`).
use std::time::Instant;

use clap::Parser;
use clsnorm::batch::Batch;
use clsnorm::classifier::{Classifier, ClsSource, HeadConfig};
use clsnorm::data::LabelSpace;
use clsnorm::device::DeviceChoice;
use clsnorm::encoder::{BertConfig, Encoder, RobertaConfig};
use clsnorm::normalize::{NormConfig, Normalizers};
use clsnorm::precision::{GradScaler, Precision};
use clsnorm::tokenize::Encoded;
use clsnorm::train::optim::{AdamW, AdamWConfig};
use tch::{Device, Tensor};

#[derive(Parser)]
struct Args {
    /// An HF model directory, `base` for a random BERT-base-shaped encoder, or `roberta-base`
    /// for a random RoBERTa-base-shaped one (vocabulary 50,265, 514 positions).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: String,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Timed steps (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// fp32, bf16 or fp16 (autocast; fp16 scales the loss as the trainer does).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// TF32 for fp32 matmuls on CUDA.
    #[arg(long)]
    tf32: bool,
}

/// The benchmark's token ids: [CLS] w ... w [SEP], a fixed formula both sides compute.
fn fixed_batch(batch: usize, seq: usize) -> Vec<Encoded> {
    (0..batch)
        .map(|i| Encoded {
            input_ids: (0..seq)
                .map(|j| match j {
                    0 => 101,
                    _ if j == seq - 1 => 102,
                    _ => 1000 + ((i * 131 + j * 31 + i * j * 7) % 20000) as i64,
                })
                .collect(),
            token_type_ids: vec![0; seq],
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads as i32);
    let device = a.device.resolve()?;
    // Step times are read on the host, so the GPU's queue is drained before each reading.
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let enc = if a.model == "base" {
        Encoder::random(&BertConfig::base(), device, 0)
    } else if a.model == "roberta-base" {
        let cfg = BertConfig {
            vocab_size: 50265,
            max_position_embeddings: 514,
            type_vocab_size: 1,
            pad_token_id: 1,
            model_type: "roberta".into(),
            ..BertConfig::base()
        };
        Encoder::random(&RobertaConfig(cfg), device, 0)
    } else {
        Encoder::load(a.model.as_ref(), device, false)?
    };
    let head = HeadConfig {
        labels: LabelSpace::Classes(vec!["0".into(), "1".into()]),
        cls_source: ClsSource::Pooler,
        norm: NormConfig::default(),
        dropout: 0.1,
        bias_init: Default::default(),
        classifier_init: Default::default(),
    };
    let mut model = Classifier::new(enc, head, 1, &Normalizers::builtin())?;
    model.encoder.precision = a.precision;
    clsnorm::precision::set_tf32(a.tf32)?;
    // fp16: the trainer's loss scaling at its starting scale (no overflow on these batches).
    let scale = (a.precision == Precision::Fp16).then_some(GradScaler::INIT_SCALE);
    let adam = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(adam, model.trainable());
    let encs = fixed_batch(a.batch, a.seq);
    let refs: Vec<&Encoded> = encs.iter().collect();
    let batch = Batch::collate(&refs, 0, &model.encoder.limits(), device)?;
    let labels =
        Tensor::from_slice(&(0..a.batch as i64).map(|i| i % 2).collect::<Vec<_>>()).to(device);
    // What the training loop does per update: forward, loss, backward, global gradient norm
    // with its finiteness check (one host sync), AdamW.
    let (mut fwd, mut bwd, mut upd, mut step) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for it in 0..a.warmup + a.reps {
        sync();
        let t0 = Instant::now();
        let out = model.forward(&batch, true);
        let loss = model.loss(&out.logits, &labels);
        sync();
        let t1 = Instant::now();
        match scale {
            Some(s) => {
                opt.backward(&(&loss * s), &[]);
                opt.scale_grads(1.0 / s);
            }
            None => {
                opt.backward(&loss, &[]);
            }
        }
        sync();
        let t2 = Instant::now();
        let norm = opt.grad_norm();
        anyhow::ensure!(
            loss.isfinite()
                .logical_and(&norm.isfinite())
                .int64_value(&[])
                != 0,
            "non-finite loss or gradient"
        );
        opt.step(5e-5);
        sync();
        let t3 = Instant::now();
        if it >= a.warmup {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            upd.push((t3 - t2).as_secs_f64());
            step.push((t3 - t0).as_secs_f64());
        }
    }
    let line = serde_json::json!({
        "side": "clsnorm",
        "model": a.model,
        "batch": a.batch,
        "seq": a.seq,
        "threads": a.threads,
        "device": a.device.to_string(),
        "precision": a.precision,
        "tf32": a.tf32,
        "step_secs": step,
        "forward_secs": fwd,
        "backward_secs": bwd,
        "update_secs": upd,
    });
    println!("{line}");
    Ok(())
}
