//! The command line: arguments (clap) and one module per subcommand; each
//! turns its arguments into library calls and prints what comes back.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use versifier::engine::DeviceChoice;

mod bench;
mod check;
mod corpus;
mod forms;
mod generate;
mod info;
mod logging;
mod selftest;
mod serve;
#[cfg(feature = "gui")]
mod snapshots;
mod train;

use bench::BenchArgs;
use check::CheckArgs;
use corpus::CorpusArgs;
use forms::FormsArgs;
use info::InfoArgs;
use selftest::SelftestArgs;
use serve::ServeArgs;
#[cfg(feature = "gui")]
use snapshots::SnapshotsArgs;

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
    /// Check a poem's rhyme (平水韻) and tones (平仄): marks per character,
    /// rhyme characters and group, broken rules with line and column, verdict.
    Check(CheckArgs),
    /// List the poem forms `--form` takes, with every 詞 tune's line pattern.
    Forms(FormsArgs),
    /// Describe a checkpoint: architecture, parameters, bytes per dtype,
    /// tokenizer, and whether its tensors match config.json.
    Info(InfoArgs),
    /// Pictures of the real window without a display (software-rendered PNGs):
    /// before load, while generating, ready, after Release. For GPU machines
    /// with no X server; see packaging/cuda/verify-on-gpu.sh.
    #[cfg(feature = "gui")]
    Snapshots(SnapshotsArgs),
    /// Measure load time, first-token latency and decode speed (JSON).
    Bench(BenchArgs),
    /// Turn the chinese-poetry collection into training text (see packaging/corpus/).
    Corpus(CorpusArgs),
    /// Serve poems over local HTTP (JSON and server-sent events), one engine per device.
    Serve(ServeArgs),
    /// Train a GPT-2 poem model on a prepared corpus.
    Train(TrainArgs),
    /// Check this build on a device against the reference fixtures (tests/fixtures).
    Selftest(SelftestArgs),
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
        Some(Command::Check(args)) => check::run_check(args),
        Some(Command::Forms(args)) => forms::run_forms(args),
        Some(Command::Info(args)) => run_info(&model_or_bundled(args.model)?, args.json),
        #[cfg(feature = "gui")]
        Some(Command::Snapshots(args)) => snapshots::run_snapshots(args),
        Some(Command::Corpus(args)) => corpus::run_corpus(args),
        Some(Command::Selftest(args)) => selftest::run_selftest(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Train(a)) => run_train(a),
        Some(Command::Serve(a)) => serve::run_serve(a),
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

/// A `--device` value: `auto`, or an exact device (`cpu`, `cuda:N`), parsed
/// by clap so a bad value is refused before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// The first usable GPU, else the CPU.
    Auto,
    /// Exactly this device.
    Exact(DeviceChoice),
}

impl std::str::FromStr for DeviceArg {
    type Err = versifier::device::DeviceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("auto") {
            Ok(Self::Auto)
        } else {
            text.parse().map(Self::Exact)
        }
    }
}

impl DeviceArg {
    /// The device to use: `auto` picks the first usable GPU, else the CPU,
    /// printing the one-line notice when a CUDA build has to run on CPU.
    pub fn resolve(self) -> DeviceChoice {
        match self {
            Self::Exact(choice) => choice,
            Self::Auto => {
                let (choice, notice) = versifier::device::preferred_device();
                if let Some(n) = notice {
                    eprintln!("note: {n}");
                }
                choice
            }
        }
    }
}
