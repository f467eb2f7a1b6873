//! The engine's message protocol: commands in, events out. The UI and the CLI
//! talk to the model only through these.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::device::fit::FitRefusal;
use crate::device::{DeviceChoice, Precision, PrecisionSpeeds};
use crate::generate::{Generation, SamplingParams};

/// Identifies one generation request in the events it causes.
pub type RequestId = u64;

/// Which model to have loaded, where, in what precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadSpec {
    pub model: PathBuf,
    pub device: DeviceChoice,
    pub precision: Precision,
}

pub use crate::generate::Prompt;

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateJob {
    pub id: RequestId,
    /// The model to generate with; loaded first if it is not the one in memory.
    pub spec: LoadSpec,
    pub prompt: Prompt,
    /// Poem form enforced while decoding (text prompts only).
    pub form: crate::poetry::forms::PoemForm,
    pub variations: usize,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Rhyme and tones enforced for the regulated forms (strict by default).
    pub verse: crate::poetry::VerseRules,
}

/// What the engine is told to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Load a model without generating (preload when the prompt box gets focus);
    /// a no-op when that model is already loaded.
    Prepare(LoadSpec),
    /// Generate, loading the job's model first when needed. Jobs run in order.
    /// A 詞 tune asked of the bundled model is written by the bundled 詞
    /// model (`store::model_for_form`, applied when the job is sent).
    Generate(GenerateJob),
    /// Hot swap: load this model beside the current one on a loader thread while
    /// the current one keeps serving, then switch between requests. If the new
    /// model fails to load, the current one stays (rollback) and the error is
    /// reported. If both cannot fit, the current one is released first (said in a
    /// notice).
    Swap(LoadSpec),
    /// Free the model, its caches and the device, and reset the CUDA context, so
    /// the process holds no GPU memory. A generation in progress is stopped first.
    Release,
    /// Unload after this long without work; `None` never unloads.
    SetIdleTimeout(Option<Duration>),
    /// While pinned, the idle timer never unloads the model.
    SetPinned(bool),
    /// Re-evaluate timers now (sent by tests that move an injected clock).
    Tick,
    /// Answered at once with `Event::Pong` carrying the same number: a barrier
    /// for a client that needs every earlier command handled.
    Ping(u64),
    /// Precision "auto" on a GPU: time decoding in f32 and in f16 for this
    /// model and batch (loading each in turn), answer with
    /// `Event::PrecisionsMeasured`. f16 stays loaded.
    MeasurePrecisions { spec: LoadSpec, batch: usize },
    /// Stop the thread (after releasing everything).
    Shutdown,
    /// Panics inside the job boundary. Exists so tests can prove that a panic in
    /// load or generate is caught, reported, and leaves the engine Unloaded and usable.
    InjectPanic,
}

/// What the engine is doing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EngineState {
    Unloaded,
    Loading { progress: f32 },
    Ready,
    Generating,
    Releasing,
}

/// Why a release happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The user pressed Release (or a client sent `Command::Release`).
    Requested,
    /// The idle timer fired.
    IdleTimeout,
    /// A different model was asked for.
    ModelChange,
    /// An error (out of memory, a caught panic) left the engine needing a clean slate.
    AfterError,
    /// The engine is shutting down.
    Shutdown,
}

/// Measured cost of one load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub spec: LoadSpec,
    /// Where the model actually went (the CPU when a CUDA request fell back).
    pub device: DeviceChoice,
    pub load_ms: f64,
    pub params: usize,
    pub weights_bytes: usize,
    /// GPU memory of this process before and after the load (NVML), when measurable.
    pub gpu_before_bytes: Option<u64>,
    pub gpu_after_bytes: Option<u64>,
    /// Resident memory before and after the load.
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
}

/// Checked result of one release, read from NVML and /proc, not assumed.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub reason: ReleaseReason,
    pub device: DeviceChoice,
    pub took_ms: f64,
    /// This process's memory on the GPU before and after (NVML); `None` when not measurable.
    pub gpu_before_bytes: Option<u64>,
    pub gpu_after_bytes: Option<u64>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// Whether the CUDA primary context was reset (CUDA devices only).
    pub context_reset: bool,
    /// What still holds memory, if anything could be named.
    pub still_held: Option<String>,
}

impl ReleaseReport {
    /// GPU bytes given back, when measured.
    pub fn gpu_returned_bytes(&self) -> Option<u64> {
        Some(self.gpu_before_bytes?.saturating_sub(self.gpu_after_bytes?))
    }
}

/// Kinds of errors the UI offers different remedies for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The model folder or its files are bad.
    BadModel,
    /// The device could not be opened.
    Device,
    /// The GPU ran out of memory (the engine released everything).
    OutOfMemory,
    /// The request itself was invalid (settings, prompt characters).
    BadRequest,
    /// The command queue was full; the command was dropped.
    QueueFull,
    /// The load would not fit in the free memory; see the event's `fit`.
    DoesNotFit,
    /// A bug: a panic caught at the engine boundary; the engine reset to Unloaded.
    Internal,
    /// Generation failed part-way (partial output is in the event).
    Generation,
}

/// What the engine reports.
#[derive(Debug, Clone)]
pub enum Event {
    State(EngineState),
    Loaded(LoadReport),
    Token {
        request: RequestId,
        variation: usize,
        text: String,
    },
    Done {
        request: RequestId,
        generation: Generation,
    },
    Released(ReleaseReport),
    Error {
        request: Option<RequestId>,
        kind: ErrorKind,
        message: String,
        /// What was written before a generation failed.
        partial: Option<Generation>,
        /// For `DoesNotFit`: the numbers and the options that would fit.
        fit: Option<FitRefusal>,
    },
    /// The answer to `Command::Ping`.
    Pong(u64),
    /// Something the user should know that is not an error (CPU fallback, a swap
    /// that had to release first).
    Notice(String),
    /// The answer to `Command::MeasurePrecisions`.
    PrecisionsMeasured(PrecisionSpeeds),
    /// The idle timer's remaining time changed meaningfully (after work or a setting).
    IdleDeadline(Option<Duration>),
}
