//! Builds the guest test plugins (`tests/plugins`, with `tests/plugins/v0_3_0` to
//! `tests/plugins/v0_3_6`, `hostile_outbound`, the SDK-based `cache_key`, `method_body`
//! and `sdk_answer`, the wasi:http handler `handler_reuse`, `forms`, `request_hook` and
//! `request_hook_mistyped`; apart, the SDK guest `sdk_lazy`) and the bundled plugins
//! (`plugins/*`) for `wasm32-wasip2` and tells the tests where they are
//! (`TEST_PLUGIN_WASM`, `TEST_PLUGIN_V0_3_0_WASM` to `TEST_PLUGIN_V0_3_6_WASM`,
//! `TEST_PLUGIN_HOSTILE_OUTBOUND_WASM`, `TEST_PLUGIN_CACHE_KEY_WASM`,
//! `TEST_PLUGIN_METHOD_BODY_WASM`, `TEST_PLUGIN_SDK_ANSWER_WASM`,
//! `TEST_PLUGIN_HANDLER_REUSE_WASM`, `TEST_PLUGIN_FORMS_WASM`,
//! `TEST_PLUGIN_REQUEST_HOOK_WASM`, `TEST_PLUGIN_REQUEST_HOOK_MISTYPED_WASM`,
//! `TEST_PLUGIN_SDK_LAZY_WASM`, `BUNDLED_PLUGINS_DIR`).
//! Fails the build, with the fix, if the target is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let plugin = here.join("plugins");
    println!("cargo:rerun-if-changed={}", plugin.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        plugin.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", here.join("../wit").display());
    for frozen in [
        "0.1.0", "0.3.0", "0.3.1", "0.3.2", "0.3.3", "0.3.4", "0.3.5", "0.3.6",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            here.join("../wit").join(frozen).display()
        );
    }
    for guest in [
        "v0_3_0",
        "v0_3_1",
        "v0_3_2",
        "v0_3_3",
        "v0_3_4",
        "v0_3_5",
        "v0_3_6",
        "hostile_outbound",
        "cache_key",
        "method_body",
        "sdk_answer",
        "handler_reuse",
        "forms",
        "request_hook",
        "request_hook_mistyped",
        "sdk_lazy",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            plugin.join(guest).join("src").display()
        );
    }
    // The altered copy of the contract request_hook_mistyped is built against.
    println!(
        "cargo:rerun-if-changed={}",
        plugin.join("request_hook_mistyped/wit").display()
    );
    // The WASI 0.2 WIT the handler_reuse guest is built against.
    println!(
        "cargo:rerun-if-changed={}",
        here.join("../examples/handlers/wit").display()
    );
    for dir in ["../plugin-sdk", "../plugins"] {
        println!("cargo:rerun-if-changed={}", here.join(dir).display());
    }

    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .expect("run rustc --print sysroot");
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    assert!(
        sysroot.join("lib/rustlib/wasm32-wasip2").exists(),
        "the wasm32-wasip2 target is not installed; run `rustup target add wasm32-wasip2`"
    );

    // A target folder of its own (the outer cargo holds the lock on the workspace's), beside
    // the workspace's rather than in OUT_DIR: `cargo clippy` and `cargo build` run this script
    // as two units with two OUT_DIRs, and the second build of the same guests is then a
    // no-op instead of another few minutes. OUT_DIR is TARGET/PROFILE/build/PKG-HASH/out.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let out = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(&out_dir)
        .join("wasm-guests");

    // Its workspace also holds the guests built against the frozen 0.3.0 to 0.3.6 contracts,
    // and those built on the Rust SDK (`cache_key`, `method_body`, `sdk_answer`).
    let test_plugin = plugin.join("Cargo.toml");
    build_wasm(
        &out,
        &test_plugin,
        &["--release", "--workspace"],
        "the guest test plugins",
    );
    for (var, stem) in [
        ("TEST_PLUGIN_WASM", "weir_test_plugin"),
        ("TEST_PLUGIN_V0_3_0_WASM", "weir_test_plugin_v0_3_0"),
        ("TEST_PLUGIN_V0_3_1_WASM", "weir_test_plugin_v0_3_1"),
        ("TEST_PLUGIN_V0_3_2_WASM", "weir_test_plugin_v0_3_2"),
        ("TEST_PLUGIN_V0_3_3_WASM", "weir_test_plugin_v0_3_3"),
        ("TEST_PLUGIN_V0_3_4_WASM", "weir_test_plugin_v0_3_4"),
        ("TEST_PLUGIN_V0_3_5_WASM", "weir_test_plugin_v0_3_5"),
        ("TEST_PLUGIN_V0_3_6_WASM", "weir_test_plugin_v0_3_6"),
        (
            "TEST_PLUGIN_HOSTILE_OUTBOUND_WASM",
            "weir_test_plugin_hostile_outbound",
        ),
        ("TEST_PLUGIN_CACHE_KEY_WASM", "weir_test_plugin_cache_key"),
        (
            "TEST_PLUGIN_METHOD_BODY_WASM",
            "weir_test_plugin_method_body",
        ),
        ("TEST_PLUGIN_SDK_ANSWER_WASM", "weir_test_plugin_sdk_answer"),
        (
            "TEST_PLUGIN_HANDLER_REUSE_WASM",
            "weir_test_plugin_handler_reuse",
        ),
        ("TEST_PLUGIN_FORMS_WASM", "weir_test_plugin_forms"),
        (
            "TEST_PLUGIN_REQUEST_HOOK_WASM",
            "weir_test_plugin_request_hook",
        ),
        (
            "TEST_PLUGIN_REQUEST_HOOK_MISTYPED_WASM",
            "weir_test_plugin_request_hook_mistyped",
        ),
    ] {
        let wasm = out.join(format!("wasm32-wasip2/release/{stem}.wasm"));
        assert!(wasm.exists(), "{} was not produced", wasm.display());
        println!("cargo:rustc-env={var}={}", wasm.display());
    }

    // The SDK guest built without `request-hook`, in a build of its own: Cargo unifies a
    // dependency's features within one build, so in the workspace's it would take
    // `request-hook` from every other SDK guest there.
    build_wasm(
        &out,
        &plugin.join("sdk_lazy/Cargo.toml"),
        &["--release"],
        "the SDK guest without request-hook",
    );
    let wasm = out.join("wasm32-wasip2/release/weir_test_plugin_sdk_lazy.wasm");
    assert!(wasm.exists(), "{} was not produced", wasm.display());
    println!(
        "cargo:rustc-env=TEST_PLUGIN_SDK_LAZY_WASM={}",
        wasm.display()
    );

    // The bundled plugins, as `cargo xtask plugins` builds them.
    let workspace = here.join("../Cargo.toml");
    let packages = [
        "-p",
        "weir-plugin-headers",
        "-p",
        "weir-plugin-key-auth",
        "-p",
        "weir-plugin-jwt-auth",
        "-p",
        "weir-plugin-rate-limit",
        "-p",
        "weir-plugin-rewrite",
        "-p",
        "weir-plugin-transform",
        "-p",
        "weir-plugin-aggregate",
        "-p",
        "weir-plugin-ext-authz",
        "-p",
        "weir-plugin-cors",
        "-p",
        "weir-plugin-ip-restriction",
        "-p",
        "weir-plugin-grpc-json",
    ];
    let args = [&["--profile", "plugin"][..], &packages[..]].concat();
    build_wasm(&out, &workspace, &args, "the bundled plugins");
    let bundled = out.join("wasm32-wasip2/plugin");
    for stem in [
        "headers",
        "key_auth",
        "jwt_auth",
        "rate_limit",
        "rewrite",
        "transform",
        "aggregate",
        "ext_authz",
        "cors",
        "ip_restriction",
        "grpc_json",
    ] {
        let wasm = bundled.join(format!("{stem}.wasm"));
        assert!(wasm.exists(), "{} was not produced", wasm.display());
    }
    println!("cargo:rustc-env=BUNDLED_PLUGINS_DIR={}", bundled.display());
}

/// `cargo build --target wasm32-wasip2 ARGS` for `manifest` into `out`; panics if it fails.
fn build_wasm(out: &Path, manifest: &Path, args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--target", "wasm32-wasip2"])
        .args(args)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(out)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for {what}: {e}"));
    assert!(status.success(), "building {what} failed");
}
