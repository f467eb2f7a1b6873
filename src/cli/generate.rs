//! `versifier generate`: sends the request to the engine (the window's path)
//! and prints its events: the streamed poem, notices, refusals with options.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use versifier::engine::{
    Command as EngineCommand, Engine, EngineOptions, Event, GenerateJob, LoadSpec, Prompt,
};
use versifier::engine::{DeviceChoice, Precision};
use versifier::generate::{SamplingParams, StopReason};
use versifier::poetry::forms::{layout, PoemForm};
use versifier::poetry::keywords::parse_theme;
use versifier::poetry::{Repeats, RulesMode, TemplateStart, VerseRules};

use super::{model_or_bundled, DeviceArg};

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint folder (or a weights file inside one). Default: the bundled
    /// Tang model, wherever Versifier is installed (its 詞 model, models/song-ci,
    /// writes --form ci:TUNE; give a copy of models/tang-poems to have it write them).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text (empty starts from the model's start token): the poem's
    /// first characters, or whole lines with their marks to keep them and
    /// have the rest rewritten (春風入律作花時，).
    #[arg(long, default_value = "")]
    prompt: String,
    /// What the poem is about: 1 to 4 words, each held in every poem at a
    /// place where it keeps the form's rules ("秋江 夜雨", 秋江,夜雨, 秋江、夜雨;
    /// simplified or traditional). A sentence (寫一首關於秋夜思鄉的詩) is
    /// reduced to the words of classical verse in it. Combines with --prompt.
    #[arg(long, default_value = "")]
    keywords: String,
    /// Prompt as comma-separated token ids (overrides --prompt).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// auto (the first GPU when this build can use one, else the CPU), cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceArg,
    /// f32, f16 or bf16. On the CPU, f16/bf16 keep the weights at 2 bytes with
    /// f32 math: about twice as fast, exact for a model stored in f16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
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
    /// Poem form enforced while decoding: free, wujue, qijue, wulv, qilv,
    /// acrostic:<head characters>, or ci:<tune> for a 詞 to a named tune
    /// (ci:浣溪沙; `versifier forms` lists the tunes).
    #[arg(long, default_value = "free")]
    form: PoemForm,
    /// Rhyme (平水韻) and tones (平仄) for the regulated forms (wujue, qijue,
    /// wulv, qilv, acrostic of 4 or 8 heads) and for free verse from its second
    /// line on, once its first line has set 5 or 7 characters, and a 詞's
    /// rhymes where its tune rhymes (詞林正韻) and its tune's tones (詞譜):
    /// strict keeps them while decoding; off is the form alone.
    #[arg(long, default_value = "strict")]
    rules: RulesMode,
    /// The rhyme group: a 平聲 group by name (東, 一先, 下平一先) or by any
    /// character in it (紅); simplified accepted. For a 詞 any group (一董,
    /// 入聲六月) or character (月): its first rhyme keeps that group's 部 of
    /// the 詞林正韻. Default: the poem chooses.
    #[arg(long)]
    rhyme: Option<String>,
    /// The tonal template: pingqi (平起), zeqi (仄起) or any.
    #[arg(long, default_value = "any")]
    template: TemplateStart,
    /// guard: no character three times in a row, no line twice, and no
    /// character more than twice in a poem (in a 詞, the tune's cap from the data: 2 to 4), in any form;
    /// allow: decode as before the guard existed.
    #[arg(long, default_value = "guard")]
    repeats: Repeats,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Treat the device as having at most this much free memory (MiB): loads
    /// that would not fit are refused with what would, as on a full GPU.
    #[arg(long, env = "VERSIFIER_MEMORY_BUDGET_MIB")]
    memory_budget_mib: Option<u64>,
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let device_choice = args.device.resolve();
    let model = model_or_bundled(args.model.clone())?;
    let precision = args.dtype;
    let sampling = sampling_of(&args);
    // Fail on bad settings before paying for a load.
    sampling.validate()?;
    if args.max_tokens == 0 {
        bail!("invalid setting `max_tokens`: must be at least 1");
    }
    let form = args.form.clone();
    // A 詞 tune on the bundled model is written by the bundled 詞 model (the
    // engine does the same to every job; said here so --json names it).
    let model = versifier::store::model_for_form(&model, &form);
    let verse = verse_of(&args, &form)?;
    let verse_keywords = verse.keywords.clone();
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
        verse,
    }))?;

    let stream = !args.json && args.variations == 1;
    let mut stdout = std::io::stdout();
    // The prompt's text opens the output (an acrostic's heads come from the form).
    let echoed = if args.prompt_ids.is_none() {
        versifier::generate::echoed_prompt(&args.prompt, &form)
    } else {
        String::new()
    };
    let Received {
        gen,
        load_ms,
        actual_device,
        streamed,
        streamed_text,
    } = receive(&engine, id, stream, &echoed, device_choice)?;
    print_notes(&gen, args.max_tokens);
    let has_text = gen.variations.iter().any(|v| !v.text.is_empty());
    if args.json {
        let out = json_answer(
            &gen,
            &model,
            &echoed,
            &verse_keywords,
            load_ms,
            actual_device,
            precision,
        );
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
        print_variations(&gen, &echoed, has_text);
    }
    Ok(())
}

/// The sampling settings the arguments ask for (greedy, or the defaults with
/// what was given).
fn sampling_of(args: &GenerateArgs) -> SamplingParams {
    let defaults = SamplingParams::default();
    if args.greedy {
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
    }
}

/// What the user should know about a finished generation: a prompt cut to
/// fit, ids without text, a stop by Ctrl+C.
fn print_notes(gen: &versifier::generate::Generation, max_tokens: usize) {
    if gen.truncated_prompt_tokens > 0 {
        eprintln!(
            "note: the prompt and {} new tokens do not fit the model's context; the prompt's first {} tokens were dropped",
            max_tokens, gen.truncated_prompt_tokens
        );
    }
    if gen.ids_without_text > 0 {
        eprintln!(
            "note: {} of the {} generated ids are past the tokenizer's vocabulary and have no text",
            gen.ids_without_text,
            gen.generated_tokens()
        );
    }
    if gen
        .variations
        .iter()
        .any(|v| v.stop == Some(StopReason::Cancelled))
    {
        eprintln!("note: stopped (Ctrl+C); the poem so far is below");
    }
}

/// The verse rules the arguments ask for, the keywords read from the theme
/// (said when a sentence was reduced to them), the rhyme checked against the
/// form before a load is paid for.
fn verse_of(args: &GenerateArgs, form: &PoemForm) -> Result<VerseRules> {
    let theme = parse_theme(&args.keywords)
        .map_err(|e| anyhow::anyhow!("invalid setting `keywords`: {e}"))?;
    if theme.reduced {
        eprintln!(
            "note: keywords taken from the theme: {}",
            theme.words.join(" ")
        );
    }
    let verse = VerseRules {
        mode: args.rules,
        rhyme: args.rhyme.clone(),
        template: args.template,
        repeats: args.repeats,
        keywords: theme.words,
        ..VerseRules::default()
    };
    // A bad rhyme name fails before paying for a load.
    verse.check_rhyme_for(form)?;
    Ok(verse)
}

/// The `--json` answer.
fn json_answer(
    gen: &versifier::generate::Generation,
    model: &std::path::Path,
    echoed: &str,
    keywords: &[String],
    load_ms: f64,
    actual_device: DeviceChoice,
    precision: Precision,
) -> serde_json::Value {
    let generated: usize = gen.generated_tokens();
    let elapsed_s = (gen.timings.first_token_ms + gen.timings.decode_ms) / 1000.0;
    let tokens_per_s = if gen.timings.decode_ms > 0.0 {
        (generated.saturating_sub(gen.variations.len())) as f64 / (gen.timings.decode_ms / 1000.0)
    } else {
        0.0
    };
    json!({
        "model": model.display().to_string(),
        "prompt": echoed,
        "keywords": keywords,
        "prompt_ids": gen.prompt_ids,
        "truncated_prompt_tokens": gen.truncated_prompt_tokens,
        "ids": gen.variations.iter().map(|v| v.ids.clone()).collect::<Vec<_>>(),
        "text": gen.variations.iter().map(|v| v.text.clone()).collect::<Vec<_>>(),
        "stop": gen.variations.iter().map(|v| v.stop).collect::<Vec<_>>(),
        "relaxed": gen.variations.iter().map(|v| v.relaxed.clone()).collect::<Vec<_>>(),
        "ids_without_text": gen.ids_without_text,
        "load_ms": load_ms,
        "first_token_ms": gen.timings.first_token_ms,
        "tokens_per_s": tokens_per_s,
        "elapsed_s": elapsed_s,
        "device": actual_device.to_string(),
        "dtype": precision.to_string(),
    })
}

/// Each variation under its number, laid out in lines (or its ids, when the
/// tokenizer gave no text).
fn print_variations(gen: &versifier::generate::Generation, echoed: &str, has_text: bool) {
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

/// What the engine sent for the request: its generation, the load's time and
/// device, and what was streamed to stdout on the way.
struct Received {
    gen: versifier::generate::Generation,
    load_ms: f64,
    actual_device: DeviceChoice,
    streamed: bool,
    streamed_text: String,
}

/// Reads the engine's events for request `id` until its answer, streaming
/// variation 0's tokens to stdout when `stream`; an error is the command's.
fn receive(
    engine: &Engine,
    id: versifier::engine::RequestId,
    stream: bool,
    echoed: &str,
    device_choice: DeviceChoice,
) -> Result<Received> {
    let mut stdout = std::io::stdout();
    let mut streamed = false;
    let mut streamed_text = String::new();
    let mut load_ms = 0.0;
    let mut actual_device = device_choice;
    let gen = loop {
        let Some(event) = engine.recv() else {
            bail!("the engine stopped without finishing the request");
        };
        match event {
            Event::Loaded(report) => {
                load_ms = report.load_ms;
                actual_device = report.device;
            }
            Event::Notice(n) => eprintln!("note: {n}"),
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
    Ok(Received {
        gen,
        load_ms,
        actual_device,
        streamed,
        streamed_text,
    })
}
