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
