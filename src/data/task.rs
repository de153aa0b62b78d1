//! Tasks described by data: where the files are, which columns hold text and label, the label
//! set, and the metrics. The GLUE tasks are entries of [`GLUE`]; a custom file gets a spec
//! built from command-line column names.
use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// A column of a data file: by header name, or by 0-based index for header-less files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    Name(String),
    Index(usize),
}

/// File format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Tab-separated, no quoting (GLUE's format: texts contain bare `"`).
    Tsv,
    /// RFC 4180 comma-separated, with quoting.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet (the Hub's datasets, pandas); columns by name.
    Parquet,
}

impl Format {
    /// Format from its name (`tsv`, `csv`, `jsonl`, `parquet`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "tsv" => Some(Format::Tsv),
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// Format from a file extension (`.tsv`, `.csv`, `.jsonl`/`.json`).
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "tsv" | "txt" => Some(Format::Tsv),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// What the label column holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSpace {
    /// Class names in index order (the file's strings are matched exactly).
    Classes(Vec<String>),
    /// A real-valued target (one output, MSE loss).
    Regression,
}

impl LabelSpace {
    /// Number of model outputs.
    pub fn num_outputs(&self) -> usize {
        match self {
            LabelSpace::Classes(c) => c.len(),
            LabelSpace::Regression => 1,
        }
    }
}

/// The files of one split, read in order as one: a file, or the shards of a split that a Hub
/// dataset keeps in several (`train-00000-of-00003.parquet`, ...). Written as a string when it
/// is one file (as runs recorded it before shards), else as a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FilesRepr", into = "FilesRepr")]
pub struct Files(Vec<String>);

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum FilesRepr {
    One(String),
    Many(Vec<String>),
}

impl From<FilesRepr> for Files {
    fn from(r: FilesRepr) -> Files {
        match r {
            FilesRepr::One(f) => Files(vec![f]),
            FilesRepr::Many(v) => Files(v),
        }
    }
}

impl From<Files> for FilesRepr {
    fn from(f: Files) -> FilesRepr {
        match <[String; 1]>::try_from(f.0) {
            Ok([one]) => FilesRepr::One(one),
            Err(v) => FilesRepr::Many(v),
        }
    }
}

impl Files {
    /// One file.
    pub fn one(f: impl Into<String>) -> Files {
        Files(vec![f.into()])
    }

    /// The shards of a split, in the order they are read.
    pub fn shards(v: Vec<String>) -> Files {
        Files(v)
    }

    pub fn list(&self) -> &[String] {
        &self.0
    }

    /// The first file (the only one, unless the split is sharded).
    pub fn first(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    /// Each file mapped through `f`.
    pub fn map(&self, f: impl Fn(&str) -> String) -> Files {
        Files(self.0.iter().map(|s| f(s)).collect())
    }
}

/// Everything clsnorm needs to know about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub format: Format,
    pub header: bool,
    pub text: Column,
    pub text_pair: Option<Column>,
    pub label: Column,
    pub labels: LabelSpace,
    /// Metrics reported on dev; the first is also reported alone.
    pub metrics: Vec<Metric>,
    /// The metric that selects the best epoch.
    pub primary: Metric,
    /// Train file(s), relative to the task directory (GLUE, Hub datasets) or as given
    /// (custom).
    pub train_file: Files,
    /// Dev splits: (split name, file(s)).
    pub dev_files: Vec<(String, Files)>,
    /// Another source's names of the classes and the task's names they stand for (the Hub's
    /// GLUE calls SST-2's class `0` `negative`): labels are mapped by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_aliases: Vec<(String, String)>,
    /// The class names of integer labels, by id, for a file that does not name them itself
    /// (the Hub's GLUE files name them in their metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_ids: Option<Vec<String>>,
}

/// A GLUE task in the standard `glue_data/TASK/{train,dev}.tsv` layout.
struct Glue {
    name: &'static str,
    aliases: &'static [&'static str],
    header: bool,
    text: Col,
    text_pair: Option<Col>,
    label: Col,
    classes: Option<&'static [&'static str]>,
    metrics: &'static [Metric],
    primary: Metric,
    dev: &'static [(&'static str, &'static str)],
}

enum Col {
    N(&'static str),
    I(usize),
}

impl Col {
    fn column(&self) -> Column {
        match self {
            Col::N(n) => Column::Name((*n).into()),
            Col::I(i) => Column::Index(*i),
        }
    }
}

use Metric::*;
const DEV: &[(&str, &str)] = &[("dev", "dev.tsv")];
const BINARY: Option<&[&str]> = Some(&["0", "1"]);
const ENTAIL2: Option<&[&str]> = Some(&["entailment", "not_entailment"]);

/// The nine GLUE tasks (see `shared/data/glue/README.md` for the formats).
const GLUE: &[Glue] = &[
    Glue {
        name: "CoLA",
        aliases: &["cola"],
        header: false,
        text: Col::I(3),
        text_pair: None,
        label: Col::I(1),
        classes: BINARY,
        metrics: &[Mcc, Accuracy],
        primary: Mcc,
        dev: DEV,
    },
    Glue {
        name: "SST-2",
        aliases: &["sst-2", "sst2", "sst"],
        header: true,
        text: Col::N("sentence"),
        text_pair: None,
        label: Col::N("label"),
        classes: BINARY,
        metrics: &[Accuracy],
        primary: Accuracy,
        dev: DEV,
    },
    Glue {
        name: "MRPC",
        aliases: &["mrpc"],
        header: true,
        text: Col::N("#1 String"),
        text_pair: Some(Col::N("#2 String")),
        label: Col::N("Quality"),
        classes: BINARY,
        metrics: &[Accuracy, F1, AccF1],
        primary: AccF1,
        dev: DEV,
    },
    Glue {
        name: "STS-B",
        aliases: &["sts-b", "stsb", "sts"],
        header: true,
        text: Col::N("sentence1"),
        text_pair: Some(Col::N("sentence2")),
        label: Col::N("score"),
        classes: None,
        metrics: &[Pearson, Spearman, PearsonSpearman, Mse],
        primary: PearsonSpearman,
        dev: DEV,
    },
    Glue {
        name: "QQP",
        aliases: &["qqp"],
        header: true,
        text: Col::N("question1"),
        text_pair: Some(Col::N("question2")),
        label: Col::N("is_duplicate"),
        classes: BINARY,
        metrics: &[Accuracy, F1, AccF1],
        primary: AccF1,
        dev: DEV,
    },
    Glue {
        name: "MNLI",
        aliases: &["mnli"],
        header: true,
        text: Col::N("sentence1"),
        text_pair: Some(Col::N("sentence2")),
        label: Col::N("gold_label"),
        classes: Some(&["contradiction", "entailment", "neutral"]),
        metrics: &[Accuracy],
        primary: Accuracy,
        dev: &[
            ("dev_matched", "dev_matched.tsv"),
            ("dev_mismatched", "dev_mismatched.tsv"),
        ],
    },
    Glue {
        name: "QNLI",
        aliases: &["qnli"],
        header: true,
        text: Col::N("question"),
        text_pair: Some(Col::N("sentence")),
        label: Col::N("label"),
        classes: ENTAIL2,
        metrics: &[Accuracy],
        primary: Accuracy,
        dev: DEV,
    },
    Glue {
        name: "RTE",
        aliases: &["rte"],
        header: true,
        text: Col::N("sentence1"),
        text_pair: Some(Col::N("sentence2")),
        label: Col::N("label"),
        classes: ENTAIL2,
        metrics: &[Accuracy],
        primary: Accuracy,
        dev: DEV,
    },
    Glue {
        name: "WNLI",
        aliases: &["wnli"],
        header: true,
        text: Col::N("sentence1"),
        text_pair: Some(Col::N("sentence2")),
        label: Col::N("label"),
        classes: BINARY,
        metrics: &[Accuracy],
        primary: Accuracy,
        dev: DEV,
    },
];

/// Names of all built-in tasks.
pub fn glue_task_names() -> Vec<&'static str> {
    GLUE.iter().map(|g| g.name).collect()
}

/// Looks up a GLUE task by name, case-insensitively (`rte`, `RTE`, `sst-2`, `sst2`, ...).
pub fn glue_task(name: &str) -> Option<TaskSpec> {
    let key = name.trim().to_ascii_lowercase();
    let g = GLUE.iter().find(|g| g.aliases.contains(&key.as_str()))?;
    Some(TaskSpec {
        name: g.name.into(),
        format: Format::Tsv,
        header: g.header,
        text: g.text.column(),
        text_pair: g.text_pair.as_ref().map(Col::column),
        label: g.label.column(),
        labels: match g.classes {
            Some(c) => LabelSpace::Classes(c.iter().map(|s| s.to_string()).collect()),
            None => LabelSpace::Regression,
        },
        metrics: g.metrics.to_vec(),
        primary: g.primary,
        train_file: Files::one("train.tsv"),
        dev_files: g
            .dev
            .iter()
            .map(|(s, f)| (s.to_string(), Files::one(*f)))
            .collect(),
        label_aliases: Vec::new(),
        label_ids: None,
    })
}

/// A GLUE task as the Hub's dataset `nyu-mll/glue` lays it out: a folder per task of parquet
/// files per split (`rte/train-00000-of-00001.parquet`), other column names, and integer
/// labels whose class names the files' metadata gives.
struct HubGlue {
    task: &'static str,
    dir: &'static str,
    text: &'static str,
    text_pair: Option<&'static str>,
    /// The Hub's class names by id, and the classic files' name of each.
    classes: &'static [(&'static str, &'static str)],
    /// (split name as in [`GLUE`], the Hub's split).
    dev: &'static [(&'static str, &'static str)],
}

const HUB_DEV: &[(&str, &str)] = &[("dev", "validation")];
const HUB_GLUE: &[HubGlue] = &[
    HubGlue {
        task: "CoLA",
        dir: "cola",
        text: "sentence",
        text_pair: None,
        classes: &[("unacceptable", "0"), ("acceptable", "1")],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "SST-2",
        dir: "sst2",
        text: "sentence",
        text_pair: None,
        classes: &[("negative", "0"), ("positive", "1")],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "MRPC",
        dir: "mrpc",
        text: "sentence1",
        text_pair: Some("sentence2"),
        classes: &[("not_equivalent", "0"), ("equivalent", "1")],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "STS-B",
        dir: "stsb",
        text: "sentence1",
        text_pair: Some("sentence2"),
        classes: &[],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "QQP",
        dir: "qqp",
        text: "question1",
        text_pair: Some("question2"),
        classes: &[("not_duplicate", "0"), ("duplicate", "1")],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "MNLI",
        dir: "mnli",
        text: "premise",
        text_pair: Some("hypothesis"),
        classes: &[
            ("entailment", "entailment"),
            ("neutral", "neutral"),
            ("contradiction", "contradiction"),
        ],
        dev: &[
            ("dev_matched", "validation_matched"),
            ("dev_mismatched", "validation_mismatched"),
        ],
    },
    HubGlue {
        task: "QNLI",
        dir: "qnli",
        text: "question",
        text_pair: Some("sentence"),
        classes: &[
            ("entailment", "entailment"),
            ("not_entailment", "not_entailment"),
        ],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "RTE",
        dir: "rte",
        text: "sentence1",
        text_pair: Some("sentence2"),
        classes: &[
            ("entailment", "entailment"),
            ("not_entailment", "not_entailment"),
        ],
        dev: HUB_DEV,
    },
    HubGlue {
        task: "WNLI",
        dir: "wnli",
        text: "sentence1",
        text_pair: Some("sentence2"),
        classes: &[("not_entailment", "0"), ("entailment", "1")],
        dev: HUB_DEV,
    },
];

/// The one parquet file of `split` in `dir` (`SPLIT-00000-of-00001.parquet`).
fn split_file(dir: &std::path::Path, split: &str) -> Result<String, String> {
    let prefix = format!("{split}-");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".parquet"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "{}: no {split}-*.parquet file (the Hub's GLUE layout)",
            dir.display()
        )),
        n => Err(format!(
            "{}: the {split} split is in {n} parquet files; clsnorm reads one file per split",
            dir.display()
        )),
    }
}

/// The Hub's GLUE files that GLUE task `name` reads: its folder in `nyu-mll/glue` and the
/// splits (training and every dev split; never the unlabelled test splits). `None` for a task
/// the Hub's GLUE does not hold.
pub fn hub_glue_files(name: &str) -> Option<(&'static str, Vec<&'static str>)> {
    let hub = HUB_GLUE.iter().find(|h| h.task == name)?;
    let splits = std::iter::once("train")
        .chain(hub.dev.iter().map(|(_, split)| *split))
        .collect();
    Some((hub.dir, splits))
}

/// Whether `path` (inside `nyu-mll/glue`) is a file of `split` in folder `dir`.
pub fn is_hub_glue_file(path: &str, dir: &str, split: &str) -> bool {
    path.strip_prefix(dir)
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(|f| {
            !f.contains('/') && f.starts_with(&format!("{split}-")) && f.ends_with(".parquet")
        })
}

/// Where GLUE task `spec` is under the GLUE folder `data_dir`: the classic layout
/// (`TASK/train.tsv`), else the Hub's (`task/train-*.parquet`, a snapshot of `nyu-mll/glue`).
/// Returns the spec of the layout found (the Hub's maps its class names to the classic ones,
/// so that both train the same head) and the folder its file names are under.
pub fn locate_glue(
    spec: &TaskSpec,
    data_dir: &std::path::Path,
) -> Result<(TaskSpec, std::path::PathBuf), String> {
    // From the task's classic spec, whatever layout `spec` was read from (a checkpoint's).
    let Some(base) = glue_task(&spec.name) else {
        return Ok((spec.clone(), data_dir.join(&spec.name)));
    };
    let base = TaskSpec {
        labels: spec.labels.clone(),
        ..base
    };
    let classic = data_dir.join(&base.name);
    if base
        .train_file
        .first()
        .is_some_and(|f| classic.join(f).exists())
    {
        return Ok((base, classic));
    }
    let Some(hub) = HUB_GLUE.iter().find(|h| h.task == base.name) else {
        return Ok((base, classic));
    };
    let dir = data_dir.join(hub.dir);
    if !dir.is_dir() {
        // Neither layout: the classic one, whose missing file the reader names.
        return Ok((base, classic));
    }
    let mut dev_files = Vec::new();
    for (name, split) in hub.dev {
        dev_files.push((name.to_string(), Files::one(split_file(&dir, split)?)));
    }
    let hub_spec = TaskSpec {
        format: Format::Parquet,
        header: true,
        text: Column::Name(hub.text.into()),
        text_pair: hub.text_pair.map(|c| Column::Name(c.into())),
        label: Column::Name("label".into()),
        train_file: Files::one(split_file(&dir, "train")?),
        dev_files,
        label_aliases: hub
            .classes
            .iter()
            .filter(|(hub_name, name)| hub_name != name)
            .map(|(h, n)| (h.to_string(), n.to_string()))
            .collect(),
        label_ids: (!hub.classes.is_empty())
            .then(|| hub.classes.iter().map(|(h, _)| h.to_string()).collect()),
        ..base
    };
    Ok((hub_spec, dir))
}

/// The files of one split, full paths, in the order they are read.
pub type SplitPaths = Vec<std::path::PathBuf>;

impl TaskSpec {
    /// A spec for a custom file: named (or, without header, 0-based numeric) columns; the
    /// classes are filled in from the training file by the caller unless `regression`.
    #[allow(clippy::too_many_arguments)]
    pub fn custom(
        name: &str,
        format: Format,
        header: bool,
        text: &str,
        text_pair: Option<&str>,
        label: &str,
        regression: bool,
        train_file: &str,
        dev_file: Option<&str>,
    ) -> Result<TaskSpec, String> {
        let col = |s: &str| -> Result<Column, String> {
            if header {
                Ok(Column::Name(s.to_string()))
            } else {
                s.parse().map(Column::Index).map_err(|_| {
                    format!(
                        "without a header row, columns are 0-based numbers, got {}",
                        crate::excerpt::quoted(s)
                    )
                })
            }
        };
        let (labels, metrics, primary) = if regression {
            (
                LabelSpace::Regression,
                vec![Metric::Pearson, Metric::Spearman],
                Metric::Pearson,
            )
        } else {
            (
                LabelSpace::Classes(Vec::new()),
                vec![Metric::Accuracy, Metric::F1, Metric::Mcc],
                Metric::Accuracy,
            )
        };
        Ok(TaskSpec {
            name: name.to_string(),
            format,
            header,
            text: col(text)?,
            text_pair: text_pair.map(col).transpose()?,
            label: col(label)?,
            labels,
            metrics,
            primary,
            train_file: Files::one(train_file),
            dev_files: dev_file
                .map(|d| vec![("dev".to_string(), Files::one(d))])
                .unwrap_or_default(),
            label_aliases: Vec::new(),
            label_ids: None,
        })
    }

    /// A Hub dataset's task: its columns, its labels (for classes found in the data, filled
    /// in by the caller, see [`TaskSpec::set_classes`]), and the files of its splits, inside
    /// the dataset's snapshot.
    #[allow(clippy::too_many_arguments)]
    pub fn hub_dataset(
        name: &str,
        format: Format,
        columns: &super::hub_dataset::Columns,
        labels: LabelSpace,
        label_ids: Option<Vec<String>>,
        train: Files,
        dev: Vec<(String, Files)>,
    ) -> TaskSpec {
        let mut spec = TaskSpec {
            name: name.to_string(),
            format,
            header: true,
            text: Column::Name(columns.text.clone()),
            text_pair: columns.text_pair.clone().map(Column::Name),
            label: Column::Name(columns.label.clone()),
            labels: LabelSpace::Regression,
            metrics: vec![Metric::Pearson, Metric::Spearman],
            primary: Metric::Pearson,
            train_file: train,
            dev_files: dev,
            label_aliases: Vec::new(),
            label_ids,
        };
        if let LabelSpace::Classes(c) = labels {
            spec.set_classes(c);
        }
        spec
    }

    /// Makes the task a classification into `classes`, with the metrics that fit their number:
    /// accuracy, F1 of class 1 and MCC for two; accuracy, macro F1 and MCC for more.
    pub fn set_classes(&mut self, classes: Vec<String>) {
        let f1 = if classes.len() > 2 {
            Metric::MacroF1
        } else {
            Metric::F1
        };
        self.metrics = vec![Metric::Accuracy, f1, Metric::Mcc];
        self.primary = Metric::Accuracy;
        self.labels = LabelSpace::Classes(classes);
    }

    /// Full paths of the train file(s) and dev files, under `dir` for GLUE tasks and Hub
    /// datasets (relative file names) or as given (custom tasks with absolute or
    /// working-directory paths).
    pub fn paths(&self, dir: Option<&std::path::Path>) -> (SplitPaths, Vec<(String, SplitPaths)>) {
        let full = |files: &Files| -> SplitPaths {
            files
                .list()
                .iter()
                .map(|f| match dir {
                    Some(d) => d.join(f),
                    None => std::path::PathBuf::from(f),
                })
                .collect()
        };
        (
            full(&self.train_file),
            self.dev_files
                .iter()
                .map(|(n, f)| (n.clone(), full(f)))
                .collect(),
        )
    }
}
