//! Warnings about a checkpoint name the bound an id breaks (the model's
//! embedding or the tokenizer) and are logged once per model, not at every
//! reload; a tokenizer that does not match config.json says which numbers differ.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use common::*;
use versifier::model::load_model;

/// Collects what `tracing` writes while `f` runs on this thread.
fn logs_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn an_id_outside_the_embedding_is_named_as_such_and_said_once_per_model() {
    let dir = scratch_copy("hf-safetensors");
    // vocab_size is 300 in config.json and in the tokenizer.
    edit_config(dir.path(), "eos_token_id", serde_json::json!(300));
    let logs = logs_of(|| {
        for _ in 0..3 {
            load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
        }
    });
    let said = "eos_token_id = 300 is outside the model's 300-row embedding";
    assert_eq!(logs.matches(said).count(), 1, "once across reloads: {logs}");
    assert!(!logs.contains("-token vocabulary"), "{logs}");
}

#[test]
fn a_tokenizer_larger_than_config_vocab_size_names_both_numbers() {
    let dir = scratch_copy("hf-safetensors");
    edit_config(dir.path(), "vocab_size", serde_json::json!(250));
    let Err(err) = load_model(dir.path(), &Device::Cpu, DType::F32) else {
        panic!("a 300-token tokenizer with vocab_size = 250 must not load");
    };
    let err = err.to_string();
    assert!(
        err.contains("the tokenizer has 300 tokens but config.json says vocab_size = 250"),
        "{err}"
    );
}
