//! The `weir` binary: parses the command line, sets up logging and the runtime, calls
//! [`weir::run`]. Everything else lives in the library.

#![forbid(unsafe_code)]

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
    /// Tools for writing plugins (new, test, bindgen, componentize): runs `weir-plugin`,
    /// the toolkit binary beside this one (or on PATH), with the same arguments.
    #[command(disable_help_flag = true)]
    Plugin {
        /// The toolkit's arguments (`weir plugin --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
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

/// mimalloc instead of glibc's malloc: its fast paths are a fraction of glibc's, and a
/// proxied request allocates a dozen times on the host (more with plugins, in wasmtime).
/// callgrind: plain proxying −1.1 % instructions per request, jwt-auth → rate-limit →
/// rewrite −5.3 %; the cost is about 10 MB more resident memory after load (BENCHMARKS.md).
/// Entered through `weir-alloc`, which uses mimalloc's aligned calls only where they are needed.
#[global_allocator]
static GLOBAL: weir_alloc::Mimalloc = weir_alloc::Mimalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Plugin { args }) = cli.command {
        return plugin_toolkit(&args);
    }
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
        Command::Plugin { args } => return plugin_toolkit(&args),
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
            let tls = weir::tls::check(&c);
            if !tls.is_empty() {
                for e in &tls {
                    eprintln!("error: {e}");
                }
                anyhow::bail!("{}: {} problem(s) found", path.display(), tls.len())
            }
            for warning in weir::router::Router::new(&c.routes).shadow_warnings(&c.routes) {
                eprintln!("warning: {warning}");
            }
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
    // The blocking pool (file reads and hashing at a reload, DNS) lets an idle thread go
    // after a second, not tokio's ten: a thread's allocator gives back what it freed when the
    // thread exits, and the buffers of a plugin load would otherwise stay resident ten
    // seconds longer (BENCHMARKS.md, memory per plugin).
    let runtime = runtime
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stopped = runtime.block_on(async {
        // The signal handlers go in before `run` binds anything (and in the runtime's
        // context, which they need): a SIGTERM from then on drains.
        let shutdown = weir::shutdown::os_signal();
        weir::run(path, config, shutdown).await
    })?;
    // Dropping the runtime drops the connections the drain timed out on; their requests'
    // records are written after.
    drop(runtime);
    stopped.finish();
    Ok(())
}

/// `weir plugin ARGS`: runs the toolkit binary, `weir-plugin`, beside this executable if it is
/// there (a workspace build puts both in `target/<profile>/`), else from PATH. The production
/// build (`cargo build --profile dist -p weir-host`) does not include it.
fn plugin_toolkit(args: &[std::ffi::OsString]) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("weir-plugin"))
        .filter(|path| path.is_file());
    let toolkit = beside.unwrap_or_else(|| PathBuf::from("weir-plugin"));
    match std::process::Command::new(&toolkit).args(args).status() {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!(
                "error: cannot run the plugin toolkit ({}): {e}; build it with `cargo build -p weir-devkit` (or `cargo build --workspace`), which puts `weir-plugin` beside `weir`",
                toolkit.display()
            );
            ExitCode::FAILURE
        }
    }
}
