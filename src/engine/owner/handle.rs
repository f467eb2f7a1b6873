//! The client side: [`Engine`] and [`EngineRemote`], the options, the clock,
//! and the errors of sending a command.

#[allow(clippy::wildcard_imports)] // the owner's imports, as if this were owner.rs
use super::*;

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
pub(super) enum Inbox {
    Command(Command),
    SwapLoaded(Box<Result<Resident, JobFailure>>),
}

/// Request ids cancelled one by one (shared by the remote and the owner).
pub(super) type CancelledSet = Arc<std::sync::Mutex<std::collections::HashSet<RequestId>>>;

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
