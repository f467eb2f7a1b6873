//! Training our own poem models: corpus preparation from the chinese-poetry
//! collection, the character vocabulary, and a GPT-2 trainer on candle.
//!
//! Owns: `versifier corpus` and `versifier train`. Must not: touch the UI or
//! the engine's resident model; it opens its own device for the run and writes
//! an ordinary Hugging Face-layout folder that the loader reads like any other.

mod adamw;
mod adamw_fused;
pub mod corpus;
pub mod heap;
pub mod trainer;
pub mod vocab;

pub use adamw_fused::{check_fused_adamw, FusedAdamwCheck, FUSED_ADAMW_TOLERANCE};
pub use corpus::{prepare_corpus, CorpusOptions, CorpusStats};
pub use trainer::{
    held_out_perplexity, train, StopRequest, TrainError, TrainOptions, TrainProgress, TrainSummary,
};
