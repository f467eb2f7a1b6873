//! The form enforced while decoding: [`FormConstraint`] masks the logits so
//! each token keeps the form's line lengths and marks, and, under strict
//! rules, its rhyme and tones (through [`super::rules`] and
//! [`super::ci_rhyme`]), the keywords' places, and the repeat guard.
//!
//! Owns: the constraint's state per row. Must not: know tensors or devices.

use super::forms::{next_place, next_token_in, NextToken, Pin, PoemForm};
use super::rules::{Repeats, RulesError, RulesMode, TokenTones, ToneRules, VerseRules};
use super::text::{is_hanzi, COMMA, PERIOD};

/// A form turned into token ids for one tokenizer: which ids are single
/// ideographs, which are the two marks and the stop.
#[derive(Debug, Clone)]
pub struct FormConstraint {
    pub form: PoemForm,
    pub(super) chars: std::sync::Arc<VocabChars>,
    stop: u32,
    /// Rhyme and tones, when the rules are strict and the form is regulated.
    pub(super) rules: Option<ToneRules>,
    /// No character three times in a row, no line twice.
    repeats: Repeats,
    /// `form.line_plan()`, worked out once for the request.
    pub(super) plan: Option<Vec<(usize, char)>>,
    /// Free verse under strict rules: the rules of the shape its first line
    /// chooses.
    pub(super) free: Option<Box<FreeVerseRules>>,
    /// A 詞 under strict rules: its tune's rhymes and 詞譜.
    pub(super) ci: Option<super::ci_rhyme::CiRhymeRules>,
    /// Keyword characters held at their places
    /// (`FormConstraint::hold_keywords`, in `keyword_form.rs`).
    pub(super) pins: Vec<Pin>,
    /// Free verse given keywords: `plan` is eight lines, and the poem may end
    /// after four.
    pub(super) may_end_after_four: bool,
}

/// Free verse under strict rules. The model chooses the shape with its first
/// line: closed by `，` after 5 or 7 characters, it makes the poem a 絕句 or
/// 律詩 of that length (the model still chooses 4 or 8 lines: the stop stays
/// open after the fourth), and from then on the poem keeps that shape and its
/// rhyme and tones, following the templates its first line fits best. The
/// first line itself is the model's (its length is not known while it is
/// written), but for a 平起 / 仄起 asked for, which fixes its second
/// character's tone at either length. Any other first line leaves the poem
/// free.
#[derive(Debug, Clone)]
pub(super) struct FreeVerseRules {
    /// 五言: eight lines of five, and their rules.
    five: (Vec<(usize, char)>, ToneRules),
    /// 七言: eight lines of seven, and their rules.
    seven: (Vec<(usize, char)>, ToneRules),
    /// Whether a 平起 or 仄起 was asked for.
    start_set: bool,
}

impl FreeVerseRules {
    fn new(verse: &VerseRules, tones: &std::sync::Arc<TokenTones>) -> Result<Self, RulesError> {
        let shape = |chars: usize| -> Result<(Vec<(usize, char)>, ToneRules), RulesError> {
            let plan = PoemForm::from_shape(8, chars)
                .and_then(|f| f.line_plan())
                .unwrap_or_default();
            Ok((
                plan,
                ToneRules::new(8, chars, verse, std::sync::Arc::clone(tones))?,
            ))
        };
        Ok(Self {
            five: shape(5)?,
            seven: shape(7)?,
            start_set: verse.template != super::tonal::TemplateStart::Any,
        })
    }
}

/// Where free verse stands: its first line still open (`column` characters
/// in), a regulated shape of `chars` characters a line, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FreeShape {
    FirstLine {
        column: usize,
    },
    Regulated {
        chars: usize,
        lines_closed: usize,
        column: usize,
    },
    Irregular,
}

/// The shape `written` (the poem so far, prompt included) has taken.
fn free_shape(written: &str) -> FreeShape {
    let (mut closed, mut col, mut chars) = (0usize, 0usize, None);
    for c in written.chars() {
        if c == COMMA || c == PERIOD {
            if closed == 0 {
                if c != COMMA || !matches!(col, 5 | 7) {
                    return FreeShape::Irregular;
                }
                chars = Some(col);
            }
            closed += 1;
            col = 0;
        } else if is_hanzi(c) {
            col += 1;
        } else {
            return FreeShape::Irregular;
        }
    }
    match chars {
        Some(chars) => FreeShape::Regulated {
            chars,
            lines_closed: closed,
            column: col,
        },
        None if col <= 7 => FreeShape::FirstLine { column: col },
        None => FreeShape::Irregular,
    }
}

/// Why a form cannot be enforced with this tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error("the model's vocabulary has no `{0}`, so the form cannot be enforced")]
    MissingChar(char),
    #[error("the model has no stop token, so the form cannot be ended")]
    NoStop,
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Keywords(#[from] super::keywords::KeywordError),
}

/// What a form constraint needs of a vocabulary: which tokens are one
/// ideograph, a token for each character, and the tokens' tones. A pass over
/// every token (a few milliseconds for the bundled model's 6,000), so it is
/// worked out once per tokenizer and shared.
#[derive(Debug)]
pub struct VocabChars {
    hanzi: Vec<bool>,
    pub(super) char_ids: std::collections::HashMap<char, u32>,
    pub(super) tones: std::sync::Arc<TokenTones>,
    ci: std::sync::Arc<super::ci_rhyme::CiTokens>,
}

impl VocabChars {
    /// `token_text(id)` is the text `id` adds (empty for special tokens);
    /// `vocab` its size.
    pub fn new(vocab: usize, token_text: impl Fn(u32) -> String) -> Self {
        let mut hanzi = vec![false; vocab];
        let mut char_ids = std::collections::HashMap::new();
        let mut char_of = vec![None; vocab];
        for id in 0..vocab as u32 {
            let t = token_text(id);
            let mut chars = t.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                hanzi[id as usize] = is_hanzi(c);
                char_ids.entry(c).or_insert(id);
                if is_hanzi(c) {
                    char_of[id as usize] = Some(c);
                }
            }
        }
        Self {
            hanzi,
            char_ids,
            ci: std::sync::Arc::new(super::ci_rhyme::CiTokens::new(char_of.clone())),
            tones: std::sync::Arc::new(TokenTones::new(char_of)),
        }
    }
}

impl FormConstraint {
    /// `token_text(id)` is the text id adds (empty for special tokens); `vocab` its size.
    pub fn new(
        form: PoemForm,
        vocab: usize,
        token_text: impl Fn(u32) -> String,
        stop: Option<u32>,
        verse: &VerseRules,
    ) -> Result<Self, ConstraintError> {
        let chars = std::sync::Arc::new(VocabChars::new(vocab, token_text));
        Self::with_chars(form, chars, stop, verse)
    }

    /// [`FormConstraint::new`] over a vocabulary's tables worked out before
    /// (once per tokenizer, shared by every request).
    pub fn with_chars(
        form: PoemForm,
        chars: std::sync::Arc<VocabChars>,
        stop: Option<u32>,
        verse: &VerseRules,
    ) -> Result<Self, ConstraintError> {
        for c in [COMMA, PERIOD] {
            if !chars.char_ids.contains_key(&c) {
                return Err(ConstraintError::MissingChar(c));
            }
        }
        if let PoemForm::Acrostic(heads) = &form {
            if let Some(c) = heads.iter().find(|c| !chars.char_ids.contains_key(c)) {
                return Err(ConstraintError::MissingChar(*c));
            }
        }
        let stop = stop.ok_or(ConstraintError::NoStop)?;
        let rules = match (verse.mode, form.shape()) {
            (RulesMode::Strict, Some((lines @ (4 | 8), per_line @ (5 | 7)))) => Some(
                ToneRules::new(lines, per_line, verse, std::sync::Arc::clone(&chars.tones))?,
            ),
            _ => None,
        };
        let free = match (verse.mode, &form) {
            (RulesMode::Strict, PoemForm::Free) => {
                Some(Box::new(FreeVerseRules::new(verse, &chars.tones)?))
            }
            _ => None,
        };
        let ci = match (verse.mode, &form) {
            (RulesMode::Strict, PoemForm::Ci(name)) if verse.ci_rules => {
                match super::tunes::find_tune(name) {
                    Some(tune) => Some(super::ci_rhyme::CiRhymeRules::new(
                        tune,
                        std::sync::Arc::clone(&chars.ci),
                        verse.ci_rhyme().map_err(RulesError::from)?,
                        true,
                    )?),
                    None => None,
                }
            }
            _ => None,
        };
        Ok(Self {
            chars,
            stop,
            rules,
            repeats: verse.repeats,
            plan: form.line_plan(),
            free,
            ci,
            form,
            pins: Vec::new(),
            may_end_after_four: false,
        })
    }

    /// How many times one character may stand in a poem under the repeat
    /// guard: twice in a 詩 (靜夜思 has 明月 twice; 2.4% to 4.1% of the
    /// training 詩 have a character three times), and in a 詞 what 90% of the
    /// tune's poems stay within (`CiTune::repeat_cap`: 2 for 浣溪沙, 3 for
    /// 菩薩蠻, 4 for 長相思).
    fn repeat_cap(&self) -> usize {
        match &self.form {
            PoemForm::Ci(name) => super::tunes::find_tune(name).map_or(3, |t| t.repeat_cap),
            _ => 2,
        }
    }

    /// The repeat guard: bans a character the poem already holds as often as
    /// [`Self::repeat_cap`] allows, the character that would be the third of a run,
    /// and the character that would finish a line the same as an earlier one
    /// (free verse, whose lines have no set length: the marks that would close
    /// such a line). Never bans every token left: then nothing is banned.
    fn guard_repeats(&self, plan: Option<&[(usize, char)]>, written: &str, logits: &mut [f32]) {
        if self.repeats == Repeats::Allow {
            return;
        }
        let mut banned: Vec<u32> = Vec::new();
        let mut tail = written.chars().rev();
        if let (Some(a), Some(b)) = (tail.next(), tail.next()) {
            if a == b && is_hanzi(a) {
                banned.extend(self.chars.char_ids.get(&a));
            }
        }
        // No character more often than a poem of this length bears.
        let cap = self.repeat_cap();
        let mut counts: std::collections::HashMap<char, usize> = std::collections::HashMap::new();
        for c in written.chars().filter(|c| is_hanzi(*c)) {
            *counts.entry(c).or_default() += 1;
        }
        // Keyword characters still to come count as written.
        let here = next_place(written);
        for pin in self.pins.iter().filter(|p| (p.line, p.column) > here) {
            *counts.entry(pin.ch).or_default() += 1;
        }
        banned.extend(
            counts
                .iter()
                .filter(|(_, n)| **n >= cap)
                .filter_map(|(c, _)| self.chars.char_ids.get(c)),
        );
        let mut lines: Vec<&str> = written.split([COMMA, PERIOD]).collect();
        let current = lines.pop().unwrap_or_default();
        let col = current.chars().count();
        match plan {
            Some(plan) => {
                let length = plan.get(lines.len()).map(|(n, _)| *n);
                if length == Some(col + 1) {
                    for line in &lines {
                        if line.chars().count() == col + 1 && line.starts_with(current) {
                            banned.extend(
                                line.chars()
                                    .last()
                                    .and_then(|c| self.chars.char_ids.get(&c)),
                            );
                        }
                    }
                }
            }
            None if col > 0 && lines.contains(&current) => {
                banned.extend(
                    [COMMA, PERIOD]
                        .iter()
                        .filter_map(|c| self.chars.char_ids.get(c)),
                );
            }
            None => {}
        }
        let open =
            |logits: &[f32], id: &u32| logits.get(*id as usize).is_some_and(|l| l.is_finite());
        banned.retain(|id| open(logits, id));
        let left = logits.iter().filter(|l| l.is_finite()).count();
        if banned.is_empty() || left <= banned.len() {
            return;
        }
        for id in banned {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// The tokens a poem of this form takes when its lines are fixed: one
    /// per character and mark, one for the stop (0 for free verse).
    pub fn planned_tokens(&self) -> usize {
        self.plan
            .as_ref()
            .map_or(0, |plan| plan.iter().map(|(n, _)| n + 1).sum::<usize>() + 1)
    }

    /// Whether rhyme and tones are enforced (strict rules, a regulated form or
    /// free verse once its first line has set a regulated shape).
    pub fn enforces_verse_rules(&self) -> bool {
        self.rules.is_some() || self.free.is_some() || self.ci.is_some()
    }

    /// The first line (1-based) the verse rules hold: free verse's first
    /// line is the model's own (see [`FreeVerseRules`]).
    pub fn first_ruled_line(&self) -> usize {
        if self.free.is_some() {
            2
        } else {
            1
        }
    }

    /// Masks `logits` so only tokens allowed after `written` stay possible.
    pub fn apply(&self, written: &str, logits: &mut [f32]) {
        match &self.free {
            Some(free) => self.apply_free(free, written, logits),
            None if self.may_end_after_four => {
                self.apply_may_end(self.plan.as_deref(), self.rules.as_ref(), written, logits);
            }
            None => self.apply_planned(self.plan.as_deref(), self.rules.as_ref(), written, logits),
        }
    }

    /// [`Self::apply_planned`] for free verse in a regulated shape: after
    /// four lines the model chooses, a 絕句 ends, a 律詩 goes on.
    fn apply_may_end(
        &self,
        plan: Option<&[(usize, char)]>,
        rules: Option<&ToneRules>,
        written: &str,
        logits: &mut [f32],
    ) {
        let stop = self.stop as usize;
        let may_end = (next_place(written) == (4, 0))
            .then(|| logits.get(stop).copied())
            .flatten();
        self.apply_planned(plan, rules, written, logits);
        if let (Some(l), Some(slot)) = (may_end, logits.get_mut(stop)) {
            *slot = l;
        }
    }

    /// [`Self::apply`] for a form of `plan`'s lines, with `rules` at the
    /// ideograph positions.
    fn apply_planned(
        &self,
        plan: Option<&[(usize, char)]>,
        rules: Option<&ToneRules>,
        written: &str,
        logits: &mut [f32],
    ) {
        let keep_only = |logits: &mut [f32], id: u32| {
            for (i, l) in logits.iter_mut().enumerate() {
                if i as u32 != id {
                    *l = f32::NEG_INFINITY;
                }
            }
        };
        match next_token_in(&self.form, plan, written) {
            NextToken::Any => self.guard_repeats(plan, written, logits),
            NextToken::Stop => keep_only(logits, self.stop),
            NextToken::Char(c) => {
                if let Some(&id) = self.chars.char_ids.get(&c) {
                    keep_only(logits, id);
                }
            }
            NextToken::Hanzi => {
                let (line, column) = next_place(written);
                if let Some(pin) = self
                    .pins
                    .iter()
                    .find(|p| p.line == line && p.column == column)
                {
                    if let Some(&id) = self.chars.char_ids.get(&pin.ch) {
                        keep_only(logits, id);
                        return;
                    }
                }
                for (i, l) in logits.iter_mut().enumerate() {
                    if !self.chars.hanzi.get(i).copied().unwrap_or(false) {
                        *l = f32::NEG_INFINITY;
                    }
                }
                if let Some(rules) = rules {
                    rules.apply(written, logits);
                }
                if let (Some(ci), Some(plan)) = (&self.ci, plan) {
                    ci.apply(plan, written, logits);
                }
                self.guard_repeats(plan, written, logits);
            }
        }
    }

    /// [`Self::apply`] for free verse under strict rules ([`FreeVerseRules`]).
    fn apply_free(&self, free: &FreeVerseRules, written: &str, logits: &mut [f32]) {
        match free_shape(written) {
            FreeShape::Regulated { chars, .. } => {
                let (plan, rules) = if chars == 5 { &free.five } else { &free.seven };
                self.apply_may_end(Some(plan), Some(rules), written, logits);
            }
            FreeShape::FirstLine { column: 1 } if free.start_set => {
                // 平起 / 仄起: the second character's tone, at either length.
                free.five.1.apply(written, logits);
                self.guard_repeats(None, written, logits);
            }
            FreeShape::FirstLine { .. } | FreeShape::Irregular => {
                self.guard_repeats(None, written, logits);
            }
        }
    }
}

#[cfg(test)]
mod repeat_guard_tests {
    use super::*;

    const VOCAB: [&str; 14] = [
        "<s>", "，", "。", "床", "前", "明", "月", "光", "疑", "是", "地", "上", "霜", "</s>",
    ];

    fn constraint(form: PoemForm, repeats: Repeats) -> FormConstraint {
        let verse = VerseRules {
            mode: RulesMode::Off,
            repeats,
            ..VerseRules::default()
        };
        FormConstraint::new(
            form,
            VOCAB.len(),
            |id| VOCAB[id as usize].to_string(),
            Some(13),
            &verse,
        )
        .unwrap()
    }

    fn id(c: &str) -> usize {
        VOCAB.iter().position(|v| *v == c).unwrap()
    }

    #[test]
    fn the_guard_bans_a_third_character_in_a_row_and_the_end_of_a_repeated_line() {
        let free = constraint(PoemForm::Free, Repeats::Guard);
        let mut logits = vec![0.0f32; VOCAB.len()];
        free.apply("床明明", &mut logits);
        assert_eq!(logits[id("明")], f32::NEG_INFINITY);
        assert!(logits[id("月")].is_finite() && logits[id("明")] != logits[id("月")]);
        // Free verse: a line the same as an earlier one cannot be closed.
        let mut logits = vec![0.0f32; VOCAB.len()];
        free.apply("床前，床前", &mut logits);
        assert_eq!(logits[id("，")], f32::NEG_INFINITY);
        assert_eq!(logits[id("。")], f32::NEG_INFINITY);
        assert!(logits[id("明")].is_finite());
        // A set line length: the character that would finish the same line.
        let wujue = constraint(PoemForm::WuJue, Repeats::Guard);
        let mut logits = vec![0.0f32; VOCAB.len()];
        wujue.apply("床前明月光，疑是地上霜。床前明月", &mut logits);
        assert_eq!(logits[id("光")], f32::NEG_INFINITY);
        assert!(logits[id("霜")].is_finite());
        let mut logits = vec![0.0f32; VOCAB.len()];
        wujue.apply("床前明月光，疑是地上霜。床前明", &mut logits);
        assert!(
            logits[id("月")].is_finite(),
            "not the line's last character yet"
        );
    }

    #[test]
    fn the_guard_bans_a_character_a_third_time_in_a_poem() {
        let wujue = constraint(PoemForm::WuJue, Repeats::Guard);
        let mut logits = vec![0.0f32; VOCAB.len()];
        wujue.apply("床前明月光，疑是明", &mut logits);
        assert_eq!(
            logits[id("明")],
            f32::NEG_INFINITY,
            "明 stands twice already"
        );
        assert!(logits[id("月")].is_finite(), "月 once");
    }

    #[test]
    fn a_ci_holds_a_character_as_often_as_its_tunes_poems_do() {
        // 浣溪沙: twice at most (its cap from the data); 菩薩蠻: three times.
        let huanxisha = constraint("ci:浣溪沙".parse().unwrap(), Repeats::Guard);
        let mut logits = vec![0.0f32; VOCAB.len()];
        huanxisha.apply("床明前明", &mut logits);
        assert_eq!(logits[id("明")], f32::NEG_INFINITY, "明 twice in a 浣溪沙");
        let pusaman = constraint("ci:菩萨蛮".parse().unwrap(), Repeats::Guard);
        let mut logits = vec![0.0f32; VOCAB.len()];
        pusaman.apply("床明前明", &mut logits);
        assert!(logits[id("明")].is_finite(), "a third 明 in a 菩薩蠻");
        let mut logits = vec![0.0f32; VOCAB.len()];
        pusaman.apply("床明前明月明", &mut logits);
        assert_eq!(logits[id("明")], f32::NEG_INFINITY, "not a fourth");
    }

    #[test]
    fn the_guard_never_bans_the_last_token_left_and_allow_bans_nothing() {
        let free = constraint(PoemForm::Free, Repeats::Guard);
        let mut logits = vec![f32::NEG_INFINITY; VOCAB.len()];
        logits[id("明")] = 1.0;
        free.apply("明明", &mut logits);
        assert_eq!(logits[id("明")], 1.0);
        let allow = constraint(PoemForm::Free, Repeats::Allow);
        let mut logits = vec![0.0f32; VOCAB.len()];
        allow.apply("床明明", &mut logits);
        assert!(logits.iter().all(|l| *l == 0.0));
    }
}

#[cfg(test)]
mod free_verse_rules_tests {
    use super::*;
    use crate::poetry::rhyme::table;
    use crate::poetry::rules::{test_chars, TEST_ZE};
    use crate::poetry::TemplateStart;

    const SPECIALS: [&str; 4] = ["<s>", "，", "。", "</s>"];
    const STOP: u32 = 3;

    /// Three 平 groups' characters, some 仄 ones, the marks and a stop.
    fn vocab() -> Vec<String> {
        SPECIALS
            .iter()
            .map(|s| (*s).to_string())
            .chain(test_chars().into_iter().map(String::from))
            .collect()
    }

    fn constraint(form: PoemForm, verse: &VerseRules) -> (FormConstraint, Vec<String>) {
        let v = vocab();
        let c = FormConstraint::new(
            form,
            v.len(),
            |id| v[id as usize].clone(),
            Some(STOP),
            verse,
        )
        .unwrap();
        (c, v)
    }

    fn mask(c: &FormConstraint, vocab: &[String], written: &str) -> Vec<bool> {
        let mut logits = vec![0f32; vocab.len()];
        c.apply(written, &mut logits);
        logits.iter().map(|l| l.is_finite()).collect()
    }

    fn allowed<'v>(open: &[bool], vocab: &'v [String]) -> Vec<&'v str> {
        open.iter()
            .zip(vocab)
            .filter(|(o, _)| **o)
            .map(|(_, t)| t.as_str())
            .collect()
    }

    const QUATRAIN: &str = "白日依山雪，黃河入海東。欲窮千里目，更上一層樓。";

    #[test]
    fn free_verse_keeps_the_rules_of_the_quatrain_its_first_line_begins() {
        let strict = VerseRules::default();
        let (free, v) = constraint(PoemForm::Free, &strict);
        let (wujue, _) = constraint(PoemForm::WuJue, &strict);
        let prefixes: Vec<String> = (6..=QUATRAIN.chars().count() - 1)
            .map(|n| QUATRAIN.chars().take(n).collect())
            .collect();
        for written in &prefixes {
            let (f, w) = (mask(&free, &v, written), mask(&wujue, &v, written));
            assert_eq!(
                allowed(&f, &v),
                allowed(&w, &v),
                "after {written}: free verse as a 五絕"
            );
        }
        // The rhyme position of line 2 allows only 平 rhymes; its end the 。.
        let rhyme = allowed(&mask(&free, &v, "白日依山雪，黃河入海"), &v);
        assert!(!rhyme.is_empty(), "{rhyme:?}");
        for ze in TEST_ZE.chars() {
            assert!(!rhyme.contains(&ze.to_string().as_str()), "{ze} at a rhyme");
        }
        assert_eq!(
            allowed(&mask(&free, &v, "白日依山雪，黃河入海東"), &v),
            ["。"]
        );
    }

    #[test]
    fn free_verse_may_end_after_four_lines_and_must_after_eight() {
        let (free, v) = constraint(PoemForm::Free, &VerseRules::default());
        let four = allowed(&mask(&free, &v, QUATRAIN), &v);
        assert!(four.contains(&"</s>"), "{four:?}");
        assert!(
            four.iter().any(|t| t.chars().all(is_hanzi)),
            "a 律詩 may go on"
        );
        assert!(!four.contains(&"，") && !four.contains(&"。"));
        let eight = format!("{QUATRAIN}{QUATRAIN}");
        assert_eq!(allowed(&mask(&free, &v, &eight), &v), ["</s>"]);
        // 七言 too: a seven-character first line sets lines of seven.
        let seven = allowed(&mask(&free, &v, "朝辭白帝彩雲間，千里江陵一日"), &v);
        assert!(seven.iter().all(|t| t.chars().all(is_hanzi)), "{seven:?}");
        let end = allowed(&mask(&free, &v, "朝辭白帝彩雲間，千里江陵一日還"), &v);
        assert_eq!(end, ["。"]);
    }

    #[test]
    fn free_verse_first_line_is_the_models_and_an_irregular_one_stays_free() {
        let (free, v) = constraint(PoemForm::Free, &VerseRules::default());
        for written in [
            "",
            "白",
            "白日依山",
            "白日依山雪月",
            "白日依山雪月，黃河",
            "白日。黃河",
        ] {
            assert!(
                mask(&free, &v, written).iter().all(|o| *o),
                "after {written:?} nothing is masked"
            );
        }
        // Rules off: free verse after a regulated first line is still free.
        let (off, _) = constraint(PoemForm::Free, &VerseRules::off());
        assert!(mask(&off, &v, "白日依山雪，黃河入海").iter().all(|o| *o));
        assert!(free.enforces_verse_rules() && !off.enforces_verse_rules());
        assert_eq!((free.first_ruled_line(), off.first_ruled_line()), (2, 1));
    }

    #[test]
    fn a_ping_or_ze_start_asked_for_sets_the_second_characters_tone_in_free_verse() {
        let t = table();
        for (start, tone) in [
            (TemplateStart::PingQi, crate::poetry::rhyme::Tone::Ping),
            (TemplateStart::ZeQi, crate::poetry::rhyme::Tone::Ze),
        ] {
            let verse = VerseRules {
                template: start,
                ..VerseRules::default()
            };
            let (free, v) = constraint(PoemForm::Free, &verse);
            let second = allowed(&mask(&free, &v, "白"), &v);
            assert!(!second.is_empty());
            for c in second.iter().flat_map(|t| t.chars()) {
                assert!(t.tone_class(c).fits(tone), "{start}: {c}");
            }
            assert!(
                mask(&free, &v, "白日").iter().all(|o| *o),
                "the third is free"
            );
        }
    }
}
