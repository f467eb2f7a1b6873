//! Will a model fit? The exact need from the config (weights for the dtype, KV
//! cache for the batch and context, the device's measured runtime overhead)
//! against the memory free now, and the options that would fit when it does not.

use serde::Serialize;

use super::{DeviceChoice, Precision};
use crate::model::Gpt2Config;

/// CUDA context + cuBLAS workspace before anything was measured on this machine
/// (measured 586 MiB for the context alone on an H100 with CUDA 13).
pub const DEFAULT_CUDA_OVERHEAD_BYTES: u64 = 640 * 1024 * 1024;

/// What a load needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FitNeed {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub overhead_bytes: u64,
}

impl FitNeed {
    pub fn new(
        cfg: &Gpt2Config,
        device: DeviceChoice,
        precision: Precision,
        batch: usize,
        context: usize,
        overhead_bytes: u64,
    ) -> Self {
        let kv = precision.activation_bytes(device);
        Self {
            weights_bytes: (cfg.param_count() * precision.bytes()) as u64,
            kv_cache_bytes: cfg.kv_cache_bytes(batch.max(1), context.min(cfg.n_positions), kv)
                as u64,
            overhead_bytes,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes
    }
}

/// Something the user could change so that the load fits.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "option", rename_all = "snake_case")]
pub enum FitOption {
    /// Half precision on the same device.
    Precision {
        precision: Precision,
        need_bytes: u64,
    },
    /// Fewer variations per generation.
    Variations { max: usize, need_bytes: u64 },
    /// A shorter context.
    Context { max_tokens: usize, need_bytes: u64 },
    /// Run on the CPU instead.
    Cpu { need_bytes: u64 },
}

/// A refused load: the numbers and what would fit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitRefusal {
    pub device: DeviceChoice,
    pub need: FitNeed,
    pub free_bytes: u64,
    pub options: Vec<FitOption>,
}

use crate::mib;

impl std::fmt::Display for FitRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the model needs {} MiB on {} (weights {} + KV cache {} + runtime {}) but only {} MiB is free",
            mib(self.need.total()),
            self.device,
            mib(self.need.weights_bytes),
            mib(self.need.kv_cache_bytes),
            mib(self.need.overhead_bytes),
            mib(self.free_bytes)
        )?;
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|o| match o {
                    FitOption::Precision {
                        precision,
                        need_bytes,
                    } => format!("{precision} ({} MiB)", mib(*need_bytes)),
                    FitOption::Variations { max, need_bytes } => {
                        format!("at most {max} variations ({} MiB)", mib(*need_bytes))
                    }
                    FitOption::Context {
                        max_tokens,
                        need_bytes,
                    } => format!("a {max_tokens}-token context ({} MiB)", mib(*need_bytes)),
                    FitOption::Cpu { need_bytes } => {
                        format!("the CPU ({} MiB of RAM)", mib(*need_bytes))
                    }
                })
                .collect();
            write!(f, "; what would fit: {}", opts.join(", "))?;
        }
        Ok(())
    }
}

/// Checks `need` against `free`; on refusal lists the options that fit.
/// `cpu_free` is the RAM available for the CPU option (None: do not offer it).
#[allow(clippy::too_many_arguments)]
pub fn check_fit(
    cfg: &Gpt2Config,
    device: DeviceChoice,
    precision: Precision,
    batch: usize,
    context: usize,
    overhead_bytes: u64,
    free_bytes: u64,
    cpu_free: Option<u64>,
) -> Result<FitNeed, FitRefusal> {
    let need = FitNeed::new(cfg, device, precision, batch, context, overhead_bytes);
    if need.total() <= free_bytes {
        return Ok(need);
    }
    let mut options = Vec::new();
    if precision == Precision::F32 {
        let half = FitNeed::new(cfg, device, Precision::F16, batch, context, overhead_bytes);
        if half.total() <= free_bytes {
            options.push(FitOption::Precision {
                precision: Precision::F16,
                need_bytes: half.total(),
            });
        }
    }
    if let Some(max) = (1..batch).rev().find(|&b| {
        FitNeed::new(cfg, device, precision, b, context, overhead_bytes).total() <= free_bytes
    }) {
        options.push(FitOption::Variations {
            max,
            need_bytes: FitNeed::new(cfg, device, precision, max, context, overhead_bytes).total(),
        });
    }
    let mut ctx = context.min(cfg.n_positions) / 2;
    while ctx >= 64 {
        let n = FitNeed::new(cfg, device, precision, batch, ctx, overhead_bytes);
        if n.total() <= free_bytes {
            options.push(FitOption::Context {
                max_tokens: ctx,
                need_bytes: n.total(),
            });
            break;
        }
        ctx /= 2;
    }
    if device != DeviceChoice::Cpu {
        let cpu = FitNeed::new(cfg, DeviceChoice::Cpu, precision, batch, context, 0);
        if cpu_free.is_some_and(|f| cpu.total() <= f) {
            options.push(FitOption::Cpu {
                need_bytes: cpu.total(),
            });
        }
    }
    Err(FitRefusal {
        device,
        need,
        free_bytes,
        options,
    })
}

/// Where the device ran out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryStage {
    /// Creating the CUDA context (cuBLAS, kernels).
    OpenDevice,
    /// Copying the weights to the device.
    Load,
    /// Decoding (KV cache, activations).
    Generate,
}

impl std::fmt::Display for MemoryStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OpenDevice => "opening the device for",
            Self::Load => "loading",
            Self::Generate => "generating with",
        })
    }
}

/// Whether an error's text is a device out-of-memory, whatever layer wrapped it
/// (a CUDA driver error inside "not a valid safetensors file: ..." included).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out_of_memory") || m.contains("out of memory")
}

/// The message for an out-of-memory at `stage`: said as out-of-memory (never
/// as the error of the layer it surfaced through), with what the model needs,
/// what was free, and what would fit; the driver's words last, for reference.
/// `fit` is the fit check redone with the free memory measured after the failure.
pub fn out_of_memory_report(
    stage: MemoryStage,
    model: &std::path::Path,
    fit: &Result<FitNeed, FitRefusal>,
    cause: &str,
) -> String {
    let cause = cause
        .rsplit(": ")
        .find(|part| is_out_of_memory(part))
        .unwrap_or(cause);
    let figures = match fit {
        Err(refusal) => format!("{refusal}"),
        Ok(need) => format!(
            "the model needs about {} MiB (weights {} + KV cache {} + runtime {}), which looked free \
             when checked: another program may be using the GPU; close it, or try f16, fewer \
             variations or the CPU (--device cpu)",
            mib(need.total()),
            mib(need.weights_bytes),
            mib(need.kv_cache_bytes),
            mib(need.overhead_bytes)
        ),
    };
    format!(
        "out of memory while {stage} {}: {figures} (driver: {cause})",
        model.display()
    )
}

pub use crate::meter::available_ram;

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn out_of_memory_at_every_stage_is_reported_as_out_of_memory_with_figures() {
        let cfg = Gpt2Config::gpt2_124m();
        let dev = DeviceChoice::Cuda(0);
        let model = std::path::Path::new("models/gpt2");
        let causes = [
            (
                MemoryStage::OpenDevice,
                "cannot open cuda:0: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            ),
            (
                MemoryStage::Load,
                "models/gpt2/model.safetensors: not a valid safetensors file: tensor \
                 transformer.h.5.attn.c_attn.weight could not be built: \
                 DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            ),
            (
                MemoryStage::Generate,
                "generation failed after 3 tokens: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            ),
        ];
        for (stage, cause) in causes {
            assert!(is_out_of_memory(cause), "{cause}");
            let fit = check_fit(
                &cfg,
                dev,
                Precision::F32,
                8,
                1024,
                640 * MIB,
                300 * MIB,
                Some(64 << 30),
            );
            let m = out_of_memory_report(stage, model, &fit, cause);
            assert!(m.starts_with("out of memory while"), "{m}");
            assert!(m.contains("but only 300 MiB is free"), "{m}");
            assert!(
                m.contains("what would fit:") && m.contains("the CPU"),
                "{m}"
            );
            assert!(
                !m.contains("not a valid safetensors"),
                "a file error is not the cause: {m}"
            );
            // A fit check that passes (memory taken after it) still says out of memory.
            let fit = check_fit(&cfg, dev, Precision::F32, 1, 64, 0, 80 << 30, None);
            let m = out_of_memory_report(stage, model, &fit, cause);
            assert!(
                m.starts_with("out of memory while") && m.contains("another program"),
                "{m}"
            );
        }
        assert!(!is_out_of_memory("tensor `wte.weight` is missing"));
    }

    #[test]
    fn gpt2_small_needs_weights_cache_and_overhead() {
        let cfg = Gpt2Config::gpt2_124m();
        let need = FitNeed::new(
            &cfg,
            DeviceChoice::Cuda(0),
            Precision::F32,
            1,
            1024,
            DEFAULT_CUDA_OVERHEAD_BYTES,
        );
        assert_eq!(need.weights_bytes, 124_439_808 * 4);
        // 2 (k, v) x 12 layers x 1024 positions x 768 x 4 bytes = 72 MiB.
        assert_eq!(need.kv_cache_bytes, 72 * MIB);
        assert!(check_fit(
            &cfg,
            DeviceChoice::Cuda(0),
            Precision::F32,
            1,
            1024,
            0,
            10_000 * MIB,
            None
        )
        .is_ok());
    }

    #[test]
    fn refusal_offers_half_precision_fewer_variations_and_cpu() {
        let cfg = Gpt2Config::gpt2_124m();
        let overhead = 600 * MIB;
        // f32 with 8 variations: 475 + 576 + 600 MiB; give it 1,300 MiB.
        let refusal = check_fit(
            &cfg,
            DeviceChoice::Cuda(0),
            Precision::F32,
            8,
            1024,
            overhead,
            1300 * MIB,
            Some(64_000 * MIB),
        )
        .unwrap_err();
        assert!(refusal.need.total() > refusal.free_bytes);
        assert!(refusal
            .options
            .iter()
            .any(|o| matches!(o, FitOption::Cpu { .. })));
        assert!(refusal.options.iter().any(|o| matches!(
            o,
            FitOption::Precision {
                precision: Precision::F16,
                ..
            }
        )));
        assert!(refusal
            .options
            .iter()
            .any(|o| matches!(o, FitOption::Variations { max: 3, .. })));
        assert!(refusal
            .options
            .iter()
            .any(|o| matches!(o, FitOption::Context { .. })));
        for o in &refusal.options {
            let need = match o {
                FitOption::Precision { need_bytes, .. }
                | FitOption::Variations { need_bytes, .. }
                | FitOption::Context { need_bytes, .. } => *need_bytes,
                FitOption::Cpu { .. } => continue,
            };
            assert!(need <= 1300 * MIB, "offered option must fit: {o:?}");
        }
        let text = refusal.to_string();
        assert!(
            text.contains("MiB") && text.contains("what would fit"),
            "{text}"
        );
    }

    #[test]
    fn half_precision_on_cpu_halves_the_weights_but_keeps_an_f32_kv_cache() {
        let cfg = Gpt2Config::gpt2_124m();
        let gpu = FitNeed::new(&cfg, DeviceChoice::Cuda(0), Precision::F16, 1, 1024, 0);
        let cpu = FitNeed::new(&cfg, DeviceChoice::Cpu, Precision::F16, 1, 1024, 0);
        assert_eq!(cpu.weights_bytes, 124_439_808 * 2);
        assert_eq!(cpu.weights_bytes, gpu.weights_bytes);
        assert_eq!(cpu.kv_cache_bytes, 72 * MIB);
        assert_eq!(gpu.kv_cache_bytes, 36 * MIB);
        // f32 on a CPU short of RAM: f16 is offered there too.
        let refusal = check_fit(
            &cfg,
            DeviceChoice::Cpu,
            Precision::F32,
            1,
            1024,
            0,
            400 * MIB,
            None,
        )
        .unwrap_err();
        assert!(
            refusal.options.iter().any(|o| matches!(
                o,
                FitOption::Precision { precision: Precision::F16, need_bytes } if *need_bytes <= 400 * MIB
            )),
            "{refusal}"
        );
    }

    #[test]
    fn nothing_fits_means_no_options() {
        let cfg = Gpt2Config::gpt2_124m();
        let refusal = check_fit(
            &cfg,
            DeviceChoice::Cpu,
            Precision::F32,
            1,
            1024,
            0,
            MIB,
            Some(MIB),
        )
        .unwrap_err();
        assert!(refusal.options.is_empty());
    }
}
