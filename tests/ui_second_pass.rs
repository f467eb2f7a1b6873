//! The window's second pass (issue #40), driven as a user would through
//! egui_kittest on the real app: Enter in the prompt writes the poems; in 藏頭
//! the prompt, which the heads replace, is off and says why; the prompt and
//! theme come back after a restart; a model folder that does not load gives
//! way to the last one that did.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod ui_harness;

use egui_kittest::kittest::{NodeT, Queryable};
use ui_harness::*;
use versifier::store::Store;

#[test]
fn enter_in_the_prompt_writes_the_poems() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.get_by_label("Prompt").focus();
    h.run_steps(1);
    h.get_by_label("Prompt").type_text("月");
    h.run_steps(1);
    h.key_press(egui::Key::Enter);
    h.run_steps(1);
    assert!(h.state().is_writing(), "Enter started the poems");
    pump(&mut h, "poems", |a| !a.is_writing());
    let poem = &h.state().cards[0].text;
    assert!(!poem.is_empty());
    assert_eq!(h.state().cards[0].prompt, "月");
}

#[test]
fn in_acrostic_the_prompt_is_off_and_the_heads_start_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut a = app(&store);
    a.choose_form(&versifier::poetry::forms::PoemForm::Acrostic(
        "春夏秋冬".chars().collect(),
    ));
    let mut h = harness(a);
    let prompt = h.get_by_label("Prompt");
    assert!(
        prompt.accesskit_node().is_disabled(),
        "the prompt is off in 藏頭"
    );
    h.get_by_label("Generate  (Ctrl+Enter)").click();
    h.run_steps(1);
    pump(&mut h, "poems", |a| !a.is_writing());
    let poem = format!("{}{}", h.state().cards[0].prompt, h.state().cards[0].text);
    let heads: String = poem
        .split(['，', '。'])
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.chars().next())
        .collect();
    assert_eq!(heads, "春夏秋冬", "{poem}");
}

#[test]
fn the_prompt_and_theme_are_there_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    {
        let mut h = harness(app(&store));
        h.get_by_label("Prompt").focus();
        h.run_steps(1);
        h.get_by_label("Prompt").type_text("江上");
        h.state_mut().settings.poem_theme = "秋夜".into();
        h.run_steps(1);
        h.state_mut().save_settings_if_changed();
    }
    let a = app(&store);
    assert_eq!(a.prompt, "江上");
    assert_eq!(a.settings.poem_theme, "秋夜");
}

#[test]
fn a_model_folder_that_does_not_load_gives_way_to_the_last_model_that_did() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "山");
    pump(&mut h, "poems", |a| !a.is_writing());
    let loaded = h.state().load_spec().model;
    // A folder that is not there, typed in the model field.
    let missing = dir.path().join("nope").display().to_string();
    h.state_mut().set_model_field(&missing);
    h.state_mut().load_chosen_model();
    pump(&mut h, "load error", |a| a.error.is_some());
    let (_, message) = h.state().error.clone().unwrap();
    assert!(message.contains("nope"), "{message}");
    assert!(message.contains("Back to tang-poems"), "{message}");
    assert_eq!(
        h.state().load_spec().model,
        loaded,
        "the model that loaded is chosen again"
    );
    // The next Generate writes poems, with no other button pressed.
    h.state_mut().error = None;
    start_poem(&mut h, "月");
    pump(&mut h, "poems", |a| !a.is_writing());
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    assert!(!h.state().cards[0].text.is_empty());
}

#[test]
fn a_poem_cut_short_is_called_unfinished_not_judged_as_a_broken_form() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.show_marks = true;
    h.state_mut()
        .choose_form(&versifier::poetry::forms::PoemForm::QiLv);
    start_poem(&mut h, "山");
    // Stopped (Esc) after its first characters.
    pump(&mut h, "the first characters", |a| {
        !a.cards[0].text.is_empty()
    });
    h.key_press(egui::Key::Escape);
    h.run_steps(1);
    pump(&mut h, "the stop", |a| !a.is_writing());
    h.run_steps(2);
    assert!(h.state().cards[0].unfinished);
    assert!(h.query_by_label("unfinished").is_some(), "the card's tag");
    assert!(
        h.query_all_by_label_contains("not judged").next().is_some(),
        "the verdict says it was not judged"
    );
    assert!(
        h.query_all_by_label_contains("不是近體詩").next().is_none(),
        "not called a broken form"
    );
}

#[test]
fn history_buttons_stay_in_reach_in_a_700_by_500_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    // Three long entries: a 七律 and a 詞 run past a row at this width.
    let long = "風急天高猿嘯哀，渚清沙白鳥飛迴。無邊落木蕭蕭下，不盡長江滾滾來。萬里悲秋常作客，百年多病獨登臺。艱難苦恨繁霜鬢，潦倒新停濁酒杯。";
    let record = versifier::store::PoemRecord {
        prompt: "風".into(),
        form: versifier::poetry::forms::PoemForm::QiLv,
        text: long.into(),
        model: "models/tang-poems".into(),
        sampling: versifier::generate::SamplingParams::default(),
        unix_ms: 1_796_000_000_000,
        unfinished: false,
        verse: versifier::poetry::VerseRules::default(),
        ci_rules: true,
    };
    store
        .save_history(&[record.clone(), record.clone(), record])
        .unwrap();
    let mut h = harness_sized(app(&store), 700.0, 500.0);
    h.get_by_label_contains("History (3)").click();
    h.run_steps(2);
    for button in ["Re-run", "Delete"] {
        for node in h.get_all_by_label(button) {
            let r = node.rect();
            assert!(
                r.right() <= 700.0 && r.width() > 0.0,
                "{button} at {r:?} is out of a 700-wide window"
            );
        }
    }
}

#[test]
fn the_controls_stay_where_they_are_when_the_first_launch_examples_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    assert!(
        h.query_all_by_label_contains("Try:").next().is_some(),
        "first launch shows the examples"
    );
    let before = h.get_by_label("Generate  (Ctrl+Enter)").rect();
    start_poem(&mut h, "月");
    pump(&mut h, "poems", |a| !a.is_writing());
    h.run_steps(2);
    assert!(h.query_all_by_label_contains("Try:").next().is_none());
    let after = h.get_by_label("Generate  (Ctrl+Enter)").rect();
    assert_eq!(before, after, "Generate did not move");
}

/// A dialog that cannot open (simulated: a machine without a portal).
fn no_dialog(
    _: &versifier::ui::DialogPurpose,
    _: Option<std::path::PathBuf>,
) -> versifier::ui::DialogAnswer {
    versifier::ui::DialogAnswer::Failed
}

/// A dialog the user closes without choosing (simulated).
fn cancelled_dialog(
    _: &versifier::ui::DialogPurpose,
    _: Option<std::path::PathBuf>,
) -> versifier::ui::DialogAnswer {
    versifier::ui::DialogAnswer::Cancelled
}

#[test]
fn save_without_a_file_dialog_writes_the_poem_and_says_where_simulated_dialog() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut a = app(&store);
    a.file_dialog_runner = no_dialog;
    let mut h = harness(a);
    start_poem(&mut h, "月");
    pump(&mut h, "poems", |a| !a.is_writing());
    h.run_steps(1);
    h.get_by_label("Save").click();
    h.run_steps(1);
    pump(&mut h, "the save", |a| {
        a.notices.iter().any(|n| n.contains("saved to"))
    });
    let said = h.state().notices.last().unwrap().clone();
    assert!(said.contains("No file dialog could open"), "{said}");
    // The poem is in the file the message names.
    let path = said
        .split("saved to ")
        .nth(1)
        .unwrap()
        .trim_end_matches('.');
    let written = std::fs::read_to_string(path).unwrap();
    let opening: String = h.state().cards[0].text.chars().take(4).collect();
    assert!(written.contains(&opening), "{written}");
    // Written outside the test's folder (the documents folder), it goes.
    if !path.starts_with(dir.path().to_str().unwrap()) {
        std::fs::remove_file(path).unwrap();
    }
    // And a dialog the user closes says so, instead of nothing.
    h.state_mut().file_dialog_runner = cancelled_dialog;
    h.get_by_label("Save").click();
    h.run_steps(1);
    pump(&mut h, "the cancel", |a| {
        a.notices
            .iter()
            .any(|n| n.contains("closed without a file name"))
    });
}

#[test]
fn a_refused_prompt_is_named_as_the_window_names_it_not_as_a_setting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "abc");
    pump(&mut h, "the refusal", |a| a.error.is_some());
    h.run_steps(2);
    assert!(
        h.query_all_by_label_contains("Prompt: the model's vocabulary has no token")
            .next()
            .is_some(),
        "the strip names the Prompt field"
    );
    assert!(h
        .query_all_by_label_contains("invalid setting")
        .next()
        .is_none());
}

#[test]
fn the_memory_panel_folds_to_one_line_and_stays_folded_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    {
        let mut h = harness(app(&store));
        assert!(h.query_by_label("Memory").is_some(), "the full panel");
        h.get_by_label("Fold").click();
        h.run_steps(2);
        assert!(h.state().settings.meter_folded);
        assert!(h.query_by_label("Memory").is_none(), "folded");
        assert!(h.query_by_label("Show memory").is_some(), "the one line");
        // Release stays in reach, folded.
        start_poem(&mut h, "月");
        pump(&mut h, "poems", |a| !a.is_writing());
        h.run_steps(2);
        h.get_by_label("Release").click();
        h.run_steps(1);
        pump(&mut h, "the release", |a| {
            matches!(a.state, versifier::engine::EngineState::Unloaded)
        });
        h.state_mut().save_settings_if_changed();
    }
    let mut h = harness(app(&store));
    assert!(h.query_by_label("Show memory").is_some(), "still folded");
    h.get_by_label("Show memory").click();
    h.run_steps(2);
    assert!(h.query_by_label("Memory").is_some(), "unfolded again");
}

#[test]
fn the_marks_come_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.show_marks = true;
    start_poem(&mut h, "春");
    pump(&mut h, "poems", |a| !a.is_writing());
    h.run_steps(2);
    for words in [
        "平 level",
        "仄 oblique",
        "中 either",
        "rhyme",
        "breaks a rule",
    ] {
        assert!(h.query_by_label(words).is_some(), "the key says {words}");
    }
}

#[test]
fn notices_stack_into_one_line_with_a_count_and_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut a = app(&store);
    for i in 1..=4 {
        a.notices.push(format!("notice number {i}"));
    }
    let mut h = harness(a);
    assert!(h.query_by_label("notice number 4").is_some(), "the newest");
    assert!(h.query_by_label("notice number 1").is_none(), "not a pile");
    assert!(h.query_by_label("+3 earlier").is_some());
    h.get_by_label("Dismiss all").click();
    h.run_steps(2);
    assert!(h.state().notices.is_empty());
}

#[test]
fn the_memory_plot_counts_seconds_ago_with_its_legend_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    pump(&mut h, "poems", |a| !a.is_writing());
    h.run_steps(2);
    assert!(
        h.query_by_label("— this app in RAM").is_some(),
        "the legend, under the plot"
    );
    assert!(h.query_by_label("— load").is_some());
    assert!(h.query_by_label("— generate").is_some());
}

#[test]
fn choosing_a_ci_tune_is_a_model_switch_not_a_release_report() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    pump(&mut h, "a 七絕", |a| !a.is_writing());
    // A tune on the bundled model is written by the bundled 詞 model: the
    // engine switches models, which the user did not ask to "release".
    h.state_mut()
        .choose_form(&versifier::poetry::forms::PoemForm::Ci("浣溪沙".into()));
    h.run_steps(1);
    start_poem(&mut h, "春");
    pump(&mut h, "a 詞", |a| !a.is_writing());
    h.run_steps(2);
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    assert!(
        h.query_all_by_label_contains("last release")
            .next()
            .is_none(),
        "no release report for a switch"
    );
}

#[test]
fn precision_sits_under_advanced_and_the_memory_parts_are_named_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    assert!(
        h.query_by_label("Precision").is_none(),
        "not in the top bar"
    );
    h.get_by_label("Advanced").click();
    h.run_steps(2);
    assert!(h.query_by_label("Precision").is_some(), "under Advanced");
    until_memory_reading(&mut h);
    for part in ["the model", "poems being written", "the app itself"] {
        assert!(
            h.query_all_by_label_contains(part).next().is_some(),
            "the memory bar names {part}"
        );
    }
    assert!(h.query_all_by_label_contains("KV cache").next().is_none());
}

#[test]
fn at_700_by_500_the_memory_strip_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness_sized(app(&store), 700.0, 500.0);
    h.run_steps(1);
    until_memory_reading(&mut h);
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(700.0, 500.0));
    for part in ["the model", "poems being written", "the app itself"] {
        let node = h.get_all_by_label_contains(part).next().unwrap();
        assert!(
            window.contains_rect(node.rect()),
            "{part} at {:?}",
            node.rect()
        );
    }
}

#[test]
fn a_cards_rerun_rewrites_only_its_own_card_and_history_keeps_one_record_per_poem() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.variations = 3;
    start_poem(&mut h, "江");
    pump(&mut h, "poems", |a| {
        a.cards.len() == 3 && a.cards.iter().all(|c| c.done)
    });
    let before: Vec<String> = h.state().cards.iter().map(|c| c.text.clone()).collect();
    assert_eq!(h.state().history.len(), 3);
    // The second card's Re-run.
    h.get_all_by_label("Re-run").nth(1).unwrap().click();
    h.run_steps(1);
    assert_eq!(
        h.state().cards.len(),
        3,
        "the other cards stay while it writes"
    );
    assert_eq!(h.state().cards[0].text, before[0]);
    assert_eq!(h.state().cards[2].text, before[2]);
    pump(&mut h, "re-run", |a| !a.is_writing() && a.cards[1].done);
    let after: Vec<String> = h.state().cards.iter().map(|c| c.text.clone()).collect();
    assert_eq!(
        after, before,
        "the same poem in its own place, the others kept"
    );
    assert_eq!(
        h.state().history.len(),
        3,
        "writing the same poem again adds no second record"
    );
}
