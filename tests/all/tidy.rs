//! Repository hygiene: every Rust file says what it owns in a `//!` doc, and no debug macro
//! or unfinished-work marker in a module doc is left behind.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != ".git" && name != "node_modules" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_has_a_module_doc_and_no_debug_leftovers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(
        files.len() > 10,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    let mut problems = Vec::new();
    let dbg = concat!("dbg", "!(");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let doc: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
        if doc.is_empty() {
            problems.push(format!("{rel}: does not start with a `//!` module doc"));
        }
        if doc.iter().any(|l| l.contains(concat!("FIX", "ME"))) {
            problems.push(format!("{rel}: {} in the module doc", concat!("FIX", "ME")));
        }
        if text.contains(dbg) {
            problems.push(format!("{rel}: contains {dbg}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
