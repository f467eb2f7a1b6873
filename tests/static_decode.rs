//! The GPU's decode path (static-shape KV cache written in place, one step
//! replayed from a CUDA graph) run on the CPU without graphs: it must give the
//! growing-cache path's logits and tokens, with padding, finished rows, reuse
//! across requests and a full context. On CUDA the same step kernels are
//! captured and replayed; `versifier selftest --device cuda:0` checks that.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use candle_core::{DType, Device};
use common::*;
use versifier::generate::{generate_on, DecodePath, GenerateRequest, SamplingParams, StopReason};
use versifier::model::{
    load_model, static_columns, Gpt2, Gpt2Config, GraphMode, StaticDecoder, StepRunner, TokenBatch,
};

fn tiny_model(dtype: DType, n_positions: usize) -> (tempfile::TempDir, Gpt2) {
    let mut cfg = Gpt2Config::small(300, n_positions, 48, 2, 4);
    cfg.n_inner = 4 * 48 + 5;
    let dir = synthetic_model_dir(&cfg, 11, DType::F32);
    let m = load_model(dir.path(), &Device::Cpu, dtype).unwrap();
    (dir, m.model)
}

/// One decode step: a token per row and whether the row is still live.
type Step = (Vec<u32>, Vec<bool>);

/// Left-padded prompts of different lengths, then steps where row 1 finishes.
fn steps() -> (Vec<Vec<u32>>, Vec<Step>) {
    let prompts = vec![vec![5, 17, 299, 3, 250], vec![42, 7], vec![1, 2, 3]];
    let steps = vec![
        (vec![11, 12, 13], vec![true, true, true]),
        (vec![200, 0, 9], vec![true, false, true]),
        (vec![298, 0, 1], vec![true, false, true]),
    ];
    (prompts, steps)
}

#[test]
fn static_path_gives_the_growing_path_logits_with_padding_and_finished_rows() {
    for dtype in [DType::F32, DType::F16] {
        let (_dir, model) = tiny_model(dtype, 64);
        let (prompts, steps) = steps();
        let mut cache = model.new_cache(prompts.len());
        let mut dec = StaticDecoder::new(&model, prompts.len(), 64, GraphMode::Capture).unwrap();
        let prompt = TokenBatch::left_padded(&prompts, 0);
        let a = model.forward_last(&prompt, &mut cache).unwrap();
        let b = dec.prefill(&model, &prompt).unwrap();
        let mut pairs = vec![(a, b)];
        for (ids, valid) in steps {
            let input = TokenBatch::step(ids, valid);
            pairs.push((
                model.forward_last(&input, &mut cache).unwrap(),
                dec.step(&model, &input).unwrap(),
            ));
        }
        for (i, (a, b)) in pairs.into_iter().enumerate() {
            let a: Vec<Vec<f32>> = a.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
            for (row, (x, y)) in a.iter().zip(&b).enumerate() {
                let d = max_abs_diff(x, y);
                assert!(
                    d < 1e-4,
                    "{dtype:?} call {i} row {row}: logits differ by {d}"
                );
            }
        }
        assert_eq!(dec.runner(), StepRunner::Eager, "no graphs on the CPU");
    }
}

#[test]
fn static_path_writes_the_growing_path_tokens_greedy_and_sampled() {
    let (_dir, model) = tiny_model(DType::F32, 64);
    for (variations, sampling) in [
        (1, SamplingParams::greedy()),
        (3, SamplingParams::default()),
    ] {
        let req = decode_request(variations, sampling);
        let run = |path| generate_on(path, &model, &req, |_| &[], &|| false, |_| {}).unwrap();
        let growing = run(DecodePath::Growing);
        let fixed = run(DecodePath::Static(GraphMode::Capture));
        let ids = |g: &versifier::generate::Generation| -> Vec<Vec<u32>> {
            g.variations.iter().map(|v| v.ids.clone()).collect()
        };
        assert_eq!(ids(&growing), ids(&fixed), "{variations} variations");
        assert_eq!(growing.step_runner, None);
        assert_eq!(fixed.step_runner, Some(StepRunner::Eager));
        // A second request of the same shape reuses the buffers and gives the same poem.
        let again = run(DecodePath::Static(GraphMode::Capture));
        assert_eq!(ids(&again), ids(&fixed), "reused buffers change nothing");
        assert_eq!(
            fixed.kv_cache_bytes,
            2 * 2 * variations * 4 * static_columns(4, 20, 64) * 12 * 4,
            "(k, v) x layers x rows x heads x columns x head_dim x f32"
        );
    }
}

#[test]
fn static_path_stops_at_a_full_context_like_the_growing_path() {
    let (_dir, model) = tiny_model(DType::F32, 12);
    let req = GenerateRequest {
        max_new_tokens: 50,
        ..decode_request(2, SamplingParams::greedy())
    };
    let run = |path| generate_on(path, &model, &req, |_| &[], &|| false, |_| {}).unwrap();
    let (growing, fixed) = (
        run(DecodePath::Growing),
        run(DecodePath::Static(GraphMode::Eager)),
    );
    for (a, b) in growing.variations.iter().zip(&fixed.variations) {
        assert_eq!(a.ids, b.ids);
        assert_eq!(a.stop, b.stop);
        assert_eq!(b.stop, Some(StopReason::ContextFull));
        // 50 new tokens cannot fit a 12-position context: the prompt is cut to
        // its last token (position 0) and the last token fed sits at 11.
        assert_eq!(b.ids.len(), 12);
    }
}

#[test]
fn static_decoder_refuses_out_of_range_ids_and_wrong_batches() {
    let (_dir, model) = tiny_model(DType::F32, 16);
    let mut dec = StaticDecoder::new(&model, 2, 16, GraphMode::Eager).unwrap();
    let err = dec
        .prefill(
            &model,
            &TokenBatch::left_padded(&[vec![1, 300], vec![2]], 0),
        )
        .unwrap_err();
    assert!(err.to_string().contains("300"), "{err}");
    let err = dec
        .prefill(&model, &TokenBatch::left_padded(&[vec![1]], 0))
        .unwrap_err();
    assert!(err.to_string().contains("2 rows"), "{err}");
}

/// A model with weights 8x GPT-2's scale, so attention is sharp and a wrong
/// column, row or head moves the logits far beyond rounding; held as the GPU
/// holds it (every tensor in `dtype`) or as the CPU does (packed matrices).
fn sharp_model(dtype: DType, uniform: bool) -> Gpt2 {
    use candle_nn::VarBuilder;
    use versifier::model::synthetic::synthetic_tensors;
    let mut cfg = Gpt2Config::small(300, 64, 48, 2, 4);
    cfg.n_inner = 4 * 48 + 5;
    let tensors = synthetic_tensors(&cfg, 5)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let sharp = name.contains(".attn.") || name.contains(".mlp.") || name.contains("wte");
            (name, if sharp { (t * 8.0).unwrap() } else { t })
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, dtype, &Device::Cpu);
    if uniform {
        Gpt2::load_uniform(vb, &cfg).unwrap()
    } else {
        Gpt2::load(vb, &cfg).unwrap()
    }
}

#[test]
fn fused_step_kernels_give_the_composed_steps_logits_in_every_dtype_simulated_on_the_cpu() {
    use versifier::model::StepKernels;
    let cases = [
        (DType::F32, false, 1e-4),
        (DType::F32, true, 1e-4),
        (DType::F16, true, 2e-2),
        (DType::BF16, true, 1e-1),
    ];
    for (dtype, uniform, tol) in cases {
        let model = sharp_model(dtype, uniform);
        let (prompts, steps) = steps();
        let prompt = TokenBatch::left_padded(&prompts, 0);
        let mut decoders = [StepKernels::Composed, StepKernels::Fused].map(|k| {
            let mut d = StaticDecoder::new(&model, prompts.len(), 64, GraphMode::Eager).unwrap();
            d.set_kernels(k).unwrap();
            d.prefill(&model, &prompt).unwrap();
            d
        });
        assert_eq!(decoders[1].kernels(), StepKernels::Fused);
        let mut spread = 0.0f32;
        for (i, (ids, valid)) in steps.into_iter().enumerate() {
            let input = TokenBatch::step(ids, valid.clone());
            let composed = decoders[0].step(&model, &input).unwrap();
            let fused = decoders[1].step(&model, &input).unwrap();
            for (row, (a, b)) in composed.iter().zip(&fused).enumerate() {
                let (lo, hi) = a
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
                spread = spread.max(hi - lo);
                let d = max_abs_diff(a, b);
                assert!(
                    d < tol * (hi - lo).max(1.0),
                    "{dtype:?} uniform={uniform} step {i} row {row}: logits differ by {d} (spread {})",
                    hi - lo
                );
            }
        }
        assert!(
            spread > 1.0,
            "{dtype:?}: logits too flat ({spread}) to tell kernels apart"
        );
    }
}
