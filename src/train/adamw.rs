//! AdamW with decoupled weight decay (on matrices only) and a state that can be
//! saved and restored, so training resumes exactly. Each parameter's update
//! is two fused in-place passes (`super::adamw_fused`), not a dozen tensor ops.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use super::adamw_fused::{MomentsStep, ParamStep};

pub struct AdamW {
    /// Sorted by name, for determinism.
    params: Vec<(String, Var)>,
    /// Per parameter, `(2, numel)` f32: the first moment, then the second.
    moments: Vec<Tensor>,
    pub step: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(mut params: Vec<(String, Var)>, weight_decay: f64) -> candle_core::Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = params
            .iter()
            .map(|(_, v)| {
                let t = v.as_tensor();
                Tensor::zeros((2, t.elem_count()), DType::F32, t.device())
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            moments,
            step: 0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// The global L2 norm of the gradients, on the device (no sync): a
    /// scalar f32 tensor.
    pub fn grad_norm_tensor(&self, grads: &GradStore) -> candle_core::Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for (_, var) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                let s = g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
            }
        }
        total.map(|t| t.sqrt()).transpose()
    }

    /// One update with the gradients scaled by `grad_scale`, a scalar tensor
    /// on the device (clipping worked out there, so the step needs no sync).
    pub fn step_scaled_by(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: &Tensor,
    ) -> candle_core::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let moments_step = MomentsStep {
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
        };
        let scale = grad_scale.to_dtype(DType::F32)?.flatten_all()?;
        for ((_, var), moments) in self.params.iter().zip(&self.moments) {
            let theta = var.as_tensor();
            let Some(g) = grads.get(theta) else {
                continue;
            };
            let g = g
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .contiguous()?;
            moments.inplace_op3(&g, &scale, &moments_step)?;
            // Decay matrices only (not biases, layer norms).
            let decayed = theta.rank() >= 2 && self.weight_decay > 0.0;
            let param_step = ParamStep {
                lr: lr as f32,
                bc1: (1.0 - self.beta1.powi(t)) as f32,
                bc2: (1.0 - self.beta2.powi(t)) as f32,
                eps: self.eps as f32,
                decay: if decayed {
                    (lr * self.weight_decay) as f32
                } else {
                    0.0
                },
            };
            theta.inplace_op2(moments, &param_step)?;
        }
        Ok(())
    }

    /// Moments as named tensors, for saving.
    pub fn state(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut s = HashMap::new();
        for ((name, var), moments) in self.params.iter().zip(&self.moments) {
            let shape = var.as_tensor().shape();
            for (i, which) in ["m", "v"].iter().enumerate() {
                s.insert(format!("{which}.{name}"), moments.get(i)?.reshape(shape)?);
            }
        }
        Ok(s)
    }

    /// Restores moments saved by [`AdamW::state`].
    pub fn restore(
        &mut self,
        state: &HashMap<String, Tensor>,
        step: usize,
    ) -> candle_core::Result<()> {
        for ((name, var), moments) in self.params.iter().zip(self.moments.iter_mut()) {
            let dev = var.as_tensor().device();
            if let (Some(m), Some(v)) = (
                state.get(&format!("m.{name}")),
                state.get(&format!("v.{name}")),
            ) {
                let n = var.as_tensor().elem_count();
                if m.elem_count() != n || v.elem_count() != n {
                    candle_core::bail!(
                        "optimizer state for {name}: {} and {} values, the parameter has {n}",
                        m.elem_count(),
                        v.elem_count()
                    );
                }
                let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.unsqueeze(0);
                *moments = Tensor::cat(&[flat(m)?, flat(v)?], 0)?.to_device(dev)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
