//! The model card (`README.md` with the Hub's YAML metadata) of a fine-tuned model: what was
//! fine-tuned from what, on which data, with which normalizer and hyperparameters, the dev
//! metrics per epoch, how to load it, and the papers to cite. Written by `export` and into
//! every finished run folder.
use std::fmt::Write as _;
use std::path::Path;

use crate::classifier::ClsSource;
use crate::data::LabelSpace;
use crate::normalize::NormConfig;
use crate::rundir::records::{EpochRecord, Summary};
use crate::train::checkpoint::CheckpointMeta;
use crate::train::RunConfig;

use super::Loader;

/// What a run folder says about how its checkpoint was made.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub config: RunConfig,
    pub epochs: Vec<EpochRecord>,
    pub summary: Option<Summary>,
    /// The base model's license, from its own card (`license:` of its README's YAML header).
    pub license: Option<String>,
}

impl RunInfo {
    /// The run folder `dir`'s records (config, epochs, summary when finished).
    pub fn read(dir: &Path) -> crate::error::Result<RunInfo> {
        let layout = crate::rundir::Layout::new(dir);
        let config = RunConfig::read(dir)?;
        let epochs = crate::rundir::records::read_all(&layout.metrics()).unwrap_or_default();
        let summary = Summary::read(&layout.summary()).ok();
        let license = base_license(&config.model);
        Ok(RunInfo {
            config,
            epochs,
            summary,
            license,
        })
    }
}

/// `license:` of the model folder's own card, when it has one.
fn base_license(model: &Path) -> Option<String> {
    let text = crate::fsread::read_text(&model.join("README.md"), 1 << 20).ok()?;
    let yaml = crate::data::hub_dataset::card_yaml(&text)?;
    #[derive(serde::Deserialize)]
    struct Card {
        license: Option<String>,
    }
    let card: Card = serde_yaml_ng::from_str(yaml).ok()?;
    card.license
        .filter(|l| l.len() <= 64 && l.chars().all(|c| c.is_ascii_graphic()))
}

/// A value for the card's YAML header, without control characters (the YAML writer quotes
/// what needs quoting).
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Markdown text without line breaks or table separators.
fn md(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() || c == '|' { ' ' } else { c })
        .collect()
}

/// Writes the card of the finished run in `dir` as `dir/README.md` (from its best
/// checkpoint's task and head, and its records).
pub fn write_run_card(dir: &Path) -> crate::error::Result<()> {
    let layout = crate::rundir::Layout::new(dir);
    let Some(best) = crate::train::checkpoint::locate(&layout.best()) else {
        return Ok(());
    };
    let meta = crate::train::checkpoint::read_meta(&best)?;
    let run = RunInfo::read(dir)?;
    let text = render(&meta, &meta.head.norm, Some(&run), None);
    crate::atomic::write_bytes(&dir.join("README.md"), text.as_bytes())
}

/// The card. `export` (the architecture and how it loads) describes an exported folder; a run
/// folder's card gives the export command instead.
pub fn render(
    meta: &CheckpointMeta,
    norm: &NormConfig,
    run: Option<&RunInfo>,
    export: Option<(&str, &Loader)>,
) -> String {
    let task = &meta.task.name;
    let cfg = run.map(|r| &r.config);
    let model_src = cfg.and_then(|c| c.sources.model_source.as_ref());
    let data_src = cfg.and_then(|c| c.sources.data_source.as_ref());
    let mut meta_yaml = serde_json::json!({
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["clsnorm", "text-classification", format!("normalizer-{}", norm.name())],
    });
    if let Some(s) = model_src {
        meta_yaml["base_model"] = clean(&s.repo).into();
    }
    if let Some(l) = run.and_then(|r| r.license.as_ref()) {
        meta_yaml["license"] = clean(l).into();
    }
    if let Some(repo) = data_src
        .map(|s| s.repo.as_str())
        .or(crate::data::task::hub_glue_files(task).map(|_| crate::hub::GLUE_DATASET))
    {
        meta_yaml["datasets"] = serde_json::json!([clean(repo)]);
    }
    if let Some((split, metrics)) = run.and_then(best_metrics) {
        // GLUE tasks by the Hub's name for them, wherever the files were read from.
        let glue = crate::data::task::hub_glue_files(task).map(|(dir, _)| dir);
        let mut dataset = serde_json::json!({
            "name": clean(task),
            "type": clean(match (data_src, glue) {
                (Some(s), _) => s.repo.as_str(),
                (None, Some(_)) => crate::hub::GLUE_DATASET,
                (None, None) => task.as_str(),
            }),
            "split": clean(&split),
        });
        let config = data_src
            .and_then(|s| s.config.clone())
            .or_else(|| glue.map(str::to_string));
        if let Some(c) = config {
            dataset["config"] = clean(&c).into();
        }
        meta_yaml["model-index"] = serde_json::json!([{
            "name": clean(&format!("{task}-{}", norm.name())),
            "results": [{
                "task": {"type": "text-classification", "name": "Text Classification"},
                "dataset": dataset,
                "metrics": metrics
                    .iter()
                    .map(|(k, v)| serde_json::json!({"type": clean(k), "name": clean(k), "value": v}))
                    .collect::<Vec<_>>(),
            }],
        }]);
    }
    let y = format!(
        "---\n{}---\n\n",
        serde_yaml_ng::to_string(&meta_yaml).unwrap_or_default()
    );
    let mut b = y;
    let _ = writeln!(
        b,
        "# {} fine-tuned on {} with the `{}` normalizer\n",
        md(&model_src.map_or_else(
            || {
                cfg.and_then(|c| c.model.file_name())
                    .map_or("A BERT-family encoder".into(), |n| {
                        n.to_string_lossy().into_owned()
                    })
            },
            |s| s.repo.clone()
        )),
        md(task),
        md(norm.name())
    );
    let _ = writeln!(
        b,
        "A sequence {} fine-tuned with clsnorm {}: the encoder and the \
         head were trained jointly; the head is `[CLS] vector -> normalizer -> dropout -> \
         linear`, with the [CLS] vector taken from {}.\n",
        match &meta.task.labels {
            LabelSpace::Classes(c) => format!("classifier into {} classes", c.len()),
            LabelSpace::Regression => "regressor".into(),
        },
        env!("CARGO_PKG_VERSION"),
        match meta.head.cls_source {
            ClsSource::Pooler => "the family's pooler (its sequence classifier's own)",
            ClsSource::Hidden => "the last layer's first-token state",
        }
    );
    b.push_str("## Training\n\n| | |\n|---|---|\n");
    let row = |b: &mut String, k: &str, v: String| {
        let _ = writeln!(b, "| {k} | {} |", md(&v));
    };
    // Local folders and files by name only: the card is for sharing, and the sha256 says
    // which they were.
    let name_of = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    match model_src {
        Some(s) => row(&mut b, "base model", format!("{}@{}", s.repo, s.commit)),
        None => {
            if let Some(c) = cfg {
                row(
                    &mut b,
                    "base model",
                    format!("a local folder {}", name_of(&c.model)),
                );
            }
        }
    }
    if let Some(c) = cfg {
        row(
            &mut b,
            "base weights sha256",
            c.model_weights_sha256.clone(),
        );
    }
    match (data_src, cfg) {
        (Some(s), _) => row(
            &mut b,
            "data",
            format!(
                "{}{}@{}",
                s.repo,
                s.config
                    .as_ref()
                    .map(|c| format!(":{c}"))
                    .unwrap_or_default(),
                s.commit
            ),
        ),
        (None, Some(c)) => row(
            &mut b,
            "data",
            format!(
                "a local file {} (sha256 {})",
                name_of(&c.train_file.path),
                c.train_file.sha256
            ),
        ),
        _ => {}
    }
    if let Some(c) = cfg {
        row(&mut b, "training rows", c.train_file.rows.to_string());
    }
    row(
        &mut b,
        "normalizer",
        format!(
            "{} {}",
            norm.name(),
            serde_json::to_string(&norm.options).unwrap_or_default()
        ),
    );
    row(
        &mut b,
        "labels",
        match &meta.task.labels {
            LabelSpace::Classes(c) => c.join(", "),
            LabelSpace::Regression => "a real number".into(),
        },
    );
    if let Some(c) = cfg {
        let t = &c.train;
        row(
            &mut b,
            "hyperparameters",
            format!(
                "lr {}, batch {}{}, epochs {}, warmup ratio {}, schedule {}, AdamW eps {} weight \
                 decay {}, max length {}, dropout {}, precision {}{}",
                t.lr,
                t.batch_size,
                if t.grad_accum > 1 {
                    format!(" x {} accumulated", t.grad_accum)
                } else {
                    String::new()
                },
                t.epochs,
                t.warmup_ratio,
                word(&t.schedule),
                t.adam.eps,
                t.adam.weight_decay,
                t.max_len,
                c.head.dropout,
                word(&t.precision),
                t.layer_decay
                    .map(|d| format!(", layer decay {d}"))
                    .unwrap_or_default()
            ),
        );
        row(&mut b, "seed", t.seed.to_string());
        row(&mut b, "device", c.device.to_lowercase());
        row(
            &mut b,
            "clsnorm",
            format!("{} ({})", c.clsnorm_version, c.clsnorm_build),
        );
    }
    if let Some(r) = run.filter(|r| !r.epochs.is_empty()) {
        b.push_str("\n## Dev metrics per epoch\n\n");
        let keys: Vec<String> = r.epochs[0]
            .dev
            .first()
            .map(|(_, m)| m.keys().cloned().collect())
            .unwrap_or_default();
        let _ = writeln!(b, "| epoch | split | train loss | {} |", keys.join(" | "));
        let _ = writeln!(b, "|---|---|---|{}", "---|".repeat(keys.len()));
        for e in &r.epochs {
            for (split, m) in &e.dev {
                let vals: Vec<String> = keys
                    .iter()
                    .map(|k| m.get(k).map_or("-".into(), |v| format!("{v:.4}")))
                    .collect();
                let _ = writeln!(
                    b,
                    "| {} | {} | {:.4} | {} |",
                    e.epoch,
                    md(split),
                    e.train_loss,
                    vals.join(" | ")
                );
            }
        }
        if let Some(s) = &r.summary {
            let _ = writeln!(
                b,
                "\nBest epoch: {} ({} {}).",
                s.best_epoch.map_or("-".into(), |e| e.to_string()),
                md(&s.primary_metric),
                s.best_primary.map_or("-".into(), |v| format!("{v:.4}"))
            );
        }
    }
    b.push_str("\n## Use\n\n");
    let Some((architecture, loader)) = export else {
        b.push_str(
            "This is a clsnorm run folder: `clsnorm predict --checkpoint best` labels new \
             texts, and `clsnorm export RUN --output DIR` writes a folder that transformers \
             loads as a sequence classifier (`pipeline(\"text-classification\", model=DIR)`), \
             with this card.\n",
        );
        return cite(b);
    };
    b.push_str("```python\nfrom transformers import pipeline\n\n");
    let remote = *loader == Loader::RemoteCode;
    let _ = writeln!(
        b,
        "classify = pipeline(\"text-classification\", model=\"DIR\"{})\nclassify(\"a sentence\")  # \
         pairs: classify({{\"text\": \"first\", \"text_pair\": \"second\"}})\n```\n",
        if remote {
            ", trust_remote_code=True"
        } else {
            ""
        }
    );
    if remote {
        let _ = writeln!(
            b,
            "`{architecture}` is in `modeling_clsnorm.py` beside the weights (read it before \
             trusting it: the family's encoder from transformers, the normalizer's eval-mode \
             math, a linear layer), so loading needs `trust_remote_code=True`. Without it, \
             `AutoModel.from_pretrained(DIR)` loads the encoder alone."
        );
    } else {
        let _ = writeln!(
            b,
            "A plain `{architecture}`: no remote code; \
             `AutoModelForSequenceClassification.from_pretrained(DIR)` loads it."
        );
    }
    cite(b)
}

/// The papers to cite, after the card's text.
fn cite(mut b: String) -> String {
    b.push_str(
        "\n## Citation\n\n```bibtex\n@article{zhou2019improving,\n  title={Improving BERT \
         Fine-tuning with Embedding Normalization},\n  author={Zhou, Wenxuan and Du, Junyi and \
         Ren, Xiang},\n  journal={arXiv preprint arXiv:1911.03918},\n  year={2019}\n}\n\
         @inproceedings{zhou2021isobn,\n  title={IsoBN: Fine-Tuning BERT with Isotropic Batch \
         Normalization},\n  author={Zhou, Wenxuan and Lin, Bill Yuchen and Ren, Xiang},\n  \
         booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},\n  \
         year={2021}\n}\n```\n",
    );
    b
}

/// An option's name as its flag and `config.json` write it (`linear`, `fp32`).
fn word(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// The best epoch's first dev split and its metrics, from the summary.
fn best_metrics(r: &RunInfo) -> Option<(String, Vec<(String, f64)>)> {
    let s = r.summary.as_ref()?;
    let (split, m) = s.best_dev.first()?;
    Some((
        split.clone(),
        m.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    ))
}
