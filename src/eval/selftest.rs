//! `versifier selftest`: checks this build's numerics on a chosen device against
//! reference outputs of Hugging Face transformers (the conformance fixtures in
//! `tests/fixtures/`): full logits, greedy continuation, left-padded batch.
//! Also the trainer's fused AdamW kernels against AdamW as tensor ops. This
//! is how the CUDA path is verified on a GPU machine that has no Rust.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::device::{open_device, DeviceChoice, DeviceError, Precision};
use std::sync::Arc;

use crate::generate::device_draw::{
    self, check_device_draws, DeviceDrawCheck, DEVICE_DRAW_AGREEMENT,
};
use crate::generate::{
    generate_on, DecodePath, DeviceSampler, DrawRow, DrawSettings, GenerateError, GenerateRequest,
    SamplingParams,
};
use crate::model::{
    check_fused_ops, load_model, static_columns, ForwardError, FusedOpCheck, Gpt2, GraphMode,
    LoadError, StaticDecoder, StepKernels, StepRunner, TokenBatch,
};
use crate::train::{check_fused_adamw, FusedAdamwCheck};

#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: {problem}")]
    Reference { path: PathBuf, problem: String },
    #[error("{fixture}: {source}")]
    Run {
        fixture: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The result for one fixture.
#[derive(Debug, Serialize)]
pub struct FixtureResult {
    pub fixture: String,
    pub max_logit_diff: f32,
    pub max_batch_logit_diff: f32,
    /// The left-padded batch through the static-shape prompt pass (the GPU's path).
    pub max_static_batch_logit_diff: f32,
    /// Greedy continuation on the static path (CUDA graphs where the device has them).
    pub greedy_matches: bool,
    /// How the static path's decode steps ran.
    pub step_runner: Option<StepRunner>,
    /// The growing-cache path gives the same greedy ids as the static path.
    pub paths_agree: bool,
    /// Largest logit difference between decode steps through the fused kernels
    /// and through candle's composed ones (same prompts, same tokens fed, no
    /// graphs for the composed ones; the fused ones captured and replayed as
    /// a CUDA graph where the device has graphs): checks the fused kernels on
    /// this device as they run in use.
    pub max_fused_step_logit_diff: f32,
    /// How the fused steps ran (`cuda_graph` on a GPU, `eager` on the CPU).
    pub fused_step_runner: StepRunner,
    /// Why the fused kernels failed to run here (the decoder then fell back
    /// to the composed ones); a failure of the check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused_failure: Option<String>,
    /// Sampled decode steps of the fixture's batch with the tokens drawn on
    /// the device (inside the steps, captured as a CUDA graph where the
    /// device has graphs), each against the host reference's draw from the
    /// same step's logits: how many draws there were and how many agreed.
    pub device_draw_steps: DrawAgreement,
    pub passed: bool,
}

/// Draws made on the device and how many the host reference made too.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DrawAgreement {
    pub draws: usize,
    pub agreeing: usize,
}

impl DrawAgreement {
    /// At most one draw in a hundred, or one, may differ: a near-tie that the
    /// device's `expf` rounds the other way.
    pub fn passed(&self) -> bool {
        let differ = self.draws - self.agreeing;
        self.draws > 0
            && (differ <= 1 || self.agreeing as f64 >= DEVICE_DRAW_AGREEMENT * self.draws as f64)
    }
}

#[derive(Debug, Serialize)]
pub struct SelftestReport {
    pub device: String,
    pub dtype: String,
    /// Largest allowed logit difference: absolute for f32, relative to the largest
    /// reference logit for f16/bf16.
    pub tolerance: f32,
    pub fixtures: Vec<FixtureResult>,
    /// Each fused decode kernel against the composed ops it replaces, on this
    /// device in this dtype (which kernel is wrong, if one is).
    pub fused_ops: Vec<FusedOpCheck>,
    /// The trainer's fused AdamW kernels against AdamW as tensor ops, on
    /// this device (f32 whatever the dtype asked for).
    pub fused_adamw: Option<FusedAdamwCheck>,
    /// The device draw (`VERSIFIER_DEVICE_DRAWS=1`) against its host
    /// reference, on this device (f32 logits whatever the dtype).
    pub device_draws: Option<DeviceDrawCheck>,
    /// Checks that failed to run, each with its error (absent checks above).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_run: Vec<String>,
    pub passed: bool,
}

/// Allowed logit difference: 1e-4 absolute in f32; for the half types, relative
/// to the largest reference logit (f16 keeps ~3.3 significant digits, bf16 ~2.4).
pub fn tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-4,
        Precision::F16 => 5e-3,
        Precision::Bf16 => 3e-2,
    }
}

/// Allowed difference between a fused decode kernel and the composed ops,
/// relative to the largest composed value: both accumulate in f32 where it
/// matters, the composed ops round to the dtype between ops.
pub fn fused_op_tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::F16 => 4e-3,
        Precision::Bf16 => 3e-2,
    }
}

struct Reference {
    prompt_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
    batch_prompts: Vec<Vec<u32>>,
    batch_last_logits: Vec<Vec<f32>>,
}

fn read_reference(path: &Path) -> Result<Reference, SelftestError> {
    let bad = |problem: String| SelftestError::Reference {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let ids = |v: &serde_json::Value, f: &str| -> Result<Vec<u32>, SelftestError> {
        v.as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as u32)).collect())
            .ok_or_else(|| bad(format!("`{f}` is not a list of ids")))
    };
    let mat = |v: &serde_json::Value, f: &str| -> Result<Vec<Vec<f32>>, SelftestError> {
        v.as_array()
            .and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .and_then(|r| r.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    })
                    .collect()
            })
            .ok_or_else(|| bad(format!("`{f}` is not a matrix")))
    };
    let batch_prompts = v["batch_prompts"]
        .as_array()
        .ok_or_else(|| bad("`batch_prompts` missing".into()))?
        .iter()
        .map(|p| ids(p, "batch_prompts"))
        .collect::<Result<_, _>>()?;
    Ok(Reference {
        prompt_ids: ids(&v["prompt_ids"], "prompt_ids")?,
        logits: mat(&v["logits"], "logits")?,
        greedy_ids: ids(&v["greedy_ids"], "greedy_ids")?,
        batch_prompts,
        batch_last_logits: mat(&v["batch_last_logits"], "batch_last_logits")?,
    })
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.len() != y.len() {
                return f32::INFINITY;
            }
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

/// Decodes `prompts` for up to `steps` greedy steps twice on the static path,
/// through candle's composed kernels and through the fused ones, feeding both
/// the composed path's tokens; returns the largest logit difference, why the
/// fused kernels could not run if they could not, and how the fused steps ran.
fn fused_step_diff(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Result<(f32, Option<String>, StepRunner), ForwardError> {
    let padded = TokenBatch::left_padded(prompts, 0);
    let n_positions = model.config().n_positions;
    let steps = steps.min(n_positions.saturating_sub(padded.len));
    let columns = static_columns(padded.len, steps, n_positions);
    let open = |kernels, mode| -> Result<StaticDecoder, ForwardError> {
        let mut d = StaticDecoder::new(model, prompts.len(), columns, mode)?;
        d.set_kernels(kernels)?;
        Ok(d)
    };
    // The reference steps eagerly; the fused steps as they would run in use:
    // captured as a CUDA graph and replayed where the device has graphs.
    let mut composed = open(StepKernels::Composed, GraphMode::Eager)?;
    let mut fused = open(StepKernels::Fused, GraphMode::Capture)?;
    let mut logits = composed.prefill(model, &padded)?;
    fused.prefill(model, &padded)?;
    let mut worst = 0.0f32;
    for _ in 0..steps {
        let ids = logits
            .iter()
            .map(|row| {
                (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
            })
            .collect();
        let input = TokenBatch::step(ids, vec![true; prompts.len()]);
        let a = composed.step(model, &input)?;
        let b = fused.step(model, &input)?;
        worst = worst.max(max_diff(&a, &b));
        logits = a;
    }
    Ok((
        worst,
        fused.fused_failure().map(str::to_owned),
        fused.runner(),
    ))
}

/// Decodes `prompts` for `steps` sampled steps (the app's settings) with the
/// tokens drawn on the device inside each step, and beside it, on a decoder
/// without the draw, the host reference's draw from the same step's logits;
/// both are fed the device's tokens, so one disagreement does not change the
/// steps after it.
fn device_draw_steps(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Result<DrawAgreement, GenerateError> {
    let padded = TokenBatch::left_padded(prompts, 0);
    let (b, vocab) = (prompts.len(), model.config().vocab_size);
    let n_positions = model.config().n_positions;
    let steps = steps.min(n_positions.saturating_sub(padded.len));
    let columns = static_columns(padded.len, steps, n_positions);
    let settings = DrawSettings::of(&SamplingParams::default(), vocab).map_err(|problem| {
        GenerateError::Invalid {
            field: "sampling",
            problem,
        }
    })?;
    let sampler = Arc::new(DeviceSampler::new(model.device(), b, vocab)?);
    let mut drawing = StaticDecoder::new(model, b, columns, GraphMode::Capture)?;
    drawing.set_tail(Some(sampler.clone()));
    let mut plain = StaticDecoder::new(model, b, columns, GraphMode::Eager)?;
    let mut logits = plain.prefill(model, &padded)?;
    drawing.prefill(model, &padded)?;
    let mut contexts = prompts.to_vec();
    let rows = |draw: usize| -> Vec<DrawRow> {
        (0..b)
            .map(|r| DrawRow {
                settings,
                seed: 77 + r as u64,
                draw: draw as u32,
                active: true,
            })
            .collect()
    };
    let reference = |logits: &[Vec<f32>], contexts: &[Vec<u32>], draw: usize| {
        let rows = rows(draw);
        (0..b)
            .map(|r| {
                let seen = device_draw::bits_of(contexts[r].iter().copied(), vocab);
                device_draw::draw_row(
                    &logits[r],
                    &rows[r],
                    &seen,
                    &device_draw::all_allowed(vocab),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut ids: Vec<u32> = reference(&logits, &contexts, 0)
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut agreement = DrawAgreement {
        draws: 0,
        agreeing: 0,
    };
    for draw in 1..steps {
        for (c, &id) in contexts.iter_mut().zip(&ids) {
            c.push(id);
        }
        if draw == 1 {
            let refs: Vec<&[u32]> = contexts.iter().map(Vec::as_slice).collect();
            sampler.start(&rows(draw), &refs)?;
        } else {
            sampler.prepare(&rows(draw), None)?;
        }
        let input = TokenBatch::step(ids.clone(), vec![true; b]);
        logits = plain.step(model, &input)?;
        drawing.step_on_device(model, &input)?;
        let got = sampler.take_ids()?;
        let want = reference(&logits, &contexts, draw);
        for (r, (g, w)) in got.iter().zip(want).enumerate() {
            agreement.draws += 1;
            agreement.agreeing += usize::from(device_draw::drawn(*g) == w);
            ids[r] = device_draw::drawn(*g).or(w)?;
        }
    }
    Ok(agreement)
}

/// The conformance part of one fixture: the model against transformers'
/// logits, the batched and static prompt passes, greedy decoding on both paths.
fn conformance(
    name: &str,
    m: &crate::model::LoadedModel,
    r: &Reference,
) -> Result<FixtureResult, SelftestError> {
    let run = |e: Box<dyn std::error::Error + Send + Sync>| SelftestError::Run {
        fixture: name.to_owned(),
        source: e,
    };
    let to_rows = |t: candle_core::Tensor| -> Result<Vec<Vec<f32>>, candle_core::Error> {
        t.to_dtype(candle_core::DType::F32)?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec2()
    };
    let mut cache = m.model.new_cache(1);
    let logits = m
        .model
        .forward(
            &TokenBatch::left_padded(std::slice::from_ref(&r.prompt_ids), 0),
            &mut cache,
        )
        .and_then(|l| Ok(to_rows(l.squeeze(0)?)?))
        .map_err(|e| run(e.into()))?;
    let mut cache = m.model.new_cache(r.batch_prompts.len());
    let batch = m
        .model
        .forward_last(&TokenBatch::left_padded(&r.batch_prompts, 0), &mut cache)
        .and_then(|l| Ok(to_rows(l)?))
        .map_err(|e| run(e.into()))?;
    let req = GenerateRequest {
        prompt_ids: r.prompt_ids.clone(),
        variations: 1,
        max_new_tokens: r.greedy_ids.len(),
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    };
    let rows = r.batch_prompts.len();
    let padded = TokenBatch::left_padded(&r.batch_prompts, 0);
    let columns = static_columns(padded.len, 1, m.config.n_positions);
    let static_batch = StaticDecoder::new(&m.model, rows, columns, GraphMode::Eager)
        .and_then(|mut d| d.prefill(&m.model, &padded))
        .map_err(|e| run(e.into()))?;
    let greedy = |path| {
        generate_on(path, &m.model, &req, |_| &[], &|| false, |_| {}).map_err(|e| run(e.into()))
    };
    let g = greedy(DecodePath::Static(GraphMode::Capture))?;
    let growing = greedy(DecodePath::Growing)?;
    Ok(FixtureResult {
        fixture: name.to_owned(),
        max_logit_diff: max_diff(&logits, &r.logits),
        max_batch_logit_diff: max_diff(&batch, &r.batch_last_logits),
        max_static_batch_logit_diff: max_diff(&static_batch, &r.batch_last_logits),
        greedy_matches: g.variations[0].ids == r.greedy_ids,
        step_runner: g.step_runner,
        paths_agree: g.variations[0].ids == growing.variations[0].ids,
        max_fused_step_logit_diff: f32::INFINITY,
        fused_step_runner: StepRunner::Eager,
        fused_failure: Some("not run".into()),
        device_draw_steps: DrawAgreement {
            draws: 0,
            agreeing: 0,
        },
        passed: false,
    })
}

/// Whether a fixture passed every check, at tolerance `tol` (scaled to the
/// largest reference logit in half precision, where a greedy argmax may
/// also flip a near-tie: there only logits are judged).
fn fixture_passed(f: &FixtureResult, r: &Reference, precision: Precision, tol: f32) -> bool {
    let scale = if precision == Precision::F32 {
        1.0
    } else {
        r.logits
            .iter()
            .flatten()
            .fold(0.0f32, |m, x| m.max(x.abs()))
            .max(1.0)
    };
    f.max_logit_diff < tol * scale
        && f.max_batch_logit_diff < tol * scale
        && f.max_static_batch_logit_diff < tol * scale
        && f.max_fused_step_logit_diff < tol * scale
        && f.fused_failure.is_none()
        && f.device_draw_steps.passed()
        && (f.greedy_matches || precision != Precision::F32)
        && (f.paths_agree || precision != Precision::F32)
}

/// Runs every fixture folder under `fixtures` (those with a `reference.json`).
///
/// Conformance first, then the kernels written for this project, the newest
/// last: the fused decode steps and ops, the fused AdamW, the device draw. A
/// check of those that fails to run is recorded in the report (`not_run`) and
/// the rest go on, so a kernel that faults (which leaves every later CUDA
/// call failing) still leaves the figures before it.
pub fn run_selftest(
    fixtures: &Path,
    device: DeviceChoice,
    precision: Precision,
) -> Result<SelftestReport, SelftestError> {
    let dev = open_device(device)?;
    let tol = tolerance(precision);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .map_err(|source| LoadError::Io {
            path: fixtures.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(SelftestError::Reference {
            path: fixtures.to_path_buf(),
            problem: "no fixture folders with reference.json".into(),
        });
    }
    let mut loaded = Vec::new();
    let mut results = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let r = read_reference(&dir.join("reference.json"))?;
        let m = load_model(&dir, &dev, precision.dtype())?;
        results.push(conformance(&name, &m, &r)?);
        loaded.push((m, r));
    }
    let mut not_run = Vec::new();
    for (f, (m, r)) in results.iter_mut().zip(&loaded) {
        match fused_step_diff(&m.model, &r.batch_prompts, 8) {
            Ok((diff, failure, runner)) => {
                f.max_fused_step_logit_diff = diff;
                f.fused_failure = failure;
                f.fused_step_runner = runner;
            }
            Err(e) => {
                f.fused_failure = Some(e.to_string());
                not_run.push(format!("{}: fused decode steps: {e}", f.fixture));
            }
        }
    }
    let fused_ops = check_fused_ops(&dev, precision.dtype());
    let ops_tolerance = fused_op_tolerance(precision);
    let fused_adamw = check_fused_adamw(&dev)
        .map_err(|e| not_run.push(format!("fused AdamW: {e}")))
        .ok();
    for (f, (m, r)) in results.iter_mut().zip(&loaded) {
        match device_draw_steps(&m.model, &r.batch_prompts, 16) {
            Ok(agreement) => f.device_draw_steps = agreement,
            Err(e) => not_run.push(format!("{}: device draw steps: {e}", f.fixture)),
        }
    }
    let device_draws = check_device_draws(&dev)
        .map_err(|e| not_run.push(format!("device draw: {e}")))
        .ok();
    for (f, (_, r)) in results.iter_mut().zip(&loaded) {
        f.passed = fixture_passed(f, r, precision, tol);
    }
    let passed = results.iter().all(|r| r.passed)
        && fused_ops.iter().all(|c| c.passed(ops_tolerance))
        && fused_adamw.as_ref().is_some_and(|c| c.passed)
        && device_draws.as_ref().is_some_and(|c| c.passed)
        && not_run.is_empty();
    Ok(SelftestReport {
        device: device.to_string(),
        dtype: precision.to_string(),
        tolerance: tol,
        fixtures: results,
        fused_ops,
        fused_adamw,
        device_draws,
        not_run,
        passed,
    })
}
