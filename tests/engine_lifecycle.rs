//! The engine's state machine, driven only through its message API on CPU:
//! lazy load, cancel and release mid-generation, the idle timer (with an
//! injected clock), pinning, one load at a time, bad models, a full queue.
//! Waits are bounded event waits, never sleeps.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::fixture;
use versifier::engine::*;
use versifier::generate::{SamplingParams, StopReason};

const WAIT: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(300);

/// A test hook run on the engine thread after each event it sends.
type Hook = Box<dyn Fn(&EngineRemote, &ManualClock) + Send + Sync>;

struct Harness {
    engine: Engine,
    clock: ManualClock,
    seen: Vec<Event>,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl Harness {
    fn new(queue_capacity: usize) -> Self {
        let clock = ManualClock::default();
        let hook: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(None));
        let remote: Arc<OnceLock<EngineRemote>> = Arc::new(OnceLock::new());
        let (h, r, c) = (Arc::clone(&hook), Arc::clone(&remote), clock.clone());
        let waker: Waker = Arc::new(move || {
            if let (Some(remote), Ok(guard)) = (r.get(), h.lock()) {
                if let Some(f) = guard.as_ref() {
                    f(remote, &c);
                }
            }
        });
        let engine = Engine::spawn(EngineOptions {
            idle_timeout: Some(TIMEOUT),
            queue_capacity,
            clock: Arc::new(clock.clone()),
            waker: Some(waker),
            memory_budget: None,
            batch_window: Duration::ZERO,
        })
        .unwrap();
        let _ = remote.set(engine.remote());
        Self {
            engine,
            clock,
            seen: Vec::new(),
            hook,
        }
    }

    fn set_hook(&self, f: impl Fn(&EngineRemote, &ManualClock) + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(f));
    }

    fn spec(name: &str) -> LoadSpec {
        LoadSpec {
            model: fixture(name),
            device: DeviceChoice::Cpu,
            precision: Precision::F32,
        }
    }

    fn job(&self, max_new_tokens: usize) -> GenerateJob {
        GenerateJob {
            verse: versifier::poetry::VerseRules::default(),
            id: self.engine.next_request_id(),
            spec: Self::spec("hf-safetensors"),
            prompt: Prompt::Text("月".into()),
            form: Default::default(),
            variations: 2,
            max_new_tokens,
            sampling: SamplingParams {
                seed: 1,
                ..SamplingParams::default()
            },
        }
    }

    /// Collects events until `pred` matches one (which is returned); panics after WAIT.
    fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        loop {
            let ev = self
                .engine
                .recv_timeout(WAIT)
                .unwrap_or_else(|| panic!("no {what} within {WAIT:?}; saw {:#?}", self.seen));
            self.seen.push(ev.clone());
            if pred(&ev) {
                return ev;
            }
        }
    }

    fn until_state(&mut self, want: EngineState) {
        self.until(
            &format!("{want:?}"),
            |e| matches!(e, Event::State(s) if *s == want),
        );
    }

    /// Waits for the last event of a load (the idle timer being armed), so a
    /// hook installed afterwards only sees the next command's events.
    fn until_settled(&mut self) {
        self.until("idle deadline", |e| {
            matches!(e, Event::IdleDeadline(Some(_)))
        });
    }

    fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| pred(e)).count()
    }
}

fn is_loaded(e: &Event) -> bool {
    matches!(e, Event::Loaded(_))
}
fn is_released(e: &Event) -> bool {
    matches!(e, Event::Released(_))
}
fn is_done(e: &Event) -> bool {
    matches!(e, Event::Done { .. })
}

#[test]
fn first_generate_loads_the_model_then_streams_tokens() {
    let mut h = Harness::new(8);
    h.until_state(EngineState::Unloaded);
    let job = h.job(10);
    let id = job.id;
    h.engine.send(Command::Generate(job)).unwrap();
    let done = h.until("done", is_done);
    let Event::Done {
        request,
        generation,
    } = done
    else {
        unreachable!()
    };
    assert_eq!(request, id);
    assert_eq!(generation.variations.len(), 2);
    assert_eq!(h.count(is_loaded), 1);
    let loaded_at = h.seen.iter().position(is_loaded).unwrap();
    let first_token = h
        .seen
        .iter()
        .position(|e| matches!(e, Event::Token { .. }))
        .unwrap();
    assert!(
        loaded_at < first_token,
        "the model loads before the first token"
    );
    // Streamed text equals the final text (up to a held-back partial character).
    for v in 0..2 {
        let streamed: String = h
            .seen
            .iter()
            .filter_map(|e| match e {
                Event::Token {
                    variation, text, ..
                } if *variation == v => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert!(generation.variations[v].text.starts_with(&streamed));
    }
    h.until_state(EngineState::Ready);
}

#[test]
fn cancel_mid_generation_stops_between_tokens_and_keeps_partial_output() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    let wakes = AtomicUsize::new(0);
    h.set_hook(move |remote, _| {
        if wakes.fetch_add(1, Ordering::SeqCst) == 4 {
            remote.cancel();
        }
    });
    h.engine.send(Command::Generate(h.job(40))).unwrap();
    let Event::Done { generation, .. } = h.until("done", is_done) else {
        unreachable!()
    };
    for v in &generation.variations {
        assert_eq!(v.stop, Some(StopReason::Cancelled));
        assert!(
            !v.ids.is_empty() && v.ids.len() < 40,
            "stopped part-way: {} tokens",
            v.ids.len()
        );
    }
    assert_eq!(h.count(is_released), 0, "cancel does not unload");
}

#[test]
fn release_mid_generation_stops_cleanly_then_releases() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    let wakes = AtomicUsize::new(0);
    h.set_hook(move |remote, _| {
        if wakes.fetch_add(1, Ordering::SeqCst) == 4 {
            remote.release().unwrap();
        }
    });
    h.engine.send(Command::Generate(h.job(40))).unwrap();
    let Event::Released(report) = h.until("release", is_released) else {
        unreachable!()
    };
    assert_eq!(report.reason, ReleaseReason::Requested);
    let done_at = h
        .seen
        .iter()
        .position(is_done)
        .expect("the generation finished first");
    let Event::Done { generation, .. } = &h.seen[done_at] else {
        unreachable!()
    };
    assert!(generation
        .variations
        .iter()
        .all(|v| v.stop == Some(StopReason::Cancelled)));
    assert!(report.rss_before_bytes.is_some());
    h.until_state(EngineState::Unloaded);
}

#[test]
fn idle_timer_unloads_after_the_timeout_simulated_clock() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until("deadline", |e| matches!(e, Event::IdleDeadline(Some(_))));
    h.clock.advance(TIMEOUT - Duration::from_secs(1));
    h.engine.send(Command::Tick).unwrap();
    h.engine
        .send(Command::SetIdleTimeout(Some(TIMEOUT)))
        .unwrap();
    // The timeout is not up yet: the engine answers the setting with 1 s left.
    let Event::IdleDeadline(Some(left)) =
        h.until("deadline", |e| matches!(e, Event::IdleDeadline(_)))
    else {
        panic!()
    };
    assert_eq!(left, Duration::from_secs(1));
    assert_eq!(h.count(is_released), 0);
    h.clock.advance(Duration::from_secs(2));
    h.engine.send(Command::Tick).unwrap();
    let Event::Released(r) = h.until("release", is_released) else {
        unreachable!()
    };
    assert_eq!(r.reason, ReleaseReason::IdleTimeout);
}

#[test]
fn idle_timer_never_fires_during_a_generation_simulated_clock() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    // While tokens stream, time jumps far past the timeout and a Tick is queued.
    let fired = AtomicBool::new(false);
    h.set_hook(move |remote, clock| {
        if !fired.swap(true, Ordering::SeqCst) {
            clock.advance(TIMEOUT * 3);
            remote.send(Command::Tick).unwrap();
        }
    });
    h.engine.send(Command::Generate(h.job(20))).unwrap();
    let Event::Done { generation, .. } = h.until("done", is_done) else {
        unreachable!()
    };
    assert!(generation
        .variations
        .iter()
        .all(|v| v.stop != Some(StopReason::Cancelled)));
    // After the work the timer restarts from the full timeout.
    let Event::IdleDeadline(Some(left)) =
        h.until("deadline", |e| matches!(e, Event::IdleDeadline(_)))
    else {
        panic!()
    };
    assert_eq!(left, TIMEOUT);
    h.engine.send(Command::Tick).unwrap();
    h.engine.send(Command::SetPinned(false)).unwrap();
    h.until("deadline", |e| matches!(e, Event::IdleDeadline(_)));
    assert_eq!(
        h.count(is_released),
        0,
        "no release during or right after the generation: {:#?}",
        h.seen
    );
}

#[test]
fn pinned_model_is_never_unloaded_by_the_idle_timer_simulated_clock() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.engine.send(Command::SetPinned(true)).unwrap();
    h.until("no deadline while pinned", |e| {
        matches!(e, Event::IdleDeadline(None))
    });
    h.clock.advance(TIMEOUT * 10);
    h.engine.send(Command::Tick).unwrap();
    h.engine
        .send(Command::SetIdleTimeout(Some(TIMEOUT)))
        .unwrap();
    h.until("deadline", |e| matches!(e, Event::IdleDeadline(None)));
    assert_eq!(h.count(is_released), 0);
    h.engine.send(Command::SetPinned(false)).unwrap();
    h.until("deadline after unpin", |e| {
        matches!(e, Event::IdleDeadline(Some(_)))
    });
    h.clock.advance(TIMEOUT * 2);
    h.engine.send(Command::Tick).unwrap();
    let Event::Released(r) = h.until("release after unpin", is_released) else {
        unreachable!()
    };
    assert_eq!(r.reason, ReleaseReason::IdleTimeout);
}

#[test]
fn requests_racing_the_idle_timer_never_load_twice_simulated_clock() {
    let mut h = Harness::new(16);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until("deadline", |e| matches!(e, Event::IdleDeadline(Some(_))));
    // The timer is due exactly as a burst of requests arrives.
    h.clock.advance(TIMEOUT);
    for _ in 0..3 {
        h.engine.send(Command::Generate(h.job(4))).unwrap();
        h.engine
            .send(Command::Prepare(Harness::spec("hf-safetensors")))
            .unwrap();
        h.engine.send(Command::Tick).unwrap();
    }
    for _ in 0..3 {
        h.until("done", is_done);
    }
    // Never two loads without a release between them.
    let mut resident = false;
    for e in &h.seen {
        match e {
            Event::Loaded(_) => {
                assert!(
                    !resident,
                    "a second load while a model was resident: {:#?}",
                    h.seen
                );
                resident = true;
            }
            Event::Released(_) => resident = false,
            _ => {}
        }
    }
    assert!(h.count(is_loaded) <= 2);
}

#[test]
fn corrupt_model_is_an_error_and_the_engine_stays_usable() {
    let mut h = Harness::new(8);
    let dir = common::scratch_copy("hf-safetensors");
    std::fs::write(dir.path().join("model.safetensors"), b"garbage!").unwrap();
    let spec = LoadSpec {
        model: dir.path().to_path_buf(),
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
    };
    h.engine.send(Command::Prepare(spec)).unwrap();
    let Event::Error { kind, message, .. } = h.until("error", |e| matches!(e, Event::Error { .. }))
    else {
        unreachable!()
    };
    assert_eq!(kind, ErrorKind::BadModel);
    assert!(message.contains("model.safetensors"), "{message}");
    h.until_state(EngineState::Unloaded);
    h.engine.send(Command::Generate(h.job(3))).unwrap();
    h.until("done after the bad model", is_done);
}

#[test]
fn switching_models_releases_the_old_one_first() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    h.engine
        .send(Command::Prepare(Harness::spec("pytorch-bin")))
        .unwrap();
    let Event::Released(r) = h.until("release", is_released) else {
        unreachable!()
    };
    assert_eq!(r.reason, ReleaseReason::ModelChange);
    let Event::Loaded(l) = h.until("second load", is_loaded) else {
        unreachable!()
    };
    assert!(l.spec.model.ends_with("pytorch-bin"));
}

#[test]
fn full_queue_is_an_error_not_a_stall() {
    let mut h = Harness::new(1);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    // Hold the engine inside a generation until the test says go.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (busy_tx, busy_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let held = AtomicBool::new(false);
    h.set_hook(move |_, _| {
        if !held.swap(true, Ordering::SeqCst) {
            let _ = busy_tx.send(());
            let _ = go_rx.lock().unwrap().recv_timeout(WAIT);
        }
    });
    h.engine.send(Command::Generate(h.job(4))).unwrap();
    busy_rx.recv_timeout(WAIT).expect("engine became busy");
    h.engine.send(Command::Generate(h.job(4))).unwrap(); // fills the one slot
    match h.engine.send(Command::Generate(h.job(4))) {
        Err(EngineError::QueueFull(1)) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    go_tx.send(()).unwrap();
    h.until("first done", is_done);
    h.until("second done", is_done);
}

#[test]
fn shutdown_releases_and_joins() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    let Harness { engine, .. } = h;
    drop(engine); // joins the thread; a hang here fails the test run
}

#[test]
fn hot_swap_loads_beside_the_old_model_which_keeps_serving() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    h.engine
        .send(Command::Swap(Harness::spec("pytorch-bin")))
        .unwrap();
    // A request for the current model while the new one loads is served by it.
    h.engine.send(Command::Generate(h.job(4))).unwrap();
    h.until("done", is_done);
    h.until(
        "swapped",
        |e| matches!(e, Event::Loaded(l) if l.spec.model.ends_with("pytorch-bin")),
    );
    assert_eq!(
        h.count(is_released),
        0,
        "a swap never unloads to an empty engine"
    );
    // Now the new model serves its own requests without another load.
    let mut job = h.job(4);
    job.spec = Harness::spec("pytorch-bin");
    h.engine.send(Command::Generate(job)).unwrap();
    h.until("done on the new model", is_done);
    assert_eq!(h.count(is_loaded), 2);
}

#[test]
fn hot_swap_to_a_corrupt_model_rolls_back_to_the_old_one() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    let dir = common::scratch_copy("pytorch-bin");
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not a checkpoint").unwrap();
    let bad = LoadSpec {
        model: dir.path().to_path_buf(),
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
    };
    h.engine.send(Command::Swap(bad)).unwrap();
    let Event::Error { kind, message, .. } =
        h.until("swap error", |e| matches!(e, Event::Error { .. }))
    else {
        unreachable!()
    };
    assert_eq!(kind, ErrorKind::BadModel);
    assert!(
        message.contains("still using the current model") && message.contains("pytorch_model.bin"),
        "{message}"
    );
    h.engine.send(Command::Generate(h.job(4))).unwrap();
    h.until("done on the old model", is_done);
    assert_eq!(h.count(is_loaded), 1, "the old model was never reloaded");
    assert_eq!(h.count(is_released), 0);
}

#[test]
fn load_that_does_not_fit_is_refused_with_numbers_and_options() {
    let clock = ManualClock::default();
    let engine = Engine::spawn(EngineOptions {
        memory_budget: Some(64 * 1024), // 64 KiB: the fixture needs more
        clock: Arc::new(clock),
        ..EngineOptions::default()
    })
    .unwrap();
    engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    loop {
        match engine.recv_timeout(WAIT).expect("an answer") {
            Event::Error {
                kind, message, fit, ..
            } => {
                assert_eq!(kind, ErrorKind::DoesNotFit);
                let fit = fit.expect("the refusal carries its numbers");
                assert!(fit.need.total() > fit.free_bytes);
                assert_eq!(fit.free_bytes, 64 * 1024);
                assert!(fit.need.weights_bytes > 0 && fit.need.kv_cache_bytes > 0);
                assert!(
                    message.contains("MiB") && message.contains("hf-safetensors"),
                    "{message}"
                );
                break;
            }
            Event::Loaded(_) => panic!("loaded despite not fitting"),
            _ => {}
        }
    }
}

#[test]
fn panic_inside_the_engine_is_caught_reported_and_reset() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    h.engine.send(Command::InjectPanic).unwrap();
    let Event::Error { kind, message, .. } =
        h.until("panic report", |e| matches!(e, Event::Error { .. }))
    else {
        unreachable!()
    };
    assert_eq!(kind, ErrorKind::Internal);
    assert!(message.contains("injected panic"), "{message}");
    let Event::Released(r) = h.until("reset", is_released) else {
        unreachable!()
    };
    assert_eq!(r.reason, ReleaseReason::AfterError);
    h.until_state(EngineState::Unloaded);
    h.engine.send(Command::Generate(h.job(3))).unwrap();
    h.until("done after the panic", is_done);
}

#[test]
fn cuda_request_falls_back_to_cpu_with_one_notice_on_a_build_without_cuda() {
    if candle_core::utils::cuda_is_available() {
        return; // a CUDA build uses the GPU; the fallback is exercised by the default build
    }
    let mut h = Harness::new(8);
    let mut spec = Harness::spec("hf-safetensors");
    spec.device = DeviceChoice::Cuda(0);
    h.engine.send(Command::Prepare(spec.clone())).unwrap();
    h.until("loaded", is_loaded);
    h.engine.send(Command::Release).unwrap();
    h.until("released", is_released);
    h.engine.send(Command::Prepare(spec)).unwrap();
    h.until("loaded again", is_loaded);
    let notices: Vec<&String> = h
        .seen
        .iter()
        .filter_map(|e| {
            if let Event::Notice(n) = e {
                Some(n)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(notices.len(), 1, "the reason is reported once: {notices:?}");
    assert!(notices[0].contains("CPU"), "{}", notices[0]);
}

#[test]
fn after_a_gpu_fell_back_a_cpu_request_for_the_same_model_is_served_without_a_reload() {
    if candle_core::utils::cuda_is_available() {
        return; // a CUDA build uses the GPU; the fallback is exercised by the default build
    }
    let mut h = Harness::new(8);
    let mut spec = Harness::spec("hf-safetensors");
    spec.device = DeviceChoice::Cuda(1);
    h.engine.send(Command::Prepare(spec)).unwrap();
    h.until("loaded", is_loaded);
    // The window now shows (and asks for) the CPU, where the model runs.
    h.engine.send(Command::Generate(h.job(3))).unwrap();
    h.until("done", is_done);
    assert_eq!(h.count(is_loaded), 1, "no second load: {:#?}", h.seen);
    assert_eq!(h.count(is_released), 0, "no release: {:#?}", h.seen);
}

#[test]
fn measuring_precisions_times_f32_and_f16_and_leaves_f16_loaded() {
    let mut h = Harness::new(8);
    let spec = Harness::spec("hf-safetensors");
    h.engine
        .send(Command::MeasurePrecisions {
            spec: spec.clone(),
            batch: 2,
        })
        .unwrap();
    let Event::PrecisionsMeasured(speeds) =
        h.until("measured", |e| matches!(e, Event::PrecisionsMeasured(_)))
    else {
        unreachable!()
    };
    assert_eq!(speeds.device, DeviceChoice::Cpu);
    assert_eq!(speeds.batch, 2);
    assert!(
        speeds.f32_tokens_per_s > 0.0 && speeds.f16_tokens_per_s > 0.0,
        "{speeds:?}"
    );
    assert_eq!(h.count(is_loaded), 2, "one load per precision");
    // f16 is resident: a job in f16 needs no load.
    let mut job = h.job(3);
    job.spec.precision = Precision::F16;
    h.engine.send(Command::Generate(job)).unwrap();
    h.until("done", is_done);
    assert_eq!(h.count(is_loaded), 2, "{:#?}", h.seen);
}

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
fn loading_reports_progress_up_to_complete_before_loaded() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until("loaded", is_loaded);
    let progress: Vec<f32> = h
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::State(EngineState::Loading { progress }) => Some(*progress),
            _ => None,
        })
        .collect();
    assert!(progress.len() >= 3, "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "rising: {progress:?}"
    );
    assert_eq!(progress.first(), Some(&0.0));
    assert_eq!(progress.last(), Some(&1.0));
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

#[test]
fn hot_swap_to_a_model_that_loads_but_cannot_write_a_token_keeps_the_old_one() {
    let mut h = Harness::new(8);
    h.engine
        .send(Command::Prepare(Harness::spec("hf-safetensors")))
        .unwrap();
    h.until_settled();
    // Whole files of the right shapes, but the final norm's weights are NaN:
    // it loads, then every logit is NaN.
    let cfg = versifier::model::Gpt2Config::small(300, 64, 32, 2, 4);
    let mut tensors = versifier::model::synthetic::synthetic_tensors(&cfg, 3).unwrap();
    let ln_f = tensors.get("ln_f.weight").unwrap();
    let nan = (ln_f.ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert("ln_f.weight".into(), nan);
    let dir = tempfile::tempdir().unwrap();
    versifier::model::synthetic::write_checkpoint(
        dir.path(),
        &cfg,
        &tensors,
        candle_core::DType::F32,
    )
    .unwrap();
    std::fs::copy(
        fixture("hf-safetensors").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let broken = LoadSpec {
        model: dir.path().to_path_buf(),
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
    };
    h.engine.send(Command::Swap(broken)).unwrap();
    let Event::Error { kind, message, .. } =
        h.until("swap error", |e| matches!(e, Event::Error { .. }))
    else {
        unreachable!()
    };
    assert_eq!(kind, ErrorKind::BadModel);
    assert!(
        message.contains("still using the current model") && message.contains("first token"),
        "{message}"
    );
    h.engine.send(Command::Generate(h.job(4))).unwrap();
    let Event::Done { generation, .. } = h.until("done on the old model", is_done) else {
        unreachable!()
    };
    assert!(!generation.variations[0].text.is_empty());
    assert_eq!(h.count(is_loaded), 1, "the broken model never served");
}
