//! clsnorm: fine-tune BERT-family encoders with a normalized [CLS] embedding.
//!
//! The crate follows the data: [`data`] -> [`tokenize`] -> [`batch`] -> [`encoder`] -> [CLS]
//! vector -> [`normalize`] -> head and loss ([`classifier`]) -> [`train`] (optimizer,
//! schedule, checkpoints), then [`eval`] and [`metrics`] -> run directories ([`rundir`]) ->
//! [`sweep`] -> [`report`]; [`analyze`] measures the [CLS] embedding itself. [`registry`] names
//! what can be built (normalizers, model families).
pub mod analyze;
pub mod atomic;
pub mod batch;
pub mod bounds;
pub mod classifier;
pub mod data;
pub mod device;
pub mod encoder;
pub mod error;
pub mod eval;
pub mod excerpt;
pub mod export;
pub mod fsread;
pub mod hub;
pub mod metrics;
pub mod normalize;
pub mod npy;
mod plot;
pub mod precision;
pub mod registry;
pub mod report;
pub mod rundir;
pub mod sweep;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
pub use registry::Registry;
