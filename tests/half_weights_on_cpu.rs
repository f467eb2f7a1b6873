//! f16 and bf16 on the CPU: the weight matrices stay 2 bytes wide and the math is
//! f32, so a checkpoint stored in half precision gives the same results as the
//! same checkpoint loaded in f32 (up to summation order), while half the bytes
//! are read per token. Also checked against the PyTorch reference fixtures.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use candle_core::{DType, Device};
use common::*;
use versifier::generate::{generate, GenerateRequest, SamplingParams};
use versifier::model::{load_model, Gpt2Config, TokenBatch};

/// Writes a random checkpoint stored in `dtype`, with a tokenizer from the fixtures.
fn half_checkpoint(dtype: DType) -> (tempfile::TempDir, Gpt2Config) {
    // Odd sizes on purpose: n_embd not a multiple of 8 (kernel tails), vocab and
    // n_inner not multiples of the per-task row count.
    let mut cfg = Gpt2Config::small(1000, 64, 44, 2, 4);
    cfg.n_inner = 4 * 44 + 3;
    (synthetic_model_dir(&cfg, 7, dtype), cfg)
}

/// Last-position logits of a left-padded batch, then three cached single steps.
fn logits_trace(model: &versifier::model::Gpt2) -> Vec<Vec<f32>> {
    let prompts = vec![vec![5, 17, 999, 3, 250], vec![42, 7]];
    let mut cache = model.new_cache(prompts.len());
    let mut out: Vec<Vec<f32>> = model
        .forward_last(&TokenBatch::left_padded(&prompts, 0), &mut cache)
        .unwrap()
        .to_vec2()
        .unwrap();
    for step in [[11u32, 12], [500, 0], [998, 1]] {
        let l = model
            .forward_last(
                &TokenBatch::step(step.to_vec(), vec![true, true]),
                &mut cache,
            )
            .unwrap();
        out.extend(l.to_vec2::<f32>().unwrap());
    }
    out
}

#[test]
fn half_checkpoints_give_the_f32_logits_when_run_in_half_on_cpu() {
    for dtype in [DType::F16, DType::BF16] {
        let (dir, cfg) = half_checkpoint(dtype);
        let full = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let half = load_model(dir.path(), &Device::Cpu, dtype).unwrap();
        assert_eq!(half.model.dtype(), dtype, "weights stay {dtype:?}");
        assert_eq!(half.model.compute_dtype(), DType::F32, "math in f32");
        let (a, b) = (logits_trace(&full.model), logits_trace(&half.model));
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.len(), cfg.vocab_size);
            let d = max_abs_diff(x, y);
            assert!(d < 1e-4, "{dtype:?}: row {i} differs by {d}");
        }
    }
}

#[test]
fn half_on_cpu_keeps_an_f32_kv_cache_and_half_size_weights() {
    let (dir, cfg) = half_checkpoint(DType::F16);
    let full = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let half = load_model(dir.path(), &Device::Cpu, DType::F16).unwrap();
    let mut caches = Vec::new();
    for m in [&full.model, &half.model] {
        let mut cache = m.new_cache(1);
        m.forward_last(&TokenBatch::left_padded(&[vec![1, 2, 3]], 0), &mut cache)
            .unwrap();
        caches.push(cache.bytes());
    }
    // (layers, K and V, columns, n_embd, f32): the buffers hold at least the
    // 3 positions written (spare columns are allocated ahead), f32 in both.
    let per_column = cfg.n_layer * 2 * cfg.n_embd * 4;
    assert_eq!(caches[0] % per_column, 0, "{} bytes", caches[0]);
    assert!(caches[0] >= 3 * per_column, "{} bytes", caches[0]);
    assert_eq!(caches[1], caches[0], "the KV cache is f32 in both");
    assert_eq!(full.model.dtype(), DType::F32);
    assert_eq!(half.model.dtype(), DType::F16);
}

#[test]
fn reference_fixtures_in_f16_and_bf16_on_cpu_stay_close_to_pytorch_f32() {
    // f32 checkpoints rounded to half precision: no longer exact, but the error
    // stays within a few units of the format's rounding (f16 keeps 11 significant
    // bits, bf16 8) relative to the largest logit. Measured: f16 0.2%, bf16 2.1%.
    for layout in LAYOUTS {
        let r = reference(layout);
        for (dtype, rel) in [
            (DType::F16, 8.0 * 2f32.powi(-11)),
            (DType::BF16, 8.0 * 2f32.powi(-8)),
        ] {
            let m = load_model(&fixture(layout), &Device::Cpu, dtype).unwrap();
            let logits = prompt_logits(&m.model, &r.prompt_ids);
            for (t, (ours, theirs)) in logits.iter().zip(&r.logits).enumerate() {
                let d = max_abs_diff(ours, theirs);
                let scale = theirs.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert!(
                    d < rel * scale,
                    "{layout} {dtype:?}: position {t} differs by {d} (largest logit {scale})"
                );
            }
        }
    }
}

#[test]
fn bundled_model_writes_the_same_greedy_poem_in_f16_and_f32_on_cpu() {
    // The bundled model is stored in f16, so f16 on the CPU loses nothing.
    let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems");
    let mut poems = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let m = load_model(&bundled, &Device::Cpu, dtype).unwrap();
        let tok = m.tokenizer.as_ref().unwrap();
        let req = GenerateRequest {
            prompt_ids: tok
                .start_id()
                .into_iter()
                .chain(tok.encode("春風").unwrap())
                .collect(),
            variations: 2,
            max_new_tokens: 48,
            sampling: SamplingParams::greedy(),
            stop_ids: tok.stop_ids().to_vec(),
            constraint: None,
            rows: Vec::new(),
        };
        let g = generate(&m.model, &req, |_| &[], &|| false, |_| {}).unwrap();
        poems.push(
            g.variations
                .iter()
                .map(|v| v.ids.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        poems[0][0].len() > 8,
        "a real continuation: {:?}",
        poems[0][0]
    );
    assert_eq!(poems[0], poems[1]);
}
