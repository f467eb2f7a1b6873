//! A hot swap that never takes the service down: the model new requests ask
//! for changes only once every engine asked has loaded the new one beside the
//! old and switched; when one cannot, the old model keeps serving, nothing in
//! flight hears of it, and `/v1/status` says why.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// How the last swap went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SwapOutcome {
    /// Engines are loading `model`; requests still use the old one.
    Swapping { model: String },
    /// Every engine asked serves `model`.
    Done { model: String },
    /// `model` could not be served; the old one still is.
    Failed {
        model: String,
        kept: String,
        error: String,
    },
}

/// A swap under way: the model and the engines (by device) yet to load it.
#[derive(Debug)]
struct Pending {
    model: PathBuf,
    waiting: BTreeSet<String>,
}

/// The model requests use, and the swap that may change it.
#[derive(Debug)]
pub struct SwapState {
    model: Mutex<PathBuf>,
    pending: Mutex<Option<Pending>>,
    last: Mutex<Option<SwapOutcome>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SwapState {
    pub fn new(model: PathBuf) -> Self {
        Self {
            model: Mutex::new(model),
            pending: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// The model new requests use.
    pub fn model(&self) -> PathBuf {
        lock(&self.model).clone()
    }

    /// How the last swap went (`None`: no swap yet).
    pub fn outcome(&self) -> Option<SwapOutcome> {
        lock(&self.last).clone()
    }

    /// A swap to `model` was sent to the engines of `devices` (a swap
    /// before it is dropped: the newest wins).
    pub fn begin(&self, model: PathBuf, devices: &[String]) {
        *lock(&self.last) = Some(SwapOutcome::Swapping {
            model: model.display().to_string(),
        });
        *lock(&self.pending) = Some(Pending {
            model,
            waiting: devices.iter().cloned().collect(),
        });
    }

    /// The engine of `device` loaded `model`; when it is the swap's and the
    /// last one waited for, requests use it from now on.
    pub fn loaded(&self, device: &str, model: &Path) {
        let mut pending = lock(&self.pending);
        let Some(p) = pending.as_mut().filter(|p| p.model == model) else {
            return;
        };
        p.waiting.remove(device);
        if p.waiting.is_empty() {
            *lock(&self.model) = p.model.clone();
            *lock(&self.last) = Some(SwapOutcome::Done {
                model: p.model.display().to_string(),
            });
            *pending = None;
        }
    }

    /// An error of no request from the engine of `device`: while a swap waits
    /// for it, the swap failed (the engine keeps its model). Returns whether
    /// it was the swap's, which no request should hear.
    pub fn failed(&self, device: &str, message: &str) -> bool {
        let mut pending = lock(&self.pending);
        let Some(p) = pending.as_ref().filter(|p| p.waiting.contains(device)) else {
            return false;
        };
        *lock(&self.last) = Some(SwapOutcome::Failed {
            model: p.model.display().to_string(),
            kept: self.model().display().to_string(),
            error: message.to_string(),
        });
        *pending = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_changes_once_every_engine_asked_has_it_and_never_after_a_failure() {
        let s = SwapState::new("old".into());
        s.begin("new".into(), &["cpu".into(), "cuda:0".into()]);
        s.loaded("cpu", Path::new("new"));
        assert_eq!(s.model(), PathBuf::from("old"), "one engine of two");
        s.loaded("cuda:0", Path::new("other"));
        assert_eq!(s.model(), PathBuf::from("old"), "another model's load");
        s.loaded("cuda:0", Path::new("new"));
        assert_eq!(s.model(), PathBuf::from("new"));
        assert!(matches!(s.outcome(), Some(SwapOutcome::Done { .. })));

        s.begin("broken".into(), &["cpu".into()]);
        assert!(!s.failed("cuda:0", "not asked"));
        assert!(s.failed("cpu", "model.safetensors: truncated"));
        assert_eq!(s.model(), PathBuf::from("new"));
        assert!(
            matches!(s.outcome(), Some(SwapOutcome::Failed { ref error, ref kept, .. }) if error.contains("truncated") && kept == "new")
        );
        assert!(!s.failed("cpu", "after the swap: not its error"));
    }
}
