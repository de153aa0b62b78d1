//! Encoder + head: `[CLS] vector -> normalizer -> dropout -> linear`, with its loss.
use crate::encoder::layers::ApplyDropout;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::batch::Batch;
use crate::data::{Dataset, Label, LabelSpace};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::normalize::{NormConfig, Normalizer, Normalizers};

/// Which vector feeds the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClsSource {
    /// The pooler output `tanh(W h_cls + b)` (as the IsoBN code).
    #[default]
    Pooler,
    /// The raw last-layer [CLS] state (as paper A).
    Hidden,
}

/// How the output layer's bias starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BiasInit {
    /// Zero, as Hugging Face and the papers.
    #[default]
    Zero,
    /// The training labels' prior: the head starts by predicting their mean
    /// score or class shares, so it needs no offset from the normalized vector (which
    /// batch-centring normalizers remove).
    Prior,
}

/// How the output layer's weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierInit {
    /// N(0, initializer_range) weights, zero bias: Hugging Face's `_init_weights`.
    #[default]
    Hf,
    /// PyTorch's `nn.Linear` default, U(-1/sqrt(hidden), 1/sqrt(hidden)) for weights and bias
    /// (weights first), as the IsoBN code's classifier.
    Torch,
}

/// The head's shape and options; saved as part of every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub labels: LabelSpace,
    pub cls_source: ClsSource,
    pub norm: NormConfig,
    /// Dropout before the linear layer.
    pub dropout: f64,
    /// How the output bias started (zero in runs from before this option).
    #[serde(default)]
    pub bias_init: BiasInit,
    /// How the output weights started (HF's in runs from before this option).
    #[serde(default)]
    pub classifier_init: ClassifierInit,
}

/// The output bias that predicts the labels of `train` before any training: their mean for
/// regression; for classes, the log of each class's share with one added count per class (so
/// that a class missing from the data gets a finite bias).
pub fn label_prior(labels: &LabelSpace, train: &Dataset) -> Result<Vec<f64>> {
    let no_labels = || {
        Error::Invalid(format!(
            "{}: no labelled example to take the label prior from",
            train.path.display()
        ))
    };
    match labels {
        LabelSpace::Regression => {
            let scores: Vec<f64> = train
                .examples
                .iter()
                .filter_map(|e| match e.label {
                    Some(Label::Score(v)) => Some(f64::from(v)),
                    _ => None,
                })
                .collect();
            if scores.is_empty() {
                return Err(no_labels());
            }
            Ok(vec![scores.iter().sum::<f64>() / scores.len() as f64])
        }
        LabelSpace::Classes(names) => {
            let mut counts = vec![0usize; names.len()];
            for e in &train.examples {
                if let Some(Label::Class(c)) = e.label {
                    if let Some(n) = counts.get_mut(c) {
                        *n += 1;
                    }
                }
            }
            let n: usize = counts.iter().sum();
            if n == 0 {
                return Err(no_labels());
            }
            let total = (n + names.len()) as f64;
            Ok(counts
                .iter()
                .map(|&c| ((c + 1) as f64 / total).ln())
                .collect())
        }
    }
}

/// What one forward pass produces.
#[derive(Debug)]
pub struct HeadOutput {
    /// The [CLS] vector before normalization, `[batch, hidden]`.
    pub cls: Tensor,
    /// After normalization.
    pub normalized: Tensor,
    /// `[batch, classes]`, or `[batch, 1]` for regression.
    pub logits: Tensor,
}

/// A sentence(-pair) classifier or regressor on a BERT encoder.
#[derive(Debug)]
pub struct Classifier {
    pub encoder: Encoder,
    /// Head parameters (`classifier.*`) and normalizer state (`normalizer.*`).
    pub head_vs: nn::VarStore,
    pub config: HeadConfig,
    normalizer: Box<dyn Normalizer>,
    linear: nn::Linear,
}

impl Classifier {
    /// Adds a freshly initialised head (see [`ClassifierInit`]) drawn from `seed`, with the
    /// normalizer `config.norm` names in `norms`.
    pub fn new(
        encoder: Encoder,
        config: HeadConfig,
        seed: i64,
        norms: &Normalizers,
    ) -> Result<Self> {
        tch::manual_seed(seed);
        let head_vs = nn::VarStore::new(encoder.vs.device());
        let hidden = encoder.config.hidden_size();
        let root = head_vs.root();
        let normalizer = norms.build(&config.norm, &(&root / "normalizer"), hidden)?;
        let lc = match config.classifier_init {
            ClassifierInit::Hf => nn::LinearConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: encoder.config.initializer_range(),
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
            // Drawn below, in nn.Linear's order (tch would draw the bias first).
            ClassifierInit::Torch => nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        };
        let linear = nn::linear(
            &root / "classifier",
            hidden,
            config.labels.num_outputs() as i64,
            lc,
        );
        if config.classifier_init == ClassifierInit::Torch {
            let b = 1.0 / (hidden as f64).sqrt();
            tch::no_grad(|| {
                let _ = linear.ws.shallow_clone().uniform_(-b, b);
                if let Some(bs) = &linear.bs {
                    let _ = bs.shallow_clone().uniform_(-b, b);
                }
            });
        }
        Ok(Classifier {
            encoder,
            head_vs,
            config,
            normalizer,
            linear,
        })
    }

    pub fn device(&self) -> tch::Device {
        self.encoder.vs.device()
    }

    /// Runs encoder and head; dropout and statistics updates only when `train`. The head reads
    /// the first token, so the encoder's last layer computes that token alone.
    pub fn forward(&self, batch: &Batch, train: bool) -> HeadOutput {
        let out = self.encoder.forward_first_token(batch, train);
        let cls = match self.config.cls_source {
            ClsSource::Pooler => out.pooler_output,
            ClsSource::Hidden => out.cls,
        };
        let normalized = self.normalizer.forward(&cls, train);
        let logits = self
            .linear
            .forward(&normalized.apply_dropout(self.config.dropout, train));
        HeadOutput {
            cls,
            normalized,
            logits,
        }
    }

    /// The normalizer in eval mode, with the statistics it holds (a checkpoint's: those it
    /// saved), applied to head inputs `cls` (`[n, hidden]`, any device).
    pub fn normalize(&self, cls: &Tensor) -> Tensor {
        let x = cls.to_kind(Kind::Float).to_device(self.device());
        tch::no_grad(|| self.normalizer.forward(&x, false))
    }

    /// The normalizer's state (`normalizer.*` tensors: learned scales and running
    /// statistics), sorted by name.
    pub fn normalizer_state(&self) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> = self
            .head_vs
            .variables()
            .into_iter()
            .filter(|(name, _)| name.starts_with("normalizer."))
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// The head's input vectors (pooler output or raw [CLS]) for `encs`, in eval mode without
    /// gradient, `[n, hidden]` on the model's device.
    pub fn cls_vectors(
        &self,
        encs: &[crate::tokenize::Encoded],
        batch_size: usize,
        pad_id: i64,
    ) -> Result<Tensor> {
        let (limits, device) = (self.encoder.limits(), self.device());
        let out = crate::batch::infer(
            encs,
            batch_size,
            pad_id,
            &limits,
            device,
            |batch| {
                let out = self.encoder.forward_first_token(batch, false);
                vec![match self.config.cls_source {
                    ClsSource::Pooler => out.pooler_output,
                    ClsSource::Hidden => out.cls,
                }]
            },
            |_| {},
        )?;
        Ok(out.into_iter().next().unwrap_or_else(|| {
            Tensor::zeros(
                [0, self.encoder.config.hidden_size()],
                (Kind::Float, device),
            )
        }))
    }

    /// Sets the output bias to `bias` (one value per output), e.g. [`label_prior`].
    pub fn set_output_bias(&self, bias: &[f64]) -> Result<()> {
        let Some(bs) = self.linear.bs.as_ref() else {
            return Err(Error::Invalid("the head has no bias".into()));
        };
        let outputs = bs.size1()?;
        if bias.len() as i64 != outputs {
            return Err(Error::Invalid(format!(
                "{} bias values for {outputs} outputs",
                bias.len()
            )));
        }
        let values = Tensor::from_slice(bias)
            .to_kind(bs.kind())
            .to_device(bs.device());
        tch::no_grad(|| bs.shallow_clone().copy_(&values));
        Ok(())
    }

    /// The normalizer (for statistics fitting and inspection).
    pub fn normalizer(&self) -> &dyn Normalizer {
        self.normalizer.as_ref()
    }

    /// Mean cross-entropy against class indices (int64), or MSE against scores (float).
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        match self.config.labels {
            LabelSpace::Classes(_) => logits.cross_entropy_for_logits(labels),
            LabelSpace::Regression => logits
                .squeeze_dim(-1)
                .mse_loss(&labels.to_kind(Kind::Float), tch::Reduction::Mean),
        }
    }

    /// All trainable variables with their names, encoder first (HF names, then `classifier.*`
    /// and `normalizer.*`), sorted for a deterministic order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = Vec::new();
        for vs in [&self.encoder.vs, &self.head_vs] {
            let mut part: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .collect();
            part.sort_by(|a, b| a.0.cmp(&b.0));
            v.extend(part);
        }
        v
    }
}
