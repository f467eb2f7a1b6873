//! Text generation on a loaded [`Gpt2`]: batched decoding of N variations in one
//! pass, sampling, stop tokens, cancellation between tokens, and UTF-8-safe
//! streaming.
//!
//! Owns: the decode loop and what a request means. Must not: load files, open
//! or drop devices (`engine/`), or know about the UI; results go out through a
//! callback.

mod detok;
/// The poem forms live in [`crate::poetry`]; re-exported where decoding uses them.
pub use crate::poetry::forms;
mod prepare;
mod sampling;

pub use detok::Utf8Stream;
pub use prepare::{prepare_request, PrepareError, Prompt, RequestSettings};
pub use sampling::{SamplingParams, TokenSampler};

use std::time::Instant;

use candle_core::{DType, Device};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{
    static_columns, ForwardError, Gpt2, GraphMode, KvCache, StaticDecoder, StepRunner, TokenBatch,
};

/// Largest number of variations decoded in one batch.
pub const MAX_VARIATIONS: usize = 8;

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
    /// Rows decoded together: this request's variations plus those of any
    /// requests joined to it.
    #[serde(default)]
    pub batch_rows: usize,
    /// How decode steps ran on the static path (absent on the growing-cache path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_runner: Option<StepRunner>,
}

impl Generation {
    pub fn generated_tokens(&self) -> usize {
        self.variations.iter().map(|v| v.ids.len()).sum()
    }
}

/// A form constraint and the text the poem starts with.
pub type FormStart = (forms::FormConstraint, String);

/// The prompt ids and form constraint for a poem: the start token, the form's
/// tag when the model was trained with one, then the prompt's characters (for an
/// acrostic the heads lead instead, and the prompt is not used).
pub fn poem_prompt(
    tok: &crate::model::TextTokenizer,
    prompt: &str,
    form: &forms::PoemForm,
    verse: &crate::poetry::VerseRules,
) -> Result<(Vec<u32>, Option<FormStart>), GenerateError> {
    let invalid = |field: &'static str, problem: String| GenerateError::Invalid { field, problem };
    let text = if matches!(form, forms::PoemForm::Acrostic(_)) {
        String::new()
    } else {
        // The characters the model writes (simplified ones mapped), so the
        // verse rules read the prompt as the poem's start.
        tok.to_vocab_chars(prompt.trim())
    };
    // Acrostic heads typed in simplified script are mapped the same way.
    let form = &match form {
        forms::PoemForm::Acrostic(heads) => forms::PoemForm::Acrostic(
            tok.to_vocab_chars(&heads.iter().collect::<String>())
                .chars()
                .collect(),
        ),
        other => other.clone(),
    };
    let mut ids: Vec<u32> = tok.start_id().into_iter().collect();
    if let Some(tag) = form.tag_token().and_then(|t| tok.token_id(&t)) {
        ids.push(tag);
    }
    ids.extend(
        tok.encode(&text)
            .map_err(|e| invalid("prompt", e.to_string()))?,
    );
    if *form == forms::PoemForm::Free {
        return Ok((ids, None));
    }
    if let Some(&(per_line, _)) = form.line_plan().as_ref().and_then(|p| p.first()) {
        if text.chars().filter(|c| forms::is_hanzi(*c)).count() >= per_line {
            return Err(invalid(
                "prompt",
                format!(
                    "is longer than one line of {} ({per_line} characters)",
                    form.label()
                ),
            ));
        }
    }
    let constraint = forms::FormConstraint::new(
        form.clone(),
        tok.vocab_size(),
        |id| String::from_utf8_lossy(tok.token_bytes(id)).into_owned(),
        tok.stop_ids().first().copied(),
        verse,
    )
    .map_err(|e| invalid("form", e.to_string()))?;
    Ok((ids, Some((constraint, text))))
}

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

/// How a generation keeps its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// A cache that grows by one column per step (the CPU's path: no wasted
    /// attention over empty columns).
    Growing,
    /// Fixed-size buffers written in place, reused across requests of the same
    /// shape, with each step replayed from a CUDA graph when the mode allows
    /// (the GPU's path: launch-bound, so fewer host round-trips win).
    Static(GraphMode),
}

impl DecodePath {
    /// Static with graphs on CUDA (unless `VERSIFIER_CUDA_GRAPHS=0`), growing elsewhere.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cuda() {
            Self::Static(GraphMode::from_env())
        } else {
            Self::Growing
        }
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

/// The keys and values of one generation, on either path.
enum Decoding<'m> {
    Growing(KvCache),
    Static {
        slot: std::sync::MutexGuard<'m, Option<StaticDecoder>>,
        started: bool,
    },
}

impl<'m> Decoding<'m> {
    fn open(
        path: DecodePath,
        model: &'m Gpt2,
        rows: usize,
        columns: usize,
    ) -> Result<Self, GenerateError> {
        let mode = match path {
            DecodePath::Growing => return Ok(Self::Growing(model.new_cache(rows))),
            DecodePath::Static(mode) => mode,
        };
        // A poisoned slot means a generation panicked mid-step: its buffers are
        // in an unknown state, so start over with fresh ones.
        let mut slot = model.static_decoder().lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        });
        let reusable = slot
            .as_ref()
            .is_some_and(|d| d.batch() == rows && d.columns() == columns && d.graph_mode() == mode);
        if reusable {
            if let Some(d) = slot.as_mut() {
                d.reset();
            }
        } else {
            // Free the old buffers before allocating the new ones.
            *slot = None;
            *slot = Some(StaticDecoder::new(model, rows, columns, mode)?);
        }
        Ok(Self::Static {
            slot,
            started: false,
        })
    }

    /// Logits of each row's last position after `input`, as f32 rows on the host.
    fn next_logits(
        &mut self,
        model: &Gpt2,
        input: &TokenBatch,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        match self {
            Self::Growing(cache) => {
                // On the CPU, on a rayon worker (rayon::scope moves it there):
                // the pass's parallel ops then start and join inside the pool
                // instead of waking this thread after each one (~10% of a
                // step). A GPU's pass stays on this thread, where its context
                // is current.
                let logits = if model.device().is_cpu() {
                    rayon::scope(|_| model.forward_last(input, cache))
                } else {
                    model.forward_last(input, cache)
                }?;
                Ok(logits
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec2::<f32>()?)
            }
            Self::Static { slot, started } => {
                let Some(decoder) = slot.as_mut() else {
                    return Err(ForwardError::Shape("static decoder missing".into()));
                };
                let logits = if *started {
                    decoder.step(model, input)
                } else {
                    *started = true;
                    decoder.prefill(model, input)
                };
                if let Err(e) = &logits {
                    if !matches!(e, ForwardError::ContextFull { .. }) {
                        // Buffers or graph may be half-written: do not reuse them.
                        **slot = None;
                    }
                }
                logits
            }
        }
    }

    fn cache_bytes(&self) -> usize {
        match self {
            Self::Growing(cache) => cache.bytes(),
            Self::Static { slot, .. } => slot.as_ref().map_or(0, StaticDecoder::cache_bytes),
        }
    }

    fn runner(&self) -> Option<StepRunner> {
        match self {
            Self::Growing(_) => None,
            Self::Static { slot, .. } => slot.as_ref().map(StaticDecoder::runner),
        }
    }
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
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<Generation, GenerateError> {
    validate_request(model, req)?;
    let n_positions = model.config().n_positions;
    // Keep room for the requested tokens. The caller reports the drop
    // (`truncated_prompt_tokens`); it is not logged here as well.
    let keep = prompt_tokens_kept_for(req, n_positions);
    let slides = slides_context(req);
    let cut = |ids: &[u32]| ids[ids.len().saturating_sub(keep)..].to_vec();
    let rows = req.variations;
    let prompts: Vec<Vec<u32>> = if req.rows.is_empty() {
        vec![cut(&req.prompt_ids); rows]
    } else {
        req.rows.iter().map(|r| cut(&r.prompt_ids)).collect()
    };
    let (prompt, truncated) = match req.rows.first() {
        Some(r) => (prompts[0].clone(), r.prompt_ids.len() - prompts[0].len()),
        None => (prompts[0].clone(), req.prompt_ids.len() - prompts[0].len()),
    };
    // The text each row's poem starts with, for the form constraint.
    let starts: Vec<&str> = match (&req.constraint, req.rows.is_empty()) {
        (Some((_, start)), true) => vec![start.as_str(); rows],
        (_, false) => req.rows.iter().map(|r| r.start.as_str()).collect(),
        (None, true) => vec![""; rows],
    };

    let mut out = Generation {
        prompt_ids: prompt,
        truncated_prompt_tokens: truncated,
        variations: vec![
            Variation {
                ids: Vec::new(),
                text: String::new(),
                stop: None,
                relaxed: Vec::new(),
            };
            rows
        ],
        timings: GenerationTimings::default(),
        kv_cache_bytes: 0,
        ids_without_text: 0,
        batch_rows: rows,
        step_runner: None,
    };
    let mut samplers: Vec<TokenSampler> = if req.rows.is_empty() {
        (0..rows)
            .map(|r| TokenSampler::new(&req.sampling, r))
            .collect()
    } else {
        req.rows
            .iter()
            .map(|r| {
                let sampling = SamplingParams {
                    seed: r.seed,
                    ..req.sampling.clone()
                };
                TokenSampler::new(&sampling, r.variation)
            })
            .collect()
    };
    let mut streams = vec![Utf8Stream::new(); rows];
    let mut contexts: Vec<Vec<u32>> = prompts.clone();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let columns = static_columns(longest, req.max_new_tokens, n_positions);
    let mut decoding = Some(Decoding::open(path, model, rows, columns)?);

    let started = Instant::now();
    let mut input = TokenBatch::left_padded(&prompts, 0);
    let mut step = 0usize;
    let mut decode_started = None;
    loop {
        for (r, (v, stream)) in out.variations.iter_mut().zip(&mut streams).enumerate() {
            if v.stop.is_none() && row_cancelled(r) {
                v.stop = Some(StopReason::Cancelled);
                let tail = stream.finish();
                v.text.push_str(&tail);
            }
        }
        if out.variations.iter().all(|v| v.stop.is_some()) {
            break;
        }
        let forward_started = Instant::now();
        let Some(open) = decoding.as_mut() else {
            break;
        };
        let logits = match open.next_logits(model, &input) {
            Ok(l) => l,
            Err(ForwardError::ContextFull { .. }) if slides => {
                // The form needs more tokens than the context holds: keep each
                // row's first token (the start) and the latest half of its
                // context, and go on from there (positions restart).
                let half = n_positions / 2;
                let tails: Vec<Vec<u32>> = contexts
                    .iter()
                    .map(|c| {
                        let from = c.len().saturating_sub(half).max(1);
                        c[..1.min(c.len())]
                            .iter()
                            .chain(&c[from..])
                            .copied()
                            .collect()
                    })
                    .collect();
                let longest = tails.iter().map(Vec::len).max().unwrap_or(1);
                let columns = static_columns(longest, req.max_new_tokens, n_positions);
                // The old decoder (and its lock on the static buffers) goes first.
                drop(decoding.take());
                decoding = Some(Decoding::open(path, model, rows, columns)?);
                input = TokenBatch::left_padded(&tails, 0);
                continue;
            }
            Err(ForwardError::ContextFull { .. }) => {
                finish_rows(&mut out, &mut streams, StopReason::ContextFull);
                break;
            }
            Err(e) => return Err(fail(e.into(), out)),
        };
        let sample_started = Instant::now();
        if step > 0 {
            out.timings.forward_ms += (sample_started - forward_started).as_secs_f64() * 1000.0;
        }
        let mut next = vec![0u32; rows];
        let mut live = vec![false; rows];
        // Each row has its own sampler and RNG stream, so rows can be sampled in
        // parallel with the same result as one after another.
        let pick = |((r, mut row_logits), sampler): ((usize, Vec<f32>), &mut TokenSampler)| {
            if out.variations[r].stop.is_some() {
                return None;
            }
            if let Some((c, _)) = &req.constraint {
                let written = format!("{}{}", starts[r], out.variations[r].text);
                c.apply(&written, &mut row_logits);
            }
            Some(sampler.sample(row_logits, &contexts[r]))
        };
        let picks: Vec<Option<Result<u32, GenerateError>>> = if rows > 1 {
            logits
                .into_par_iter()
                .enumerate()
                .zip(samplers.par_iter_mut())
                .map(pick)
                .collect()
        } else {
            logits
                .into_iter()
                .enumerate()
                .zip(samplers.iter_mut())
                .map(pick)
                .collect()
        };
        if step > 0 {
            out.timings.sample_ms += sample_started.elapsed().as_secs_f64() * 1000.0;
        }
        for (r, picked) in picks.into_iter().enumerate() {
            let id = match picked {
                None => continue,
                Some(Ok(id)) => id,
                Some(Err(e)) => return Err(fail(e, out)),
            };
            if req.stop_ids.contains(&id) {
                out.variations[r].stop = Some(StopReason::Stop);
                let tail = streams[r].finish();
                out.variations[r].text.push_str(&tail);
                continue;
            }
            let text = streams[r].push(token_bytes(id));
            out.variations[r].text.push_str(&text);
            out.variations[r].ids.push(id);
            contexts[r].push(id);
            on_token(&TokenEvent {
                variation: r,
                id,
                text,
            });
            if out.variations[r].ids.len() >= req.max_new_tokens {
                out.variations[r].stop = Some(StopReason::MaxTokens);
                let tail = streams[r].finish();
                out.variations[r].text.push_str(&tail);
            } else {
                next[r] = id;
                live[r] = true;
            }
        }
        if step == 0 {
            out.timings.first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
            decode_started = Some(Instant::now());
        } else {
            out.timings.decode_steps += 1;
        }
        step += 1;
        if !live.iter().any(|l| *l) {
            break;
        }
        input = TokenBatch::step(next, live);
    }
    if let Some(t) = decode_started {
        out.timings.decode_ms = t.elapsed().as_secs_f64() * 1000.0;
    }
    if let Some(d) = &decoding {
        out.kv_cache_bytes = d.cache_bytes();
        out.step_runner = d.runner();
    }
    if req
        .constraint
        .as_ref()
        .is_some_and(|(c, _)| c.enforces_verse_rules())
    {
        for (v, start) in out.variations.iter_mut().zip(&starts) {
            if v.stop == Some(StopReason::Stop) {
                v.relaxed = relaxed_rules(&format!("{start}{}", v.text));
            }
        }
    }
    Ok(out)
}

/// The verse rules a finished poem breaks, as the checker finds them.
fn relaxed_rules(poem: &str) -> Vec<crate::poetry::Relaxed> {
    crate::poetry::check_poem(poem)
        .problems
        .into_iter()
        .map(|p| crate::poetry::Relaxed {
            line: p.line,
            column: p.column,
            rule: p.rule.label().to_string(),
        })
        .collect()
}

fn finish_rows(out: &mut Generation, streams: &mut [Utf8Stream], reason: StopReason) {
    for (v, s) in out.variations.iter_mut().zip(streams.iter_mut()) {
        if v.stop.is_none() {
            v.stop = Some(reason);
            let tail = s.finish();
            v.text.push_str(&tail);
        }
    }
}

fn fail(source: GenerateError, partial: Generation) -> GenerateError {
    GenerateError::Failed {
        source: Box::new(source),
        partial: Box::new(partial),
    }
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
