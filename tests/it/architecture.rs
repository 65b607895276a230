//! The module layers of `src/` (see docs/ARCHITECTURE.md): each top-level module may use
//! only the modules below it, so the import graph has no cycle. Run alone with
//! `cargo test --test architecture`; a violation names the file and line.

use std::path::{Path, PathBuf};

/// Bottom to top, as `src/lib.rs` lists them.
const LAYERS: [&str; 17] = [
    "files",
    "http",
    "routes",
    "config",
    "directory",
    "policy",
    "telemetry",
    "shared",
    "identity",
    "snapshot",
    "changes",
    "audit",
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

/// The module path of a file under `src/`: `pipeline/classify.rs` → `pipeline::classify`,
/// `pipeline/mod.rs` → `pipeline`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Every path a line names through `crate::` or `super::`, as module segments.
fn paths_named(line: &str, own: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let ident = |s: &str| -> Vec<String> {
        let mut segs = Vec::new();
        let mut rest = s;
        loop {
            let seg: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if seg.is_empty() {
                break;
            }
            rest = &rest[seg.len()..];
            segs.push(seg);
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        segs
    };
    for (marker, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // `super` of `a/b.rs` is `a`; of `a/b/mod.rs` (module `a::b`) it is `a` too.
            let mut b = own.to_vec();
            let _ = is_mod_file;
            b.pop();
            b
        }),
    ] {
        let mut rest = line;
        while let Some(at) = rest.find(marker) {
            // `crate::` inside `super::crate::` cannot happen; skip `xcrate::`-like words.
            let before = rest[..at].chars().last();
            rest = &rest[at + marker.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut chain = rest;
            let mut base = base.clone();
            while let Some(r) = chain.strip_prefix("super::") {
                base.pop();
                chain = r;
            }
            let mut path = base;
            path.extend(ident(chain));
            found.push(path);
        }
    }
    found
}

/// Within the layers, files import each other without cycles too (a parent module and
/// its own children aside: `mod.rs` declares them and re-exports from them).
#[test]
fn no_two_files_import_each_other_round_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: Vec<(Vec<String>, PathBuf)> = files
        .iter()
        .map(|f| (module_of(f.strip_prefix(&src).unwrap_or(f)), f.clone()))
        .filter(|(m, _)| !m.is_empty() && m[0] != "lib" && m[0] != "main")
        .collect();
    let known: Vec<&Vec<String>> = modules.iter().map(|(m, _)| m).collect();
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| known.contains(&prefix))
    };
    let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let mut edges: std::collections::BTreeMap<
        Vec<String>,
        std::collections::BTreeSet<Vec<String>>,
    > = Default::default();
    for (module, file) in &modules {
        let is_mod = file.file_name().is_some_and(|n| n == "mod.rs");
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for path in paths_named(code, module, is_mod) {
                if let Some(target) = resolve(&path)
                    && !related(module, &target)
                {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &Vec<String>,
        edges: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut std::collections::BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = Default::default();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!("import cycle: {}", names.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_grouped_and_nested_references() {
    assert_eq!(
        crate_references("use crate::{http::body, routes::Route}; let x = crate::gateway::G;"),
        ["http", "routes", "gateway"]
    );
}
