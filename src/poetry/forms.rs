//! Classical poem forms: recognising them (for the corpus and the quality
//! benchmark) and enforcing them while decoding (punctuation only at the ends of
//! lines, `，`/`。` alternating, a stop after the last line, acrostic heads).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::rules::{Repeats, RulesError, RulesMode, TokenTones, ToneRules, VerseRules};

/// Comma ending the first line of a couplet.
pub const COMMA: char = '，';
/// Full stop ending a couplet.
pub const PERIOD: char = '。';

/// What shape a poem must take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PoemForm {
    /// No constraint.
    #[default]
    Free,
    /// 五言絕句: 4 lines of 5.
    WuJue,
    /// 七言絕句: 4 lines of 7.
    QiJue,
    /// 五言律詩: 8 lines of 5.
    WuLv,
    /// 七言律詩: 8 lines of 7.
    QiLv,
    /// 藏頭詩: one line per head character, each line starting with it
    /// (7 characters a line; 4 heads make a 七絕, 8 a 七律).
    Acrostic(Vec<char>),
    /// 詞 to a named tune: the tune's line lengths and punctuation, as
    /// derived from the Song 詞 collection (the simplified name, as there).
    Ci(String),
}

impl PoemForm {
    /// `(lines, characters per line)`, or `None` for free verse.
    pub fn shape(&self) -> Option<(usize, usize)> {
        match self {
            Self::Free => None,
            Self::WuJue => Some((4, 5)),
            Self::QiJue => Some((4, 7)),
            Self::WuLv => Some((8, 5)),
            Self::QiLv => Some((8, 7)),
            Self::Acrostic(heads) => Some((heads.len(), 7)),
            Self::Ci(_) => None,
        }
    }

    /// Each line's length and closing mark, for the forms that fix them
    /// (`None` for free verse).
    pub fn line_plan(&self) -> Option<Vec<(usize, char)>> {
        match self {
            Self::Free => None,
            Self::Ci(name) => super::tunes::find_tune(name).map(|t| t.lines.clone()),
            _ => self.shape().map(|(lines, chars)| {
                (0..lines)
                    .map(|i| (chars, if i % 2 == 0 { COMMA } else { PERIOD }))
                    .collect()
            }),
        }
    }

    /// The conditioning token the bundled model was trained with, if any.
    pub fn tag(&self) -> Option<&'static str> {
        match self {
            Self::WuJue => Some("[WUJUE]"),
            Self::QiJue | Self::Acrostic(_) => Some("[QIJUE]"),
            Self::WuLv => Some("[WULV]"),
            Self::QiLv => Some("[QILV]"),
            Self::Free | Self::Ci(_) => None,
        }
    }

    /// The conditioning token of this form: the regular forms' tags, and for a
    /// 詞 `[CI:tune]` (a model trained on `versifier corpus --ci` has them).
    pub fn tag_token(&self) -> Option<String> {
        match self {
            Self::Ci(name) => Some(format!("[CI:{name}]")),
            other => other.tag().map(String::from),
        }
    }

    /// The regular form with this shape.
    pub fn from_shape(lines: usize, chars: usize) -> Option<Self> {
        match (lines, chars) {
            (4, 5) => Some(Self::WuJue),
            (4, 7) => Some(Self::QiJue),
            (8, 5) => Some(Self::WuLv),
            (8, 7) => Some(Self::QiLv),
            _ => None,
        }
    }

    /// Chinese name for display.
    pub fn label(&self) -> String {
        match self {
            Self::Free => "free".into(),
            Self::WuJue => "五絕".into(),
            Self::QiJue => "七絕".into(),
            Self::WuLv => "五律".into(),
            Self::QiLv => "七律".into(),
            Self::Acrostic(h) => format!("藏頭 {}", h.iter().collect::<String>()),
            Self::Ci(name) => format!(
                "詞 {}",
                super::tunes::find_tune(name).map_or(name.as_str(), |t| t.traditional.as_str())
            ),
        }
    }
}

impl fmt::Display for PoemForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Free => f.write_str("free"),
            Self::WuJue => f.write_str("wujue"),
            Self::QiJue => f.write_str("qijue"),
            Self::WuLv => f.write_str("wulv"),
            Self::QiLv => f.write_str("qilv"),
            Self::Acrostic(h) => write!(f, "acrostic:{}", h.iter().collect::<String>()),
            Self::Ci(name) => write!(f, "ci:{name}"),
        }
    }
}

/// A form name the CLI or settings did not understand.
#[derive(Debug, thiserror::Error)]
pub enum FormParseError {
    #[error(
        "unknown poem form `{0}`: expected free, wujue, qijue, wulv, qilv, acrostic:<4 or 8 characters> or ci:<tune> (`versifier forms` lists the tunes)"
    )]
    Unknown(String),
    #[error("no 詞 tune named `{0}` is known (`versifier forms` lists the {1} tunes, e.g. 浣溪沙, 鹧鸪天, 菩萨蛮)")]
    UnknownTune(String, usize),
    #[error("acrostic `{heads}` has {count} head character(s): an acrostic takes 4 (a 七絕) or 8 (a 七律), one per line")]
    HeadCount { heads: String, count: usize },
    #[error("acrostic heads must be Chinese characters; `{0}` is not")]
    NotHanzi(char),
}

impl FromStr for PoemForm {
    type Err = FormParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "free" | "" => Ok(Self::Free),
            "wujue" | "五絕" | "五绝" => Ok(Self::WuJue),
            "qijue" | "七絕" | "七绝" => Ok(Self::QiJue),
            "wulv" | "五律" => Ok(Self::WuLv),
            "qilv" | "七律" => Ok(Self::QiLv),
            other if ["ci:", "詞:", "词:"].iter().any(|p| other.starts_with(p)) => {
                let name = ["ci:", "詞:", "词:"]
                    .iter()
                    .find_map(|p| other.strip_prefix(p))
                    .unwrap_or_default()
                    .trim();
                super::tunes::find_tune(name)
                    .map(|t| Self::Ci(t.name.clone()))
                    .ok_or_else(|| {
                        FormParseError::UnknownTune(
                            name.to_string(),
                            super::tunes::ci_tunes().len(),
                        )
                    })
            }
            other => {
                let heads: Vec<char> = other
                    .strip_prefix("acrostic:")
                    .or_else(|| other.strip_prefix("藏頭:"))
                    .or_else(|| other.strip_prefix("藏头:"))
                    .ok_or_else(|| FormParseError::Unknown(s.to_string()))?
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                if let Some(c) = heads.iter().find(|c| !is_hanzi(**c)) {
                    return Err(FormParseError::NotHanzi(*c));
                }
                if matches!(heads.len(), 4 | 8) {
                    Ok(Self::Acrostic(heads))
                } else {
                    Err(FormParseError::HeadCount {
                        heads: heads.iter().collect(),
                        count: heads.len(),
                    })
                }
            }
        }
    }
}

/// Whether `c` is a CJK ideograph (the characters a line is made of).
pub fn is_hanzi(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF | 0x2A700..=0x2EBEF | 0x30000..=0x3134F)
}

/// Lines of a poem: the runs of characters between `，` and `。`, with the mark
/// that ended each. `None` if anything but ideographs and those two marks appears.
pub fn split_lines(text: &str) -> Option<Vec<(String, char)>> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c == COMMA || c == PERIOD {
            if cur.is_empty() {
                return None;
            }
            lines.push((std::mem::take(&mut cur), c));
        } else if is_hanzi(c) {
            cur.push(c);
        } else if c.is_whitespace() {
            continue;
        } else {
            return None;
        }
    }
    if !cur.is_empty() {
        return None; // a line without its closing mark
    }
    Some(lines)
}

/// The regular form of `text` when it is well-formed regular verse: 4 or 8
/// lines, all of 5 or all of 7 characters, `，`/`。` alternating, no line repeated.
pub fn regular_form(text: &str) -> Option<PoemForm> {
    let lines = split_lines(text)?;
    let n = lines.first()?.0.chars().count();
    if !lines.iter().all(|(l, _)| l.chars().count() == n) {
        return None;
    }
    if !lines
        .iter()
        .enumerate()
        .all(|(i, (_, m))| *m == if i % 2 == 0 { COMMA } else { PERIOD })
    {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    if !lines.iter().all(|(l, _)| seen.insert(l.as_str())) {
        return None;
    }
    PoemForm::from_shape(lines.len(), n)
}

/// Whether `text` satisfies `form` exactly (free verse: any regular form counts).
pub fn satisfies(text: &str, form: &PoemForm) -> bool {
    match form {
        PoemForm::Free => regular_form(text).is_some(),
        PoemForm::Acrostic(heads) => split_lines(text).is_some_and(|lines| {
            lines.len() == heads.len()
                && lines.iter().zip(heads).enumerate().all(|(i, ((l, m), h))| {
                    l.chars().count() == 7
                        && l.starts_with(*h)
                        && *m == if i % 2 == 0 { COMMA } else { PERIOD }
                })
        }),
        PoemForm::Ci(_) => split_lines(text).is_some_and(|lines| {
            let shape: Vec<(usize, char)> =
                lines.iter().map(|(l, m)| (l.chars().count(), *m)).collect();
            Some(shape) == form.line_plan()
        }),
        regular => regular_form(text).as_ref() == Some(regular),
    }
}

/// Lays a poem out one couplet per line, for display.
pub fn layout(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        out.push(c);
        if c == PERIOD {
            out.push('\n');
        }
    }
    out.trim_end().to_string()
}

/// Lays a poem out for a box `max_chars` full-width characters wide: a couplet
/// per line when every couplet fits, else one line (句) per row, so that a
/// line never breaks in the middle.
pub fn layout_to_width(text: &str, max_chars: usize) -> String {
    let couplets = layout(text);
    if couplets.lines().all(|l| l.chars().count() <= max_chars) {
        return couplets;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        out.push(c);
        if c == PERIOD || c == COMMA {
            out.push('\n');
        }
    }
    out.trim_end().to_string()
}

/// What the next token may be, given the characters written so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextToken {
    /// Any ideograph (no punctuation, no stop).
    Hanzi,
    /// Exactly this character.
    Char(char),
    /// The end of the poem.
    Stop,
    /// Unconstrained.
    Any,
}

/// What may come next under `form`, after `written` (the generated text so far,
/// prompt included when the prompt is the poem's start).
pub fn next_token(form: &PoemForm, written: &str) -> NextToken {
    next_token_in(form, form.line_plan().as_deref(), written)
}

/// The line and column (0-based) the next character of `written` takes.
pub fn next_place(written: &str) -> (usize, usize) {
    let (mut line, mut col) = (0usize, 0usize);
    for c in written.chars() {
        if c == COMMA || c == PERIOD {
            line += 1;
            col = 0;
        } else if is_hanzi(c) {
            col += 1;
        }
    }
    (line, col)
}

/// A character a form holds at one place (0-based line and column): a
/// keyword's ([`super::keywords`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub line: usize,
    pub column: usize,
    pub ch: char,
}

/// [`next_token`] with the form's line plan worked out already (the decoder
/// asks every token; the plan is fixed for the request).
fn next_token_in(form: &PoemForm, plan: Option<&[(usize, char)]>, written: &str) -> NextToken {
    let Some(plan) = plan else {
        return NextToken::Any;
    };
    let (line, col) = next_place(written);
    let Some(&(per_line, mark)) = plan.get(line) else {
        return NextToken::Stop;
    };
    if col >= per_line {
        return NextToken::Char(mark);
    }
    if col == 0 {
        if let PoemForm::Acrostic(heads) = form {
            return NextToken::Char(heads[line]);
        }
    }
    NextToken::Hanzi
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_couplet_too_wide_for_its_box_breaks_at_the_comma_never_mid_line() {
        let poem = "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。";
        assert_eq!(
            layout_to_width(poem, 12),
            "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"
        );
        assert_eq!(
            layout_to_width(poem, 11),
            "床前明月光，\n疑是地上霜。\n舉頭望明月，\n低頭思故鄉。"
        );
    }

    use super::*;

    #[test]
    fn recognises_the_four_regular_forms() {
        assert_eq!(
            regular_form("床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"),
            Some(PoemForm::WuJue)
        );
        assert_eq!(
            regular_form("朝辭白帝彩雲間，千里江陵一日還。兩岸猿聲啼不住，輕舟已過萬重山。"),
            Some(PoemForm::QiJue)
        );
        assert_eq!(
            regular_form("床前明月光，疑是地上霜。舉頭望明月，"),
            None,
            "3 lines"
        );
        assert_eq!(
            regular_form("床前明月光。疑是地上霜，舉頭望明月。低頭思故鄉，"),
            None,
            "marks swapped"
        );
        assert_eq!(
            regular_form("床前明月光，床前明月光。舉頭望明月，低頭思故鄉。"),
            None,
            "repeated line"
        );
        assert_eq!(
            regular_form("床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉"),
            None,
            "unclosed"
        );
        assert_eq!(
            regular_form("床前明月光，疑是地上霜。舉頭望明月，低頭思故。"),
            None,
            "ragged"
        );
    }

    #[test]
    fn acrostic_heads_are_checked() {
        let f: PoemForm = "acrostic:春夏秋冬".parse().unwrap();
        assert!(satisfies(
            "春風又綠江南岸，夏日長吟碧水間。秋月照人千里外，冬雲未散雪山前。",
            &f
        ));
        assert!(!satisfies(
            "春風又綠江南岸，夏日長吟碧水間。秋月照人千里外，雪雲未散冬山前。",
            &f
        ));
    }

    #[test]
    fn next_token_walks_a_quatrain() {
        let f = PoemForm::WuJue;
        assert_eq!(next_token(&f, ""), NextToken::Hanzi);
        assert_eq!(next_token(&f, "床前明月光"), NextToken::Char(COMMA));
        assert_eq!(
            next_token(&f, "床前明月光，疑是地上霜"),
            NextToken::Char(PERIOD)
        );
        assert_eq!(
            next_token(&f, "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"),
            NextToken::Stop
        );
        let a: PoemForm = "acrostic:春秋冬夏".parse().unwrap();
        assert_eq!(next_token(&a, ""), NextToken::Char('春'));
        assert_eq!(next_token(&a, "春風又綠江南岸，"), NextToken::Char('秋'));
        assert_eq!(next_token(&PoemForm::Free, "x"), NextToken::Any);
    }

    #[test]
    fn form_names_parse_and_print() {
        for s in [
            "free",
            "wujue",
            "qijue",
            "wulv",
            "qilv",
            "acrostic:春夏秋冬",
        ] {
            assert_eq!(s.parse::<PoemForm>().unwrap().to_string(), s);
        }
        assert!("acrostic:".parse::<PoemForm>().is_err());
        let three = "acrostic:月風風"
            .parse::<PoemForm>()
            .unwrap_err()
            .to_string();
        assert!(
            three.contains("3 head") && three.contains("4") && three.contains("8"),
            "{three}"
        );
        assert!("acrostic:春夏秋冬春夏秋冬".parse::<PoemForm>().is_ok());
        assert!("sonnet".parse::<PoemForm>().is_err());
    }
}

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
