//! `versifier bench`: load time, first-token latency, decode throughput at
//! several batch sizes and peak memory, as JSON. Speed targets live here, never
//! in timed tests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::device::{cpu_threads, open_device, DeviceChoice, DeviceError, Precision};
use crate::generate::{generate, GenerateError, GenerateRequest, SamplingParams};
use crate::meter::process_memory;
use crate::model::{load_model, synthetic, Gpt2Config, LoadError};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("unknown synthetic model `{0}`: expected gpt2-124m or tiny")]
    UnknownSynthetic(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A checkpoint folder, or `None` with `synthetic` set.
    pub model: Option<PathBuf>,
    /// `gpt2-124m` (real GPT-2 small shape) or `tiny`.
    pub synthetic: Option<String>,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub batches: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct DecodeFigure {
    pub batch: usize,
    /// Generated tokens per second, all variations together.
    pub tokens_per_s: f64,
    /// Decode steps per second (per-sequence speed).
    pub steps_per_s: f64,
    pub first_token_ms: f64,
    /// Where a decode step's time goes, in ms per step: the forward pass (with
    /// the logits' copy to the host) and sampling on the host.
    pub forward_ms_per_step: f64,
    pub sample_ms_per_step: f64,
    /// How the decode steps ran: absent on the CPU's growing-cache path; on the
    /// GPU's static path `eager`, `cuda_graph`, or `capture_failed` with the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner: Option<crate::model::StepRunner>,
    /// The static path's step kernels (`fused` or `composed`); absent with `runner`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_kernels: Option<crate::model::StepKernels>,
    /// Whether the steps drew their tokens on the device (`VERSIFIER_DEVICE_DRAWS=1`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub device_draws: bool,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub cpu_threads: usize,
    pub params: usize,
    pub load_ms: f64,
    pub first_token_ms: f64,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub decode: Vec<DecodeFigure>,
    pub rss_after_load_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub machine: MachineInfo,
}

#[derive(Debug, Serialize)]
pub struct MachineInfo {
    pub logical_cpus: usize,
    pub physical_cores: usize,
    pub os: &'static str,
    pub arch: &'static str,
}

use crate::mib_f64 as mib;

fn synthetic_config(name: &str) -> Result<Gpt2Config, BenchError> {
    match name {
        "gpt2-124m" => Ok(Gpt2Config::gpt2_124m()),
        "tiny" => Ok(Gpt2Config::small(512, 128, 64, 2, 4)),
        other => Err(BenchError::UnknownSynthetic(other.to_string())),
    }
}

/// Writes a synthetic checkpoint into `dir` (so loading goes through the real path).
pub fn write_synthetic(name: &str, dir: &Path) -> Result<Gpt2Config, BenchError> {
    let cfg = synthetic_config(name)?;
    let tensors = synthetic::synthetic_tensors(&cfg, 1234).map_err(|source| LoadError::Candle {
        path: dir.to_path_buf(),
        source,
    })?;
    synthetic::write_checkpoint(dir, &cfg, &tensors, candle_core::DType::F32)?;
    Ok(cfg)
}

/// Runs the benchmark.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let scratch;
    let (path, label) = match (&opts.model, &opts.synthetic) {
        (Some(p), _) => (p.clone(), p.display().to_string()),
        (None, Some(name)) => {
            scratch = std::env::temp_dir().join(format!(
                "versifier-bench-{}-{}",
                name,
                std::process::id()
            ));
            write_synthetic(name, &scratch)?;
            (scratch.clone(), format!("synthetic:{name}"))
        }
        (None, None) => (
            PathBuf::from("models/tang-poems"),
            "models/tang-poems".into(),
        ),
    };
    let device = open_device(opts.device)?;
    let t0 = Instant::now();
    let loaded = load_model(&path, &device, opts.precision.dtype())?;
    let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let rss_after_load = process_memory().map(|m| mib(m.rss_bytes));
    if opts.model.is_none() && opts.synthetic.is_some() {
        let _ = std::fs::remove_dir_all(&path);
    }
    let model = &loaded.model;
    let cfg = &loaded.config;
    let prompt: Vec<u32> = (0..opts.prompt_tokens.max(1))
        .map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32)
        .collect();
    let sampling = SamplingParams {
        seed: 7,
        ..SamplingParams::default()
    };
    // Warm-up: first kernels, allocator growth.
    let warm = GenerateRequest {
        prompt_ids: prompt.clone(),
        variations: 1,
        max_new_tokens: 4,
        sampling: sampling.clone(),
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    };
    generate(model, &warm, |_| &[], &|| false, |_| {})?;
    let mut decode = Vec::new();
    let mut first_token_ms = 0.0;
    for &batch in &opts.batches {
        let req = GenerateRequest {
            prompt_ids: prompt.clone(),
            variations: batch,
            max_new_tokens: opts.new_tokens,
            sampling: sampling.clone(),
            stop_ids: vec![],
            constraint: None,
            rows: Vec::new(),
        };
        if model.device().is_cuda() {
            // The static path sizes its buffers (and captures its graph) once per
            // batch shape, as compiled PyTorch does at its first call: warm that
            // up outside the timing, like the peers' warm-up runs.
            generate(model, &req, |_| &[], &|| false, |_| {})?;
        }
        let g = generate(model, &req, |_| &[], &|| false, |_| {})?;
        let steps = g.timings.steps_per_s();
        if batch == 1 {
            first_token_ms = g.timings.first_token_ms;
        }
        decode.push(DecodeFigure {
            batch,
            tokens_per_s: steps * batch as f64,
            steps_per_s: steps,
            first_token_ms: g.timings.first_token_ms,
            forward_ms_per_step: g.timings.forward_ms / g.timings.decode_steps.max(1) as f64,
            sample_ms_per_step: g.timings.sample_ms / g.timings.decode_steps.max(1) as f64,
            step_kernels: g.step_kernels,
            device_draws: g.device_draws,
            runner: g.step_runner.clone(),
        });
    }
    Ok(BenchReport {
        model: label,
        device: opts.device.to_string(),
        dtype: opts.precision.to_string(),
        cpu_threads: cpu_threads(),
        params: cfg.param_count(),
        load_ms,
        first_token_ms,
        prompt_tokens: prompt.len(),
        new_tokens: opts.new_tokens,
        decode,
        rss_after_load_mib: rss_after_load,
        peak_rss_mib: process_memory().and_then(|m| m.peak_rss_bytes).map(mib),
        machine: MachineInfo {
            logical_cpus: num_cpus::get(),
            physical_cores: num_cpus::get_physical(),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        },
    })
}

/// Options of `versifier bench --lifecycle`.
#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    pub model: PathBuf,
    pub device: DeviceChoice,
    pub precision: Precision,
    pub cycles: usize,
    pub new_tokens: usize,
}

/// One load -> generate -> release cycle, with this process's memory after each phase.
#[derive(Default, Debug, Serialize)]
pub struct LifecycleCycle {
    pub cycle: usize,
    pub load_ms: f64,
    pub gpu_after_load_mib: Option<f64>,
    pub generated_tokens: usize,
    pub generate_ms: f64,
    pub gpu_after_generate_mib: Option<f64>,
    pub release_ms: f64,
    pub gpu_before_release_mib: Option<f64>,
    pub gpu_after_release_mib: Option<f64>,
    pub context_reset: bool,
    pub rss_after_release_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LifecycleReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub gpu_name: Option<String>,
    /// This process's GPU memory before anything was loaded.
    pub gpu_baseline_mib: Option<f64>,
    pub rss_baseline_mib: Option<f64>,
    pub cycles: Vec<LifecycleCycle>,
    /// Largest GPU memory left after any release (0 = everything given back every time).
    pub max_gpu_after_release_mib: Option<f64>,
    pub last_rss_after_release_mib: Option<f64>,
    /// Growth of resident memory after release, in MiB per 100 cycles, from a
    /// least-squares line over the cycles after the first tenth (warm-up).
    pub rss_growth_mib_per_100_cycles: Option<f64>,
}

/// Slope of `ys` against their index, per 100 steps (least squares).
fn growth_per_100(ys: &[f64]) -> Option<f64> {
    let n = ys.len();
    if n < 2 {
        return None;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        num += (i as f64 - mean_x) * (y - mean_y);
        den += (i as f64 - mean_x).powi(2);
    }
    Some(num / den * 100.0)
}

/// Errors of the lifecycle benchmark.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("cycle {cycle}: {message}")]
    Failed { cycle: usize, message: String },
    #[error("cycle {cycle}: no {waiting_for} within {seconds} s")]
    Timeout {
        cycle: usize,
        waiting_for: &'static str,
        seconds: u64,
    },
}

/// Runs load -> generate -> release `cycles` times through the real engine and
/// reads this process's GPU memory (NVML) after every phase.
pub fn run_lifecycle(opts: &LifecycleOptions) -> Result<LifecycleReport, LifecycleError> {
    use crate::engine::{Command, Engine, EngineOptions, Event, GenerateJob, LoadSpec, Prompt};
    use crate::meter::GpuMeter;
    use std::time::Duration;

    let meter = GpuMeter::open();
    let nvml_index = match opts.device {
        DeviceChoice::Cuda(o) => Some(GpuMeter::nvml_index(o)),
        DeviceChoice::Cpu => None,
    };
    let gpu = |m: &GpuMeter| nvml_index.and_then(|i| m.read(i));
    let gpu_mib = |m: &GpuMeter| gpu(m).and_then(|g| g.process_bytes).map(mib);
    let gpu_name = gpu(&meter).map(|g| g.name);
    let gpu_baseline = gpu_mib(&meter);
    let rss_baseline = process_memory().map(|m| mib(m.rss_bytes));
    let engine = Engine::spawn(EngineOptions {
        idle_timeout: None,
        ..EngineOptions::default()
    })?;
    let spec = LoadSpec {
        model: opts.model.clone(),
        device: opts.device,
        precision: opts.precision,
    };
    const WAIT: Duration = Duration::from_secs(300);

    let mut cycles = Vec::with_capacity(opts.cycles);
    for cycle in 0..opts.cycles {
        let mut row = LifecycleCycle {
            cycle,
            ..LifecycleCycle::default()
        };
        engine.send(Command::Prepare(spec.clone()))?;
        wait_for(&engine, cycle, "load", WAIT, |ev| match ev {
            Event::Loaded(r) => Some(Ok(r.load_ms)),
            Event::Error { message, .. } => Some(Err(message.clone())),
            _ => None,
        })
        .map(|ms| row.load_ms = ms)?;
        row.gpu_after_load_mib = gpu_mib(&meter);
        let started = Instant::now();
        engine.send(Command::Generate(GenerateJob {
            verse: crate::poetry::VerseRules::default(),
            id: engine.next_request_id(),
            spec: spec.clone(),
            prompt: Prompt::Text(String::new()),
            form: Default::default(),
            variations: 1,
            max_new_tokens: opts.new_tokens,
            sampling: SamplingParams {
                seed: cycle as u64,
                ..SamplingParams::default()
            },
        }))?;
        row.generated_tokens = wait_for(&engine, cycle, "generation", WAIT, |ev| match ev {
            Event::Done { generation, .. } => Some(Ok(generation.generated_tokens())),
            Event::Error { message, .. } => Some(Err(message.clone())),
            _ => None,
        })?;
        row.generate_ms = started.elapsed().as_secs_f64() * 1000.0;
        row.gpu_after_generate_mib = gpu_mib(&meter);
        engine.send(Command::Release)?;
        let report = wait_for(&engine, cycle, "release report", WAIT, |ev| match ev {
            Event::Released(r) => Some(Ok(r.clone())),
            Event::Error { message, .. } => Some(Err(message.clone())),
            _ => None,
        })?;
        row.release_ms = report.took_ms;
        row.gpu_before_release_mib = report.gpu_before_bytes.map(mib);
        row.gpu_after_release_mib = report.gpu_after_bytes.map(mib).or_else(|| gpu_mib(&meter));
        row.context_reset = report.context_reset;
        row.rss_after_release_mib = report.rss_after_bytes.map(mib);
        cycles.push(row);
    }
    drop(engine);
    let max_after = cycles
        .iter()
        .filter_map(|c| c.gpu_after_release_mib)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let last_rss = cycles.last().and_then(|c| c.rss_after_release_mib);
    let rss: Vec<f64> = cycles
        .iter()
        .filter_map(|c| c.rss_after_release_mib)
        .collect();
    let growth = growth_per_100(&rss[(rss.len() / 10).min(rss.len().saturating_sub(2))..]);
    Ok(LifecycleReport {
        model: opts.model.display().to_string(),
        device: opts.device.to_string(),
        dtype: opts.precision.to_string(),
        gpu_name,
        gpu_baseline_mib: gpu_baseline,
        rss_baseline_mib: rss_baseline,
        cycles,
        max_gpu_after_release_mib: max_after,
        last_rss_after_release_mib: last_rss,
        rss_growth_mib_per_100_cycles: growth,
    })
}

fn wait_for<T>(
    engine: &crate::engine::Engine,
    cycle: usize,
    waiting_for: &'static str,
    limit: std::time::Duration,
    mut pick: impl FnMut(&crate::engine::Event) -> Option<Result<T, String>>,
) -> Result<T, LifecycleError> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(ev) = engine.recv_timeout(left) else {
            return Err(LifecycleError::Timeout {
                cycle,
                waiting_for,
                seconds: limit.as_secs(),
            });
        };
        match pick(&ev) {
            Some(Ok(v)) => return Ok(v),
            Some(Err(message)) => return Err(LifecycleError::Failed { cycle, message }),
            None => {}
        }
    }
}
