//! `versifier selftest`, what a GPU machine runs without Rust, passes on the
//! CPU with every check it reports: conformance with transformers, the
//! static path, the fused decode kernels' CPU forms, the device draw (its CPU
//! form inside decode steps and the op against its host reference) and the
//! trainer's fused AdamW.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use versifier::device::{DeviceChoice, Precision};
use versifier::eval::selftest::run_selftest;

#[test]
fn the_selftest_passes_on_the_cpu_with_every_check_it_reports() {
    let fixtures = common::fixture("");
    let report = run_selftest(&fixtures, DeviceChoice::Cpu, Precision::F32).unwrap();
    assert!(report.passed, "{report:#?}");
    assert!(report.fixtures.len() >= 3, "{report:#?}");
    for f in &report.fixtures {
        assert!(f.greedy_matches && f.paths_agree, "{f:#?}");
        let d = f.device_draw_steps;
        assert!(d.draws >= 30 && d.agreeing == d.draws, "{f:#?}");
    }
    let draws = report.device_draws.as_ref().unwrap();
    assert!(draws.passed && draws.draws == 256);
    assert!(report.fused_adamw.as_ref().unwrap().passed);
    assert!(report.not_run.is_empty(), "{:?}", report.not_run);
    assert_eq!(report.fused_ops.len(), 8);
}
