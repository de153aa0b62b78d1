//! Examples from GLUE and custom files: the first step of the pipeline.
pub mod read;
pub mod task;

use std::path::PathBuf;

pub use read::{read_dataset, ReadOptions};
pub use task::{glue_task, Column, Format, LabelSpace, TaskSpec};

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

/// The examples of one file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
    /// Rows dropped by `--skip-bad-rows`.
    pub skipped: usize,
    /// sha256 of the bytes the examples were parsed from.
    pub sha256: String,
}
