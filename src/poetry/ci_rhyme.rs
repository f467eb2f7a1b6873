//! The rhyme and tones of a 詞 (ci): the 19 部 of the 詞林正韻
//! (`data/cilin.tsv`, each a set of the 平水韻 groups of [`super::rhyme`]),
//! each character's readings in them, and, per tune, where it rhymes
//! ([`super::tunes::CiTune::rhymes`]) and which tone each position takes (its
//! 詞譜, [`super::tunes::CiTune::tones`]), both derived from the Song 詞 by
//! `packaging/corpus/make_ci_tunes.py`.
//!
//! Owns: the 部 table, the decoder's mask at a tune's positions
//! ([`CiRhymeRules`]) and the checker's judgment of a 詞 ([`check_ci`]). A
//! position the 詞譜 fixes takes a character of that tone (the decoder trusts
//! only the tone the table itself lists, as a 詩's strict position does).
//! Rhymes are judged by one rule: the line ends of one rhyme (a tune may change rhyme:
//! 菩薩蠻 has four) share a 部, each in the tone its position takes (平, 仄, or
//! either), and no rhyme character comes twice in one rhyme. The 部 is the
//! one most of the rhyme's characters so far fit, so a character that broke
//! the rhyme (a relaxed position) does not steer the rest. The decoder is
//! stricter than the checker in one place, as the 詩 rules are: at a 仄
//! rhyme it takes only characters 仄 in every reading. Must not: know
//! tensors or devices, or enforce the line pattern (that is `forms`').
//!
//! A group 戈載 splits between two 部 (灰, 佳, 元 and their 仄 groups) counts
//! in both, so a rhyme on one of its characters is accepted in either: the
//! table does not say which half a character belongs to.

use super::cilin::{best_bu, bu_names, readings, BuSet, Readings, RhymeSlot, RhymeTone, BU_COUNT};
use super::rhyme::{table, Tone, ToneClass};
use super::tunes::CiTune;

/// A vocabulary's tokens in the 詞林正韻: each token's character and
/// readings, and how many tokens each (部, tone) holds. Worked out once per
/// tokenizer, with the form tables.
#[derive(Debug)]
pub struct CiTokens {
    readings: Vec<Readings>,
    char_of: Vec<Option<char>>,
    /// The tone class the table itself lists for each token (what a fixed
    /// position of a 詞譜 trusts, as a 詩's strict position does).
    listed: Vec<ToneClass>,
    /// Tokens with a 平 reading in each 部, then tokens 仄 in every reading
    /// with a 仄 one there (what a 仄 rhyme may take, see [`CiRhymeRules::apply`]).
    members: [[usize; BU_COUNT]; 2],
}

impl CiTokens {
    /// The tokens of a vocabulary whose token `id` is the single ideograph
    /// `char_of[id]` (or none).
    pub fn new(char_of: Vec<Option<char>>) -> Self {
        let readings: Vec<Readings> = char_of
            .iter()
            .map(|c| c.map(readings).unwrap_or_default())
            .collect();
        let mut members = [[0usize; BU_COUNT]; 2];
        for r in &readings {
            let ze_only = if r.ping == 0 { r.ze } else { 0 };
            for (set, counts) in [r.ping, ze_only].into_iter().zip(members.iter_mut()) {
                for (b, n) in counts.iter_mut().enumerate() {
                    *n += usize::from(set & (1 << b) != 0);
                }
            }
        }
        let listed = char_of
            .iter()
            .map(|c| c.map_or(ToneClass::Unknown, |c| table().listed_class(c)))
            .collect();
        Self {
            readings,
            char_of,
            listed,
            members,
        }
    }

    /// The 部 with at least `needed` tokens that may stand at a position of `tone`.
    fn eligible(&self, tone: RhymeTone, needed: usize) -> BuSet {
        (0..BU_COUNT)
            .filter(|&b| {
                let n = match tone {
                    RhymeTone::Ping => self.members[0][b],
                    RhymeTone::Ze => self.members[1][b],
                    RhymeTone::Either => self.members[0][b] + self.members[1][b],
                };
                n >= needed
            })
            .fold(0, |set, b| set | 1 << b)
    }
}

/// A tune's rhymes for one vocabulary: at each rhyme position only the
/// characters that keep the rhyme stay possible.
#[derive(Debug, Clone)]
pub struct CiRhymeRules {
    /// Per line of the tune.
    slots: Vec<Option<RhymeSlot>>,
    tokens: std::sync::Arc<CiTokens>,
    /// The 部 asked for (from the rules' `rhyme`, a 平聲 group), held by the
    /// tune's first rhyme.
    asked: Option<BuSet>,
    /// The tune repeats rhyme characters by rule (如夢令): used ones stay open.
    repeats: bool,
    /// The tune's 詞譜 (per line, per position), when its tones are held too.
    pub(crate) tones: Option<Vec<Vec<RhymeTone>>>,
    /// The 部 each rhyme (by letter) may take where keywords hold some of its
    /// characters ([`super::keywords`]); empty: any.
    held_bu: Vec<BuSet>,
    /// Rhyme characters held for a keyword's place: no other position of
    /// their rhyme takes them.
    reserved: Vec<char>,
}

impl CiRhymeRules {
    /// The rules of `tune`; `asked` (see [`named_bu`]) narrows its first
    /// rhyme to those 部. Refused when the vocabulary holds too few
    /// characters of them in the first rhyme's tone to fill its positions.
    pub fn new(
        tune: &CiTune,
        tokens: std::sync::Arc<CiTokens>,
        asked: Option<BuSet>,
        hold_tones: bool,
    ) -> Result<Self, super::rules::RulesError> {
        let first: Vec<RhymeSlot> = tune
            .rhymes
            .iter()
            .flatten()
            .filter(|s| s.rhyme == 0)
            .copied()
            .collect();
        if let (Some(asked), Some(slot)) = (asked, first.first()) {
            let found = tokens
                .readings
                .iter()
                .filter(|r| match slot.tone {
                    RhymeTone::Ze if r.ping != 0 => false,
                    tone => r.fitting(tone) & asked != 0,
                })
                .count();
            if found <= first.len() {
                return Err(super::rules::RulesError::NarrowGroup {
                    group: format!("{}（{}聲）", bu_names(asked), slot.tone.mark()),
                    found,
                    needed: first.len(),
                });
            }
        }
        Ok(Self {
            slots: tune.rhymes.clone(),
            tokens,
            asked,
            repeats: tune.repeats_rhymes_by_rule(),
            tones: hold_tones.then(|| tune.tones.clone()),
            held_bu: Vec::new(),
            reserved: Vec::new(),
        })
    }

    /// Where the tune rhymes: per line, the rhyme its end takes.
    pub(crate) fn slots(&self) -> &[Option<RhymeSlot>] {
        &self.slots
    }

    /// The 部 in which `chars` (each held at a position of rhyme `rhyme`, in
    /// that position's tone) can all stand, within what that rhyme may take;
    /// empty when a character repeats where the tune does not repeat rhymes.
    pub(crate) fn keyword_bu(&self, rhyme: u8, chars: &[(char, RhymeTone)]) -> BuSet {
        let t = table();
        let positions: Vec<RhymeSlot> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.rhyme == rhyme)
            .copied()
            .collect();
        let tone = positions.first().map_or(RhymeTone::Either, |s| s.tone);
        let mut bu = match self.asked {
            Some(asked) if rhyme == 0 => asked,
            _ => self.tokens.eligible(tone, 4 * positions.len()),
        };
        let mut seen: Vec<char> = Vec::new();
        for &(c, tone) in chars {
            let trad = t.to_traditional(c);
            if !self.repeats && seen.contains(&trad) {
                return 0;
            }
            seen.push(trad);
            let r = readings(c);
            bu &= match tone {
                RhymeTone::Ze if r.ping != 0 => 0,
                tone => r.fitting(tone),
            };
        }
        bu
    }

    /// Holds keywords' places: rhyme `i` in the 部 `bu[i]`, and the rhyme
    /// characters `reserved` left for the places that hold them.
    pub(crate) fn hold_keywords(&mut self, bu: Vec<BuSet>, reserved: Vec<char>) {
        self.held_bu = bu;
        self.reserved = reserved
            .iter()
            .map(|c| table().to_traditional(*c))
            .collect();
    }

    /// Masks `logits` (already limited to the ideographs the form allows) at
    /// a rhyme position of the tune whose lines are `plan`; elsewhere nothing.
    /// Relaxed as the 詩 rules are (see [`super::rules::RELAX_BELOW`]) when the
    /// characters that keep the rhyme are all but impossible.
    pub fn apply(&self, plan: &[(usize, char)], written: &str, logits: &mut [f32]) {
        let (done, cur) = super::text::written_lines(written);
        let line = done.len();
        let Some((len, _)) = plan.get(line) else {
            return;
        };
        let slot = match self.slots.get(line) {
            Some(Some(slot)) if cur.len() + 1 == *len => *slot,
            // Inside a line (or an unrhymed line end): the 詞譜's tone, if held.
            _ => {
                let tone = self
                    .tones
                    .as_ref()
                    .and_then(|t| t.get(line))
                    .and_then(|l| l.get(cur.len()));
                let required = match tone {
                    Some(RhymeTone::Ping) => Tone::Ping,
                    Some(RhymeTone::Ze) => Tone::Ze,
                    _ => return,
                };
                let listed = &self.tokens.listed;
                super::rules::mask_unless_relaxed(logits, |id| {
                    listed.get(id).is_some_and(|c| c.fits(required))
                });
                return;
            }
        };
        let t = table();
        // The same rhyme's earlier line ends.
        let mut fits = Vec::new();
        let mut used = Vec::new();
        for (i, end) in done
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, *l.last()?)))
        {
            if let Some(Some(s)) = self.slots.get(i) {
                if s.rhyme == slot.rhyme {
                    fits.push(readings(end).fitting(s.tone));
                    used.push(t.to_traditional(end));
                }
            }
        }
        let (best, held) = best_bu(&fits);
        let allowed_bu = if held > 0 {
            best
        } else {
            let positions = self
                .slots
                .iter()
                .flatten()
                .filter(|s| s.rhyme == slot.rhyme);
            let eligible = self.tokens.eligible(slot.tone, 4 * positions.count());
            match self.asked {
                Some(asked) if slot.rhyme == 0 => asked,
                _ => eligible,
            }
        } & self
            .held_bu
            .get(usize::from(slot.rhyme))
            .copied()
            .unwrap_or(BuSet::MAX);
        let allowed = |id: usize| -> bool {
            // At a 仄 rhyme only characters 仄 in every reading: one with a
            // 平 reading too (搖, 龍, 中) would be heard as 平 by most readers.
            let fit = self.tokens.readings.get(id).map_or(0, |r| match slot.tone {
                RhymeTone::Ze if r.ping != 0 => 0,
                tone => r.fitting(tone),
            });
            fit & allowed_bu != 0
                && self
                    .tokens
                    .char_of
                    .get(id)
                    .copied()
                    .flatten()
                    .is_none_or(|c| {
                        let trad = t.to_traditional(c);
                        (self.repeats || !used.contains(&trad)) && !self.reserved.contains(&trad)
                    })
        };
        super::rules::mask_unless_relaxed(logits, allowed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poetry::check_ci::check_ci;
    use crate::poetry::cilin::{bu_name, bu_of_group, named_bu, parse_rhymes};
    use crate::poetry::report::Rule;
    use crate::poetry::tunes::find_tune;

    fn bu(n: usize) -> BuSet {
        1 << (n - 1)
    }

    #[test]
    fn every_pingshui_group_has_a_bu_and_the_split_ones_have_two() {
        let t = table();
        let of = bu_of_group();
        assert_eq!(of.len(), 106);
        for g in t.groups() {
            let n = of[g.id as usize].count_ones();
            let split = "灰賄泰隊佳卦元阮願".contains(g.key);
            assert_eq!(n, if split { 2 } else { 1 }, "{}", g.name);
        }
        // 入聲 groups are in 部 15 to 19 only, the others in 1 to 14.
        for g in t.groups() {
            let low = of[g.id as usize] & 0x3fff != 0;
            assert_eq!(!low, g.name.starts_with('入'), "{}", g.name);
        }
    }

    #[test]
    fn readings_put_characters_in_their_bu_and_tone() {
        assert_eq!(readings('東'), Readings { ping: bu(1), ze: 0 });
        assert_eq!(readings('送').ze, bu(1));
        assert_eq!(readings('天'), Readings { ping: bu(7), ze: 0 });
        assert_eq!(readings('月').ze, bu(18));
        assert_eq!(readings('月').ping, 0);
        // Simplified, through the traditional form.
        assert_eq!(readings('红'), readings('紅'));
        assert_eq!(readings('A'), Readings::default());
        assert_eq!(bu_name(7), "第七部");
        assert_eq!(bu_name(10), "第十部");
        assert_eq!(bu_name(19), "第十九部");
    }

    #[test]
    fn the_rhyme_column_parses_and_rejects_what_is_malformed() {
        let slots = parse_rhymes("a平 a平 - b仄", 4).unwrap();
        assert_eq!(
            slots[0],
            Some(RhymeSlot {
                rhyme: 0,
                tone: RhymeTone::Ping
            })
        );
        assert_eq!(slots[2], None);
        assert_eq!(
            slots[3].map(|s| (s.rhyme, s.tone)),
            Some((1, RhymeTone::Ze))
        );
        assert!(parse_rhymes("a平 a平", 3).is_none(), "count");
        assert!(parse_rhymes("a平 A平", 2).is_none());
        assert!(parse_rhymes("a平 a上", 2).is_none());
        assert!(parse_rhymes("a平 a平平", 2).is_none());
    }

    #[test]
    fn a_song_ci_that_keeps_its_rhyme_is_judged_so() {
        // 晏殊《浣溪沙》: 杯臺回來徊, all of 上平十灰, which 戈載 splits
        // between 第三部 and 第五部.
        let tune = find_tune("浣溪沙").unwrap();
        let yanshu = "一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回？無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。";
        let r = check_ci(yanshu, tune).unwrap();
        assert!(r.rhyme_kept, "{r:?}");
        assert_eq!(r.rhyme_group.as_deref(), Some("第三部／第五部"));
        assert_eq!(r.verdict, "押詞林正韻第三部／第五部；平仄合譜");
        assert!(r.tones_kept);
        // 曲 turned 平 where the 詞譜 (中仄平平仄仄平) wants 仄: one tone fault.
        let r = check_ci(&yanshu.replacen('曲', "天", 1), tune).unwrap();
        assert!(r.rhyme_kept && !r.tones_kept, "{r:?}");
        assert_eq!(
            (r.problems[0].line, r.problems[0].column, r.problems[0].rule),
            (1, 2, Rule::Tone)
        );
        assert_eq!(r.verdict, "押詞林正韻第三部／第五部；平仄不合譜 1 處");
        assert_eq!(r.lines[0][1].required, Some(Tone::Ze));
        assert!(r.lines[0][0].free, "中: either tone");
        assert_eq!(r.form.as_deref(), Some("詞·浣溪沙"));
        let rhymes: Vec<char> = r
            .lines
            .iter()
            .flatten()
            .filter(|m| m.rhyme)
            .map(|m| m.ch)
            .collect();
        assert_eq!(rhymes, ['杯', '臺', '回', '來', '徊']);
        // Simplified script reads the same.
        assert!(check_ci("一曲新词酒一杯，去年天气旧亭台。夕阳西下几时回？无可奈何花落去，似曾相识燕归来。小园香径独徘徊。", tune).unwrap().rhyme_kept);
        // 菩薩蠻 changes rhyme: 織碧 (入), 樓愁 (平), 立急 (入), 程亭 (平).
        let pusaman = find_tune("菩薩蠻").unwrap();
        let r = check_ci(
            "平林漠漠煙如織。寒山一帶傷心碧。暝色入高樓。有人樓上愁。玉階空佇立。宿鳥歸飛急。何處是歸程。長亭更短亭。",
            pusaman,
        )
        .unwrap();
        assert!(r.rhyme_kept, "{r:?}");
        assert_eq!(
            r.rhyme_group.as_deref(),
            Some("第十七部、第十二部、第十七部、第十一部")
        );
    }

    #[test]
    fn a_broken_rhyme_is_named_with_its_line_and_why() {
        let tune = find_tune("浣溪沙").unwrap();
        // 蘇軾's: 泥西雞 are 第三部 (溪 and 啼 are not in the table, so
        // neither counts). Line 3 ends in 月 (入聲, 第十八部) here, line 5
        // in 紅 (第一部), line 6 repeats 泥.
        let r = check_ci(
            "山下蘭芽短浸西。松間沙路淨無泥。蕭蕭暮雨子規月。誰道人生無再少，門前流水尚能紅。休將白髮唱黃泥。",
            tune,
        )
        .unwrap();
        assert!(!r.rhyme_kept);
        let at: Vec<(usize, usize, Rule)> = r
            .problems
            .iter()
            .map(|p| (p.line, p.column, p.rule))
            .collect();
        assert_eq!(
            at,
            [
                (3, 7, Rule::Rhyme),
                (5, 7, Rule::Rhyme),
                (6, 7, Rule::RepeatedRhyme)
            ]
        );
        assert!(
            r.problems[0].message.contains("第十八部"),
            "{:?}",
            r.problems[0]
        );
        assert!(r.verdict.starts_with("出韻 3 處"), "{}", r.verdict);
        // 細 is 第三部 but 去聲 where the tune wants 平.
        let r = check_ci(
            "山下蘭芽短浸西。松間沙路淨無泥。蕭蕭暮雨子規齊。誰道人生無再少，門前流水尚能低。休將白髮唱黃細。",
            tune,
        )
        .unwrap();
        assert_eq!(r.problems.len(), 1, "{r:?}");
        assert!(
            r.problems[0].message.contains("是仄聲"),
            "{:?}",
            r.problems[0]
        );
        assert_eq!(r.problems[0].line, 6);
        // 如夢令 repeats its rhyme by rule: 如夢，如夢 (李清照).
        let rumeng = find_tune("如夢令").unwrap();
        let r = check_ci(
            "常記溪亭日暮。沉醉不知歸路。興盡晚回舟，誤入藕花深處。爭渡。爭渡。驚起一灘鷗鷺。",
            rumeng,
        )
        .unwrap();
        assert!(
            !r.problems.iter().any(|p| p.rule == Rule::RepeatedRhyme),
            "{r:?}"
        );
        // Not the tune's lines: nothing to judge.
        assert!(check_ci("春眠不覺曉，處處聞啼鳥。", tune).is_none());
    }

    /// A vocabulary: a few characters of 第一部 (平 and 仄), 第七部, 第十八部.
    fn tokens() -> (std::sync::Arc<CiTokens>, Vec<char>) {
        let chars: Vec<char> = "東紅風中空同送夢動天年前然煙山間寒月雪別說節春花"
            .chars()
            .collect();
        (
            std::sync::Arc::new(CiTokens::new(chars.iter().copied().map(Some).collect())),
            chars,
        )
    }

    fn allowed(
        rules: &CiRhymeRules,
        plan: &[(usize, char)],
        written: &str,
        chars: &[char],
    ) -> String {
        let mut logits = vec![0f32; chars.len()];
        rules.apply(plan, written, &mut logits);
        chars
            .iter()
            .zip(&logits)
            .filter(|(_, l)| l.is_finite())
            .map(|(c, _)| *c)
            .collect()
    }

    #[test]
    fn the_decoder_keeps_a_rhyme_in_its_bu_and_tone_and_leaves_other_positions_alone() {
        let (tokens, chars) = tokens();
        let tune = find_tune("浣溪沙").unwrap();
        let mut rules = CiRhymeRules::new(tune, tokens, None, false).unwrap();
        // The test vocabulary is small: let every 部 it has be eligible.
        rules.tokens = std::sync::Arc::new(CiTokens {
            members: [[100; BU_COUNT]; 2],
            ..CiTokens::new(chars.iter().copied().map(Some).collect())
        });
        let plan = &tune.lines;
        // Not a line's last character: nothing masked.
        assert_eq!(
            allowed(&rules, plan, "春", &chars).chars().count(),
            chars.len()
        );
        // The first rhyme: any 平 character with a 部.
        let first = allowed(&rules, plan, "一二三四五六", &chars);
        assert_eq!(first, "東紅風中空同夢天年前然煙山間寒春花");
        // After 東 (第一部, 平): the rest of 第一部's 平 characters, not 東 again.
        let second = allowed(&rules, plan, "一二三四五六東。一二三四五六", &chars);
        assert_eq!(second, "紅風中空同夢");
        // Line 4 does not rhyme.
        let fourth = allowed(
            &rules,
            plan,
            "一二三四五六東。一二三四五六紅。一二三四五六風。一二三四五六",
            &chars,
        );
        assert_eq!(fourth.chars().count(), chars.len());
        // A relaxed first rhyme (月) does not steer the rest: the majority does.
        let later = allowed(
            &rules,
            plan,
            "一二三四五六月。一二三四五六天。一二三四五六年。一二三四五六雪，一二三四五六",
            &chars,
        );
        assert_eq!(later, "前然煙山間寒");
        // 菩薩蠻's first rhyme is 仄.
        let pusaman = find_tune("菩薩蠻").unwrap();
        let rules =
            CiRhymeRules::new(pusaman, std::sync::Arc::clone(&rules.tokens), None, false).unwrap();
        let ze = allowed(&rules, &pusaman.lines, "一二三四五六", &chars);
        // 中, 空, 夢 and 間 have 去聲 readings too, but 平 ones as well: left out.
        assert_eq!(ze, "送動月雪別說節");
    }

    #[test]
    fn an_asked_rhyme_holds_the_first_rhyme_and_nothing_likely_is_relaxed() {
        let (tokens, chars) = tokens();
        let tune = find_tune("浣溪沙").unwrap();
        let rules = CiRhymeRules::new(
            tune,
            std::sync::Arc::clone(&tokens),
            Some(named_bu("先").unwrap()),
            false,
        )
        .unwrap();
        assert_eq!(
            allowed(&rules, &tune.lines, "一二三四五六", &chars),
            "天年前然煙山間寒"
        );
        // All the model's weight on 東 where 第七部 is asked: relaxed, not emptied.
        let mut logits = vec![-1e4f32; chars.len()];
        logits[0] = 0.0;
        rules.apply(&tune.lines, "一二三四五六", &mut logits);
        assert!(logits[0].is_finite());
        // A 部 the vocabulary barely has in the tune's tone is refused, with numbers.
        let err =
            CiRhymeRules::new(tune, tokens, Some(named_bu("月").unwrap()), false).unwrap_err();
        assert!(err.to_string().contains("第十八部（平聲）"), "{err}");
    }

    #[test]
    fn a_rhyme_for_a_ci_is_named_by_any_group_or_character() {
        assert_eq!(named_bu("東").unwrap(), bu(1));
        assert_eq!(named_bu("一董").unwrap(), bu(1));
        assert_eq!(named_bu("上聲一董").unwrap(), bu(1));
        assert_eq!(named_bu("入聲六月").unwrap(), bu(18));
        assert_eq!(named_bu("月").unwrap(), bu(18));
        assert_eq!(named_bu("红").unwrap(), bu(1));
        assert_eq!(
            named_bu("灰").unwrap(),
            bu(3) | bu(5),
            "a split group: both"
        );
        let err = named_bu("xyz").unwrap_err().to_string();
        assert!(err.contains("詞林正韻") && err.contains("xyz"), "{err}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::poetry::check_ci::check_ci;
    use crate::poetry::cilin::named_bu;
    use crate::poetry::tunes::ci_tunes;

    /// A vocabulary of the first eight characters of every 平水韻 group.
    fn pool() -> Vec<char> {
        let mut seen = std::collections::HashSet::new();
        table()
            .groups()
            .iter()
            .flat_map(|g| g.members.iter().take(8).copied())
            .filter(|c| seen.insert(*c))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the decoder lets stand, holding rhymes and tones, the
        /// checker finds kept: the two judge by one rule.
        #[test]
        fn what_the_decoder_allows_the_checker_accepts(
            tune_index in 0..20usize,
            seed in any::<u64>(),
        ) {
            let chars = pool();
            let tune = &ci_tunes()[tune_index];
            let tokens = std::sync::Arc::new(CiTokens::new(chars.iter().copied().map(Some).collect()));
            let rules = CiRhymeRules::new(tune, tokens, None, true).unwrap();
            let mut state = seed | 1;
            let mut next = move || {
                // xorshift: the logits and the characters off the rhyme positions.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut written = String::new();
            for (len, mark) in &tune.lines {
                for _ in 0..*len {
                    let mut logits: Vec<f32> = (0..chars.len()).map(|_| (next() % 1000) as f32 / 100.0).collect();
                    rules.apply(&tune.lines, &written, &mut logits);
                    let best = logits
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.is_finite())
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|(i, _)| i);
                    prop_assert!(best.is_some(), "every token masked after {written}");
                    written.push(chars[best.unwrap_or(0)]);
                }
                written.push(*mark);
            }
            let report = check_ci(&written, tune).unwrap();
            prop_assert!(report.rhyme_kept && report.tones_kept, "{}: {written}: {:?}", tune.name, report.problems);
        }

        /// Any text, any rhyme name: no panic, and a report whose problems
        /// lie inside the poem.
        #[test]
        fn hostile_text_and_rhyme_names_never_panic(
            text in "[\\PC春月東紅，。？！a-z\\n ]{0,80}",
            name in "\\PC{0,8}",
            tune_index in 0..70usize,
        ) {
            let _ = named_bu(&name);
            let tune = &ci_tunes()[tune_index % ci_tunes().len()];
            if let Some(r) = check_ci(&text, tune) {
                prop_assert_eq!(r.lines.len(), tune.lines.len());
                prop_assert_eq!(r.rhyme_kept, r.problems.is_empty());
                for p in &r.problems {
                    prop_assert!(p.line >= 1 && p.line <= r.lines.len());
                    prop_assert!(p.column >= 1 && p.column <= r.lines[p.line - 1].len());
                }
            }
        }
    }
}
