//! `weir-plugin`: the plugin toolkit, which `weir plugin …` runs (`new`, `test`, `bindgen`,
//! `componentize`). A binary of its own so the proxy never links the bindings generators
//! and component tools; the library beside it holds the code.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use weir_devkit::component::BindingsLang;
use weir_devkit::templates::Lang;

/// Tools for writing weir plugins.
#[derive(Debug, Parser)]
#[command(name = "weir plugin", bin_name = "weir plugin", version)]
struct Cli {
    #[command(subcommand)]
    command: PluginCommand,
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
    /// Run a plugin against a case file, through weir's own request path, with the upstream
    /// and outgoing calls answered from the file; exit 1 if a case fails.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The tools print their own report; only problems are logged.
    // `weir plugin test` reads the causes of the proxy's failures from `failures`.
    let failures = weir_devkit::cases::Failures::default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        // Filtered to weir's own warnings: a layer without a filter would enable every
        // trace event of every crate (cranelift's included) and slow compiling to a crawl.
        .with(failures.clone().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("weir", tracing::Level::WARN),
        ))
        .init();
    match plugin(cli.command, &failures) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn plugin(command: PluginCommand, failures: &weir_devkit::cases::Failures) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { lang, name } => {
            let dir = PathBuf::from(&name);
            weir_devkit::templates::write(lang, &name, &dir)?;
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
            let passed = runtime.block_on(weir_devkit::cases::run(
                &plugin,
                &cases,
                &mut report,
                failures,
            ));
            print!("{report}");
            if !passed? {
                anyhow::bail!("some cases failed");
            }
            Ok(())
        }
        PluginCommand::Bindgen { lang, dir } => {
            for file in weir_devkit::component::bindgen(lang, &dir)? {
                println!("wrote {}", file.display());
            }
            Ok(())
        }
        PluginCommand::Componentize { core, output } => {
            let bytes =
                std::fs::read(&core).with_context(|| format!("cannot read {}", core.display()))?;
            let component = weir_devkit::component::componentize(&bytes)
                .with_context(|| format!("{}", core.display()))?;
            std::fs::write(&output, component)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("wrote {}", output.display());
            Ok(())
        }
    }
}
