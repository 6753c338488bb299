//! Loading the configuration: read the file, parse it, validate it into a [`Config`].
//!
//! Loading is all-or-nothing. Either every section is valid and the caller gets a complete
//! [`Config`], or it gets every [`Diagnostic`] found, each naming the file, line and column.
//! A running proxy therefore never holds a half-applied configuration.

mod admin;
mod cache;
mod compression;
pub(crate) mod kv;
mod model;
mod routing;
mod tls;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use admin::{AdminAuth, AdminToken, TokenSource};
pub use cache::Cache;
pub use compression::{Algorithm, Compression};
pub use kv::{KvBackendKind, KvConfig, RedisKvConfig};
pub use routing::{Backend, Condition, Mirror, Pattern, Test};
pub use tls::{CertKeyFiles, ClientAuth, ListenerTls, Protocol, TlsVersion, UpstreamTls};
pub use validate::{
    AccessLogConfig, AdminConfig, ClusterConfig, ClusterRef, Config, EncodedSlashes, Endpoint,
    HashKey, HealthCheck, LbPolicy, Limits, ListenerConfig, LogField, LogFormat, LogItem,
    LogTarget, MAX_PLUGIN_INSTANCES, MAX_PLUGIN_MEMORY_MB, MAX_WEIGHT, OutlierDetection,
    PathNormalization, PluginLimits, PluginsConfig, RouteConfig, RouteTarget, ServerConfig, Sticky,
    TracingConfig, TracingProtocol, default_cache_dir,
};

/// One problem found in a configuration file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column, when the problem has a place in the file.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a configuration could not be loaded: every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The problems, at least one.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        write!(
            f,
            "{n} configuration error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Reads and validates the configuration file at `path`.
///
/// Relative paths inside the file (such as `plugins.dir`) are resolved against the file's
/// own directory, so a config works the same whatever the current directory is.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        diagnostics: vec![Diagnostic {
            file: path.to_owned(),
            line: None,
            column: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let locate = Locator { file: path, text };
    let raw: model::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        diagnostics: vec![locate.at(e.span(), e.message().trim_end().to_owned())],
    })?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    validate::validate(raw, base_dir, &locate).map_err(|diagnostics| ConfigError { diagnostics })
}

/// Turns byte spans of the source text into line and column numbers.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: Option<Range<usize>>, message: String) -> Diagnostic {
        let (line, column) = match span {
            Some(span) => {
                let start = span.start.min(self.text.len());
                let before = &self.text[..start];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = self.text[line_start..start].chars().count() + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message,
        }
    }
}
