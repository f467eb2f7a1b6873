//! The repeat guard: with it (the default) no poem has the same character
//! three times in a row, more than twice (a 詞: three times), or a line twice,
//! in any form; without it (`--repeats allow`) the same requests do.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::path::PathBuf;

use candle_core::{DType, Device};
use versifier::generate::{generate, prepare_request, Prompt, RequestSettings, SamplingParams};
use versifier::poetry::forms::PoemForm;
use versifier::poetry::{Repeats, RulesMode, VerseRules};

/// (characters three in a row or past the poem's cap, lines seen before) in `poem`.
fn repeats_in(poem: &str, cap: usize) -> (usize, usize) {
    let chars: Vec<char> = poem.chars().collect();
    let triples = chars
        .windows(3)
        .filter(|w| w[0] == w[1] && w[1] == w[2] && versifier::poetry::text::is_hanzi(w[0]))
        .count();
    let mut counts = std::collections::HashMap::new();
    for c in chars
        .iter()
        .filter(|c| versifier::poetry::text::is_hanzi(**c))
    {
        *counts.entry(*c).or_insert(0usize) += 1;
    }
    let over_cap: usize = counts.values().map(|n| n.saturating_sub(cap)).sum();
    let triples = triples + over_cap;
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<&str> = poem.split(['，', '。']).filter(|l| !l.is_empty()).collect();
    let repeated = lines.iter().filter(|l| !seen.insert(**l)).count();
    (triples, repeated)
}

fn repeats_over_requests(repeats: Repeats) -> (usize, usize, usize) {
    let model = versifier::model::load_model(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let (mut triples, mut lines, mut poems) = (0, 0, 0);
    let forms = ["free", "wujue", "qijue", "wulv", "qilv", "ci:浣溪沙"];
    for (i, form) in forms.iter().enumerate() {
        // A 詞's cap is its tune's (from the data: 2 for 浣溪沙).
        let cap = form.strip_prefix("ci:").map_or(2, |t| {
            versifier::poetry::tunes::find_tune(t).unwrap().repeat_cap
        });
        let form: PoemForm = form.parse().unwrap();
        for (j, start) in ["月", "山", "江", "花"].iter().enumerate() {
            let prompt = Prompt::Text((*start).into());
            // Cold sampling and no repetition penalty (a soft guard of its
            // own): where a small model loops, so it repeats itself often
            // enough to see.
            let sampling = SamplingParams {
                temperature: 0.3,
                repetition_penalty: 1.0,
                seed: (i * 10 + j) as u64,
                ..SamplingParams::default()
            };
            let verse = VerseRules {
                mode: RulesMode::Off,
                repeats,
                ..VerseRules::default()
            };
            let settings = RequestSettings {
                prompt: &prompt,
                form: &form,
                variations: 8,
                max_new_tokens: 72,
                sampling: &sampling,
                verse: &verse,
            };
            let req = prepare_request(&model, &settings).unwrap();
            let g = generate(
                &model.model,
                &req,
                |id| tok.token_bytes(id),
                &|| false,
                |_| {},
            )
            .unwrap();
            for v in &g.variations {
                let (t, l) = repeats_in(&format!("{start}{}", v.text), cap);
                triples += t;
                lines += l;
                poems += 1;
            }
        }
    }
    (triples, lines, poems)
}

#[test]
fn with_the_guard_no_poem_overuses_a_character_or_repeats_a_line_and_without_it_some_do() {
    let (triples, lines, poems) = repeats_over_requests(Repeats::Guard);
    assert_eq!(poems, 192);
    assert_eq!(
        (triples, lines),
        (0, 0),
        "guarded: {triples} runs of three, {lines} repeated lines"
    );
    let (triples, lines, _) = repeats_over_requests(Repeats::Allow);
    assert!(
        triples + lines > 0,
        "unguarded, the same requests repeat themselves"
    );
    eprintln!("unguarded: {triples} overused characters, {lines} repeated lines in {poems} poems");
}
