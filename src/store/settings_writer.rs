//! Saving settings off the UI thread, at most once per interval: the window
//! hands over every change (dragging a slider changes them every frame), a
//! named thread writes the latest one atomically, and dropping the writer
//! writes what is still pending and joins the thread.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Settings, Store, StoreError};

/// Settings are written at most this often.
pub const SETTINGS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Pending {
    latest: Option<Settings>,
    closing: bool,
}

/// The handle the window keeps; see the module docs.
pub struct SettingsWriter {
    shared: Arc<(Mutex<Pending>, Condvar)>,
    errors: mpsc::Receiver<StoreError>,
    writes: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl SettingsWriter {
    /// Starts the writer thread for `store`, writing at most once per `interval`.
    pub fn spawn(store: Store, interval: Duration) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Pending::default()), Condvar::new()));
        let (err_tx, errors) = mpsc::channel();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (shared_t, writes_t) = (Arc::clone(&shared), Arc::clone(&writes));
        let thread = std::thread::Builder::new()
            .name("versifier-settings".into())
            .spawn(move || {
                let (lock, wake) = &*shared_t;
                let mut last_write: Option<Instant> = None;
                loop {
                    let mut p = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    // Wait for a change (or the end), then for the interval to pass.
                    while p.latest.is_none() && !p.closing {
                        p = wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                    }
                    while !p.closing {
                        let due = last_write
                            .map_or(Duration::ZERO, |t| interval.saturating_sub(t.elapsed()));
                        if due.is_zero() {
                            break;
                        }
                        p = wake
                            .wait_timeout(p, due)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    let next = p.latest.take();
                    let closing = p.closing;
                    drop(p);
                    if let Some(s) = next {
                        if let Err(e) = store.save_settings(&s) {
                            let _ = err_tx.send(e);
                        }
                        writes_t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        last_write = Some(Instant::now());
                    }
                    if closing {
                        return;
                    }
                }
            })?;
        Ok(Self {
            shared,
            errors,
            writes,
            thread: Some(thread),
        })
    }

    /// Queues `settings` to be written (replacing any not yet written).
    pub fn save(&self, settings: &Settings) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).latest = Some(settings.clone());
        wake.notify_one();
    }

    /// Errors of earlier writes, each once.
    pub fn take_errors(&self) -> Vec<StoreError> {
        self.errors.try_iter().collect()
    }

    /// Files written so far.
    pub fn writes(&self) -> usize {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes what is pending now and stops the thread; returns how many files
    /// were written in all and the errors not yet taken.
    pub fn finish(mut self) -> (usize, Vec<StoreError>) {
        self.close();
        (self.writes(), self.take_errors())
    }

    fn close(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).closing = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SettingsWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_changes_is_written_once_now_and_once_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        // An interval no test run reaches: only the first change and the final
        // flush may write.
        let w = SettingsWriter::spawn(store.clone(), Duration::from_secs(3600)).unwrap();
        for v in 1..=100u32 {
            let s = Settings {
                variations: (v % 8 + 1) as usize,
                max_tokens: v as usize,
                ..Settings::default()
            };
            w.save(&s);
        }
        let (writes, errors) = w.finish();
        assert!(errors.is_empty(), "{errors:?}");
        assert!((1..=2).contains(&writes), "{writes} writes for 100 changes");
        let (saved, notice) = store.load_settings();
        assert!(notice.is_none(), "{notice:?}");
        assert_eq!(saved.max_tokens, 100, "the last change is on disk");
    }

    #[test]
    fn a_failed_write_is_reported_not_lost_in_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "x").unwrap();
        let w = SettingsWriter::spawn(Store::in_dir(&blocker), Duration::ZERO).unwrap();
        w.save(&Settings::default());
        let (_, errors) = w.finish();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("not-a-folder"),
            "{}",
            errors[0]
        );
    }
}
