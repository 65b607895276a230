//! The module layers of `src/` (see docs/ARCHITECTURE.md): each top-level module may use
//! only the modules below it, so the import graph has no cycle. Run alone with
//! `cargo test --test architecture`; a violation names the file and line.

use std::path::{Path, PathBuf};

/// Bottom to top, as `src/lib.rs` lists them.
const LAYERS: [&str; 14] = [
    "http",
    "routes",
    "config",
    "directory",
    "policy",
    "telemetry",
    "identity",
    "snapshot",
    "changes",
    "pipeline",
    "gateway",
    "admin",
    "server",
    "cli",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.map(|e| e.path()).unwrap_or_default();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line names through `crate::`, including `crate::{a, b::c}`.
fn crate_references(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut listed = Vec::new();
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap_or(file);
        let top = relative
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = LAYERS.iter().position(|l| *l == top) else {
            violations.push(format!(
                "{}: module `{top}` is in no layer",
                relative.display()
            ));
            continue;
        };
        listed.push(top.clone());
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for name in crate_references(code) {
                if name == top {
                    continue;
                }
                match LAYERS.iter().position(|l| *l == name) {
                    Some(used) if used < own => {}
                    Some(_) => violations.push(format!(
                        "{}:{}: `{top}` uses `{name}`, a layer above it",
                        relative.display(),
                        n + 1
                    )),
                    None => violations.push(format!(
                        "{}:{}: `crate::{name}` is in no layer",
                        relative.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
    for layer in LAYERS {
        assert!(
            listed.iter().any(|l| l == layer),
            "layer `{layer}` has no module in src/"
        );
    }
}

#[test]
fn the_checker_sees_grouped_and_nested_references() {
    assert_eq!(
        crate_references("use crate::{http::body, routes::Route}; let x = crate::gateway::G;"),
        ["http", "routes", "gateway"]
    );
}
