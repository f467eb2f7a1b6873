//! Sampling settings and the per-sequence sampler: repetition penalty, then
//! temperature / top-k / top-p, drawing what candle-transformers'
//! `LogitsProcessor` draws for the same seed.

use candle_transformers::generation::Sampling;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::GenerateError;

/// The lowest temperature: logits divided by less overflow `f32` (1e-300
/// made every logit infinite); for the most likely token, use greedy.
pub const MIN_TEMPERATURE: f64 = 1e-3;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Always take the most likely token (temperature and the filters are ignored).
    pub greedy: bool,
    /// Softmax temperature, at least [`MIN_TEMPERATURE`].
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Nucleus sampling mass in (0, 1]; 1 keeps all.
    pub top_p: f64,
    /// >= 1; 1 disables. Applied to every token already in the sequence, prompt included.
    pub repetition_penalty: f32,
    /// Same seed + same settings = same text. Variation `i` uses `seed + i`.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            greedy: false,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed: 42,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            greedy: true,
            repetition_penalty: 1.0,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field and what is wrong.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let invalid =
            |field: &'static str, problem: String| Err(GenerateError::Invalid { field, problem });
        if !(self.greedy || self.temperature.is_finite() && self.temperature >= MIN_TEMPERATURE) {
            return invalid(
                "temperature",
                format!(
                    "must be a positive number, at least {MIN_TEMPERATURE} (below it the logits overflow; \
                     greedy takes the most likely token), found {}",
                    self.temperature
                ),
            );
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", format!("must be in (0, 1], found {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty >= 1.0) {
            return invalid(
                "repetition_penalty",
                format!(
                    "must be a number >= 1 (1 disables it), found {}",
                    self.repetition_penalty
                ),
            );
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        let top_p = self.top_p < 1.0;
        match (self.greedy, self.top_k > 0, top_p) {
            (true, _, _) => Sampling::ArgMax,
            (false, true, true) => Sampling::TopKThenTopP {
                k: self.top_k,
                p: self.top_p,
                temperature,
            },
            (false, true, false) => Sampling::TopK {
                k: self.top_k,
                temperature,
            },
            (false, false, true) => Sampling::TopP {
                p: self.top_p,
                temperature,
            },
            (false, false, false) => Sampling::All { temperature },
        }
    }
}

/// One sequence's sampler (its own RNG stream).
///
/// It draws exactly the tokens candle-transformers' `LogitsProcessor` draws for
/// the same seed and logits (tested against it), but computes the
/// probabilities without tensors in three passes, spreads the exponentials
/// over threads and selects the top k over packed (probability, index) words:
/// a 50k-vocabulary draw takes about 0.3 ms on two cores (0.4-0.5 ms with
/// five passes and index lookups), which matters when a GPU step takes about
/// a millisecond.
pub struct TokenSampler {
    rng: StdRng,
    /// The seed of this row's stream (the request's seed plus the row).
    seed: u64,
    sampling: Sampling,
    penalty: f32,
}

/// Vocabulary slices of at least this many logits are exponentiated in parallel.
const PARALLEL_CHUNK: usize = 8192;

/// Whether one row's passes over the vocabulary should be split over threads:
/// only for a large vocabulary, and not when the rows themselves are already
/// being sampled in parallel (nested splitting costs more than it saves).
fn split_row(n: usize) -> bool {
    n >= 2 * PARALLEL_CHUNK && rayon::current_thread_index().is_none()
}

impl TokenSampler {
    pub fn new(params: &SamplingParams, row: usize) -> Self {
        let seed = params.seed.wrapping_add(row as u64);
        Self {
            rng: StdRng::seed_from_u64(seed),
            seed,
            sampling: params.sampling(),
            penalty: params.repetition_penalty,
        }
    }

    /// The seed of this row's stream (the request's seed plus the row).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Picks the next token from one row of logits; `context` is the sequence so far.
    pub fn sample(&mut self, mut logits: Vec<f32>, context: &[u32]) -> Result<u32, GenerateError> {
        if self.penalty != 1.0 {
            penalize_seen(&mut logits, context, self.penalty);
        }
        let id = match self.sampling.clone() {
            Sampling::ArgMax => argmax(&logits)?,
            Sampling::All { temperature } => {
                let prs = probabilities(logits, temperature)?;
                self.multinomial(&prs)?
            }
            Sampling::TopP { p, temperature } => {
                let mut prs = probabilities(logits, temperature)?;
                if p <= 0.0 || p >= 1.0 {
                    self.multinomial(&prs)?
                } else {
                    self.top_p(&mut prs, p as f32)?
                }
            }
            Sampling::TopK { k, temperature } => {
                let prs = probabilities(logits, temperature)?;
                if k >= prs.len() {
                    self.multinomial(&prs)?
                } else {
                    let top = top_k(&prs, k);
                    let weights: Vec<f32> = top.iter().map(|t| t.probability()).collect();
                    top[self.multinomial(&weights)?].index()
                }
            }
            Sampling::TopKThenTopP { k, p, temperature } => {
                let mut prs = probabilities(logits, temperature)?;
                let p = p as f32;
                if k >= prs.len() {
                    self.top_p(&mut prs, p)?
                } else {
                    let top = top_k(&prs, k);
                    let mut weights: Vec<f32> = top.iter().map(|t| t.probability()).collect();
                    let sum: f32 = weights.iter().sum();
                    let i = if p <= 0.0 || p >= sum {
                        self.multinomial(&weights)?
                    } else {
                        self.top_p(&mut weights, p)?
                    };
                    top[i].index()
                }
            }
            Sampling::GumbelSoftmax { .. } => {
                return Err(GenerateError::Invalid {
                    field: "sampling",
                    problem: "Gumbel-softmax sampling is not offered".into(),
                })
            }
        };
        Ok(id as u32)
    }

    /// Nucleus filter over `prs` in place (the order of a stable sort by
    /// descending probability, as candle-transformers does), then a draw.
    fn top_p(&mut self, prs: &mut [f32], top_p: f32) -> Result<usize, GenerateError> {
        // Ties broken by index: the one order a stable sort gives.
        let mut order: Vec<Ranked> = prs
            .iter()
            .enumerate()
            .map(|(i, &p)| Ranked::new(p, i))
            .collect();
        order.sort_unstable_by(|a, b| b.key().cmp(&a.key()).then(a.index().cmp(&b.index())));
        let mut cumsum = 0.0;
        for r in &order {
            if cumsum >= top_p {
                prs[r.index()] = 0.0;
            } else {
                cumsum += prs[r.index()];
            }
        }
        self.multinomial(prs)
    }

    fn multinomial(&mut self, prs: &[f32]) -> Result<usize, GenerateError> {
        let dist = WeightedIndex::new(prs).map_err(|e| {
            GenerateError::Candle(candle_core::Error::Msg(format!(
                "cannot sample from these probabilities: {e}"
            )))
        })?;
        Ok(dist.sample(&mut self.rng))
    }
}

/// Lowers the logit of every token already in `context` (each once), as
/// candle-transformers' `apply_repeat_penalty` does.
fn penalize_seen(logits: &mut [f32], context: &[u32], penalty: f32) {
    let mut seen = context.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l >= 0.0 {
                *l / penalty
            } else {
                *l * penalty
            };
        }
    }
}

/// The first maximum, like `torch.argmax`; a NaN anywhere is an error.
fn argmax(logits: &[f32]) -> Result<usize, GenerateError> {
    let mut best = 0usize;
    let mut nan = false;
    for (i, &x) in logits.iter().enumerate() {
        nan |= x.is_nan();
        if x > logits[best] {
            best = i;
        }
    }
    if nan {
        return Err(GenerateError::NonFinite);
    }
    Ok(best)
}

/// Lanes of the vocabulary passes: wide enough for the compiler to keep them
/// in vector registers (AVX2 or SSE), so a pass is not one long dependency chain.
const LANES: usize = 8;

/// Scales `chunk` by `mul` in place (`v * mul + 0.0`, candle's affine) and
/// returns its maximum and whether it held a NaN before scaling (a NaN
/// the scaling makes, 0 times an infinite `mul`, is the draw's to refuse). A maximum is the same
/// whatever order it is taken in (signed zeros aside, and `v - max` is the same
/// for both), so lanes and chunks may take it apart.
fn scale_and_max(chunk: &mut [f32], mul: f32) -> (f32, bool) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let mut blocks = chunk.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for j in 0..LANES {
            nan[j] |= block[j].is_nan();
            let v = block[j] * mul + 0.0;
            block[j] = v;
            lanes[j] = if v > lanes[j] { v } else { lanes[j] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    let mut any_nan = nan.iter().any(|&n| n);
    for v in blocks.into_remainder() {
        any_nan |= v.is_nan();
        *v = *v * mul + 0.0;
        max = if *v > max { *v } else { max };
    }
    for l in lanes {
        max = if l > max { l } else { max };
    }
    (max, any_nan)
}

/// `softmax(logits / temperature)` with exactly the bits candle computes on the
/// CPU (its affine, `exp(v - max)`, its own sum, one division per value), in
/// three passes over the vocabulary instead of five; the exponentials are
/// spread over threads for a large vocabulary. A NaN logit is an error.
fn probabilities(mut logits: Vec<f32>, temperature: f64) -> Result<Vec<f32>, GenerateError> {
    use candle_core::cpu::kernels::VecOps;
    let n = logits.len();
    if n == 0 {
        return Ok(logits);
    }
    // candle: `logits / temperature` is `affine(1 / temperature, 0)` in f32.
    let mul = (1.0 / temperature) as f32;
    let parallel = split_row(n);
    let scale = |chunk: &mut [f32]| scale_and_max(chunk, mul);
    let (max, nan) = if parallel {
        logits.par_chunks_mut(PARALLEL_CHUNK).map(scale).reduce(
            || (f32::NEG_INFINITY, false),
            |a, b| (if b.0 > a.0 { b.0 } else { a.0 }, a.1 | b.1),
        )
    } else {
        scale(&mut logits)
    };
    if nan {
        return Err(GenerateError::NonFinite);
    }
    let exp = |c: &mut [f32]| c.iter_mut().for_each(|v| *v = (*v - max).exp());
    if parallel {
        logits.par_chunks_mut(PARALLEL_CHUNK).for_each(exp);
    } else {
        exp(&mut logits);
    }
    let mut sum = 0.0f32;
    // SAFETY: `logits` is non-empty and `sum` a valid place to write; candle's
    // own (order-defining) reduction.
    unsafe { f32::vec_reduce_sum(logits.as_ptr(), &mut sum, n) };
    logits.iter_mut().for_each(|v| *v /= sum);
    Ok(logits)
}

/// A probability and its token index in one word, ordered as `f32::total_cmp`
/// orders the probability: selection moves 8-byte values and compares
/// integers instead of looking each index up in the vocabulary.
#[derive(Clone, Copy)]
struct Ranked(u64);

impl Ranked {
    fn new(probability: f32, index: usize) -> Self {
        let bits = probability.to_bits();
        // The usual total-order key: negative values flipped, positive ones
        // lifted above them.
        let key = if bits >> 31 == 1 {
            !bits
        } else {
            bits | 0x8000_0000
        };
        Self(u64::from(key) << 32 | index as u64)
    }

    fn key(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn probability(self) -> f32 {
        let key = self.key();
        f32::from_bits(if key >> 31 == 1 {
            key & 0x7fff_ffff
        } else {
            !key
        })
    }
}

/// The `k` most probable tokens, in the order candle-transformers leaves them:
/// its `select_nth_unstable_by` over indices, run here over [`Ranked`] words
/// with the same comparisons (equal keys compare equal, as equal
/// probabilities do there) on elements of the same size, so the selection
/// makes the same moves. The draw depends on that order.
fn top_k(prs: &[f32], k: usize) -> Vec<Ranked> {
    let mut order: Vec<Ranked> = prs
        .iter()
        .enumerate()
        .map(|(i, &p)| Ranked::new(p, i))
        .collect();
    let (top, _, _) = order.select_nth_unstable_by(k, |a, b| b.key().cmp(&a.key()));
    top.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_name_the_field() {
        let bad = [
            (
                SamplingParams {
                    temperature: f64::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.5,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
        ];
        for (p, field) in bad {
            match p.validate() {
                Err(GenerateError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected an Invalid error, got {other:?}"),
            }
        }
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
    }

    #[test]
    fn same_seed_same_tokens_and_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 / 4.0).collect();
        let p = SamplingParams {
            top_k: 0,
            top_p: 1.0,
            temperature: 1.5,
            repetition_penalty: 1.0,
            ..Default::default()
        };
        let draw = |seed: u64| {
            let mut s = TokenSampler::new(&SamplingParams { seed, ..p.clone() }, 0);
            (0..40)
                .map(|_| s.sample(logits.clone(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn repetition_penalty_steers_greedy_away_from_seen_token() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = TokenSampler::new(&p, 0);
        assert_eq!(s.sample(vec![1.0, 3.0, 2.0], &[]).unwrap(), 1);
        assert_eq!(s.sample(vec![1.0, 3.0, 2.0], &[1]).unwrap(), 2);
    }

    /// Logits from a small LCG; every third row quantized so that many tokens tie.
    fn random_logits(state: &mut u64, n: usize, ties: bool) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = ((*state >> 33) as f32 / (1u64 << 31) as f32) * 12.0 - 6.0;
                if ties {
                    (x * 4.0).round() / 4.0
                } else {
                    x
                }
            })
            .collect()
    }

    #[test]
    fn draws_the_tokens_candles_logits_processor_draws_for_the_same_seed() {
        use candle_core::{Device, Tensor};
        use candle_transformers::generation::LogitsProcessor;
        let settings = [
            (0.8, 40, 0.95),
            (1.3, 5, 1.0),
            (0.7, 0, 0.9),
            (1.0, 0, 1.0),
            (0.5, 100_000, 0.5),
        ];
        let mut state = 7u64;
        for &(temperature, top_k, top_p) in &settings {
            for vocab in [3usize, 1000, 50_257] {
                for seed in 0..2u64 {
                    let p = SamplingParams {
                        greedy: false,
                        temperature,
                        top_k,
                        top_p,
                        repetition_penalty: 1.0,
                        seed,
                    };
                    let mut ours = TokenSampler::new(&p, 0);
                    let mut theirs = LogitsProcessor::from_sampling(seed, p.sampling());
                    let draws = if vocab > 10_000 { 6 } else { 40 };
                    for draw in 0..draws {
                        let logits = random_logits(&mut state, vocab, draw % 3 == 0);
                        let a = ours.sample(logits.clone(), &[]).unwrap();
                        let t = Tensor::from_vec(logits, vocab, &Device::Cpu).unwrap();
                        let b = theirs.sample(&t).unwrap();
                        assert_eq!(
                            a, b,
                            "T={temperature} k={top_k} p={top_p} vocab={vocab} seed={seed} draw={draw}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ranked_selection_leaves_the_order_of_candles_selection_over_indices() {
        // candle-transformers' own selection, the reference.
        let by_index = |prs: &[f32], k: usize| -> Vec<usize> {
            let mut order: Vec<usize> = (0..prs.len()).collect();
            let (top, _, _) = order.select_nth_unstable_by(k, |&i, &j| prs[j].total_cmp(&prs[i]));
            top.to_vec()
        };
        let mut state = 11u64;
        for case in 0..400 {
            let n = [2usize, 17, 40, 41, 300, 5000, 50_257][case % 7];
            let mut prs: Vec<f32> = random_logits(&mut state, n, case % 2 == 0)
                .into_iter()
                .map(|x| if x < -4.0 { 0.0 } else { (x + 6.0) / 12.0 })
                .collect();
            if case % 5 == 0 {
                prs[n / 2] = f32::INFINITY;
            }
            for k in [1usize, 5, 40, n - 1] {
                if k >= n {
                    continue;
                }
                let ours: Vec<usize> = top_k(&prs, k).iter().map(|r| r.index()).collect();
                assert_eq!(ours, by_index(&prs, k), "case {case}: n={n} k={k}");
            }
        }
    }

    #[test]
    fn a_ranked_word_gives_back_its_probability_and_index() {
        for p in [0.0f32, 1e-40, 0.25, 1.0, f32::INFINITY, -0.5, f32::NAN] {
            let r = Ranked::new(p, 50_256);
            assert_eq!(r.index(), 50_256);
            assert_eq!(r.probability().to_bits(), p.to_bits(), "{p}");
        }
        let mut values = [0.5f32, -1.0, 0.0, f32::INFINITY, 1e-40, -0.0, 3.0];
        let mut keys: Vec<Ranked> = values.iter().map(|&p| Ranked::new(p, 0)).collect();
        values.sort_by(f32::total_cmp);
        keys.sort_by_key(|r| r.key());
        let back: Vec<f32> = keys.iter().map(|r| r.probability()).collect();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn probabilities_are_the_bits_of_candles_softmax() {
        use candle_core::{Device, Tensor};
        let mut state = 3u64;
        for (n, temperature) in [(7usize, 0.8), (1000, 1.3), (50_257, 0.8), (50_257, 0.3)] {
            let logits = random_logits(&mut state, n, n == 1000);
            let theirs = candle_nn::ops::softmax_last_dim(
                &(Tensor::from_vec(logits.clone(), n, &Device::Cpu).unwrap() / temperature)
                    .unwrap(),
            )
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            let ours = probabilities(logits, temperature).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&theirs), "n={n} T={temperature}");
        }
    }

    #[test]
    fn nan_logits_are_an_error_not_a_token() {
        let mut s = TokenSampler::new(&SamplingParams::default(), 0);
        assert!(matches!(
            s.sample(vec![0.0, f32::NAN], &[]),
            Err(GenerateError::NonFinite)
        ));
    }
}
