//! Repository hygiene as a test: module docs everywhere, no ignored tests, no stray debugging.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/<name> sits two levels below the root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if !matches!(name, "target" | "node_modules" | ".git") {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("fuzz"), &mut files);
    assert!(
        files.len() > 50,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            (p, text)
        })
        .collect()
}

#[test]
fn every_rust_file_opens_with_a_line_on_its_job() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` opening line: {missing:#?}"
    );
}

#[test]
fn no_test_is_ignored_and_nothing_debug_is_left() {
    // Built from parts so this file does not flag itself.
    let ignore = ["#[", "ignore"].concat();
    let dbg = ["dbg", "!("].concat();
    let offenders: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| text.contains(&ignore) || text.contains(&dbg))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "ignored tests or dbg! left in: {offenders:#?}"
    );
}

/// The crates ARCHITECTURE.md's code map names: the first cell of each
/// table row of the `## Code map` section, in backticks.
fn code_map_crates(architecture: &str) -> Vec<String> {
    let Some(start) = architecture.find("## Code map") else {
        return Vec::new();
    };
    let section = &architecture[start + "## Code map".len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn every_crate_is_on_the_code_map() {
    let root = workspace_root();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md at the workspace root");
    let mapped = code_map_crates(&architecture);
    assert!(
        mapped.len() > 5,
        "no code map table found in ARCHITECTURE.md: {mapped:?}"
    );
    let crates: Vec<String> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = crates.iter().filter(|c| !mapped.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "crates missing from ARCHITECTURE.md's code map: {missing:?}"
    );
    let stale: Vec<&String> = mapped.iter().filter(|m| !crates.contains(m)).collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md's code map names crates that do not exist: {stale:?}"
    );
}
