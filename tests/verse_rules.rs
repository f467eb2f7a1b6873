//! Rhyme (平水韻) and tones (平仄) on the bundled model: strict rules keep both
//! in every regulated form by construction, `--rules off` is today's decoding
//! exactly, and `versifier check` judges any poem.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::run_cli;
use versifier::generate::{generate, poem_prompt, GenerateRequest, SamplingParams, StopReason};
use versifier::model::load_model;
use versifier::poetry::forms::{satisfies, PoemForm};
use versifier::poetry::rhyme::table;
use versifier::poetry::{check_poem, TemplateStart, VerseRules};

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems")
}

/// `n` poems of `form` (prompt included), `rules` as given, 8 at a time.
fn poems(form: &str, prompts: &[&str], n: usize, rules: &VerseRules, seed: u64) -> Vec<String> {
    let m = load_model(&bundled(), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let form: PoemForm = form.parse().unwrap();
    let mut out = Vec::new();
    let mut batch = 0u64;
    while out.len() < n {
        let prompt = prompts[batch as usize % prompts.len()];
        let (ids, constraint) = poem_prompt(tok, prompt, &form, rules).unwrap();
        let start = constraint.as_ref().unwrap().1.clone();
        let req = GenerateRequest {
            prompt_ids: ids,
            variations: 8.min(n - out.len()),
            max_new_tokens: 80,
            sampling: SamplingParams {
                temperature: 0.8,
                top_k: 40,
                top_p: 1.0,
                repetition_penalty: 1.0,
                greedy: false,
                seed: seed + batch,
            },
            stop_ids: tok.stop_ids().to_vec(),
            constraint,
            rows: Vec::new(),
        };
        let g = generate(&m.model, &req, |id| tok.token_bytes(id), &|| false, |_| {}).unwrap();
        for v in g.variations {
            let text = format!("{start}{}", v.text);
            assert_eq!(v.stop, Some(StopReason::Stop), "{text}");
            // Heads typed in simplified script are written in traditional.
            let written: PoemForm = table().traditional_text(&form.to_string()).parse().unwrap();
            assert!(satisfies(&text, &written), "{form}: {text}");
            assert!(v.relaxed.is_empty(), "{text}: relaxed {:?}", v.relaxed);
            out.push(text);
        }
        batch += 1;
    }
    out
}

#[test]
fn strict_rules_keep_rhyme_and_tones_in_every_regulated_form_and_acrostic() {
    let prompts = ["春", "月", "山", "江", "秋", "風", "花", "夜"];
    let mut checked = 0;
    for (form, n) in [
        ("wujue", 64),
        ("qijue", 64),
        ("wulv", 48),
        ("qilv", 48),
        ("acrostic:春夏秋冬", 24),
        ("acrostic:明月清风明月清风", 16),
    ] {
        for poem in poems(form, &prompts, n, &VerseRules::default(), 100) {
            let r = check_poem(&poem);
            assert!(r.rhyme_kept && r.tones_kept, "{form}:\n{}", r.to_text());
            checked += 1;
        }
    }
    assert_eq!(checked, 264);
}

#[test]
fn a_named_rhyme_and_template_are_kept() {
    let rules = VerseRules {
        rhyme: Some("东".into()), // simplified name of 一東
        template: TemplateStart::ZeQi,
        ..VerseRules::default()
    };
    let dong = table().find_ping_group("東").unwrap();
    for poem in poems("qijue", &["春", "月"], 16, &rules, 7) {
        let r = check_poem(&poem);
        assert!(r.rhyme_kept && r.tones_kept, "{}", r.to_text());
        assert_eq!(
            r.rhyme_group.as_deref(),
            Some("上平一東"),
            "{}",
            r.to_text()
        );
        // 仄起: the first line's second character can be read 仄 (the checker
        // may name another template that the poem keeps as well).
        let second = r.lines[0][1].class;
        assert!(
            second.fits(versifier::poetry::rhyme::Tone::Ze),
            "{}",
            r.to_text()
        );
        for line in r.lines.iter().filter(|l| l.last().unwrap().rhyme) {
            let c = line.last().unwrap().ch;
            assert!(table().groups_of(c) & (1u128 << dong) != 0, "{c}");
        }
    }
}

#[test]
fn rules_and_the_repeat_guard_off_give_the_same_poems_as_before_they_existed() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("rules-off-golden.json")).unwrap(),
    )
    .unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let (form, prompt, seed) = (
            case["form"].as_str().unwrap(),
            case["prompt"].as_str().unwrap(),
            case["seed"].to_string(),
        );
        let mut args = vec![
            "generate",
            "--device",
            "cpu",
            "--dtype",
            "f16",
            "--form",
            form,
            "--seed",
            &seed,
            "--variations",
            "2",
            "--max-tokens",
            "80",
            "--json",
            "--rules",
            "off",
            "--repeats",
            "allow",
        ];
        if !prompt.is_empty() {
            args.extend(["--prompt", prompt]);
        }
        let out = run_cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ids"], case["ids"], "{form} {prompt} seed {seed}");
    }
}

#[test]
fn acrostic_heads_in_simplified_script_work_and_a_wrong_count_says_so() {
    let out = run_cli(&[
        "generate",
        "--device",
        "cpu",
        "--form",
        "acrostic:明月清风",
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let poem: String = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect();
    let f: PoemForm = "acrostic:明月清風".parse().unwrap();
    assert!(satisfies(&poem, &f), "{poem}");
    assert!(
        check_poem(&poem).tones_kept,
        "{}",
        check_poem(&poem).to_text()
    );
    let out = run_cli(&["generate", "--device", "cpu", "--form", "acrostic:月風風"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("3 head") && err.contains("4") && err.contains("8"),
        "{err}"
    );
}

#[test]
fn a_bad_rhyme_name_is_refused_before_loading_naming_the_setting() {
    for (rhyme, said) in [("董", "仄聲"), ("xyz", "unknown rhyme `xyz`")] {
        let out = run_cli(&[
            "generate", "--device", "cpu", "--form", "qijue", "--rhyme", rhyme,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rhyme}");
        assert!(err.contains(said), "{rhyme}: {err}");
    }
}

#[test]
fn check_reports_marks_rhyme_problems_and_a_verdict_for_any_poem() {
    let out = run_cli(&[
        "check",
        "--json",
        "两个黄鹂鸣翠柳，一行白鹭上青天。窗含西岭千秋雪，门泊东吴万里船。",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "押下平一先；平仄合律");
    assert_eq!(v["form"], "七絕");
    assert_eq!(v["lines"][1][6]["rhyme"], true);
    assert_eq!(v["lines"][0][2]["class"], "ping"); // 黄 (黃)
                                                   // Old-style verse: each broken rule with its line and column, on stdin.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_versifier"))
        .args(["check", "-"])
        .env("VERSIFIER_LOG_DIR", "none")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all("床前明月光\n疑是地上霜\n舉頭望明月\n低頭思故鄉\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("第") && text.contains("押下平七陽；平仄不合"),
        "{text}"
    );
    let out = run_cli(&["check", "hello"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Chinese characters"));
}

#[test]
fn check_names_the_tune_a_ci_could_be_and_judges_its_rhymes_with_tune() {
    // 晏殊's 浣溪沙, simplified: no 詩, but a 浣溪沙's line lengths.
    let ci = "一曲新词酒一杯，去年天气旧亭台。夕阳西下几时回？无可奈何花落去，似曾相识燕归来。小园香径独徘徊。";
    let out = run_cli(&["check", ci]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("--tune 浣溪沙"),
        "{text}"
    );
    let out = run_cli(&["check", "--json", "--tune", "ci:浣溪沙", ci]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rhyme_kept"], true, "{v}");
    assert_eq!(v["verdict"], "押詞林正韻第三部／第五部；平仄合譜");
    assert_eq!(v["line_ends"][0], "，");
    assert_eq!(v["line_ends"][2], "。", "？ closes as 。");
    // Not the tune's lines, or no such tune: a clear refusal naming it.
    for (tune, said) in [("西江月", "6，6。7。6。"), ("無此調", "no tune `無此調`")] {
        let out = run_cli(&["check", "--tune", tune, ci]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(said), "{tune}: {err}");
    }
}

#[test]
fn the_vocabulary_is_scanned_once_per_tokenizer_and_shared_constraints_mask_as_fresh_ones() {
    use versifier::generate::vocab_chars;
    use versifier::poetry::constraint::FormConstraint;
    let m = load_model(&bundled(), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    // Every request after the first reuses the tables of the first.
    let (a, b) = (vocab_chars(tok), vocab_chars(tok));
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let text = |id: u32| String::from_utf8_lossy(tok.token_bytes(id)).into_owned();
    let stop = tok.stop_ids().first().copied();
    for form in ["wujue", "qilv", "acrostic:春夏秋冬", "ci:浣溪沙", "free"] {
        let form: PoemForm = form.parse().unwrap();
        let rules = VerseRules::default();
        let fresh =
            FormConstraint::new(form.clone(), tok.vocab_size(), text, stop, &rules).unwrap();
        let shared = FormConstraint::with_chars(form.clone(), a.clone(), stop, &rules).unwrap();
        for written in [
            "",
            "春",
            "春風吹",
            "春風吹綠水，",
            "白日依山盡，黃河入海流。欲窮",
        ] {
            let logits: Vec<f32> = (0..tok.vocab_size())
                .map(|i| (i % 97) as f32 * 0.01)
                .collect();
            let (mut x, mut y) = (logits.clone(), logits);
            fresh.apply(written, &mut x);
            shared.apply(written, &mut y);
            assert_eq!(x, y, "{form:?} after {written:?}");
        }
    }
}

/// Free verse from the bundled model, 8 variations per prompt, with `rules`.
fn free_poems(rules: &VerseRules) -> Vec<(String, Vec<versifier::poetry::Relaxed>)> {
    use versifier::generate::{prepare_request, Prompt, RequestSettings};
    let m = load_model(&bundled(), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let mut out = Vec::new();
    for (i, prompt) in ["春", "月", "山", "江", "秋", "風"].iter().enumerate() {
        let text = Prompt::Text((*prompt).into());
        let sampling = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            seed: 300 + i as u64,
            ..SamplingParams::default()
        };
        let settings = RequestSettings {
            prompt: &text,
            form: &PoemForm::Free,
            variations: 8,
            max_new_tokens: 80,
            sampling: &sampling,
            verse: rules,
        };
        let req = prepare_request(&m, &settings).unwrap();
        let g = generate(&m.model, &req, |id| tok.token_bytes(id), &|| false, |_| {}).unwrap();
        for v in g.variations {
            if v.stop == Some(StopReason::Stop) {
                out.push((format!("{prompt}{}", v.text), v.relaxed));
            }
        }
    }
    out
}

#[test]
fn free_verse_under_strict_rules_keeps_rhyme_and_tones_from_its_second_line() {
    use versifier::poetry::forms::regular_form;
    let strict = free_poems(&VerseRules::default());
    let regular: Vec<&String> = strict
        .iter()
        .map(|(p, _)| p)
        .filter(|p| regular_form(p).is_some())
        .collect();
    assert!(
        regular.len() >= 44,
        "{} of 48 regular: {strict:?}",
        regular.len()
    );
    for poem in &regular {
        let r = check_poem(poem);
        assert!(
            r.problems.iter().all(|p| p.line == 1),
            "only the model's own first line may break a rule:\n{}",
            r.to_text()
        );
    }
    assert!(strict.iter().all(|(_, relaxed)| relaxed.is_empty()));
    // The same prompts and seeds with rules off break rules after line 1.
    let off = free_poems(&VerseRules::off());
    let broken_later = off
        .iter()
        .filter(|(p, _)| regular_form(p).is_some())
        .filter(|(p, _)| check_poem(p).problems.iter().any(|pr| pr.line > 1))
        .count();
    assert!(
        broken_later >= 8,
        "rules off: {broken_later} poems break a rule after line 1"
    );
}
