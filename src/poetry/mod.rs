//! The poem domain: forms (free, 絕句, 律詩, acrostic), their line layouts,
//! and the constraints that enforce them while decoding. Knows characters and
//! token strings, not tensors or devices.

pub mod check;
pub mod ci_rhyme;
pub mod forms;
mod keyword_form;
pub mod keywords;
pub mod rhyme;
pub mod rules;
pub mod tonal;
pub mod tunes;

pub use check::{check_in_form, check_poem, CheckReport, Problem, Rule};
pub use rules::{Relaxed, Repeats, RulesMode, VerseRules};
pub use tonal::TemplateStart;
