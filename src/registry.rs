//! What a process can build: normalizers by name, encoders by `model_type`. Commands use
//! [`Registry::builtin`]; code that adds a normalizer or a model family registers it on its
//! own registry and passes that to [`crate::train::finetune`] and
//! [`crate::train::checkpoint::load_model`].
use crate::encoder::Families;
use crate::normalize::Normalizers;

/// The normalizers and model families a process knows.
#[derive(Debug)]
pub struct Registry {
    pub normalizers: Normalizers,
    pub families: Families,
}

impl Registry {
    /// clsnorm's own.
    pub fn builtin() -> Self {
        Registry {
            normalizers: Normalizers::builtin(),
            families: Families::builtin(),
        }
    }
}
