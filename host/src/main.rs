//! The `weir` binary: parses the command line, sets up logging and the runtime, calls
//! [`weir::run`]. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// A programmable HTTP reverse proxy, load balancer and API gateway.
#[derive(Debug, Parser)]
#[command(name = "weir", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: ConfigArg,
    /// Log format on stderr (the level comes from RUST_LOG, default "info").
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default when no command is given).
    Run(ConfigArg),
    /// Validate a configuration file: exit 0 if valid, else print every problem and exit 1.
    Check(ConfigArg),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(short, long, value_name = "FILE", default_value = "weir.toml")]
    config: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Check(args) => check(&args.config),
        Command::Run(args) => run(&args.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    match weir::config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} listeners, {} clusters, {} routes)",
                path.display(),
                c.listeners.len(),
                c.clusters.len(),
                c.routes.len()
            );
            Ok(())
        }
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("error: {d}");
            }
            anyhow::bail!(
                "{}: {} problem(s) found",
                path.display(),
                e.diagnostics.len()
            )
        }
    }
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = weir::config::load(path)?;
    // One worker thread means tokio's current-thread scheduler: every task, accept loops
    // included, on the one thread, with no cross-thread wake-ups (nginx's worker model).
    let mut runtime = match config.server.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(weir::run(path, config, weir::shutdown::os_signal()))?;
    Ok(())
}
