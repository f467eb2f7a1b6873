//! The bundled model writes well-formed classical verse offline, in every form,
//! from simplified or traditional prompts.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::path::PathBuf;

use common::run_cli;
use versifier::poetry::forms::{regular_form, satisfies, PoemForm};

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems")
}

/// `versifier generate ARGS --json`'s answer, the command having succeeded.
fn json_from_cli(args: &[&str]) -> serde_json::Value {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn poem_from_cli(args: &[&str]) -> String {
    let model = bundled();
    let mut all = vec!["generate", "--model", model.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_cli(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect()
}

#[test]
fn cli_writes_a_well_formed_qijue_from_one_character() {
    let poem = poem_from_cli(&["--prompt", "春", "--form", "qijue", "--seed", "11"]);
    assert!(satisfies(&poem, &PoemForm::QiJue), "not a 七絕: {poem}");
    assert!(poem.starts_with('春'));
}

#[test]
fn every_constrained_form_is_well_formed() {
    for (form, prompt) in [
        ("wujue", "月"),
        ("wulv", "山"),
        ("qilv", "江"),
        ("acrostic:風花雪月", ""),
    ] {
        for seed in ["1", "2"] {
            let poem = poem_from_cli(&["--prompt", prompt, "--form", form, "--seed", seed]);
            let f: PoemForm = form.parse().unwrap();
            assert!(satisfies(&poem, &f), "{form} seed {seed}: {poem}");
        }
    }
}

#[test]
fn free_form_mostly_writes_regular_verse() {
    let model = bundled();
    let v = json_from_cli(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "雪",
        "--variations",
        "8",
        "--seed",
        "5",
        "--json",
        "--max-tokens",
        "80",
    ]);
    let texts: Vec<String> = v["text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("雪{}", t.as_str().unwrap()))
        .collect();
    let regular = texts.iter().filter(|t| regular_form(t).is_some()).count();
    assert!(regular >= 6, "only {regular}/8 regular: {texts:#?}");
}

#[test]
fn simplified_prompt_finds_the_traditional_characters() {
    let simplified = poem_from_cli(&["--prompt", "春风", "--form", "qijue", "--seed", "4"]);
    let traditional = poem_from_cli(&["--prompt", "春風", "--form", "qijue", "--seed", "4"]);
    // The echoed prompt differs; the poem the model wrote is the same.
    assert_eq!(
        simplified.chars().skip(2).collect::<String>(),
        traditional.chars().skip(2).collect::<String>()
    );
    assert!(satisfies(&traditional, &PoemForm::QiJue), "{traditional}");
}

#[test]
fn characters_outside_the_vocabulary_are_a_clear_error() {
    let model = bundled();
    let out = run_cli(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "春😀",
        "--form",
        "qijue",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token for") && err.contains('😀'), "{err}");
    assert!(!err.contains("panicked"));
}

/// A 詞 tune asked of the bundled model is written by the bundled 詞 model
/// (models/song-ci, the bundled model fine-tuned on Song 詞), in the tune's
/// pattern, and `--json` names the model that wrote it.
#[test]
fn a_ci_tune_is_written_by_the_bundled_ci_model_in_its_pattern() {
    let v = json_from_cli(&[
        "generate",
        "--prompt",
        "春",
        "--form",
        "ci:浣溪沙",
        "--seed",
        "3",
        "--json",
        "--max-tokens",
        "160",
    ]);
    let model = v["model"].as_str().unwrap();
    assert!(model.ends_with("song-ci"), "{model}");
    let poem = format!("春{}", v["text"][0].as_str().unwrap());
    assert!(satisfies(&poem, &"ci:浣溪沙".parse().unwrap()), "{poem}");
    // A 詩 from the same command line stays with the bundled model.
    let v = json_from_cli(&["generate", "--prompt", "春", "--form", "qijue", "--json"]);
    assert!(v["model"].as_str().unwrap().ends_with("tang-poems"), "{v}");
}
