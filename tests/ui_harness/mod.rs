//! The app driven through egui_kittest, shared by the window tests: the real
//! app over a store, a harness that draws it, and a pump of engine events.
#![allow(dead_code)]

use std::time::Duration;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use versifier::store::Store;
use versifier::ui::VersifierApp;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn app(store: &Store) -> VersifierApp {
    let ctx = egui::Context::default();
    VersifierApp::new(&ctx, Some(store.clone())).expect("engine starts")
}

pub fn harness(app: VersifierApp) -> Harness<'static, VersifierApp> {
    harness_sized(app, 1200.0, 800.0)
}

/// [`harness`] in a window of `width` x `height`.
pub fn harness_sized(app: VersifierApp, width: f32, height: f32) -> Harness<'static, VersifierApp> {
    let mut h = Harness::builder()
        .with_size(egui::vec2(width, height))
        .with_context_setup(versifier::ui::install_fonts)
        .build_ui_state(|ui, app: &mut VersifierApp| app.show(ui), app);
    h.run_steps(2);
    h
}

/// Applies engine events until `done` says so (bounded), rendering in between.
pub fn pump(
    h: &mut Harness<'static, VersifierApp>,
    what: &str,
    done: impl Fn(&VersifierApp) -> bool,
) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done(h.state()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within {WAIT:?}"
        );
        h.state_mut()
            .process_one_event_blocking(Duration::from_millis(200));
        h.run_steps(1);
    }
}

/// Types `prompt` and presses Generate, as a user would.
pub fn start_poem(h: &mut Harness<'static, VersifierApp>, prompt: &str) {
    h.state_mut().prompt = prompt.into();
    h.run_steps(1);
    h.get_by_label("Generate  (Ctrl+Enter)").click();
    h.run_steps(1);
}

/// Waits (bounded) for the memory meter's first reading, which the bar and
/// its key come with, and draws again.
pub fn until_memory_reading(h: &mut Harness<'static, VersifierApp>) {
    let deadline = std::time::Instant::now() + WAIT;
    while h.state().latest_memory().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no memory reading within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    h.run_steps(2);
}
