//! The real app state driven through egui_kittest: generate a poem with the
//! bundled model on CPU, release, a bad model folder, settings across a
//! restart, and history surviving a crash mid-save.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;
mod ui_harness;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use ui_harness::{app, harness, pump, start_poem};
use versifier::engine::{EngineState, ErrorKind};
use versifier::store::{PoemRecord, Settings, Store};
use versifier::ui::VersifierApp;

#[test]
fn type_a_prompt_generate_on_the_bundled_model_and_see_the_poem() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    let card = h.state().cards[0].clone();
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    assert!(
        card.text.chars().count() >= 10,
        "a poem was written: {card:?}"
    );
    h.run_steps(2);
    // The poem is on screen (laid out one couplet per line).
    let first_line: String = format!("{}{}", card.prompt, card.text)
        .split('。')
        .next()
        .unwrap()
        .to_string();
    assert!(
        h.query_by_label_contains(&first_line).is_some(),
        "poem not shown: {first_line}"
    );
    // It went into the history file.
    assert_eq!(store.load_history().0.len(), 1);

    // Release: the engine unloads and says so.
    h.get_by_label("Release").click();
    h.run_steps(1);
    pump(&mut h, "release", |a| {
        a.state == EngineState::Unloaded && a.cards.iter().all(|c| c.done)
    });
    h.run_steps(1);
    assert!(h.query_by_label_contains("Unloaded").is_some());
    assert!(h.query_by_label_contains("last release").is_some());
}

#[test]
fn a_bad_model_folder_shows_an_error_in_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let bad = tempfile::tempdir().unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub-safetensors");
    for f in ["model.safetensors", "vocab.txt"] {
        std::fs::copy(fixture.join(f), bad.path().join(f)).unwrap();
    }
    std::fs::write(bad.path().join("config.json"), "{ not json").unwrap();
    let s = Settings {
        model: Some(bad.path().to_path_buf()),
        ..Settings::default()
    };
    store.save_settings(&s).unwrap();
    let mut h = harness(app(&store));
    h.state_mut().prompt = "山".into();
    h.get_by_label("Generate  (Ctrl+Enter)").click();
    h.run_steps(1);
    pump(&mut h, "error", |a| a.error.is_some());
    let (kind, message) = h.state().error.clone().unwrap();
    assert_eq!(kind, ErrorKind::BadModel);
    assert!(message.contains("config.json"), "{message}");
    h.run_steps(1);
    assert!(
        h.query_all_by_label_contains("config.json")
            .next()
            .is_some(),
        "the error is shown in the window"
    );
}

#[test]
fn settings_changed_in_the_app_are_there_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    {
        let mut h = harness(app(&store));
        h.state_mut().settings.variations = 5;
        h.state_mut().settings.sampling.temperature = 1.25;
        h.state_mut().settings.idle_timeout_s = Some(60);
        h.run_steps(1);
    }
    let a = app(&store);
    assert_eq!(a.settings.variations, 5);
    assert_eq!(a.settings.sampling.temperature, 1.25);
    assert_eq!(a.settings.idle_timeout_s, Some(60));
}

#[test]
fn history_survives_a_simulated_crash_mid_save() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let poem = PoemRecord {
        prompt: "春".into(),
        form: Default::default(),
        text: "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。".into(),
        model: "m".into(),
        sampling: Default::default(),
        unix_ms: 1,
        unfinished: false,
        verse: Default::default(),
        ci_rules: true,
    };
    store.save_history(std::slice::from_ref(&poem)).unwrap();
    // A crash while writing the next save leaves a half-written temp file beside it.
    std::fs::write(
        dir.path().join(".history.json.tmp-4242"),
        "[{\"prompt\": \"春\", \"te",
    )
    .unwrap();
    let a = app(&store);
    assert_eq!(a.history, vec![poem]);
    assert!(a.notices.is_empty(), "{:?}", a.notices);
}

#[test]
fn history_panel_searches_deletes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let record = |prompt: &str, text: &str| PoemRecord {
        prompt: prompt.into(),
        form: Default::default(),
        text: text.into(),
        model: "m".into(),
        sampling: Default::default(),
        unix_ms: 1,
        unfinished: false,
        verse: Default::default(),
        ci_rules: true,
    };
    store
        .save_history(&[
            record("春", "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。"),
            record("床", "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"),
        ])
        .unwrap();
    let mut h = harness(app(&store));
    h.get_by_label("History (2)").click();
    h.run_steps(2);
    h.state_mut().history_filter = "明月".into();
    h.run_steps(2);
    assert!(h.query_all_by_label_contains("床前明月光").next().is_some());
    assert!(
        h.query_all_by_label_contains("春眠不覺曉").next().is_none(),
        "filtered out"
    );
    // Export writes the entries the search shows (through the dialog's path).
    let out = dir.path().join("chosen.md");
    h.state_mut().export_history_to(&out, true);
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.contains("床前明月光") && !md.contains("春眠不覺曉"),
        "{md}"
    );
    assert!(md.contains("1970-01-01"), "dated: {md}");
    h.get_by_label("Delete").click();
    h.run_steps(2);
    assert_eq!(store.load_history().0.len(), 1, "deletion is saved");
    // Undo brings it back, saved.
    h.get_by_label("Undo").click();
    h.run_steps(2);
    assert_eq!(store.load_history().0.len(), 2, "undo is saved");
    assert_eq!(
        h.state().history[1].text,
        "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"
    );
}

#[test]
fn headless_window_renders_the_real_app_with_text_and_the_meter() {
    use versifier::ui::snapshot::{save_png, HeadlessWindow};
    let dir = tempfile::tempdir().unwrap();
    let mut w = HeadlessWindow::new(dir.path(), [1000, 640]).unwrap();
    w.frame();
    let img = w.picture().unwrap();
    assert_eq!((img.width(), img.height()), (1000, 640));
    // The frame is not blank: labels, fields and the meter panel are drawn.
    let bg = *img.get_pixel(999, 639);
    let drawn = img.pixels().filter(|c| **c != bg).count();
    assert!(
        drawn > (1000 * 640) / 50,
        "only {drawn} pixels differ from the background"
    );
    // Glyphs come from the font atlas: the top bar (model name, buttons) has
    // many distinct shades from anti-aliased text, not just flat fills.
    let top_bar = image::imageops::crop_imm(&img, 0, 0, 1000, 24).to_image();
    let shades: std::collections::HashSet<_> = top_bar.pixels().collect();
    assert!(shades.len() > 20, "{} shades in the top bar", shades.len());
    let png = dir.path().join("frame.png");
    save_png(&img, &png).unwrap();
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    assert!(!w.adapter().is_empty());
}

#[test]
fn history_records_the_settings_that_were_sent_not_the_widgets_edited_during_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    let sent_seed = h.state().settings.sampling.seed;
    // The user keeps typing and changes a setting while the poem is written.
    h.state_mut().prompt = "江".into();
    h.state_mut().settings.sampling.seed = sent_seed + 1;
    h.state_mut().settings.sampling.temperature = 1.7;
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    let (history, _) = store.load_history();
    assert!(!history.is_empty());
    for r in &history {
        assert_eq!(r.prompt, "月", "{r:?}");
        assert!(r.text.starts_with('月'), "{r:?}");
        assert_eq!(r.sampling.seed, sent_seed);
        assert_ne!(r.sampling.temperature, 1.7);
    }
}

#[test]
fn snapshots_stop_at_a_refused_load_and_picture_the_refusal() {
    use versifier::ui::snapshot::{take_sequence, SnapshotPlan};
    let dir = tempfile::tempdir().unwrap();
    let plan = SnapshotPlan {
        out_dir: dir.path().to_path_buf(),
        device: versifier::engine::DeviceChoice::Cpu,
        precision: versifier::engine::Precision::F32,
        prompt: "月".into(),
        variations: 1,
        max_tokens: 32,
        size: [900, 600],
        // Far less than the bundled model needs: the engine refuses the load.
        memory_budget: Some(1024 * 1024),
    };
    let taken = take_sequence(&plan).unwrap();
    let names: Vec<String> = taken
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["1-before-load.png", "2-refused.png"]);
    let last = &taken.last().unwrap().1;
    assert!(
        last.contains("did not run") && last.contains("MiB"),
        "{last}"
    );
    assert!(dir.path().join("2-refused.png").exists());
    assert!(!dir.path().join("3-ready.png").exists());
}

#[test]
fn poem_cards_show_tone_marks_and_the_verdict_when_the_toggle_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    // The default form is a 七絕 with strict rules.
    start_poem(&mut h, "春");
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    h.get_by_label("平仄 marks").click();
    h.run_steps(2);
    assert!(h.state().settings.show_marks);
    let card = h.state().cards[0].clone();
    let report = versifier::poetry::check_poem(&format!("{}{}", card.prompt, card.text));
    assert!(
        report.rhyme_kept && report.tones_kept,
        "{}",
        report.to_text()
    );
    // The verdict and the marks are on screen, drawn from the same check.
    h.get_by_label(&report.verdict);
    assert!(report.verdict.contains("平仄合律"), "{}", report.verdict);
    for vertical in [false, true] {
        h.state_mut().settings.vertical_layout = vertical;
        h.run_steps(2);
        let marks: usize = h.query_all_by_label("平").count()
            + h.query_all_by_label("仄").count()
            + h.query_all_by_label("中").count();
        assert!(
            marks >= 20,
            "{marks} tone marks shown (vertical: {vertical})"
        );
    }
}

#[test]
fn a_bad_rhyme_setting_is_refused_by_the_engine_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.verse.rhyme = Some("董".into());
    start_poem(&mut h, "春");
    pump(&mut h, "error", |a| a.error.is_some());
    let (_, message) = h.state().error.clone().unwrap();
    assert!(
        message.contains("rhyme") && message.contains("仄聲"),
        "{message}"
    );
    assert!(h.state().cards.iter().all(|c| c.text.is_empty()));
}

fn fixture_model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-safetensors")
        .display()
        .to_string()
}

/// Puts `path` in the model field and presses Enter there, as a user would.
fn enter_model(h: &mut Harness<'static, VersifierApp>, path: &str) {
    h.state_mut().set_model_field(path);
    h.run_steps(1);
    h.get_all_by_value(path).next().unwrap().focus();
    h.run_steps(1);
    h.key_press(egui::Key::Enter);
    h.run_steps(2);
}

#[test]
fn broken_model_folders_are_not_remembered_and_the_one_that_loaded_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let missing = dir.path().join("no-such-model").display().to_string();
    {
        let mut h = harness(app(&store));
        enter_model(&mut h, &missing);
        pump(&mut h, "load error", |a| a.error.is_some());
        assert_eq!(
            h.state().settings.model,
            None,
            "a failed folder is not kept"
        );
        assert!(h.state().settings.recent_models.is_empty());
        h.state_mut().error = None;
        let good = fixture_model();
        enter_model(&mut h, &good);
        pump(&mut h, "load", |a| a.settings.model.is_some());
        assert_eq!(
            h.state().settings.recent_models,
            [std::path::PathBuf::from(&good)]
        );
    }
    // The next launch starts on the model that loaded.
    let a = app(&store);
    assert_eq!(
        a.load_spec().model,
        std::path::PathBuf::from(fixture_model())
    );
    // A remembered folder that has gone since: the bundled model, with a notice.
    let mut s = store.load_settings().0;
    s.model = Some(missing.clone().into());
    s.recent_models = vec![missing.clone().into()];
    store.save_settings(&s).unwrap();
    let a = app(&store);
    assert!(
        a.notices.iter().any(|n| n.contains("not there any more")),
        "{:?}",
        a.notices
    );
    assert!(a.load_spec().model.ends_with("tang-poems"));
    assert!(a.settings.recent_models.is_empty());
}

#[test]
fn a_failed_run_keeps_the_poems_already_on_screen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    let before = h.state().cards.clone();
    assert!(!before[0].text.is_empty());
    // The next run fails before writing anything (a bad rhyme setting).
    h.state_mut().settings.verse.rhyme = Some("董".into());
    start_poem(&mut h, "江");
    pump(&mut h, "error", |a| a.error.is_some());
    let after: Vec<String> = h.state().cards.iter().map(|c| c.text.clone()).collect();
    let kept: Vec<String> = before.iter().map(|c| c.text.clone()).collect();
    assert_eq!(after, kept, "the poems on screen stay");
}

#[test]
fn rerun_writes_the_chosen_variation_again_and_leaves_the_settings_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.variations = 3;
    start_poem(&mut h, "山");
    pump(&mut h, "poems", |a| {
        a.cards.len() == 3 && a.cards.iter().all(|c| c.done)
    });
    let third = h.state().cards[2].clone();
    let record = third
        .record
        .clone()
        .expect("a finished card keeps its record");
    assert_eq!(
        record.sampling.seed,
        h.state().settings.sampling.seed + 2,
        "history keeps each variation's own seed"
    );
    let reruns = h.get_all_by_label("Re-run").count();
    assert!(reruns >= 3, "{reruns} Re-run buttons");
    h.get_all_by_label("Re-run").nth(2).unwrap().click();
    h.run_steps(1);
    pump(&mut h, "re-run", |a| !a.is_writing() && a.cards[2].done);
    assert_eq!(h.state().cards[2].text, third.text, "the same poem again");
    assert_eq!(h.state().settings.variations, 3);
    assert!(!h.state().settings.lock_seed);
}

#[test]
fn every_control_is_reachable_in_a_700_by_500_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = Harness::builder()
        .with_size(egui::vec2(700.0, 500.0))
        .with_context_setup(versifier::ui::install_fonts)
        .build_ui_state(|ui, app: &mut VersifierApp| app.show(ui), app(&store));
    h.run_steps(3);
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(700.0, 500.0));
    for label in [
        "Open…",
        "Bundled",
        "Load",
        "Device",
        "Form",
        "Generate  (Ctrl+Enter)",
        "Stop  (Esc)",
        "Advanced",
        "平仄 marks",
        "Release",
        "Pin",
        "Export timeline",
    ] {
        let rect = h.get_all_by_label(label).next().unwrap().rect();
        assert!(
            window.contains_rect(rect) && rect.width() > 4.0,
            "{label} at {rect:?} is not inside the 700x500 window"
        );
    }
    // The Generate button shows its whole label (not "Ge").
    let go = h.get_by_label("Generate  (Ctrl+Enter)").rect();
    assert!(go.width() > 100.0, "{go:?}");
    // Precision is under Advanced, in reach when it opens.
    h.get_by_label("Advanced").click();
    h.run_steps(2);
    let rect = h.get_all_by_label("Precision").next().unwrap().rect();
    assert!(
        window.contains_rect(rect) && rect.width() > 4.0,
        "Precision at {rect:?} is not inside the 700x500 window"
    );
}

#[test]
fn first_launch_shows_a_hint_and_example_prompts_that_fill_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.get_by_label_contains("Type a character or two");
    h.get_by_label("江").click();
    h.run_steps(2);
    assert_eq!(h.state().prompt, "江");
}

#[test]
fn without_a_gpu_the_meter_shows_this_apps_ram_with_no_gpu_wording_or_raw_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.device = versifier::engine::DeviceChoice::Cpu;
    start_poem(&mut h, "月");
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    h.run_steps(3);
    h.get_by_label_contains("This app in RAM");
    for raw in ["NVML", "libnvidia", "No GPU", "GPU memory back"] {
        assert!(
            h.query_by_label_contains(raw).is_none(),
            "{raw} is on screen on a CPU run"
        );
    }
    // A reload of the small bundled model takes well under a second: in ms.
    let ms = h.state().last_load_ms().unwrap();
    if ms < 1000.0 {
        h.get_by_label(&format!("reload ≈ {ms:.0} ms"));
    }
}

#[test]
fn errors_are_plain_words_in_a_strip_that_does_not_move_the_controls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    let before = h.get_by_label("Generate  (Ctrl+Enter)").rect();
    h.state_mut().settings.verse.rhyme = Some("董".into());
    start_poem(&mut h, "春");
    pump(&mut h, "error", |a| a.error.is_some());
    h.run_steps(2);
    assert_eq!(
        h.get_by_label("Generate  (Ctrl+Enter)").rect(),
        before,
        "the button stayed put"
    );
    h.get_by_label("This poem cannot be written with these settings.");
    assert!(h.query_by_label_contains("BadRequest").is_none());
    assert!(
        h.query_by_label_contains("`").is_none(),
        "no backticked names"
    );
    h.get_by_label("details");
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    assert!(h.state().error.is_none());
}

#[test]
fn copy_says_copied_and_a_poem_cut_short_is_marked_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    // Free verse stops at the length setting (a set form takes the tokens it
    // needs): 8 tokens cut the poem, and it is kept as such.
    let saved = Settings {
        form: versifier::poetry::forms::PoemForm::Free,
        ..Settings::default()
    };
    store.save_settings(&saved).unwrap();
    let mut h = harness(app(&store));
    h.state_mut().settings.max_tokens = 8;
    start_poem(&mut h, "月");
    pump(&mut h, "poem", |a| {
        !a.cards.is_empty() && a.cards.iter().all(|c| c.done)
    });
    assert!(h.state().cards[0].unfinished);
    let saved = store.load_history().0;
    assert!(saved.last().unwrap().unfinished, "history says it was cut");
    h.get_by_label("unfinished");
    h.get_by_label("Copy").click();
    h.run_steps(2);
    h.get_by_label("copied");
}

#[test]
fn precision_auto_uses_the_f16_checkpoints_own_precision_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.state_mut().settings.device = versifier::engine::DeviceChoice::Cpu;
    h.run_steps(2);
    assert!(h.state().settings.precision_auto, "auto by default");
    // The choice is under Advanced.
    h.get_by_label("Advanced").click();
    h.run_steps(2);
    // The bundled model is stored in f16: auto loads it in f16 (exact, faster).
    assert_eq!(
        h.state().load_spec().precision,
        versifier::engine::Precision::F16
    );
    assert!(
        h.query_all_by_value("auto (f16)").next().is_some()
            || h.query_all_by_label_contains("auto (f16)").next().is_some(),
        "the choice says what auto picked"
    );
    // An f32 checkpoint stays f32 on the CPU.
    h.state_mut().set_model_field(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf-safetensors")
            .display()
            .to_string(),
    );
    h.run_steps(2);
    assert_eq!(
        h.state().load_spec().precision,
        versifier::engine::Precision::F32
    );
}

#[test]
fn an_unreadable_settings_file_is_said_in_the_message_strip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    std::fs::write(
        &store.settings_path,
        r#"{"variations": 3, "precision": "F16"}"#,
    )
    .unwrap();
    let h = harness(app(&store));
    assert!(
        h.state()
            .notices
            .iter()
            .any(|n| n.contains("settings.json")),
        "{:?}",
        h.state().notices
    );
    h.get_by_label_contains("settings.json");
}

#[test]
fn the_model_field_shows_the_models_name_and_size_and_a_click_edits_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.get_by_label("tang-poems · 14.1M").click();
    h.run_steps(2);
    let path = h.state().load_spec().model.display().to_string();
    h.get_all_by_value(&path)
        .next()
        .expect("the path can be edited");
}

#[test]
fn a_saved_gpu_that_is_absent_falls_back_to_the_cpu_with_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    // A settings file from a machine with two GPUs; this one has none (or a
    // build without CUDA).
    let saved = Settings {
        device: versifier::engine::DeviceChoice::Cuda(1),
        ..Settings::default()
    };
    store.save_settings(&saved).unwrap();
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    pump(&mut h, "poem", |a| {
        a.error.is_some() || (!a.cards.is_empty() && a.cards.iter().all(|c| c.done))
    });
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    assert!(
        !h.state().cards[0].text.is_empty(),
        "the poem is written on the CPU"
    );
    let notices = h.state().notices.join("\n");
    eprintln!("{notices}");
    assert!(
        notices.contains("cuda:1") && notices.contains("CPU"),
        "the notice names the GPU and says where the poem ran: {notices}"
    );
    // The message is on screen, and the device shown is the one in use.
    h.get_by_label_contains("running on the CPU");
    assert_eq!(
        h.state().settings.device,
        versifier::engine::DeviceChoice::Cpu
    );
}

#[test]
fn a_ci_to_a_chosen_tune_is_written_in_the_tunes_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let saved = Settings {
        form: "ci:鹧鸪天".parse().unwrap(),
        ..Settings::default()
    };
    store.save_settings(&saved).unwrap();
    let mut h = harness(app(&store));
    // The tune picker shows the tune by its traditional name.
    h.get_by_value("鷓鴣天");
    start_poem(&mut h, "春");
    pump(&mut h, "poem", |a| {
        a.error.is_some() || (!a.cards.is_empty() && a.cards.iter().all(|c| c.done))
    });
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    let card = &h.state().cards[0];
    let poem = format!("{}{}", card.prompt, card.text);
    assert!(
        versifier::poetry::forms::satisfies(&poem, &saved.form),
        "{poem}"
    );
    assert_eq!(
        h.state().history[0].form,
        saved.form,
        "history keeps the tune"
    );
    // The bundled 詞 model wrote it: the model bar and history name it, and
    // the bundled model stays the one chosen for the next launch.
    h.get_by_label_contains("song-ci");
    assert!(
        h.state().history[0].model.ends_with("song-ci"),
        "{}",
        h.state().history[0].model
    );
    assert_eq!(h.state().settings.model, None);
    assert!(h.state().settings.recent_models.is_empty());
    // Precision auto reads the 詞 model's own checkpoint (f16, as the bundled
    // model's), not the chosen folder's.
    assert_eq!(
        h.state().load_spec().precision,
        versifier::engine::Precision::F16
    );
}

/// Re-run writes a record with the model its form goes to, not the one the
/// form chosen now goes to: a 詞 from history while 七絕 is chosen is written
/// by the bundled 詞 model again, and a 七絕 while a tune is chosen by the
/// bundled model.
#[test]
fn rerun_writes_with_the_model_of_the_records_form() {
    for (chosen, rerun_form, writer) in [
        ("qijue", "ci:浣溪沙", "song-ci"),
        ("ci:浣溪沙", "qijue", "tang-poems"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_dir(dir.path());
        store
            .save_settings(&Settings {
                form: chosen.parse().unwrap(),
                variations: 1,
                ..Settings::default()
            })
            .unwrap();
        let mut h = harness(app(&store));
        start_poem(&mut h, "春");
        pump(&mut h, "poem", |a| {
            a.error.is_some() || (!a.cards.is_empty() && a.cards.iter().all(|c| c.done))
        });
        assert!(h.state().error.is_none(), "{:?}", h.state().error);
        let mut record = h.state().cards[0].record.clone().expect("a record");
        record.form = rerun_form.parse().unwrap();
        h.state_mut().rerun(&record);
        h.run_steps(1);
        pump(&mut h, "re-run", |a| {
            a.error.is_some() || (a.cards.len() == 1 && a.cards[0].done && a.history.len() == 2)
        });
        assert!(h.state().error.is_none(), "{:?}", h.state().error);
        let newest = h.state().history.last().unwrap().clone();
        assert_eq!(newest.form, record.form);
        assert!(
            newest.model.ends_with(writer),
            "{rerun_form} re-run while {chosen} is chosen: written by {}",
            newest.model
        );
        let poem = format!("{}{}", h.state().cards[0].prompt, h.state().cards[0].text);
        assert!(
            versifier::poetry::forms::satisfies(&poem, &record.form),
            "{poem}"
        );
    }
}

/// A 詞 in the history from before strict rules held a tune's rhymes and
/// 詞譜 (its record has no `ci_rules`) is written again as it was; one
/// written now keeps them, and the record says so.
#[test]
fn rerun_of_a_ci_from_before_its_rhymes_were_held_writes_it_as_it_was() {
    use versifier::generate::{Prompt, RequestSettings};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let settings = Settings {
        form: "ci:菩薩蠻".parse().unwrap(),
        variations: 1,
        device: versifier::device::DeviceChoice::Cpu,
        precision_auto: false,
        precision: versifier::engine::Precision::F32,
        ..Settings::default()
    };
    store.save_settings(&settings).unwrap();
    let mut h = harness(app(&store));
    start_poem(&mut h, "月");
    pump(&mut h, "poem", |a| {
        a.error.is_some() || (!a.cards.is_empty() && a.cards.iter().all(|c| c.done))
    });
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    let record = h.state().cards[0].record.clone().expect("a record");
    assert!(record.ci_rules, "written now: rhymes and tones held");
    let form = record.form.clone();
    assert!(
        {
            let r = versifier::poetry::check_in_form(&record.text, &form);
            r.rhyme_kept && r.tones_kept
        },
        "{}",
        record.text
    );
    // The same record as a build before 2026-12-06 saved it.
    let mut json = serde_json::to_value(&record).unwrap();
    json.as_object_mut().unwrap().remove("ci_rules");
    let old: PoemRecord = serde_json::from_value(json).unwrap();
    h.state_mut().rerun(&old);
    h.run_steps(1);
    pump(&mut h, "re-run", |a| {
        a.error.is_some() || (a.cards.len() == 1 && a.cards[0].done && a.history.len() == 2)
    });
    assert!(h.state().error.is_none(), "{:?}", h.state().error);
    let again = h.state().history.last().unwrap().clone();
    assert!(
        !again.ci_rules,
        "the re-run's record keeps the rules it ran under"
    );
    // What that build wrote: the same request with the tune's rules not held.
    let model = versifier::model::load_model(
        std::path::Path::new(&again.model),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let verse = old.verse_rules();
    let g = common::write_poems(
        &model,
        &RequestSettings {
            prompt: &Prompt::Text(old.prompt.clone()),
            form: &form,
            variations: 1,
            max_new_tokens: settings.max_tokens,
            sampling: &old.sampling,
            verse: &verse,
        },
    );
    assert_eq!(
        again.text,
        format!("{}{}", old.prompt, g.variations[0].text)
    );
    assert_ne!(
        again.text, record.text,
        "rhymes held or not, two different 詞"
    );
}

#[test]
fn the_ci_model_opened_by_itself_is_remembered_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let ci = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/song-ci");
    let mut h = harness(app(&store));
    enter_model(&mut h, &ci.display().to_string());
    pump(&mut h, "load", |a| {
        a.error.is_some() || a.settings.model.is_some()
    });
    assert_eq!(h.state().settings.model.as_deref(), Some(ci.as_path()));
    assert_eq!(h.state().settings.recent_models, [ci]);
}

#[test]
fn clicking_the_model_name_opens_its_field_ready_for_typing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_dir(dir.path());
    let mut h = harness(app(&store));
    h.get_by_label_contains("tang-poems").click();
    h.run_steps(3);
    // The field shows the path and has the keyboard: typing goes into it.
    let path = h.state().load_spec().model.display().to_string();
    assert!(
        h.get_all_by_value(&path).any(|n| n.is_focused()),
        "the model field has focus"
    );
    h.event(egui::Event::Text("x".into()));
    h.run_steps(2);
    assert!(
        h.query_all_by_value(&format!("{path}x")).next().is_some(),
        "typed text went into the field"
    );
}
