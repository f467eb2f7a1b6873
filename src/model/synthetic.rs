//! Random GPT-2 weights with a real shape (no download), written in the same
//! layout `save_pretrained` uses. For benchmarks and tests.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{Gpt2Config, LoadError};

/// A small deterministic normal generator (xorshift64* + Box-Muller).
struct Normal {
    state: u64,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    fn tensor(&mut self, shape: &[usize], mean: f32, std: f32) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| mean + std * self.sample()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }
}

/// How to fill one kind of tensor.
#[derive(Clone, Copy)]
enum Fill {
    Const(f32),
    Normal { mean: f32, std: f32 },
}

/// How to fill every kind of tensor of a GPT-2.
struct InitSpec {
    norm_weight: Fill,
    norm_bias: Fill,
    bias: Fill,
    /// Std of c_attn / c_fc weights (and wte).
    weight_std: f32,
    /// Std of the residual projections (attn.c_proj, mlp.c_proj).
    resid_std: f32,
}

/// Builds every tensor of `cfg` in `GPT2Model` order and names (`wte.weight`,
/// `h.0...`); constants consume no randomness, so a spec is deterministic in `seed`.
fn build_tensors(
    cfg: &Gpt2Config,
    seed: u64,
    spec: &InitSpec,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = Normal::new(seed);
    let mut fill = |shape: &[usize], f: Fill| match f {
        Fill::Const(v) => Tensor::full(v, shape, &Device::Cpu),
        Fill::Normal { mean, std } => rng.tensor(shape, mean, std),
    };
    let normal = |std: f32| Fill::Normal { mean: 0.0, std };
    let (c, inner) = (cfg.n_embd, cfg.n_inner);
    let mut t = HashMap::new();
    t.insert(
        "wte.weight".into(),
        fill(&[cfg.vocab_size, c], normal(spec.weight_std))?,
    );
    t.insert(
        "wpe.weight".into(),
        fill(&[cfg.n_positions, c], normal(0.01))?,
    );
    for i in 0..cfg.n_layer {
        let p = format!("h.{i}.");
        for ln in ["ln_1", "ln_2"] {
            t.insert(format!("{p}{ln}.weight"), fill(&[c], spec.norm_weight)?);
            t.insert(format!("{p}{ln}.bias"), fill(&[c], spec.norm_bias)?);
        }
        for (name, n_in, n_out, std) in [
            ("attn.c_attn", c, 3 * c, spec.weight_std),
            ("attn.c_proj", c, c, spec.resid_std),
            ("mlp.c_fc", c, inner, spec.weight_std),
            ("mlp.c_proj", inner, c, spec.resid_std),
        ] {
            t.insert(
                format!("{p}{name}.weight"),
                fill(&[n_in, n_out], normal(std))?,
            );
            t.insert(format!("{p}{name}.bias"), fill(&[n_out], spec.bias)?);
        }
    }
    t.insert("ln_f.weight".into(), fill(&[c], spec.norm_weight)?);
    t.insert("ln_f.bias".into(), fill(&[c], spec.norm_bias)?);
    Ok(t)
}

/// Random tensors for every weight of `cfg`, with non-trivial layer norms and
/// biases (benchmarks, tests).
pub fn synthetic_tensors(
    cfg: &Gpt2Config,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let spec = InitSpec {
        norm_weight: Fill::Normal {
            mean: 1.0,
            std: 0.1,
        },
        norm_bias: Fill::Normal {
            mean: 0.0,
            std: 0.1,
        },
        bias: Fill::Normal {
            mean: 0.0,
            std: 0.02,
        },
        weight_std: 0.02,
        resid_std: 0.02,
    };
    build_tensors(cfg, seed, &spec)
}

/// GPT-2's own initialisation (normal 0.02, residual projections scaled by
/// `1/sqrt(2 * n_layer)`, zero biases, unit layer norms), deterministic in `seed`.
pub fn gpt2_init_tensors(
    cfg: &Gpt2Config,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let spec = InitSpec {
        norm_weight: Fill::Const(1.0),
        norm_bias: Fill::Const(0.0),
        bias: Fill::Const(0.0),
        weight_std: 0.02,
        resid_std: 0.02 / ((2 * cfg.n_layer) as f32).sqrt(),
    };
    build_tensors(cfg, seed, &spec)
}

/// Writes `config.json` and `model.safetensors` (keys prefixed with `transformer.`
/// as `save_pretrained` does, tensors stored in `dtype`) into `dir`.
pub fn write_checkpoint(
    dir: &Path,
    cfg: &Gpt2Config,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg.to_hf_json()).map_err(|e| LoadError::Config {
        path: config_path.clone(),
        field: None,
        problem: e.to_string(),
    })?;
    crate_write(&config_path, text.as_bytes())?;
    let weights = dir.join("model.safetensors");
    let mut named = HashMap::with_capacity(tensors.len());
    for (k, v) in tensors {
        let v = v.to_dtype(dtype).map_err(|source| LoadError::Candle {
            path: weights.clone(),
            source,
        })?;
        named.insert(format!("transformer.{k}"), v);
    }
    candle_core::safetensors::save(&named, &weights).map_err(|source| LoadError::Candle {
        path: weights,
        source,
    })
}

fn crate_write(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    std::fs::write(path, bytes).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}
