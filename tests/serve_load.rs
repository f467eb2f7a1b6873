//! `versifier serve` under more work than it can do at once (loopback, CPU
//! engines, bounded): a request that cannot start within the queue timeout
//! is answered 503 with a Retry-After from the queue's drain rate, refused
//! clients are told to come back at different times, and a stop that runs
//! past its drain timeout answers what is left with a clear 503.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::time::Duration;

use serde_json::{json, Value};
use versifier::serve::{start, Stopped};

mod serve_harness;
use serve_harness::*;

/// Eight 七律 of up to 256 tokens: about a second or more of a CPU engine.
fn long_poems(seed: usize) -> Value {
    json!({"prompt": "山", "form": "qilv", "variations": 8, "seed": seed})
}

#[test]
fn a_request_that_cannot_start_within_the_queue_timeout_gets_503_with_retry_after_and_the_server_goes_on(
) {
    let server = start(&versifier::serve::ServeOptions {
        queue_timeout: Some(Duration::from_millis(300)),
        ..options(1, 64)
    })
    .unwrap();
    // Warm: the model is loaded before the clock matters.
    let (status, _, _) = post(
        &server,
        "/v1/poems",
        &json!({"prompt": "月"}).to_string(),
        None,
    );
    assert_eq!(status, 200);
    // Ten requests of a full batch each: one decodes, the ones behind it
    // wait longer than 300 ms to start.
    let results = answers(server.addr, 10, long_poems);
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let timed_out: Vec<&(u16, Option<u64>, Value)> =
        results.iter().filter(|r| r.0 == 503).collect();
    assert!(ok >= 1, "{results:?}");
    assert!(!timed_out.is_empty(), "{results:?}");
    assert_eq!(ok + timed_out.len(), 10, "{results:?}");
    for (_, retry, v) in &timed_out {
        assert_eq!(v["error"]["kind"], "queue_timeout", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--queue-timeout"),
            "{v}"
        );
        assert!(retry.is_some_and(|s| s >= 1), "503 says when to retry");
    }
    // The requests given up on were withdrawn: a new one is answered.
    let (status, v, _) = post(
        &server,
        "/v1/poems",
        &json!({"prompt": "春"}).to_string(),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let metrics = get(&server, "/metrics");
    assert!(
        metrics.contains(&format!(
            "versifier_requests_timed_out_in_queue_total {}",
            timed_out.len()
        )),
        "{metrics}"
    );
    server.stop().unwrap();
}

#[test]
fn refused_clients_are_told_to_come_back_at_different_times() {
    // A queue of 2: of 24 clients at once, most are refused; their
    // Retry-After values spread, so they do not all return together.
    let server = start(&options(1, 2)).unwrap();
    let results = answers(server.addr, 24, long_poems);
    let retries: Vec<u64> = results.iter().filter_map(|r| r.1).collect();
    assert!(retries.len() >= 12, "{results:?}");
    assert!(retries.iter().all(|s| *s >= 1), "{retries:?}");
    let distinct: std::collections::BTreeSet<u64> = retries.iter().copied().collect();
    assert!(
        distinct.len() >= 2,
        "every refused client told the same: {retries:?}"
    );
    server.stop().unwrap();
}

#[test]
fn work_left_at_the_drain_timeout_is_answered_503_shutting_down_not_dropped() {
    let server = start(&options(1, 64)).unwrap();
    // Sixteen full batches: many seconds of work on a CPU.
    let running = clients(server.addr, 16, long_poems);
    // Once the first has written a token, stop with 200 ms to drain.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !metric_reaches(&server, "versifier_tokens_total", 1) {
        assert!(std::time::Instant::now() < deadline, "no token within 60 s");
    }
    let (_tx, rx) = std::sync::mpsc::channel();
    let stopped = server.stop_within(Duration::from_millis(200), &rx).unwrap();
    assert_eq!(stopped, Stopped::DrainTimedOut);
    let results: Vec<(u16, Option<u64>, Value)> =
        running.into_iter().map(|c| c.join().unwrap()).collect();
    let aborted: Vec<&Value> = results
        .iter()
        .filter(|r| r.0 == 503)
        .map(|r| &r.2)
        .collect();
    assert!(!aborted.is_empty(), "{results:?}");
    for v in &aborted {
        assert_eq!(v["error"]["kind"], "shutting_down", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--drain-timeout"),
            "{v}"
        );
    }
    // Every client heard an answer: a poem or why not.
    assert!(
        results.iter().all(|r| r.0 == 200 || r.0 == 503),
        "{results:?}"
    );
}

#[test]
fn metrics_show_queue_depth_latency_engine_state_memory_and_client_errors_apart() {
    let server = start(&options(1, 16)).unwrap();
    let (status, _, _) = post(
        &server,
        "/v1/poems",
        &json!({"prompt": "月"}).to_string(),
        None,
    );
    assert_eq!(status, 200);
    let (status, _, _) = post(&server, "/v1/poems", "{not json", None);
    assert_eq!(status, 400);
    let text = get(&server, "/metrics");
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("versifier_queue_depth{device=\"cpu\"} "), 0.0);
    assert_eq!(value("versifier_running{device=\"cpu\"} "), 0.0);
    assert_eq!(
        value("versifier_engine_state{device=\"cpu\",state=\"ready\"} "),
        1.0
    );
    assert_eq!(
        value("versifier_engine_state{device=\"cpu\",state=\"unloaded\"} "),
        0.0
    );
    assert!(value("versifier_process_resident_bytes ") > 1e6);
    // Both requests to /v1/poems were timed, the refused one too.
    assert_eq!(value("versifier_request_duration_seconds_count "), 2.0);
    assert_eq!(
        value("versifier_request_duration_seconds_bucket{le=\"+Inf\"} "),
        2.0
    );
    // The bad request is the client's error, not the server's.
    assert_eq!(
        value("versifier_http_responses_total{class=\"client_error\"} "),
        1.0
    );
    assert!(!text.contains("class=\"server_error\""), "{text}");
    assert_eq!(value("versifier_served_total "), 1.0);
    server.stop().unwrap();
}
