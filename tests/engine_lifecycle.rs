//! The engine's state machine, driven only through its message API on CPU:
//! lazy load, cancel and release mid-generation, the idle timer (with an
//! injected clock), pinning, one load at a time, bad models, a full queue.
//! Waits are bounded event waits, never sleeps.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;
mod engine_harness;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fixture;
use versifier::engine::*;
use versifier::generate::StopReason;

use engine_harness::*;

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
