//! Files the user picks: the file-dialog thread and what is written (a
//! poem, the history, the timeline).

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// What a file dialog is for.
#[derive(Debug, Clone)]
pub(super) enum DialogPurpose {
    /// Choose a model folder.
    OpenModel,
    /// Save `text` under a name the user picks (`name` suggested).
    Save {
        name: String,
        text: String,
        markdown: bool,
    },
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
        let spawned = std::thread::Builder::new()
            .name("versifier-file-dialog".into())
            .spawn(move || {
                let mut d = rfd::FileDialog::new();
                if let Some(dir) = documents {
                    d = d.set_directory(dir);
                }
                let picked = match &dialog_purpose {
                    DialogPurpose::OpenModel => {
                        d.set_title("Open a GPT-2 model folder").pick_folder()
                    }
                    DialogPurpose::Save { name, markdown, .. } => d
                        .set_title("Save")
                        .set_file_name(name)
                        .add_filter(
                            if *markdown { "Markdown" } else { "Text" },
                            &[if *markdown { "md" } else { "txt" }],
                        )
                        .save_file(),
                };
                let _ = tx.send(picked);
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
                match (purpose, picked) {
                    (DialogPurpose::OpenModel, Some(p)) => self.model_field = p.display().to_string(),
                    (DialogPurpose::OpenModel, None) => self.notices.push("No folder chosen (or no file dialog on this system): type the model folder's path in the Model field.".into()),
                    (DialogPurpose::Save { text, .. }, Some(p)) => self.write_file(&p, &text),
                    (DialogPurpose::Save { .. }, None) => {}
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                if let Some((handle, _, _)) = self.dialog.take() {
                    let _ = handle.join();
                }
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
