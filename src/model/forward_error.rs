//! What can go wrong in a forward pass: the model's and its caches' error.

/// What can go wrong in a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("token id {id} at batch row {row} is out of range: the model's vocabulary has {vocab} entries")]
    TokenOutOfRange { id: u32, row: usize, vocab: usize },
    #[error(
        "sequence {row} would reach position {position}, but the model has n_positions = {max}"
    )]
    ContextFull {
        row: usize,
        position: usize,
        max: usize,
    },
    #[error("batch shape mismatch: {0}")]
    Shape(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
