//! A plugin's settings: the runtime's defaults ([`PluginLimits`]) overridden by the
//! plugin's own `NAME.toml`, whose `[config]` table is handed to the plugin as JSON.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use wasmtime::error::Context;

use super::breaker::BreakerSettings;
use crate::config::{MAX_PLUGIN_INSTANCES, MAX_PLUGIN_MEMORY_MB, PluginLimits};
use crate::kv::{KvQuota, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// The largest body a body hook sees unless the plugin's `max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The most bytes one call of any plugin may hand weir in one piece besides its heads and
/// body: a `kv` value ([`MAX_VALUE_BYTES`]), an outbound request's body, a chunk of a
/// handler's response body (wasi:http's default), a log line. All 1 MiB or less.
const DATA_BYTES: usize = 1 << 20;
const _: () = assert!(MAX_VALUE_BYTES <= DATA_BYTES);

/// What one `kv` call of a plugin granted `kv` may hand weir: `compare-and-set` passes the
/// value it expects and the new one, each up to [`MAX_VALUE_BYTES`], and a key.
const KV_CALL_BYTES: usize = 2 * MAX_VALUE_BYTES + MAX_KEY_BYTES;

/// The most `host_memory_mb` may be.
const MAX_HOST_MEMORY_MB: usize = 1024;

/// Room beyond what a call's parts add up to: the records and lists that hold them, a
/// cache key, a reason.
const SLACK_BYTES: usize = 64 << 10;

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
    /// For a handler: serve requests on pooled instances (up to `max_uses` each) instead of
    /// a fresh instance per request.
    pub reuse: bool,
    /// For a handler: what one call may make weir hold for it in wasi:http headers,
    /// sub-requests and body buffers, in bytes (`host_memory_mb`; `None`: the handler's
    /// default, `handler::hold::DEFAULT_HELD_PER_CALL`).
    pub host_memory: Option<usize>,
    /// For a filter on weir:plugin 0.3.x: call the record forms, `on-request` and
    /// `on-response`, with whole heads, instead of the lazy hooks and their handles
    /// (`whole_heads = true`): for a toolchain that cannot give a lent handle back
    /// (componentize-qjs 0.4.5). Earlier versions are always given whole heads.
    pub whole_heads: bool,
    /// When its breaker opens, and for how long.
    pub breaker: BreakerSettings,
    /// The largest body its body hooks are given.
    pub max_body_bytes: usize,
    /// What the heads one call may return can take ([`PluginLimits::head_output_bytes`]).
    pub head_output_bytes: usize,
    /// For a handler: the clusters its outgoing requests may reach.
    pub clusters: Vec<String>,
    /// The `kv` store, if granted (`kv = true` or `kv = { … }`), and what the plugin's
    /// namespace may hold; `None`: every `kv` call is `access-denied`.
    pub kv: Option<KvQuota>,
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
            reuse: false,
            host_memory: None,
            whole_heads: false,
            breaker: BreakerSettings::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            head_output_bytes: limits.head_output_bytes,
            clusters: Vec::new(),
            kv: None,
            config: serde_json::Value::Object(serde_json::Map::new()),
            redact: Vec::new(),
        }
    }

    /// The bytes one call of the plugin may make weir copy out of its memory: wasmtime's
    /// host-call fuel, given to every call into and out of the guest (its default, 128 MiB,
    /// would let a plugin whose list entries all point at one large string make weir copy
    /// up to 128 MiB per call before any bound of weir's is checked). It is the most a call
    /// can return that weir takes: a body of `max_body_bytes` (or a `kv` value, an outbound
    /// body, a chunk of a handler's body: [`DATA_BYTES`]; with `kv` granted, the two values
    /// of a `compare-and-set`: [`KV_CALL_BYTES`]) and heads of `head_output_bytes`. A call
    /// that hands over more traps, as output past weir's bounds would be refused.
    pub fn hostcall_fuel(&self) -> usize {
        let data = match self.kv {
            Some(_) => KV_CALL_BYTES,
            None => DATA_BYTES,
        };
        self.max_body_bytes
            .max(data)
            .saturating_add(self.head_output_bytes)
            .saturating_add(SLACK_BYTES)
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
    reuse: Option<bool>,
    host_memory_mb: Option<usize>,
    whole_heads: Option<bool>,
    breaker: Option<BreakerFile>,
    max_body_bytes: Option<usize>,
    clusters: Option<Vec<String>>,
    kv: Option<toml::Value>,
    redact: Option<Vec<String>>,
    #[serde(default)]
    config: toml::Table,
}

/// `kv = { … }`: each key overrides [`KvQuota::DEFAULT`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvQuotaFile {
    max_keys: Option<u64>,
    max_bytes: Option<u64>,
    max_value_bytes: Option<usize>,
    max_ttl: Option<String>,
}

/// The grant `kv` asks for, checked: `kv = true` (the default quota), `kv = false`, or
/// `kv = { max_keys = …, … }`.
fn kv_grant(path: &Path, grant: toml::Value) -> wasmtime::Result<Option<KvQuota>> {
    let file: KvQuotaFile = match grant {
        toml::Value::Boolean(false) => return Ok(None),
        toml::Value::Boolean(true) => KvQuotaFile::default(),
        toml::Value::Table(table) => table
            .try_into()
            .with_context(|| format!("{}: kv", path.display()))?,
        other => wasmtime::bail!(
            "{}: kv must be true, false or a table of max_keys, max_bytes, max_value_bytes and max_ttl, not {}",
            path.display(),
            other.type_str()
        ),
    };
    let mut quota = KvQuota::DEFAULT;
    let at_least_one = |what: &str, n: u64| {
        if n == 0 {
            wasmtime::bail!("{}: kv.{what} must be at least 1", path.display());
        }
        Ok(n)
    };
    if let Some(n) = file.max_keys {
        quota.max_keys = at_least_one("max_keys", n)?;
    }
    if let Some(n) = file.max_bytes {
        quota.max_bytes = at_least_one("max_bytes", n)?;
    }
    if let Some(n) = file.max_value_bytes {
        if !(1..=MAX_VALUE_BYTES).contains(&n) {
            wasmtime::bail!(
                "{}: kv.max_value_bytes = {n}: must be between 1 and {MAX_VALUE_BYTES}",
                path.display()
            );
        }
        quota.max_value_bytes = n;
    }
    if let Some(ttl) = file.max_ttl {
        let ms = humantime::parse_duration(&ttl)
            .with_context(|| format!("{}: kv.max_ttl {ttl:?}", path.display()))?
            .as_millis();
        if ms == 0 {
            wasmtime::bail!("{}: kv.max_ttl must be at least 1ms", path.display());
        }
        quota.max_ttl_ms = u64::try_from(ms).unwrap_or(u64::MAX).min(quota.max_ttl_ms);
    }
    Ok(Some(quota))
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
        // As in `[plugins]`: a zero deadline would fail every call.
        if settings.deadline.is_zero() {
            wasmtime::bail!("{}: deadline must be greater than zero", path.display());
        }
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
        if n == 0 {
            wasmtime::bail!("{}: max_uses must be at least 1", path.display());
        }
        settings.max_uses = n;
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
    if let Some(reuse) = file.reuse {
        settings.reuse = reuse;
    }
    if let Some(mb) = file.host_memory_mb {
        if !(1..=MAX_HOST_MEMORY_MB).contains(&mb) {
            wasmtime::bail!(
                "{}: host_memory_mb = {mb}: must be between 1 and {MAX_HOST_MEMORY_MB}",
                path.display(),
            );
        }
        settings.host_memory = Some(mb << 20);
    }
    if let Some(whole) = file.whole_heads {
        settings.whole_heads = whole;
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
    if let Some(grant) = file.kv {
        settings.kv = kv_grant(path, grant)?;
    }
    if let Some(redact) = file.redact {
        settings.redact = redact;
    }
    settings.config = serde_json::to_value(&file.config)?;
    // Serialised from the table itself, not from `settings.config`, so the plugin is given
    // its keys in the file's order whatever order a JSON object keeps.
    Ok((settings, serde_json::to_string(&file.config)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `NAME.toml` holding `text` gives: its deadline and use limit, or the error.
    fn read(text: &str) -> Result<(Duration, u32), String> {
        read_settings(Path::new("p.toml"), text, &PluginLimits::default())
            .map(|(settings, _)| (settings.deadline, settings.max_uses))
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn limits_that_would_fail_every_call_are_refused_as_in_the_plugins_table() {
        assert_eq!(
            read("deadline = \"20ms\"\nmax_uses = 3"),
            Ok((Duration::from_millis(20), 3))
        );
        assert_eq!(
            read("deadline = \"0s\""),
            Err("p.toml: deadline must be greater than zero".into())
        );
        assert_eq!(
            read("max_uses = 0"),
            Err("p.toml: max_uses must be at least 1".into())
        );
    }
}
