//! The checker's judgment of a 詞: its line lengths against its tune, each
//! rhyme's line ends against the 部 most of them share, every other character
//! against the tune's 詞譜 where it fixes a tone.
//!
//! Owns: `check_ci`. Must not: mask a decoder (`ci_rhyme` does).

use super::cilin::{best_bu, bu_name, bu_names, readings, BuSet, RhymeTone, BU_COUNT};
use super::report::{CharMark, CheckReport, Problem, Rule};
use super::rhyme::{table, Tone, ToneClass};
use super::text::poem_lines;
use super::tunes::CiTune;

/// Checks `text` as a 詞 of `tune`: `None` when its lines are not the tune's
/// line lengths (then it is no 詞 of this tune to judge). Each rhyme's line
/// ends are judged against the 部 most of them share, and every other
/// character against the tune's 詞譜 ([`CiTune::tones`]) where it fixes a
/// tone.
#[allow(clippy::too_many_lines)] // the judgment of a 詞 in one pass over its lines (lengths, each rhyme against its 部, each fixed tone); to be cut into steps with the checker (issue #42)
pub fn check_ci(text: &str, tune: &CiTune) -> Option<CheckReport> {
    let t = table();
    let lines = poem_lines(text);
    if lines.len() != tune.lines.len()
        || lines
            .iter()
            .zip(&tune.lines)
            .any(|(l, (n, _))| l.len() != *n)
    {
        return None;
    }
    let mut problems = Vec::new();
    let mut marks: Vec<Vec<CharMark>> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let rhyme_line = tune.rhymes.get(i).is_some_and(Option::is_some);
        let mut row = Vec::with_capacity(line.len());
        for (col, &ch) in line.iter().enumerate() {
            let rhyme = rhyme_line && col + 1 == line.len();
            let class = t.tone_class(ch);
            // The 詞譜's tone here; a rhyme's tone is the rhyme's to judge.
            let required = match tune.tones.get(i).and_then(|l| l.get(col)) {
                Some(RhymeTone::Ping) if !rhyme => Some(Tone::Ping),
                Some(RhymeTone::Ze) if !rhyme => Some(Tone::Ze),
                _ => None,
            };
            if let Some(tone) = required.filter(|tone| !class.fits(*tone)) {
                let rule = if class == ToneClass::Unknown {
                    Rule::UnknownTone
                } else {
                    Rule::Tone
                };
                problems.push(Problem {
                    line: i + 1,
                    column: col + 1,
                    rule,
                    message: format!(
                        "{ch} 是{}，詞譜此處應{}（{}）",
                        class.mark(),
                        tone.mark(),
                        rule.label()
                    ),
                });
            }
            row.push(CharMark {
                ch,
                class,
                required,
                free: required.is_none(),
                rhyme,
            });
        }
        marks.push(row);
    }
    let mut names = Vec::new();
    let rhymes = tune.rhymes.iter().flatten().map(|s| s.rhyme).max();
    for rhyme in 0..rhymes.map_or(0, |r| r + 1) {
        let ends: Vec<(usize, char, RhymeTone)> = tune
            .rhymes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = (*s)?;
                (s.rhyme == rhyme).then_some((i, *lines[i].last()?, s.tone))
            })
            .collect();
        let fits: Vec<BuSet> = ends
            .iter()
            .map(|(_, c, tone)| readings(*c).fitting(*tone))
            .collect();
        let (best, _) = best_bu(&fits);
        // Judged by the first 部 of a tie; named by every 部 all its
        // keeping characters share (杯臺回 are 灰: 第三部／第五部).
        let bu = best.trailing_zeros() as usize + 1;
        let judged = if best == 0 { 0 } else { 1 << (bu - 1) };
        if judged != 0 {
            let shared = fits
                .iter()
                .filter(|f| *f & judged != 0)
                .fold(best, |set, f| set & f);
            names.push(
                (1..=BU_COUNT)
                    .filter(|b| shared & (1 << (b - 1)) != 0)
                    .map(bu_name)
                    .collect::<Vec<_>>()
                    .join("／"),
            );
        }
        let mut seen = Vec::new();
        for ((i, c, tone), fit) in ends.iter().zip(&fits) {
            let (line, column) = (i + 1, lines[*i].len());
            if fit & judged == 0 {
                let all = readings(*c).fitting(RhymeTone::Either);
                let belongs = if all == 0 {
                    "韻書未收".to_string()
                } else if all & judged != 0 {
                    format!(
                        "是{}聲",
                        if *tone == RhymeTone::Ping {
                            '仄'
                        } else {
                            '平'
                        }
                    )
                } else {
                    format!("屬{}", bu_names(all))
                };
                let wanted = if judged == 0 {
                    "韻".to_string()
                } else {
                    bu_name(bu)
                };
                let tone_word = match tone {
                    RhymeTone::Ping => "平聲",
                    RhymeTone::Ze => "仄聲",
                    RhymeTone::Either => "",
                };
                problems.push(Problem {
                    line,
                    column,
                    rule: Rule::Rhyme,
                    message: format!("韻腳 {c} 不押{wanted}{tone_word}（{belongs}）"),
                });
            }
            let trad = t.to_traditional(*c);
            if seen.contains(&trad) && !tune.repeats_rhymes_by_rule() {
                problems.push(Problem {
                    line,
                    column,
                    rule: Rule::RepeatedRhyme,
                    message: format!("韻腳 {c} 重複"),
                });
            }
            seen.push(trad);
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    let rhyme_faults = problems.iter().filter(|p| p.rule.is_rhyme()).count();
    let tone_faults = problems.len() - rhyme_faults;
    let rhyme_kept = rhyme_faults == 0;
    let group = (!names.is_empty()).then(|| names.join("、"));
    let verdict = format!(
        "{}；{}",
        match (&group, rhyme_kept) {
            (Some(g), true) => format!("押詞林正韻{g}"),
            (Some(g), false) => format!("出韻 {rhyme_faults} 處（{g}）"),
            (None, _) => "不押韻".to_string(),
        },
        if tone_faults == 0 {
            "平仄合譜".to_string()
        } else {
            format!("平仄不合譜 {tone_faults} 處")
        }
    );
    Some(CheckReport {
        form: Some(format!("詞·{}", tune.traditional)),
        template: None,
        lines: marks,
        rhyme_group: group,
        problems,
        rhyme_kept,
        tones_kept: tone_faults == 0,
        verdict,
        line_ends: super::text::line_ends(text),
    })
}
