//! The server's phase as it stops: serving, then draining (readiness false,
//! the listener closed, requests in flight and queued still answered), then
//! aborting once the drain timeout has passed (what is left is answered 503
//! `shutting_down`, so every client hears why, and the process exits).

use tokio::sync::watch;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking work.
    Serving,
    /// A stop was asked: no new connections; work accepted is finished.
    Draining,
    /// The drain timeout passed: work not finished is cancelled.
    Aborting,
}

/// The phase, shared by the handlers and the thread that stops the server.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Serving),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to `phase` (never back).
    pub fn enter(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let later = matches!(
                (*p, phase),
                (Phase::Serving, Phase::Draining | Phase::Aborting)
                    | (Phase::Draining, Phase::Aborting)
            );
            if later {
                *p = phase;
            }
            later
        });
    }

    /// Resolves when the server starts aborting the work left.
    pub async fn aborting(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Aborting).await;
    }
}

/// What a request cancelled by the drain timeout is told.
pub const ABORTED_MESSAGE: &str = "the server is shutting down and could not finish this request within its drain timeout (--drain-timeout); it was cancelled: send it again";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forward() {
        let l = Lifecycle::default();
        assert_eq!(l.phase(), Phase::Serving);
        l.enter(Phase::Draining);
        l.enter(Phase::Serving);
        assert_eq!(l.phase(), Phase::Draining);
        l.enter(Phase::Aborting);
        l.enter(Phase::Draining);
        assert_eq!(l.phase(), Phase::Aborting);
    }
}
