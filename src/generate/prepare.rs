//! The one place a request becomes a [`GenerateRequest`]: prompt text or ids to
//! token ids (simplified characters mapped, an empty prompt started from the
//! tokenizer's start id, then the config's `bos_token_id`), the poem form's
//! constraint, and the stop ids. The engine runs it for the window and the
//! command line alike, so both produce the same ids for the same settings.

use std::path::PathBuf;

use super::{
    acrostic_keeps, check_heads, check_start, keyword_prefix, vocab_keywords, GenerateError,
    GenerateRequest, SamplingParams,
};
use crate::model::LoadedModel;
use crate::poetry::constraint::FormConstraint;
use crate::poetry::forms::PoemForm;
use crate::poetry::{constraint, forms};
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
