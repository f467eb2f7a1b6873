//! `versifier train`: arguments and the progress display of the trainer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use clap::Args;

use super::DeviceArg;
use versifier::engine::Precision;
use versifier::train::{StopRequest, TrainProgress};

#[derive(Args)]
pub struct TrainArgs {
    /// A `versifier corpus` folder (train.txt, eval.txt). Every other 詩 is
    /// trained on without its form tag, which teaches free form; a 詞 always
    /// keeps its tune tag.
    #[arg(long, default_value = "data/corpus")]
    corpus: PathBuf,
    #[arg(long, default_value = "models/tang-poems")]
    out: PathBuf,
    /// auto (the first GPU when this build can use one, else the CPU), cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceArg,
    /// Fine-tune: start from this model folder's weights and vocabulary (a
    /// model made by `versifier train`, such as the bundled models/tang-poems,
    /// or a GPT-2 with a character vocab.txt) instead of random weights. Its
    /// shape is kept; tune tags and characters the corpus adds are appended to
    /// its vocabulary. A lower --lr than from scratch (3e-4) keeps more of
    /// what it knew.
    #[arg(long, value_name = "MODEL_DIR")]
    init_from: Option<PathBuf>,
    #[arg(long, default_value_t = 6, conflicts_with = "init_from")]
    n_layer: usize,
    #[arg(long, default_value_t = 6, conflicts_with = "init_from")]
    n_head: usize,
    #[arg(long, default_value_t = 384, conflicts_with = "init_from")]
    n_embd: usize,
    /// Tokens per training sequence, also the model's n_positions.
    #[arg(long, default_value_t = 128, conflicts_with = "init_from")]
    context: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 5000)]
    steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Evaluate on the held-out text every N steps and after the last (0: only after the last)
    #[arg(long, default_value_t = 250)]
    eval_every: usize,
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps of this run (checkpointing), keeping the schedule of --steps.
    #[arg(long)]
    stop_after: Option<usize>,
    #[arg(long, default_value_t = 2)]
    min_char_count: usize,
    /// Precision of the saved model.
    #[arg(long, default_value = "f16")]
    save_dtype: Precision,
    /// Micro-batches of --batch-size per optimizer step (gradients summed).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Precision of the forward and backward passes (f32, bf16 or f16); the
    /// weights and the optimizer stay f32, f16 adds dynamic loss scaling.
    #[arg(long, default_value = "f32")]
    compute: Precision,
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let opts = versifier::train::TrainOptions {
        corpus: a.corpus,
        out: a.out,
        device: a.device.resolve(),
        n_layer: a.n_layer,
        n_head: a.n_head,
        n_embd: a.n_embd,
        context: a.context,
        batch_size: a.batch_size,
        steps: a.steps,
        lr: a.lr,
        warmup: a.warmup,
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        resume: a.resume,
        init_from: a.init_from,
        min_char_count: a.min_char_count,
        save_dtype: a.save_dtype,
        stop_after: a.stop_after,
        grad_accum: a.grad_accum,
        compute: a.compute,
        ..Default::default()
    };
    let checkpoint_saved = stop_on_ctrl_c(&opts.stop, &opts.out);
    let bar = indicatif::ProgressBar::new(opts.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden: print evaluations and every 100th step instead.
    let plain = bar.is_hidden();
    versifier::train::heap::reuse_freed_buffers();
    let summary = versifier::train::train(&opts, |event| {
        if matches!(event, TrainProgress::Stopped { .. }) {
            checkpoint_saved.store(true, Ordering::SeqCst);
        }
        bar.set_position(event.step() as u64);
        bar.set_message(event.to_string());
        let milestone = match &event {
            TrainProgress::Step { step, .. } => step % 100 == 0,
            TrainProgress::Resumed { .. }
            | TrainProgress::Eval { .. }
            | TrainProgress::Stopped { .. } => true,
        };
        let printed_above_bar = !matches!(event, TrainProgress::Step { .. });
        if plain && milestone {
            eprintln!("{event}");
        } else if printed_above_bar {
            bar.suspend(|| eprintln!("{event}"));
        }
    })?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Ctrl+C asks the run to stop after the step it is on and save a checkpoint
/// (hours of training on a CPU are not lost); once that checkpoint is saved, a
/// second Ctrl+C quits without the final evaluation. Returns the flag the
/// progress callback sets when the checkpoint is saved.
fn stop_on_ctrl_c(stop: &StopRequest, out: &Path) -> Arc<AtomicBool> {
    let saved = Arc::new(AtomicBool::new(false));
    let (stop, flag, checkpoint) = (stop.clone(), saved.clone(), out.join("checkpoint"));
    // A second handler cannot be installed (tests call this once per process).
    let _ = ctrlc::set_handler(move || {
        if !stop.is_requested() {
            stop.request();
            eprintln!(
                "\nCtrl+C: stopping after this step: a checkpoint in {}, then the final \
                 evaluation and model (Ctrl+C again once the checkpoint is saved skips those)",
                checkpoint.display()
            );
        } else if flag.load(Ordering::SeqCst) {
            eprintln!("\nCtrl+C again: quitting; continue with --resume");
            std::process::exit(130);
        } else {
            eprintln!("\nstill saving the checkpoint; Ctrl+C again once it is saved quits");
        }
    });
    saved
}
