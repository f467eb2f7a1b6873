//! Replays every input in `tests/fixtures/fuzz-regressions/<target>/` (crashes
//! the fuzzers found, minimized, kept after the fix) and the fuzzers' seed
//! files through the same harness the fuzz targets run (`tests/fuzz/src/harness.rs`).
//! A panic here is a loader bug coming back.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

#[path = "fuzz/src/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every regular file in `dir`, sorted (an absent folder is an empty list).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs the saved regression inputs (any outcome but a panic is fine), then
/// the seeds, which are good files and must be accepted: that proves the
/// harness reaches the code past the first check rather than erroring out.
fn replay<R: Into<Accepted>>(target: &str, run: fn(&[u8]) -> R, seeds: &[&str]) {
    for input in files_in(&fixtures().join("fuzz-regressions").join(target)) {
        let data = std::fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        run(&data);
    }
    for seed in seeds {
        let data = std::fs::read(fixtures().join(seed)).unwrap();
        assert!(run(&data).into().0, "the seed {seed} was not accepted");
    }
}

/// Whether a harness accepted its input (`()` for harnesses that check their own properties).
struct Accepted(bool);
impl From<bool> for Accepted {
    fn from(b: bool) -> Self {
        Accepted(b)
    }
}
impl From<()> for Accepted {
    fn from(_: ()) -> Self {
        Accepted(true)
    }
}

#[test]
fn safetensors_inputs_never_panic() {
    replay(
        "safetensors_load",
        harness::safetensors_load,
        &["hf-safetensors/model.safetensors"],
    );
    // Tensors of another vocabulary size: refused by shape, without a panic.
    let other = std::fs::read(fixtures().join("hub-safetensors/model.safetensors")).unwrap();
    assert!(!harness::safetensors_load(&other));
}

#[test]
fn pytorch_pickle_inputs_never_panic() {
    replay(
        "pytorch_pickle",
        harness::pytorch_pickle,
        &["pytorch-bin/pytorch_model.bin"],
    );
    for hostile in ["os-system.bin", "builtins-exec.bin"] {
        let data = std::fs::read(fixtures().join("hostile-pickle").join(hostile)).unwrap();
        assert!(!harness::pytorch_pickle(&data), "{hostile} loaded");
    }
}

#[test]
fn config_json_inputs_never_panic() {
    replay(
        "config_json",
        harness::config_json,
        &[
            "hf-safetensors/config.json",
            "hub-safetensors/config.json",
            "pytorch-bin/config.json",
        ],
    );
}

#[test]
fn tokenizer_inputs_never_panic() {
    replay("tokenizer_files", harness::tokenizer_files, &[]);
    // Seeds with the selector byte the harness expects in front.
    for (selector, file) in [
        (0u8, "hf-safetensors/tokenizer.json"),
        (1, "hub-safetensors/vocab.txt"),
    ] {
        let mut data = vec![selector];
        data.extend(std::fs::read(fixtures().join(file)).unwrap());
        assert!(harness::tokenizer_files(&data), "{file} was not accepted");
    }
}

#[test]
fn store_inputs_never_panic_and_round_trip() {
    replay("store_files", harness::store_files, &[]);
    harness::store_files(b"\x00{\"variations\": 99, \"sampling\": {\"temperature\": 0}}");
    harness::store_files(b"\x01[{\"prompt\": ");
}
