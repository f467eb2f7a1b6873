//! The model layer: GPT-2 configuration, the network on candle, checkpoint and
//! tokenizer loading.
//!
//! Owns: turning files on disk into a validated [`Gpt2Config`], a [`Gpt2`] on a
//! given device, and a [`TextTokenizer`]. Must not: create or drop devices (the
//! caller passes one in; only `engine/` opens devices), sample tokens (that is
//! `generate/`), or touch the UI.

mod checkpoint;
mod config;
mod cpu_attention;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_kernels;
mod forward_error;
mod fused_decode;
mod gpt2;
pub mod half_weights;
mod kv_cache;
pub mod packed_matrix;
mod static_decode;
#[cfg(feature = "cuda")]
mod step_graph;
pub mod synthetic;
mod tokenizer;
pub mod train_ops;

pub use checkpoint::{
    check_tensor_shapes, expected_tensor_shapes, inspect_safetensors, load_model,
    load_model_with_progress, load_named_tensors, LoadProgress, LoadedModel, ModelFiles,
    SafetensorsSummary, TensorEntry, WeightFormat,
};
pub use config::{Activation, Gpt2Config};
pub use fused_decode::{check_fused_ops, FusedOpCheck, StepKernels};
pub use gpt2::{masked_value, ForwardError, Gpt2, KvCache, KvSlot, StaticKvCache, TokenBatch};
pub use static_decode::{
    static_columns, GraphMode, StaticDecoder, StepRunner, StepTail, COLUMN_BUCKET,
};
pub use tokenizer::{EncodeError, TextTokenizer, TokenizerKind};

use std::path::PathBuf;

/// Deterministic values in [-1, 1) for the kernels' tests, without a
/// random-number crate.
#[cfg(test)]
fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Everything that can go wrong turning files into a model; each variant names
/// the file and, where there is one, the field or tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error("{path}: {problem}")]
    NoWeights { path: PathBuf, problem: String },
    #[error("{path}: sharded checkpoints ({index}) are not supported; merge the shards into one model.safetensors (e.g. `model.save_pretrained(dir, max_shard_size=\"100GB\")`)")]
    Sharded { path: PathBuf, index: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {}{problem}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Config {
        path: PathBuf,
        field: Option<String>,
        problem: String,
    },
    #[error("{path}: not a valid safetensors file: {problem}")]
    Safetensors { path: PathBuf, problem: String },
    #[error("{path}: not a readable PyTorch checkpoint: {problem}")]
    Pickle { path: PathBuf, problem: String },
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?}); {inventory}")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        /// What the file does hold, e.g. "the file has 31 tensors, e.g. `h.0.attn.bias`".
        inventory: String,
    },
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, expected {expected:?} (from config.json)"
    )]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: {problem}")]
    Tokenizer { path: PathBuf, problem: String },
    #[error("{path}: the tokenizer has {tokenizer_vocab} tokens but config.json says vocab_size = {model_vocab}; they do not belong together (use the tokenizer the model was trained with, or correct vocab_size)")]
    VocabMismatch {
        path: PathBuf,
        tokenizer_vocab: usize,
        model_vocab: usize,
    },
    #[error("{path}: {source}")]
    Candle {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
}
