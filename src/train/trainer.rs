//! `versifier train`: a GPT-2 trained on candle from a prepared corpus, with
//! AdamW, linear warm-up then cosine decay, gradient clipping, a deterministic
//! seed, evaluation on the held-out poems, checkpoints and resume. The output
//! folder is an ordinary Hugging Face GPT-2 checkpoint (`config.json`,
//! `model.safetensors`, `vocab.txt`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::adamw::AdamW;
use super::vocab::CharVocab;
use crate::device::{open_device, DeviceChoice, DeviceError, Precision};
use crate::model::{load_named_tensors, synthetic, Gpt2, Gpt2Config, LoadError, ModelFiles};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Corpus { path: PathBuf, problem: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A model folder could not be read (`init_from`) or written.
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error("training step {step}: {source}")]
    Step {
        step: usize,
        #[source]
        source: candle_core::Error,
    },
    #[error("invalid setting `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("{path}: cannot resume: {problem}")]
    Resume { path: PathBuf, problem: String },
    #[error("{path}: cannot fine-tune from this model: {problem}")]
    InitFrom { path: PathBuf, problem: String },
}

/// Asks a running [`train`] to stop after the step it is on: it saves a
/// checkpoint, reports [`TrainProgress::Stopped`] and ends as `stop_after`
/// would (Ctrl+C in `versifier train`). Clones share one request.
#[derive(Debug, Clone, Default)]
pub struct StopRequest(Arc<AtomicBool>);

impl StopRequest {
    /// Asks the run to stop; it notices between steps.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Everything a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Folder with `train.txt` and `eval.txt` from `versifier corpus`.
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub device: DeviceChoice,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Sequence length in training, also the model's `n_positions`.
    pub context: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub lr: f64,
    /// The cosine decays to `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    pub resume: bool,
    /// Fine-tune: start from this model's weights and vocabulary instead of a
    /// random initialisation. Its shape replaces `n_layer`, `n_head`, `n_embd`
    /// and `context`; tune tags and characters the corpus has and its
    /// vocabulary lacks are appended to it, each new embedding row the mean of
    /// the others.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Characters seen fewer times than this become `[UNK]`.
    pub min_char_count: usize,
    /// Precision of the final `model.safetensors`.
    pub save_dtype: Precision,
    /// Use TF32 tensor cores for f32 matmuls on CUDA.
    pub tf32: bool,
    /// Stop after this many steps in this run (saving a checkpoint), keeping the
    /// schedule of `steps`; `--resume` continues from there.
    pub stop_after: Option<usize>,
    /// Stops the run after the step it is on, as `stop_after` does.
    #[serde(skip)]
    pub stop: StopRequest,
    /// Micro-batches of `batch_size` whose gradients make one step (a larger
    /// effective batch in the same memory).
    pub grad_accum: usize,
    /// Precision of the forward and backward passes. The weights, the
    /// optimizer and the loss stay f32 (master weights); f16 adds dynamic loss
    /// scaling, bf16 needs none.
    pub compute: Precision,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            corpus: PathBuf::from("data/corpus"),
            out: PathBuf::from("models/tang-poems"),
            device: DeviceChoice::Cpu,
            n_layer: 6,
            n_head: 6,
            n_embd: 384,
            context: 128,
            batch_size: 64,
            steps: 5000,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 200,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 250,
            eval_batches: 8,
            checkpoint_every: 1000,
            seed: 1234,
            resume: false,
            init_from: None,
            min_char_count: 2,
            save_dtype: Precision::F16,
            tf32: true,
            stop_after: None,
            stop: StopRequest::default(),
            grad_accum: 1,
            compute: Precision::F32,
        }
    }
}

/// What a run achieved, also written to `train_summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub params: usize,
    pub vocab: usize,
    pub train_tokens: usize,
    pub eval_tokens: usize,
    /// Tokens trained on since step 0, over every resumed part of the run.
    pub tokens_seen: usize,
    /// Tokens trained on by this process (`tokens_seen` less what the
    /// checkpoint it resumed from had seen; all of them when not resuming).
    pub tokens_this_run: usize,
    /// This process's time, from its first step to the end.
    pub seconds: f64,
    /// `tokens_this_run / seconds`.
    pub tokens_per_s: f64,
    /// Tokens appended to the `init_from` model's vocabulary (0 from scratch
    /// and when resuming: the checkpoint's vocabulary already has them).
    pub added_tokens: usize,
    pub final_train_loss: f64,
    /// Mean cross-entropy (nats) per predicted token over the whole held-out set.
    pub eval_loss: f64,
    pub eval_perplexity: f64,
    /// The same measure for an add-one-smoothed character bigram model fitted on the training set.
    pub bigram_eval_perplexity: f64,
    pub device: String,
    pub options: TrainOptions,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    rng: u64,
    tokens_seen: usize,
}

/// A deterministic xorshift generator for batch positions.
struct BatchRng(u64);

impl BatchRng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn read(path: &Path) -> Result<String, TrainError> {
    std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, data).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn lr_at(o: &TrainOptions, step: usize) -> f64 {
    if step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let progress = (step - o.warmup) as f64 / (o.steps.saturating_sub(o.warmup)).max(1) as f64;
    let min = o.lr * o.min_lr_ratio;
    min + 0.5 * (o.lr - min) * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// `(x, y)` for sequences starting at `starts`: inputs and next-token targets.
fn batch(
    stream: &[u32],
    starts: &[usize],
    t: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(starts.len() * t);
    let mut y = Vec::with_capacity(starts.len() * t);
    for &s in starts {
        x.extend_from_slice(&stream[s..s + t]);
        y.extend_from_slice(&stream[s + 1..s + t + 1]);
    }
    Ok((
        Tensor::from_vec(x, (starts.len(), t), dev)?,
        Tensor::from_vec(y, (starts.len(), t), dev)?,
    ))
}

fn loss_on(model: &Gpt2, x: &Tensor, y: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let logits = model.forward_train(x, mask)?.to_dtype(DType::F32)?; // (B, T, V), loss in f32
    let (b, t, v) = logits.dims3()?;
    crate::model::train_ops::cross_entropy(&logits.reshape((b * t, v))?, &y.reshape(b * t)?)
}

/// Mean loss over non-overlapping windows of `stream` (at most `max_batches` batches; 0 = all).
fn evaluate(
    model: &Gpt2,
    stream: &[u32],
    o: &TrainOptions,
    mask: &Tensor,
    max_batches: usize,
) -> candle_core::Result<f64> {
    let t = o.context;
    let starts: Vec<usize> = (0..stream.len().saturating_sub(t + 1) / t)
        .map(|i| i * t)
        .collect();
    let mut total = 0.0;
    let mut n = 0usize;
    for (i, chunk) in starts.chunks(o.batch_size).enumerate() {
        if max_batches > 0 && i >= max_batches {
            break;
        }
        let (x, y) = batch(stream, chunk, t, mask.device())?;
        total += loss_on(model, &x, &y, mask)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            * chunk.len() as f64;
        n += chunk.len();
    }
    Ok(if n == 0 { f64::NAN } else { total / n as f64 })
}

/// Cross-entropy of an add-one bigram model, fitted on `train`, over the same
/// eval positions the network is scored on.
fn bigram_loss(train: &[u32], eval: &[u32], vocab: usize, t: usize) -> f64 {
    let mut counts: HashMap<(u32, u32), u32> = HashMap::new();
    let mut totals = vec![0u32; vocab];
    for w in train.windows(2) {
        *counts.entry((w[0], w[1])).or_insert(0) += 1;
        totals[w[0] as usize] += 1;
    }
    let windows = eval.len().saturating_sub(t + 1) / t;
    let (mut total, mut n) = (0.0, 0usize);
    for wi in 0..windows {
        for j in wi * t..wi * t + t {
            let (a, b) = (eval[j], eval[j + 1]);
            let c = counts.get(&(a, b)).copied().unwrap_or(0) as f64;
            let p = (c + 1.0) / (totals[a as usize] as f64 + vocab as f64);
            total -= p.ln();
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        total / n as f64
    }
}

/// One micro-batch's positions, drawn off the training loop, and the batch
/// generator's state once they were drawn (what a checkpoint saves).
struct DrawnBatch {
    x: Vec<u32>,
    y: Vec<u32>,
    rng_after: u64,
}

/// Draws micro-batches on a named thread, a few ahead of the training loop,
/// in exactly the order the loop would have drawn them itself.
struct BatchPrefetch {
    batches: std::sync::mpsc::Receiver<DrawnBatch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchPrefetch {
    const AHEAD: usize = 4;

    fn spawn(
        stream: std::sync::Arc<Vec<u32>>,
        rng: BatchRng,
        batch: usize,
        t: usize,
    ) -> Result<Self, TrainError> {
        let (tx, batches) = std::sync::mpsc::sync_channel(Self::AHEAD);
        let span = stream.len() - t - 1;
        let mut rng = rng;
        let thread = std::thread::Builder::new()
            .name("train-batches".into())
            .spawn(move || loop {
                let (mut x, mut y) = (Vec::with_capacity(batch * t), Vec::with_capacity(batch * t));
                for _ in 0..batch {
                    let s = rng.below(span);
                    x.extend_from_slice(&stream[s..s + t]);
                    y.extend_from_slice(&stream[s + 1..s + t + 1]);
                }
                if tx
                    .send(DrawnBatch {
                        x,
                        y,
                        rng_after: rng.0,
                    })
                    .is_err()
                {
                    return; // the run ended
                }
            })
            .map_err(|e| TrainError::Invalid {
                field: "batch thread",
                problem: format!("could not start it: {e}"),
            })?;
        Ok(Self {
            batches,
            thread: Some(thread),
        })
    }

    fn next(&self) -> Result<DrawnBatch, TrainError> {
        self.batches.recv().map_err(|_| TrainError::Invalid {
            field: "batch thread",
            problem: "it stopped before the run ended".into(),
        })
    }
}

impl Drop for BatchPrefetch {
    fn drop(&mut self) {
        // Close the channel first so the thread's next send fails and it ends.
        let (_, closed) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.batches, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds `more` into `acc`, parameter by parameter.
fn add_grads(
    acc: &mut candle_core::backprop::GradStore,
    more: &candle_core::backprop::GradStore,
    params: &[(String, Var)],
) -> candle_core::Result<()> {
    for (_, var) in params {
        let v = var.as_tensor();
        if let Some(g) = more.get(v) {
            let sum = match acc.get(v) {
                Some(a) => (a + g)?,
                None => g.clone(),
            };
            acc.insert(v, sum);
        }
    }
    Ok(())
}

/// The model computing in `dtype` from the f32 master weights: each weight is
/// cast (a tracked op, so gradients reach the f32 variables).
fn model_in(
    params: &[(String, Var)],
    cfg: &Gpt2Config,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Gpt2> {
    let cast = params
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
        .collect::<candle_core::Result<HashMap<String, Tensor>>>()?;
    Gpt2::load_uniform(VarBuilder::from_tensors(cast, dtype, device), cfg)
}

/// The model on the current f32 weights without tracking gradients, for
/// evaluation: each layer's activations are freed as soon as the next is
/// computed, where the tracked model keeps them all alive until the loss is.
fn frozen_model(
    params: &[(String, Var)],
    cfg: &Gpt2Config,
    device: &Device,
) -> candle_core::Result<Gpt2> {
    let weights = params
        .iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect::<HashMap<String, Tensor>>();
    Gpt2::load_uniform(VarBuilder::from_tensors(weights, DType::F32, device), cfg)
}

/// f16's dynamic loss scale: halved when gradients overflow (the step is
/// skipped), doubled after a run of good steps.
struct LossScale {
    scale: f64,
    good: usize,
}

impl LossScale {
    const GROW_AFTER: usize = 500;

    fn for_compute(dtype: DType) -> Self {
        Self {
            scale: if dtype == DType::F16 { 65536.0 } else { 1.0 },
            good: 0,
        }
    }

    /// Whether to take the step; adjusts the scale.
    fn update(&mut self, grads_finite: bool, dynamic: bool) -> bool {
        if !dynamic {
            return true;
        }
        if grads_finite {
            self.good += 1;
            if self.good % Self::GROW_AFTER == 0 {
                self.scale *= 2.0;
            }
            true
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good = 0;
            false
        }
    }
}

/// Why [`step_gradients`] failed: a tensor error (placed at its step by the
/// caller) or the batch thread.
enum StepFailure {
    Tensor(candle_core::Error),
    Run(TrainError),
}

impl From<candle_core::Error> for StepFailure {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor(e)
    }
}

impl StepFailure {
    fn at(self, step: usize) -> TrainError {
        match self {
            Self::Tensor(source) => TrainError::Step { step, source },
            Self::Run(e) => e,
        }
    }
}

/// One step's mean loss (unscaled) and gradients (scaled by `loss_scale`):
/// `grad_accum` micro-batches from `prefetch`, each backward pass summed in.
fn step_gradients(
    model: &Gpt2,
    prefetch: &BatchPrefetch,
    rng: &mut BatchRng,
    params: &[(String, Var)],
    mask: &Tensor,
    o: &TrainOptions,
    loss_scale: f64,
) -> Result<(Tensor, candle_core::backprop::GradStore), StepFailure> {
    let mut grads: Option<candle_core::backprop::GradStore> = None;
    let mut loss: Option<Tensor> = None;
    let device = mask.device();
    for _ in 0..o.grad_accum {
        let drawn = prefetch.next().map_err(StepFailure::Run)?;
        *rng = BatchRng(drawn.rng_after);
        let x = Tensor::from_vec(drawn.x, (o.batch_size, o.context), device)?;
        let y = Tensor::from_vec(drawn.y, (o.batch_size, o.context), device)?;
        let micro = loss_on(model, &x, &y, mask)?;
        let g = (&micro * (loss_scale / o.grad_accum as f64))?.backward()?;
        match grads.as_mut() {
            Some(acc) => add_grads(acc, &g, params)?,
            None => grads = Some(g),
        }
        loss = Some(match loss {
            Some(l) => (l + micro.detach())?,
            None => micro.detach(),
        });
    }
    match (loss, grads) {
        (Some(loss), Some(grads)) => Ok(((loss / o.grad_accum as f64)?, grads)),
        _ => Err(StepFailure::Run(TrainError::Invalid {
            field: "grad_accum",
            problem: "must be at least 1 (micro-batches per step)".into(),
        })),
    }
}

/// Every trainable variable with its checkpoint name.
fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>, TrainError> {
    let data = varmap.data().lock().map_err(|_| TrainError::Invalid {
        field: "parameters",
        problem: "a training thread panicked while holding them".into(),
    })?;
    Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Which lines of a corpus text lose their form tag when it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UntaggedLines {
    /// Every other line, 詩 and 詞 alike: the stream held-out text is scored on,
    /// so that every run's figures (and the bundled model's) stay comparable.
    EveryOther,
    /// Every other 詩; a 詞 always keeps its tune tag, so the untagged (free)
    /// start is trained on 詩 alone: untagged 詞 taught it to drift into 詞
    /// shapes (models/tang-poems/MODEL_CARD.md, "Fine-tuning on 詞", run 2).
    /// On a corpus without 詞 this is the same stream as `EveryOther`.
    EveryOtherShi,
}

/// The token stream of a corpus text: a tagged poem teaches the
/// form-conditioned start, an untagged one the free start.
fn encode_corpus(vocab: &CharVocab, text: &str, untagged: UntaggedLines) -> Vec<u32> {
    let mut counted = 0_usize;
    text.lines()
        .filter(|l| !l.is_empty())
        .flat_map(|l| {
            let (tag, body) = super::vocab::strip_tag(l);
            let is_ci = tag.is_some_and(super::vocab::is_tune_tag);
            let may_lose_tag = untagged == UntaggedLines::EveryOther || !is_ci;
            let loses_tag = may_lose_tag && {
                counted += 1;
                counted % 2 == 0
            };
            vocab.encode_line(if loses_tag { body } else { l })
        })
        .collect()
}

/// Held-out perplexity of `model` on `corpus/eval.txt` (windows of `context`),
/// and of an add-one character bigram model fitted on `corpus/train.txt`, on the
/// same positions, both with the model's vocabulary (`vocab_path`). Tokens are
/// characters, the two marks, `[CLS]`/`[SEP]` and form tags.
pub fn held_out_perplexity(
    model: &Gpt2,
    vocab_path: &Path,
    corpus: &Path,
    context: usize,
) -> Result<(f64, f64), TrainError> {
    let vocab = CharVocab::from_tokens(read(vocab_path)?.lines().map(String::from).collect());
    let train_ids = encode_corpus(
        &vocab,
        &read(&corpus.join("train.txt"))?,
        UntaggedLines::EveryOther,
    );
    let eval_ids = encode_corpus(
        &vocab,
        &read(&corpus.join("eval.txt"))?,
        UntaggedLines::EveryOther,
    );
    let o = TrainOptions {
        context,
        batch_size: 16,
        ..TrainOptions::default()
    };
    let mask = Gpt2::causal_mask(context, model.device())
        .map_err(|source| TrainError::Step { step: 0, source })?;
    let loss = evaluate(model, &eval_ids, &o, &mask, 0)
        .map_err(|source| TrainError::Step { step: 0, source })?;
    let bigram = bigram_loss(&train_ids, &eval_ids, vocab.len(), context);
    Ok((loss.exp(), bigram.exp()))
}

/// What a training run reports while it runs, in order: `Resumed` (once, when
/// continuing a checkpoint), then `Step` every tenth step and `Eval` at each
/// evaluation, and `Stopped` when `stop_after` or a [`StopRequest`] ends the
/// run early (after its checkpoint is saved).
#[derive(Debug, Clone, PartialEq)]
pub enum TrainProgress {
    /// The run continues a checkpoint from this step.
    Resumed { step: usize },
    /// A training step finished (every tenth, and the last).
    Step {
        /// Steps done so far.
        step: usize,
        /// Steps of the whole schedule.
        steps: usize,
        /// Training loss of this step's batch.
        loss: f64,
        /// Learning rate used for this step.
        lr: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
        /// Training tokens per second since this run started.
        tokens_per_s: f64,
        /// Seconds left at the current rate.
        eta_s: f64,
    },
    /// The held-out loss after `step` steps.
    Eval { step: usize, loss: f64 },
    /// `stop_after` or a [`StopRequest`] ended the run after `step` steps, whose
    /// checkpoint is saved; the final evaluation and model follow, and
    /// `--resume` continues the schedule.
    Stopped { step: usize },
}

impl TrainProgress {
    /// The step this event is about.
    pub fn step(&self) -> usize {
        match self {
            Self::Resumed { step }
            | Self::Step { step, .. }
            | Self::Eval { step, .. }
            | Self::Stopped { step } => *step,
        }
    }
}

impl std::fmt::Display for TrainProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resumed { step } => write!(f, "resumed at step {step}"),
            Self::Step {
                step,
                steps,
                loss,
                lr,
                grad_norm,
                tokens_per_s,
                eta_s,
            } => write!(
                f,
                "step {step}/{steps} loss {loss:.3} lr {lr:.2e} grad-norm {grad_norm:.2} \
                 {tokens_per_s:.0} tok/s eta {eta_s:.0}s"
            ),
            Self::Eval { step, loss } => write!(
                f,
                "step {step}: eval loss {loss:.3} (perplexity {:.1})",
                loss.exp()
            ),
            Self::Stopped { step } => {
                write!(f, "stopped after step {step}; continue with --resume")
            }
        }
    }
}

/// The model a fine-tuning run (`init_from`) starts from.
struct InitModel {
    files: ModelFiles,
    cfg: Gpt2Config,
    vocab: CharVocab,
}

impl InitModel {
    /// Opens and checks `dir` before anything is written: a GPT-2 folder whose
    /// tokenizer is a character `vocab.txt` of `vocab_size` tokens with the
    /// tokens a poem line is written with.
    fn open(dir: &Path) -> Result<Self, TrainError> {
        let files = ModelFiles::locate(dir).map_err(|e| match e {
            LoadError::NotFound { path } if path == dir => TrainError::InitFrom {
                path,
                problem: "no such folder; --init-from takes a model folder, such as the \
                          bundled models/tang-poems"
                    .into(),
            },
            other => other.into(),
        })?;
        let cfg = Gpt2Config::from_file(&files.config)?;
        let vocab_path = files.dir.join("vocab.txt");
        if !vocab_path.is_file() {
            return Err(TrainError::InitFrom {
                path: files.dir.clone(),
                problem: "it has no vocab.txt; the trainer continues character models (a \
                          folder made by `versifier train`, or a GPT-2 with a BERT-style \
                          vocab.txt), not byte-level BPE ones (tokenizer.json)"
                    .into(),
            });
        }
        let vocab = CharVocab::from_tokens(read(&vocab_path)?.lines().map(String::from).collect());
        if vocab.len() != cfg.vocab_size {
            return Err(TrainError::InitFrom {
                path: vocab_path,
                problem: format!(
                    "{} tokens, but config.json says vocab_size = {}; use the vocab.txt the \
                     model was trained with",
                    vocab.len(),
                    cfg.vocab_size
                ),
            });
        }
        if let Some(missing) = ["[CLS]", "[SEP]", "[UNK]"]
            .into_iter()
            .find(|t| vocab.id(t).is_none())
        {
            return Err(TrainError::InitFrom {
                path: vocab_path,
                problem: format!(
                    "has no {missing} token; the trainer writes each poem as [CLS] poem \
                     [SEP], with [UNK] for a character the vocabulary lacks"
                ),
            });
        }
        Ok(Self { files, cfg, vocab })
    }

    /// Its weights, f32 on the CPU, with `added` embedding rows appended for
    /// the tokens the corpus brought.
    fn tensors(&self, added: usize) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut tensors = load_named_tensors(&self.files, &self.cfg, &Device::Cpu, DType::F32)?;
        if let Some(wte) = tensors.remove("wte.weight") {
            let grown = grow_embedding(&wte, added)
                .map_err(|source| TrainError::Step { step: 0, source })?;
            tensors.insert("wte.weight".into(), grown);
        }
        Ok(tensors)
    }
}

/// `(V, C)` -> `(V + added, C)`, each new row the mean of the old ones: a new
/// token starts as an average one (with the tied LM head, its logit is a
/// typical token's), not at random.
fn grow_embedding(wte: &Tensor, added: usize) -> candle_core::Result<Tensor> {
    if added == 0 {
        return Ok(wte.clone());
    }
    let (_, c) = wte.dims2()?;
    let mean = wte.mean_keepdim(0)?; // (1, C)
    Tensor::cat(&[wte, &mean.broadcast_as((added, c))?.contiguous()?], 0)
}

/// Where a run's parameters come from.
enum Start<'a> {
    /// A deterministic random initialisation.
    Scratch,
    /// The `init_from` model, with this many tokens added to its vocabulary.
    Model(&'a InitModel, usize),
    /// `ckpt_dir`'s checkpoint.
    Resume,
}

/// The parameters a run starts from, f32 on `device`: a deterministic
/// initialisation, the `init_from` model's, or the checkpoint's when resuming.
fn initial_parameters(
    start: Start<'_>,
    o: &TrainOptions,
    cfg: &Gpt2Config,
    ckpt_dir: &Path,
    device: &Device,
) -> Result<VarMap, TrainError> {
    let step_err =
        |step: usize| move |source: candle_core::Error| TrainError::Step { step, source };
    let varmap = VarMap::new();
    let init = match start {
        Start::Resume => {
            let p = ckpt_dir.join("model.safetensors");
            let loaded = candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| {
                TrainError::Resume {
                    path: p.clone(),
                    problem: e.to_string(),
                }
            })?;
            loaded
                .into_iter()
                .map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v))
                .collect()
        }
        Start::Model(model, added) => model.tensors(added)?,
        Start::Scratch => synthetic::gpt2_init_tensors(cfg, o.seed).map_err(step_err(0))?,
    };
    {
        let mut data = varmap.data().lock().map_err(|_| TrainError::Invalid {
            field: "varmap",
            problem: "poisoned".into(),
        })?;
        for (name, t) in init {
            let t = t
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .map_err(step_err(0))?;
            data.insert(name, Var::from_tensor(&t).map_err(step_err(0))?);
        }
    }
    Ok(varmap)
}

/// Clips and applies one step's gradients (scaled by the loss scale) with the
/// clip factor worked out on the device; returns the unscaled gradient norm
/// when it was read back (f16's overflow check, logged steps), else NaN.
#[allow(clippy::too_many_arguments)]
fn clipped_step(
    opt: &mut AdamW,
    grads: &candle_core::backprop::GradStore,
    lr: f64,
    o: &TrainOptions,
    loss_scale: &mut LossScale,
    dynamic_scale: bool,
    logging: bool,
    device: &Device,
) -> candle_core::Result<f64> {
    let used_scale = loss_scale.scale;
    // The gradient norm stays on the device except where the host needs it.
    let norm_t = opt
        .grad_norm_tensor(grads)?
        .map(|n| n / used_scale)
        .transpose()?;
    let norm = match (&norm_t, dynamic_scale || logging) {
        (Some(t), true) => f64::from(t.to_scalar::<f32>()?),
        (None, true) => 0.0,
        (_, false) => f64::NAN,
    };
    let finite = !dynamic_scale || norm.is_finite();
    if loss_scale.update(finite, dynamic_scale) {
        // grad_clip / max(norm, grad_clip), and the loss scale undone.
        let factor = match &norm_t {
            Some(n) => ((n.maximum(o.grad_clip)?.recip()?) * (o.grad_clip / used_scale))?,
            None => Tensor::new(1.0f32 / used_scale as f32, device)?,
        };
        opt.step_scaled_by(grads, lr, &factor)?;
    }
    Ok(norm)
}

/// Longest training context: the causal mask is `(T, T)` and attention
/// `(B, H, T, T)`, so memory grows with its square.
pub const MAX_TRAIN_CONTEXT: usize = 4096;

/// Refuses settings the trainer cannot run with, naming the setting.
fn check_options(o: &TrainOptions) -> Result<(), TrainError> {
    let checks: [(&'static str, bool, String); 8] = [
        ("steps", o.steps == 0, "must be at least 1".into()),
        ("batch_size", o.batch_size == 0, "must be at least 1".into()),
        (
            "context",
            o.context < 8 || o.context > MAX_TRAIN_CONTEXT,
            format!("{} is outside 8..={MAX_TRAIN_CONTEXT} tokens", o.context),
        ),
        ("n_layer", o.n_layer == 0, "must be at least 1".into()),
        ("n_head", o.n_head == 0, "must be at least 1".into()),
        ("n_embd", o.n_embd == 0, "must be at least 1".into()),
        (
            "n_embd",
            o.n_head > 0 && o.n_embd % o.n_head != 0,
            format!("{} is not divisible by n_head {}", o.n_embd, o.n_head),
        ),
        (
            "grad_accum",
            o.grad_accum == 0,
            "must be at least 1 (micro-batches per step)".into(),
        ),
    ];
    match checks.into_iter().find(|(_, bad, _)| *bad) {
        Some((field, _, problem)) => Err(TrainError::Invalid { field, problem }),
        None => Ok(()),
    }
}

/// Refuses a run that could not start, before anything is written: bad
/// settings, a missing corpus, `resume` without a checkpoint. Returns the
/// corpus's two files and the checkpoint folder.
fn check_inputs(o: &TrainOptions) -> Result<(PathBuf, PathBuf, PathBuf), TrainError> {
    check_options(o)?;
    let train_path = o.corpus.join("train.txt");
    let eval_path = o.corpus.join("eval.txt");
    for path in [&train_path, &eval_path] {
        if !path.is_file() {
            return Err(TrainError::Corpus {
                path: path.clone(),
                problem: "not found; prepare a corpus folder with `versifier corpus` \
                          (packaging/corpus/fetch.sh does it all)"
                    .into(),
            });
        }
    }
    let ckpt_dir = o.out.join("checkpoint");
    if o.resume && !ckpt_dir.join("state.json").is_file() {
        return Err(TrainError::Resume {
            path: ckpt_dir,
            problem: "no checkpoint to continue (a run saves one every --checkpoint-every \
                      steps, at --stop-after and on Ctrl+C); start without --resume"
                .into(),
        });
    }
    Ok((train_path, eval_path, ckpt_dir))
}

/// The vocabulary (with how many tokens were added to the `init_from`
/// model's), the model's shape, and `o` with that shape: from the corpus, from
/// the `init_from` model grown by the corpus's new tokens, or from the
/// checkpoint when resuming. A fine-tuning run keeps its model's shape (also
/// when resumed: the checkpoint's config.json is that shape, vocabulary grown).
fn vocabulary_and_shape(
    o: &TrainOptions,
    init_model: Option<&InitModel>,
    ckpt_dir: &Path,
    train_text: &str,
) -> Result<(CharVocab, usize, Gpt2Config, TrainOptions), TrainError> {
    let (vocab, added_tokens) = if o.resume {
        let text = read(&ckpt_dir.join("vocab.txt"))?;
        (
            CharVocab::from_tokens(text.lines().map(String::from).collect()),
            0,
        )
    } else if let Some(m) = init_model {
        m.vocab.extended_with(train_text, o.min_char_count)
    } else {
        (CharVocab::build(train_text, o.min_char_count), 0)
    };
    let mut cfg = match (init_model, &o.init_from) {
        (Some(m), _) => Gpt2Config {
            vocab_size: vocab.len(),
            ..m.cfg.clone()
        },
        (None, Some(_)) => Gpt2Config::from_file(&ckpt_dir.join("config.json"))?,
        (None, None) => Gpt2Config::small(vocab.len(), o.context, o.n_embd, o.n_layer, o.n_head),
    };
    cfg.bos_token_id = vocab.id("[CLS]");
    cfg.eos_token_id = vocab.id("[SEP]");
    let shaped = TrainOptions {
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        context: cfg.n_positions,
        ..o.clone()
    };
    Ok((vocab, added_tokens, cfg, shaped))
}

/// Trains a model as `o` says and writes it to `o.out`.
pub fn train(
    o: &TrainOptions,
    mut on_progress: impl FnMut(TrainProgress),
) -> Result<TrainSummary, TrainError> {
    let (train_path, eval_path, ckpt_dir) = check_inputs(o)?;
    let init_model = match &o.init_from {
        Some(dir) if !o.resume => Some(InitModel::open(dir)?),
        _ => None,
    };
    let train_text = read(&train_path)?;
    let eval_text = read(&eval_path)?;
    std::fs::create_dir_all(&o.out).map_err(|source| TrainError::Io {
        path: o.out.clone(),
        source,
    })?;

    let (vocab, added_tokens, cfg, shaped) =
        vocabulary_and_shape(o, init_model.as_ref(), &ckpt_dir, &train_text)?;
    let o = &shaped;
    let train_ids = encode_corpus(&vocab, &train_text, UntaggedLines::EveryOtherShi);
    let eval_ids = encode_corpus(&vocab, &eval_text, UntaggedLines::EveryOther);
    if train_ids.len() < o.context + 2 {
        return Err(TrainError::Corpus {
            path: train_path,
            problem: format!(
                "only {} tokens; need more than the context ({})",
                train_ids.len(),
                o.context
            ),
        });
    }

    let device = open_device(o.device)?;
    if o.tf32 {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    let step_err =
        |step: usize| move |source: candle_core::Error| TrainError::Step { step, source };

    let start = match &init_model {
        _ if o.resume => Start::Resume,
        Some(m) => Start::Model(m, added_tokens),
        None => Start::Scratch,
    };
    let varmap = initial_parameters(start, o, &cfg, &ckpt_dir, &device)?;
    let model = Gpt2::load_uniform(VarBuilder::from_varmap(&varmap, DType::F32, &device), &cfg)
        .map_err(step_err(0))?;
    let params = named_vars(&varmap)?;
    let mut opt = AdamW::new(params, o.weight_decay).map_err(step_err(0))?;
    let mut rng = BatchRng(o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tokens_seen = 0usize;
    let mut start_step = 0usize;
    if o.resume {
        let state: CheckpointState = serde_json::from_str(&read(&ckpt_dir.join("state.json"))?)
            .map_err(|e| TrainError::Resume {
                path: ckpt_dir.join("state.json"),
                problem: e.to_string(),
            })?;
        let p = ckpt_dir.join("optimizer.safetensors");
        let moments =
            candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| TrainError::Resume {
                path: p.clone(),
                problem: e.to_string(),
            })?;
        opt.restore(&moments, state.step)
            .map_err(step_err(state.step))?;
        rng = BatchRng(state.rng);
        tokens_seen = state.tokens_seen;
        start_step = state.step;
        on_progress(TrainProgress::Resumed { step: start_step });
    }

    let mask = Gpt2::causal_mask(o.context, &device).map_err(step_err(0))?;
    let log_path = o.out.join("train_log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| TrainError::Io {
            path: log_path.clone(),
            source,
        })?;
    let save = |dir: &Path,
                dtype: DType,
                opt: Option<(&AdamW, &BatchRng, usize)>|
     -> Result<(), TrainError> {
        let tensors: HashMap<String, Tensor> = named_vars(&varmap)?
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        synthetic::write_checkpoint(dir, &cfg, &tensors, dtype)?;
        write(&dir.join("vocab.txt"), vocab.to_vocab_txt().as_bytes())?;
        if let Some((opt, rng, tokens_seen)) = opt {
            let p = dir.join("optimizer.safetensors");
            opt.state()
                .and_then(|state| candle_core::safetensors::save(&state, &p))
                .map_err(|source| LoadError::Candle { path: p, source })?;
            let state = CheckpointState {
                step: opt.step,
                rng: rng.0,
                tokens_seen,
            };
            write(
                &dir.join("state.json"),
                serde_json::to_string(&state).unwrap_or_default().as_bytes(),
            )?;
        }
        Ok(())
    };

    let tokens_before = tokens_seen;
    let started = Instant::now();
    let mut last_loss = f64::NAN;
    let compute = o.compute.dtype();
    let mut loss_scale = LossScale::for_compute(compute);
    let dynamic_scale = compute == DType::F16;
    let params = named_vars(&varmap)?;
    let train_stream = std::sync::Arc::new(train_ids.clone());
    let prefetch = BatchPrefetch::spawn(train_stream, BatchRng(rng.0), o.batch_size, o.context)?;
    for step in start_step..o.steps {
        // f32: the model itself; else a copy computing in `compute`.
        let cast;
        let model_now = if compute == DType::F32 {
            &model
        } else {
            cast = model_in(&params, &cfg, compute, &device).map_err(step_err(step))?;
            &cast
        };
        let (loss, grads) = step_gradients(
            model_now,
            &prefetch,
            &mut rng,
            &params,
            &mask,
            o,
            loss_scale.scale,
        )
        .map_err(|e| e.at(step))?;
        let lr = lr_at(o, step);
        let done = step + 1;
        let logging = done % 10 == 0 || done == o.steps;
        let norm = clipped_step(
            &mut opt,
            &grads,
            lr,
            o,
            &mut loss_scale,
            dynamic_scale,
            logging,
            &device,
        )
        .map_err(step_err(step))?;
        tokens_seen += o.batch_size * o.context * o.grad_accum;
        if logging {
            last_loss = loss
                .to_dtype(DType::F64)
                .and_then(|l| l.to_scalar::<f64>())
                .map_err(step_err(step))?;
            let secs = started.elapsed().as_secs_f64();
            let rate = (done - start_step) as f64 / secs.max(1e-9);
            let eta = (o.steps - done) as f64 / rate.max(1e-9);
            on_progress(TrainProgress::Step {
                step: done,
                steps: o.steps,
                loss: last_loss,
                lr,
                grad_norm: norm,
                tokens_per_s: ((tokens_seen - tokens_before) as f64) / secs.max(1e-9),
                eta_s: eta,
            });
        }
        // A log line that cannot be written (a full disk) ends the run, but
        // only after this step's checkpoint is saved, so no step is lost.
        let mut logged = Ok(());
        if (o.eval_every > 0 && done % o.eval_every == 0) || done == o.steps {
            let eval = frozen_model(&params, &cfg, &device)
                .and_then(|frozen| evaluate(&frozen, &eval_ids, o, &mask, o.eval_batches))
                .map_err(step_err(step))?;
            let line = serde_json::json!({"step": done, "train_loss": last_loss, "eval_loss": eval, "lr": lr, "seconds": started.elapsed().as_secs_f64()});
            logged = writeln!(log, "{line}").map_err(|source| TrainError::Io {
                path: log_path.clone(),
                source,
            });
            on_progress(TrainProgress::Eval {
                step: done,
                loss: eval,
            });
        }
        let interrupted = (o.stop_after.is_some_and(|n| done - start_step >= n)
            || o.stop.is_requested())
            && done < o.steps;
        if (o.checkpoint_every > 0 && done % o.checkpoint_every == 0)
            || interrupted
            || logged.is_err()
        {
            save(&ckpt_dir, DType::F32, Some((&opt, &rng, tokens_seen)))?;
        }
        logged?;
        if interrupted {
            on_progress(TrainProgress::Stopped { step: done });
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let eval_loss = frozen_model(&params, &cfg, &device)
        .and_then(|frozen| evaluate(&frozen, &eval_ids, o, &mask, 0))
        .map_err(step_err(o.steps))?;
    let bigram = bigram_loss(&train_ids, &eval_ids, vocab.len(), o.context);
    save(&o.out, o.save_dtype.dtype(), None)?;
    let tokens_this_run = tokens_seen - tokens_before;
    let summary = TrainSummary {
        steps: opt.step,
        params: cfg.param_count(),
        vocab: vocab.len(),
        train_tokens: train_ids.len(),
        eval_tokens: eval_ids.len(),
        tokens_seen,
        tokens_this_run,
        seconds,
        tokens_per_s: (tokens_this_run as f64) / seconds.max(1e-9),
        added_tokens,
        final_train_loss: last_loss,
        eval_loss,
        eval_perplexity: eval_loss.exp(),
        bigram_eval_perplexity: bigram.exp(),
        device: o.device.to_string(),
        options: o.clone(),
    };
    write(
        &o.out.join("train_summary.json"),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests;
