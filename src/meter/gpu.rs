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

    /// NVML index for a CUDA ordinal under this process's `CUDA_VISIBLE_DEVICES`.
    /// The one mapping the engine, the benchmarks and the window all use.
    pub fn nvml_index(cuda_ordinal: usize) -> u32 {
        nvml_index_for(
            cuda_ordinal,
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        )
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

/// NVML numbers every GPU in the machine; CUDA numbers only the visible ones,
/// in the order `CUDA_VISIBLE_DEVICES` lists them. A numeric list maps ordinal
/// `i` to its `i`-th entry; without the variable (or with UUIDs, which NVML
/// would need looking up) the numbering is the same.
pub fn nvml_index_for(cuda_ordinal: usize, visible: Option<&str>) -> u32 {
    visible
        .and_then(|v| {
            v.split(',')
                .nth(cuda_ordinal)
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap_or(cuda_ordinal as u32)
}

/// The CUDA ordinal of NVML GPU `nvml_index` (the inverse of
/// [`nvml_index_for`]); `None` when `CUDA_VISIBLE_DEVICES` hides it.
pub fn cuda_ordinal_for(nvml_index: u32, visible: Option<&str>) -> Option<usize> {
    let numeric: Option<Vec<u32>> =
        visible.map(|v| v.split(',').map_while(|s| s.trim().parse().ok()).collect());
    match numeric {
        Some(list) if !list.is_empty() => list.iter().position(|&i| i == nvml_index),
        _ => Some(nvml_index as usize),
    }
}

/// This process's view of the GPUs: which NVML entry is CUDA device `ordinal`.
pub fn gpu_for_ordinal(gpus: &[GpuMemory], ordinal: usize) -> Option<&GpuMemory> {
    let index = GpuMeter::nvml_index(ordinal);
    gpus.iter().find(|g| g.index == index)
}

/// The CUDA ordinal under which this process sees NVML GPU `nvml_index`.
pub fn cuda_ordinal_of(nvml_index: u32) -> Option<usize> {
    cuda_ordinal_for(
        nvml_index,
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::{cuda_ordinal_for, nvml_index_for};

    #[test]
    fn nvml_indices_map_back_to_cuda_ordinals_and_hidden_gpus_have_none() {
        assert_eq!(cuda_ordinal_for(2, None), Some(2));
        assert_eq!(cuda_ordinal_for(2, Some("2,3")), Some(0));
        assert_eq!(cuda_ordinal_for(3, Some("2,3")), Some(1));
        assert_eq!(cuda_ordinal_for(0, Some("2,3")), None);
        assert_eq!(cuda_ordinal_for(1, Some("GPU-8f2e")), Some(1));
        for visible in [None, Some("2,3"), Some("3,0,1")] {
            for ordinal in 0..2 {
                let n = nvml_index_for(ordinal, visible);
                assert_eq!(cuda_ordinal_for(n, visible), Some(ordinal), "{visible:?}");
            }
        }
    }

    #[test]
    fn cuda_ordinals_map_to_nvml_indices_through_cuda_visible_devices() {
        assert_eq!(nvml_index_for(0, None), 0);
        assert_eq!(nvml_index_for(3, None), 3);
        assert_eq!(nvml_index_for(0, Some("2,3")), 2);
        assert_eq!(nvml_index_for(1, Some("2,3")), 3);
        assert_eq!(nvml_index_for(1, Some(" 5 , 1 ")), 1);
        assert_eq!(nvml_index_for(0, Some(" 5 , 1 ")), 5);
        // UUIDs are not numbers: the numbering stays the same.
        assert_eq!(nvml_index_for(1, Some("GPU-8f2e,GPU-11aa")), 1);
    }
}
