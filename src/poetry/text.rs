//! Poem text, below every rule: the verse punctuation, which characters are
//! 漢字, and a poem cut into its lines.
//!
//! Owns: characters and lines. Must not: know rhyme, tones or forms.

/// Comma ending the first line of a couplet.
pub const COMMA: char = '，';

/// Full stop ending a couplet.
pub const PERIOD: char = '。';

/// Whether `c` is a CJK ideograph (the characters a line is made of).
pub fn is_hanzi(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF | 0x2A700..=0x2EBEF | 0x30000..=0x3134F)
}

/// The lines of a poem: runs of ideographs between punctuation or line breaks.
pub fn poem_lines(text: &str) -> Vec<Vec<char>> {
    let mut lines = Vec::new();
    let mut cur = Vec::new();
    for c in text.chars() {
        if is_hanzi(c) {
            cur.push(c);
        } else if !cur.is_empty() {
            lines.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The mark closing each of the text's lines (see [`CheckReport::line_ends`]).
pub fn line_ends(text: &str) -> Vec<char> {
    let mut ends: Vec<Option<char>> = Vec::new();
    let mut in_line = false;
    for c in text.chars() {
        if is_hanzi(c) {
            if !in_line {
                ends.push(None);
                in_line = true;
            }
            continue;
        }
        in_line = false;
        let mark = match c {
            '。' | '？' | '！' | '.' | '?' | '!' => Some('。'),
            '，' | '、' | '；' | '：' | ',' | ';' | ':' => Some('，'),
            _ => None,
        };
        if let (Some(m), Some(last @ None)) = (mark, ends.last_mut()) {
            *last = Some(m);
        }
    }
    ends.iter()
        .enumerate()
        .map(|(i, m)| m.unwrap_or(if i % 2 == 0 { '，' } else { '。' }))
        .collect()
}

/// The lines written so far: finished lines and the current one.
pub fn written_lines(written: &str) -> (Vec<Vec<char>>, Vec<char>) {
    let mut done = Vec::new();
    let mut cur = Vec::new();
    for c in written.chars() {
        if c == COMMA || c == PERIOD {
            done.push(std::mem::take(&mut cur));
        } else if is_hanzi(c) {
            cur.push(c);
        }
    }
    (done, cur)
}
