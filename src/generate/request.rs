//! What a generation is asked: the request, a row that joins a running
//! decode, why a row stopped, a token as it is written, and what can fail.

#[allow(clippy::wildcard_imports)] // the module's imports, as if this were mod.rs
use super::*;

/// Errors of a generation; failures after the first token keep what was written.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid setting `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("the model produced NaN logits (numerical overflow; try --dtype f32)")]
    NonFinite,
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("generation failed after {} tokens: {source}", partial.generated_tokens())]
    Failed {
        #[source]
        source: Box<GenerateError>,
        /// Everything produced before the failure.
        partial: Box<Generation>,
    },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt as token ids (start token included when the model wants one).
    pub prompt_ids: Vec<u32>,
    /// Number of independent continuations, decoded together as one batch.
    pub variations: usize,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end a variation (not included in its output).
    pub stop_ids: Vec<u32>,
    /// A poem form enforced while decoding, and the text the poem starts with
    /// (the prompt's own characters).
    pub constraint: Option<FormStart>,
    /// Rows of requests joined into one batch, each with its own prompt, seed
    /// and start text (then `variations` is their count and `prompt_ids` and
    /// the constraint's start text are not used). Empty: every row decodes
    /// `prompt_ids` with `seed + row`.
    pub rows: Vec<RowStart>,
}

/// One row of a joined batch: what a request's variation would have been alone.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStart {
    pub prompt_ids: Vec<u32>,
    /// The request's seed; the row samples as variation `variation` of it.
    pub seed: u64,
    pub variation: usize,
    /// The text the poem starts with (for the form constraint).
    pub start: String,
}

/// Why a variation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token (EOS / `[SEP]`).
    Stop,
    /// `max_new_tokens` reached.
    MaxTokens,
    /// The model's context (`n_positions`) is full.
    ContextFull,
    /// The cancel flag was raised.
    Cancelled,
}

/// One streamed token.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub variation: usize,
    pub id: u32,
    /// Text completed by this token (empty while a character is still partial).
    pub text: String,
}
