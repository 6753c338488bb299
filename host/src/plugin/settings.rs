//! A plugin's settings: the runtime's defaults ([`PluginLimits`]) overridden by the
//! plugin's own `NAME.toml`, whose `[config]` table is handed to the plugin as JSON.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use wasmtime::error::Context;

use super::breaker::BreakerSettings;
use crate::config::{MAX_PLUGIN_INSTANCES, MAX_PLUGIN_MEMORY_MB, PluginLimits};

/// The largest body a body hook sees unless the plugin's `max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Per-plugin limits and failure policy: the global [`PluginLimits`], overridden by the
/// plugin's own `NAME.toml`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// On a trap or limit, skip the plugin instead of answering 500.
    pub fail_open: bool,
    /// CPU time one hook call may take.
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_limit: usize,
    /// Hook calls an instance serves before it is replaced by a fresh one.
    pub max_uses: u32,
    /// Instances it may have at once (idle or in a call): its share of the instance pool.
    pub max_instances: usize,
    /// When its breaker opens, and for how long.
    pub breaker: BreakerSettings,
    /// The largest body its body hooks are given.
    pub max_body_bytes: usize,
    /// For a handler: the clusters its outgoing requests may reach.
    pub clusters: Vec<String>,
    /// The `[config]` table, as the plugin is given it; the admin's `/plugins` shows it
    /// with secrets redacted.
    pub config: serde_json::Value,
    /// Keys of `config` the admin redacts besides those named like a secret (`redact`):
    /// for a plugin whose secrets have names no one would guess.
    pub redact: Vec<String>,
}

impl PluginSettings {
    pub(super) fn from_limits(limits: &PluginLimits) -> PluginSettings {
        PluginSettings {
            fail_open: false,
            deadline: limits.deadline,
            memory_limit: limits.memory_limit_mb << 20,
            max_uses: limits.max_uses,
            max_instances: limits.max_instances,
            breaker: BreakerSettings::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            clusters: Vec::new(),
            config: serde_json::Value::Object(serde_json::Map::new()),
            redact: Vec::new(),
        }
    }
}

/// `NAME.toml`: host settings at the top level, the plugin's own config under `[config]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    fail_open: Option<bool>,
    deadline: Option<String>,
    memory_limit_mb: Option<usize>,
    max_uses: Option<u32>,
    max_instances: Option<usize>,
    breaker: Option<BreakerFile>,
    max_body_bytes: Option<usize>,
    clusters: Option<Vec<String>>,
    redact: Option<Vec<String>>,
    #[serde(default)]
    config: toml::Table,
}

/// `breaker = { failures = 5, cooldown = "10s" }` in `NAME.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerFile {
    failures: Option<u32>,
    cooldown: Option<String>,
}

pub(super) fn read_settings(
    path: &Path,
    text: &str,
    limits: &PluginLimits,
) -> wasmtime::Result<(PluginSettings, String)> {
    let file: SettingsFile = toml::from_str(text).with_context(|| format!("{}", path.display()))?;
    let mut settings = PluginSettings::from_limits(limits);
    if let Some(v) = file.fail_open {
        settings.fail_open = v;
    }
    if let Some(v) = file.deadline {
        settings.deadline = humantime::parse_duration(&v)
            .with_context(|| format!("{}: deadline {v:?}", path.display()))?;
    }
    if let Some(mb) = file.memory_limit_mb {
        if !(1..=MAX_PLUGIN_MEMORY_MB).contains(&mb) {
            wasmtime::bail!(
                "{}: memory_limit_mb = {mb}: must be between 1 and {MAX_PLUGIN_MEMORY_MB}",
                path.display(),
            );
        }
        settings.memory_limit = mb << 20;
    }
    if let Some(n) = file.max_uses {
        settings.max_uses = n.max(1);
    }
    if let Some(n) = file.max_instances {
        if !(1..=MAX_PLUGIN_INSTANCES).contains(&n) {
            wasmtime::bail!(
                "{}: max_instances = {n}: must be between 1 and {MAX_PLUGIN_INSTANCES}",
                path.display(),
            );
        }
        settings.max_instances = n;
    }
    if let Some(breaker) = file.breaker {
        if let Some(n) = breaker.failures {
            settings.breaker.failures = n;
        }
        if let Some(v) = breaker.cooldown {
            let cooldown = humantime::parse_duration(&v)
                .with_context(|| format!("{}: breaker.cooldown {v:?}", path.display()))?;
            if cooldown.is_zero() {
                wasmtime::bail!(
                    "{}: breaker.cooldown must be greater than zero",
                    path.display()
                );
            }
            settings.breaker.cooldown = cooldown;
        }
    }
    if let Some(n) = file.max_body_bytes {
        settings.max_body_bytes = n;
    }
    if let Some(clusters) = file.clusters {
        settings.clusters = clusters;
    }
    if let Some(redact) = file.redact {
        settings.redact = redact;
    }
    settings.config = serde_json::to_value(&file.config)?;
    // Serialised from the table itself, not from `settings.config`, so the plugin is given
    // its keys in the file's order whatever order a JSON object keeps.
    Ok((settings, serde_json::to_string(&file.config)?))
}
