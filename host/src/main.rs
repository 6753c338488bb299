//! The `weir` binary: parses the command line, sets up logging and the runtime, calls
//! [`weir::run`]. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir::devkit::component::BindingsLang;
use weir::devkit::templates::Lang;

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
    /// Tools for writing plugins: new, test, bindgen, componentize.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Write a ready-to-build plugin project into the folder NAME.
    New {
        /// The language of the project.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The plugin's name, and the folder created for it.
        name: String,
    },
    /// Run a plugin against a case file, outside the proxy, with a mock host; exit 1 if a
    /// case fails.
    Test {
        /// The plugin's `.wasm` file.
        plugin: PathBuf,
        /// The case file (see docs/plugins/testing.md).
        #[arg(long = "case", value_name = "CASES.toml")]
        cases: PathBuf,
    },
    /// Write the filter world's bindings for C (and Zig) or Go into DIR.
    Bindgen {
        /// The language to generate for.
        #[arg(long, value_enum)]
        lang: BindingsLang,
        /// The folder to write into.
        #[arg(default_value = "bindings")]
        dir: PathBuf,
    },
    /// Make a core module (wasm32-wasip1, reactor) that implements the filter world into a
    /// plugin component.
    Componentize {
        /// The core module.
        core: PathBuf,
        /// Where to write the component.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
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
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The plugin tools print their own report; only problems are logged.
    let level = match cli.command {
        Some(Command::Plugin(_)) => "warn",
        _ => "info",
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Check(args) => check(&args.config),
        Command::Run(args) => run(&args.config),
        Command::Plugin(command) => plugin(command),
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
    runtime.block_on(async {
        // The signal handlers go in before `run` binds anything (and in the runtime's
        // context, which they need): a SIGTERM from then on drains.
        let shutdown = weir::shutdown::os_signal();
        weir::run(path, config, shutdown).await
    })?;
    Ok(())
}

fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { lang, name } => {
            let dir = PathBuf::from(&name);
            weir::devkit::templates::write(lang, &name, &dir)?;
            println!(
                "wrote {}: a {} plugin. Build it with `cd {} && {}`; see its README.md",
                dir.display(),
                lang.display_name(),
                dir.display(),
                Lang::BUILD_COMMAND
            );
            Ok(())
        }
        PluginCommand::Test { plugin, cases } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let mut report = String::new();
            let passed = runtime.block_on(weir::devkit::cases::run(&plugin, &cases, &mut report));
            print!("{report}");
            if !passed? {
                anyhow::bail!("some cases failed");
            }
            Ok(())
        }
        PluginCommand::Bindgen { lang, dir } => {
            for file in weir::devkit::component::bindgen(lang, &dir)? {
                println!("wrote {}", file.display());
            }
            Ok(())
        }
        PluginCommand::Componentize { core, output } => {
            let bytes =
                std::fs::read(&core).with_context(|| format!("cannot read {}", core.display()))?;
            let component = weir::devkit::component::componentize(&bytes)
                .with_context(|| format!("{}", core.display()))?;
            std::fs::write(&output, component)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("wrote {}", output.display());
            Ok(())
        }
    }
}
