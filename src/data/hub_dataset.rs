//! Hub datasets by name (`--dataset ORG/NAME[:CONFIG][@REVISION]`): which files of the
//! repository hold which split of which config, found as `datasets.load_dataset` finds them:
//! the `configs:` of the dataset card's YAML header, else the file and folder names
//! (`data/train-00000-of-00002.parquet`, `train.csv`, `dev/…`), else the Hub's own Parquet
//! conversion (revision `refs/convert/parquet`, `CONFIG/SPLIT/NNNN.parquet`). Everything here
//! works on names from the repository's listing and the card's text; nothing is fetched.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::read::{ColumnInfo, ColumnKind, MAX_SHARDS};

/// The revision under which the Hub keeps its Parquet conversion of a dataset.
pub const CONVERTED: &str = "refs/convert/parquet";
/// Largest dataset card read for its YAML header.
pub const MAX_CARD_BYTES: u64 = 1 << 20;
/// Most configs a card may declare.
const MAX_CONFIGS: usize = 1000;

/// `ORG/NAME[:CONFIG][@REVISION]`, as `--dataset` and sweep files name a Hub dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetId {
    pub repo: String,
    pub config: Option<String>,
    pub revision: String,
}

impl std::str::FromStr for DatasetId {
    type Err = String;

    fn from_str(s: &str) -> Result<DatasetId, String> {
        let bad = |why: &str| {
            format!(
                "{} is not a Hub dataset (ORG/NAME, ORG/NAME:CONFIG, ORG/NAME:CONFIG@REVISION): \
                 {why}",
                crate::excerpt::quoted(s)
            )
        };
        let (rest, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (s, "main"),
        };
        let (repo, config) = match rest.split_once(':') {
            Some((r, c)) => (r, Some(c)),
            None => (rest, None),
        };
        if !crate::hub::is_repo_id(repo) {
            return Err(bad(
                "the repository is NAME or ORG/NAME of letters, digits, -, _ and .",
            ));
        }
        if let Some(c) = config {
            if !is_name(c) {
                return Err(bad("a config is a name of letters, digits, -, _ and ."));
            }
        }
        if !crate::hub::is_revision(revision) {
            return Err(bad("the revision is a branch, tag or commit"));
        }
        Ok(DatasetId {
            repo: repo.to_string(),
            config: config.map(str::to_string),
            revision: revision.to_string(),
        })
    }
}

impl DatasetId {
    /// The name a run of this dataset has: `NAME`, or `NAME-CONFIG`.
    pub fn task_name(&self) -> String {
        let name = self.repo.rsplit('/').next().unwrap_or(&self.repo);
        match &self.config {
            Some(c) => format!("{name}-{c}"),
            None => name.to_string(),
        }
    }
}

impl std::fmt::Display for DatasetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(c) = &self.config {
            write!(f, ":{c}")?;
        }
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// A config or split name: letters, digits, `-`, `_` and `.`, not starting with `.`, at most
/// 128 characters. Names reach paths in the cache and in messages, so nothing else is taken.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Where one config's splits are: each split's files (paths inside the repository), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub config: String,
    pub splits: BTreeMap<String, Vec<String>>,
}

impl Layout {
    /// The split names, for messages.
    pub fn split_names(&self) -> String {
        self.splits.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The file formats clsnorm reads.
fn is_data_file(path: &str) -> bool {
    super::Format::from_path(std::path::Path::new(path)).is_some()
        && !path.ends_with(".txt")
        && !path.rsplit('/').next().is_some_and(|f| f.starts_with('.'))
}

/// The dataset card's YAML header: what lies between a first line `---` and the next.
pub fn card_yaml(card: &str) -> Option<&str> {
    let card = card.strip_prefix('\u{feff}').unwrap_or(card);
    let rest = card
        .strip_prefix("---\n")
        .or_else(|| card.strip_prefix("---\r\n"))?;
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some(&rest[..at]);
        }
        at += line.len();
    }
    None
}

#[derive(Debug, Default, Deserialize)]
struct Card {
    #[serde(default)]
    configs: Vec<ConfigEntry>,
}

#[derive(Debug, Deserialize)]
struct ConfigEntry {
    config_name: String,
    #[serde(default)]
    data_files: Option<DataFiles>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    default: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DataFiles {
    Pattern(String),
    Patterns(Vec<String>),
    Splits(Vec<SplitEntry>),
    Map(BTreeMap<String, OneOrMany>),
}

#[derive(Debug, Deserialize)]
struct SplitEntry {
    split: String,
    path: OneOrMany,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// The `configs:` of a dataset card, parsed with the YAML reader's own bounds (nesting depth,
/// alias expansion) after the card's size was bounded by the caller.
fn card_configs(card: &str) -> Result<Vec<ConfigEntry>, String> {
    let Some(yaml) = card_yaml(card) else {
        return Ok(Vec::new());
    };
    let parsed: Card = crate::tokenize::guarded_call("(raised inside the YAML reader)", || {
        serde_yaml_ng::from_str::<Card>(yaml)
    })?
    .map_err(|e| format!("the dataset card's YAML header does not read: {e}"))?;
    if parsed.configs.len() > MAX_CONFIGS {
        return Err(format!(
            "the dataset card declares {} configs; at most {MAX_CONFIGS}",
            parsed.configs.len()
        ));
    }
    for c in &parsed.configs {
        if !is_name(&c.config_name) {
            return Err(format!(
                "the dataset card names a config {}, which is not a plain name",
                crate::excerpt::quoted(&c.config_name)
            ));
        }
    }
    Ok(parsed.configs)
}

/// The files among `names` that glob `pattern` matches (`*` within a folder, `**` across), as
/// `datasets` resolves a card's data files.
fn matching<'a>(names: &[&'a str], pattern: &str) -> Result<Vec<&'a str>, String> {
    let pattern = pattern.trim_start_matches("./");
    let p = glob::Pattern::new(pattern).map_err(|e| {
        format!(
            "the dataset card's file pattern {} is not a pattern ({e})",
            crate::excerpt::quoted(pattern)
        )
    })?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    Ok(names
        .iter()
        .copied()
        .filter(|n| p.matches_with(n, opts))
        .collect())
}

/// A config of the card: its splits' files among `names`.
fn card_layout(c: &ConfigEntry, names: &[&str]) -> Result<Layout, String> {
    let mut splits: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |split: &str, patterns: Vec<&str>| -> Result<(), String> {
        if !is_name(split) {
            return Err(format!(
                "the dataset card names a split {} of config {}, which is not a plain name",
                crate::excerpt::quoted(split),
                c.config_name
            ));
        }
        let files = splits.entry(split.to_string()).or_default();
        for p in patterns {
            let p = match &c.data_dir {
                Some(d) => format!("{}/{p}", d.trim_end_matches('/')),
                None => p.to_string(),
            };
            files.extend(matching(names, &p)?.into_iter().map(str::to_string));
        }
        Ok(())
    };
    match &c.data_files {
        Some(DataFiles::Pattern(p)) => add("train", vec![p.as_str()])?,
        Some(DataFiles::Patterns(v)) => add("train", v.iter().map(String::as_str).collect())?,
        Some(DataFiles::Splits(v)) => {
            for s in v {
                add(&s.split, s.path.list())?;
            }
        }
        Some(DataFiles::Map(m)) => {
            for (split, p) in m {
                add(split, p.list())?;
            }
        }
        None => {
            // A config that only names a folder: that folder's files, split by their names.
            let dir = c.data_dir.as_deref().unwrap_or("").trim_end_matches('/');
            let inside: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| dir.is_empty() || n.starts_with(&format!("{dir}/")))
                .collect();
            return Ok(Layout {
                config: c.config_name.clone(),
                splits: by_names(&inside, dir).splits,
            });
        }
    }
    Ok(Layout {
        config: c.config_name.clone(),
        splits: finish(splits),
    })
}

/// Sorted, without duplicates or empty splits.
fn finish(mut splits: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    for files in splits.values_mut() {
        files.sort();
        files.dedup();
    }
    splits.retain(|_, f| !f.is_empty());
    splits
}

/// The words that name a split inside a file or folder name (as the Hub's docs list them).
const SPLIT_WORDS: &[(&str, &[&str])] = &[
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "dev", "val"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The split a name part names: a split word delimited by non-letters (`train.csv`,
/// `my_train_file.csv`, `train1.csv`, `dev/`).
fn split_of_part(part: &str) -> Option<&'static str> {
    let lower = part.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    SPLIT_WORDS
        .iter()
        .find(|(_, ws)| words.iter().any(|w| ws.contains(w)))
        .map(|(s, _)| *s)
}

/// Splits from file and folder names below `dir`, as `datasets` assigns them without a card:
/// the `push_to_hub` layout (`data/SPLIT-00000-of-00001.parquet`, any split name), else a
/// folder named for a split, else a file name holding a split word, else every file is
/// `train`.
fn by_names(names: &[&str], dir: &str) -> Layout {
    let data: Vec<&str> = names.iter().copied().filter(|n| is_data_file(n)).collect();
    let rel = |n: &str| -> String {
        if dir.is_empty() {
            n.to_string()
        } else {
            n.strip_prefix(&format!("{dir}/")).unwrap_or(n).to_string()
        }
    };
    let mut splits: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &data {
        if let Some(split) = pushed_split(&rel(n)) {
            splits.entry(split).or_default().push(n.to_string());
        }
    }
    if splits.is_empty() {
        for n in &data {
            let r = rel(n);
            let parts: Vec<&str> = r.split('/').collect();
            let folder = parts[..parts.len() - 1]
                .iter()
                .find_map(|p| split_of_part(p));
            if let Some(split) = folder {
                splits.entry(split.into()).or_default().push(n.to_string());
            }
        }
    }
    if splits.is_empty() {
        for n in &data {
            let file = n.rsplit('/').next().unwrap_or(n);
            let stem = file.split('.').next().unwrap_or(file);
            if let Some(split) = split_of_part(stem) {
                splits.entry(split.into()).or_default().push(n.to_string());
            }
        }
    }
    if splits.is_empty() && !data.is_empty() {
        splits.insert("train".into(), data.iter().map(|n| n.to_string()).collect());
    }
    Layout {
        config: "default".into(),
        splits: finish(splits),
    }
}

/// `data/SPLIT-00000-of-00002.parquet` (what `push_to_hub` writes): the split.
fn pushed_split(rel: &str) -> Option<String> {
    let file = rel.strip_prefix("data/")?;
    if file.contains('/') {
        return None;
    }
    let (split, rest) = file.split_once('-')?;
    let shard = rest.split('.').next()?;
    let (a, b) = shard.split_once("-of-")?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|c| c.is_ascii_digit());
    (is_name(split) && digits(a) && b.get(..5).is_some_and(digits)).then(|| split.to_string())
}

/// The layout of `config` (`None`: the default one) of a dataset repository: from its card's
/// `configs:`, else from its file names. `Ok(None)` when the repository holds no data files
/// clsnorm reads (a dataset made by a script, or of other formats): its Parquet conversion is
/// the place to look.
pub fn repo_layout(
    names: &[&str],
    card: Option<&str>,
    config: Option<&str>,
) -> Result<Option<Layout>, String> {
    let configs = match card {
        Some(c) => card_configs(c)?,
        None => Vec::new(),
    };
    if !configs.is_empty() {
        let chosen = match config {
            Some(want) => configs.iter().find(|c| c.config_name == want),
            None => configs
                .iter()
                .find(|c| c.default)
                .or_else(|| configs.iter().find(|c| c.config_name == "default"))
                .or_else(|| (configs.len() == 1).then(|| &configs[0])),
        };
        let Some(chosen) = chosen else {
            let names: Vec<&str> = configs.iter().map(|c| c.config_name.as_str()).collect();
            return Err(match config {
                Some(want) => format!(
                    "has no config {want}; its configs: {}",
                    crate::excerpt::list(&names)
                ),
                None => format!(
                    "has several configs and no default: name one (NAME:CONFIG), one of {}",
                    crate::excerpt::list(&names)
                ),
            });
        };
        let layout = card_layout(chosen, names)?;
        if layout.splits.is_empty() {
            return Err(format!(
                "config {}: its card's data files match no file clsnorm reads (Parquet, CSV, \
                 TSV, JSON Lines)",
                chosen.config_name
            ));
        }
        return check_shards(layout).map(Some);
    }
    let layout = by_names(names, "");
    if layout.splits.is_empty() {
        return Ok(None);
    }
    if let Some(want) = config.filter(|c| *c != "default") {
        return Err(format!(
            "has no config {want}: its card declares no configs, so its only config is default"
        ));
    }
    check_shards(layout).map(Some)
}

/// The layout of `config` in the Hub's Parquet conversion (`CONFIG/SPLIT/NNNN.parquet`).
pub fn converted_layout(names: &[&str], config: Option<&str>) -> Result<Layout, String> {
    let mut configs: BTreeMap<&str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut partial = Vec::new();
    for n in names {
        let parts: Vec<&str> = n.split('/').collect();
        let [cfg, split, file] = parts[..] else {
            continue;
        };
        if !file.ends_with(".parquet") {
            continue;
        }
        if let Some(s) = split.strip_prefix("partial-") {
            partial.push(format!("{cfg}/{s}"));
            continue;
        }
        configs
            .entry(cfg)
            .or_default()
            .entry(split.to_string())
            .or_default()
            .push(n.to_string());
    }
    let chosen = match config {
        Some(c) => configs.get_key_value(c),
        None => configs.get_key_value("default").or_else(|| {
            (configs.len() == 1)
                .then(|| configs.iter().next())
                .flatten()
        }),
    };
    let Some((cfg, splits)) = chosen else {
        let names: Vec<&str> = configs.keys().copied().collect();
        if names.is_empty() && !partial.is_empty() {
            return Err(format!(
                "the Hub converted only part of it to Parquet ({}): clsnorm does not train on a \
                 truncated split",
                crate::excerpt::list(&partial)
            ));
        }
        return Err(match config {
            Some(want) => format!(
                "has no config {want} in its Parquet conversion; configs there: {}",
                crate::excerpt::list(&names)
            ),
            None => format!(
                "has several configs and no default: name one (NAME:CONFIG), one of {}",
                crate::excerpt::list(&names)
            ),
        });
    };
    for s in splits.keys() {
        if !is_name(s) {
            return Err(format!(
                "its Parquet conversion names a split {}, which is not a plain name",
                crate::excerpt::quoted(s)
            ));
        }
    }
    check_shards(Layout {
        config: cfg.to_string(),
        splits: finish(splits.clone()),
    })
}

fn check_shards(layout: Layout) -> Result<Layout, String> {
    for (split, files) in &layout.splits {
        if files.len() > MAX_SHARDS {
            return Err(format!(
                "keeps split {split} of config {} in {} files; clsnorm reads at most {MAX_SHARDS} \
                 files a split",
                layout.config,
                files.len()
            ));
        }
    }
    Ok(layout)
}

/// The split to evaluate on when none is named: `validation`, else `test` (which must then be
/// labelled, checked when it is read).
pub fn default_dev_split(layout: &Layout) -> Option<&str> {
    ["validation", "test"]
        .into_iter()
        .find(|s| layout.splits.contains_key(*s))
}

/// The columns a run reads of a Hub dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
}

/// The columns named on the command line (`--text-col`, `--text-pair-col`, `--label-col`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GivenColumns<'a> {
    pub text: Option<&'a str>,
    pub text_pair: Option<&'a str>,
    pub label: Option<&'a str>,
}

/// Pairs of text columns that datasets of sentence pairs name so (GLUE, SuperGLUE, SNLI).
const PAIRS: &[(&str, &str)] = &[
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question", "passage"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("text_a", "text_b"),
];

fn describe(cols: &[ColumnInfo]) -> String {
    cols.iter()
        .map(|c| {
            let kind = match &c.kind {
                _ if c.class_names.is_some() => "class label",
                ColumnKind::Text => "text",
                ColumnKind::Integer => "integer",
                ColumnKind::Real => "real number",
                ColumnKind::Boolean => "boolean",
                ColumnKind::Other(k) => k.as_str(),
            };
            format!("{} ({kind})", c.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text, pair and label columns of a file with columns `cols`: those given, else inferred
/// where that is unambiguous: the label is `label`; the texts are a known pair
/// (`sentence1`/`sentence2`, `premise`/`hypothesis`, `question`/`passage`, ...), else `text`
/// or `sentence`, else the only text column.
pub fn infer_columns(cols: &[ColumnInfo], given: GivenColumns<'_>) -> Result<Columns, String> {
    let has = |n: &str| cols.iter().any(|c| c.name == n);
    let is_text = |n: &str| {
        cols.iter()
            .any(|c| c.name == n && c.kind == ColumnKind::Text)
    };
    for n in [given.text, given.text_pair, given.label]
        .into_iter()
        .flatten()
    {
        if !has(n) {
            return Err(format!(
                "has no column {}; its columns: {}",
                crate::excerpt::quoted(n),
                describe(cols)
            ));
        }
    }
    let label = match given.label {
        Some(l) => l.to_string(),
        None if has("label") => "label".to_string(),
        None => {
            return Err(format!(
                "has no column named label; name the label column with --label-col (its \
                 columns: {})",
                describe(cols)
            ))
        }
    };
    let texts: Vec<&str> = cols
        .iter()
        .filter(|c| c.kind == ColumnKind::Text && c.name != label)
        .map(|c| c.name.as_str())
        .collect();
    if let Some(t) = given.text {
        return Ok(Columns {
            text: t.to_string(),
            text_pair: given.text_pair.map(str::to_string),
            label,
        });
    }
    if texts.is_empty() {
        return Err(format!(
            "has no text column (its columns: {}): clsnorm fine-tunes text classifiers; image \
             and audio datasets are not read",
            describe(cols)
        ));
    }
    if let Some((a, b)) = PAIRS.iter().find(|(a, b)| is_text(a) && is_text(b)) {
        return Ok(Columns {
            text: a.to_string(),
            text_pair: Some(b.to_string()),
            label,
        });
    }
    let single = ["text", "sentence"]
        .into_iter()
        .find(|n| is_text(n))
        .or((texts.len() == 1).then(|| texts[0]));
    match single {
        Some(t) => Ok(Columns {
            text: t.to_string(),
            text_pair: given.text_pair.map(str::to_string),
            label,
        }),
        None => Err(format!(
            "has several text columns ({}) and none is the obvious one: name it with --text-col \
             (and a second with --text-pair-col)",
            texts.join(", ")
        )),
    }
}

/// What the label column's values are.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelKind {
    /// Class ids with names (`datasets`' `ClassLabel`).
    Named(Vec<String>),
    /// Classes found in the training split (integers, strings, booleans).
    Found,
    /// A real-valued target.
    Regression,
}

/// The kind of label column `col`: a `ClassLabel` keeps its names, a real number is a
/// regression target, anything else is classes found in the data; `regression` (the user's
/// `--regression`) insists on a number.
pub fn label_kind(col: &ColumnInfo, regression: bool) -> Result<LabelKind, String> {
    match (&col.class_names, &col.kind, regression) {
        (Some(_), _, true) | (None, ColumnKind::Text | ColumnKind::Boolean, true) => Err(format!(
            "--regression: column {} holds {}, not a number to regress on",
            col.name,
            if col.class_names.is_some() {
                "class labels"
            } else {
                "text"
            }
        )),
        (Some(names), _, false) if names.len() < 2 => Err(format!(
            "column {} is a class label of {} class(es); classification needs at least 2",
            col.name,
            names.len()
        )),
        (Some(names), _, false) => Ok(LabelKind::Named(names.clone())),
        (None, ColumnKind::Real, _) | (None, ColumnKind::Integer, true) => {
            Ok(LabelKind::Regression)
        }
        (None, ColumnKind::Other(k), _) => Err(format!(
            "column {} holds a {k}, not a label clsnorm trains on",
            col.name
        )),
        (None, _, false) => Ok(LabelKind::Found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splits(l: &Layout) -> Vec<(&str, Vec<&str>)> {
        l.splits
            .iter()
            .map(|(s, f)| (s.as_str(), f.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn ids_parse_with_config_and_revision_and_refuse_paths() {
        let id: DatasetId = "stanfordnlp/imdb".parse().unwrap();
        assert_eq!((id.config, id.revision.as_str()), (None, "main"));
        let id: DatasetId = "super_glue:boolq@refs/convert/parquet".parse().unwrap();
        assert_eq!(id.repo, "super_glue");
        assert_eq!(id.config.as_deref(), Some("boolq"));
        assert_eq!(id.revision, "refs/convert/parquet");
        assert_eq!(id.to_string(), "super_glue:boolq@refs/convert/parquet");
        for bad in [
            "../x",
            "a/b/c",
            "org/name:../x",
            "org/name:",
            "org/n@a/../b",
            "",
        ] {
            assert!(bad.parse::<DatasetId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_assigned_to_splits_as_datasets_does() {
        let pushed = [
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/validation-00000-of-00001.parquet",
            "data/unsupervised-00000-of-00001.parquet",
        ];
        let l = repo_layout(&pushed, None, None).unwrap().unwrap();
        assert_eq!(
            splits(&l),
            [
                ("train", vec![pushed[1], pushed[2]]),
                ("unsupervised", vec![pushed[4]]),
                ("validation", vec![pushed[3]]),
            ]
        );
        let named = ["train.csv", "my_dev_file.csv", "test1.csv", "notes.md"];
        let l = repo_layout(&named, None, None).unwrap().unwrap();
        assert_eq!(
            splits(&l),
            [
                ("test", vec!["test1.csv"]),
                ("train", vec!["train.csv"]),
                ("validation", vec!["my_dev_file.csv"])
            ]
        );
        let folders = ["training/a.jsonl", "training/b.jsonl", "eval/c.jsonl"];
        let l = repo_layout(&folders, None, None).unwrap().unwrap();
        assert_eq!(
            splits(&l),
            [
                ("test", vec!["eval/c.jsonl"]),
                ("train", vec!["training/a.jsonl", "training/b.jsonl"])
            ]
        );
        // `trainer.csv` holds no split word delimited by non-letters: all files are train.
        let l = repo_layout(&["trainer.csv", "x.parquet"], None, None)
            .unwrap()
            .unwrap();
        assert_eq!(splits(&l), [("train", vec!["trainer.csv", "x.parquet"])]);
        // A script-only dataset: nothing to read here.
        assert_eq!(
            repo_layout(&["imdb.py", "README.md"], None, None).unwrap(),
            None
        );
    }

    #[test]
    fn a_cards_configs_choose_the_files() {
        let card = [
            "---",
            "license: mit",
            "configs:",
            "- config_name: boolq",
            "  data_files:",
            "  - split: train",
            "    path: boolq/train-*",
            "  - split: validation",
            "    path: boolq/validation-*",
            "- config_name: cb",
            "  default: true",
            "  data_files:",
            "  - split: train",
            "    path: [cb/train.parquet]",
            "---",
            "# Card",
        ]
        .join("\n");
        let card = card.as_str();
        let names = [
            "boolq/train-00000-of-00002.parquet",
            "boolq/train-00001-of-00002.parquet",
            "boolq/validation-00000-of-00001.parquet",
            "boolq/sub/train-x.parquet",
            "cb/train.parquet",
        ];
        let l = repo_layout(&names, Some(card), Some("boolq"))
            .unwrap()
            .unwrap();
        assert_eq!(l.config, "boolq");
        // `*` stays within its folder.
        assert_eq!(
            splits(&l),
            [
                ("train", vec![names[0], names[1]]),
                ("validation", vec![names[2]])
            ]
        );
        let l = repo_layout(&names, Some(card), None).unwrap().unwrap();
        assert_eq!(
            (l.config.as_str(), splits(&l)),
            ("cb", vec![("train", vec![names[4]])])
        );
        let err = repo_layout(&names, Some(card), Some("rte")).unwrap_err();
        assert!(
            err.contains("has no config rte") && err.contains("boolq"),
            "{err}"
        );
    }

    #[test]
    fn the_parquet_conversion_is_read_by_config_and_split() {
        let names = [
            "plain_text/train/0000.parquet",
            "plain_text/train/0001.parquet",
            "plain_text/test/0000.parquet",
            "other/train/0000.parquet",
            ".gitattributes",
        ];
        let err = converted_layout(&names, None).unwrap_err();
        assert!(err.contains("several configs"), "{err}");
        let l = converted_layout(&names, Some("plain_text")).unwrap();
        assert_eq!(
            splits(&l),
            [
                ("test", vec![names[2]]),
                ("train", vec![names[0], names[1]])
            ]
        );
        assert_eq!(default_dev_split(&l), Some("test"));
        let err = converted_layout(&["default/partial-train/0000.parquet"], None).unwrap_err();
        assert!(err.contains("only part"), "{err}");
    }

    #[test]
    fn hostile_cards_and_listings_are_refused() {
        let bad_split = [
            "---",
            "configs:",
            "- config_name: a",
            "  data_files:",
            "  - split: ../x",
            "    path: a/*",
            "---",
        ]
        .join("\n");
        let bad_split = bad_split.as_str();
        let err = repo_layout(&["a/t.parquet"], Some(bad_split), None).unwrap_err();
        assert!(err.contains("not a plain name"), "{err}");
        let bad_config = "---\nconfigs:\n- config_name: ../../x\n  data_files: a/*\n---\n";
        let err = repo_layout(&["a/t.parquet"], Some(bad_config), None).unwrap_err();
        assert!(err.contains("not a plain name"), "{err}");
        // A billion laughs: aliases nested nine deep.
        let mut bomb = String::from("---\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("configs: *a9\n---\n");
        let t = std::time::Instant::now();
        let err = repo_layout(&["a/t.parquet"], Some(&bomb), None).unwrap_err();
        assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
        assert!(err.contains("YAML"), "{err}");
        let deep = format!(
            "---\nconfigs: {}{}\n---\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let err = repo_layout(&["a/t.parquet"], Some(&deep), None).unwrap_err();
        assert!(err.contains("YAML"), "{err}");
        let many: Vec<String> = (0..10_000)
            .map(|i| format!("data/train-{i:05}-of-10000.parquet"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = repo_layout(&refs, None, None).unwrap_err();
        assert!(
            err.contains("10000 files") && err.contains("at most 1000"),
            "{err}"
        );
    }
}
