//! The Theme field: what the poems are about, typed as words (秋江 夜雨) or
//! a sentence (寫一首關於秋夜思鄉的詩), with the words it was read as shown
//! beside it, or why it cannot be read; every poem holds every word
//! (`poetry::keywords`). Also the first launch's example prompts and themes.

use crate::poetry::keywords::parse_theme;

/// Themes offered on first launch, beside the example prompts.
pub const EXAMPLE_THEMES: [&str; 3] = ["秋夜 思鄉", "江南 春雨", "邊塞 明月"];

/// First launch: one line of hint, a row of example prompts and of example
/// themes; a click fills the prompt or the theme.
pub fn first_launch_examples(ui: &mut egui::Ui, prompt: &mut String, theme: &mut String) {
    ui.horizontal_wrapped(|ui| {
        ui.label("Type a character or two, pick a form, press Generate. Try:");
        for example in ["月", "春", "江", "山", "秋"] {
            if ui.button(egui::RichText::new(example).size(18.0)).clicked() {
                *prompt = example.to_string();
            }
        }
        ui.label("or a theme:");
        for example in EXAMPLE_THEMES {
            if ui.button(egui::RichText::new(example).size(18.0)).clicked() {
                *theme = example.to_string();
            }
        }
    });
}

/// Draws the field over `text` (the theme as typed) and the words it is
/// read as.
pub fn show(ui: &mut egui::Ui, text: &mut String) {
    ui.horizontal(|ui| field(ui, text));
    // Beside it where there is room, else wrapped under it.
    reading(ui, text);
}

fn field(ui: &mut egui::Ui, text: &mut String) {
    let label = ui.label("Theme");
    ui.add(
        egui::TextEdit::singleline(text)
            .hint_text("秋江 夜雨 … or a sentence")
            .desired_width((ui.available_width() - 8.0).clamp(100.0, 180.0))
            .font(egui::TextStyle::Heading),
    )
    .labelled_by(label.id)
    .on_hover_text(
        "What the poems are about: 1 to 4 words, each written into every poem \
         where it keeps the form's rhyme and tones. A sentence is read for the words of \
         classical verse in it.",
    );
}

/// The words the theme is read as, or why it cannot be read.
fn reading(ui: &mut egui::Ui, text: &str) {
    match &parse_theme(text) {
        Ok(theme) if theme.words.is_empty() => {}
        Ok(theme) => {
            let how = if theme.reduced {
                "read from your sentence"
            } else {
                "in every poem"
            };
            ui.label(format!("{} ({how})", theme.words.join(" · ")));
        }
        Err(e) => {
            ui.label(egui::RichText::new(e.to_string()).color(ui.visuals().error_fg_color));
        }
    }
}
