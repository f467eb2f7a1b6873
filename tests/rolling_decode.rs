//! A decode that rows join while it runs (the CPU's growing-cache path): a row
//! admitted between steps writes what it would have written alone, rows that
//! end leave the batch, and each row is reported as it ends.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use candle_core::{DType, Device};
use common::*;
use versifier::generate::{
    generate_feeding, generate_on, DecodePath, FinishedRow, GenerateRequest, RowFeed, RowStart,
    SamplingParams, StopReason, TokenEvent,
};
use versifier::model::{load_model, Gpt2Config, KvCache, TokenBatch};

fn request(prompt: &[u32], seed: u64, variations: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt.to_vec(),
        variations,
        max_new_tokens: 24,
        sampling: SamplingParams {
            seed,
            ..SamplingParams::default()
        },
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    }
}

/// Admits `joiner` at the first chance after `after` admit calls; cancels
/// row `cancel` after `cancel_after` tokens of it; records what ended when.
struct Scripted {
    calls: usize,
    after: usize,
    joiner: Option<RowStart>,
    offered: Vec<(usize, usize)>,
    cancel: Option<(usize, usize)>,
    tokens_of: Vec<usize>,
    ended: Vec<(usize, usize, Option<StopReason>)>,
}

impl RowFeed for Scripted {
    fn admit(&mut self, free: usize, max_prompt_tokens: usize) -> Vec<RowStart> {
        self.calls += 1;
        self.offered.push((free, max_prompt_tokens));
        if self.calls > self.after {
            if let Some(j) = self.joiner.take() {
                return vec![j];
            }
        }
        Vec::new()
    }
    fn cancelled(&self, row: usize) -> bool {
        self.cancel
            .is_some_and(|(r, n)| r == row && self.tokens_of.get(row).is_some_and(|t| *t >= n))
    }
    fn token(&mut self, ev: &TokenEvent) {
        if self.tokens_of.len() <= ev.variation {
            self.tokens_of.resize(ev.variation + 1, 0);
        }
        self.tokens_of[ev.variation] += 1;
    }
    fn finished(&mut self, row: FinishedRow<'_>) {
        self.ended
            .push((row.row, row.batch_rows, row.variation.stop));
    }
}

fn ids_alone(model: &versifier::model::Gpt2, req: &GenerateRequest) -> Vec<Vec<u32>> {
    generate_on(DecodePath::Growing, model, req, |_| &[], &|| false, |_| {})
        .unwrap()
        .variations
        .into_iter()
        .map(|v| v.ids)
        .collect()
}

#[test]
fn a_row_that_joins_a_running_decode_writes_what_it_would_alone_and_is_reported_when_it_ends() {
    let cfg = Gpt2Config::small(300, 128, 32, 2, 4);
    let dir = synthetic_model_dir(&cfg, 5, DType::F32);
    for dtype in [DType::F32, DType::F16] {
        let m = load_model(dir.path(), &Device::Cpu, dtype).unwrap();
        let first = request(&[3, 14, 15, 92, 65], 7, 2);
        let joiner = request(&[2, 71, 82], 11, 1);
        let mut feed = Scripted {
            calls: 0,
            after: 4,
            joiner: Some(RowStart {
                prompt_ids: joiner.prompt_ids.clone(),
                seed: 11,
                variation: 0,
                start: String::new(),
            }),
            offered: Vec::new(),
            cancel: None,
            tokens_of: Vec::new(),
            ended: Vec::new(),
        };
        let g =
            generate_feeding(DecodePath::Growing, &m.model, &first, |_| &[], &mut feed).unwrap();
        assert_eq!(
            g.variations.len(),
            3,
            "{dtype:?}: the joiner is the third row"
        );
        assert_eq!(g.batch_rows, 3);
        // It was offered room for the rows the batch had spare, and joined
        // only when its prompt fit the columns written so far.
        assert_eq!(feed.offered[0].0, versifier::generate::MAX_VARIATIONS - 2);
        assert!(feed.offered.iter().all(|(_, cols)| *cols >= 5));
        let alone_first = ids_alone(&m.model, &first);
        let alone_joiner = ids_alone(&m.model, &joiner);
        assert_eq!(alone_first[0].len(), 24);
        assert_eq!(g.variations[0].ids, alone_first[0], "{dtype:?}");
        assert_eq!(g.variations[1].ids, alone_first[1], "{dtype:?}");
        assert_eq!(
            g.variations[2].ids, alone_joiner[0],
            "{dtype:?}: joined late, same poem"
        );
        // The first rows ended four steps before the joiner, and were
        // reported then, each once.
        let order: Vec<usize> = feed.ended.iter().map(|e| e.0).collect();
        assert_eq!(order, vec![0, 1, 2], "{dtype:?}");
        assert!(feed
            .ended
            .iter()
            .all(|e| e.2 == Some(StopReason::MaxTokens)));
        assert_eq!(
            feed.ended[2].1, 3,
            "the joiner decoded beside both first rows"
        );
    }
}

#[test]
fn a_cancelled_row_leaves_the_batch_and_the_others_write_what_they_would_alone() {
    let cfg = Gpt2Config::small(300, 128, 32, 2, 4);
    let dir = synthetic_model_dir(&cfg, 6, DType::F32);
    let m = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let req = request(&[9, 8, 7], 3, 3);
    let mut feed = Scripted {
        calls: 0,
        after: usize::MAX,
        joiner: None,
        offered: Vec::new(),
        cancel: Some((1, 5)),
        tokens_of: Vec::new(),
        ended: Vec::new(),
    };
    let g = generate_feeding(DecodePath::Growing, &m.model, &req, |_| &[], &mut feed).unwrap();
    assert_eq!(g.variations[1].stop, Some(StopReason::Cancelled));
    assert_eq!(g.variations[1].ids.len(), 5);
    assert_eq!(feed.ended[0].0, 1, "reported when it was cancelled, first");
    let alone = ids_alone(&m.model, &req);
    assert_eq!(g.variations[0].ids, alone[0]);
    assert_eq!(g.variations[2].ids, alone[2]);
    // With the cancelled row gone, the batch had one more row to offer.
    assert!(feed
        .offered
        .iter()
        .any(|(free, _)| *free == versifier::generate::MAX_VARIATIONS - 2));
}

#[test]
fn admitted_rows_are_right_aligned_padding_and_retained_rows_keep_their_keys() {
    // The cache operations on their own: a row prefilled alone and admitted
    // into a longer cache gives the logits it gives alone; dropping a row
    // leaves the others' logits unchanged.
    let cfg = Gpt2Config::small(300, 64, 32, 2, 4);
    let dir = synthetic_model_dir(&cfg, 8, DType::F32);
    let m = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let step = |cache: &mut KvCache, ids: Vec<u32>| -> Vec<Vec<f32>> {
        let live = vec![true; ids.len()];
        m.model
            .forward_last(&TokenBatch::step(ids, live), cache)
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    let mut batch = m.model.new_cache(2);
    m.model
        .forward_last(
            &TokenBatch::left_padded(&[vec![1, 2, 3, 4, 5, 6], vec![7, 8, 9, 10, 11, 12]], 0),
            &mut batch,
        )
        .unwrap();
    let mut newcomer = m.model.new_cache(1);
    m.model
        .forward_last(&TokenBatch::left_padded(&[vec![20, 21]], 0), &mut newcomer)
        .unwrap();
    let mut alone = m.model.new_cache(1);
    m.model
        .forward_last(&TokenBatch::left_padded(&[vec![20, 21]], 0), &mut alone)
        .unwrap();
    let mut second_alone = m.model.new_cache(1);
    m.model
        .forward_last(
            &TokenBatch::left_padded(&[vec![7, 8, 9, 10, 11, 12]], 0),
            &mut second_alone,
        )
        .unwrap();
    batch.admit(newcomer).unwrap();
    assert_eq!((batch.batch(), batch.len()), (3, 6));
    let joined = step(&mut batch, vec![30, 31, 32]);
    let by_itself = step(&mut alone, vec![32]);
    let d = max_abs_diff(&joined[2], &by_itself[0]);
    assert!(d < 1e-5, "the admitted row differs by {d}");
    batch.retain_rows(&[false, true, true]).unwrap();
    let kept = step(&mut batch, vec![40, 41]);
    step(&mut second_alone, vec![31]);
    let second = step(&mut second_alone, vec![40]);
    let d = max_abs_diff(&kept[0], &second[0]);
    assert!(d < 1e-5, "a retained row differs by {d}");
    // A newcomer longer than the cache is refused, naming both lengths.
    let mut long = m.model.new_cache(1);
    m.model
        .forward_last(&TokenBatch::left_padded(&[vec![1; 20]], 0), &mut long)
        .unwrap();
    let err = batch.admit(long).unwrap_err().to_string();
    assert!(
        err.contains("20 columns") && err.contains("8 columns"),
        "{err}"
    );
}

#[test]
fn variations_of_one_prompt_share_its_pass_and_write_what_each_writes_alone() {
    // The bundled model: its distributions are peaked, so a row given
    // another row's logits would write another poem (a random model's are
    // nearly flat, and the seed alone would pick the tokens).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tang-poems");
    for dtype in [DType::F32, DType::F16] {
        let m = load_model(&dir, &Device::Cpu, dtype).unwrap();
        // Eight variations of a 3-token prompt: 24 prompt rows, past the
        // packed kernel's 16 when each row computed its own prompt.
        let shared = request(&[1, 86, 637], 21, 8);
        let together = ids_alone(&m.model, &shared);
        for (r, ids) in together.iter().enumerate() {
            let alone = GenerateRequest {
                variations: 1,
                rows: vec![RowStart {
                    prompt_ids: shared.prompt_ids.clone(),
                    seed: 21,
                    variation: r,
                    start: String::new(),
                }],
                ..shared.clone()
            };
            assert_eq!(
                ids,
                &ids_alone(&m.model, &alone)[0],
                "{dtype:?} variation {r}"
            );
        }
        assert!(
            together.windows(2).any(|w| w[0] != w[1]),
            "the variations differ"
        );
        // Two prompts, interleaved: each distinct prompt once, copied to its
        // rows. Greedy, so each row's first token is its own prompt's argmax.
        let row = |p: &[u32], variation| RowStart {
            prompt_ids: p.to_vec(),
            seed: 1,
            variation,
            start: String::new(),
        };
        let (a, b) = ([1u32, 86, 637], [1u32, 241]);
        let mixed = vec![row(&a, 0), row(&b, 0), row(&a, 1), row(&b, 1)];
        let greedy = GenerateRequest {
            sampling: SamplingParams::greedy(),
            ..shared.clone()
        };
        let joined = GenerateRequest {
            variations: 4,
            rows: mixed.clone(),
            ..greedy.clone()
        };
        let got = ids_alone(&m.model, &joined);
        assert_ne!(got[0][0], got[1][0], "the two prompts start differently");
        for (r, start) in mixed.into_iter().enumerate() {
            let alone = GenerateRequest {
                variations: 1,
                rows: vec![start],
                ..greedy.clone()
            };
            assert_eq!(
                got[r],
                ids_alone(&m.model, &alone)[0],
                "{dtype:?} mixed row {r}"
            );
        }
    }
}

#[test]
fn a_prompt_computed_once_and_copied_to_several_rows_gives_each_the_logits_of_its_own_pass() {
    let cfg = Gpt2Config::small(300, 64, 32, 2, 4);
    let dir = synthetic_model_dir(&cfg, 10, DType::F32);
    let m = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let prompt = vec![4u32, 8, 15, 16, 23, 42];
    let mut once = m.model.new_cache(1);
    m.model
        .forward_last(
            &TokenBatch::left_padded(std::slice::from_ref(&prompt), 0),
            &mut once,
        )
        .unwrap();
    once.select_rows(&[0, 0, 0]).unwrap();
    let mut each = m.model.new_cache(3);
    m.model
        .forward_last(&TokenBatch::left_padded(&vec![prompt; 3], 0), &mut each)
        .unwrap();
    let next = TokenBatch::step(vec![1, 2, 3], vec![true; 3]);
    let a: Vec<Vec<f32>> = m
        .model
        .forward_last(&next, &mut once)
        .unwrap()
        .to_vec2()
        .unwrap();
    let b: Vec<Vec<f32>> = m
        .model
        .forward_last(&next, &mut each)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(max_abs_diff(x, y) < 1e-5);
    }
    assert!(once
        .select_rows(&[3])
        .unwrap_err()
        .to_string()
        .contains("row 3 of a cache of 3 rows"));
}

/// Admits a new row whenever the batch has room, `total` in all, each a
/// prompt of its own; records each row's cache bytes when it ended.
struct SteadyStream {
    prompts: Vec<Vec<u32>>,
    next: usize,
    ended_bytes: Vec<(usize, usize)>,
}

impl RowFeed for SteadyStream {
    fn admit(&mut self, free: usize, max_prompt_tokens: usize) -> Vec<RowStart> {
        let mut out = Vec::new();
        // One joiner per step, as requests trickle in.
        if free > 0 {
            if let Some(p) = self.prompts.get(self.next) {
                if p.len() <= max_prompt_tokens {
                    out.push(RowStart {
                        prompt_ids: p.clone(),
                        seed: 1000 + self.next as u64,
                        variation: 0,
                        start: String::new(),
                    });
                    self.next += 1;
                }
            }
        }
        out
    }
    fn cancelled(&self, _row: usize) -> bool {
        false
    }
    fn token(&mut self, _ev: &TokenEvent) {}
    fn finished(&mut self, row: FinishedRow<'_>) {
        self.ended_bytes.push((row.row, row.kv_cache_bytes));
    }
}

#[test]
fn a_long_stream_of_joiners_keeps_the_cache_bounded_and_each_row_writes_what_it_would_alone() {
    let cfg = Gpt2Config::small(300, 128, 32, 2, 4);
    let dir = synthetic_model_dir(&cfg, 5, DType::F32);
    let m = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let total = 240;
    // Prompts of 2 to 6 tokens: joiners are padded to the columns so far.
    let prompts: Vec<Vec<u32>> = (0..total)
        .map(|i| {
            (0..2 + i % 5)
                .map(|j| ((i * 31 + j * 7) % 290 + 1) as u32)
                .collect()
        })
        .collect();
    let first = request(&[3, 14, 15, 92, 65], 7, 2);
    let mut feed = SteadyStream {
        prompts: prompts.clone(),
        next: 0,
        ended_bytes: Vec::new(),
    };
    let g = generate_feeding(DecodePath::Growing, &m.model, &first, |_| &[], &mut feed).unwrap();
    assert_eq!(feed.next, total, "every joiner was admitted");
    assert_eq!(g.variations.len(), total + 2);
    // About 240 * 24 / 8 = 720 steps: a cache that kept every column would
    // end at hundreds of columns. Rows that left took their columns along: the
    // last rows' cache holds at most 8 rows of twice the first buffer's 64
    // columns (rows need at most 6 + 24; a buffer grows by doubling).
    let early = feed.ended_bytes[..16].iter().map(|e| e.1).max().unwrap();
    let late = feed.ended_bytes[total - 16..]
        .iter()
        .map(|e| e.1)
        .max()
        .unwrap();
    let per_column_row = 2 * cfg.n_layer * cfg.n_embd * 4; // keys and values, f32
    let bound = 8 * 2 * 64 * per_column_row;
    assert!(
        late <= bound,
        "the cache grew with the stream: {late} bytes at the end, {early} early, bound {bound}"
    );
    // Dropping columns changed no row's poem.
    for i in (0..total).step_by(23) {
        let alone = ids_alone(&m.model, &request(&prompts[i], 1000 + i as u64, 1));
        assert_eq!(g.variations[i + 2].ids, alone[0], "joiner {i}");
    }
}
