//! The History fold: search, re-run, delete with Undo, export.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    /// Search, re-run with the same seed, delete, export.
    pub(super) fn history_panel(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(&mut self.history_filter)
                    .hint_text("search")
                    .desired_width(160.0),
            );
            if ui
                .button("Export Markdown…")
                .on_hover_text("Save the entries shown (the search applies)")
                .clicked()
            {
                self.export_history(true);
            }
            if ui.button("Export text…").clicked() {
                self.export_history(false);
            }
        });
        if let Some((_, r)) = &self.deleted {
            let shown: String = r.text.chars().take(12).collect();
            let mut undo = false;
            ui.horizontal(|ui| {
                ui.label(egui::RichText::new(format!("Deleted {shown}…")).weak());
                undo = ui.small_button("Undo").clicked();
            });
            if undo {
                if let Some((i, r)) = self.deleted.take() {
                    self.history.insert(i.min(self.history.len()), r);
                    self.save_history();
                }
            }
        }
        let filter = self.history_filter.trim().to_string();
        let mut rerun = None;
        let mut delete = None;
        for (i, r) in self.history.iter().enumerate().rev().take(200) {
            if !r.matches(&filter) {
                continue;
            }
            // Two lines an entry, the buttons first: they stay in reach at
            // any width, and the poem wraps under them.
            ui.horizontal_wrapped(|ui| {
                if ui
                    .small_button("Re-run")
                    .on_hover_text(format!("Write this poem again (seed {})", r.sampling.seed))
                    .clicked()
                {
                    rerun = Some(i);
                }
                if ui.small_button("Delete").clicked() {
                    delete = Some(i);
                }
                ui.label(
                    egui::RichText::new(format!(
                        "{} · {} · {}",
                        crate::store::date_text(r.unix_ms),
                        r.form.label(),
                        crate::store::model_name(&r.model)
                    ))
                    .small()
                    .weak(),
                );
                if r.unfinished {
                    super::writer::unfinished_tag(ui);
                }
            });
            ui.add(egui::Label::new(&r.text).wrap());
            ui.add_space(4.0);
        }
        if let Some(i) = rerun {
            let r = self.history[i].clone();
            self.prompt = r.prompt.clone();
            self.choose_form(&r.form);
            self.rerun(&r);
        }
        if let Some(i) = delete {
            let r = self.history.remove(i);
            self.deleted = Some((i, r));
            self.save_history();
        }
    }

    /// Writes the history as Markdown or plain text next to the history file.
    /// The history entries the search shows, oldest first.
    pub(super) fn filtered_history(&self) -> Vec<PoemRecord> {
        self.history
            .iter()
            .filter(|r| r.matches(&self.history_filter))
            .cloned()
            .collect()
    }
}
