//! One optimiser step: gradients (with loss scaling in f16), accumulation,
//! clipping and AdamW.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// Adds `more` into `acc`, parameter by parameter.
pub(super) fn add_grads(
    acc: &mut candle_core::backprop::GradStore,
    more: &candle_core::backprop::GradStore,
    params: &[(String, Var)],
) -> candle_core::Result<()> {
    for (_, var) in params {
        let v = var.as_tensor();
        if let Some(g) = more.get(v) {
            let sum = match acc.get(v) {
                Some(a) => (a + g)?,
                None => g.clone(),
            };
            acc.insert(v, sum);
        }
    }
    Ok(())
}

/// The model computing in `dtype` from the f32 master weights: each weight is
/// cast (a tracked op, so gradients reach the f32 variables).
pub(super) fn model_in(
    params: &[(String, Var)],
    cfg: &Gpt2Config,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Gpt2> {
    let cast = params
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<String, Tensor>>>()?;
    Gpt2::load_uniform(VarBuilder::from_tensors(cast, dtype, device), cfg)
}

/// f16's dynamic loss scale: halved when gradients overflow (the step is
/// skipped), doubled after a run of good steps.
pub(super) struct LossScale {
    pub(super) scale: f64,
    pub(super) good: usize,
}

impl LossScale {
    pub(super) const GROW_AFTER: usize = 500;

    pub(super) fn for_compute(dtype: DType) -> Self {
        Self {
            scale: if dtype == DType::F16 { 65536.0 } else { 1.0 },
            good: 0,
        }
    }

    /// Whether to take the step; adjusts the scale.
    pub(super) fn update(&mut self, grads_finite: bool, dynamic: bool) -> bool {
        if !dynamic {
            return true;
        }
        if grads_finite {
            self.good += 1;
            if self.good % Self::GROW_AFTER == 0 {
                self.scale *= 2.0;
            }
            true
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good = 0;
            false
        }
    }
}

/// Why [`step_gradients`] failed: a tensor error (placed at its step by the
/// caller) or the batch thread.
pub(super) enum StepFailure {
    Tensor(candle_core::Error),
    Run(TrainError),
}

impl From<candle_core::Error> for StepFailure {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor(e)
    }
}

impl StepFailure {
    pub(super) fn at(self, step: usize) -> TrainError {
        match self {
            Self::Tensor(source) => TrainError::Step { step, source },
            Self::Run(e) => e,
        }
    }
}

/// One step's mean loss (unscaled) and gradients (scaled by `loss_scale`):
/// `grad_accum` micro-batches from `prefetch`, each backward pass summed in.
pub(super) fn step_gradients(
    model: &Gpt2,
    prefetch: &BatchPrefetch,
    rng: &mut BatchRng,
    params: &[(String, Var)],
    mask: &Tensor,
    o: &TrainOptions,
    loss_scale: f64,
) -> Result<(Tensor, candle_core::backprop::GradStore), StepFailure> {
    let mut grads: Option<candle_core::backprop::GradStore> = None;
    let mut loss: Option<Tensor> = None;
    let device = mask.device();
    for _ in 0..o.grad_accum {
        let drawn = prefetch.next().map_err(StepFailure::Run)?;
        *rng = BatchRng(drawn.rng_after);
        let x = Tensor::from_vec(drawn.x, (o.batch_size, o.context), device)?;
        let y = Tensor::from_vec(drawn.y, (o.batch_size, o.context), device)?;
        let micro = loss_on(model, &x, &y, mask)?;
        let g = (&micro * (loss_scale / o.grad_accum as f64))?.backward()?;
        match grads.as_mut() {
            Some(acc) => add_grads(acc, &g, params)?,
            None => grads = Some(g),
        }
        loss = Some(match loss {
            Some(l) => (l + micro.detach())?,
            None => micro.detach(),
        });
    }
    match (loss, grads) {
        (Some(loss), Some(grads)) => Ok(((loss / o.grad_accum as f64)?, grads)),
        _ => Err(StepFailure::Run(TrainError::Invalid {
            field: "grad_accum",
            problem: "must be at least 1 (micro-batches per step)".into(),
        })),
    }
}

/// Every trainable variable with its checkpoint name.
pub(super) fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>, TrainError> {
    let data = varmap.data().lock().map_err(|_| TrainError::Invalid {
        field: "parameters",
        problem: "a training thread panicked while holding them".into(),
    })?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Clips and applies one step's gradients (scaled by the loss scale) with the
/// clip factor worked out on the device; returns the unscaled gradient norm
/// when it was read back (f16's overflow check, logged steps), else NaN.
#[allow(clippy::too_many_arguments)]
pub(super) fn clipped_step(
    opt: &mut AdamW,
    grads: &candle_core::backprop::GradStore,
    lr: f64,
    o: &TrainOptions,
    loss_scale: &mut LossScale,
    dynamic_scale: bool,
    logging: bool,
    device: &Device,
) -> candle_core::Result<f64> {
    let used_scale = loss_scale.scale;
    // The gradient norm stays on the device except where the host needs it.
    let norm_t = opt
        .grad_norm_tensor(grads)?
        .map(|n| n / used_scale)
        .transpose()?;
    let norm = match (&norm_t, dynamic_scale || logging) {
        (Some(t), true) => f64::from(t.to_scalar::<f32>()?),
        (None, true) => 0.0,
        (_, false) => f64::NAN,
    };
    let finite = !dynamic_scale || norm.is_finite();
    if loss_scale.update(finite, dynamic_scale) {
        // grad_clip / max(norm, grad_clip), and the loss scale undone.
        let factor = match &norm_t {
            Some(n) => ((n.maximum(o.grad_clip)?.recip()?) * (o.grad_clip / used_scale))?,
            None => Tensor::new(1.0f32 / used_scale as f32, device)?,
        };
        opt.step_scaled_by(grads, lr, &factor)?;
    }
    Ok(norm)
}
