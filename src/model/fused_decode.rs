//! Fused kernels for one decode step (`T = 1`): 10 kernels a layer instead of
//! candle's 22, which is most of a captured step's time on a GPU (each small
//! kernel costs a few microseconds whatever it does).
//!
//! Owns: four candle custom ops and their kernels: the cache write (keys and
//! values of the new token scattered into the `(2, B, H, S, hd)` buffer),
//! attention of the one new query over the cache (scores, mask, softmax and the
//! weighted values in one kernel), bias + residual + the next layer norm, and
//! bias + tanh GELU. On CUDA they are `fused_decode.cu`, compiled to PTX at
//! build time; on the CPU each has the same arithmetic in plain Rust, so
//! tests there check the index arithmetic and the wiring the CUDA kernels share.
//! Must not: decide when they run (that is [`super::StaticDecoder`] through
//! [`StepKernels`]) or change the composed path.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, InplaceOp3, Layout, Shape};

/// Which kernels a decode step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKernels {
    /// candle's ops, one kernel per operation (the default everywhere).
    Composed,
    /// The fused ops of this module (on CUDA with `VERSIFIER_FUSED_KERNELS=1`).
    Fused,
}

impl StepKernels {
    /// `Fused` on CUDA when `VERSIFIER_FUSED_KERNELS=1`, else `Composed`. The
    /// fused kernels stay opt-in until a GPU machine has run them
    /// (`versifier selftest` reports `fused_ops` and
    /// `max_fused_step_logit_diff`; `packaging/cuda/gpu-session.sh` runs both
    /// and times them): a kernel that computes wrong numbers, unlike one that
    /// fails to launch, would not be caught by the fallback.
    pub fn for_device(device: &candle_core::Device) -> Self {
        let on = matches!(
            std::env::var("VERSIFIER_FUSED_KERNELS").as_deref(),
            Ok("1") | Ok("on") | Ok("true")
        );
        if device.is_cuda() && on {
            Self::Fused
        } else {
            Self::Composed
        }
    }
}

/// The residual stream after a projection and the layer norm that follows it,
/// in one pass: for `y`, `x` `(M, N)` and `params` `(3, N)` = (the
/// projection's bias, the norm's weight, the norm's bias), gives `(2, M, N)`:
/// `x + (y + bias)`, then its layer norm. Each sum is rounded to the dtype, as
/// the composed ops round it, and the norm reads the rounded stream.
pub struct BiasResidualNorm {
    pub eps: f32,
}

/// GPT-2's tanh GELU of `y + bias` (`y` `(M, N)`, `bias` `(N)`), the sum
/// rounded to the dtype first.
pub struct BiasGelu;

/// Writes the new token's keys and values from `qkv` `(B, 1, 3C)` (bias added)
/// into the cache `(2, B, H, S, hd)` (keys, then values) at the columns of an
/// index `(B, H, 1, hd)` u32, as two `scatter_set`s along `S` would.
pub struct CacheWrite;

/// Attention of each row's one new query (in `qkv` `(B, 1, 3C)`) over the cache
/// `(2, B, H, S, hd)` with `mask` `(B, 1, 1, S)` added to the scaled scores;
/// gives `(B, 1, C)` with the heads side by side. Accumulates in f32.
pub struct OneTokenAttention {
    pub n_head: usize,
    pub scale: f32,
}

fn fail(op: &str, problem: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("fused decode kernel {op}: {problem}"))
}

fn offsets(l: &Layout, op: &str, what: &str) -> candle_core::Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| fail(op, format!("{what} is not contiguous")))
}

/// Rows and their width, as a bias-residual-norm checks them.
struct Dims {
    rows: usize,
    width: usize,
}

/// The length of `y`'s rows (its last dimension).
fn row_width(op: &str, y: &Layout) -> candle_core::Result<usize> {
    y.dims()
        .last()
        .copied()
        .ok_or_else(|| fail(op, "the input has no dimensions"))
}

/// The width of `y`'s rows, checked against a bias `(N)`.
fn bias_width(op: &str, y: &Layout, bias: &Layout) -> candle_core::Result<usize> {
    let n = row_width(op, y)?;
    if bias.dims() != [n] {
        return Err(fail(
            op,
            format!("bias of shape {:?} for rows of {n}", bias.dims()),
        ));
    }
    Ok(n)
}

/// `(B, C, H, S, hd)` of an attention or cache write, checked.
fn attention_dims(
    op: &str,
    qkv: &Layout,
    kv: &Layout,
    n_head: Option<usize>,
) -> candle_core::Result<[usize; 5]> {
    let &[b, t, c3] = qkv.dims() else {
        return Err(fail(
            op,
            format!("qkv of shape {:?}, want (B, 1, 3C)", qkv.dims()),
        ));
    };
    let &[two, kb, h, s, hd] = kv.dims() else {
        return Err(fail(
            op,
            format!("cache of shape {:?}, want (2, B, H, S, hd)", kv.dims()),
        ));
    };
    if t != 1 || two != 2 || kb != b || c3 != 3 * h * hd || n_head.is_some_and(|n| n != h) {
        return Err(fail(
            op,
            format!(
                "qkv {:?} does not fit the cache {:?}",
                qkv.dims(),
                kv.dims()
            ),
        ));
    }
    Ok([b, h * hd, h, s, hd])
}

/// Values of a contiguous CPU tensor as f32.
fn read(s: &CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<Vec<f32>> {
    let (a, b) = offsets(l, op, what)?;
    Ok(match s {
        CpuStorage::F32(v) => v[a..b].to_vec(),
        CpuStorage::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        other => return Err(fail(op, format!("{what} is {:?}", other.dtype()))),
    })
}

/// `values` as a CPU storage of `dtype`.
fn storage(dtype: DType, values: Vec<f32>, op: &str) -> candle_core::Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(values),
        DType::F16 => CpuStorage::F16(values.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => CpuStorage::BF16(values.into_iter().map(half::bf16::from_f32).collect()),
        other => return Err(fail(op, format!("dtype {other:?}"))),
    })
}

/// `v` rounded to `dtype`'s precision.
fn rounded(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// candle's tanh GELU, operation for operation (its CUDA kernel's order).
fn gelu_tanh(x: f32) -> f32 {
    let c = (std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2) as f32;
    let x_cube = x * x * x;
    let alpha = x + 0.044715 * x_cube;
    0.5 * x * (1.0 + (c * alpha).tanh())
}

fn same_dtype(op: &str, dtypes: &[DType]) -> candle_core::Result<DType> {
    let first = dtypes[0];
    if dtypes.iter().any(|d| *d != first) {
        return Err(fail(op, format!("mixed dtypes {dtypes:?}")));
    }
    Ok(first)
}

/// Rows and width of a bias-residual-norm, checked: `params` `(3, N)`, `x` as many values as `y`.
fn norm_dims(op: &str, y: &Layout, params: &Layout, x: &Layout) -> candle_core::Result<Dims> {
    let n = row_width(op, y)?;
    if params.dims() != [3, n] {
        return Err(fail(
            op,
            format!("parameters of shape {:?}, want (3, {n})", params.dims()),
        ));
    }
    let rows = y.shape().elem_count().checked_div(n).unwrap_or(0);
    if x.shape().elem_count() != rows * n {
        return Err(fail(
            op,
            format!("residual {:?} for {:?}", x.dims(), y.dims()),
        ));
    }
    Ok(Dims { rows, width: n })
}

impl CustomOp3 for BiasResidualNorm {
    fn name(&self) -> &'static str {
        "bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        l_y: &Layout,
        params: &CpuStorage,
        l_p: &Layout,
        x: &CpuStorage,
        l_x: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dtype = same_dtype(op, &[y.dtype(), params.dtype(), x.dtype()])?;
        let Dims { rows, width: n } = norm_dims(op, l_y, l_p, l_x)?;
        let (y, p, x) = (
            read(y, l_y, op, "y")?,
            read(params, l_p, op, "params")?,
            read(x, l_x, op, "x")?,
        );
        let mut out = vec![0.0f32; 2 * rows * n];
        let (stream, normed) = out.split_at_mut(rows * n);
        // One CUDA block per row, in the kernel's order of phases.
        for row in 0..rows {
            let at = row * n;
            let (mut sum, mut sq) = (0.0f32, 0.0f32);
            for i in 0..n {
                let v = rounded(dtype, x[at + i] + rounded(dtype, y[at + i] + p[i]));
                stream[at + i] = v;
                sum += v;
                sq += v * v;
            }
            let mean = sum / n as f32;
            let inv_std = 1.0 / (sq / n as f32 - mean * mean + self.eps).sqrt();
            for i in 0..n {
                normed[at + i] = (stream[at + i] - mean) * inv_std * p[n + i] + p[2 * n + i];
            }
        }
        Ok((storage(dtype, out, op)?, Shape::from((2, rows, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &candle_core::CudaStorage,
        l_y: &Layout,
        params: &candle_core::CudaStorage,
        l_p: &Layout,
        x: &candle_core::CudaStorage,
        l_x: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_residual_norm(self, y, l_y, params, l_p, x, l_x)
    }
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        l_y: &Layout,
        bias: &CpuStorage,
        l_b: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dtype = same_dtype(op, &[y.dtype(), bias.dtype()])?;
        let width = bias_width(op, l_y, l_b)?;
        let (y, b) = (read(y, l_y, op, "y")?, read(bias, l_b, op, "bias")?);
        let out = (0..y.len())
            .map(|i| gelu_tanh(rounded(dtype, y[i] + b[i % width])))
            .collect();
        Ok((storage(dtype, out, op)?, l_y.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &candle_core::CudaStorage,
        l_y: &Layout,
        bias: &candle_core::CudaStorage,
        l_b: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_gelu(self.name(), y, l_y, bias, l_b)
    }
}

/// Checks the index of a cache write: `(B, H, 1, hd)` u32, contiguous.
fn index_dims(op: &str, index: &Layout, [b, _, h, _, hd]: [usize; 5]) -> candle_core::Result<()> {
    if index.dims() != [b, h, 1, hd] {
        return Err(fail(
            op,
            format!(
                "index of shape {:?}, want {:?}",
                index.dims(),
                [b, h, 1, hd]
            ),
        ));
    }
    Ok(())
}

impl InplaceOp3 for CacheWrite {
    fn name(&self) -> &'static str {
        "cache-write"
    }

    fn cpu_fwd(
        &self,
        kv: &mut CpuStorage,
        l_kv: &Layout,
        qkv: &CpuStorage,
        l_qkv: &Layout,
        index: &CpuStorage,
        l_i: &Layout,
    ) -> candle_core::Result<()> {
        let op = self.name();
        same_dtype(op, &[kv.dtype(), qkv.dtype()])?;
        let dims = attention_dims(op, l_qkv, l_kv, None)?;
        index_dims(op, l_i, dims)?;
        let [b, c, h, s, hd] = dims;
        let qkv = read(qkv, l_qkv, op, "qkv")?;
        let (ia, ib) = offsets(l_i, op, "the index")?;
        let CpuStorage::U32(index) = index else {
            return Err(fail(op, format!("index is {:?}, want u32", index.dtype())));
        };
        let index = &index[ia..ib];
        let (ka, _) = offsets(l_kv, op, "the cache")?;
        let half = b * h * s * hd;
        let mut put = |at: usize, v: f32| match kv {
            CpuStorage::F32(d) => d[ka + at] = v,
            CpuStorage::F16(d) => d[ka + at] = half::f16::from_f32(v),
            CpuStorage::BF16(d) => d[ka + at] = half::bf16::from_f32(v),
            _ => {}
        };
        // The same loop as the CUDA kernel, one iteration per thread.
        for (i, &col) in index.iter().enumerate().take(b * h * hd) {
            let (row, head, d) = (i / (h * hd), (i / hd) % h, i % hd);
            let col = col as usize;
            if col >= s {
                continue;
            }
            let dst = ((row * h + head) * s + col) * hd + d;
            let src = row * 3 * c + head * hd + d;
            put(dst, qkv[src + c]);
            put(half + dst, qkv[src + 2 * c]);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        kv: &mut candle_core::CudaStorage,
        l_kv: &Layout,
        qkv: &candle_core::CudaStorage,
        l_qkv: &Layout,
        index: &candle_core::CudaStorage,
        l_i: &Layout,
    ) -> candle_core::Result<()> {
        cuda::cache_write(self.name(), kv, l_kv, qkv, l_qkv, index, l_i)
    }
}

impl CustomOp3 for OneTokenAttention {
    fn name(&self) -> &'static str {
        "one-token-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        l_qkv: &Layout,
        kv: &CpuStorage,
        l_kv: &Layout,
        mask: &CpuStorage,
        l_m: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let dtype = same_dtype(op, &[qkv.dtype(), kv.dtype(), mask.dtype()])?;
        let [b, c, h, s, hd] = attention_dims(op, l_qkv, l_kv, Some(self.n_head))?;
        if l_m.dims() != [b, 1, 1, s] {
            return Err(fail(
                op,
                format!("mask of shape {:?}, want {:?}", l_m.dims(), [b, 1, 1, s]),
            ));
        }
        let (qkv, kv, mask) = (
            read(qkv, l_qkv, op, "qkv")?,
            read(kv, l_kv, op, "the cache")?,
            read(mask, l_m, op, "the mask")?,
        );
        let half = b * h * s * hd;
        let mut out = vec![0.0f32; b * c];
        let mut p = vec![0.0f32; s];
        // One (row, head) per CUDA block, in the kernel's order of phases.
        for row in 0..b {
            for head in 0..h {
                let q = &qkv[row * 3 * c + head * hd..][..hd];
                let base = (row * h + head) * s * hd;
                let mut max = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let k = &kv[base + j * hd..][..hd];
                    let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                    *pj = dot * self.scale + mask[row * s + j];
                    max = max.max(*pj);
                }
                let mut sum = 0.0f32;
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                for d in 0..hd {
                    let y: f32 = (0..s).map(|j| p[j] * kv[half + base + j * hd + d]).sum();
                    out[row * c + head * hd + d] = y / sum;
                }
            }
        }
        Ok((storage(dtype, out, op)?, Shape::from((b, 1, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qkv: &candle_core::CudaStorage,
        l_qkv: &Layout,
        kv: &candle_core::CudaStorage,
        l_kv: &Layout,
        mask: &candle_core::CudaStorage,
        l_m: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::attention(self, qkv, l_qkv, kv, l_kv, mask, l_m)
    }
}

/// How one fused op compared with the composed ops it replaces on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FusedOpCheck {
    pub op: &'static str,
    /// Shape of the case: rows, heads, columns, head size.
    pub case: [usize; 4],
    pub max_abs_diff: f32,
    /// Largest absolute value of the composed result (the scale of the diff).
    pub reference_max: f32,
    /// The op failed to run (module load, launch) rather than differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FusedOpCheck {
    /// Within `tolerance` of the composed result, relative to its largest value.
    pub fn passed(&self, tolerance: f32) -> bool {
        self.error.is_none() && self.max_abs_diff <= tolerance * self.reference_max.max(1.0)
    }
}

fn max_abs(t: &candle_core::Tensor) -> candle_core::Result<f32> {
    t.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

fn compare(
    op: &'static str,
    case: [usize; 4],
    run: impl FnOnce() -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)>,
) -> FusedOpCheck {
    let outcome = run().and_then(|(fused, composed)| {
        let diff = max_abs(&(fused.to_dtype(DType::F32)? - composed.to_dtype(DType::F32)?)?)?;
        Ok((diff, max_abs(&composed)?))
    });
    match outcome {
        Ok((max_abs_diff, reference_max)) => FusedOpCheck {
            op,
            case,
            max_abs_diff,
            reference_max,
            error: None,
        },
        Err(e) => FusedOpCheck {
            op,
            case,
            max_abs_diff: f32::INFINITY,
            reference_max: 0.0,
            error: Some(e.to_string()),
        },
    }
}

/// Each fused op against candle's composed ops on `device` in `dtype`, on
/// random inputs of two shapes (GPT-2's head size 64 over 70 columns, and an
/// odd head size 12 over 9), with masked columns: what `versifier selftest`
/// reports, so a GPU machine without Rust tells which kernel is wrong, if one is.
pub fn check_fused_ops(device: &candle_core::Device, dtype: DType) -> Vec<FusedOpCheck> {
    use candle_core::Tensor;
    let mut checks = Vec::new();
    for (case_no, [b, h, s, hd]) in [[3usize, 4, 70, 64], [2, 3, 9, 12]].into_iter().enumerate() {
        let c = h * hd;
        let case = [b, h, s, hd];
        let seed = case_no as u64;
        let random = |shape: &[usize], scale: f64| -> candle_core::Result<Tensor> {
            let n: usize = shape.iter().product();
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (seed << 17) ^ n as u64;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale as f32
                })
                .collect();
            Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
        };
        checks.push(compare("bias-residual-norm", case, || {
            let (y, x) = (random(&[b, c], 1.0)?, random(&[b, c], 1.0)?);
            let (bias, weight, shift) =
                (random(&[c], 1.0)?, random(&[c], 1.0)?, random(&[c], 0.5)?);
            let params = Tensor::stack(&[&bias, &weight, &shift], 0)?;
            let fused = y.apply_op3_no_bwd(&params, &x, &BiasResidualNorm { eps: 1e-5 })?;
            let stream = (&x + y.broadcast_add(&bias)?)?;
            let normed = candle_nn::ops::layer_norm(&stream, &weight, &shift, 1e-5)?;
            Ok((fused, Tensor::stack(&[&stream, &normed], 0)?))
        }));
        checks.push(compare("bias-gelu", case, || {
            let (y, bias) = (random(&[b, 4 * c], 2.0)?, random(&[4 * c], 1.0)?);
            let fused = y.apply_op2_no_bwd(&bias, &BiasGelu)?;
            Ok((fused, y.broadcast_add(&bias)?.gelu()?))
        }));
        // The new token goes into column s - 2; column 1 of row 0 and the last
        // column of every row are masked.
        let col = (s - 2) as u32;
        let qkv = || random(&[b, 1, 3 * c], 3.0);
        let index = || Tensor::full(col, (b, h, 1, hd), device);
        let heads = |qkv: &Tensor, i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((b, 1, h, hd))?
                .transpose(1, 2)?
                .contiguous() // (B, H, 1, hd)
        };
        checks.push(compare("cache-write", case, || {
            let (qkv, index) = (qkv()?, index()?);
            let fused = random(&[2, b, h, s, hd], 1.0)?;
            let composed = fused.copy()?;
            fused.inplace_op3(&qkv, &index, &CacheWrite)?;
            composed.get(0)?.scatter_set(&index, &heads(&qkv, 1)?, 2)?;
            composed.get(1)?.scatter_set(&index, &heads(&qkv, 2)?, 2)?;
            Ok((fused, composed))
        }));
        checks.push(compare("one-token-attention", case, || {
            let (qkv, kv) = (qkv()?, random(&[2, b, h, s, hd], 1.0)?);
            let masked = super::masked_value(dtype);
            let mask: Vec<f32> = (0..b * s)
                .map(|i| {
                    let (row, j) = (i / s, i % s);
                    if j == s - 1 || (row == 0 && j == 1) {
                        masked
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (b, 1, 1, s), device)?.to_dtype(dtype)?;
            let scale = 1.0 / (hd as f64).sqrt();
            let attention = OneTokenAttention {
                n_head: h,
                scale: scale as f32,
            };
            let fused = qkv.apply_op3_no_bwd(&kv, &mask, &attention)?;
            let (k, v) = (kv.get(0)?, kv.get(1)?);
            let att = (heads(&qkv, 0)?.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let composed = att.matmul(&v)?.transpose(1, 2)?.reshape((b, 1, c))?;
            Ok((fused, composed))
        }));
    }
    checks
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching the kernels of `fused_decode.cu` (PTX embedded at build
    //! time, loaded into candle's device on first use: its module cache keeps
    //! them per device).

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, DType, Layout, Shape};
    use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

    use super::{attention_dims, bias_width, fail, index_dims, norm_dims, offsets, same_dtype};

    const MODULE: &str = "versifier_fused_decode";

    /// A kernel's input: a storage and its layout.
    type Operand<'a> = (&'a CudaStorage, &'a Layout);

    /// Threads of an attention block (four warps).
    const ATTENTION_THREADS: u32 = 128;

    /// Threads of a layer-norm block (eight warps: 3 values each for GPT-2's 768).
    const NORM_THREADS: u32 = 256;

    /// The kernels' PTX, compiled from `fused_decode.cu` by build.rs.
    const PTX: &str = crate::model::cuda_kernels::FUSED_DECODE;

    fn suffix(op: &str, dtype: DType) -> candle_core::Result<&'static str> {
        match dtype {
            DType::F32 => Ok("f32"),
            DType::F16 => Ok("f16"),
            DType::BF16 => Ok("bf16"),
            other => Err(fail(op, format!("dtype {other:?}"))),
        }
    }

    fn u32_of(op: &str, n: usize) -> candle_core::Result<u32> {
        u32::try_from(n).map_err(|_| fail(op, format!("{n} values is too many")))
    }

    fn launch_error(op: &str, e: impl std::fmt::Debug) -> candle_core::Error {
        fail(op, format!("{e:?}"))
    }

    /// Runs `$body` with `$t` bound to the Rust type of `$dtype`.
    macro_rules! typed {
        ($op:expr, $dtype:expr, $t:ident => $body:expr) => {
            match $dtype {
                DType::F32 => {
                    type $t = f32;
                    $body
                }
                DType::F16 => {
                    type $t = half::f16;
                    $body
                }
                DType::BF16 => {
                    type $t = half::bf16;
                    $body
                }
                other => Err(fail($op, format!("dtype {other:?}"))),
            }
        };
    }

    fn elementwise<T: CudaDType + DeviceRepr>(
        op: &str,
        kernel: &str,
        inputs: &[(&CudaStorage, &Layout, &str)],
        width: usize,
    ) -> candle_core::Result<CudaStorage> {
        let dev = inputs[0].0.device().clone();
        let (a0, b0) = offsets(inputs[0].1, op, inputs[0].2)?;
        let n = b0 - a0;
        let n32 = u32_of(op, n)?;
        let w32 = u32_of(op, width)?;
        let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
        let mut views = Vec::with_capacity(inputs.len());
        for (s, l, what) in inputs {
            let (a, b) = offsets(l, op, what)?;
            views.push(s.as_cuda_slice::<T>()?.slice(a..b));
        }
        // SAFETY: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(n) }?;
        let mut builder = func.builder();
        for v in &views {
            builder.arg(v);
        }
        builder.arg(&mut out).arg(&n32).arg(&w32);
        // SAFETY: the arguments match the kernel's signature; it reads `n`
        // values of the first input and `width` of the bias, and writes `n`
        // outputs, the lengths checked by the caller.
        unsafe { builder.launch(LaunchConfig::for_num_elems(n32.max(1))) }
            .map_err(|e| launch_error(op, e))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    fn bias_residual_norm_typed<T: CudaDType + DeviceRepr>(
        op: &super::BiasResidualNorm,
        [(y, l_y), (params, l_p), (x, l_x)]: [Operand<'_>; 3],
        rows: usize,
        n: usize,
    ) -> candle_core::Result<CudaStorage> {
        let name = "bias-residual-norm";
        let dev = y.device().clone();
        let kernel = format!("versifier_bias_residual_norm_{}", suffix(name, y.dtype())?);
        let func = dev.get_or_load_custom_func(&kernel, MODULE, PTX)?;
        let (ya, yb) = offsets(l_y, name, "y")?;
        let (pa, pb) = offsets(l_p, name, "params")?;
        let (xa, xb) = offsets(l_x, name, "x")?;
        let y = y.as_cuda_slice::<T>()?.slice(ya..yb);
        let params = params.as_cuda_slice::<T>()?.slice(pa..pb);
        let x = x.as_cuda_slice::<T>()?.slice(xa..xb);
        // SAFETY: the kernel writes all `2 * rows * n` outputs.
        let mut out = unsafe { dev.alloc::<T>(2 * rows * n) }?;
        let (m32, n32) = (u32_of(name, rows)?, u32_of(name, n)?);
        let cfg = LaunchConfig {
            grid_dim: (m32.max(1), 1, 1),
            block_dim: (NORM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder
            .arg(&y)
            .arg(&params)
            .arg(&x)
            .arg(&mut out)
            .arg(&m32)
            .arg(&n32)
            .arg(&op.eps);
        // SAFETY: the arguments match the kernel's signature; it reads `rows * n`
        // values of `y` and `x` and `3n` parameters, the shapes checked by the caller.
        unsafe { builder.launch(cfg) }.map_err(|e| launch_error(name, e))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    pub fn bias_residual_norm(
        op: &super::BiasResidualNorm,
        y: &CudaStorage,
        l_y: &Layout,
        params: &CudaStorage,
        l_p: &Layout,
        x: &CudaStorage,
        l_x: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let name = "bias-residual-norm";
        let dtype = same_dtype(name, &[y.dtype(), params.dtype(), x.dtype()])?;
        let super::Dims { rows, width: n } = norm_dims(name, l_y, l_p, l_x)?;
        let out = typed!(name, dtype, T => bias_residual_norm_typed::<T>(op, [(y, l_y), (params, l_p), (x, l_x)], rows, n))?;
        Ok((out, Shape::from((2, rows, n))))
    }

    pub fn bias_gelu(
        op: &str,
        y: &CudaStorage,
        l_y: &Layout,
        bias: &CudaStorage,
        l_b: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dtype = same_dtype(op, &[y.dtype(), bias.dtype()])?;
        let width = bias_width(op, l_y, l_b)?;
        let kernel = format!("versifier_bias_gelu_{}", suffix(op, dtype)?);
        let inputs = [(y, l_y, "y"), (bias, l_b, "bias")];
        let out = typed!(op, dtype, T => elementwise::<T>(op, &kernel, &inputs, width))?;
        Ok((out, l_y.shape().clone()))
    }

    fn cache_write_typed<T: CudaDType + DeviceRepr>(
        op: &str,
        (kv, l_kv): (&mut CudaStorage, &Layout),
        [(qkv, l_qkv), (index, l_i)]: [Operand<'_>; 2],
        [b, _, h, s, hd]: [usize; 5],
    ) -> candle_core::Result<()> {
        let kernel = format!("versifier_cache_write_{}", suffix(op, kv.dtype())?);
        let func = kv.device().get_or_load_custom_func(&kernel, MODULE, PTX)?;
        let (ka, kb) = offsets(l_kv, op, "the cache")?;
        let (qa, qb) = offsets(l_qkv, op, "qkv")?;
        let (ia, ib) = offsets(l_i, op, "the index")?;
        let qkv = qkv.as_cuda_slice::<T>()?.slice(qa..qb);
        let index = index.as_cuda_slice::<u32>()?.slice(ia..ib);
        let mut kv = kv.as_cuda_slice_mut::<T>()?.slice_mut(ka..kb);
        let (b32, h32, s32, hd32) = (
            u32_of(op, b)?,
            u32_of(op, h)?,
            u32_of(op, s)?,
            u32_of(op, hd)?,
        );
        let threads = u32_of(op, b * h * hd)?;
        let mut builder = func.builder();
        builder
            .arg(&mut kv)
            .arg(&qkv)
            .arg(&index)
            .arg(&b32)
            .arg(&h32)
            .arg(&s32)
            .arg(&hd32);
        // SAFETY: the arguments match the kernel's signature; shapes checked by
        // the caller; columns outside the cache are skipped by the kernel.
        unsafe { builder.launch(LaunchConfig::for_num_elems(threads.max(1))) }
            .map_err(|e| launch_error(op, e))?;
        Ok(())
    }

    pub fn cache_write(
        op: &str,
        kv: &mut CudaStorage,
        l_kv: &Layout,
        qkv: &CudaStorage,
        l_qkv: &Layout,
        index: &CudaStorage,
        l_i: &Layout,
    ) -> candle_core::Result<()> {
        let dtype = same_dtype(op, &[kv.dtype(), qkv.dtype()])?;
        if index.dtype() != DType::U32 {
            return Err(fail(op, format!("index is {:?}, want u32", index.dtype())));
        }
        let dims = attention_dims(op, l_qkv, l_kv, None)?;
        index_dims(op, l_i, dims)?;
        typed!(op, dtype, T => cache_write_typed::<T>(op, (kv, l_kv), [(qkv, l_qkv), (index, l_i)], dims))
    }

    fn attention_typed<T: CudaDType + DeviceRepr>(
        a: &super::OneTokenAttention,
        [(qkv, l_qkv), (kv, l_kv), (mask, l_m)]: [Operand<'_>; 3],
        [b, c, h, s, hd]: [usize; 5],
    ) -> candle_core::Result<CudaStorage> {
        let op = "one-token-attention";
        let dev = qkv.device().clone();
        let kernel = format!("versifier_attention_{}", suffix(op, qkv.dtype())?);
        let func = dev.get_or_load_custom_func(&kernel, MODULE, PTX)?;
        let (qa, qb) = offsets(l_qkv, op, "qkv")?;
        let (ka, kb) = offsets(l_kv, op, "the cache")?;
        let (ma, mb) = offsets(l_m, op, "the mask")?;
        let qkv = qkv.as_cuda_slice::<T>()?.slice(qa..qb);
        let kv = kv.as_cuda_slice::<T>()?.slice(ka..kb);
        let mask = mask.as_cuda_slice::<T>()?.slice(ma..mb);
        // SAFETY: the kernel writes every one of the `b * c` outputs.
        let mut out = unsafe { dev.alloc::<T>(b * c) }?;
        let (b32, h32, s32, hd32) = (
            u32_of(op, b)?,
            u32_of(op, h)?,
            u32_of(op, s)?,
            u32_of(op, hd)?,
        );
        let floats = hd + s + 32 + hd.max(ATTENTION_THREADS as usize);
        let shared = u32_of(op, floats * 4)?;
        if shared > 48 * 1024 {
            return Err(fail(
                op,
                format!("{s} columns need {shared} bytes of shared memory"),
            ));
        }
        let cfg = LaunchConfig {
            grid_dim: (h32, b32, 1),
            block_dim: (ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: shared,
        };
        let mut builder = func.builder();
        builder
            .arg(&qkv)
            .arg(&kv)
            .arg(&mask)
            .arg(&mut out)
            .arg(&b32)
            .arg(&h32)
            .arg(&s32)
            .arg(&hd32)
            .arg(&a.scale);
        // SAFETY: the arguments match the kernel's signature, the shapes were
        // checked by the caller and the shared memory covers q, the scores, the
        // reduction and the partial outputs.
        unsafe { builder.launch(cfg) }.map_err(|e| launch_error(op, e))?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    pub fn attention(
        a: &super::OneTokenAttention,
        qkv: &CudaStorage,
        l_qkv: &Layout,
        kv: &CudaStorage,
        l_kv: &Layout,
        mask: &CudaStorage,
        l_m: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let op = "one-token-attention";
        let dtype = same_dtype(op, &[qkv.dtype(), kv.dtype(), mask.dtype()])?;
        let dims = attention_dims(op, l_qkv, l_kv, Some(a.n_head))?;
        let [b, c, _, s, _] = dims;
        if l_m.dims() != [b, 1, 1, s] {
            return Err(fail(
                op,
                format!("mask of shape {:?}, want {:?}", l_m.dims(), [b, 1, 1, s]),
            ));
        }
        let out = typed!(op, dtype, T => attention_typed::<T>(a, [(qkv, l_qkv), (kv, l_kv), (mask, l_m)], dims))?;
        Ok((out, Shape::from((b, 1, c))))
    }
}

#[cfg(test)]
mod tests;
