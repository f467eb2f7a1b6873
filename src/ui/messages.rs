//! The one place errors and notices are shown: a strip at the bottom of the
//! window, so they never push the controls about. Each error says in plain
//! words what happened and what to do, with the engine's full message behind
//! a "details" fold.
//!
//! Narrow on purpose: it draws a [`MessagesView`] and returns the
//! [`MessageAction`]s the user took.

use crate::engine::ErrorKind;

/// What the strip draws.
pub struct MessagesView<'a> {
    pub error: Option<&'a (ErrorKind, String)>,
    pub notices: &'a [String],
}

/// What the user did in the strip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAction {
    /// Dismiss the error.
    DismissError,
    /// Dismiss this notice.
    DismissNotice(String),
    /// Dismiss every notice.
    ClearNotices,
}

/// A title and a hint for an error kind, in plain words.
pub fn plain(kind: ErrorKind) -> (&'static str, &'static str) {
    match kind {
        ErrorKind::BadModel => (
            "This model could not be opened.",
            "Choose a GPT-2 folder (config.json, model.safetensors, tokenizer.json or vocab.txt); until then the last model that opened writes.",
        ),
        ErrorKind::Device => (
            "The device could not be used.",
            "Pick another device (the CPU always works).",
        ),
        ErrorKind::OutOfMemory => (
            "Not enough memory.",
            "Try fewer variations, f16, or the CPU; the model was released.",
        ),
        ErrorKind::BadRequest => (
            "This poem cannot be written with these settings.",
            "Change the setting named above and press Generate again.",
        ),
        ErrorKind::QueueFull => ("Busy.", "Wait a moment and try again."),
        ErrorKind::DoesNotFit => (
            "The model does not fit in the free memory.",
            "Choose one of the options below, or free memory elsewhere.",
        ),
        ErrorKind::Internal => (
            "Something went wrong inside Versifier.",
            "The engine was reset; try again. The log file has the details.",
        ),
        ErrorKind::Generation => (
            "Writing stopped part-way.",
            "What was written so far is kept; try again.",
        ),
    }
}

/// The window's name for a setting an engine message names.
fn window_label(setting: &str) -> Option<&'static str> {
    Some(match setting {
        "prompt" => "Prompt",
        "keywords" => "Theme",
        "rhyme" => "Rhyme",
        "template" => "Template",
        "variations" => "Variations",
        "max_tokens" => "Max tokens",
        "temperature" => "Temperature",
        "top_k" => "Top-k",
        "top_p" => "Top-p",
        "repetition_penalty" => "Repetition penalty",
        "form" => "Form",
        _ => return None,
    })
}

/// A message in the window's words: "invalid setting `prompt`: …" becomes
/// "Prompt: …" (the field's own name), and no backticks.
pub fn readable(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid setting `") {
        if let Some((name, tail)) = rest.split_once('`') {
            if let Some(label) = window_label(name) {
                let tail = tail.trim_start_matches(':').trim_start();
                return format!("{label}: {}", tail.replace('`', ""));
            }
        }
    }
    message.replace('`', "")
}

/// Draws the strip (nothing when there is nothing to say).
pub fn show(ui: &mut egui::Ui, view: &MessagesView<'_>) -> Vec<MessageAction> {
    let mut actions = Vec::new();
    if let Some((kind, message)) = view.error {
        let (title, hint) = plain(*kind);
        egui::Frame::group(ui.style())
            .fill(ui.visuals().error_fg_color.gamma_multiply(0.12))
            .show(ui, |ui| {
                ui.horizontal_wrapped(|ui| {
                    if ui.small_button("Dismiss").clicked() {
                        actions.push(MessageAction::DismissError);
                    }
                    ui.colored_label(
                        ui.visuals().error_fg_color,
                        egui::RichText::new(title).strong(),
                    );
                    ui.label(readable(first_sentence(message)));
                });
                ui.label(egui::RichText::new(hint).small());
                egui::CollapsingHeader::new("details")
                    .id_salt("error-details")
                    .show(ui, |ui| {
                        ui.add(
                            egui::Label::new(
                                egui::RichText::new(readable(message)).small().monospace(),
                            )
                            .wrap(),
                        );
                    });
            });
    }
    // One line of notices however many came: the newest, and a count of the
    // earlier ones (their text on hover), so they never take the poems' room.
    if let Some(n) = view.notices.last() {
        ui.horizontal(|ui| {
            if ui.small_button("OK").clicked() {
                actions.push(MessageAction::DismissNotice(n.clone()));
            }
            let earlier = &view.notices[..view.notices.len() - 1];
            if !earlier.is_empty() {
                let all: Vec<String> = earlier.iter().rev().map(|e| readable(e)).collect();
                ui.label(egui::RichText::new(format!("+{} earlier", earlier.len())).small())
                    .on_hover_text(all.join("\n"));
                if ui.small_button("Dismiss all").clicked() {
                    actions.push(MessageAction::ClearNotices);
                }
            }
            ui.add(egui::Label::new(egui::RichText::new(readable(n)).weak()).truncate())
                .on_hover_text(readable(n));
        });
    }
    actions
}

/// The message up to its first sentence end (the details fold has the rest).
fn first_sentence(message: &str) -> &str {
    let cut = message
        .char_indices()
        .find(|(i, c)| *c == ';' || (*c == '.' && message[i + 1..].starts_with(' ')))
        .map_or(message.len(), |(i, _)| i);
    &message[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_plain_words_without_backticks() {
        let (title, hint) = plain(ErrorKind::BadRequest);
        assert!(!title.contains("BadRequest") && !hint.is_empty());
        assert_eq!(readable("invalid setting `rhyme`: x"), "Rhyme: x");
        assert_eq!(
            readable("invalid setting `prompt`: `月` is not …"),
            "Prompt: 月 is not …"
        );
        assert_eq!(
            readable("invalid setting `seed_x`: y"),
            "invalid setting seed_x: y"
        );
        assert_eq!(first_sentence("a failed; then b"), "a failed");
        assert_eq!(first_sentence("no end"), "no end");
        assert_eq!(first_sentence("v1.2 is bad. Fix it"), "v1.2 is bad");
    }
}
