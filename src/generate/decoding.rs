//! How a decode keeps its keys and values: the growing cache (the CPU's
//! path) or the static buffers (the GPU's), and what one step gives.

#[allow(clippy::wildcard_imports)] // the module's imports, as if this were mod.rs
use super::*;

/// How a generation keeps its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// A cache that grows by one column per step (the CPU's path: no wasted
    /// attention over empty columns).
    Growing,
    /// Fixed-size buffers written in place, reused across requests of the same
    /// shape, with each step replayed from a CUDA graph when the mode allows
    /// (the GPU's path: launch-bound, so fewer host round-trips win).
    Static(GraphMode),
    /// The static path with each step's tokens drawn on the device
    /// ([`device_draw`]): only the chosen ids cross to the host. Requests the
    /// device cannot draw ([`DrawSettings::of`], or verse rules, which read
    /// the model's probabilities on the host) are drawn on the host.
    StaticDrawnOnDevice(GraphMode),
}

impl DecodePath {
    /// Static with graphs on CUDA (unless `VERSIFIER_CUDA_GRAPHS=0`), its
    /// tokens drawn on the device with `VERSIFIER_DEVICE_DRAWS=1`; growing
    /// elsewhere. Device draws stay opt-in until a GPU machine has run them
    /// (`versifier selftest` reports `device_draws`).
    pub fn for_device(device: &Device) -> Self {
        if !device.is_cuda() {
            return Self::Growing;
        }
        let on_device = matches!(
            std::env::var("VERSIFIER_DEVICE_DRAWS").as_deref(),
            Ok("1") | Ok("on") | Ok("true")
        );
        if on_device {
            Self::StaticDrawnOnDevice(GraphMode::from_env())
        } else {
            Self::Static(GraphMode::from_env())
        }
    }

    /// The device draw of `req` on this path, when it has one.
    pub(super) fn device_draws(self, req: &GenerateRequest, vocab: usize) -> Option<DrawSettings> {
        let rules = req
            .constraint
            .as_ref()
            .is_some_and(|(c, _)| c.enforces_verse_rules());
        match self {
            Self::StaticDrawnOnDevice(_) if !rules => DrawSettings::of(&req.sampling, vocab).ok(),
            _ => None,
        }
    }
}

/// What a step gave: every row's logits on the host, or the ids the device drew.
pub(super) enum Next {
    Logits(Vec<Vec<f32>>),
    Drawn(Vec<u32>),
}

/// The keys and values of one generation, on either path.
pub(super) enum Decoding<'m> {
    Growing(KvCache),
    Static {
        slot: std::sync::MutexGuard<'m, Option<StaticDecoder>>,
        started: bool,
        /// The device draw its steps run, and whether its state has been
        /// written for this decode (after the prompt pass's host draw).
        sampler: Option<(std::sync::Arc<DeviceSampler>, bool)>,
    },
}

impl<'m> Decoding<'m> {
    pub(super) fn open(
        path: DecodePath,
        model: &'m Gpt2,
        rows: usize,
        columns: usize,
        device_draws: bool,
    ) -> Result<Self, GenerateError> {
        let mode = match path {
            DecodePath::Growing => return Ok(Self::Growing(model.new_cache(rows))),
            DecodePath::Static(mode) | DecodePath::StaticDrawnOnDevice(mode) => mode,
        };
        // A poisoned slot means a generation panicked mid-step: its buffers are
        // in an unknown state, so start over with fresh ones.
        let mut slot = model.static_decoder().lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        });
        let reusable = slot
            .as_ref()
            .is_some_and(|d| d.batch() == rows && d.columns() == columns && d.graph_mode() == mode);
        if reusable {
            if let Some(d) = slot.as_mut() {
                d.reset();
            }
        } else {
            // Free the old buffers before allocating the new ones.
            *slot = None;
            *slot = Some(StaticDecoder::new(model, rows, columns, mode)?);
        }
        let mut sampler = None;
        if let Some(d) = slot.as_mut() {
            let vocab = model.config().vocab_size;
            let tail = if device_draws {
                // The decoder's own when it fits: its graph already runs it.
                let s = match d.tail::<DeviceSampler>() {
                    Some(s) if s.batch() == rows && s.vocab() == vocab => s,
                    _ => std::sync::Arc::new(DeviceSampler::new(model.device(), rows, vocab)?),
                };
                sampler = Some((s.clone(), false));
                Some(s)
            } else {
                None
            };
            d.set_tail(tail);
        }
        Ok(Self::Static {
            slot,
            started: false,
            sampler,
        })
    }

    /// The next step: logits on the host, or on a device-drawing decode past
    /// its prompt pass, the ids the device drew.
    pub(super) fn next(&mut self, model: &Gpt2, input: &TokenBatch) -> Result<Next, ForwardError> {
        if let Self::Static {
            slot,
            started: true,
            sampler: Some((sampler, _)),
        } = self
        {
            let Some(decoder) = slot.as_mut() else {
                return Err(ForwardError::Shape("static decoder missing".into()));
            };
            let drawn = decoder
                .step_on_device(model, input)
                .and_then(|()| Ok(sampler.take_ids()?));
            if let Err(e) = &drawn {
                if !matches!(e, ForwardError::ContextFull { .. }) {
                    **slot = None;
                }
            }
            return drawn.map(Next::Drawn);
        }
        self.next_logits(model, input).map(Next::Logits)
    }

    /// The device draw, once the prompt pass has run, and whether its state
    /// has been written for this decode (marked written from now on).
    pub(super) fn device_sampler(&mut self) -> Option<(std::sync::Arc<DeviceSampler>, bool)> {
        match self {
            Self::Static {
                started: true,
                sampler: Some((s, written)),
                ..
            } => Some((s.clone(), std::mem::replace(written, true))),
            _ => None,
        }
    }

    /// Logits of each row's last position after `input`, as f32 rows on the host.
    pub(super) fn next_logits(
        &mut self,
        model: &Gpt2,
        input: &TokenBatch,
    ) -> Result<Vec<Vec<f32>>, ForwardError> {
        match self {
            Self::Growing(cache) => {
                // On the CPU, on a rayon worker (rayon::scope moves it there):
                // the pass's parallel ops then start and join inside the pool
                // instead of waking this thread after each one (~10% of a
                // step). A GPU's pass stays on this thread, where its context
                // is current.
                let logits = if model.device().is_cpu() {
                    rayon::scope(|_| model.forward_last(input, cache))
                } else {
                    model.forward_last(input, cache)
                }?;
                Ok(logits
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .to_vec2::<f32>()?)
            }
            Self::Static { slot, started, .. } => {
                let Some(decoder) = slot.as_mut() else {
                    return Err(ForwardError::Shape("static decoder missing".into()));
                };
                let logits = if *started {
                    decoder.step(model, input)
                } else {
                    *started = true;
                    decoder.prefill(model, input)
                };
                if let Err(e) = &logits {
                    if !matches!(e, ForwardError::ContextFull { .. }) {
                        // Buffers or graph may be half-written: do not reuse them.
                        **slot = None;
                    }
                }
                logits
            }
        }
    }

    pub(super) fn cache_bytes(&self) -> usize {
        match self {
            Self::Growing(cache) => cache.bytes(),
            Self::Static { slot, .. } => slot.as_ref().map_or(0, StaticDecoder::cache_bytes),
        }
    }

    pub(super) fn runner(&self) -> Option<StepRunner> {
        match self {
            Self::Growing(_) => None,
            Self::Static { slot, .. } => slot.as_ref().map(StaticDecoder::runner),
        }
    }

    pub(super) fn kernels(&self) -> Option<StepKernels> {
        match self {
            Self::Growing(_) => None,
            Self::Static { slot, .. } => slot.as_ref().map(StaticDecoder::kernels),
        }
    }
}
