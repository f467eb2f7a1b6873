//! Ctrl+C in `versifier generate`: the real binary gets SIGINT while it streams,
//! stops between tokens, prints the poem so far and says that it stopped.

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::Read;
use std::process::{Command, Stdio};

use candle_core::DType;
use versifier::model::{synthetic, Gpt2Config};

const MAX_TOKENS: usize = 6000;

/// A random GPT-2 with a long context and a vocabulary without a stop token,
/// so an uncancelled run streams all `MAX_TOKENS` characters (seconds on a CPU).
fn endless_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let chars: Vec<char> = ('一'..).take(200).collect();
    let mut vocab = String::from("[PAD]\n[UNK]\n[CLS]\n");
    for c in &chars {
        vocab.push(*c);
        vocab.push('\n');
    }
    std::fs::write(dir.path().join("vocab.txt"), vocab).unwrap();
    let cfg = Gpt2Config::small(3 + chars.len(), MAX_TOKENS + 64, 64, 2, 2);
    let tensors = synthetic::synthetic_tensors(&cfg, 7).unwrap();
    synthetic::write_checkpoint(dir.path(), &cfg, &tensors, DType::F32).unwrap();
    dir
}

#[test]
fn ctrl_c_stops_between_tokens_and_prints_the_poem_so_far() {
    let model = endless_model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_versifier"))
        .args(["generate", "--device", "cpu", "--greedy", "--prompt", "一"])
        .args(["--max-tokens", &MAX_TOKENS.to_string(), "--model"])
        .arg(model.path())
        .env("VERSIFIER_LOG_DIR", "none")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Wait for the stream to start (the prompt's echo plus the first tokens).
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while String::from_utf8_lossy(&seen).chars().count() < 4 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before any poem came");
        seen.extend_from_slice(&buf[..n]);
    }
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    stdout.read_to_end(&mut seen).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("stopped (Ctrl+C)"), "{stderr}");
    let text = String::from_utf8(seen).unwrap();
    let written = text.trim().chars().count();
    assert!(written >= 4, "the poem so far is printed: {text:?}");
    assert!(
        written < MAX_TOKENS,
        "generation went on to the end: {written} characters"
    );
}
