//! Sampling settings and the per-sequence sampler: repetition penalty, then
//! temperature / top-k / top-p through candle-transformers' `LogitsProcessor`.

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use super::GenerateError;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Always take the most likely token (temperature and the filters are ignored).
    pub greedy: bool,
    /// Softmax temperature, > 0.
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
        if !(self.greedy || self.temperature.is_finite() && self.temperature > 0.0) {
            return invalid(
                "temperature",
                format!("must be a positive number, found {}", self.temperature),
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
pub struct TokenSampler {
    processor: LogitsProcessor,
    penalty: f32,
    greedy: bool,
}

impl TokenSampler {
    pub fn new(params: &SamplingParams, row: usize) -> Self {
        Self {
            processor: LogitsProcessor::from_sampling(
                params.seed.wrapping_add(row as u64),
                params.sampling(),
            ),
            penalty: params.repetition_penalty,
            greedy: params.greedy,
        }
    }

    /// Picks the next token from one row of logits; `context` is the sequence so far.
    pub fn sample(&mut self, mut logits: Vec<f32>, context: &[u32]) -> Result<u32, GenerateError> {
        if logits.iter().any(|x| x.is_nan()) {
            return Err(GenerateError::NonFinite);
        }
        if self.penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &id in context {
                if seen.insert(id) {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = if *l >= 0.0 {
                            *l / self.penalty
                        } else {
                            *l * self.penalty
                        };
                    }
                }
            }
        }
        if self.greedy {
            // First maximum, like torch.argmax.
            let mut best = 0usize;
            for (i, &x) in logits.iter().enumerate() {
                if x > logits[best] {
                    best = i;
                }
            }
            return Ok(best as u32);
        }
        let n = logits.len();
        let t = Tensor::from_vec(logits, n, &Device::Cpu)?;
        Ok(self.processor.sample(&t)?)
    }
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

    #[test]
    fn nan_logits_are_an_error_not_a_token() {
        let mut s = TokenSampler::new(&SamplingParams::default(), 0);
        assert!(matches!(
            s.sample(vec![0.0, f32::NAN], &[]),
            Err(GenerateError::NonFinite)
        ));
    }
}
