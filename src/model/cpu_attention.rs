//! Attention of one new token per row over the cached keys and values, on the
//! CPU, in one pass: scores, mask, softmax and the weighted sum of values per
//! (row, head), written straight into the `(B, 1, C)` layout the output
//! projection reads. Decoding calls it once per layer per token; as candle ops
//! it was two small GEMMs, a softmax, a mask add, casts and two copies, each
//! an op to schedule (at batch 8 the GEMMs' packing alone was a tenth of a
//! step).
//!
//! Owns: that arithmetic, reading the cache's buffers in place through their
//! strides. Must not: decide when it is used (the model does: f32 inference
//! on the CPU with one query per row).

use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

/// Values of `(row, head, column, dim)` work above which heads are spread
/// over the rayon pool (below it one thread is faster than waking another).
const PARALLEL_WORK: usize = 1 << 16;

/// A contiguous-in-its-last-dimension f32 view: the storage's values and where
/// element `(b, h, s, 0)` starts.
struct View<'a> {
    values: &'a [f32],
    offset: usize,
    strides: [usize; 4],
}

impl View<'_> {
    #[inline]
    fn row(&self, b: usize, h: usize, s: usize, hd: usize) -> &[f32] {
        let at = self.offset + b * self.strides[0] + h * self.strides[1] + s * self.strides[2];
        &self.values[at..at + hd]
    }
}

fn f32_values(storage: &Storage) -> candle_core::Result<&[f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
        _ => Err(candle_core::Error::Msg(
            "cpu attention: tensors must be f32 on the CPU".into(),
        )),
    }
}

/// `softmax(q·kᵀ · scale + mask) · v` for `q (B, H, 1, hd)` and `k`, `v`
/// `(B, H, S, hd)` (any strides, unit stride in `hd`), `mask` `(B, 1, 1, S)`
/// (0 or a large negative) or none. Returns `(B, 1, H·hd)`.
pub fn attend_one_query(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
) -> candle_core::Result<Tensor> {
    let (b, h, t, hd) = q.dims4()?;
    let (kb, kh, s, khd) = k.dims4()?;
    if t != 1 || (kb, kh, khd) != (b, h, hd) || v.dims4()? != (b, h, s, hd) {
        return Err(candle_core::Error::Msg(format!(
            "cpu attention: q {:?}, k {:?}, v {:?} are not one query over a cache",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let q = q.contiguous()?;
    let mask = mask.map(Tensor::contiguous).transpose()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let view = |values, l: &candle_core::Layout| -> candle_core::Result<View<'_>> {
        let st = l.stride();
        if st[3] != 1 {
            return Err(candle_core::Error::Msg(
                "cpu attention: the head dimension must have unit stride".into(),
            ));
        }
        Ok(View {
            values,
            offset: l.start_offset(),
            strides: [st[0], st[1], st[2], st[3]],
        })
    };
    let kv = view(f32_values(&ks)?, kl)?;
    let vv = view(f32_values(&vs)?, vl)?;
    let q_values = &f32_values(&qs)?[ql.start_offset()..ql.start_offset() + b * h * hd];
    let mask_storage = mask.as_ref().map(Tensor::storage_and_layout);
    let mask_values = match &mask_storage {
        Some((m, l)) => {
            if l.shape().elem_count() != b * s {
                return Err(candle_core::Error::Msg(format!(
                    "cpu attention: a mask of {:?} for {b} rows of {s} columns",
                    l.shape().dims()
                )));
            }
            Some(&f32_values(m)?[l.start_offset()..l.start_offset() + b * s])
        }
        None => None,
    };
    let mut out = vec![0f32; b * h * hd];
    let one = |(bh, y): (usize, &mut [f32])| {
        let (row, head) = (bh / h, bh % h);
        let qv = &q_values[bh * hd..(bh + 1) * hd];
        let mut scores: Vec<f32> = (0..s)
            .map(|c| {
                let kr = kv.row(row, head, c, hd);
                let dot: f32 = qv.iter().zip(kr).map(|(a, b)| a * b).sum();
                dot * scale + mask_values.map_or(0.0, |m| m[row * s + c])
            })
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in &mut scores {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for (c, p) in scores.iter().enumerate() {
            let w = p * inv;
            for (y, v) in y.iter_mut().zip(vv.row(row, head, c, hd)) {
                *y += w * v;
            }
        }
    };
    if b * h * s * hd >= PARALLEL_WORK {
        out.par_chunks_mut(hd).enumerate().for_each(one);
    } else {
        out.chunks_mut(hd).enumerate().for_each(one);
    }
    drop((qs, ks, vs, mask_storage));
    Tensor::from_vec(out, (b, 1, h * hd), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_values as values;
    use candle_core::{DType, D};

    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Vec<f32> {
        let (b, h, _, hd) = q.dims4().expect("q");
        let att = (q.matmul(&k.t().expect("t")).expect("qk") * scale).expect("scale");
        let att = match mask {
            Some(m) => att.broadcast_add(m).expect("mask"),
            None => att,
        };
        let att = candle_nn::ops::softmax(&att, D::Minus1).expect("softmax");
        att.matmul(&v.contiguous().expect("v"))
            .and_then(|y| y.transpose(1, 2))
            .and_then(|y| y.reshape((b, 1, h * hd)))
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1())
            .expect("reference")
    }

    #[test]
    fn one_query_over_a_strided_cache_matches_the_candle_ops_with_and_without_a_mask() {
        let dev = Device::Cpu;
        for (b, h, s, hd, cap) in [(1, 2, 5, 8, 8), (3, 4, 70, 16, 128), (8, 6, 129, 64, 256)] {
            let q = Tensor::from_vec(values(b * h * hd, 1), (b, h, 1, hd), &dev).expect("q");
            // Views of longer buffers, as the growing cache hands them out.
            let buf = |seed| {
                Tensor::from_vec(values(b * h * cap * hd, seed), (b, h, cap, hd), &dev)
                    .and_then(|t| t.narrow(2, 0, s))
                    .expect("kv")
            };
            let (k, v) = (buf(2), buf(3));
            let mask: Vec<f32> = (0..b * s)
                .map(|i| if i % s < (i / s) * 2 { -1.0e30 } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (b, 1, 1, s), &dev).expect("mask");
            for m in [None, Some(&mask)] {
                let got = attend_one_query(&q, &k, &v, m, 0.125)
                    .and_then(|y| y.flatten_all())
                    .and_then(|y| y.to_vec1::<f32>())
                    .expect("attends");
                let want = reference(&q, &k, &v, m, 0.125);
                let d = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "b={b} h={h} s={s} mask={}: {d}", m.is_some());
            }
        }
    }

    #[test]
    fn shapes_that_are_not_one_query_over_a_cache_are_errors() {
        let dev = Device::Cpu;
        let z = |shape: (usize, usize, usize, usize)| {
            Tensor::zeros(shape, DType::F32, &dev).expect("z")
        };
        let err = attend_one_query(
            &z((1, 2, 2, 4)),
            &z((1, 2, 3, 4)),
            &z((1, 2, 3, 4)),
            None,
            1.0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not one query"), "{err}");
        let half = z((1, 2, 1, 4)).to_dtype(DType::F16).expect("f16");
        let err = attend_one_query(&half, &z((1, 2, 3, 4)), &z((1, 2, 3, 4)), None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("f32"), "{err}");
    }
}
