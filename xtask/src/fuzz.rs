//! `cargo xtask fuzz [--release] [SECONDS] [TARGET…]`: builds the fuzz targets
//! (`fuzz/fuzz_targets/`) with libFuzzer and runs each for `SECONDS` (default 60;
//! `WEIR_FUZZ_SECONDS` also sets it) on its committed corpus. `test` runs it last, so CI
//! fuzzes every target on every run; `--release` (the release build's dependencies) is for
//! long runs, several times more executions per second.
//!
//! The build is plain cargo on the stable toolchain, reusing the workspace's debug build:
//! only weir's own crates are compiled with libFuzzer's coverage instrumentation (cargo
//! runs this binary as `RUSTC_WORKSPACE_WRAPPER`, which adds the flags cargo-fuzz would), so
//! none of the dependencies — wasmtime, rustls, tokio — is compiled again. (`cargo fuzz
//! build` instruments and optimises every crate: 17 minutes on this project's 2 cores
//! against 2 here; README, "Fuzzing".) New inputs go to `target/fuzz/corpus/<target>/`
//! and crashes to `target/fuzz/artifacts/<target>/`; the committed corpus is only read.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::{root, target_dir};

/// Every target, in the order they run.
const TARGETS: [&str; 5] = ["config", "path", "plugin_output", "rewrite", "transform"];

/// Set in the environment of the instrumented build: this binary, run by cargo in
/// place of rustc, is then the wrapper (`wrap_rustc`).
const WRAPPER_ENV: &str = "WEIR_FUZZ_RUSTC_WRAPPER";

/// libFuzzer's coverage instrumentation, as cargo-fuzz 0.13 passes it (without a sanitizer:
/// weir's crates forbid `unsafe`, and the flags for one are nightly-only).
const SANCOV: [&str; 10] = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
];

/// When cargo runs this binary as the workspace's rustc wrapper: runs rustc with the
/// instrumentation on a library or a fuzz target (never on a build script or a proc-macro,
/// which run without libFuzzer) and returns its exit code.
pub(crate) fn wrap_rustc() -> Option<i32> {
    std::env::var_os(WRAPPER_ENV)?;
    let mut args = std::env::args_os().skip(1);
    let rustc = args.next()?;
    let args: Vec<OsString> = args.collect();
    let has = |flag: &str, value: &str| {
        args.windows(2)
            .any(|pair| pair[0] == flag && pair[1] == value)
    };
    let instrument = !has("--crate-name", "build_script_build")
        && !has("--crate-type", "proc-macro")
        && args.iter().any(|a| a == "--crate-name");
    let mut command = Command::new(rustc);
    command.args(&args);
    if instrument {
        command.args(SANCOV);
    }
    Some(match command.status() {
        Ok(status) => status.code().unwrap_or(1),
        Err(e) => {
            eprintln!("cannot run rustc: {e}");
            1
        }
    })
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds: u64 = match std::env::var("WEIR_FUZZ_SECONDS") {
        Ok(s) => s.parse().context("WEIR_FUZZ_SECONDS")?,
        Err(_) => 60,
    };
    let mut targets = Vec::new();
    let mut profile = "debug";
    for arg in args {
        if arg == "--release" {
            profile = "release";
            continue;
        }
        match arg.parse() {
            Ok(n) => seconds = n,
            Err(_) if TARGETS.contains(&arg.as_str()) => targets.push(arg.as_str()),
            Err(_) => bail!(
                "unknown fuzz target {arg:?} (targets: {})",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets.extend(TARGETS);
    }
    #[expect(
        clippy::disallowed_types,
        reason = "a build's wall-clock time, outside any async runtime"
    )]
    let started = std::time::Instant::now();
    build(profile)?;
    eprintln!(
        "  fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for target in targets {
        let scratch = target_dir().join("fuzz/corpus").join(target);
        let artifacts = target_dir().join("fuzz/artifacts").join(target);
        for dir in [&scratch, &artifacts] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let binary = target_dir().join(profile).join(target);
        let mut command = Command::new(&binary);
        // New inputs go to the first corpus folder only; the committed one seeds the run.
        command
            .arg(&scratch)
            .arg(root().join("fuzz/corpus").join(target))
            .arg(format!("-max_total_time={seconds}"))
            // A single input that takes this long is a hang, reported as a crash.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(root());
        let dict = root().join("fuzz/dict").join(format!("{target}.dict"));
        if dict.exists() {
            command.arg(format!("-dict={}", dict.display()));
        }
        eprintln!("$ {command:?}");
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}); the input is in {}",
                artifacts.display()
            );
        }
    }
    Ok(())
}

/// Builds the fuzz targets into `target/PROFILE/`, weir's crates instrumented. The whole
/// workspace is selected, as `test` builds it, so features resolve the same way and the
/// dependencies already built are reused; only the fuzz binaries are built.
fn build(profile: &str) -> anyhow::Result<()> {
    // A copy of this binary is the wrapper: cargo may rebuild the original meanwhile (the
    // workspace build before this step does, with its own feature set), and then its path
    // names a deleted file. /proc/self/exe still opens the running binary.
    let wrapper = target_dir().join("fuzz/rustc-wrapper");
    let me = match Path::new("/proc/self/exe") {
        running if running.exists() => running.to_path_buf(),
        _ => std::env::current_exe().context("this binary's path")?,
    };
    copy(&me, &wrapper)?;
    let mut args = vec!["build", "--workspace", "--features", "weir-fuzz/libfuzzer"];
    if profile == "release" {
        args.push("--release");
    }
    for target in TARGETS {
        args.extend(["--bin", target]);
    }
    eprintln!("$ cargo {} (weir's crates instrumented)", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(&args)
        .env("RUSTC_WORKSPACE_WRAPPER", &wrapper)
        .env(WRAPPER_ENV, "1")
        .current_dir(root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
