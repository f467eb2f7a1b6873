//! `versifier info`: a checkpoint's shape, parameters, bytes per dtype, tokenizer.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use versifier::engine::Precision;
use versifier::model::{
    check_tensor_shapes, inspect_safetensors, Gpt2Config, ModelFiles, WeightFormat,
};

#[derive(Args)]
pub struct InfoArgs {
    /// Checkpoint folder (default: the bundled Tang model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_info(path: &std::path::Path, as_json: bool) -> Result<()> {
    let files = ModelFiles::locate(path)?;
    let cfg = Gpt2Config::from_file(&files.config)?;
    // Shapes are checked against config.json from the safetensors header (no
    // weights read); a pickle's shapes are only known by loading it.
    let (tensors, shape_problems) = match files.format {
        WeightFormat::Safetensors => {
            let summary = inspect_safetensors(&files.weights)?;
            let problems: Vec<String> = check_tensor_shapes(&files.weights, &cfg, &summary)
                .iter()
                .map(ToString::to_string)
                .collect();
            (Some(summary.tensors.len()), Some(problems))
        }
        WeightFormat::PytorchBin => (None, None),
    };
    let tokenizer = match &files.tokenizer {
        Some(p) => Some(versifier::model::TextTokenizer::from_file(p, &cfg)?),
        None => None,
    };
    let params = cfg.param_count();
    let weights_bytes = std::fs::metadata(&files.weights)
        .map(|m| m.len())
        .unwrap_or(0);
    let bytes_per_dtype: serde_json::Map<String, serde_json::Value> = Precision::ALL
        .iter()
        .map(|p| (p.to_string(), json!(params * p.bytes())))
        .collect();
    let info = json!({
        "model": files.dir.display().to_string(),
        "architecture": "GPT2LMHeadModel",
        "weights": files.weights.display().to_string(),
        "format": files.format,
        "weights_file_bytes": weights_bytes,
        "tensors": tensors,
        "shapes_checked": shape_problems.is_some(),
        "shape_problems": shape_problems,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
        "n_positions": cfg.n_positions, "vocab_size": cfg.vocab_size,
        "activation": cfg.activation.hf_name(),
        "params": params,
        "bytes_per_dtype": bytes_per_dtype,
        "kv_cache_bytes_per_token_f32": cfg.kv_cache_bytes(1, 1, 4),
        "tokenizer": tokenizer.as_ref().map(|t| json!({"kind": t.kind(), "path": t.path().display().to_string(), "vocab": t.vocab_size()})),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("model       {}", files.dir.display());
        println!(
            "weights     {} ({:?}, {:.1} MiB)",
            files.weights.display(),
            files.format,
            versifier::mib_f64(weights_bytes as u64)
        );
        println!(
            "shape       GPT-2, {} layers, {} heads, {} wide, {} positions, vocab {}",
            cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab_size
        );
        println!("parameters  {} ({:.1}M)", params, params as f64 / 1e6);
        for p in Precision::ALL {
            println!(
                "  as {:<5}   {:.1} MiB",
                p.to_string(),
                (params * p.bytes()) as f64 / 1048576.0
            );
        }
        match &tokenizer {
            Some(t) => println!(
                "tokenizer   {:?}, {} tokens ({})",
                t.kind(),
                t.vocab_size(),
                t.path().display()
            ),
            None => println!("tokenizer   none (generate needs --prompt-ids)"),
        }
        match &shape_problems {
            Some(p) if p.is_empty() => {
                println!(
                    "tensors     {} checked against config.json: all present, shapes match",
                    tensors.unwrap_or(0)
                );
            }
            Some(p) => println!("tensors     {} problem(s), see below", p.len()),
            None => println!(
                "tensors     not checked (pytorch_model.bin: shapes are known only by loading it)"
            ),
        }
    }
    if let Some(problems) = shape_problems.filter(|p| !p.is_empty()) {
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        let more = problems.len().saturating_sub(shown.len());
        bail!(
            "this checkpoint would not load: {}{}",
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
