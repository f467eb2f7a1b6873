//! When a request may not wait any longer, and when a refused client should
//! come back: the queue is bounded by time (`--queue-timeout`), and every 503
//! carries a `Retry-After` estimated from how fast the queue drains, spread
//! by jitter so refused clients do not all return in the same second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// Answers remembered for the drain rate.
const RECENT_ANSWERS: usize = 64;
/// Answers older than this say nothing about the queue now.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The longest `Retry-After`, in seconds.
pub const MAX_RETRY_AFTER_S: u64 = 120;

/// How fast requests are being answered: the times of the last answers.
#[derive(Debug, Default)]
pub struct DrainRate {
    recent: Mutex<VecDeque<Instant>>,
}

impl DrainRate {
    /// One request answered (or failed) at `at`.
    pub fn record(&self, at: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_ANSWERS {
            recent.pop_front();
        }
        recent.push_back(at);
    }

    /// Answers per second over the last answers of the last minute; `None`
    /// with fewer than two.
    pub fn per_s(&self, now: Instant) -> Option<f64> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh: Vec<Instant> = recent
            .iter()
            .copied()
            .filter(|t| now.saturating_duration_since(*t) <= RATE_WINDOW)
            .collect();
        let (first, _) = (fresh.first()?, fresh.get(1)?);
        let span = now.saturating_duration_since(*first).as_secs_f64();
        (span > 0.0).then(|| (fresh.len() - 1) as f64 / span)
    }
}

/// Seconds a refused client should wait: the time the queue ahead of it
/// takes to drain at `rate` answers per second (1 s when nothing is known),
/// times a factor between 0.5 and 1.5 drawn from `jitter` (0 to 1), at
/// least 1 and at most [`MAX_RETRY_AFTER_S`].
pub fn retry_after_s(waiting: usize, rate: Option<f64>, jitter: f64) -> u64 {
    let drain = match rate {
        Some(r) if r.is_finite() && r > 0.0 => waiting as f64 / r,
        _ => 1.0,
    };
    let spread = drain.max(1.0) * (0.5 + jitter.clamp(0.0, 1.0));
    (spread.ceil() as u64).clamp(1, MAX_RETRY_AFTER_S)
}

/// A number in [0, 1) that differs for every call (splitmix64 of a counter
/// and the clock): jitter needs spread, not secrecy.
fn jitter() -> f64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into());
    let mut z = CALLS
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(nanos);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The layer that gives every 503 its `Retry-After`, from the requests
/// waiting now and the drain rate.
pub async fn retry_after(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        let seconds = retry_after_s(
            state.pool.waiting(),
            state.pool.counters.drain.per_s(Instant::now()),
            jitter(),
        );
        if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_queue_over_the_drain_rate_spread_by_jitter() {
        // 40 waiting, 10 answers/s: 4 s, between 2 and 6 with jitter.
        assert_eq!(retry_after_s(40, Some(10.0), 0.5), 4);
        assert_eq!(retry_after_s(40, Some(10.0), 0.0), 2);
        assert_eq!(retry_after_s(40, Some(10.0), 0.999), 6);
        // Nothing known, or nothing waiting: about a second.
        assert_eq!(retry_after_s(40, None, 0.5), 1);
        assert_eq!(retry_after_s(0, Some(10.0), 0.999), 2);
        // Bounded.
        assert_eq!(retry_after_s(100_000, Some(0.01), 0.5), MAX_RETRY_AFTER_S);
    }

    #[test]
    fn jitter_spreads_refused_clients_over_several_seconds() {
        let seconds: std::collections::BTreeSet<u64> = (0..200)
            .map(|_| retry_after_s(64, Some(8.0), jitter()))
            .collect();
        assert!(seconds.len() >= 5, "{seconds:?}");
        assert!(seconds.iter().all(|s| (4..=12).contains(s)), "{seconds:?}");
    }

    #[test]
    fn the_drain_rate_counts_recent_answers() {
        let rate = DrainRate::default();
        let t0 = Instant::now();
        assert_eq!(rate.per_s(t0), None);
        for i in 0..11 {
            rate.record(t0 + Duration::from_millis(100 * i));
        }
        let r = rate.per_s(t0 + Duration::from_secs(1)).unwrap_or(0.0);
        assert!((r - 10.0).abs() < 1e-6, "{r}");
        // A minute later the old answers say nothing.
        assert_eq!(rate.per_s(t0 + Duration::from_secs(120)), None);
    }
}
