//! The memory panel: a bar of the selected GPU's memory (other processes, this
//! app's weights, KV cache, runtime, free) or of this process's RAM, a history
//! plot with load / generate / release markers, the engine state, the idle
//! countdown with Pin, and Release with its checked report.
//!
//! Narrow on purpose: it draws a [`MeterView`] (what it needs of the app's
//! state, borrowed) and returns the [`MeterAction`]s the user took; the app
//! applies them. It knows nothing of the app itself.

use std::time::{Duration, Instant};

use egui_plot::{Line, Plot, PlotPoints, VLine};

use crate::engine::{DeviceChoice, EngineState, LoadReport, ReleaseReport};
use crate::meter::{MarkerKind, MemorySampler};

use crate::mib_f64 as mib;

/// Idle timeouts offered in the menu.
const TIMEOUTS: [(Option<u64>, &str); 6] = [
    (None, "never"),
    (Some(30), "30 s"),
    (Some(60), "1 min"),
    (Some(300), "5 min"),
    (Some(900), "15 min"),
    (Some(3600), "60 min"),
];

/// What the memory panel draws.
pub struct MeterView<'a> {
    pub state: &'a EngineState,
    /// The device the settings select (the meter shows its memory).
    pub device: DeviceChoice,
    pub sampler: Option<&'a MemorySampler>,
    pub last_load: Option<&'a LoadReport>,
    pub last_release: Option<&'a ReleaseReport>,
    /// The KV cache of the current request, bytes.
    pub kv_cache_bytes: usize,
    /// Idle time left, as of when it was reported.
    pub idle_left: Option<(Duration, Instant)>,
    pub pinned: bool,
    pub idle_timeout_s: Option<u64>,
}

/// What the user did in the memory panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterAction {
    /// Release pressed: free the model and give the memory back.
    Release,
    /// Pin toggled: never unload while pinned.
    SetPinned(bool),
    /// A new idle timeout chosen (`None`: never unload when idle).
    SetIdleTimeout(Option<u64>),
    /// Export timeline pressed: write the memory history as CSV.
    ExportTimeline,
}

/// Draws the panel; returns what the user did this frame.
pub fn show(view: &MeterView<'_>, ui: &mut egui::Ui) -> Vec<MeterAction> {
    let mut actions = Vec::new();
    ui.heading("Memory");
    let state = match view.state {
        EngineState::Unloaded => "Unloaded".to_string(),
        EngineState::Loading { progress } => format!("Loading {:.0}%", progress * 100.0),
        EngineState::Ready => "Ready".into(),
        EngineState::Generating => "Generating".into(),
        EngineState::Releasing => "Releasing".into(),
    };
    ui.label(egui::RichText::new(state).strong());

    let (latest, unavailable) = match view.sampler {
        Some(s) => {
            let h = s.history();
            (h.latest().cloned(), h.gpu_unavailable.clone())
        }
        None => (None, Some("the meter thread could not start".into())),
    };
    let weights = view.last_load.map_or(0, |l| l.weights_bytes as u64);
    let loaded = !matches!(view.state, EngineState::Unloaded);
    let gpu = match view.device {
        DeviceChoice::Cuda(i) => latest
            .as_ref()
            .and_then(|l| crate::meter::gpu_for_ordinal(&l.gpus, i).cloned()),
        DeviceChoice::Cpu => None,
    };
    let desired = egui::vec2(ui.available_width(), 22.0);
    match (&gpu, &latest) {
        (Some(g), _) => {
            let process = g.process_bytes.unwrap_or(0);
            let w = if loaded { weights.min(process) } else { 0 };
            let kv = (view.kv_cache_bytes as u64).min(process.saturating_sub(w));
            let runtime = process.saturating_sub(w + kv);
            let other = g.used_bytes.saturating_sub(process);
            let segments = [
                (
                    "other processes",
                    other,
                    egui::Color32::from_rgb(140, 140, 140),
                ),
                (
                    "this app: weights",
                    w,
                    egui::Color32::from_rgb(70, 130, 220),
                ),
                (
                    "this app: KV cache",
                    kv,
                    egui::Color32::from_rgb(80, 190, 140),
                ),
                (
                    "this app: runtime/context",
                    runtime,
                    egui::Color32::from_rgb(230, 160, 60),
                ),
            ];
            stacked_bar(ui, desired, g.total_bytes, &segments);
            ui.label(format!(
                "{} · {:.0} MiB total · {:.0} MiB free",
                g.name,
                mib(g.total_bytes),
                mib(g.free_bytes)
            ));
            for (name, bytes, color) in segments {
                ui.colored_label(color, format!("{name}: {:.0} MiB", mib(bytes)));
            }
            if g.process_bytes.is_none() {
                ui.label("this process's GPU memory: not available from the driver");
            }
        }
        (None, Some(l)) => {
            let rss = l.rss_bytes.unwrap_or(0);
            let w = if loaded { weights.min(rss) } else { 0 };
            let total = crate::device::fit::available_ram()
                .map_or(rss * 4, |a| a + rss)
                .max(1);
            let segments = [
                (
                    "this app: weights",
                    w,
                    egui::Color32::from_rgb(70, 130, 220),
                ),
                (
                    "this app: other",
                    rss.saturating_sub(w),
                    egui::Color32::from_rgb(230, 160, 60),
                ),
            ];
            stacked_bar(ui, desired, total, &segments);
            ui.label(format!(
                "RAM: this process {:.0} MiB (weights {:.0} MiB)",
                mib(rss),
                mib(w)
            ));
            match (&unavailable, view.device) {
                (Some(why), _) => {
                    ui.label(format!("No GPU found: {why}"));
                }
                (None, DeviceChoice::Cpu) => {
                    ui.label("Running on the CPU.");
                }
                _ => {}
            }
        }
        (None, None) => {
            ui.label("waiting for the first reading…");
        }
    }

    // History plot: this process's memory over the last minutes, with markers.
    if let Some(s) = view.sampler {
        let h = s.history();
        let cuda = match view.device {
            DeviceChoice::Cuda(i) => Some(i),
            DeviceChoice::Cpu => None,
        };
        let points: Vec<[f64; 2]> =
            h.samples
                .iter()
                .filter_map(|smp| {
                    let bytes = match cuda {
                        Some(i) => crate::meter::gpu_for_ordinal(&smp.gpus, i)
                            .and_then(|g| g.process_bytes),
                        None => smp.rss_bytes,
                    }?;
                    Some([smp.t, mib(bytes)])
                })
                .collect();
        let markers = h.markers.clone();
        drop(h);
        Plot::new("memory-history")
            .height(150.0)
            .allow_scroll(false)
            .allow_zoom(false)
            .show(ui, |plot| {
                plot.line(Line::new(
                    if cuda.is_some() {
                        "GPU MiB (this process)"
                    } else {
                        "RAM MiB (this process)"
                    },
                    PlotPoints::from(points),
                ));
                for m in markers {
                    let color = match m.kind {
                        MarkerKind::Load => egui::Color32::from_rgb(70, 130, 220),
                        MarkerKind::Generate => egui::Color32::from_rgb(80, 190, 140),
                        MarkerKind::Release => egui::Color32::from_rgb(230, 160, 60),
                        MarkerKind::Error => egui::Color32::from_rgb(220, 60, 60),
                    };
                    plot.vline(VLine::new(m.label, m.t).color(color));
                }
            });
    }

    ui.horizontal(|ui| {
        let release = ui.add_enabled(
            !matches!(view.state, EngineState::Unloaded),
            egui::Button::new("Release"),
        );
        if release
            .on_hover_text("Free the model and give all GPU memory back")
            .clicked()
        {
            actions.push(MeterAction::Release);
        }
        let mut pinned = view.pinned;
        if ui
            .checkbox(&mut pinned, "Pin")
            .on_hover_text("Never unload while pinned")
            .changed()
        {
            actions.push(MeterAction::SetPinned(pinned));
        }
    });
    ui.horizontal(|ui| {
        let current = TIMEOUTS
            .iter()
            .find(|(t, _)| *t == view.idle_timeout_s)
            .map_or("custom", |(_, l)| l);
        egui::ComboBox::from_label("Unload when idle")
            .selected_text(current)
            .show_ui(ui, |ui| {
                let mut chosen = view.idle_timeout_s;
                for (t, label) in TIMEOUTS {
                    if ui.selectable_value(&mut chosen, t, label).changed() {
                        actions.push(MeterAction::SetIdleTimeout(t));
                    }
                }
            });
    });
    if let Some((left, at)) = view.idle_left {
        let left = left.saturating_sub(at.elapsed());
        ui.label(format!(
            "unloads in {}:{:02}",
            left.as_secs() / 60,
            left.as_secs() % 60
        ));
    }
    if let Some(l) = view.last_load {
        ui.label(format!("reload ~{:.1} s", l.load_ms / 1000.0));
        if let (Some(after), Some(before)) = (l.gpu_after_bytes, l.gpu_before_bytes) {
            ui.label(format!(
                "load: estimate {:.0} MiB weights, measured {:.0} MiB in all",
                mib(l.weights_bytes as u64),
                mib(after.saturating_sub(before))
            ));
        }
    }
    if let Some(r) = view.last_release {
        ui.label(format!("last release: {}", release_summary(r)));
        if let Some(held) = &r.still_held {
            ui.colored_label(ui.visuals().warn_fg_color, held);
        }
    }
    if ui
        .button("Export timeline")
        .on_hover_text("Write the memory history as CSV for a bug report")
        .clicked()
    {
        actions.push(MeterAction::ExportTimeline);
    }
    actions
}

/// A release report in one line: what came back and what is still held.
pub fn release_summary(r: &ReleaseReport) -> String {
    match (r.gpu_returned_bytes(), r.gpu_after_bytes) {
        (Some(back), Some(after)) => format!(
            "returned {} MiB in {:.0} ms; process now holds {} MiB",
            crate::mib(back),
            r.took_ms,
            crate::mib(after)
        ),
        _ => match (r.rss_before_bytes, r.rss_after_bytes) {
            (Some(b), Some(a)) => format!(
                "returned {} MiB of RAM in {:.0} ms; process now {} MiB",
                crate::mib(b.saturating_sub(a)),
                r.took_ms,
                crate::mib(a)
            ),
            _ => format!("released in {:.0} ms", r.took_ms),
        },
    }
}

fn stacked_bar(
    ui: &mut egui::Ui,
    size: egui::Vec2,
    total: u64,
    segments: &[(&str, u64, egui::Color32)],
) {
    let (rect, _) = ui.allocate_exact_size(size, egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, ui.visuals().extreme_bg_color);
    let mut x = rect.left();
    for (_, bytes, color) in segments {
        let w = rect.width() * (*bytes as f32 / total.max(1) as f32);
        let seg = egui::Rect::from_min_max(
            egui::pos2(x, rect.top()),
            egui::pos2((x + w).min(rect.right()), rect.bottom()),
        );
        painter.rect_filled(seg, 0.0, *color);
        x += w;
    }
}
