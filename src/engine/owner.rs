//! The owner thread: the one place the model, its device, its caches and every
//! candle tensor live. Clients hold an [`Engine`] handle and talk to it through
//! [`Command`]s and [`Event`]s only, so nothing else can hold a CUDA object when
//! the engine releases the device and resets the CUDA context.
//!
//! This file holds the thread's state and its run loop; the rest of its `impl`
//! is split by concern: `handle.rs` (the client side: `Engine`,
//! `EngineRemote`, options, clock), `resident.rs` (load, hot swap, Precision
//! auto), `memory.rs` (the fit check, out-of-memory reports), `batch.rs`
//! (joining jobs into one decode), `release.rs` (giving memory back),
//! `failure.rs` (one way from a failure to an `Event::Error`).
//!
//! Owns: the model, its device and every tensor. Must not: draw UI, read
//! settings files, or be reached except through `Command`s.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Device;

use super::protocol::{
    Command, EngineState, ErrorKind, Event, GenerateJob, LoadReport, LoadSpec, ReleaseReason,
    ReleaseReport, RequestId,
};
use crate::device::fit::{
    available_ram, check_fit, is_out_of_memory, out_of_memory_report, FitRefusal, MemoryStage,
};
use crate::device::shared_context::{self, ContextReset, ContextUser};
use crate::device::Precision;
use crate::device::PrecisionSpeeds;
use crate::device::{open_device, DeviceChoice};
use crate::generate::{
    generate_feeding, prepare_request, prompt_tokens_kept_for, validate_request, FinishedRow,
    GenerateError, GenerateRequest, Generation, GenerationTimings, PrepareError, RequestSettings,
    RowFeed, RowStart, SamplingParams, TokenEvent, Variation, MAX_VARIATIONS,
};
use crate::meter::{process_memory, GpuMeter};
use crate::model::{load_model_with_progress, Gpt2Config, LoadProgress, LoadedModel, ModelFiles};

mod batch;
mod failure;
mod handle;
mod memory;
mod release;
mod resident;

use handle::{CancelledSet, Inbox};
pub use handle::{
    Clock, Engine, EngineError, EngineOptions, EngineRemote, ManualClock, SystemClock, Waker,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_QUEUE_CAPACITY,
};

/// A device opened for a load, with its count as a context holder.
struct OpenedDevice {
    device: Device,
    /// Where it runs (the CPU when CUDA was asked for but is unavailable).
    actual: DeviceChoice,
    precision: Precision,
    context: ContextUser,
}

/// What is in memory.
struct Resident {
    /// What was asked for.
    spec: LoadSpec,
    /// Where it actually runs (CPU when CUDA was asked for but is unavailable).
    actual: DeviceChoice,
    model: LoadedModel,
    /// Held so the device outlives the model's tensors and is dropped last.
    device: Device,
    report: LoadReport,
    /// Counts this model as a holder of its GPU's context (dropped after the
    /// device: fields drop in order), so another engine's release on the same
    /// GPU does not reset it.
    context: ContextUser,
}

impl Resident {
    /// Whether this resident model answers `spec`: the one asked for, or the
    /// same model and precision asked for on the device it fell back to.
    fn serves(&self, spec: &LoadSpec) -> bool {
        self.spec == *spec
            || (spec.device == self.actual
                && spec.model == self.spec.model
                && spec.precision == self.spec.precision)
    }
}

/// A hot swap's background load.
struct SwapInFlight {
    spec: LoadSpec,
    thread: JoinHandle<()>,
}

struct OwnerThread {
    inbox: Receiver<Inbox>,
    /// Given to the loader thread of a hot swap.
    loader_tx: SyncSender<Inbox>,
    swap: Option<SwapInFlight>,
    /// Commands that arrived while waiting for a swap, handled next, in order.
    deferred: VecDeque<Command>,
    memory_budget: Option<u64>,
    batch_window: Duration,
    /// Measured CUDA runtime overhead (context + cuBLAS), updated after each load.
    cuda_overhead: u64,
    cuda_fallback_reported: bool,
    events: mpsc::Sender<Event>,
    waker: Option<Waker>,
    clock: Arc<dyn Clock>,
    idle_timeout: Option<Duration>,
    pinned: bool,
    last_activity: Option<Instant>,
    cancel_up_to: Arc<AtomicU64>,
    cancelled: CancelledSet,
    loaded: Option<Resident>,
    /// NVML, opened on first use (never creates a CUDA context).
    meter: Option<GpuMeter>,
}

/// A job failure, reported once as an `Event::Error`.
struct JobFailure {
    kind: ErrorKind,
    message: String,
    partial: Option<Box<crate::generate::Generation>>,
    fit: Option<Box<FitRefusal>>,
}

impl OwnerThread {
    /// Sends an event. The waker runs first: a repaint it asks for lands after
    /// the event is queued anyway, and whoever reads an event knows the wake-up
    /// for it has already happened.
    fn emit(&self, ev: Event) {
        if let Some(w) = &self.waker {
            w();
        }
        let _ = self.events.send(ev);
    }

    fn set_state(&self, s: EngineState) {
        self.emit(Event::State(s));
    }

    fn idle_deadline(&self) -> Option<Instant> {
        if self.loaded.is_none() || self.pinned {
            return None;
        }
        Some(self.last_activity? + self.idle_timeout?)
    }

    fn announce_deadline(&self) {
        let now = self.clock.now();
        self.emit(Event::IdleDeadline(
            self.idle_deadline()
                .map(|d| d.saturating_duration_since(now)),
        ));
    }

    fn run(mut self) {
        self.set_state(EngineState::Unloaded);
        loop {
            if let Some(cmd) = self.deferred.pop_front() {
                if matches!(cmd, Command::Shutdown) {
                    self.release(ReleaseReason::Shutdown);
                    return;
                }
                self.handle(cmd);
                continue;
            }
            let now = self.clock.now();
            let next = match self.idle_deadline() {
                Some(deadline) if deadline <= now => {
                    self.release(ReleaseReason::IdleTimeout);
                    continue;
                }
                Some(deadline) => self.inbox.recv_timeout(deadline - now),
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(Inbox::Command(Command::Shutdown)) | Err(RecvTimeoutError::Disconnected) => {
                    self.release(ReleaseReason::Shutdown);
                    return;
                }
                Ok(Inbox::Command(cmd)) => self.handle(cmd),
                Ok(Inbox::SwapLoaded(result)) => self.finish_swap(*result),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Prepare(spec) => {
                if self.guarded(|e| e.ensure_loaded(&spec, 1)).is_some() {
                    self.touch();
                }
            }
            Command::Generate(job) => {
                let jobs = self.join_queued(job);
                let ids: Vec<RequestId> = jobs.iter().map(|j| j.id).collect();
                let result = catch_unwind(AssertUnwindSafe(|| self.run_jobs(jobs)));
                if let Err(panic) = result {
                    for id in &ids[1..] {
                        let f = JobFailure::new(
                            ErrorKind::Internal,
                            "the batch this request was decoded in failed (a bug; see the log)"
                                .into(),
                        );
                        self.fail(Some(*id), f);
                    }
                    self.caught_panic(ids.first().copied(), panic);
                }
                if self.loaded.is_some() {
                    self.set_state(EngineState::Ready);
                    self.touch();
                }
            }
            Command::MeasurePrecisions { spec, batch } => {
                if let Some(speeds) = self.guarded(|e| e.measure_precisions(&spec, batch)) {
                    self.emit(Event::PrecisionsMeasured(speeds));
                }
                if self.loaded.is_some() {
                    self.set_state(EngineState::Ready);
                    self.touch();
                }
            }
            Command::Swap(spec) => self.start_swap(spec),
            Command::InjectPanic => {
                self.guarded(|_| -> Result<(), JobFailure> {
                    panic!("injected panic (Command::InjectPanic)")
                });
            }
            Command::Release => self.release(ReleaseReason::Requested),
            Command::SetIdleTimeout(t) => {
                self.idle_timeout = t;
                self.announce_deadline();
            }
            Command::SetPinned(p) => {
                self.pinned = p;
                self.touch();
            }
            Command::Tick => {}
            Command::Ping(n) => self.emit(Event::Pong(n)),
            Command::Shutdown => {}
        }
    }

    /// Runs `work` with the engine's guard: its failure is reported once
    /// (`fail`), and a panic inside it is caught, reported and the engine
    /// reset (`caught_panic`); `None` either way.
    fn guarded<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T, JobFailure>) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(|| work(self))) {
            Ok(Ok(value)) => Some(value),
            Ok(Err(f)) => {
                self.fail(None, f);
                None
            }
            Err(panic) => {
                self.caught_panic(None, panic);
                None
            }
        }
    }

    /// Work just ended: restart the idle timer.
    fn touch(&mut self) {
        self.last_activity = Some(self.clock.now());
        self.announce_deadline();
    }
}
