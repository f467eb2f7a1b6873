//! One path from a request to a poem: `versifier generate` sends its request
//! through the engine the window uses, so the same settings give the same ids,
//! and a load that does not fit is refused with the same figures and options.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use versifier::engine::{
    Command, DeviceChoice, Engine, EngineOptions, Event, GenerateJob, LoadSpec, Precision, Prompt,
};
use versifier::generate::SamplingParams;
use versifier::poetry::forms::PoemForm;

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems")
}

/// What the window's Generate button sends, run through an engine in this process.
fn window_ids(prompt: &str, form: PoemForm, variations: usize, seed: u64) -> Vec<Vec<u32>> {
    let engine = Engine::spawn(EngineOptions::default()).unwrap();
    let id = engine.next_request_id();
    engine
        .send(Command::Generate(GenerateJob {
            verse: versifier::poetry::VerseRules::default(),
            id,
            spec: LoadSpec {
                model: bundled(),
                device: DeviceChoice::Cpu,
                precision: Precision::F32,
            },
            prompt: Prompt::Text(prompt.into()),
            form,
            variations,
            max_new_tokens: 64,
            sampling: SamplingParams {
                seed,
                ..SamplingParams::default()
            },
        }))
        .unwrap();
    loop {
        match engine.recv_timeout(Duration::from_secs(60)) {
            Some(Event::Done { generation, .. }) => {
                return generation.variations.into_iter().map(|v| v.ids).collect()
            }
            Some(Event::Error { message, .. }) => panic!("engine error: {message}"),
            Some(_) => {}
            None => panic!("no result from the engine within 60 s"),
        }
    }
}

/// `versifier generate` on the bundled model on the CPU, with `extra` arguments.
fn generate_bundled(extra: &[&str]) -> std::process::Output {
    let model = bundled();
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    run_cli(&args)
}

fn cli_ids(prompt: &str, form: &str, variations: usize, seed: u64) -> Vec<Vec<u32>> {
    let (variations, seed) = (variations.to_string(), seed.to_string());
    let out = generate_bundled(&[
        "--prompt",
        prompt,
        "--form",
        form,
        "--variations",
        &variations,
        "--seed",
        &seed,
        "--max-tokens",
        "64",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["ids"].clone()).unwrap()
}

#[test]
fn command_line_and_window_produce_the_same_ids_for_the_same_settings() {
    for (prompt, form, label, variations, seed) in [
        ("月", PoemForm::QiJue, "qijue", 3, 11),
        ("春风", PoemForm::Free, "free", 1, 4),
        ("", PoemForm::Free, "free", 2, 8),
    ] {
        assert_eq!(
            cli_ids(prompt, label, variations, seed),
            window_ids(prompt, form, variations, seed),
            "prompt {prompt:?}, form {label}"
        );
    }
}

#[test]
fn command_line_shows_the_engines_fit_refusal_with_options() {
    let out = generate_bundled(&[
        "--prompt",
        "月",
        "--dtype",
        "f32",
        "--memory-budget-mib",
        "40",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the model needs 56 MiB on cpu")
            && stderr.contains("but only 40 MiB is free")
            && stderr.contains("what would fit: f16"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
