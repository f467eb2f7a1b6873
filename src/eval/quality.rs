//! `versifier bench --quality`: how good the poems are. For free-form samples
//! and for each constrained form (rules strict and rules off, same seeds):
//! well-formed share, rhyme kept, tones kept, both (by [`crate::poetry::check_poem`]),
//! distinct-2, and the fluency cost of the rules: the mean log-probability per
//! generated token, under the model with no mask, of the strict samples
//! against the unconstrained ones. With a corpus, held-out perplexity against a
//! bigram baseline.

use std::path::PathBuf;

use candle_core::D;
use serde::Serialize;

use super::bench::BenchError;
use crate::device::{open_device, DeviceChoice};
use crate::generate::{
    generate, poem_prompt, GenerateError, GenerateRequest, SamplingParams, StopReason,
};
use crate::model::{load_model, Gpt2, LoadError, LoadedModel, TokenBatch};
use crate::poetry::forms::{regular_form, satisfies, PoemForm};
use crate::poetry::{check_in_form, check_poem, VerseRules};

/// The one-character prompts of the quality benchmark.
pub const QUALITY_PROMPTS: [&str; 20] = [
    "春", "夏", "秋", "冬", "月", "風", "花", "雪", "山", "水", "雲", "雨", "江", "柳", "夜", "酒",
    "鄉", "舟", "鶴", "松",
];

/// The constrained forms measured.
pub const QUALITY_FORMS: [&str; 6] = [
    "wujue",
    "qijue",
    "wulv",
    "qilv",
    "acrostic:春夏秋冬",
    "acrostic:風花雪月",
];

/// Options of `versifier bench --quality`.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    pub model: PathBuf,
    pub device: DeviceChoice,
    /// Free-form samples per prompt (200 in all with the 20 prompts).
    pub samples_per_prompt: usize,
    /// Samples per constrained form (each drawn with rules strict and off).
    pub constrained_samples: usize,
    pub seed: u64,
    /// A corpus folder (`train.txt`, `eval.txt`) to measure held-out perplexity on.
    pub corpus: Option<PathBuf>,
    /// The constrained forms measured ([`QUALITY_FORMS`] when empty); a 詞
    /// (`ci:浣溪沙`) is judged by its tune's rhymes.
    pub forms: Vec<PoemForm>,
}

/// Rhyme and tones over a set of samples.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VerseFigure {
    pub samples: usize,
    /// Samples of the requested shape that ended with the stop token.
    pub well_formed: usize,
    /// Of the well-formed: rhyme kept, tones kept, both (by the checker).
    pub rhyme_kept: usize,
    pub tones_kept: usize,
    pub both: usize,
    pub both_fraction: f64,
    /// Distinct character bigrams / all bigrams.
    pub distinct_2: f64,
    /// Characters per poem that repeat one already in it (ideographs: count
    /// minus distinct), the mean over samples.
    pub repeated_chars_per_poem: f64,
    /// Mean log-probability per generated token under the model with no mask.
    pub mean_logprob: f64,
}

#[derive(Debug, Serialize)]
pub struct FormFigure {
    pub form: String,
    pub strict: VerseFigure,
    pub off: VerseFigure,
    /// `off.mean_logprob - strict.mean_logprob`, nats per token.
    pub fluency_cost: f64,
    /// Positions the decoder relaxed in the strict samples (see poetry::rules).
    pub relaxed_positions: usize,
    pub examples: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct QualityReport {
    pub model: String,
    pub settings: String,
    /// Free-form samples: `well_formed` counts regular verse (4 or 8 lines of 5
    /// or 7, `，`/`。` alternating, no repeated line) ended by the stop token;
    /// rhyme and tones are judged on those. Drawn without the repeat guard.
    pub free: VerseFigure,
    /// The same prompts and seeds with the repeat guard, rules off: what the
    /// model writes by itself, the measure to compare models by.
    pub free_guarded: VerseFigure,
    /// The same with the repeat guard and strict rules (the default): the
    /// rules of the shape the first line sets hold from line 2 on.
    pub free_ruled: VerseFigure,
    pub constrained: Vec<FormFigure>,
    /// Over the four regulated forms (acrostics aside), rules strict.
    pub regulated_strict: VerseFigure,
    /// The same with rules off.
    pub regulated_off: VerseFigure,
    /// Mean of the forms' fluency costs, nats per token.
    pub fluency_cost: f64,
    pub held_out_perplexity: Option<f64>,
    pub bigram_perplexity: Option<f64>,
    pub examples: Vec<String>,
}

/// One generated sample: its full text (prompt included) and ids.
#[derive(Clone)]
pub(super) struct Sample {
    pub(super) text: String,
    pub(super) prompt_ids: Vec<u32>,
    pub(super) ids: Vec<u32>,
    pub(super) finished: bool,
}

pub(super) fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        greedy: false,
        temperature: 0.8,
        top_k: 40,
        top_p: 1.0,
        repetition_penalty: 1.0,
        seed,
    }
}

/// Mean log-probability per generated token of `s` under `model`, unmasked:
/// of the tokens within the model's context (a 詞 longer than it is scored on
/// its first `n_positions` tokens).
pub(super) fn mean_logprob(model: &Gpt2, s: &Sample) -> Result<f64, BenchError> {
    let room = model
        .config()
        .n_positions
        .saturating_sub(s.prompt_ids.len());
    let ids = &s.ids[..s.ids.len().min(room)];
    if ids.is_empty() {
        return Ok(0.0);
    }
    let all: Vec<u32> = s.prompt_ids.iter().chain(ids).copied().collect();
    let fail = |e: candle_core::Error| BenchError::Generate(GenerateError::Candle(e));
    let mut cache = model.new_cache(1);
    let batch = TokenBatch::left_padded(std::slice::from_ref(&all), 0);
    let logits = model
        .forward(&batch, &mut cache)
        .map_err(|e| BenchError::Generate(e.into()))?; // (1, T, V)
    let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).map_err(fail)?, D::Minus1)
        .map_err(fail)?
        .to_dtype(candle_core::DType::F32)
        .map_err(fail)?
        .to_vec2::<f32>()
        .map_err(fail)?; // (T, V)
    let p = s.prompt_ids.len();
    let total: f64 = ids
        .iter()
        .enumerate()
        .map(|(k, &id)| f64::from(logp[p + k - 1][id as usize]))
        .sum();
    Ok(total / ids.len() as f64)
}

pub(super) fn repeated_chars_per_poem<'a>(texts: impl Iterator<Item = &'a str>) -> f64 {
    let (mut repeated, mut poems) = (0usize, 0usize);
    for t in texts {
        let hanzi: Vec<char> = t
            .chars()
            .filter(|c| crate::poetry::text::is_hanzi(*c))
            .collect();
        let distinct: std::collections::HashSet<&char> = hanzi.iter().collect();
        repeated += hanzi.len() - distinct.len();
        poems += 1;
    }
    repeated as f64 / poems.max(1) as f64
}

pub(super) fn distinct_2<'a>(texts: impl Iterator<Item = &'a str>) -> f64 {
    let mut bigrams = std::collections::HashSet::new();
    let mut total = 0usize;
    for t in texts {
        let chars: Vec<char> = t.chars().collect();
        for w in chars.windows(2) {
            bigrams.insert((w[0], w[1]));
            total += 1;
        }
    }
    bigrams.len() as f64 / total.max(1) as f64
}

/// Figures over `samples`; `keeps_form` says which are well-formed, and
/// `form` (when constrained) how they are checked.
fn figure(
    model: &Gpt2,
    samples: &[Sample],
    form: Option<&PoemForm>,
    keeps_form: impl Fn(&str) -> bool,
) -> Result<VerseFigure, BenchError> {
    let mut f = VerseFigure {
        samples: samples.len(),
        ..VerseFigure::default()
    };
    let mut logprob = 0.0;
    for s in samples {
        logprob += mean_logprob(model, s)?;
        if !(s.finished && keeps_form(&s.text)) {
            continue;
        }
        f.well_formed += 1;
        let r = form.map_or_else(|| check_poem(&s.text), |form| check_in_form(&s.text, form));
        f.rhyme_kept += usize::from(r.rhyme_kept);
        f.tones_kept += usize::from(r.tones_kept);
        f.both += usize::from(r.rhyme_kept && r.tones_kept);
    }
    f.both_fraction = f.both as f64 / f.samples.max(1) as f64;
    f.distinct_2 = distinct_2(samples.iter().map(|s| s.text.as_str()));
    f.repeated_chars_per_poem = repeated_chars_per_poem(samples.iter().map(|s| s.text.as_str()));
    f.mean_logprob = logprob / samples.len().max(1) as f64;
    Ok(f)
}

/// Sums figures (the means weighted by samples).
fn merge(figures: &[&VerseFigure], texts: &[&Sample]) -> VerseFigure {
    let mut f = VerseFigure::default();
    let mut logprob = 0.0;
    for g in figures {
        f.samples += g.samples;
        f.well_formed += g.well_formed;
        f.rhyme_kept += g.rhyme_kept;
        f.tones_kept += g.tones_kept;
        f.both += g.both;
        logprob += g.mean_logprob * g.samples as f64;
    }
    f.both_fraction = f.both as f64 / f.samples.max(1) as f64;
    f.mean_logprob = logprob / f.samples.max(1) as f64;
    f.distinct_2 = distinct_2(texts.iter().map(|s| s.text.as_str()));
    f.repeated_chars_per_poem = repeated_chars_per_poem(texts.iter().map(|s| s.text.as_str()));
    f
}

/// One batch: `variations` samples of `prompt_ids` (their text starting with
/// `start`), and how many positions the verse rules relaxed.
pub(super) fn sample_batch(
    loaded: &LoadedModel,
    tok: &crate::model::TextTokenizer,
    (prompt_ids, constraint): (Vec<u32>, Option<crate::generate::FormStart>),
    start: &str,
    variations: usize,
    seed: u64,
) -> Result<(Vec<Sample>, usize), BenchError> {
    // A form that fixes every line gets the tokens it needs (a 詞 tune can
    // run to 140), as requests do.
    let max_new_tokens = constraint
        .as_ref()
        .map_or(80, |(c, _)| c.planned_tokens().max(80));
    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        variations,
        max_new_tokens,
        sampling: sampling(seed),
        stop_ids: tok.stop_ids().to_vec(),
        constraint,
        rows: Vec::new(),
    };
    let g = generate(
        &loaded.model,
        &req,
        |id| tok.token_bytes(id),
        &|| false,
        |_| {},
    )?;
    let relaxed = g.variations.iter().map(|v| v.relaxed.len()).sum();
    let samples = g
        .variations
        .into_iter()
        .map(|v| Sample {
            text: format!("{start}{}", v.text),
            prompt_ids: prompt_ids.clone(),
            finished: v.stop == Some(StopReason::Stop),
            ids: v.ids,
        })
        .collect();
    Ok((samples, relaxed))
}

/// `n` samples of `form` from the quality prompts, rules as `verse` says.
fn constrained_samples(
    loaded: &LoadedModel,
    form: &PoemForm,
    form_index: usize,
    verse: &VerseRules,
    opts: &QualityOptions,
) -> Result<(Vec<Sample>, usize), BenchError> {
    let tok = tokenizer(loaded, opts)?;
    let mut out = Vec::new();
    let mut relaxed = 0usize;
    while out.len() < opts.constrained_samples {
        let n = (opts.constrained_samples - out.len()).min(crate::generate::MAX_VARIATIONS);
        let prompt = QUALITY_PROMPTS[(form_index + out.len()) % QUALITY_PROMPTS.len()];
        let (ids, constraint) = poem_prompt(tok, prompt, form, verse)?;
        let start = constraint
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let seed = opts.seed + 7919 * (form_index as u64 + 1) + out.len() as u64;
        let (samples, r) = sample_batch(loaded, tok, (ids, constraint), &start, n, seed)?;
        out.extend(samples);
        relaxed += r;
    }
    Ok((out, relaxed))
}

pub(super) fn tokenizer<'m>(
    loaded: &'m LoadedModel,
    opts: &QualityOptions,
) -> Result<&'m crate::model::TextTokenizer, BenchError> {
    loaded.tokenizer.as_ref().ok_or_else(|| {
        BenchError::Load(LoadError::NoWeights {
            path: opts.model.clone(),
            problem: "the quality benchmark needs a tokenizer".into(),
        })
    })
}

/// Free-form samples of the quality prompts: unconstrained without `verse`,
/// else under its rules and repeat guard.
fn free_samples(
    loaded: &LoadedModel,
    opts: &QualityOptions,
    verse: Option<&VerseRules>,
) -> Result<Vec<Sample>, BenchError> {
    let tok = tokenizer(loaded, opts)?;
    let guard = |verse: &VerseRules| {
        crate::poetry::constraint::FormConstraint::with_chars(
            PoemForm::Free,
            crate::generate::vocab_chars(tok),
            tok.stop_ids().first().copied(),
            verse,
        )
        .ok()
    };
    let mut out = Vec::new();
    for (pi, prompt) in QUALITY_PROMPTS.iter().enumerate() {
        let ids = tok.prompt_ids(prompt).map_err(|e| GenerateError::Invalid {
            field: "prompt",
            problem: e.to_string(),
        })?;
        let mut left = opts.samples_per_prompt;
        let mut batch_no = 0u64;
        while left > 0 {
            let n = left.min(crate::generate::MAX_VARIATIONS);
            let seed = opts.seed + 1000 * pi as u64 + 100 * batch_no;
            let constraint = verse
                .and_then(guard)
                .map(|c| (c, tok.to_vocab_chars(prompt)));
            let (samples, _) =
                sample_batch(loaded, tok, (ids.clone(), constraint), prompt, n, seed)?;
            out.extend(samples);
            left -= n;
            batch_no += 1;
        }
    }
    Ok(out)
}

/// Samples poems and measures them (see the module doc).
pub fn run_quality(opts: &QualityOptions) -> Result<QualityReport, BenchError> {
    let device = open_device(opts.device)?;
    let loaded = load_model(&opts.model, &device, candle_core::DType::F32)?;
    let model = &loaded.model;
    let regular = |t: &str| regular_form(t).is_some();
    let free = free_samples(&loaded, opts, None)?;
    let free_figure = figure(model, &free, None, regular)?;
    // Rules off keeps the repeat guard (its default).
    let free_guarded = free_samples(&loaded, opts, Some(&VerseRules::off()))?;
    let free_guarded = figure(model, &free_guarded, None, regular)?;
    let free_ruled = free_samples(&loaded, opts, Some(&VerseRules::default()))?;
    let free_ruled = figure(model, &free_ruled, None, regular)?;
    let mut constrained = Vec::new();
    let mut regulated: Vec<(VerseFigure, VerseFigure)> = Vec::new();
    let mut regulated_texts: (Vec<Sample>, Vec<Sample>) = (Vec::new(), Vec::new());
    let forms: Vec<PoemForm> = if opts.forms.is_empty() {
        QUALITY_FORMS
            .iter()
            .filter_map(|f| f.parse::<PoemForm>().ok())
            .collect()
    } else {
        opts.forms.clone()
    };
    for (fi, form) in forms.into_iter().enumerate() {
        let (strict, relaxed) =
            constrained_samples(&loaded, &form, fi, &VerseRules::default(), opts)?;
        let (off, _) = constrained_samples(&loaded, &form, fi, &VerseRules::off(), opts)?;
        let keeps = |t: &str| satisfies(t, &form);
        let sf = figure(model, &strict, Some(&form), keeps)?;
        let of = figure(model, &off, Some(&form), keeps)?;
        if matches!(
            form,
            PoemForm::WuJue | PoemForm::QiJue | PoemForm::WuLv | PoemForm::QiLv
        ) {
            regulated.push((sf.clone(), of.clone()));
            regulated_texts.0.extend(strict.iter().cloned());
            regulated_texts.1.extend(off.iter().cloned());
        }
        constrained.push(FormFigure {
            form: form.to_string(),
            fluency_cost: of.mean_logprob - sf.mean_logprob,
            strict: sf,
            off: of,
            relaxed_positions: relaxed,
            examples: strict.iter().take(2).map(|s| s.text.clone()).collect(),
        });
    }
    let strict_refs: Vec<&VerseFigure> = regulated.iter().map(|(s, _)| s).collect();
    let off_refs: Vec<&VerseFigure> = regulated.iter().map(|(_, o)| o).collect();
    let (held_out, bigram) = match &opts.corpus {
        Some(dir) => {
            let (m, b) = crate::train::held_out_perplexity(
                model,
                &loaded.files.dir.join("vocab.txt"),
                dir,
                loaded.config.n_positions,
            )
            .map_err(|e| BenchError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            (Some(m), Some(b))
        }
        None => (None, None),
    };
    let fluency_cost =
        constrained.iter().map(|f| f.fluency_cost).sum::<f64>() / constrained.len().max(1) as f64;
    Ok(QualityReport {
        model: opts.model.display().to_string(),
        settings: "temperature 0.8, top-k 40, no top-p, no repetition penalty, 80 tokens max \
                   (or what a form of fixed lines needs); \
                   constrained forms drawn with rules strict and off from the same seeds"
            .into(),
        regulated_strict: merge(&strict_refs, &regulated_texts.0.iter().collect::<Vec<_>>()),
        regulated_off: merge(&off_refs, &regulated_texts.1.iter().collect::<Vec<_>>()),
        free: free_figure,
        free_guarded,
        free_ruled,
        constrained,
        fluency_cost,
        held_out_perplexity: held_out,
        bigram_perplexity: bigram,
        examples: free
            .iter()
            .step_by(opts.samples_per_prompt.max(1))
            .take(6)
            .map(|s| s.text.clone())
            .collect(),
    })
}
