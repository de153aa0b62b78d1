//! `--dataset ORG/NAME[:CONFIG][@REVISION]`: a Hub dataset as a task, its splits, columns and
//! labels found as `datasets.load_dataset` and `run_glue.py` find them.
use anyhow::{bail, Context};
use clsnorm::data::hub_dataset::{
    default_dev_split, infer_columns, is_name, label_kind, DatasetId, GivenColumns, LabelKind,
    Layout,
};
use clsnorm::data::read::{
    infer_classes_of, parquet_columns, read_split_rows, ColumnInfo, ColumnKind,
};
use clsnorm::data::{Files, Format, LabelSpace, ReadOptions, TaskSpec};
use clsnorm::hub::{HubEnv, Located};

use super::finetune::{ResolvedTask, MAX_CLASSES};
use super::DataArgs;

/// The splits a run reads: training, and the one it evaluates on.
struct Splits<'a> {
    train: &'a str,
    dev: Option<&'a str>,
}

impl Splits<'_> {
    fn train_files<'l>(&self, l: &'l Layout) -> Result<&'l Vec<String>, String> {
        l.splits.get(self.train).ok_or_else(|| {
            format!(
                "config {} has no split {}; its splits: {} (choose with --train-split)",
                l.config,
                self.train,
                l.split_names()
            )
        })
    }

    fn dev<'l>(&self, l: &'l Layout) -> Result<(&'l str, &'l Vec<String>), String> {
        let name = match self.dev {
            Some(d) => d,
            None => default_dev_split(l).ok_or_else(|| {
                format!(
                    "config {} has no validation or test split to evaluate on; its splits: {} \
                     (choose with --dev-split)",
                    l.config,
                    l.split_names()
                )
            })?,
        };
        l.splits
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| {
                format!(
                    "config {} has no split {name}; its splits: {} (choose with --dev-split)",
                    l.config,
                    l.split_names()
                )
            })
    }

    /// The files of both splits, as the fetch takes them.
    fn files(&self, l: &Layout) -> Result<Vec<String>, String> {
        let mut files = self.train_files(l)?.clone();
        let (dev, dev_files) = self.dev(l)?;
        if dev == self.train {
            return Err(format!(
                "--dev-split is the training split {dev}: evaluate on another split"
            ));
        }
        files.extend(dev_files.iter().cloned());
        Ok(files)
    }
}

/// The format of a split's files, which must all have one.
fn format_of(files: &[String]) -> anyhow::Result<Format> {
    let mut formats = files
        .iter()
        .map(|f| Format::from_path(std::path::Path::new(f)));
    let first = formats.next().flatten();
    match first {
        Some(f) if formats.all(|g| g == Some(f)) => Ok(f),
        _ => bail!(
            "the split's files are not all of one format clsnorm reads (Parquet, CSV, TSV, JSON \
             Lines): {}",
            clsnorm::excerpt::list(files)
        ),
    }
}

/// The task `--dataset` names: its files fetched (or found in the cache), its columns and
/// labels found, its training split's rows read when the classes come from them.
pub fn resolve(args: &DataArgs, dataset: &str) -> anyhow::Result<ResolvedTask> {
    let id: DatasetId = dataset
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--dataset: {e}"))?;
    for (flag, split) in [
        ("--train-split", Some(args.train_split.as_str())),
        ("--dev-split", args.dev_split.as_deref()),
    ] {
        if let Some(s) = split.filter(|s| !is_name(s)) {
            bail!(
                "{flag} {}: a split is a name of letters, digits, -, _ and .",
                clsnorm::excerpt::quoted(s)
            );
        }
    }
    let splits = Splits {
        train: &args.train_split,
        dev: args.dev_split.as_deref(),
    };
    let env = HubEnv::from_process()?;
    let (found, layout, _) = clsnorm::hub::dataset_by_id(&env, &id, &|l| splits.files(l))?;
    let train = splits
        .train_files(&layout)
        .map_err(anyhow::Error::msg)?
        .clone();
    let (dev_name, dev) = splits.dev(&layout).map_err(anyhow::Error::msg)?;
    let (dev_name, dev) = (dev_name.to_string(), dev.clone());
    let format = format_of(&train)?;
    if format_of(&dev)? != format {
        bail!("dataset {id}: its {dev_name} split is of another format than its training split");
    }
    let given = GivenColumns {
        text: args.text_col.as_deref(),
        text_pair: args.text_pair_col.as_deref(),
        label: args.label_col.as_deref(),
    };
    let first = found.dir.join(&train[0]);
    let columns = match format {
        Format::Parquet => parquet_columns(&first)?,
        // Other formats say their columns as they are read: the given names, else the usual.
        _ => [
            (given.text.unwrap_or("text"), ColumnKind::Text),
            (given.label.unwrap_or("label"), ColumnKind::Integer),
        ]
        .into_iter()
        .chain(given.text_pair.map(|p| (p, ColumnKind::Text)))
        .map(|(n, kind)| ColumnInfo {
            name: n.to_string(),
            kind,
            class_names: None,
        })
        .collect(),
    };
    let what = format!("dataset {id} ({}, {})", layout.config, first.display());
    let cols = infer_columns(&columns, given).map_err(|e| anyhow::anyhow!("{what} {e}"))?;
    let label_col = columns
        .iter()
        .find(|c| c.name == cols.label)
        .context("the label column")?;
    let kind =
        label_kind(label_col, args.regression).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let name = args.task.clone().unwrap_or_else(|| id.task_name());
    let (labels, label_ids) = match &kind {
        LabelKind::Named(names) => (LabelSpace::Classes(names.clone()), Some(names.clone())),
        LabelKind::Regression => (LabelSpace::Regression, None),
        LabelKind::Found => (LabelSpace::Classes(Vec::new()), None),
    };
    // Full paths, as a custom task's: `evaluate` on the checkpoint finds them as they are.
    let full = |files: &[String]| {
        Files::shards(
            files
                .iter()
                .map(|f| found.dir.join(f).to_string_lossy().into_owned())
                .collect(),
        )
    };
    let mut spec = TaskSpec::hub_dataset(
        &name,
        format,
        &cols,
        labels,
        label_ids,
        full(&train),
        vec![(dev_name, full(&dev))],
    );
    tracing::info!(
        "{id}: config {}, columns text={} pair={} label={}, {}",
        layout.config,
        cols.text,
        cols.text_pair.as_deref().unwrap_or("-"),
        cols.label,
        match &spec.labels {
            LabelSpace::Classes(c) if !c.is_empty() => format!("classes {}", c.join(", ")),
            LabelSpace::Classes(_) => "classes from the training split".into(),
            LabelSpace::Regression => "regression".into(),
        }
    );
    let mut rows = None;
    if kind == LabelKind::Found {
        let opts = ReadOptions {
            skip_bad_rows: args.skip_bad_rows,
            require_label: true,
        };
        let paths: Vec<_> = train.iter().map(|f| found.dir.join(f)).collect();
        let raw = read_split_rows(&paths, &spec, opts)?;
        let classes = infer_classes_of(&raw)?;
        if !(2..=MAX_CLASSES).contains(&classes.len()) {
            bail!(
                "{what}: column {} holds {} distinct labels; classification needs 2 to \
                 {MAX_CLASSES} (use --regression for scores, --label-col for another column)",
                cols.label,
                classes.len()
            );
        }
        spec.set_classes(classes);
        rows = Some(raw);
    }
    let source = found.source.map(|mut s| {
        s.config = Some(layout.config.clone());
        s
    });
    Ok(ResolvedTask {
        spec,
        dir: None,
        rows,
        source,
    })
}

/// Every split of a Hub dataset's config, into the cache (`clsnorm fetch --dataset`, a sweep's
/// `dataset`).
pub fn fetch(dataset: &str) -> anyhow::Result<Located> {
    let id: DatasetId = dataset
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--dataset: {e}"))?;
    let env = HubEnv::from_process()?;
    let all = |l: &Layout| -> Result<Vec<String>, String> {
        Ok(l.splits.values().flatten().cloned().collect())
    };
    let (found, _, _) = clsnorm::hub::dataset_by_id(&env, &id, &all)?;
    Ok(found)
}
