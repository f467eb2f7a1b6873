//! `versifier check`: a poem's tones, rhyme and broken rules, with a verdict.

use std::io::Read;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    /// The poem (simplified or traditional; lines split by punctuation or
    /// line breaks), or `-` (the default) to read it from standard input.
    #[arg(default_value = "-")]
    poem: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_check(args: CheckArgs) -> Result<()> {
    let text = if args.poem == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the poem from standard input")?;
        text
    } else {
        args.poem
    };
    if !text.chars().any(versifier::poetry::forms::is_hanzi) {
        bail!("no Chinese characters to check: give the poem as an argument or on standard input");
    }
    let report = versifier::poetry::check_poem(&text);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_text());
    }
    Ok(())
}
