//! Keep a poem's first lines and have the rest rewritten (the revision loop of
//! keyword-driven poetry): a card's "Keep…" menu offers each line; the lines
//! up to the chosen one, with their marks, become the prompt, so the kept
//! text stays exactly as it was and the form, its rules and the keywords go
//! on after it.

use crate::poetry::text::{COMMA, PERIOD};

/// The poem's lines, each with the mark that closes it (`春風入律作花時，`).
pub fn lines_with_marks(poem: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for c in poem.chars().filter(|c| !c.is_whitespace()) {
        cur.push(c);
        if c == COMMA || c == PERIOD {
            lines.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// The poem's first `n` lines as one prompt.
pub fn kept_text(poem: &str, n: usize) -> String {
    lines_with_marks(poem).into_iter().take(n).collect()
}

/// `1` for the first line, `1–3` for the first three.
pub fn range_label(lines: usize) -> String {
    if lines == 1 {
        "1".into()
    } else {
        format!("1–{lines}")
    }
}

/// Draws a card's "Keep…" menu over its finished `poem`; returns how many of
/// its first lines to keep when the user chooses.
pub fn keep_menu(ui: &mut egui::Ui, poem: &str) -> Option<usize> {
    let lines = lines_with_marks(poem);
    let mut chosen = None;
    ui.menu_button("Keep…", |ui| {
        ui.label(egui::RichText::new("Keep the lines up to … and rewrite the rest").small());
        // Keeping every line would leave nothing to rewrite.
        for (i, line) in lines.iter().enumerate().take(lines.len().saturating_sub(1)) {
            if ui
                .button(format!("{}  {line}", range_label(i + 1)))
                .clicked()
            {
                chosen = Some(i + 1);
                ui.close();
            }
        }
    })
    .response
    .on_hover_text(
        "Keep this poem's first lines as they are (they become the prompt, where you can \
         edit them) and write the rest again, with the same form, rules and theme",
    );
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poems_lines_keep_their_marks() {
        let poem = "春風入律作花時，細雨輕雲拂畫眉。不爲少年豪放去，一番閑事總無詩。";
        assert_eq!(lines_with_marks(poem).len(), 4);
        assert_eq!(kept_text(poem, 1), "春風入律作花時，");
        assert_eq!(kept_text(poem, 2), "春風入律作花時，細雨輕雲拂畫眉。");
        assert_eq!(lines_with_marks("春風入律\n作花").len(), 1);
    }
}
