//! clsnorm: fine-tune BERT-family encoders with a normalized [CLS] embedding.
//!
//! The crate follows the data: [`tokenize`] -> [`batch`] -> [`encoder`] -> [CLS] vector.
pub mod analyze;
pub mod atomic;
pub mod batch;
pub mod classifier;
pub mod data;
pub mod device;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod fsread;
pub mod metrics;
pub mod normalize;
mod plot;
pub mod report;
pub mod rundir;
pub mod sweep;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
