//! 詞 tunes (詞牌): the line pattern of each tune with enough poems in the Song
//! 詞 collection, derived from the data (`data/ci-tunes.tsv`, made by
//! `packaging/corpus/make_ci_tunes.py`), embedded and parsed on first use.
//!
//! Owns: the tune table and finding a tune by its simplified or traditional
//! name. Enforcing a pattern while decoding is `forms`' job.

use std::sync::OnceLock;

use super::cilin::{parse_rhymes, parse_tones, RhymeSlot, RhymeTone};
use super::text::{COMMA, PERIOD};

const CI_TUNES_TSV: &str = include_str!("data/ci-tunes.tsv");

/// One tune and the pattern most of its poems follow.
#[derive(Debug, Clone, PartialEq)]
pub struct CiTune {
    /// As the collection writes it (simplified script).
    pub name: String,
    pub traditional: String,
    /// Each line's length and the mark that ends it (`，` or `。`).
    pub lines: Vec<(usize, char)>,
    /// Poems of this tune in the collection.
    pub poems: usize,
    /// Share of them that follow `lines`' lengths.
    pub share: f32,
    /// How many times the repeat guard lets one character stand in a poem of
    /// this tune: the smallest count, at least 2, that 90% of its poems in the
    /// pattern stay within (長相思, whose lines repeat by rule, needs 4).
    pub repeat_cap: usize,
    /// Per line: whether its last character rhymes, in which of the tune's
    /// rhymes and tone (see [`super::ci_rhyme`]).
    pub rhymes: Vec<Option<RhymeSlot>>,
    /// Share of its poems in the pattern that end two lines of one rhyme on
    /// the same character (如夢令 1.0: 如夢，如夢 by rule; most tunes near 0).
    pub rhyme_repeats: f32,
    /// Per line, the tone each position takes (its 詞譜): 平 or 仄 where 90%
    /// of the tune's Song 詞 in the pattern agree, else either.
    pub tones: Vec<Vec<RhymeTone>>,
}

impl CiTune {
    /// Characters in a poem of this tune (marks not counted).
    pub fn characters(&self) -> usize {
        self.lines.iter().map(|(n, _)| n).sum()
    }

    /// Whether the tune repeats a rhyme character by rule, so that 重韻 is
    /// no fault in it: a quarter of its poems or more do (如夢令, 憶秦娥,
    /// 長相思, 醜奴兒); the next most, 摸魚兒 and 江城子, 13%.
    pub fn repeats_rhymes_by_rule(&self) -> bool {
        self.rhyme_repeats >= 0.25
    }

    /// Where it rhymes, as the data file writes it: `a平 a平 a平 - a平 a平`.
    pub fn rhymes_text(&self) -> String {
        self.rhymes
            .iter()
            .map(|s| {
                s.map_or("-".into(), |s| {
                    format!("{}{}", char::from(b'a' + s.rhyme), s.tone.mark())
                })
            })
            .collect::<Vec<String>>()
            .join(" ")
    }

    /// Its 詞譜 as the data file writes it: `中仄平平仄仄平 中平中仄仄平平 …`.
    pub fn tones_text(&self) -> String {
        self.tones
            .iter()
            .map(|line| line.iter().map(|t| t.mark()).collect::<String>())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The pattern as the data file writes it: `7。7。7。7，7。7。`.
    pub fn pattern_text(&self) -> String {
        self.lines.iter().map(|(n, m)| format!("{n}{m}")).collect()
    }
}

/// A pattern such as `7。7。7，7。`.
fn parse_pattern(text: &str) -> Option<Vec<(usize, char)>> {
    let mut lines = Vec::new();
    let mut n = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            n.push(c);
        } else if c == COMMA || c == PERIOD {
            let len: usize = n.parse().ok().filter(|l| *l > 0)?;
            lines.push((len, c));
            n.clear();
        } else {
            return None;
        }
    }
    (n.is_empty() && !lines.is_empty()).then_some(lines)
}

/// Every tune, most poems first.
pub fn ci_tunes() -> &'static [CiTune] {
    static TUNES: OnceLock<Vec<CiTune>> = OnceLock::new();
    TUNES.get_or_init(|| {
        CI_TUNES_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                match f.as_slice() {
                    [name, traditional, pattern, poems, share, cap, rhymes, repeats, tones] => {
                        let lines = parse_pattern(pattern)?;
                        let lengths: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
                        Some(CiTune {
                            name: (*name).to_string(),
                            traditional: (*traditional).to_string(),
                            rhymes: parse_rhymes(rhymes, lines.len())?,
                            lines,
                            poems: poems.parse().ok()?,
                            share: share.parse().ok()?,
                            repeat_cap: cap.parse().ok().filter(|c| *c >= 2)?,
                            rhyme_repeats: repeats.parse().ok()?,
                            tones: parse_tones(tones, &lengths)?,
                        })
                    }
                    _ => None,
                }
            })
            .collect()
    })
}

/// The tune named `name` (simplified or traditional script).
pub fn find_tune(name: &str) -> Option<&'static CiTune> {
    let name = name.trim();
    ci_tunes()
        .iter()
        .find(|t| t.name == name || t.traditional == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tune_table_parses_whole_and_has_the_common_tunes_patterns() {
        let lines = CI_TUNES_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count();
        assert_eq!(ci_tunes().len(), lines, "every row parses");
        assert!(ci_tunes().len() >= 20);
        let huanxisha = find_tune("浣溪沙").unwrap();
        assert_eq!(huanxisha.pattern_text(), "7。7。7。7，7。7。");
        assert_eq!(huanxisha.characters(), 42);
        assert_eq!(
            find_tune("鷓鴣天"),
            find_tune("鹧鸪天"),
            "traditional names too"
        );
        assert_eq!(
            find_tune("鹧鸪天").unwrap().pattern_text(),
            "7。7。7，7。3，3。7。7，7。"
        );
        assert!(find_tune("沒有這個詞牌").is_none());
        // Repeat caps from the data: 浣溪沙 hardly ever holds a character three
        // times, 菩薩蠻 often, 長相思 repeats its lines by rule.
        assert_eq!(huanxisha.repeat_cap, 2);
        assert_eq!(find_tune("菩萨蛮").unwrap().repeat_cap, 3);
        assert_eq!(find_tune("长相思").unwrap().repeat_cap, 4);
        assert!(ci_tunes().iter().all(|t| (2..=4).contains(&t.repeat_cap)));
        assert!(ci_tunes().windows(2).all(|w| w[0].poems >= w[1].poems));
        // Where each tune rhymes, from the data: 浣溪沙 all but its fourth
        // line, in 平; every tune somewhere, and always on its last line.
        assert_eq!(huanxisha.rhymes_text(), "a平 a平 a平 - a平 a平");
        // Its 詞譜 from the data: the canonical one (中 where either tone stands).
        assert!(
            huanxisha
                .tones_text()
                .starts_with("中仄平平仄仄平 中平中仄仄平平"),
            "{}",
            huanxisha.tones_text()
        );
        for t in ci_tunes() {
            let lengths: Vec<usize> = t.lines.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                parse_tones(&t.tones_text(), &lengths).as_ref(),
                Some(&t.tones)
            );
        }
        assert!(parse_tones("平仄 平", &[2, 2]).is_none(), "length");
        assert!(parse_tones("平上", &[2]).is_none(), "mark");
        // The text parses back to the same rhymes, for every tune.
        for t in ci_tunes() {
            let again = crate::poetry::cilin::parse_rhymes(&t.rhymes_text(), t.lines.len());
            assert_eq!(again.as_ref(), Some(&t.rhymes), "{}", t.name);
        }
        assert!(ci_tunes()
            .iter()
            .all(|t| t.rhymes.last().is_some_and(Option::is_some)));
        let pusaman = find_tune("菩薩蠻").unwrap();
        let changes: Vec<u8> = pusaman.rhymes.iter().flatten().map(|s| s.rhyme).collect();
        assert_eq!(changes, [0, 0, 1, 1, 2, 2, 3, 3]);
        let by_rule: Vec<&str> = ci_tunes()
            .iter()
            .filter(|t| t.repeats_rhymes_by_rule())
            .map(|t| t.traditional.as_str())
            .collect();
        assert_eq!(by_rule, ["如夢令", "長相思", "憶秦娥", "醜奴兒・採桑子"]);
    }
}
