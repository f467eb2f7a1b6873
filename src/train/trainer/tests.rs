//! Unit tests of `train/trainer.rs`.

use super::*;

#[test]
fn training_text_untags_every_other_shi_and_no_ci_while_held_out_text_untags_every_other_line() {
    let text = "[QIJUE]春風\n[CI:浣溪沙]雪月\n[QIJUE]花雨\n[CI:浣溪沙]風雪\n[WUJUE]月花\n";
    let vocab = CharVocab::build(text, 1);
    let tagged = |ids: &[u32]| -> Vec<bool> {
        ids.split(|&id| Some(id) == vocab.id("[SEP]"))
            .filter(|line| !line.is_empty())
            .map(|line| {
                line.get(1)
                    .is_some_and(|&id| vocab.tokens[id as usize].starts_with('['))
            })
            .collect()
    };
    assert_eq!(
        tagged(&encode_corpus(&vocab, text, UntaggedLines::EveryOtherShi)),
        [true, true, false, true, true],
        "詩 alternate (tagged, untagged, tagged); every 詞 keeps its tune"
    );
    assert_eq!(
        tagged(&encode_corpus(&vocab, text, UntaggedLines::EveryOther)),
        [true, false, true, false, true]
    );
    let shi_only = "[QIJUE]春風\n[QIJUE]花雨\n[WUJUE]月花\n";
    assert_eq!(
        encode_corpus(&vocab, shi_only, UntaggedLines::EveryOtherShi),
        encode_corpus(&vocab, shi_only, UntaggedLines::EveryOther),
        "without 詞 the training stream is the one the bundled model was trained on"
    );
}

#[test]
fn the_f16_loss_scale_halves_and_skips_on_overflow_and_grows_after_good_steps() {
    let mut s = LossScale::for_compute(DType::F16);
    let start = s.scale;
    assert!(!s.update(false, true), "an overflowing step is skipped");
    assert_eq!(s.scale, start / 2.0);
    for _ in 0..LossScale::GROW_AFTER {
        assert!(s.update(true, true));
    }
    assert_eq!(s.scale, start, "doubled after a run of good steps");
    let mut bf16 = LossScale::for_compute(DType::BF16);
    assert_eq!(bf16.scale, 1.0);
    assert!(
        bf16.update(false, false),
        "without dynamic scaling nothing is skipped"
    );
}

#[test]
fn impossible_training_settings_are_refused_naming_the_setting() {
    let base = TrainOptions::default();
    type Change = fn(&mut TrainOptions);
    let cases: [(&str, Change); 9] = [
        ("steps", |o| o.steps = 0),
        ("batch_size", |o| o.batch_size = 0),
        ("context", |o| o.context = 4),
        ("context", |o| o.context = MAX_TRAIN_CONTEXT + 1),
        ("n_layer", |o| o.n_layer = 0),
        ("n_head", |o| o.n_head = 0),
        ("n_embd", |o| o.n_embd = 0),
        ("n_embd", |o| o.n_head = 7),
        ("grad_accum", |o| o.grad_accum = 0),
    ];
    assert!(check_options(&base).is_ok(), "the defaults are valid");
    for (field, change) in cases {
        let mut o = base.clone();
        change(&mut o);
        match check_options(&o) {
            Err(TrainError::Invalid { field: f, problem }) => {
                assert_eq!(f, field, "{problem}");
            }
            other => panic!("{field}: expected a refusal, got {other:?}"),
        }
    }
}
