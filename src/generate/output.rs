//! What a generation gives back: each variation's text and ids, and the
//! timings.

#[allow(clippy::wildcard_imports)] // the module's imports, as if this were mod.rs
use super::*;

/// One finished (or cut) variation.
#[derive(Debug, Clone, Serialize)]
pub struct Variation {
    pub ids: Vec<u32>,
    pub text: String,
    pub stop: Option<StopReason>,
    /// Verse rules a finished regulated poem does not keep, each where it is
    /// broken: positions the decoder relaxed (see `poetry::rules`) or that the
    /// prompt broke. Empty when the rules are off or kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relaxed: Vec<crate::poetry::Relaxed>,
}

/// Timings of a generation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerationTimings {
    /// Prompt processing through the first sampled token, in ms.
    pub first_token_ms: f64,
    /// Decode steps after the first token.
    pub decode_steps: usize,
    pub decode_ms: f64,
    /// Of `decode_ms`: the forward passes, logits copied to the host included.
    pub forward_ms: f64,
    /// Of `decode_ms`: masks and sampling on the host (the rest is bookkeeping).
    pub sample_ms: f64,
}

impl GenerationTimings {
    /// Decode steps per second (a step produces one token for every live variation).
    pub fn steps_per_s(&self) -> f64 {
        if self.decode_ms > 0.0 {
            self.decode_steps as f64 / (self.decode_ms / 1000.0)
        } else {
            0.0
        }
    }
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Prompt tokens dropped from the left to fit the context.
    pub truncated_prompt_tokens: usize,
    pub variations: Vec<Variation>,
    pub timings: GenerationTimings,
    /// Bytes the KV cache held at the end (for the memory meter's split).
    pub kv_cache_bytes: usize,
    /// Generated ids the tokenizer has no text for (ids past its vocabulary):
    /// counted, so empty text is never silent.
    #[serde(default)]
    pub ids_without_text: usize,
    /// The most rows decoded together: this request's variations plus those
    /// of any requests joined to it (at its start or while it ran).
    #[serde(default)]
    pub batch_rows: usize,
    /// How decode steps ran on the static path (absent on the growing-cache path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_runner: Option<StepRunner>,
    /// The kernels of the static path's decode steps (absent on the growing path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_kernels: Option<StepKernels>,
    /// Whether the decode steps drew their tokens on the device
    /// ([`device_draw`]), not on the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub device_draws: bool,
}

impl Generation {
    pub fn generated_tokens(&self) -> usize {
        self.variations.iter().map(|v| v.ids.len()).sum()
    }
}
