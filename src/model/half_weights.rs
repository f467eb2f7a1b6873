//! Fast conversions between f32 and f16/bf16 CPU tensors: `half`'s
//! vectorized slice conversion on all cores (candle converts one element at a
//! time: half a second for GPT-2 124M), used when a checkpoint is loaded in
//! another precision than it is stored in.
//!
//! Owns only these conversions. Must not allocate devices or touch CUDA.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect
mod tests {
    use super::*;

    use crate::model::test_values as values;

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
}
