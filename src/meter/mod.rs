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

/// Resident memory of this process, from `/proc/self/status` (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    /// Current resident set, bytes.
    pub rss_bytes: u64,
    /// Peak resident set since start, bytes.
    pub peak_rss_bytes: u64,
}

/// A `Name:   123 kB` field of a /proc status-style text, in bytes.
fn proc_field_bytes(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Reads this process's memory; `None` where the platform does not say.
pub fn process_memory() -> Option<ProcessMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(ProcessMemory {
        rss_bytes: proc_field_bytes(&status, "VmRSS:")?,
        peak_rss_bytes: proc_field_bytes(&status, "VmHWM:")?,
    })
}

/// RAM available to new allocations (`MemAvailable`), where the OS says.
pub fn available_ram() -> Option<u64> {
    proc_field_bytes(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_own_resident_memory() {
        let m = super::process_memory().expect("linux has /proc/self/status");
        assert!(m.rss_bytes > 0);
        assert!(m.peak_rss_bytes >= m.rss_bytes);
    }
}
