//! Giving memory back: dropping the model, the CUDA context reset, and the
//! heap trimmed so the process's memory falls too.

#[allow(clippy::wildcard_imports)] // the owner's imports, as if this were owner.rs
use super::*;

/// glibc keeps freed memory in its arenas (and raises its mmap threshold after
/// the first big free), so dropped weights would stay resident; trim them.
pub(super) fn return_freed_heap_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl OwnerThread {
    /// Drops the model, its caches and the device, resets the CUDA primary
    /// context, and reports what was measured.
    pub(super) fn release(&mut self, reason: ReleaseReason) {
        // A swap in flight holds device memory too: let it land, then drop it all.
        self.wait_for_swap();
        let Some(resident) = self.loaded.take() else {
            return;
        };
        self.set_state(EngineState::Releasing);
        let device = resident.actual;
        let gpu_before = self.gpu_process_bytes(device);
        let rss_before = process_memory().map(|m| m.rss_bytes);
        let started = Instant::now();
        let Resident {
            model,
            device: dev,
            context,
            ..
        } = resident;
        // The model's tensors first, then the device they live on, then the
        // count that kept other engines from resetting its context.
        drop(model);
        #[allow(clippy::drop_non_drop)]
        drop(dev);
        drop(context);
        let reset = self.reset_cuda_context(device);
        let context_reset = reset == ContextReset::Reset;
        return_freed_heap_to_os();
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        let gpu_after = self.gpu_process_bytes(device);
        let still_held = match (gpu_after, reset) {
            (Some(b), ContextReset::Shared { other_holders }) if b > 0 => Some(format!(
                "{} MiB still held on {device} by {other_holders} other engine(s) of this \
                 process on the same GPU; its context is reset when the last of them releases",
                crate::mib(b),
            )),
            (Some(b), _) if b > 0 => Some(format!(
                "{} MiB still held by this process on {device}{}",
                crate::mib(b),
                if context_reset {
                    ""
                } else {
                    " (the CUDA context could not be reset)"
                }
            )),
            _ => None,
        };
        let report = ReleaseReport {
            reason,
            device,
            took_ms,
            gpu_before_bytes: gpu_before,
            gpu_after_bytes: gpu_after,
            rss_before_bytes: rss_before,
            rss_after_bytes: process_memory().map(|m| m.rss_bytes),
            context_reset,
            still_held,
        };
        self.last_activity = None;
        self.emit(Event::Released(report));
        self.set_state(EngineState::Unloaded);
        self.announce_deadline();
    }

    /// Resets the CUDA primary context of `device` once every candle object on it
    /// is gone, so the driver frees the context itself, unless another engine
    /// of this process still holds that GPU.
    pub(super) fn reset_cuda_context(&self, device: DeviceChoice) -> ContextReset {
        shared_context::reset_if_unused(device)
    }
}
