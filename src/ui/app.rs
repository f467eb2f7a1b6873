//! The main window: model bar, prompt and settings, streaming poem cards, and
//! the memory panel.
//!
//! This file holds the app's state, the frame's layout (`show`) and eframe's
//! hooks; the rest of its `impl` is split by concern under `app/`:
//! `construct` (building it), `model_choice` (model, device, precision),
//! `jobs` (Generate, Re-run, Keep…, Stop, Release), `events` (the engine's
//! events applied, saving), `files` (the file-dialog thread and what is
//! written), and one file per panel: `model_bar`, `writer`, `form_row`,
//! `fit_options`, `history_panel`, `meter` (memory panel and messages).
//!
//! Owns: the window's state. Must not: touch tensors or devices (the engine
//! does), or write files except through `store` and the dialogs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::meter_panel::{release_summary, MeterAction, MeterView};
use crate::engine::{
    Command, DeviceChoice, Engine, EngineError, EngineOptions, EngineState, ErrorKind, Event,
    GenerateJob, LoadReport, LoadSpec, Precision, Prompt, ReleaseReport, RequestId,
};
use crate::meter::{MarkerKind, MemorySampler, DEFAULT_CAPACITY, DEFAULT_INTERVAL};
use crate::poetry::forms::{layout, PoemForm};
use crate::store::{
    bundled_model, is_bundled, model_for_form, same_folder, PoemRecord, Settings, SettingsWriter,
    Store, SETTINGS_SAVE_INTERVAL,
};

pub use files::{DialogAnswer, DialogPurpose, DialogRunner};
use form_row::{tune_picker, verse_rules_row, FormChoice};

mod construct;
mod events;
mod files;
mod fit_options;
mod form_row;
mod history_panel;
mod jobs;
mod meter;
mod model_bar;
mod model_choice;
mod writer;

/// One variation being written or written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Card {
    pub prompt: String,
    pub text: String,
    pub done: bool,
    /// Stopped (Esc) or cut by an error before the poem ended.
    pub unfinished: bool,
    /// The finished poem as history keeps it (its own seed), for Re-run.
    pub record: Option<PoemRecord>,
}

/// The whole app: saved settings, runtime handles (never saved), and what is on screen.
pub struct VersifierApp {
    pub settings: Settings,
    saved_settings: Settings,
    /// Writes settings off the UI thread (None without a store).
    settings_writer: Option<SettingsWriter>,
    store: Option<Store>,
    pub history: Vec<PoemRecord>,
    engine: Engine,
    sampler: Option<MemorySampler>,
    pub prompt: String,
    form_choice: FormChoice,
    acrostic_heads: String,
    /// The tune of the 詞 form (simplified name, as in the tune table).
    ci_tune: String,
    model_field: String,
    /// The model field is being typed in (else it shows the model's name).
    model_editing: bool,
    /// The model field was just opened by a click: give it the keyboard.
    model_focus_pending: bool,
    /// The storage precision of the models that write the chosen form and
    /// re-runs (for Precision "auto"), per path.
    stored_precision: Vec<(PathBuf, Option<Precision>)>,
    pub state: EngineState,
    pub cards: Vec<Card>,
    /// The cards a new run replaced, kept until it writes something: a run
    /// that fails before its first character brings them back.
    replaced_cards: Option<Vec<Card>>,
    /// The card a card's Re-run is writing again (its one variation goes
    /// there, the other cards stay); `None`: the job's variations are the cards.
    rewriting: Option<usize>,
    current: Option<RequestId>,
    /// The job behind `current`, as sent: its poems are recorded with these
    /// settings, whatever the widgets say by the time it finishes.
    sent: Option<GenerateJob>,
    last_load: Option<LoadReport>,
    last_release: Option<ReleaseReport>,
    /// Precision "auto" is timing f32 and f16 for (GPU name, model).
    measuring_precision: Option<(String, PathBuf)>,
    /// When `last_release` arrived (Unix ms), to line the meter up with it.
    release_at_unix_ms: u64,
    /// Idle time left, as of when it was reported.
    idle_left: Option<(Duration, Instant)>,
    pinned: bool,
    pub error: Option<(ErrorKind, String)>,
    /// For a refused load: the numbers and what would fit.
    pub fit: Option<crate::device::fit::FitRefusal>,
    /// History panel search text.
    pub history_filter: String,
    pub notices: Vec<String>,
    kv_cache_bytes: usize,
    prompt_had_focus: bool,
    /// A native file dialog running on its own thread, what it is for, and
    /// where its answer arrives.
    dialog: Option<(
        std::thread::JoinHandle<()>,
        DialogPurpose,
        std::sync::mpsc::Receiver<files::DialogAnswer>,
    )>,
    /// Shows a file dialog and waits for its answer (the system's; tests
    /// give one that fails or picks a path).
    pub file_dialog_runner: files::DialogRunner,
    /// The last history entry deleted, and where it was, for Undo.
    deleted: Option<(usize, PoemRecord)>,
    /// Which card's text was just copied, and when (a brief "copied").
    copied: Option<(usize, Instant)>,
    /// The chosen model's config, read once per path (for the variation cost).
    config_cache: Option<(PathBuf, Option<crate::model::Gpt2Config>)>,
}

impl VersifierApp {
    /// The model, device and precision the user has chosen.
    /// The meter's latest sample (`None` before the first, or without a meter).
    pub fn latest_memory(&self) -> Option<crate::meter::MemorySnapshot> {
        self.sampler
            .as_ref()
            .and_then(|s| s.history().latest().cloned())
    }

    /// One frame: events in, then the whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.process_events();
        self.settings.form = self.form();
        self.refresh_stored_precision(&self.settings.form.clone());
        let theme = match self.settings.theme.as_str() {
            "light" => egui::ThemePreference::Light,
            "dark" => egui::ThemePreference::Dark,
            _ => egui::ThemePreference::System,
        };
        if ui.ctx().options(|o| o.theme_preference) != theme {
            ui.ctx().set_theme(theme);
        }
        let generating = matches!(self.state, EngineState::Generating) || self.current.is_some();
        egui::Panel::top("model-bar").show(ui, |ui| self.model_bar(ui));
        // A narrow window gets a narrow memory strip (figures, Release; no plot).
        let narrow = ui.available_width() < 900.0;
        if self.settings.meter_folded {
            egui::Panel::top("meter-line").show(ui, |ui| {
                let view = super::meter_fold::FoldedView {
                    state: self.state,
                    app_bytes: self.latest_memory().and_then(|m| m.rss_bytes),
                    can_release: self.last_load.is_some()
                        && !matches!(self.state, EngineState::Unloaded),
                };
                for action in super::meter_fold::show_folded(ui, &view) {
                    self.apply_fold_action(action);
                }
            });
        } else {
            egui::Panel::right(if narrow { "meter-strip" } else { "meter" })
                .default_size(if narrow { 190.0 } else { 360.0 })
                .show(ui, |ui| {
                    if let Some(action) = super::meter_fold::fold_button(ui) {
                        self.apply_fold_action(action);
                    }
                    let mut view = self.meter_view();
                    view.compact = narrow;
                    let actions = super::meter_panel::show(&view, ui);
                    for action in actions {
                        self.apply_meter_action(action);
                    }
                });
        }
        if self.error.is_some() || !self.notices.is_empty() {
            egui::Panel::bottom("messages").show(ui, |ui| self.messages(ui));
        }
        egui::CentralPanel::default().show(ui, |ui| self.writer(ui, generating));
        self.apply_yield_mode();
        self.save_settings_if_changed();
        // The countdown needs a tick even when nothing else happens.
        if self.idle_left.is_some() {
            ui.ctx().request_repaint_after(Duration::from_secs(1));
        }
    }
}

impl Drop for VersifierApp {
    fn drop(&mut self) {
        // A finished dialog thread is joined; one still waiting for the user is
        // left to end with the process (joining it would hang the exit).
        if let Some((handle, _, _)) = self.dialog.take() {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl eframe::App for VersifierApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        if let Some(r) = ui.ctx().input(|i| i.viewport().inner_rect) {
            let size = [r.width().round(), r.height().round()];
            if self.settings.window_size != Some(size) {
                self.settings.window_size = Some(size);
            }
        }
        self.show(ui);
        if let Some(launched) = super::LAUNCHED.get() {
            static FIRST_FRAME: std::sync::Once = std::sync::Once::new();
            FIRST_FRAME.call_once(|| {
                tracing::info!(
                    first_frame_ms = launched.elapsed().as_secs_f64() * 1000.0,
                    "first frame laid out"
                );
            });
        }
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.save_settings_if_changed();
    }
}

#[cfg(test)]
mod tests;
