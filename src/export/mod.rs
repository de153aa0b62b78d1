//! `clsnorm export`: a checkpoint as a folder that `transformers` loads as a sequence
//! classifier and that predicts what `clsnorm predict` predicts.
//!
//! Where the head is the family's own sequence classifier (`--norm none` with the pooler),
//! the folder is that plain transformers class (`BertForSequenceClassification`, ...), tensor
//! names and all. Otherwise (any normalizer, `--cls-source hidden`) it holds
//! `modeling_clsnorm.py` beside the weights, registered in `config.json`'s `auto_map`, for
//! `AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)`: the
//! family's encoder, its [CLS] vector, the normalizer in eval mode with its saved state, and
//! the linear layer. The folder also gets the tokenizer as clsnorm runs it (`tokenizer.json`),
//! safetensors weights only, and a model card (`README.md`, see [`card`]).
pub mod card;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::classifier::ClsSource;
use crate::data::LabelSpace;
use crate::encoder::weights;
use crate::error::{Error, Result};
use crate::rundir::owner::{self, OutputKind};

/// The remote code written beside the weights.
pub const MODELING_FILE: &str = "modeling_clsnorm.py";
/// Its template: the family's config class and base-model attribute are filled in.
pub const MODELING_TEMPLATE: &str = include_str!("modeling_clsnorm.py");
/// The record of an export folder (repeats the marker's id).
pub const RECORD_FILE: &str = "clsnorm_export.json";

/// What transformers calls a family: its config class, where its sequence classifier keeps the
/// base model, that classifier, and where the pooler clsnorm trained sits in it.
struct Family {
    model_type: &'static str,
    config_class: &'static str,
    prefix: &'static str,
    classifier: &'static str,
    pooler: Pooler,
}

/// Where the family's [CLS] pooler lives in transformers' classes.
#[derive(Clone, Copy, PartialEq)]
enum Pooler {
    /// Inside the base model (`bert.pooler.dense`).
    InModel,
    /// In the classifier's head: `(plain class's name, remote code's name)` of `pooler.dense`.
    InHead(&'static str, &'static str),
    /// ModernBERT's `head.*`, beside the base model in both.
    Head,
}

const FAMILIES: &[Family] = &[
    Family {
        model_type: "bert",
        config_class: "BertConfig",
        prefix: "bert",
        classifier: "BertForSequenceClassification",
        pooler: Pooler::InModel,
    },
    Family {
        model_type: "roberta",
        config_class: "RobertaConfig",
        prefix: "roberta",
        classifier: "RobertaForSequenceClassification",
        pooler: Pooler::InModel,
    },
    Family {
        model_type: "xlm-roberta",
        config_class: "XLMRobertaConfig",
        prefix: "roberta",
        classifier: "XLMRobertaForSequenceClassification",
        pooler: Pooler::InModel,
    },
    Family {
        model_type: "camembert",
        config_class: "CamembertConfig",
        prefix: "roberta",
        classifier: "CamembertForSequenceClassification",
        pooler: Pooler::InModel,
    },
    Family {
        model_type: "electra",
        config_class: "ElectraConfig",
        prefix: "electra",
        classifier: "ElectraForSequenceClassification",
        pooler: Pooler::InHead("classifier.dense", "pooler.dense"),
    },
    Family {
        model_type: "distilbert",
        config_class: "DistilBertConfig",
        prefix: "distilbert",
        classifier: "DistilBertForSequenceClassification",
        pooler: Pooler::InHead("pre_classifier", "pooler.dense"),
    },
    Family {
        model_type: "deberta-v2",
        config_class: "DebertaV2Config",
        prefix: "deberta",
        classifier: "DebertaV2ForSequenceClassification",
        pooler: Pooler::InHead("pooler.dense", "pooler.dense"),
    },
    Family {
        model_type: "modernbert",
        config_class: "ModernBertConfig",
        prefix: "model",
        classifier: "ModernBertForSequenceClassification",
        pooler: Pooler::Head,
    },
];

impl Family {
    /// RoBERTa's sequence classifier has no pooler in its base model: its head's `dense` is
    /// the pooler clsnorm trained.
    fn plain_pooler(&self) -> Option<&'static str> {
        match (self.pooler, self.prefix) {
            (Pooler::InModel, "roberta") => Some("classifier.dense"),
            (Pooler::InHead(plain, _), _) => Some(plain),
            _ => None,
        }
    }

    /// The output layer's name in the plain class.
    fn plain_output(&self) -> &'static str {
        match self.model_type {
            "roberta" | "xlm-roberta" | "camembert" | "electra" => "classifier.out_proj",
            _ => "classifier",
        }
    }
}

/// How an exported folder is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loader {
    /// A transformers class of its own: no remote code.
    Plain,
    /// `modeling_clsnorm.py` with `trust_remote_code=True`.
    RemoteCode,
}

/// The record an export folder keeps: what it was made from and which files are its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRecord {
    pub output_id: String,
    pub clsnorm_version: String,
    /// The checkpoint exported (absolute).
    pub checkpoint: PathBuf,
    pub architecture: String,
    pub loader: Loader,
    /// The files this export wrote (a later export into the folder replaces exactly these).
    pub files: Vec<String>,
}

/// What [`export`] made.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub dir: PathBuf,
    pub architecture: String,
    pub loader: Loader,
    pub files: Vec<String>,
}

fn family_of(model_type: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .find(|f| f.model_type == model_type)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "model_type {} has no sequence classifier in transformers that clsnorm exports \
                 to; it exports {}",
                crate::excerpt::quoted(model_type),
                FAMILIES
                    .iter()
                    .map(|f| f.model_type)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The encoder's tensors under the names the exported class gives them.
fn encoder_tensors(
    named: Vec<(String, Tensor)>,
    family: &Family,
    plain: bool,
    cls_source: ClsSource,
) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (name, t) in named {
        let pooler_part = match family.pooler {
            Pooler::Head => name.strip_prefix("head."),
            _ => name.strip_prefix("pooler.dense."),
        };
        let renamed = match (pooler_part, family.pooler) {
            (None, _) => format!("{}.{name}", family.prefix),
            (Some(_), Pooler::Head) if cls_source == ClsSource::Hidden && !plain => continue,
            (Some(_), Pooler::Head) => name,
            (Some(rest), Pooler::InModel) => match (plain, family.plain_pooler()) {
                (true, Some(p)) => format!("{p}.{rest}"),
                _ => format!("{}.{name}", family.prefix),
            },
            (Some(_), Pooler::InHead(..)) if cls_source == ClsSource::Hidden && !plain => continue,
            (Some(rest), Pooler::InHead(p, remote)) => {
                format!("{}.{rest}", if plain { p } else { remote })
            }
        };
        out.push((renamed, t));
    }
    out
}

/// The exported `config.json`: the checkpoint's, with the classifier's architecture, labels,
/// problem type, and clsnorm's head (`clsnorm`) for the remote code.
fn config_json(
    checkpoint_config: serde_json::Value,
    family: &Family,
    plain: bool,
    meta: &crate::train::checkpoint::CheckpointMeta,
    norm_options: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut c = match checkpoint_config {
        serde_json::Value::Object(m) => m,
        _ => {
            return Err(Error::Invalid(
                "the checkpoint's config.json is not a JSON object".into(),
            ))
        }
    };
    let architecture = if plain {
        family.classifier
    } else {
        "ClsnormForSequenceClassification"
    };
    c.insert("architectures".into(), serde_json::json!([architecture]));
    if !plain {
        c.insert(
            "auto_map".into(),
            serde_json::json!({
                "AutoModelForSequenceClassification":
                    "modeling_clsnorm.ClsnormForSequenceClassification"
            }),
        );
    } else {
        c.remove("auto_map");
    }
    let (id2label, problem) = match &meta.task.labels {
        LabelSpace::Classes(names) => (
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "single_label_classification",
        ),
        LabelSpace::Regression => (
            std::iter::once(("0".to_string(), serde_json::json!("LABEL_0"))).collect(),
            "regression",
        ),
    };
    let label2id: serde_json::Map<_, _> = id2label
        .iter()
        .map(|(i, n)| {
            (
                n.as_str().unwrap_or_default().to_string(),
                serde_json::json!(i.parse::<usize>().unwrap_or(0)),
            )
        })
        .collect();
    if label2id.len() != id2label.len() {
        return Err(Error::Invalid(
            "two classes of the task have one name; transformers' label2id needs distinct names"
                .into(),
        ));
    }
    c.insert("id2label".into(), serde_json::Value::Object(id2label));
    c.insert("label2id".into(), serde_json::Value::Object(label2id));
    c.insert("problem_type".into(), serde_json::json!(problem));
    c.insert(
        "clsnorm".into(),
        serde_json::json!({
            "family": family.model_type,
            "cls_source": meta.head.cls_source,
            "norm": meta.head.norm.name(),
            "norm_options": norm_options,
            "task": meta.task.name,
            "max_len": meta.max_len,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    Ok(serde_json::Value::Object(c))
}

/// The remote code for `family`.
fn modeling_file(family: &Family) -> String {
    MODELING_TEMPLATE
        .replace("__CONFIG_CLASS__", family.config_class)
        .replace("__PREFIX__", family.prefix)
}

/// Exports `checkpoint` into `output` (a new or empty folder, or an earlier export), with a
/// model card from `run` when the checkpoint belongs to a run folder. Nothing is written
/// before the checkpoint has loaded and been checked.
pub fn export(
    checkpoint: &Path,
    output: &Path,
    registry: &crate::Registry,
    run: Option<&card::RunInfo>,
) -> Result<Exported> {
    let (model, meta) =
        crate::train::checkpoint::load_model(checkpoint, tch::Device::Cpu, registry)?;
    let config_path = checkpoint.join("config.json");
    let checkpoint_config: serde_json::Value = serde_json::from_slice(
        &crate::fsread::read_regular(&config_path, 1 << 20, crate::fsread::Links::Refuse)?,
    )
    .map_err(|e| Error::File {
        path: config_path.clone(),
        msg: format!("not JSON: {e}"),
    })?;
    let model_type = checkpoint_config
        .get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or("bert")
        .to_string();
    let family = family_of(&model_type)?;
    let plain = meta.head.norm.is_none() && meta.head.cls_source == ClsSource::Pooler;
    let norm = registry
        .normalizers
        .config(meta.head.norm.name(), &meta.head.norm.options)?;
    let mut tensors = encoder_tensors(
        weights::named_variables(&model.encoder.vs),
        family,
        plain,
        meta.head.cls_source,
    );
    for (name, t) in weights::named_variables(&model.head_vs) {
        if let Some(rest) = name.strip_prefix("classifier.") {
            let out = if plain {
                family.plain_output()
            } else {
                "classifier"
            };
            tensors.push((format!("{out}.{rest}"), t));
        } else if !plain {
            tensors.push((name, t));
        }
    }
    let config = config_json(checkpoint_config, family, plain, &meta, &norm.options)?;
    let tokenizer = crate::tokenize::TextTokenizer::load(checkpoint, meta.max_len)?;
    let tok_files = crate::tokenize::TokenizerFiles::read(checkpoint)?;

    let claim = owner::claim(output, OutputKind::Export)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let json = |v: &serde_json::Value| -> Result<Vec<u8>> {
        let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
        b.push(b'\n');
        Ok(b)
    };
    files.push(("config.json".into(), json(&config)?));
    for name in crate::tokenize::TokenizerFiles::NAMES {
        if let Some(bytes) = tok_files.get(name) {
            files.push((name.to_string(), bytes.to_vec()));
        }
    }
    if tok_files.get("tokenizer.json").is_none() {
        // The tokenizer clsnorm built from slow files, as transformers would load it.
        files.push(("tokenizer.json".into(), tokenizer.to_json()?.into_bytes()));
    }
    if !plain {
        files.push((MODELING_FILE.into(), modeling_file(family).into_bytes()));
    }
    let architecture = config["architectures"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let loader = if plain {
        Loader::Plain
    } else {
        Loader::RemoteCode
    };
    files.push((
        "README.md".into(),
        card::render(&meta, &norm, run, Some((&architecture, &loader))).into_bytes(),
    ));
    let previous = read_record(&claim.dir)?;
    let mut names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    names.push(weights::SAFETENSORS_FILE.into());
    weights::write_safetensors(&claim.dir.join(weights::SAFETENSORS_FILE), &tensors)?;
    for (name, bytes) in &files {
        crate::atomic::write_bytes(&claim.dir.join(name), bytes)?;
    }
    // Files an earlier export wrote that this one does not (remote code, a tokenizer file).
    if let Some(prev) = previous {
        for f in prev.files.iter().filter(|f| !names.contains(f)) {
            if is_export_file(f) {
                let _ = std::fs::remove_file(claim.dir.join(f));
            }
        }
    }
    names.sort();
    let record = ExportRecord {
        output_id: claim.id.clone(),
        clsnorm_version: env!("CARGO_PKG_VERSION").to_string(),
        checkpoint: std::path::absolute(checkpoint).map_err(|e| Error::io(checkpoint, e))?,
        architecture: architecture.clone(),
        loader: loader.clone(),
        files: names.clone(),
    };
    crate::atomic::write_json(&claim.dir.join(RECORD_FILE), &record)?;
    Ok(Exported {
        dir: claim.dir.clone(),
        architecture,
        loader,
        files: names,
    })
}

/// A file name an export writes (an earlier record is read, never trusted with a path).
fn is_export_file(name: &str) -> bool {
    name == "config.json"
        || name == "README.md"
        || name == MODELING_FILE
        || name == weights::SAFETENSORS_FILE
        || crate::tokenize::TokenizerFiles::NAMES.contains(&name)
}

fn read_record(dir: &Path) -> Result<Option<ExportRecord>> {
    let path = dir.join(RECORD_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let bytes = crate::fsread::read_regular(
        &path,
        crate::fsread::MAX_SMALL_BYTES,
        crate::fsread::Links::Refuse,
    )?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::File {
            path,
            msg: format!("not a clsnorm export record: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_code_names_the_familys_config_and_base_model() {
        for f in FAMILIES {
            let code = modeling_file(f);
            assert!(
                !code.contains("__PREFIX__") && !code.contains("__CONFIG_CLASS__"),
                "{}: a placeholder left",
                f.model_type
            );
            assert!(code.contains(&format!("import {} as FamilyConfig", f.config_class)));
            assert!(code.contains(&format!("self.{} = AutoModel.from_config", f.prefix)));
        }
    }
}
