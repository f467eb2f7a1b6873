//! Differentiable fused ops for the training pass on the CPU.
//!
//! Owns: layer norm, GPT-2's tanh GELU, softmax over the last axis and mean
//! cross-entropy over logits, each one pass forward and one backward over f32
//! CPU tensors. candle composes each of them from 5 to 12 ops that allocate a
//! full-size buffer apiece, forward and again backward (the cross-entropy's
//! are `(B*T, V)`: 290 MB each for the bundled model's batches), which made a
//! CPU training step spend as long in page faults and element loops as in its
//! matrix products. Any other device or dtype takes candle's composed ops, the
//! same maths; the tests hold the two to each other, forward and gradients.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Elements per parallel task of the element-wise ops.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// Whether every tensor is one the fused ops take: f32 on the CPU.
fn fused(xs: &[&Tensor]) -> bool {
    xs.iter()
        .all(|x| x.device().is_cpu() && x.dtype() == DType::F32)
}

fn fail(op: &str, problem: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("training op {op}: {problem}"))
}

/// The f32 values of a contiguous CPU tensor, borrowed.
fn values<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| fail(op, format!("{what} is not contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        other => Err(fail(op, format!("{what} is {:?}, not f32", other.dtype()))),
    }
}

/// The length of the rows of `l` (its last dimension), at least 1.
fn row_width(l: &Layout, op: &str) -> candle_core::Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(fail(
            op,
            format!("input of shape {:?} has no rows", l.dims()),
        )),
    }
}

/// `f(x, out)` over `x` cut into tasks of `task` elements (whole rows where
/// `task` is a multiple of the row width), in parallel: the new buffer.
fn map_tasks(x: &[f32], task: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(out, x)| f(x, out));
    out
}

/// A gradient op's inputs, a forward value (`what`) and the gradient `dy`
/// of the same length, with `f(value, dy, out)` run over tasks of `task`
/// elements as [`map_tasks`] does.
fn map_grad_tasks(
    op: &str,
    (vs, vl, what): (&CpuStorage, &Layout, &str),
    (gs, gl): (&CpuStorage, &Layout),
    task: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> candle_core::Result<Vec<f32>> {
    let (v, dy) = (values(vs, vl, op, what)?, values(gs, gl, op, "gradient")?);
    if v.len() != dy.len() {
        return Err(fail(op, format!("the gradient does not fit the {what}")));
    }
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(task)
        .zip(v.par_chunks(task).zip(dy.par_chunks(task)))
        .for_each(|(out, (v, dy))| f(v, dy, out));
    Ok(out)
}

// ---------------------------------------------------------------- layer norm

/// Layer norm over the last axis with `weight` and `bias` `(C)`; the same
/// maths as `candle_nn::ops::layer_norm_slow`, which other devices use.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    if !fused(&[x, weight, bias]) {
        return candle_nn::ops::layer_norm_slow(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3_arc(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Arc::new(Box::new(LayerNorm { eps })),
    )
}

struct LayerNorm {
    eps: f32,
}

/// One row's mean and reciprocal standard deviation.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn norm_params<'a>(
    op: &str,
    x: &Layout,
    w: (&'a CpuStorage, &Layout),
    b: (&'a CpuStorage, &Layout),
) -> candle_core::Result<(usize, &'a [f32], &'a [f32])> {
    let c = row_width(x, op)?;
    let (w, b) = (
        values(w.0, w.1, op, "weight")?,
        values(b.0, b.1, op, "bias")?,
    );
    if w.len() != c || b.len() != c {
        return Err(fail(
            op,
            format!(
                "weight ({}) and bias ({}) for rows of {c}",
                w.len(),
                b.len()
            ),
        ));
    }
    Ok((c, w, b))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (c, w, b) = norm_params(op, xl, (ws, wl), (bs, bl))?;
        let x = values(xs, xl, op, "input")?;
        let y = map_tasks(x, c, |x, y| {
            let (mean, rstd) = moments(x, self.eps);
            for i in 0..c {
                y[i] = (x[i] - mean) * rstd * w[i] + b[i];
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = weight.elem_count();
        let rows = x.elem_count() / c.max(1);
        // (rows + 2, C): dx's rows, then d weight, then d bias.
        let all = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(c)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Layer norm's gradients from `(x, weight, dy)`: `(rows + 2, C)`.
struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let c = row_width(xl, op)?;
        let x = values(xs, xl, op, "input")?;
        let w = values(ws, wl, op, "weight")?;
        let dy = values(gs, gl, op, "gradient")?;
        if w.len() != c || dy.len() != x.len() {
            return Err(fail(op, "weight or gradient does not fit the input"));
        }
        let rows = x.len() / c;
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, _) = out.split_at_mut(x.len());
        const ROWS_PER_TASK: usize = 64;
        let (dw, db) = dx
            .par_chunks_mut(ROWS_PER_TASK * c)
            .zip(x.par_chunks(ROWS_PER_TASK * c))
            .zip(dy.par_chunks(ROWS_PER_TASK * c))
            .map(|((dx, x), dy)| {
                let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
                for ((dx, x), dy) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
                    let (mean, rstd) = moments(x, self.eps);
                    let (mut mean_g, mut mean_gx) = (0f32, 0f32);
                    for i in 0..c {
                        let xhat = (x[i] - mean) * rstd;
                        let g = dy[i] * w[i];
                        mean_g += g;
                        mean_gx += g * xhat;
                        dw[i] += dy[i] * xhat;
                        db[i] += dy[i];
                    }
                    mean_g /= c as f32;
                    mean_gx /= c as f32;
                    for i in 0..c {
                        let xhat = (x[i] - mean) * rstd;
                        dx[i] = rstd * (dy[i] * w[i] - mean_g - xhat * mean_gx);
                    }
                }
                (dw, db)
            })
            .reduce(
                || (vec![0f32; c], vec![0f32; c]),
                |(mut aw, mut ab), (bw, bb)| {
                    aw.iter_mut().zip(&bw).for_each(|(a, b)| *a += b);
                    ab.iter_mut().zip(&bb).for_each(|(a, b)| *a += b);
                    (aw, ab)
                },
            );
        out[rows * c..rows * c + c].copy_from_slice(&dw);
        out[rows * c + c..].copy_from_slice(&db);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, c))))
    }
}

// ---------------------------------------------------------------- GELU

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// `(1 + tanh(u)) / 2` for GELU's `u = sqrt(2/pi) (x + 0.044715 x^3)`, as the
/// logistic function of `2u` (the same number): one `exp`, where glibc's
/// `tanhf` costs an `expm1f` and more (it was a seventh of a CPU step).
fn half_one_plus_tanh(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    1.0 / (1.0 + (-2.0 * u).exp())
}

/// GPT-2's tanh GELU; the same maths as candle's `Tensor::gelu`, which other
/// devices use.
pub fn gelu_tanh(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fused(&[x]) {
        return x.gelu();
    }
    x.contiguous()?.apply_op1_arc(Arc::new(Box::new(GeluTanh)))
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(s, l, self.name(), "input")?;
        let y = map_tasks(x, ELEMENTS_PER_TASK, |x, y| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * half_one_plus_tanh(x);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

/// `dy * gelu'(x)` from `(x, dy)`.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = (xs, xl, "input");
        let dx = map_grad_tasks(
            self.name(),
            input,
            (gs, gl),
            ELEMENTS_PER_TASK,
            |x, dy, dx| {
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    // With s = (1 + t) / 2: 1 - t^2 = 4 s (1 - s).
                    let s = half_one_plus_tanh(x);
                    let dinner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
                    *dx = dy * (s + 2.0 * x * s * (1.0 - s) * dinner);
                }
            },
        )?;
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

// ---------------------------------------------------------------- softmax

/// Softmax over the last axis; the same maths as `candle_nn::ops::softmax`,
/// which other devices use.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fused(&[x]) {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1_arc(Arc::new(Box::new(Softmax)))
}

struct Softmax;

/// `y = softmax(x)` of one row, in place of `y`.
fn softmax_row(x: &[f32], y: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x - max).exp();
        sum += *y;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|y| *y *= inv);
}

/// Rows per parallel task for rows of `width`.
fn rows_per_task(width: usize) -> usize {
    (ELEMENTS_PER_TASK / width).max(1)
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = row_width(l, self.name())?;
        let x = values(s, l, self.name(), "input")?;
        let y = map_tasks(x, rows_per_task(n) * n, |x, y| {
            for (y, x) in y.chunks_mut(n).zip(x.chunks(n)) {
                softmax_row(x, y);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// `y * (dy - sum(dy * y))` per row from `(y, dy)`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = row_width(yl, self.name())?;
        let output = (ys, yl, "output");
        let dx = map_grad_tasks(
            self.name(),
            output,
            (gs, gl),
            rows_per_task(n) * n,
            |y, dy, dx| {
                for ((dx, y), dy) in dx.chunks_mut(n).zip(y.chunks(n)).zip(dy.chunks(n)) {
                    let dot: f32 = y.iter().zip(dy).map(|(y, g)| y * g).sum();
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                        *dx = y * (g - dot);
                    }
                }
            },
        )?;
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

// ---------------------------------------------------------------- cross-entropy

/// Mean cross-entropy of `logits` `(N, V)` against `targets` `(N)` u32, a
/// scalar; the same maths as `candle_nn::loss::cross_entropy`, which other
/// devices and dtypes use. The backward pass writes `(softmax - one-hot) / N`
/// in one pass, where candle's keeps a dozen `(N, V)` buffers.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if !fused(&[logits]) || targets.dtype() != DType::U32 || !targets.device().is_cpu() {
        return candle_nn::loss::cross_entropy(logits, targets);
    }
    logits
        .contiguous()?
        .apply_op2_arc(&targets.contiguous()?, Arc::new(Box::new(CrossEntropy)))
}

struct CrossEntropy;

/// `(N, V)` logits and `N` targets, checked: every target inside the vocabulary.
fn logits_and_targets<'a>(
    op: &str,
    ls: &'a CpuStorage,
    ll: &Layout,
    ts: &'a CpuStorage,
    tl: &Layout,
) -> candle_core::Result<(usize, &'a [f32], &'a [u32])> {
    let &[n, v] = ll.dims() else {
        return Err(fail(
            op,
            format!("logits of shape {:?}, want (N, V)", ll.dims()),
        ));
    };
    let (a, b) = tl
        .contiguous_offsets()
        .ok_or_else(|| fail(op, "targets are not contiguous"))?;
    let CpuStorage::U32(t) = ts else {
        return Err(fail(op, format!("targets are {:?}, not u32", ts.dtype())));
    };
    let t = &t[a..b];
    if t.len() != n {
        return Err(fail(
            op,
            format!("{} targets for {n} rows of logits", t.len()),
        ));
    }
    if let Some(bad) = t.iter().find(|&&id| id as usize >= v) {
        return Err(fail(
            op,
            format!("target id {bad} is outside the vocabulary ({v} ids)"),
        ));
    }
    Ok((v.max(1), values(ls, ll, op, "logits")?, t))
}

/// `log(sum(exp(row)))`, stably.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (v, logits, targets) = logits_and_targets(self.name(), ls, ll, ts, tl)?;
        let total: f64 = logits
            .par_chunks(v)
            .zip(targets.par_iter())
            .map(|(row, &t)| f64::from(log_sum_exp(row) - row[t as usize]))
            .sum();
        let mean = total / targets.len().max(1) as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = logits.dim(0)?.max(1);
        let g = grad.to_dtype(DType::F32)?.to_vec0::<f32>()?;
        let d = logits.apply_op2_no_bwd(
            targets,
            &CrossEntropyGrad {
                scale: g / rows as f32,
            },
        )?;
        Ok((Some(d), None))
    }
}

/// `(softmax(logits) - one_hot(targets)) * scale` from `(logits, targets)`.
struct CrossEntropyGrad {
    scale: f32,
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (v, logits, targets) = logits_and_targets(self.name(), ls, ll, ts, tl)?;
        let mut d = vec![0f32; logits.len()];
        d.par_chunks_mut(v)
            .zip(logits.par_chunks(v).zip(targets.par_iter()))
            .for_each(|(d, (row, &t))| {
                softmax_row(row, d);
                d[t as usize] -= 1.0;
                d.iter_mut().for_each(|d| *d *= self.scale);
            });
        Ok((CpuStorage::F32(d), ll.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
        let n = shape.iter().product();
        let v: Vec<f32> = super::super::test_values(n, seed)
            .iter()
            .map(|x| x * scale)
            .collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward values and the gradients of `sum(op(inputs) * r)` for every
    /// input, from `op`.
    fn value_and_grads(
        inputs: &[&Var],
        op: impl Fn(&[&Tensor]) -> candle_core::Result<Tensor>,
    ) -> (Tensor, Vec<Tensor>) {
        let ts: Vec<&Tensor> = inputs.iter().map(|v| v.as_tensor()).collect();
        let y = op(&ts).unwrap();
        let r = var(y.dims(), 99, 1.0);
        let grads = (&y * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = ts
            .iter()
            .map(|t| grads.get(t).expect("a gradient").clone())
            .collect();
        (y.detach(), g)
    }

    /// The fused op against candle's composed one: values and every gradient.
    fn assert_matches(
        inputs: &[&Var],
        fused: impl Fn(&[&Tensor]) -> candle_core::Result<Tensor>,
        composed: impl Fn(&[&Tensor]) -> candle_core::Result<Tensor>,
        tolerance: f32,
    ) {
        let (y1, g1) = value_and_grads(inputs, fused);
        let (y2, g2) = value_and_grads(inputs, composed);
        assert_eq!(y1.dims(), y2.dims());
        let d = max_diff(&y1, &y2);
        assert!(d < tolerance, "values differ by {d}");
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            let d = max_diff(a, b);
            assert!(d < tolerance, "gradient of input {i} differs by {d}");
        }
    }

    #[test]
    fn layer_norm_values_and_all_three_gradients_match_candles_composed_op() {
        // 70 rows: more than one parallel task of 64, and one cut short.
        let (x, w, b) = (
            var(&[2, 35, 48], 1, 3.0),
            var(&[48], 2, 1.0),
            var(&[48], 3, 1.0),
        );
        assert_matches(
            &[&x, &w, &b],
            |t| layer_norm(t[0], t[1], t[2], 1e-5),
            |t| candle_nn::ops::layer_norm_slow(t[0], t[1], t[2], 1e-5),
            2e-5,
        );
    }

    #[test]
    fn gelu_values_and_gradient_match_candles_gelu() {
        let x = var(&[3, 7, 2000], 4, 4.0);
        assert_matches(&[&x], |t| gelu_tanh(t[0]), |t| t[0].gelu(), 1e-5);
        // Far out, where exp overflows to infinity: values and slopes stay finite.
        let far = Var::new(&[-80f32, -30.0, 30.0, 80.0], &Device::Cpu).unwrap();
        let (y, g) = value_and_grads(&[&far], |t| gelu_tanh(t[0]));
        let (y, g) = (y.to_vec1::<f32>().unwrap(), g[0].to_vec1::<f32>().unwrap());
        assert_eq!(
            y.iter().map(|v| v.abs()).collect::<Vec<_>>(),
            [0.0, 0.0, 30.0, 80.0]
        );
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }

    #[test]
    fn softmax_values_and_gradient_match_candles_composed_softmax_also_on_a_transposed_input() {
        let x = var(&[2, 3, 17, 17], 5, 6.0);
        assert_matches(
            &[&x],
            |t| softmax_last_dim(&t[0].transpose(2, 3)?),
            |t| candle_nn::ops::softmax(&t[0].transpose(2, 3)?, D::Minus1),
            1e-6,
        );
    }

    #[test]
    fn cross_entropy_loss_and_gradient_match_candles_cross_entropy() {
        let logits = var(&[37, 1001], 6, 8.0);
        let ids: Vec<u32> = (0..37u32).map(|i| (i * 97) % 1001).collect();
        let targets = Tensor::new(ids, &Device::Cpu).unwrap();
        // A scaled loss, as the trainer's loss scale and accumulation make it.
        assert_matches(
            &[&logits],
            |t| cross_entropy(t[0], &targets)? * 0.37,
            |t| candle_nn::loss::cross_entropy(t[0], &targets)? * 0.37,
            1e-6,
        );
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error_naming_it() {
        let logits = var(&[2, 10], 7, 1.0);
        let targets = Tensor::new(&[3u32, 10], &Device::Cpu).unwrap();
        let e = cross_entropy(logits.as_tensor(), &targets)
            .unwrap_err()
            .to_string();
        assert!(e.contains("target id 10") && e.contains("10 ids"), "{e}");
    }

    #[test]
    fn other_dtypes_take_candles_composed_ops() {
        let x = var(&[4, 8], 8, 2.0);
        let x64 = x.as_tensor().to_dtype(DType::F64).unwrap();
        let fused = gelu_tanh(x.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let composed = gelu_tanh(&x64).unwrap();
        assert_eq!(composed.dtype(), DType::F64);
        assert!(
            max_diff(
                &fused.to_dtype(DType::F32).unwrap(),
                &composed.to_dtype(DType::F32).unwrap()
            ) < 1e-6
        );
        let s = softmax_last_dim(&x64)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-9), "{s:?}");
    }
}
