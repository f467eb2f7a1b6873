//! The command line: arguments (clap) and one module per subcommand; each
//! turns its arguments into library calls and prints what comes back.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use versifier::engine::DeviceChoice;
use versifier::eval::bench::{
    run_bench, run_lifecycle, run_quality, BenchOptions, LifecycleOptions, QualityOptions,
};

mod generate;
mod info;
mod logging;
mod train;

use generate::run_generate;
pub use generate::GenerateArgs;
use info::run_info;
pub use logging::init_logging;
use train::run_train;
pub use train::TrainArgs;

#[derive(Parser)]
#[command(
    name = "versifier",
    version,
    about = "Writes poems with a local GPT-2 and gives the GPU back when it is done"
)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    /// Folder for the rotating log file (daily, 7 kept; always at `info` or
    /// finer). Default: the OS state/data folder, e.g. ~/.local/state/versifier/logs.
    /// `--log-dir none` writes no file.
    #[arg(long, global = true, env = "VERSIFIER_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Describe a checkpoint: architecture, parameters, bytes per dtype, tokenizer.
    Info {
        /// Checkpoint folder (default: the bundled Tang model).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Pictures of the real window without a display (software-rendered PNGs):
    /// before load, while generating, ready, after Release. For GPU machines
    /// with no X server; see packaging/cuda/verify-on-gpu.sh.
    #[cfg(feature = "gui")]
    Snapshots {
        /// Folder for the PNGs (created).
        #[arg(long)]
        out: PathBuf,
        /// auto, cpu or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long, default_value = "月")]
        prompt: String,
        #[arg(long, default_value_t = 8)]
        variations: usize,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        #[arg(long, default_value_t = 1180)]
        width: usize,
        #[arg(long, default_value_t = 760)]
        height: usize,
    },
    /// Measure load time, first-token latency and decode speed (JSON).
    Bench(BenchArgs),
    /// Turn the chinese-poetry collection into training text (see packaging/corpus/).
    Corpus {
        /// chinese-poetry's package folder (npm pack chinese-poetry@2.0.1, unpacked).
        #[arg(long)]
        source: PathBuf,
        #[arg(long, default_value = "data/corpus")]
        out: PathBuf,
        /// Also use the Song poems.
        #[arg(long)]
        song: bool,
        /// Held-out share in poems per ten thousand.
        #[arg(long, default_value_t = 200)]
        holdout_per_10k: u64,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Train a GPT-2 poem model on a prepared corpus.
    Train(TrainArgs),
    /// Check this build on a device against the reference fixtures (tests/fixtures).
    Selftest {
        #[arg(long, default_value = "tests/fixtures")]
        fixtures: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark random weights of a known shape: gpt2-124m or tiny.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batches: Vec<usize>,
    /// JSON output (the only output format; accepted for clarity).
    #[arg(long)]
    json: bool,
    /// Run load -> generate -> release cycles through the engine and report this
    /// process's memory after each phase, and its growth per 100 cycles (needs
    /// --model; `--soak` is the same run).
    #[arg(long, alias = "soak", requires = "model")]
    lifecycle: bool,
    /// Number of lifecycle cycles.
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Poem quality: well-formed share of free and constrained samples, distinct-2,
    /// and with --corpus the held-out perplexity against a bigram model (needs --model).
    #[arg(long, requires = "model", conflicts_with = "lifecycle")]
    quality: bool,
    /// Corpus folder from `versifier corpus`, for the held-out perplexity.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Free-form samples per prompt (20 prompts).
    #[arg(long, default_value_t = 10)]
    samples_per_prompt: usize,
    /// Samples per constrained form.
    #[arg(long, default_value_t = 20)]
    constrained_samples: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        #[cfg(feature = "gui")]
        None => versifier::ui::run().map_err(|e| anyhow::anyhow!("could not open the window: {e}")),
        #[cfg(not(feature = "gui"))]
        None => anyhow::bail!(
            "this build has no window (built without the `gui` feature); run `versifier --help` for the commands"
        ),
        Some(Command::Generate(args)) => run_generate(args),
        #[cfg(feature = "gui")]
        Some(Command::Snapshots {
            out,
            device,
            dtype,
            prompt,
            variations,
            max_tokens,
            width,
            height,
        }) => {
            let plan = versifier::ui::snapshot::SnapshotPlan {
                out_dir: out,
                device: device_or_auto(&device)?,
                precision: dtype.parse()?,
                prompt,
                variations,
                max_tokens,
                size: [width, height],
            };
            for (_, line) in versifier::ui::snapshot::take_sequence(&plan)? {
                println!("{line}");
            }
            Ok(())
        }
        Some(Command::Info { model, json }) => run_info(&model_or_bundled(model)?, json),
        Some(Command::Corpus {
            source,
            out,
            song,
            holdout_per_10k,
            seed,
        }) => {
            let stats = versifier::train::prepare_corpus(&versifier::train::CorpusOptions {
                source,
                out,
                include_song: song,
                holdout_per_10k,
                seed,
            })?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
        Some(Command::Train(a)) => run_train(a),
        Some(Command::Selftest {
            fixtures,
            device,
            dtype,
        }) => {
            let report = versifier::eval::selftest::run_selftest(
                &fixtures,
                device.parse()?,
                dtype.parse()?,
            )?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.passed {
                bail!("selftest failed on {} {}", report.device, report.dtype);
            }
            Ok(())
        }
        Some(Command::Bench(args)) if args.quality => {
            let opts = QualityOptions {
                model: args.model.context("--quality needs --model")?,
                device: args.device.parse()?,
                samples_per_prompt: args.samples_per_prompt,
                constrained_samples: args.constrained_samples,
                seed: args.seed,
                corpus: args.corpus,
            };
            let report = run_quality(&opts)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(Command::Bench(args)) if args.lifecycle => {
            let opts = LifecycleOptions {
                model: args.model.context("--lifecycle needs --model")?,
                device: args.device.parse()?,
                precision: args.dtype.parse()?,
                cycles: args.cycles,
                new_tokens: args.new_tokens,
            };
            let report = run_lifecycle(&opts)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(Command::Bench(args)) => {
            let opts = BenchOptions {
                model: args.model,
                synthetic: args.synthetic,
                device: args.device.parse()?,
                precision: args.dtype.parse()?,
                prompt_tokens: args.prompt_tokens,
                new_tokens: args.new_tokens,
                batches: args.batches,
            };
            let _ = args.json;
            let report = run_bench(&opts)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// The given model, or the bundled one wherever it is installed.
fn model_or_bundled(model: Option<PathBuf>) -> Result<PathBuf> {
    match model {
        Some(m) => Ok(m),
        None => versifier::store::bundled_model().context(
            "no --model given and the bundled model (models/tang-poems) was not found next to \
             the executable, in ../share/versifier or ../lib/versifier, or in the data folder; \
             reinstall, or pass --model <folder>",
        ),
    }
}

/// `auto` picks the first usable GPU, else the CPU, printing the one-line
/// notice when a CUDA build has to run on CPU.
fn device_or_auto(text: &str) -> Result<DeviceChoice> {
    if text.trim().eq_ignore_ascii_case("auto") {
        let (choice, notice) = versifier::device::preferred_device();
        if let Some(n) = notice {
            eprintln!("note: {n}");
        }
        return Ok(choice);
    }
    Ok(text.parse()?)
}
