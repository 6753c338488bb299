//! The task runner shared by developers and CI: `cargo xtask <task>`. Needs nothing but cargo.
//!
//! - `test` — every check CI runs: formatting, clippy, the build, unit and end-to-end tests;
//! - `demo` — weir in front of two demo upstreams it starts itself, with curl lines to try.

mod demo;

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => test(),
        "demo" => demo::run(),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  test   formatting, clippy, build, every test (what CI runs)\n  demo   run weir in front of demo upstreams"
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
    cargo(&["test", "--workspace"])
}

/// Runs `cargo ARGS` in the workspace root; fails if it fails.
pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
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
