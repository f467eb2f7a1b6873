//! The memory panel folded to one line: this app's memory, the engine's
//! state, Release, and the way back to the full panel.
//!
//! Unfolded by default on every machine: the panel is the app's promise
//! (the model's memory leaves on Release and comes back on the next poem),
//! so it shows until the user folds it, and the choice is remembered.
//!
//! Owns: the folded line. Must not: read the engine or the meter itself; it
//! draws the figures it is given and returns what the user did.

use crate::engine::EngineState;

/// What the folded line shows.
pub struct FoldedView {
    pub state: EngineState,
    /// This process's resident memory, when the OS says.
    pub app_bytes: Option<u64>,
    /// Whether a model is loaded (Release has something to free).
    pub can_release: bool,
}

/// What the user did with the folded line or the fold button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldAction {
    /// Show the full panel again.
    Unfold,
    /// Fold the panel to one line.
    Fold,
    /// Release the model.
    Release,
}

/// The folded line.
pub fn show_folded(ui: &mut egui::Ui, view: &FoldedView) -> Vec<FoldAction> {
    let mut actions = Vec::new();
    ui.horizontal_wrapped(|ui| {
        if ui
            .small_button("Show memory")
            .on_hover_text("Show the memory panel")
            .clicked()
        {
            actions.push(FoldAction::Unfold);
        }
        ui.label(egui::RichText::new(super::meter_panel::state_text(view.state)).strong());
        if let Some(b) = view.app_bytes {
            ui.label(format!("this app {} MiB", crate::mib(b)));
        }
        if ui
            .add_enabled(view.can_release, egui::Button::new("Release").small())
            .on_hover_text("Free the model and give its memory back")
            .clicked()
        {
            actions.push(FoldAction::Release);
        }
    });
    actions
}

/// The button at the top of the full panel that folds it.
pub fn fold_button(ui: &mut egui::Ui) -> Option<FoldAction> {
    ui.small_button("Fold")
        .on_hover_text("Fold the memory panel to one line (the poem gets the room)")
        .clicked()
        .then_some(FoldAction::Fold)
}
