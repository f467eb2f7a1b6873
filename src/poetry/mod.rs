//! The poem domain: forms (free, 絕句, 律詩, acrostic), their line layouts,
//! and the constraints that enforce them while decoding. Knows characters and
//! token strings, not tensors or devices.
//!
//! Layers, bottom to top (a file uses only those before it; checked by
//! `tests/architecture.rs`):
//! layers: rhyme, tonal, text, cilin, tunes, forms, report, check_ci, check, rules, keywords, ci_rhyme, constraint, keyword_form
//!
//! - `rhyme`, `tonal`: the 平水韻 and the tone templates;
//! - `text`: punctuation, 漢字, lines; `cilin`: the 詞林正韻's 部;
//! - `tunes`: the 詞 tunes; `forms`: [`forms::PoemForm`] and its layout;
//! - `report`, `check_ci`, `check`: the checker and what it reports;
//! - `rules`: the verse rules (tones, rhyme) a decoder keeps; `keywords`: the
//!   keyword planner; `ci_rhyme`: a 詞's rhymes and tones while decoding;
//! - `constraint`: [`constraint::FormConstraint`], the form enforced while
//!   decoding; `keyword_form`: keywords held by it.
pub mod check;
pub mod check_ci;
pub mod ci_rhyme;
pub mod cilin;
pub mod constraint;
pub mod forms;
mod keyword_form;
pub mod keywords;
pub mod report;
pub mod rhyme;
pub mod rules;
pub mod text;
pub mod tonal;
pub mod tunes;

pub use check::{check_in_form, check_poem};
pub use report::{CheckReport, Problem, Rule};
pub use rules::{Relaxed, Repeats, RulesMode, VerseRules};
pub use tonal::TemplateStart;
