//! The 詞林正韻: its 19 部 (`data/cilin.tsv`, each a set of the 平水韻 groups
//! of [`super::rhyme`]), each character's readings in them, and a tune's
//! rhyme and tone notation parsed.
//!
//! Owns: the 部 table. Must not: judge a poem or mask a decoder.

use std::sync::OnceLock;

use super::rhyme::{table, Tone};

pub(super) const CILIN_TSV: &str = include_str!("data/cilin.tsv");

/// How many 部 the 詞林正韻 has.
pub const BU_COUNT: usize = 19;

/// A set of 部: bit `b - 1` for 第b部.
pub type BuSet = u32;

/// The tone a tune asks of a position: of a rhyme, or of a character inside
/// a line (its 詞譜, [`CiTune::tones`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RhymeTone {
    /// 平聲.
    Ping,
    /// 上, 去 or 入聲.
    Ze,
    /// Either: the tune's poems disagree (柳梢青 has a 平 and a 仄 form).
    Either,
}

impl RhymeTone {
    /// 平, 仄 or 中, as `ci-tunes.tsv` writes it.
    pub fn mark(self) -> char {
        match self {
            Self::Ping => '平',
            Self::Ze => '仄',
            Self::Either => '中',
        }
    }

    fn from_mark(c: char) -> Option<Self> {
        match c {
            '平' => Some(Self::Ping),
            '仄' => Some(Self::Ze),
            '中' => Some(Self::Either),
            _ => None,
        }
    }
}

/// A line of a tune that ends in a rhyme: which rhyme (0 for the tune's first,
/// `a` in the data) and its tone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RhymeSlot {
    pub rhyme: u8,
    pub tone: RhymeTone,
}

/// The data file's rhyme column: one word per line, `-` or a letter and a
/// tone mark (`a平 a平 a平 - a平 a平`). `None` when a word is malformed or the
/// count is not `lines`.
pub fn parse_rhymes(text: &str, lines: usize) -> Option<Vec<Option<RhymeSlot>>> {
    let slots: Vec<Option<RhymeSlot>> = text
        .split_whitespace()
        .map(|word| {
            if word == "-" {
                return Some(None);
            }
            let mut chars = word.chars();
            match (chars.next(), chars.next(), chars.next()) {
                (Some(letter @ 'a'..='z'), Some(mark), None) => Some(Some(RhymeSlot {
                    rhyme: letter as u8 - b'a',
                    tone: RhymeTone::from_mark(mark)?,
                })),
                _ => None,
            }
        })
        .collect::<Option<_>>()?;
    (slots.len() == lines).then_some(slots)
}

/// The data file's tones column: one word of 平/仄/中 per line, as long as
/// the line (`lines`: the tune's line lengths). `None` when malformed.
pub fn parse_tones(text: &str, lines: &[usize]) -> Option<Vec<Vec<RhymeTone>>> {
    let words: Vec<Vec<RhymeTone>> = text
        .split_whitespace()
        .map(|word| {
            word.chars()
                .map(RhymeTone::from_mark)
                .collect::<Option<Vec<_>>>()
        })
        .collect::<Option<_>>()?;
    (words.len() == lines.len() && words.iter().zip(lines).all(|(w, n)| w.len() == *n))
        .then_some(words)
}

/// A character's 部: those where it has a 平 reading, and those where it has
/// a 仄 one (both empty when the 平水韻 table does not hold it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readings {
    pub ping: BuSet,
    pub ze: BuSet,
}

impl Readings {
    /// The 部 in which this character may stand at a position of `tone`.
    pub fn fitting(self, tone: RhymeTone) -> BuSet {
        match tone {
            RhymeTone::Ping => self.ping,
            RhymeTone::Ze => self.ze,
            RhymeTone::Either => self.ping | self.ze,
        }
    }
}

/// The 部 of each 平水韻 group, by group id.
pub(super) fn bu_of_group() -> &'static [BuSet] {
    static BU: OnceLock<Vec<BuSet>> = OnceLock::new();
    BU.get_or_init(|| {
        let rows: Vec<(usize, Vec<&str>)> = CILIN_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut fields = l.split('\t');
                let bu: usize = fields.next()?.parse().ok()?;
                (1..=BU_COUNT).contains(&bu).then(|| (bu, fields.collect()))
            })
            .collect();
        table()
            .groups()
            .iter()
            .map(|g| {
                // 平聲 groups are in the first column, 上聲 and 去聲 in the
                // second, 入聲 in the third.
                let column = match g.tone {
                    Tone::Ping => 0,
                    Tone::Ze if g.name.starts_with('入') => 2,
                    Tone::Ze => 1,
                };
                rows.iter()
                    .filter(|(_, cols)| cols.get(column).is_some_and(|c| c.contains(g.key)))
                    .fold(0, |set, (bu, _)| set | 1 << (bu - 1))
            })
            .collect()
    })
}

/// `c`'s readings in the 詞林正韻 (simplified characters through their
/// traditional forms, as the 平水韻 table reads them).
pub fn readings(c: char) -> Readings {
    let t = table();
    let bu = bu_of_group();
    let mut r = Readings::default();
    for g in t.iter_set(t.groups_of(c)) {
        let set = bu.get(g.id as usize).copied().unwrap_or(0);
        match g.tone {
            Tone::Ping => r.ping |= set,
            Tone::Ze => r.ze |= set,
        }
    }
    r
}

/// The 部 a rhyme named for a 詞 stands for: those of the 平水韻 group it
/// names (`東`, `一董`, `入聲六月`), or of every group of the character it is
/// (`月`: 第十八部).
pub fn named_bu(text: &str) -> Result<BuSet, super::rhyme::RhymeError> {
    let bu = bu_of_group();
    let groups = table().find_any_group(text)?;
    Ok(table().iter_set(groups).fold(0, |set, g| {
        set | bu.get(g.id as usize).copied().unwrap_or(0)
    }))
}

/// `第七部`.
pub fn bu_name(bu: usize) -> String {
    const DIGITS: [&str; 10] = ["", "一", "二", "三", "四", "五", "六", "七", "八", "九"];
    let tens = match bu / 10 {
        0 => "",
        1 => "十",
        _ => "二十",
    };
    format!("第{tens}{}部", DIGITS[bu % 10])
}

/// The names of a set's 部, joined with `、`.
pub(super) fn bu_names(set: BuSet) -> String {
    (1..=BU_COUNT)
        .filter(|b| set & (1 << (b - 1)) != 0)
        .map(bu_name)
        .collect::<Vec<_>>()
        .join("、")
}

/// The 部 most of `fits` hold (all of them on a tie), and how many hold it.
pub(super) fn best_bu(fits: &[BuSet]) -> (BuSet, usize) {
    let mut counts = [0usize; BU_COUNT];
    for f in fits {
        for (b, n) in counts.iter_mut().enumerate() {
            *n += usize::from(f & (1 << b) != 0);
        }
    }
    let most = counts.iter().copied().max().unwrap_or(0);
    if most == 0 {
        return (0, 0);
    }
    let set = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n == most)
        .fold(0, |set, (b, _)| set | 1 << b);
    (set, most)
}
