//! Builds the `plugin_output` target's guest filter (`guest/`) for `wasm32-wasip2` and tells
//! the crate where it is (`FUZZ_GUEST_WASM`). Fails the build, with the fix, if the target
//! is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = here.join("guest");
    println!("cargo:rerun-if-changed={}", guest.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        guest.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        here.join("../plugin-sdk").display()
    );
    println!("cargo:rerun-if-changed={}", here.join("../wit").display());

    // The guests' folder at the top of the target folder (the one cargo tags with
    // CACHEDIR.TAG), shared with tests/build.rs's guests: a `cargo fuzz` build
    // (target/<triple>/release) and a test build (target/debug) find the SDK's crates
    // compiled already.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target = out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .unwrap_or(&out_dir);
    let out = target.join("wasm-guests");
    build(&out, &guest.join("Cargo.toml"));
    let wasm = out.join("wasm32-wasip2/release/weir_fuzz_guest.wasm");
    assert!(wasm.exists(), "{} was not produced", wasm.display());
    println!("cargo:rustc-env=FUZZ_GUEST_WASM={}", wasm.display());
}

/// `cargo build --release --target wasm32-wasip2` of `manifest` into `out`, without the
/// fuzzer's instrumentation flags; panics if it fails.
fn build(out: &Path, manifest: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for the fuzz guest: {e}"));
    assert!(
        status.success(),
        "building fuzz/guest for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
}
