//! Analysis of [CLS] embeddings: the papers' diagnosis (non-zero centre, concentration on few
//! dimensions, uneven spread, correlation) made measurable.
pub mod plots;
pub mod stats;

pub use stats::{compute, Details, EmbeddingStats};
