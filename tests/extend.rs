//! The extension seams, used as a user would: a normalizer and a model family defined here, in
//! test code only, registered on a registry of the test's own and fine-tuned a few steps.
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use clsnorm::batch::InputLimits;
use clsnorm::classifier::{ClsSource, HeadConfig};
use clsnorm::data::{glue_task, read_split, ReadOptions};
use clsnorm::encoder::{EncoderConfig, EncoderModel, EncoderOutput, Family};
use clsnorm::normalize::{NormConfig, NormOptions, Normalizer, OptionMap};
use clsnorm::train::{checkpoint, finetune, Finetune, TrainConfig};
use clsnorm::Registry;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// `--norm scale`: multiplies the vector by a constant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ScaleOptions {
    factor: f64,
}

impl Default for ScaleOptions {
    fn default() -> Self {
        ScaleOptions { factor: 2.0 }
    }
}

#[derive(Debug)]
struct Scale(f64);

impl Normalizer for Scale {
    fn forward(&self, x: &Tensor, _train: bool) -> Tensor {
        x * self.0
    }
}

impl NormOptions for ScaleOptions {
    const NAME: &'static str = "scale";
    const ABOUT: &'static str = "x times a constant";

    fn validate(&self) -> Result<(), String> {
        if self.factor > 0.0 {
            Ok(())
        } else {
            Err(format!("factor must be positive, got {}", self.factor))
        }
    }

    fn build(&self, _p: &nn::Path, _hidden: i64) -> Box<dyn Normalizer> {
        Box::new(Scale(self.factor))
    }
}

/// `model_type` `bag`: the mean of the word embeddings of the real tokens, no attention.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BagConfig {
    model_type: String,
    vocab_size: i64,
    hidden_size: i64,
    max_position_embeddings: i64,
}

#[derive(Debug)]
struct Bag {
    word_embeddings: nn::Embedding,
    pooler: nn::Linear,
}

impl EncoderModel for Bag {
    fn forward(
        &self,
        input_ids: &Tensor,
        _token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> EncoderOutput {
        let e = self.word_embeddings.forward(input_ids).dropout(0.1, train);
        let mask = match attention_mask {
            Some(m) => m.to_kind(Kind::Float).unsqueeze(-1),
            None => Tensor::ones_like(&input_ids.to_kind(Kind::Float)).unsqueeze(-1),
        };
        let mean = (&e * &mask).sum_dim_intlist(1, false, Kind::Float)
            / mask.sum_dim_intlist(1, false, Kind::Float);
        EncoderOutput {
            pooler_output: self.pooler.forward(&mean).tanh(),
            cls: mean,
            last_hidden_state: e,
        }
    }
}

impl EncoderConfig for BagConfig {
    fn hidden_size(&self) -> i64 {
        self.hidden_size
    }
    fn classifier_dropout(&self) -> f64 {
        0.1
    }
    fn initializer_range(&self) -> f64 {
        0.02
    }
    fn limits(&self) -> InputLimits {
        InputLimits {
            vocab_size: self.vocab_size,
            type_vocab_size: Some(2),
            max_positions: self.max_position_embeddings as usize,
            pad_token_id: None,
        }
    }
    fn expected_shapes(&self) -> BTreeMap<String, Vec<i64>> {
        let h = self.hidden_size;
        BTreeMap::from([
            (
                "embeddings.word_embeddings.weight".into(),
                vec![self.vocab_size, h],
            ),
            ("pooler.dense.weight".into(), vec![h, h]),
            ("pooler.dense.bias".into(), vec![h]),
        ])
    }
    fn names(&self) -> clsnorm::encoder::weights::Names<'static> {
        clsnorm::encoder::weights::Names {
            prefix: "bag.",
            beside: &[],
            optional: &[],
        }
    }
    fn to_hf_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap()
    }
    fn build(&self, p: &nn::Path) -> Box<dyn EncoderModel> {
        let h = self.hidden_size;
        Box::new(Bag {
            word_embeddings: nn::embedding(
                p / "embeddings" / "word_embeddings",
                self.vocab_size,
                h,
                Default::default(),
            ),
            pooler: nn::linear(p / "pooler" / "dense", h, h, Default::default()),
        })
    }
    fn clone_box(&self) -> Box<dyn EncoderConfig> {
        Box::new(self.clone())
    }
}

struct BagFamily;

impl Family for BagFamily {
    fn model_types(&self) -> &'static [&'static str] {
        &["bag"]
    }
    fn read_config(&self, path: &Path, text: &str) -> clsnorm::Result<Box<dyn EncoderConfig>> {
        let c: BagConfig = serde_json::from_str(text).map_err(|e| clsnorm::Error::Config {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(Box::new(c))
    }
}

fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.normalizers.register::<ScaleOptions>();
    r.families.register(BagFamily);
    r
}

#[test]
fn options_of_a_new_normalizer_come_from_its_declaration() {
    let r = registry();
    assert!(r.normalizers.names().contains(&"scale"));
    let given: OptionMap = serde_json::from_str(r#"{"factor": 3}"#).unwrap();
    let cfg = r.normalizers.config("scale", &given).unwrap();
    assert_eq!(cfg, NormConfig::of(&ScaleOptions { factor: 3.0 }));
    assert_eq!(
        serde_json::to_string(&cfg).unwrap(),
        r#"{"name":"scale","factor":3.0}"#
    );
    assert_eq!(
        r.normalizers.defaults("scale").unwrap().options["factor"],
        2.0
    );
    let bad: OptionMap = serde_json::from_str(r#"{"factor": -1}"#).unwrap();
    let e = r.normalizers.config("scale", &bad).unwrap_err().to_string();
    assert!(e.contains("factor must be positive, got -1"), "{e}");
    let typo: OptionMap = serde_json::from_str(r#"{"fator": 1}"#).unwrap();
    let e = r
        .normalizers
        .config("scale", &typo)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown field `fator`, expected `factor`"),
        "{e}"
    );
    // The built-in registry does not know it.
    let e = Registry::builtin()
        .normalizers
        .defaults("scale")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown normalizer \"scale\""), "{e}");
}

#[test]
fn a_new_normalizer_and_model_family_fine_tune_and_reload() {
    let _g = common::torch_rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bag");
    let cfg = BagConfig {
        model_type: "bag".into(),
        vocab_size: common::TINY_VOCAB.len() as i64,
        hidden_size: 16,
        max_position_embeddings: 64,
    };
    clsnorm::encoder::Encoder::random(&cfg, Device::Cpu, 3)
        .save(&model)
        .unwrap();
    common::write_tiny_vocab(&model);
    let data = tmp.path().join("glue");
    common::write_toy_sst(&data, 48, 16, 2);

    // The built-in families refuse the model, naming the type.
    let e = clsnorm::encoder::Encoder::load(&model, Device::Cpu, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model_type is \"bag\""), "{e}");

    let task = glue_task("sst2").unwrap();
    let (train, dev) = task.paths(Some(&data.join("SST-2")));
    let opts = ReadOptions {
        skip_bad_rows: false,
        require_label: true,
    };
    let r = registry();
    let out = tmp.path().join("run");
    let summary = finetune(Finetune {
        model_dir: &model,
        head: HeadConfig {
            labels: task.labels.clone(),
            cls_source: ClsSource::Hidden,
            norm: r
                .normalizers
                .config(
                    "scale",
                    &serde_json::from_str(r#"{"factor": 0.5}"#).unwrap(),
                )
                .unwrap(),
            dropout: 0.1,
            bias_init: Default::default(),
            classifier_init: Default::default(),
        },
        train: read_split(&train, &task, opts).unwrap(),
        dev: dev
            .iter()
            .map(|(n, p)| (n.clone(), read_split(p, &task, opts).unwrap()))
            .collect(),
        task,
        config: TrainConfig {
            lr: 1e-2,
            epochs: 2,
            batch_size: 8,
            max_len: 16,
            ..TrainConfig::default()
        },
        output: &out,
        registry: r,
        resume: false,
        device: Device::Cpu,
        threads: 1,
        allow_pickle: false,
        sources: Default::default(),
        progress: false,
        stop_after: None,
        stop: None,
    })
    .unwrap();
    assert_eq!(summary.global_steps, 12);
    let best = summary.best_primary.unwrap();
    assert!(best.is_finite());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["head"]["norm"],
        serde_json::json!({"name": "scale", "factor": 0.5})
    );

    // The checkpoint loads with the registry that knows both, and evaluates to the number
    // training recorded; without them, it is refused with the reason.
    let ck = out.join("best");
    let (m, meta) = checkpoint::load_model(&ck, Device::Cpu, &registry()).unwrap();
    let tok = clsnorm::tokenize::TextTokenizer::load(&ck, meta.max_len).unwrap();
    let ds = read_split(&dev[0].1, &meta.task, opts).unwrap();
    let t = clsnorm::train::Tokenized::new(&tok, &ds).unwrap();
    let metrics =
        clsnorm::eval::evaluate(&m, &t.encs, &t.labels, &meta.task.metrics, 16, tok.pad_id())
            .unwrap();
    assert_eq!(metrics[meta.task.primary.name()], best);
    let e = checkpoint::load_model(&ck, Device::Cpu, &Registry::builtin())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown normalizer \"scale\""), "{e}");
}
