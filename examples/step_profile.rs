//! Times the parts of one training step (forward, backward, optimizer) on a fixed batch of
//! all-MiniLM-L6-v2: `cargo run --release --example step_profile -- BATCH SEQ [masked]`.
use std::time::Instant;

use clsnorm::batch::Batch;
use clsnorm::classifier::{Classifier, ClsSource, HeadConfig};
use clsnorm::data::LabelSpace;
use clsnorm::encoder::Encoder;
use clsnorm::normalize::NormConfig;
use clsnorm::tokenize::Encoded;
use clsnorm::train::optim::{AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let b: usize = args.get(1).map_or(Ok(16), |s| s.parse())?;
    let s: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let masked = args.get(3).is_some_and(|a| a == "masked");
    let enc = Encoder::load("models/all-MiniLM-L6-v2".as_ref(), Device::Cpu, false)?;
    let head = HeadConfig {
        labels: LabelSpace::Classes(vec!["0".into(), "1".into()]),
        cls_source: ClsSource::Pooler,
        norm: NormConfig::None,
        dropout: 0.1,
    };
    let model = Classifier::new(enc, head, 1);
    let mut opt = AdamW::new(
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
        },
        model.trainable(),
    );
    tch::manual_seed(0);
    let encs: Vec<Encoded> = (0..b)
        .map(|i| {
            let n = if masked && i % 2 == 1 { s / 2 } else { s };
            Encoded {
                input_ids: Vec::try_from(Tensor::randint_low(
                    1000,
                    30000,
                    [n as i64],
                    (Kind::Int64, Device::Cpu),
                ))
                .unwrap(),
                token_type_ids: vec![0; n],
            }
        })
        .collect();
    let refs: Vec<&Encoded> = encs.iter().collect();
    let batch = Batch::collate(&refs, 0, Device::Cpu);
    let labels = Tensor::from_slice(&(0..b as i64).map(|i| i % 2).collect::<Vec<_>>());
    let mut t = [0f64; 3];
    for it in 0..6 {
        let t0 = Instant::now();
        let out = model.forward(&batch, true);
        let loss = model.loss(&out.logits, &labels);
        let _ = loss.double_value(&[]);
        let t1 = Instant::now();
        opt.zero_grad();
        loss.backward();
        let t2 = Instant::now();
        opt.step(1e-5);
        let t3 = Instant::now();
        if it >= 1 {
            t[0] += (t1 - t0).as_secs_f64();
            t[1] += (t2 - t1).as_secs_f64();
            t[2] += (t3 - t2).as_secs_f64();
        }
    }
    for train in [false, true] {
        let t0 = Instant::now();
        for _ in 0..3 {
            let out = tch::no_grad(|| model.forward(&batch, train));
            let _ = out.logits.sum(Kind::Float).double_value(&[]);
        }
        println!(
            "no-grad forward (train={train}): {:.3}s",
            t0.elapsed().as_secs_f64() / 3.0
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            let out = model.forward(&batch, train);
            let _ = out.logits.sum(Kind::Float).double_value(&[]);
        }
        println!(
            "grad forward (train={train}): {:.3}s",
            t0.elapsed().as_secs_f64() / 3.0
        );
    }
    println!(
        "batch {b} seq {s} masked {masked}: forward {:.3}s backward {:.3}s optimizer {:.3}s",
        t[0] / 5.0,
        t[1] / 5.0,
        t[2] / 5.0
    );
    Ok(())
}
