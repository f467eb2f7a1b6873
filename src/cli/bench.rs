//! `versifier bench`: speed, lifecycle/soak and quality benchmarks (JSON).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use versifier::engine::{DeviceChoice, Precision};
use versifier::eval::bench::{run_bench, run_lifecycle, BenchOptions, LifecycleOptions};
use versifier::eval::keyword_bench::{run_keyword_bench, KeywordBenchOptions};
use versifier::eval::quality::{run_quality, QualityOptions};

#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark random weights of a known shape: gpt2-124m or tiny.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    dtype: Precision,
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
    /// The constrained forms of --quality, comma-separated (default: wujue,
    /// qijue, wulv, qilv and two acrostics); a 詞 such as ci:浣溪沙 is judged
    /// by its tune's rhymes.
    #[arg(long, value_delimiter = ',')]
    forms: Vec<versifier::poetry::forms::PoemForm>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keywords held in poems (needs --model): for each set of this file
    /// (id, form, words; packaging/bench/keywords-heldout.tsv), a poem with
    /// the keywords placed, one with the first keyword as the prompt, and one
    /// with neither: coverage, every-keyword share, rules kept, fluency cost,
    /// distinct-2, time per token.
    #[arg(long, value_name = "FILE", requires = "model", conflicts_with_all = ["lifecycle", "quality"])]
    keywords: Option<PathBuf>,
    /// At most this many keyword sets (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Drive a server on loopback in this process with concurrent clients:
    /// requests/s, latency percentiles, tokens/s and the batching check.
    #[arg(long, conflicts_with_all = ["lifecycle", "quality"])]
    serve: bool,
    /// Concurrent clients of --serve.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests each --serve client sends, one after another.
    #[arg(long, default_value_t = 4)]
    requests_per_client: usize,
    /// With --serve: open-loop load instead, this many arrivals per second
    /// (Poisson) whether or not earlier ones were answered. Without it (but
    /// with --duration) the rate is --load-share of the capacity measured by
    /// four closed-loop clients.
    #[arg(long, requires = "serve")]
    rate: Option<f64>,
    /// With --serve: how long the open-loop arrivals last (e.g. 60s).
    #[arg(long, requires = "serve")]
    duration: Option<String>,
    /// The share of the measured capacity an open-loop run arrives at.
    #[arg(long, default_value_t = 0.6, requires = "serve")]
    load_share: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let report = if args.serve && (args.rate.is_some() || args.duration.is_some()) {
        if !(args.load_share > 0.0 && args.load_share <= 4.0) {
            anyhow::bail!("invalid setting `--load-share {}`: give a share of capacity above 0 and at most 4 (0.6 is 60%)", args.load_share);
        }
        if let Some(rate) = args.rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
            anyhow::bail!("invalid setting `--rate {rate}`: give arrivals per second above 0 (e.g. --rate 10)");
        }
        serde_json::to_value(versifier::serve::open_loop::run(
            &versifier::serve::open_loop::OpenLoopOptions {
                model: super::model_or_bundled(args.model)?,
                device: args.device,
                precision: args.dtype,
                rate: args.rate,
                load_share: args.load_share,
                duration: match &args.duration {
                    Some(text) => super::serve::duration("duration", text)?.context(
                        "invalid setting `duration`: `never`; give a length such as 60s",
                    )?,
                    None => std::time::Duration::from_secs(60),
                },
                seed: args.seed,
            },
        )?)?
    } else if args.serve {
        serde_json::to_value(versifier::serve::bench::run(
            &versifier::serve::bench::ServeBenchOptions {
                model: super::model_or_bundled(args.model)?,
                device: args.device,
                precision: args.dtype,
                clients: args.clients,
                requests_per_client: args.requests_per_client,
            },
        )?)?
    } else if let Some(sets) = args.keywords {
        serde_json::to_value(run_keyword_bench(&KeywordBenchOptions {
            model: args.model.context("--keywords needs --model")?,
            device: args.device,
            sets,
            limit: args.limit,
            seed: args.seed,
        })?)?
    } else if args.quality {
        serde_json::to_value(run_quality(&QualityOptions {
            model: args.model.context("--quality needs --model")?,
            device: args.device,
            samples_per_prompt: args.samples_per_prompt,
            constrained_samples: args.constrained_samples,
            seed: args.seed,
            corpus: args.corpus,
            forms: args.forms,
        })?)?
    } else if args.lifecycle {
        serde_json::to_value(run_lifecycle(&LifecycleOptions {
            model: args.model.context("--lifecycle needs --model")?,
            device: args.device,
            precision: args.dtype,
            cycles: args.cycles,
            new_tokens: args.new_tokens,
        })?)?
    } else {
        // JSON is the only output format; --json is accepted for clarity.
        let _ = args.json;
        serde_json::to_value(run_bench(&BenchOptions {
            model: args.model,
            synthetic: args.synthetic,
            device: args.device,
            precision: args.dtype,
            prompt_tokens: args.prompt_tokens,
            new_tokens: args.new_tokens,
            batches: args.batches,
        })?)?
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
