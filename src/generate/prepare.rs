//! The one place a request becomes a [`GenerateRequest`]: prompt text or ids to
//! token ids (simplified characters mapped, an empty prompt started from the
//! tokenizer's start id, then the config's `bos_token_id`), the poem form's
//! constraint, and the stop ids. The engine runs it for the window and the
//! command line alike, so both produce the same ids for the same settings.

use std::path::PathBuf;

use super::{
    form_constraint, keyword_prefix, poem_prompt, vocab_chars, GenerateRequest, SamplingParams,
};
use crate::model::LoadedModel;
use crate::poetry::constraint::FormConstraint;
use crate::poetry::forms::PoemForm;
use crate::poetry::{Repeats, RulesMode, VerseRules};

/// A prompt as text (tokenized with the model's tokenizer) or as token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Why a request could not be prepared for a model.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The prompt or form cannot be expressed with this model's vocabulary.
    #[error("{0}")]
    BadRequest(String),
    /// A text prompt for a model folder without a tokenizer.
    #[error("{dir}: no tokenizer.json or vocab.txt, so text prompts cannot be encoded; pass token ids (--prompt-ids)")]
    NoTokenizer { dir: PathBuf },
}

/// What to generate, before it meets a model.
#[derive(Debug, Clone)]
pub struct RequestSettings<'a> {
    pub prompt: &'a Prompt,
    pub form: &'a PoemForm,
    pub variations: usize,
    pub max_new_tokens: usize,
    pub sampling: &'a SamplingParams,
    /// Rhyme and tones for the regulated forms.
    pub verse: &'a VerseRules,
}

/// Builds the request `settings` describe for `model`.
pub fn prepare_request(
    model: &LoadedModel,
    settings: &RequestSettings,
) -> Result<GenerateRequest, PrepareError> {
    let tok = model.tokenizer.as_ref();
    let bad = |e: &dyn std::fmt::Display| PrepareError::BadRequest(e.to_string());
    let mut constraint = None;
    let mut prompt_ids = match settings.prompt {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(text) => match tok {
            Some(t) if *settings.form != PoemForm::Free => {
                let (ids, c) =
                    poem_prompt(t, text, settings.form, settings.verse).map_err(|e| bad(&e))?;
                constraint = c;
                ids
            }
            Some(t) if !settings.verse.keywords.is_empty() => {
                // Free verse with keywords: refusals say why (see
                // `FormConstraint::hold_keywords`).
                let start = t.to_vocab_chars(text.trim());
                let c = form_constraint(t, &PoemForm::Free, settings.verse, &start)
                    .map_err(|e| bad(&e))?;
                constraint = Some((c, start));
                let mut ids = t.prompt_ids(text).map_err(|e| bad(&e))?;
                if let Some(prefix) = keyword_prefix(t, &settings.verse.keywords) {
                    let after_start =
                        usize::from(!ids.is_empty() && ids.first() == t.start_id().as_ref());
                    let prefix = t.encode(&prefix).map_err(|e| bad(&e))?;
                    ids.splice(after_start..after_start, prefix);
                }
                ids
            }
            Some(t) => {
                let ids = t.prompt_ids(text).map_err(|e| bad(&e))?;
                // Free verse gets the repeat guard and, under strict rules, the
                // rules of the shape its first line sets (where the vocabulary
                // has the marks and a stop; elsewhere it decodes unconstrained).
                if settings.verse.repeats == Repeats::Guard
                    || settings.verse.mode == RulesMode::Strict
                {
                    constraint = FormConstraint::with_chars(
                        PoemForm::Free,
                        vocab_chars(t),
                        t.stop_ids().first().copied(),
                        settings.verse,
                    )
                    .ok()
                    .map(|c| (c, t.to_vocab_chars(text.trim())));
                }
                ids
            }
            None => {
                return Err(PrepareError::NoTokenizer {
                    dir: model.files.dir.clone(),
                })
            }
        },
    };
    let cfg = &model.config;
    let in_vocab = |id: &u32| (*id as usize) < cfg.vocab_size;
    if prompt_ids.is_empty() {
        let bos = cfg.bos_token_id.filter(in_vocab);
        prompt_ids.extend(tok.and_then(|t| t.start_id()).or(bos));
    }
    let stop_ids = match tok {
        Some(t) => t.stop_ids().to_vec(),
        None => cfg.eos_token_id.filter(in_vocab).into_iter().collect(),
    };
    // A form that fixes every line (a 詞 tune can run to 120 characters) gets
    // the tokens it needs, whatever the length setting says: one per
    // character and mark, one for the stop.
    let form_tokens = constraint
        .as_ref()
        .map_or(0, |(c, _): &(FormConstraint, String)| c.planned_tokens());
    Ok(GenerateRequest {
        prompt_ids,
        variations: settings.variations,
        max_new_tokens: settings.max_new_tokens.max(form_tokens),
        sampling: settings.sampling.clone(),
        stop_ids,
        constraint,
        rows: Vec::new(),
    })
}
