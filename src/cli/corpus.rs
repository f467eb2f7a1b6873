//! `versifier corpus`: the chinese-poetry collection as training text.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct CorpusArgs {
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
    /// Also use the Song 詞 that follow their tune's pattern, tagged `[CI:tune]`
    /// and converted to traditional script like the 詩 (OpenCC, phrase-aware).
    #[arg(long)]
    ci: bool,
    /// Simplified -> traditional table applied to the 詞 after that conversion,
    /// for anything it leaves (a model's s2t.tsv, e.g. models/tang-poems/s2t.tsv).
    #[arg(long)]
    s2t: Option<PathBuf>,
}

pub fn run_corpus(args: CorpusArgs) -> Result<()> {
    let stats = versifier::train::prepare_corpus(&versifier::train::CorpusOptions {
        source: args.source,
        out: args.out,
        include_song: args.song,
        holdout_per_10k: args.holdout_per_10k,
        seed: args.seed,
        include_ci: args.ci,
        s2t: args.s2t,
    })?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}
