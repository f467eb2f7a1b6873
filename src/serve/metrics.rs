//! `GET /metrics` in the Prometheus text format (encoded by
//! `prometheus-client`), and the layer that observes every request: its
//! latency (a histogram, for the endpoints that write), its status class
//! (client errors apart from server errors), and one access-log line at info.
//!
//! What a scrape reads: the counters of the pool, the queue depth and the
//! requests running per engine, each engine's state, the process's resident
//! memory and, per CUDA engine, its GPU's memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::AppState;
use crate::engine::EngineState;

type Labels = Vec<(String, String)>;

/// What the server observes of each request, kept between scrapes.
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    /// Seconds from request to response (poems, completions, chat).
    latency: Histogram,
    /// Responses by class: `ok`, `client_error` (4xx), `server_error` (5xx
    /// but 503), `unavailable` (503: busy, queue timeout, shutting down).
    responses: Family<Labels, Counter>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            // 10 ms to about 82 s.
            latency: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            responses: Family::default(),
        }
    }
}

fn class_of(status: StatusCode) -> &'static str {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        "unavailable"
    } else if status.is_server_error() {
        "server_error"
    } else if status.is_client_error() {
        "client_error"
    } else {
        "ok"
    }
}

/// Whether `path` writes poems (its latency goes into the histogram).
fn writes(path: &str) -> bool {
    matches!(
        path,
        "/v1/poems" | "/v1/completions" | "/v1/chat/completions"
    )
}

/// The layer: times the request, counts its status class, and logs one line.
/// A streamed answer is timed to its first byte (its headers).
pub async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    let m = &state.request_metrics;
    if writes(&path) {
        m.latency.observe(seconds);
    }
    m.responses
        .get_or_create(&vec![("class".to_string(), class_of(status).to_string())])
        .inc();
    tracing::info!(
        target: "versifier::access",
        "{method} {path} {} {:.1} ms",
        status.as_u16(),
        seconds * 1000.0
    );
    response
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn label(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn state_name(s: EngineState) -> &'static str {
    match s {
        EngineState::Unloaded => "unloaded",
        EngineState::Loading { .. } => "loading",
        EngineState::Ready => "ready",
        EngineState::Generating => "generating",
        EngineState::Releasing => "releasing",
    }
}

const STATES: [&str; 5] = ["unloaded", "loading", "ready", "generating", "releasing"];

/// Every metric, read now, in a registry of this scrape.
fn registry(state: &AppState) -> Registry {
    let mut r = Registry::default();
    let c = &state.pool.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let counters: [(&str, &str, u64); 8] = [
        (
            "versifier_requests",
            "Poem requests that passed the checks and were queued or refused as busy.",
            load(&c.requests),
        ),
        (
            "versifier_errors",
            "Requests the engine answered with an error.",
            load(&c.errors),
        ),
        (
            "versifier_rejected_busy",
            "Requests refused with 503 because every queue was full.",
            load(&c.rejected_busy),
        ),
        (
            "versifier_requests_timed_out_in_queue",
            "Requests refused with 503 because they could not start within --queue-timeout.",
            load(&c.timed_out_in_queue),
        ),
        (
            "versifier_cancelled",
            "Requests cancelled because the client went away or gave up.",
            load(&c.cancelled),
        ),
        ("versifier_tokens", "Tokens written.", load(&c.tokens)),
        (
            "versifier_releases",
            "Engine releases (requested or idle).",
            load(&c.releases),
        ),
        (
            "versifier_served",
            "Requests answered by the engines.",
            state.pool.status().iter().map(|s| s.served).sum(),
        ),
    ];
    for (name, help, value) in counters {
        r.register(name, help, counter(value));
    }
    r.register(
        "versifier_http_responses",
        "HTTP responses by class: ok, client_error (4xx), server_error (5xx but 503), unavailable (503).",
        state.request_metrics.responses.clone(),
    );
    r.register(
        "versifier_request_duration_seconds",
        "Time from request to response of /v1/poems, /v1/completions and /v1/chat/completions (a stream: to its first byte).",
        state.request_metrics.latency.clone(),
    );
    register_engines(&mut r, state);
    let rss = Gauge::<i64>::default();
    if let Some(m) = crate::meter::process_memory() {
        rss.set(m.rss_bytes as i64);
    }
    r.register(
        "versifier_process_resident_bytes",
        "Resident memory of the server process.",
        rss,
    );
    r
}

/// Per engine: its queue, what runs, its state, and its GPU's memory.
fn register_engines(r: &mut Registry, state: &AppState) {
    let queued = Family::<Labels, Gauge>::default();
    let running = Family::<Labels, Gauge>::default();
    let engine_state = Family::<Labels, Gauge>::default();
    let gpu_used = Family::<Labels, Gauge>::default();
    let gpu_process = Family::<Labels, Gauge>::default();
    let meter = state.meter.as_ref().and_then(|m| m.lock().ok());
    for s in state.pool.status() {
        let device = s.device.as_str();
        queued
            .get_or_create(&label(&[("device", device)]))
            .set(s.in_flight.saturating_sub(s.running) as i64);
        running
            .get_or_create(&label(&[("device", device)]))
            .set(s.running as i64);
        let now = state_name(s.state);
        for name in STATES {
            engine_state
                .get_or_create(&label(&[("device", device), ("state", name)]))
                .set(i64::from(name == now));
        }
        let gpu = device
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(|i| meter.as_ref().and_then(|m| m.read(i)));
        if let Some(g) = gpu {
            gpu_used
                .get_or_create(&label(&[("device", device)]))
                .set(g.used_bytes as i64);
            if let Some(p) = g.process_bytes {
                gpu_process
                    .get_or_create(&label(&[("device", device)]))
                    .set(p as i64);
            }
        }
    }
    r.register(
        "versifier_queue_depth",
        "Requests accepted and waiting to start, per engine.",
        queued,
    );
    r.register(
        "versifier_running",
        "Requests being decoded, per engine.",
        running,
    );
    r.register(
        "versifier_engine_state",
        "1 for each engine's current state.",
        engine_state,
    );
    r.register(
        "versifier_gpu_used_bytes",
        "Memory used on the GPU of each CUDA engine (all processes).",
        gpu_used,
    );
    r.register(
        "versifier_gpu_process_bytes",
        "Memory this process holds on the GPU of each CUDA engine.",
        gpu_process,
    );
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry(&state)) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the metrics could not be written: {e}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
