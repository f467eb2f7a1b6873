//! Our GPT-2 against the reference implementation (Hugging Face transformers on
//! PyTorch): logits to 1e-4 and greedy continuations exactly, for every
//! checkpoint layout. Fixtures and the script that made them: tests/fixtures/.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use candle_core::{DType, Device};
use common::*;
use versifier::generate::{generate, GenerateRequest, SamplingParams};
use versifier::model::{load_model, TokenBatch};

const TOL: f32 = 1e-4;

#[test]
fn logits_match_reference_for_every_layout() {
    for layout in LAYOUTS {
        let r = reference(layout);
        let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
        let logits = prompt_logits(&m.model, &r.prompt_ids);
        assert_eq!(logits.len(), r.logits.len(), "{layout}");
        for (t, (ours, theirs)) in logits.iter().zip(&r.logits).enumerate() {
            let d = max_abs_diff(ours, theirs);
            assert!(d < TOL, "{layout}: position {t} differs by {d}");
        }
    }
}

#[test]
fn logits_with_kv_cache_match_one_full_pass() {
    // Feeding the prompt one token at a time through the cache gives the same logits.
    for layout in LAYOUTS {
        let r = reference(layout);
        let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
        let mut cache = m.model.new_cache(1);
        for (t, &id) in r.prompt_ids.iter().enumerate() {
            let l = m
                .model
                .forward_last(&TokenBatch::step(vec![id], vec![true]), &mut cache)
                .unwrap();
            let l: Vec<f32> = l.squeeze(0).unwrap().to_vec1().unwrap();
            let d = max_abs_diff(&l, &r.logits[t]);
            assert!(d < TOL, "{layout}: cached step {t} differs by {d}");
        }
    }
}

#[test]
fn greedy_continuation_matches_reference_exactly() {
    for layout in LAYOUTS {
        let r = reference(layout);
        let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
        let req = GenerateRequest {
            prompt_ids: r.prompt_ids.clone(),
            variations: 1,
            max_new_tokens: r.greedy_ids.len(),
            sampling: SamplingParams::greedy(),
            stop_ids: m.tokenizer.as_ref().unwrap().stop_ids().to_vec(),
            constraint: None,
            rows: Vec::new(),
        };
        let g = generate(&m.model, &req, |_| &[], &|| false, |_| {}).unwrap();
        assert_eq!(g.variations[0].ids, r.greedy_ids, "{layout}");
    }
}

#[test]
fn left_padded_batch_matches_each_prompt_alone() {
    for layout in LAYOUTS {
        let r = reference(layout);
        let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
        assert!(
            r.batch_prompts
                .iter()
                .map(Vec::len)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
        let mut cache = m.model.new_cache(r.batch_prompts.len());
        let last = m
            .model
            .forward_last(&TokenBatch::left_padded(&r.batch_prompts, 0), &mut cache)
            .unwrap();
        let last: Vec<Vec<f32>> = last.to_vec2().unwrap();
        for (row, (ours, theirs)) in last.iter().zip(&r.batch_last_logits).enumerate() {
            let d = max_abs_diff(ours, theirs);
            assert!(d < TOL, "{layout}: batch row {row} differs by {d}");
        }
    }
}

#[test]
fn right_padded_batch_matches_each_prompt_at_its_last_real_token() {
    for layout in LAYOUTS {
        let r = reference(layout);
        let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
        let mut cache = m.model.new_cache(r.batch_prompts.len());
        let all = m
            .model
            .forward(&TokenBatch::right_padded(&r.batch_prompts, 0), &mut cache)
            .unwrap();
        for (row, prompt) in r.batch_prompts.iter().enumerate() {
            let ours: Vec<f32> = all
                .get(row)
                .unwrap()
                .get(prompt.len() - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let d = max_abs_diff(&ours, &r.batch_last_logits[row]);
            assert!(d < TOL, "{layout}: right-padded row {row} differs by {d}");
        }
    }
}

#[test]
fn batched_greedy_variations_equal_single_greedy_run() {
    // Eight identical greedy rows in one batch must all equal the reference.
    let layout = "hf-safetensors";
    let r = reference(layout);
    let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
    let req = GenerateRequest {
        prompt_ids: r.prompt_ids.clone(),
        variations: 8,
        max_new_tokens: r.greedy_ids.len(),
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    };
    let g = generate(&m.model, &req, |_| &[], &|| false, |_| {}).unwrap();
    for v in &g.variations {
        assert_eq!(v.ids, r.greedy_ids);
    }
}

#[test]
fn cli_greedy_json_reproduces_reference_for_every_layout() {
    for layout in LAYOUTS {
        let r = reference(layout);
        let path = fixture(layout);
        let out = run_cli(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt-ids",
            &ids_arg(&r.prompt_ids),
            "--greedy",
            "--json",
            "--max-tokens",
            &r.greedy_ids.len().to_string(),
        ]);
        assert!(
            out.status.success(),
            "{layout}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<u32> = v["ids"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, r.greedy_ids, "{layout}");
        for key in [
            "prompt_ids",
            "text",
            "load_ms",
            "first_token_ms",
            "tokens_per_s",
            "device",
            "dtype",
        ] {
            assert!(v.get(key).is_some(), "{layout}: JSON lacks {key}");
        }
    }
}

#[test]
fn tokenizers_encode_prompts_like_the_reference() {
    // The fixture prompts were encoded by the Python tokenizers; ours must agree.
    let m = load_model(&fixture("hf-safetensors"), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.unwrap();
    assert_eq!(
        tok.prompt_ids("春眠不覺曉 🌸").unwrap(),
        reference("hf-safetensors").prompt_ids
    );
    let m = load_model(&fixture("hub-safetensors"), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.unwrap();
    assert_eq!(
        tok.prompt_ids("床前明月光").unwrap(),
        reference("hub-safetensors").prompt_ids
    );
    // [SEP] ends a generation for vocab.txt models even though config.json's eos (50256) is out of range.
    assert_eq!(tok.stop_ids(), &[3]);
    assert!(matches!(
        tok.prompt_ids("床前X"),
        Err(versifier::model::EncodeError::UnknownCharacters { ref chars }) if chars.contains('x') || chars.contains('X')
    ));
}

#[test]
fn streamed_pieces_concatenate_to_the_final_text_without_half_characters() {
    let layout = "hf-safetensors";
    let m = load_model(&fixture(layout), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    // A prompt whose greedy continuation is long enough to split multibyte characters.
    let req = GenerateRequest {
        prompt_ids: tok.prompt_ids("月亮 🌙").unwrap(),
        variations: 2,
        max_new_tokens: 40,
        sampling: SamplingParams {
            seed: 3,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            greedy: false,
        },
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    };
    let mut streamed = vec![String::new(); 2];
    let g = generate(
        &m.model,
        &req,
        |id| tok.token_bytes(id),
        &|| false,
        |ev| {
            streamed[ev.variation].push_str(&ev.text);
        },
    )
    .unwrap();
    for (v, s) in g.variations.iter().zip(&streamed) {
        assert!(v.text.starts_with(s.as_str()));
        assert_eq!(v.text, tok.decode(&v.ids));
    }
}
