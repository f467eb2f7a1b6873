//! A form constraint that holds keywords: the form's positions as the planner
//! ([`super::keywords::plan`]) sees them (each template's or the tune's tones,
//! its rhymes, an acrostic's heads), and the constraint's rules narrowed to
//! the plan it returns, so that the model writes around the held characters
//! and every poem keeps the rules as before.

use super::cilin::{BuSet, RhymeTone};
use super::constraint::{ConstraintError, FormConstraint};
use super::forms::{next_place, PoemForm};
use super::keywords::{plan, KeywordError, KeywordPlan, Need, PlanGrid};
use super::rhyme::GroupSet;
use super::rules::{RulesMode, ToneRules, VerseRules};
use super::text::{is_hanzi, written_lines};
use super::tonal::Slot;

impl FormConstraint {
    /// Holds `words` (1 to 4 keywords) in every poem this constraint writes,
    /// each at a place [`plan`] chose after `start` (the poem's start: the
    /// prompt, kept lines included). Free verse takes the regulated shape of
    /// its first line (lines of seven unless the prompt closed a line of
    /// five) and may end after four lines or eight, as under strict rules.
    /// A keyword already in `start`, or inside a longer keyword, needs no
    /// place of its own.
    pub fn hold_keywords(
        mut self,
        words: &[String],
        start: &str,
        verse: &VerseRules,
    ) -> Result<Self, ConstraintError> {
        if words.is_empty() {
            return Ok(self);
        }
        for w in words {
            if let Some(ch) = w
                .chars()
                .find(|c| !is_hanzi(*c) || !self.chars.char_ids.contains_key(c))
            {
                return Err(KeywordError::NotInVocabulary {
                    word: w.clone(),
                    ch,
                }
                .into());
            }
        }
        let (done, cur) = written_lines(start);
        let start_lines: Vec<String> = done
            .iter()
            .chain(std::iter::once(&cur))
            .map(|l| l.iter().collect())
            .collect();
        let needed: Vec<Vec<char>> = words
            .iter()
            .filter(|w| !start_lines.iter().any(|l| l.contains(w.as_str())))
            .filter(|w| {
                !words
                    .iter()
                    .any(|o| o.len() > w.len() && o.contains(w.as_str()))
            })
            .map(|w| w.chars().collect())
            .collect();
        if self.form == PoemForm::Free {
            let first_line = done.first().map_or((cur.len(), false), |l| (l.len(), true));
            self.take_free_shape(first_line, verse)?;
        }
        let variants = self.needs();
        let rules = self.rules.clone();
        let ci = self.ci.clone();
        let agree = move |rhyme: u8, chars: &[(char, RhymeTone)]| match (&rules, &ci) {
            (Some(rules), _) => {
                let plain: Vec<char> = chars.iter().map(|(c, _)| *c).collect();
                rules.keyword_groups(&plain) != 0
            }
            (None, Some(ci)) => ci.keyword_bu(rhyme, chars) != 0,
            (None, None) => true,
        };
        let lines: Vec<usize> = self.plan.iter().flatten().map(|(n, _)| *n).collect();
        let grid = PlanGrid {
            form: self.form_name(),
            usable_lines: if self.may_end_after_four {
                4
            } else {
                lines.len()
            },
            lines,
            variants,
            rhymes_agree: &agree,
            open_from: next_place(start),
        };
        let planned = plan(&needed, &grid)?;
        self.narrow_rules(&grid, &planned);
        self.pins = planned.pins();
        Ok(self)
    }

    /// The form's name in a refusal.
    fn form_name(&self) -> String {
        match (&self.form, self.plan.as_ref().and_then(|p| p.first())) {
            (PoemForm::Free, Some((chars, _))) => format!("free verse in lines of {chars}"),
            (form, _) => form.label(),
        }
    }

    /// Free verse given keywords: eight lines of the length the prompt's
    /// first line closed with (5 or 7; 7 while it is open) that may end after
    /// four, under the rules of that shape.
    fn take_free_shape(
        &mut self,
        (first_line, closed): (usize, bool),
        verse: &VerseRules,
    ) -> Result<(), ConstraintError> {
        let chars = match (first_line, closed) {
            (5 | 7, true) => first_line,
            (n, false) if n <= 7 => 7,
            (n, _) => return Err(KeywordError::FreeVerseLine { found: n }.into()),
        };
        self.plan = PoemForm::from_shape(8, chars).and_then(|f| f.line_plan());
        self.rules = match verse.mode {
            RulesMode::Strict => Some(ToneRules::new(
                8,
                chars,
                verse,
                std::sync::Arc::clone(&self.chars.tones),
            )?),
            RulesMode::Off => None,
        };
        self.free = None;
        self.may_end_after_four = true;
        Ok(())
    }

    /// What each position asks of a keyword's character: one table per
    /// template under a 詩's rules, the 詞譜 and rhymes under a 詞's, or
    /// only the form's own characters (an acrostic's heads) without rules.
    fn needs(&self) -> Vec<Vec<Vec<Need>>> {
        let lines: Vec<usize> = self.plan.iter().flatten().map(|(n, _)| *n).collect();
        let acrostic = matches!(self.form, PoemForm::Acrostic(_));
        let own = |col: usize, need: Need| {
            if acrostic && col == 0 {
                Need::Taken
            } else {
                need
            }
        };
        if let Some(rules) = &self.rules {
            return rules
                .templates()
                .iter()
                .map(|tpl| {
                    let table = lines.iter().enumerate().map(|(line, &n)| {
                        (0..n)
                            .map(|col| {
                                let need = match tpl.slot(line, col) {
                                    _ if col + 1 == n && tpl.rhymes_at(line) => Need::Rhyme {
                                        rhyme: 0,
                                        tone: RhymeTone::Ping,
                                    },
                                    _ if col + 1 == n => Need::PlainEnd,
                                    Some(Slot::Tone(tone)) => Need::Tone(tone),
                                    _ => Need::Any,
                                };
                                own(col, need)
                            })
                            .collect()
                    });
                    table.collect()
                })
                .collect();
        }
        let ci = self.ci.as_ref();
        let table = lines.iter().enumerate().map(|(line, &n)| {
            (0..n)
                .map(|col| {
                    let Some(ci) = ci else {
                        return own(col, Need::Any);
                    };
                    if let (true, Some(Some(slot))) = (col + 1 == n, ci.slots().get(line)) {
                        return Need::Rhyme {
                            rhyme: slot.rhyme,
                            tone: slot.tone,
                        };
                    }
                    let tone = ci.tones.as_ref().and_then(|t| t.get(line)?.get(col));
                    match tone {
                        Some(RhymeTone::Ping) => Need::Tone(super::rhyme::Tone::Ping),
                        Some(RhymeTone::Ze) => Need::Tone(super::rhyme::Tone::Ze),
                        _ => Need::Any,
                    }
                })
                .collect()
        });
        vec![table.collect()]
    }

    /// Narrows the rules to `planned`: only the templates its characters keep,
    /// each rhyme in the groups (部) its held characters share, and those
    /// characters kept for their own places.
    fn narrow_rules(&mut self, grid: &PlanGrid, planned: &KeywordPlan) {
        let Some(&variant) = planned.variants.first() else {
            return;
        };
        let mut at_rhymes: Vec<(u8, char, RhymeTone)> = Vec::new();
        for pin in planned.pins() {
            if let Need::Rhyme { rhyme, tone } = grid.variants[variant][pin.line][pin.column] {
                at_rhymes.push((rhyme, pin.ch, tone));
            }
        }
        let reserved: Vec<char> = at_rhymes.iter().map(|(_, c, _)| *c).collect();
        if let Some(rules) = &mut self.rules {
            let groups = if reserved.is_empty() {
                GroupSet::MAX
            } else {
                rules.keyword_groups(&reserved)
            };
            rules.hold_keywords(&planned.variants, groups, reserved);
        } else if let Some(ci) = &mut self.ci {
            let rhymes = at_rhymes.iter().map(|(r, _, _)| usize::from(*r) + 1).max();
            let bu: Vec<BuSet> = (0..rhymes.unwrap_or(0))
                .map(|r| {
                    let chars: Vec<(char, RhymeTone)> = at_rhymes
                        .iter()
                        .filter(|(rhyme, _, _)| usize::from(*rhyme) == r)
                        .map(|(_, c, t)| (*c, *t))
                        .collect();
                    if chars.is_empty() {
                        BuSet::MAX
                    } else {
                        ci.keyword_bu(r as u8, &chars)
                    }
                })
                .collect();
            ci.hold_keywords(bu, reserved);
        }
    }
}
