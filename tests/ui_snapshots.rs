//! Pictures of the real window compared with the ones kept in
//! `tests/snapshots/` (egui_kittest's snapshot test, drawn by egui's wgpu
//! renderer on a CPU adapter). The memory panel is masked: its figures are this
//! process's live RAM. After a deliberate change of the look, regenerate them
//! with `UPDATE_SNAPSHOTS=1 cargo test --release --test ui_snapshots` and look
//! at every changed picture before committing it.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use versifier::store::{Settings, Store};
use versifier::ui::{Card, VersifierApp};

fn window(store: &Store, size: egui::Vec2) -> Harness<'static, VersifierApp> {
    let app = VersifierApp::new(&egui::Context::default(), Some(store.clone())).unwrap();
    let mut h = Harness::builder()
        .with_size(size)
        .with_context_setup(versifier::ui::install_fonts)
        .wgpu()
        .build_ui_state(|ui, app: &mut VersifierApp| app.show(ui), app);
    h.run_steps(3);
    h
}

/// Paints over the memory panel (live figures) from its heading to the
/// window's right edge.
fn mask_memory_panel(h: &mut Harness<'static, VersifierApp>, size: egui::Vec2) {
    let heading = h.get_by_label("Memory").rect();
    let panel = egui::Rect::from_min_max(
        egui::pos2(heading.min.x - 4.0, heading.min.y - 4.0),
        egui::pos2(size.x, size.y),
    );
    h.mask(panel);
}

fn settings_in(dir: &std::path::Path, edit: impl FnOnce(&mut Settings)) -> Store {
    let store = Store::in_dir(dir);
    let mut settings = Settings::default();
    edit(&mut settings);
    store.save_settings(&settings).unwrap();
    store
}

const POEMS: [&str; 2] = [
    "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
    "月落烏啼霜滿天，江楓漁火對愁眠。姑蘇城外寒山寺，夜半鐘聲到客船。",
];

fn show_poems(h: &mut Harness<'static, VersifierApp>) {
    h.state_mut().cards = POEMS
        .iter()
        .map(|p| {
            let mut chars = p.chars();
            let prompt: String = chars.next().into_iter().collect();
            Card {
                prompt,
                text: chars.collect(),
                done: true,
                ..Card::default()
            }
        })
        .collect();
    h.run_steps(2);
}

#[test]
fn first_launch_window_matches_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let size = egui::vec2(1000.0, 640.0);
    let mut h = window(&Store::in_dir(dir.path()), size);
    mask_memory_panel(&mut h, size);
    h.snapshot("first-launch-dark");
}

#[test]
fn poems_with_tone_marks_in_the_light_theme_match_their_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = settings_in(dir.path(), |s| {
        s.theme = "light".into();
        s.show_marks = true;
    });
    let size = egui::vec2(1100.0, 700.0);
    let mut h = window(&store, size);
    show_poems(&mut h);
    mask_memory_panel(&mut h, size);
    h.snapshot("poems-marks-light");
}

#[test]
fn vertical_poems_in_a_700_by_500_window_match_their_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = settings_in(dir.path(), |s| s.vertical_layout = true);
    let size = egui::vec2(700.0, 500.0);
    let mut h = window(&store, size);
    show_poems(&mut h);
    mask_memory_panel(&mut h, size);
    h.snapshot("vertical-700x500");
}
