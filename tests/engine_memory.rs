//! On CPU, Release gives the weights' memory back: resident memory returns to
//! near its pre-load level. Its own test binary, so no other test allocates
//! in this process while it measures.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::time::Duration;

use versifier::engine::*;
use versifier::meter::process_memory;
use versifier::model::{synthetic, Gpt2Config};

const MIB: u64 = 1024 * 1024;

fn wait(engine: &Engine, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    loop {
        let ev = engine
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("no {what}"));
        if let Event::Error { message, .. } = &ev {
            panic!("{what}: engine error: {message}");
        }
        if pred(&ev) {
            return ev;
        }
    }
}

#[test]
fn resident_memory_returns_near_baseline_after_release() {
    // ~64 MiB of f32 weights: large enough to see, small enough for CI.
    let cfg = Gpt2Config::small(8000, 256, 512, 4, 8);
    let dir = tempfile::tempdir().unwrap();
    let tensors = synthetic::synthetic_tensors(&cfg, 5).unwrap();
    synthetic::write_checkpoint(dir.path(), &cfg, &tensors, candle_core::DType::F32).unwrap();
    drop(tensors);
    let weights = (cfg.param_count() * 4) as u64;

    let engine = Engine::spawn(EngineOptions {
        idle_timeout: None,
        ..EngineOptions::default()
    })
    .unwrap();
    let spec = LoadSpec {
        model: dir.path().to_path_buf(),
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
    };
    // One warm-up cycle so allocator and thread-pool start-up costs are in the baseline.
    for _ in 0..2 {
        engine.send(Command::Prepare(spec.clone())).unwrap();
        wait(&engine, "load", |e| matches!(e, Event::Loaded(_)));
        engine.send(Command::Release).unwrap();
        wait(&engine, "release", |e| matches!(e, Event::Released(_)));
    }
    let baseline = process_memory().unwrap().rss_bytes;
    engine.send(Command::Prepare(spec)).unwrap();
    wait(&engine, "load", |e| matches!(e, Event::Loaded(_)));
    let loaded = process_memory().unwrap().rss_bytes;
    assert!(
        loaded > baseline + weights * 3 / 4,
        "weights are resident: baseline {baseline}, loaded {loaded}, weights {weights}"
    );
    engine.send(Command::Release).unwrap();
    let Event::Released(report) = wait(&engine, "release", |e| matches!(e, Event::Released(_)))
    else {
        unreachable!()
    };
    let after = process_memory().unwrap().rss_bytes;
    assert!(
        after < baseline + 8 * MIB,
        "resident memory after release {} MiB vs baseline {} MiB (loaded {} MiB)",
        after / MIB,
        baseline / MIB,
        loaded / MIB
    );
    let (before, after_report) = (
        report.rss_before_bytes.unwrap(),
        report.rss_after_bytes.unwrap(),
    );
    assert!(
        before > after_report + weights / 2,
        "the report measured the drop: {before} -> {after_report}"
    );
}
