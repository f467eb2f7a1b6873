//! One engine per device, created on the first request for it, and the routing
//! of each engine's events to the request that asked: a named dispatcher
//! thread per engine reads its events and hands every token, result and error
//! to that request's channel, and keeps the engine's state for `/v1/status`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::swap::{SwapOutcome, SwapState};
use crate::engine::{
    Command, DeviceChoice, Engine, EngineError, EngineOptions, EngineRemote, EngineState, Event,
    GenerateJob, LoadReport, LoadSpec, Precision, ReleaseReport, RequestId,
};

/// How long a request waits for others to join its batch when it arrives at
/// an idle engine (the server's maximum queue delay).
const SERVE_BATCH_WINDOW: Duration = Duration::from_millis(15);

/// What the status endpoint says about one engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    pub device: String,
    /// `false` until the first request for this device starts its engine.
    pub started: bool,
    pub state: EngineState,
    pub last_load: Option<LoadReport>,
    pub last_release: Option<ReleaseReport>,
    /// Seconds until the idle release, when one is scheduled.
    pub idle_release_in_s: Option<f64>,
    /// Requests accepted and not yet answered.
    pub in_flight: usize,
    /// Of those, the ones being decoded (the rest wait in the queue).
    pub running: usize,
    /// Requests answered by this engine.
    pub served: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub cancelled: AtomicU64,
    pub tokens: AtomicU64,
    pub releases: AtomicU64,
    /// Requests refused because they could not start within the queue timeout.
    pub timed_out_in_queue: AtomicU64,
    /// How fast requests are answered (for `Retry-After`).
    pub drain: super::admission::DrainRate,
}

type Routes = Arc<Mutex<HashMap<RequestId, UnboundedSender<Event>>>>;

/// A running engine and its dispatcher.
struct Running {
    remote: EngineRemote,
    routes: Routes,
    dispatcher: Option<JoinHandle<()>>,
}

/// One device's slot: its engine once started, and what it last said.
struct Slot {
    device: DeviceChoice,
    running: Mutex<Option<Running>>,
    status: Arc<Mutex<SlotState>>,
    in_flight: Arc<AtomicUsize>,
    /// Requests that have started (their first event came).
    started: Arc<AtomicUsize>,
}

impl Slot {
    fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

#[derive(Debug, Default)]
struct SlotState {
    state: Option<EngineState>,
    last_load: Option<LoadReport>,
    last_release: Option<ReleaseReport>,
    idle_deadline: Option<Instant>,
    served: u64,
}

/// Why a request could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("every engine has {0} requests waiting; try again shortly")]
    Busy(usize),
    #[error("the engine for {device} could not start: {source}")]
    Start {
        device: String,
        #[source]
        source: EngineError,
    },
    #[error("the engine for {device} stopped")]
    Stopped { device: String },
}

/// The engines of a server, one per device.
pub struct EnginePool {
    slots: Vec<Slot>,
    /// The model new requests use; a swap changes it once every engine
    /// asked has loaded it, and never when one could not.
    swaps: Arc<SwapState>,
    precision: Precision,
    idle: Option<Duration>,
    max_queue: usize,
    pub counters: Arc<Counters>,
}

/// A request in flight: its events, and on drop (the client went away or the
/// answer was sent) its route is removed and, if unanswered, it is cancelled.
pub struct Ticket {
    pub id: RequestId,
    pub device: DeviceChoice,
    events: UnboundedReceiver<Event>,
    remote: EngineRemote,
    routes: Routes,
    in_flight: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    /// Whether its first event came (it counts as running).
    started: bool,
    counters: Arc<Counters>,
    answered: bool,
    /// An event read ahead (by the queue timeout's wait), given back first.
    read_ahead: Option<Event>,
}

impl Ticket {
    /// Marks the request answered (its drop then cancels nothing).
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// The request's next event; `None` once the engine has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        let ev = match self.read_ahead.take() {
            Some(ev) => Some(ev),
            None => self.events.recv().await,
        };
        self.mark_started();
        ev
    }

    fn mark_started(&mut self) {
        if !self.started {
            self.started = true;
            self.running.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits at most `limit` for the request's first event (it started:
    /// a token, or its answer); `false` if none came by then.
    pub async fn started_within(&mut self, limit: Duration) -> bool {
        if self.read_ahead.is_some() {
            return true;
        }
        match tokio::time::timeout(limit, self.events.recv()).await {
            Ok(ev) => {
                self.read_ahead = ev;
                self.mark_started();
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.remote.cancel_request(self.id);
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.started {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl EnginePool {
    pub fn new(
        devices: &[DeviceChoice],
        model: PathBuf,
        precision: Precision,
        idle: Option<Duration>,
        max_queue: usize,
    ) -> Self {
        let slots = devices
            .iter()
            .map(|&device| Slot {
                device,
                running: Mutex::new(None),
                status: Arc::default(),
                in_flight: Arc::default(),
                started: Arc::default(),
            })
            .collect();
        Self {
            slots,
            swaps: Arc::new(SwapState::new(model)),
            precision,
            idle,
            max_queue: max_queue.max(1),
            counters: Arc::default(),
        }
    }

    /// The model every engine serves.
    pub fn model(&self) -> PathBuf {
        self.swaps.model()
    }

    /// Requests accepted and not yet answered, over every engine.
    pub fn waiting(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether some engine has room in its queue for a request now.
    pub fn can_take_work(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.in_flight.load(Ordering::Relaxed) < self.max_queue)
    }

    /// How the last swap went.
    pub fn swap_outcome(&self) -> Option<SwapOutcome> {
        self.swaps.outcome()
    }

    /// Hot swap: every started engine (the first, started now, when none
    /// runs) loads `model` beside the one it serves and switches between
    /// requests; requests in flight finish on the old one. New requests ask
    /// for `model` once every engine asked has it; one that cannot load it
    /// keeps the old one, and so does the server ([`SwapState`]).
    pub fn swap(&self, model: PathBuf) -> Vec<String> {
        let mut asked = Vec::new();
        if self.slots.iter().all(|s| !s.is_running()) {
            if let Some(first) = self.slots.first() {
                let mut running = first.running.lock().unwrap_or_else(PoisonError::into_inner);
                if running.is_none() {
                    *running = self.start(first).ok();
                }
            }
        }
        for slot in &self.slots {
            let running = slot.running.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = running.as_ref() {
                let spec = LoadSpec {
                    model: model.clone(),
                    device: slot.device,
                    precision: self.precision,
                };
                if r.remote.send(Command::Swap(spec)).is_ok() {
                    asked.push(slot.device.to_string());
                }
            }
        }
        if !asked.is_empty() {
            self.swaps.begin(model, &asked);
        }
        asked
    }

    /// Queues a generation on the least-loaded engine (starting it if need be).
    /// `make_job` gets the request id and the load spec.
    pub fn submit(
        &self,
        make_job: impl FnOnce(RequestId, LoadSpec) -> GenerateJob,
    ) -> Result<Ticket, PoolError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self
            .slots
            .iter()
            .filter(|s| s.in_flight.load(Ordering::Relaxed) < self.max_queue)
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed))
        else {
            self.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Busy(self.max_queue));
        };
        let mut running = slot.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.is_none() {
            *running = Some(self.start(slot)?);
        }
        let Some(r) = running.as_ref() else {
            return Err(PoolError::Stopped {
                device: slot.device.to_string(),
            });
        };
        let id = r.remote.next_request_id();
        let (tx, rx) = unbounded_channel();
        r.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            id,
            device: slot.device,
            events: rx,
            remote: r.remote.clone(),
            routes: Arc::clone(&r.routes),
            in_flight: Arc::clone(&slot.in_flight),
            running: Arc::clone(&slot.started),
            started: false,
            counters: Arc::clone(&self.counters),
            answered: false,
            read_ahead: None,
        };
        let spec = LoadSpec {
            model: self.model(),
            device: slot.device,
            precision: self.precision,
        };
        match r.remote.send(Command::Generate(make_job(id, spec))) {
            Ok(()) => Ok(ticket),
            Err(EngineError::QueueFull(n)) => {
                let mut t = ticket;
                t.answered();
                self.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
                Err(PoolError::Busy(n))
            }
            Err(_) => {
                let mut t = ticket;
                t.answered();
                Err(PoolError::Stopped {
                    device: slot.device.to_string(),
                })
            }
        }
    }

    fn start(&self, slot: &Slot) -> Result<Running, PoolError> {
        let engine = Engine::spawn(EngineOptions {
            idle_timeout: self.idle,
            queue_capacity: self.max_queue + 4,
            batch_window: SERVE_BATCH_WINDOW,
            ..EngineOptions::default()
        })
        .map_err(|source| PoolError::Start {
            device: slot.device.to_string(),
            source,
        })?;
        let remote = engine.remote();
        let routes: Routes = Arc::default();
        let status = Arc::clone(&slot.status);
        let counters = Arc::clone(&self.counters);
        let swaps = Arc::clone(&self.swaps);
        let device = slot.device.to_string();
        let thread_routes = Arc::clone(&routes);
        let name = format!("versifier-serve-events-{}", slot.device);
        let dispatcher = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let shared = Dispatch {
                    routes: &thread_routes,
                    status: &status,
                    counters: &counters,
                    swaps: &swaps,
                    device: &device,
                };
                dispatch(engine, &shared);
            })
            .map_err(|e| PoolError::Start {
                device: slot.device.to_string(),
                source: EngineError::Spawn(e),
            })?;
        Ok(Running {
            remote,
            routes,
            dispatcher: Some(dispatcher),
        })
    }

    /// Releases one device's engine (or all with `None`); says which it asked.
    pub fn release(&self, device: Option<DeviceChoice>) -> Vec<String> {
        let mut asked = Vec::new();
        for slot in self
            .slots
            .iter()
            .filter(|s| device.is_none_or(|d| d == s.device))
        {
            let running = slot.running.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = running.as_ref() {
                if r.remote.send(Command::Release).is_ok() {
                    asked.push(slot.device.to_string());
                }
            }
        }
        asked
    }

    /// Whether `device` is one of the pool's.
    pub fn has_device(&self, device: DeviceChoice) -> bool {
        self.slots.iter().any(|s| s.device == device)
    }

    /// Every engine's status.
    pub fn status(&self) -> Vec<EngineStatus> {
        self.slots
            .iter()
            .map(|slot| {
                let started = slot
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some();
                let s = slot.status.lock().unwrap_or_else(PoisonError::into_inner);
                EngineStatus {
                    device: slot.device.to_string(),
                    started,
                    state: s.state.unwrap_or(EngineState::Unloaded),
                    last_load: s.last_load.clone(),
                    last_release: s.last_release.clone(),
                    idle_release_in_s: s
                        .idle_deadline
                        .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64()),
                    in_flight: slot.in_flight.load(Ordering::Relaxed),
                    running: slot.started.load(Ordering::Relaxed),
                    served: s.served,
                }
            })
            .collect()
    }
}

impl Drop for EnginePool {
    fn drop(&mut self) {
        for slot in &self.slots {
            let taken = slot
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(mut r) = taken {
                // The engine releases everything and stops; its dispatcher
                // then sees the channel close and ends.
                let _ = r.remote.send(Command::Shutdown);
                if let Some(handle) = r.dispatcher.take() {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// What one engine's dispatcher updates.
struct Dispatch<'a> {
    routes: &'a Routes,
    status: &'a Mutex<SlotState>,
    counters: &'a Counters,
    swaps: &'a SwapState,
    /// The engine's device, as the swap names it.
    device: &'a str,
}

/// Reads one engine's events until it stops, routing each to its request.
fn dispatch(engine: Engine, d: &Dispatch) {
    let (routes, status, counters) = (d.routes, d.status, d.counters);
    while let Some(event) = engine.recv() {
        let route = |id: RequestId| {
            routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
                .cloned()
        };
        let mut st = status.lock().unwrap_or_else(PoisonError::into_inner);
        match &event {
            Event::State(s) => st.state = Some(*s),
            Event::Loaded(r) => {
                d.swaps.loaded(d.device, &r.spec.model);
                st.last_load = Some(r.clone());
            }
            Event::Released(r) => {
                st.last_release = Some(r.clone());
                // The report comes once everything is freed, just before the
                // engine's `State(Unloaded)`: say so now, under the same lock
                // as the count, so a status read after the count has moved
                // never shows "releasing" beside the release it reports.
                st.state = Some(EngineState::Unloaded);
                counters.releases.fetch_add(1, Ordering::Relaxed);
            }
            Event::IdleDeadline(d) => st.idle_deadline = d.map(|d| Instant::now() + d),
            Event::Token { request, .. } => {
                counters.tokens.fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = route(*request) {
                    let _ = tx.send(event.clone());
                }
            }
            Event::Done { request, .. } => {
                st.served += 1;
                counters.drain.record(Instant::now());
                if let Some(tx) = route(*request) {
                    let _ = tx.send(event.clone());
                }
            }
            // A failed swap: the engine kept its model; no request hears it.
            Event::Error {
                request: None,
                message,
                ..
            } if d.swaps.failed(d.device, message) => {}
            Event::Error { request, .. } => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if request.is_some() {
                    counters.drain.record(Instant::now());
                }
                let targets: Vec<UnboundedSender<Event>> = match request {
                    Some(id) => route(*id).into_iter().collect(),
                    // An error of no request (a failed preload): every waiter hears it.
                    None => routes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .values()
                        .cloned()
                        .collect(),
                };
                for tx in targets {
                    let _ = tx.send(event.clone());
                }
            }
            Event::Notice(_) | Event::Pong(_) | Event::PrecisionsMeasured(_) => {}
        }
    }
}
