//! A poem drawn with its tone marks: each character with 平 / 仄 / 中 (either)
//! / ？ (unknown) beside it, the rhyme characters highlighted, the broken
//! positions underlined in the error colour, and the checker's verdict under
//! the poem. Horizontal (a line per row) or vertical (columns right to left).
//!
//! Narrow on purpose: it draws a [`CheckReport`] and returns nothing.

use egui::{Color32, RichText};

use crate::poetry::rhyme::ToneClass;
use crate::poetry::CheckReport;

/// Colour of a tone mark.
fn mark_color(ui: &egui::Ui, class: ToneClass) -> Color32 {
    match class {
        ToneClass::Ping => Color32::from_rgb(70, 130, 220),
        ToneClass::Ze => Color32::from_rgb(200, 110, 40),
        ToneClass::Either => ui.visuals().weak_text_color(),
        ToneClass::Unknown => ui.visuals().error_fg_color,
    }
}

/// One character and its mark, the mark under it (horizontal) or beside it.
fn character(
    ui: &mut egui::Ui,
    report: &CheckReport,
    line: usize,
    col: usize,
    size: f32,
    vertical: bool,
) {
    let Some(m) = report.lines.get(line).and_then(|l| l.get(col)) else {
        return;
    };
    let broken = report
        .problems
        .iter()
        .any(|p| p.line == line + 1 && p.column == col + 1);
    let mut glyph = RichText::new(m.ch.to_string())
        .size(size)
        .color(ui.visuals().strong_text_color());
    if m.rhyme {
        glyph = glyph
            .color(ui.visuals().strong_text_color())
            .background_color(ui.visuals().selection.bg_fill.gamma_multiply(0.5));
    }
    if broken {
        glyph = glyph.underline().color(ui.visuals().error_fg_color);
    }
    let mark = RichText::new(m.class.mark().to_string())
        .size(size * 0.55)
        .color(mark_color(ui, m.class));
    let hover = match (m.required, m.free) {
        (Some(t), true) => format!(
            "{}: {:?}; position free (template {})",
            m.ch,
            m.class,
            t.mark()
        ),
        (Some(t), false) => format!("{}: {:?}; template {}", m.ch, m.class, t.mark()),
        (None, _) => format!("{}: {:?}", m.ch, m.class),
    };
    let draw = |ui: &mut egui::Ui| {
        ui.spacing_mut().item_spacing = egui::vec2(1.0, 0.0);
        ui.label(glyph);
        ui.label(mark);
    };
    let response = if vertical {
        ui.horizontal(draw).response
    } else {
        ui.vertical(draw).response
    };
    response.on_hover_text(hover);
}

/// The mark that closes line `line` (0-based), as the poem has it (a 詞's
/// `7。7。7，` too), else `，` then `。`.
fn line_mark(report: &CheckReport, line: usize) -> String {
    let alternate = if line % 2 == 0 { '，' } else { '。' };
    report
        .line_ends
        .get(line)
        .copied()
        .unwrap_or(alternate)
        .to_string()
}

/// Draws the poem of `report` with its marks and the verdict.
pub fn show(ui: &mut egui::Ui, report: &CheckReport, vertical: bool, size: f32) {
    if vertical {
        ui.horizontal_top(|ui| {
            // Columns right to left: the first line is the rightmost.
            for line in (0..report.lines.len()).rev() {
                ui.vertical(|ui| {
                    ui.spacing_mut().item_spacing.y = 0.0;
                    for col in 0..report.lines[line].len() {
                        character(ui, report, line, col, size, true);
                    }
                });
            }
        });
    } else {
        for line in 0..report.lines.len() {
            ui.horizontal_top(|ui| {
                ui.spacing_mut().item_spacing.x = 4.0;
                for col in 0..report.lines[line].len() {
                    character(ui, report, line, col, size, false);
                }
                ui.label(RichText::new(line_mark(report, line)).size(size));
            });
        }
    }
    let kept = report.rhyme_kept && report.tones_kept;
    let verdict = RichText::new(&report.verdict).strong().color(if kept {
        Color32::from_rgb(60, 150, 90)
    } else if report.form.is_some() {
        ui.visuals().warn_fg_color
    } else {
        ui.visuals().weak_text_color()
    });
    ui.label(verdict);
    key(ui, size);
    if let Some(t) = &report.template {
        ui.label(
            RichText::new(format!("{} {t}", report.form.as_deref().unwrap_or("")))
                .small()
                .weak(),
        );
    }
    for p in &report.problems {
        ui.label(
            RichText::new(format!("第{}句第{}字：{}", p.line, p.column, p.message))
                .small()
                .color(ui.visuals().warn_fg_color),
        );
    }
}

/// The key to the marks: each tone in its colour, then what the highlight
/// and the underline mean.
fn key(ui: &mut egui::Ui, size: f32) {
    ui.horizontal_wrapped(|ui| {
        for (class, words) in [
            (ToneClass::Ping, "平 level"),
            (ToneClass::Ze, "仄 oblique"),
            (ToneClass::Either, "中 either"),
            (ToneClass::Unknown, "？ unknown"),
        ] {
            ui.label(
                RichText::new(words)
                    .size(size * 0.55)
                    .color(mark_color(ui, class)),
            );
        }
        ui.label(
            RichText::new("rhyme")
                .size(size * 0.55)
                .background_color(ui.visuals().selection.bg_fill.gamma_multiply(0.5)),
        );
        ui.label(
            RichText::new("breaks a rule")
                .size(size * 0.55)
                .underline()
                .color(ui.visuals().error_fg_color),
        );
    });
}
