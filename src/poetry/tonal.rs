//! The tonal templates (格律) of 五絕, 七絕, 五律 and 七律: which tone each
//! position takes, which positions are free, where the rhymes fall.
//!
//! Four line patterns, in their five-character form (a seven-character line
//! puts two characters of the opposite tone in front):
//!
//! | pattern | 五言 | 七言 | free (五言 position, 1-based) |
//! |---|---|---|---|
//! | A | 仄仄平平仄 | 平平仄仄平平仄 | 1, 3 |
//! | B | 平平仄仄平 | 仄仄平平仄仄平 | 3 (1 is kept 平: else 孤平) |
//! | C | 平平平仄仄 | 仄仄平平平仄仄 | 1, 3 |
//! | D | 仄仄仄平平 | 平平仄仄仄平平 | 1 (3 is kept 仄: else 三平尾) |
//!
//! 一三五不論: in a seven-character line the first position is always free too.
//! A quatrain is D B C D or A B C D (first line rhyming or not), B D A B or
//! C D A B; a regulated eight-line poem repeats the quatrain with its fifth line
//! not rhyming. 粘 and 對 follow from these sequences. Lines 2, 4 (6, 8) end in
//! the rhyme, and line 1 does when its pattern ends 平 (B, D).

use serde::Serialize;

use super::rhyme::Tone;

/// A line pattern (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LinePattern {
    A,
    B,
    C,
    D,
}

impl LinePattern {
    /// The five-character tones.
    fn five(self) -> [Tone; 5] {
        use Tone::{Ping as P, Ze as Z};
        match self {
            Self::A => [Z, Z, P, P, Z],
            Self::B => [P, P, Z, Z, P],
            Self::C => [P, P, P, Z, Z],
            Self::D => [Z, Z, Z, P, P],
        }
    }

    /// Free positions of the five-character form (0-based).
    fn five_free(self) -> &'static [usize] {
        match self {
            Self::A | Self::C => &[0, 2],
            Self::B => &[2],
            Self::D => &[0],
        }
    }

    /// Whether the line ends 平 (and so rhymes).
    pub fn ends_ping(self) -> bool {
        matches!(self, Self::B | Self::D)
    }
}

/// What one position requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Slot {
    /// This tone, strictly.
    Tone(Tone),
    /// Either tone (一三五不論); `Tone` is the template's own.
    Free(Tone),
}

impl Slot {
    pub fn tone(self) -> Tone {
        match self {
            Self::Tone(t) | Self::Free(t) => t,
        }
    }

    pub fn is_free(self) -> bool {
        matches!(self, Self::Free(_))
    }
}

/// The positions of one line in a line of `chars` (5 or 7) characters.
pub fn line_slots(pattern: LinePattern, chars: usize) -> Vec<Slot> {
    let five = pattern.five();
    let free = pattern.five_free();
    let mut out = Vec::with_capacity(chars);
    if chars == 7 {
        // Two characters of the tone opposite to the five-character start.
        let lead = match five[0] {
            Tone::Ping => Tone::Ze,
            Tone::Ze => Tone::Ping,
        };
        out.push(Slot::Free(lead));
        out.push(Slot::Tone(lead));
    }
    for (i, tone) in five.into_iter().enumerate() {
        out.push(if free.contains(&i) {
            Slot::Free(tone)
        } else {
            Slot::Tone(tone)
        });
    }
    out
}

/// 平起 or 仄起: the tone of the first line's second character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TemplateStart {
    /// Either, as the poem goes.
    #[default]
    Any,
    /// 平起.
    PingQi,
    /// 仄起.
    ZeQi,
}

impl std::str::FromStr for TemplateStart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "any" | "" => Ok(Self::Any),
            "pingqi" | "平起" => Ok(Self::PingQi),
            "zeqi" | "仄起" => Ok(Self::ZeQi),
            other => Err(format!(
                "unknown template `{other}`: expected pingqi (平起), zeqi (仄起) or any"
            )),
        }
    }
}

impl std::fmt::Display for TemplateStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Any => "any",
            Self::PingQi => "pingqi",
            Self::ZeQi => "zeqi",
        })
    }
}

/// One tonal template of a regulated form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub lines: Vec<LinePattern>,
    pub chars: usize,
}

impl Template {
    /// The four templates of a form of `lines` (4 or 8) lines of `chars` (5 or 7).
    pub fn all(lines: usize, chars: usize) -> Vec<Self> {
        use LinePattern::{A, B, C, D};
        let quatrains = [[D, B, C, D], [A, B, C, D], [B, D, A, B], [C, D, A, B]];
        quatrains
            .into_iter()
            .map(|q| {
                let mut seq = q.to_vec();
                if lines == 8 {
                    // The second half opens with the non-rhyming line.
                    let first = if matches!(q[0], D | A) { A } else { C };
                    seq.extend(if first == A {
                        [A, B, C, D]
                    } else {
                        [C, D, A, B]
                    });
                }
                Self { lines: seq, chars }
            })
            .collect()
    }

    /// The slot of line `line`, column `col` (0-based).
    pub fn slot(&self, line: usize, col: usize) -> Option<Slot> {
        let pattern = *self.lines.get(line)?;
        line_slots(pattern, self.chars).get(col).copied()
    }

    /// Whether the poem's rhyme falls at the end of line `line` (0-based).
    pub fn rhymes_at(&self, line: usize) -> bool {
        line % 2 == 1 || (line == 0 && self.lines[0].ends_ping())
    }

    /// 平起 or 仄起.
    pub fn start(&self) -> TemplateStart {
        match self.slot(0, 1).map(Slot::tone) {
            Some(Tone::Ping) => TemplateStart::PingQi,
            _ => TemplateStart::ZeQi,
        }
    }

    /// e.g. `平起首句入韻`.
    pub fn name(&self) -> String {
        format!(
            "{}首句{}韻",
            match self.start() {
                TemplateStart::PingQi => "平起",
                _ => "仄起",
            },
            if self.lines[0].ends_ping() {
                "入"
            } else {
                "不入"
            }
        )
    }

    /// The template's tones as text, one line per line (`仄仄平平仄`).
    pub fn pattern_text(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|p| {
                line_slots(*p, self.chars)
                    .into_iter()
                    .map(|s| s.tone().mark())
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_quatrain_templates() {
        let five = Template::all(4, 5);
        assert_eq!(
            five[0].pattern_text(),
            ["仄仄仄平平", "平平仄仄平", "平平平仄仄", "仄仄仄平平"]
        );
        assert_eq!(five[0].name(), "仄起首句入韻");
        assert_eq!(five[3].name(), "平起首句不入韻");
        let seven = Template::all(4, 7);
        assert_eq!(
            seven[0].pattern_text(),
            [
                "平平仄仄仄平平",
                "仄仄平平仄仄平",
                "仄仄平平平仄仄",
                "平平仄仄仄平平"
            ]
        );
        assert_eq!(seven[0].name(), "平起首句入韻");
    }

    #[test]
    fn regulated_eight_lines_keep_nian_and_dui() {
        for chars in [5, 7] {
            for t in Template::all(8, chars) {
                let text = t.pattern_text();
                assert_eq!(text.len(), 8);
                let second = |i: usize| text[i].chars().nth(1).unwrap();
                for pair in (0..8).step_by(2) {
                    // 對: the two lines of a couplet are opposite at position 2.
                    assert_ne!(second(pair), second(pair + 1), "{t:?}");
                }
                for i in (1..7).step_by(2) {
                    // 粘: a couplet's second line and the next first line agree.
                    assert_eq!(second(i), second(i + 1), "{t:?}");
                }
                // Only line 1 may rhyme among the odd lines; the fifth never does.
                assert!(!t.lines[4].ends_ping() && !t.lines[2].ends_ping());
            }
        }
    }
}
