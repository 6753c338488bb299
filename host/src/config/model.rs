//! The configuration file as written: serde types that mirror the TOML, keeping source spans.
//!
//! Nothing here is checked beyond TOML types. Values that can be wrong in ways serde cannot
//! express (addresses, references between sections, duplicates) stay as spanned strings so
//! `validate` can report every mistake at once, each with its line and column.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) listeners: Vec<RawListener>,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) plugins: RawPlugins,
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) clusters: Vec<RawCluster>,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
    pub(crate) access_log: Option<Spanned<RawAccessLog>>,
    #[serde(default)]
    pub(crate) metrics: RawMetrics,
    pub(crate) tracing: Option<Spanned<RawTracing>>,
    pub(crate) kv: Option<Spanned<RawKv>>,
}

/// `[kv]`: where the plugins' shared store lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKv {
    pub(crate) backend: Option<Spanned<String>>,
    pub(crate) url: Option<Spanned<String>>,
    pub(crate) cluster: Option<Vec<Spanned<String>>>,
    pub(crate) ca: Option<Spanned<PathBuf>>,
    pub(crate) prefix: Option<String>,
    #[serde(default, with = "duration")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) connections: Option<Spanned<usize>>,
    pub(crate) breaker: Option<RawKvBreaker>,
}

/// `breaker = { consecutive_failures = 5, open_for = "1s" }` of `[kv]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKvBreaker {
    pub(crate) consecutive_failures: Option<u32>,
    #[serde(default, with = "duration")]
    pub(crate) open_for: Option<Duration>,
}

/// `[tracing]`: spans exported over OTLP/HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    pub(crate) endpoint: Spanned<String>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) sample: Option<Spanned<f64>>,
    pub(crate) service_name: Option<String>,
    #[serde(default, with = "duration")]
    pub(crate) flush_interval: Option<Duration>,
}

/// `[access_log]`: one record per request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) path: Spanned<String>,
    pub(crate) format: Option<Spanned<String>>,
    pub(crate) sample: Option<Spanned<f64>>,
    pub(crate) queue: Option<Spanned<usize>>,
    pub(crate) fields: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[metrics]`: Prometheus metrics on the admin listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub(crate) enabled: Option<bool>,
}

/// `[[listeners]]`: one downstream socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) address: Spanned<String>,
    pub(crate) tls: Option<Spanned<RawListenerTls>>,
    pub(crate) redirect_to_https: Option<Spanned<RawRedirect>>,
    pub(crate) proxy_protocol: Option<bool>,
}

/// `tls = { certificates = [...], min_version = "1.2", client_auth = {...} }` of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub(crate) certificates: Spanned<Vec<RawCertKey>>,
    pub(crate) min_version: Option<Spanned<String>>,
    pub(crate) client_auth: Option<RawClientAuth>,
}

/// `{ cert = "a.pem", key = "a.key" }`: a certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertKey {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// `client_auth = { ca = "clients.pem", required = true, crl = "revoked.pem" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientAuth {
    pub(crate) ca: PathBuf,
    pub(crate) required: Option<bool>,
    pub(crate) crl: Option<PathBuf>,
}

/// `redirect_to_https = { port = 443 }` of a plain listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub(crate) port: Option<u16>,
}

/// `tls = { sni = "...", ca = "...", verify = true, pinned = "...", client_cert = {...} }` of
/// a cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) sni: Option<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) verify: Option<bool>,
    pub(crate) pinned: Option<PathBuf>,
    pub(crate) client_cert: Option<RawCertKey>,
}

/// `[admin]`: the admin listener and who may use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) address: Spanned<String>,
    pub(crate) token_file: Option<Spanned<PathBuf>>,
    pub(crate) token_env: Option<Spanned<String>>,
    pub(crate) open: Option<Spanned<bool>>,
    pub(crate) hosts: Option<Vec<Spanned<String>>>,
}

/// `[plugins]`: where plugins live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugins {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) watch: Option<bool>,
    pub(crate) cache: Option<bool>,
    pub(crate) cache_dir: Option<PathBuf>,
    #[serde(default, with = "duration")]
    pub(crate) deadline: Option<Duration>,
    pub(crate) memory_limit_mb: Option<Spanned<usize>>,
    pub(crate) max_uses: Option<Spanned<u32>>,
    pub(crate) max_instances: Option<Spanned<usize>>,
    pub(crate) memory_budget_mb: Option<Spanned<usize>>,
}

/// `[server]`: downstream connection handling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    #[serde(default, with = "duration")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, with = "duration")]
    pub(crate) idle_timeout: Option<Duration>,
    #[serde(default, with = "duration")]
    pub(crate) drain_timeout: Option<Duration>,
    pub(crate) max_connections: Option<Spanned<usize>>,
    pub(crate) worker_threads: Option<Spanned<usize>>,
    #[serde(default, with = "duration")]
    pub(crate) upgrade_idle_timeout: Option<Duration>,
    pub(crate) path_normalization: Option<RawPathNormalization>,
    pub(crate) identity_headers: Option<Vec<Spanned<String>>>,
    pub(crate) trusted_proxies: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) limits: RawLimits,
}

/// `[server.limits]`: what one client request may be.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) head_bytes: Option<Spanned<usize>>,
    pub(crate) header_bytes: Option<Spanned<usize>>,
    pub(crate) headers: Option<Spanned<usize>>,
    pub(crate) uri_bytes: Option<Spanned<usize>>,
    pub(crate) request_body_bytes: Option<Spanned<u64>>,
    #[serde(default, with = "duration")]
    pub(crate) body_read_timeout: Option<Duration>,
    pub(crate) h2_max_streams: Option<Spanned<u32>>,
}

/// `[server] path_normalization = { merge_slashes = true, encoded_slashes = "reject" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPathNormalization {
    pub(crate) merge_slashes: Option<bool>,
    pub(crate) encoded_slashes: Option<Spanned<String>>,
}

/// `[[clusters]]`: a named set of upstream endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) name: Spanned<String>,
    pub(crate) endpoints: Spanned<Vec<Spanned<RawEndpoint>>>,
    pub(crate) lb: Option<Spanned<String>>,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) retries: Option<Spanned<u32>>,
    pub(crate) retry_on_statuses: Option<Spanned<Vec<u16>>>,
    pub(crate) retry_budget_percent: Option<Spanned<u32>>,
    pub(crate) retry_buffer_bytes: Option<usize>,
    #[serde(default, with = "duration")]
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) health_check: Option<Spanned<RawHealthCheck>>,
    pub(crate) outlier_detection: Option<Spanned<RawOutlier>>,
    pub(crate) max_requests: Option<Spanned<usize>>,
    pub(crate) panic_threshold: Option<Spanned<u32>>,
    pub(crate) max_connections: Option<Spanned<usize>>,
    pub(crate) max_pending: Option<usize>,
    pub(crate) sticky: Option<Spanned<RawSticky>>,
    #[serde(default, with = "duration")]
    pub(crate) connect_timeout: Option<Duration>,
    #[serde(default, with = "duration")]
    pub(crate) response_timeout: Option<Duration>,
    #[serde(default, with = "duration")]
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) max_streams: Option<Spanned<u32>>,
    pub(crate) tls: Option<Spanned<RawUpstreamTls>>,
}

/// `health_check = { … }` of a cluster: active checks, HTTP when `path` is set, else TCP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub(crate) path: Option<String>,
    #[serde(default, with = "duration")]
    pub(crate) interval: Option<Duration>,
    #[serde(default, with = "duration")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default, with = "duration")]
    pub(crate) jitter: Option<Duration>,
    pub(crate) healthy_threshold: Option<u32>,
    pub(crate) unhealthy_threshold: Option<u32>,
    pub(crate) expected_statuses: Option<Vec<u16>>,
}

/// `outlier_detection = { … }`: passive health from real responses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub(crate) enabled: Option<bool>,
    pub(crate) consecutive_failures: Option<u32>,
    #[serde(default, with = "duration")]
    pub(crate) base_ejection_time: Option<Duration>,
    pub(crate) max_ejection_percent: Option<u32>,
}

/// `sticky = { cookie = "…", ttl = "1h" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSticky {
    pub(crate) cookie: Option<String>,
    #[serde(default, with = "duration")]
    pub(crate) ttl: Option<Duration>,
}

/// One endpoint: `"host:port"`, or `{ address = "host:port", weight = 3, backup = true }`.
#[derive(Debug)]
pub(crate) struct RawEndpoint {
    pub(crate) address: String,
    pub(crate) weight: Option<i64>,
    pub(crate) backup: bool,
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<RawEndpoint, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            address: String,
            weight: Option<i64>,
            #[serde(default)]
            backup: bool,
        }

        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEndpoint;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "\"host:port\" or { address = \"host:port\", weight = N, backup = true }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint {
                    address: v.to_owned(),
                    weight: None,
                    backup: false,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawEndpoint, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawEndpoint {
                    address: t.address,
                    weight: t.weight,
                    backup: t.backup,
                })
            }
        }

        de.deserialize_any(Visitor)
    }
}

/// `[[routes]]`: which requests go to which cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Spanned<String>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) path_regex: Option<Spanned<String>>,
    pub(crate) methods: Option<Vec<Spanned<String>>>,
    pub(crate) headers: Option<Vec<Spanned<RawCondition>>>,
    pub(crate) query: Option<Vec<Spanned<RawCondition>>>,
    pub(crate) cluster: Option<Spanned<String>>,
    pub(crate) backends: Option<Spanned<Vec<RawBackend>>>,
    pub(crate) split_by: Option<Spanned<String>>,
    pub(crate) mirror: Option<Spanned<RawMirror>>,
    pub(crate) handler: Option<Spanned<String>>,
    pub(crate) plugins: Option<Vec<Spanned<String>>>,
    pub(crate) retry_non_idempotent: Option<bool>,
    pub(crate) access_log: Option<bool>,
    pub(crate) request_body_bytes: Option<Spanned<u64>>,
    pub(crate) compression: Option<Spanned<RawCompression>>,
    pub(crate) cache: Option<Spanned<RawCache>>,
}

/// `{ name = "api-version", exact = "2" }` (or `regex`, or `present`) in a route's `headers`
/// or `query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCondition {
    pub(crate) name: String,
    pub(crate) exact: Option<String>,
    pub(crate) regex: Option<String>,
    pub(crate) present: Option<bool>,
}

/// `{ cluster = "v1", weight = 95 }` in a route's `backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) cluster: Spanned<String>,
    pub(crate) weight: Option<u32>,
}

/// `mirror = { cluster = "shadow", percent = 10, max_body_bytes = 65536 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMirror {
    pub(crate) cluster: Spanned<String>,
    pub(crate) percent: Option<f64>,
    pub(crate) max_body_bytes: Option<u64>,
}

/// `cache = { max_bytes = 67108864, max_object_bytes = 1048576, lock_timeout = "5s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub(crate) max_bytes: Option<Spanned<u64>>,
    pub(crate) max_object_bytes: Option<Spanned<u64>>,
    #[serde(default, with = "duration")]
    pub(crate) lock_timeout: Option<Duration>,
}

/// `compression = { algorithms = ["zstd", "br", "gzip"], min_bytes = 1024, types = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompression {
    pub(crate) algorithms: Option<Vec<Spanned<String>>>,
    pub(crate) min_bytes: Option<u64>,
    pub(crate) types: Option<Vec<String>>,
}

/// Durations are written the way people say them: `"250ms"`, `"5s"`, `"1m 30s"`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            D::Error::custom(format!("expected a duration like \"5s\" or \"250ms\": {e}"))
        })
    }
}
