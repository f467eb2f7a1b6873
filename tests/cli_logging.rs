//! The command line writes a log file in the folder it is given, and carries on
//! with a one-line notice when that folder cannot be written.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::process::Command;

fn versifier(args: &[&str], log_dir: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_versifier"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("VERSIFIER_LOG_DIR", log_dir)
        .output()
        .expect("versifier binary runs")
}

fn bundled() -> String {
    format!("{}/models/tang-poems", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn log_file_is_written_to_the_log_dir_with_the_start_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = versifier(
        &["info", "--model", &bundled()],
        dir.path().to_str().unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 1, "one log file: {logs:?}");
    let name = logs[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("versifier.") && name.ends_with(".log"),
        "{name}"
    );
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(text.contains("versifier started"), "{text}");
    // The file is for people: no terminal colour codes.
    assert!(!text.contains('\u{1b}'), "{text}");
}

#[test]
fn unwritable_log_dir_gives_a_notice_and_the_command_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the folder should be: cannot be created.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let out = versifier(
        &["info", "--model", &bundled()],
        blocker.join("logs").to_str().unwrap(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("no log file") && err.contains("not-a-folder"),
        "{err}"
    );
}

#[test]
fn bad_log_level_is_named_and_falls_back_to_warn() {
    let out = versifier(
        &["--log-level", "loud", "info", "--model", &bundled()],
        "none",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("`loud`"), "{err}");
}
