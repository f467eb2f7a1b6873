//! Which model, device and precision a job asks for: the chosen model, the
//! 詞 model for a tune, Precision auto, the models remembered.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

/// Precision "auto": the checkpoint's storage precision on the CPU (f32 when
/// unknown); on a GPU the precision measured faster there for this model, f16
/// until it is measured.
pub(super) fn auto_precision(
    device: DeviceChoice,
    stored: Option<Precision>,
    measured: Option<Precision>,
) -> Precision {
    match device {
        DeviceChoice::Cpu => stored.unwrap_or(Precision::F32),
        DeviceChoice::Cuda(_) => measured.unwrap_or(Precision::F16),
    }
}

impl VersifierApp {
    /// What the engine is asked to load: the chosen model, or for a 詞 tune
    /// on the bundled model the bundled 詞 model (`store::model_for_form`), so
    /// the model bar, preloading and the fit check name the model that writes.
    pub fn load_spec(&self) -> LoadSpec {
        self.load_spec_for(&self.settings.form)
    }

    /// [`Self::load_spec`] for a poem of `form` (a history record's, on Re-run).
    pub(super) fn load_spec_for(&self, form: &PoemForm) -> LoadSpec {
        let model = self.writing_model(form);
        let precision = if self.settings.precision_auto {
            let measured = self
                .gpu_name(self.settings.device)
                .and_then(|gpu| self.settings.measured_precision(&gpu, &model));
            auto_precision(
                self.settings.device,
                self.stored_precision
                    .iter()
                    .find(|(p, _)| *p == model)
                    .and_then(|(_, s)| *s),
                measured,
            )
        } else {
            self.settings.precision
        };
        LoadSpec {
            model,
            device: self.settings.device,
            precision,
        }
    }

    /// The name of GPU `device` as the meter last saw it.
    pub(super) fn gpu_name(&self, device: DeviceChoice) -> Option<String> {
        let DeviceChoice::Cuda(i) = device else {
            return None;
        };
        let m = self.latest_memory()?;
        crate::meter::gpu_for_ordinal(&m.gpus, i).map(|g| g.name.clone())
    }

    /// Precision "auto" on a GPU it has not measured for this model: ask the
    /// engine to time f32 and f16 once (before the job, which then runs in f16).
    pub(super) fn measure_precision_if_new(&mut self, spec: &LoadSpec, batch: usize) {
        if !self.settings.precision_auto || self.measuring_precision.is_some() {
            return;
        }
        let Some(gpu) = self.gpu_name(spec.device) else {
            return;
        };
        if self
            .settings
            .measured_precision(&gpu, &spec.model)
            .is_some()
        {
            return;
        }
        self.notices.push(format!(
            "Precision auto: timing f32 and f16 once on {gpu} for this model (a few seconds)."
        ));
        self.measuring_precision = Some((gpu, spec.model.clone()));
        self.send(Command::MeasurePrecisions {
            spec: spec.clone(),
            batch,
        });
    }

    /// Keeps what the engine measured for Precision "auto" and says what it picked.
    pub(super) fn precisions_measured(&mut self, speeds: crate::engine::PrecisionSpeeds) {
        let Some((gpu, model)) = self.measuring_precision.take() else {
            return;
        };
        if speeds.device == DeviceChoice::Cpu {
            return; // the GPU was not there after all: nothing to keep for it
        }
        self.notices.push(format!(
            "Precision auto on {gpu}: {} ({:.0} tokens/s in f16, {:.0} in f32, {} at a time).",
            speeds.faster(),
            speeds.f16_tokens_per_s,
            speeds.f32_tokens_per_s,
            speeds.batch
        ));
        self.settings
            .precision_speeds
            .push(crate::store::MeasuredPrecision { gpu, model, speeds });
    }

    /// The model that writes `form`: the chosen one, or the bundled 詞 model
    /// for a tune on the bundled model (`store::model_for_form`).
    pub(super) fn writing_model(&self, form: &PoemForm) -> PathBuf {
        model_for_form(&self.chosen_model(), form)
    }

    pub(super) fn chosen_model(&self) -> PathBuf {
        if self.model_field.trim().is_empty() {
            bundled_model().unwrap_or_else(|| PathBuf::from("models/tang-poems"))
        } else {
            PathBuf::from(self.model_field.trim())
        }
    }

    /// Reads (once per model) the precision the checkpoint of the model that
    /// writes `form` stores its weights in, from the safetensors header, for
    /// Precision "auto".
    pub(super) fn refresh_stored_precision(&mut self, form: &PoemForm) {
        let model = self.writing_model(form);
        if self.stored_precision.iter().any(|(p, _)| *p == model) {
            return;
        }
        let stored = crate::model::ModelFiles::locate(&model)
            .ok()
            .filter(|f| f.format == crate::model::WeightFormat::Safetensors)
            .and_then(|f| crate::model::inspect_safetensors(&f.weights).ok())
            .and_then(|s| {
                s.tensors
                    .iter()
                    .find(|t| t.name.ends_with("wte.weight"))
                    .and_then(|t| match t.dtype.as_str() {
                        "F16" => Some(Precision::F16),
                        "BF16" => Some(Precision::Bf16),
                        "F32" => Some(Precision::F32),
                        _ => None,
                    })
            });
        // A handful of folders in a session; the oldest goes past eight.
        if self.stored_precision.len() >= 8 {
            self.stored_precision.remove(0);
        }
        self.stored_precision.push((model, stored));
    }

    /// What the model field says (as if typed).
    pub fn set_model_field(&mut self, path: &str) {
        self.model_field = path.to_string();
        self.model_editing = true;
    }

    /// The chosen model as a person reads it: folder name and parameters.
    pub fn model_name(&mut self) -> String {
        let path = self.load_spec().model;
        let folder = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let _ = self.variation_budget(); // reads the config once per path
        match &self.config_cache {
            Some((p, Some(cfg))) if *p == path => {
                format!("{folder} · {:.1}M", cfg.param_count() as f64 / 1e6)
            }
            _ => folder,
        }
    }

    /// Loads the model in the field (beside the current one: hot swap). It is
    /// remembered (settings, Recent) only once it has loaded.
    pub fn load_chosen_model(&mut self) {
        let spec = self.load_spec();
        let cmd = if matches!(self.state, EngineState::Unloaded) {
            Command::Prepare(spec)
        } else {
            Command::Swap(spec)
        };
        self.send(cmd);
    }

    /// A model that loaded: the next launch starts on it, and Recent lists it
    /// (the bundled model is not listed: it has its own button and comes first).
    pub(super) fn remember_model(&mut self, model: &std::path::Path) {
        // The bundled model, or the bundled 詞 model loaded for a tune asked of
        // it: still the bundled model's choice. (Opened by itself, the 詞
        // model is remembered like any other.)
        let chosen_bundled = bundled_model().is_some_and(|b| same_folder(&b, &self.chosen_model()));
        if bundled_model().is_some_and(|b| same_folder(&b, model))
            || (chosen_bundled && is_bundled(model))
        {
            self.settings.model = None;
            return;
        }
        let model = model.to_path_buf();
        self.settings.model = Some(model.clone());
        self.settings
            .recent_models
            .retain(|p| !same_folder(p, &model));
        self.settings.recent_models.insert(0, model);
        self.settings
            .recent_models
            .truncate(Settings::MAX_RECENT_MODELS);
    }
}
