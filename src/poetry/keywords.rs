//! Keywords: the words a poem must hold, read from what the user typed, and
//! where in the form each one goes.
//!
//! A theme is typed as words (`秋江 夜雨`, `秋江，夜雨`, `秋江、夜雨`, simplified
//! or traditional) or as a sentence (`寫一首關於秋夜思鄉的詩`), which is reduced
//! to the words of classical verse it holds ([`parse_theme`], the word list in
//! `data/theme-words.txt`, derived from the corpus by
//! `packaging/corpus/make_theme_words.py`).
//!
//! Before decoding, [`plan`] gives every keyword a line and a column where each
//! of its characters keeps the form's rules: the tone a template or a tune's
//! 詞譜 asks there, a rhyme only where its character rhymes with the other
//! characters held at that rhyme, never across a line break. Decoding then
//! holds those characters there ([`Pin`]s) and the model writes around them
//! (`forms::FormConstraint::hold_keywords`). A keyword no place can take is
//! refused before anything is generated, naming the keyword and why.

use std::collections::HashSet;
use std::sync::OnceLock;

use super::cilin::RhymeTone;
use super::forms::Pin;
use super::rhyme::{table, Tone, ToneClass};
use super::text::is_hanzi;

/// The most keywords a poem takes.
pub const MAX_KEYWORDS: usize = 4;

/// A typed word longer than this is read as a sentence and reduced to the
/// words it holds.
const LONGEST_WORD: usize = 4;

/// How many placements [`plan`] tries before it gives up on a set.
const SEARCH_BUDGET: usize = 20_000;

const THEME_WORDS: &str = include_str!("data/theme-words.txt");

/// Why keywords cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    #[error("{count} keywords ({list}); give 1 to {MAX_KEYWORDS}")]
    TooMany { count: usize, list: String },
    #[error("`{0}` is not written in Chinese characters; give keywords such as 秋江 夜雨")]
    NotHanzi(String),
    #[error("`{0}` holds no word of classical verse that Versifier knows; type the words themselves, e.g. 秋夜 思鄉")]
    NoKnownWord(String),
    #[error("`{word}`: the model's vocabulary has no `{ch}`")]
    NotInVocabulary { word: String, ch: char },
    #[error("`{word}` has {len} characters; the longest line of {form} holds {longest}")]
    TooLong {
        word: String,
        len: usize,
        form: String,
        longest: usize,
    },
    #[error("`{word}` fits no place in {form}: its tones are {tones} and no line of the form's rules takes them there ({hint})")]
    NoPlace {
        word: String,
        tones: String,
        form: String,
        hint: String,
    },
    #[error("with keywords, free verse is written in lines of 5 or 7 characters; the prompt's first line has {found}")]
    FreeVerseLine { found: usize },
    #[error("`{word}` finds no place beside {others} in {form}: there is no room where all their tones and rhymes fit; give fewer keywords, a longer form, or set rules to off")]
    NoRoom {
        word: String,
        others: String,
        form: String,
    },
}

/// Keywords as read from a theme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Theme {
    /// The words in traditional script, in the order typed, each once.
    pub words: Vec<String>,
    /// Whether a sentence was reduced to the words it holds.
    pub reduced: bool,
}

/// The word list, read once.
fn word_list() -> &'static HashSet<&'static str> {
    static WORDS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        THEME_WORDS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// Whether `word` (traditional script) is on the word list.
pub fn is_theme_word(word: &str) -> bool {
    word_list().contains(word)
}

fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || c.is_ascii_punctuation()
        || "，、；。！？：「」『』“”‘’《》（）·".contains(c)
}

/// The words of `sentence` (traditional script) on the word list, left to
/// right, none overlapping.
fn reduce_sentence(sentence: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < sentence.len() {
        let pair: String = sentence[i..i + 2].iter().collect();
        if is_theme_word(&pair) {
            out.push(pair);
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a theme: words separated by spaces, commas or `、`, a word longer than
/// four characters read as a sentence and reduced to the words it holds. An
/// empty theme is no keywords.
pub fn parse_theme(text: &str) -> Result<Theme, KeywordError> {
    let t = table();
    let mut theme = Theme::default();
    let mut typed = 0usize;
    for piece in text.split(is_separator).filter(|p| !p.is_empty()) {
        if !piece.chars().all(is_hanzi) {
            return Err(KeywordError::NotHanzi(piece.to_string()));
        }
        let chars: Vec<char> = piece.chars().map(|c| t.to_traditional(c)).collect();
        let words = if chars.len() > LONGEST_WORD {
            let words = reduce_sentence(&chars);
            if words.is_empty() {
                return Err(KeywordError::NoKnownWord(piece.to_string()));
            }
            theme.reduced = true;
            words
        } else {
            typed += 1;
            vec![chars.into_iter().collect()]
        };
        for w in words {
            if !theme.words.contains(&w) {
                theme.words.push(w);
            }
        }
    }
    if theme.words.len() > MAX_KEYWORDS {
        if typed > MAX_KEYWORDS || !theme.reduced {
            return Err(KeywordError::TooMany {
                count: theme.words.len(),
                list: theme.words.join(" "),
            });
        }
        theme.words.truncate(MAX_KEYWORDS);
    }
    Ok(theme)
}

/// What one position of a form asks of a character, in one tonal variant of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any character.
    Any,
    /// This tone: the character's listed tone must fit it.
    Tone(Tone),
    /// A 詩's line end that does not rhyme: 仄 in every reading.
    PlainEnd,
    /// A rhyme (the tune's `rhyme`-th; 0 in a 詩) in this tone; whether the
    /// characters held at one rhyme agree is the grid's `rhymes_agree`.
    Rhyme { rhyme: u8, tone: RhymeTone },
    /// Written by the form itself (an acrostic's head): no keyword here.
    Taken,
}

impl Need {
    fn admits(self, c: char) -> bool {
        let listed = table().listed_class(c);
        match self {
            Self::Any => true,
            Self::Taken => false,
            Self::Tone(tone) => listed.fits(tone),
            Self::PlainEnd => listed == ToneClass::Ze,
            Self::Rhyme { .. } => listed != ToneClass::Unknown,
        }
    }
}

/// Whether characters held at one rhyme's positions (each with its
/// position's tone) can rhyme together: see [`PlanGrid::rhymes_agree`].
pub type RhymesAgree<'a> = &'a dyn Fn(u8, &[(char, RhymeTone)]) -> bool;

/// A form's positions as the planner sees them.
pub struct PlanGrid<'a> {
    /// The form's name, for refusals (`七絕`).
    pub form: String,
    /// Each line's length.
    pub lines: Vec<usize>,
    /// How many lines a keyword may go in (free verse: the first four, as the
    /// model may end it there).
    pub usable_lines: usize,
    /// One table of needs (per line, per column) for each tonal variant: a
    /// 詩's templates, a 詞's 詞譜, or one of `Any` without rules.
    pub variants: Vec<Vec<Vec<Need>>>,
    /// Whether these characters, held at positions of rhyme `rhyme` (each
    /// with its position's tone), can all rhyme in one group (and are not one
    /// character twice).
    pub rhymes_agree: RhymesAgree<'a>,
    /// The first place open to a keyword: after the prompt's characters.
    pub open_from: (usize, usize),
}

/// Where each keyword goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordPlan {
    /// Each keyword with its first character's line and column (0-based).
    pub placements: Vec<(String, usize, usize)>,
    /// The variants (indices into [`PlanGrid::variants`]) in which every held
    /// character keeps its position's rules.
    pub variants: Vec<usize>,
}

impl KeywordPlan {
    /// Every held character at its place.
    pub fn pins(&self) -> Vec<Pin> {
        self.placements
            .iter()
            .flat_map(|(word, line, col)| {
                word.chars().enumerate().map(move |(i, ch)| Pin {
                    line: *line,
                    column: col + i,
                    ch,
                })
            })
            .collect()
    }
}

/// A word's tones as the table lists them (`平仄`, `？` for a character it
/// does not know).
fn tones_text(word: &[char]) -> String {
    word.iter()
        .map(|c| table().listed_class(*c).mark())
        .collect()
}

/// The search of one variant: places taken so far and the budget left.
struct Search<'g, 'a> {
    grid: &'g PlanGrid<'a>,
    variant: usize,
    words: &'g [Vec<char>],
    /// Each word's preferred line.
    targets: Vec<usize>,
    placed: Vec<Option<(usize, usize)>>,
    budget: usize,
    /// The word the search failed on most deeply.
    deepest: (usize, usize),
}

impl Search<'_, '_> {
    fn need(&self, variant: usize, line: usize, col: usize) -> Need {
        self.grid.variants[variant][line][col]
    }

    fn occupied(&self, line: usize, col: usize) -> bool {
        self.placed.iter().enumerate().any(|(w, p)| {
            p.is_some_and(|(l, c)| l == line && (c..c + self.words[w].len()).contains(&col))
        })
    }

    /// Places word `w` may start, best first.
    fn candidates(&self, w: usize) -> Vec<(usize, usize)> {
        let word = &self.words[w];
        let mut out = Vec::new();
        for (line, &len) in self
            .grid
            .lines
            .iter()
            .enumerate()
            .take(self.grid.usable_lines)
        {
            for col in 0..(len + 1).saturating_sub(word.len()) {
                let fits = word.iter().enumerate().all(|(i, &c)| {
                    (line, col + i) >= self.grid.open_from
                        && !self.occupied(line, col + i)
                        && self.need(self.variant, line, col + i).admits(c)
                });
                if fits {
                    out.push((line, col));
                }
            }
        }
        out.sort_by_key(|&(line, col)| (self.cost(w, line, col), line, col));
        out
    }

    /// How far word `w` at `line`, `col` is from where it reads best: its
    /// share of the poem, on the line's rhythm (2+3, 2+2+3), off the line's
    /// end (whose rhyme it would fix).
    fn cost(&self, w: usize, line: usize, col: usize) -> usize {
        let off_rhythm = usize::from(col % 2 == 1);
        let at_end = usize::from(col + self.words[w].len() == self.grid.lines[line]);
        4 * line.abs_diff(self.targets[w]) + 2 * off_rhythm + at_end
    }

    /// The cost of the places found.
    fn total_cost(&self) -> usize {
        self.placed
            .iter()
            .enumerate()
            .filter_map(|(w, p)| p.map(|(line, col)| self.cost(w, line, col)))
            .sum()
    }

    /// Whether the characters held at each rhyme of `variant` can rhyme.
    fn rhymes_hold(&self, variant: usize) -> bool {
        let mut by_rhyme: Vec<(u8, Vec<(char, RhymeTone)>)> = Vec::new();
        for (w, p) in self.placed.iter().enumerate() {
            let Some((line, col)) = *p else { continue };
            for (i, &c) in self.words[w].iter().enumerate() {
                if let Need::Rhyme { rhyme, tone } = self.need(variant, line, col + i) {
                    match by_rhyme.iter_mut().find(|(r, _)| *r == rhyme) {
                        Some((_, chars)) => chars.push((c, tone)),
                        None => by_rhyme.push((rhyme, vec![(c, tone)])),
                    }
                }
            }
        }
        by_rhyme
            .iter()
            .all(|(rhyme, chars)| (self.grid.rhymes_agree)(*rhyme, chars))
    }

    /// Whether every placed character keeps `variant`'s rules.
    fn holds_in(&self, variant: usize) -> bool {
        self.placed.iter().enumerate().all(|(w, p)| {
            p.is_none_or(|(line, col)| {
                self.words[w]
                    .iter()
                    .enumerate()
                    .all(|(i, &c)| self.need(variant, line, col + i).admits(c))
            })
        }) && self.rhymes_hold(variant)
    }

    /// Places the words of `order[depth..]`.
    fn place(&mut self, order: &[usize], depth: usize) -> bool {
        let Some(&w) = order.get(depth) else {
            return true;
        };
        if depth >= self.deepest.0 {
            self.deepest = (depth, w);
        }
        for spot in self.candidates(w) {
            if self.budget == 0 {
                return false;
            }
            self.budget -= 1;
            self.placed[w] = Some(spot);
            if self.rhymes_hold(self.variant) && self.place(order, depth + 1) {
                return true;
            }
            self.placed[w] = None;
        }
        false
    }
}

/// Places `words` (in the model's characters, each in its vocabulary) in
/// `grid`: in the variant where they read best, each word near its share of
/// the poem (the first word early, the last late) and on the line's rhythm
/// (a two-character word at column 1, 3 or 5) where it can be.
pub fn plan(words: &[Vec<char>], grid: &PlanGrid) -> Result<KeywordPlan, KeywordError> {
    let usable = grid.usable_lines.min(grid.lines.len());
    let targets: Vec<usize> = (0..words.len())
        .map(|i| i * usable / words.len().max(1))
        .collect();
    let mut order: Vec<usize> = (0..words.len()).collect();
    order.sort_by_key(|&w| std::cmp::Reverse(words[w].len()));
    let mut deepest = (0, order.first().copied().unwrap_or(0));
    let mut budget = SEARCH_BUDGET;
    let mut best: Option<(usize, KeywordPlan)> = None;
    for variant in 0..grid.variants.len() {
        let mut search = Search {
            grid,
            variant,
            words,
            targets: targets.clone(),
            placed: vec![None; words.len()],
            budget,
            deepest: (0, order.first().copied().unwrap_or(0)),
        };
        let found = search.place(&order, 0);
        budget = search.budget;
        if !found {
            if search.deepest.0 >= deepest.0 {
                deepest = search.deepest;
            }
            continue;
        }
        let cost = search.total_cost();
        if best.as_ref().is_some_and(|(c, _)| *c <= cost) {
            continue;
        }
        let variants = (0..grid.variants.len())
            .filter(|&v| search.holds_in(v))
            .collect();
        let placements = words
            .iter()
            .zip(&search.placed)
            .filter_map(|(w, p)| p.map(|(l, c)| (w.iter().collect(), l, c)))
            .collect();
        best = Some((
            cost,
            KeywordPlan {
                placements,
                variants,
            },
        ));
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| refusal(words, grid, deepest.1))
}

/// Why `words` could not all be placed: the first that fits nowhere on its
/// own, else the one the search stopped at.
fn refusal(words: &[Vec<char>], grid: &PlanGrid, stuck: usize) -> KeywordError {
    let word_text = |w: &[char]| w.iter().collect::<String>();
    let longest = grid
        .lines
        .iter()
        .take(grid.usable_lines)
        .copied()
        .max()
        .unwrap_or(0);
    for w in words {
        if w.len() > longest {
            return KeywordError::TooLong {
                word: word_text(w),
                len: w.len(),
                form: grid.form.clone(),
                longest,
            };
        }
        let alone = [w.clone()];
        let fits = (0..grid.variants.len()).any(|variant| {
            let mut s = Search {
                grid,
                variant,
                words: &alone,
                targets: vec![0],
                placed: vec![None],
                budget: SEARCH_BUDGET,
                deepest: (0, 0),
            };
            s.place(&[0], 0)
        });
        if !fits {
            let unknown = w
                .iter()
                .any(|c| table().listed_class(*c) == ToneClass::Unknown);
            let hint = if unknown {
                "a character the 平水韻 table does not list can stand only where the tone is free"
                    .to_string()
            } else if grid.open_from > (0, 0) {
                "after the prompt; a shorter prompt leaves more room".to_string()
            } else {
                "try another word, or rules off".to_string()
            };
            return KeywordError::NoPlace {
                word: word_text(w),
                tones: tones_text(w),
                form: grid.form.clone(),
                hint,
            };
        }
    }
    let others: Vec<String> = words
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != stuck)
        .map(|(_, w)| word_text(w))
        .collect();
    KeywordError::NoRoom {
        word: words.get(stuck).map(|w| word_text(w)).unwrap_or_default(),
        others: others.join("、"),
        form: grid.form.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(w: &str) -> Vec<char> {
        w.chars().collect()
    }

    #[test]
    fn a_theme_is_words_or_a_sentence_reduced_to_its_words() {
        let t = parse_theme("秋江 夜雨").unwrap();
        assert_eq!(t.words, ["秋江", "夜雨"]);
        assert!(!t.reduced);
        assert_eq!(parse_theme("秋江，夜雨、明月").unwrap().words.len(), 3);
        assert_eq!(parse_theme("秋江,夜雨").unwrap().words, ["秋江", "夜雨"]);
        // Simplified script reads as traditional.
        assert_eq!(parse_theme("思乡").unwrap().words, ["思鄉"]);
        let s = parse_theme("寫一首關於秋夜思鄉的詩").unwrap();
        assert_eq!(s.words, ["秋夜", "思鄉"]);
        assert!(s.reduced);
        assert_eq!(
            parse_theme("写一首关于秋夜思乡的诗").unwrap().words,
            s.words
        );
        assert!(parse_theme("  ").unwrap().words.is_empty());
        assert_eq!(parse_theme("月 月").unwrap().words, ["月"]);
    }

    #[test]
    fn a_bad_theme_is_refused_naming_the_word() {
        let e = parse_theme("秋江 moon").unwrap_err().to_string();
        assert!(e.contains("`moon`"), "{e}");
        let e = parse_theme("春 夏 秋 冬 雪").unwrap_err().to_string();
        assert!(e.contains("5 keywords") && e.contains("1 to 4"), "{e}");
        let e = parse_theme("嗎呢吧啊哦").unwrap_err().to_string();
        assert!(e.contains("嗎呢吧啊哦"), "{e}");
    }

    fn quatrain_grid(agree: RhymesAgree<'_>) -> PlanGrid<'_> {
        let variants = crate::poetry::tonal::Template::all(4, 7)
            .iter()
            .map(|tpl| {
                (0..4)
                    .map(|line| {
                        (0..7)
                            .map(|col| match tpl.slot(line, col) {
                                _ if col == 6 && tpl.rhymes_at(line) => Need::Rhyme {
                                    rhyme: 0,
                                    tone: RhymeTone::Ping,
                                },
                                _ if col == 6 => Need::PlainEnd,
                                Some(crate::poetry::tonal::Slot::Tone(t)) => Need::Tone(t),
                                _ => Need::Any,
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        PlanGrid {
            form: "七絕".into(),
            lines: vec![7; 4],
            usable_lines: 4,
            variants,
            rhymes_agree: agree,
            open_from: (0, 0),
        }
    }

    #[test]
    fn keywords_go_where_their_tones_fit_spread_over_the_poem() {
        let agree = |_: u8, _: &[(char, RhymeTone)]| true;
        let grid = quatrain_grid(&agree);
        let words = [chars("秋江"), chars("夜雨"), chars("明月")];
        let p = plan(&words, &grid).unwrap();
        assert_eq!(p.placements.len(), 3);
        let lines: Vec<usize> = p.placements.iter().map(|(_, l, _)| *l).collect();
        assert_eq!(lines, [0, 1, 2], "{p:?}");
        for v in &p.variants {
            for pin in p.pins() {
                assert!(grid.variants[*v][pin.line][pin.column].admits(pin.ch));
            }
        }
        // Nothing before the prompt's end.
        let after = PlanGrid {
            open_from: (1, 3),
            ..quatrain_grid(&agree)
        };
        let p = plan(&[chars("秋江")], &after).unwrap();
        assert!((p.placements[0].1, p.placements[0].2) >= (1, 3), "{p:?}");
    }

    #[test]
    fn a_keyword_that_fits_nowhere_is_refused_with_its_tones() {
        let agree = |_: u8, _: &[(char, RhymeTone)]| false;
        let grid = quatrain_grid(&agree);
        let e = plan(&[chars("秋江夜雨明月光")], &grid).unwrap_err();
        assert!(matches!(e, KeywordError::NoPlace { .. }), "{e}");
        let e = plan(&[chars("秋江夜雨明月光白")], &grid)
            .unwrap_err()
            .to_string();
        assert!(e.contains("8 characters") && e.contains("7"), "{e}");
        // Rhymes that never agree keep every keyword off the rhyme positions.
        let p = plan(&[chars("東")], &grid).unwrap();
        for pin in p.pins() {
            for v in &p.variants {
                assert!(!matches!(
                    grid.variants[*v][pin.line][pin.column],
                    Need::Rhyme { .. }
                ));
            }
        }
    }
}
