//! Tokens drawn on the device inside the static decode step
//! (`DecodePath::StaticDrawnOnDevice`), run on the CPU: the step's tail runs
//! the CPU form of the draw on the step's logits, so these tests check what
//! the CUDA kernel shares with it: the state the decode loop writes (seeds,
//! draw numbers, seen tokens, a form's mask) and what it reads back. On CUDA
//! `versifier selftest` compares the kernel with the same reference.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::*;
use versifier::generate::device_draw::{all_allowed, bits_of, draw_row};
use versifier::generate::{
    generate_on, poem_prompt, DecodePath, DrawRow, DrawSettings, GenerateRequest, SamplingParams,
    StopReason,
};
use versifier::model::{
    load_model, static_columns, Gpt2Config, GraphMode, StaticDecoder, TokenBatch,
};
use versifier::poetry::forms::{satisfies, PoemForm};
use versifier::poetry::VerseRules;

/// The ids the device definition draws, step by step on the host, from the
/// static decoder's own logits (no tail): what the decode must write.
fn reference_ids(model: &versifier::model::Gpt2, req: &GenerateRequest) -> Vec<Vec<u32>> {
    let vocab = model.config().vocab_size;
    let settings = DrawSettings::of(&req.sampling, vocab).unwrap();
    let b = req.variations;
    let columns = static_columns(
        req.prompt_ids.len(),
        req.max_new_tokens,
        model.config().n_positions,
    );
    let mut dec = StaticDecoder::new(model, b, columns, GraphMode::Eager).unwrap();
    let mut contexts = vec![req.prompt_ids.clone(); b];
    let mut out = vec![Vec::new(); b];
    let mut logits = dec
        .prefill(model, &TokenBatch::left_padded(&contexts, 0))
        .unwrap();
    for step in 0..req.max_new_tokens {
        let ids: Vec<u32> = (0..b)
            .map(|r| {
                let row = DrawRow {
                    settings,
                    seed: req.sampling.seed + r as u64,
                    draw: step as u32,
                    active: true,
                };
                let seen = bits_of(contexts[r].iter().copied(), vocab);
                draw_row(&logits[r], &row, &seen, &all_allowed(vocab)).unwrap()
            })
            .collect();
        for r in 0..b {
            contexts[r].push(ids[r]);
            out[r].push(ids[r]);
        }
        if step + 1 < req.max_new_tokens {
            logits = dec
                .step(model, &TokenBatch::step(ids, vec![true; b]))
                .unwrap();
        }
    }
    out
}

#[test]
fn device_draws_write_what_the_reference_draws_from_the_steps_logits_simulated_on_the_cpu() {
    let mut cfg = Gpt2Config::small(300, 64, 48, 2, 4);
    cfg.n_inner = 4 * 48 + 5;
    let dir = synthetic_model_dir(&cfg, 11, DType::F32);
    let model = load_model(dir.path(), &Device::Cpu, DType::F32)
        .unwrap()
        .model;
    let top_k_only = SamplingParams {
        top_p: 1.0,
        top_k: 7,
        seed: 5,
        ..SamplingParams::default()
    };
    let every_token = SamplingParams {
        top_p: 1.0,
        top_k: 0,
        temperature: 1.3,
        ..SamplingParams::default()
    };
    for (variations, sampling) in [
        (3, SamplingParams::default()),
        (1, SamplingParams::greedy()),
        (2, top_k_only),
        (2, every_token),
    ] {
        let req = decode_request(variations, sampling.clone());
        let run = |path| generate_on(path, &model, &req, |_| &[], &|| false, |_| {}).unwrap();
        let on_device = run(DecodePath::StaticDrawnOnDevice(GraphMode::Capture));
        assert!(on_device.device_draws, "{sampling:?}");
        let ids: Vec<Vec<u32>> = on_device.variations.iter().map(|v| v.ids.clone()).collect();
        assert_eq!(ids, reference_ids(&model, &req), "{sampling:?}");
        // Again on the same (reused) decoder and its device state: the same poem.
        let again = run(DecodePath::StaticDrawnOnDevice(GraphMode::Capture));
        let again: Vec<Vec<u32>> = again.variations.iter().map(|v| v.ids.clone()).collect();
        assert_eq!(again, ids, "{sampling:?}: a reused decoder");
        // The host's draws for the same request: the other path still works beside it.
        let host = run(DecodePath::Static(GraphMode::Capture));
        assert!(!host.device_draws);
        if sampling.greedy {
            let host: Vec<Vec<u32>> = host.variations.iter().map(|v| v.ids.clone()).collect();
            assert_eq!(host, ids, "greedy is the same on both");
        }
    }
    // Settings the device cannot draw go to the host's sampler, said in the answer.
    let nucleus_only = SamplingParams {
        top_k: 0,
        ..SamplingParams::default()
    };
    let req = decode_request(2, nucleus_only);
    let g = generate_on(
        DecodePath::StaticDrawnOnDevice(GraphMode::Capture),
        &model,
        &req,
        |_| &[],
        &|| false,
        |_| {},
    )
    .unwrap();
    assert!(!g.device_draws);
    let host = generate_on(
        DecodePath::Growing,
        &model,
        &req,
        |_| &[],
        &|| false,
        |_| {},
    )
    .unwrap();
    let ids = |g: &versifier::generate::Generation| -> Vec<Vec<u32>> {
        g.variations.iter().map(|v| v.ids.clone()).collect()
    };
    assert_eq!(ids(&g), ids(&host));
}

#[test]
fn a_form_mask_drawn_on_the_device_keeps_the_form_in_every_poem_simulated_on_the_cpu() {
    let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems");
    let m = load_model(&bundled, &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let on_device = |req: &GenerateRequest| {
        let path = DecodePath::StaticDrawnOnDevice(GraphMode::Eager);
        generate_on(
            path,
            &m.model,
            req,
            |id| tok.token_bytes(id),
            &|| false,
            |_| {},
        )
        .unwrap()
    };
    for (form, seed) in [("五絕", 3u64), ("七絕", 9)] {
        let form: PoemForm = form.parse().unwrap();
        let (ids, constraint) = poem_prompt(tok, "春", &form, &VerseRules::off()).unwrap();
        let start = constraint.as_ref().unwrap().1.clone();
        let req = GenerateRequest {
            prompt_ids: ids,
            variations: 4,
            max_new_tokens: 80,
            // Hot enough that the model alone would break the form.
            sampling: SamplingParams {
                seed,
                temperature: 2.5,
                top_k: 200,
                top_p: 1.0,
                ..SamplingParams::default()
            },
            stop_ids: tok.stop_ids().to_vec(),
            constraint,
            rows: Vec::new(),
        };
        let g = on_device(&req);
        assert!(g.device_draws);
        for v in &g.variations {
            let text = format!("{start}{}", v.text);
            assert_eq!(v.stop, Some(StopReason::Stop), "{text}");
            assert!(satisfies(&text, &form), "{form}: {text}");
        }
    }
    // Strict verse rules read the model's probabilities: drawn on the host.
    let form: PoemForm = "五絕".parse().unwrap();
    let (ids, constraint) = poem_prompt(tok, "春", &form, &VerseRules::default()).unwrap();
    let req = GenerateRequest {
        prompt_ids: ids,
        variations: 1,
        max_new_tokens: 40,
        sampling: SamplingParams::default(),
        stop_ids: tok.stop_ids().to_vec(),
        constraint,
        rows: Vec::new(),
    };
    assert!(!on_device(&req).device_draws);
}
