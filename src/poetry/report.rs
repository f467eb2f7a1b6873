//! What a check finds: the rule a problem breaks, each problem with its line
//! and column, each character's marks, and the report with its verdict.
//!
//! Owns: the report's types. Must not: judge a poem (`check` and `check_ci`
//! do).

use serde::Serialize;

use super::rhyme::{Tone, ToneClass};
use super::tonal::{LinePattern, Slot};

/// Which rule a problem breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A strict position holds the wrong tone.
    Tone,
    /// 孤平: the first 平 of a 平-ending line (pattern B) turned 仄.
    GuPing,
    /// 三平尾: a 平-ending line (pattern D) ends in three 平.
    SanPingWei,
    /// A character the table does not know, at a strict position.
    UnknownTone,
    /// 出韻: a rhyme character outside the poem's group.
    Rhyme,
    /// 重韻: a rhyme character used twice.
    RepeatedRhyme,
}

impl Rule {
    /// Whether this rule is about the rhyme (else the tones).
    pub fn is_rhyme(self) -> bool {
        matches!(self, Self::Rhyme | Self::RepeatedRhyme)
    }

    /// The rule's Chinese name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tone => "平仄",
            Self::GuPing => "孤平",
            Self::SanPingWei => "三平尾",
            Self::UnknownTone => "字音未詳",
            Self::Rhyme => "出韻",
            Self::RepeatedRhyme => "重韻",
        }
    }
}

/// One broken rule, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub rule: Rule,
    pub message: String,
}

/// One character of the poem with what the table and the template say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CharMark {
    pub ch: char,
    pub class: ToneClass,
    /// The template's tone here (`None` outside a regulated form).
    pub required: Option<Tone>,
    /// Whether the template leaves this position free.
    pub free: bool,
    /// A rhyme position.
    pub rhyme: bool,
}

/// What the checker found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// `五絕`, `七律`, ... or `None` when the poem is not a regulated shape.
    pub form: Option<String>,
    /// The template judged against, e.g. `平起首句入韻`.
    pub template: Option<String>,
    pub lines: Vec<Vec<CharMark>>,
    /// The rhyme group, e.g. `下平一先`.
    pub rhyme_group: Option<String>,
    pub problems: Vec<Problem>,
    pub rhyme_kept: bool,
    pub tones_kept: bool,
    pub verdict: String,
    /// The mark that closes each line in the text, `，` or `。` (`？` and
    /// `！` read as `。`, `、` `；` `：` as `，`); a line closed by a line
    /// break or nothing takes `，` then `。` in turn, as a 詩's lines do.
    pub line_ends: Vec<char>,
}

/// Why `class` cannot stand in `slot` of `pattern` at `col` of a `chars`-wide
/// line, or `None` when it can.
pub fn slot_problem(
    class: ToneClass,
    slot: Slot,
    pattern: LinePattern,
    col: usize,
    chars: usize,
) -> Option<Rule> {
    let Slot::Tone(tone) = slot else {
        return None;
    };
    if class == ToneClass::Unknown {
        return Some(Rule::UnknownTone);
    }
    if class.fits(tone) {
        return None;
    }
    let five = col + 5 - chars; // position in the five-character form
    Some(match (pattern, five) {
        (LinePattern::B, 0) => Rule::GuPing,
        (LinePattern::D, 2) => Rule::SanPingWei,
        _ => Rule::Tone,
    })
}

impl CheckReport {
    /// The report as text: each line with its marks under it, then the
    /// problems and the verdict.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let text: String = line.iter().map(|m| m.ch).collect();
            let marks: String = line
                .iter()
                .map(|m| if m.rhyme { '韻' } else { m.class.mark() })
                .collect();
            out.push_str(&format!("{:>2}  {text}\n    {marks}\n", i + 1));
        }
        if let Some(t) = &self.template {
            out.push_str(&format!(
                "格式：{} {t}\n",
                self.form.as_deref().unwrap_or("")
            ));
        }
        for p in &self.problems {
            out.push_str(&format!("第{}句第{}字：{}\n", p.line, p.column, p.message));
        }
        out.push_str(&self.verdict);
        out
    }
}
