//! AdamW with decoupled weight decay (on matrices only) and a state that can be
//! saved and restored, so training resumes exactly.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};

pub struct AdamW {
    /// Sorted by name, for determinism.
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(mut params: Vec<(String, Var)>, weight_decay: f64) -> candle_core::Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        let v = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            m,
            v,
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
        self.update(grads, lr, |g| g.broadcast_mul(grad_scale))
    }

    fn update(
        &mut self,
        grads: &GradStore,
        lr: f64,
        scale: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (name, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: the moments outlive the step and must not keep its graph alive.
            let g = scale(&g.detach())?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
            let theta = var.as_tensor();
            // Decay matrices only (not biases, layer norms).
            let decayed = if theta.rank() >= 2 && self.weight_decay > 0.0 {
                (theta * (1.0 - lr * self.weight_decay))?
            } else {
                theta.clone()
            };
            var.set(&(decayed - (update * lr)?)?.detach())?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
            let _ = name;
        }
        Ok(())
    }

    /// Moments as named tensors, for saving.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut s = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            s.insert(format!("m.{name}"), self.m[i].clone());
            s.insert(format!("v.{name}"), self.v[i].clone());
        }
        s
    }

    /// Restores moments saved by [`AdamW::state`].
    pub fn restore(
        &mut self,
        state: &HashMap<String, Tensor>,
        step: usize,
    ) -> candle_core::Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            let dev = var.as_tensor().device();
            if let (Some(m), Some(v)) = (
                state.get(&format!("m.{name}")),
                state.get(&format!("v.{name}")),
            ) {
                self.m[i] = m.to_device(dev)?;
                self.v[i] = v.to_device(dev)?;
            }
        }
        self.step = step;
        Ok(())
    }
}
