//! `versifier bench`: load time, first-token latency, decode throughput at
//! several batch sizes and peak memory, as JSON. Speed targets live here, never
//! in timed tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use super::device::{cpu_threads, open_device, DeviceChoice, DeviceError, Precision};
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

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

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
    let tensors = synthetic::synthetic_tensors(&cfg, 1234).map_err(|source| LoadError::Candle { path: dir.to_path_buf(), source })?;
    synthetic::write_checkpoint(dir, &cfg, &tensors, candle_core::DType::F32)?;
    Ok(cfg)
}

/// Runs the benchmark.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let scratch;
    let (path, label) = match (&opts.model, &opts.synthetic) {
        (Some(p), _) => (p.clone(), p.display().to_string()),
        (None, Some(name)) => {
            scratch = std::env::temp_dir().join(format!("versifier-bench-{}-{}", name, std::process::id()));
            write_synthetic(name, &scratch)?;
            (scratch.clone(), format!("synthetic:{name}"))
        }
        (None, None) => (PathBuf::from("models/tang-poems"), "models/tang-poems".into()),
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
    let prompt: Vec<u32> = (0..opts.prompt_tokens.max(1)).map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32).collect();
    let cancel = AtomicBool::new(false);
    let sampling = SamplingParams { seed: 7, ..SamplingParams::default() };
    // Warm-up: first kernels, allocator growth.
    let warm = GenerateRequest { prompt_ids: prompt.clone(), variations: 1, max_new_tokens: 4, sampling: sampling.clone(), stop_ids: vec![] };
    generate(model, &warm, |_| &[], &cancel, |_| {})?;
    let mut decode = Vec::new();
    let mut first_token_ms = 0.0;
    for &batch in &opts.batches {
        let req = GenerateRequest {
            prompt_ids: prompt.clone(),
            variations: batch,
            max_new_tokens: opts.new_tokens,
            sampling: sampling.clone(),
            stop_ids: vec![],
        };
        let g = generate(model, &req, |_| &[], &cancel, |_| {})?;
        let steps = g.timings.steps_per_s();
        if batch == 1 {
            first_token_ms = g.timings.first_token_ms;
        }
        decode.push(DecodeFigure {
            batch,
            tokens_per_s: steps * batch as f64,
            steps_per_s: steps,
            first_token_ms: g.timings.first_token_ms,
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
        peak_rss_mib: process_memory().map(|m| mib(m.peak_rss_bytes)),
        machine: MachineInfo {
            logical_cpus: num_cpus::get(),
            physical_cores: num_cpus::get_physical(),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        },
    })
}
