//! One way from a failure to an `Event::Error`: a job's failure, or a panic
//! caught at the engine's boundary.

#[allow(clippy::wildcard_imports)] // the owner's imports, as if this were owner.rs
use super::*;

impl JobFailure {
    /// The same failure, reported to another request of a joined batch (the
    /// partial output belongs to the first).
    pub(super) fn for_another(&self) -> Self {
        Self {
            kind: self.kind,
            message: self.message.clone(),
            partial: None,
            fit: self.fit.clone(),
        }
    }

    /// The event that reports it to `request` (or to everyone with `None`).
    pub(super) fn into_event(self, request: Option<RequestId>) -> Event {
        Event::Error {
            request,
            kind: self.kind,
            message: self.message,
            partial: self.partial.map(|p| *p),
            fit: self.fit.map(|f| *f),
        }
    }

    pub(super) fn new(kind: ErrorKind, message: String) -> Self {
        Self {
            kind,
            message: crate::without_backtrace(&message),
            partial: None,
            fit: None,
        }
    }
}

impl OwnerThread {
    pub(super) fn fail(&mut self, request: Option<RequestId>, f: JobFailure) {
        let oom = f.kind == ErrorKind::OutOfMemory;
        self.emit(f.into_event(request));
        if oom {
            self.release(ReleaseReason::AfterError);
        } else if self.loaded.is_none() {
            self.set_state(EngineState::Unloaded);
        }
    }

    pub(super) fn caught_panic(
        &mut self,
        request: Option<RequestId>,
        panic: Box<dyn std::any::Any + Send>,
    ) {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!("engine caught a panic: {what}");
        let f = JobFailure::new(
            ErrorKind::Internal,
            format!("internal error (the engine was reset): {what}"),
        );
        self.emit(f.into_event(request));
        self.release(ReleaseReason::AfterError);
        self.set_state(EngineState::Unloaded);
    }
}
