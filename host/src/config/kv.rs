//! The `[kv]` section: where the plugins' shared `kv` store lives. In this process by default;
//! in Redis (`backend = "redis"`) when several weir instances must share one state — a rate
//! limit that holds across instances, a key revoked everywhere at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};
use toml::Spanned;

use super::model::RawKv;
use super::validate::Checker;

/// Time one Redis call may take before it fails as unavailable (loopback answers in about
/// 0.1 ms, a LAN in well under a millisecond).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);
/// Multiplexed Redis connections.
const DEFAULT_CONNECTIONS: usize = 2;
/// Failed calls in a row that open the breaker.
const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long an open breaker fails calls at once before one is tried.
const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(1);

/// `[kv]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct KvConfig {
    /// Where the store lives.
    pub backend: KvBackendKind,
}

/// `[kv] backend`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvBackendKind {
    /// In this process, shared by its threads (the default).
    #[default]
    Memory,
    /// A Redis server shared by every weir pointed at it.
    Redis(RedisKvConfig),
}

/// `[kv]` with `backend = "redis"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisKvConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; empty with
    /// `cluster`.
    #[serde(serialize_with = "without_password")]
    pub url: String,
    /// A Redis Cluster's seed nodes (URLs as `url`), instead of `url`.
    #[serde(serialize_with = "without_passwords")]
    pub cluster: Vec<String>,
    /// A CA certificate (PEM) that signs the server's, instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Put before every key, so deployments can share one Redis.
    pub prefix: String,
    /// Time one call may take.
    #[serde(serialize_with = "super::validate::human")]
    pub timeout: Duration,
    /// Multiplexed connections.
    pub connections: usize,
    /// Failed calls in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the open breaker fails calls at once before one is tried.
    #[serde(serialize_with = "super::validate::human")]
    pub breaker_open_for: Duration,
}

fn without_password<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&without_userinfo(url))
}

fn without_passwords<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|url| without_userinfo(url)))
}

pub(super) fn kv(check: &mut Checker<'_>, raw: &Spanned<RawKv>, base_dir: &Path) -> KvConfig {
    let section = raw.get_ref();
    let backend = match section.backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("memory") => {
            if let Some(url) = &section.url {
                check.error(
                    url,
                    "kv.url is for backend = \"redis\"; the memory store has no address".into(),
                );
            }
            // The rest of Redis's settings would be ignored just as silently.
            let redis_only = [
                ("cluster", section.cluster.is_some()),
                ("ca", section.ca.is_some()),
                ("prefix", section.prefix.is_some()),
                ("timeout", section.timeout.is_some()),
                ("connections", section.connections.is_some()),
                ("breaker", section.breaker.is_some()),
            ];
            for (key, _) in redis_only.iter().filter(|(_, set)| *set) {
                check.error(
                    raw,
                    format!(
                        "kv.{key} is for backend = \"redis\"; the memory store has no such setting"
                    ),
                );
            }
            KvBackendKind::Memory
        }
        Some("redis") => KvBackendKind::Redis(redis(check, raw, base_dir)),
        Some(other) => {
            let at = section.backend.as_ref().expect("matched Some");
            check.error(
                at,
                format!("kv.backend must be \"memory\" or \"redis\", not {other:?}"),
            );
            KvBackendKind::Memory
        }
    };
    KvConfig { backend }
}

fn redis(check: &mut Checker<'_>, raw: &Spanned<RawKv>, base_dir: &Path) -> RedisKvConfig {
    let section = raw.get_ref();
    let checked = |check: &mut Checker<'_>, what: &str, url: &Spanned<String>| {
        let text = url.get_ref();
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss")) {
            check.error(
                url,
                format!(
                    "{what} {:?} must start with redis:// or rediss:// (TLS)",
                    without_userinfo(text)
                ),
            );
        } else if let Err(e) = redis::Client::open(text.as_str()) {
            check.error(url, format!("{what} is not a Redis URL: {e}"));
        }
        text.clone()
    };
    let cluster: Vec<String> = section
        .cluster
        .iter()
        .flatten()
        .map(|node| checked(check, "kv.cluster", node))
        .collect();
    let url = match (&section.url, cluster.is_empty()) {
        (Some(url), true) => checked(check, "kv.url", url),
        (Some(url), false) => {
            check.error(
                url,
                "kv: give url (one server) or cluster (seed nodes), not both".into(),
            );
            String::new()
        }
        (None, false) => String::new(),
        (None, true) => {
            check.error(
                raw,
                "kv: backend = \"redis\" needs url = \"redis://host:port\" or cluster = [\"redis://host:port\", ...]".into(),
            );
            String::new()
        }
    };
    let ca = section.ca.as_ref().map(|ca| {
        let path = base_dir.join(ca.get_ref());
        if let Err(e) = std::fs::metadata(&path) {
            check.error(ca, format!("kv.ca {}: {e}", path.display()));
        }
        path
    });
    if let Some(connections) = &section.connections
        && !(1..=64).contains(connections.get_ref())
    {
        check.error(
            connections,
            "kv.connections must be between 1 and 64".into(),
        );
    }
    if section.timeout == Some(Duration::ZERO) {
        check.error_nowhere("kv.timeout must be greater than zero".into());
    }
    let breaker = section.breaker.as_ref();
    if breaker.and_then(|b| b.consecutive_failures) == Some(0) {
        check.error_nowhere("kv.breaker.consecutive_failures must be at least 1".into());
    }
    RedisKvConfig {
        url,
        cluster,
        ca,
        prefix: section.prefix.clone().unwrap_or_else(|| "weir:".into()),
        timeout: section
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_TIMEOUT),
        connections: section
            .connections
            .as_ref()
            .map(|c| *c.get_ref())
            .unwrap_or(DEFAULT_CONNECTIONS)
            .clamp(1, 64),
        breaker_failures: breaker
            .and_then(|b| b.consecutive_failures)
            .unwrap_or(DEFAULT_BREAKER_FAILURES)
            .max(1),
        breaker_open_for: breaker
            .and_then(|b| b.open_for)
            .unwrap_or(DEFAULT_BREAKER_OPEN_FOR),
    }
}

/// `url` without `user:password@`, for log lines, error messages and `GET /config`.
pub(crate) fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => url.to_owned(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("…@{host}"),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::without_userinfo;

    #[test]
    fn printed_urls_never_carry_the_password() {
        assert_eq!(
            without_userinfo("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(
            without_userinfo("rediss://cache:6380"),
            "rediss://cache:6380"
        );
        assert_eq!(without_userinfo("user:pw@cache"), "…@cache");
    }
}
