//! What fits: free memory on the device, the fit check before a load, and the
//! report after running out of memory.

#[allow(clippy::wildcard_imports)] // the owner's imports, as if this were owner.rs
use super::*;

impl OwnerThread {
    pub(super) fn gpu_process_bytes(&mut self, device: DeviceChoice) -> Option<u64> {
        let DeviceChoice::Cuda(ordinal) = device else {
            return None;
        };
        let meter = self.meter.get_or_insert_with(GpuMeter::open);
        meter.read(GpuMeter::nvml_index(ordinal))?.process_bytes
    }

    /// Memory free for a model on `device` now (NVML for GPUs, MemAvailable for
    /// RAM), capped by the configured budget.
    pub(super) fn free_bytes(&mut self, device: DeviceChoice) -> Option<u64> {
        let free = match device {
            DeviceChoice::Cpu => available_ram(),
            DeviceChoice::Cuda(o) => {
                let meter = self.meter.get_or_insert_with(GpuMeter::open);
                meter.read(GpuMeter::nvml_index(o)).map(|g| g.free_bytes)
            }
        };
        match (free, self.memory_budget) {
            (Some(f), Some(b)) => Some(f.min(b)),
            (f, b) => f.or(b),
        }
    }

    /// An out-of-memory at `stage`, reported as such with the fit check redone
    /// against the memory free now (so the options are what fits now).
    pub(super) fn out_of_memory_failure(
        &mut self,
        stage: MemoryStage,
        spec: &LoadSpec,
        batch: usize,
        cause: &str,
    ) -> JobFailure {
        let cause = crate::without_backtrace(cause);
        let fit = ModelFiles::locate(&spec.model)
            .ok()
            .and_then(|files| Gpt2Config::from_file(&files.config).ok())
            .map(|cfg| {
                let free = self.free_bytes(spec.device).unwrap_or(0);
                self.fit_on(&cfg, spec, spec.device, batch, free)
            });
        let message = match &fit {
            Some(fit) => out_of_memory_report(stage, &spec.model, fit, &cause),
            None => format!(
                "out of memory while {stage} {}: {cause}",
                spec.model.display()
            ),
        };
        JobFailure {
            kind: ErrorKind::OutOfMemory,
            message,
            partial: None,
            fit: fit.and_then(Result::err).map(Box::new),
        }
    }

    /// The fit check for `spec` on `device` with `free` bytes: this machine's
    /// learned CUDA overhead, and the CPU offered when there is RAM for it.
    pub(super) fn fit_on(
        &mut self,
        cfg: &Gpt2Config,
        spec: &LoadSpec,
        device: DeviceChoice,
        batch: usize,
        free: u64,
    ) -> Result<crate::device::fit::FitNeed, FitRefusal> {
        let (overhead, cpu_free) = if device == DeviceChoice::Cpu {
            (0, None)
        } else {
            (self.cuda_overhead, self.free_bytes(DeviceChoice::Cpu))
        };
        check_fit(
            cfg,
            device,
            spec.precision,
            batch,
            cfg.n_positions,
            overhead,
            free,
            cpu_free,
        )
    }

    /// Refuses a load that would not fit, with the numbers and what would.
    pub(super) fn check_fit(
        &mut self,
        spec: &LoadSpec,
        device: DeviceChoice,
        batch: usize,
    ) -> Result<(), JobFailure> {
        let files = ModelFiles::locate(&spec.model)
            .map_err(|e| JobFailure::new(ErrorKind::BadModel, e.to_string()))?;
        let cfg = Gpt2Config::from_file(&files.config)
            .map_err(|e| JobFailure::new(ErrorKind::BadModel, e.to_string()))?;
        let Some(free) = self.free_bytes(device) else {
            return Ok(());
        };
        match self.fit_on(&cfg, spec, device, batch, free) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(JobFailure {
                kind: ErrorKind::DoesNotFit,
                message: format!("{}: {refusal}", spec.model.display()),
                partial: None,
                fit: Some(Box::new(refusal)),
            }),
        }
    }
}
