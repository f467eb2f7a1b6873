//! Building the app: the store, settings, engine, memory sampler and the
//! first frame's state.

#[allow(clippy::wildcard_imports)] // the parent's imports, as if this were its file
use super::*;

impl VersifierApp {
    /// Builds the app and starts the engine and the meter threads; `ctx` is woken by both.
    pub fn new(ctx: &egui::Context, store: Option<Store>) -> Result<Self, EngineError> {
        Self::with_memory_budget(ctx, store, None)
    }

    /// As [`Self::new`], with the engine treating the device as having at most
    /// `memory_budget` bytes free (loads that would not fit are refused with
    /// what would, as on a full GPU).
    pub fn with_memory_budget(
        ctx: &egui::Context,
        store: Option<Store>,
        memory_budget: Option<u64>,
    ) -> Result<Self, EngineError> {
        let (mut settings, note) = store
            .as_ref()
            .map(|s| s.load_settings())
            .unwrap_or_default();
        // First launch: the first GPU when this build can use it, else the CPU,
        // with a one-line notice when a CUDA build has to use the CPU. Later
        // launches keep the saved choice and skip the check (it opens the CUDA
        // libraries, which start-up should not pay for); a saved GPU this
        // machine cannot run falls back on the first load, with the engine's notice.
        let first_launch = store.as_ref().is_none_or(|s| !s.settings_path.exists());
        let device_note = if first_launch {
            first_launch_device(&mut settings)
        } else {
            None
        };
        let (history, history_note) = store.as_ref().map(|s| s.load_history()).unwrap_or_default();
        let waker_ctx = ctx.clone();
        let engine = Engine::spawn(EngineOptions {
            idle_timeout: settings.idle_timeout_s.map(Duration::from_secs),
            waker: Some(Arc::new(move || {
                waker_ctx.request_repaint_after(Duration::from_millis(10))
            })),
            memory_budget,
            ..EngineOptions::default()
        })?;
        let meter_ctx = ctx.clone();
        // Samples stay at 4 Hz; the meter alone repaints at most once a second,
        // so an idle window stays cheap.
        let sampler = MemorySampler::spawn(DEFAULT_INTERVAL, DEFAULT_CAPACITY, move || {
            meter_ctx.request_repaint_after(Duration::from_secs(1))
        })
        .map_err(EngineError::Spawn)
        .ok();
        // Start on the last model that loaded, if it is still there; else the
        // bundled one (with a notice). Recent keeps only folders that exist.
        let model_note = forget_missing_models(&mut settings);
        let model_field = settings
            .model
            .clone()
            .or_else(bundled_model)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let (settings_writer, writer_note) = match store
            .clone()
            .map(|s| SettingsWriter::spawn(s, SETTINGS_SAVE_INTERVAL))
        {
            Some(Ok(w)) => (Some(w), None),
            Some(Err(e)) => (None, Some(format!("settings will not be saved: {e}"))),
            None => (None, None),
        };
        let acrostic_heads = match &settings.form {
            PoemForm::Acrostic(h) => h.iter().collect(),
            _ => "春夏秋冬".into(),
        };
        let ci_tune = match &settings.form {
            PoemForm::Ci(tune) => tune.clone(),
            _ => "浣溪沙".into(),
        };
        let saved_prompt = settings.poem_prompt.clone();
        Ok(Self {
            form_choice: FormChoice::of(&settings.form),
            saved_settings: settings.clone(),
            settings_writer,
            settings,
            store,
            history,
            engine,
            sampler,
            prompt: saved_prompt,
            acrostic_heads,
            ci_tune,
            model_field,
            model_editing: false,
            model_focus_pending: false,
            stored_precision: Vec::new(),
            state: EngineState::Unloaded,
            cards: Vec::new(),
            replaced_cards: None,
            rewriting: None,
            current: None,
            sent: None,
            last_load: None,
            last_release: None,
            measuring_precision: None,
            release_at_unix_ms: 0,
            idle_left: None,
            pinned: false,
            error: None,
            fit: None,
            history_filter: String::new(),
            notices: note
                .into_iter()
                .chain(history_note)
                .chain(device_note)
                .chain(model_note)
                .chain(writer_note)
                .collect(),
            kv_cache_bytes: 0,
            prompt_had_focus: false,
            config_cache: None,
            dialog: None,
            file_dialog_runner: files::system_dialog,
            deleted: None,
            copied: None,
        })
    }
}

/// First launch: the first GPU when this build can use it, else the CPU (in
/// f16: the bundled model is stored in f16 and writes the same poems about
/// twice as fast); a notice when a CUDA build has to use the CPU.
fn first_launch_device(settings: &mut Settings) -> Option<String> {
    let (preferred, note) = crate::device::preferred_device();
    settings.device = preferred;
    if preferred == DeviceChoice::Cpu {
        settings.precision = Precision::F16;
    }
    note
}

/// Starts on the last model that loaded if it is still there, else on the
/// bundled one (with the notice returned); Recent keeps only folders that
/// exist.
fn forget_missing_models(settings: &mut Settings) -> Option<String> {
    let gone = |p: &std::path::Path| !p.exists();
    let mut note = None;
    if let Some(last) = settings.model.clone().filter(|p| gone(p)) {
        note = Some(format!(
            "The last model, {}, is not there any more; using the bundled model.",
            last.display()
        ));
        settings.model = None;
    }
    settings.recent_models.retain(|p| !gone(p));
    note
}
