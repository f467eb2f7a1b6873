//! The writer: prompt and theme, form and rules, Generate, and the cards.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// The poems' type size on the cards (points).
pub(super) const CARD_TEXT_SIZE: f32 = 22.0;

/// Classical vertical layout: columns right to left, one line per column.
pub(super) fn vertical(text: &str) -> String {
    let lines: Vec<Vec<char>> = text
        .split(['，', '。'])
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().collect())
        .collect();
    let rows = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = String::new();
    for r in 0..rows {
        for l in lines.iter().rev() {
            out.push(*l.get(r).unwrap_or(&'　'));
            out.push('　');
        }
        out.push('\n');
    }
    out
}

impl VersifierApp {
    /// The prompt box; its first focus preloads the model.
    /// The prompt; `true` when Enter was pressed in it (Generate). In 藏頭
    /// the heads start the lines, so the prompt is off and says so.
    pub(super) fn prompt_field(&mut self, ui: &mut egui::Ui) -> bool {
        let label = ui.label("Prompt");
        let acrostic = self.form_choice == FormChoice::Acrostic;
        let prompt = ui
            .add_enabled(
                !acrostic,
                egui::TextEdit::singleline(&mut self.prompt)
                    .hint_text(if acrostic {
                        "the heads start the lines"
                    } else {
                        "春, 月, 山水 …"
                    })
                    .desired_width(220.0)
                    .font(egui::TextStyle::Heading),
            )
            .labelled_by(label.id)
            .on_hover_text("The poem's first characters; Enter writes the poems")
            .on_disabled_hover_text(
                "In 藏頭 the heads under Form start the lines: the prompt is not used",
            );
        let focused = prompt.has_focus();
        if focused && !self.prompt_had_focus && self.settings.preload_on_focus {
            // Preload so the first Generate does not wait.
            let spec = self.load_spec();
            self.send(Command::Prepare(spec));
        }
        self.prompt_had_focus = focused;
        prompt.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter))
    }

    #[allow(clippy::too_many_lines)] // the writer drawn top to bottom; its rows become panels with a View and Actions (issue #42)
    pub(super) fn writer(&mut self, ui: &mut egui::Ui, generating: bool) {
        // Taken before any text field can swallow them.
        let shortcuts = ui.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter),
                i.consume_key(egui::Modifiers::NONE, egui::Key::Escape),
            )
        });
        let mut entered = false;
        ui.horizontal_wrapped(|ui| {
            // As tall as the fields are with any text, so typing moves nothing.
            ui.set_min_height(28.0);
            entered = self.prompt_field(ui);
            // Read again when Generate is pressed; here only shown.
            super::super::theme_field::show(ui, &mut self.settings.poem_theme);
        });
        ui.horizontal_wrapped(|ui| {
            let form_label = ui.label("Form");
            egui::ComboBox::from_id_salt("form")
                .selected_text(self.form_choice.label())
                .show_ui(ui, |ui| {
                    for f in FormChoice::ALL {
                        ui.selectable_value(&mut self.form_choice, f, f.label())
                            .on_hover_text(f.explain());
                    }
                })
                .response
                .labelled_by(form_label.id)
                .on_hover_text(self.form_choice.explain());
            if self.form_choice == FormChoice::Ci {
                tune_picker(ui, &mut self.ci_tune);
            }
            if self.form_choice == FormChoice::Acrostic {
                ui.label("Heads");
                ui.add(
                    egui::TextEdit::singleline(&mut self.acrostic_heads)
                        .desired_width(90.0)
                        .hint_text("春夏秋冬"),
                )
                .on_hover_text("4 or 8 characters, one to start each line");
            }
        });
        ui.horizontal_wrapped(|ui| {
            // The buttons first, so nothing that comes and goes moves them.
            let go = ui.add_enabled(!generating, egui::Button::new("Generate  (Ctrl+Enter)"));
            let stop = ui.add_enabled(generating, egui::Button::new("Stop  (Esc)"));
            let (ctrl_enter, esc) = shortcuts;
            if (go.clicked() || ctrl_enter || entered) && !generating {
                self.generate();
            }
            if stop.clicked() || (esc && generating) {
                self.stop();
            }
            let (per_variation, max_fit) = self.variation_budget();
            ui.add(
                egui::Slider::new(&mut self.settings.variations, 1..=max_fit).text("variations"),
            );
            if let Some(b) = per_variation {
                ui.label(format!("≈{:.1} MiB each", crate::mib_f64(b)))
                    .on_hover_text("KV cache of one more variation at the model's full context");
            }
        });
        let form = self.form();
        egui::CollapsingHeader::new("Advanced").show(ui, |ui| {
            self.precision_picker(ui);
            let s = &mut self.settings;
            ui.add(egui::Slider::new(&mut s.sampling.temperature, 0.1..=2.0).text("temperature"));
            ui.add(egui::Slider::new(&mut s.sampling.top_k, 0..=200).text("top-k (0 = all)"));
            ui.add(egui::Slider::new(&mut s.sampling.top_p, 0.05..=1.0).text("top-p"));
            ui.add(
                egui::Slider::new(&mut s.sampling.repetition_penalty, 1.0..=2.0)
                    .text("repetition penalty"),
            );
            ui.add(egui::Slider::new(&mut s.max_tokens, 8..=256).text("max tokens"));
            verse_rules_row(ui, &mut s.verse, &form);
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut s.sampling.seed).prefix("seed "));
                ui.checkbox(&mut s.lock_seed, "lock seed");
            });
            ui.checkbox(
                &mut s.preload_on_focus,
                "load the model when the prompt box gets focus",
            );
            ui.checkbox(&mut s.vertical_layout, "vertical layout");
            egui::ComboBox::from_label("Colours")
                .selected_text(s.theme.clone())
                .show_ui(ui, |ui| {
                    for t in ["system", "light", "dark"] {
                        ui.selectable_value(&mut s.theme, t.to_string(), t);
                    }
                });
        });
        // First launch: examples under the controls, so nothing above moves
        // when they go with the first poem.
        if self.cards.iter().all(|c| c.text.is_empty()) && self.history.is_empty() {
            super::super::theme_field::first_launch_examples(
                ui,
                &mut self.prompt,
                &mut self.settings.poem_theme,
            );
        }
        ui.separator();
        ui.checkbox(&mut self.settings.show_marks, "平仄 marks")
            .on_hover_text(
            "Show each character's tone (平 仄, 中 either, ？ unknown), the rhyme and the verdict",
        );
        egui::ScrollArea::vertical().show(ui, |ui| {
            let mut rerun: Option<(usize, PoemRecord)> = None;
            let mut keep: Option<(PoemRecord, usize)> = None;
            // Cards two to a row, each with its buttons under the poem.
            let cards = self.cards.clone();
            let width = ((ui.available_width() - 40.0) / 2.0).max(220.0);
            for (row, pair) in cards.chunks(2).enumerate() {
                ui.horizontal_top(|ui| {
                    for (j, card) in pair.iter().enumerate() {
                        let i = row * 2 + j;
                        egui::Frame::group(ui.style())
                            .inner_margin(12.0)
                            .show(ui, |ui| {
                                ui.set_width(width - 26.0);
                                // The poem, then its buttons under it.
                                ui.vertical(|ui| {
                                    let full = format!("{}{}", card.prompt, card.text);
                                    let shown = if self.settings.vertical_layout {
                                        vertical(&full)
                                    } else {
                                        // Full-width glyphs are about as wide as the type is tall.
                                        let per_row = ((width - 26.0) / CARD_TEXT_SIZE).floor();
                                        crate::poetry::forms::layout_to_width(
                                            &full,
                                            per_row as usize,
                                        )
                                    };
                                    if self.settings.show_marks && card.done {
                                        let mut report = match &card.record {
                                            Some(r) => crate::poetry::check_in_form(&full, &r.form),
                                            None => crate::poetry::check_poem(&full),
                                        };
                                        if card.unfinished {
                                            // A poem cut short is not a broken form.
                                            report.verdict = UNFINISHED_VERDICT.into();
                                        }
                                        super::super::poem_marks::show(
                                            ui,
                                            &report,
                                            self.settings.vertical_layout,
                                            CARD_TEXT_SIZE,
                                        );
                                    } else {
                                        ui.label(
                                            egui::RichText::new(shown)
                                                .size(CARD_TEXT_SIZE)
                                                .color(ui.visuals().strong_text_color()),
                                        );
                                    }
                                    ui.horizontal(|ui| {
                                        if !card.done {
                                            ui.spinner();
                                        }
                                        let has_text = !card.text.is_empty();
                                        if ui
                                            .add_enabled(
                                                has_text,
                                                egui::Button::new("Copy").small(),
                                            )
                                            .clicked()
                                        {
                                            ui.ctx().copy_text(layout(&full));
                                            self.copied = Some((i, Instant::now()));
                                        }
                                        if let Some((c, at)) = self.copied {
                                            if c == i && at.elapsed() < Duration::from_millis(1500)
                                            {
                                                ui.label(
                                                    egui::RichText::new("copied").small().weak(),
                                                );
                                                ui.ctx().request_repaint_after(
                                                    Duration::from_millis(200),
                                                );
                                            }
                                        }
                                        if ui
                                            .add_enabled(
                                                has_text,
                                                egui::Button::new("Save").small(),
                                            )
                                            .on_hover_text("Save the poem, with its form, model, seed and date, to a text file you choose (the documents folder first)")
                                            .clicked()
                                        {
                                            self.save_card(i);
                                        }
                                        if let Some(record) = &card.record {
                                            if ui
                                                .add_enabled(
                                                    card.done,
                                                    egui::Button::new("Re-run").small(),
                                                )
                                                .on_hover_text(format!(
                                                    "Write this poem again (seed {})",
                                                    record.sampling.seed
                                                ))
                                                .clicked()
                                            {
                                                rerun = Some((i, record.clone()));
                                            }
                                            if card.done {
                                                if let Some(n) =
                                                    super::super::keep_lines::keep_menu(ui, &record.text)
                                                {
                                                    keep = Some((record.clone(), n));
                                                }
                                            }
                                        }
                                        if card.unfinished && card.done {
                                            unfinished_tag(ui);
                                        }
                                    });
                                });
                            });
                    }
                });
            }
            if let Some((card, record)) = rerun {
                self.rerun_card(card, &record);
            }
            if let Some((record, lines)) = keep {
                self.keep_lines(&record, lines);
            }
            if !self.history.is_empty() || self.deleted.is_some() {
                ui.separator();
                egui::CollapsingHeader::new(format!("History ({})", self.history.len()))
                    .id_salt("history")
                    .show(ui, |ui| self.history_panel(ui));
            }
        });
    }

    /// KV-cache bytes one more variation costs, and how many fit in free memory
    /// (at most 8). Reads the chosen model's `config.json` (tiny) when it changes.
    pub(super) fn variation_budget(&mut self) -> (Option<u64>, usize) {
        let path = self.load_spec().model;
        if self.config_cache.as_ref().map(|(p, _)| p) != Some(&path) {
            let cfg = crate::model::ModelFiles::locate(&path)
                .ok()
                .and_then(|f| crate::model::Gpt2Config::from_file(&f.config).ok());
            self.config_cache = Some((path, cfg));
        }
        let Some((_, Some(cfg))) = &self.config_cache else {
            return (None, 8);
        };
        let bytes = self.settings.precision.bytes();
        let per = cfg.kv_cache_bytes(1, cfg.n_positions, bytes) as u64;
        let free = match self.settings.device {
            DeviceChoice::Cpu => crate::meter::available_ram(),
            DeviceChoice::Cuda(i) => self.sampler.as_ref().and_then(|s| {
                s.history()
                    .latest()
                    .and_then(|l| crate::meter::gpu_for_ordinal(&l.gpus, i).map(|g| g.free_bytes))
            }),
        };
        let loaded = !matches!(self.state, EngineState::Unloaded);
        let weights = if loaded {
            0
        } else {
            (cfg.param_count() * bytes) as u64
        };
        let max = free.map_or(8, |f| {
            (f.saturating_sub(weights) / per.max(1)).clamp(1, 8) as usize
        });
        (Some(per), max)
    }
}

/// What the marks say of a poem cut short (Esc, or its token budget).
pub(super) const UNFINISHED_VERDICT: &str =
    "unfinished: stopped before the poem ended, so not judged";

/// The tag of a poem cut short, in the warning colour, as large as the text.
pub(super) fn unfinished_tag(ui: &mut egui::Ui) {
    ui.label(egui::RichText::new("unfinished").color(ui.visuals().warn_fg_color))
        .on_hover_text("Stopped (Esc) or cut by its token budget before the poem ended");
}
