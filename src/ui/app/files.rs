//! Files the user picks: the file-dialog thread and what is written (a
//! poem, the history, the timeline).

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// What a file dialog is for.
#[derive(Debug, Clone)]
pub enum DialogPurpose {
    /// Choose a model folder.
    OpenModel,
    /// Save `text` under a name the user picks (`name` suggested).
    Save {
        name: String,
        text: String,
        markdown: bool,
    },
}

/// How a file dialog ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogAnswer {
    Picked(PathBuf),
    /// The user closed it without choosing.
    Cancelled,
    /// No dialog could be shown (no portal on this system, say).
    Failed,
}

/// Shows a file dialog for a purpose, starting in a folder, and waits.
pub type DialogRunner = fn(&DialogPurpose, Option<PathBuf>) -> DialogAnswer;

/// A dialog that answers sooner than this was never shown: no one chooses or
/// cancels that fast, and rfd answers `None` at once when no portal runs.
const SHOWN_FOR_AT_LEAST: Duration = Duration::from_millis(250);

/// The system's dialog (rfd, through the desktop's portal).
pub fn system_dialog(purpose: &DialogPurpose, start: Option<PathBuf>) -> DialogAnswer {
    let started = Instant::now();
    let mut d = rfd::FileDialog::new();
    if let Some(dir) = start {
        d = d.set_directory(dir);
    }
    let picked = match purpose {
        DialogPurpose::OpenModel => d.set_title("Open a GPT-2 model folder").pick_folder(),
        DialogPurpose::Save { name, markdown, .. } => d
            .set_title("Save")
            .set_file_name(name)
            .add_filter(
                if *markdown { "Markdown" } else { "Text" },
                &[if *markdown { "md" } else { "txt" }],
            )
            .save_file(),
    };
    match picked {
        Some(p) => DialogAnswer::Picked(p),
        None if started.elapsed() < SHOWN_FOR_AT_LEAST => DialogAnswer::Failed,
        None => DialogAnswer::Cancelled,
    }
}

/// A name under `dir` like `name` that no file has yet (`poems-2.md`, …).
fn free_name(dir: &std::path::Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if !path.exists() {
        return path;
    }
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    (2..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(path)
}

impl VersifierApp {
    /// Opens the system's folder picker without blocking the window; without a
    /// portal or dialog the path field above stays the way to choose.
    pub(super) fn open_model_dialog(&mut self) {
        self.file_dialog(DialogPurpose::OpenModel);
    }

    /// Runs the system's file dialog for `purpose` on its own thread.
    pub(super) fn file_dialog(&mut self, purpose: DialogPurpose) {
        if self.dialog.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let documents =
            directories::UserDirs::new().and_then(|d| d.document_dir().map(PathBuf::from));
        let dialog_purpose = purpose.clone();
        let run = self.file_dialog_runner;
        let spawned = std::thread::Builder::new()
            .name("versifier-file-dialog".into())
            .spawn(move || {
                let _ = tx.send(run(&dialog_purpose, documents));
            });
        match spawned {
            Ok(handle) => self.dialog = Some((handle, purpose, rx)),
            Err(e) => self.notices.push(format!(
                "Could not open a file dialog ({e}); type the folder's path instead."
            )),
        }
    }

    pub(super) fn poll_dialog(&mut self) {
        let Some((_, _, rx)) = &self.dialog else {
            return;
        };
        match rx.try_recv() {
            Ok(picked) => {
                let Some((handle, purpose, _)) = self.dialog.take() else {
                    return;
                };
                let _ = handle.join();
                self.dialog_answered(purpose, picked);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                if let Some((handle, _, _)) = self.dialog.take() {
                    let _ = handle.join();
                }
            }
        }
    }

    /// What the user chose, or what happens without a choice: a Save whose
    /// dialog could not open is written to the documents folder (else the
    /// data folder) and the message says where; a cancelled one says so.
    fn dialog_answered(&mut self, purpose: DialogPurpose, answer: DialogAnswer) {
        match (purpose, answer) {
            (DialogPurpose::OpenModel, DialogAnswer::Picked(p)) => {
                self.model_field = p.display().to_string();
            }
            (DialogPurpose::OpenModel, DialogAnswer::Cancelled) => {
                self.notices.push("No folder chosen.".into());
            }
            (DialogPurpose::OpenModel, DialogAnswer::Failed) => self.notices.push(
                "No file dialog could open on this system: type the model folder's path in the Model field."
                    .into(),
            ),
            (DialogPurpose::Save { text, .. }, DialogAnswer::Picked(p)) => self.write_file(&p, &text),
            (DialogPurpose::Save { .. }, DialogAnswer::Cancelled) => {
                self.notices.push("Not saved: the dialog was closed without a file name.".into());
            }
            (DialogPurpose::Save { name, text, .. }, DialogAnswer::Failed) => {
                let dir = directories::UserDirs::new()
                    .and_then(|d| d.document_dir().map(PathBuf::from))
                    .filter(|d| d.is_dir())
                    .or_else(|| {
                        self.store
                            .as_ref()
                            .and_then(|s| s.history_path.parent().map(PathBuf::from))
                    });
                let Some(dir) = dir else {
                    self.notices.push(format!(
                        "Not saved: no file dialog could open and there is no documents or data folder to write {name} to."
                    ));
                    return;
                };
                let path = free_name(&dir, &name);
                let written = crate::store::write_bytes_atomic(&path, text.as_bytes());
                self.notices.push(match written {
                    Ok(()) => format!(
                        "No file dialog could open on this system, so it was saved to {}.",
                        path.display()
                    ),
                    Err(e) => format!(
                        "Not saved: no file dialog could open, and writing {} failed: {e}",
                        path.display()
                    ),
                });
            }
        }
    }

    /// Writes `text` to `path` atomically and says where it went.
    pub fn write_file(&mut self, path: &std::path::Path, text: &str) {
        self.notices.push(
            match crate::store::write_bytes_atomic(path, text.as_bytes()) {
                Ok(()) => format!("Saved {}.", path.display()),
                Err(e) => format!("Not saved: {e}"),
            },
        );
    }

    /// Exports the entries the search shows through a save dialog (the
    /// documents folder first).
    pub fn export_history(&mut self, markdown: bool) {
        let text = crate::store::export_text(&self.filtered_history(), markdown);
        let name = if markdown { "poems.md" } else { "poems.txt" };
        self.file_dialog(DialogPurpose::Save {
            name: name.into(),
            text,
            markdown,
        });
    }

    /// Writes the entries the search shows to `path` (what the dialog does).
    pub fn export_history_to(&mut self, path: &std::path::Path, markdown: bool) {
        let text = crate::store::export_text(&self.filtered_history(), markdown);
        self.write_file(path, &text);
    }

    /// Writes the memory history as CSV next to the history file.
    pub fn export_timeline(&mut self) {
        let (Some(sampler), Some(store)) = (&self.sampler, &self.store) else {
            return;
        };
        let csv = sampler.history().to_csv();
        let dir = store
            .history_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let path = dir.join(format!(
            "timeline-{}.csv",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        let result = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, csv));
        self.notices.push(match result {
            Ok(()) => format!("timeline written to {}", path.display()),
            Err(e) => format!("{}: {e}", path.display()),
        });
    }

    /// Saves a card through a save dialog: the poem with its details when it
    /// finished, else its text.
    pub(super) fn save_card(&mut self, index: usize) {
        let Some(card) = self.cards.get(index) else {
            return;
        };
        let (name, text) = match &card.record {
            Some(r) => (
                format!("{}-{}.txt", r.prompt.trim(), r.sampling.seed),
                r.document(false),
            ),
            None => (
                format!("poem-{}.txt", index + 1),
                layout(&format!("{}{}", card.prompt, card.text)) + "\n",
            ),
        };
        self.file_dialog(DialogPurpose::Save {
            name,
            text,
            markdown: false,
        });
    }
}
