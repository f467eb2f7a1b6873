//! CPU matrix multiply with half-precision weights and f32 activations:
//! `y (M, N) = x (M, K) · Wᵀ`, `W` stored `(N, K)` row-major in f16 or bf16.
//!
//! Decoding one token reads every weight once, so on a CPU its speed is the
//! memory bandwidth. Weights kept at 2 bytes halve what is read; each weight is
//! widened exactly to f32 in registers and all the arithmetic stays f32, so a
//! checkpoint stored in f16 (like the bundled model) loses nothing at all.
//!
//! Owns only this kernel (AVX2 + FMA + F16C where the CPU has them, checked at
//! run time, and a portable fallback) and its rayon split over output rows; the
//! model decides where it is used. Must not allocate devices or touch CUDA.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Rows of `x` above which widening the weights to f32 once and using candle's
/// blocked GEMM beats this kernel (the prompt pass of long or many prompts).
pub const GEMV_MAX_ROWS: usize = 16;

/// Weight rows per rayon task: small enough to balance two to 64 cores on a
/// 768-row matrix, large enough that scheduling costs nothing measurable.
const ROWS_PER_TASK: usize = 32;

/// `x (M, K) f32 · wᵀ` for `w (N, K)` in f16 or bf16 on the CPU; returns `(M, N)` f32.
pub fn matmul_half_weights(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (m, _) = x.dims2()?;
    if m > GEMV_MAX_ROWS {
        let w32 = to_dtype_fast(w, DType::F32)?; // (N, K)
        return x.matmul(&w32.t()?);
    }
    x.contiguous()?.apply_op2_no_bwd(w, &HalfWeightMatmul)
}

/// `t.to_dtype(dtype)`, but between f32 and f16/bf16 on the CPU the values are
/// converted with `half`'s vectorized slice conversion on all cores (candle
/// converts one element at a time: half a second for GPT-2 124M). Same results:
/// widening is exact, narrowing rounds to nearest even.
pub fn to_dtype_fast(t: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let half = |d: DType| matches!(d, DType::F16 | DType::BF16);
    let (from, cpu) = (t.dtype(), t.device().is_cpu());
    if cpu && ((from == DType::F32 && half(dtype)) || (half(from) && dtype == DType::F32)) {
        t.contiguous()?.apply_op1_no_bwd(&ConvertHalf(dtype))
    } else {
        t.to_dtype(dtype)
    }
}

/// The op behind [`to_dtype_fast`]: converts to the dtype it holds.
struct ConvertHalf(DType);

/// Values per conversion task.
const CONVERT_CHUNK: usize = 1 << 16;

impl candle_core::CustomOp1 for ConvertHalf {
    fn name(&self) -> &'static str {
        "convert-half"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("convert-half: the tensor is not contiguous".into())
        })?;
        fn widen<T>(src: &[T]) -> Vec<f32>
        where
            [T]: HalfFloatSliceExt,
            T: Sync,
        {
            let mut d = vec![0f32; src.len()];
            d.par_chunks_mut(CONVERT_CHUNK)
                .zip(src.par_chunks(CONVERT_CHUNK))
                .for_each(|(d, s)| s.convert_to_f32_slice(d));
            d
        }
        fn narrow<T>(src: &[f32], zero: T) -> Vec<T>
        where
            [T]: HalfFloatSliceExt,
            T: Copy + Send,
        {
            let mut d = vec![zero; src.len()];
            d.par_chunks_mut(CONVERT_CHUNK)
                .zip(src.par_chunks(CONVERT_CHUNK))
                .for_each(|(d, s)| d.convert_from_f32_slice(s));
            d
        }
        let out = match (s, self.0) {
            (CpuStorage::F32(v), DType::F16) => CpuStorage::F16(narrow(&v[a..b], f16::ZERO)),
            (CpuStorage::F32(v), DType::BF16) => CpuStorage::BF16(narrow(&v[a..b], bf16::ZERO)),
            (CpuStorage::F16(v), DType::F32) => CpuStorage::F32(widen(&v[a..b])),
            (CpuStorage::BF16(v), DType::F32) => CpuStorage::F32(widen(&v[a..b])),
            (other, to) => {
                return Err(candle_core::Error::Msg(format!(
                    "convert-half: {:?} to {to:?} is not a half/f32 conversion",
                    other.dtype()
                )))
            }
        };
        Ok((out, l.shape().clone()))
    }
}

/// `(R, C)` to a contiguous `(C, R)` for an f16/bf16 CPU tensor, in cache-sized
/// tiles on all cores (candle's strided copy moves one element at a time, which
/// made loading a 124M model in f16 take twice as long as in f32).
pub fn transpose_half(w: &Tensor) -> candle_core::Result<Tensor> {
    w.contiguous()?.apply_op1_no_bwd(&TransposeHalf)
}

struct TransposeHalf;

/// Tile edge for [`transpose_half`]: 32 x 32 two-byte values = 2 KiB.
const TILE: usize = 32;

fn transpose_tiled<T: Copy + Send + Sync + Default>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut dst = vec![T::default(); rows * cols];
    if rows == 0 || cols == 0 {
        return dst;
    }
    // Each task owns TILE output rows (= TILE source columns) and walks the
    // source TILE rows at a time, so a tile's reads and writes stay in L1.
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(task, out)| {
            let c0 = task * TILE;
            let cn = out.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                let rn = TILE.min(rows - r0);
                for r in r0..r0 + rn {
                    let srow = &src[r * cols + c0..r * cols + c0 + cn];
                    for (c, v) in srow.iter().enumerate() {
                        out[c * rows + r] = *v;
                    }
                }
            }
        });
    dst
}

impl candle_core::CustomOp1 for TransposeHalf {
    fn name(&self) -> &'static str {
        "transpose-half"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("transpose-half: the tensor is not contiguous".into())
        })?;
        let out = match s {
            CpuStorage::F16(v) => CpuStorage::F16(transpose_tiled(&v[a..b], rows, cols)),
            CpuStorage::BF16(v) => CpuStorage::BF16(transpose_tiled(&v[a..b], rows, cols)),
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "transpose-half: expected f16 or bf16, found {:?}",
                    other.dtype()
                )))
            }
        };
        Ok((out, Shape::from((cols, rows))))
    }
}

/// The candle op behind [`matmul_half_weights`] (CPU only; no backward).
struct HalfWeightMatmul;

impl CustomOp2 for HalfWeightMatmul {
    fn name(&self) -> &'static str {
        "half-weight-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            return Err(candle_core::Error::Msg(format!(
                "half-weight matmul: x is (M={m}, K={k}) but the weight is (N={n}, K={k2})"
            )));
        }
        let contiguous = |l: &Layout, what: &str| {
            l.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg(format!("half-weight matmul: {what} is not contiguous"))
            })
        };
        let (xa, xb) = contiguous(l1, "x")?;
        let (wa, wb) = contiguous(l2, "the weight")?;
        let x = match s1 {
            CpuStorage::F32(v) => &v[xa..xb],
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "half-weight matmul: x must be f32, found {:?}",
                    other.dtype()
                )))
            }
        };
        let y = match s2 {
            CpuStorage::F16(v) => matmul_rows(x, m, k, HalfRows::F16(&v[wa..wb]), n),
            CpuStorage::BF16(v) => matmul_rows(x, m, k, HalfRows::Bf16(&v[wa..wb]), n),
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "half-weight matmul: the weight must be f16 or bf16, found {:?}",
                    other.dtype()
                )))
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// A `(N, K)` weight matrix in one of the two half formats.
#[derive(Clone, Copy)]
pub enum HalfRows<'a> {
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl HalfRows<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F16(w) => w.len(),
            Self::Bf16(w) => w.len(),
        }
    }

    /// Rows `[start, start + rows)`.
    fn rows(&self, start: usize, rows: usize, k: usize) -> Self {
        let r = start * k..(start + rows) * k;
        match self {
            Self::F16(w) => Self::F16(&w[r]),
            Self::Bf16(w) => Self::Bf16(&w[r]),
        }
    }

    /// Widens row `r` into `out` (`k` values).
    fn widen_row(&self, r: usize, k: usize, out: &mut [f32]) {
        match self {
            Self::F16(w) => w[r * k..(r + 1) * k].convert_to_f32_slice(out),
            Self::Bf16(w) => w[r * k..(r + 1) * k].convert_to_f32_slice(out),
        }
    }
}

/// `x (M, K) · wᵀ` with `w (N, K)`: `(M, N)` row-major. Panics only on
/// inconsistent lengths, which [`HalfWeightMatmul`] rules out.
pub fn matmul_rows(x: &[f32], m: usize, k: usize, w: HalfRows<'_>, n: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        m * k,
        "x holds {} values, not M*K = {m}*{k}",
        x.len()
    );
    assert_eq!(
        w.len(),
        n * k,
        "w holds {} values, not N*K = {n}*{k}",
        w.len()
    );
    let kernel = Kernel::detect();
    // Computed as (N, M) so that each task writes one contiguous stretch.
    let mut out_t = vec![0f32; n * m];
    if m > 0 && n > 0 {
        out_t
            .par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, out)| {
                let rows = out.len() / m;
                let w = w.rows(task * ROWS_PER_TASK, rows, k);
                kernel.block(x, m, k, w, rows, out);
            });
    }
    if m <= 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (i, v) in col.iter().enumerate() {
            out[i * n + j] = *v;
        }
    }
    out
}

/// Which implementation this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Widen a row with `half`'s slice conversion, then an f32 dot product.
    Portable,
    /// AVX2 + FMA + F16C, 4 weight rows by 2 input rows per register tile.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// Every kernel this CPU can run (the tests compare them).
    pub fn available() -> Vec<Self> {
        let portable = std::iter::once(Self::Portable);
        #[cfg(target_arch = "x86_64")]
        let portable = portable.chain((Self::detect() == Self::Avx2).then_some(Self::Avx2));
        portable.collect()
    }

    /// `out (rows, M)` = `w (rows, K)` · `xᵀ`.
    pub fn block(
        self,
        x: &[f32],
        m: usize,
        k: usize,
        w: HalfRows<'_>,
        rows: usize,
        out: &mut [f32],
    ) {
        assert!(x.len() == m * k && w.len() == rows * k && out.len() == rows * m);
        match self {
            Self::Portable => block_portable(x, m, k, w, rows, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found avx2, fma and f16c on this CPU, and the
            // lengths were checked above.
            Self::Avx2 => unsafe {
                match w {
                    HalfRows::F16(w) => avx2::block::<false>(x, m, k, w.as_ptr().cast(), rows, out),
                    HalfRows::Bf16(w) => avx2::block::<true>(x, m, k, w.as_ptr().cast(), rows, out),
                }
            },
        }
    }
}

fn block_portable(x: &[f32], m: usize, k: usize, w: HalfRows<'_>, rows: usize, out: &mut [f32]) {
    let mut row = vec![0f32; k];
    for r in 0..rows {
        w.widen_row(r, k, &mut row);
        for i in 0..m {
            out[r * m + i] = dot(&x[i * k..(i + 1) * k], &row);
        }
    }
}

/// f32 dot product with eight independent sums (vectorizes without flags).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, at) = a.split_at(a.len() / 8 * 8);
    let (b8, bt) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let tail: f32 = at.iter().zip(bt).map(|(p, q)| p * q).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[allow(clippy::wildcard_imports)] // the AVX2/FMA/F16C intrinsics, by their Intel names
    use std::arch::x86_64::*;

    /// Eight weights at `p` widened to f32 (bf16: shift into the high half;
    /// f16: the F16C conversion). Both are exact.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const BF16: bool>(p: *const u16) -> __m256 {
        let raw = _mm_loadu_si128(p.cast());
        if BF16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
        } else {
            _mm256_cvtph_ps(raw)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    fn widen<const BF16: bool>(bits: u16) -> f32 {
        if BF16 {
            half::bf16::from_bits(bits).to_f32()
        } else {
            half::f16::from_bits(bits).to_f32()
        }
    }

    /// One register tile: `MR` input rows against `NR` weight rows.
    ///
    /// # Safety
    /// avx2/fma/f16c present; `x` holds rows `i..i+MR` of length `k`, `w` points
    /// at `rows * k` weights with `r + NR <= rows`, `out` is `(rows, m)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NR: usize, const BF16: bool>(
        x: &[f32],
        m: usize,
        k: usize,
        w: *const u16,
        r: usize,
        i: usize,
        out: &mut [f32],
    ) {
        let k8 = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let mut kk = 0;
        while kk < k8 {
            let mut wv = [_mm256_setzero_ps(); NR];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = load8::<BF16>(w.add((r + j) * k + kk));
            }
            for (a, acc_row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add((i + a) * k + kk));
                for (j, v) in wv.iter().enumerate() {
                    acc_row[j] = _mm256_fmadd_ps(xv, *v, acc_row[j]);
                }
            }
            kk += 8;
        }
        for (a, acc_row) in acc.iter().enumerate() {
            for (j, v) in acc_row.iter().enumerate() {
                let mut s = hsum(*v);
                for t in k8..k {
                    s += x[(i + a) * k + t] * widen::<BF16>(*w.add((r + j) * k + t));
                }
                out[(r + j) * m + i + a] = s;
            }
        }
    }

    /// `out (rows, M)` = `w (rows, K)` · `xᵀ`, tiled 4 weight rows by 2 input rows.
    ///
    /// # Safety
    /// avx2/fma/f16c present; `x.len() == m * k`, `w` points at `rows * k`
    /// weights, `out.len() == rows * m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block<const BF16: bool>(
        x: &[f32],
        m: usize,
        k: usize,
        w: *const u16,
        rows: usize,
        out: &mut [f32],
    ) {
        let mut r = 0;
        while r < rows {
            let four = rows - r >= 4;
            let mut i = 0;
            while i < m {
                let two = m - i >= 2;
                match (two, four) {
                    (true, true) => tile::<2, 4, BF16>(x, m, k, w, r, i, out),
                    (false, true) => tile::<1, 4, BF16>(x, m, k, w, r, i, out),
                    (true, false) => tile::<2, 1, BF16>(x, m, k, w, r, i, out),
                    (false, false) => tile::<1, 1, BF16>(x, m, k, w, r, i, out),
                }
                i += if two { 2 } else { 1 };
            }
            r += if four { 4 } else { 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) without a random-number crate.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The reference: f64 sums of the widened weights.
    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (idx, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: [{idx}] {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_kernel_matches_an_f64_reference_for_f16_and_bf16_weights_with_ragged_shapes() {
        // K not a multiple of 8, N not a multiple of 4 or of the task size, odd M.
        for &(m, k, n) in &[
            (1, 8, 4),
            (1, 13, 5),
            (2, 768, 37),
            (3, 67, 70),
            (5, 200, 129),
            (16, 24, 3),
        ] {
            let x = values(m * k, 1);
            let w32 = values(n * k, 2);
            let w16: Vec<f16> = w32.iter().map(|v| f16::from_f32(*v)).collect();
            let wb: Vec<bf16> = w32.iter().map(|v| bf16::from_f32(*v)).collect();
            let want16 = reference(
                &x,
                m,
                k,
                &w16.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                n,
            );
            let wantb = reference(
                &x,
                m,
                k,
                &wb.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                n,
            );
            for kernel in Kernel::available() {
                let mut out = vec![f32::NAN; n * m];
                kernel.block(&x, m, k, HalfRows::F16(&w16), n, &mut out);
                // `block` writes (N, M); the reference is (M, N).
                let mut t = vec![0f32; m * n];
                for j in 0..n {
                    for i in 0..m {
                        t[i * n + j] = out[j * m + i];
                    }
                }
                assert_close(&t, &want16, &format!("{kernel:?} f16 {m}x{k}x{n}"));
                kernel.block(&x, m, k, HalfRows::Bf16(&wb), n, &mut out);
                for j in 0..n {
                    for i in 0..m {
                        t[i * n + j] = out[j * m + i];
                    }
                }
                assert_close(&t, &wantb, &format!("{kernel:?} bf16 {m}x{k}x{n}"));
            }
            assert_close(
                &matmul_rows(&x, m, k, HalfRows::F16(&w16), n),
                &want16,
                "matmul_rows f16",
            );
            assert_close(
                &matmul_rows(&x, m, k, HalfRows::Bf16(&wb), n),
                &wantb,
                "matmul_rows bf16",
            );
        }
    }

    #[test]
    fn the_candle_op_agrees_with_candle_f32_matmul_on_both_sides_of_the_gemm_threshold() {
        let dev = candle_core::Device::Cpu;
        let (k, n) = (96, 50);
        for m in [1, 7, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 40] {
            let x = Tensor::from_vec(values(m * k, 3), (m, k), &dev).unwrap();
            let w = Tensor::from_vec(values(n * k, 4), (n, k), &dev).unwrap();
            for dtype in [DType::F16, DType::BF16] {
                let wh = w.to_dtype(dtype).unwrap();
                let want = x
                    .matmul(&wh.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap();
                let got = matmul_half_weights(&x, &wh).unwrap();
                assert_eq!(got.dims(), &[m, n]);
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "m={m} {dtype:?}: max diff {diff}");
            }
        }
    }

    #[test]
    fn tiled_transpose_equals_candles_for_ragged_shapes() {
        let dev = candle_core::Device::Cpu;
        for &(r, c) in &[(1, 1), (3, 130), (200, 65), (64, 64), (129, 3)] {
            let w = Tensor::from_vec(values(r * c, 5), (r, c), &dev).unwrap();
            for dtype in [DType::F16, DType::BF16] {
                let wh = w.to_dtype(dtype).unwrap();
                let want = wh
                    .t()
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                let got = transpose_half(&wh).unwrap();
                assert_eq!(got.dims(), &[c, r]);
                let got = got.to_dtype(DType::F32).unwrap();
                let same = got
                    .eq(&want)
                    .unwrap()
                    .min_all()
                    .unwrap()
                    .to_scalar::<u8>()
                    .unwrap();
                assert_eq!(same, 1, "{r}x{c} {dtype:?}");
            }
        }
        let err = transpose_half(&w_f32()).unwrap_err().to_string();
        assert!(err.contains("f16 or bf16"), "{err}");
    }

    #[test]
    fn fast_narrowing_rounds_exactly_like_candle() {
        let dev = candle_core::Device::Cpu;
        // Values that round differently if the mode were wrong: halfway cases,
        // subnormals, overflow to infinity.
        let mut v = values(200_000, 6);
        v.extend([
            65520.0,
            1e-7,
            -3.0e-8,
            1e6,
            f32::INFINITY,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 4096.0,
        ]);
        let n = v.len();
        let t = Tensor::from_vec(v, n, &dev).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let want = t
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = to_dtype_fast(&t, dtype).unwrap();
            assert_eq!(got.dtype(), dtype);
            let got = got.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "{dtype:?}");
        }
        // Widening back is exact, like candle's.
        for dtype in [DType::F16, DType::BF16] {
            let h = t.to_dtype(dtype).unwrap();
            let want = h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
            let got = to_dtype_fast(&h, DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got, want, "{dtype:?} to f32");
        }
        // Anything else is candle's own conversion.
        assert_eq!(to_dtype_fast(&t, DType::F32).unwrap().dtype(), DType::F32);
        assert_eq!(to_dtype_fast(&t, DType::F64).unwrap().dtype(), DType::F64);
    }

    fn w_f32() -> Tensor {
        Tensor::zeros((2, 3), DType::F32, &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn wrong_dtypes_and_shapes_are_errors_not_panics() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        let w32 = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let err = matmul_half_weights(&x, &w32).unwrap_err().to_string();
        assert!(err.contains("f16 or bf16"), "{err}");
        let w_bad_k = Tensor::zeros((4, 9), DType::F16, &dev).unwrap();
        let err = matmul_half_weights(&x, &w_bad_k).unwrap_err().to_string();
        assert!(err.contains("K=8") && err.contains("K=9"), "{err}");
        let x16 = x.to_dtype(DType::F16).unwrap();
        let w16 = w32.to_dtype(DType::F16).unwrap();
        let err = matmul_half_weights(&x16, &w16).unwrap_err().to_string();
        assert!(err.contains("x must be f32"), "{err}");
    }
}
