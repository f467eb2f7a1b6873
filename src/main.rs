//! `versifier`: opens the desktop app, or runs headless commands (generate,
//! info, bench). Thin on purpose: everything lives in the library.
// Windows: a GUI-subsystem program, so a double-click opens no console
// window; from a terminal, the command line attaches to it (see main).
#![cfg_attr(all(windows, not(debug_assertions)), windows_subsystem = "windows")]

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use versifier::engine::{
    Command as EngineCommand, Engine, EngineOptions, Event, GenerateJob, LoadSpec, Prompt,
};
use versifier::engine::{DeviceChoice, Precision};
use versifier::eval::bench::{
    run_bench, run_lifecycle, run_quality, BenchOptions, LifecycleOptions, QualityOptions,
};
use versifier::generate::forms::{layout, PoemForm};
use versifier::generate::{SamplingParams, StopReason};
use versifier::model::{inspect_safetensors, Gpt2Config, ModelFiles, WeightFormat};

#[derive(Parser)]
#[command(
    name = "versifier",
    version,
    about = "Writes poems with a local GPT-2 and gives the GPU back when it is done"
)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    /// Folder for the rotating log file (daily, 7 kept; always at `info` or
    /// finer). Default: the OS state/data folder, e.g. ~/.local/state/versifier/logs.
    /// `--log-dir none` writes no file.
    #[arg(long, global = true, env = "VERSIFIER_LOG_DIR")]
    log_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
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
struct GenerateArgs {
    /// Checkpoint folder (or a weights file inside one). Default: the bundled
    /// Tang model, wherever Versifier is installed.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text (empty starts from the model's start token).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Prompt as comma-separated token ids (overrides --prompt).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// auto (the first GPU when this build can use one, else the CPU), cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, f16 or bf16. On the CPU, f16/bf16 keep the weights at 2 bytes with
    /// f32 math: about twice as fast, exact for a model stored in f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Number of variations, decoded together as one batch.
    #[arg(long, default_value_t = 1)]
    variations: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Always take the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    /// Poem form enforced while decoding: free, wujue, qijue, wulv, qilv or
    /// acrostic:<head characters>.
    #[arg(long, default_value = "free")]
    form: String,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Treat the device as having at most this much free memory (MiB): loads
    /// that would not fit are refused with what would, as on a full GPU.
    #[arg(long, env = "VERSIFIER_MEMORY_BUDGET_MIB")]
    memory_budget_mib: Option<u64>,
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long, default_value = "data/corpus")]
    corpus: PathBuf,
    #[arg(long, default_value = "models/tang-poems")]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 6)]
    n_layer: usize,
    #[arg(long, default_value_t = 6)]
    n_head: usize,
    #[arg(long, default_value_t = 384)]
    n_embd: usize,
    #[arg(long, default_value_t = 128)]
    context: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 5000)]
    steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
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
    save_dtype: String,
}

#[derive(Args)]
struct BenchArgs {
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

/// Windows: reuse the console of the terminal that started us, if any, so the
/// command line prints there although the program has no console of its own.
#[cfg(windows)]
fn attach_parent_console() {
    #[link(name = "kernel32")]
    extern "system" {
        fn AttachConsole(process_id: u32) -> i32;
    }
    const ATTACH_PARENT_PROCESS: u32 = u32::MAX;
    // SAFETY: a plain Win32 call with a constant argument; failure (no parent
    // console, e.g. started from Explorer) is harmless and ignored.
    unsafe {
        AttachConsole(ATTACH_PARENT_PROCESS);
    }
}

fn main() {
    #[cfg(windows)]
    attach_parent_console();
    let cli = Cli::parse();
    versifier::device::pin_cpu_threads();
    let log_note = init_logging(&cli.log_level, cli.log_dir.as_deref());
    if let Some(note) = log_note {
        eprintln!("note: {note}");
    }
    if let Err(e) = run(cli) {
        let cause: &(dyn std::error::Error + 'static) = e.as_ref();
        eprintln!("error: {}", versifier::error_chain_text(cause));
        std::process::exit(1);
    }
}

/// Logs to stderr at `--log-level`, and to a daily-rotated file (7 kept) at
/// `info` or the finer of the two. Returns a notice when the file cannot be used.
fn init_logging(level: &str, dir: Option<&Path>) -> Option<String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let mut note = None;
    // A bare word that is not a level would parse as a target name and log
    // nothing useful, so only levels and `target=level` directives pass.
    let known = ["off", "error", "warn", "info", "debug", "trace"];
    let looks_valid = known.contains(&level.to_ascii_lowercase().as_str()) || level.contains('=');
    let parsed = if looks_valid {
        EnvFilter::try_new(level).ok()
    } else {
        None
    };
    let stderr_filter = parsed.unwrap_or_else(|| {
        note = Some(format!(
            "--log-level `{level}` is not a level (error, warn, info, debug, trace); using warn"
        ));
        EnvFilter::new("warn")
    });
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter);
    let dir = match dir {
        Some(d) if d.as_os_str() == "none" => None,
        Some(d) => Some(d.to_path_buf()),
        None => versifier::store::log_dir(),
    };
    let file = dir.and_then(|dir| {
        let built = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                tracing_appender::rolling::Builder::new()
                    .rotation(tracing_appender::rolling::Rotation::DAILY)
                    .filename_prefix("versifier")
                    .filename_suffix("log")
                    .max_log_files(7)
                    .build(&dir)
                    .map_err(|e| e.to_string())
            });
        match built {
            Ok(appender) => {
                let file_level = match level {
                    "debug" | "trace" => level,
                    _ => "info",
                };
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(appender)
                        .with_filter(EnvFilter::new(file_level)),
                )
            }
            Err(e) => {
                note = Some(format!(
                    "no log file: cannot write to {}: {e}",
                    dir.display()
                ));
                None
            }
        }
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "versifier started");
    note
}

fn run(cli: Cli) -> Result<()> {
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

fn run_generate(args: GenerateArgs) -> Result<()> {
    let device_choice = device_or_auto(&args.device)?;
    let model = model_or_bundled(args.model.clone())?;
    let precision: Precision = args.dtype.parse()?;
    let defaults = SamplingParams::default();
    let sampling = if args.greedy {
        SamplingParams {
            seed: args.seed.unwrap_or(defaults.seed),
            repetition_penalty: args.repetition_penalty.unwrap_or(1.0),
            ..SamplingParams::greedy()
        }
    } else {
        SamplingParams {
            greedy: false,
            temperature: args.temperature.unwrap_or(defaults.temperature),
            top_k: args.top_k.unwrap_or(defaults.top_k),
            top_p: args.top_p.unwrap_or(defaults.top_p),
            repetition_penalty: args
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            seed: args.seed.unwrap_or(defaults.seed),
        }
    };
    // Fail on bad settings before paying for a load.
    sampling.validate()?;
    if args.max_tokens == 0 {
        bail!("invalid setting `max_tokens`: must be at least 1");
    }
    let form: PoemForm = args.form.parse()?;
    let prompt = match &args.prompt_ids {
        Some(ids) => Prompt::Ids(ids.clone()),
        None => Prompt::Text(args.prompt.clone()),
    };

    // The same path as the window: the engine loads (after its fit check),
    // prepares the request and generates; this only prints its events.
    let engine = Engine::spawn(EngineOptions {
        idle_timeout: None,
        memory_budget: args.memory_budget_mib.map(|m| m * versifier::MIB),
        ..EngineOptions::default()
    })?;
    let remote = engine.remote();
    // Ctrl+C stops between tokens; the poem so far is printed as usual. A
    // second handler cannot be installed (tests call this once per process).
    let _ = ctrlc::set_handler(move || remote.cancel());
    let id = engine.next_request_id();
    engine.send(EngineCommand::Generate(GenerateJob {
        id,
        spec: LoadSpec {
            model: model.clone(),
            device: device_choice,
            precision,
        },
        prompt,
        form: form.clone(),
        variations: args.variations,
        max_new_tokens: args.max_tokens,
        sampling,
    }))?;

    let stream = !args.json && args.variations == 1;
    let mut stdout = std::io::stdout();
    // The prompt's text opens the output (an acrostic's heads come from the form).
    let echoed = if args.prompt_ids.is_none() && !matches!(form, PoemForm::Acrostic(_)) {
        args.prompt.trim().to_string()
    } else {
        String::new()
    };
    let mut streamed = false;
    let mut streamed_text = String::new();
    let mut load_ms = 0.0;
    let mut actual_device = device_choice;
    let gen = loop {
        let Some(event) = engine.recv() else {
            bail!("the engine stopped without finishing the request");
        };
        match event {
            Event::Loaded(report) => load_ms = report.load_ms,
            Event::Notice(n) => {
                if n.contains("running on the CPU") {
                    actual_device = DeviceChoice::Cpu;
                }
                eprintln!("note: {n}");
            }
            Event::Token {
                request,
                variation: 0,
                text,
            } if request == id && stream => {
                if !streamed {
                    let _ = write!(stdout, "{echoed}");
                    streamed = true;
                }
                streamed_text.push_str(&text);
                let _ = write!(stdout, "{}", text.replace('。', "。\n"));
                let _ = stdout.flush();
            }
            Event::Done {
                request,
                generation,
            } if request == id => break generation,
            Event::Error {
                request,
                message,
                partial,
                ..
            } if request == Some(id) || request.is_none() => {
                if let Some(p) = partial {
                    for v in p.variations.iter().filter(|v| !v.text.is_empty()) {
                        eprintln!("written before the error: {echoed}{}", v.text);
                    }
                }
                bail!("{message}");
            }
            _ => {}
        }
    };
    if gen.truncated_prompt_tokens > 0 {
        eprintln!(
            "note: the prompt and {} new tokens do not fit the model's context; the prompt's first {} tokens were dropped",
            args.max_tokens, gen.truncated_prompt_tokens
        );
    }
    if gen
        .variations
        .iter()
        .any(|v| v.stop == Some(StopReason::Cancelled))
    {
        eprintln!("note: stopped (Ctrl+C); the poem so far is below");
    }
    let generated: usize = gen.generated_tokens();
    let elapsed_s = (gen.timings.first_token_ms + gen.timings.decode_ms) / 1000.0;
    let tokens_per_s = if gen.timings.decode_ms > 0.0 {
        (generated.saturating_sub(gen.variations.len())) as f64 / (gen.timings.decode_ms / 1000.0)
    } else {
        0.0
    };
    let has_text = gen.variations.iter().any(|v| !v.text.is_empty());
    if args.json {
        let out = json!({
            "model": model.display().to_string(),
            "prompt": echoed,
            "prompt_ids": gen.prompt_ids,
            "truncated_prompt_tokens": gen.truncated_prompt_tokens,
            "ids": gen.variations.iter().map(|v| v.ids.clone()).collect::<Vec<_>>(),
            "text": gen.variations.iter().map(|v| v.text.clone()).collect::<Vec<_>>(),
            "stop": gen.variations.iter().map(|v| v.stop).collect::<Vec<_>>(),
            "load_ms": load_ms,
            "first_token_ms": gen.timings.first_token_ms,
            "tokens_per_s": tokens_per_s,
            "elapsed_s": elapsed_s,
            "device": actual_device.to_string(),
            "dtype": precision.to_string(),
        });
        println!("{}", serde_json::to_string(&out)?);
    } else if stream && has_text {
        if !streamed {
            let _ = write!(stdout, "{echoed}");
        }
        // The stream holds back an unfinished character until the end; what it
        // held is in the result, so the printed text is the result's text.
        let full = gen.variations.first().map_or("", |v| v.text.as_str());
        let rest = full
            .strip_prefix(streamed_text.as_str())
            .unwrap_or_default();
        println!("{}", rest.replace('。', "。\n"));
    } else {
        for (i, v) in gen.variations.iter().enumerate() {
            if has_text {
                println!(
                    "--- variation {} ---\n{}",
                    i + 1,
                    layout(&format!("{echoed}{}", v.text))
                );
            } else {
                println!("--- variation {} --- ids: {:?}", i + 1, v.ids);
            }
        }
    }
    Ok(())
}

fn run_info(path: &std::path::Path, as_json: bool) -> Result<()> {
    let files = ModelFiles::locate(path)?;
    let cfg = Gpt2Config::from_file(&files.config)?;
    let tensors = match files.format {
        WeightFormat::Safetensors => Some(inspect_safetensors(&files.weights)?.tensors.len()),
        WeightFormat::PytorchBin => None,
    };
    let tokenizer = match &files.tokenizer {
        Some(p) => Some(versifier::model::TextTokenizer::from_file(p, &cfg)?),
        None => None,
    };
    let params = cfg.param_count();
    let weights_bytes = std::fs::metadata(&files.weights)
        .map(|m| m.len())
        .unwrap_or(0);
    let bytes_per_dtype: serde_json::Map<String, serde_json::Value> = Precision::ALL
        .iter()
        .map(|p| (p.to_string(), json!(params * p.bytes())))
        .collect();
    let info = json!({
        "model": files.dir.display().to_string(),
        "architecture": "GPT2LMHeadModel",
        "weights": files.weights.display().to_string(),
        "format": files.format,
        "weights_file_bytes": weights_bytes,
        "tensors": tensors,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
        "n_positions": cfg.n_positions, "vocab_size": cfg.vocab_size,
        "activation": cfg.activation.hf_name(),
        "params": params,
        "bytes_per_dtype": bytes_per_dtype,
        "kv_cache_bytes_per_token_f32": cfg.kv_cache_bytes(1, 1, 4),
        "tokenizer": tokenizer.as_ref().map(|t| json!({"kind": t.kind(), "path": t.path().display().to_string(), "vocab": t.vocab_size()})),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("model       {}", files.dir.display());
        println!(
            "weights     {} ({:?}, {:.1} MiB)",
            files.weights.display(),
            files.format,
            versifier::mib_f64(weights_bytes as u64)
        );
        println!(
            "shape       GPT-2, {} layers, {} heads, {} wide, {} positions, vocab {}",
            cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab_size
        );
        println!("parameters  {} ({:.1}M)", params, params as f64 / 1e6);
        for p in Precision::ALL {
            println!(
                "  as {:<5}   {:.1} MiB",
                p.to_string(),
                (params * p.bytes()) as f64 / 1048576.0
            );
        }
        match &tokenizer {
            Some(t) => println!(
                "tokenizer   {:?}, {} tokens ({})",
                t.kind(),
                t.vocab_size(),
                t.path().display()
            ),
            None => println!("tokenizer   none (generate needs --prompt-ids)"),
        }
    }
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let opts = versifier::train::TrainOptions {
        corpus: a.corpus,
        out: a.out,
        device: a.device.parse()?,
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
        min_char_count: a.min_char_count,
        save_dtype: a.save_dtype.parse()?,
        stop_after: a.stop_after,
        ..Default::default()
    };
    let bar = indicatif::ProgressBar::new(opts.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden: print evaluations and every 100th step instead.
    let plain = bar.is_hidden();
    let summary = versifier::train::train(&opts, |msg| {
        let step: Option<u64> = msg
            .strip_prefix("step ")
            .and_then(|m| m.split(['/', ':']).next())
            .and_then(|s| s.parse().ok());
        if let Some(step) = step {
            bar.set_position(step);
        }
        bar.set_message(msg.to_string());
        let milestone = msg.contains("eval")
            || msg.starts_with("resumed")
            || step.is_some_and(|s| s % 100 == 0);
        if plain && milestone {
            eprintln!("{msg}");
        } else if milestone && msg.contains("eval") {
            bar.suspend(|| eprintln!("{msg}"));
        }
    })?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
