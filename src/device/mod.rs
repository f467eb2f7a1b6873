//! Compute devices: parsing the user's choice, opening it, and the dtype it runs.
//! This is the only place in the crate that creates a candle `Device`.
//!
//! Owns: naming devices and precisions, opening a device, the CUDA library
//! probe and primary-context reset (only when no holder is left:
//! `shared_context`), and what a load needs (`fit`). Only the
//! engine (and the benchmarks and trainer, which run on one device for their
//! whole life) call `open_device`. Must not: hold a model or know about the UI.

pub mod fit;
pub mod shared_context;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// Which device the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceChoice {
    Cpu,
    /// CUDA ordinal, as numbered after `CUDA_VISIBLE_DEVICES`.
    Cuda(usize),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::BadChoice(s.to_string())),
        }
    }
}

/// Decoding speed of one model in f32 and f16 on one device, measured by the
/// engine for Precision "auto".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionSpeeds {
    /// Where it was measured (the CPU when a GPU request fell back).
    pub device: DeviceChoice,
    /// Sequences decoded together.
    pub batch: usize,
    pub f32_tokens_per_s: f64,
    pub f16_tokens_per_s: f64,
}

impl PrecisionSpeeds {
    /// The faster of the two (f16 on a tie: half the memory).
    pub fn faster(&self) -> Precision {
        if self.f32_tokens_per_s > self.f16_tokens_per_s {
            Precision::F32
        } else {
            Precision::F16
        }
    }
}

/// Weight precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// Bytes per weight.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// Bytes per activation and KV-cache value on `device`: the weights' width
    /// on a GPU; always f32 on the CPU, where half precision is for the weight
    /// matrices only (`model::packed_matrix`).
    pub fn activation_bytes(self, device: DeviceChoice) -> usize {
        match device {
            DeviceChoice::Cpu => 4,
            DeviceChoice::Cuda(_) => self.bytes(),
        }
    }

    pub const ALL: [Precision; 3] = [Self::F32, Self::F16, Self::Bf16];
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(DeviceError::BadPrecision(s.to_string())),
        }
    }
}

/// Problems opening a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected cpu or cuda:N")]
    BadChoice(String),
    #[error("unknown precision `{0}`: expected f32, f16 or bf16")]
    BadPrecision(String),
    #[error("this build of Versifier has no CUDA support (rebuild it with the cuda feature, see packaging/cuda/)")]
    NoCudaSupport,
    #[error("cannot open cuda:{ordinal}: {message}")]
    Cuda { ordinal: usize, message: String },
    #[error("CUDA is not usable on this machine: {0}")]
    CudaRuntimeMissing(String),
}

/// Opens the chosen device.
pub fn open_device(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(ordinal) => {
            match cuda_runtime() {
                CudaRuntime::NotBuilt => return Err(DeviceError::NoCudaSupport),
                CudaRuntime::Missing(why) => {
                    return Err(DeviceError::CudaRuntimeMissing(why.clone()))
                }
                CudaRuntime::Ready => {}
            }
            Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
                ordinal,
                message: e.to_string(),
            })
        }
    }
}

/// Whether this build and this machine can run CUDA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaRuntime {
    /// Built without the `cuda` feature.
    NotBuilt,
    /// Built with CUDA, but a library it needs is not on this machine; the
    /// text names it and says what to install.
    Missing(String),
    /// The driver and the CUDA libraries can be loaded.
    Ready,
}

/// The libraries a CUDA build opens at run time, by OS: (what it is, file names tried).
#[cfg(feature = "cuda")]
const CUDA_LIBRARIES: &[(&str, &[&str])] = if cfg!(windows) {
    &[
        ("the NVIDIA driver", &["nvcuda.dll"]),
        ("cuBLAS 13", &["cublas64_13.dll"]),
        ("cuBLASLt 13", &["cublasLt64_13.dll"]),
        ("cuRAND 10", &["curand64_10.dll"]),
    ]
} else {
    &[
        ("the NVIDIA driver", &["libcuda.so.1", "libcuda.so"]),
        ("cuBLAS 13", &["libcublas.so.13", "libcublas.so"]),
        ("cuBLASLt 13", &["libcublasLt.so.13", "libcublasLt.so"]),
        ("cuRAND 10", &["libcurand.so.10", "libcurand.so"]),
    ]
};

/// Checks once per process that the CUDA libraries load, without touching a
/// GPU. A CUDA build whose libraries are missing (no driver, no toolkit
/// runtime) then runs on CPU instead of failing to start or panicking inside
/// the CUDA bindings.
pub fn cuda_runtime() -> &'static CudaRuntime {
    static CHECKED: std::sync::OnceLock<CudaRuntime> = std::sync::OnceLock::new();
    CHECKED.get_or_init(|| {
        #[cfg(not(feature = "cuda"))]
        {
            CudaRuntime::NotBuilt
        }
        #[cfg(feature = "cuda")]
        {
            for (what, names) in CUDA_LIBRARIES {
                // SAFETY: these are the vendor's libraries, loaded exactly as the
                // CUDA bindings would load them; nothing is called here.
                let found = names
                    .iter()
                    .any(|n| unsafe { libloading::Library::new(*n) }.is_ok());
                if !found {
                    return CudaRuntime::Missing(format!(
                        "{} ({what}) was not found; install the NVIDIA driver and the CUDA 13 \
                         runtime libraries, or add their folder to LD_LIBRARY_PATH (see packaging/cuda/README.md)",
                        names[0]
                    ));
                }
            }
            CudaRuntime::Ready
        }
    })
}

/// Number of CUDA devices this process can use (0 when CUDA is not usable).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    if *cuda_runtime() == CudaRuntime::Ready {
        return cudarc::driver::CudaContext::device_count()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
    }
    0
}

/// The device to use when the user has not chosen one: the first GPU when
/// this build can use it, else the CPU. The notice, when there is one, is the
/// one line to show the user (a CUDA build running on CPU, and why).
pub fn preferred_device() -> (DeviceChoice, Option<String>) {
    match cuda_runtime() {
        CudaRuntime::NotBuilt => (DeviceChoice::Cpu, None),
        CudaRuntime::Missing(why) => (
            DeviceChoice::Cpu,
            Some(format!("CUDA build running on CPU: {why}")),
        ),
        CudaRuntime::Ready if cuda_device_count() > 0 => (DeviceChoice::Cuda(0), None),
        CudaRuntime::Ready => (
            DeviceChoice::Cpu,
            Some("CUDA build running on CPU: the driver reports no GPU".to_string()),
        ),
    }
}

/// Resets the CUDA primary context of `ordinal` so the driver frees it. Call only
/// when no candle object on that device is alive. Returns whether the reset ran.
#[cfg(feature = "cuda")]
pub fn reset_primary_context(ordinal: usize) -> bool {
    use cudarc::driver::sys;
    if *cuda_runtime() != CudaRuntime::Ready {
        return false;
    }
    let Ok(ordinal) = i32::try_from(ordinal) else {
        return false;
    };
    let mut dev: sys::CUdevice = 0;
    // SAFETY: plain driver calls with a valid out-pointer; the engine guarantees
    // that nothing on this device is alive.
    unsafe {
        if sys::cuDeviceGet(&mut dev, ordinal) != sys::CUresult::CUDA_SUCCESS {
            return false;
        }
        sys::cuDevicePrimaryCtxReset_v2(dev) == sys::CUresult::CUDA_SUCCESS
    }
}

/// Without CUDA support there is no context to reset.
#[cfg(not(feature = "cuda"))]
pub fn reset_primary_context(_ordinal: usize) -> bool {
    false
}

/// Fixes the CPU thread count to the physical cores (or a smaller
/// `RAYON_NUM_THREADS` the user set) before any pool starts. Candle would
/// otherwise re-read /proc/cpuinfo on every matmul to work this out.
/// Call once, first thing in `main`, before other threads exist.
pub fn pin_cpu_threads() {
    let physical = num_cpus::get_physical().max(1);
    let wanted = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map_or(physical, |n| n.min(physical));
    std::env::set_var("RAYON_NUM_THREADS", wanted.to_string());
}

/// CPU threads candle uses for matmuls: physical cores, never more.
pub fn cpu_threads() -> usize {
    candle_core::utils::get_num_threads().min(num_cpus::get_physical().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_precisions() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            "CUDA".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("f8".parse::<Precision>().is_err());
    }

    #[test]
    fn cpu_threads_never_exceed_physical_cores() {
        assert!(cpu_threads() >= 1);
        assert!(cpu_threads() <= num_cpus::get_physical().max(1));
    }
}
