//! `versifier forms`: the poem forms `--form` takes, and every 詞 tune with
//! its line pattern (from the Song 詞 collection).

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Result;
use clap::Args;

use versifier::poetry::tunes::ci_tunes;

#[derive(Args)]
pub struct FormsArgs {
    /// Print the tunes as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_forms(args: FormsArgs) -> Result<()> {
    if args.json {
        let tunes: Vec<serde_json::Value> = ci_tunes()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "form": format!("ci:{}", t.name),
                    "traditional": t.traditional,
                    "pattern": t.pattern_text(),
                    "characters": t.characters(),
                    "poems": t.poems,
                    "share": t.share,
                    "repeat_cap": t.repeat_cap,
                    "rhymes": t.rhymes_text(),
                    "rhyme_repeats": t.rhyme_repeats,
                    "tones": t.tones_text(),
                })
            })
            .collect();
        return print(&format!("{}\n", serde_json::to_string_pretty(&tunes)?));
    }
    let mut text = String::new();
    writeln!(
        text,
        "free            the model chooses the shape with line 1 (strict rules: rhyme and tones from line 2)"
    )?;
    writeln!(text, "wujue  五絕      4 lines of 5 characters")?;
    writeln!(text, "qijue  七絕      4 lines of 7 characters")?;
    writeln!(text, "wulv   五律      8 lines of 5 characters")?;
    writeln!(text, "qilv   七律      8 lines of 7 characters")?;
    writeln!(
        text,
        "acrostic:春夏秋冬  藏頭: 4 or 8 heads, one starting each line of 7"
    )?;
    writeln!(
        text,
        "ci:<tune>       詞 to a tune ({} tunes; simplified or traditional name; rhymes per line: - none, else the rhyme's letter and tone, 中 either):",
        ci_tunes().len()
    )?;
    for t in ci_tunes() {
        writeln!(
            text,
            "  {}\t{}\t{}\t{} poems, {:.0}% in this pattern\t{}",
            t.name,
            t.traditional,
            t.pattern_text(),
            t.poems,
            t.share * 100.0,
            t.rhymes_text()
        )?;
    }
    print(&text)
}

/// Writes `text` to standard output; a reader that went away (`| head`) ends
/// the listing quietly.
fn print(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
