//! The working tree a GPU session sends to the device machine: it must fit the
//! call's limit with room for the carry (packaging/cuda/slim-tree.sh), and the
//! script that slims it must never lose or commit away the files it hides.
//!
//! Both tests need `git` (the script is about git's index); where there is no
//! git, or the checkout is not a git repository, they say so and pass.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a device call takes: working tree and carry together.
const CALL_LIMIT: u64 = 64 << 20;
/// Room the carry needs (packaging/cuda/gpu-carry.sh: the CUDA build, xz, about
/// 17 MiB, and a corpus slice, about 4.5 MiB), with a little to grow.
const CARRY_ROOM: u64 = 24 << 20;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    root().join("packaging/cuda/slim-tree.sh")
}

fn git_usable(dir: &Path) -> bool {
    let ok = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "no git, or {} is not a git checkout: not checked",
            dir.display()
        );
    }
    ok
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Fails with what the command wrote to stderr when it did not succeed.
fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn git(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["-c", "user.name=test", "-c", "user.email=test@example.com"];
    all.extend_from_slice(args);
    run(dir, "git", &all)
}

/// The files a device call would take from `dir`, one path a line.
fn travelling(dir: &Path) -> String {
    let tracked = stdout(&git(dir, &["ls-files"]));
    let untracked = stdout(&git(dir, &["ls-files", "--others", "--exclude-standard"]));
    tracked + &untracked
}

#[test]
fn the_slimmed_tree_leaves_room_for_the_carry_in_a_device_call() {
    if !git_usable(&root()) {
        return;
    }
    let slim = run(
        &root(),
        "bash",
        &[script().to_str().unwrap(), "bytes", "on"],
    );
    assert_ok(&slim);
    let bytes: u64 = stdout(&slim).trim().parse().unwrap();
    assert!(
        bytes + CARRY_ROOM <= CALL_LIMIT,
        "the slimmed working tree is {} MiB: with {} MiB of carry it is over the {} MiB a device \
         call takes; add what no GPU step reads to slim_paths in packaging/cuda/slim-tree.sh",
        bytes >> 20,
        CARRY_ROOM >> 20,
        CALL_LIMIT >> 20
    );
}

#[test]
fn slim_tree_hides_files_without_touching_them_refuses_commits_and_off_restores_the_index() {
    if !git_usable(&root()) {
        return;
    }
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    assert!(git(dir, &["init", "-q"]).status.success());
    let files = [
        (
            "packaging/cuda/slim-tree.sh",
            std::fs::read(script()).unwrap(),
        ),
        ("models/tang-poems/model.safetensors", vec![1; 4096]),
        ("models/song-ci/model.safetensors", vec![2; 8192]),
        ("assets/fonts/font.otf", vec![3; 2048]),
        ("tests/snapshots/window.png", vec![4; 1024]),
        ("src/lib.rs", b"// code\n".to_vec()),
    ];
    for (path, bytes) in &files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    assert!(git(dir, &["add", "."]).status.success());
    assert!(git(dir, &["commit", "-q", "-m", "start"]).status.success());
    let slim = dir.join("packaging/cuda/slim-tree.sh");
    let slim = slim.to_str().unwrap();
    let bytes = |arg: &[&str]| -> u64 {
        let mut args = vec![slim, "bytes"];
        args.extend_from_slice(arg);
        stdout(&run(dir, "bash", &args)).trim().parse().unwrap()
    };
    let predicted = bytes(&["on"]);
    assert!(predicted < bytes(&[]));

    // A change to a file it would hide: refused, nothing done.
    std::fs::write(dir.join("assets/fonts/font.otf"), b"edited").unwrap();
    let refused = run(dir, "bash", &[slim, "on"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("assets"));
    assert!(!dir.join(".git/hooks/pre-commit").exists());
    assert!(git(dir, &["checkout", "--", "assets"]).status.success());

    let on = run(dir, "bash", &[slim, "on"]);
    assert_ok(&on);
    let sent = travelling(dir);
    assert!(
        sent.contains("models/tang-poems/model.safetensors"),
        "{sent}"
    );
    assert!(sent.contains("src/lib.rs"), "{sent}");
    for hidden in ["models/song-ci/", "assets/", "tests/snapshots/"] {
        assert!(!sent.contains(hidden), "{hidden} still travels:\n{sent}");
    }
    assert_eq!(bytes(&[]), predicted);
    for (path, content) in &files {
        assert_eq!(
            &std::fs::read(dir.join(path)).unwrap(),
            content,
            "{path} changed on disk"
        );
    }
    let commit = git(
        dir,
        &["commit", "-q", "-m", "would delete the hidden files"],
    );
    assert!(!commit.status.success(), "a commit went through while slim");
    assert!(String::from_utf8_lossy(&commit.stderr).contains("slim-tree.sh off"));

    let off = run(dir, "bash", &[slim, "off"]);
    assert_ok(&off);
    assert_eq!(stdout(&git(dir, &["status", "--porcelain"])), "");
    assert!(!dir.join(".git/hooks/pre-commit").exists());
    let exclude = std::fs::read_to_string(dir.join(".git/info/exclude")).unwrap();
    assert!(!exclude.contains("slim-tree"), "{exclude}");
    assert!(travelling(dir).contains("models/song-ci/model.safetensors"));
    assert!(git(dir, &["commit", "-q", "--allow-empty", "-m", "after"])
        .status
        .success());
}
