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
    /// Check it as a 詞 to this tune (浣溪沙, or ci:浣溪沙; `versifier forms`
    /// lists the tunes): its rhymes, where the tune's Song 詞 rhyme, in the
    /// 詞林正韻.
    #[arg(long)]
    tune: Option<String>,
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
    if !text.chars().any(versifier::poetry::text::is_hanzi) {
        bail!("no Chinese characters to check: give the poem as an argument or on standard input");
    }
    let report = match &args.tune {
        None => versifier::poetry::check_poem(&text),
        Some(name) => {
            let bare = name.trim().trim_start_matches("ci:");
            let Some(tune) = versifier::poetry::tunes::find_tune(bare) else {
                bail!("invalid setting `--tune`: no tune `{bare}`; `versifier forms` lists the 70 tunes");
            };
            let shape: Vec<String> = versifier::poetry::text::poem_lines(&text)
                .iter()
                .map(|l| l.len().to_string())
                .collect();
            match versifier::poetry::check_ci::check_ci(&text, tune) {
                Some(report) => report,
                None => bail!(
                    "the poem's lines ({}) are not {}'s pattern {}: a 詞 to it has {} lines of those lengths",
                    shape.join("/"),
                    tune.traditional,
                    tune.pattern_text(),
                    tune.lines.len()
                ),
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_text());
        if report.form.is_none() {
            if let Some(hint) = tune_hint(&text) {
                println!("{hint}");
            }
        }
    }
    Ok(())
}

/// For a poem that is no 詩 but has a tune's line lengths: which tunes, and
/// the command that checks its rhymes.
fn tune_hint(text: &str) -> Option<String> {
    let lengths: Vec<usize> = versifier::poetry::text::poem_lines(text)
        .iter()
        .map(Vec::len)
        .collect();
    let tunes: Vec<&str> = versifier::poetry::tunes::ci_tunes()
        .iter()
        .filter(|t| t.lines.iter().map(|(n, _)| *n).eq(lengths.iter().copied()))
        .map(|t| t.traditional.as_str())
        .collect();
    let first = tunes.first()?;
    Some(format!(
        "its lines are those of the tune {}: `versifier check --tune {first}` checks its rhymes",
        tunes.join(" / ")
    ))
}
