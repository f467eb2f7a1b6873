//! What Versifier keeps on disk: settings and the poem history, in the OS's
//! config/data folders, written atomically (temp file, fsync, rename). A file
//! that cannot be read is kept aside as `.bak` and defaults are used, with a
//! notice; nothing is ever silently lost.
//!
//! Layout: `settings.rs`, `history.rs` (records and exports), `atomic.rs`
//! (atomic writes, reads that keep a bad file aside), `settings_writer.rs`
//! (the writer thread); this file holds the errors and where files live.
//!
//! Owns: file formats, locations, atomic writes. Must not: touch the engine or
//! draw UI.

use std::path::{Path, PathBuf};

mod atomic;
mod history;
mod settings;
mod settings_writer;

pub use atomic::{load_or_default, write_bytes_atomic, write_json_atomic};
pub use history::{date_text, export_text, model_name, PoemRecord};
pub use settings::{MeasuredPrecision, Settings};
pub use settings_writer::{SettingsWriter, SETTINGS_SAVE_INTERVAL};

/// Errors writing or reading the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
}
/// Where the files live.
#[derive(Debug, Clone)]
pub struct Store {
    pub settings_path: PathBuf,
    pub history_path: PathBuf,
}

impl Store {
    /// The OS folders (`~/.config/versifier`, `~/.local/share/versifier` on Linux).
    pub fn system() -> Option<Self> {
        let dirs = directories::ProjectDirs::from("org", "Versifier", "versifier")?;
        Some(Self {
            settings_path: dirs.config_dir().join("settings.json"),
            history_path: dirs.data_dir().join("history.json"),
        })
    }

    /// A store in one folder (tests, portable installs).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            settings_path: dir.join("settings.json"),
            history_path: dir.join("history.json"),
        }
    }

    /// Settings, or defaults plus a notice when the file is missing or unreadable.
    /// Out-of-range fields are brought into range ([`Settings::sanitized`]),
    /// with a notice naming each.
    pub fn load_settings(&self) -> (Settings, Option<String>) {
        let (settings, note) = load_or_default::<Settings>(&self.settings_path);
        let (settings, fixes) = settings.sanitized();
        let note = note.into_iter().chain(fixes).collect::<Vec<_>>();
        (settings, (!note.is_empty()).then(|| note.join("\n")))
    }

    /// The saved window size, read without touching the file: an unreadable
    /// file stays where it is for [`Self::load_settings`] to report.
    pub fn peek_window_size(&self) -> Option<[f32; 2]> {
        let text = std::fs::read_to_string(&self.settings_path).ok()?;
        let settings: Settings = serde_json::from_str(&text).ok()?;
        settings.sanitized().0.window_size
    }

    pub fn save_settings(&self, s: &Settings) -> Result<(), StoreError> {
        write_json_atomic(&self.settings_path, s)
    }

    pub fn load_history(&self) -> (Vec<PoemRecord>, Option<String>) {
        load_or_default(&self.history_path)
    }

    pub fn save_history(&self, h: &[PoemRecord]) -> Result<(), StoreError> {
        write_json_atomic(&self.history_path, &h)
    }
}

/// The folder for log files: the OS state folder where there is one
/// (`~/.local/state/versifier/logs` on Linux), else the local data folder.
pub fn log_dir() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("org", "Versifier", "versifier")?;
    let base = dirs.state_dir().unwrap_or_else(|| dirs.data_local_dir());
    Some(base.join("logs"))
}

/// Where the bundled model is: next to the executable, in the installed data
/// folder, or in the source tree (`cargo run`).
pub fn bundled_model() -> Option<PathBuf> {
    let rel = Path::new("models/tang-poems");
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(rel));
            candidates.push(dir.join("../share/versifier").join(rel));
            candidates.push(dir.join("../lib/versifier").join(rel));
            // macOS: Versifier.app/Contents/MacOS/versifier -> Contents/Resources.
            candidates.push(dir.join("../Resources").join(rel));
        }
    }
    if let Some(d) = directories::ProjectDirs::from("org", "Versifier", "versifier") {
        candidates.push(d.data_dir().join(rel));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel));
    candidates.push(rel.to_path_buf());
    candidates
        .into_iter()
        .find(|p| p.join("config.json").is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}

/// Where the bundled 詞 model is (`models/song-ci`, installed beside the
/// bundled model): a fine-tune of it on the Song 詞 that writes `--form
/// ci:TUNE` when the bundled model is the one chosen (`model_for_form`).
pub fn bundled_ci_model() -> Option<PathBuf> {
    let beside = bundled_model()?.parent()?.join("song-ci");
    beside.join("config.json").is_file().then_some(beside)
}

/// The model folder that writes `form` when `chosen` is the model asked for:
/// the bundled 詞 model for a 詞 tune when `chosen` is the bundled model
/// (however its path is written) and the 詞 model is installed; `chosen`
/// otherwise. Any other model, a copy of the bundled one included, writes
/// every form itself.
///
/// Called for every job and every frame of the window while a tune is
/// chosen, so where the bundled models are is looked up once a process.
pub fn model_for_form(chosen: &Path, form: &crate::poetry::forms::PoemForm) -> PathBuf {
    if !matches!(form, crate::poetry::forms::PoemForm::Ci(_)) {
        return chosen.to_path_buf();
    }
    match bundled_pair() {
        (Some(shi), Some(ci)) if same_folder(chosen, shi) => ci.clone(),
        _ => chosen.to_path_buf(),
    }
}

/// Whether `model` is one of the bundled models (詩 or 詞).
pub fn is_bundled(model: &Path) -> bool {
    let (shi, ci) = bundled_pair();
    [shi, ci]
        .into_iter()
        .flatten()
        .any(|b| same_folder(model, b))
}

/// `bundled_model()` and `bundled_ci_model()`, found once: an install does
/// not move while it runs.
fn bundled_pair() -> &'static (Option<PathBuf>, Option<PathBuf>) {
    static PAIR: std::sync::OnceLock<(Option<PathBuf>, Option<PathBuf>)> =
        std::sync::OnceLock::new();
    PAIR.get_or_init(|| (bundled_model(), bundled_ci_model()))
}

/// Whether two paths name one folder (equal, or equal once canonical).
pub fn same_folder(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeking_at_the_window_size_leaves_an_unreadable_file_for_the_app_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        std::fs::write(&store.settings_path, r#"{"precision": "F16"}"#).unwrap();
        assert_eq!(store.peek_window_size(), None);
        let (_, note) = store.load_settings();
        assert!(note.is_some_and(|n| n.contains("settings.json")));
        store
            .save_settings(&Settings {
                window_size: Some([900.0, 600.0]),
                ..Settings::default()
            })
            .unwrap();
        assert_eq!(store.peek_window_size(), Some([900.0, 600.0]));
    }

    #[test]
    fn bundled_model_is_found_from_the_source_tree() {
        let p = bundled_model().expect("models/tang-poems in the source tree");
        assert!(p.join("vocab.txt").is_file());
    }

    #[test]
    fn a_ci_tune_on_the_bundled_model_is_written_by_the_bundled_ci_model() {
        use crate::poetry::forms::PoemForm;
        let shi = bundled_model().expect("models/tang-poems in the source tree");
        let ci = bundled_ci_model().expect("models/song-ci in the source tree");
        assert!(ci.join("vocab.txt").is_file());
        let tune: PoemForm = "ci:浣溪沙".parse().unwrap();
        assert_eq!(model_for_form(&shi, &tune), ci);
        // However the bundled model's path is written.
        let roundabout = shi.join("../tang-poems");
        assert_eq!(model_for_form(&roundabout, &tune), ci);
        // 詩 stay with the bundled model; the 詞 model asked for itself stays.
        for form in [
            PoemForm::Free,
            PoemForm::QiJue,
            PoemForm::Acrostic(vec!['春']),
        ] {
            assert_eq!(model_for_form(&shi, &form), shi, "{form}");
        }
        assert_eq!(model_for_form(&ci, &tune), ci);
        assert!(is_bundled(&shi) && is_bundled(&ci) && is_bundled(&roundabout));
    }

    #[test]
    fn any_other_model_writes_ci_tunes_itself_a_copy_of_the_bundled_one_included() {
        let shi = bundled_model().expect("models/tang-poems in the source tree");
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "vocab.txt"] {
            std::fs::copy(shi.join(f), dir.path().join(f)).unwrap();
        }
        let tune: crate::poetry::forms::PoemForm = "ci:浣溪沙".parse().unwrap();
        assert_eq!(model_for_form(dir.path(), &tune), dir.path());
        assert!(!is_bundled(dir.path()));
        let missing = Path::new("/no/such/model");
        assert_eq!(model_for_form(missing, &tune), missing);
    }
}
