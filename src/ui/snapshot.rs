//! Pictures of the real window without a display: the app's own `show` runs in
//! a headless `egui::Context`, its triangles are rasterized on the CPU, and the
//! frames are written as PNG. This is how the meter is photographed on GPU
//! machines that have no X server or OpenGL (`versifier snapshots`).
//!
//! Owns: a small software rasterizer for egui meshes and the scripted
//! before-load / generating / after-release sequence. It drives the app only
//! through its public methods, like a user would; it never touches the engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::epaint::{ClippedPrimitive, Primitive, TextureId, Vertex};
use egui::{Color32, ColorImage, TexturesDelta};

use super::{install_fonts, VersifierApp};
use crate::engine::{DeviceChoice, EngineState, Precision};

/// Problems taking snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot start the app: {0}")]
    App(String),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{0}")]
    Script(String),
}

/// Rasterizes egui's clipped meshes into an RGBA image (premultiplied alpha,
/// as egui produces it), keeping the textures egui uploads (the font atlas).
#[derive(Default)]
pub struct SoftwareRenderer {
    textures: HashMap<TextureId, ColorImage>,
}

impl SoftwareRenderer {
    /// Applies texture uploads and partial updates, then frees.
    pub fn update_textures(&mut self, delta: &TexturesDelta) {
        for (id, deltas) in &delta.set {
            for image_delta in deltas {
                let egui::ImageData::Color(src) = &image_delta.image;
                match image_delta.pos {
                    None => {
                        self.textures.insert(*id, ColorImage::clone(src));
                    }
                    Some([x0, y0]) => {
                        let Some(dst) = self.textures.get_mut(id) else {
                            continue;
                        };
                        for y in 0..src.size[1] {
                            for x in 0..src.size[0] {
                                let (dx, dy) = (x0 + x, y0 + y);
                                if dx < dst.size[0] && dy < dst.size[1] {
                                    dst.pixels[dy * dst.size[0] + dx] =
                                        src.pixels[y * src.size[0] + x];
                                }
                            }
                        }
                    }
                }
            }
        }
        for id in &delta.free {
            self.textures.remove(id);
        }
    }

    /// Draws `primitives` onto a `size` canvas filled with `background`.
    pub fn render(
        &self,
        primitives: &[ClippedPrimitive],
        size: [usize; 2],
        pixels_per_point: f32,
        background: Color32,
    ) -> ColorImage {
        let mut canvas = ColorImage::filled(size, background);
        for prim in primitives {
            let Primitive::Mesh(mesh) = &prim.primitive else {
                continue; // paint callbacks need a GPU; the app uses none
            };
            let clip = prim.clip_rect * pixels_per_point;
            let clip = [
                clip.min.x.max(0.0).floor() as i64,
                clip.min.y.max(0.0).floor() as i64,
                (clip.max.x.ceil() as i64).min(size[0] as i64),
                (clip.max.y.ceil() as i64).min(size[1] as i64),
            ];
            let texture = self.textures.get(&mesh.texture_id);
            for tri in mesh.indices.chunks_exact(3) {
                let v = |i: u32| mesh.vertices.get(i as usize).copied();
                if let (Some(a), Some(b), Some(c)) = (v(tri[0]), v(tri[1]), v(tri[2])) {
                    fill_triangle(&mut canvas, [a, b, c], pixels_per_point, clip, texture);
                }
            }
        }
        canvas
    }
}

/// Fills one triangle: barycentric coverage at pixel centres, interpolated
/// colour and texture coordinates, nearest texel, "over" blending.
fn fill_triangle(
    canvas: &mut ColorImage,
    tri: [Vertex; 3],
    ppp: f32,
    clip: [i64; 4],
    texture: Option<&ColorImage>,
) {
    let p = tri.map(|v| (v.pos.x * ppp, v.pos.y * ppp));
    let area = (p[1].0 - p[0].0) * (p[2].1 - p[0].1) - (p[2].0 - p[0].0) * (p[1].1 - p[0].1);
    if area.abs() < 1e-6 {
        return;
    }
    let min_x = (p.iter().map(|q| q.0).fold(f32::MAX, f32::min).floor() as i64).max(clip[0]);
    let max_x = (p.iter().map(|q| q.0).fold(f32::MIN, f32::max).ceil() as i64).min(clip[2]);
    let min_y = (p.iter().map(|q| q.1).fold(f32::MAX, f32::min).floor() as i64).max(clip[1]);
    let max_y = (p.iter().map(|q| q.1).fold(f32::MIN, f32::max).ceil() as i64).min(clip[3]);
    let width = canvas.size[0];
    for y in min_y..max_y {
        for x in min_x..max_x {
            // Sample a hair off the pixel centre, so a centre lying exactly on
            // an edge two triangles share (a rectangle's diagonal) is covered
            // by one of them, not blended twice.
            let (px, py) = (x as f32 + 0.500_13, y as f32 + 0.500_31);
            let w0 = ((p[1].0 - px) * (p[2].1 - py) - (p[2].0 - px) * (p[1].1 - py)) / area;
            let w1 = ((p[2].0 - px) * (p[0].1 - py) - (p[0].0 - px) * (p[2].1 - py)) / area;
            let w2 = 1.0 - w0 - w1;
            if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                continue;
            }
            let w = [w0, w1, w2];
            let mix = |f: &dyn Fn(&Vertex) -> f32| -> f32 {
                w[0] * f(&tri[0]) + w[1] * f(&tri[1]) + w[2] * f(&tri[2])
            };
            let mut rgba = [
                mix(&|v| v.color.r() as f32),
                mix(&|v| v.color.g() as f32),
                mix(&|v| v.color.b() as f32),
                mix(&|v| v.color.a() as f32),
            ];
            if let Some(tex) = texture {
                let u = mix(&|v| v.uv.x);
                let v = mix(&|v| v.uv.y);
                let tx = ((u * tex.size[0] as f32) as usize).min(tex.size[0].saturating_sub(1));
                let ty = ((v * tex.size[1] as f32) as usize).min(tex.size[1].saturating_sub(1));
                if let Some(t) = tex.pixels.get(ty * tex.size[0] + tx) {
                    let t = [t.r(), t.g(), t.b(), t.a()];
                    for (c, tc) in rgba.iter_mut().zip(t) {
                        *c *= tc as f32 / 255.0;
                    }
                }
            }
            let dst = &mut canvas.pixels[y as usize * width + x as usize];
            let keep = 1.0 - rgba[3] / 255.0;
            let blend = |src: f32, d: u8| (src + d as f32 * keep).round().clamp(0.0, 255.0) as u8;
            *dst = Color32::from_rgba_premultiplied(
                blend(rgba[0], dst.r()),
                blend(rgba[1], dst.g()),
                blend(rgba[2], dst.b()),
                blend(rgba[3], dst.a()),
            );
        }
    }
}

/// Writes an RGBA image as PNG.
pub fn save_png(image: &ColorImage, path: &Path) -> Result<(), SnapshotError> {
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    image::save_buffer(
        path,
        &bytes,
        image.size[0] as u32,
        image.size[1] as u32,
        image::ExtendedColorType::Rgba8,
    )
    .map_err(|e| SnapshotError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A headless window: the real app in an egui context of a fixed size.
pub struct HeadlessWindow {
    pub app: VersifierApp,
    ctx: egui::Context,
    renderer: SoftwareRenderer,
    size: [usize; 2],
    last: Option<(Vec<ClippedPrimitive>, f32)>,
}

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
        let ctx = egui::Context::default();
        install_fonts(&ctx);
        let store = crate::store::Store::in_dir(data_dir);
        let app = VersifierApp::with_memory_budget(&ctx, Some(store), memory_budget)
            .map_err(|e| SnapshotError::App(e.to_string()))?;
        Ok(Self {
            app,
            ctx,
            renderer: SoftwareRenderer::default(),
            size,
            last: None,
        })
    }

    /// Handles pending engine events and lays out one frame.
    pub fn frame(&mut self) {
        self.app.process_events();
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(self.size[0] as f32, self.size[1] as f32),
            )),
            ..Default::default()
        };
        let app = &mut self.app;
        let out = self.ctx.run_ui(input, |ui| app.show(ui));
        self.renderer.update_textures(&out.textures_delta);
        let prims = self.ctx.tessellate(out.shapes, out.pixels_per_point);
        self.last = Some((prims, out.pixels_per_point));
    }

    /// Runs frames for `duration` (engine events and meter samples arrive meanwhile).
    pub fn run_for(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.frame();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs frames until `done` holds or `limit` passes; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&VersifierApp) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.frame();
            if done(&self.app) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// The last frame as an image.
    pub fn picture(&mut self) -> ColorImage {
        if self.last.is_none() {
            self.frame();
        }
        let background = self.ctx.global_style().visuals.panel_fill;
        match &self.last {
            Some((prims, ppp)) => self.renderer.render(prims, self.size, *ppp, background),
            None => ColorImage::filled(self.size, background),
        }
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
    w.app.settings.device = plan.device;
    w.app.settings.precision = plan.precision;
    w.app.settings.precision_auto = false;
    w.app.settings.variations = plan.variations;
    w.app.settings.max_tokens = plan.max_tokens;
    w.app.settings.preload_on_focus = false;
    w.app.prompt = plan.prompt.clone();
    let mut taken = Vec::new();
    let mut shoot = |w: &mut HeadlessWindow, name: &str| -> Result<(), SnapshotError> {
        let path = plan.out_dir.join(name);
        save_png(&w.picture(), &path)?;
        let line = format!(
            "{name}: state {:?}, {} card(s), {} notice(s), {}",
            w.app.state,
            w.app.cards.len(),
            w.app.notices.len(),
            memory_line(&w.app)
        );
        taken.push((path, line));
        Ok(())
    };
    // The meter samples at 4 Hz: give it a few samples of the baseline.
    w.run_for(Duration::from_millis(1500));
    shoot(&mut w, "1-before-load.png")?;
    w.app.generate();
    // A refused load or an error ends the wait at once (and the sequence: the
    // picture shows the refusal and its options).
    let stopped = |a: &VersifierApp| a.error.is_some() || a.fit.is_some();
    let generating = w.run_until(Duration::from_secs(120), |a| {
        stopped(a)
            || (matches!(a.state, EngineState::Generating)
                && a.cards.iter().any(|c| !c.text.is_empty()))
    });
    if stopped(&w.app) {
        w.run_for(Duration::from_millis(500));
        shoot(&mut w, "2-refused.png")?;
        let why = error_text(&w.app);
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
    }) || stopped(&w.app)
    {
        let why = error_text(&w.app);
        return Err(SnapshotError::Script(format!(
            "the generation did not finish (state {:?}) {why}",
            w.app.state
        )));
    }
    w.run_for(Duration::from_millis(1500));
    shoot(&mut w, "3-ready.png")?;
    w.app.release();
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

#[cfg(test)]
mod tests {
    use super::*;
    use egui::epaint::{Mesh, Rect};
    use egui::{pos2, vec2};

    #[test]
    fn a_filled_rectangle_covers_exactly_its_pixels_and_blends_over_the_background() {
        let mut mesh = Mesh::default();
        mesh.add_colored_rect(
            Rect::from_min_size(pos2(10.0, 10.0), vec2(10.0, 5.0)),
            Color32::from_rgb(200, 20, 20),
        );
        // Half-transparent white (premultiplied) over the left half of it.
        mesh.add_colored_rect(
            Rect::from_min_size(pos2(10.0, 10.0), vec2(5.0, 5.0)),
            Color32::from_rgba_premultiplied(64, 64, 64, 64),
        );
        let prims = vec![ClippedPrimitive {
            clip_rect: Rect::from_min_size(pos2(0.0, 0.0), vec2(32.0, 32.0)),
            primitive: Primitive::Mesh(mesh),
        }];
        let bg = Color32::from_rgb(0, 0, 40);
        let img = SoftwareRenderer::default().render(&prims, [32, 32], 1.0, bg);
        let at = |x: usize, y: usize| img.pixels[y * 32 + x];
        assert_eq!(at(17, 12), Color32::from_rgb(200, 20, 20));
        assert_eq!(
            at(19, 14),
            Color32::from_rgb(200, 20, 20),
            "last pixel inside"
        );
        assert_eq!(at(20, 12), bg, "first pixel right of the rect");
        assert_eq!(at(12, 15), bg, "first pixel below the rect");
        assert_eq!(at(9, 12), bg);
        // 64 + 200 * (1 - 64/255) = 214
        assert_eq!(at(12, 12).r(), 214);
        assert_eq!(
            at(12, 12).g(),
            64 + (20.0 * (1.0 - 64.0 / 255.0f32)).round() as u8
        );
    }

    #[test]
    fn the_clip_rect_limits_drawing() {
        let mut mesh = Mesh::default();
        mesh.add_colored_rect(
            Rect::from_min_size(pos2(0.0, 0.0), vec2(16.0, 16.0)),
            Color32::WHITE,
        );
        let prims = vec![ClippedPrimitive {
            clip_rect: Rect::from_min_size(pos2(4.0, 4.0), vec2(4.0, 4.0)),
            primitive: Primitive::Mesh(mesh),
        }];
        let img = SoftwareRenderer::default().render(&prims, [16, 16], 1.0, Color32::BLACK);
        let white = img.pixels.iter().filter(|c| **c == Color32::WHITE).count();
        assert_eq!(white, 16);
        assert_eq!(img.pixels[5 * 16 + 5], Color32::WHITE);
        assert_eq!(img.pixels[3 * 16 + 3], Color32::BLACK);
    }
}
