//! Yield mode: while the model sits idle on a GPU, give the GPU back as soon
//! as other programs leave less than a chosen amount of it free. The rule is a
//! pure function of the engine state and the meter's latest reading, so it is
//! tested with made-up readings; the app applies it each frame.

use crate::engine::{DeviceChoice, EngineState};
use crate::meter::{gpu_for_ordinal, MemorySnapshot};
use crate::{mib, MIB};

/// Why the model should be released now, or `None`. Only an idle (Ready) model
/// on a GPU yields; generation is never interrupted.
pub fn yield_reason(
    state: &EngineState,
    device: DeviceChoice,
    latest: Option<&MemorySnapshot>,
    keep_free_mib: u64,
) -> Option<String> {
    if !matches!(state, EngineState::Ready) {
        return None;
    }
    let DeviceChoice::Cuda(ordinal) = device else {
        return None;
    };
    let gpu = gpu_for_ordinal(&latest?.gpus, ordinal)?;
    if gpu.free_bytes >= keep_free_mib * MIB {
        return None;
    }
    let others = gpu
        .used_bytes
        .saturating_sub(gpu.process_bytes.unwrap_or(0));
    Some(format!(
        "Yield mode released the model: other programs use {} MiB of {}'s {} MiB, leaving {} MiB free (below the {} MiB to keep free). It loads again on the next Generate.",
        mib(others),
        gpu.name,
        mib(gpu.total_bytes),
        mib(gpu.free_bytes),
        keep_free_mib
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::GpuMemory;

    /// A reading of one GPU (simulated: no GPU is needed).
    fn reading(free_mib: u64, ours_mib: u64) -> MemorySnapshot {
        let total = 81_559 * MIB;
        MemorySnapshot {
            t: 1.0,
            unix_ms: 1,
            gpus: vec![GpuMemory {
                index: 0,
                name: "H100".into(),
                total_bytes: total,
                used_bytes: total - free_mib * MIB,
                free_bytes: free_mib * MIB,
                process_bytes: Some(ours_mib * MIB),
            }],
            rss_bytes: None,
        }
    }

    #[test]
    fn an_idle_model_yields_when_others_leave_too_little_free_simulated_gpu() {
        let squeezed = reading(500, 700);
        let why = yield_reason(
            &EngineState::Ready,
            DeviceChoice::Cuda(0),
            Some(&squeezed),
            2048,
        )
        .expect("yields");
        assert!(
            why.contains("500 MiB free") && why.contains("2048 MiB"),
            "{why}"
        );
        assert!(why.contains("80359 MiB"), "others' use is named: {why}");
        // Enough free: stays.
        let roomy = reading(4096, 700);
        assert!(yield_reason(
            &EngineState::Ready,
            DeviceChoice::Cuda(0),
            Some(&roomy),
            2048
        )
        .is_none());
    }

    #[test]
    fn generation_the_cpu_and_an_unloaded_engine_never_yield_simulated_gpu() {
        let squeezed = reading(100, 700);
        for state in [
            EngineState::Generating,
            EngineState::Unloaded,
            EngineState::Releasing,
        ] {
            assert!(yield_reason(&state, DeviceChoice::Cuda(0), Some(&squeezed), 2048).is_none());
        }
        assert!(yield_reason(
            &EngineState::Ready,
            DeviceChoice::Cpu,
            Some(&squeezed),
            2048
        )
        .is_none());
        assert!(yield_reason(
            &EngineState::Ready,
            DeviceChoice::Cuda(1),
            Some(&squeezed),
            2048
        )
        .is_none());
        assert!(yield_reason(&EngineState::Ready, DeviceChoice::Cuda(0), None, 2048).is_none());
    }
}
