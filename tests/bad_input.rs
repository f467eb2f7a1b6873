//! Bad input gets a clear error that names the file (or setting) and what is
//! wrong, a non-zero exit code, and never a panic. Each case runs the real CLI.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;

/// Runs `generate` on `model` and checks it fails cleanly with every `needles` in stderr.
fn expect_failure(args: &[&str], needles: &[&str]) {
    let out = run_cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: stderr lacks {n:?}: {stderr}");
    }
}

fn generate_on(dir: &Path, extra: &[&str], needles: &[&str]) {
    let mut args = vec![
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
    ];
    args.extend_from_slice(extra);
    expect_failure(&args, needles);
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn missing_folder() {
    generate_on(
        Path::new("/nonexistent/versifier-model"),
        &[],
        &["/nonexistent/versifier-model", "no such file"],
    );
}

#[test]
fn empty_folder() {
    let d = tempfile::tempdir().unwrap();
    generate_on(d.path(), &[], &[d.path().to_str().unwrap(), "empty"]);
}

#[test]
fn zero_byte_safetensors() {
    let d = scratch_copy("hf-safetensors");
    std::fs::write(d.path().join("model.safetensors"), b"").unwrap();
    generate_on(d.path(), &[], &["model.safetensors", "0 bytes"]);
}

#[test]
fn truncated_safetensors() {
    let d = scratch_copy("hf-safetensors");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    generate_on(d.path(), &[], &["model.safetensors", "truncated"]);
}

#[test]
fn garbage_safetensors() {
    let d = scratch_copy("hf-safetensors");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.path().join("model.safetensors"), garbage).unwrap();
    generate_on(
        d.path(),
        &[],
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn header_length_larger_than_file() {
    let d = scratch_copy("hf-safetensors");
    let mut bytes = 5000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(d.path().join("model.safetensors"), bytes).unwrap();
    generate_on(
        d.path(),
        &[],
        &[
            "model.safetensors",
            "header length 5000 is larger than the file",
        ],
    );
}

#[test]
fn header_that_is_not_json() {
    let d = scratch_copy("hf-safetensors");
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"\xff\xfe{[");
    std::fs::write(d.path().join("model.safetensors"), bytes).unwrap();
    generate_on(d.path(), &[], &["model.safetensors", "not valid JSON"]);
}

#[test]
fn tensor_missing() {
    let d = scratch_copy("hf-safetensors");
    rewrite_weights(d.path(), |t| {
        t.remove("transformer.h.1.mlp.c_fc.weight");
    });
    generate_on(
        d.path(),
        &[],
        &["model.safetensors", "`h.1.mlp.c_fc.weight` is missing"],
    );
}

#[test]
fn tensor_with_wrong_shape() {
    let d = scratch_copy("hf-safetensors");
    rewrite_weights(d.path(), |t| {
        t.insert(
            "transformer.h.0.attn.c_attn.weight".into(),
            Tensor::zeros((32, 95), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    generate_on(
        d.path(),
        &[],
        &[
            "model.safetensors",
            "h.0.attn.c_attn.weight",
            "[32, 95]",
            "expected [32, 96]",
        ],
    );
}

#[test]
fn config_with_n_embd_not_divisible_by_n_head() {
    let d = scratch_copy("hf-safetensors");
    edit_config(d.path(), "n_head", 5.into());
    generate_on(
        d.path(),
        &[],
        &["config.json", "n_embd", "divisible by n_head"],
    );
}

#[test]
fn config_with_zero_heads() {
    let d = scratch_copy("hf-safetensors");
    edit_config(d.path(), "n_head", 0.into());
    generate_on(d.path(), &[], &["config.json", "`n_head`", "at least 1"]);
}

#[test]
fn config_with_huge_n_layer() {
    let d = scratch_copy("hf-safetensors");
    edit_config(d.path(), "n_layer", 1_000_000_000u64.into());
    generate_on(
        d.path(),
        &[],
        &["config.json", "`n_layer`", "supported maximum"],
    );
}

#[test]
fn config_with_wrong_types() {
    let d = scratch_copy("hf-safetensors");
    edit_config(d.path(), "n_layer", "two".into());
    generate_on(
        d.path(),
        &[],
        &[
            "config.json",
            "`n_layer`",
            "expected a positive integer",
            "a string",
        ],
    );
    let d = scratch_copy("hf-safetensors");
    edit_config(d.path(), "layer_norm_epsilon", serde_json::json!([1]));
    generate_on(d.path(), &[], &["config.json", "`layer_norm_epsilon`"]);
}

#[test]
fn config_that_is_not_json() {
    let d = scratch_copy("hf-safetensors");
    std::fs::write(d.path().join("config.json"), "{ n_layer: 2").unwrap();
    generate_on(d.path(), &[], &["config.json", "not valid JSON"]);
}

#[test]
fn tokenizer_larger_than_config_vocab_size_names_both_numbers() {
    let d = scratch_copy("hub-safetensors");
    let p = d.path().join("vocab.txt");
    let mut text = std::fs::read_to_string(&p).unwrap();
    for i in 0..100 {
        text.push_str(&format!("extra{i}\n"));
    }
    std::fs::write(&p, text).unwrap();
    generate_on(
        d.path(),
        &[],
        &["vocab.txt", "143 tokens", "vocab_size = 43"],
    );
}

#[test]
fn malformed_tokenizer_json() {
    let d = scratch_copy("hf-safetensors");
    std::fs::write(
        d.path().join("tokenizer.json"),
        r#"{"model": {"type": "BPE", "vocab": 7}}"#,
    )
    .unwrap();
    generate_on(
        d.path(),
        &[],
        &["tokenizer.json", "not a valid tokenizer.json"],
    );
}

#[test]
fn token_ids_out_of_range() {
    let d = fixture("hf-safetensors");
    expect_failure(
        &[
            "generate",
            "--model",
            d.to_str().unwrap(),
            "--prompt-ids",
            "1,99999",
        ],
        &["token id 99999 is out of range"],
    );
}

#[test]
fn max_tokens_zero() {
    generate_on(
        &fixture("hf-safetensors"),
        &["--max-tokens", "0"],
        &["max_tokens", "at least 1"],
    );
}

#[test]
fn temperature_nan_or_negative() {
    generate_on(
        &fixture("hf-safetensors"),
        &["--temperature", "NaN"],
        &["temperature", "positive"],
    );
    generate_on(
        &fixture("hf-safetensors"),
        &["--temperature=-0.5"],
        &["temperature", "positive"],
    );
}

#[test]
fn top_p_outside_unit_interval() {
    generate_on(
        &fixture("hf-safetensors"),
        &["--top-p", "0"],
        &["top_p", "(0, 1]"],
    );
    generate_on(
        &fixture("hf-safetensors"),
        &["--top-p", "1.01"],
        &["top_p", "(0, 1]"],
    );
}

#[test]
fn sharded_checkpoint() {
    let d = scratch_copy("hf-safetensors");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("model.safetensors.index.json"), "{}").unwrap();
    generate_on(d.path(), &[], &["sharded", "model.safetensors.index.json"]);
}

#[test]
fn garbage_pytorch_bin() {
    let d = scratch_copy("pytorch-bin");
    std::fs::write(
        d.path().join("pytorch_model.bin"),
        b"PK\x03\x04 definitely not a zip",
    )
    .unwrap();
    generate_on(
        d.path(),
        &[],
        &["pytorch_model.bin", "not a readable PyTorch checkpoint"],
    );
}

#[test]
fn unknown_device_precision_and_form_are_refused_by_the_argument_parser_naming_the_flag() {
    for (flag, value, said) in [
        ("--device", "tpu", "unknown device `tpu`"),
        ("--dtype", "f8", "unknown precision `f8`"),
        ("--form", "sonnet", "unknown poem form `sonnet`"),
    ] {
        // clap parses the typed value, so the message names the flag too.
        generate_on(
            &fixture("hf-safetensors"),
            &[flag, value],
            &[said, &format!("invalid value '{value}' for '{flag}")],
        );
    }
    expect_failure(
        &["train", "--save-dtype", "f64"],
        &["invalid value 'f64' for '--save-dtype"],
    );
}

#[test]
fn empty_prompt_starts_from_the_start_token() {
    for (layout, start) in [
        ("hf-safetensors", "<|endoftext|>"),
        ("hub-safetensors", "[CLS]"),
    ] {
        let d = fixture(layout);
        let out = run_cli(&[
            "generate",
            "--model",
            d.to_str().unwrap(),
            "--prompt",
            "",
            "--greedy",
            "--json",
            "--max-tokens",
            "3",
        ]);
        assert!(
            out.status.success(),
            "{layout}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids = v["prompt_ids"].as_array().unwrap();
        assert_eq!(
            ids.len(),
            1,
            "{layout}: starts from exactly one token ({start})"
        );
        let m = versifier::model::load_model(&d, &Device::Cpu, candle_core::DType::F32).unwrap();
        assert_eq!(
            Some(ids[0].as_u64().unwrap() as u32),
            m.tokenizer.unwrap().start_id(),
            "{layout}"
        );
    }
}

#[test]
fn prompt_longer_than_context_is_cut_from_the_left_leaving_room_for_the_requested_tokens() {
    let d = fixture("hf-safetensors");
    let ids: Vec<u32> = (0..100).map(|i| (i % 250) as u32).collect();
    // n_positions is 64: p prompt tokens leave room for 64 - p + 1 new ones.
    for (max_tokens, kept) in [(4usize, 61usize), (40, 25)] {
        let out = run_cli(&[
            "generate",
            "--model",
            d.to_str().unwrap(),
            "--prompt-ids",
            &ids_arg(&ids),
            "--greedy",
            "--json",
            "--max-tokens",
            &max_tokens.to_string(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dropped = 100 - kept;
        assert_eq!(v["truncated_prompt_tokens"], dropped);
        assert_eq!(v["prompt_ids"].as_array().unwrap().len(), kept);
        assert_eq!(v["prompt_ids"][0], dropped as u64 % 250);
        assert_eq!(
            v["ids"][0].as_array().unwrap().len(),
            max_tokens,
            "--max-tokens {max_tokens} writes that many tokens"
        );
        assert_eq!(v["stop"][0], "max_tokens");
        let note = format!("first {dropped} tokens were dropped");
        assert_eq!(stderr.matches(&note).count(), 1, "said once: {stderr}");
    }
}

#[test]
fn streamed_text_is_the_json_text_even_when_the_last_character_is_unfinished() {
    let d = fixture("hf-safetensors");
    for seed in 0..6 {
        let run = |json: bool| {
            let seed = seed.to_string();
            let mut args = vec![
                "generate",
                "--model",
                d.to_str().unwrap(),
                "--prompt",
                "Hello",
                "--seed",
                &seed,
                "--max-tokens",
                "24",
                "--temperature",
                "1.5",
            ];
            if json {
                args.push("--json");
            }
            let out = run_cli(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let v: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
        let text = v["text"][0].as_str().unwrap();
        assert_eq!(
            run(false),
            format!("Hello{}\n", text.replace('。', "。\n")),
            "seed {seed}"
        );
    }
}

#[test]
fn a_tokenizer_smaller_than_the_model_warns_and_counts_the_ids_without_text() {
    let d = scratch_copy("hub-safetensors");
    let p = d.path().join("vocab.txt");
    let text = std::fs::read_to_string(&p).unwrap();
    let first: Vec<&str> = text.lines().take(8).collect();
    std::fs::write(&p, first.join("\n") + "\n").unwrap();
    let out = run_cli(&[
        "generate",
        "--model",
        d.path().to_str().unwrap(),
        "--prompt-ids",
        "2,5,6",
        "--max-tokens",
        "30",
        "--seed",
        "3",
        "--json",
        "--log-level",
        "warn",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the tokenizer has 8 tokens but the model's embedding has 43 rows"),
        "warned at load: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = serde_json::from_value(v["ids"][0].clone()).unwrap();
    let past = ids.iter().filter(|&&id| id >= 8).count();
    assert!(
        past > 0,
        "a random model over 43 ids writes some past 8: {ids:?}"
    );
    assert_eq!(v["ids_without_text"], past as u64);
    assert!(
        stderr.contains(&format!("{past} of the {} generated ids", ids.len())),
        "{stderr}"
    );
}

#[test]
fn info_checks_tensor_shapes_and_fails_where_generate_would() {
    let d = scratch_copy("hf-safetensors");
    rewrite_weights(d.path(), |t| {
        t.insert(
            "transformer.h.0.attn.c_attn.weight".into(),
            Tensor::zeros((32, 95), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        t.remove("transformer.h.1.mlp.c_fc.weight");
    });
    let dir = d.path().to_str().unwrap();
    let needles = [
        "model.safetensors",
        "h.0.attn.c_attn.weight` has shape [32, 95], expected [32, 96]",
        "`h.1.mlp.c_fc.weight` is missing",
    ];
    expect_failure(&["info", "--model", dir], &needles);
    // generate refuses the same file (it stops at the first problem).
    generate_on(d.path(), &[], &needles[..2]);
}

#[test]
fn info_says_whether_shapes_were_checked() {
    let out = run_cli(&[
        "info",
        "--json",
        "--model",
        fixture("hf-safetensors").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shapes_checked"], true);
    assert_eq!(v["shape_problems"], serde_json::json!([]));
    // A pickle's shapes are only known by loading it: said, not implied.
    let out = run_cli(&["info", "--model", fixture("pytorch-bin").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not checked"), "{text}");
}

#[test]
fn bad_serve_and_load_bench_settings_name_the_setting_and_what_to_give() {
    let serve = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--log-dir", "none"];
        args.extend_from_slice(extra);
        expect_failure(&args, needles);
    };
    serve(
        &["--allow-origin", "*"],
        &["`allow-origin`", "`*` is not allowed"],
    );
    serve(
        &["--allow-origin", "https://a.org/page"],
        &["`allow-origin`", "no path"],
    );
    serve(
        &["--header-timeout", "0s"],
        &["`header-timeout`", "above zero"],
    );
    serve(
        &["--body-timeout", "never"],
        &["`body-timeout`", "above zero"],
    );
    serve(
        &["--max-connections", "0"],
        &["`max-connections`", "at least 1"],
    );
    serve(
        &["--queue-timeout", "5x"],
        &["`queue-timeout`", "90s, 5m, 1h or never"],
    );
    expect_failure(
        &["bench", "--serve", "--rate=-1"],
        &["`--rate -1`", "above 0"],
    );
    expect_failure(
        &["bench", "--serve", "--duration", "never"],
        &["`duration`", "60s"],
    );
    expect_failure(
        &["bench", "--serve", "--rate", "5", "--load-share", "9"],
        &["`--load-share 9`"],
    );
}
