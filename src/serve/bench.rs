//! `versifier bench --serve`: a server on loopback in this process, driven by
//! concurrent clients; requests/s, latency percentiles, tokens/s, and the
//! dynamic-batching check (8 clients asking for 1 poem each against 1 request
//! for 8 variations, on one engine), and the latency of requests that arrive
//! one after another while earlier ones decode (they join the running decode).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::{start, ServeError, ServeOptions};
use crate::engine::{DeviceChoice, Precision};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServeBenchOptions {
    pub model: PathBuf,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub clients: usize,
    pub requests_per_client: usize,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Batching {
    /// One request for 8 variations.
    pub one_request_8_variations_tokens_per_s: f64,
    /// 8 concurrent clients, 1 poem each.
    pub eight_clients_one_poem_tokens_per_s: f64,
    /// The second over the first (target >= 0.8).
    pub ratio: f64,
}

/// Clients that arrive one after another, each asking for one poem.
#[derive(Debug, Serialize)]
pub struct Staggered {
    pub clients: usize,
    /// Client `i` sends its request `i * gap_ms` after the first.
    pub gap_ms: u64,
    pub latency: Latency,
    /// The most rows any of them was decoded beside (its own included).
    pub max_batch_rows: u64,
}

#[derive(Debug, Serialize)]
pub struct ServeBenchReport {
    pub device: String,
    pub clients: usize,
    pub requests: usize,
    pub failed: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    pub latency: Latency,
    pub batching: Batching,
    pub staggered: Staggered,
    pub machine: String,
    pub settings: String,
}

/// One request: its latency and the tokens it got (`None` when it failed).
fn one(addr: std::net::SocketAddr, body: &Value) -> Option<(Duration, u64)> {
    answer(addr, body).map(|(d, v)| (d, v["timing"]["tokens"].as_u64().unwrap_or(0)))
}

/// One request: its latency and the answer's JSON (`None` when it failed).
fn answer(addr: std::net::SocketAddr, body: &Value) -> Option<(Duration, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let started = Instant::now();
    let mut resp = agent
        .post(format!("http://{addr}/v1/poems"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .ok()?;
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
    v["timing"]["tokens"].as_u64()?;
    Some((started.elapsed(), v))
}

/// `clients` threads, client `c` sending one request `c * gap` after the
/// first (the gap is the workload: arrivals spread over time).
fn drive_staggered(
    addr: std::net::SocketAddr,
    clients: usize,
    gap: Duration,
    body: impl Fn(usize) -> Value + Send + Sync + Clone + 'static,
) -> Vec<Option<(Duration, Value)>> {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .filter_map(|c| {
            let body = body.clone();
            std::thread::Builder::new()
                .name(format!("versifier-bench-arrival-{c}"))
                .spawn(move || {
                    let at = start + gap * c as u32;
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    answer(addr, &body(c))
                })
                .ok()
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect()
}

fn latency_of(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    Latency {
        p50_ms: percentile(&ms, 0.50),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// `clients` threads, each sending `each` requests one after another.
fn drive(
    addr: std::net::SocketAddr,
    clients: usize,
    each: usize,
    body: impl Fn(usize) -> Value + Send + Sync + Clone + 'static,
) -> (Vec<Option<(Duration, u64)>>, f64) {
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .filter_map(|c| {
            let body = body.clone();
            std::thread::Builder::new()
                .name(format!("versifier-bench-client-{c}"))
                .spawn(move || {
                    (0..each)
                        .map(|k| one(addr, &body(c * each + k)))
                        .collect::<Vec<_>>()
                })
                .ok()
        })
        .collect();
    let results = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    (results, started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(opts: &ServeBenchOptions) -> Result<ServeBenchReport, ServeError> {
    let server = start(&ServeOptions {
        max_queue: opts.clients.max(8) * opts.requests_per_client.max(1) + 8,
        queue_timeout: None,
        ..ServeOptions::in_process(opts.model.clone(), vec![opts.device], opts.precision)
    })?;
    let addr = server.addr;
    let poem = |seed: usize| json!({"prompt": "月", "form": "qijue", "seed": seed});
    // Warm-up: the first request loads the model.
    let _ = one(addr, &poem(0));
    let (results, seconds) = drive(addr, opts.clients, opts.requests_per_client, poem);
    let failed = results.iter().filter(|r| r.is_none()).count();
    let latencies: Vec<f64> = results
        .iter()
        .flatten()
        .map(|(d, _)| d.as_secs_f64() * 1000.0)
        .collect();
    let tokens: u64 = results.iter().flatten().map(|(_, t)| t).sum();
    // Batching: one request for 8 variations, then 8 clients for 1 each.
    let batch_started = Instant::now();
    let batch = one(
        addr,
        &json!({"prompt": "月", "form": "qijue", "seed": 1, "variations": 8}),
    );
    let batch_s = batch_started.elapsed().as_secs_f64();
    let one_request = batch.map_or(0.0, |(_, t)| t as f64 / batch_s);
    let (eight, eight_s) = drive(
        addr,
        8,
        1,
        move |i| json!({"prompt": "月", "form": "qijue", "seed": 1 + i}),
    );
    let eight_tokens: u64 = eight.iter().flatten().map(|(_, t)| t).sum();
    let eight_clients = eight_tokens as f64 / eight_s.max(1e-9);
    // Arrivals spread over time: about five of them within one poem's decode.
    let gap = Duration::from_secs_f64((batch_s / 5.0).clamp(0.005, 1.0));
    let arrivals = drive_staggered(
        addr,
        8,
        gap,
        move |i| json!({"prompt": "月", "form": "qijue", "seed": 100 + i}),
    );
    let staggered = Staggered {
        clients: arrivals.len(),
        gap_ms: gap.as_millis() as u64,
        latency: latency_of(
            arrivals
                .iter()
                .flatten()
                .map(|(d, _)| d.as_secs_f64() * 1000.0)
                .collect(),
        ),
        max_batch_rows: arrivals
            .iter()
            .flatten()
            .filter_map(|(_, v)| v["timing"]["batch_rows"].as_u64())
            .max()
            .unwrap_or(0),
    };
    let report = ServeBenchReport {
        device: opts.device.to_string(),
        clients: opts.clients,
        requests: results.len(),
        failed,
        seconds,
        requests_per_s: results.len() as f64 / seconds.max(1e-9),
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        latency: latency_of(latencies),
        batching: Batching {
            one_request_8_variations_tokens_per_s: one_request,
            eight_clients_one_poem_tokens_per_s: eight_clients,
            ratio: eight_clients / one_request.max(1e-9),
        },
        staggered,
        machine: format!(
            "{} logical CPUs, {}",
            num_cpus::get(),
            std::env::consts::ARCH
        ),
        settings: "七絕 from 月, rules strict, defaults otherwise; one engine; loopback".into(),
    };
    server.stop()?;
    Ok(report)
}
