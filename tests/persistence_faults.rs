//! Saved poems survive faults: a process killed (SIGKILL) in the middle of
//! saving its history never leaves a file that fails to load, and never loses a
//! poem whose save had completed; a save that cannot be written is a clear error
//! and the poems stay in memory.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use versifier::store::{PoemRecord, Store};

const CHILD_ENV: &str = "VERSIFIER_HISTORY_CHILD_DIR";

fn poem(i: usize) -> PoemRecord {
    PoemRecord {
        prompt: format!("{i}"),
        form: Default::default(),
        // Long enough that a save takes a while and a kill lands inside one.
        text: "春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。".repeat(40),
        model: "models/tang-poems".into(),
        sampling: Default::default(),
        unix_ms: i as u64,
        unfinished: false,
        verse: Default::default(),
        ci_rules: true,
    }
}

/// Child process: appends a poem and saves the whole history, forever, printing
/// how many poems each completed save holds.
#[test]
#[ignore = "run only as the child process of kill_9_during_history_saves_never_corrupts_or_loses_saved_poems"]
fn child_history_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::in_dir(std::path::Path::new(&dir));
    let (mut history, _) = store.load_history();
    loop {
        history.push(poem(history.len()));
        store.save_history(&history).expect("child save");
        println!("{}", history.len());
    }
}

#[test]
fn kill_9_during_history_saves_never_corrupts_or_loses_saved_poems() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = 0usize;
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_history_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it complete a few saves (a different number each round), then kill it mid-work.
        let saves = 1 + (round * 7) % 5;
        for _ in 0..saves {
            let line = lines.next().expect("child output").unwrap();
            if let Ok(n) = line.trim().parse::<usize>() {
                acknowledged = n;
            }
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let store = Store::in_dir(dir.path());
        let (history, note) = store.load_history();
        assert!(
            note.is_none(),
            "round {round}: history failed to load: {note:?}"
        );
        assert!(
            history.len() >= acknowledged,
            "round {round}: {} poems, {acknowledged} were saved",
            history.len()
        );
        for (i, p) in history.iter().enumerate() {
            assert_eq!(p, &poem(i), "round {round}: poem {i} damaged");
        }
    }
    assert!(acknowledged >= 12);
}

#[test]
fn a_save_that_cannot_be_written_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // The history's folder is a file: nothing can be written there.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let store = Store::in_dir(&blocker);
    let poems = vec![poem(0)];
    let err = store.save_history(&poems).unwrap_err().to_string();
    assert!(err.contains("not-a-folder"), "{err}");
    assert_eq!(poems.len(), 1, "the poems stay in memory for a retry");
}
