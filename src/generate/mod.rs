//! Text generation on a loaded [`Gpt2`]: batched decoding of N variations in one
//! pass, rows that join a running decode and leave it when they end (the
//! CPU's path, through a [`RowFeed`]), sampling, stop tokens, cancellation
//! between tokens, and UTF-8-safe streaming.
//!
//! Owns: the decode loop and what a request means. Must not: load files, open
//! or drop devices (`engine/`), or know about the UI; results go out through a
//! callback.

mod decode;
mod decoding;
mod detok;
pub mod device_draw;
mod output;
/// The poem forms live in [`crate::poetry`]; re-exported where decoding uses them.
mod poem_start;
mod prepare;
mod request;
mod rows;
mod sampling;

pub use decode::generate_feeding;
use decode::{relaxed_rules, row_sampler};
pub use decoding::DecodePath;
use decoding::{Decoding, Next};
pub use detok::Utf8Stream;
pub use device_draw::{DeviceSampler, DrawRow, DrawSettings};
pub use output::{Generation, GenerationTimings, Variation};
pub use poem_start::{
    acrostic_keeps, check_heads, check_start, echoed_prompt, keyword_prefix, vocab_keywords,
};
pub use prepare::{
    form_constraint, poem_prompt, prepare_request, vocab_chars, FormStart, PrepareError, Prompt,
    RequestSettings,
};
pub use request::{GenerateError, GenerateRequest, RowStart, StopReason, TokenEvent};
pub use rows::{FinishedRow, RowFeed};
use rows::{RowClock, Rows};
pub use sampling::{SamplingParams, TokenSampler};

use std::time::Instant;

use candle_core::{DType, Device};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{
    static_columns, ForwardError, Gpt2, GraphMode, KvCache, StaticDecoder, StepKernels, StepRunner,
    TokenBatch,
};
use crate::poetry::forms;

/// Largest number of variations decoded in one batch.
pub const MAX_VARIATIONS: usize = 8;

/// Checks a request against the model before anything runs on the device.
pub fn validate_request(model: &Gpt2, req: &GenerateRequest) -> Result<(), GenerateError> {
    let invalid =
        |field: &'static str, problem: String| Err(GenerateError::Invalid { field, problem });
    req.sampling.validate()?;
    if req.max_new_tokens == 0 {
        return invalid("max_new_tokens", "must be at least 1".into());
    }
    if req.variations == 0 || req.variations > MAX_VARIATIONS {
        return invalid(
            "variations",
            format!("must be 1..={MAX_VARIATIONS}, found {}", req.variations),
        );
    }
    if !req.rows.is_empty() && req.rows.len() != req.variations {
        return invalid(
            "rows",
            format!("{} rows for {} variations", req.rows.len(), req.variations),
        );
    }
    if req.rows.iter().any(|r| r.prompt_ids.is_empty()) {
        return invalid("prompt", "a joined row has an empty prompt".into());
    }
    let vocab = model.config().vocab_size;
    if let Some(&id) = req
        .rows
        .iter()
        .flat_map(|r| &r.prompt_ids)
        .find(|&&id| id as usize >= vocab)
    {
        return invalid(
            "prompt_ids",
            format!("token id {id} is out of range (vocabulary has {vocab} tokens)"),
        );
    }
    if req.rows.is_empty() && req.prompt_ids.is_empty() {
        return invalid(
            "prompt",
            "is empty and the model has no start token; give a prompt".into(),
        );
    }
    if let Some(&id) = req.prompt_ids.iter().find(|&&id| id as usize >= vocab) {
        return invalid(
            "prompt_ids",
            format!("token id {id} is out of range (vocabulary has {vocab} tokens)"),
        );
    }
    Ok(())
}

/// How many prompt tokens fit before `max_new_tokens` new ones: the last
/// prompt token sits at position p - 1 and every new token but the last is
/// fed back, so p prompt tokens leave room for n_positions - p + 1 new ones.
pub fn prompt_tokens_kept(n_positions: usize, max_new_tokens: usize) -> usize {
    (n_positions + 1)
        .saturating_sub(max_new_tokens)
        .clamp(1, n_positions)
}

/// Whether `req` goes on past a full context by sliding its window: a 詞 tune
/// may need more tokens than the model's context holds.
pub fn slides_context(req: &GenerateRequest) -> bool {
    req.constraint
        .as_ref()
        .is_some_and(|(c, _)| matches!(c.form, forms::PoemForm::Ci(_)))
}

/// How many prompt tokens `req` keeps on a model with `n_positions`.
pub fn prompt_tokens_kept_for(req: &GenerateRequest, n_positions: usize) -> usize {
    if slides_context(req) {
        n_positions
    } else {
        prompt_tokens_kept(n_positions, req.max_new_tokens)
    }
}

/// Generates `req.variations` continuations as one batch, calling `on_token`
/// for every sampled token and asking `cancel` between tokens.
///
/// `token_bytes` maps an id to the bytes it adds to the text (the tokenizer's
/// table); without a tokenizer pass `|_| &[]` and read the ids.
pub fn generate<'t>(
    model: &Gpt2,
    req: &GenerateRequest,
    token_bytes: impl Fn(u32) -> &'t [u8],
    cancel: &dyn Fn() -> bool,
    on_token: impl FnMut(&TokenEvent),
) -> Result<Generation, GenerateError> {
    let path = DecodePath::for_device(model.device());
    generate_on(path, model, req, token_bytes, cancel, on_token)
}

/// [`generate`] on a chosen [`DecodePath`] (tests run the GPU's static path on the CPU).
pub fn generate_on<'t>(
    path: DecodePath,
    model: &Gpt2,
    req: &GenerateRequest,
    token_bytes: impl Fn(u32) -> &'t [u8],
    cancel: &dyn Fn() -> bool,
    on_token: impl FnMut(&TokenEvent),
) -> Result<Generation, GenerateError> {
    generate_rows(path, model, req, token_bytes, &|_| cancel(), on_token)
}

/// As [`generate_on`], with a cancel question per row: a row whose answer is
/// yes stops (`Cancelled`) and the others go on (joined requests are cancelled
/// one by one).
pub fn generate_rows<'t>(
    path: DecodePath,
    model: &Gpt2,
    req: &GenerateRequest,
    token_bytes: impl Fn(u32) -> &'t [u8],
    row_cancelled: &dyn Fn(usize) -> bool,
    on_token: impl FnMut(&TokenEvent),
) -> Result<Generation, GenerateError> {
    /// A fixed batch: nothing joins, endings are read from the result.
    struct Fixed<'a, T> {
        cancelled: &'a dyn Fn(usize) -> bool,
        on_token: T,
    }
    impl<T: FnMut(&TokenEvent)> RowFeed for Fixed<'_, T> {
        fn admit(&mut self, _free: usize, _max_prompt_tokens: usize) -> Vec<RowStart> {
            Vec::new()
        }
        fn cancelled(&self, row: usize) -> bool {
            (self.cancelled)(row)
        }
        fn token(&mut self, ev: &TokenEvent) {
            (self.on_token)(ev);
        }
        fn finished(&mut self, _row: FinishedRow<'_>) {}
    }
    let mut feed = Fixed {
        cancelled: row_cancelled,
        on_token,
    };
    generate_feeding(path, model, req, token_bytes, &mut feed)
}

/// Decoding speed of `model` for `batch` sequences: a warm-up generation, then
/// `new_tokens` steps timed (tokens per second over all rows). What Precision
/// "auto" compares f16 and f32 with on a GPU.
pub fn decode_tokens_per_s(
    model: &Gpt2,
    batch: usize,
    new_tokens: usize,
) -> Result<f64, GenerateError> {
    let vocab = model.config().vocab_size.max(1);
    let prompt_ids: Vec<u32> = (0..8).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let request = |max_new_tokens| GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        variations: batch,
        max_new_tokens,
        sampling: SamplingParams {
            seed: 7,
            ..SamplingParams::default()
        },
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    };
    // The first run sizes the buffers (and captures the CUDA graph) for this shape.
    generate(model, &request(new_tokens), |_| &[], &|| false, |_| {})?;
    let timed = generate(model, &request(new_tokens), |_| &[], &|| false, |_| {})?;
    Ok(timed.timings.steps_per_s() * batch as f64)
}

#[cfg(test)]
mod tests;
