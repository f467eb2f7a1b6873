//! Classical poem forms: recognising them (for the corpus and the quality
//! benchmark) and enforcing them while decoding (punctuation only at the ends of
//! lines, `，`/`。` alternating, a stop after the last line, acrostic heads).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::text::{is_hanzi, COMMA, PERIOD};

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
pub(super) fn next_token_in(
    form: &PoemForm,
    plan: Option<&[(usize, char)]>,
    written: &str,
) -> NextToken {
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
