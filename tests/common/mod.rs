//! Helpers shared by the integration tests: fixture paths, scratch copies, and
//! running the real `versifier` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub const LAYOUTS: [&str; 3] = ["hf-safetensors", "hub-safetensors", "pytorch-bin"];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A folder with a random checkpoint of `cfg` (seed `seed`) stored in `dtype`,
/// and the fixtures' tokenizer.
pub fn synthetic_model_dir(
    cfg: &versifier::model::Gpt2Config,
    seed: u64,
    dtype: candle_core::DType,
) -> tempfile::TempDir {
    use versifier::model::synthetic;
    let dir = tempfile::tempdir().unwrap();
    let tensors = synthetic::synthetic_tensors(cfg, seed).unwrap();
    synthetic::write_checkpoint(dir.path(), cfg, &tensors, dtype).unwrap();
    std::fs::copy(
        fixture("hf-safetensors").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// The reference outputs the Python script recorded for a fixture.
pub struct Reference {
    pub prompt_ids: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub greedy_ids: Vec<u32>,
    pub batch_prompts: Vec<Vec<u32>>,
    pub batch_last_logits: Vec<Vec<f32>>,
}

pub fn reference(name: &str) -> Reference {
    let path = fixture(name).join("reference.json");
    let text = std::fs::read_to_string(&path).expect("fixture reference.json is committed");
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference.json is JSON");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mat = |v: &serde_json::Value| -> Vec<Vec<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    Reference {
        prompt_ids: ids(&v["prompt_ids"]),
        logits: mat(&v["logits"]),
        greedy_ids: ids(&v["greedy_ids"]),
        batch_prompts: v["batch_prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect(),
        batch_last_logits: mat(&v["batch_last_logits"]),
    }
}

/// A scratch copy of a fixture folder that a test may damage.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

pub fn run_cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_versifier"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("VERSIFIER_LOG_DIR", "none")
        .output()
        .expect("versifier binary runs")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Logits `(T, V)` for every position of one prompt, run as a batch of one.
pub fn prompt_logits(model: &versifier::model::Gpt2, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(1);
    let batch = versifier::model::TokenBatch::left_padded(&[prompt.to_vec()], 0);
    let logits = model.forward(&batch, &mut cache).unwrap();
    logits.squeeze(0).unwrap().to_vec2().unwrap()
}

/// Sets `field` of `dir/config.json` to `value`.
pub fn edit_config(dir: &Path, field: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[field] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// A request of `variations` rows continuing the ids 3 99 150 7 for 20
/// tokens, no stop token, no form (the decode-path tests' request).
pub fn decode_request(
    variations: usize,
    sampling: versifier::generate::SamplingParams,
) -> versifier::generate::GenerateRequest {
    versifier::generate::GenerateRequest {
        prompt_ids: vec![3, 99, 150, 7],
        variations,
        max_new_tokens: 20,
        sampling,
        stop_ids: vec![],
        constraint: None,
        rows: Vec::new(),
    }
}

/// Prepares `settings` for `model` and generates it whole on the model's
/// device (no cancel, no streaming): the library path the engine takes.
pub fn write_poems(
    model: &versifier::model::LoadedModel,
    settings: &versifier::generate::RequestSettings,
) -> versifier::generate::Generation {
    let req = versifier::generate::prepare_request(model, settings).expect("a valid request");
    let tok = model.tokenizer.as_ref().expect("a tokenizer");
    versifier::generate::generate(
        &model.model,
        &req,
        |id| tok.token_bytes(id),
        &|| false,
        |_| {},
    )
    .expect("generation succeeds")
}
