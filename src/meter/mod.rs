//! Memory sampling: NVML figures for every GPU, this process's resident
//! memory, a history of the last minutes with markers, and its export.
//!
//! Owns: reading memory figures. Must not: create a CUDA context, hold model
//! objects, or block the UI.

mod gpu;
mod sampler;

pub use gpu::{cuda_ordinal_of, gpu_for_ordinal, GpuMemory, GpuMeter};
pub use sampler::{
    Marker, MarkerKind, MemoryHistory, MemorySampler, MemorySnapshot, DEFAULT_CAPACITY,
    DEFAULT_INTERVAL,
};

/// Resident memory of this process (sysinfo: Linux, Windows and macOS alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    /// Current resident set, bytes.
    pub rss_bytes: u64,
    /// Peak resident set since start, bytes, where the OS keeps it (getrusage
    /// on Linux); `None` elsewhere.
    pub peak_rss_bytes: Option<u64>,
}

/// Reads this process's memory; `None` where the platform does not say.
pub fn process_memory() -> Option<ProcessMemory> {
    use sysinfo::{get_current_pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let pid = get_current_pid().ok()?;
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory(),
    );
    let rss_bytes = system.process(pid)?.memory();
    Some(ProcessMemory {
        rss_bytes,
        peak_rss_bytes: peak_rss().map(|peak| peak.max(rss_bytes)),
    })
}

/// The peak resident set the kernel recorded for this process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn peak_rss() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given, which
    // points at storage of that type; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let usage = unsafe { usage.assume_init() };
    // Linux reports ru_maxrss in KiB.
    u64::try_from(usage.ru_maxrss).ok().map(|kib| kib * 1024)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn peak_rss() -> Option<u64> {
    None
}

/// RAM available to new allocations, as the OS says (sysinfo); `None` where
/// it reports nothing.
pub fn available_ram() -> Option<u64> {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    Some(system.available_memory()).filter(|&bytes| bytes > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_memory_comes_from_a_cross_platform_crate_and_sees_an_allocation() {
        let before = super::process_memory().expect("sysinfo reads this process");
        assert!(before.rss_bytes > 0);
        // 64 MiB written (so resident), then measured while still held.
        let block = vec![1u8; 64 << 20];
        let during = super::process_memory().expect("sysinfo reads this process");
        assert!(
            during.rss_bytes >= before.rss_bytes + (48 << 20),
            "{before:?} -> {during:?}"
        );
        std::hint::black_box(&block);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(during.peak_rss_bytes.is_some_and(|p| p >= during.rss_bytes));
    }

    #[test]
    fn available_ram_is_reported_and_below_the_machine_total() {
        let available = super::available_ram().expect("sysinfo reads the system's memory");
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        assert!(available <= system.total_memory(), "{available}");
        assert!(available > 0);
    }
}
