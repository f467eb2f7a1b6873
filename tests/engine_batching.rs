//! Requests decoded together, driven through the engine's message API on
//! CPU: queued compatible jobs share one decode, requests join a running
//! decode and are answered when their own rows end, a cancelled or bad one
//! leaves the others going, and a steady stream of joiners keeps the cache
//! bounded. Waits are bounded event waits, never sleeps.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;
mod engine_harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use engine_harness::*;
use versifier::engine::*;
use versifier::generate::SamplingParams;

/// The Done events' poems, by request.
fn poems_of(seen: &[Event], request: RequestId) -> Option<(Vec<String>, usize)> {
    seen.iter().find_map(|e| match e {
        Event::Done {
            request: r,
            generation,
        } if *r == request => Some((
            generation
                .variations
                .iter()
                .map(|v| v.text.clone())
                .collect(),
            generation.batch_rows,
        )),
        _ => None,
    })
}

#[test]
fn queued_compatible_requests_share_one_decode_and_write_what_they_would_alone() {
    let mut h = Harness::new(16);
    let request = |h: &Harness, prompt: &str, seed: u64, variations: usize| GenerateJob {
        prompt: Prompt::Text(prompt.into()),
        variations,
        sampling: SamplingParams {
            seed,
            ..SamplingParams::default()
        },
        ..h.job(12)
    };
    // Alone, one after another.
    let (a, b) = (request(&h, "月", 11, 2), request(&h, "春風", 5, 1));
    let (a_id, b_id) = (a.id, b.id);
    h.engine.send(Command::Generate(a.clone())).unwrap();
    h.until(
        "a alone",
        |e| matches!(e, Event::Done { request, .. } if *request == a_id),
    );
    h.engine.send(Command::Generate(b.clone())).unwrap();
    h.until(
        "b alone",
        |e| matches!(e, Event::Done { request, .. } if *request == b_id),
    );
    let (a_alone, rows) = poems_of(&h.seen, a_id).unwrap();
    assert_eq!(rows, 2);
    let (b_alone, _) = poems_of(&h.seen, b_id).unwrap();
    // Queued together behind a longer request (sent from its first token, so
    // both wait in the queue): they decode as one batch of three rows.
    let a2 = GenerateJob {
        id: h.engine.next_request_id(),
        ..a
    };
    let b2 = GenerateJob {
        id: h.engine.next_request_id(),
        ..b
    };
    let (a2_id, b2_id) = (a2.id, b2.id);
    let queued = std::sync::Mutex::new(Some((a2, b2)));
    h.set_hook(move |remote, _| {
        if let Some((a2, b2)) = queued.lock().unwrap().take() {
            remote.send(Command::Generate(a2)).unwrap();
            remote.send(Command::Generate(b2)).unwrap();
        }
    });
    let blocker = h.job(40);
    h.engine.send(Command::Generate(blocker)).unwrap();
    h.until(
        "a joined",
        |e| matches!(e, Event::Done { request, .. } if *request == a2_id),
    );
    h.until(
        "b joined",
        |e| matches!(e, Event::Done { request, .. } if *request == b2_id),
    );
    let (a_joined, a_rows) = poems_of(&h.seen, a2_id).unwrap();
    let (b_joined, b_rows) = poems_of(&h.seen, b2_id).unwrap();
    assert_eq!((a_rows, b_rows), (3, 3), "decoded as one batch");
    assert!(a_alone.iter().all(|t| !t.is_empty()), "{a_alone:?}");
    assert_eq!(a_joined, a_alone, "same seed, same poems, joined or not");
    assert_eq!(b_joined, b_alone);
    // Each request's tokens came with its own id and variation numbers.
    let streamed: String = h
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Token {
                request,
                variation: 0,
                text,
            } if *request == b2_id => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, b_joined[0]);
}

#[test]
fn cancelling_one_joined_request_stops_its_rows_and_the_other_finishes() {
    let mut h = Harness::new(16);
    let a = h.job(30);
    let b = GenerateJob {
        id: h.engine.next_request_id(),
        sampling: SamplingParams {
            seed: 9,
            ..SamplingParams::default()
        },
        ..h.job(30)
    };
    let (a_id, b_id) = (a.id, b.id);
    let queued = std::sync::Mutex::new(Some((a, b)));
    let cancelled = std::sync::atomic::AtomicBool::new(false);
    let tokens = std::sync::atomic::AtomicUsize::new(0);
    h.set_hook(move |remote, _| {
        if let Some((a, b)) = queued.lock().unwrap().take() {
            remote.send(Command::Generate(a)).unwrap();
            remote.send(Command::Generate(b)).unwrap();
            return;
        }
        // Some tokens into the joined decode, the client of `a` goes away.
        let n = tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n > 60 && !cancelled.swap(true, std::sync::atomic::Ordering::Relaxed) {
            remote.cancel_request(a_id);
        }
    });
    let blocker = h.job(20);
    h.engine.send(Command::Generate(blocker)).unwrap();
    let done = |h: &Harness, id: RequestId| {
        h.seen.iter().find_map(|e| match e {
            Event::Done {
                request,
                generation,
            } if *request == id => Some(generation.clone()),
            _ => None,
        })
    };
    h.until(
        "a",
        |e| matches!(e, Event::Done { request, .. } if *request == a_id),
    );
    h.until(
        "b",
        |e| matches!(e, Event::Done { request, .. } if *request == b_id),
    );
    let (a, b) = (done(&h, a_id).unwrap(), done(&h, b_id).unwrap());
    assert_eq!(a.batch_rows, 4, "joined");
    assert!(
        a.variations
            .iter()
            .all(|v| v.stop == Some(versifier::generate::StopReason::Cancelled)),
        "{a:?}"
    );
    assert!(
        b.variations
            .iter()
            .all(|v| v.stop != Some(versifier::generate::StopReason::Cancelled)),
        "{b:?}"
    );
}

#[test]
fn with_a_batch_window_a_request_arriving_moments_later_joins_the_first() {
    let engine = Engine::spawn(EngineOptions {
        batch_window: Duration::from_secs(1),
        ..EngineOptions::default()
    })
    .unwrap();
    let h = Harness::new(4); // only for its job builder
    let mut a = h.job(8);
    a.id = engine.next_request_id();
    let mut b = h.job(8);
    b.id = engine.next_request_id();
    b.variations = 1;
    let (a_id, b_id) = (a.id, b.id);
    engine.send(Command::Generate(a)).unwrap();
    // The second client is a moment late (well inside the window).
    std::thread::sleep(Duration::from_millis(100));
    engine.send(Command::Generate(b)).unwrap();
    let mut rows = std::collections::HashMap::new();
    while rows.len() < 2 {
        match engine.recv_timeout(WAIT) {
            Some(Event::Done {
                request,
                generation,
            }) => {
                rows.insert(request, generation.batch_rows);
            }
            Some(Event::Error { message, .. }) => panic!("{message}"),
            Some(_) => {}
            None => panic!("no result within {WAIT:?}"),
        }
    }
    assert_eq!(rows[&a_id], 3, "{rows:?}");
    assert_eq!(rows[&b_id], 3, "{rows:?}");
}

#[test]
fn a_request_sent_while_a_compatible_one_decodes_joins_it_and_each_is_answered_when_its_rows_end() {
    let mut h = Harness::new(16);
    let job = |h: &Harness, prompt: &str, seed: u64| GenerateJob {
        prompt: Prompt::Text(prompt.into()),
        variations: 1,
        sampling: SamplingParams {
            seed,
            ..SamplingParams::default()
        },
        ..h.job(30)
    };
    // Alone first, for what it would write.
    let late = job(&h, "春", 5);
    let late_id = late.id;
    h.engine.send(Command::Generate(late.clone())).unwrap();
    h.until(
        "the late request alone",
        |e| matches!(e, Event::Done { request, .. } if *request == late_id),
    );
    let (alone, rows) = poems_of(&h.seen, late_id).unwrap();
    assert_eq!(rows, 1);
    // The same request again, sent after the first request's fifth token:
    // that decode is running, and it joins it.
    let first = job(&h, "月", 9);
    let first_id = first.id;
    let again = GenerateJob {
        id: h.engine.next_request_id(),
        ..late
    };
    let again_id = again.id;
    let pending = Mutex::new(Some(again));
    let tokens = std::sync::atomic::AtomicUsize::new(0);
    h.set_hook(move |remote, _| {
        if tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 5 {
            if let Some(j) = pending.lock().unwrap().take() {
                remote.send(Command::Generate(j)).unwrap();
            }
        }
    });
    h.engine.send(Command::Generate(first)).unwrap();
    let mut answered = Vec::new();
    while answered.len() < 2 {
        if let Event::Done { request, .. } = h.until("both answered", |e| {
            matches!(e, Event::Done { request, .. } if *request == first_id || *request == again_id)
        }) {
            answered.push(request);
        }
    }
    let (joined, joined_rows) = poems_of(&h.seen, again_id).unwrap();
    let (_, first_rows) = poems_of(&h.seen, first_id).unwrap();
    assert_eq!(joined_rows, 2, "it decoded beside the running request");
    assert_eq!(first_rows, 2);
    assert_eq!(joined, alone, "same seed, same poem, joined late or alone");
    // It joined later, so the first request (same length limit) was
    // answered first, without waiting for the joiner's rows.
    assert_eq!(answered, vec![first_id, again_id]);
    let first_done = h
        .seen
        .iter()
        .position(|e| matches!(e, Event::Done { request, .. } if *request == first_id))
        .unwrap();
    assert!(
        h.seen[first_done..]
            .iter()
            .any(|e| matches!(e, Event::Token { request, .. } if *request == again_id)),
        "the joiner was still writing when the first was answered"
    );
}

#[test]
fn a_bad_request_that_would_join_a_running_decode_gets_its_own_error_and_the_others_go_on() {
    let mut h = Harness::new(16);
    let job = |h: &Harness, prompt: Prompt, seed: u64| GenerateJob {
        prompt,
        variations: 1,
        sampling: SamplingParams {
            seed,
            ..SamplingParams::default()
        },
        ..h.job(30)
    };
    let first = job(&h, Prompt::Text("月".into()), 3);
    // Same settings (so it would join), but a token id the model does not have.
    let bad = job(&h, Prompt::Ids(vec![1, 99_999]), 4);
    let good = job(&h, Prompt::Text("春".into()), 5);
    let (first_id, bad_id, good_id) = (first.id, bad.id, good.id);
    let pending = Mutex::new(Some((bad, good)));
    let tokens = AtomicUsize::new(0);
    h.set_hook(move |remote, _| {
        if tokens.fetch_add(1, Ordering::Relaxed) >= 5 {
            if let Some((bad, good)) = pending.lock().unwrap().take() {
                remote.send(Command::Generate(bad)).unwrap();
                remote.send(Command::Generate(good)).unwrap();
            }
        }
    });
    h.engine.send(Command::Generate(first)).unwrap();
    let Event::Error { kind, message, .. } = h.until(
        "the bad request's error",
        |e| matches!(e, Event::Error { request: Some(r), .. } if *r == bad_id),
    ) else {
        unreachable!()
    };
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(
        message.contains("99999") && message.contains("out of range"),
        "{message}"
    );
    // Told at once, while the decode it would have joined still runs.
    assert!(
        !h.seen.iter().any(|e| matches!(e, Event::Done { .. })),
        "the error waited for the decode"
    );
    for id in [first_id, good_id] {
        h.until(
            "the others answered",
            |e| matches!(e, Event::Done { request, .. } if *request == id),
        );
    }
    let (good_poem, good_rows) = poems_of(&h.seen, good_id).unwrap();
    assert_eq!(good_rows, 2, "the good one behind it still joined");
    assert!(!good_poem[0].is_empty());
}

#[test]
fn a_steady_stream_of_joining_requests_drains_with_a_bounded_cache() {
    // 96 one-poem requests, queued faster than they decode: each joins the
    // running decode as a row leaves (the server under steady load). Every
    // one is answered, and the decode's cache at the end is no bigger than
    // at the start: rows that left took their columns along.
    let total = 96;
    let mut h = Harness::new(total + 8);
    let jobs: Vec<GenerateJob> = (0..total)
        .map(|i| GenerateJob {
            variations: 1,
            sampling: SamplingParams {
                seed: 100 + i as u64,
                ..SamplingParams::default()
            },
            ..h.job(24)
        })
        .collect();
    let ids: Vec<RequestId> = jobs.iter().map(|j| j.id).collect();
    // The first request starts the decode; the rest arrive while it runs,
    // one with each token written, so they join at different steps.
    h.engine.send(Command::Generate(jobs[0].clone())).unwrap();
    h.until("the first token", |e| matches!(e, Event::Token { .. }));
    let rest: Mutex<std::collections::VecDeque<GenerateJob>> =
        Mutex::new(jobs[1..].iter().cloned().collect());
    h.set_hook(move |remote, _| {
        if let Some(job) = rest.lock().unwrap().pop_front() {
            remote.send(Command::Generate(job)).unwrap();
        }
    });
    // Answers come in the order rows end, not the order requests were sent.
    let mut cache_bytes = std::collections::BTreeMap::new();
    while cache_bytes.len() < total {
        let ev = h.until("an answer", |e| {
            matches!(e, Event::Done { .. } | Event::Error { .. })
        });
        let Event::Done {
            request,
            generation,
        } = ev
        else {
            panic!("a request failed: {ev:?}");
        };
        assert!(ids.contains(&request));
        cache_bytes.insert(request, (generation.batch_rows, generation.kv_cache_bytes));
    }
    let cache_bytes: Vec<(usize, usize)> = cache_bytes.into_values().collect();
    assert!(
        cache_bytes.iter().any(|(rows, _)| *rows >= 4),
        "requests joined a running decode: {cache_bytes:?}"
    );
    let full_early = cache_bytes[..16].iter().map(|c| c.1).max().unwrap();
    let late = cache_bytes[total - 16..].iter().map(|c| c.1).max().unwrap();
    assert!(
        late <= 2 * full_early,
        "the cache grew with the stream: {late} bytes at the end, {full_early} early ({cache_bytes:?})"
    );
}
