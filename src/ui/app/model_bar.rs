//! The model bar: model field, Open…, Load, device; and the precision
//! picker, which Advanced shows.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    pub(super) fn model_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            self.model_picker(ui);
            // A narrow window puts device and precision on a row of their own.
            if ui.max_rect().width() < 900.0 {
                ui.end_row();
            } else {
                ui.separator();
            }
            self.device_picker(ui);
        });
    }

    /// The model's name (a click edits its folder), Open…, Bundled, Recent, Load.
    fn model_picker(&mut self, ui: &mut egui::Ui) {
        ui.label("Model");
        if self.model_editing {
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.model_field)
                    .desired_width(220.0)
                    .hint_text("model folder"),
            );
            if std::mem::take(&mut self.model_focus_pending) {
                field.request_focus();
            }
            if field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                self.model_editing = false;
                self.load_chosen_model();
            }
            field.on_hover_text("A GPT-2 folder: config.json, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt");
        } else {
            // The model's name and size; the full path on hover, a click edits it.
            let name = self.model_name();
            let writes = self.writing_model(&self.settings.form);
            let by_ci_model = if writes == self.chosen_model() {
                ""
            } else {
                "\n詞 to a tune are written by the bundled 詞 model (the bundled model fine-tuned on Song 詞)"
            };
            if ui
                .button(name)
                .on_hover_text(format!(
                    "{}{by_ci_model}\nClick to type another folder",
                    writes.display()
                ))
                .clicked()
            {
                self.model_editing = true;
                self.model_focus_pending = true;
            }
        }
        if ui
            .button("Open…")
            .on_hover_text("Choose a model folder")
            .clicked()
        {
            self.open_model_dialog();
        }
        if ui.button("Bundled").clicked() {
            self.model_field = bundled_model()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
        }
        if !self.settings.recent_models.is_empty() {
            egui::ComboBox::from_label("Recent")
                .selected_text("…")
                .show_ui(ui, |ui| {
                    // The bundled model first, then the models that loaded.
                    if let Some(b) = bundled_model() {
                        if ui.selectable_label(false, "tang-poems (bundled)").clicked() {
                            self.model_field = b.display().to_string();
                        }
                    }
                    for p in self.settings.recent_models.clone() {
                        let name = p.file_name().map_or_else(
                            || p.display().to_string(),
                            |n| n.to_string_lossy().into_owned(),
                        );
                        if ui
                            .selectable_label(false, name)
                            .on_hover_text(p.display().to_string())
                            .clicked()
                        {
                            self.model_field = p.display().to_string();
                        }
                    }
                });
        }
        if ui
            .button("Load")
            .on_hover_text("Load the model now")
            .clicked()
        {
            self.load_chosen_model();
        }
    }

    /// The device: the CPU and every CUDA GPU with its free memory.
    fn device_picker(&mut self, ui: &mut egui::Ui) {
        // CUDA ordinals (what the engine opens), not NVML's numbering of every GPU.
        let gpus: Vec<(usize, String, u64)> = self
            .sampler
            .as_ref()
            .and_then(|s| {
                s.history().latest().map(|l| {
                    l.gpus
                        .iter()
                        .filter_map(|g| {
                            Some((
                                crate::meter::cuda_ordinal_of(g.index)?,
                                g.name.clone(),
                                g.free_bytes,
                            ))
                        })
                        .collect()
                })
            })
            .unwrap_or_default();
        ui.horizontal(|ui| {
            let device_label = ui.label("Device");
            egui::ComboBox::from_id_salt("device")
                .selected_text(self.settings.device.to_string())
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.settings.device, DeviceChoice::Cpu, "CPU");
                    for (i, name, free) in &gpus {
                        let label = format!("cuda:{i} {name} ({} MiB free)", crate::mib(*free));
                        ui.selectable_value(
                            &mut self.settings.device,
                            DeviceChoice::Cuda(*i),
                            label,
                        );
                    }
                })
                .response
                .labelled_by(device_label.id);
        });
    }

    /// The precision, under Advanced: auto, or one the user picks, said in
    /// plain words on hover.
    pub(super) fn precision_picker(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let precision_label = ui
                .label("Precision")
                .on_hover_text("How exactly the model's numbers are kept: less exact takes less memory and is often faster");
            let shown = if self.settings.precision_auto {
                format!("auto ({})", self.load_spec().precision)
            } else {
                self.settings.precision.to_string()
            };
            egui::ComboBox::from_id_salt("precision")
                .selected_text(shown)
                .show_ui(ui, |ui| {
                    if ui
                        .selectable_label(self.settings.precision_auto, "auto")
                        .clicked()
                    {
                        self.settings.precision_auto = true;
                    }
                    for p in Precision::ALL {
                        let picked = !self.settings.precision_auto && self.settings.precision == p;
                        if ui.selectable_label(picked, p.to_string()).clicked() {
                            self.settings.precision_auto = false;
                            self.settings.precision = p;
                        }
                    }
                })
                .response
                .labelled_by(precision_label.id)
                .on_hover_text(
                    "auto: on the CPU the precision the model is stored in (f16 for the bundled \
             one: exact, about twice as fast), else f32; on a GPU whichever of f16 and \
             f32 is faster there (timed once per GPU and model), f16 until then. \
             f16 / bf16 halve the memory the weights take; on the CPU the math stays f32.",
                );
        });
    }
}
