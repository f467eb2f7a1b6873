//! Keywords in every form: each poem holds every keyword, by construction,
//! and keeps the form and its rules; a keyword no place can take is refused
//! before anything is written, by name.
//!
//! The property test drives the real constraint over the bundled models' real
//! vocabularies with random logits (any model's choices); the other tests
//! write with the bundled models themselves.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use versifier::generate::{form_constraint, GenerateError};
use versifier::model::{Gpt2Config, TextTokenizer};
use versifier::poetry::forms::{satisfies, PoemForm};
use versifier::poetry::keywords::{is_theme_word, parse_theme};
use versifier::poetry::tunes::ci_tunes;
use versifier::poetry::{check_in_form, check_poem, RulesMode, VerseRules};

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn tokenizer(dir: &Path) -> TextTokenizer {
    let config = Gpt2Config::from_file(&dir.join("config.json")).unwrap();
    TextTokenizer::from_file(&dir.join("vocab.txt"), &config).unwrap()
}

/// Single-character tokens that are ideographs.
fn vocab_hanzi(tok: &TextTokenizer) -> Vec<char> {
    (0..tok.vocab_size() as u32)
        .filter_map(|id| {
            let text = String::from_utf8_lossy(tok.token_bytes(id)).into_owned();
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if versifier::poetry::text::is_hanzi(c) => Some(c),
                _ => None,
            }
        })
        .collect()
}

/// A tiny xorshift for the logits.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes a poem under `constraint` with random logits after `start`.
fn write_with_random_logits(
    tok: &TextTokenizer,
    constraint: &versifier::poetry::constraint::FormConstraint,
    start: &str,
    seed: u64,
) -> Option<String> {
    let stop = tok.stop_ids().first().copied()?;
    let mut draws = Draws(seed | 1);
    let mut written = start.to_string();
    for _ in 0..200 {
        let mut logits: Vec<f32> = (0..tok.vocab_size())
            .map(|_| (draws.next() % 1000) as f32 / 100.0)
            .collect();
        constraint.apply(&written, &mut logits);
        let best = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)?;
        if best == stop {
            return Some(written);
        }
        written.push_str(&String::from_utf8_lossy(tok.token_bytes(best)));
    }
    None
}

fn form_of(index: usize, heads: &[char]) -> PoemForm {
    match index % 7 {
        0 => PoemForm::WuJue,
        1 => PoemForm::QiJue,
        2 => PoemForm::WuLv,
        3 => PoemForm::QiLv,
        4 => PoemForm::Acrostic(heads.to_vec()),
        5 => PoemForm::Free,
        _ => PoemForm::Ci(ci_tunes()[index % 20].name.clone()),
    }
}

struct Vocab {
    tang: TextTokenizer,
    ci: TextTokenizer,
    tang_chars: Vec<char>,
    ci_chars: Vec<char>,
    words: Vec<String>,
}

fn vocab() -> &'static Vocab {
    static VOCAB: std::sync::OnceLock<Vocab> = std::sync::OnceLock::new();
    VOCAB.get_or_init(|| {
        let tang = tokenizer(&model_dir("tang-poems"));
        let ci = tokenizer(&model_dir("song-ci"));
        let tang_chars = vocab_hanzi(&tang);
        let ci_chars = vocab_hanzi(&ci);
        // Words of verse whose characters the model has.
        let words = include_str!("../src/poetry/data/theme-words.txt")
            .lines()
            .filter(|w| !w.starts_with('#'))
            .filter(|w| w.chars().all(|c| tang_chars.contains(&c)))
            .take(3000)
            .map(String::from)
            .collect();
        Vocab {
            tang,
            ci,
            tang_chars,
            ci_chars,
            words,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random keyword sets drawn from the vocabulary (words of verse and
    /// random characters of it), in every form, under strict rules and off:
    /// every poem holds every keyword and keeps its form (and under strict
    /// rules the checker finds its rhyme and tones kept), or the request is
    /// refused naming a keyword.
    #[test]
    fn every_keyword_in_every_poem_or_a_refusal_naming_one(
        form_index in 0..140usize,
        picks in proptest::collection::vec((any::<bool>(), any::<u32>(), 1..3usize), 1..=4),
        prompt_len in 0..3usize,
        strict in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let v = vocab();
        let heads: Vec<char> = (0..4).map(|i| v.tang_chars[(seed as usize + i * 97) % v.tang_chars.len()]).collect();
        let form = form_of(form_index, &heads);
        let (tok, chars) = match form {
            PoemForm::Ci(_) => (&v.ci, &v.ci_chars),
            _ => (&v.tang, &v.tang_chars),
        };
        let keywords: Vec<String> = picks
            .iter()
            .map(|(word, n, len)| {
                if *word {
                    v.words[*n as usize % v.words.len()].clone()
                } else {
                    (0..*len).map(|i| chars[(*n as usize + i * 31) % chars.len()]).collect()
                }
            })
            .collect();
        let start: String = if matches!(form, PoemForm::Acrostic(_)) {
            String::new()
        } else {
            (0..prompt_len).map(|i| chars[(seed as usize / 7 + i) % chars.len()]).collect()
        };
        let verse = VerseRules {
            mode: if strict { RulesMode::Strict } else { RulesMode::Off },
            keywords: keywords.clone(),
            ..VerseRules::default()
        };
        match form_constraint(tok, &form, &verse, &start) {
            Err(GenerateError::Invalid { field, problem }) => {
                prop_assert_eq!(field, "keywords", "{}", problem);
                prop_assert!(
                    keywords.iter().any(|k| problem.contains(&format!("`{k}`"))),
                    "{form}: {keywords:?}: the refusal names none: {problem}"
                );
            }
            Err(other) => prop_assert!(false, "{form}: {other}"),
            Ok(constraint) => {
                let poem = write_with_random_logits(tok, &constraint, &start, seed);
                prop_assert!(poem.is_some(), "{form}: {keywords:?}: no poem");
                let poem = poem.unwrap_or_default();
                for k in &keywords {
                    prop_assert!(poem.contains(k.as_str()), "{form}: `{k}` not in {poem}");
                }
                let kept_form = match &form {
                    PoemForm::Free => check_poem(&poem).form.is_some(),
                    other => satisfies(&poem, other),
                };
                prop_assert!(kept_form, "{form}: {poem}");
                if strict {
                    // The prompt is the user's: only its own characters may
                    // break a rule.
                    let report = check_in_form(&poem, &form);
                    let in_prompt = start.chars().count();
                    prop_assert!(
                        report.problems.iter().all(|p| p.line == 1 && p.column <= in_prompt),
                        "{form}: {keywords:?}: {poem}: {:?}", report.problems
                    );
                }
            }
        }
    }
}

#[test]
fn the_theme_word_list_holds_words_of_verse_not_modern_ones() {
    for w in ["明月", "故鄉", "秋風", "夜雨", "思鄉", "秋夜", "江上"] {
        assert!(is_theme_word(w), "{w}");
    }
    for w in ["關於", "一首", "寫一", "的詩"] {
        assert!(!is_theme_word(w), "{w}");
    }
}

#[test]
fn a_keyword_the_vocabulary_lacks_or_no_place_takes_is_refused_by_name() {
    let v = vocab();
    let refusal = |form: &str, words: &[&str], prompt: &str| {
        let verse = VerseRules {
            keywords: words.iter().map(|w| w.to_string()).collect(),
            ..VerseRules::default()
        };
        let form: PoemForm = form.parse().unwrap();
        match form_constraint(&v.tang, &form, &verse, prompt) {
            Err(GenerateError::Invalid { field, problem }) => {
                assert_eq!(field, "keywords", "{problem}");
                problem
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("{words:?} in {form} was taken"),
        }
    };
    // Outside the vocabulary (a Latin letter never is a token of it).
    let e = refusal("qijue", &["秋江", "江a"], "");
    assert!(e.contains("`江a`"), "{e}");
    // Longer than a line.
    let e = refusal("wujue", &["秋江夜雨明月"], "");
    assert!(e.contains("`秋江夜雨明月`") && e.contains("6"), "{e}");
    // Five 仄 in a row fit no line of a 五絕 (every line holds a 平).
    let e = refusal("wujue", &["月落白日"], "");
    assert!(e.contains("`月落白日`") && e.contains("仄仄仄仄"), "{e}");
    // Free verse: a prompt whose first line is no 5 or 7.
    let e = refusal("free", &["秋江"], "春風入律，");
    assert!(e.contains("5 or 7") && e.contains("4"), "{e}");
}

#[test]
fn simplified_keywords_are_held_in_the_models_characters() {
    let v = vocab();
    let theme = parse_theme("思乡，明月").unwrap();
    let verse = VerseRules {
        keywords: theme.words,
        ..VerseRules::default()
    };
    let c = form_constraint(&v.tang, &PoemForm::QiJue, &verse, "").unwrap();
    let poem = write_with_random_logits(&v.tang, &c, "", 7).unwrap();
    assert!(poem.contains("思鄉") && poem.contains("明月"), "{poem}");
}

#[test]
fn keywords_already_in_the_kept_lines_are_not_placed_again_and_the_kept_text_stays() {
    let v = vocab();
    let kept = "秋江夜雨送行舟，";
    let verse = VerseRules {
        keywords: vec!["秋江".into(), "明月".into()],
        ..VerseRules::default()
    };
    let c = form_constraint(&v.tang, &PoemForm::QiJue, &verse, kept).unwrap();
    for seed in 1..6 {
        let poem = write_with_random_logits(&v.tang, &c, kept, seed).unwrap();
        assert!(poem.starts_with(kept), "{poem}");
        assert_eq!(poem.matches("秋江").count(), 1, "{poem}");
        assert!(poem.contains("明月"), "{poem}");
        assert!(satisfies(&poem, &PoemForm::QiJue), "{poem}");
    }
}

#[test]
fn sets_of_words_of_verse_are_placed_in_quatrains_under_strict_rules() {
    // Not a refusal machine: 2 to 4 words of verse fit a 絕句 nearly always.
    let v = vocab();
    let mut draws = Draws(2026);
    let (mut placed, mut asked) = (0, 0);
    for i in 0..200 {
        let n = 2 + (draws.next() % 3) as usize;
        let words: Vec<String> = (0..n)
            .map(|_| v.words[draws.next() as usize % 500].clone())
            .collect();
        let form = if i % 2 == 0 {
            PoemForm::WuJue
        } else {
            PoemForm::QiJue
        };
        let verse = VerseRules {
            keywords: words,
            ..VerseRules::default()
        };
        asked += 1;
        placed += usize::from(form_constraint(&v.tang, &form, &verse, "").is_ok());
    }
    assert!(
        placed * 100 >= asked * 95,
        "{placed} of {asked} sets placed"
    );
}

#[test]
fn generate_keywords_on_the_command_line_in_every_form() {
    for form in [
        "wujue",
        "qijue",
        "wulv",
        "qilv",
        "acrostic:春夏秋冬",
        "free",
        "ci:浣溪沙",
    ] {
        let out = common::run_cli(&[
            "generate",
            "--form",
            form,
            "--keywords",
            "秋江，夜雨",
            "--seed",
            "11",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["keywords"], serde_json::json!(["秋江", "夜雨"]), "{v}");
        let poem = v["text"][0].as_str().unwrap();
        assert!(
            poem.contains("秋江") && poem.contains("夜雨"),
            "{form}: {poem}"
        );
        let form: PoemForm = form.parse().unwrap();
        let report = check_in_form(poem, &form);
        assert!(
            report.rhyme_kept && report.tones_kept,
            "{form}: {poem}: {:?}",
            report.problems
        );
    }
    // A sentence is reduced, and the command says which words it took.
    let out = common::run_cli(&[
        "generate",
        "--form",
        "qijue",
        "--keywords",
        "寫一首關於秋夜思鄉的詩",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("秋夜 思鄉"), "{err}");
    let poem = String::from_utf8_lossy(&out.stdout);
    assert!(poem.contains("秋夜") && poem.contains("思鄉"), "{poem}");
    // Refusals name the setting and the word, before any load.
    let out = common::run_cli(&["generate", "--form", "qijue", "--keywords", "moon river"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`keywords`") && err.contains("`moon`"),
        "{err}"
    );
}
