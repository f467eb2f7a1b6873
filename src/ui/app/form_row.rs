//! The form picker, the tune picker and the verse-rules row.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// The form picker's choices (the acrostic heads are typed separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FormChoice {
    Free,
    WuJue,
    QiJue,
    WuLv,
    QiLv,
    Acrostic,
    /// 詞 to the tune picked beside it.
    Ci,
}

impl FormChoice {
    pub(super) const ALL: [FormChoice; 7] = [
        Self::Free,
        Self::WuJue,
        Self::QiJue,
        Self::WuLv,
        Self::QiLv,
        Self::Acrostic,
        Self::Ci,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Free => "自由 free",
            Self::WuJue => "五絕 4×5",
            Self::QiJue => "七絕 4×7",
            Self::WuLv => "五律 8×5",
            Self::QiLv => "七律 8×7",
            Self::Acrostic => "藏頭 acrostic",
            Self::Ci => "詞 ci (tune)",
        }
    }

    /// What the form is, in plain words.
    pub(super) fn explain(self) -> &'static str {
        match self {
            Self::Free => "The model chooses the shape with its first line; under strict rules a first line of 5 or 7 makes a 絕句 or 律詩 that keeps rhyme and tones from line 2 on.",
            Self::WuJue => "五言絕句: four lines of five characters; lines 2 and 4 rhyme.",
            Self::QiJue => "七言絕句: four lines of seven characters; lines 2 and 4 rhyme.",
            Self::WuLv => "五言律詩: eight lines of five characters; the even lines rhyme.",
            Self::QiLv => "七言律詩: eight lines of seven characters; the even lines rhyme.",
            Self::Acrostic => {
                "藏頭詩: each line starts with one of your head characters (4 heads: a 七絕, 8: a 七律)."
            }
            Self::Ci => {
                "詞: lines of the lengths and punctuation a named tune (詞牌) takes, as most Song 詞 to that tune have them."
            }
        }
    }

    pub(super) fn of(form: &PoemForm) -> Self {
        match form {
            PoemForm::Free => Self::Free,
            PoemForm::WuJue => Self::WuJue,
            PoemForm::QiJue => Self::QiJue,
            PoemForm::WuLv => Self::WuLv,
            PoemForm::QiLv => Self::QiLv,
            PoemForm::Acrostic(_) => Self::Acrostic,
            PoemForm::Ci(_) => Self::Ci,
        }
    }
}

/// The 詞 tune picker: every tune by its traditional name, its pattern and
/// rhymes on hover.
pub(super) fn tune_picker(ui: &mut egui::Ui, tune: &mut String) {
    let tune_label = ui.label("Tune");
    let shown = crate::poetry::tunes::find_tune(tune)
        .map_or_else(|| tune.clone(), |t| t.traditional.clone());
    egui::ComboBox::from_id_salt("ci-tune")
        .selected_text(shown)
        .height(320.0)
        .show_ui(ui, |ui| {
            for t in crate::poetry::tunes::ci_tunes() {
                ui.selectable_value(tune, t.name.clone(), &t.traditional)
                    .on_hover_text(format!(
                        "{}: {} ({} Song 詞, {:.0}% of them in this pattern)\nrhymes by line (- none, a b … each rhyme, 平 仄 中 its tone): {}\ntones (中 either): {}",
                        t.traditional,
                        t.pattern_text(),
                        t.poems,
                        t.share * 100.0,
                        t.rhymes_text(),
                        t.tones_text()
                    ));
            }
        })
        .response
        .labelled_by(tune_label.id);
}

/// The verse-rule controls under Advanced: rules, rhyme, template; the
/// rhyme checked as `form` reads it (a 詞's names a 部).
pub(super) fn verse_rules_row(
    ui: &mut egui::Ui,
    verse: &mut crate::poetry::VerseRules,
    form: &crate::poetry::forms::PoemForm,
) {
    use crate::poetry::{RulesMode, TemplateStart};
    // Wraps in a narrow window, so the template label is never cut.
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_label("rules")
            .selected_text(match verse.mode {
                RulesMode::Strict => "strict (rhyme + 平仄)",
                RulesMode::Off => "off (form only)",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut verse.mode, RulesMode::Strict, "strict (rhyme + 平仄)");
                ui.selectable_value(&mut verse.mode, RulesMode::Off, "off (form only)");
            })
            .response
            .on_hover_text("Regulated forms (五絕 七絕 五律 七律, acrostics of 4 or 8) keep 平水韻 rhyme and tones while writing; free verse too, from its second line on, once its first line has set 五言 or 七言; a 詞 rhymes where its tune does (詞林正韻) and keeps the tones its Song 詞 agree on (its 詞譜)");
        let enabled = verse.mode == RulesMode::Strict;
        ui.add_enabled_ui(enabled, |ui| {
            let mut rhyme = verse.rhyme.clone().unwrap_or_default();
            if ui
                .add(
                    egui::TextEdit::singleline(&mut rhyme)
                        .desired_width(60.0)
                        .hint_text("any"),
                )
                .on_hover_text("A 平聲 rhyme group by name (東, 一先) or by a character in it (紅); for a 詞 any group (一董, 入聲六月) or character (月): its first rhyme takes that 部 of the 詞林正韻")
                .changed()
            {
                verse.rhyme = (!rhyme.trim().is_empty()).then_some(rhyme);
            }
            ui.label("rhyme");
            egui::ComboBox::from_label("template")
                .selected_text(match verse.template {
                    TemplateStart::Any => "any",
                    TemplateStart::PingQi => "平起",
                    TemplateStart::ZeQi => "仄起",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut verse.template, TemplateStart::Any, "any");
                    ui.selectable_value(&mut verse.template, TemplateStart::PingQi, "平起");
                    ui.selectable_value(&mut verse.template, TemplateStart::ZeQi, "仄起");
                });
        });
    });
    let mut guard = verse.repeats == crate::poetry::Repeats::Guard;
    if ui
        .checkbox(&mut guard, "no repeats")
        .on_hover_text("No character three times in a row, no line twice, no character more than twice in a poem (in a 詞, what 9 in 10 of the tune's poems stay within: 2 to 4 times)")
        .changed()
    {
        verse.repeats = if guard {
            crate::poetry::Repeats::Guard
        } else {
            crate::poetry::Repeats::Allow
        };
    }
    if let Err(e) = verse.check_rhyme_for(form) {
        ui.colored_label(ui.visuals().error_fg_color, e.to_string());
    }
}
