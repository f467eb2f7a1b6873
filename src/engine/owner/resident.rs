//! The resident model: opening its device, loading it, the hot swap beside the
//! current one, and Precision auto's timing.

#[allow(clippy::wildcard_imports)] // the owner's imports, as if this were owner.rs
use super::*;

impl OwnerThread {
    /// Opens the device for `spec`, falling back to the CPU (said once) when CUDA
    /// is not available at all.
    pub(super) fn open_for(
        &mut self,
        spec: &LoadSpec,
        batch: usize,
    ) -> Result<OpenedDevice, JobFailure> {
        // Counted before it opens, so no other engine's release resets the
        // context under it.
        let context = ContextUser::acquire(spec.device);
        match open_device(spec.device) {
            Ok(device) => Ok(OpenedDevice {
                device,
                actual: spec.device,
                precision: spec.precision,
                context,
            }),
            Err(e) if spec.device != DeviceChoice::Cpu && !is_out_of_memory(&e.to_string()) => {
                if !self.cuda_fallback_reported {
                    self.cuda_fallback_reported = true;
                    self.emit(Event::Notice(format!(
                        "{} is not available: {e}; running on the CPU instead",
                        spec.device
                    )));
                }
                Ok(OpenedDevice {
                    device: Device::Cpu,
                    actual: DeviceChoice::Cpu,
                    precision: spec.precision,
                    context: ContextUser::acquire(DeviceChoice::Cpu),
                })
            }
            Err(e) if is_out_of_memory(&e.to_string()) => Err(self.out_of_memory_failure(
                MemoryStage::OpenDevice,
                spec,
                batch,
                &e.to_string(),
            )),
            Err(e) => Err(JobFailure::new(ErrorKind::Device, e.to_string())),
        }
    }

    /// Loads `spec` onto an opened device (used by both direct loads and swaps).
    pub(super) fn load_resident(
        spec: &LoadSpec,
        opened: OpenedDevice,
        progress: Option<(mpsc::Sender<Event>, Option<Waker>)>,
    ) -> Result<Resident, JobFailure> {
        let OpenedDevice {
            device,
            actual,
            precision,
            context,
        } = opened;
        let started = Instant::now();
        let rss_before = process_memory().map(|m| m.rss_bytes);
        let progress = progress.map(|(events, waker)| -> LoadProgress {
            // Report in 10% steps so a load is a handful of events, not one per tensor.
            let last = std::sync::atomic::AtomicU32::new(0);
            Box::new(move |p: f32| {
                let step = (p * 10.0).floor() as u32;
                if step > last.swap(step, Ordering::Relaxed) {
                    if let Some(w) = &waker {
                        w();
                    }
                    let _ = events.send(Event::State(EngineState::Loading {
                        progress: step as f32 / 10.0,
                    }));
                }
            })
        });
        match load_model_with_progress(&spec.model, &device, precision.dtype(), progress) {
            Ok(model) => {
                let params = model.config.param_count();
                let report = LoadReport {
                    spec: spec.clone(),
                    device: actual,
                    load_ms: started.elapsed().as_secs_f64() * 1000.0,
                    params,
                    weights_bytes: params * precision.bytes(),
                    gpu_before_bytes: None,
                    gpu_after_bytes: None,
                    rss_before_bytes: rss_before,
                    rss_after_bytes: process_memory().map(|m| m.rss_bytes),
                };
                Ok(Resident {
                    spec: spec.clone(),
                    actual,
                    model,
                    device,
                    report,
                    context,
                })
            }
            Err(e) => {
                let message = e.to_string();
                let kind = if is_out_of_memory(&message) {
                    ErrorKind::OutOfMemory
                } else {
                    ErrorKind::BadModel
                };
                Err(JobFailure::new(kind, message))
            }
        }
    }

    /// Makes `spec` the resident model, loading it (after a fit check for `batch`
    /// sequences) unless it already is. One load at a time, ever: a swap in
    /// flight is finished first.
    pub(super) fn ensure_loaded(
        &mut self,
        spec: &LoadSpec,
        batch: usize,
    ) -> Result<(), JobFailure> {
        // The current model keeps serving while a swap loads beside it.
        if self.loaded.as_ref().is_some_and(|r| r.serves(spec)) {
            return Ok(());
        }
        self.wait_for_swap();
        if self.loaded.as_ref().is_some_and(|r| r.serves(spec)) {
            return Ok(());
        }
        if self.loaded.is_some() {
            self.release(ReleaseReason::ModelChange);
        }
        self.set_state(EngineState::Loading { progress: 0.0 });
        let fit_device = if spec.device != DeviceChoice::Cpu
            && *crate::device::cuda_runtime() != crate::device::CudaRuntime::Ready
        {
            DeviceChoice::Cpu
        } else {
            spec.device
        };
        if let Err(f) = self.check_fit(spec, fit_device, batch) {
            self.set_state(EngineState::Unloaded);
            return Err(f);
        }
        let gpu_before = self.gpu_process_bytes(spec.device);
        let opened = self.open_for(spec, batch)?;
        let actual = opened.actual;
        let mut resident = match Self::load_resident(
            spec,
            opened,
            Some((self.events.clone(), self.waker.clone())),
        ) {
            Ok(r) => r,
            Err(f) => {
                // Nothing of the failed load may keep the context alive.
                self.reset_cuda_context(actual);
                if f.kind == ErrorKind::OutOfMemory {
                    return Err(self.out_of_memory_failure(
                        MemoryStage::Load,
                        spec,
                        batch,
                        &f.message,
                    ));
                }
                return Err(f);
            }
        };
        resident.report.gpu_before_bytes = gpu_before;
        resident.report.gpu_after_bytes = self.gpu_process_bytes(actual);
        if let (Some(after), Some(before)) = (resident.report.gpu_after_bytes, gpu_before) {
            // Learn this machine's runtime overhead for the next fit check.
            let weights = resident.report.weights_bytes as u64;
            self.cuda_overhead = after.saturating_sub(before).saturating_sub(weights).max(1);
        }
        self.emit(Event::Loaded(resident.report.clone()));
        self.loaded = Some(resident);
        self.set_state(EngineState::Ready);
        Ok(())
    }

    /// Starts a hot swap: the new model loads on a loader thread beside the
    /// current one, which keeps serving.
    pub(super) fn start_swap(&mut self, spec: LoadSpec) {
        self.wait_for_swap();
        let Some(current) = self.loaded.as_ref() else {
            // Nothing to keep serving: a plain load.
            if let Err(f) = self.ensure_loaded(&spec, 1) {
                self.fail(None, f);
            } else {
                self.touch();
            }
            return;
        };
        if current.spec == spec {
            return;
        }
        // Both at once must fit, or the current one goes first.
        let same_gpu = current.actual == spec.device && spec.device != DeviceChoice::Cpu;
        let current_device = current.device.clone();
        let current_actual = current.actual;
        if same_gpu && self.check_fit(&spec, spec.device, 1).is_err() {
            self.emit(Event::Notice(format!(
                "{} does not fit beside the current model; releasing the current one first",
                spec.model.display()
            )));
            if let Err(f) = self.ensure_loaded(&spec, 1) {
                self.fail(None, f);
            } else {
                self.touch();
            }
            return;
        }
        let opened = if same_gpu {
            Ok(OpenedDevice {
                device: current_device,
                actual: current_actual,
                precision: spec.precision,
                context: ContextUser::acquire(current_actual),
            })
        } else {
            self.open_for(&spec, 1)
        };
        let opened = match opened {
            Ok(d) => d,
            Err(f) => return self.fail(None, f),
        };
        let tx = self.loader_tx.clone();
        let load_spec = spec.clone();
        let spawned = std::thread::Builder::new()
            .name("versifier-loader".into())
            .spawn(move || {
                // Loaded, and writes a token, before it serves anyone.
                let result = catch_unwind(AssertUnwindSafe(|| {
                    Self::load_resident(&load_spec, opened, None).and_then(|r| {
                        super::super::first_token::write_first_token(&r.model)
                            .map(|()| r)
                            .map_err(|m| JobFailure::new(ErrorKind::BadModel, m))
                    })
                }))
                .unwrap_or_else(|_| {
                    Err(JobFailure::new(
                        ErrorKind::Internal,
                        "the loader thread panicked".into(),
                    ))
                });
                let _ = tx.send(Inbox::SwapLoaded(Box::new(result)));
            });
        match spawned {
            Ok(thread) => self.swap = Some(SwapInFlight { spec, thread }),
            Err(e) => self.fail(
                None,
                JobFailure::new(
                    ErrorKind::Internal,
                    format!("could not start the loader thread: {e}"),
                ),
            ),
        }
    }

    /// Blocks until a swap in flight has delivered its result, and applies it.
    pub(super) fn wait_for_swap(&mut self) {
        while self.swap.is_some() {
            match self.inbox.recv() {
                Ok(Inbox::SwapLoaded(result)) => self.finish_swap(*result),
                // Commands that arrive meanwhile are handled after the swap, in order.
                Ok(Inbox::Command(cmd)) => self.deferred.push_back(cmd),
                Err(_) => {
                    if let Some(s) = self.swap.take() {
                        let _ = s.thread.join();
                    }
                }
            }
        }
    }

    /// Switches to a freshly loaded model, or keeps the old one when the load failed.
    pub(super) fn finish_swap(&mut self, result: Result<Resident, JobFailure>) {
        let Some(swap) = self.swap.take() else { return };
        let _ = swap.thread.join();
        match result {
            Ok(new) => {
                let old = self.loaded.replace(new);
                let old_device = old.as_ref().map(|o| o.actual);
                drop(old);
                // An old model on another GPU leaves that context behind: reset it.
                if let Some(d) = old_device {
                    if self.loaded.as_ref().is_some_and(|n| n.actual != d) {
                        self.reset_cuda_context(d);
                    }
                }
                if let Some(r) = self.loaded.as_ref() {
                    self.emit(Event::Loaded(r.report.clone()));
                }
                self.set_state(EngineState::Ready);
                self.touch();
            }
            Err(f) => {
                let message = format!(
                    "could not switch to {}: {}; still using the current model",
                    swap.spec.model.display(),
                    f.message
                );
                self.emit(JobFailure { message, ..f }.into_event(None));
            }
        }
    }

    /// Loads `spec`'s model in f32, then in f16, and times decoding `batch`
    /// sequences in each; f16 stays loaded (the pick until this is measured, so
    /// a job sent meanwhile needs no reload).
    pub(super) fn measure_precisions(
        &mut self,
        spec: &LoadSpec,
        batch: usize,
    ) -> Result<PrecisionSpeeds, JobFailure> {
        const PROBE_TOKENS: usize = 48;
        let batch = batch.clamp(1, crate::generate::MAX_VARIATIONS);
        let speed = |engine: &mut Self, precision: Precision| {
            let spec = LoadSpec {
                precision,
                ..spec.clone()
            };
            engine.ensure_loaded(&spec, batch)?;
            let resident = engine.loaded.as_ref().ok_or_else(|| {
                JobFailure::new(ErrorKind::Internal, "model vanished after loading".into())
            })?;
            engine.set_state(EngineState::Generating);
            let tokens_per_s =
                crate::generate::decode_tokens_per_s(&resident.model.model, batch, PROBE_TOKENS)
                    .map_err(|e| JobFailure::new(ErrorKind::Generation, e.to_string()))?;
            Ok::<_, JobFailure>((tokens_per_s, resident.actual))
        };
        let (f32_tokens_per_s, _) = speed(self, Precision::F32)?;
        let (f16_tokens_per_s, device) = speed(self, Precision::F16)?;
        let speeds = PrecisionSpeeds {
            device,
            batch,
            f32_tokens_per_s,
            f16_tokens_per_s,
        };
        Ok(speeds)
    }
}
