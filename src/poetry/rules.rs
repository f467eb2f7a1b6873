//! Rhyme and tones enforced while decoding: at each position the characters
//! the tonal template forbids are masked; at the first rhyme position a 平聲
//! group is taken (the user's, or any with enough characters in the
//! vocabulary), and later rhyme positions allow only that group, minus the
//! rhyme characters already used.
//!
//! Stateless over the text written so far, so batched variations each follow
//! their own template and group and nothing is retried: the templates still
//! consistent with a variation's text are recomputed at every step (at most
//! four), and a character is allowed when one of them allows it. Acrostic
//! heads and the prompt are part of that text.
//!
//! Stricter than the checker where a reader could disagree: a strict
//! position takes only characters whose tone the table itself lists (not one
//! read through a simplified form or the collection's annotations), and a line
//! end that does not rhyme takes only characters that are 仄 in every reading
//! and share no group (in any tone) with the rhymes so far (no 撞韻).
//!
//! Relaxation (documented, never silent): when the allowed characters hold
//! less than [`RELAX_BELOW`] of the probability the model gives the
//! characters the form allows, or none is left, the verse rules are lifted
//! for that one position (the form's own rules stay). The result reports each
//! broken rule, with line and column, from the checker.

use serde::{Deserialize, Serialize};

use super::report::slot_problem;
use super::rhyme::{table, GroupSet, RhymeError, ToneClass};
use super::text::written_lines;
use super::tonal::{Slot, Template, TemplateStart};

/// Below this share of the form-allowed probability, a position is relaxed.
pub const RELAX_BELOW: f32 = 1e-6;

/// Strict: the regulated forms keep rhyme and tones; off: today's form-only
/// decoding (same seed, same poem as before the rules existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RulesMode {
    #[default]
    Strict,
    Off,
}

impl std::str::FromStr for RulesMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "strict" => Ok(Self::Strict),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown rules `{other}`: expected strict or off")),
        }
    }
}

impl std::fmt::Display for RulesMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Off => "off",
        })
    }
}

/// Whether decoding may repeat itself: `Guard` stops the same character a
/// third time in a row, a line the same as an earlier one, and a character a
/// third time in a 詩 (a fourth in a 詞), in every form;
/// `Allow` decodes as before the guard existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Repeats {
    #[default]
    Guard,
    Allow,
}

impl std::str::FromStr for Repeats {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "guard" => Ok(Self::Guard),
            "allow" => Ok(Self::Allow),
            other => Err(format!(
                "unknown repeats `{other}`: expected guard or allow"
            )),
        }
    }
}

impl std::fmt::Display for Repeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Guard => "guard",
            Self::Allow => "allow",
        })
    }
}

/// The verse rules a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerseRules {
    pub mode: RulesMode,
    /// A 平聲 group by name or by a character in it (`東`, `一先`, `红`); a
    /// 詞's first rhyme takes its 部 of the 詞林正韻.
    pub rhyme: Option<String>,
    /// 平起, 仄起 or either.
    pub template: TemplateStart,
    /// No character three times in a row, no line twice.
    pub repeats: Repeats,
    /// Words every poem holds, each at a place where it keeps the rules
    /// ([`super::keywords`]; traditional script, as [`super::keywords::parse_theme`]
    /// reads them); empty: none.
    pub keywords: Vec<String>,
    /// Whether strict rules hold a 詞 to its tune's rhymes and 詞譜 (see
    /// [`super::ci_rhyme`]). Always on for a new request; never saved here
    /// (settings written before it existed still get it): a history record
    /// keeps it beside these rules, false in records written before, so a
    /// re-run writes their 詞 as they were written.
    #[serde(skip, default = "ci_rules_on")]
    pub ci_rules: bool,
}

fn ci_rules_on() -> bool {
    true
}

impl Default for VerseRules {
    fn default() -> Self {
        Self {
            mode: RulesMode::default(),
            rhyme: None,
            template: TemplateStart::default(),
            repeats: Repeats::default(),
            keywords: Vec::new(),
            ci_rules: true,
        }
    }
}

impl VerseRules {
    /// Rules off: the form alone.
    pub fn off() -> Self {
        Self {
            mode: RulesMode::Off,
            ..Self::default()
        }
    }

    /// The 部 asked for a 詞's first rhyme (`None`: any); a 平水韻 group of
    /// any tone or a character names it (see [`super::cilin::named_bu`]).
    pub fn ci_rhyme(&self) -> Result<Option<super::cilin::BuSet>, RhymeError> {
        self.rhyme
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .map(super::cilin::named_bu)
            .transpose()
    }

    /// Checks the rhyme asked for as `form` reads it: a 詞's by
    /// [`Self::ci_rhyme`], any other form's by [`Self::rhyme_group`].
    pub fn check_rhyme_for(&self, form: &super::forms::PoemForm) -> Result<(), RhymeError> {
        match form {
            super::forms::PoemForm::Ci(_) => self.ci_rhyme().map(|_| ()),
            _ => self.rhyme_group().map(|_| ()),
        }
    }

    /// The rhyme group asked for, checked (`None`: any).
    pub fn rhyme_group(&self) -> Result<Option<u8>, RhymeError> {
        self.rhyme
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .map(|r| table().find_ping_group(r))
            .transpose()
    }
}

/// A rule lifted at one position, as the result reports it (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relaxed {
    pub line: usize,
    pub column: usize,
    pub rule: String,
}

/// Why rules cannot be enforced for a request.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Rhyme(#[from] RhymeError),
    #[error("the model's vocabulary has only {found} characters of {group} ({needed} rhyme positions); choose a wider group or leave the rhyme open")]
    NarrowGroup {
        group: String,
        found: usize,
        needed: usize,
    },
}

/// Per token: may it stand for 平, for 仄, is it in the table.
const PING: u8 = 1;
const ZE: u8 = 2;

/// Each token of one vocabulary in the rhyme table: its character, tones
/// and groups. Worked out once per vocabulary (a pass over every token) and
/// shared by every request's [`ToneRules`].
#[derive(Debug)]
pub struct TokenTones {
    /// PING | ZE bits per token id (0: not a known ideograph).
    class_bits: Vec<u8>,
    /// 平聲 groups per token id.
    ping_groups: Vec<GroupSet>,
    /// All groups per token id (both tones), for 撞韻.
    all_groups: Vec<GroupSet>,
    /// The character of each token id, to exclude used rhyme characters.
    char_of: Vec<Option<char>>,
    /// Tokens per 平聲 group.
    members: [usize; 128],
}

impl TokenTones {
    /// The tones of a vocabulary whose token `id` is the single character
    /// `char_of[id]` (or none).
    pub fn new(char_of: Vec<Option<char>>) -> Self {
        let t = table();
        let class_bits: Vec<u8> = char_of
            .iter()
            .map(|c| c.map_or(0, |c| class_bits(t.listed_class(c))))
            .collect();
        let ping_groups: Vec<GroupSet> = char_of
            .iter()
            .map(|c| {
                c.filter(|c| t.listed_class(*c) != ToneClass::Unknown)
                    .map_or(0, |c| t.ping_only(t.groups_of(c)))
            })
            .collect();
        let all_groups: Vec<GroupSet> = char_of
            .iter()
            .map(|c| {
                c.filter(|c| t.listed_class(*c) != ToneClass::Unknown)
                    .map_or(0, |c| t.groups_of(c))
            })
            .collect();
        let mut members = [0usize; 128];
        for set in &ping_groups {
            for g in t.iter_set(*set) {
                members[g.id as usize] += 1;
            }
        }
        Self {
            class_bits,
            ping_groups,
            all_groups,
            char_of,
            members,
        }
    }
}

/// The rules turned into token ids for one vocabulary.
#[derive(Debug, Clone)]
pub struct ToneRules {
    templates: Vec<Template>,
    tones: std::sync::Arc<TokenTones>,
    /// Groups the first rhyme may take.
    eligible: GroupSet,
    /// Rhyme characters held for a keyword's place
    /// ([`super::keywords`]): no other rhyme position takes them.
    reserved: Vec<char>,
}

fn class_bits(class: ToneClass) -> u8 {
    match class {
        ToneClass::Ping => PING,
        ToneClass::Ze => ZE,
        ToneClass::Either => PING | ZE,
        ToneClass::Unknown => 0,
    }
}

fn bits_class(bits: u8) -> ToneClass {
    match bits {
        PING => ToneClass::Ping,
        ZE => ToneClass::Ze,
        0 => ToneClass::Unknown,
        _ => ToneClass::Either,
    }
}

/// What a template allows at the next position.
struct Requirement {
    slot: Slot,
    /// The end of a line that does not rhyme: 仄 in every reading, and none
    /// of these groups (those of the rhymes so far).
    plain_end: Option<GroupSet>,
    /// At a rhyme position: the groups allowed and the characters used.
    rhyme: Option<(GroupSet, Vec<char>)>,
}

impl ToneRules {
    /// Rules for a form of `lines` x `chars` over a vocabulary's `tones`.
    pub fn new(
        lines: usize,
        chars: usize,
        rules: &VerseRules,
        tones: std::sync::Arc<TokenTones>,
    ) -> Result<Self, RulesError> {
        let t = table();
        let templates: Vec<Template> = Template::all(lines, chars)
            .into_iter()
            .filter(|tpl| rules.template == TemplateStart::Any || tpl.start() == rules.template)
            .collect();
        let rhyme_positions = lines / 2 + 1;
        let needed = 4 * rhyme_positions;
        let members = &tones.members;
        let eligible = match rules.rhyme_group()? {
            Some(g) => {
                if members[g as usize] < rhyme_positions + 1 {
                    return Err(RulesError::NarrowGroup {
                        group: t.group(g).map_or(String::new(), |g| g.name.clone()),
                        found: members[g as usize],
                        needed: rhyme_positions,
                    });
                }
                1u128 << g
            }
            None => {
                t.groups()
                    .iter()
                    .filter(|g| members[g.id as usize] >= needed)
                    .fold(0, |acc, g| acc | (1u128 << g.id))
                    & t.ping_only(u128::MAX)
            }
        };
        Ok(Self {
            templates,
            tones,
            eligible,
            reserved: Vec::new(),
        })
    }

    /// The templates a poem may still follow.
    pub(crate) fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Whether `chars`, held at rhyme positions, rhyme in a group the first
    /// rhyme may take (and are no character twice): the groups they share.
    pub(crate) fn keyword_groups(&self, chars: &[char]) -> GroupSet {
        let t = table();
        let mut seen: Vec<char> = Vec::new();
        let mut groups = self.eligible;
        for &c in chars {
            let trad = t.to_traditional(c);
            if t.listed_class(c) == ToneClass::Unknown || seen.contains(&trad) {
                return 0;
            }
            seen.push(trad);
            groups &= t.ping_only(t.groups_of(c));
        }
        groups
    }

    /// Holds keywords' places: only the templates `keep` (indices into
    /// [`Self::templates`]), the rhyme in one of `groups`, and the rhyme
    /// characters `reserved` left for the places that hold them.
    pub(crate) fn hold_keywords(&mut self, keep: &[usize], groups: GroupSet, reserved: Vec<char>) {
        self.templates = keep
            .iter()
            .filter_map(|&i| self.templates.get(i).cloned())
            .collect();
        self.eligible &= groups;
        self.reserved = reserved
            .iter()
            .map(|c| table().to_traditional(*c))
            .collect();
    }

    /// How far `written` strays from `tpl` (0 when it keeps it), and what the
    /// template allows next.
    fn follow(&self, tpl: &Template, done: &[Vec<char>], cur: &[char]) -> (usize, Requirement) {
        let t = table();
        let mut broken = 0;
        let mut groups = self.eligible;
        let mut used: Vec<char> = Vec::new();
        let mut rhymed: GroupSet = 0;
        let lines = done.iter().map(Vec::as_slice).chain(std::iter::once(cur));
        for (i, line) in lines.enumerate() {
            let Some(&pattern) = tpl.lines.get(i) else {
                break;
            };
            for (col, &c) in line.iter().enumerate() {
                let class = t.tone_class(c);
                if let Some(slot) = tpl.slot(i, col) {
                    broken +=
                        usize::from(slot_problem(class, slot, pattern, col, tpl.chars).is_some());
                }
                if col + 1 == tpl.chars && !tpl.rhymes_at(i) {
                    broken += usize::from(t.listed_class(c) != ToneClass::Ze);
                }
                if col + 1 == tpl.chars && tpl.rhymes_at(i) {
                    rhymed |= t.groups_of(c);
                    let own = t.ping_only(t.groups_of(c));
                    let trad = t.to_traditional(c);
                    if own & groups == 0 || used.contains(&trad) {
                        broken += 1;
                    } else {
                        groups &= own;
                    }
                    used.push(trad);
                }
            }
        }
        let (line, col) = (done.len(), cur.len());
        let slot = tpl
            .slot(line, col)
            .unwrap_or(Slot::Free(super::rhyme::Tone::Ping));
        let line_end = col + 1 == tpl.chars && line < tpl.lines.len();
        let rhyme = (line_end && tpl.rhymes_at(line)).then_some((groups, used));
        let plain_end = (line_end && rhyme.is_none()).then_some(rhymed);
        (
            broken,
            Requirement {
                slot,
                plain_end,
                rhyme,
            },
        )
    }

    /// Masks `logits` (already limited to the ideographs the form allows at
    /// this position) to the characters the verse rules allow after `written`.
    pub fn apply(&self, written: &str, logits: &mut [f32]) {
        let (done, cur) = written_lines(written);
        let followed: Vec<(usize, Requirement)> = self
            .templates
            .iter()
            .map(|tpl| self.follow(tpl, &done, &cur))
            .collect();
        let Some(least) = followed.iter().map(|(b, _)| *b).min() else {
            return;
        };
        let reqs: Vec<&Requirement> = followed
            .iter()
            .filter(|(b, _)| *b == least)
            .map(|(_, r)| r)
            .collect();
        let allowed = |id: usize| -> bool {
            let bits = self.tones.class_bits.get(id).copied().unwrap_or(0);
            reqs.iter().any(|r| {
                let tone_ok = match r.slot {
                    _ if r.plain_end.is_some() => {
                        let rhymed = r.plain_end.unwrap_or(0);
                        bits == ZE
                            && self.tones.all_groups.get(id).copied().unwrap_or(0) & rhymed == 0
                    }
                    Slot::Free(_) => true,
                    Slot::Tone(tone) => bits_class(bits).fits(tone),
                };
                let rhyme_ok = r.rhyme.as_ref().is_none_or(|(groups, used)| {
                    let own = self.tones.ping_groups.get(id).copied().unwrap_or(0);
                    own & groups != 0
                        && self.tones.char_of[id].is_none_or(|c| {
                            let trad = table().to_traditional(c);
                            !used.contains(&trad) && !self.reserved.contains(&trad)
                        })
                });
                tone_ok && rhyme_ok
            })
        };
        mask_unless_relaxed(logits, allowed);
    }
}

/// Masks every token `allowed` refuses, unless the tokens it allows hold no
/// more than [`RELAX_BELOW`] of the probability the model gives the tokens
/// still open (those the form allows here): then the verse rules are relaxed
/// at this position and the form's mask alone stands.
pub(crate) fn mask_unless_relaxed(logits: &mut [f32], allowed: impl Fn(usize) -> bool) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let (mut all, mut kept) = (0f32, 0f32);
    for (id, l) in logits.iter().enumerate() {
        if l.is_finite() {
            let p = (l - max).exp();
            all += p;
            if allowed(id) {
                kept += p;
            }
        }
    }
    if kept <= all * RELAX_BELOW {
        return;
    }
    for (id, l) in logits.iter_mut().enumerate() {
        if l.is_finite() && !allowed(id) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The characters of a small test vocabulary: 40 of each of three 平 groups
/// (東, 先, 陽), then the 仄 characters [`TEST_ZE`].
#[cfg(test)]
pub(crate) fn test_chars() -> Vec<char> {
    let t = table();
    let mut chars: Vec<char> = Vec::new();
    for key in ["東", "先", "陽"] {
        if let Ok(g) = t.find_ping_group(key) {
            chars.extend(
                t.group(g)
                    .into_iter()
                    .flat_map(|g| g.members.iter().take(40)),
            );
        }
    }
    chars.extend(TEST_ZE.chars());
    let mut seen = std::collections::HashSet::new();
    chars.retain(|c| seen.insert(*c));
    chars
}

/// The 仄 characters of [`test_chars`].
#[cfg(test)]
pub(crate) const TEST_ZE: &str = "月日里北白雪落去上下";

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of every character in a few groups plus some 仄 ones.
    fn vocab() -> std::sync::Arc<TokenTones> {
        std::sync::Arc::new(TokenTones::new(
            test_chars().into_iter().map(Some).collect(),
        ))
    }

    fn allowed_after(rules: &ToneRules, written: &str) -> Vec<char> {
        let mut logits = vec![0f32; rules.tones.char_of.len()];
        rules.apply(written, &mut logits);
        logits
            .iter()
            .zip(&rules.tones.char_of)
            .filter(|(l, _)| l.is_finite())
            .filter_map(|(_, c)| *c)
            .collect()
    }

    #[test]
    fn a_strict_position_allows_only_its_tone() {
        let rules = ToneRules::new(4, 5, &VerseRules::default(), vocab()).unwrap();
        // After 白日 (仄仄): templates A or D; position 3 is 平 in A, free in D.
        // After 白日依山 (仄仄平平): only A; position 5 must be 仄.
        let next = allowed_after(&rules, "白日依山");
        assert!(!next.is_empty());
        assert!(
            next.iter()
                .all(|c| table().tone_class(*c).fits(super::super::rhyme::Tone::Ze)),
            "{next:?}"
        );
    }

    #[test]
    fn later_rhymes_keep_the_first_rhymes_group_and_are_not_reused() {
        let rules = ToneRules::new(4, 5, &VerseRules::default(), vocab()).unwrap();
        let t = table();
        // Line 2 ended in 東 (一東); line 4's last character must be 一東, not 東.
        let next = allowed_after(&rules, "白日依山雪，黃河入海東。欲窮千里目，更上一層");
        let dong = t.find_ping_group("東").unwrap();
        assert!(!next.is_empty());
        for c in &next {
            assert!(t.groups_of(*c) & (1u128 << dong) != 0, "{c}");
            assert_ne!(*c, '東');
        }
    }

    #[test]
    fn a_named_rhyme_is_the_only_group_at_the_first_rhyme() {
        let rules = VerseRules {
            rhyme: Some("先".into()),
            ..VerseRules::default()
        };
        let rules = ToneRules::new(4, 5, &rules, vocab()).unwrap();
        let xian = table().find_ping_group("先").unwrap();
        let next = allowed_after(&rules, "白日依山雪，黃河入海");
        assert!(!next.is_empty());
        assert!(next
            .iter()
            .all(|c| table().groups_of(*c) & (1u128 << xian) != 0));
    }

    #[test]
    fn a_group_the_vocabulary_barely_has_is_refused_with_numbers() {
        let rules = VerseRules {
            rhyme: Some("咸".into()),
            ..VerseRules::default()
        };
        let e = ToneRules::new(4, 5, &rules, vocab()).unwrap_err();
        assert!(e.to_string().contains("下平十五咸"), "{e}");
    }

    #[test]
    fn a_position_nothing_likely_fits_is_relaxed_not_emptied() {
        let rules = ToneRules::new(4, 5, &VerseRules::default(), vocab()).unwrap();
        let v = rules.tones.char_of.len();
        // The model puts all its weight on one 平 character where 仄 is required.
        let ping = rules
            .tones
            .char_of
            .iter()
            .position(|c| *c == Some('東'))
            .unwrap();
        let mut logits = vec![-1e4f32; v];
        logits[ping] = 0.0;
        rules.apply("白日依山", &mut logits);
        assert!(
            logits[ping].is_finite(),
            "relaxed: the likely character stays"
        );
    }
}
