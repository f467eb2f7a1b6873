//! Unit tests of `model/fused_decode.rs`.

use super::*;

#[test]
fn every_fused_op_matches_the_composed_ops_in_every_dtype_on_the_cpu() {
    for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 4e-3), (DType::BF16, 3e-2)] {
        // The tolerances of `versifier selftest` (eval::fused_op_tolerance).
        let checks = check_fused_ops(&candle_core::Device::Cpu, dtype);
        assert_eq!(checks.len(), 8);
        for c in &checks {
            assert!(c.passed(tolerance), "{dtype:?}: {c:?}");
            assert!(c.reference_max > 0.1, "{dtype:?}: {c:?} compares zeros");
        }
    }
}
