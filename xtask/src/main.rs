//! The task runner shared by developers and CI: `cargo xtask <task>`. Needs nothing but cargo.
//!
//! - `test` — every check CI runs: formatting, clippy, the build, unit and end-to-end tests,
//!   a small share of `pgo`'s training traffic, then every fuzz target for a bounded time
//!   (`fuzz`);
//! - `fuzz [--release] [SECONDS] [TARGET…]` — builds the fuzz targets (`fuzz/`, libFuzzer)
//!   and runs each for SECONDS (60) on its committed corpus;
//! - `plugins` — builds every bundled plugin (`plugins/*`) for `wasm32-wasip2` into
//!   `target/plugins/NAME.wasm`;
//! - `demo` — builds weir and the plugins, and runs weir in front of two demo upstreams it
//!   starts itself, with curl lines to try;
//! - `gateway` — the same for the API-gateway example (`examples/gateway/`), every phase
//!   plugin in front of a users and an orders upstream;
//! - `token [SUBJECT] [SECONDS]` — prints a token the gateway example's jwt-auth accepts;
//! - `pgo` — the production build, profile-guided: an instrumented weir serves training
//!   traffic, and the `dist` build is optimised with what it counted, into `target/pgo/weir`
//!   (`pgo --train WEIR` sends a small share of that traffic to WEIR, as CI does);
//! - `examples` — installs the other languages' toolchains (`examples/toolchains.sh`) and
//!   builds every example filter and handler (`examples/{filters,handlers}/*/build.sh`).

#![forbid(unsafe_code)]

mod demo;
mod fuzz;
mod gateway;
mod pgo;

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    // Run by cargo in place of rustc for the fuzz build (`fuzz::build`).
    if let Some(code) = fuzz::wrap_rustc() {
        std::process::exit(code);
    }
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "demo" => demo::run(),
        "gateway" => gateway::run(),
        "token" => gateway::token(std::env::args().nth(2), std::env::args().nth(3)),
        "plugins" => plugins().map(|dir| eprintln!("plugins built into {}", dir.display())),
        "examples" => examples(),
        "fuzz" => fuzz::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        "pgo" => pgo::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  test     formatting, clippy, build, every test (what CI runs)\n  plugins  build the bundled plugins into target/plugins/\n  demo     run weir with the bundled plugins in front of demo upstreams\n  gateway  run the API-gateway example (every phase plugin)\n  token    print a token for the gateway example: token [SUBJECT] [SECONDS]\n  examples build the example plugins in every language (installs their toolchains)\n  fuzz     build the fuzz targets and run each: fuzz [--release] [SECONDS] [TARGET...] (libFuzzer)\n  pgo      the production build, profile-guided, into target/pgo/weir: pgo [--train WEIR]"
            );
            if task.is_empty() || task == "help" {
                Ok(())
            } else {
                bail!("unknown task {task:?}")
            }
        }
    }
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The end-to-end tests run the `weir` binary, so build it first with the same features
    // the test build resolves (the tests crate uses normal dependencies for that reason).
    cargo(&["build", "--workspace", "--bins"])?;
    // The other languages' examples, which the end-to-end tests load.
    examples()?;
    cargo(&["test", "--workspace"])?;
    // `cargo xtask pgo`'s training traffic, a fiftieth of it, on the debug build: a phase that
    // stopped getting 200s would teach the profile-guided build that an error path is hot.
    pgo::smoke()?;
    // Last: a minute per fuzz target on its corpus (WEIR_FUZZ_SECONDS shortens it).
    fuzz::run(&[])
}

/// Every example in `examples/filters/` and `examples/handlers/`, built by its own
/// `build.sh` with the pinned toolchains; the C, Zig and Go ones use the debug `weir` for
/// `plugin bindgen` and `plugin componentize`.
fn examples() -> anyhow::Result<()> {
    // The same selection `test` builds, so that after it this is a no-op (`-p weir-host`
    // alone unifies features differently and rebuilds half the dependencies).
    cargo(&["build", "--workspace", "--bins"])?;
    let path = tools_path()?;
    let weir = target_dir().join("debug/weir");
    for example in [
        "filters/rust",
        "filters/c",
        "filters/zig",
        "filters/go",
        "filters/python",
        "filters/js",
        "filters/js-quickjs",
        "filters/ts",
        "handlers/python",
        "handlers/js",
    ] {
        let script = root().join("examples").join(example).join("build.sh");
        eprintln!("$ {}", script.display());
        #[expect(
            clippy::disallowed_types,
            reason = "a build's wall-clock time, outside any async runtime"
        )]
        let started = std::time::Instant::now();
        let status = Command::new("sh")
            .arg(&script)
            .env("PATH", &path)
            .env("WEIR", &weir)
            .status()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
        eprintln!(
            "  built {example} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `PATH` with the pinned toolchains first, installing them if needed.
fn tools_path() -> anyhow::Result<std::ffi::OsString> {
    let script = root().join("examples/toolchains.sh");
    let output = Command::new("sh")
        .arg(&script)
        .arg("--bin")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let bin = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut paths = vec![std::path::PathBuf::from(bin)];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).context("PATH")
}

/// The bundled plugins: (crate folder under `plugins/`, package, library file stem).
const BUNDLED: [(&str, &str, &str); 11] = [
    ("headers", "weir-plugin-headers", "headers"),
    ("key-auth", "weir-plugin-key-auth", "key_auth"),
    ("jwt-auth", "weir-plugin-jwt-auth", "jwt_auth"),
    ("rate-limit", "weir-plugin-rate-limit", "rate_limit"),
    ("rewrite", "weir-plugin-rewrite", "rewrite"),
    ("transform", "weir-plugin-transform", "transform"),
    ("aggregate", "weir-plugin-aggregate", "aggregate"),
    ("ext-authz", "weir-plugin-ext-authz", "ext_authz"),
    ("cors", "weir-plugin-cors", "cors"),
    (
        "ip-restriction",
        "weir-plugin-ip-restriction",
        "ip_restriction",
    ),
    ("grpc-json", "weir-plugin-grpc-json", "grpc_json"),
];

/// Builds every bundled plugin and copies each to `target/plugins/NAME.wasm`; returns that
/// folder.
pub(crate) fn plugins() -> anyhow::Result<std::path::PathBuf> {
    let mut args = vec!["build", "--profile", "plugin", "--target", "wasm32-wasip2"];
    for (_, package, _) in BUNDLED {
        args.extend(["-p", package]);
    }
    if let Err(e) = cargo(&args) {
        bail!("{e:#}\n(is the target installed? `rustup target add wasm32-wasip2`)");
    }
    let built = target_dir().join("wasm32-wasip2/plugin");
    let out = target_dir().join("plugins");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, _, stem) in BUNDLED {
        let from = built.join(format!("{stem}.wasm"));
        let to = out.join(format!("{name}.wasm"));
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(out)
}

/// Cargo's target folder: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub(crate) fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Runs `cargo ARGS` in the workspace root; fails if it fails.
pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with(args, &[])
}

/// Runs `cargo ARGS` in the workspace root with the environment variables `env` set; fails if
/// it fails.
pub(crate) fn cargo_with(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    for (name, value) in env {
        eprintln!("$ {name}={value:?} \\");
    }
    eprintln!("$ cargo {}", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The workspace root (the parent of this crate's folder).
pub(crate) fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(ToOwned::to_owned)
        .unwrap_or_default()
}
