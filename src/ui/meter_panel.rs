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
    /// When the last release report arrived (Unix ms).
    pub release_at_unix_ms: u64,
    /// The KV cache of the last finished request, bytes.
    pub kv_cache_bytes: usize,
    /// What the running request's KV cache takes (variations x the model's
    /// cache per variation), while generating.
    pub kv_estimate_bytes: Option<u64>,
    /// A narrow window: figures and buttons only, no plot or legends.
    pub compact: bool,
    /// Yield mode's threshold (MiB to keep free), when on.
    pub yield_below_mib: Option<u64>,
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
    /// Yield mode turned on (MiB to keep free) or off.
    SetYield(Option<u64>),
}

/// Draws the panel; returns what the user did this frame.
/// The engine's state in a word or two.
pub fn state_text(state: EngineState) -> String {
    match state {
        EngineState::Unloaded => "Unloaded".to_string(),
        EngineState::Loading { progress } => format!("Loading {:.0}%", progress * 100.0),
        EngineState::Ready => "Ready".into(),
        EngineState::Generating => "Generating".into(),
        EngineState::Releasing => "Releasing".into(),
    }
}

#[allow(clippy::too_many_lines)] // the panel drawn top to bottom as it appears; to be cut into one function per row (issue #42)
pub fn show(view: &MeterView<'_>, ui: &mut egui::Ui) -> Vec<MeterAction> {
    let mut actions = Vec::new();
    ui.heading("Memory");
    ui.label(egui::RichText::new(state_text(*view.state)).strong());

    let (latest, unavailable, peak) = match view.sampler {
        Some(s) => {
            let h = s.history();
            // This process's peak over the window: the bar's scale.
            let peak = h
                .samples
                .iter()
                .filter_map(|smp| process_bytes(smp, view.device))
                .max()
                .unwrap_or(0);
            (h.latest().cloned(), h.gpu_unavailable.clone(), peak)
        }
        None => (None, Some("the meter thread could not start".into()), 0),
    };
    let weights = view.last_load.map_or(0, |l| l.weights_bytes as u64);
    let loaded = !matches!(view.state, EngineState::Unloaded);
    let kv_now = if matches!(view.state, EngineState::Generating) {
        view.kv_estimate_bytes.unwrap_or(view.kv_cache_bytes as u64)
    } else {
        view.kv_cache_bytes as u64
    };
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
            let kv = kv_now.min(process.saturating_sub(w));
            let runtime = process.saturating_sub(w + kv);
            let segments = app_segments(w, kv, runtime);
            ui.label(format!("This app on {}: {}", g.name, figure(process)));
            // Scaled to this app's peak (or what the model needs), so its share
            // is visible on any GPU; the whole GPU is the thin bar under it.
            let scale = peak.max(process).max(weights + kv).max(1);
            stacked_bar(ui, desired, scale, &segments);
            // Narrow too: the key wraps rather than going.
            legend(ui, &segments);
            let other = g.used_bytes.saturating_sub(process);
            stacked_bar(
                ui,
                egui::vec2(ui.available_width(), 6.0),
                g.total_bytes,
                &[
                    ("other processes", other, OTHER_COLOR),
                    ("this app", process, WEIGHTS_COLOR),
                ],
            );
            ui.label(
                egui::RichText::new(format!(
                    "whole GPU: {} used of {}, {} free",
                    figure(g.used_bytes),
                    figure(g.total_bytes),
                    figure(g.free_bytes)
                ))
                .small(),
            );
            if g.process_bytes.is_none() {
                ui.label("this app's GPU memory: not reported by the driver");
            }
        }
        (None, Some(l)) => {
            let rss = shown_rss(l, view.last_release, view.release_at_unix_ms);
            let w = if loaded { weights.min(rss) } else { 0 };
            let kv = if loaded {
                kv_now.min(rss.saturating_sub(w))
            } else {
                0
            };
            let segments = app_segments(w, kv, rss.saturating_sub(w + kv));
            ui.label(format!("This app in RAM: {}", figure(rss)));
            stacked_bar(ui, desired, peak.max(rss).max(1), &segments);
            legend(ui, &segments);
            if let DeviceChoice::Cuda(i) = view.device {
                // A GPU was chosen but cannot be read: say so plainly, details folded.
                ui.colored_label(
                    ui.visuals().warn_fg_color,
                    format!("cuda:{i} is not visible to the meter; showing this app's RAM."),
                );
                if let Some(why) = &unavailable {
                    egui::CollapsingHeader::new("details")
                        .id_salt("meter-details")
                        .show(ui, |ui| ui.label(egui::RichText::new(why).small()));
                }
            }
        }
        (None, None) => {
            ui.label("waiting for the first reading…");
        }
    }

    if !view.compact {
        history_plot(ui, view);
    }

    ui.horizontal(|ui| {
        let release = ui.add_enabled(
            !matches!(view.state, EngineState::Unloaded),
            egui::Button::new("Release"),
        );
        let hover = match view.device {
            DeviceChoice::Cuda(_) => "Free the model and give its GPU memory back",
            DeviceChoice::Cpu => "Free the model and give its memory back",
        };
        if release.on_hover_text(hover).clicked() {
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
    if let DeviceChoice::Cuda(_) = view.device {
        ui.horizontal(|ui| {
            let mut on = view.yield_below_mib.is_some();
            let mut mib_free = view.yield_below_mib.unwrap_or(2048);
            let toggled = ui
                .checkbox(&mut on, "Yield")
                .on_hover_text(
                    "While idle, give the GPU back when other programs leave less than this free",
                )
                .changed();
            let edited = ui
                .add_enabled(
                    on,
                    egui::DragValue::new(&mut mib_free)
                        .range(256..=262_144)
                        .suffix(" MiB free"),
                )
                .changed();
            if toggled || edited {
                actions.push(MeterAction::SetYield(on.then_some(mib_free)));
            }
        });
    }
    if let Some((left, at)) = view.idle_left {
        let left = left.saturating_sub(at.elapsed());
        ui.label(format!(
            "unloads in {}:{:02}",
            left.as_secs() / 60,
            left.as_secs() % 60
        ));
    }
    if let Some(l) = view.last_load {
        ui.label(format!("reload ≈ {}", duration_text(l.load_ms)));
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

const WEIGHTS_COLOR: egui::Color32 = egui::Color32::from_rgb(70, 130, 220);
const KV_COLOR: egui::Color32 = egui::Color32::from_rgb(80, 190, 140);
const RUNTIME_COLOR: egui::Color32 = egui::Color32::from_rgb(230, 160, 60);
const OTHER_COLOR: egui::Color32 = egui::Color32::from_rgb(140, 140, 140);

/// This app's memory in three parts.
fn app_segments(weights: u64, kv: u64, rest: u64) -> [(&'static str, u64, egui::Color32); 3] {
    [
        ("the model", weights, WEIGHTS_COLOR),
        ("poems being written", kv, KV_COLOR),
        ("the app itself", rest, RUNTIME_COLOR),
    ]
}

/// A colour key under a bar: one swatch and figure per part.
fn legend(ui: &mut egui::Ui, segments: &[(&str, u64, egui::Color32)]) {
    ui.horizontal_wrapped(|ui| {
        for (name, bytes, color) in segments {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().rect_filled(rect, 2.0, *color);
            ui.label(egui::RichText::new(format!("{name} {}", figure(*bytes))).small())
                .on_hover_text(match *name {
                    "the model" => "The model's weights",
                    "poems being written" => {
                        "The KV cache: what the model remembers of the poems it is writing"
                    }
                    _ => "The app, its window and the runtime's buffers",
                });
        }
    });
}

/// A memory figure in MiB (GiB above 10 GiB).
pub fn figure(bytes: u64) -> String {
    let m = mib(bytes);
    if m >= 10240.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.0} MiB")
    }
}

/// Milliseconds below a second, else seconds.
pub fn duration_text(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// This process's memory in a snapshot: on the GPU for a CUDA device, else RAM.
fn process_bytes(s: &crate::meter::MemorySnapshot, device: DeviceChoice) -> Option<u64> {
    match device {
        DeviceChoice::Cuda(i) => {
            crate::meter::gpu_for_ordinal(&s.gpus, i).and_then(|g| g.process_bytes)
        }
        DeviceChoice::Cpu => s.rss_bytes,
    }
}

/// The RAM figure to show: the release report's own measurement when it is
/// newer than the last sample (so the two never disagree just after Release).
fn shown_rss(
    latest: &crate::meter::MemorySnapshot,
    release: Option<&ReleaseReport>,
    release_at_unix_ms: u64,
) -> u64 {
    let sampled = latest.rss_bytes.unwrap_or(0);
    match release.and_then(|r| r.rss_after_bytes) {
        Some(after) if release_at_unix_ms >= latest.unix_ms => after,
        _ => sampled,
    }
}

/// The history plot: this process's memory in MiB over the last minutes, with
/// load / generate / release / error markers and their legend.
fn history_plot(ui: &mut egui::Ui, view: &MeterView<'_>) {
    let Some(s) = view.sampler else { return };
    let h = s.history();
    // Time as seconds ago: the newest sample at 0, on the right.
    let now = h.samples.back().map_or(0.0, |smp| smp.t);
    let points: Vec<[f64; 2]> = h
        .samples
        .iter()
        .filter_map(|smp| Some([smp.t - now, mib(process_bytes(smp, view.device)?)]))
        .collect();
    let markers = h.markers.clone();
    drop(h);
    let what = match view.device {
        DeviceChoice::Cuda(_) => "this app on the GPU",
        DeviceChoice::Cpu => "this app in RAM",
    };
    Plot::new("memory-history")
        .height(150.0)
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .y_axis_label("MiB")
        .x_axis_label("seconds ago")
        .x_axis_formatter(|mark, _| format!("{:.0}", (-mark.value).max(0.0)))
        // At least the last half minute, so the axis never shows a lone 0.
        .include_x(-30.0)
        .include_x(0.0)
        .show(ui, |plot| {
            plot.line(Line::new(what, PlotPoints::from(points)).color(PLOT_LINE_COLOR));
            for m in &markers {
                let (name, color) = marker_style(m.kind);
                plot.vline(VLine::new(name, m.t - now).color(color));
            }
        });
    // The legend under the plot, where it covers no samples.
    ui.horizontal_wrapped(|ui| {
        let item = |ui: &mut egui::Ui, name: &str, color: egui::Color32| {
            ui.label(
                egui::RichText::new(format!("— {name}"))
                    .small()
                    .color(color),
            );
        };
        item(ui, what, PLOT_LINE_COLOR);
        for kind in [
            MarkerKind::Load,
            MarkerKind::Generate,
            MarkerKind::Release,
            MarkerKind::Error,
        ] {
            if markers.iter().any(|m| m.kind == kind) {
                let (name, color) = marker_style(kind);
                item(ui, name, color);
            }
        }
    });
}

/// The plot's line of this app's memory.
const PLOT_LINE_COLOR: egui::Color32 = egui::Color32::from_rgb(200, 80, 80);

fn marker_style(kind: MarkerKind) -> (&'static str, egui::Color32) {
    match kind {
        MarkerKind::Load => ("load", WEIGHTS_COLOR),
        MarkerKind::Generate => ("generate", KV_COLOR),
        MarkerKind::Release => ("release", RUNTIME_COLOR),
        MarkerKind::Error => ("error", egui::Color32::from_rgb(220, 60, 60)),
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
