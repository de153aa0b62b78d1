//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The real all-MiniLM-L6-v2 installed by `scripts/setup.sh`.
pub fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/setup.sh first",
        dir.display()
    );
    dir
}

/// A small WordPiece vocabulary for tiny random models.
pub const TINY_VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat",
    "is", "good", "bad", "movie", "was", "not", "very", ".", ",", "##s", "##ing", "run", "it",
];

/// Writes `vocab.txt` (and an uncased `tokenizer_config.json`) into `dir`.
pub fn write_tiny_vocab(dir: &Path) {
    std::fs::write(dir.join("vocab.txt"), TINY_VOCAB.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"do_lower_case": true}"#,
    )
    .unwrap();
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
