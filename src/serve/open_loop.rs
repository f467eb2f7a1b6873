//! `versifier bench --serve --rate R --duration S`: open-loop load on a server
//! on loopback in this process, started with the command line's defaults.
//! Requests arrive at random (Poisson) times at rate R whether or not earlier
//! ones were answered, as users of a service do; closed-loop clients, which
//! wait for each answer, never see a queue build up. Without `--rate`, the
//! rate is a share (60%) of the capacity measured first by four closed-loop
//! clients. Reports goodput, latency percentiles against the unloaded
//! latency, the answers refused, and resident memory before and after.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use super::{start, ServeError, ServeOptions, DEFAULT_MAX_QUEUE};
use crate::engine::{DeviceChoice, Precision};

/// What to measure.
#[derive(Debug, Clone)]
pub struct OpenLoopOptions {
    pub model: PathBuf,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Arrivals per second; `None`: `load_share` of the measured capacity.
    pub rate: Option<f64>,
    pub load_share: f64,
    pub duration: Duration,
    pub seed: u64,
}

/// Latency percentiles of the answered requests, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct OpenLoopReport {
    pub device: String,
    /// Requests/s of four closed-loop clients (measured when `--rate` was
    /// not given).
    pub closed_loop_capacity_per_s: Option<f64>,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub sent: usize,
    pub answered: usize,
    /// 503: the queue was full or the request could not start in time.
    pub refused: usize,
    /// Anything else: an error answer or a broken connection.
    pub failed: usize,
    pub answered_share: f64,
    /// Answers per second, from the first arrival to the last answer.
    pub goodput_per_s: f64,
    pub unloaded_p50_ms: f64,
    pub latency: Percentiles,
    /// The loaded p99 over the unloaded p50 (target <= 4).
    pub p99_over_unloaded_p50: f64,
    /// Resident memory of this process (server included) once warm, before
    /// the load, and after every answer came back (target growth <= 32 MiB).
    pub rss_start_mib: Option<f64>,
    pub rss_end_mib: Option<f64>,
    pub rss_growth_mib: Option<f64>,
    pub machine: String,
    pub settings: String,
}

/// How one request ended.
enum Outcome {
    Answered,
    Refused,
    Failed,
}

fn poem(seed: u64) -> Value {
    json!({"prompt": "月", "form": "qijue", "seed": seed})
}

fn send(agent: &ureq::Agent, addr: SocketAddr, body: &Value) -> (Duration, Outcome) {
    let started = Instant::now();
    let outcome = match agent
        .post(format!("http://{addr}/v1/poems"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
    {
        Ok(mut resp) => match resp.body_mut().read_to_string() {
            Ok(text) if text.contains("\"timing\"") => Outcome::Answered,
            _ => Outcome::Failed,
        },
        Err(ureq::Error::StatusCode(503)) => Outcome::Refused,
        Err(_) => Outcome::Failed,
    };
    (started.elapsed(), outcome)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mib_now() -> Option<f64> {
    crate::meter::process_memory().map(|m| m.rss_bytes as f64 / (1024.0 * 1024.0))
}

/// Four clients, each sending its next request when the last is answered,
/// for `for_how_long`: answered requests per second.
fn closed_loop_capacity(addr: SocketAddr, for_how_long: Duration) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..4u64)
        .filter_map(|c| {
            std::thread::Builder::new()
                .name(format!("versifier-bench-closed-{c}"))
                .spawn(move || {
                    let agent = agent();
                    let mut answered = 0usize;
                    let mut k = 0;
                    while started.elapsed() < for_how_long {
                        if let (_, Outcome::Answered) = send(&agent, addr, &poem(c * 100_000 + k)) {
                            answered += 1;
                        }
                        k += 1;
                    }
                    answered
                })
                .ok()
        })
        .collect();
    let answered: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    answered as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

pub fn run(opts: &OpenLoopOptions) -> Result<OpenLoopReport, ServeError> {
    let server = start(&ServeOptions::in_process(
        opts.model.clone(),
        vec![opts.device],
        opts.precision,
    ))?;
    let addr = server.addr;
    let warm = agent();
    // The first request loads the model; then the unloaded latency.
    let _ = send(&warm, addr, &poem(0));
    let mut unloaded: Vec<f64> = (1..=10)
        .map(|s| send(&warm, addr, &poem(s)).0.as_secs_f64() * 1000.0)
        .collect();
    unloaded.sort_by(f64::total_cmp);
    let capacity = opts
        .rate
        .is_none()
        .then(|| closed_loop_capacity(addr, Duration::from_secs(10)));
    let rate = opts
        .rate
        .or(capacity.map(|c| c * opts.load_share))
        .unwrap_or(1.0)
        .max(0.01);
    let rss_start = mib_now();

    // Poisson arrivals: exponential gaps of mean 1/rate, from a seeded RNG.
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let began = Instant::now();
    let mut at = Duration::ZERO;
    let mut arrivals = Vec::new();
    let mut k = 0u64;
    while at < opts.duration {
        let due = began + at;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let body = poem(1_000_000 + k);
        if let Ok(h) = std::thread::Builder::new()
            .name(format!("versifier-bench-arrival-{k}"))
            .spawn(move || send(&agent(), addr, &body))
        {
            arrivals.push(h);
        }
        k += 1;
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        at += Duration::from_secs_f64(-u.ln() / rate);
    }
    let results: Vec<(Duration, Outcome)> = arrivals
        .into_iter()
        .map(|h| h.join().unwrap_or((Duration::ZERO, Outcome::Failed)))
        .collect();
    let wall = began.elapsed().as_secs_f64();
    let rss_end = mib_now();
    server.stop()?;

    let answered = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Answered))
        .count();
    let refused = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Refused))
        .count();
    let mut ms: Vec<f64> = results
        .iter()
        .filter(|r| matches!(r.1, Outcome::Answered))
        .map(|r| r.0.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let unloaded_p50 = percentile(&unloaded, 0.5);
    let p99 = percentile(&ms, 0.99);
    Ok(OpenLoopReport {
        device: opts.device.to_string(),
        closed_loop_capacity_per_s: capacity,
        rate_per_s: rate,
        duration_s: opts.duration.as_secs_f64(),
        sent: results.len(),
        answered,
        refused,
        failed: results.len() - answered - refused,
        answered_share: answered as f64 / results.len().max(1) as f64,
        goodput_per_s: answered as f64 / wall.max(1e-9),
        unloaded_p50_ms: unloaded_p50,
        latency: Percentiles {
            p50_ms: percentile(&ms, 0.5),
            p99_ms: p99,
            max_ms: ms.last().copied().unwrap_or(0.0),
        },
        p99_over_unloaded_p50: p99 / unloaded_p50.max(1e-9),
        rss_start_mib: rss_start,
        rss_end_mib: rss_end,
        rss_growth_mib: rss_start.zip(rss_end).map(|(a, b)| b - a),
        machine: format!(
            "{} logical CPUs, {}",
            num_cpus::get(),
            std::env::consts::ARCH
        ),
        settings: format!(
            "七絕 from 月, rules strict; Poisson arrivals (seed {}); one engine; the serve defaults (queue {DEFAULT_MAX_QUEUE}); loopback",
            opts.seed
        ),
    })
}
