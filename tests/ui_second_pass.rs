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
