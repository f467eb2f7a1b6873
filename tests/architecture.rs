//! The layering ARCHITECTURE.md describes, checked on the source: a module
//! only uses modules below it (or its own), never one above.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it does not expect

use std::path::Path;

/// Bottom to top. Each may use the ones before it.
const LAYERS: &[&str] = &[
    "model", "poetry", "meter", "generate", "device", "store", "train", "engine", "eval", "serve",
    "ui",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for layer in LAYERS {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer} has no files");
        let own = rank(layer).unwrap();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("crate::") {
                    let target: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if let Some(r) = rank(&target) {
                        if r > own {
                            problems.push(format!(
                                "{}:{}: {layer} uses {target}, which is above it",
                                file.display(),
                                n + 1
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The sibling modules `code` (one line, comments cut) names through
/// `super::NAME` or `crate::FOLDER::NAME`, `super::{A, B}` included.
fn siblings_named(code: &str, folder: &str) -> Vec<String> {
    let mut out = Vec::new();
    let crate_path = format!("crate::{folder}::");
    for prefix in ["super::", crate_path.as_str()] {
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                out.extend(inner.split(',').map(|n| {
                    n.trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                }));
            } else {
                out.push(
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
    }
    out
}

#[test]
fn poetry_files_use_only_the_files_below_them_as_mod_rs_orders_them() {
    // poetry/mod.rs lists its modules bottom to top ("layers: …"); a file may
    // name the ones listed before it, through `super::` or `crate::poetry::`,
    // and never one after it (no import cycles inside the folder).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/poetry");
    let mod_rs = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
    let order: Vec<String> = mod_rs
        .lines()
        .find_map(|l| l.strip_prefix("//! layers: "))
        .unwrap()
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    // Every file of the folder has its place.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "mod") {
            assert!(
                order.iter().any(|m| m == module),
                "{module} is not in poetry/mod.rs's layers"
            );
        }
    }
    let mut problems = Vec::new();
    for (rank, module) in order.iter().enumerate() {
        let text = std::fs::read_to_string(dir.join(format!("{module}.rs"))).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for named in siblings_named(code, "poetry") {
                if let Some(r) = order.iter().position(|m| *m == named) {
                    if r > rank {
                        problems.push(format!(
                            "src/poetry/{module}.rs:{}: {module} uses {named}, which mod.rs puts above it",
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn at_most_five_functions_are_allowed_past_the_line_limit_each_with_a_reason() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut allowed = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.contains("allow(clippy::too_many_lines)") {
                let reason = line.split_once("//").map_or("", |(_, r)| r.trim());
                assert!(
                    reason.len() > 20,
                    "{}:{}: an allow of too_many_lines without a reason",
                    file.display(),
                    n + 1
                );
                allowed.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(allowed.len() <= 5, "{allowed:#?}");
    let clippy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("clippy.toml")).unwrap();
    assert!(
        clippy.contains("too-many-lines-threshold = 100"),
        "{clippy}"
    );
}
