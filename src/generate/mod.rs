//! Text generation on a loaded [`Gpt2`]: batched decoding of N variations in one
//! pass, rows that join a running decode and leave it when they end (the
//! CPU's path, through a [`RowFeed`]), sampling, stop tokens, cancellation
//! between tokens, and UTF-8-safe streaming.
//!
//! Owns: the decode loop and what a request means. Must not: load files, open
//! or drop devices (`engine/`), or know about the UI; results go out through a
//! callback.

mod detok;
pub mod device_draw;
/// The poem forms live in [`crate::poetry`]; re-exported where decoding uses them.
mod poem_start;
mod prepare;
mod sampling;

pub use detok::Utf8Stream;
pub use device_draw::{DeviceSampler, DrawRow, DrawSettings};
pub use poem_start::{
    acrostic_keeps, check_heads, check_start, echoed_prompt, keyword_prefix, vocab_keywords,
};
pub use prepare::{prepare_request, PrepareError, Prompt, RequestSettings};
pub use sampling::{SamplingParams, TokenSampler};

use std::time::Instant;

use candle_core::{DType, Device};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{
    static_columns, ForwardError, Gpt2, GraphMode, KvCache, StaticDecoder, StepKernels, StepRunner,
    TokenBatch,
};
use crate::poetry::{constraint, forms};

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

/// A form constraint and the text the poem starts with.
pub type FormStart = (constraint::FormConstraint, String);

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
    let text = match form {
        // An acrostic's prompt is used only when it holds kept lines (it
        // begins with the first head); else the heads lead.
        forms::PoemForm::Acrostic(heads) if !acrostic_keeps(prompt, heads) => String::new(),
        // The characters the model writes (simplified ones mapped), so the
        // verse rules read the prompt as the poem's start.
        _ => tok.to_vocab_chars(prompt.trim()),
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
    if let Some(prefix) = keyword_prefix(tok, &verse.keywords) {
        ids.extend(
            tok.encode(&prefix)
                .map_err(|e| invalid("keywords", e.to_string()))?,
        );
    }
    ids.extend(
        tok.encode(&text)
            .map_err(|e| invalid("prompt", e.to_string()))?,
    );
    if *form == forms::PoemForm::Free {
        return Ok((ids, None));
    }
    if let Some(plan) = form.line_plan() {
        check_start(&text, &plan, &form.label()).map_err(|e| invalid("prompt", e))?;
    }
    if let forms::PoemForm::Acrostic(heads) = form {
        check_heads(&text, heads).map_err(|e| invalid("prompt", e))?;
    }
    let constraint = form_constraint(tok, form, verse, &text)?;
    Ok((ids, Some((constraint, text))))
}

/// The constraint of `form` for `tok`'s vocabulary, holding the request's
/// keywords after `start`; a refusal names the setting at fault.
pub fn form_constraint(
    tok: &crate::model::TextTokenizer,
    form: &forms::PoemForm,
    verse: &crate::poetry::VerseRules,
    start: &str,
) -> Result<constraint::FormConstraint, GenerateError> {
    let invalid = |field: &'static str, problem: String| GenerateError::Invalid { field, problem };
    constraint::FormConstraint::with_chars(
        form.clone(),
        vocab_chars(tok),
        tok.stop_ids().first().copied(),
        verse,
    )
    .and_then(|c| c.hold_keywords(&vocab_keywords(tok, &verse.keywords), start, verse))
    .map_err(|e| match e {
        // The rules refuse the rhyme asked for, not the form.
        constraint::ConstraintError::Rules(rules) => invalid("rhyme", rules.to_string()),
        constraint::ConstraintError::Keywords(k) => invalid("keywords", k.to_string()),
        other => invalid("form", other.to_string()),
    })
}

/// The form constraint's tables of `tok`'s vocabulary: worked out on its
/// first request, shared by every request after.
pub fn vocab_chars(tok: &crate::model::TextTokenizer) -> std::sync::Arc<constraint::VocabChars> {
    tok.derived(|t| {
        constraint::VocabChars::new(t.vocab_size(), |id| {
            String::from_utf8_lossy(t.token_bytes(id)).into_owned()
        })
    })
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
    /// The static path with each step's tokens drawn on the device
    /// ([`device_draw`]): only the chosen ids cross to the host. Requests the
    /// device cannot draw ([`DrawSettings::of`], or verse rules, which read
    /// the model's probabilities on the host) are drawn on the host.
    StaticDrawnOnDevice(GraphMode),
}

impl DecodePath {
    /// Static with graphs on CUDA (unless `VERSIFIER_CUDA_GRAPHS=0`), its
    /// tokens drawn on the device with `VERSIFIER_DEVICE_DRAWS=1`; growing
    /// elsewhere. Device draws stay opt-in until a GPU machine has run them
    /// (`versifier selftest` reports `device_draws`).
    pub fn for_device(device: &Device) -> Self {
        if !device.is_cuda() {
            return Self::Growing;
        }
        let on_device = matches!(
            std::env::var("VERSIFIER_DEVICE_DRAWS").as_deref(),
            Ok("1") | Ok("on") | Ok("true")
        );
        if on_device {
            Self::StaticDrawnOnDevice(GraphMode::from_env())
        } else {
            Self::Static(GraphMode::from_env())
        }
    }

    /// The device draw of `req` on this path, when it has one.
    fn device_draws(self, req: &GenerateRequest, vocab: usize) -> Option<DrawSettings> {
        let rules = req
            .constraint
            .as_ref()
            .is_some_and(|(c, _)| c.enforces_verse_rules());
        match self {
            Self::StaticDrawnOnDevice(_) if !rules => DrawSettings::of(&req.sampling, vocab).ok(),
            _ => None,
        }
    }
}

/// What a step gave: every row's logits on the host, or the ids the device drew.
enum Next {
    Logits(Vec<Vec<f32>>),
    Drawn(Vec<u32>),
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
        /// The device draw its steps run, and whether its state has been
        /// written for this decode (after the prompt pass's host draw).
        sampler: Option<(std::sync::Arc<DeviceSampler>, bool)>,
    },
}

impl<'m> Decoding<'m> {
    fn open(
        path: DecodePath,
        model: &'m Gpt2,
        rows: usize,
        columns: usize,
        device_draws: bool,
    ) -> Result<Self, GenerateError> {
        let mode = match path {
            DecodePath::Growing => return Ok(Self::Growing(model.new_cache(rows))),
            DecodePath::Static(mode) | DecodePath::StaticDrawnOnDevice(mode) => mode,
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
        let mut sampler = None;
        if let Some(d) = slot.as_mut() {
            let vocab = model.config().vocab_size;
            let tail = if device_draws {
                // The decoder's own when it fits: its graph already runs it.
                let s = match d.tail::<DeviceSampler>() {
                    Some(s) if s.batch() == rows && s.vocab() == vocab => s,
                    _ => std::sync::Arc::new(DeviceSampler::new(model.device(), rows, vocab)?),
                };
                sampler = Some((s.clone(), false));
                Some(s)
            } else {
                None
            };
            d.set_tail(tail);
        }
        Ok(Self::Static {
            slot,
            started: false,
            sampler,
        })
    }

    /// The next step: logits on the host, or on a device-drawing decode past
    /// its prompt pass, the ids the device drew.
    fn next(&mut self, model: &Gpt2, input: &TokenBatch) -> Result<Next, ForwardError> {
        if let Self::Static {
            slot,
            started: true,
            sampler: Some((sampler, _)),
        } = self
        {
            let Some(decoder) = slot.as_mut() else {
                return Err(ForwardError::Shape("static decoder missing".into()));
            };
            let drawn = decoder
                .step_on_device(model, input)
                .and_then(|()| Ok(sampler.take_ids()?));
            if let Err(e) = &drawn {
                if !matches!(e, ForwardError::ContextFull { .. }) {
                    **slot = None;
                }
            }
            return drawn.map(Next::Drawn);
        }
        self.next_logits(model, input).map(Next::Logits)
    }

    /// The device draw, once the prompt pass has run, and whether its state
    /// has been written for this decode (marked written from now on).
    fn device_sampler(&mut self) -> Option<(std::sync::Arc<DeviceSampler>, bool)> {
        match self {
            Self::Static {
                started: true,
                sampler: Some((s, written)),
                ..
            } => Some((s.clone(), std::mem::replace(written, true))),
            _ => None,
        }
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
            Self::Static { slot, started, .. } => {
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

    fn kernels(&self) -> Option<StepKernels> {
        match self {
            Self::Growing(_) => None,
            Self::Static { slot, .. } => slot.as_ref().map(StaticDecoder::kernels),
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

/// The caller's side of a decode that rows can join while it runs (the
/// engine's requests arriving mid-decode) and that reports each row as it
/// ends, so a request is answered when its own rows are done.
pub trait RowFeed {
    /// Rows that join now, between two steps: at most `free`, each with a
    /// prompt of at most `max_prompt_tokens` after the usual cut (a longer
    /// one is cut to it). They take the request's settings with their own
    /// seed and start. Asked on the growing-cache path only.
    fn admit(&mut self, free: usize, max_prompt_tokens: usize) -> Vec<RowStart>;
    /// Whether row `row` (numbered in admission order) was cancelled.
    fn cancelled(&self, row: usize) -> bool;
    /// A sampled token of row `ev.variation`.
    fn token(&mut self, ev: &TokenEvent);
    /// A row has ended (stop token, length, full context or cancelled).
    fn finished(&mut self, row: FinishedRow<'_>);
}

/// A row of a decode as it ends.
#[derive(Debug)]
pub struct FinishedRow<'a> {
    /// The row's number, in admission order (the first rows are the request's).
    pub row: usize,
    pub variation: &'a Variation,
    /// This row's own: prompt to first token from when it joined, decode
    /// steps and time after it; forward and sample time its share of the
    /// decode's.
    pub timings: GenerationTimings,
    /// The most rows decoded together while this row was live.
    pub batch_rows: usize,
    /// Bytes the KV cache held when it ended.
    pub kv_cache_bytes: usize,
    /// How the decode's steps ran, and their kernels (the static path only).
    pub step_runner: Option<StepRunner>,
    pub step_kernels: Option<StepKernels>,
    /// Whether the decode's steps drew their tokens on the device.
    pub device_draws: bool,
}

/// When a row joined, wrote its first token, and how many steps it decoded.
#[derive(Debug, Clone, Copy)]
struct RowClock {
    joined: Instant,
    first_token: Option<Instant>,
    steps: usize,
    batch_rows: usize,
}

impl RowClock {
    fn new(joined: Instant, batch_rows: usize) -> Self {
        Self {
            joined,
            first_token: None,
            steps: 0,
            batch_rows,
        }
    }
}

/// Every row's state: what it wrote, how it samples, what it has seen.
struct Rows<'r> {
    req: &'r GenerateRequest,
    out: Generation,
    samplers: Vec<TokenSampler>,
    streams: Vec<Utf8Stream>,
    contexts: Vec<Vec<u32>>,
    starts: Vec<String>,
    clocks: Vec<RowClock>,
    /// Rows that ended since the feed last heard of endings.
    ended: Vec<usize>,
    /// Set when the decode draws its tokens on the device (the prompt
    /// pass's first tokens then follow the device's definition on the host).
    device_draws: Option<DrawSettings>,
}

impl Rows<'_> {
    fn push(&mut self, prompt: Vec<u32>, sampler: TokenSampler, start: String, clock: RowClock) {
        self.out.variations.push(Variation {
            ids: Vec::new(),
            text: String::new(),
            stop: None,
            relaxed: Vec::new(),
        });
        self.samplers.push(sampler);
        self.streams.push(Utf8Stream::new());
        self.contexts.push(prompt);
        self.starts.push(start);
        self.clocks.push(clock);
    }

    fn live(&self, r: usize) -> bool {
        self.out.variations[r].stop.is_none()
    }

    /// Ends row `r` (if still live): the text's tail, the verse rules a
    /// finished poem relaxed.
    fn end(&mut self, r: usize, reason: StopReason) {
        let v = &mut self.out.variations[r];
        if v.stop.is_some() {
            return;
        }
        v.stop = Some(reason);
        let tail = self.streams[r].finish();
        v.text.push_str(&tail);
        if let Some((c, _)) = &self.req.constraint {
            if reason == StopReason::Stop && c.enforces_verse_rules() {
                v.relaxed = relaxed_rules(
                    &format!("{}{}", self.starts[r], v.text),
                    &c.form,
                    c.first_ruled_line(),
                );
            }
        }
        self.ended.push(r);
    }

    /// Row `r`'s next draw on the device's definition.
    fn draw_row(&self, r: usize, settings: DrawSettings) -> DrawRow {
        DrawRow {
            settings,
            seed: self.samplers[r].seed(),
            draw: u32::try_from(self.out.variations[r].ids.len()).unwrap_or(u32::MAX),
            active: self.live(r),
        }
    }

    /// The tokens row `r`'s form allows next, as bits over `vocab` (all
    /// without a form). Only for constraints that do not read the logits
    /// (verse rules do: those decodes draw on the host).
    fn allowed_bits(&self, r: usize, vocab: usize) -> Vec<u32> {
        let Some((c, _)) = &self.req.constraint else {
            return device_draw::all_allowed(vocab);
        };
        let mut probe = vec![0f32; vocab];
        c.apply(
            &format!("{}{}", self.starts[r], self.out.variations[r].text),
            &mut probe,
        );
        let allowed = probe.iter().enumerate().filter(|(_, l)| l.is_finite());
        device_draw::bits_of(allowed.map(|(i, _)| i as u32), vocab)
    }

    /// Before a device-drawing step: every batch row's draw, the allowed
    /// tokens when a form masks them, and at a decode's start what each row
    /// has seen.
    fn prepare_device(
        &self,
        decoding: &mut Decoding<'_>,
        slots: &[usize],
        vocab: usize,
    ) -> Result<(), GenerateError> {
        let (Some(settings), Some((sampler, written))) =
            (self.device_draws, decoding.device_sampler())
        else {
            return Ok(());
        };
        let draws: Vec<DrawRow> = slots.iter().map(|&r| self.draw_row(r, settings)).collect();
        if !written {
            let contexts: Vec<&[u32]> = slots.iter().map(|&r| &self.contexts[r][..]).collect();
            sampler.start(&draws, &contexts)?;
        }
        let allowed = self.req.constraint.as_ref().map(|_| {
            slots
                .iter()
                .flat_map(|&r| self.allowed_bits(r, vocab))
                .collect()
        });
        if written || allowed.is_some() {
            sampler.prepare(&draws, allowed)?;
        }
        Ok(())
    }

    /// Each live row's token from a step: drawn from its logits on the host
    /// (by the host sampler, or on the device's definition when the decode
    /// draws there), or as the device drew it.
    fn pick(&mut self, next: Next, slots: &[usize]) -> Vec<(usize, Result<u32, GenerateError>)> {
        match (next, self.device_draws) {
            (Next::Logits(l), None) => self.sample(slots.iter().copied().zip(l).collect()),
            (Next::Logits(l), Some(settings)) => {
                let vocab = l.first().map_or(0, Vec::len);
                slots
                    .iter()
                    .zip(&l)
                    .filter(|(&r, _)| self.live(r))
                    .map(|(&r, logits)| {
                        let seen = device_draw::bits_of(self.contexts[r].iter().copied(), vocab);
                        let allowed = self.allowed_bits(r, vocab);
                        let row = self.draw_row(r, settings);
                        let drawn = device_draw::draw_row(logits, &row, &seen, &allowed);
                        (r, drawn.map_err(GenerateError::from))
                    })
                    .collect()
            }
            (Next::Drawn(ids), _) => slots
                .iter()
                .zip(ids)
                .filter(|(&r, _)| self.live(r))
                .map(|(&r, id)| (r, device_draw::drawn(id).map_err(GenerateError::from)))
                .collect(),
        }
    }

    /// Samples the next token of each row that has logits (in parallel: each
    /// row has its own sampler and RNG stream, so the result is the same).
    fn sample(
        &mut self,
        logits: Vec<(usize, Vec<f32>)>,
    ) -> Vec<(usize, Result<u32, GenerateError>)> {
        let mut by_row: Vec<Option<Vec<f32>>> = vec![None; self.samplers.len()];
        for (r, l) in logits {
            by_row[r] = Some(l);
        }
        let (variations, starts, contexts) = (&self.out.variations, &self.starts, &self.contexts);
        let constraint = &self.req.constraint;
        let pick = |(r, (sampler, logits)): (usize, (&mut TokenSampler, Option<Vec<f32>>))| {
            let mut row_logits = logits?;
            if variations[r].stop.is_some() {
                return None;
            }
            if let Some((c, _)) = constraint {
                let written = format!("{}{}", starts[r], variations[r].text);
                c.apply(&written, &mut row_logits);
            }
            Some((r, sampler.sample(row_logits, &contexts[r])))
        };
        let live = by_row.iter().filter(|l| l.is_some()).count();
        if live > 1 {
            self.samplers
                .par_iter_mut()
                .zip(by_row)
                .enumerate()
                .filter_map(pick)
                .collect()
        } else {
            self.samplers
                .iter_mut()
                .zip(by_row)
                .enumerate()
                .filter_map(pick)
                .collect()
        }
    }

    /// Takes row `r`'s sampled `id`: ends the row on a stop token or at its
    /// length, else streams it. Returns whether the row goes on.
    fn accept<'t>(
        &mut self,
        r: usize,
        id: u32,
        token_bytes: &impl Fn(u32) -> &'t [u8],
        feed: &mut dyn RowFeed,
        now: Instant,
    ) -> bool {
        let clock = &mut self.clocks[r];
        match clock.first_token {
            None => clock.first_token = Some(now),
            Some(_) => clock.steps += 1,
        }
        if self.req.stop_ids.contains(&id) {
            self.end(r, StopReason::Stop);
            return false;
        }
        let text = self.streams[r].push(token_bytes(id));
        let v = &mut self.out.variations[r];
        v.text.push_str(&text);
        v.ids.push(id);
        self.contexts[r].push(id);
        feed.token(&TokenEvent {
            variation: r,
            id,
            text,
        });
        if self.out.variations[r].ids.len() >= self.req.max_new_tokens {
            self.end(r, StopReason::MaxTokens);
            return false;
        }
        true
    }

    /// Records in the answer what the decoding held and how its steps ran.
    fn note_decoding(&mut self, decoding: Option<&Decoding<'_>>) {
        if let Some(d) = decoding {
            self.out.kv_cache_bytes = d.cache_bytes();
            self.out.step_runner = d.runner();
            self.out.step_kernels = d.kernels();
        }
    }

    /// Tells the feed of the rows that ended since it last heard.
    fn report_ended(&mut self, feed: &mut dyn RowFeed, decoding: Option<&Decoding<'_>>) {
        // Called every step; most steps end no row.
        if self.ended.is_empty() {
            return;
        }
        let kv_cache_bytes = decoding.map_or(0, Decoding::cache_bytes);
        let step_runner = decoding.and_then(Decoding::runner);
        let step_kernels = decoding.and_then(Decoding::kernels);
        let now = Instant::now();
        let whole = &self.out.timings;
        for r in std::mem::take(&mut self.ended) {
            let c = self.clocks[r];
            let share = if whole.decode_steps > 0 {
                c.steps as f64 / whole.decode_steps as f64
            } else {
                0.0
            };
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            let timings = GenerationTimings {
                first_token_ms: c.first_token.map_or(0.0, |t| ms(c.joined, t)),
                decode_steps: c.steps,
                decode_ms: c.first_token.map_or(0.0, |t| ms(t, now)),
                forward_ms: whole.forward_ms * share,
                sample_ms: whole.sample_ms * share,
            };
            feed.finished(FinishedRow {
                row: r,
                variation: &self.out.variations[r],
                timings,
                batch_rows: c.batch_rows,
                kv_cache_bytes,
                step_runner: step_runner.clone(),
                step_kernels,
                device_draws: self.out.device_draws,
            });
        }
    }
}

impl<'r> Rows<'r> {
    /// The request's first rows, with `prompts` cut to the context.
    fn start(
        req: &'r GenerateRequest,
        prompts: &[Vec<u32>],
        started: Instant,
        device_draws: Option<DrawSettings>,
    ) -> Self {
        let first_rows = req.variations;
        let (prompt, truncated) = match req.rows.first() {
            Some(r) => (prompts[0].clone(), r.prompt_ids.len() - prompts[0].len()),
            None => (prompts[0].clone(), req.prompt_ids.len() - prompts[0].len()),
        };
        let mut rows = Rows {
            req,
            out: Generation {
                prompt_ids: prompt,
                truncated_prompt_tokens: truncated,
                variations: Vec::new(),
                timings: GenerationTimings::default(),
                kv_cache_bytes: 0,
                ids_without_text: 0,
                batch_rows: first_rows,
                step_runner: None,
                step_kernels: None,
                device_draws: device_draws.is_some(),
            },
            samplers: Vec::new(),
            streams: Vec::new(),
            contexts: Vec::new(),
            starts: Vec::new(),
            clocks: Vec::new(),
            ended: Vec::new(),
            device_draws,
        };
        let start_text = req
            .constraint
            .as_ref()
            .map(|c| c.1.clone())
            .unwrap_or_default();
        for (r, p) in prompts.iter().enumerate() {
            let (sampler, start) = match req.rows.get(r) {
                Some(row) => (row_sampler(req, row), row.start.clone()),
                None => (TokenSampler::new(&req.sampling, r), start_text.clone()),
            };
            rows.push(
                p.clone(),
                sampler,
                start,
                RowClock::new(started, first_rows),
            );
        }
        rows
    }
}

/// [`generate_rows`] with a [`RowFeed`]: on the growing-cache path (the
/// CPU's) rows that end leave the batch, and rows the feed admits between
/// steps join it, up to [`MAX_VARIATIONS`]; each row ends as it would have
/// alone. The result holds every row, in admission order.
pub fn generate_feeding<'t>(
    path: DecodePath,
    model: &Gpt2,
    req: &GenerateRequest,
    token_bytes: impl Fn(u32) -> &'t [u8],
    feed: &mut dyn RowFeed,
) -> Result<Generation, GenerateError> {
    validate_request(model, req)?;
    let n_positions = model.config().n_positions;
    // Keep room for the requested tokens. The caller reports the drop
    // (`truncated_prompt_tokens`); it is not logged here as well.
    let keep = prompt_tokens_kept_for(req, n_positions);
    let slides = slides_context(req);
    let rolling = path == DecodePath::Growing;
    let cut = |ids: &[u32]| ids[ids.len().saturating_sub(keep)..].to_vec();
    let first_rows = req.variations;
    let prompts: Vec<Vec<u32>> = if req.rows.is_empty() {
        vec![cut(&req.prompt_ids); first_rows]
    } else {
        req.rows.iter().map(|r| cut(&r.prompt_ids)).collect()
    };
    let started = Instant::now();
    let device_draws = path.device_draws(req, model.config().vocab_size);
    let mut rows = Rows::start(req, &prompts, started, device_draws);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let columns = static_columns(longest, req.max_new_tokens, n_positions);
    let on_device = rows.device_draws.is_some();
    let mut decoding = Some(Decoding::open(path, model, first_rows, columns, on_device)?);
    // Which row each batch row is (rows leave and join on the growing path).
    let mut slots: Vec<usize> = (0..first_rows).collect();
    // Rows that start from the same prompt (the variations of one request,
    // or requests that asked the same) share one prompt pass on the growing
    // path: each distinct prompt is computed once and its keys and values
    // copied to its rows. (Eight variations of a 3-token prompt were 24 rows,
    // past the packed kernel's limit: the weights widened for a GEMM.)
    let mut first_logits = None;
    if rolling {
        let mut distinct: Vec<Vec<u32>> = Vec::new();
        let of_row: Vec<usize> = prompts
            .iter()
            .map(|p| match distinct.iter().position(|d| d == p) {
                Some(i) => i,
                None => {
                    distinct.push(p.clone());
                    distinct.len() - 1
                }
            })
            .collect();
        if distinct.len() < prompts.len() {
            let (mut cache, logits) =
                prefill(model, &distinct).map_err(|e| fail(e.into(), rows.out.clone()))?;
            cache
                .select_rows(&of_row)
                .map_err(|e| fail(e.into(), rows.out.clone()))?;
            decoding = Some(Decoding::Growing(cache));
            first_logits = Some(of_row.iter().map(|&i| logits[i].clone()).collect());
        }
    }

    let mut input = TokenBatch::left_padded(&prompts, 0);
    let mut step = 0usize;
    let mut decode_started = None;
    loop {
        for &r in &slots {
            if rows.live(r) && feed.cancelled(r) {
                rows.end(r, StopReason::Cancelled);
            }
        }
        if slots.iter().all(|&r| !rows.live(r)) {
            break;
        }
        let forward_started = Instant::now();
        let Some(open) = decoding.as_mut() else {
            break;
        };
        rows.prepare_device(open, &slots, model.config().vocab_size)
            .map_err(|e| fail(e, rows.out.clone()))?;
        let next = match first_logits.take() {
            Some(l) => Ok(Next::Logits(l)),
            None => open.next(model, &input),
        };
        let next = match next {
            Ok(l) => l,
            Err(ForwardError::ContextFull { .. }) if slides => {
                // The form needs more tokens than the context holds: keep each
                // row's first token (the start) and the latest half of its
                // context, and go on from there (positions restart).
                let half = n_positions / 2;
                let tails: Vec<Vec<u32>> = slots
                    .iter()
                    .map(|&r| {
                        let c = &rows.contexts[r];
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
                decoding = Some(Decoding::open(
                    path,
                    model,
                    slots.len(),
                    columns,
                    on_device,
                )?);
                input = TokenBatch::left_padded(&tails, 0);
                continue;
            }
            Err(ForwardError::ContextFull { .. }) => {
                for &r in &slots {
                    rows.end(r, StopReason::ContextFull);
                }
                break;
            }
            Err(e) => return Err(fail(e.into(), rows.out)),
        };
        let sample_started = Instant::now();
        if step > 0 {
            rows.out.timings.forward_ms +=
                (sample_started - forward_started).as_secs_f64() * 1000.0;
        }
        let picks = rows.pick(next, &slots);
        if step > 0 {
            rows.out.timings.sample_ms += sample_started.elapsed().as_secs_f64() * 1000.0;
        }
        let now = Instant::now();
        let mut next: Vec<(usize, u32)> = Vec::with_capacity(slots.len());
        for (r, picked) in picks {
            match picked {
                Ok(id) => {
                    if rows.accept(r, id, &token_bytes, feed, now) {
                        next.push((r, id));
                    }
                }
                Err(e) => return Err(fail(e, rows.out)),
            }
        }
        if step == 0 {
            rows.out.timings.first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
            decode_started = Some(Instant::now());
        } else {
            rows.out.timings.decode_steps += 1;
        }
        step += 1;
        rows.report_ended(feed, decoding.as_ref());
        if rolling {
            let mut newcomers_ended = false;
            // Rows that ended leave the batch; others may join it.
            if let Some(Decoding::Growing(cache)) = decoding.as_mut() {
                let stay: Vec<bool> = slots.iter().map(|&r| rows.live(r)).collect();
                if stay.iter().any(|k| *k) {
                    cache
                        .retain_rows(&stay)
                        .map_err(|e| fail(e.into(), rows.out.clone()))?;
                    slots.retain(|&r| rows.live(r));
                }
                let free = MAX_VARIATIONS.saturating_sub(slots.len());
                if !slots.is_empty() && free > 0 {
                    let max_prompt = cache.len().min(keep);
                    let joining = feed.admit(free, max_prompt);
                    if !joining.is_empty() {
                        let joined = admit_rows(
                            model,
                            cache,
                            &mut rows,
                            &joining,
                            max_prompt,
                            feed,
                            &token_bytes,
                        )
                        .map_err(|e| fail(e, rows.out.clone()))?;
                        slots.extend(joined.iter().map(|(r, _)| *r));
                        next.extend(
                            joined
                                .into_iter()
                                .filter_map(|(r, id)| id.map(|id| (r, id))),
                        );
                        newcomers_ended = true;
                    }
                }
            }
            if newcomers_ended {
                rows.report_ended(feed, decoding.as_ref());
            }
            {
                let batch = slots.len();
                for &r in &slots {
                    let c = &mut rows.clocks[r];
                    c.batch_rows = c.batch_rows.max(batch);
                }
                rows.out.batch_rows = rows.out.batch_rows.max(batch);
            }
        }
        if next.is_empty() {
            break;
        }
        // One input per batch row; a row that ended this step (on the static
        // path, where nobody leaves) is fed a masked placeholder.
        let mut ids = vec![0u32; slots.len()];
        let mut live = vec![false; slots.len()];
        for (r, id) in next {
            if let Some(s) = slots.iter().position(|&x| x == r) {
                ids[s] = id;
                live[s] = true;
            }
        }
        input = TokenBatch::step(ids, live);
    }
    if let Some(t) = decode_started {
        rows.out.timings.decode_ms = t.elapsed().as_secs_f64() * 1000.0;
    }
    rows.note_decoding(decoding.as_ref());
    rows.report_ended(feed, decoding.as_ref());
    Ok(rows.out)
}

/// `prompts` (left-padded) through the model in a cache of their own: the
/// cache and each row's logits after its last token.
fn prefill(model: &Gpt2, prompts: &[Vec<u32>]) -> Result<(KvCache, Vec<Vec<f32>>), ForwardError> {
    let mut cache = model.new_cache(prompts.len());
    let batch = TokenBatch::left_padded(prompts, 0);
    // On a rayon worker on the CPU, as the decode's steps (see `next_logits`).
    let logits = if model.device().is_cpu() {
        rayon::scope(|_| model.forward_last(&batch, &mut cache))
    } else {
        model.forward_last(&batch, &mut cache)
    }?;
    let logits = logits
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    Ok((cache, logits))
}

/// The sampler of a joined row: the request's settings with the row's seed,
/// as variation `variation` of it.
fn row_sampler(req: &GenerateRequest, row: &RowStart) -> TokenSampler {
    let sampling = SamplingParams {
        seed: row.seed,
        ..req.sampling.clone()
    };
    TokenSampler::new(&sampling, row.variation)
}

/// Prefills `joining` together in a cache of their own (their prompts cut to
/// `max_prompt` tokens), appends it to `cache`, and samples each one's first
/// token. Returns each new row with that token when the row goes on.
fn admit_rows<'t>(
    model: &Gpt2,
    cache: &mut KvCache,
    rows: &mut Rows<'_>,
    joining: &[RowStart],
    max_prompt: usize,
    feed: &mut dyn RowFeed,
    token_bytes: &impl Fn(u32) -> &'t [u8],
) -> Result<Vec<(usize, Option<u32>)>, GenerateError> {
    let joined = Instant::now();
    let prompts: Vec<Vec<u32>> = joining
        .iter()
        .map(|j| j.prompt_ids[j.prompt_ids.len().saturating_sub(max_prompt)..].to_vec())
        .collect();
    let (fresh, logits) = prefill(model, &prompts)?;
    cache.admit(fresh)?;
    let first = rows.samplers.len();
    for (j, p) in joining.iter().zip(prompts) {
        let clock = RowClock::new(joined, cache.batch());
        rows.push(p, row_sampler(rows.req, j), j.start.clone(), clock);
    }
    let picks = rows.sample((first..).zip(logits).collect());
    let mut out = Vec::with_capacity(picks.len());
    for (r, picked) in picks {
        let id = picked?;
        let goes_on = rows.accept(r, id, token_bytes, feed, Instant::now());
        out.push((r, goes_on.then_some(id)));
    }
    Ok(out)
}

/// The verse rules a finished poem breaks, as the checker finds them.
/// The rules a finished poem breaks from line `first_ruled` (1-based) on.
/// Free verse (first ruled line 2) that took no regulated shape was never
/// held to them.
fn relaxed_rules(
    poem: &str,
    form: &forms::PoemForm,
    first_ruled: usize,
) -> Vec<crate::poetry::Relaxed> {
    if first_ruled > 1 && forms::regular_form(poem).is_none() {
        return Vec::new();
    }
    crate::poetry::check_in_form(poem, form)
        .problems
        .into_iter()
        .filter(|p| p.line >= first_ruled)
        .map(|p| crate::poetry::Relaxed {
            line: p.line,
            column: p.column,
            rule: p.rule.label().to_string(),
        })
        .collect()
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

#[cfg(test)]
mod tests;
