//! weir's fuzz targets, one module each, with the one entry `run(input)` that both the
//! libFuzzer binaries (`fuzz_targets/`, built by `cargo fuzz`) and the corpus replay
//! (`tests/corpus.rs`, in `cargo test`) call. A target panics when weir panics or when a
//! property it asserts fails; anything else it returns quietly.

#![forbid(unsafe_code)]

pub mod config;
pub mod path;
pub mod plugin_output;
pub mod rewrite;
mod text;
pub mod transform;
