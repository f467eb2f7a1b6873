//! What each fuzz target does with its input, shared with the regression test
//! (`tests/fuzz_regressions.rs` includes this file), so a crash found here is
//! replayed through exactly the same code in the normal test suite.
//!
//! Every function writes the input where the app would find it and runs the
//! real loader. A returned error is the expected outcome for most inputs; a
//! panic, abort, hang or out-of-memory is a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device};
use versifier::generate::{generate, GenerateRequest, SamplingParams};
use versifier::model::{load_model, Gpt2Config, TextTokenizer};
use versifier::store::{Settings, Store};

/// The tiny model's config (2 layers, 32 wide) that weight files are checked against.
pub const TINY_CONFIG: &str = include_str!("../../fixtures/hf-safetensors/config.json");

/// One scratch folder per thread (the regression test runs harnesses on
/// parallel threads); inputs overwrite the same files, so nothing grows.
fn scratch() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        std::env::var_os("VERSIFIER_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("versifier-fuzz-{}", std::process::id()))
    });
    let dir = base.join(format!("{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A folder holding only `config.json` (the tiny one) and `file` = `data`.
fn model_dir(file: &str, data: &[u8]) -> PathBuf {
    let dir = scratch().join("model");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("model folder");
    std::fs::write(dir.join("config.json"), TINY_CONFIG).expect("write config");
    std::fs::write(dir.join(file), data).expect("write input");
    dir
}

/// Loads whatever loaded and decodes a few tokens with it: weights full of
/// NaN or huge values must give text or an error, never a panic.
/// Returns whether the model loaded.
fn exercise(dir: &Path) -> bool {
    let Ok(loaded) = load_model(dir, &Device::Cpu, DType::F32) else {
        return false;
    };
    for sampling in [SamplingParams::greedy(), SamplingParams::default()] {
        let req = GenerateRequest {
            prompt_ids: vec![1, 2],
            variations: 2,
            max_new_tokens: 3,
            sampling,
            stop_ids: vec![0],
            constraint: None,
            rows: Vec::new(),
        };
        let _ = generate(&loaded.model, &req, |_| &[], &|| false, |_| {});
    }
    true
}

/// `model.safetensors` through the header check, the tensor reads and a decode.
/// Returns whether the model loaded.
pub fn safetensors_load(data: &[u8]) -> bool {
    let dir = model_dir("model.safetensors", data);
    let _ = versifier::model::inspect_safetensors(&dir.join("model.safetensors"));
    exercise(&dir)
}

/// `pytorch_model.bin` through candle's pickle reader (zip + pickle opcodes).
/// Returns whether the model loaded.
pub fn pytorch_pickle(data: &[u8]) -> bool {
    exercise(&model_dir("pytorch_model.bin", data))
}

/// `config.json`: parsed and, when accepted, its derived sizes computed.
/// Returns whether the file was accepted.
pub fn config_json(data: &[u8]) -> bool {
    let path = Path::new("config.json");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = Gpt2Config::from_json_str(text, path) {
            let _ = cfg.param_count();
            let _ = cfg.head_dim();
            let _ = cfg.kv_cache_bytes(8, cfg.n_positions, 4);
        }
    }
    let file = scratch().join("config.json");
    std::fs::write(&file, data).expect("write input");
    Gpt2Config::from_file(&file).is_ok()
}

/// `tokenizer.json` (first byte even) or `vocab.txt` (odd), then encode and
/// decode a little text with whatever loaded. Returns whether it loaded.
pub fn tokenizer_files(data: &[u8]) -> bool {
    let Some((&selector, rest)) = data.split_first() else {
        return false;
    };
    let name = if selector % 2 == 0 {
        "tokenizer.json"
    } else {
        "vocab.txt"
    };
    let file = scratch().join(name);
    std::fs::write(&file, rest).expect("write input");
    let Ok(config) = Gpt2Config::from_json_str(TINY_CONFIG, Path::new("config.json")) else {
        return false;
    };
    let Ok(tok) = TextTokenizer::from_file(&file, &config) else {
        return false;
    };
    for text in ["床前明月光", "hello world", "", "\u{0}\u{10FFFF}"] {
        if let Ok(ids) = tok.encode(text) {
            let _ = tok.decode(&ids);
        }
        let _ = tok.prompt_ids(text);
    }
    let n = tok.vocab_size() as u32;
    let _ = tok.decode(&[0, n.saturating_sub(1), n, u32::MAX]);
    for id in [0, n.saturating_sub(1), n, u32::MAX] {
        let _ = tok.token_bytes(id);
    }
    true
}

/// `settings.json` (first byte even) or `history.json` (odd) through the
/// loaders the app uses at start-up (corrupt files are moved to `.bak`,
/// out-of-range settings brought into range), then saved again. Whatever the
/// input, the settings that come back must be inside the ranges the window
/// offers and must save and reload unchanged.
pub fn store_files(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch().join("store");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("store folder");
    let store = Store::in_dir(&dir);
    if selector % 2 == 0 {
        std::fs::write(&store.settings_path, rest).expect("write input");
        let (settings, _) = store.load_settings();
        assert!((1..=8).contains(&settings.variations));
        assert!((1..=1024).contains(&settings.max_tokens));
        let t = settings.sampling.temperature;
        assert!(t.is_finite() && t > 0.0, "temperature {t}");
        let p = settings.sampling.top_p;
        assert!(p > 0.0 && p <= 1.0, "top_p {p}");
        assert!(settings.sampling.repetition_penalty >= 1.0);
        assert!(settings
            .idle_timeout_s
            .is_none_or(|t| t <= Settings::MAX_IDLE_TIMEOUT_S));
        // What was loaded saves and comes back the same, with no notice.
        store.save_settings(&settings).expect("save settings");
        let (again, note) = store.load_settings();
        assert_eq!(
            again, settings,
            "settings changed on a save/load round trip"
        );
        assert!(note.is_none(), "{note:?}");
    } else {
        std::fs::write(&store.history_path, rest).expect("write input");
        let (history, _) = store.load_history();
        store.save_history(&history).expect("save history");
        let (again, note) = store.load_history();
        assert_eq!(again, history, "history changed on a save/load round trip");
        assert!(note.is_none(), "{note:?}");
    }
}
