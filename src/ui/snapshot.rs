//! Pictures of the real window without a display: the app's own `show` runs in
//! egui_kittest's headless [`Harness`] and each frame is rendered by egui's own
//! wgpu renderer, preferring a CPU adapter (Mesa's llvmpipe through EGL, or
//! lavapipe), so the pictures are what the window draws, text included. This
//! is how the meter is photographed on GPU machines that have no X server
//! (`versifier snapshots`).
//!
//! Owns: the headless window (harness + renderer) and the scripted
//! before-load / generating / after-release sequence. It drives the app only
//! through its public methods, like a user would; it never touches the engine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::wgpu::WgpuTestRenderer;
use egui_kittest::Harness;
use image::RgbaImage;

use super::{install_fonts, VersifierApp};
use crate::engine::{DeviceChoice, EngineState, Precision};

/// Problems taking snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot start the app: {0}")]
    App(String),
    #[error(
        "no graphics adapter to draw the window with: {0}. Install Mesa's software \
         renderers (Debian: libegl-mesa0 and libgl1-mesa-dri, or mesa-vulkan-drivers)"
    )]
    NoAdapter(String),
    #[error("cannot draw the window: {0}")]
    Render(String),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{0}")]
    Script(String),
}

/// egui's wgpu renderer on the adapter egui_kittest prefers for pictures (a
/// CPU one when there is one), made here so that a machine without any
/// adapter gets an error instead of egui_kittest's panic.
pub fn headless_renderer() -> Result<(WgpuTestRenderer, String), SnapshotError> {
    let setup = egui_kittest::wgpu::default_wgpu_setup();
    let instance = pollster::block_on(setup.new_instance());
    let config = egui_wgpu::WgpuConfiguration {
        wgpu_setup: setup,
        ..Default::default()
    };
    let state = pollster::block_on(egui_wgpu::RenderState::create(
        &config,
        &instance,
        None,
        egui_wgpu::RendererOptions::PREDICTABLE,
    ))
    .map_err(|e| SnapshotError::NoAdapter(e.to_string()))?;
    let info = state.adapter.get_info();
    let adapter = format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
    Ok((WgpuTestRenderer::from_render_state(state), adapter))
}

/// Writes an image as PNG.
pub fn save_png(image: &RgbaImage, path: &Path) -> Result<(), SnapshotError> {
    image.save(path).map_err(|e| SnapshotError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A headless window: the real app in egui_kittest's harness, of a fixed size.
pub struct HeadlessWindow {
    harness: Harness<'static, VersifierApp>,
    adapter: String,
    size: [u32; 2],
}

/// The margin egui_kittest's harness puts around a `Ui` app (points); the
/// harness is made this much larger on each side and the picture cropped, so
/// the app gets exactly the window's size, as in eframe.
const HARNESS_MARGIN: u32 = 8;

impl HeadlessWindow {
    /// Starts the app with its settings and history in `data_dir` (a fresh
    /// folder gives first-launch defaults).
    pub fn new(data_dir: &Path, size: [usize; 2]) -> Result<Self, SnapshotError> {
        Self::with_memory_budget(data_dir, size, None)
    }

    /// As [`Self::new`], with the engine's memory budget (bytes) set.
    pub fn with_memory_budget(
        data_dir: &Path,
        size: [usize; 2],
        memory_budget: Option<u64>,
    ) -> Result<Self, SnapshotError> {
        let (renderer, adapter) = headless_renderer()?;
        let store = crate::store::Store::in_dir(data_dir);
        let app =
            VersifierApp::with_memory_budget(&egui::Context::default(), Some(store), memory_budget)
                .map_err(|e| SnapshotError::App(e.to_string()))?;
        let margin = 2.0 * HARNESS_MARGIN as f32;
        let harness = Harness::builder()
            .with_size(egui::vec2(size[0] as f32 + margin, size[1] as f32 + margin))
            .with_context_setup(install_fonts)
            .renderer(renderer)
            .build_ui_state(|ui, app: &mut VersifierApp| app.show(ui), app);
        let size = size.map(|s| u32::try_from(s).unwrap_or(u32::MAX));
        Ok(Self {
            harness,
            adapter,
            size,
        })
    }

    /// The app in the window.
    pub fn app(&self) -> &VersifierApp {
        self.harness.state()
    }

    /// The app in the window, to drive it.
    pub fn app_mut(&mut self) -> &mut VersifierApp {
        self.harness.state_mut()
    }

    /// The adapter that draws the pictures (name, backend, kind).
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// Handles pending engine events and lays out one frame.
    pub fn frame(&mut self) {
        self.harness.step();
    }

    /// Runs frames for `duration` of real time, so that engine events and the
    /// meter's 4 Hz samples arrive meanwhile (a frame every 50 ms, like an
    /// idle window repainting for its meter).
    pub fn run_for(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.frame();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs frames until `done` holds or `limit` passes; returns whether it held.
    /// Between frames it waits for the engine's next event (at most 5 ms).
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&VersifierApp) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.frame();
            if done(self.app()) {
                return true;
            }
            self.app_mut()
                .process_one_event_blocking(Duration::from_millis(5));
        }
        false
    }

    /// The last frame, drawn by the wgpu renderer.
    pub fn picture(&mut self) -> Result<RgbaImage, SnapshotError> {
        let full = self.harness.render().map_err(SnapshotError::Render)?;
        let [w, h] = self.size;
        Ok(image::imageops::crop_imm(&full, HARNESS_MARGIN, HARNESS_MARGIN, w, h).to_image())
    }
}

/// What `versifier snapshots` does.
pub struct SnapshotPlan {
    pub out_dir: PathBuf,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub prompt: String,
    pub variations: usize,
    pub max_tokens: usize,
    pub size: [usize; 2],
    /// Treat the device as having at most this many bytes free.
    pub memory_budget: Option<u64>,
}

/// The app's error message, or nothing.
fn error_text(app: &VersifierApp) -> String {
    app.error.as_ref().map(|e| e.1.clone()).unwrap_or_default()
}

/// What the meter shows for the selected device, in MiB.
fn memory_line(app: &VersifierApp) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let Some(m) = app.latest_memory() else {
        return "no meter sample".into();
    };
    match app.settings.device {
        DeviceChoice::Cuda(i) => match crate::meter::gpu_for_ordinal(&m.gpus, i) {
            Some(g) => format!(
                "cuda:{i}: this process {} MiB, used {:.0} of {:.0} MiB",
                g.process_bytes
                    .map_or("?".into(), |b| format!("{:.0}", b as f64 / MIB)),
                g.used_bytes as f64 / MIB,
                g.total_bytes as f64 / MIB
            ),
            None => format!("cuda:{i}: not seen by the meter"),
        },
        DeviceChoice::Cpu => m.rss_bytes.map_or("RAM: ?".into(), |b| {
            format!("RAM: this process {:.0} MiB", b as f64 / MIB)
        }),
    }
}

/// Takes the meter sequence: `1-before-load.png`, `2-generating.png`,
/// `3-ready.png`, `4-after-release.png`. Returns the files and one line per
/// picture saying what the app showed (state, poems, notices).
pub fn take_sequence(plan: &SnapshotPlan) -> Result<Vec<(PathBuf, String)>, SnapshotError> {
    std::fs::create_dir_all(&plan.out_dir).map_err(|e| SnapshotError::Write {
        path: plan.out_dir.clone(),
        message: e.to_string(),
    })?;
    let data = plan.out_dir.join("app-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut w = HeadlessWindow::with_memory_budget(&data, plan.size, plan.memory_budget)?;
    let app = w.app_mut();
    app.settings.device = plan.device;
    app.settings.precision = plan.precision;
    app.settings.precision_auto = false;
    app.settings.variations = plan.variations;
    app.settings.max_tokens = plan.max_tokens;
    app.settings.preload_on_focus = false;
    app.prompt = plan.prompt.clone();
    let mut taken = Vec::new();
    let mut shoot = |w: &mut HeadlessWindow, name: &str| -> Result<(), SnapshotError> {
        let path = plan.out_dir.join(name);
        save_png(&w.picture()?, &path)?;
        let app = w.app();
        let line = format!(
            "{name}: state {:?}, {} card(s), {} notice(s), {}",
            app.state,
            app.cards.len(),
            app.notices.len(),
            memory_line(app)
        );
        let line = if taken.is_empty() {
            format!("{line} (drawn by {})", w.adapter())
        } else {
            line
        };
        taken.push((path, line));
        Ok(())
    };
    // The meter samples at 4 Hz: give it a few samples of the baseline.
    w.run_for(Duration::from_millis(1500));
    shoot(&mut w, "1-before-load.png")?;
    w.app_mut().generate();
    // A refused load or an error ends the wait at once (and the sequence: the
    // picture shows the refusal and its options).
    let stopped = |a: &VersifierApp| a.error.is_some() || a.fit.is_some();
    let generating = w.run_until(Duration::from_secs(120), |a| {
        stopped(a)
            || (matches!(a.state, EngineState::Generating)
                && a.cards.iter().any(|c| !c.text.is_empty()))
    });
    if stopped(w.app()) {
        w.run_for(Duration::from_millis(500));
        shoot(&mut w, "2-refused.png")?;
        let why = error_text(w.app());
        if let Some((_, line)) = taken.last_mut() {
            line.push_str(&format!(
                "; the request did not run, so the sequence stops here: {why}"
            ));
        }
        return Ok(taken);
    }
    if generating {
        shoot(&mut w, "2-generating.png")?;
    }
    if !w.run_until(Duration::from_secs(300), |a| {
        stopped(a) || (matches!(a.state, EngineState::Ready) && !a.cards.is_empty())
    }) || stopped(w.app())
    {
        let why = error_text(w.app());
        return Err(SnapshotError::Script(format!(
            "the generation did not finish (state {:?}) {why}",
            w.app().state
        )));
    }
    w.run_for(Duration::from_millis(1500));
    shoot(&mut w, "3-ready.png")?;
    w.app_mut().release();
    if !w.run_until(Duration::from_secs(60), |a| {
        matches!(a.state, EngineState::Unloaded)
    }) {
        return Err(SnapshotError::Script(
            "Release did not reach Unloaded".into(),
        ));
    }
    w.run_for(Duration::from_millis(2000));
    shoot(&mut w, "4-after-release.png")?;
    if !generating {
        taken.push((
            plan.out_dir.join("2-generating.png"),
            "2-generating.png: not taken, the generation finished between two frames (raise --max-tokens)".into(),
        ));
    }
    Ok(taken)
}
