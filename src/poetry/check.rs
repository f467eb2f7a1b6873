//! The verse checker (`versifier check`, the window's marks, the quality
//! benchmark): each character's tone class, the rhyme characters and their
//! group, each broken rule with its line and column, and a one-line verdict
//! such as `押下平一先；平仄合律`.
//!
//! A poem of 4 or 8 lines of 5 or 7 characters is checked against the four
//! templates of its form ([`super::tonal`]) and judged by the one it breaks
//! least; any other poem gets its marks and the verdict that it is not a
//! regulated form. Simplified characters are read as their traditional forms.

use super::report::{slot_problem, CharMark, CheckReport, Problem, Rule};
use super::rhyme::{table, GroupSet};
use super::text::{line_ends, poem_lines};
use super::tonal::{Slot, Template};

/// The 平聲 group holding most of `chars` (ties: the lowest id), and how many.
fn best_group(chars: &[char]) -> Option<(u8, usize)> {
    let t = table();
    let mut counts = [0usize; 128];
    for &c in chars {
        let set = t.ping_only(t.groups_of(c));
        for g in t.iter_set(set) {
            counts[g.id as usize] += 1;
        }
    }
    let (id, n) = counts
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
    (*n > 0).then_some((id as u8, *n))
}

/// Problems of `lines` under `template`, the rhyme group, and the marks.
fn judge(
    lines: &[Vec<char>],
    template: &Template,
) -> (Vec<Problem>, Option<u8>, Vec<Vec<CharMark>>) {
    let t = table();
    let mut problems = Vec::new();
    let mut marks = Vec::with_capacity(lines.len());
    let chars = template.chars;
    for (i, line) in lines.iter().enumerate() {
        let pattern = template.lines[i];
        let mut row = Vec::with_capacity(line.len());
        for (col, &ch) in line.iter().enumerate() {
            let class = t.tone_class(ch);
            let slot = template.slot(i, col);
            let rhyme = col + 1 == chars && template.rhymes_at(i);
            if let Some(rule) = slot.and_then(|s| slot_problem(class, s, pattern, col, chars)) {
                let want = slot.map_or('？', |s| s.tone().mark());
                problems.push(Problem {
                    line: i + 1,
                    column: col + 1,
                    rule,
                    message: format!("{ch} 是{}，此處應{want}（{}）", class.mark(), rule.label()),
                });
            }
            row.push(CharMark {
                ch,
                class,
                required: slot.map(Slot::tone),
                free: slot.is_some_and(Slot::is_free),
                rhyme,
            });
        }
        marks.push(row);
    }
    let rhyme_at: Vec<(usize, char)> = (0..lines.len())
        .filter(|i| template.rhymes_at(*i))
        .filter_map(|i| lines[i].last().map(|c| (i, *c)))
        .collect();
    let rhyme_chars: Vec<char> = rhyme_at.iter().map(|(_, c)| *c).collect();
    let group = best_group(&rhyme_chars).map(|(g, _)| g);
    let mut seen: Vec<char> = Vec::new();
    for (i, c) in rhyme_at {
        let set: GroupSet = t.groups_of(c);
        let in_group = group.is_some_and(|g| set & (1u128 << g) != 0);
        if !in_group {
            let belongs = if set == 0 {
                "韻書未收".to_string()
            } else {
                format!("屬{}", t.names(set))
            };
            let wanted = group
                .and_then(|g| t.group(g))
                .map_or("平聲韻".to_string(), |g| g.name.clone());
            problems.push(Problem {
                line: i + 1,
                column: chars,
                rule: Rule::Rhyme,
                message: format!("韻腳 {c} 不在{wanted}（{belongs}）"),
            });
        }
        if seen.contains(&t.to_traditional(c)) {
            problems.push(Problem {
                line: i + 1,
                column: chars,
                rule: Rule::RepeatedRhyme,
                message: format!("韻腳 {c} 重複"),
            });
        }
        seen.push(t.to_traditional(c));
    }
    problems.sort_by_key(|p| (p.line, p.column));
    (problems, group, marks)
}

fn form_label(lines: usize, chars: usize) -> &'static str {
    match (lines, chars) {
        (4, 5) => "五絕",
        (4, 7) => "七絕",
        (8, 5) => "五律",
        _ => "七律",
    }
}

/// Checks a poem (simplified or traditional; any punctuation between lines).
pub fn check_poem(text: &str) -> CheckReport {
    let t = table();
    let lines = poem_lines(text);
    let n = lines.len();
    let chars = lines.first().map_or(0, Vec::len);
    let regulated =
        matches!(n, 4 | 8) && matches!(chars, 5 | 7) && lines.iter().all(|l| l.len() == chars);
    if !regulated {
        let marks = lines
            .iter()
            .map(|l| {
                l.iter()
                    .map(|&ch| CharMark {
                        ch,
                        class: t.tone_class(ch),
                        required: None,
                        free: false,
                        rhyme: false,
                    })
                    .collect()
            })
            .collect();
        let shape: Vec<String> = lines.iter().map(|l| l.len().to_string()).collect();
        return CheckReport {
            form: None,
            template: None,
            lines: marks,
            rhyme_group: None,
            problems: Vec::new(),
            rhyme_kept: false,
            tones_kept: false,
            line_ends: line_ends(text),
            verdict: format!(
                "不是近體詩的格式（{n} 句，每句 {} 字）：只標平仄",
                if shape.is_empty() {
                    "0".into()
                } else {
                    shape.join("/")
                }
            ),
        };
    }
    let (template, (problems, group, marks)) = Template::all(n, chars)
        .into_iter()
        .map(|tpl| {
            let judged = judge(&lines, &tpl);
            (tpl, judged)
        })
        .min_by_key(|(_, (p, _, _))| p.len())
        .unwrap_or_else(|| {
            let tpl = Template::all(n, chars).remove(0);
            let judged = judge(&lines, &tpl);
            (tpl, judged)
        });
    let rhyme_kept = !problems.iter().any(|p| p.rule.is_rhyme());
    let tone_problems = problems.iter().filter(|p| !p.rule.is_rhyme()).count();
    let group_name = group.and_then(|g| t.group(g)).map(|g| g.name.clone());
    let verdict = format!(
        "{}；{}",
        match (&group_name, rhyme_kept) {
            (Some(g), true) => format!("押{g}"),
            (Some(g), false) => format!("出韻（主韻{g}）"),
            (None, _) => "不押平聲韻".to_string(),
        },
        if tone_problems == 0 {
            "平仄合律".to_string()
        } else {
            format!("平仄不合 {tone_problems} 處")
        }
    );
    CheckReport {
        form: Some(form_label(n, chars).to_string()),
        template: Some(template.name()),
        lines: marks,
        rhyme_group: group_name,
        problems,
        rhyme_kept,
        tones_kept: tone_problems == 0,
        verdict,
        line_ends: line_ends(text),
    }
}

/// Checks a poem written in `form`: a 詞 in its tune's line lengths against
/// the tune's rhymes ([`super::check_ci::check_ci`]); anything else as
/// [`check_poem`] does.
pub fn check_in_form(text: &str, form: &super::forms::PoemForm) -> CheckReport {
    if let super::forms::PoemForm::Ci(name) = form {
        if let Some(report) =
            super::tunes::find_tune(name).and_then(|tune| super::check_ci::check_ci(text, tune))
        {
            return report;
        }
    }
    check_poem(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &str) -> CheckReport {
        check_poem(text)
    }

    #[test]
    fn each_line_keeps_the_mark_that_closes_it() {
        assert_eq!(
            line_ends("春眠不覺曉，處處聞啼鳥。夜來風雨聲？花落知多少！"),
            ['，', '。', '。', '。'],
            "？ and ！ close as 。"
        );
        // A 鷓鴣天's 7。7。7，7。: not the alternation of a 詩.
        assert_eq!(
            line_ends("一二三四五六七。一二三四五六七。一二三四五六七，一二三四五六七。"),
            ['。', '。', '，', '。']
        );
        // Line breaks and no mark at the end: a 詩's alternation.
        assert_eq!(
            line_ends("床前明月光\n疑是地上霜\n舉頭望明月"),
            ['，', '。', '，']
        );
    }

    #[test]
    fn famous_regulated_poems_keep_the_rules() {
        for poem in [
            // 王之渙《登鸛雀樓》
            "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。",
            // 杜甫《絕句》
            "兩個黃鸝鳴翠柳，一行白鷺上青天。窗含西嶺千秋雪，門泊東吳萬里船。",
            // 杜甫《春望》
            "國破山河在，城春草木深。感時花濺淚，恨別鳥驚心。烽火連三月，家書抵萬金。白頭搔更短，渾欲不勝簪。",
        ] {
            let r = verdict(poem);
            assert!(r.rhyme_kept && r.tones_kept, "{poem}\n{}", r.to_text());
        }
        assert_eq!(
            verdict("兩個黃鸝鳴翠柳，一行白鷺上青天。窗含西嶺千秋雪，門泊東吳萬里船。").verdict,
            "押下平一先；平仄合律"
        );
        assert_eq!(
            verdict("國破山河在，城春草木深。感時花濺淚，恨別鳥驚心。烽火連三月，家書抵萬金。白頭搔更短，渾欲不勝簪。")
                .rhyme_group
                .as_deref(),
            Some("下平十二侵")
        );
    }

    #[test]
    fn old_style_verse_breaks_the_tonal_rules() {
        // 李白《靜夜思》: rhymes (七陽) but is 古絕, not regulated.
        let r = verdict("床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。");
        assert!(r.rhyme_kept, "{}", r.to_text());
        assert!(!r.tones_kept, "{}", r.to_text());
        assert!(r.problems.iter().all(|p| p.line >= 1 && p.column >= 1));
    }

    #[test]
    fn a_quatrain_that_does_not_rhyme_is_named_with_the_line() {
        // Lines 2 and 4 end in 河 (五歌) and 凋 (二蕭).
        let r = verdict("春風吹過綠楊堤，一夜寒聲過遠河。明月不知離別苦，千山落葉盡飄凋。");
        assert!(!r.rhyme_kept, "{}", r.to_text());
        assert!(r
            .problems
            .iter()
            .any(|p| p.rule == Rule::Rhyme && p.column == 7));
    }

    #[test]
    fn simplified_input_is_read_as_traditional() {
        let r = verdict("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。");
        assert!(r.rhyme_kept && r.tones_kept, "{}", r.to_text());
        assert_eq!(r.rhyme_group.as_deref(), Some("下平十一尤"));
    }

    #[test]
    fn repeated_rhyme_and_gu_ping_are_named() {
        // 仄仄平平仄，仄平仄仄平 (孤平 at line 2 column 1) ... and 流 twice.
        let r = verdict("白日依山盡，大河入海流。欲窮千里目，更上一江流。");
        assert!(
            r.problems
                .iter()
                .any(|p| p.rule == Rule::GuPing && p.line == 2 && p.column == 1),
            "{}",
            r.to_text()
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.rule == Rule::RepeatedRhyme && p.line == 4),
            "{}",
            r.to_text()
        );
    }

    #[test]
    fn a_free_poem_gets_marks_and_says_it_is_not_regulated() {
        let r = verdict("春眠不覺曉，處處聞啼鳥。");
        assert!(r.form.is_none());
        assert_eq!(r.lines.len(), 2);
        assert!(r.verdict.starts_with("不是近體詩"), "{}", r.verdict);
    }
}
