//! Every file of every target's committed corpus (`fuzz/corpus/<target>/`), run through the
//! target as `cargo fuzz` would: the seeds, and each input a fuzzer once failed on, stay
//! fixed in `cargo test` on the stable toolchain, without libFuzzer.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            std::panic::catch_unwind(|| run(&input)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail: {failed:#?}"
    );
}

#[test]
fn config_corpus() {
    replay("config", weir_fuzz::config::run);
}

#[test]
fn path_corpus() {
    replay("path", weir_fuzz::path::run);
}

#[test]
fn plugin_output_corpus() {
    replay("plugin_output", weir_fuzz::plugin_output::run);
}

#[test]
fn rewrite_corpus() {
    replay("rewrite", weir_fuzz::rewrite::run);
}

#[test]
fn transform_corpus() {
    replay("transform", weir_fuzz::transform::run);
}
