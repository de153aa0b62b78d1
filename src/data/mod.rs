//! Examples from GLUE and custom files: the first step of the pipeline.
pub mod hub_dataset;
pub mod read;
pub mod task;

use std::path::PathBuf;

pub use read::{read_dataset, read_split, ReadOptions};
pub use task::{glue_task, Column, Files, Format, LabelSpace, SplitPaths, TaskSpec};

/// A gold label: a class index or a regression score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(usize),
    Score(f32),
}

/// One example: text (and pair text) with its label when the file has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 1-based line in the source file.
    pub line: usize,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: Option<Label>,
}

/// The examples of one file, or of the files of a sharded split read as one.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file (the first, of a sharded split).
    pub path: PathBuf,
    pub examples: Vec<Example>,
    /// Rows dropped by `--skip-bad-rows`.
    pub skipped: usize,
    /// sha256 of the bytes the examples were parsed from; of a sharded split, of the shards'
    /// hashes one a line.
    pub sha256: String,
    /// Of a sharded split, the files after the first, each with the index of its first
    /// example (an example's `line` counts within its own file); empty for one file.
    pub shards: Vec<(PathBuf, usize)>,
}

impl Dataset {
    /// The file example `index` was read from.
    pub fn file_of(&self, index: usize) -> &std::path::Path {
        self.shards
            .iter()
            .rev()
            .find(|(_, start)| index >= *start)
            .map_or(self.path.as_path(), |(p, _)| p.as_path())
    }

    /// Every file, in the order read.
    pub fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        std::iter::once(self.path.as_path()).chain(self.shards.iter().map(|(p, _)| p.as_path()))
    }
}
