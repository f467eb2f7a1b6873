//! Who in this process holds each GPU's CUDA primary context.
//!
//! Every candle `Device` on one GPU shares that GPU's primary context, and
//! release frees a GPU completely only by resetting that context. Two engines
//! on one GPU (`versifier serve --devices cuda:0,cuda:0`) would destroy each
//! other's memory if the first to release reset it while the other still
//! computes. So each holder takes a [`ContextUser`] *before* it opens the
//! device, and [`reset_if_unused`] resets only when no holder is left, under
//! the same lock as the count: a device opened meanwhile either is counted
//! (no reset) or opens a fresh context after the reset.
//!
//! Owns: the per-GPU count of holders and the reset decision. Must not: open
//! devices or know about engines.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::DeviceChoice;

/// Holders per CUDA ordinal.
static HOLDERS: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

fn holders() -> MutexGuard<'static, BTreeMap<usize, usize>> {
    // The map stays consistent whatever panicked while it was held (each
    // change is one insert or remove).
    HOLDERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One holder of a GPU's primary context (nothing for the CPU). Take it
/// before opening the device and keep it until the device and everything on
/// it are dropped; dropping it does not reset anything.
#[derive(Debug)]
pub struct ContextUser {
    ordinal: Option<usize>,
}

impl ContextUser {
    /// Counts a holder of `device`'s context (a no-op for the CPU).
    pub fn acquire(device: DeviceChoice) -> Self {
        let ordinal = match device {
            DeviceChoice::Cpu => None,
            DeviceChoice::Cuda(i) => Some(i),
        };
        if let Some(i) = ordinal {
            *holders().entry(i).or_insert(0) += 1;
        }
        Self { ordinal }
    }
}

impl Drop for ContextUser {
    fn drop(&mut self) {
        let Some(i) = self.ordinal else { return };
        let mut map = holders();
        if let Some(n) = map.get_mut(&i) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&i);
            }
        }
    }
}

/// What [`reset_if_unused`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextReset {
    /// The context was reset: the driver freed it.
    Reset,
    /// The reset was tried and failed (or CUDA is not available).
    Failed,
    /// Other holders in this process still use it; the last one resets it.
    Shared { other_holders: usize },
    /// The CPU has no context.
    NotApplicable,
}

/// Resets `device`'s primary context if no [`ContextUser`] holds it.
pub fn reset_if_unused(device: DeviceChoice) -> ContextReset {
    reset_if_unused_with(device, super::reset_primary_context)
}

/// [`reset_if_unused`] with the reset itself passed in (tests count the
/// resets instead of calling the driver).
fn reset_if_unused_with(device: DeviceChoice, reset: impl FnOnce(usize) -> bool) -> ContextReset {
    let DeviceChoice::Cuda(i) = device else {
        return ContextReset::NotApplicable;
    };
    // Held through the reset, so no holder can be counted halfway through it.
    let map = holders();
    match map.get(&i) {
        Some(&n) if n > 0 => ContextReset::Shared { other_holders: n },
        _ if reset(i) => ContextReset::Reset,
        _ => ContextReset::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    // Ordinals far above any real GPU, so tests running in parallel (and any
    // engine test) never share one.

    #[test]
    fn a_gpu_shared_by_two_holders_is_reset_only_by_the_last_to_let_go_simulated() {
        let gpu = DeviceChoice::Cuda(9001);
        let resets = Cell::new(0);
        let count = |_| {
            resets.set(resets.get() + 1);
            true
        };
        let first = ContextUser::acquire(gpu);
        let second = ContextUser::acquire(gpu);
        drop(first);
        assert_eq!(
            reset_if_unused_with(gpu, count),
            ContextReset::Shared { other_holders: 1 }
        );
        assert_eq!(resets.get(), 0, "reset while another holder computes");
        drop(second);
        assert_eq!(reset_if_unused_with(gpu, count), ContextReset::Reset);
        assert_eq!(resets.get(), 1);
    }

    #[test]
    fn holders_of_another_gpu_or_the_cpu_do_not_keep_a_context_simulated() {
        let (gpu, other) = (DeviceChoice::Cuda(9002), DeviceChoice::Cuda(9003));
        let _other = ContextUser::acquire(other);
        let _cpu = ContextUser::acquire(DeviceChoice::Cpu);
        assert_eq!(reset_if_unused_with(gpu, |_| true), ContextReset::Reset);
        assert_eq!(reset_if_unused_with(gpu, |_| false), ContextReset::Failed);
        assert_eq!(
            reset_if_unused_with(DeviceChoice::Cpu, |_| true),
            ContextReset::NotApplicable
        );
        assert_eq!(
            reset_if_unused_with(other, |_| true),
            ContextReset::Shared { other_holders: 1 }
        );
    }
}
