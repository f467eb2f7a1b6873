//! The 平水韻 rhyme table: for each character its tone class (平 / 仄) and
//! rhyme groups (the 106 韻部), from `data/pingshui.json` (MIT, see
//! `data/README.md`), with simplified forms mapped through `data/s2t.tsv`.
//! Characters the table lacks (啼, 堤, 爐 among them) take a tone class, and
//! no rhyme group, from the chinese-poetry collection's 平仄 annotations
//! (`data/strain-tones.tsv`).
//!
//! Embedded in the binary and parsed once, on first use ([`table`]), so
//! start-up never pays for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

const PINGSHUI_JSON: &str = include_str!("data/pingshui.json");
const S2T_TSV: &str = include_str!("data/s2t.tsv");
const STRAIN_TONES_TSV: &str = include_str!("data/strain-tones.tsv");

/// The two tone classes of regulated verse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    /// 平聲 (上平 and 下平).
    Ping,
    /// 仄聲 (上, 去, 入).
    Ze,
}

impl Tone {
    /// 平 or 仄.
    pub fn mark(self) -> char {
        match self {
            Self::Ping => '平',
            Self::Ze => '仄',
        }
    }
}

/// What the table says of a character's tone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToneClass {
    Ping,
    Ze,
    /// Readings in both classes (e.g. 看, 思): counts as either.
    Either,
    /// Not in the table: allowed only where a position is free.
    Unknown,
}

impl ToneClass {
    /// Whether a character of this class may stand where `tone` is required.
    pub fn fits(self, tone: Tone) -> bool {
        matches!(
            (self, tone),
            (Self::Either, _) | (Self::Ping, Tone::Ping) | (Self::Ze, Tone::Ze)
        )
    }

    /// 平, 仄, 中 (either) or ？ (unknown), as the window's marks show it.
    pub fn mark(self) -> char {
        match self {
            Self::Ping => '平',
            Self::Ze => '仄',
            Self::Either => '中',
            Self::Unknown => '？',
        }
    }
}

/// One of the 106 groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RhymeGroup {
    /// Index in the table (0..106): 上平 1-15, 下平 1-15, 上聲, 去聲, 入聲.
    pub id: u8,
    /// Display name, e.g. `下平一先`, `上聲一董`.
    pub name: String,
    /// The character that names the group (先).
    pub key: char,
    pub tone: Tone,
    /// Members in table order.
    pub members: Vec<char>,
}

/// A set of rhyme groups (106 fit in the bits).
pub type GroupSet = u128;

/// Why a rhyme name could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RhymeError {
    #[error("unknown rhyme `{0}`: give a 平聲 group by its name (東, 一東, 下平一先) or by a character in it (紅)")]
    Unknown(String),
    #[error("`{name}` is a 仄聲 group ({group}); regulated verse rhymes in 平聲: give one of the 30 平聲 groups")]
    NotPing { name: String, group: String },
    #[error("`{ch}` belongs to more than one 平聲 group ({groups}); name the group instead")]
    Ambiguous { ch: char, groups: String },
    #[error("unknown rhyme `{0}`: for a 詞 give a 平水韻 group of any tone by its name (東, 一董, 入聲六月) or a character in it (紅, 月); the 詞 rhymes in its 部 of the 詞林正韻")]
    UnknownForCi(String),
}

/// The parsed table.
#[derive(Debug)]
pub struct RhymeTable {
    groups: Vec<RhymeGroup>,
    /// Groups of each character (traditional and simplified forms).
    of_char: HashMap<char, GroupSet>,
    /// Simplified -> traditional forms (the first is the usual one).
    traditional: HashMap<char, Vec<char>>,
    /// Tone classes of characters outside the table (no rhyme group).
    annotated: HashMap<char, ToneClass>,
    /// Characters the table itself lists (not through a simplified form).
    listed: std::collections::HashSet<char>,
    /// Group memberships the loader added to the data (先 in 下平一先).
    added: HashMap<char, GroupSet>,
}

/// The table, parsed on first use.
pub fn table() -> &'static RhymeTable {
    static TABLE: OnceLock<RhymeTable> = OnceLock::new();
    TABLE.get_or_init(|| RhymeTable::parse(PINGSHUI_JSON, S2T_TSV, STRAIN_TONES_TSV))
}

/// `一` .. `三十` as a number.
fn chinese_numeral(text: &str) -> Option<u32> {
    let digit = |c: char| "一二三四五六七八九".find(c).map(|i| i as u32 / 3 + 1);
    let chars: Vec<char> = text.chars().collect();
    match chars.as_slice() {
        ['十'] => Some(10),
        ['十', d] => Some(10 + digit(*d)?),
        [t, '十'] => Some(10 * digit(*t)?),
        [t, '十', d] => Some(10 * digit(*t)? + digit(*d)?),
        [d] => digit(*d),
        _ => None,
    }
}

/// The sections in table order, with their display prefixes.
const SECTIONS: [(&str, &str, &str, Tone); 5] = [
    ("ping", "上平聲部", "上平", Tone::Ping),
    ("ping", "下平聲部", "下平", Tone::Ping),
    ("ze", "上聲部", "上聲", Tone::Ze),
    ("ze", "去聲部", "去聲", Tone::Ze),
    ("ze", "入聲部", "入聲", Tone::Ze),
];

type RawTable = HashMap<String, HashMap<String, HashMap<String, Vec<String>>>>;

impl RhymeTable {
    /// Parses the embedded data. The data is part of the binary and checked by
    /// the tests, so a malformed part is skipped rather than reported.
    fn parse(json: &str, s2t: &str, strain_tones: &str) -> Self {
        let raw: RawTable = serde_json::from_str(json).unwrap_or_default();
        let mut groups = Vec::with_capacity(106);
        let mut added: HashMap<char, GroupSet> = HashMap::new();
        let mut keyless: Vec<String> = Vec::new();
        for (tone_key, section, prefix, tone) in SECTIONS {
            let Some(named) = raw.get(tone_key).and_then(|t| t.get(section)) else {
                continue;
            };
            // "上平聲一東" -> (1, '東'); ordered by the numeral.
            let mut ordered: BTreeMap<u32, (char, String, Vec<char>)> = BTreeMap::new();
            for (name, members) in named {
                let rest = name.split_once('聲').map_or(name.as_str(), |(_, r)| r);
                let Some(key) = rest.chars().last() else {
                    continue;
                };
                let numeral = &rest[..rest.len() - key.len_utf8()];
                let Some(n) = chinese_numeral(numeral) else {
                    continue;
                };
                let mut chars: Vec<char> = members.concat().chars().collect();
                // The scraped list of 下平一先 lacks 先 itself.
                let missing_key = !chars.contains(&key);
                if missing_key {
                    chars.insert(0, key);
                }
                let display = format!("{prefix}{numeral}{key}");
                if missing_key {
                    keyless.push(display.clone());
                }
                ordered.insert(n, (key, display, chars));
            }
            for (_, (key, name, members)) in ordered {
                if keyless.contains(&name) {
                    *added.entry(key).or_default() |= 1u128 << groups.len();
                }
                groups.push(RhymeGroup {
                    id: groups.len() as u8,
                    name,
                    key,
                    tone,
                    members,
                });
            }
        }
        let mut of_char: HashMap<char, GroupSet> = HashMap::new();
        for g in &groups {
            for &c in &g.members {
                *of_char.entry(c).or_default() |= 1u128 << g.id;
            }
        }
        let listed = of_char.keys().copied().collect();
        let mut traditional: HashMap<char, Vec<char>> = HashMap::new();
        for line in s2t.lines().filter(|l| !l.starts_with('#')) {
            let Some((s, t)) = line.split_once('\t') else {
                continue;
            };
            let (Some(s), forms) = (s.chars().next(), t.chars().collect::<Vec<_>>()) else {
                continue;
            };
            traditional.insert(s, forms);
        }
        // A simplified form takes the readings of every traditional form it
        // stands for; a character the table lists keeps its own (干 is 寒, not
        // also 乾's 先: the model writes both).
        let extra: Vec<(char, GroupSet)> = traditional
            .iter()
            .filter(|(s, _)| !of_char.contains_key(s))
            .map(|(s, forms)| {
                let set = forms
                    .iter()
                    .filter_map(|t| of_char.get(t))
                    .fold(0, |a, b| a | b);
                (*s, set)
            })
            .collect();
        for (s, set) in extra {
            *of_char.entry(s).or_default() |= set;
        }
        let annotated = strain_tones
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut fields = l.split('\t');
                let c = fields.next()?.chars().next()?;
                let class = match fields.next()? {
                    "ping" => ToneClass::Ping,
                    "ze" => ToneClass::Ze,
                    "either" => ToneClass::Either,
                    _ => return None,
                };
                (!of_char.contains_key(&c)).then_some((c, class))
            })
            .collect();
        Self {
            groups,
            of_char,
            traditional,
            annotated,
            listed,
            added,
        }
    }

    pub fn groups(&self) -> &[RhymeGroup] {
        &self.groups
    }

    pub fn group(&self, id: u8) -> Option<&RhymeGroup> {
        self.groups.get(id as usize)
    }

    /// The groups `c` belongs to (empty when it is not in the table).
    pub fn groups_of(&self, c: char) -> GroupSet {
        self.of_char.get(&c).copied().unwrap_or(0)
    }

    /// The 平聲 groups among `set`.
    pub fn ping_only(&self, set: GroupSet) -> GroupSet {
        self.groups
            .iter()
            .filter(|g| g.tone == Tone::Ping)
            .fold(0, |acc, g| acc | (set & (1u128 << g.id)))
    }

    /// The tone class of `c`.
    pub fn tone_class(&self, c: char) -> ToneClass {
        let set = self.groups_of(c);
        if set == 0 {
            return self
                .annotated
                .get(&c)
                .copied()
                .unwrap_or(ToneClass::Unknown);
        }
        self.class_of_set(set)
    }

    /// The class of a character in these groups.
    fn class_of_set(&self, set: GroupSet) -> ToneClass {
        let ping = self.ping_only(set) != 0;
        let ze = (set & !self.ping_only(u128::MAX)) != 0;
        match (ping, ze) {
            (true, true) => ToneClass::Either,
            (true, false) => ToneClass::Ping,
            (false, true) => ToneClass::Ze,
            (false, false) => ToneClass::Unknown,
        }
    }

    /// The tone class from the table's own entry for `c`: `Unknown` for a
    /// character it does not list (one read through a simplified form or the
    /// collection's annotations). What the decoder trusts at strict positions,
    /// so any checker built on the same table agrees.
    pub fn listed_class(&self, c: char) -> ToneClass {
        if !self.listed.contains(&c) {
            return ToneClass::Unknown;
        }
        self.class_of_set(self.groups_of(c) & !self.added.get(&c).copied().unwrap_or(0))
    }

    /// The groups of a set, by id.
    pub fn iter_set(&self, set: GroupSet) -> impl Iterator<Item = &RhymeGroup> + '_ {
        self.groups
            .iter()
            .filter(move |g| set & (1u128 << g.id) != 0)
    }

    /// Names of a set's groups, joined with `、`.
    pub fn names(&self, set: GroupSet) -> String {
        self.iter_set(set)
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join("、")
    }

    /// The traditional form of `c`: itself when the table lists it (秋 stays
    /// 秋 though it also simplifies 鞦) or it is unknown.
    pub fn to_traditional(&self, c: char) -> char {
        if self.listed.contains(&c) {
            return c;
        }
        self.traditional
            .get(&c)
            .and_then(|forms| forms.first().copied())
            .unwrap_or(c)
    }

    /// `text` with each simplified character in its traditional form.
    pub fn traditional_text(&self, text: &str) -> String {
        text.chars().map(|c| self.to_traditional(c)).collect()
    }

    /// The groups `text` names, of any tone: one group by its name (`一董`,
    /// `上聲一董`, `入聲六月`, or a 平聲 one as [`Self::find_ping_group`]
    /// takes it: `東`), else every group of a character (`月`, `红`).
    pub fn find_any_group(&self, text: &str) -> Result<GroupSet, RhymeError> {
        let wanted = text.trim();
        let unknown = || RhymeError::UnknownForCi(wanted.to_string());
        if let Ok(g) = self.find_ping_group(wanted) {
            return Ok(1u128 << g);
        }
        let bare: String = wanted
            .chars()
            .map(|c| self.to_traditional(c))
            .filter(|c| *c != '聲' && *c != '韻' && *c != '部')
            .collect();
        if let Some(g) = self.groups.iter().find(|g| {
            let short = g.name.trim_start_matches(|c| "上下平去入聲".contains(c));
            g.name.replace('聲', "") == bare || (short == bare && short.chars().count() > 1)
        }) {
            return Ok(1u128 << g.id);
        }
        let mut chars = bare.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if self.groups_of(c) != 0 => Ok(self.groups_of(c)),
            _ => Err(unknown()),
        }
    }

    /// A 平聲 group by name (`東`, `一東`, `上平一東`, `上平聲一東`) or by a
    /// character in it (`紅`); simplified accepted (`东`, `红`).
    pub fn find_ping_group(&self, text: &str) -> Result<u8, RhymeError> {
        let wanted = text.trim();
        let unknown = || RhymeError::Unknown(wanted.to_string());
        let bare: String = wanted
            .chars()
            .map(|c| self.to_traditional(c))
            .filter(|c| *c != '聲' && *c != '韻' && *c != '部')
            .collect();
        let by_name = self.groups.iter().find(|g| {
            let short = g.name.trim_start_matches(|c| "上下平去入聲".contains(c));
            g.name == bare
                || short == bare
                || (bare.chars().count() == 1 && g.key.to_string() == bare && g.tone == Tone::Ping)
        });
        if let Some(g) = by_name {
            return match g.tone {
                Tone::Ping => Ok(g.id),
                Tone::Ze => Err(RhymeError::NotPing {
                    name: wanted.to_string(),
                    group: g.name.clone(),
                }),
            };
        }
        let mut chars = bare.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return Err(unknown());
        };
        let set = self.groups_of(c);
        let ping = self.ping_only(set);
        match ping.count_ones() {
            1 => Ok(ping.trailing_zeros() as u8),
            0 if set != 0 => Err(RhymeError::NotPing {
                name: wanted.to_string(),
                group: self.names(set),
            }),
            0 => Err(unknown()),
            _ => Err(RhymeError::Ambiguous {
                ch: c,
                groups: self.names(ping),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_106_groups_in_order() {
        let t = table();
        assert_eq!(t.groups().len(), 106);
        let count = |tone| t.groups().iter().filter(|g| g.tone == tone).count();
        assert_eq!(count(Tone::Ping), 30);
        assert_eq!(count(Tone::Ze), 76);
        assert_eq!(t.groups()[0].name, "上平一東");
        assert_eq!(t.groups()[15].name, "下平一先");
        assert_eq!(t.groups()[29].name, "下平十五咸");
        assert_eq!(t.groups()[105].name, "入聲十七洽");
    }

    #[test]
    fn tone_classes_of_known_characters() {
        let t = table();
        assert_eq!(t.tone_class('東'), ToneClass::Ping);
        assert_eq!(t.tone_class('月'), ToneClass::Ze);
        assert_eq!(t.tone_class('看'), ToneClass::Either);
        assert_eq!(t.tone_class('A'), ToneClass::Unknown);
        // Outside the table, from the collection's annotations: a tone, no group.
        assert_eq!(t.tone_class('啼'), ToneClass::Ping);
        assert_eq!(t.groups_of('啼'), 0);
        assert_eq!(t.tone_class('掃'), ToneClass::Ze);
        // 先 names its group and is in it.
        let xian = t.find_ping_group("先").unwrap();
        assert!(t.groups_of('先') & (1u128 << xian) != 0);
        assert_eq!(t.tone_class('先'), ToneClass::Either);
        // The decoder keeps to what the data itself says (there 先 is 仄 only).
        assert_eq!(t.listed_class('先'), ToneClass::Ze);
        assert_eq!(t.listed_class('啼'), ToneClass::Unknown);
        assert_eq!(t.listed_class('東'), ToneClass::Ping);
        // Simplified forms take their traditional readings.
        assert_eq!(t.tone_class('东'), ToneClass::Ping);
        assert_eq!(t.to_traditional('楼'), '樓');
        assert_eq!(t.traditional_text("西楼"), "西樓");
        assert_eq!(t.to_traditional('樓'), '樓');
        assert_eq!(t.traditional_text("春夏秋冬"), "春夏秋冬");
    }

    #[test]
    fn rhyme_groups_are_found_by_name_or_character_simplified_too() {
        let t = table();
        let dong = t.find_ping_group("東").unwrap();
        assert_eq!(t.group(dong).unwrap().name, "上平一東");
        for name in ["一東", "上平一東", "上平聲一東", "东", "红", "紅"] {
            assert_eq!(t.find_ping_group(name), Ok(dong), "{name}");
        }
        let xian = t.find_ping_group("先").unwrap();
        assert_eq!(t.group(xian).unwrap().name, "下平一先");
        assert!(matches!(
            t.find_ping_group("董"),
            Err(RhymeError::NotPing { .. })
        ));
        assert!(matches!(
            t.find_ping_group("月"),
            Err(RhymeError::NotPing { .. })
        ));
        assert!(matches!(
            t.find_ping_group("xyz"),
            Err(RhymeError::Unknown(_))
        ));
    }
}
