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

/// Random tensors for every weight of `cfg`, named as in `GPT2Model` (`wte.weight`, `h.0...`).
pub fn synthetic_tensors(
    cfg: &Gpt2Config,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = Normal::new(seed);
    let (c, inner) = (cfg.n_embd, cfg.n_inner);
    let mut t = HashMap::new();
    t.insert(
        "wte.weight".into(),
        rng.tensor(&[cfg.vocab_size, c], 0.0, 0.02)?,
    );
    t.insert(
        "wpe.weight".into(),
        rng.tensor(&[cfg.n_positions, c], 0.0, 0.01)?,
    );
    for i in 0..cfg.n_layer {
        let p = format!("h.{i}.");
        for ln in ["ln_1", "ln_2"] {
            t.insert(format!("{p}{ln}.weight"), rng.tensor(&[c], 1.0, 0.1)?);
            t.insert(format!("{p}{ln}.bias"), rng.tensor(&[c], 0.0, 0.1)?);
        }
        t.insert(
            format!("{p}attn.c_attn.weight"),
            rng.tensor(&[c, 3 * c], 0.0, 0.02)?,
        );
        t.insert(
            format!("{p}attn.c_attn.bias"),
            rng.tensor(&[3 * c], 0.0, 0.02)?,
        );
        t.insert(
            format!("{p}attn.c_proj.weight"),
            rng.tensor(&[c, c], 0.0, 0.02)?,
        );
        t.insert(format!("{p}attn.c_proj.bias"), rng.tensor(&[c], 0.0, 0.02)?);
        t.insert(
            format!("{p}mlp.c_fc.weight"),
            rng.tensor(&[c, inner], 0.0, 0.02)?,
        );
        t.insert(
            format!("{p}mlp.c_fc.bias"),
            rng.tensor(&[inner], 0.0, 0.02)?,
        );
        t.insert(
            format!("{p}mlp.c_proj.weight"),
            rng.tensor(&[inner, c], 0.0, 0.02)?,
        );
        t.insert(format!("{p}mlp.c_proj.bias"), rng.tensor(&[c], 0.0, 0.02)?);
    }
    t.insert("ln_f.weight".into(), rng.tensor(&[c], 1.0, 0.1)?);
    t.insert("ln_f.bias".into(), rng.tensor(&[c], 0.0, 0.1)?);
    Ok(t)
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

/// GPT-2's own initialisation (normal 0.02, residual projections scaled by
/// `1/sqrt(2 * n_layer)`, zero biases, unit layer norms), deterministic in `seed`.
pub fn gpt2_init_tensors(
    cfg: &Gpt2Config,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = Normal::new(seed);
    let (c, inner) = (cfg.n_embd, cfg.n_inner);
    let resid = 0.02 / ((2 * cfg.n_layer) as f32).sqrt();
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    let mut t = HashMap::new();
    t.insert(
        "wte.weight".into(),
        rng.tensor(&[cfg.vocab_size, c], 0.0, 0.02)?,
    );
    t.insert(
        "wpe.weight".into(),
        rng.tensor(&[cfg.n_positions, c], 0.0, 0.01)?,
    );
    for i in 0..cfg.n_layer {
        let p = format!("h.{i}.");
        for ln in ["ln_1", "ln_2"] {
            t.insert(format!("{p}{ln}.weight"), ones(c)?);
            t.insert(format!("{p}{ln}.bias"), zeros(c)?);
        }
        t.insert(
            format!("{p}attn.c_attn.weight"),
            rng.tensor(&[c, 3 * c], 0.0, 0.02)?,
        );
        t.insert(format!("{p}attn.c_attn.bias"), zeros(3 * c)?);
        t.insert(
            format!("{p}attn.c_proj.weight"),
            rng.tensor(&[c, c], 0.0, resid)?,
        );
        t.insert(format!("{p}attn.c_proj.bias"), zeros(c)?);
        t.insert(
            format!("{p}mlp.c_fc.weight"),
            rng.tensor(&[c, inner], 0.0, 0.02)?,
        );
        t.insert(format!("{p}mlp.c_fc.bias"), zeros(inner)?);
        t.insert(
            format!("{p}mlp.c_proj.weight"),
            rng.tensor(&[inner, c], 0.0, resid)?,
        );
        t.insert(format!("{p}mlp.c_proj.bias"), zeros(c)?);
    }
    t.insert("ln_f.weight".into(), ones(c)?);
    t.insert("ln_f.bias".into(), zeros(c)?);
    Ok(t)
}
