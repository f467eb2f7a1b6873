//! The main window: model bar, prompt and settings, streaming poem cards, and
//! the memory panel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::meter_panel::{release_summary, MeterAction, MeterView};
use crate::engine::{
    Command, DeviceChoice, Engine, EngineError, EngineOptions, EngineState, ErrorKind, Event,
    GenerateJob, LoadReport, LoadSpec, Precision, Prompt, ReleaseReport, RequestId,
};
use crate::meter::{MarkerKind, MemorySampler, DEFAULT_CAPACITY, DEFAULT_INTERVAL};
use crate::poetry::forms::{layout, PoemForm};
use crate::store::{
    bundled_model, is_bundled, model_for_form, same_folder, PoemRecord, Settings, SettingsWriter,
    Store, SETTINGS_SAVE_INTERVAL,
};

/// The poems' type size on the cards (points).
const CARD_TEXT_SIZE: f32 = 22.0;

/// One variation being written or written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Card {
    pub prompt: String,
    pub text: String,
    pub done: bool,
    /// Stopped (Esc) or cut by an error before the poem ended.
    pub unfinished: bool,
    /// The finished poem as history keeps it (its own seed), for Re-run.
    pub record: Option<PoemRecord>,
}

/// Precision "auto": the checkpoint's storage precision on the CPU (f32 when
/// unknown); on a GPU the precision measured faster there for this model, f16
/// until it is measured.
fn auto_precision(
    device: DeviceChoice,
    stored: Option<Precision>,
    measured: Option<Precision>,
) -> Precision {
    match device {
        DeviceChoice::Cpu => stored.unwrap_or(Precision::F32),
        DeviceChoice::Cuda(_) => measured.unwrap_or(Precision::F16),
    }
}

/// What a file dialog is for.
#[derive(Debug, Clone)]
enum DialogPurpose {
    /// Choose a model folder.
    OpenModel,
    /// Save `text` under a name the user picks (`name` suggested).
    Save {
        name: String,
        text: String,
        markdown: bool,
    },
}

/// The form picker's choices (the acrostic heads are typed separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FormChoice {
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
    const ALL: [FormChoice; 7] = [
        Self::Free,
        Self::WuJue,
        Self::QiJue,
        Self::WuLv,
        Self::QiLv,
        Self::Acrostic,
        Self::Ci,
    ];

    fn label(self) -> &'static str {
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
    fn explain(self) -> &'static str {
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

    fn of(form: &PoemForm) -> Self {
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

/// The whole app: saved settings, runtime handles (never saved), and what is on screen.
pub struct VersifierApp {
    pub settings: Settings,
    saved_settings: Settings,
    /// Writes settings off the UI thread (None without a store).
    settings_writer: Option<SettingsWriter>,
    store: Option<Store>,
    pub history: Vec<PoemRecord>,
    engine: Engine,
    sampler: Option<MemorySampler>,
    pub prompt: String,
    form_choice: FormChoice,
    acrostic_heads: String,
    /// The tune of the 詞 form (simplified name, as in the tune table).
    ci_tune: String,
    model_field: String,
    /// The model field is being typed in (else it shows the model's name).
    model_editing: bool,
    /// The model field was just opened by a click: give it the keyboard.
    model_focus_pending: bool,
    /// The storage precision of the models that write the chosen form and
    /// re-runs (for Precision "auto"), per path.
    stored_precision: Vec<(PathBuf, Option<Precision>)>,
    pub state: EngineState,
    pub cards: Vec<Card>,
    /// The cards a new run replaced, kept until it writes something: a run
    /// that fails before its first character brings them back.
    replaced_cards: Option<Vec<Card>>,
    current: Option<RequestId>,
    /// The job behind `current`, as sent: its poems are recorded with these
    /// settings, whatever the widgets say by the time it finishes.
    sent: Option<GenerateJob>,
    last_load: Option<LoadReport>,
    last_release: Option<ReleaseReport>,
    /// Precision "auto" is timing f32 and f16 for (GPU name, model).
    measuring_precision: Option<(String, PathBuf)>,
    /// When `last_release` arrived (Unix ms), to line the meter up with it.
    release_at_unix_ms: u64,
    /// Idle time left, as of when it was reported.
    idle_left: Option<(Duration, Instant)>,
    pinned: bool,
    pub error: Option<(ErrorKind, String)>,
    /// For a refused load: the numbers and what would fit.
    pub fit: Option<crate::device::fit::FitRefusal>,
    /// History panel search text.
    pub history_filter: String,
    pub notices: Vec<String>,
    kv_cache_bytes: usize,
    prompt_had_focus: bool,
    /// A native file dialog running on its own thread, what it is for, and
    /// where its answer arrives.
    dialog: Option<(
        std::thread::JoinHandle<()>,
        DialogPurpose,
        std::sync::mpsc::Receiver<Option<PathBuf>>,
    )>,
    /// The last history entry deleted, and where it was, for Undo.
    deleted: Option<(usize, PoemRecord)>,
    /// Which card's text was just copied, and when (a brief "copied").
    copied: Option<(usize, Instant)>,
    /// The chosen model's config, read once per path (for the variation cost).
    config_cache: Option<(PathBuf, Option<crate::model::Gpt2Config>)>,
}

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
            let (preferred, note) = crate::device::preferred_device();
            settings.device = preferred;
            // On the CPU, f16 weights decode about twice as fast, and the bundled
            // model (stored in f16) writes exactly the same poems.
            if preferred == DeviceChoice::Cpu {
                settings.precision = Precision::F16;
            }
            note
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
        let gone = |p: &std::path::Path| !p.exists();
        let mut model_note = None;
        if let Some(last) = settings.model.clone().filter(|p| gone(p)) {
            model_note = Some(format!(
                "The last model, {}, is not there any more; using the bundled model.",
                last.display()
            ));
            settings.model = None;
        }
        settings.recent_models.retain(|p| !gone(p));
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
        Ok(Self {
            form_choice: FormChoice::of(&settings.form),
            saved_settings: settings.clone(),
            settings_writer,
            settings,
            store,
            history,
            engine,
            sampler,
            prompt: String::new(),
            acrostic_heads,
            ci_tune,
            model_field,
            model_editing: false,
            model_focus_pending: false,
            stored_precision: Vec::new(),
            state: EngineState::Unloaded,
            cards: Vec::new(),
            replaced_cards: None,
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
            deleted: None,
            copied: None,
        })
    }

    /// The model, device and precision the user has chosen.
    /// The meter's latest sample (`None` before the first, or without a meter).
    pub fn latest_memory(&self) -> Option<crate::meter::MemorySnapshot> {
        self.sampler
            .as_ref()
            .and_then(|s| s.history().latest().cloned())
    }

    /// What the engine is asked to load: the chosen model, or for a 詞 tune
    /// on the bundled model the bundled 詞 model (`store::model_for_form`), so
    /// the model bar, preloading and the fit check name the model that writes.
    pub fn load_spec(&self) -> LoadSpec {
        self.load_spec_for(&self.settings.form)
    }

    /// [`Self::load_spec`] for a poem of `form` (a history record's, on Re-run).
    fn load_spec_for(&self, form: &PoemForm) -> LoadSpec {
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
    fn gpu_name(&self, device: DeviceChoice) -> Option<String> {
        let DeviceChoice::Cuda(i) = device else {
            return None;
        };
        let m = self.latest_memory()?;
        crate::meter::gpu_for_ordinal(&m.gpus, i).map(|g| g.name.clone())
    }

    /// Precision "auto" on a GPU it has not measured for this model: ask the
    /// engine to time f32 and f16 once (before the job, which then runs in f16).
    fn measure_precision_if_new(&mut self, spec: &LoadSpec, batch: usize) {
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
    fn precisions_measured(&mut self, speeds: crate::engine::PrecisionSpeeds) {
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
    fn writing_model(&self, form: &PoemForm) -> PathBuf {
        model_for_form(&self.chosen_model(), form)
    }

    fn chosen_model(&self) -> PathBuf {
        if self.model_field.trim().is_empty() {
            bundled_model().unwrap_or_else(|| PathBuf::from("models/tang-poems"))
        } else {
            PathBuf::from(self.model_field.trim())
        }
    }

    /// Reads (once per model) the precision the checkpoint of the model that
    /// writes `form` stores its weights in, from the safetensors header, for
    /// Precision "auto".
    fn refresh_stored_precision(&mut self, form: &PoemForm) {
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

    fn form(&self) -> PoemForm {
        match self.form_choice {
            FormChoice::Free => PoemForm::Free,
            FormChoice::WuJue => PoemForm::WuJue,
            FormChoice::QiJue => PoemForm::QiJue,
            FormChoice::WuLv => PoemForm::WuLv,
            FormChoice::QiLv => PoemForm::QiLv,
            FormChoice::Acrostic => PoemForm::Acrostic(
                self.acrostic_heads
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect(),
            ),
            FormChoice::Ci => PoemForm::Ci(self.ci_tune.clone()),
        }
    }

    /// Shows `form` in the form picker (with its heads or tune).
    fn choose_form(&mut self, form: &PoemForm) {
        self.form_choice = FormChoice::of(form);
        if let PoemForm::Acrostic(h) = form {
            self.acrostic_heads = h.iter().collect();
        }
        if let PoemForm::Ci(tune) = form {
            self.ci_tune = tune.clone();
        }
    }

    /// Keeps the first `lines` lines of `record`'s poem as the prompt (where
    /// the user may edit them) and writes the rest again in its form, with
    /// its theme.
    pub fn keep_lines(&mut self, record: &PoemRecord, lines: usize) {
        self.prompt = super::keep_lines::kept_text(&record.text, lines);
        self.choose_form(&record.form);
        self.settings.poem_theme = record.verse.keywords.join(" ");
        self.generate();
    }

    fn send(&mut self, cmd: Command) {
        if let Err(e) = self.engine.send(cmd) {
            self.error = Some((ErrorKind::QueueFull, e.to_string()));
        }
    }

    /// Starts a generation with the current settings.
    pub fn generate(&mut self) {
        let form = self.form();
        if let PoemForm::Acrostic(h) = &form {
            let typed = format!("acrostic:{}", h.iter().collect::<String>());
            if let Err(e) = typed.parse::<PoemForm>() {
                self.error = Some((ErrorKind::BadRequest, e.to_string()));
                return;
            }
        }
        if !self.settings.lock_seed {
            self.settings.sampling.seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000);
        }
        let (prompt, sampling, variations) = (
            self.prompt.trim().to_string(),
            self.settings.sampling.clone(),
            self.settings.variations.clamp(1, 8),
        );
        let theme = match crate::poetry::keywords::parse_theme(&self.settings.poem_theme) {
            Ok(theme) => theme,
            Err(e) => {
                self.error = Some((
                    ErrorKind::BadRequest,
                    format!("invalid setting `keywords`: {e}"),
                ));
                return;
            }
        };
        let verse = crate::poetry::VerseRules {
            keywords: theme.words,
            ..self.settings.verse.clone()
        };
        self.start_job(prompt, form, sampling, variations, verse);
    }

    /// Writes the poem of `record` again: its prompt, form, own seed and
    /// settings, one variation, without changing the user's settings.
    pub fn rerun(&mut self, record: &PoemRecord) {
        self.start_job(
            record.prompt.clone(),
            record.form.clone(),
            record.sampling.clone(),
            1,
            record.verse_rules(),
        );
    }

    fn start_job(
        &mut self,
        prompt: String,
        form: PoemForm,
        sampling: crate::generate::SamplingParams,
        variations: usize,
        verse: crate::poetry::VerseRules,
    ) {
        let id = self.engine.next_request_id();
        let echoed = crate::generate::echoed_prompt(&prompt, &form);
        let fresh = vec![
            Card {
                prompt: echoed,
                ..Card::default()
            };
            variations
        ];
        let old = std::mem::replace(&mut self.cards, fresh);
        if old.iter().any(|c| !c.text.is_empty()) {
            self.replaced_cards = Some(old);
        }
        self.current = Some(id);
        self.error = None;
        // The model that writes this form (a Re-run's may not be the one chosen now).
        self.refresh_stored_precision(&form);
        let spec = self.load_spec_for(&form);
        self.measure_precision_if_new(&spec, variations);
        let job = GenerateJob {
            id,
            spec,
            prompt: Prompt::Text(prompt),
            form,
            variations,
            max_new_tokens: self.settings.max_tokens.max(1),
            sampling,
            verse,
        };
        if let Some(s) = &self.sampler {
            s.mark(MarkerKind::Generate, "generate");
        }
        self.sent = Some(job.clone());
        self.send(Command::Generate(job));
    }

    /// Stops the running generation (its text so far stays).
    pub fn stop(&mut self) {
        self.engine.cancel();
    }

    /// Frees the model and the device.
    pub fn release(&mut self) {
        if let Err(e) = self.engine.release() {
            self.error = Some((ErrorKind::QueueFull, e.to_string()));
        }
    }

    /// How long the last load took, ms.
    pub fn last_load_ms(&self) -> Option<f64> {
        self.last_load.as_ref().map(|l| l.load_ms)
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
    fn remember_model(&mut self, model: &std::path::Path) {
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

    /// Opens the system's folder picker without blocking the window; without a
    /// portal or dialog the path field above stays the way to choose.
    fn open_model_dialog(&mut self) {
        self.file_dialog(DialogPurpose::OpenModel);
    }

    /// Runs the system's file dialog for `purpose` on its own thread.
    fn file_dialog(&mut self, purpose: DialogPurpose) {
        if self.dialog.is_some() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let documents =
            directories::UserDirs::new().and_then(|d| d.document_dir().map(PathBuf::from));
        let dialog_purpose = purpose.clone();
        let spawned = std::thread::Builder::new()
            .name("versifier-file-dialog".into())
            .spawn(move || {
                let mut d = rfd::FileDialog::new();
                if let Some(dir) = documents {
                    d = d.set_directory(dir);
                }
                let picked = match &dialog_purpose {
                    DialogPurpose::OpenModel => {
                        d.set_title("Open a GPT-2 model folder").pick_folder()
                    }
                    DialogPurpose::Save { name, markdown, .. } => d
                        .set_title("Save")
                        .set_file_name(name)
                        .add_filter(
                            if *markdown { "Markdown" } else { "Text" },
                            &[if *markdown { "md" } else { "txt" }],
                        )
                        .save_file(),
                };
                let _ = tx.send(picked);
            });
        match spawned {
            Ok(handle) => self.dialog = Some((handle, purpose, rx)),
            Err(e) => self.notices.push(format!(
                "Could not open a file dialog ({e}); type the folder's path instead."
            )),
        }
    }

    fn poll_dialog(&mut self) {
        let Some((_, _, rx)) = &self.dialog else {
            return;
        };
        match rx.try_recv() {
            Ok(picked) => {
                let Some((handle, purpose, _)) = self.dialog.take() else {
                    return;
                };
                let _ = handle.join();
                match (purpose, picked) {
                    (DialogPurpose::OpenModel, Some(p)) => self.model_field = p.display().to_string(),
                    (DialogPurpose::OpenModel, None) => self.notices.push("No folder chosen (or no file dialog on this system): type the model folder's path in the Model field.".into()),
                    (DialogPurpose::Save { text, .. }, Some(p)) => self.write_file(&p, &text),
                    (DialogPurpose::Save { .. }, None) => {}
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                if let Some((handle, _, _)) = self.dialog.take() {
                    let _ = handle.join();
                }
            }
        }
    }

    /// Writes `text` to `path` atomically and says where it went.
    pub fn write_file(&mut self, path: &std::path::Path, text: &str) {
        self.notices.push(
            match crate::store::write_bytes_atomic(path, text.as_bytes()) {
                Ok(()) => format!("Saved {}.", path.display()),
                Err(e) => format!("Not saved: {e}"),
            },
        );
    }

    /// Handles every event that has arrived; never blocks.
    pub fn process_events(&mut self) {
        self.poll_dialog();
        while let Some(ev) = self.engine.try_recv() {
            self.apply(ev);
        }
    }

    /// Waits up to `timeout` for one engine event and applies it (tests, headless use).
    pub fn process_one_event_blocking(&mut self, timeout: Duration) -> bool {
        match self.engine.recv_timeout(timeout) {
            Some(ev) => {
                self.apply(ev);
                true
            }
            None => false,
        }
    }

    fn mark(&self, kind: MarkerKind, label: String) {
        if let Some(s) = &self.sampler {
            s.mark(kind, label);
        }
    }

    fn apply(&mut self, ev: Event) {
        match ev {
            Event::State(s) => self.state = s,
            Event::Loaded(r) => {
                self.mark(
                    MarkerKind::Load,
                    format!("load {:.2} s", r.load_ms / 1000.0),
                );
                self.remember_model(&r.spec.model);
                // A saved GPU this machine lacks: the engine fell back to the
                // CPU and said so; the Device control shows where poems run.
                if r.device != r.spec.device {
                    self.settings.device = r.device;
                }
                self.last_load = Some(r);
            }
            Event::Token {
                request,
                variation,
                text,
            } if Some(request) == self.current => {
                if let Some(c) = self.cards.get_mut(variation) {
                    c.text.push_str(&text);
                }
                if !text.is_empty() {
                    self.replaced_cards = None;
                }
            }
            Event::Token { .. } => {}
            Event::Done {
                request,
                generation,
            } if Some(request) == self.current => {
                self.kv_cache_bytes = generation.kv_cache_bytes;
                let unix_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let sent = self.sent.take();
                self.replaced_cards = None;
                for (i, (card, v)) in self
                    .cards
                    .iter_mut()
                    .zip(&generation.variations)
                    .enumerate()
                {
                    card.text = v.text.clone();
                    card.done = true;
                    card.unfinished = v.stop != Some(crate::generate::StopReason::Stop);
                    let Some(job) = &sent else { continue };
                    if v.text.is_empty() {
                        continue;
                    }
                    let prompt = match &job.prompt {
                        Prompt::Text(t) => t.clone(),
                        Prompt::Ids(_) => String::new(),
                    };
                    let record = PoemRecord {
                        prompt,
                        form: job.form.clone(),
                        text: format!("{}{}", card.prompt, v.text),
                        model: job.spec.model.display().to_string(),
                        // Variation i was drawn with seed + i: its own seed.
                        sampling: crate::generate::SamplingParams {
                            seed: job.sampling.seed.wrapping_add(i as u64),
                            ..job.sampling.clone()
                        },
                        unix_ms,
                        unfinished: card.unfinished,
                        verse: job.verse.clone(),
                        ci_rules: job.verse.ci_rules,
                    };
                    card.record = Some(record.clone());
                    self.history.push(record);
                }
                self.current = None;
                self.save_history();
            }
            Event::Done { .. } => {}
            Event::Released(r) => {
                self.mark(MarkerKind::Release, release_summary(&r));
                self.last_release = Some(r);
                self.release_at_unix_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                self.kv_cache_bytes = 0;
            }
            Event::Error {
                kind,
                message,
                partial,
                fit,
                ..
            } => {
                self.fit = fit;
                self.mark(MarkerKind::Error, message.clone());
                if let Some(p) = partial {
                    for (card, v) in self.cards.iter_mut().zip(&p.variations) {
                        card.text = v.text.clone();
                    }
                }
                // Nothing written: the poems the run replaced come back.
                if self.cards.iter().all(|c| c.text.is_empty()) {
                    self.cards = self.replaced_cards.take().unwrap_or_default();
                } else {
                    for c in self.cards.iter_mut().filter(|c| !c.done) {
                        c.unfinished = true;
                    }
                }
                self.replaced_cards = None;
                self.sent = None;
                for c in &mut self.cards {
                    c.done = true;
                }
                self.current = None;
                self.error = Some((kind, message));
            }
            Event::Notice(n) => self.notices.push(n),
            Event::PrecisionsMeasured(speeds) => self.precisions_measured(speeds),
            Event::Pong(_) => {}
            Event::IdleDeadline(d) => self.idle_left = d.map(|d| (d, Instant::now())),
        }
    }

    fn save_history(&mut self) {
        if let Some(store) = &self.store {
            if let Err(e) = store.save_history(&self.history) {
                self.notices
                    .push(format!("history not saved (kept in memory): {e}"));
            }
        }
    }

    /// Hands changed settings to the writer thread (which writes at most once a
    /// second and whatever is pending when the app closes); reports its errors.
    pub fn save_settings_if_changed(&mut self) {
        if let Some(w) = &self.settings_writer {
            for e in w.take_errors() {
                self.notices.push(format!("settings not saved: {e}"));
            }
            if self.settings != self.saved_settings {
                w.save(&self.settings);
                self.saved_settings = self.settings.clone();
            }
        }
    }

    /// One frame: events in, then the whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.process_events();
        self.settings.form = self.form();
        self.refresh_stored_precision(&self.settings.form.clone());
        let theme = match self.settings.theme.as_str() {
            "light" => egui::ThemePreference::Light,
            "dark" => egui::ThemePreference::Dark,
            _ => egui::ThemePreference::System,
        };
        if ui.ctx().options(|o| o.theme_preference) != theme {
            ui.ctx().set_theme(theme);
        }
        let generating = matches!(self.state, EngineState::Generating) || self.current.is_some();
        egui::Panel::top("model-bar").show(ui, |ui| self.model_bar(ui));
        // A narrow window gets a narrow memory strip (figures, Release; no plot).
        let narrow = ui.available_width() < 900.0;
        egui::Panel::right(if narrow { "meter-strip" } else { "meter" })
            .default_size(if narrow { 190.0 } else { 360.0 })
            .show(ui, |ui| {
                let mut view = self.meter_view();
                view.compact = narrow;
                let actions = super::meter_panel::show(&view, ui);
                for action in actions {
                    self.apply_meter_action(action);
                }
            });
        if self.error.is_some() || !self.notices.is_empty() {
            egui::Panel::bottom("messages").show(ui, |ui| self.messages(ui));
        }
        egui::CentralPanel::default().show(ui, |ui| self.writer(ui, generating));
        self.apply_yield_mode();
        self.save_settings_if_changed();
        // The countdown needs a tick even when nothing else happens.
        if self.idle_left.is_some() {
            ui.ctx().request_repaint_after(Duration::from_secs(1));
        }
    }

    fn model_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.label("Model");
            if self.model_editing {
                let field = ui.add(egui::TextEdit::singleline(&mut self.model_field).desired_width(220.0).hint_text("model folder"));
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
                    .on_hover_text(format!("{}{by_ci_model}\nClick to type another folder", writes.display()))
                    .clicked()
                {
                    self.model_editing = true;
                    self.model_focus_pending = true;
                }
            }
            if ui.button("Open…").on_hover_text("Choose a model folder").clicked() {
                self.open_model_dialog();
            }
            if ui.button("Bundled").clicked() {
                self.model_field = bundled_model().map(|p| p.display().to_string()).unwrap_or_default();
            }
            if !self.settings.recent_models.is_empty() {
                egui::ComboBox::from_label("Recent").selected_text("…").show_ui(ui, |ui| {
                    // The bundled model first, then the models that loaded.
                    if let Some(b) = bundled_model() {
                        if ui.selectable_label(false, "tang-poems (bundled)").clicked() {
                            self.model_field = b.display().to_string();
                        }
                    }
                    for p in self.settings.recent_models.clone() {
                        let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
                        if ui.selectable_label(false, name).on_hover_text(p.display().to_string()).clicked() {
                            self.model_field = p.display().to_string();
                        }
                    }
                });
            }
            if ui.button("Load").on_hover_text("Load the model now").clicked() {
                self.load_chosen_model();
            }
            // A narrow window puts device and precision on a row of their own.
            if ui.max_rect().width() < 900.0 {
                ui.end_row();
            } else {
                ui.separator();
            }
            // CUDA ordinals (what the engine opens), not NVML's numbering of every GPU.
            let gpus: Vec<(usize, String, u64)> = self
                .sampler
                .as_ref()
                .and_then(|s| s.history().latest().map(|l| l.gpus.iter().filter_map(|g| Some((crate::meter::cuda_ordinal_of(g.index)?, g.name.clone(), g.free_bytes))).collect()))
                .unwrap_or_default();
            ui.horizontal(|ui| {
            let device_label = ui.label("Device");
            egui::ComboBox::from_id_salt("device").selected_text(self.settings.device.to_string()).show_ui(ui, |ui| {
                ui.selectable_value(&mut self.settings.device, DeviceChoice::Cpu, "CPU");
                for (i, name, free) in &gpus {
                    let label = format!("cuda:{i} {name} ({} MiB free)", crate::mib(*free));
                    ui.selectable_value(&mut self.settings.device, DeviceChoice::Cuda(*i), label);
                }
            })
            .response
            .labelled_by(device_label.id);
            });
            ui.horizontal(|ui| {
            let precision_label = ui.label("Precision");
            let shown = if self.settings.precision_auto {
                format!("auto ({})", self.load_spec().precision)
            } else {
                self.settings.precision.to_string()
            };
            egui::ComboBox::from_id_salt("precision").selected_text(shown).show_ui(ui, |ui| {
                if ui.selectable_label(self.settings.precision_auto, "auto").clicked() {
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
        });
    }

    /// The prompt box; its first focus preloads the model.
    fn prompt_field(&mut self, ui: &mut egui::Ui) {
        ui.label("Prompt");
        let prompt = ui.add(
            egui::TextEdit::singleline(&mut self.prompt)
                .hint_text("春, 月, 山水 …")
                .desired_width(220.0)
                .font(egui::TextStyle::Heading),
        );
        let focused = prompt.has_focus();
        if focused && !self.prompt_had_focus && self.settings.preload_on_focus {
            // Preload so the first Generate does not wait.
            let spec = self.load_spec();
            self.send(Command::Prepare(spec));
        }
        self.prompt_had_focus = focused;
    }

    fn writer(&mut self, ui: &mut egui::Ui, generating: bool) {
        // Taken before any text field can swallow them.
        let shortcuts = ui.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter),
                i.consume_key(egui::Modifiers::NONE, egui::Key::Escape),
            )
        });
        if self.cards.iter().all(|c| c.text.is_empty()) && self.history.is_empty() {
            super::theme_field::first_launch_examples(
                ui,
                &mut self.prompt,
                &mut self.settings.poem_theme,
            );
        }
        ui.horizontal_wrapped(|ui| {
            // As tall as the fields are with any text, so typing moves nothing.
            ui.set_min_height(28.0);
            self.prompt_field(ui);
            // Read again when Generate is pressed; here only shown.
            super::theme_field::show(ui, &mut self.settings.poem_theme);
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
            if (go.clicked() || ctrl_enter) && !generating {
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
        ui.separator();
        ui.checkbox(&mut self.settings.show_marks, "平仄 marks")
            .on_hover_text(
            "Show each character's tone (平 仄, 中 either, ？ unknown), the rhyme and the verdict",
        );
        egui::ScrollArea::vertical().show(ui, |ui| {
            let mut rerun: Option<PoemRecord> = None;
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
                                        let report = match &card.record {
                                            Some(r) => crate::poetry::check_in_form(&full, &r.form),
                                            None => crate::poetry::check_poem(&full),
                                        };
                                        super::poem_marks::show(
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
                                            .on_hover_text("Save to a text file in the data folder")
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
                                                rerun = Some(record.clone());
                                            }
                                            if card.done {
                                                if let Some(n) =
                                                    super::keep_lines::keep_menu(ui, &record.text)
                                                {
                                                    keep = Some((record.clone(), n));
                                                }
                                            }
                                        }
                                        if card.unfinished && card.done {
                                            ui.label(egui::RichText::new("stopped").small().weak());
                                        }
                                    });
                                });
                            });
                    }
                });
            }
            if let Some(record) = rerun {
                self.rerun(&record);
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
    fn variation_budget(&mut self) -> (Option<u64>, usize) {
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

    /// Buttons for the remedies a refused or out-of-memory load allows.
    fn fit_options(&mut self, ui: &mut egui::Ui) {
        use crate::device::fit::FitOption;
        let options = self.fit.as_ref().map(|f| f.options.clone());
        match options {
            Some(options) => {
                for o in options {
                    let label = match &o {
                        FitOption::Precision {
                            precision,
                            need_bytes,
                        } => {
                            format!("Use {precision} ({} MiB)", crate::mib(*need_bytes))
                        }
                        FitOption::Variations { max, need_bytes } => {
                            format!("{max} variations ({} MiB)", crate::mib(*need_bytes))
                        }
                        FitOption::Context {
                            max_tokens,
                            need_bytes,
                        } => {
                            format!("{max_tokens} tokens ({} MiB)", crate::mib(*need_bytes))
                        }
                        FitOption::Cpu { need_bytes } => {
                            format!("Run on the CPU ({} MiB of RAM)", crate::mib(*need_bytes))
                        }
                    };
                    if ui.button(label).clicked() {
                        let s = &mut self.settings;
                        match o {
                            FitOption::Precision { precision, .. } => s.precision = precision,
                            FitOption::Variations { max, .. } => s.variations = max,
                            FitOption::Context { max_tokens, .. } => {
                                s.max_tokens = s.max_tokens.min(max_tokens)
                            }
                            FitOption::Cpu { .. } => s.device = DeviceChoice::Cpu,
                        }
                        self.generate();
                    }
                }
            }
            None => {
                if ui.button("Retry in f16").clicked() {
                    self.settings.precision = Precision::F16;
                    self.generate();
                }
                if ui.button("Retry on CPU").clicked() {
                    self.settings.device = DeviceChoice::Cpu;
                    self.generate();
                }
            }
        }
    }

    /// Search, re-run with the same seed, delete, export.
    fn history_panel(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.add(
                egui::TextEdit::singleline(&mut self.history_filter)
                    .hint_text("search")
                    .desired_width(160.0),
            );
            if ui
                .button("Export Markdown…")
                .on_hover_text("Save the entries shown (the search applies)")
                .clicked()
            {
                self.export_history(true);
            }
            if ui.button("Export text…").clicked() {
                self.export_history(false);
            }
        });
        if let Some((_, r)) = &self.deleted {
            let shown: String = r.text.chars().take(12).collect();
            let mut undo = false;
            ui.horizontal(|ui| {
                ui.label(egui::RichText::new(format!("Deleted {shown}…")).weak());
                undo = ui.small_button("Undo").clicked();
            });
            if undo {
                if let Some((i, r)) = self.deleted.take() {
                    self.history.insert(i.min(self.history.len()), r);
                    self.save_history();
                }
            }
        }
        let filter = self.history_filter.trim().to_string();
        let mut rerun = None;
        let mut delete = None;
        for (i, r) in self.history.iter().enumerate().rev().take(200) {
            if !r.matches(&filter) {
                continue;
            }
            ui.horizontal(|ui| {
                ui.label(
                    egui::RichText::new(format!(
                        "{} · {} · {}",
                        crate::store::date_text(r.unix_ms),
                        r.form.label(),
                        crate::store::model_name(&r.model)
                    ))
                    .small()
                    .weak(),
                );
                ui.label(&r.text);
                if r.unfinished {
                    ui.label(egui::RichText::new("stopped").small().weak());
                }
                if ui
                    .small_button("Re-run")
                    .on_hover_text(format!("seed {}", r.sampling.seed))
                    .clicked()
                {
                    rerun = Some(i);
                }
                if ui.small_button("Delete").clicked() {
                    delete = Some(i);
                }
            });
        }
        if let Some(i) = rerun {
            let r = self.history[i].clone();
            self.prompt = r.prompt.clone();
            self.choose_form(&r.form);
            self.rerun(&r);
        }
        if let Some(i) = delete {
            let r = self.history.remove(i);
            self.deleted = Some((i, r));
            self.save_history();
        }
    }

    /// Writes the history as Markdown or plain text next to the history file.
    /// The history entries the search shows, oldest first.
    fn filtered_history(&self) -> Vec<PoemRecord> {
        self.history
            .iter()
            .filter(|r| r.matches(&self.history_filter))
            .cloned()
            .collect()
    }

    /// Exports the entries the search shows through a save dialog (the
    /// documents folder first).
    pub fn export_history(&mut self, markdown: bool) {
        let text = crate::store::export_text(&self.filtered_history(), markdown);
        let name = if markdown { "poems.md" } else { "poems.txt" };
        self.file_dialog(DialogPurpose::Save {
            name: name.into(),
            text,
            markdown,
        });
    }

    /// Writes the entries the search shows to `path` (what the dialog does).
    pub fn export_history_to(&mut self, path: &std::path::Path, markdown: bool) {
        let text = crate::store::export_text(&self.filtered_history(), markdown);
        self.write_file(path, &text);
    }

    /// Sends a command, returning a message when the queue refused it.
    pub fn engine_send(&self, cmd: Command) -> Result<(), String> {
        self.engine.send(cmd).map_err(|e| e.to_string())
    }

    /// The message strip and, for a refused load, the options that fit.
    fn messages(&mut self, ui: &mut egui::Ui) {
        let view = super::messages::MessagesView {
            error: self.error.as_ref(),
            notices: &self.notices,
        };
        let actions = super::messages::show(ui, &view);
        if matches!(
            self.error.as_ref().map(|e| e.0),
            Some(ErrorKind::OutOfMemory | ErrorKind::DoesNotFit)
        ) {
            ui.horizontal_wrapped(|ui| self.fit_options(ui));
        }
        for action in actions {
            match action {
                super::messages::MessageAction::DismissError => self.error = None,
                super::messages::MessageAction::DismissNotice(n) => {
                    self.notices.retain(|x| x != &n);
                }
            }
        }
    }

    /// Yield mode: releases an idle model when other programs squeeze the GPU,
    /// saying why in the timeline and a notice.
    fn apply_yield_mode(&mut self) {
        let Some(keep_free) = self.settings.yield_below_mib else {
            return;
        };
        let latest = self.latest_memory();
        let Some(why) = super::yield_mode::yield_reason(
            &self.state,
            self.settings.device,
            latest.as_ref(),
            keep_free,
        ) else {
            return;
        };
        self.mark(MarkerKind::Release, "yield".into());
        self.release();
        // Until the engine says Releasing, do not ask again.
        self.state = EngineState::Releasing;
        self.notices.push(why);
    }

    /// What the memory panel draws, borrowed from the app's state.
    fn meter_view(&mut self) -> MeterView<'_> {
        let generating = matches!(self.state, EngineState::Generating);
        let kv_estimate_bytes = if generating {
            // The cache holds the prompt and the tokens asked for, not the
            // whole context: scale the full-context figure down to that.
            let (per_variation, _) = self.variation_budget();
            let n_positions = match &self.config_cache {
                Some((_, Some(cfg))) => cfg.n_positions.max(1) as u64,
                _ => 1,
            };
            let columns = (self.settings.max_tokens as u64 + 16).min(n_positions);
            per_variation.map(|p| p * columns / n_positions * self.cards.len() as u64)
        } else {
            None
        };
        MeterView {
            state: &self.state,
            device: self.settings.device,
            sampler: self.sampler.as_ref(),
            last_load: self.last_load.as_ref(),
            last_release: self.last_release.as_ref(),
            release_at_unix_ms: self.release_at_unix_ms,
            kv_estimate_bytes,
            compact: false,
            yield_below_mib: self.settings.yield_below_mib,
            kv_cache_bytes: self.kv_cache_bytes,
            idle_left: self.idle_left,
            pinned: self.pinned,
            idle_timeout_s: self.settings.idle_timeout_s,
        }
    }

    /// Carries out what the user did in the memory panel.
    pub fn apply_meter_action(&mut self, action: MeterAction) {
        match action {
            MeterAction::Release => self.release(),
            MeterAction::SetPinned(pinned) => {
                self.pinned = pinned;
                if let Err(e) = self.engine_send(Command::SetPinned(pinned)) {
                    self.notices.push(e);
                }
            }
            MeterAction::SetIdleTimeout(t) => {
                self.settings.idle_timeout_s = t;
                if let Err(e) =
                    self.engine_send(Command::SetIdleTimeout(t.map(Duration::from_secs)))
                {
                    self.notices.push(e);
                }
            }
            MeterAction::ExportTimeline => self.export_timeline(),
            MeterAction::SetYield(keep_free) => self.settings.yield_below_mib = keep_free,
        }
    }

    /// Writes the memory history as CSV next to the history file.
    pub fn export_timeline(&mut self) {
        let (Some(sampler), Some(store)) = (&self.sampler, &self.store) else {
            return;
        };
        let csv = sampler.history().to_csv();
        let dir = store
            .history_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        let path = dir.join(format!(
            "timeline-{}.csv",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        let result = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, csv));
        self.notices.push(match result {
            Ok(()) => format!("timeline written to {}", path.display()),
            Err(e) => format!("{}: {e}", path.display()),
        });
    }

    /// Saves a card through a save dialog: the poem with its details when it
    /// finished, else its text.
    fn save_card(&mut self, index: usize) {
        let Some(card) = self.cards.get(index) else {
            return;
        };
        let (name, text) = match &card.record {
            Some(r) => (
                format!("{}-{}.txt", r.prompt.trim(), r.sampling.seed),
                r.document(false),
            ),
            None => (
                format!("poem-{}.txt", index + 1),
                layout(&format!("{}{}", card.prompt, card.text)) + "\n",
            ),
        };
        self.file_dialog(DialogPurpose::Save {
            name,
            text,
            markdown: false,
        });
    }
}

/// The 詞 tune picker: every tune by its traditional name, its pattern and
/// rhymes on hover.
fn tune_picker(ui: &mut egui::Ui, tune: &mut String) {
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
fn verse_rules_row(
    ui: &mut egui::Ui,
    verse: &mut crate::poetry::VerseRules,
    form: &crate::poetry::forms::PoemForm,
) {
    use crate::poetry::{RulesMode, TemplateStart};
    ui.horizontal(|ui| {
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

/// Classical vertical layout: columns right to left, one line per column.
fn vertical(text: &str) -> String {
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

impl Drop for VersifierApp {
    fn drop(&mut self) {
        // A finished dialog thread is joined; one still waiting for the user is
        // left to end with the process (joining it would hang the exit).
        if let Some((handle, _, _)) = self.dialog.take() {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl eframe::App for VersifierApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        if let Some(r) = ui.ctx().input(|i| i.viewport().inner_rect) {
            let size = [r.width().round(), r.height().round()];
            if self.settings.window_size != Some(size) {
                self.settings.window_size = Some(size);
            }
        }
        self.show(ui);
        if let Some(launched) = super::LAUNCHED.get() {
            static FIRST_FRAME: std::sync::Once = std::sync::Once::new();
            FIRST_FRAME.call_once(|| {
                tracing::info!(
                    first_frame_ms = launched.elapsed().as_secs_f64() * 1000.0,
                    "first frame laid out"
                );
            });
        }
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.save_settings_if_changed();
    }
}

#[cfg(test)]
mod tests;
