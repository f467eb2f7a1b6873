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

mod batches;
mod evaluation;
mod init;
mod step;
use batches::{batch, encode_corpus, BatchPrefetch, BatchRng, UntaggedLines};
pub use evaluation::held_out_perplexity;
use evaluation::{bigram_loss, evaluate, frozen_model, loss_on};
use init::{initial_parameters, InitModel, Start};
use step::{clipped_step, model_in, named_vars, step_gradients, LossScale};

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
#[allow(clippy::too_many_lines)] // the training loop with its checkpoints, evaluation and progress; to be cut into a `Trainer` with small steps (issue #42)
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
