//! `versifier train` end to end on a tiny corpus in seconds: the loss falls, the
//! output folder loads like any checkpoint, and a resumed run continues exactly.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use candle_core::{DType, Device};
use versifier::engine::{DeviceChoice, Precision};
use versifier::model::load_model;
use versifier::train::{train, TrainOptions, TrainProgress};

const POEMS: [&str; 4] = [
    "[WUJUE]床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
    "[WUJUE]春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。",
    "[QIJUE]朝辭白帝彩雲間，千里江陵一日還。兩岸猿聲啼不住，輕舟已過萬重山。",
    "[WUJUE]白日依山盡，黃河入海流。欲窮千里目，更上一層樓。",
];

fn tiny_corpus() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let train: String = POEMS
        .iter()
        .cycle()
        .take(40)
        .map(|p| format!("{p}\n"))
        .collect();
    std::fs::write(dir.path().join("train.txt"), train).unwrap();
    let eval: String = [POEMS[0], POEMS[2]]
        .iter()
        .cycle()
        .take(8)
        .map(|p| format!("{p}\n"))
        .collect();
    std::fs::write(dir.path().join("eval.txt"), eval).unwrap();
    dir
}

fn options(corpus: &std::path::Path, out: &std::path::Path, steps: usize) -> TrainOptions {
    TrainOptions {
        corpus: corpus.into(),
        out: out.into(),
        device: DeviceChoice::Cpu,
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        context: 32,
        batch_size: 8,
        steps,
        lr: 3e-3,
        warmup: 5,
        eval_every: 10,
        eval_batches: 2,
        checkpoint_every: 10,
        min_char_count: 1,
        save_dtype: Precision::F32,
        ..TrainOptions::default()
    }
}

#[test]
fn training_lowers_the_loss_and_writes_a_loadable_checkpoint() {
    let corpus = tiny_corpus();
    let out = tempfile::tempdir().unwrap();
    let summary = train(&options(corpus.path(), out.path(), 60), |_| {}).unwrap();
    let log = std::fs::read_to_string(out.path().join("train_log.jsonl")).unwrap();
    let evals: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["eval_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(evals.len() >= 6);
    assert!(
        evals.last().unwrap() < &(evals[0] - 0.5),
        "eval loss did not fall: {evals:?}"
    );
    assert!(summary.eval_perplexity < summary.bigram_eval_perplexity * 2.0);
    let m = load_model(out.path(), &Device::Cpu, DType::F32).unwrap();
    let tok = m.tokenizer.unwrap();
    assert_eq!(tok.kind(), versifier::model::TokenizerKind::VocabTxt);
    assert_eq!(tok.stop_ids(), &[3]);
    assert!(tok.prompt_ids("明月").is_ok());
}

#[test]
fn resumed_training_matches_an_uninterrupted_run() {
    let corpus = tiny_corpus();
    let straight = tempfile::tempdir().unwrap();
    train(&options(corpus.path(), straight.path(), 20), |_| {}).unwrap();
    // The same 20-step schedule, interrupted after 10 steps and resumed.
    let resumed = tempfile::tempdir().unwrap();
    let mut first = options(corpus.path(), resumed.path(), 20);
    first.stop_after = Some(10);
    let mut first_events = Vec::new();
    let s1 = train(&first, |e| first_events.push(e)).unwrap();
    assert_eq!(s1.steps, 10);
    assert_eq!(
        first_events.last(),
        Some(&TrainProgress::Stopped { step: 10 })
    );
    let mut second = options(corpus.path(), resumed.path(), 20);
    second.resume = true;
    let mut second_events = Vec::new();
    let s2 = train(&second, |e| second_events.push(e)).unwrap();
    assert_eq!(
        second_events.first(),
        Some(&TrainProgress::Resumed { step: 10 })
    );
    assert_eq!(s2.steps, 20);
    assert_same_weights(straight.path(), resumed.path());
}

#[test]
fn a_stop_request_mid_run_saves_a_checkpoint_that_resumes_like_an_uninterrupted_run() {
    let corpus = tiny_corpus();
    let straight = tempfile::tempdir().unwrap();
    let mut o = options(corpus.path(), straight.path(), 30);
    o.checkpoint_every = 0;
    train(&o, |_| {}).unwrap();
    // Stop asked for while the run reports step 10 (as Ctrl+C would, from
    // another thread): no periodic checkpoints, so the stop makes the only one.
    let stopped = tempfile::tempdir().unwrap();
    let mut first = options(corpus.path(), stopped.path(), 30);
    first.checkpoint_every = 0;
    let stop = first.stop.clone();
    let mut events = Vec::new();
    let s1 = train(&first, |e| {
        if matches!(e, TrainProgress::Step { step: 10, .. }) {
            stop.request();
        }
        events.push(e);
    })
    .unwrap();
    assert_eq!(s1.steps, 10);
    assert_eq!(events.last(), Some(&TrainProgress::Stopped { step: 10 }));
    let mut second = options(corpus.path(), stopped.path(), 30);
    second.checkpoint_every = 0;
    second.resume = true;
    assert_eq!(train(&second, |_| {}).unwrap().steps, 30);
    assert_same_weights(straight.path(), stopped.path());
}

/// The two runs' saved models agree to 1e-5 in every tensor.
fn assert_same_weights(a: &std::path::Path, b: &std::path::Path) {
    let a = candle_core::safetensors::load(a.join("model.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(b.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let tb = &b[name];
        let diff = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{name} differs by {diff} after resume");
    }
}

#[test]
fn training_progress_arrives_as_typed_events_in_step_order() {
    let corpus = tiny_corpus();
    let out = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    train(&options(corpus.path(), out.path(), 30), |e| events.push(e)).unwrap();
    let steps: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            TrainProgress::Step {
                step, steps, loss, ..
            } => {
                assert_eq!(*steps, 30);
                assert!(loss.is_finite(), "{e}");
                Some(*step)
            }
            _ => None,
        })
        .collect();
    assert_eq!(steps, [10, 20, 30]);
    let evals: Vec<usize> = events
        .iter()
        .filter(|e| matches!(e, TrainProgress::Eval { .. }))
        .map(TrainProgress::step)
        .collect();
    assert_eq!(evals, [10, 20, 30]);
    // The display the command line prints says the same figures.
    let text = events[0].to_string();
    assert!(text.starts_with("step 10/30 loss "), "{text}");
}

/// Largest absolute difference between two saved models' tensors.
fn max_weight_diff(a: &std::path::Path, b: &std::path::Path) -> f32 {
    let a = candle_core::safetensors::load(a.join("model.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(b.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, ta)| {
            (ta - &b[name])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn two_accumulated_half_batches_make_the_same_steps_as_one_full_batch() {
    let corpus = tiny_corpus();
    let full = tempfile::tempdir().unwrap();
    train(&options(corpus.path(), full.path(), 15), |_| {}).unwrap();
    // The same 8 positions per step, drawn as two micro-batches of 4.
    let halves = tempfile::tempdir().unwrap();
    let mut o = options(corpus.path(), halves.path(), 15);
    o.batch_size = 4;
    o.grad_accum = 2;
    let summary = train(&o, |_| {}).unwrap();
    assert_eq!(summary.tokens_seen, 15 * 8 * 32);
    let diff = max_weight_diff(full.path(), halves.path());
    assert!(diff < 1e-4, "weights differ by {diff}");
    // A different batch does train differently (the comparison can fail).
    let other = tempfile::tempdir().unwrap();
    let mut o = options(corpus.path(), other.path(), 15);
    o.batch_size = 4;
    train(&o, |_| {}).unwrap();
    assert!(max_weight_diff(full.path(), other.path()) > 1e-3);
}

#[test]
fn half_precision_compute_with_f32_master_weights_trains_like_f32() {
    let corpus = tiny_corpus();
    let run = |compute: Precision| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(corpus.path(), out.path(), 60);
        o.compute = compute;
        let s = train(&o, |_| {}).unwrap();
        // The saved weights are the f32 master copy, and load like any model.
        let st = candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        assert!(st.values().all(|t| t.dtype() == DType::F32));
        assert!(load_model(out.path(), &Device::Cpu, DType::F32).is_ok());
        (s.eval_loss, out)
    };
    let (f32_loss, _a) = run(Precision::F32);
    for compute in [Precision::Bf16, Precision::F16] {
        let (loss, _b) = run(compute);
        assert!(loss.is_finite(), "{compute}: {loss}");
        assert!(
            (loss - f32_loss).abs() < 0.25,
            "{compute}: eval loss {loss:.3} vs f32 {f32_loss:.3}"
        );
    }
}

#[test]
fn a_model_trained_on_tagged_ci_is_given_the_tunes_tag_when_it_writes_one() {
    let corpus = tiny_corpus();
    // Add tagged 詞 (浣溪沙's pattern) to the training text.
    let ci = "[CI:浣溪沙]一曲新詞酒一杯。去年天氣舊亭台。夕陽西下幾時回。無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。\n";
    let mut train_text = std::fs::read_to_string(corpus.path().join("train.txt")).unwrap();
    train_text.push_str(&ci.repeat(10));
    std::fs::write(corpus.path().join("train.txt"), train_text).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut o = options(corpus.path(), out.path(), 10);
    o.context = 64;
    train(&o, |_| {}).unwrap();
    let model = load_model(out.path(), &Device::Cpu, DType::F32).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let tag = tok
        .token_id("[CI:浣溪沙]")
        .expect("the tune tag is in the vocabulary");
    let form: versifier::generate::forms::PoemForm = "ci:浣溪沙".parse().unwrap();
    let prompt = versifier::generate::Prompt::Text("一".into());
    let req = versifier::generate::prepare_request(
        &model,
        &versifier::generate::RequestSettings {
            prompt: &prompt,
            form: &form,
            variations: 1,
            max_new_tokens: 60,
            sampling: &versifier::generate::SamplingParams::default(),
            verse: &versifier::poetry::VerseRules::default(),
        },
    )
    .unwrap();
    assert_eq!(
        req.prompt_ids[1], tag,
        "start token, then the tune's tag: {:?}",
        req.prompt_ids
    );
}

#[test]
fn a_missing_corpus_or_checkpoint_is_refused_saying_what_to_do() {
    let out = tempfile::tempdir().unwrap();
    let nowhere = out.path().join("no-corpus");
    let e = train(&options(&nowhere, out.path(), 5), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no-corpus/train.txt") && e.contains("versifier corpus"),
        "{e}"
    );
    let corpus = tiny_corpus();
    let mut resume = options(corpus.path(), out.path(), 5);
    resume.resume = true;
    let e = train(&resume, |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint") && e.contains("start without --resume"),
        "{e}"
    );
    assert!(
        !out.path().join("model.safetensors").exists(),
        "nothing was trained"
    );
}
