//! `versifier serve`: the engine over local HTTP (axum on tokio). One engine
//! per device, started on its first request, each with its own idle release;
//! requests go to the engine with the fewest in flight.
//!
//! Endpoints: `POST /v1/poems` (JSON, or server-sent events with
//! `"stream": true`), `GET /v1/status`, `POST /v1/release`, `GET /metrics`.
//! Errors are `{"error": {"kind", "message"}}` with the matching status.
//!
//! Owns: the HTTP surface, request limits, the token check. Must not: hold a
//! model or open a device (the engines do), or be used by anything below it.

pub mod admission;
pub mod bench;
pub mod connections;
pub mod guard;
mod metrics;
pub mod open_loop;
mod openai;
mod pool;
mod probes;
mod router;
mod routes;
pub mod shutdown;
pub mod swap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use pool::{EnginePool, EngineStatus, PoolError};

use crate::engine::{DeviceChoice, Precision};

/// Requests accepted per engine by default: a burst of 128 is queued and
/// answered, not turned into 503s that all retry at once (the engine batches
/// up to 8 rows, so 128 short poems take seconds on a CPU).
pub const DEFAULT_MAX_QUEUE: usize = 128;

/// How long a request may wait in the queue to start, by default.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// After the drain timeout, how long the requests left have to hear that
/// they were cancelled before the process exits anyway.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    /// One engine per entry (`cpu,cpu` gives two CPU engines).
    pub devices: Vec<DeviceChoice>,
    pub model: PathBuf,
    pub precision: Precision,
    /// Idle release per engine; `None` never.
    pub idle: Option<Duration>,
    /// Requests accepted per engine before the server answers 503.
    pub max_queue: usize,
    /// How long a request may wait to start before it is answered 503
    /// (`None`: as long as it takes).
    pub queue_timeout: Option<Duration>,
    /// Bearer token every request must carry; required off loopback.
    pub token: Option<String>,
    /// Folder `POST /v1/model` may choose models from (`None`: no swaps).
    pub models_dir: Option<PathBuf>,
    /// Header and body timeouts, and the connection cap.
    pub limits: connections::ConnectionLimits,
    /// The one web origin whose pages may call the API (CORS); `None`: none.
    pub allow_origin: Option<axum::http::HeaderValue>,
}

impl ServeOptions {
    /// The command line's defaults, on a free loopback port, with no idle
    /// release: a server in this process (benchmarks, tests).
    pub fn in_process(model: PathBuf, devices: Vec<DeviceChoice>, precision: Precision) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            devices,
            model,
            precision,
            idle: None,
            max_queue: DEFAULT_MAX_QUEUE,
            queue_timeout: Some(DEFAULT_QUEUE_TIMEOUT),
            token: None,
            models_dir: None,
            limits: connections::ConnectionLimits::default(),
            allow_origin: None,
        }
    }
}

/// Why the server did not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--bind {0} is not a loopback address, so a bearer token is required: put one in a file and pass --token-file FILE (or set VERSIFIER_TOKEN)")]
    TokenRequired(SocketAddr),
    #[error("invalid setting `devices`: give at least one device (cpu, cuda:N)")]
    NoDevices,
    #[error("invalid setting `models-dir`: {path}: {source}")]
    ModelsDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server's runtime could not start: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// Shared by every handler.
pub struct AppState {
    pub pool: EnginePool,
    pub token: Option<String>,
    pub meter: Option<std::sync::Mutex<crate::meter::GpuMeter>>,
    /// `--models-dir`, resolved (symlinks followed) once at start.
    pub models_dir: Option<PathBuf>,
    /// `--queue-timeout`.
    pub queue_timeout: Option<Duration>,
    /// Serving, draining or aborting.
    pub lifecycle: shutdown::Lifecycle,
    /// Latencies and response classes, for `/metrics`.
    pub request_metrics: metrics::RequestMetrics,
}

fn check(opts: &ServeOptions) -> Result<(), ServeError> {
    if opts.devices.is_empty() {
        return Err(ServeError::NoDevices);
    }
    if !opts.bind.ip().is_loopback() && opts.token.as_deref().is_none_or(str::is_empty) {
        return Err(ServeError::TokenRequired(opts.bind));
    }
    if let Some(dir) = &opts.models_dir {
        std::fs::canonicalize(dir).map_err(|source| ServeError::ModelsDir {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

pub(crate) fn state(opts: &ServeOptions) -> Arc<AppState> {
    Arc::new(AppState {
        pool: EnginePool::new(
            &opts.devices,
            opts.model.clone(),
            opts.precision,
            opts.idle,
            opts.max_queue,
        ),
        token: opts.token.clone().filter(|t| !t.is_empty()),
        meter: Some(std::sync::Mutex::new(crate::meter::GpuMeter::open())),
        models_dir: opts
            .models_dir
            .as_ref()
            .and_then(|d| std::fs::canonicalize(d).ok()),
        queue_timeout: opts.queue_timeout,
        lifecycle: shutdown::Lifecycle::default(),
        request_metrics: metrics::RequestMetrics::default(),
    })
}

/// A server running on its own named thread (tests, embedding).
pub struct RunningServer {
    pub addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish, releases every engine
    /// and joins the thread.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.stop_inner()
    }

    /// [`Self::stop`], waiting at most `drain_timeout` and only until a
    /// message on `interrupt`; a server not stopped by then is left to the
    /// process's exit.
    pub fn stop_within(
        mut self,
        drain_timeout: Duration,
        interrupt: &std::sync::mpsc::Receiver<()>,
    ) -> Result<Stopped, ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // `None`: no deadline (a timeout too long to add to now).
        let deadline = std::time::Instant::now().checked_add(drain_timeout);
        loop {
            if self
                .thread
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished)
            {
                return self.stop_inner().map(|()| Stopped::Drained);
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() {
                // What is left is cancelled, each request answered why; then
                // the thread is joined, or left to the process's exit.
                self.state.lifecycle.enter(shutdown::Phase::Aborting);
                let grace = std::time::Instant::now() + ABORT_GRACE;
                while std::time::Instant::now() < grace
                    && self.thread.as_ref().is_some_and(|t| !t.is_finished())
                {
                    if interrupt.recv_timeout(Duration::from_millis(20)).is_ok() {
                        break;
                    }
                }
                if self
                    .thread
                    .as_ref()
                    .is_some_and(std::thread::JoinHandle::is_finished)
                {
                    let _ = self.stop_inner();
                } else {
                    drop(self.thread.take());
                }
                return Ok(Stopped::DrainTimedOut);
            }
            match interrupt.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    drop(self.thread.take());
                    return Ok(Stopped::Interrupted);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn stop_inner(&mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServeError::Serve(std::io::Error::other(
                "the server thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Starts the server on a thread of its own and returns once it listens.
pub fn start(opts: &ServeOptions) -> Result<RunningServer, ServeError> {
    check(opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("versifier-serve")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(opts.bind))
        .map_err(|source| ServeError::Bind {
            addr: opts.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.bind,
        source,
    })?;
    let guard = guard::GuardConfig {
        loopback_port: addr.ip().is_loopback().then_some(addr.port()),
        max_body_bytes: MAX_BODY_BYTES,
    };
    let shared = state(opts);
    let app = router::router(
        Arc::clone(&shared),
        guard,
        opts.limits,
        opts.allow_origin.clone(),
    );
    let limits = opts.limits;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let draining = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("versifier-serve-main".into())
        .spawn(move || {
            let aborting = Arc::clone(&draining);
            runtime.block_on(connections::serve(
                listener,
                app,
                limits,
                async move {
                    let _ = rx.await;
                    // Readiness turns false before the listener closes.
                    draining.lifecycle.enter(shutdown::Phase::Draining);
                },
                async move { aborting.lifecycle.aborting().await },
            ));
            // Handlers (and their engines) go with the runtime.
            runtime.shutdown_timeout(Duration::from_secs(5));
            Ok(())
        })
        .map_err(ServeError::Runtime)?;
    Ok(RunningServer {
        addr,
        state: shared,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// How a server stopped after a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every request in flight was answered and the server thread joined.
    Drained,
    /// Connections were still open when the drain timeout passed.
    DrainTimedOut,
    /// A second signal came while draining.
    Interrupted,
}

/// Runs the server until SIGINT, SIGTERM or SIGHUP (the command line's
/// `versifier serve`), then drains: the listener closes and the requests in
/// flight are answered, for at most `drain_timeout`; a second signal stops
/// the wait. The caller exits the process after anything but `Drained`.
pub fn run_until_signal(
    opts: &ServeOptions,
    drain_timeout: Duration,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<Stopped, ServeError> {
    // The handler goes in before the server listens: a signal sent as soon
    // as it says so must drain it, not kill it.
    let (tx, rx) = std::sync::mpsc::channel();
    // A second handler cannot be installed; then only the process signal stops us.
    let _ = ctrlc::set_handler(move || {
        let _ = tx.send(());
    });
    let server = start(opts)?;
    on_listening(server.addr);
    let _ = rx.recv();
    server.stop_within(drain_timeout, &rx)
}
