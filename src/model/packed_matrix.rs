//! The CPU's matrix multiply for inference: `y (M, N) = x (M, K) · Wᵀ`, with
//! `W` repacked once, at load, into panels of [`PANEL_ROWS`] output rows, in
//! f32, f16 or bf16; activations and sums are f32.
//!
//! Decoding one token reads every weight once, so on a CPU its speed is how
//! close the weight reads come to the memory bandwidth. In the checkpoint's
//! layout a kernel reads several rows (or columns) at a time: several streams
//! `K` values apart per core, which the hardware prefetchers follow poorly (the
//! 2-core VM of the README read 13-19 GB/s that way, out of 33). In panels each
//! task reads one sequential stream: 16 values of each of 8 rows, then the next
//! 16 values of the same rows, so the 8 sums of a panel are finished in one
//! pass. Half weights are widened exactly to f32 in registers, so a checkpoint
//! stored in f16 (like the bundled model) loses nothing.
//!
//! Owns: the packed layout (built from `(out, in)` or `(in, out)` tensors), its
//! kernels (AVX2 + FMA + F16C where the CPU has them, checked at run time, and
//! a portable fallback), the rayon split over panels, and reading a row back
//! (a tied LM head is also the token table). Must not allocate devices, touch
//! CUDA, or decide where it is used (the model does).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Output rows per panel.
pub const PANEL_ROWS: usize = 8;

/// Input values of one row read together (one or two cache lines); `K` is
/// zero-padded to a multiple of it.
pub const CHUNK: usize = 16;

/// Elements of one panel chunk: [`CHUNK`] values of each of [`PANEL_ROWS`] rows.
const PANEL_CHUNK: usize = PANEL_ROWS * CHUNK;

/// Rows of `x` above which [`PackedMatrix::matmul`] widens the weights to f32
/// and uses candle's blocked GEMM instead of the streaming kernel. Widening
/// writes every weight again (500 MB for GPT-2 124M), so the streaming kernel
/// wins far past one token: on the 2-core VM of the README a 124M prompt
/// pass took 68 ms against 277 at 32 tokens, 250 against 296 at 128, and
/// 1,072 against 1,334 at 512 (f16; f32 alike).
pub const GEMV_MAX_ROWS: usize = 256;

/// Panels per core for the rayon split: enough tasks to balance uneven cores,
/// few enough that scheduling is not measurable.
const TASKS_PER_THREAD: usize = 4;

/// What is applied to each output while it is still in cache, in the task
/// that computed it: a bias per output column, then an activation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'b> {
    /// One value per output (`N`), added to every row.
    pub bias: Option<&'b [f32]>,
    /// GPT-2's GELU (the tanh approximation) after the bias.
    pub gelu_tanh: bool,
}

/// `sqrt(2 / pi)` and the cubic coefficient of GPT-2's tanh GELU.
const GELU_K0: f32 = 0.797_884_6;
const GELU_K1: f32 = 0.044_715;

/// GPT-2's tanh GELU of one value (the portable kernel's, and the reference
/// of the vector one).
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (GELU_K0 * (x + GELU_K1 * x * x * x)).tanh())
}

/// Where [`PackedMatrix::from_tensor`] finds output row `r`, input column `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceLayout {
    /// `(N, K)`: a row per output, like `nn.Linear` and an LM head.
    OutIn,
    /// `(K, N)`: a row per input, like GPT-2's `Conv1D`.
    InOut,
}

/// The weights, panel by panel, in their storage precision.
#[derive(Debug)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// A weight matrix `W (N, K)` in panels: panel `p` holds rows `8p..8p+8`
/// (rows past `N` are zeros), as `K_pad / 16` chunks of 8 rows × 16 values.
/// Element `(r, c)` sits at `p·8·K_pad + (c / 16)·128 + (r % 8)·16 + c % 16`.
/// Cheap to clone (the panels are shared).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    panels: Arc<Panels>,
    n: usize,
    k: usize,
    k_pad: usize,
}

/// Why a matrix could not be packed or multiplied.
#[derive(Debug, thiserror::Error)]
pub enum PackedError {
    #[error("packed matrix: {what} must be on the CPU")]
    NotCpu { what: &'static str },
    #[error("packed matrix: a bias of {found} values for {n} outputs")]
    Bias { found: usize, n: usize },
    #[error("packed matrix: {what} must be f32, f16 or bf16, found {dtype:?}")]
    Dtype { what: &'static str, dtype: DType },
    #[error("packed matrix: x is (M={m}, K={k}) but the weight is (N={n}, K={wk})")]
    Shape {
        m: usize,
        k: usize,
        n: usize,
        wk: usize,
    },
    #[error("packed matrix: the weight must be 2-D, found shape {dims:?}")]
    NotMatrix { dims: Vec<usize> },
    #[error("packed matrix: row {row} asked of a matrix with {rows} rows")]
    Row { row: usize, rows: usize },
}

impl From<PackedError> for candle_core::Error {
    fn from(e: PackedError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// One weight element type: how it widens to f32.
trait Element: Copy + Send + Sync + Default + 'static {
    const DTYPE: DType;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// `(r, c)`'s place in the panels of a matrix with `k_pad` padded columns.
#[inline]
fn packed_index(r: usize, c: usize, k_pad: usize) -> usize {
    (r / PANEL_ROWS) * PANEL_ROWS * k_pad
        + (c / CHUNK) * PANEL_CHUNK
        + (r % PANEL_ROWS) * CHUNK
        + c % CHUNK
}

/// Packs `src` (`(n, k)` or `(k, n)` row-major) into panels, one rayon task per panel.
fn pack<T: Element>(src: &[T], n: usize, k: usize, layout: SourceLayout) -> Vec<T> {
    let k_pad = k.div_ceil(CHUNK) * CHUNK;
    let panels = n.div_ceil(PANEL_ROWS);
    let mut dst = vec![T::default(); panels * PANEL_ROWS * k_pad];
    if k == 0 {
        return dst;
    }
    dst.par_chunks_mut(PANEL_ROWS * k_pad)
        .enumerate()
        .for_each(|(p, panel)| {
            let rows = PANEL_ROWS.min(n - p * PANEL_ROWS);
            match layout {
                SourceLayout::OutIn => {
                    for j in 0..rows {
                        let row = &src[(p * PANEL_ROWS + j) * k..][..k];
                        for (c, v) in row.iter().enumerate() {
                            panel[packed_index(j, c, k_pad)] = *v;
                        }
                    }
                }
                SourceLayout::InOut => {
                    for c in 0..k {
                        let line = &src[c * n + p * PANEL_ROWS..][..rows];
                        for (j, v) in line.iter().enumerate() {
                            panel[packed_index(j, c, k_pad)] = *v;
                        }
                    }
                }
            }
        });
    dst
}

impl PackedMatrix {
    /// Packs a 2-D CPU tensor laid out as `layout` (f32, f16 or bf16; kept in
    /// its dtype).
    pub fn from_tensor(w: &Tensor, layout: SourceLayout) -> Result<Self, PackedError> {
        let (d0, d1) = w.dims2().map_err(|_| PackedError::NotMatrix {
            dims: w.dims().to_vec(),
        })?;
        let (n, k) = match layout {
            SourceLayout::OutIn => (d0, d1),
            SourceLayout::InOut => (d1, d0),
        };
        let w = w
            .contiguous()
            .map_err(|_| PackedError::NotCpu { what: "the weight" })?;
        let (storage, l) = w.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(PackedError::NotCpu { what: "the weight" });
        };
        let (a, b) = l
            .contiguous_offsets()
            .ok_or(PackedError::NotCpu { what: "the weight" })?;
        let panels = match cpu {
            CpuStorage::F32(v) => Panels::F32(pack(&v[a..b], n, k, layout)),
            CpuStorage::F16(v) => Panels::F16(pack(&v[a..b], n, k, layout)),
            CpuStorage::BF16(v) => Panels::Bf16(pack(&v[a..b], n, k, layout)),
            other => {
                return Err(PackedError::Dtype {
                    what: "the weight",
                    dtype: other.dtype(),
                })
            }
        };
        Ok(Self {
            panels: Arc::new(panels),
            n,
            k,
            k_pad: k.div_ceil(CHUNK) * CHUNK,
        })
    }

    /// Output rows `N`.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input columns `K`.
    pub fn columns(&self) -> usize {
        self.k
    }

    /// The storage dtype of the weights.
    pub fn dtype(&self) -> DType {
        match &*self.panels {
            Panels::F32(_) => DType::F32,
            Panels::F16(_) => DType::F16,
            Panels::Bf16(_) => DType::BF16,
        }
    }

    /// `x (M, K)` f32 on the CPU to `y (M, N)` f32 = `x · Wᵀ`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.matmul_fused(x, Epilogue::default())
    }

    /// [`PackedMatrix::matmul`] with `then` applied to each output by the task
    /// that computed it (no pass of its own over memory, no op of its own to
    /// schedule). Above [`GEMV_MAX_ROWS`] rows, candle's ops do the same.
    pub fn matmul_fused(&self, x: &Tensor, then: Epilogue<'_>) -> candle_core::Result<Tensor> {
        let (m, k) = x.dims2()?;
        if let Some(b) = then.bias {
            if b.len() != self.n {
                return Err(PackedError::Bias {
                    found: b.len(),
                    n: self.n,
                }
                .into());
            }
        }
        if k != self.k {
            return Err(PackedError::Shape {
                m,
                k,
                n: self.n,
                wk: self.k,
            }
            .into());
        }
        if x.dtype() != DType::F32 {
            return Err(PackedError::Dtype {
                what: "x",
                dtype: x.dtype(),
            }
            .into());
        }
        if m > GEMV_MAX_ROWS {
            // Many rows (a prompt pass): compute-bound, where candle's blocked
            // GEMM on the widened weights is faster than the streaming kernel.
            let y = x.matmul(&self.unpack_f32()?.t()?)?;
            let y = match then.bias {
                Some(b) => y.broadcast_add(&Tensor::new(b, &Device::Cpu)?)?,
                None => y,
            };
            return if then.gelu_tanh { y.gelu() } else { Ok(y) };
        }
        let x = x.contiguous()?;
        let y = {
            let (storage, l) = x.storage_and_layout();
            let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
                return Err(PackedError::NotCpu { what: "x" }.into());
            };
            let (a, b) = l
                .contiguous_offsets()
                .ok_or(PackedError::NotCpu { what: "x" })?;
            self.multiply_fused(Kernel::detect(), &v[a..b], m, then)
        };
        Tensor::from_vec(y, (m, self.n), &Device::Cpu)
    }

    /// `W` as an f32 `(N, K)` tensor (widened exactly).
    pub fn unpack_f32(&self) -> candle_core::Result<Tensor> {
        fn unpack<T: Element>(w: &[T], n: usize, k: usize, k_pad: usize) -> Vec<f32> {
            let mut out = vec![0f32; n * k];
            if k == 0 {
                return out;
            }
            out.par_chunks_mut(PANEL_ROWS * k)
                .zip(w.par_chunks(PANEL_ROWS * k_pad))
                .for_each(|(rows, panel)| {
                    for (j, row) in rows.chunks_exact_mut(k).enumerate() {
                        for (c, v) in row.iter_mut().enumerate() {
                            *v = panel[packed_index(j, c, k_pad)].to_f32();
                        }
                    }
                });
            out
        }
        let v = match &*self.panels {
            Panels::F32(w) => unpack(w, self.n, self.k, self.k_pad),
            Panels::F16(w) => unpack(w, self.n, self.k, self.k_pad),
            Panels::Bf16(w) => unpack(w, self.n, self.k, self.k_pad),
        };
        Tensor::from_vec(v, (self.n, self.k), &Device::Cpu)
    }

    /// `x` (`M × K` values, row-major) times `Wᵀ`: `M × N` values, row-major,
    /// with the fastest kernel this CPU has.
    pub fn multiply(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.multiply_with(Kernel::detect(), x, m)
    }

    /// As [`PackedMatrix::multiply`] with a chosen kernel (the tests compare them).
    ///
    /// # Panics
    /// If `x` does not hold `m * K` values (the [`PackedMatrix::matmul`] op
    /// checks shapes before it gets here).
    pub fn multiply_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        self.multiply_fused(kernel, x, m, Epilogue::default())
    }

    /// As [`PackedMatrix::multiply_with`], with `then` applied to each output.
    ///
    /// # Panics
    /// As [`PackedMatrix::multiply_with`], and if the bias does not hold `N`
    /// values.
    pub fn multiply_fused(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        then: Epilogue<'_>,
    ) -> Vec<f32> {
        if let Some(b) = then.bias {
            assert_eq!(b.len(), self.n, "the bias must hold N = {} values", self.n);
        }
        assert_eq!(
            x.len(),
            m * self.k,
            "x must hold M*K = {m}*{} values",
            self.k
        );
        match &*self.panels {
            Panels::F32(w) => self.multiply_typed(kernel, x, m, w, then),
            Panels::F16(w) => self.multiply_typed(kernel, x, m, w, then),
            Panels::Bf16(w) => self.multiply_typed(kernel, x, m, w, then),
        }
    }

    fn multiply_typed<T: Element>(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        w: &[T],
        then: Epilogue<'_>,
    ) -> Vec<f32> {
        let (n, k, k_pad) = (self.n, self.k, self.k_pad);
        if m == 0 || n == 0 {
            return vec![0f32; m * n];
        }
        // The kernels read whole chunks: give x the weights' zero padding.
        let padded;
        let x = if k == k_pad {
            x
        } else {
            let mut p = vec![0f32; m * k_pad];
            for (dst, src) in p.chunks_exact_mut(k_pad).zip(x.chunks_exact(k.max(1))) {
                dst[..k].copy_from_slice(src);
            }
            padded = p;
            &padded
        };
        let panels = n.div_ceil(PANEL_ROWS);
        let per_task = panels
            .div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD)
            .max(1);
        let panel_len = PANEL_ROWS * k_pad;
        // Computed as (N_pad, M), so that each task writes one contiguous stretch.
        let mut out_t = vec![0f32; panels * PANEL_ROWS * m];
        out_t
            .par_chunks_mut(per_task * PANEL_ROWS * m)
            .zip(w.par_chunks(per_task * panel_len))
            .enumerate()
            .for_each(|(task, (out, w))| {
                for (p, (out, panel)) in out
                    .chunks_exact_mut(PANEL_ROWS * m)
                    .zip(w.chunks_exact(panel_len))
                    .enumerate()
                {
                    kernel.panel(x, m, k_pad, panel, out);
                    let first_row = (task * per_task + p) * PANEL_ROWS;
                    kernel.epilogue(out, m, first_row, n, then);
                }
            });
        if m == 1 {
            out_t.truncate(n);
            return out_t;
        }
        let mut out = vec![0f32; m * n];
        for (r, col) in out_t.chunks_exact(m).take(n).enumerate() {
            for (i, v) in col.iter().enumerate() {
                out[i * n + r] = *v;
            }
        }
        out
    }

    /// Rows `ids` of `W`, widened to f32: `(len, K)` row-major. This is the
    /// token table when the matrix is a tied LM head.
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Vec<f32>, PackedError> {
        fn gather<T: Element>(
            w: &[T],
            ids: &[u32],
            n: usize,
            k: usize,
            k_pad: usize,
        ) -> Result<Vec<f32>, PackedError> {
            let mut out = Vec::with_capacity(ids.len() * k);
            for &id in ids {
                let r = id as usize;
                if r >= n {
                    return Err(PackedError::Row { row: r, rows: n });
                }
                for c in (0..k).step_by(CHUNK) {
                    let at = packed_index(r, c, k_pad);
                    let len = CHUNK.min(k - c);
                    out.extend(w[at..at + len].iter().map(|v| v.to_f32()));
                }
            }
            Ok(out)
        }
        match &*self.panels {
            Panels::F32(w) => gather(w, ids, self.n, self.k, self.k_pad),
            Panels::F16(w) => gather(w, ids, self.n, self.k, self.k_pad),
            Panels::Bf16(w) => gather(w, ids, self.n, self.k, self.k_pad),
        }
    }

    /// Rows `ids` (`(B, T)` u32) as an f32 `(B, T, K)` tensor.
    pub fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?.to_vec1::<u32>()?;
        let rows = self.gather_rows(&flat)?;
        dims.push(self.k);
        Tensor::from_vec(rows, dims, &Device::Cpu)
    }
}

/// Which implementation this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust over the panels (any CPU).
    Portable,
    /// AVX2 + FMA + F16C: 8 rows by 1 input row, or 4 rows by 2 input rows,
    /// per register tile.
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

    /// `then` on one panel's outputs `out (8, M)`, the outputs of rows
    /// `first_row..first_row + 8` (those past `n` are padding, left alone).
    fn epilogue(self, out: &mut [f32], m: usize, first_row: usize, n: usize, then: Epilogue<'_>) {
        let real = n.saturating_sub(first_row).min(PANEL_ROWS);
        let out = &mut out[..real * m];
        if let Some(bias) = then.bias {
            for (row, b) in out
                .chunks_exact_mut(m)
                .zip(&bias[first_row..first_row + real])
            {
                for v in row {
                    *v += b;
                }
            }
        }
        if then.gelu_tanh {
            self.gelu_tanh_in_place(out);
        }
    }

    /// GPT-2's tanh GELU on every value.
    pub fn gelu_tanh_in_place(self, v: &mut [f32]) {
        match self {
            Self::Portable => v.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found avx2 and fma on this CPU.
            Self::Avx2 => unsafe { avx2::gelu_tanh_in_place(v) },
        }
    }

    /// `out (8, M)` = one panel `(8, K_pad)` · `xᵀ`, with `x (M, K_pad)`.
    fn panel<T: Element>(self, x: &[f32], m: usize, k_pad: usize, w: &[T], out: &mut [f32]) {
        assert!(
            x.len() == m * k_pad && w.len() == PANEL_ROWS * k_pad && out.len() == PANEL_ROWS * m,
            "panel: x {} (M={m}, K_pad={k_pad}), panel {}, out {}",
            x.len(),
            w.len(),
            out.len()
        );
        match self {
            Self::Portable => panel_portable(x, m, k_pad, w, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found avx2, fma and f16c on this CPU, and the
            // lengths were checked above.
            Self::Avx2 => unsafe { avx2::panel(x, m, k_pad, w, out) },
        }
    }
}

fn panel_portable<T: Element>(x: &[f32], m: usize, k_pad: usize, w: &[T], out: &mut [f32]) {
    for i in 0..m {
        let xi = &x[i * k_pad..(i + 1) * k_pad];
        let mut acc = [[0f32; CHUNK]; PANEL_ROWS];
        for (xc, wc) in xi.chunks_exact(CHUNK).zip(w.chunks_exact(PANEL_CHUNK)) {
            for (acc, wr) in acc.iter_mut().zip(wc.chunks_exact(CHUNK)) {
                for e in 0..CHUNK {
                    acc[e] += xc[e] * wr[e].to_f32();
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            out[j * m + i] = acc.iter().sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[allow(clippy::wildcard_imports)] // the AVX2/FMA/F16C intrinsics, by their Intel names
    use std::arch::x86_64::*;

    use super::{Element, CHUNK, PANEL_CHUNK, PANEL_ROWS};
    use candle_core::DType;

    /// `e^z` for `z <= 0` (Cephes' single-precision polynomial, about 1 ulp;
    /// below -87 the result is flushed towards 0).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_nonpositive(z: __m256) -> __m256 {
        let z = _mm256_max_ps(z, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(z, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = z - n ln 2, with ln 2 split in two for precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), z);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // 2^n, built in the exponent bits.
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(y, pow2n)
    }

    /// GPT-2's tanh GELU of eight values: `tanh(u) = (1 - e^-2|u|) / (1 +
    /// e^-2|u|)` with `u`'s sign, so no exponential overflows.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gelu_tanh8(x: __m256) -> __m256 {
        let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        let u = _mm256_mul_ps(
            _mm256_set1_ps(super::GELU_K0),
            _mm256_fmadd_ps(_mm256_set1_ps(super::GELU_K1), x3, x),
        );
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_andnot_ps(sign, u);
        let t = exp_nonpositive(_mm256_mul_ps(a, _mm256_set1_ps(-2.0)));
        let one = _mm256_set1_ps(1.0);
        let th = _mm256_div_ps(_mm256_sub_ps(one, t), _mm256_add_ps(one, t));
        let th = _mm256_or_ps(th, _mm256_and_ps(u, sign));
        let half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5));
        _mm256_fmadd_ps(half_x, th, half_x)
    }

    /// [`gelu_tanh8`] over a slice (a ragged end through a padded copy).
    ///
    /// # Safety
    /// avx2 and fma present.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_tanh_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            let y = gelu_tanh8(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), y);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut buf = [0f32; 8];
            buf[..rest.len()].copy_from_slice(rest);
            _mm256_storeu_ps(buf.as_mut_ptr(), gelu_tanh8(_mm256_loadu_ps(buf.as_ptr())));
            rest.copy_from_slice(&buf[..rest.len()]);
        }
    }

    /// How far ahead of the reads the prefetches run, in bytes.
    const PREFETCH_AHEAD: usize = 2048;

    /// Eight weights at `p` widened to f32 (f16: the F16C conversion; bf16:
    /// shifted into the high half). Both are exact.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<T: Element>(p: *const T) -> __m256 {
        match T::DTYPE {
            DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            DType::BF16 => {
                let raw = _mm_loadu_si128(p.cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
            }
            _ => _mm256_loadu_ps(p.cast()),
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

    /// One input row against the 8 rows of a panel, reading the panel once,
    /// front to back.
    ///
    /// # Safety
    /// avx2/fma/f16c present; `x` holds `k_pad` values, `w` `8 * k_pad`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn one_row<T: Element>(x: *const f32, k_pad: usize, w: *const T) -> [f32; PANEL_ROWS] {
        let chunk_bytes = PANEL_CHUNK * size_of::<T>();
        let mut acc = [_mm256_setzero_ps(); PANEL_ROWS];
        for c in (0..k_pad).step_by(CHUNK) {
            let wc = w.add(c * PANEL_ROWS);
            let ahead = wc.cast::<i8>().wrapping_add(PREFETCH_AHEAD);
            for line in (0..chunk_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
            }
            let x0 = _mm256_loadu_ps(x.add(c));
            let x1 = _mm256_loadu_ps(x.add(c + 8));
            for (j, acc) in acc.iter_mut().enumerate() {
                let wr = wc.add(j * CHUNK);
                *acc = _mm256_fmadd_ps(x0, load8(wr), *acc);
                *acc = _mm256_fmadd_ps(x1, load8(wr.add(8)), *acc);
            }
        }
        let mut out = [0f32; PANEL_ROWS];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
        out
    }

    /// Two input rows against four rows (`first..first + 4`) of a panel: each
    /// weight is widened once for both.
    ///
    /// # Safety
    /// As [`one_row`], for `x0` and `x1`; `first` is 0 or 4.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn two_rows<T: Element>(
        x0: *const f32,
        x1: *const f32,
        k_pad: usize,
        w: *const T,
        first: usize,
    ) -> [[f32; 4]; 2] {
        let mut a = [[_mm256_setzero_ps(); 4]; 2];
        for c in (0..k_pad).step_by(CHUNK) {
            let wc = w.add(c * PANEL_ROWS + first * CHUNK);
            let (x0l, x0h) = (_mm256_loadu_ps(x0.add(c)), _mm256_loadu_ps(x0.add(c + 8)));
            let (x1l, x1h) = (_mm256_loadu_ps(x1.add(c)), _mm256_loadu_ps(x1.add(c + 8)));
            let [a0, a1] = &mut a;
            for (j, (s0, s1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
                let wr = wc.add(j * CHUNK);
                let (lo, hi) = (load8(wr), load8(wr.add(8)));
                *s0 = _mm256_fmadd_ps(x0h, hi, _mm256_fmadd_ps(x0l, lo, *s0));
                *s1 = _mm256_fmadd_ps(x1h, hi, _mm256_fmadd_ps(x1l, lo, *s1));
            }
        }
        let mut out = [[0f32; 4]; 2];
        for (o, a) in out.iter_mut().zip(a) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = hsum(a);
            }
        }
        out
    }

    /// `out (8, M)` = panel `w (8, K_pad)` · `xᵀ`.
    ///
    /// # Safety
    /// avx2/fma/f16c present; `x.len() == m * k_pad`, `w.len() == 8 * k_pad`,
    /// `out.len() == 8 * m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn panel<T: Element>(x: &[f32], m: usize, k_pad: usize, w: &[T], out: &mut [f32]) {
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut i = 0;
        while i + 2 <= m {
            for first in [0, 4] {
                let s = two_rows(xp.add(i * k_pad), xp.add((i + 1) * k_pad), k_pad, wp, first);
                for j in 0..4 {
                    out[(first + j) * m + i] = s[0][j];
                    out[(first + j) * m + i + 1] = s[1][j];
                }
            }
            i += 2;
        }
        if i < m {
            let s = one_row(xp.add(i * k_pad), k_pad, wp);
            for (j, v) in s.iter().enumerate() {
                out[j * m + i] = *v;
            }
        }
    }
}

#[cfg(test)]
mod tests;
