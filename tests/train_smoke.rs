//! `versifier train` end to end on a tiny corpus in seconds: the loss falls, the
//! output folder loads like any checkpoint, and a resumed run continues exactly.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use candle_core::{DType, Device};
use versifier::engine::{DeviceChoice, Precision};
use versifier::model::load_model;
use versifier::train::{train, TrainError, TrainOptions, TrainProgress};

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
    // The resumed part reports its own speed: the tokens it trained on (half
    // the run's) over its own time, not the whole run's tokens over it.
    assert_eq!(s2.tokens_seen, 2 * s1.tokens_seen);
    assert_eq!(s2.tokens_this_run, s2.tokens_seen - s1.tokens_seen);
    assert_eq!(s1.tokens_this_run, s1.tokens_seen);
    let expected = s2.tokens_this_run as f64 / s2.seconds;
    assert!((s2.tokens_per_s - expected).abs() <= expected * 1e-9);
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
    let form: versifier::poetry::forms::PoemForm = "ci:浣溪沙".parse().unwrap();
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

/// 詞 the tiny corpus has never seen: a new tune tag and new characters.
const CI: &str = "[CI:浣溪沙]一曲新詞酒一杯，去年天氣舊亭臺。夕陽西下幾時回。無可奈何花落去，似曾相識燕歸來。小園香徑獨徘徊。";

/// The tiny corpus with the 詞 above in its training text, in a new folder.
fn corpus_with_ci() -> tempfile::TempDir {
    let base = tiny_corpus();
    let dir = tempfile::tempdir().unwrap();
    let mut train_text = std::fs::read_to_string(base.path().join("train.txt")).unwrap();
    for _ in 0..10 {
        train_text.push_str(CI);
        train_text.push('\n');
    }
    std::fs::write(dir.path().join("train.txt"), train_text).unwrap();
    std::fs::copy(base.path().join("eval.txt"), dir.path().join("eval.txt")).unwrap();
    dir
}

fn vocab_lines(model: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(model.join("vocab.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn fine_tuning_starts_from_the_models_weights_and_appends_the_corpus_new_tokens() {
    let corpus = tiny_corpus();
    let base = tempfile::tempdir().unwrap();
    train(&options(corpus.path(), base.path(), 20), |_| {}).unwrap();
    let ci = corpus_with_ci();
    let tuned = tempfile::tempdir().unwrap();
    // At lr 0 the weights cannot move: what is saved is where the run started.
    let mut o = options(ci.path(), tuned.path(), 1);
    o.init_from = Some(base.path().into());
    o.lr = 0.0;
    (o.n_layer, o.n_embd, o.context) = (3, 64, 16); // the model's shape wins
    let summary = train(&o, |_| {}).unwrap();

    let (old, new) = (vocab_lines(base.path()), vocab_lines(tuned.path()));
    assert_eq!(&new[..old.len()], &old[..], "every old id keeps its token");
    assert_eq!(new[old.len()], "[CI:浣溪沙]");
    assert!(new.iter().any(|t| t == "徘") && !old.iter().any(|t| t == "徘"));
    assert_eq!(summary.added_tokens, new.len() - old.len());
    assert_eq!(summary.vocab, new.len());
    let cfg = versifier::model::Gpt2Config::from_file(&tuned.path().join("config.json")).unwrap();
    assert_eq!((cfg.n_layer, cfg.n_embd, cfg.n_positions), (1, 32, 32));
    assert_eq!(cfg.vocab_size, new.len());

    let load = |p: &std::path::Path| {
        candle_core::safetensors::load(p.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (a, b) = (load(base.path()), load(tuned.path()));
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let tb = &b[name];
        if name.ends_with("wte.weight") {
            let v = old.len();
            let kept = tb.narrow(0, 0, v).unwrap();
            assert_eq!(ta.to_vec2::<f32>().unwrap(), kept.to_vec2::<f32>().unwrap());
            let mean = ta.mean_keepdim(0).unwrap().to_vec2::<f32>().unwrap();
            for row in tb
                .narrow(0, v, new.len() - v)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
            {
                for (x, m) in row.iter().zip(&mean[0]) {
                    assert!((x - m).abs() < 1e-6, "a new row is not the mean row");
                }
            }
        } else {
            assert_eq!(
                ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name} changed at lr 0"
            );
        }
    }
}

#[test]
fn a_fine_tuned_model_starts_ahead_of_one_from_scratch_and_resumes_exactly() {
    let corpus = tiny_corpus();
    let base = tempfile::tempdir().unwrap();
    let base_eval = train(&options(corpus.path(), base.path(), 40), |_| {})
        .unwrap()
        .eval_loss;
    let ci = corpus_with_ci();
    let fine_tune = |out: &std::path::Path| {
        let mut o = options(ci.path(), out, 10);
        o.init_from = Some(base.path().into());
        o
    };
    let scratch = tempfile::tempdir().unwrap();
    let scratch_eval = train(&options(ci.path(), scratch.path(), 10), |_| {})
        .unwrap()
        .eval_loss;
    let straight = tempfile::tempdir().unwrap();
    let tuned_eval = train(&fine_tune(straight.path()), |_| {})
        .unwrap()
        .eval_loss;
    // The held-out poems are the base model's own: it starts far ahead.
    assert!(
        tuned_eval < scratch_eval - 1.0 && tuned_eval < base_eval + 1.0,
        "fine-tuned {tuned_eval}, from scratch {scratch_eval}, base {base_eval}"
    );
    // Interrupted after 5 steps and resumed (the shape then comes from the
    // checkpoint): the same weights as the run straight through.
    let resumed = tempfile::tempdir().unwrap();
    let mut first = fine_tune(resumed.path());
    first.stop_after = Some(5);
    train(&first, |_| {}).unwrap();
    let mut second = fine_tune(resumed.path());
    second.resume = true;
    assert_eq!(train(&second, |_| {}).unwrap().steps, 10);
    assert_same_weights(straight.path(), resumed.path());
}

#[test]
fn fine_tuning_from_a_model_it_cannot_continue_is_refused_naming_the_file() {
    let corpus = tiny_corpus();
    let base = tempfile::tempdir().unwrap();
    train(&options(corpus.path(), base.path(), 2), |_| {}).unwrap();
    let refused = |model: &std::path::Path| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(corpus.path(), &out.path().join("run"), 2);
        o.init_from = Some(model.into());
        let e = train(&o, |_| {}).unwrap_err().to_string();
        assert!(!out.path().join("run").exists(), "{e}: wrote its output");
        e
    };
    let nowhere = base.path().join("no-model");
    let e = refused(&nowhere);
    assert!(
        e.contains("no-model") && e.contains("no such folder"),
        "{e}"
    );

    // A byte-level BPE model (tokenizer.json, no vocab.txt).
    let bpe = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(base.path().join(f), bpe.path().join(f)).unwrap();
    }
    std::fs::write(bpe.path().join("tokenizer.json"), "{}").unwrap();
    let e = refused(bpe.path());
    assert!(
        e.contains("no vocab.txt") && e.contains("tokenizer.json"),
        "{e}"
    );

    // A vocab.txt that does not belong to the weights.
    std::fs::remove_file(bpe.path().join("tokenizer.json")).unwrap();
    let mut lines = vocab_lines(base.path());
    lines.pop();
    std::fs::write(bpe.path().join("vocab.txt"), lines.join("\n") + "\n").unwrap();
    let e = refused(bpe.path());
    assert!(e.contains("vocab.txt") && e.contains("vocab_size"), "{e}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_train_log_that_cannot_be_written_ends_the_run_naming_it_after_saving_that_steps_checkpoint() {
    let corpus = tiny_corpus();
    let out = tempfile::tempdir().unwrap();
    // /dev/full opens for appending and fails every write with "no space
    // left on device": a full disk, for the log alone.
    std::os::unix::fs::symlink("/dev/full", out.path().join("train_log.jsonl")).unwrap();
    let mut o = options(corpus.path(), out.path(), 30);
    o.checkpoint_every = 0;
    let err = train(&o, |_| {}).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("train_log.jsonl") && matches!(err, TrainError::Io { .. }),
        "{message}"
    );
    // The first eval (step 10) could not be logged; its checkpoint was saved
    // anyway, so the run resumes from there once the disk has room.
    let state = std::fs::read_to_string(out.path().join("checkpoint/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["step"], 10, "{state}");
    std::fs::remove_file(out.path().join("train_log.jsonl")).unwrap();
    o.resume = true;
    assert_eq!(train(&o, |_| {}).unwrap().steps, 30);
}
