//! AdamW's update as two in-place passes per parameter instead of a dozen
//! tensor ops: [`MomentsStep`] updates both moments from the gradient (scaled
//! on the device), [`ParamStep`] updates the parameter from the moments. On a
//! GPU that is two kernel launches per parameter (`adamw_fused.cu`, compiled
//! to PTX at build time) and no allocation; on the CPU two passes over memory, on all cores.
//!
//! Owns only the arithmetic and where it runs. The moments of a parameter are
//! one `(2, numel)` f32 tensor, `m` then `v`; parameters and gradients are
//! contiguous f32. The optimizer (`super::adamw`) owns the state and the
//! schedule.

use candle_core::{CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;

/// Values per rayon task on the CPU.
const CPU_CHUNK: usize = 1 << 14;

/// `m = β1·m + (1-β1)·g·s`, `v = β2·v + (1-β2)·(g·s)²`, in place on the
/// `(2, n)` moments, with `g` the gradient `(n)` and `s` a one-value scale.
#[derive(Debug, Clone, Copy)]
pub struct MomentsStep {
    pub beta1: f32,
    pub beta2: f32,
}

/// `θ = θ·(1 - decay) - lr·(m/bc1) / (sqrt(v/bc2) + eps)`, in place on the
/// parameter, from the `(2, n)` moments.
#[derive(Debug, Clone, Copy)]
pub struct ParamStep {
    pub lr: f32,
    /// `1 - β1^t`.
    pub bc1: f32,
    /// `1 - β2^t`.
    pub bc2: f32,
    pub eps: f32,
    /// `lr · weight_decay` for a decayed parameter, else 0.
    pub decay: f32,
}

/// The `[start, end)` of a contiguous f32 operand, or an error naming it.
fn f32_range(
    name: &str,
    what: &str,
    s: &CpuStorage,
    l: &Layout,
) -> candle_core::Result<(usize, usize)> {
    let dtype = candle_core::backend::BackendStorage::dtype(s);
    if dtype != DType::F32 {
        return Err(candle_core::Error::Msg(format!(
            "{name}: {what} must be f32, found {dtype:?}"
        )));
    }
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: {what} is not contiguous")))
}

fn contiguous<'a>(
    name: &str,
    what: &str,
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let (a, b) = f32_range(name, what, s, l)?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn contiguous_mut<'a>(
    name: &str,
    what: &str,
    s: &'a mut CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let (a, b) = f32_range(name, what, s, l)?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "{name}: {what} must be f32"
        ))),
    }
}

fn lengths_differ(name: &str, moments: usize, n: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{name}: the moments hold {moments} values, not 2 x {n}"
    ))
}

impl InplaceOp3 for MomentsStep {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(
        &self,
        mv: &mut CpuStorage,
        l_mv: &Layout,
        g: &CpuStorage,
        l_g: &Layout,
        scale: &CpuStorage,
        l_s: &Layout,
    ) -> candle_core::Result<()> {
        let name = self.name();
        let g = contiguous(name, "the gradient", g, l_g)?;
        let s = *contiguous(name, "the scale", scale, l_s)?
            .first()
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: the scale is empty")))?;
        let mv = contiguous_mut(name, "the moments", mv, l_mv)?;
        if mv.len() != 2 * g.len() {
            return Err(lengths_differ(name, mv.len(), g.len()));
        }
        let (m, v) = mv.split_at_mut(g.len());
        let (b1, b2) = (self.beta1, self.beta2);
        m.par_chunks_mut(CPU_CHUNK)
            .zip(v.par_chunks_mut(CPU_CHUNK))
            .zip(g.par_chunks(CPU_CHUNK))
            .for_each(|((m, v), g)| {
                for ((m, v), g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
                    let g = g * s;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        mv: &mut candle_core::CudaStorage,
        l_mv: &Layout,
        g: &candle_core::CudaStorage,
        l_g: &Layout,
        scale: &candle_core::CudaStorage,
        l_s: &Layout,
    ) -> candle_core::Result<()> {
        cuda::moments(self, mv, l_mv, g, l_g, scale, l_s)
    }
}

impl InplaceOp2 for ParamStep {
    fn name(&self) -> &'static str {
        "adamw-param"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        l_theta: &Layout,
        mv: &CpuStorage,
        l_mv: &Layout,
    ) -> candle_core::Result<()> {
        let name = self.name();
        let mv = contiguous(name, "the moments", mv, l_mv)?;
        let theta = contiguous_mut(name, "the parameter", theta, l_theta)?;
        if mv.len() != 2 * theta.len() {
            return Err(lengths_differ(name, mv.len(), theta.len()));
        }
        let (m, v) = mv.split_at(theta.len());
        let p = *self;
        theta
            .par_chunks_mut(CPU_CHUNK)
            .zip(m.par_chunks(CPU_CHUNK))
            .zip(v.par_chunks(CPU_CHUNK))
            .for_each(|((t, m), v)| {
                for ((t, m), v) in t.iter_mut().zip(m).zip(v) {
                    let update = (m / p.bc1) / ((v / p.bc2).sqrt() + p.eps);
                    *t = *t * (1.0 - p.decay) - p.lr * update;
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        theta: &mut candle_core::CudaStorage,
        l_theta: &Layout,
        mv: &candle_core::CudaStorage,
        l_mv: &Layout,
    ) -> candle_core::Result<()> {
        cuda::param(self, theta, l_theta, mv, l_mv)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching the two kernels of `adamw_fused.cu` (PTX embedded at build
    //! time, loaded into candle's device on first use: its module cache keeps
    //! them per device).

    use candle_core::backend::BackendStorage;
    use candle_core::{CudaStorage, InplaceOp2, InplaceOp3, Layout};
    use cudarc::driver::{LaunchConfig, PushKernelArg};

    use super::{MomentsStep, ParamStep};

    const MODULE: &str = "versifier_adamw";

    /// The kernels' PTX, compiled from `adamw_fused.cu` by build.rs.
    const PTX: &str = crate::model::cuda_kernels::ADAMW_FUSED;

    fn range(l: &Layout, what: &str) -> candle_core::Result<(usize, usize)> {
        l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("fused AdamW: {what} is not contiguous"))
        })
    }

    fn launch_error(e: cudarc::driver::DriverError) -> candle_core::Error {
        candle_core::Error::Msg(format!("fused AdamW kernel: {e:?}"))
    }

    pub fn moments(
        op: &MomentsStep,
        mv: &mut CudaStorage,
        l_mv: &Layout,
        g: &CudaStorage,
        l_g: &Layout,
        scale: &CudaStorage,
        l_s: &Layout,
    ) -> candle_core::Result<()> {
        let ((ma, mb), (ga, gb), (sa, sb)) = (
            range(l_mv, "the moments")?,
            range(l_g, "the gradient")?,
            range(l_s, "the scale")?,
        );
        let n = gb - ga;
        if mb - ma != 2 * n || sb - sa < 1 {
            return Err(super::lengths_differ(InplaceOp3::name(op), mb - ma, n));
        }
        let n32 = u32::try_from(n)
            .map_err(|_| candle_core::Error::Msg(format!("fused AdamW: {n} values is too many")))?;
        let func = mv
            .device()
            .get_or_load_custom_func("versifier_adamw_moments", MODULE, PTX)?;
        let g = g.as_cuda_slice::<f32>()?.slice(ga..gb);
        let s = scale.as_cuda_slice::<f32>()?.slice(sa..sb);
        let mut mv = mv.as_cuda_slice_mut::<f32>()?.slice_mut(ma..mb);
        let (b1, b2) = (op.beta1, op.beta2);
        let mut b = func.builder();
        b.arg(&mut mv).arg(&g).arg(&s).arg(&n32).arg(&b1).arg(&b2);
        // SAFETY: the arguments match the kernel's signature; it reads `n`
        // gradients and one scale and writes `2n` moments, the lengths checked above.
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }.map_err(launch_error)?;
        Ok(())
    }

    pub fn param(
        op: &ParamStep,
        theta: &mut CudaStorage,
        l_theta: &Layout,
        mv: &CudaStorage,
        l_mv: &Layout,
    ) -> candle_core::Result<()> {
        let ((ta, tb), (ma, mb)) = (
            range(l_theta, "the parameter")?,
            range(l_mv, "the moments")?,
        );
        let n = tb - ta;
        if mb - ma != 2 * n {
            return Err(super::lengths_differ(InplaceOp2::name(op), mb - ma, n));
        }
        let n32 = u32::try_from(n)
            .map_err(|_| candle_core::Error::Msg(format!("fused AdamW: {n} values is too many")))?;
        let func = theta
            .device()
            .get_or_load_custom_func("versifier_adamw_param", MODULE, PTX)?;
        let mv = mv.as_cuda_slice::<f32>()?.slice(ma..mb);
        let mut theta = theta.as_cuda_slice_mut::<f32>()?.slice_mut(ta..tb);
        let mut b = func.builder();
        b.arg(&mut theta)
            .arg(&mv)
            .arg(&n32)
            .arg(&op.lr)
            .arg(&op.bc1)
            .arg(&op.bc2)
            .arg(&op.eps)
            .arg(&op.decay);
        // SAFETY: the arguments match the kernel's signature; it reads `2n`
        // moments and updates `n` parameters, the lengths checked above.
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }.map_err(launch_error)?;
        Ok(())
    }
}

/// How the fused passes compared with AdamW written as tensor ops on one
/// device (what `versifier selftest` reports, so a GPU machine without Rust
/// checks the CUDA kernels too).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FusedAdamwCheck {
    pub device: String,
    pub values: usize,
    pub steps: usize,
    /// Largest difference in the first moment, the second and the parameter.
    pub max_m_diff: f32,
    pub max_v_diff: f32,
    pub max_param_diff: f32,
    /// Largest change of the parameter over the steps (not a comparison of no-ops).
    pub parameter_moved: f32,
    pub passed: bool,
}

/// Largest difference between the fused passes and the tensor-op reference
/// that still passes (f32 rounding of a few steps; fused multiply-adds on a GPU).
pub const FUSED_ADAMW_TOLERANCE: f32 = 1e-5;

/// AdamW written as separate tensor ops (the optimizer before fusing).
fn reference_step(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    g: &Tensor,
    (b1, b2, lr, eps, wd, t, scale): (f64, f64, f64, f64, f64, i32, f64),
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let g = (g * scale)?;
    let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
    let theta = ((theta * (1.0 - lr * wd))? - (update * lr)?)?;
    Ok((theta, m, v))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Five AdamW steps on random values (a ragged length: several CPU tasks,
/// several GPU blocks and a partial one), fused and as tensor ops, on `device`.
pub fn check_fused_adamw(device: &Device) -> candle_core::Result<FusedAdamwCheck> {
    let n = 3 * CPU_CHUNK + 17;
    let steps = 5;
    let start = Tensor::randn(0f32, 1.0, n, device)?;
    let theta = start.copy()?;
    let zeros = Tensor::zeros(n, DType::F32, device)?;
    let (mut rt, mut rm, mut rv) = (start.copy()?, zeros.clone(), zeros);
    let moments = Tensor::zeros((2, n), DType::F32, device)?;
    let (b1, b2, lr, eps, wd, scale): (f64, f64, f64, f64, f64, f64) =
        (0.9, 0.95, 3e-3, 1e-8, 0.1, 0.5);
    let scale_t = Tensor::new(&[scale as f32], device)?;
    let (mut dm, mut dv, mut dp) = (0f32, 0f32, 0f32);
    for t in 1..=steps {
        let g = Tensor::randn(0f32, 1.0, n, device)?;
        moments.inplace_op3(
            &g,
            &scale_t,
            &MomentsStep {
                beta1: b1 as f32,
                beta2: b2 as f32,
            },
        )?;
        theta.inplace_op2(
            &moments,
            &ParamStep {
                lr: lr as f32,
                bc1: (1.0 - b1.powi(t)) as f32,
                bc2: (1.0 - b2.powi(t)) as f32,
                eps: eps as f32,
                decay: (lr * wd) as f32,
            },
        )?;
        (rt, rm, rv) = reference_step(&rt, &rm, &rv, &g, (b1, b2, lr, eps, wd, t, scale))?;
        dm = dm.max(max_abs_diff(&moments.get(0)?, &rm)?);
        dv = dv.max(max_abs_diff(&moments.get(1)?, &rv)?);
        dp = dp.max(max_abs_diff(&theta, &rt)?);
    }
    let moved = max_abs_diff(&theta, &start)?;
    let passed = [dm, dv, dp].iter().all(|d| *d < FUSED_ADAMW_TOLERANCE) && moved > 0.0;
    Ok(FusedAdamwCheck {
        device: format!("{:?}", device.location()),
        values: n,
        steps: steps as usize,
        max_m_diff: dm,
        max_v_diff: dv,
        max_param_diff: dp,
        parameter_moved: moved,
        passed,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect
mod tests {
    use super::*;

    #[test]
    fn the_fused_passes_match_adamw_written_as_tensor_ops_over_several_steps() {
        let check = check_fused_adamw(&Device::Cpu).unwrap();
        assert!(check.passed, "{check:?}");
        assert_eq!(check.steps, 5);
        // The parameter really moved (the comparison is not between two no-ops).
        assert!(
            check.parameter_moved > 100.0 * FUSED_ADAMW_TOLERANCE,
            "{check:?}"
        );
    }

    #[test]
    fn mismatched_moments_and_wrong_dtypes_are_errors_that_name_the_op() {
        let dev = Device::Cpu;
        let g = Tensor::zeros(8, candle_core::DType::F32, &dev).unwrap();
        let scale = Tensor::new(&[1f32], &dev).unwrap();
        let short = Tensor::zeros((2, 7), candle_core::DType::F32, &dev).unwrap();
        let op = MomentsStep {
            beta1: 0.9,
            beta2: 0.95,
        };
        let err = short.inplace_op3(&g, &scale, &op).unwrap_err().to_string();
        assert!(
            err.contains("adamw-moments") && err.contains("2 x 8"),
            "{err}"
        );
        let g16 = g.to_dtype(candle_core::DType::F16).unwrap();
        let ok = Tensor::zeros((2, 8), candle_core::DType::F32, &dev).unwrap();
        let err = ok.inplace_op3(&g16, &scale, &op).unwrap_err().to_string();
        assert!(err.contains("gradient must be f32"), "{err}");
    }
}
