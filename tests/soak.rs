//! A short soak in the normal suite: 50 load -> generate -> release cycles on
//! CPU through the real engine leave resident memory flat. (The long runs are
//! `versifier bench --lifecycle --cycles 500`; see docs/testing.md.)

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use versifier::engine::{DeviceChoice, Precision};
use versifier::eval::bench::{run_lifecycle, LifecycleOptions};

#[test]
fn fifty_cpu_cycles_leave_resident_memory_flat() {
    let report = run_lifecycle(&LifecycleOptions {
        model: common::fixture("hf-safetensors"),
        device: DeviceChoice::Cpu,
        precision: Precision::F32,
        cycles: 50,
        new_tokens: 8,
    })
    .unwrap();
    assert_eq!(report.cycles.len(), 50);
    assert!(report.cycles.iter().all(|c| c.generated_tokens > 0));
    let growth = report
        .rss_growth_mib_per_100_cycles
        .expect("RSS is measured on Linux");
    assert!(
        growth < 1.0,
        "resident memory grows {growth:.3} MiB per 100 cycles"
    );
}
