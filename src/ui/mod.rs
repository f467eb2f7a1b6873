//! The desktop app (eframe/egui): write poems, watch memory, release the GPU.
//!
//! Owns: windows, panels, what the user sees and types. Must not: hold model
//! objects or open devices (it talks to `engine/` through commands and events
//! and reads `meter/` snapshots), or block on either.

mod app;
mod keep_lines;
mod messages;
mod meter_fold;
mod meter_panel;
mod poem_marks;
pub mod snapshot;
mod theme_field;
pub mod yield_mode;

pub use app::{Card, DialogAnswer, DialogPurpose, DialogRunner, VersifierApp};

use std::sync::Arc;

/// The embedded CJK font (Noto Serif CJK TC, subset; see assets/fonts/README.md).
const CJK_FONT: &[u8] = include_bytes!("../../assets/fonts/NotoSerifCJKtc-Regular-subset.otf");

/// Adds the CJK font after egui's own fonts, for both families.
pub fn install_fonts(ctx: &egui::Context) {
    let mut fonts = egui::FontDefinitions::default();
    fonts.font_data.insert(
        "noto-serif-cjk-tc".into(),
        Arc::new(egui::FontData::from_static(CJK_FONT)),
    );
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        fonts
            .families
            .entry(family)
            .or_default()
            .push("noto-serif-cjk-tc".into());
    }
    ctx.set_fonts(fonts);
}

/// The window/taskbar icon (the installed packages use the SVG and PNG sizes
/// in `assets/icons/` for the menu entry).
const WINDOW_ICON_PNG: &[u8] = include_bytes!("../../assets/icons/versifier-256.png");

/// When `run` was called, for the first-frame figure in the log.
static LAUNCHED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Opens the window and runs until it is closed.
pub fn run() -> Result<(), eframe::Error> {
    let _ = LAUNCHED.set(std::time::Instant::now());
    let store = crate::store::Store::system();
    let size = store
        .as_ref()
        .and_then(crate::store::Store::peek_window_size)
        .unwrap_or([1180.0, 760.0]);
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Versifier")
        .with_app_id("versifier")
        .with_inner_size(size)
        .with_min_inner_size([760.0, 480.0]);
    match eframe::icon_data::from_png_bytes(WINDOW_ICON_PNG) {
        Ok(icon) => viewport = viewport.with_icon(std::sync::Arc::new(icon)),
        Err(e) => tracing::warn!("window icon not used: {e}"),
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "Versifier",
        options,
        Box::new(move |cc| {
            install_fonts(&cc.egui_ctx);
            Ok(Box::new(VersifierApp::new(&cc.egui_ctx, store)?))
        }),
    )
}
