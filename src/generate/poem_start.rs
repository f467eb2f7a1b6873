//! The start of a poem in a fixed form: a prompt is its first characters, or
//! whole lines kept from an earlier poem with their marks (`春風入律作花時，`),
//! after which the model rewrites the rest. Also the keywords a request asks
//! for, in the model's own characters.

use crate::poetry::text::{is_hanzi, COMMA, PERIOD};

/// Why `text` (in the model's characters) cannot begin a poem whose lines are
/// `plan` (each line's length and closing mark), or `Ok` when it can: every
/// closed line as long as the form's and closed by its mark, the open line
/// no longer than its line (a whole line's mark follows by itself), nothing
/// past the last line.
pub fn check_start(text: &str, plan: &[(usize, char)], form: &str) -> Result<(), String> {
    let (mut line, mut col) = (0usize, 0usize);
    for c in text.chars() {
        let Some(&(len, mark)) = plan.get(line) else {
            return Err(format!(
                "is longer than {form}: it has more than its {} lines",
                plan.len()
            ));
        };
        if c == COMMA || c == PERIOD {
            if col != len || c != mark {
                return Err(format!(
                    "line {} ends with {c} after {col} characters; a line of {form} there has {len} and ends with {mark}",
                    line + 1
                ));
            }
            line += 1;
            col = 0;
        } else if is_hanzi(c) {
            col += 1;
            if col > len {
                return Err(format!(
                    "is longer than one line of {form} ({len} characters){}",
                    if line > 0 {
                        format!(" at line {}", line + 1)
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    Ok(())
}

/// Whether `prompt` holds lines kept from an acrostic with these `heads`: it
/// begins with the first head. Otherwise an acrostic's prompt is not used
/// (the heads lead).
pub fn acrostic_keeps(prompt: &str, heads: &[char]) -> bool {
    let t = crate::poetry::rhyme::table();
    match (prompt.trim().chars().next(), heads.first()) {
        (Some(p), Some(h)) => t.to_traditional(p) == t.to_traditional(*h),
        _ => false,
    }
}

/// The prompt as the poem's opening, for showing the poem whole: the prompt
/// itself, except an acrostic's that holds no kept lines (its heads lead).
pub fn echoed_prompt(prompt: &str, form: &crate::poetry::forms::PoemForm) -> String {
    match form {
        crate::poetry::forms::PoemForm::Acrostic(heads) if !acrostic_keeps(prompt, heads) => {
            String::new()
        }
        _ => prompt.trim().to_string(),
    }
}

/// Why the kept lines of `start` do not begin with the acrostic's `heads`.
pub fn check_heads(start: &str, heads: &[char]) -> Result<(), String> {
    let lines = start.split([COMMA, PERIOD]).filter(|l| !l.is_empty());
    for (i, (line, head)) in lines.zip(heads).enumerate() {
        if let Some(first) = line.chars().next().filter(|c| c != head) {
            return Err(format!(
                "line {} begins with {first}; the acrostic's head there is {head}",
                i + 1
            ));
        }
    }
    Ok(())
}

/// The keywords as a model trained with them in front of each poem expects
/// them (`〈秋江、夜雨〉`, `packaging/corpus/make_keyword_corpus.py`): for a
/// vocabulary that has `〈` and `〉`, when there are keywords; else `None`.
pub fn keyword_prefix(tok: &crate::model::TextTokenizer, words: &[String]) -> Option<String> {
    let expects = tok.token_id("〈").is_some() && tok.token_id("〉").is_some();
    (expects && !words.is_empty()).then(|| format!("〈{}〉", vocab_keywords(tok, words).join("、")))
}

/// `words` in the characters of `tok`'s vocabulary (simplified ones mapped).
pub fn vocab_keywords(tok: &crate::model::TextTokenizer, words: &[String]) -> Vec<String> {
    words.iter().map(|w| tok.to_vocab_chars(w.trim())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_lines_begin_a_poem_and_a_ragged_start_is_refused() {
        let plan: Vec<(usize, char)> = (0..4)
            .map(|i| (7, if i % 2 == 0 { COMMA } else { PERIOD }))
            .collect();
        for ok in [
            "",
            "春",
            "春風入律作花時",
            "春風入律作花時，",
            "春風入律作花時，細雨輕雲拂畫眉。不",
        ] {
            assert!(check_start(ok, &plan, "七絕").is_ok(), "{ok}");
        }
        let long = check_start("春風入律作花時月", &plan, "七絕").unwrap_err();
        assert!(long.contains("longer than one line of 七絕 (7"), "{long}");
        let early = check_start("春風，", &plan, "七絕").unwrap_err();
        assert!(
            early.contains("line 1") && early.contains("2 characters"),
            "{early}"
        );
        let wrong = check_start("春風入律作花時。", &plan, "七絕").unwrap_err();
        assert!(wrong.contains("ends with ，"), "{wrong}");
        let whole = "春風入律作花時，細雨輕雲拂畫眉。不爲少年豪放去，一番閑事總無詩。";
        assert!(check_start(whole, &plan, "七絕").is_ok());
        let over = check_start(&format!("{whole}春"), &plan, "七絕").unwrap_err();
        assert!(over.contains("4 lines"), "{over}");
    }
}
