//! `config`: any text, as a `weir.toml`, through `config::parse` (TOML, then every
//! validation rule). A file is either a `Config` or diagnostics, never a panic.

use std::path::Path;

/// Where the fuzzed file claims to be: relative paths in it resolve under a folder that does
/// not exist, so a target never reads the machine's files by a relative name.
const FILE: &str = "/nonexistent/weir-fuzz/weir.toml";

/// Parses `input` as a configuration file.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(e) = weir::config::parse(Path::new(FILE), text) {
        // Every diagnostic renders (line and column from the span).
        let _ = e.to_string();
    }
}
