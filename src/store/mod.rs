//! What Versifier keeps on disk: settings and the poem history, in the OS's
//! config/data folders, written atomically (temp file, fsync, rename). A file
//! that cannot be read is kept aside as `.bak` and defaults are used, with a
//! notice; nothing is ever silently lost.
//!
//! Owns: file formats, locations, atomic writes. Must not: touch the engine or
//! draw UI.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

mod settings_writer;
pub use settings_writer::{SettingsWriter, SETTINGS_SAVE_INTERVAL};

use crate::device::{DeviceChoice, Precision};
use crate::generate::forms::PoemForm;
use crate::generate::SamplingParams;

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

/// Saved settings. Every field has a default, so old or partial files load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The last model folder; `None` means the bundled model.
    pub model: Option<PathBuf>,
    pub recent_models: Vec<PathBuf>,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Idle unload after this many seconds; `None` = never.
    pub idle_timeout_s: Option<u64>,
    pub sampling: SamplingParams,
    pub lock_seed: bool,
    pub max_tokens: usize,
    pub variations: usize,
    pub form: PoemForm,
    pub preload_on_focus: bool,
    pub vertical_layout: bool,
    pub window_size: Option<[f32; 2]>,
    /// "system", "light" or "dark".
    pub theme: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            recent_models: Vec::new(),
            device: DeviceChoice::Cpu,
            precision: Precision::F32,
            idle_timeout_s: Some(300),
            sampling: SamplingParams::default(),
            lock_seed: false,
            max_tokens: 80,
            variations: 1,
            form: PoemForm::QiJue,
            preload_on_focus: true,
            vertical_layout: false,
            window_size: None,
            theme: "system".into(),
        }
    }
}

impl Settings {
    /// The longest idle timeout a file may ask for (a week); longer is "never" in practice.
    pub const MAX_IDLE_TIMEOUT_S: u64 = 7 * 24 * 3600;
    /// How many recently opened models the picker remembers.
    pub const MAX_RECENT_MODELS: usize = 8;

    /// Brings every field into the range the window offers (a hand-edited or
    /// damaged file may say `temperature: -3` or `variations: 10000`), with one
    /// notice per field changed, naming the field, what it was and what it is now.
    pub fn sanitized(mut self) -> (Self, Vec<String>) {
        let mut notes = Vec::new();
        fn fix<T: PartialOrd + Copy + std::fmt::Debug>(
            notes: &mut Vec<String>,
            field: &str,
            value: &mut T,
            lo: T,
            hi: T,
            fallback: T,
        ) {
            use std::cmp::Ordering::{Greater, Less};
            // NaN compares as None: neither in range nor above/below, so it gets the default.
            let new = match ((*value).partial_cmp(&lo), (*value).partial_cmp(&hi)) {
                (Some(Less), _) => lo,
                (_, Some(Greater)) => hi,
                (Some(_), Some(_)) => return,
                _ => fallback,
            };
            notes.push(format!(
                "settings: `{field}` was {value:?}, now {new:?} (allowed {lo:?}..={hi:?})"
            ));
            *value = new;
        }
        let d = Settings::default();
        fix(
            &mut notes,
            "variations",
            &mut self.variations,
            1,
            8,
            d.variations,
        );
        fix(
            &mut notes,
            "max_tokens",
            &mut self.max_tokens,
            1,
            1024,
            d.max_tokens,
        );
        let sd = SamplingParams::default();
        let sp = &mut self.sampling;
        fix(
            &mut notes,
            "sampling.temperature",
            &mut sp.temperature,
            0.01,
            10.0,
            sd.temperature,
        );
        fix(
            &mut notes,
            "sampling.top_p",
            &mut sp.top_p,
            0.01,
            1.0,
            sd.top_p,
        );
        fix(
            &mut notes,
            "sampling.top_k",
            &mut sp.top_k,
            0,
            100_000,
            sd.top_k,
        );
        fix(
            &mut notes,
            "sampling.repetition_penalty",
            &mut sp.repetition_penalty,
            1.0,
            10.0,
            sd.repetition_penalty,
        );
        if let Some(t) = &mut self.idle_timeout_s {
            fix(
                &mut notes,
                "idle_timeout_s",
                t,
                1,
                Self::MAX_IDLE_TIMEOUT_S,
                300,
            );
        }
        if let Some([w, h]) = &mut self.window_size {
            fix(&mut notes, "window_size[0]", w, 320.0, 16384.0, 1100.0);
            fix(&mut notes, "window_size[1]", h, 240.0, 16384.0, 760.0);
        }
        if !["system", "light", "dark"].contains(&self.theme.as_str()) {
            notes.push(format!(
                "settings: `theme` was {:?}, now \"system\" (allowed: system, light, dark)",
                self.theme
            ));
            self.theme = "system".into();
        }
        self.recent_models.truncate(Self::MAX_RECENT_MODELS);
        (self, notes)
    }
}

/// One saved poem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoemRecord {
    pub prompt: String,
    pub form: PoemForm,
    pub text: String,
    pub model: String,
    pub sampling: SamplingParams,
    pub unix_ms: u64,
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

/// Reads JSON from `path`; a missing file gives the default silently, an
/// unreadable one is moved to `<name>.bak` and gives the default with a notice.
pub fn load_or_default<T: DeserializeOwned + Default>(path: &Path) -> (T, Option<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (T::default(), None),
        Err(e) => {
            return (
                T::default(),
                Some(format!("{}: {e}; using defaults", path.display())),
            )
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => (v, None),
        Err(e) => {
            let bak = path.with_extension("json.bak");
            let kept = std::fs::rename(path, &bak).is_ok();
            let note = if kept {
                format!(
                    "{} could not be read ({e}); kept it as {} and started fresh",
                    path.display(),
                    bak.display()
                )
            } else {
                format!("{} could not be read ({e}); using defaults", path.display())
            };
            (T::default(), Some(note))
        }
    }
}

/// Writes `value` as JSON to `path` atomically (see [`write_bytes_atomic`]).
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), StoreError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Format {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    write_bytes_atomic(path, &text)
}

/// Writes `text` to `path` atomically: a temp file in the same folder, fsync,
/// rename over the old file, fsync the folder. A crash leaves the old file or
/// the new one, never a mix.
pub fn write_bytes_atomic(path: &Path, text: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("store"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("models/tang-poems"));
            candidates.push(dir.join("../share/versifier/models/tang-poems"));
            candidates.push(dir.join("../lib/versifier/models/tang-poems"));
            // macOS: Versifier.app/Contents/MacOS/versifier -> Contents/Resources.
            candidates.push(dir.join("../Resources/models/tang-poems"));
        }
    }
    if let Some(d) = directories::ProjectDirs::from("org", "Versifier", "versifier") {
        candidates.push(d.data_dir().join("models/tang-poems"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems"));
    candidates.push(PathBuf::from("models/tang-poems"));
    candidates
        .into_iter()
        .find(|p| p.join("config.json").is_file())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_partial_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        let (s, note) = store.load_settings();
        assert_eq!(s, Settings::default());
        assert!(note.is_none());
        let s = Settings {
            variations: 4,
            form: PoemForm::WuLv,
            idle_timeout_s: None,
            ..Settings::default()
        };
        store.save_settings(&s).unwrap();
        assert_eq!(store.load_settings().0, s);
        std::fs::write(&store.settings_path, r#"{"variations": 3}"#).unwrap();
        let (s, note) = store.load_settings();
        assert_eq!(s.variations, 3);
        assert_eq!(s.max_tokens, Settings::default().max_tokens);
        assert!(note.is_none());
    }

    #[test]
    fn out_of_range_settings_are_brought_into_range_with_a_notice_per_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        std::fs::write(
            &store.settings_path,
            r#"{"variations": 10000, "max_tokens": 0, "idle_timeout_s": 18446744073709551615,
                "sampling": {"temperature": -3.0, "top_p": 7},
                "window_size": [1e30, 10], "theme": "neon"}"#,
        )
        .unwrap();
        let (s, note) = store.load_settings();
        let note = note.expect("a notice");
        assert_eq!(s.variations, 8);
        assert_eq!(s.max_tokens, 1);
        assert_eq!(s.idle_timeout_s, Some(Settings::MAX_IDLE_TIMEOUT_S));
        assert_eq!(s.sampling.temperature, 0.01);
        assert_eq!(s.sampling.top_p, 1.0);
        assert_eq!(s.window_size, Some([16384.0, 240.0]));
        assert_eq!(s.theme, "system");
        for field in [
            "variations",
            "max_tokens",
            "idle_timeout_s",
            "sampling.temperature",
            "sampling.top_p",
            "window_size[0]",
            "window_size[1]",
            "theme",
        ] {
            assert!(
                note.contains(&format!("`{field}`")),
                "{field} missing from {note}"
            );
        }
        // A file within range gives no notice and is unchanged.
        let (clean, fixes) = Settings::default().sanitized();
        assert!(fixes.is_empty(), "{fixes:?}");
        assert_eq!(clean, Settings::default());
    }

    #[test]
    fn corrupt_file_is_kept_aside_with_a_notice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        std::fs::write(&store.history_path, "[{\"prompt\": ").unwrap();
        let (h, note) = store.load_history();
        assert!(h.is_empty());
        let note = note.unwrap();
        assert!(
            note.contains("history.json") && note.contains(".bak"),
            "{note}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("history.json.bak")).unwrap(),
            "[{\"prompt\": "
        );
    }

    #[test]
    fn bundled_model_is_found_from_the_source_tree() {
        let p = bundled_model().expect("models/tang-poems in the source tree");
        assert!(p.join("vocab.txt").is_file());
    }
}
