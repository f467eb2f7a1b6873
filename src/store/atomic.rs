//! Files written so that a crash leaves the old file or the new one, never a
//! mix, and read so that an unreadable file is kept aside, never lost.

use std::io::Write;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

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

#[cfg(test)]
mod tests {
    use crate::store::Store;

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
}
