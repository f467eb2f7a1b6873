//! `versifier bench --keywords FILE`: how well poems hold what the user asks.
//! For every keyword set of the file (`id<TAB>form<TAB>words`, made from
//! held-out poems by `packaging/corpus/make_theme_words.py`), one poem from
//! the same seed in three ways:
//!
//! - **placed**: the keywords held by construction (`poetry::keywords`);
//! - **first keyword as prompt**: what a user could do before keywords;
//! - **plain**: the same request with no keywords and no prompt, the measure
//!   of the fluency cost (mean log-probability per token under the model with
//!   no mask, plain minus placed) and of the time per token.
//!
//! Each way reports keyword coverage, the share of poems holding every
//! keyword, the refusals (with their reasons), the rules kept by our checker,
//! distinct-2, repeated characters and the time per token; the poems are in
//! the report for an independent checker (`packaging/bench/keyword-check.py`).

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::bench::BenchError;
use super::quality::{distinct_2, mean_logprob, repeated_chars_per_poem, sample_batch, Sample};
use crate::device::{open_device, DeviceChoice};
use crate::generate::{poem_prompt, GenerateError};
use crate::model::{load_model, LoadError, LoadedModel, TextTokenizer};
use crate::poetry::forms::{satisfies, PoemForm};
use crate::poetry::{check_in_form, VerseRules};

/// Options of `versifier bench --keywords`.
#[derive(Debug, Clone)]
pub struct KeywordBenchOptions {
    pub model: PathBuf,
    pub device: DeviceChoice,
    /// The keyword sets (see the module doc).
    pub sets: PathBuf,
    /// At most this many sets (all when 0).
    pub limit: usize,
    pub seed: u64,
}

/// One keyword set of the file.
#[derive(Debug, Clone, Serialize)]
pub struct KeywordSet {
    pub id: String,
    pub form: String,
    pub words: Vec<String>,
}

/// The figures of one way of asking.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeywordArm {
    pub requests: usize,
    /// Requests refused before anything was written (a keyword no place takes).
    pub refused: usize,
    pub poems: usize,
    /// Keywords asked, over every request (refused ones included).
    pub keywords_asked: usize,
    /// Of those, the ones the poem holds.
    pub keywords_in_poems: usize,
    pub coverage: f64,
    pub poems_with_every_keyword: usize,
    /// Of all requests.
    pub every_keyword_share: f64,
    /// Poems of the form's shape ended by the stop token.
    pub well_formed: usize,
    /// Of the poems: rhyme and tones kept, by our checker.
    pub rules_kept: usize,
    pub distinct_2: f64,
    pub repeated_chars_per_poem: f64,
    /// Mean log-probability per generated token under the model, unmasked.
    pub mean_logprob: f64,
    pub tokens: usize,
    /// Wall time of the decodes (prompt included) per generated token.
    pub ms_per_token: f64,
}

/// A poem of the report, for an independent checker.
#[derive(Debug, Clone, Serialize)]
pub struct BenchPoem {
    pub set: String,
    pub way: &'static str,
    pub form: String,
    pub text: String,
}

/// The report (JSON).
#[derive(Debug, Serialize)]
pub struct KeywordReport {
    pub model: String,
    pub sets_file: String,
    pub settings: String,
    pub sets: usize,
    pub placed: KeywordArm,
    pub first_keyword_prompt: KeywordArm,
    pub plain: KeywordArm,
    /// `plain.mean_logprob - placed.mean_logprob`, nats per token.
    pub fluency_cost: f64,
    /// `placed.ms_per_token / plain.ms_per_token`.
    pub time_per_token_ratio: f64,
    /// The refusals of the placed way: set id and reason.
    pub refusals: Vec<(String, String)>,
    pub poems: Vec<BenchPoem>,
}

/// Reads the sets file: `id<TAB>form<TAB>words`, `#` comments.
pub fn read_sets(path: &std::path::Path) -> Result<Vec<KeywordSet>, BenchError> {
    let io = |source: std::io::Error| BenchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(n, l)| {
            let fields: Vec<&str> = l.split('\t').collect();
            match fields.as_slice() {
                [id, form, words] => Ok(KeywordSet {
                    id: (*id).to_string(),
                    form: (*form).to_string(),
                    words: words.split_whitespace().map(String::from).collect(),
                }),
                _ => Err(io(std::io::Error::other(format!(
                    "line {}: expected id<TAB>form<TAB>words, found {} field(s)",
                    n + 1,
                    fields.len()
                )))),
            }
        })
        .collect()
}

/// One way of asking: the prompt and keywords it sends for a set.
#[derive(Clone, Copy)]
enum Way {
    Placed,
    FirstKeywordPrompt,
    Plain,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::FirstKeywordPrompt => "first_keyword_prompt",
            Self::Plain => "plain",
        }
    }

    fn request(self, set: &KeywordSet) -> (String, Vec<String>) {
        match self {
            Self::Placed => (String::new(), set.words.clone()),
            Self::FirstKeywordPrompt => (set.words.first().cloned().unwrap_or_default(), vec![]),
            Self::Plain => (String::new(), Vec::new()),
        }
    }
}

/// The poems of one way over every set, with its figures.
struct WayRun {
    arm: KeywordArm,
    samples: Vec<Sample>,
    poems: Vec<BenchPoem>,
    refusals: Vec<(String, String)>,
    seconds: f64,
}

fn run_way(
    loaded: &LoadedModel,
    tok: &TextTokenizer,
    sets: &[KeywordSet],
    way: Way,
    seed: u64,
) -> Result<WayRun, BenchError> {
    let mut run = WayRun {
        arm: KeywordArm::default(),
        samples: Vec::new(),
        poems: Vec::new(),
        refusals: Vec::new(),
        seconds: 0.0,
    };
    for (i, set) in sets.iter().enumerate() {
        let form: PoemForm = set.form.parse().map_err(|e| GenerateError::Invalid {
            field: "form",
            problem: format!("keyword set {}: {e}", set.id),
        })?;
        let (prompt, keywords) = way.request(set);
        let verse = VerseRules {
            keywords,
            ..VerseRules::default()
        };
        run.arm.requests += 1;
        run.arm.keywords_asked += set.words.len();
        let (ids, constraint) = match poem_prompt(tok, &prompt, &form, &verse) {
            Ok(p) => p,
            Err(GenerateError::Invalid {
                field: "keywords",
                problem,
            }) => {
                run.arm.refused += 1;
                run.refusals.push((set.id.clone(), problem));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let start = constraint
            .as_ref()
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let began = Instant::now();
        let (mut samples, _) =
            sample_batch(loaded, tok, (ids, constraint), &start, 1, seed + i as u64)?;
        run.seconds += began.elapsed().as_secs_f64();
        for s in samples.drain(..) {
            let held = set
                .words
                .iter()
                .filter(|w| s.text.contains(w.as_str()))
                .count();
            run.arm.keywords_in_poems += held;
            run.arm.poems_with_every_keyword += usize::from(held == set.words.len());
            run.arm.poems += 1;
            if s.finished && satisfies(&s.text, &form) {
                run.arm.well_formed += 1;
                let report = check_in_form(&s.text, &form);
                run.arm.rules_kept += usize::from(report.rhyme_kept && report.tones_kept);
            }
            run.poems.push(BenchPoem {
                set: set.id.clone(),
                way: way.name(),
                form: set.form.clone(),
                text: s.text.clone(),
            });
            run.samples.push(s);
        }
    }
    Ok(run)
}

/// Fills the arm's figures that need the model or all poems.
fn finish(loaded: &LoadedModel, run: &mut WayRun) -> Result<(), BenchError> {
    let arm = &mut run.arm;
    let texts = || run.samples.iter().map(|s| s.text.as_str());
    arm.coverage = arm.keywords_in_poems as f64 / arm.keywords_asked.max(1) as f64;
    arm.every_keyword_share = arm.poems_with_every_keyword as f64 / arm.requests.max(1) as f64;
    arm.distinct_2 = distinct_2(texts());
    arm.repeated_chars_per_poem = repeated_chars_per_poem(texts());
    let mut logprob = 0.0;
    for s in &run.samples {
        logprob += mean_logprob(&loaded.model, s)?;
    }
    arm.mean_logprob = logprob / run.samples.len().max(1) as f64;
    arm.tokens = run.samples.iter().map(|s| s.ids.len()).sum();
    arm.ms_per_token = 1000.0 * run.seconds / arm.tokens.max(1) as f64;
    Ok(())
}

/// Runs the benchmark (see the module doc).
pub fn run_keyword_bench(opts: &KeywordBenchOptions) -> Result<KeywordReport, BenchError> {
    let mut sets = read_sets(&opts.sets)?;
    if opts.limit > 0 {
        sets.truncate(opts.limit);
    }
    let device = open_device(opts.device)?;
    let loaded = load_model(&opts.model, &device, candle_core::DType::F32)?;
    let tok = loaded.tokenizer.as_ref().ok_or_else(|| {
        BenchError::Load(LoadError::NoWeights {
            path: opts.model.clone(),
            problem: "the keyword benchmark needs a tokenizer".into(),
        })
    })?;
    let mut runs = Vec::new();
    for way in [Way::Placed, Way::FirstKeywordPrompt, Way::Plain] {
        let mut run = run_way(&loaded, tok, &sets, way, opts.seed)?;
        finish(&loaded, &mut run)?;
        runs.push(run);
    }
    let [placed, first, plain]: [WayRun; 3] =
        runs.try_into().map_err(|_| GenerateError::Invalid {
            field: "ways",
            problem: "three ways were run".into(),
        })?;
    Ok(KeywordReport {
        model: opts.model.display().to_string(),
        sets_file: opts.sets.display().to_string(),
        settings: "one poem per set and way from the same seed; temperature 0.8, top-k 40, \
                   no top-p, no repetition penalty; rules strict"
            .into(),
        sets: sets.len(),
        fluency_cost: plain.arm.mean_logprob - placed.arm.mean_logprob,
        time_per_token_ratio: placed.arm.ms_per_token / plain.arm.ms_per_token.max(1e-9),
        refusals: placed.refusals.clone(),
        poems: [&placed, &first, &plain]
            .iter()
            .flat_map(|r| r.poems.iter().cloned())
            .collect(),
        placed: placed.arm,
        first_keyword_prompt: first.arm,
        plain: plain.arm,
    })
}
