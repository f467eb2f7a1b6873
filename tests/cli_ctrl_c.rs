//! Ctrl+C in the real binary (SIGINT). `versifier generate` stops between
//! tokens, prints the poem so far and says that it stopped; `versifier train`
//! stops at a step boundary and saves a checkpoint that `--resume` continues.

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::{BufRead, BufReader, Read};
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

#[test]
fn ctrl_c_in_train_stops_at_a_step_and_saves_its_checkpoint_and_the_model() {
    let corpus = tempfile::tempdir().unwrap();
    let poem = "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。\n";
    std::fs::write(corpus.path().join("train.txt"), poem.repeat(40)).unwrap();
    std::fs::write(corpus.path().join("eval.txt"), poem.repeat(4)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let steps = 1_000_000; // hours at this size: only Ctrl+C ends it within the test
    let mut child = Command::new(env!("CARGO_BIN_EXE_versifier"))
        .args(["--log-dir", "none", "train", "--device", "cpu", "--corpus"])
        .arg(corpus.path())
        .arg("--out")
        .arg(out.path())
        .args([
            "--steps",
            &steps.to_string(),
            "--n-layer",
            "1",
            "--n-head",
            "2",
        ])
        .args(["--n-embd", "16", "--context", "16", "--batch-size", "2"])
        .args([
            "--eval-every",
            "0",
            "--checkpoint-every",
            "0",
            "--min-char-count",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Without a terminal the trainer prints every 100th step: wait for one.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.lines().any(|l| l.starts_with("step 100/")) {
        assert!(
            stderr.read_line(&mut seen).unwrap() > 0,
            "training ended early: {seen}"
        );
    }
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    stderr.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}: {seen}");
    assert!(seen.contains("Ctrl+C: stopping after this step"), "{seen}");
    let stopped: usize = seen
        .lines()
        .find_map(|l| l.strip_prefix("stopped after step "))
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop reported: {seen}"));
    assert!((100..steps).contains(&stopped), "stopped at {stopped}");
    // The checkpoint is of exactly that step, and the model was written.
    let state = std::fs::read_to_string(out.path().join("checkpoint/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["step"], stopped);
    assert!(out
        .path()
        .join("checkpoint/optimizer.safetensors")
        .is_file());
    assert!(out.path().join("model.safetensors").is_file());
}
