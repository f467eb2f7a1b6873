//! Unit tests of `ui/app.rs`.

use super::model_choice::auto_precision;
use super::*;

#[test]
fn precision_auto_is_the_stored_precision_on_the_cpu_and_the_measured_one_on_a_gpu() {
    let cpu = DeviceChoice::Cpu;
    let gpu = DeviceChoice::Cuda(0);
    assert_eq!(
        auto_precision(cpu, Some(Precision::F16), None),
        Precision::F16
    );
    assert_eq!(
        auto_precision(cpu, None, Some(Precision::F16)),
        Precision::F32
    );
    assert_eq!(
        auto_precision(gpu, Some(Precision::F32), None),
        Precision::F16
    );
    assert_eq!(
        auto_precision(gpu, None, Some(Precision::F32)),
        Precision::F32
    );
}
