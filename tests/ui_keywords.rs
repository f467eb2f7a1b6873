//! The window's Theme field and Keep…: every poem holds the theme's words, a
//! sentence is read for its words and shows them, a bad theme is refused in
//! plain words, and keeping a card's first lines rewrites only the rest,
//! leaving the kept text exactly as it was.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod ui_harness;

use egui_kittest::kittest::Queryable;
use ui_harness::{app, harness, pump, start_poem};
use versifier::poetry::check_in_form;
use versifier::poetry::forms::{satisfies, PoemForm};
use versifier::store::{Settings, Store};

fn store_with(dir: &std::path::Path, form: PoemForm, theme: &str) -> Store {
    let store = Store::in_dir(dir);
    let s = Settings {
        form,
        poem_theme: theme.into(),
        ..Settings::default()
    };
    store.save_settings(&s).unwrap();
    store
}

#[test]
fn the_theme_fields_words_are_in_every_poem_and_keep_rewrites_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), PoemForm::QiJue, "秋江 夜雨");
    let mut h = harness(app(&store));
    h.state_mut().settings.variations = 2;
    h.get_by_label_contains("秋江 · 夜雨 (in every poem)");
    start_poem(&mut h, "");
    pump(&mut h, "poems", |a| {
        a.cards.len() == 2 && a.cards.iter().all(|c| c.done)
    });
    for card in &h.state().cards {
        let poem = format!("{}{}", card.prompt, card.text);
        assert!(poem.contains("秋江") && poem.contains("夜雨"), "{poem}");
        assert!(satisfies(&poem, &PoemForm::QiJue), "{poem}");
        let record = card.record.as_ref().unwrap();
        assert_eq!(
            record.verse.keywords,
            ["秋江", "夜雨"],
            "history keeps the theme"
        );
    }
    let first = h.state().cards[0].record.clone().unwrap();
    let lines: Vec<String> = first
        .text
        .split_inclusive(['，', '。'])
        .map(String::from)
        .collect();
    let kept = format!("{}{}", lines[0], lines[1]);
    let history_before = h.state().history.len();

    // Keep the first card's first two lines: the menu, then its second entry.
    h.get_all_by_label("Keep…").next().unwrap().click();
    h.run_steps(2);
    h.get_by_label(&format!("1–2  {}", lines[1])).click();
    h.run_steps(1);
    assert_eq!(
        h.state().prompt,
        kept,
        "the kept lines are the prompt, to edit"
    );
    pump(&mut h, "rewrite", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    for card in &h.state().cards {
        let poem = format!("{}{}", card.prompt, card.text);
        assert!(poem.starts_with(&kept), "kept text changed: {poem}");
        assert!(poem.contains("秋江") && poem.contains("夜雨"), "{poem}");
        assert!(satisfies(&poem, &PoemForm::QiJue), "{poem}");
        let report = check_in_form(&poem, &PoemForm::QiJue);
        assert!(
            report.rhyme_kept && report.tones_kept,
            "{poem}: {:?}",
            report.problems
        );
    }
    assert!(h.state().history.len() > history_before);
}

#[test]
fn a_sentence_as_theme_shows_the_words_taken_and_a_bad_theme_is_refused_in_the_strip() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), PoemForm::WuJue, "寫一首關於秋夜思鄉的詩");
    let mut h = harness(app(&store));
    h.get_by_label_contains("秋夜 · 思鄉 (read from your sentence)");
    start_poem(&mut h, "");
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    let card = &h.state().cards[0];
    assert!(
        card.text.contains("秋夜") && card.text.contains("思鄉"),
        "{}",
        card.text
    );

    h.state_mut().settings.poem_theme = "autumn river".into();
    h.run_steps(1);
    h.get_by_label_contains("`autumn`");
    h.get_by_label("Generate  (Ctrl+Enter)").click();
    h.run_steps(2);
    let (_, message) = h.state().error.clone().unwrap();
    assert!(
        message.contains("`keywords`") && message.contains("`autumn`"),
        "{message}"
    );
}

#[test]
fn first_launch_offers_themes_that_fill_the_theme_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.get_by_label("江南 春雨").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.poem_theme, "江南 春雨");
}
