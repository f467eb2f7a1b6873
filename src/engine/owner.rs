//! The owner thread: the one place the model, its device, its caches and every
//! candle tensor live. Clients hold an [`Engine`] handle and talk to it through
//! [`Command`]s and [`Event`]s only, so nothing else can hold a CUDA object when
//! the engine releases the device and resets the CUDA context.

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

/// Default idle timeout before the model is unloaded.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default number of commands that may wait in the queue.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16;

/// Where the engine reads the time, so tests can move it by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (for idle-timer tests; send
/// [`Command::Tick`] after moving it).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }
}

/// Called after events are sent, to wake the UI (e.g. `ctx.request_repaint_after(10ms)`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// How to start an engine.
pub struct EngineOptions {
    pub idle_timeout: Option<Duration>,
    pub queue_capacity: usize,
    pub clock: Arc<dyn Clock>,
    pub waker: Option<Waker>,
    /// Most bytes a model may need (weights + KV cache + runtime); `None` means
    /// what the device has free. Loads above it are refused with options.
    pub memory_budget: Option<u64>,
    /// How long a Generate job that finds no other queued behind it waits for
    /// compatible ones to join its batch (a server's maximum queue delay;
    /// zero for the window and the command line, which send one at a time).
    pub batch_window: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            memory_budget: None,
            batch_window: Duration::ZERO,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            clock: Arc::new(SystemClock),
            waker: None,
        }
    }
}

/// Errors of the handle itself (the engine reports everything else as events).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine is busy: {0} commands are already waiting; try again when the current work ends")]
    QueueFull(usize),
    #[error("the engine thread has stopped")]
    Stopped,
    #[error("could not start the engine thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// What arrives on the owner thread: client commands, and the result of a hot
/// swap's background load.
// A command is moved once, through a bounded channel; boxing each would
// allocate per command for nothing.
#[allow(clippy::large_enum_variant)]
enum Inbox {
    Command(Command),
    SwapLoaded(Box<Result<Resident, JobFailure>>),
}

/// Request ids cancelled one by one (shared by the remote and the owner).
type CancelledSet = Arc<std::sync::Mutex<std::collections::HashSet<RequestId>>>;

/// A cloneable way to send commands and cancel work, usable from any thread
/// (the UI, a callback, a test).
#[derive(Clone)]
pub struct EngineRemote {
    commands: SyncSender<Inbox>,
    /// Generations with an id at or below this are cancelled.
    cancel_up_to: Arc<AtomicU64>,
    /// Single requests cancelled by id (a server's client that went away).
    cancelled: CancelledSet,
    next_id: Arc<AtomicU64>,
    capacity: usize,
}

impl EngineRemote {
    /// A fresh request id for a [`GenerateJob`].
    pub fn next_request_id(&self) -> RequestId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a command without blocking; a full queue is an error, not a stall.
    /// A job for a 詞 tune on the bundled model is given to the bundled 詞
    /// model here (`store::model_for_form`), so every caller's job names the
    /// model that will write it.
    pub fn send(&self, cmd: Command) -> Result<(), EngineError> {
        let cmd = match cmd {
            Command::Generate(mut job) => {
                job.spec.model = crate::store::model_for_form(&job.spec.model, &job.form);
                Command::Generate(job)
            }
            other => other,
        };
        match self.commands.try_send(Inbox::Command(cmd)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull(self.capacity)),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    /// Stops every generation requested so far (running or queued), between tokens.
    pub fn cancel(&self) {
        let last = self.next_id.load(Ordering::Relaxed).saturating_sub(1);
        self.cancel_up_to.fetch_max(last, Ordering::Relaxed);
    }

    /// Stops one request (running or queued) between tokens; the others go on.
    pub fn cancel_request(&self, id: RequestId) {
        if let Ok(mut set) = self.cancelled.lock() {
            set.insert(id);
        }
    }

    /// Cancels running work, then releases everything.
    pub fn release(&self) -> Result<(), EngineError> {
        self.cancel();
        self.send(Command::Release)
    }
}

/// The client side of the engine: send commands, read events. Dropping it shuts
/// the thread down (releasing everything) and joins it.
pub struct Engine {
    remote: EngineRemote,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    pub fn spawn(opts: EngineOptions) -> Result<Self, EngineError> {
        let capacity = opts.queue_capacity.max(1);
        let (cmd_tx, cmd_rx) = mpsc::sync_channel(capacity);
        let (ev_tx, ev_rx) = mpsc::channel();
        let cancel_up_to = Arc::new(AtomicU64::new(0));
        let cancelled = CancelledSet::default();
        let owner = OwnerThread {
            cancelled: Arc::clone(&cancelled),
            inbox: cmd_rx,
            loader_tx: cmd_tx.clone(),
            swap: None,
            deferred: VecDeque::new(),
            memory_budget: opts.memory_budget,
            batch_window: opts.batch_window,
            cuda_overhead: crate::device::fit::DEFAULT_CUDA_OVERHEAD_BYTES,
            cuda_fallback_reported: false,
            events: ev_tx,
            waker: opts.waker,
            clock: opts.clock,
            idle_timeout: opts.idle_timeout,
            pinned: false,
            last_activity: None,
            cancel_up_to: Arc::clone(&cancel_up_to),
            loaded: None,
            meter: None,
        };
        let thread = std::thread::Builder::new()
            .name("versifier-engine".into())
            .spawn(move || owner.run())?;
        let remote = EngineRemote {
            commands: cmd_tx,
            cancel_up_to,
            cancelled,
            next_id: Arc::new(AtomicU64::new(1)),
            capacity,
        };
        Ok(Self {
            remote,
            events: ev_rx,
            thread: Some(thread),
        })
    }

    /// A handle for sending and cancelling from elsewhere.
    pub fn remote(&self) -> EngineRemote {
        self.remote.clone()
    }

    pub fn next_request_id(&self) -> RequestId {
        self.remote.next_request_id()
    }

    pub fn send(&self, cmd: Command) -> Result<(), EngineError> {
        self.remote.send(cmd)
    }

    pub fn cancel(&self) {
        self.remote.cancel()
    }

    pub fn release(&self) -> Result<(), EngineError> {
        self.remote.release()
    }

    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits for the next event; `None` once the engine thread has gone.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.remote.cancel();
        // A blocking send: the thread drains the queue, so this returns once there is room.
        let _ = self.remote.commands.send(Inbox::Command(Command::Shutdown));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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

/// Whether `next` can be decoded in one batch with `first`.
fn joinable(first: &GenerateJob, next: &GenerateJob) -> bool {
    first.spec == next.spec
        && first.form == next.form
        && first.verse == next.verse
        // Keywords are placed after the prompt: one plan, one prompt.
        && (first.verse.keywords.is_empty() || first.prompt == next.prompt)
        && first.max_new_tokens == next.max_new_tokens
        && SamplingParams {
            seed: first.sampling.seed,
            ..next.sampling.clone()
        } == first.sampling
}

/// A job's request as token ids and settings, checked against the model.
fn prepare_job(model: &LoadedModel, job: &GenerateJob) -> Result<GenerateRequest, JobFailure> {
    let settings = RequestSettings {
        prompt: &job.prompt,
        form: &job.form,
        variations: job.variations,
        max_new_tokens: job.max_new_tokens,
        sampling: &job.sampling,
        verse: &job.verse,
    };
    let req = prepare_request(model, &settings).map_err(|e| {
        let kind = match e {
            PrepareError::BadRequest(_) => ErrorKind::BadRequest,
            PrepareError::NoTokenizer { .. } => ErrorKind::BadModel,
        };
        JobFailure::new(kind, e.to_string())
    })?;
    validate_request(&model.model, &req)
        .map_err(|e| JobFailure::new(ErrorKind::BadRequest, e.to_string()))?;
    Ok(req)
}

/// The rows of a prepared request, as rows of a joined batch.
fn row_starts(r: &GenerateRequest) -> impl Iterator<Item = RowStart> + '_ {
    (0..r.variations).map(move |variation| RowStart {
        prompt_ids: r.prompt_ids.clone(),
        seed: r.sampling.seed,
        variation,
        start: r
            .constraint
            .as_ref()
            .map(|c| c.1.clone())
            .unwrap_or_default(),
    })
}

/// One request of a decode: its prompt, and its rows as they end.
struct JobInDecode {
    id: RequestId,
    prompt_ids: Vec<u32>,
    rows: Vec<Option<EndedRow>>,
    answered: bool,
}

/// What a row left when it ended.
struct EndedRow {
    variation: Variation,
    timings: GenerationTimings,
    batch_rows: usize,
    kv_cache_bytes: usize,
    step_runner: Option<crate::model::StepRunner>,
    step_kernels: Option<crate::model::StepKernels>,
    device_draws: bool,
}

impl JobInDecode {
    /// The job's answer without its variations, its prompt cut to the
    /// `keep` tokens the decode kept.
    fn generation_base(&self, keep: usize, timings: GenerationTimings) -> Generation {
        let cut = self.prompt_ids.len().saturating_sub(keep);
        Generation {
            prompt_ids: self.prompt_ids[cut..].to_vec(),
            truncated_prompt_tokens: cut,
            variations: Vec::new(),
            timings,
            kv_cache_bytes: 0,
            ids_without_text: 0,
            batch_rows: 0,
            step_runner: None,
            step_kernels: None,
            device_draws: false,
        }
    }

    /// The job's answer once every row has ended (`None` before): its
    /// variations in order, the slowest row's timings, the largest batch and
    /// cache it was part of, and its ids past the tokenizer's `vocab`.
    fn generation(&mut self, keep: usize, vocab: Option<usize>) -> Option<Generation> {
        if self.rows.iter().any(Option::is_none) {
            return None;
        }
        let rows: Vec<EndedRow> = self.rows.iter_mut().filter_map(Option::take).collect();
        let slowest = rows
            .iter()
            .max_by(|a, b| {
                let end = |r: &EndedRow| r.timings.first_token_ms + r.timings.decode_ms;
                end(a).total_cmp(&end(b))
            })
            .map(|r| r.timings.clone())
            .unwrap_or_default();
        let mut g = self.generation_base(keep, slowest);
        g.batch_rows = rows.iter().map(|r| r.batch_rows).max().unwrap_or(0);
        g.kv_cache_bytes = rows.iter().map(|r| r.kv_cache_bytes).max().unwrap_or(0);
        g.step_runner = rows.iter().find_map(|r| r.step_runner.clone());
        g.step_kernels = rows.iter().find_map(|r| r.step_kernels);
        g.device_draws = rows.iter().any(|r| r.device_draws);
        g.variations = rows.into_iter().map(|r| r.variation).collect();
        if let Some(vocab) = vocab {
            g.ids_without_text = g
                .variations
                .iter()
                .flat_map(|v| &v.ids)
                .filter(|&&id| id as usize >= vocab)
                .count();
        }
        Some(g)
    }
}

/// The engine's side of a decode (a [`RowFeed`]): whose each row is, the
/// jobs that join while it runs (taken from the head of the queue, so none
/// overtakes another command), and each job's `Done` as its rows end.
struct JoinedRequests<'e> {
    engine: &'e OwnerThread,
    model: &'e LoadedModel,
    /// The first job: others join when [`joinable`] with it.
    template: GenerateJob,
    /// Prompt tokens kept (the same for every joinable job).
    keep: usize,
    /// Per row (admission order): its job and variation number.
    owners: Vec<(RequestId, usize)>,
    jobs: Vec<JobInDecode>,
    /// Rows of `MAX_VARIATIONS` the fit check did not allow.
    spare_rows: usize,
    deferred: &'e mut VecDeque<Command>,
    /// Swaps that finished loading meanwhile, applied after the decode.
    late_swaps: &'e mut Vec<Result<Resident, JobFailure>>,
    /// The next job in line, prepared, waiting for room or columns.
    held: Option<(GenerateJob, GenerateRequest)>,
}

impl JoinedRequests<'_> {
    fn register(&mut self, job: GenerateJob, req: GenerateRequest) {
        self.owners.extend((0..req.variations).map(|v| (job.id, v)));
        self.jobs.push(JobInDecode {
            id: job.id,
            prompt_ids: req.prompt_ids,
            rows: (0..req.variations).map(|_| None).collect(),
            answered: false,
        });
    }

    fn is_cancelled(&self, id: RequestId) -> bool {
        self.engine.cancel_up_to.load(Ordering::Relaxed) >= id
            || self
                .engine
                .cancelled
                .lock()
                .is_ok_and(|set| set.contains(&id))
    }
}

impl RowFeed for JoinedRequests<'_> {
    fn admit(&mut self, free: usize, max_prompt_tokens: usize) -> Vec<RowStart> {
        // A swap in flight may be about to change the model: nobody joins.
        if self.engine.swap.is_some() {
            return Vec::new();
        }
        while let Ok(msg) = self.engine.inbox.try_recv() {
            match msg {
                Inbox::Command(cmd) => self.deferred.push_back(cmd),
                Inbox::SwapLoaded(result) => self.late_swaps.push(*result),
            }
        }
        let mut free = free.saturating_sub(self.spare_rows);
        let mut rows = Vec::new();
        loop {
            let (job, req) = match self.held.take() {
                Some(held) => held,
                None => {
                    let next_joins = matches!(self.deferred.front(),
                        Some(Command::Generate(next)) if joinable(&self.template, next));
                    let Some(Command::Generate(job)) =
                        next_joins.then(|| self.deferred.pop_front()).flatten()
                    else {
                        break;
                    };
                    match prepare_job(self.model, &job) {
                        Ok(req) => (job, req),
                        Err(f) => {
                            // Answered now, not when the decode ends: a
                            // bad request is the client's to fix.
                            if let Ok(mut set) = self.engine.cancelled.lock() {
                                set.remove(&job.id);
                            }
                            self.engine.emit(Event::Error {
                                request: Some(job.id),
                                kind: f.kind,
                                message: f.message,
                                partial: None,
                                fit: None,
                            });
                            continue;
                        }
                    }
                }
            };
            if req.variations > free || req.prompt_ids.len().min(self.keep) > max_prompt_tokens {
                // No room yet, or longer than the decode's columns so far:
                // held (prepared once), it joins a few steps later or starts
                // the next decode, still first in line.
                self.held = Some((job, req));
                break;
            }
            tracing::debug!(
                request = job.id,
                rows = req.variations,
                "joining a running decode"
            );
            free -= req.variations;
            rows.extend(row_starts(&req));
            self.register(job, req);
        }
        rows
    }

    fn cancelled(&self, row: usize) -> bool {
        self.owners
            .get(row)
            .is_some_and(|(id, _)| self.is_cancelled(*id))
    }

    fn token(&mut self, ev: &TokenEvent) {
        if ev.text.is_empty() {
            return;
        }
        if let Some(&(request, variation)) = self.owners.get(ev.variation) {
            if let Some(w) = &self.engine.waker {
                w();
            }
            let _ = self.engine.events.send(Event::Token {
                request,
                variation,
                text: ev.text.clone(),
            });
        }
    }

    fn finished(&mut self, row: FinishedRow<'_>) {
        let Some(&(id, v)) = self.owners.get(row.row) else {
            return;
        };
        let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) else {
            return;
        };
        if let Some(slot) = job.rows.get_mut(v) {
            *slot = Some(EndedRow {
                variation: row.variation.clone(),
                timings: row.timings,
                batch_rows: row.batch_rows,
                kv_cache_bytes: row.kv_cache_bytes,
                step_runner: row.step_runner,
                step_kernels: row.step_kernels,
                device_draws: row.device_draws,
            });
        }
        let vocab = self.model.tokenizer.as_ref().map(|t| t.vocab_size());
        if let Some(generation) = job.generation(self.keep, vocab) {
            job.answered = true;
            if let Ok(mut set) = self.engine.cancelled.lock() {
                set.remove(&id);
            }
            self.engine.emit(Event::Done {
                request: id,
                generation,
            });
        }
    }
}

impl JobFailure {
    /// The same failure, reported to another request of a joined batch (the
    /// partial output belongs to the first).
    fn for_another(&self) -> Self {
        Self {
            kind: self.kind,
            message: self.message.clone(),
            partial: None,
            fit: self.fit.clone(),
        }
    }

    fn new(kind: ErrorKind, message: String) -> Self {
        Self {
            kind,
            message: crate::without_backtrace(&message),
            partial: None,
            fit: None,
        }
    }
}

/// glibc keeps freed memory in its arenas (and raises its mmap threshold after
/// the first big free), so dropped weights would stay resident; trim them.
fn return_freed_heap_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
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
                let result = catch_unwind(AssertUnwindSafe(|| self.ensure_loaded(&spec, 1)));
                match result {
                    Ok(Ok(())) => self.touch(),
                    Ok(Err(f)) => self.fail(None, f),
                    Err(panic) => self.caught_panic(None, panic),
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
                let result =
                    catch_unwind(AssertUnwindSafe(|| self.measure_precisions(&spec, batch)));
                match result {
                    Ok(Ok(speeds)) => self.emit(Event::PrecisionsMeasured(speeds)),
                    Ok(Err(f)) => self.fail(None, f),
                    Err(panic) => self.caught_panic(None, panic),
                }
                if self.loaded.is_some() {
                    self.set_state(EngineState::Ready);
                    self.touch();
                }
            }
            Command::Swap(spec) => self.start_swap(spec),
            Command::InjectPanic => {
                let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), JobFailure> {
                    panic!("injected panic (Command::InjectPanic)")
                }));
                if let Err(panic) = result {
                    self.caught_panic(None, panic);
                }
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

    /// Work just ended: restart the idle timer.
    fn touch(&mut self) {
        self.last_activity = Some(self.clock.now());
        self.announce_deadline();
    }

    fn fail(&mut self, request: Option<RequestId>, f: JobFailure) {
        let oom = f.kind == ErrorKind::OutOfMemory;
        self.emit(Event::Error {
            request,
            kind: f.kind,
            message: f.message,
            partial: f.partial.map(|p| *p),
            fit: f.fit.map(|f| *f),
        });
        if oom {
            self.release(ReleaseReason::AfterError);
        } else if self.loaded.is_none() {
            self.set_state(EngineState::Unloaded);
        }
    }

    fn caught_panic(&mut self, request: Option<RequestId>, panic: Box<dyn std::any::Any + Send>) {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!("engine caught a panic: {what}");
        self.emit(Event::Error {
            request,
            kind: ErrorKind::Internal,
            message: format!("internal error (the engine was reset): {what}"),
            partial: None,
            fit: None,
        });
        self.release(ReleaseReason::AfterError);
        self.set_state(EngineState::Unloaded);
    }

    fn gpu_process_bytes(&mut self, device: DeviceChoice) -> Option<u64> {
        let DeviceChoice::Cuda(ordinal) = device else {
            return None;
        };
        let meter = self.meter.get_or_insert_with(GpuMeter::open);
        meter.read(GpuMeter::nvml_index(ordinal))?.process_bytes
    }

    /// Memory free for a model on `device` now (NVML for GPUs, MemAvailable for
    /// RAM), capped by the configured budget.
    fn free_bytes(&mut self, device: DeviceChoice) -> Option<u64> {
        let free = match device {
            DeviceChoice::Cpu => available_ram(),
            DeviceChoice::Cuda(o) => {
                let meter = self.meter.get_or_insert_with(GpuMeter::open);
                meter.read(GpuMeter::nvml_index(o)).map(|g| g.free_bytes)
            }
        };
        match (free, self.memory_budget) {
            (Some(f), Some(b)) => Some(f.min(b)),
            (f, b) => f.or(b),
        }
    }

    /// An out-of-memory at `stage`, reported as such with the fit check redone
    /// against the memory free now (so the options are what fits now).
    fn out_of_memory_failure(
        &mut self,
        stage: MemoryStage,
        spec: &LoadSpec,
        batch: usize,
        cause: &str,
    ) -> JobFailure {
        let cause = crate::without_backtrace(cause);
        let fit = ModelFiles::locate(&spec.model)
            .ok()
            .and_then(|files| Gpt2Config::from_file(&files.config).ok())
            .map(|cfg| {
                let free = self.free_bytes(spec.device).unwrap_or(0);
                self.fit_on(&cfg, spec, spec.device, batch, free)
            });
        let message = match &fit {
            Some(fit) => out_of_memory_report(stage, &spec.model, fit, &cause),
            None => format!(
                "out of memory while {stage} {}: {cause}",
                spec.model.display()
            ),
        };
        JobFailure {
            kind: ErrorKind::OutOfMemory,
            message,
            partial: None,
            fit: fit.and_then(Result::err).map(Box::new),
        }
    }

    /// The fit check for `spec` on `device` with `free` bytes: this machine's
    /// learned CUDA overhead, and the CPU offered when there is RAM for it.
    fn fit_on(
        &mut self,
        cfg: &Gpt2Config,
        spec: &LoadSpec,
        device: DeviceChoice,
        batch: usize,
        free: u64,
    ) -> Result<crate::device::fit::FitNeed, FitRefusal> {
        let (overhead, cpu_free) = if device == DeviceChoice::Cpu {
            (0, None)
        } else {
            (self.cuda_overhead, self.free_bytes(DeviceChoice::Cpu))
        };
        check_fit(
            cfg,
            device,
            spec.precision,
            batch,
            cfg.n_positions,
            overhead,
            free,
            cpu_free,
        )
    }

    /// Refuses a load that would not fit, with the numbers and what would.
    fn check_fit(
        &mut self,
        spec: &LoadSpec,
        device: DeviceChoice,
        batch: usize,
    ) -> Result<(), JobFailure> {
        let files = ModelFiles::locate(&spec.model)
            .map_err(|e| JobFailure::new(ErrorKind::BadModel, e.to_string()))?;
        let cfg = Gpt2Config::from_file(&files.config)
            .map_err(|e| JobFailure::new(ErrorKind::BadModel, e.to_string()))?;
        let Some(free) = self.free_bytes(device) else {
            return Ok(());
        };
        match self.fit_on(&cfg, spec, device, batch, free) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(JobFailure {
                kind: ErrorKind::DoesNotFit,
                message: format!("{}: {refusal}", spec.model.display()),
                partial: None,
                fit: Some(Box::new(refusal)),
            }),
        }
    }

    /// Opens the device for `spec`, falling back to the CPU (said once) when CUDA
    /// is not available at all.
    fn open_for(&mut self, spec: &LoadSpec, batch: usize) -> Result<OpenedDevice, JobFailure> {
        // Counted before it opens, so no other engine's release resets the
        // context under it.
        let context = ContextUser::acquire(spec.device);
        match open_device(spec.device) {
            Ok(device) => Ok(OpenedDevice {
                device,
                actual: spec.device,
                precision: spec.precision,
                context,
            }),
            Err(e) if spec.device != DeviceChoice::Cpu && !is_out_of_memory(&e.to_string()) => {
                if !self.cuda_fallback_reported {
                    self.cuda_fallback_reported = true;
                    self.emit(Event::Notice(format!(
                        "{} is not available: {e}; running on the CPU instead",
                        spec.device
                    )));
                }
                Ok(OpenedDevice {
                    device: Device::Cpu,
                    actual: DeviceChoice::Cpu,
                    precision: spec.precision,
                    context: ContextUser::acquire(DeviceChoice::Cpu),
                })
            }
            Err(e) if is_out_of_memory(&e.to_string()) => Err(self.out_of_memory_failure(
                MemoryStage::OpenDevice,
                spec,
                batch,
                &e.to_string(),
            )),
            Err(e) => Err(JobFailure::new(ErrorKind::Device, e.to_string())),
        }
    }

    /// Loads `spec` onto an opened device (used by both direct loads and swaps).
    fn load_resident(
        spec: &LoadSpec,
        opened: OpenedDevice,
        progress: Option<(mpsc::Sender<Event>, Option<Waker>)>,
    ) -> Result<Resident, JobFailure> {
        let OpenedDevice {
            device,
            actual,
            precision,
            context,
        } = opened;
        let started = Instant::now();
        let rss_before = process_memory().map(|m| m.rss_bytes);
        let progress = progress.map(|(events, waker)| -> LoadProgress {
            // Report in 10% steps so a load is a handful of events, not one per tensor.
            let last = std::sync::atomic::AtomicU32::new(0);
            Box::new(move |p: f32| {
                let step = (p * 10.0).floor() as u32;
                if step > last.swap(step, Ordering::Relaxed) {
                    if let Some(w) = &waker {
                        w();
                    }
                    let _ = events.send(Event::State(EngineState::Loading {
                        progress: step as f32 / 10.0,
                    }));
                }
            })
        });
        match load_model_with_progress(&spec.model, &device, precision.dtype(), progress) {
            Ok(model) => {
                let params = model.config.param_count();
                let report = LoadReport {
                    spec: spec.clone(),
                    device: actual,
                    load_ms: started.elapsed().as_secs_f64() * 1000.0,
                    params,
                    weights_bytes: params * precision.bytes(),
                    gpu_before_bytes: None,
                    gpu_after_bytes: None,
                    rss_before_bytes: rss_before,
                    rss_after_bytes: process_memory().map(|m| m.rss_bytes),
                };
                Ok(Resident {
                    spec: spec.clone(),
                    actual,
                    model,
                    device,
                    report,
                    context,
                })
            }
            Err(e) => {
                let message = e.to_string();
                let kind = if is_out_of_memory(&message) {
                    ErrorKind::OutOfMemory
                } else {
                    ErrorKind::BadModel
                };
                Err(JobFailure::new(kind, message))
            }
        }
    }

    /// Makes `spec` the resident model, loading it (after a fit check for `batch`
    /// sequences) unless it already is. One load at a time, ever: a swap in
    /// flight is finished first.
    fn ensure_loaded(&mut self, spec: &LoadSpec, batch: usize) -> Result<(), JobFailure> {
        // The current model keeps serving while a swap loads beside it.
        if self.loaded.as_ref().is_some_and(|r| r.serves(spec)) {
            return Ok(());
        }
        self.wait_for_swap();
        if self.loaded.as_ref().is_some_and(|r| r.serves(spec)) {
            return Ok(());
        }
        if self.loaded.is_some() {
            self.release(ReleaseReason::ModelChange);
        }
        self.set_state(EngineState::Loading { progress: 0.0 });
        let fit_device = if spec.device != DeviceChoice::Cpu
            && *crate::device::cuda_runtime() != crate::device::CudaRuntime::Ready
        {
            DeviceChoice::Cpu
        } else {
            spec.device
        };
        if let Err(f) = self.check_fit(spec, fit_device, batch) {
            self.set_state(EngineState::Unloaded);
            return Err(f);
        }
        let gpu_before = self.gpu_process_bytes(spec.device);
        let opened = self.open_for(spec, batch)?;
        let actual = opened.actual;
        let mut resident = match Self::load_resident(
            spec,
            opened,
            Some((self.events.clone(), self.waker.clone())),
        ) {
            Ok(r) => r,
            Err(f) => {
                // Nothing of the failed load may keep the context alive.
                self.reset_cuda_context(actual);
                if f.kind == ErrorKind::OutOfMemory {
                    return Err(self.out_of_memory_failure(
                        MemoryStage::Load,
                        spec,
                        batch,
                        &f.message,
                    ));
                }
                return Err(f);
            }
        };
        resident.report.gpu_before_bytes = gpu_before;
        resident.report.gpu_after_bytes = self.gpu_process_bytes(actual);
        if let (Some(after), Some(before)) = (resident.report.gpu_after_bytes, gpu_before) {
            // Learn this machine's runtime overhead for the next fit check.
            let weights = resident.report.weights_bytes as u64;
            self.cuda_overhead = after.saturating_sub(before).saturating_sub(weights).max(1);
        }
        self.emit(Event::Loaded(resident.report.clone()));
        self.loaded = Some(resident);
        self.set_state(EngineState::Ready);
        Ok(())
    }

    /// Starts a hot swap: the new model loads on a loader thread beside the
    /// current one, which keeps serving.
    fn start_swap(&mut self, spec: LoadSpec) {
        self.wait_for_swap();
        let Some(current) = self.loaded.as_ref() else {
            // Nothing to keep serving: a plain load.
            if let Err(f) = self.ensure_loaded(&spec, 1) {
                self.fail(None, f);
            } else {
                self.touch();
            }
            return;
        };
        if current.spec == spec {
            return;
        }
        // Both at once must fit, or the current one goes first.
        let same_gpu = current.actual == spec.device && spec.device != DeviceChoice::Cpu;
        let current_device = current.device.clone();
        let current_actual = current.actual;
        if same_gpu && self.check_fit(&spec, spec.device, 1).is_err() {
            self.emit(Event::Notice(format!(
                "{} does not fit beside the current model; releasing the current one first",
                spec.model.display()
            )));
            if let Err(f) = self.ensure_loaded(&spec, 1) {
                self.fail(None, f);
            } else {
                self.touch();
            }
            return;
        }
        let opened = if same_gpu {
            Ok(OpenedDevice {
                device: current_device,
                actual: current_actual,
                precision: spec.precision,
                context: ContextUser::acquire(current_actual),
            })
        } else {
            self.open_for(&spec, 1)
        };
        let opened = match opened {
            Ok(d) => d,
            Err(f) => return self.fail(None, f),
        };
        let tx = self.loader_tx.clone();
        let load_spec = spec.clone();
        let spawned = std::thread::Builder::new()
            .name("versifier-loader".into())
            .spawn(move || {
                // Loaded, and writes a token, before it serves anyone.
                let result = catch_unwind(AssertUnwindSafe(|| {
                    Self::load_resident(&load_spec, opened, None).and_then(|r| {
                        super::first_token::write_first_token(&r.model)
                            .map(|()| r)
                            .map_err(|m| JobFailure::new(ErrorKind::BadModel, m))
                    })
                }))
                .unwrap_or_else(|_| {
                    Err(JobFailure::new(
                        ErrorKind::Internal,
                        "the loader thread panicked".into(),
                    ))
                });
                let _ = tx.send(Inbox::SwapLoaded(Box::new(result)));
            });
        match spawned {
            Ok(thread) => self.swap = Some(SwapInFlight { spec, thread }),
            Err(e) => self.fail(
                None,
                JobFailure::new(
                    ErrorKind::Internal,
                    format!("could not start the loader thread: {e}"),
                ),
            ),
        }
    }

    /// Blocks until a swap in flight has delivered its result, and applies it.
    fn wait_for_swap(&mut self) {
        while self.swap.is_some() {
            match self.inbox.recv() {
                Ok(Inbox::SwapLoaded(result)) => self.finish_swap(*result),
                // Commands that arrive meanwhile are handled after the swap, in order.
                Ok(Inbox::Command(cmd)) => self.deferred.push_back(cmd),
                Err(_) => {
                    if let Some(s) = self.swap.take() {
                        let _ = s.thread.join();
                    }
                }
            }
        }
    }

    /// Switches to a freshly loaded model, or keeps the old one when the load failed.
    fn finish_swap(&mut self, result: Result<Resident, JobFailure>) {
        let Some(swap) = self.swap.take() else { return };
        let _ = swap.thread.join();
        match result {
            Ok(new) => {
                let old = self.loaded.replace(new);
                let old_device = old.as_ref().map(|o| o.actual);
                drop(old);
                // An old model on another GPU leaves that context behind: reset it.
                if let Some(d) = old_device {
                    if self.loaded.as_ref().is_some_and(|n| n.actual != d) {
                        self.reset_cuda_context(d);
                    }
                }
                if let Some(r) = self.loaded.as_ref() {
                    self.emit(Event::Loaded(r.report.clone()));
                }
                self.set_state(EngineState::Ready);
                self.touch();
            }
            Err(f) => {
                let message = format!(
                    "could not switch to {}: {}; still using the current model",
                    swap.spec.model.display(),
                    f.message
                );
                self.emit(Event::Error {
                    request: None,
                    kind: f.kind,
                    message,
                    partial: None,
                    fit: f.fit.map(|f| *f),
                });
            }
        }
    }

    /// Takes the Generate jobs queued right behind `first` that can share its
    /// decode (same model, form, rules, length and sampling but the seed), up
    /// to the batch cap. Only a contiguous run at the head of the queue joins,
    /// so no job ever overtakes another command.
    fn join_queued(&mut self, first: GenerateJob) -> Vec<GenerateJob> {
        if self.swap.is_none() {
            while let Ok(msg) = self.inbox.try_recv() {
                match msg {
                    Inbox::Command(cmd) => self.deferred.push_back(cmd),
                    // No swap in flight: nothing can be loading beside us.
                    Inbox::SwapLoaded(result) => self.finish_swap(*result),
                }
            }
        }
        if self.swap.is_none() && !self.batch_window.is_zero() {
            self.wait_for_joiners(&first);
        }
        let mut rows = first.variations;
        let mut jobs = vec![first];
        while let Some(Command::Generate(next)) = self.deferred.front() {
            if !joinable(&jobs[0], next) || rows + next.variations > MAX_VARIATIONS {
                break;
            }
            rows += next.variations;
            if let Some(Command::Generate(next)) = self.deferred.pop_front() {
                jobs.push(next);
            }
        }
        jobs
    }

    /// The batch window: until the queue behind `first` holds a full batch of
    /// compatible rows, or something else, wait up to `batch_window` for more
    /// (requests of clients that were answered a moment ago, or of a burst
    /// still arriving).
    fn wait_for_joiners(&mut self, first: &GenerateJob) {
        let compatible_rows = |deferred: &VecDeque<Command>| {
            let mut rows = first.variations;
            for cmd in deferred {
                match cmd {
                    Command::Generate(next) if joinable(first, next) => rows += next.variations,
                    _ => return (rows, true),
                }
            }
            (rows, false)
        };
        let deadline = Instant::now() + self.batch_window;
        loop {
            let (rows, blocked) = compatible_rows(&self.deferred);
            if blocked || rows >= MAX_VARIATIONS {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(Inbox::Command(cmd)) => self.deferred.push_back(cmd),
                Ok(Inbox::SwapLoaded(result)) => self.finish_swap(*result),
                Err(_) => return,
            }
        }
    }

    /// Runs `jobs` (one, or several joined by [`Self::join_queued`]) as one
    /// batched decode. Each job gets its own tokens and its own `Done` or
    /// error; a cancelled job's rows stop while the others go on.
    fn run_jobs(&mut self, mut jobs: Vec<GenerateJob>) {
        let rows: usize = jobs.iter().map(|j| j.variations).sum();
        tracing::debug!(jobs = jobs.len(), rows, "decoding requests as one batch");
        if let Err(f) = self.ensure_loaded(&jobs[0].spec, rows) {
            if jobs.len() > 1 && f.kind == ErrorKind::DoesNotFit {
                // Together they do not fit: each runs on its own, in order.
                for job in jobs.drain(1..).rev() {
                    self.deferred.push_front(Command::Generate(job));
                }
                return self.run_jobs(jobs);
            }
            for job in &jobs[1..] {
                self.fail(Some(job.id), f.for_another());
            }
            return self.fail(Some(jobs[0].id), f);
        }
        let Some(resident) = self.loaded.as_ref() else {
            for job in &jobs {
                let f = JobFailure::new(ErrorKind::Internal, "model vanished after loading".into());
                self.fail(Some(job.id), f);
            }
            return;
        };
        let m = &resident.model;
        let resident_actual = resident.actual;
        let spec = jobs[0].spec.clone();
        let mut prepared = Vec::with_capacity(jobs.len());
        let mut refused = Vec::new();
        for job in jobs {
            match prepare_job(m, &job) {
                Ok(req) => prepared.push((job, req)),
                Err(f) => refused.push((job.id, f)),
            }
        }
        // Jobs that arrive while it decodes may join it, as many rows as the
        // fit check allows (checked once here, not per step).
        let cap = if rows >= MAX_VARIATIONS
            || self
                .check_fit(&spec, resident_actual, MAX_VARIATIONS)
                .is_err()
        {
            rows
        } else {
            MAX_VARIATIONS
        };
        let mut deferred = std::mem::take(&mut self.deferred);
        let mut late_swaps = Vec::new();
        let failures = if prepared.is_empty() {
            Vec::new()
        } else {
            self.decode_joined(prepared, cap, &mut deferred, &mut late_swaps)
        };
        self.deferred = deferred;
        for result in late_swaps {
            self.finish_swap(result);
        }
        for (id, f) in refused {
            self.fail(Some(id), f);
        }
        for (request, mut f) in failures {
            if let Ok(mut set) = self.cancelled.lock() {
                set.remove(&request);
            }
            if is_out_of_memory(&f.message) {
                let partial = f.partial.take();
                f = self.out_of_memory_failure(MemoryStage::Generate, &spec, rows, &f.message);
                f.partial = partial;
            }
            self.fail(Some(request), f);
        }
    }

    /// The decode of [`Self::run_jobs`]: one request of all the jobs' rows,
    /// its tokens sent as each job's events. Each job is answered (`Done`) as
    /// soon as its own rows end, and on the growing path compatible jobs that
    /// arrive meanwhile join the decode between steps (up to `cap` rows).
    /// Returns the failures of the jobs not answered when the decode failed.
    fn decode_joined(
        &self,
        prepared: Vec<(GenerateJob, GenerateRequest)>,
        cap: usize,
        deferred: &mut VecDeque<Command>,
        late_swaps: &mut Vec<Result<Resident, JobFailure>>,
    ) -> Vec<(RequestId, JobFailure)> {
        let Some(resident) = self.loaded.as_ref() else {
            return Vec::new();
        };
        let m = &resident.model;
        let Some(template) = prepared.first().map(|(job, _)| job.clone()) else {
            return Vec::new();
        };
        let req = match prepared.as_slice() {
            [(_, only)] => only.clone(),
            [(_, first), ..] => GenerateRequest {
                variations: prepared.iter().map(|(_, r)| r.variations).sum(),
                rows: prepared.iter().flat_map(|(_, r)| row_starts(r)).collect(),
                ..first.clone()
            },
            [] => return Vec::new(),
        };
        self.set_state(EngineState::Generating);
        let mut feed = JoinedRequests {
            engine: self,
            model: m,
            template,
            keep: prompt_tokens_kept_for(&req, m.config.n_positions),
            owners: Vec::new(),
            jobs: Vec::new(),
            spare_rows: MAX_VARIATIONS.saturating_sub(cap),
            deferred,
            late_swaps,
            held: None,
        };
        for (job, r) in prepared {
            feed.register(job, r);
        }
        let bytes = |id: u32| -> &[u8] { m.tokenizer.as_ref().map_or(&[], |t| t.token_bytes(id)) };
        let path = crate::generate::DecodePath::for_device(m.model.device());
        let result = generate_feeding(path, &m.model, &req, bytes, &mut feed);
        if let Some((job, _)) = feed.held.take() {
            feed.deferred.push_front(Command::Generate(job));
        }
        let JoinedRequests {
            jobs, owners, keep, ..
        } = feed;
        let e = match result {
            Ok(_) => return Vec::new(),
            Err(e) => e,
        };
        let message = e.to_string();
        let (kind, partial) = match e {
            GenerateError::Invalid { .. } => (ErrorKind::BadRequest, None),
            GenerateError::Failed { partial, .. } => (ErrorKind::Generation, Some(partial)),
            _ => (ErrorKind::Generation, None),
        };
        let mut failures = Vec::new();
        for job in jobs.into_iter().filter(|j| !j.answered) {
            // Each unanswered job's rows of the partial output, in its order.
            let partial = partial.as_ref().map(|p| {
                let variations = owners
                    .iter()
                    .zip(&p.variations)
                    .filter(|((id, _), _)| *id == job.id)
                    .map(|(_, v)| v.clone())
                    .collect();
                Box::new(Generation {
                    variations,
                    ..job.generation_base(keep, p.timings.clone())
                })
            });
            // An out-of-memory is turned into the engine's report by the caller.
            failures.push((
                job.id,
                JobFailure {
                    kind,
                    message: crate::without_backtrace(&message),
                    partial,
                    fit: None,
                },
            ));
        }
        failures
    }

    /// Loads `spec`'s model in f32, then in f16, and times decoding `batch`
    /// sequences in each; f16 stays loaded (the pick until this is measured, so
    /// a job sent meanwhile needs no reload).
    fn measure_precisions(
        &mut self,
        spec: &LoadSpec,
        batch: usize,
    ) -> Result<PrecisionSpeeds, JobFailure> {
        const PROBE_TOKENS: usize = 48;
        let batch = batch.clamp(1, crate::generate::MAX_VARIATIONS);
        let speed = |engine: &mut Self, precision: Precision| {
            let spec = LoadSpec {
                precision,
                ..spec.clone()
            };
            engine.ensure_loaded(&spec, batch)?;
            let resident = engine.loaded.as_ref().ok_or_else(|| {
                JobFailure::new(ErrorKind::Internal, "model vanished after loading".into())
            })?;
            engine.set_state(EngineState::Generating);
            let tokens_per_s =
                crate::generate::decode_tokens_per_s(&resident.model.model, batch, PROBE_TOKENS)
                    .map_err(|e| JobFailure::new(ErrorKind::Generation, e.to_string()))?;
            Ok::<_, JobFailure>((tokens_per_s, resident.actual))
        };
        let (f32_tokens_per_s, _) = speed(self, Precision::F32)?;
        let (f16_tokens_per_s, device) = speed(self, Precision::F16)?;
        let speeds = PrecisionSpeeds {
            device,
            batch,
            f32_tokens_per_s,
            f16_tokens_per_s,
        };
        Ok(speeds)
    }

    /// Drops the model, its caches and the device, resets the CUDA primary
    /// context, and reports what was measured.
    fn release(&mut self, reason: ReleaseReason) {
        // A swap in flight holds device memory too: let it land, then drop it all.
        self.wait_for_swap();
        let Some(resident) = self.loaded.take() else {
            return;
        };
        self.set_state(EngineState::Releasing);
        let device = resident.actual;
        let gpu_before = self.gpu_process_bytes(device);
        let rss_before = process_memory().map(|m| m.rss_bytes);
        let started = Instant::now();
        let Resident {
            model,
            device: dev,
            context,
            ..
        } = resident;
        // The model's tensors first, then the device they live on, then the
        // count that kept other engines from resetting its context.
        drop(model);
        #[allow(clippy::drop_non_drop)]
        drop(dev);
        drop(context);
        let reset = self.reset_cuda_context(device);
        let context_reset = reset == ContextReset::Reset;
        return_freed_heap_to_os();
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        let gpu_after = self.gpu_process_bytes(device);
        let still_held = match (gpu_after, reset) {
            (Some(b), ContextReset::Shared { other_holders }) if b > 0 => Some(format!(
                "{} MiB still held on {device} by {other_holders} other engine(s) of this \
                 process on the same GPU; its context is reset when the last of them releases",
                crate::mib(b),
            )),
            (Some(b), _) if b > 0 => Some(format!(
                "{} MiB still held by this process on {device}{}",
                crate::mib(b),
                if context_reset {
                    ""
                } else {
                    " (the CUDA context could not be reset)"
                }
            )),
            _ => None,
        };
        let report = ReleaseReport {
            reason,
            device,
            took_ms,
            gpu_before_bytes: gpu_before,
            gpu_after_bytes: gpu_after,
            rss_before_bytes: rss_before,
            rss_after_bytes: process_memory().map(|m| m.rss_bytes),
            context_reset,
            still_held,
        };
        self.last_activity = None;
        self.emit(Event::Released(report));
        self.set_state(EngineState::Unloaded);
        self.announce_deadline();
    }

    /// Resets the CUDA primary context of `device` once every candle object on it
    /// is gone, so the driver frees the context itself, unless another engine
    /// of this process still holds that GPU.
    fn reset_cuda_context(&self, device: DeviceChoice) -> ContextReset {
        shared_context::reset_if_unused(device)
    }
}
