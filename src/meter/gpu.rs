//! GPU memory through NVML (`libnvidia-ml`, loaded at run time, so the app runs
//! on machines without the driver). NVML never creates a CUDA context, so the
//! meter can watch memory leave and come back without holding any itself.

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use serde::Serialize;

/// One GPU's memory at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuMemory {
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Memory of this process on this GPU; `None` when the driver does not say
    /// (then the meter shows "not available" rather than guessing).
    pub process_bytes: Option<u64>,
}

/// An NVML session, or the reason there is none.
pub struct GpuMeter {
    nvml: Result<Nvml, String>,
}

impl std::fmt::Debug for GpuMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMeter")
            .field("available", &self.nvml.is_ok())
            .finish()
    }
}

impl GpuMeter {
    /// Opens NVML; never fails (a missing driver is recorded as the reason).
    pub fn open() -> Self {
        Self {
            nvml: Nvml::init()
                .map_err(|e| format!("NVML is not available ({e}); no NVIDIA driver?")),
        }
    }

    /// Why there are no GPU figures, if there are none.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.nvml.as_ref().err().map(String::as_str)
    }

    pub fn device_count(&self) -> u32 {
        self.nvml
            .as_ref()
            .ok()
            .and_then(|n| n.device_count().ok())
            .unwrap_or(0)
    }

    /// NVML index for a CUDA ordinal, honouring a numeric `CUDA_VISIBLE_DEVICES`.
    pub fn nvml_index(cuda_ordinal: usize) -> u32 {
        std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .and_then(|v| {
                v.split(',')
                    .nth(cuda_ordinal)
                    .and_then(|s| s.trim().parse().ok())
            })
            .unwrap_or(cuda_ordinal as u32)
    }

    /// Memory of GPU `index` (NVML numbering) and of this process on it.
    pub fn read(&self, index: u32) -> Option<GpuMemory> {
        let nvml = self.nvml.as_ref().ok()?;
        let dev = nvml.device_by_index(index).ok()?;
        let mem = dev.memory_info().ok()?;
        let pid = std::process::id();
        let process_bytes = dev.running_compute_processes().ok().map(|procs| {
            procs
                .iter()
                .filter(|p| p.pid == pid)
                .map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                })
                .sum()
        });
        Some(GpuMemory {
            index,
            name: dev.name().unwrap_or_else(|_| format!("GPU {index}")),
            total_bytes: mem.total,
            used_bytes: mem.used,
            free_bytes: mem.free,
            process_bytes,
        })
    }
}
