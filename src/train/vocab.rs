//! The character vocabulary of a poem model, written as a BERT-style
//! `vocab.txt` so the model loads like the Chinese GPT-2 poem checkpoints.

use std::collections::HashMap;

use crate::poetry::forms::PoemForm;
use crate::poetry::text::{COMMA, PERIOD};

/// Special tokens, in id order.
pub const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A character vocabulary with the form tags.
#[derive(Debug, Clone, PartialEq)]
pub struct CharVocab {
    pub tokens: Vec<String>,
    index: HashMap<String, u32>,
}

impl CharVocab {
    /// Specials, form tags, `，` `。`, then every character seen at least
    /// `min_count` times, most frequent first (ties by code point).
    pub fn build(text: &str, min_count: usize) -> Self {
        let seen = SeenTokens::count(text);
        let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        for f in [
            PoemForm::WuJue,
            PoemForm::QiJue,
            PoemForm::WuLv,
            PoemForm::QiLv,
        ] {
            tokens.extend(f.tag().map(String::from));
        }
        tokens.extend(seen.tune_tags.iter().map(|t| t.to_string()));
        tokens.push(COMMA.to_string());
        tokens.push(PERIOD.to_string());
        tokens.extend(seen.frequent_chars(min_count).map(String::from));
        Self::from_tokens(tokens)
    }

    /// This vocabulary with what `text` has and it lacks appended, so every id
    /// it had keeps its meaning (a model's embedding rows stay valid): the 詞
    /// tune tags in the order they first appear, then the characters seen at
    /// least `min_count` times, most frequent first. Returns the vocabulary
    /// and how many tokens were added.
    pub fn extended_with(&self, text: &str, min_count: usize) -> (Self, usize) {
        let seen = SeenTokens::count(text);
        let mut tokens = self.tokens.clone();
        let tags = seen.tune_tags.iter().copied();
        let chars = seen.frequent_chars(min_count);
        for t in tags.chain(chars) {
            if self.id(t).is_none() {
                tokens.push(t.to_string());
            }
        }
        let added = tokens.len() - self.len();
        (Self::from_tokens(tokens), added)
    }

    pub fn from_tokens(tokens: Vec<String>) -> Self {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self { tokens, index }
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// `[CLS] [TAG] characters [SEP]` for one corpus line; unknown characters become `[UNK]`.
    pub fn encode_line(&self, line: &str) -> Vec<u32> {
        let unk = self.id("[UNK]").unwrap_or(1);
        let (tag, body) = strip_tag(line);
        let mut ids = Vec::with_capacity(body.chars().count() + 3);
        ids.extend(self.id("[CLS]"));
        if let Some(t) = tag {
            ids.extend(self.id(t));
        }
        ids.extend(body.chars().map(|c| {
            self.index
                .get(c.encode_utf8(&mut [0; 4]) as &str)
                .copied()
                .unwrap_or(unk)
        }));
        ids.extend(self.id("[SEP]"));
        ids
    }

    pub fn to_vocab_txt(&self) -> String {
        let mut s = self.tokens.join("\n");
        s.push('\n');
        s
    }
}

/// The tokens a corpus text uses: its 詞 tune tags (`[CI:浣溪沙]`) in the
/// order they first appear, and how often each character occurs.
struct SeenTokens<'a> {
    tune_tags: Vec<&'a str>,
    /// (character as text, count), most frequent first, ties by code point;
    /// the two marks are left out (every vocabulary has them).
    chars: Vec<(String, usize)>,
}

impl<'a> SeenTokens<'a> {
    fn count(text: &'a str) -> Self {
        let mut counts: HashMap<char, usize> = HashMap::new();
        let mut tune_tags: Vec<&str> = Vec::new();
        for line in text.lines() {
            let (tag, body) = strip_tag(line);
            if let Some(t) = tag.filter(|t| is_tune_tag(t)) {
                if !tune_tags.contains(&t) {
                    tune_tags.push(t);
                }
            }
            for c in body.chars() {
                *counts.entry(c).or_insert(0) += 1;
            }
        }
        let mut chars: Vec<(char, usize)> = counts
            .into_iter()
            .filter(|(c, _)| *c != COMMA && *c != PERIOD)
            .collect();
        chars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let chars = chars.into_iter().map(|(c, n)| (c.to_string(), n)).collect();
        Self { tune_tags, chars }
    }

    /// The characters seen at least `min_count` times, most frequent first.
    fn frequent_chars(&self, min_count: usize) -> impl Iterator<Item = &str> {
        self.chars
            .iter()
            .take_while(move |(_, n)| *n >= min_count)
            .map(|(c, _)| c.as_str())
    }
}

/// Splits a leading `[TAG]` off a corpus line.
pub fn strip_tag(line: &str) -> (Option<&str>, &str) {
    if line.starts_with('[') {
        if let Some(end) = line.find(']') {
            return (Some(&line[..=end]), &line[end + 1..]);
        }
    }
    (None, line)
}

/// Whether `tag` (as [`strip_tag`] returns it) names a 詞 tune
/// (`[CI:浣溪沙]`) rather than a 詩 form (`[WUJUE]`).
pub fn is_tune_tag(tag: &str) -> bool {
    tag.starts_with("[CI:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_orders_specials_tags_marks_then_frequency() {
        let v = CharVocab::build("[WUJUE]月月月，花花。\n[QIJUE]月花風，", 1);
        assert_eq!(&v.tokens[..5], &SPECIALS.map(String::from));
        assert_eq!(v.tokens[5], "[WUJUE]");
        assert_eq!(v.tokens[9], "，");
        assert_eq!(v.tokens[10], "。");
        assert_eq!(v.tokens[11], "月");
        assert_eq!(v.encode_line("[WUJUE]月花"), vec![2, 5, 11, 12, 3]);
        assert_eq!(v.encode_line("雪"), vec![2, 1, 3]);
    }

    #[test]
    fn an_extended_vocabulary_keeps_every_id_and_appends_new_tags_then_frequent_characters() {
        let v = CharVocab::build("[WUJUE]月月月，花花。\n", 1);
        let (x, added) = v.extended_with(
            "[CI:浣溪沙]雪雪月，風。\n[CI:浣溪沙]花雨。\n[CI:菩萨蛮]雪",
            2,
        );
        assert_eq!(&x.tokens[..v.len()], &v.tokens[..]);
        // the tags in order of appearance, then 雪 (3 times); 風 and 雨 are seen once.
        assert_eq!(&x.tokens[v.len()..], &["[CI:浣溪沙]", "[CI:菩萨蛮]", "雪"]);
        assert_eq!(added, 3);
        assert_eq!(x.encode_line("[CI:浣溪沙]雪風"), vec![2, 13, 15, 1, 3]);
        let (same, none) = x.extended_with("[CI:浣溪沙]月雪", 1);
        assert_eq!((same, none), (x, 0));
    }
}
