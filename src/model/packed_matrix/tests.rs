//! Unit tests of `model/packed_matrix.rs`.

use super::*;

use crate::model::test_values as values;

/// f64 sums of `x (M, K) · wᵀ` for `w (N, K)`.
fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
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
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "{what}: element {idx}: got {g}, want {w}"
        );
    }
}

/// `w (N, K)` f32 values as a tensor of `dtype` in `layout`, and the values
/// it holds after rounding, `(N, K)`.
fn weight(n: usize, k: usize, dtype: DType, layout: SourceLayout) -> (Tensor, Vec<f32>) {
    let w = Tensor::from_vec(values(n * k, (n * 31 + k) as u64), (n, k), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("a CPU tensor");
    let rounded = w
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("widening");
    let w = match layout {
        SourceLayout::OutIn => w,
        SourceLayout::InOut => w.t().and_then(|t| t.contiguous()).expect("transpose"),
    };
    (w, rounded)
}

#[test]
fn every_kernel_matches_an_f64_reference_in_every_dtype_layout_and_ragged_shape() {
    // Ragged on purpose: N not a multiple of 8, K not a multiple of 16,
    // odd and even M, and more panels than tasks.
    let shapes = [
        (1, 1, 1),
        (1, 16, 8),
        (2, 17, 9),
        (3, 33, 23),
        (5, 48, 64),
        (8, 768, 41),
        (16, 40, 300),
    ];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for layout in [SourceLayout::OutIn, SourceLayout::InOut] {
            for &(m, k, n) in &shapes {
                let (w, rounded) = weight(n, k, dtype, layout);
                let packed = PackedMatrix::from_tensor(&w, layout).expect("packs");
                assert_eq!(
                    (packed.rows(), packed.columns(), packed.dtype()),
                    (n, k, dtype)
                );
                let x = values(m * k, 7 + m as u64);
                let want = reference(&x, m, k, &rounded, n);
                for kernel in Kernel::available() {
                    let got = packed.multiply_with(kernel, &x, m);
                    assert_close(
                        &got,
                        &want,
                        &format!("{kernel:?} {dtype:?} {layout:?} m={m} k={k} n={n}"),
                    );
                }
            }
        }
    }
}

#[test]
fn the_tensor_op_agrees_with_candles_matmul_on_both_sides_of_the_gemm_threshold() {
    let (k, n) = (96, 50);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let (w, rounded) = weight(n, k, dtype, SourceLayout::InOut); // (K, N)
        let rounded = Tensor::from_vec(rounded, (n, k), &Device::Cpu).expect("w");
        let packed = PackedMatrix::from_tensor(&w, SourceLayout::InOut).expect("packs");
        for m in [1, 7, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 40] {
            let x = Tensor::from_vec(values(m * k, 3), (m, k), &Device::Cpu).expect("x");
            let want = x
                .matmul(&rounded.t().expect("t"))
                .and_then(|t| t.to_vec2::<f32>())
                .expect("candle");
            let got = packed
                .matmul(&x)
                .and_then(|t| t.to_vec2::<f32>())
                .expect("packed");
            for (g, w) in got.iter().zip(&want) {
                assert_close(g, w, &format!("{dtype:?} m={m}"));
            }
        }
        let unpacked = packed
            .unpack_f32()
            .and_then(|t| t.to_vec2::<f32>())
            .expect("unpacks");
        assert_eq!(
            unpacked,
            rounded.to_vec2::<f32>().expect("w"),
            "{dtype:?} unpacked"
        );
    }
}

/// GPT-2's tanh GELU in f64.
fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

#[test]
fn every_kernels_gelu_matches_an_f64_reference_from_minus_20_to_20() {
    // 40,001 points, a ragged length, and the far tails where tanh is ±1.
    let xs: Vec<f32> = (0..=40_000)
        .map(|i| -20.0 + i as f32 * 1e-3)
        .chain([-1e4, -88.0, -9.5, -1e-30, 0.0, 1e-30, 9.5, 88.0, 1e4])
        .collect();
    for kernel in Kernel::available() {
        let mut got = xs.clone();
        kernel.gelu_tanh_in_place(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = gelu_f64(f64::from(*x));
            let err = (f64::from(*g) - want).abs();
            assert!(
                err <= 2e-7 * want.abs().max(1.0),
                "{kernel:?}: gelu({x}) = {g}, want {want} (error {err:e})"
            );
        }
    }
}

#[test]
fn the_fused_bias_and_gelu_equal_the_separate_ops_on_both_sides_of_the_gemm_threshold() {
    let (k, n) = (40, 21); // a ragged last panel: rows 21..24 are padding
    let (w, rounded) = weight(n, k, DType::F16, SourceLayout::InOut);
    let packed = PackedMatrix::from_tensor(&w, SourceLayout::InOut).expect("packs");
    let bias: Vec<f32> = values(n, 9).iter().map(|v| v * 3.0).collect();
    for m in [1, 2, 3, 8, GEMV_MAX_ROWS + 3] {
        let x = values(m * k, 4);
        let plain = reference(&x, m, k, &rounded, n);
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("x");
        for gelu_tanh in [false, true] {
            let then = Epilogue {
                bias: Some(&bias),
                gelu_tanh,
            };
            let got = packed
                .matmul_fused(&xt, then)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("fused");
            let want: Vec<f32> = plain
                .iter()
                .enumerate()
                .map(|(i, y)| {
                    let v = f64::from(*y) + f64::from(bias[i % n]);
                    (if gelu_tanh { gelu_f64(v) } else { v }) as f32
                })
                .collect();
            assert_close(&got, &want, &format!("m={m} gelu={gelu_tanh}"));
        }
    }
    let short = Epilogue {
        bias: Some(&bias[..n - 1]),
        gelu_tanh: false,
    };
    let x = Tensor::zeros((1, k), DType::F32, &Device::Cpu).expect("x");
    let err = packed.matmul_fused(&x, short).unwrap_err().to_string();
    assert!(err.contains("20 values for 21 outputs"), "{err}");
}

#[test]
fn gathered_rows_are_the_rows_of_the_source_tensor() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let (n, k) = (21, 37);
        let (w, rounded) = weight(n, k, dtype, SourceLayout::OutIn);
        let packed = PackedMatrix::from_tensor(&w, SourceLayout::OutIn).expect("packs");
        let ids = [0u32, 20, 7, 7, 8];
        let got = packed.gather_rows(&ids).expect("in range");
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&r| {
                rounded[r as usize * k..(r as usize + 1) * k]
                    .iter()
                    .copied()
            })
            .collect();
        assert_eq!(got, want, "{dtype:?}");
        let ids = Tensor::from_vec(vec![3u32, 4, 5, 6], (2, 2), &Device::Cpu).expect("ids");
        assert_eq!(packed.embed(&ids).expect("embeds").dims(), &[2, 2, k]);
    }
}

#[test]
fn wrong_dtypes_shapes_and_rows_are_errors_not_panics() {
    let (w, _) = weight(10, 16, DType::F32, SourceLayout::OutIn);
    let packed = PackedMatrix::from_tensor(&w, SourceLayout::OutIn).expect("packs");
    let wrong_k = Tensor::zeros((1, 15), DType::F32, &Device::Cpu).expect("x");
    let err = packed.matmul(&wrong_k).expect_err("K differs").to_string();
    assert!(err.contains("K=15") && err.contains("K=16"), "{err}");
    let half_x = Tensor::zeros((1, 16), DType::F16, &Device::Cpu).expect("x");
    let err = packed.matmul(&half_x).expect_err("x in f16").to_string();
    assert!(err.contains("x must be f32"), "{err}");
    let err = packed
        .gather_rows(&[10])
        .expect_err("row 10 of 10")
        .to_string();
    assert!(err.contains("row 10") && err.contains("10 rows"), "{err}");
    let ints = Tensor::zeros((2, 2), DType::U32, &Device::Cpu).expect("u32");
    let err = PackedMatrix::from_tensor(&ints, SourceLayout::OutIn)
        .expect_err("u32")
        .to_string();
    assert!(err.contains("U32"), "{err}");
    let flat = Tensor::zeros(4, DType::F32, &Device::Cpu).expect("1-D");
    assert!(PackedMatrix::from_tensor(&flat, SourceLayout::OutIn).is_err());
}
