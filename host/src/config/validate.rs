//! Validation: turns a [`RawConfig`](super::model::RawConfig) into a typed [`Config`], or into
//! the full list of what is wrong with it.
//!
//! Every check runs even after an earlier one failed, so one `weir check` shows all mistakes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use http::header::HeaderName;
use http::uri::Authority;
use serde::{Serialize, Serializer};
use toml::Spanned;

use super::admin::{self, AdminAuth};
use super::compression::Compression;
use super::kv::KvConfig;
use super::model::{
    RawAccessLog, RawCluster, RawConfig, RawHealthCheck, RawLimits, RawOutlier,
    RawPathNormalization, RawPlugins, RawRoute, RawTracing,
};
use super::tls::{self, ListenerTls, Protocol, UpstreamTls};
use super::{Diagnostic, Locator};

/// The default time to establish a TCP connection to an endpoint (Envoy's default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time from sending a request upstream to receiving its response headers
/// (nginx's `proxy_read_timeout`).
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled upstream connection is kept.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a downstream client may take to send a request head, from its first byte
/// (hyper's default; nginx's `client_header_timeout` is 60 s).
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a downstream connection may wait for its next request (Kong's
/// `keepalive_timeout`; nginx's is 75 s, Envoy's `idle_timeout` an hour).
const DEFAULT_IDLE_TIMEOUT_DOWNSTREAM: Duration = Duration::from_secs(60);
/// How long shutdown waits for in-flight requests before closing their connections.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an upgraded connection (a WebSocket) may pass no bytes either way before weir
/// closes it (Envoy's stream idle timeout is 5 minutes too).
const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests in flight on one HTTP/2 connection to an endpoint before another is opened.
const DEFAULT_MAX_STREAMS: u32 = 100;
/// The most downstream connections served at once; more wait in the kernel's accept queue.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Further attempts on other endpoints after a safe-to-retry failure (nginx tries the next
/// upstream on a connect error by default; one retry is the conservative version of that).
const DEFAULT_RETRIES: u32 = 1;
/// Requests that may wait for a connection when a cluster's connections are all open
/// (Envoy's default `max_pending_requests`).
const DEFAULT_MAX_PENDING: usize = 1024;
/// Share of a cluster's requests in flight that may be retries. The default, 100 %, adds no
/// bound beyond `retries` (each request has at most one retry in flight), as nginx and
/// HAProxy have none: when one of three endpoints dies, every request in flight to it fails at
/// once, often more than a third of all in flight, and each needs its retry for no client to
/// see an error (measured with bench/kill-endpoint.sh: a 50 % budget let 4–5 of 270,000 fail).
/// Lower it to bound retries when a whole cluster fails.
const DEFAULT_RETRY_BUDGET: u32 = 100;
/// Request bodies up to this size are buffered for retries.
const DEFAULT_RETRY_BUFFER: usize = 64 << 10;
/// Requests in flight to one cluster before it answers 503 (Envoy's default `max_requests`).
const DEFAULT_MAX_REQUESTS: usize = 1024;
/// Time between active health checks of one endpoint (Envoy requires one; HAProxy's is 2 s).
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Time one health check may take.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// CPU time one plugin hook call may take (Envoy's Wasm filters have no default; nginx's njs
/// has none either; 50 ms is far above any filter's honest need and far below a timeout).
const DEFAULT_PLUGIN_DEADLINE: Duration = Duration::from_millis(50);
/// Linear memory one plugin instance may grow to, in MiB.
const DEFAULT_PLUGIN_MEMORY_MB: usize = 64;
/// The most a plugin may ask for, in MiB: the size of a pooling-allocator memory slot.
pub const MAX_PLUGIN_MEMORY_MB: usize = 256;
/// Hook calls one instance serves before a fresh one replaces it.
const DEFAULT_PLUGIN_MAX_USES: u32 = 10_000;
/// The most instances one plugin may have: half the instance pool, so one plugin never
/// holds all of it.
pub const MAX_PLUGIN_INSTANCES: usize = 256;
const DEFAULT_PLUGIN_INSTANCES: usize = 64;
const DEFAULT_PLUGIN_MEMORY_BUDGET_MB: usize = 4096;

/// A complete, validated configuration. Immutable once built.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Downstream listeners, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener, if configured.
    pub admin: Option<AdminConfig>,
    /// Where plugins are loaded from.
    pub plugins: PluginsConfig,
    /// Downstream connection handling.
    pub server: ServerConfig,
    /// Upstream clusters, names unique.
    pub clusters: Vec<ClusterConfig>,
    /// Routes in the order written, names unique.
    pub routes: Vec<RouteConfig>,
    /// The access log, if one is written.
    pub access_log: Option<AccessLogConfig>,
    /// Whether request, cluster and plugin metrics are kept (`GET /metrics` on the admin
    /// listener).
    pub metrics: bool,
    /// Where spans are exported, if anywhere.
    pub tracing: Option<TracingConfig>,
    /// Where the plugins' shared `kv` store lives.
    pub kv: KvConfig,
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL (`.../v1/traces`).
    pub endpoint: String,
    /// The OTLP encoding.
    pub protocol: TracingProtocol,
    /// The share of traces weir starts that are sampled, 0 to 1 (a client's own sampling
    /// decision is followed).
    pub sample: f64,
    /// The `service.name` of weir's spans.
    pub service_name: String,
    /// How often queued spans are sent.
    #[serde(serialize_with = "human")]
    pub flush_interval: Duration,
}

/// OTLP over HTTP, in protobuf or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TracingProtocol {
    /// `http/protobuf`, the OTLP default.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// `http/json`.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    /// Where records go.
    pub to: LogTarget,
    /// How each record is written.
    pub format: LogFormat,
    /// The share of requests logged, 0 to 1.
    pub sample: f64,
    /// Records waiting for the writer before new ones are dropped (and counted).
    pub queue: usize,
    /// The fields each record has, in this order; `None`: all of them, in
    /// [`LogField::ALL`]'s order.
    pub fields: Option<Vec<LogItem>>,
}

/// One item of `access_log.fields`: a field of the record, or a header of the client's
/// request (`request_header:NAME`), named in records as in `fields` (a header's name in
/// lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogItem {
    Field(LogField),
    /// A request header, as the client sent it (the first value if it sent several).
    RequestHeader(http::HeaderName),
}

/// What `request_header:` is followed by in `fields`.
const REQUEST_HEADER: &str = "request_header:";

/// Words that mark a request header as carrying credentials, which an access log must not
/// keep, wherever they appear in its name: `authorization` and `proxy-authorization`,
/// `x-forwarded-authorization`; `cookie`; `x-api-key`, `api-key`, `apikey` (Kong's),
/// `x-goog-api-key`; `x-auth-token`, `x-amz-security-token`, `x-forwarded-access-token`,
/// `private-token`; and so on. A name is read in lower case with `_` as `-`: servers that
/// hand headers on as CGI variables (`HTTP_X_API_KEY`) read `x_api_key` as `x-api-key`.
/// This errs towards refusing, as the admin's redaction does: a header refused for its
/// name costs a field in the log, a credential written once is out.
const CREDENTIAL_WORDS: [&str; 9] = [
    "authorization",
    "cookie",
    "api-key",
    "apikey",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
];

/// Whether the request header `name` (lower case, as [`http::HeaderName`] keeps it) may
/// carry credentials ([`CREDENTIAL_WORDS`]).
fn is_credential_header(name: &http::HeaderName) -> bool {
    let name = name.as_str().replace('_', "-");
    CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
}

impl LogItem {
    /// The item's name in records and in `fields`.
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        match self {
            LogItem::Field(field) => field.name().into(),
            LogItem::RequestHeader(name) => format!("{REQUEST_HEADER}{name}").into(),
        }
    }
}

impl Serialize for LogItem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

/// One field of an access log record, named in `fields` and in records as
/// [`LogField::name`] gives (README.md, "Access log", says what each holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogField {
    Time,
    RequestId,
    TraceId,
    Client,
    Method,
    Host,
    Path,
    Protocol,
    Status,
    BytesIn,
    BytesOut,
    Duration,
    UpstreamDuration,
    Route,
    Cluster,
    Endpoint,
    Attempts,
    Plugin,
    Incomplete,
    Generation,
    TlsVersion,
    TlsSni,
    TlsClient,
}

impl LogField {
    /// Every field, in the order a record without `fields` has them.
    pub const ALL: [LogField; 23] = [
        LogField::Time,
        LogField::RequestId,
        LogField::TraceId,
        LogField::Client,
        LogField::Method,
        LogField::Host,
        LogField::Path,
        LogField::Protocol,
        LogField::Status,
        LogField::BytesIn,
        LogField::BytesOut,
        LogField::Duration,
        LogField::UpstreamDuration,
        LogField::Route,
        LogField::Cluster,
        LogField::Endpoint,
        LogField::Attempts,
        LogField::Plugin,
        LogField::Incomplete,
        LogField::Generation,
        LogField::TlsVersion,
        LogField::TlsSni,
        LogField::TlsClient,
    ];

    /// The field's name in a record (and in `fields`).
    pub fn name(self) -> &'static str {
        match self {
            LogField::Time => "time",
            LogField::RequestId => "request_id",
            LogField::TraceId => "trace_id",
            LogField::Client => "client",
            LogField::Method => "method",
            LogField::Host => "host",
            LogField::Path => "path",
            LogField::Protocol => "protocol",
            LogField::Status => "status",
            LogField::BytesIn => "bytes_in",
            LogField::BytesOut => "bytes_out",
            LogField::Duration => "duration",
            LogField::UpstreamDuration => "upstream_duration",
            LogField::Route => "route",
            LogField::Cluster => "cluster",
            LogField::Endpoint => "endpoint",
            LogField::Attempts => "attempts",
            LogField::Plugin => "plugin",
            LogField::Incomplete => "incomplete",
            LogField::Generation => "generation",
            LogField::TlsVersion => "tls_version",
            LogField::TlsSni => "tls_sni",
            LogField::TlsClient => "tls_client",
        }
    }
}

/// Where access log records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A file, appended to and reopened on SIGUSR1.
    File(PathBuf),
}

/// An access log record's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs per line (logfmt).
    Text,
}

/// Records the access log queue holds by default.
const DEFAULT_ACCESS_LOG_QUEUE: usize = 16_384;

/// A downstream listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    /// The socket address to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// TLS, if the listener terminates it.
    pub tls: Option<ListenerTls>,
    /// A plain listener that answers every request with a redirect to HTTPS on this port.
    pub redirect_to_https: Option<u16>,
    /// Every connection starts with a PROXY protocol header naming the client
    /// (`proxy_protocol.rs`).
    pub proxy_protocol: bool,
}

/// The admin listener (`config/admin.rs` checks it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// The socket address to bind.
    pub address: SocketAddr,
    /// Who may use it: a bearer token, or anyone who can connect (loopback only).
    pub auth: AdminAuth,
    /// Host names, lower-case, that a request's `Host` may carry besides IP addresses and
    /// `localhost` (`hosts`; against DNS rebinding).
    pub hosts: Vec<String>,
}

/// Plugin settings: where plugins live, how they are reloaded and cached, and the limits
/// every plugin gets unless its own `NAME.toml` says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginsConfig {
    /// The plugin folder, resolved against the config file's directory.
    pub dir: PathBuf,
    /// Whether changes to the folder and the config file are applied while running.
    pub watch: bool,
    /// Where compiled plugins are cached, keyed by content hash; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Default limits for every plugin.
    pub limits: PluginLimits,
    /// Linear memory all plugin instances together may hold, in MiB.
    pub memory_budget_mb: usize,
}

/// Per-instance limits of a plugin: the global defaults, or a plugin's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginLimits {
    /// CPU time one hook call may take.
    #[serde(serialize_with = "human")]
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in MiB (1 to [`MAX_PLUGIN_MEMORY_MB`]).
    pub memory_limit_mb: usize,
    /// Hook calls an instance serves before a fresh one replaces it.
    pub max_uses: u32,
    /// Instances one plugin may have at once (1 to [`MAX_PLUGIN_INSTANCES`]).
    pub max_instances: usize,
    /// The most bytes of heads one call may hand weir: two lists of header changes (a
    /// request's and its response's) at `[server.limits] headers` each, every change at most
    /// `header_bytes`, and a path of `uri_bytes`. Not set in `[plugins]` but from
    /// `[server.limits]`, whose bounds weir holds a plugin's output to; with the plugin's
    /// `max_body_bytes` it bounds what one call may make weir copy (`PluginSettings::
    /// hostcall_fuel`). Here so that a change to those limits reloads the plugins.
    #[serde(skip)]
    pub head_output_bytes: usize,
}

impl PluginLimits {
    /// [`PluginLimits::head_output_bytes`] for `[server.limits]` `limits`. Each change also
    /// takes its place in the list as weir holds it (up to 56 bytes; 64 allowed), which
    /// wasmtime counts as copied.
    pub fn head_output_bytes(limits: &Limits) -> usize {
        let change = limits.header_bytes.saturating_add(64);
        limits
            .headers
            .saturating_mul(change)
            .saturating_mul(2)
            .saturating_add(limits.uri_bytes)
    }
}

impl Default for PluginLimits {
    fn default() -> PluginLimits {
        PluginLimits {
            deadline: DEFAULT_PLUGIN_DEADLINE,
            memory_limit_mb: DEFAULT_PLUGIN_MEMORY_MB,
            max_uses: DEFAULT_PLUGIN_MAX_USES,
            max_instances: DEFAULT_PLUGIN_INSTANCES,
            head_output_bytes: PluginLimits::head_output_bytes(&Limits::default()),
        }
    }
}

/// Downstream connection handling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    /// Time a client has to send a request head (HTTP/1.1), from its first byte; a new
    /// connection's first head (or, for HTTP/2, its preface), from the accept or the TLS
    /// handshake.
    #[serde(serialize_with = "human")]
    pub header_read_timeout: Duration,
    /// Time a connection may wait for its next request with none in progress: an HTTP/1.1
    /// keep-alive connection is closed, an HTTP/2 one sent GOAWAY and closed.
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    #[serde(serialize_with = "human")]
    pub drain_timeout: Duration,
    /// Concurrent downstream connections.
    pub max_connections: usize,
    /// Threads of the async runtime; `None` means one per CPU core.
    pub worker_threads: Option<usize>,
    /// Time an upgraded connection (WebSocket) may be silent both ways before it is closed.
    #[serde(serialize_with = "human")]
    pub upgrade_idle_timeout: Duration,
    /// How a request's path is normalised before routing.
    pub path_normalization: PathNormalization,
    /// Headers that only weir's plugins may set (who the client is): removed from every
    /// client request before its route's chain runs, so a client cannot pose as a consumer.
    #[serde(serialize_with = "header_names")]
    pub identity_headers: Vec<HeaderName>,
    /// Peers whose `X-Forwarded-For` says who the client is (load balancers in front of
    /// weir). From any other peer, forwarding headers are removed, not believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// What one client request may be.
    pub limits: Limits,
}

/// What one client request may be (`[server.limits]`); past each, a clear 4xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// The request head, request line and headers together (HTTP/1.1: hyper's read buffer;
    /// HTTP/2: the decoded header list): 431 past it.
    pub head_bytes: usize,
    /// One header, name and value: 431.
    pub header_bytes: usize,
    /// Headers in one request: 431.
    pub headers: usize,
    /// The request target (path and query, or the absolute form): 414.
    pub uri_bytes: usize,
    /// A request body, on every route without its own limit: 413. `None`: no limit.
    pub request_body_bytes: Option<u64>,
    /// A request body that sends nothing for this long is cut off: 408.
    #[serde(serialize_with = "human")]
    pub body_read_timeout: Duration,
    /// Concurrent streams on one client's HTTP/2 connection.
    pub h2_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_bytes: 64 * 1024,
            header_bytes: 8 * 1024,
            headers: 100,
            uri_bytes: 8 * 1024,
            request_body_bytes: None,
            body_read_timeout: Duration::from_secs(60),
            h2_max_streams: 128,
        }
    }
}

/// The smallest head hyper's HTTP/1.1 reader accepts as its buffer limit.
const MIN_HEAD_BYTES: usize = 8 * 1024;

/// The identity headers weir's auth plugins set (`x-consumer-id`; `x-consumer` was
/// key-auth's before).
const DEFAULT_IDENTITY_HEADERS: [&str; 2] = ["x-consumer-id", "x-consumer"];

/// How a request's path is normalised before routing (`proxy/path.rs` has the steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathNormalization {
    /// Runs of slashes become one.
    pub merge_slashes: bool,
    /// What an escaped slash or backslash (`%2F`, `%5C`) or a literal backslash gets.
    pub encoded_slashes: EncodedSlashes,
}

impl Default for PathNormalization {
    fn default() -> PathNormalization {
        PathNormalization {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Reject,
        }
    }
}

/// `encoded_slashes = "reject" | "decode" | "keep"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlashes {
    /// 400: nothing on either side can read such a path the same way.
    Reject,
    /// Decoded to `/` (a separator) before dot segments are removed.
    Decode,
    /// Left as they are; not separators.
    Keep,
}

/// A named set of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    /// The cluster's name, referenced by routes.
    pub name: String,
    /// The endpoints, at least one primary.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is chosen per request.
    pub lb: LbPolicy,
    /// Further attempts, each on another endpoint, after a failure that is safe to retry.
    pub retries: u32,
    /// Response statuses that count as a failure to retry (for example 503).
    pub retry_on_statuses: Vec<u16>,
    /// Retries in flight may be at most this share of the cluster's requests in flight (at
    /// least 10 are always allowed), so retries cannot multiply an overload.
    pub retry_budget_percent: u32,
    /// Request bodies up to this size are held in memory so a retry can resend them.
    pub retry_buffer_bytes: usize,
    /// Time for the whole exchange, every attempt included; `None`: only the per-attempt
    /// `response_timeout` applies.
    #[serde(serialize_with = "human_opt")]
    pub request_timeout: Option<Duration>,
    /// Active health checking, if configured.
    pub health_check: Option<HealthCheck>,
    /// Passive health: ejecting endpoints that fail real requests; `None` when disabled.
    pub outlier_detection: Option<OutlierDetection>,
    /// The most requests in flight to the cluster at once; more get 503 at once.
    pub max_requests: usize,
    /// Percent of primaries that must be up (healthy, not ejected); below it, requests are
    /// balanced across every primary (Envoy's panic mode). 0: only when none is up.
    pub panic_threshold: u32,
    /// The most connections open to the cluster's endpoints at once.
    pub max_connections: usize,
    /// The most requests waiting for a connection when `max_connections` are open; more get
    /// 503 at once.
    pub max_pending: usize,
    /// Sticky sessions, if configured.
    pub sticky: Option<Sticky>,
    /// Time to establish a TCP connection to one endpoint.
    #[serde(serialize_with = "human")]
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response headers.
    #[serde(serialize_with = "human")]
    pub response_timeout: Duration,
    /// Time an idle pooled connection is kept.
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
    /// The HTTP version spoken to the endpoints.
    pub protocol: Protocol,
    /// Requests in flight on one HTTP/2 connection before another is opened.
    pub max_streams: u32,
    /// TLS to the endpoints, if on (`https://` endpoints or a `tls` table).
    pub tls: Option<UpstreamTls>,
}

/// One upstream endpoint: `host:port`, where host is an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// The authority requests are sent to.
    #[serde(rename = "address", serialize_with = "display")]
    pub authority: Authority,
    /// Its share of requests relative to the others (1 to [`MAX_WEIGHT`]).
    pub weight: u32,
    /// Used only when no primary endpoint is healthy.
    pub backup: bool,
}

/// Active health checks of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// `GET` this path and check the status; `None` checks that a TCP connect succeeds.
    pub path: Option<String>,
    /// Time between checks of one endpoint.
    #[serde(serialize_with = "human")]
    pub interval: Duration,
    /// Time one check may take.
    #[serde(serialize_with = "human")]
    pub timeout: Duration,
    /// Up to this much random time is added to each interval, so checks do not align.
    #[serde(serialize_with = "human")]
    pub jitter: Duration,
    /// Consecutive passes that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Statuses that pass an HTTP check; empty means any 2xx or 3xx.
    pub expected_statuses: Vec<u16>,
}

/// Passive health checking (outlier detection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive failed requests (connect errors, resets, timeouts, 5xx) that eject.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (at most 10 times).
    #[serde(serialize_with = "human")]
    pub base_ejection_time: Duration,
    /// Never eject more than this share of the cluster's endpoints (at least one may be).
    pub max_ejection_percent: u32,
}

/// Sticky sessions by cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sticky {
    /// The cookie that names the endpoint (opaquely).
    pub cookie: String,
    /// How long the browser keeps it.
    #[serde(serialize_with = "human")]
    pub ttl: Duration,
}

/// The largest endpoint weight.
pub const MAX_WEIGHT: u32 = 1000;

/// A cluster's load-balancing algorithm (`lb = "…"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "algorithm")]
pub enum LbPolicy {
    /// Smooth weighted round robin (nginx's): weights are honoured evenly spread.
    RoundRobin,
    /// Power of two choices over in-flight requests, weighted.
    LeastRequest,
    /// Uniformly random, weighted.
    Random,
    /// A hash ring: one key always goes to the same endpoint while it is healthy.
    ConsistentHash {
        /// What is hashed.
        key: HashKey,
    },
    /// The first healthy endpoint in the order written (active/standby).
    First,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The client's IP address (`client_address`).
    ClientAddress,
    /// The request path (`path`).
    Path,
    /// A request header's value (`header:NAME`); absent hashes as empty.
    Header(String),
    /// A cookie's value (`cookie:NAME`); absent hashes as empty.
    Cookie(String),
}

/// A route: which requests go to which cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    /// The route's name, used in logs.
    pub name: String,
    /// Lower-case host to match (`*.example.com` matches any subdomain); `None` matches any.
    pub host: Option<String>,
    /// Path prefix to match; `/` matches every path.
    pub path_prefix: String,
    /// The exact path to match instead of a prefix.
    pub path_exact: Option<String>,
    /// A regex the whole path must match instead of a prefix.
    pub path_regex: Option<super::routing::Pattern>,
    /// Conditions on request headers, all of which must hold.
    pub headers: Vec<super::routing::Condition>,
    /// Conditions on query parameters, all of which must hold.
    pub query: Vec<super::routing::Condition>,
    /// Methods to match; `None` matches any.
    #[serde(serialize_with = "methods")]
    pub methods: Option<Vec<Method>>,
    /// What answers the route: a cluster or a handler plugin.
    #[serde(flatten)]
    pub target: RouteTarget,
    /// The route's plugin chain by name, in order; `None` means every plugin in the folder.
    pub plugins: Option<Vec<String>>,
    /// Retry requests whose method is not idempotent (POST, PATCH) after a reset, timeout or
    /// retryable status too. Connect failures are retried for every method regardless.
    pub retry_non_idempotent: bool,
    /// Whether the route's requests are written to the access log.
    pub access_log: bool,
    /// The largest request body the route takes (its own, or `[server.limits]`'s): 413.
    pub request_body_bytes: Option<u64>,
    /// How its responses are compressed, if they are.
    pub compression: Option<Compression>,
    /// How its upstream's responses are stored and reused, if they are.
    pub cache: Option<super::cache::Cache>,
    /// What keeps a client on one of the route's `backends`; `None`: each request is split
    /// by weight alone.
    pub split_by: Option<HashKey>,
    /// A sample of the route's requests copied to another cluster.
    pub mirror: Option<super::routing::Mirror>,
}

/// What answers a route: exactly one of a cluster or a handler plugin. (Serialized as the
/// TOML has it: `"cluster": NAME` or `"handler": NAME`.)
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RouteTarget {
    /// A cluster, by name and by its index in [`Config::clusters`].
    #[serde(rename = "cluster")]
    Cluster(ClusterRef),
    /// A handler plugin, by name.
    #[serde(rename = "handler")]
    Handler(String),
    /// Clusters sharing the route's requests by weight.
    #[serde(rename = "backends")]
    Backends(Vec<super::routing::Backend>),
}

impl RouteTarget {
    /// The handler plugin's name, for a handler route.
    pub fn handler(&self) -> Option<&String> {
        match self {
            RouteTarget::Handler(name) => Some(name),
            RouteTarget::Cluster(_) | RouteTarget::Backends(_) => None,
        }
    }
}

/// A cluster a route names, resolved to its place in [`Config::clusters`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRef {
    /// The cluster's name.
    pub name: String,
    /// Its index in [`Config::clusters`].
    pub index: usize,
}

impl Serialize for ClusterRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

pub(super) fn human<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn human_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&humantime::format_duration(*d)),
        None => s.serialize_none(),
    }
}

fn display<S: Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn header_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

fn methods<S: Serializer>(m: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    let names: Option<Vec<&str>> = m.as_ref().map(|m| m.iter().map(Method::as_str).collect());
    names.serialize(s)
}

/// Collects diagnostics while validating.
pub(super) struct Checker<'a> {
    locate: &'a Locator<'a>,
    found: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(super) fn error<T>(&mut self, at: &Spanned<T>, message: String) {
        self.found.push(self.locate.at(Some(at.span()), message));
    }

    pub(super) fn error_nowhere(&mut self, message: String) {
        self.found.push(self.locate.at(None, message));
    }

    /// Reports the second and later uses of each name.
    fn unique_names<'n>(&mut self, what: &str, names: impl Iterator<Item = &'n Spanned<String>>) {
        let mut seen: HashMap<&str, &Spanned<String>> = HashMap::new();
        for name in names {
            if name.get_ref().is_empty() {
                self.error(name, format!("{what} name must not be empty"));
            } else if let Some(first) = seen.get(name.get_ref().as_str()) {
                let first_line = self.locate.at(Some(first.span()), String::new()).line;
                let message = format!(
                    "duplicate {what} name \"{}\" (first defined on line {})",
                    name.get_ref(),
                    first_line.unwrap_or(0)
                );
                self.error(name, message);
            } else {
                seen.insert(name.get_ref(), name);
            }
        }
    }

    fn socket_addr(&mut self, what: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let message = format!(
                    "{what} address \"{}\" is not an IP address and port, like \"127.0.0.1:8080\"",
                    value.get_ref()
                );
                self.error(value, message);
                None
            }
        }
    }
}

pub(super) fn validate(
    raw: RawConfig,
    base_dir: &Path,
    locate: &Locator<'_>,
) -> Result<Config, Vec<Diagnostic>> {
    let mut check = Checker {
        locate,
        found: Vec::new(),
    };

    if raw.listeners.is_empty() {
        check.error_nowhere("no [[listeners]]: weir needs at least one address to serve".into());
    }
    let mut listeners = Vec::new();
    let mut bound: HashSet<SocketAddr> = HashSet::new();
    for l in &raw.listeners {
        let tls = l
            .tls
            .as_ref()
            .map(|t| tls::listener_tls(&mut check, t, base_dir));
        let redirect_to_https = l
            .redirect_to_https
            .as_ref()
            .map(|r| r.get_ref().port.unwrap_or(443));
        if let (Some(redirect), Some(_)) = (&l.redirect_to_https, &tls) {
            check.error(
                redirect,
                "redirect_to_https is for a plain listener; this one has tls".into(),
            );
        }
        if let Some(address) = check.socket_addr("listener", &l.address) {
            if !bound.insert(address) && address.port() != 0 {
                check.error(
                    &l.address,
                    format!("listener address {address} is listed twice"),
                );
            }
            listeners.push(ListenerConfig {
                address,
                tls,
                redirect_to_https,
                proxy_protocol: l.proxy_protocol.unwrap_or(false),
            });
        }
    }
    let admin = raw.admin.as_ref().and_then(|a| {
        let address = check.socket_addr("admin", &a.address)?;
        Some(admin::admin(&mut check, a, address, base_dir))
    });

    let max_connections = match raw.server.max_connections {
        Some(ref n) if *n.get_ref() == 0 => {
            check.error(n, "server.max_connections must be at least 1".into());
            DEFAULT_MAX_CONNECTIONS
        }
        Some(n) => n.into_inner(),
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let worker_threads = match raw.server.worker_threads {
        Some(ref n) if *n.get_ref() == 0 => {
            check.error(n, "server.worker_threads must be at least 1".into());
            None
        }
        n => n.map(Spanned::into_inner),
    };
    if raw.server.upgrade_idle_timeout == Some(Duration::ZERO) {
        check.error_nowhere("server.upgrade_idle_timeout must be greater than zero".into());
    }
    if raw.server.idle_timeout == Some(Duration::ZERO) {
        check.error_nowhere("server.idle_timeout must be greater than zero".into());
    }
    if raw.server.header_read_timeout == Some(Duration::ZERO) {
        check.error_nowhere("server.header_read_timeout must be greater than zero".into());
    }
    let server = ServerConfig {
        header_read_timeout: raw
            .server
            .header_read_timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        idle_timeout: raw
            .server
            .idle_timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_DOWNSTREAM),
        drain_timeout: raw.server.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        max_connections,
        worker_threads,
        upgrade_idle_timeout: raw
            .server
            .upgrade_idle_timeout
            .unwrap_or(DEFAULT_UPGRADE_IDLE_TIMEOUT),
        path_normalization: path_normalization(&mut check, raw.server.path_normalization.as_ref()),
        identity_headers: identity_headers(&mut check, raw.server.identity_headers.as_deref()),
        trusted_proxies: trusted_proxies(&mut check, raw.server.trusted_proxies.as_deref()),
        limits: limits(&mut check, &raw.server.limits),
    };

    check.unique_names("cluster", raw.clusters.iter().map(|c| &c.name));
    let clusters: Vec<ClusterConfig> = raw
        .clusters
        .iter()
        .map(|c| cluster(&mut check, c, base_dir))
        .collect();

    check.unique_names("route", raw.routes.iter().map(|r| &r.name));
    let routes: Vec<RouteConfig> = raw
        .routes
        .iter()
        .filter_map(|r| route(&mut check, r, &clusters, &server.limits))
        .collect();

    let mut plugins = plugins(&mut check, raw.plugins, base_dir);
    plugins.limits.head_output_bytes = PluginLimits::head_output_bytes(&server.limits);
    let access_log = raw
        .access_log
        .as_ref()
        .map(|a| access_log(&mut check, a.get_ref(), base_dir));
    let metrics = raw.metrics.enabled.unwrap_or(true);
    let tracing = raw
        .tracing
        .as_ref()
        .map(|t| tracing_config(&mut check, t.get_ref()));
    let kv = raw
        .kv
        .as_ref()
        .map(|k| super::kv::kv(&mut check, k, base_dir))
        .unwrap_or_default();

    if check.found.is_empty() {
        Ok(Config {
            listeners,
            admin,
            plugins,
            server,
            clusters,
            routes,
            access_log,
            metrics,
            tracing,
            kv,
        })
    } else {
        check.found.sort_by_key(|d| (d.line, d.column));
        Err(check.found)
    }
}

fn access_log(check: &mut Checker<'_>, raw: &RawAccessLog, base_dir: &Path) -> AccessLogConfig {
    let to = match raw.path.get_ref().as_str() {
        "stdout" => LogTarget::Stdout,
        "stderr" => LogTarget::Stderr,
        "" => {
            check.error(
                &raw.path,
                "access_log.path must be a file, \"stdout\" or \"stderr\"".into(),
            );
            LogTarget::Stderr
        }
        path => LogTarget::File(base_dir.join(path)),
    };
    let format = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            let span = raw.format.as_ref().expect("matched Some");
            check.error(
                span,
                format!("access_log.format must be \"json\" or \"text\", not {other:?}"),
            );
            LogFormat::Json
        }
    };
    let sample = match &raw.sample {
        Some(s) if !(0.0..=1.0).contains(s.get_ref()) => {
            check.error(s, "access_log.sample must be between 0 and 1".into());
            1.0
        }
        Some(s) => *s.get_ref(),
        None => 1.0,
    };
    let queue = match &raw.queue {
        Some(q) if *q.get_ref() == 0 => {
            check.error(q, "access_log.queue must be at least 1".into());
            DEFAULT_ACCESS_LOG_QUEUE
        }
        Some(q) => *q.get_ref(),
        None => DEFAULT_ACCESS_LOG_QUEUE,
    };
    let fields = raw.fields.as_ref().map(|names| log_fields(check, names));
    AccessLogConfig {
        to,
        format,
        sample,
        queue,
        fields,
    }
}

/// `access_log.fields`: known names and request headers that are not credentials, each once,
/// at least one.
fn log_fields(check: &mut Checker<'_>, names: &Spanned<Vec<Spanned<String>>>) -> Vec<LogItem> {
    if names.get_ref().is_empty() {
        check.error(
            names,
            "access_log.fields must name at least one field (leave it out for all of them)".into(),
        );
    }
    let mut fields = Vec::with_capacity(names.get_ref().len());
    for name in names.get_ref() {
        let text = name.get_ref();
        let field = if let Some(header) = text.strip_prefix(REQUEST_HEADER) {
            match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(header) if is_credential_header(&header) => {
                    check.error(
                        name,
                        format!("access_log.fields: {text:?} would write credentials into the log"),
                    );
                    continue;
                }
                Ok(header) => LogItem::RequestHeader(header),
                Err(_) => {
                    check.error(
                        name,
                        format!("access_log.fields: {header:?} in {text:?} is not a header name"),
                    );
                    continue;
                }
            }
        } else if let Some(field) = LogField::ALL.into_iter().find(|f| f.name() == text) {
            LogItem::Field(field)
        } else {
            let known: Vec<_> = LogField::ALL.iter().map(|f| f.name()).collect();
            check.error(
                name,
                format!(
                    "access_log.fields: {text:?} is not one of {}, or {REQUEST_HEADER}NAME",
                    known.join(", ")
                ),
            );
            continue;
        };
        if fields.contains(&field) {
            check.error(
                name,
                format!("access_log.fields names {:?} twice", name.get_ref()),
            );
            continue;
        }
        fields.push(field);
    }
    fields
}

fn tracing_config(check: &mut Checker<'_>, raw: &RawTracing) -> TracingConfig {
    let url = raw.endpoint.get_ref();
    let endpoint = match url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
            // A bare collector address gets OTLP's traces path, as OTEL_EXPORTER_OTLP_ENDPOINT.
            if uri.path() == "/" {
                format!("{}/v1/traces", url.trim_end_matches('/'))
            } else {
                url.clone()
            }
        }
        _ => {
            check.error(
                &raw.endpoint,
                format!("tracing.endpoint {url:?} is not an http:// URL (an OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\")"),
            );
            String::new()
        }
    };
    let protocol = match raw.protocol.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("http/protobuf") => TracingProtocol::HttpProtobuf,
        Some("http/json") => TracingProtocol::HttpJson,
        Some(other) => {
            let span = raw.protocol.as_ref().expect("matched Some");
            check.error(
                span,
                format!(
                    "tracing.protocol must be \"http/protobuf\" or \"http/json\", not {other:?}"
                ),
            );
            TracingProtocol::HttpProtobuf
        }
    };
    let sample = match &raw.sample {
        Some(s) if !(0.0..=1.0).contains(s.get_ref()) => {
            check.error(s, "tracing.sample must be between 0 and 1".into());
            1.0
        }
        Some(s) => *s.get_ref(),
        None => 1.0,
    };
    if raw.flush_interval == Some(Duration::ZERO) {
        check.error_nowhere("tracing.flush_interval must be greater than zero".into());
    }
    TracingConfig {
        endpoint,
        protocol,
        sample,
        service_name: raw.service_name.clone().unwrap_or_else(|| "weir".into()),
        flush_interval: raw
            .flush_interval
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1)),
    }
}

fn identity_headers(check: &mut Checker<'_>, raw: Option<&[Spanned<String>]>) -> Vec<HeaderName> {
    let Some(raw) = raw else {
        return DEFAULT_IDENTITY_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
    };
    raw.iter()
        .filter_map(
            |name| match HeaderName::from_bytes(name.get_ref().as_bytes()) {
                Ok(header) => Some(header),
                Err(_) => {
                    let message = format!(
                        "server.identity_headers: \"{}\" is not a header name",
                        name.get_ref()
                    );
                    check.error(name, message);
                    None
                }
            },
        )
        .collect()
}

/// `[server] trusted_proxies`: CIDR ranges (`10.0.0.0/8`) or single addresses.
fn trusted_proxies(check: &mut Checker<'_>, raw: Option<&[Spanned<String>]>) -> Vec<ipnet::IpNet> {
    raw.unwrap_or_default()
        .iter()
        .filter_map(|entry| {
            let text = entry.get_ref().trim();
            let net = text
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
            match net {
                None => check.error(
                    entry,
                    format!(
                        "server.trusted_proxies: \"{text}\" is not an address or a CIDR range like \"10.0.0.0/8\""
                    ),
                ),
                // A typo such as 10.1.0.0/8 for 10.1.0.0/16 would trust far more peers than
                // meant: refused rather than widened.
                Some(n) if n.trunc() != n => check.error(
                    entry,
                    format!(
                        "server.trusted_proxies: \"{text}\" has bits set past its /{} prefix; write the range as \"{}\" (or the address alone)",
                        n.prefix_len(),
                        n.trunc()
                    ),
                ),
                Some(_) => {}
            }
            net
        })
        .collect()
}

/// `[server.limits]`, each at least what a request needs to be served at all.
fn limits(check: &mut Checker<'_>, raw: &RawLimits) -> Limits {
    let defaults = Limits::default();
    let mut at_least =
        |value: &Option<Spanned<usize>>, min: usize, name: &str, default: usize| match value {
            Some(v) if *v.get_ref() < min => {
                check.error(v, format!("server.limits.{name} must be at least {min}"));
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        };
    let head_bytes = at_least(
        &raw.head_bytes,
        MIN_HEAD_BYTES,
        "head_bytes",
        defaults.head_bytes,
    );
    let header_bytes = at_least(&raw.header_bytes, 1, "header_bytes", defaults.header_bytes);
    let headers = at_least(&raw.headers, 1, "headers", defaults.headers);
    let uri_bytes = at_least(&raw.uri_bytes, 1, "uri_bytes", defaults.uri_bytes);
    let request_body_bytes = raw.request_body_bytes.as_ref().and_then(|n| {
        if *n.get_ref() == 0 {
            check.error(
                n,
                "server.limits.request_body_bytes must be at least 1".into(),
            );
        }
        Some(*n.get_ref()).filter(|&n| n > 0)
    });
    if raw.body_read_timeout == Some(Duration::ZERO) {
        check.error_nowhere("server.limits.body_read_timeout must be greater than zero".into());
    }
    let h2_max_streams = match &raw.h2_max_streams {
        Some(n) if *n.get_ref() == 0 => {
            check.error(n, "server.limits.h2_max_streams must be at least 1".into());
            defaults.h2_max_streams
        }
        Some(n) => *n.get_ref(),
        None => defaults.h2_max_streams,
    };
    Limits {
        head_bytes,
        header_bytes,
        headers,
        uri_bytes,
        request_body_bytes,
        body_read_timeout: raw
            .body_read_timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(defaults.body_read_timeout),
        h2_max_streams,
    }
}

fn path_normalization(
    check: &mut Checker<'_>,
    raw: Option<&RawPathNormalization>,
) -> PathNormalization {
    let mut policy = PathNormalization::default();
    let Some(raw) = raw else {
        return policy;
    };
    if let Some(merge) = raw.merge_slashes {
        policy.merge_slashes = merge;
    }
    if let Some(slashes) = &raw.encoded_slashes {
        policy.encoded_slashes = match slashes.get_ref().as_str() {
            "reject" => EncodedSlashes::Reject,
            "decode" => EncodedSlashes::Decode,
            "keep" => EncodedSlashes::Keep,
            other => {
                check.error(
                    slashes,
                    format!(
                        "server.path_normalization.encoded_slashes \"{other}\" is not one of \"reject\", \"decode\", \"keep\""
                    ),
                );
                EncodedSlashes::Reject
            }
        };
    }
    policy
}

fn plugins(check: &mut Checker<'_>, raw: RawPlugins, base_dir: &Path) -> PluginsConfig {
    let mut limits = PluginLimits::default();
    if let Some(d) = raw.deadline {
        if d.is_zero() {
            check.error_nowhere("plugins.deadline must be greater than zero".into());
        }
        limits.deadline = d;
    }
    if let Some(mb) = raw.memory_limit_mb {
        if !(1..=MAX_PLUGIN_MEMORY_MB).contains(mb.get_ref()) {
            let message = format!(
                "plugins.memory_limit_mb = {}: must be between 1 and {MAX_PLUGIN_MEMORY_MB}",
                mb.get_ref()
            );
            check.error(&mb, message);
        }
        limits.memory_limit_mb = mb.into_inner();
    }
    if let Some(n) = raw.max_uses {
        if *n.get_ref() == 0 {
            check.error(&n, "plugins.max_uses must be at least 1".into());
        }
        limits.max_uses = n.into_inner();
    }
    if let Some(n) = raw.max_instances {
        if !(1..=MAX_PLUGIN_INSTANCES).contains(n.get_ref()) {
            let message = format!(
                "plugins.max_instances = {}: must be between 1 and {MAX_PLUGIN_INSTANCES}",
                n.get_ref()
            );
            check.error(&n, message);
        }
        limits.max_instances = n.into_inner();
    }
    let memory_budget_mb = match raw.memory_budget_mb {
        Some(mb) => {
            if *mb.get_ref() < limits.memory_limit_mb {
                let message = format!(
                    "plugins.memory_budget_mb = {}: must be at least plugins.memory_limit_mb ({})",
                    mb.get_ref(),
                    limits.memory_limit_mb
                );
                check.error(&mb, message);
            }
            mb.into_inner()
        }
        None => DEFAULT_PLUGIN_MEMORY_BUDGET_MB,
    };
    let cache_dir = match (raw.cache, raw.cache_dir) {
        (Some(false), _) => None,
        (_, Some(dir)) => Some(base_dir.join(dir)),
        (_, None) => default_cache_dir(),
    };
    PluginsConfig {
        dir: base_dir.join(raw.dir.unwrap_or_else(|| PathBuf::from("plugins"))),
        watch: raw.watch.unwrap_or(true),
        cache_dir,
        limits,
        memory_budget_mb,
    }
}

/// `$XDG_CACHE_HOME/weir`, else `$HOME/.cache/weir`; no cache if neither is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
    match xdg {
        Some(dir) => Some(PathBuf::from(dir).join("weir")),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".cache").join("weir")),
    }
}

fn cluster(check: &mut Checker<'_>, raw: &RawCluster, base_dir: &Path) -> ClusterConfig {
    let name = raw.name.get_ref();
    if raw.endpoints.get_ref().is_empty() {
        check.error(
            &raw.endpoints,
            format!("cluster \"{name}\" has no endpoints"),
        );
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut schemes = HashSet::new();
    for e in raw.endpoints.get_ref() {
        let raw_endpoint = e.get_ref();
        let weight = match raw_endpoint.weight {
            None => 1,
            Some(w) if (1..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
            Some(w) => {
                let message = format!(
                    "cluster \"{name}\": endpoint {} has weight {w}; weights are 1 to {MAX_WEIGHT}",
                    raw_endpoint.address
                );
                check.error(e, message);
                1
            }
        };
        match endpoint(&raw_endpoint.address) {
            // `http://host:port` and `host:port` are both plain: only TLS may not be mixed.
            Ok((scheme, _))
                if !schemes.is_empty()
                    && (scheme == Scheme::Https) != schemes.contains(&Scheme::Https) =>
            {
                check.error(
                    e,
                    format!(
                        "cluster \"{name}\": endpoints mix https:// and plain ones; TLS is the cluster's, so give them all one scheme"
                    ),
                );
            }
            Ok((_, authority)) if endpoints.iter().any(|seen| seen.authority == authority) => {
                check.error(
                    e,
                    format!("cluster \"{name}\" lists endpoint {authority} twice"),
                );
            }
            Ok((scheme, authority)) => {
                schemes.insert(scheme);
                endpoints.push(Endpoint {
                    authority,
                    weight,
                    backup: raw_endpoint.backup,
                });
            }
            Err(why) => check.error(e, format!("cluster \"{name}\": endpoint {why}")),
        }
    }
    if !endpoints.is_empty() && endpoints.iter().all(|e| e.backup) {
        check.error(
            &raw.endpoints,
            format!("cluster \"{name}\" has only backup endpoints; at least one must be primary"),
        );
    }
    let lb = lb_policy(check, raw);
    let retries = match &raw.retries {
        Some(r) if *r.get_ref() > 10 => {
            check.error(r, format!("cluster \"{name}\": retries must be at most 10"));
            0
        }
        Some(r) => *r.get_ref(),
        None => DEFAULT_RETRIES,
    };
    let health_check = raw
        .health_check
        .as_ref()
        .map(|h| health_check(check, name, h));
    let retry_on_statuses = match &raw.retry_on_statuses {
        Some(list) => {
            if let Some(bad) = list.get_ref().iter().find(|s| !(500..=599).contains(*s)) {
                check.error(
                    list,
                    format!("cluster \"{name}\": retry_on_statuses: {bad} is not a 5xx status"),
                );
            }
            list.get_ref().clone()
        }
        None => Vec::new(),
    };
    let retry_budget_percent = match &raw.retry_budget_percent {
        Some(p) if *p.get_ref() > 100 => {
            check.error(
                p,
                format!("cluster \"{name}\": retry_budget_percent is at most 100"),
            );
            DEFAULT_RETRY_BUDGET
        }
        Some(p) => *p.get_ref(),
        None => DEFAULT_RETRY_BUDGET,
    };
    let outlier_detection = outlier_detection(check, name, raw.outlier_detection.as_ref());
    let max_requests = match &raw.max_requests {
        Some(n) if *n.get_ref() == 0 => {
            check.error(
                n,
                format!("cluster \"{name}\": max_requests must be at least 1"),
            );
            DEFAULT_MAX_REQUESTS
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_REQUESTS,
    };
    let panic_threshold = match &raw.panic_threshold {
        Some(p) if *p.get_ref() > 100 => {
            check.error(
                p,
                format!("cluster \"{name}\": panic_threshold is at most 100"),
            );
            0
        }
        Some(p) => *p.get_ref(),
        None => 0,
    };
    let max_connections = match &raw.max_connections {
        Some(n) if *n.get_ref() == 0 => {
            check.error(
                n,
                format!("cluster \"{name}\": max_connections must be at least 1"),
            );
            DEFAULT_MAX_REQUESTS
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_REQUESTS,
    };
    let sticky = raw.sticky.as_ref().map(|s| {
        let cookie = s
            .get_ref()
            .cookie
            .clone()
            .unwrap_or_else(|| "weir_sticky".into());
        let token = !cookie.is_empty()
            && cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            let message =
                format!("cluster \"{name}\": sticky cookie {cookie:?} is not a valid cookie name");
            check.error(s, message);
        }
        let ttl = s.get_ref().ttl.unwrap_or(Duration::from_secs(3600));
        // The cookie's Max-Age is whole seconds: under one, it would say "forget me at once".
        if ttl < Duration::from_secs(1) {
            let message = format!("cluster \"{name}\": sticky ttl must be at least 1s");
            check.error(s, message);
        }
        Sticky { cookie, ttl }
    });
    for (what, d) in [
        ("connect_timeout", raw.connect_timeout),
        ("response_timeout", raw.response_timeout),
        ("idle_timeout", raw.idle_timeout),
        ("request_timeout", raw.request_timeout),
    ] {
        if d == Some(Duration::ZERO) {
            check.error(
                &raw.name,
                format!("cluster \"{name}\": {what} must be greater than zero"),
            );
        }
    }
    let (protocol, tls) = tls::cluster_transport(
        check,
        name,
        raw.protocol.as_ref(),
        raw.tls.as_ref(),
        schemes.contains(&Scheme::Https),
        base_dir,
    );
    if schemes.contains(&Scheme::Http)
        && let Some(raw_tls) = &raw.tls
    {
        check.error(
            raw_tls,
            format!(
                "cluster \"{name}\" has a tls table and http:// endpoints; write them as https:// or host:port"
            ),
        );
    }
    let max_streams = match &raw.max_streams {
        Some(n) if *n.get_ref() == 0 => {
            check.error(
                n,
                format!("cluster \"{name}\": max_streams must be at least 1"),
            );
            DEFAULT_MAX_STREAMS
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_STREAMS,
    };
    ClusterConfig {
        name: name.clone(),
        endpoints,
        lb,
        retries,
        retry_on_statuses,
        retry_budget_percent,
        retry_buffer_bytes: raw.retry_buffer_bytes.unwrap_or(DEFAULT_RETRY_BUFFER),
        request_timeout: raw.request_timeout,
        health_check,
        outlier_detection,
        max_requests,
        panic_threshold,
        max_connections,
        max_pending: raw.max_pending.unwrap_or(DEFAULT_MAX_PENDING),
        sticky,
        connect_timeout: raw.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        response_timeout: raw.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
        idle_timeout: raw.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        protocol,
        max_streams,
        tls,
    }
}

fn outlier_detection(
    check: &mut Checker<'_>,
    cluster: &str,
    raw: Option<&Spanned<RawOutlier>>,
) -> Option<OutlierDetection> {
    let defaults = OutlierDetection {
        consecutive_failures: 5,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 50,
    };
    let Some(raw) = raw else {
        return Some(defaults);
    };
    let o = raw.get_ref();
    if o.enabled == Some(false) {
        return None;
    }
    let detection = OutlierDetection {
        consecutive_failures: o
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        base_ejection_time: o.base_ejection_time.unwrap_or(defaults.base_ejection_time),
        max_ejection_percent: o
            .max_ejection_percent
            .unwrap_or(defaults.max_ejection_percent),
    };
    if detection.consecutive_failures == 0
        || detection.base_ejection_time.is_zero()
        || detection.max_ejection_percent > 100
    {
        let message = format!(
            "cluster \"{cluster}\": outlier_detection: consecutive_failures and base_ejection_time must be above zero, max_ejection_percent at most 100"
        );
        check.error(raw, message);
    }
    Some(detection)
}

fn health_check(
    check: &mut Checker<'_>,
    cluster: &str,
    raw: &Spanned<RawHealthCheck>,
) -> HealthCheck {
    let h = raw.get_ref();
    let interval = h.interval.unwrap_or(DEFAULT_CHECK_INTERVAL);
    let timeout = h.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT);
    let mut problems = Vec::new();
    if interval.is_zero() || timeout.is_zero() {
        problems.push("interval and timeout must be greater than zero".to_owned());
    }
    if h.healthy_threshold == Some(0) || h.unhealthy_threshold == Some(0) {
        problems.push("thresholds must be at least 1".to_owned());
    }
    if let Some(path) = &h.path
        && !path.starts_with('/')
    {
        problems.push(format!("path \"{path}\" must start with /"));
    }
    if let Some(bad) = h
        .expected_statuses
        .iter()
        .flatten()
        .find(|s| !(100..=599).contains(*s))
    {
        problems.push(format!("expected status {bad} is not an HTTP status"));
    }
    for p in problems {
        check.error(raw, format!("cluster \"{cluster}\": health_check: {p}"));
    }
    HealthCheck {
        path: h.path.clone(),
        interval,
        timeout,
        jitter: h.jitter.unwrap_or(interval / 10),
        healthy_threshold: h.healthy_threshold.unwrap_or(2).max(1),
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(2).max(1),
        expected_statuses: h.expected_statuses.clone().unwrap_or_default(),
    }
}

/// `lb` and `hash_key`; an unknown name is reported and round robin stands in.
fn lb_policy(check: &mut Checker<'_>, raw: &RawCluster) -> LbPolicy {
    let name = raw.name.get_ref();
    let algorithm = raw
        .lb
        .as_ref()
        .map_or("round_robin", |l| l.get_ref().as_str());
    if let Some(key) = &raw.hash_key
        && algorithm != "consistent_hash"
    {
        check.error(
            key,
            format!("cluster \"{name}\": hash_key applies only to lb = \"consistent_hash\""),
        );
    }
    match algorithm {
        "round_robin" => LbPolicy::RoundRobin,
        "least_request" => LbPolicy::LeastRequest,
        "random" => LbPolicy::Random,
        "first" => LbPolicy::First,
        "consistent_hash" => {
            let key = match &raw.hash_key {
                None => HashKey::ClientAddress,
                Some(k) => match k.get_ref().split_once(':') {
                    None if k.get_ref() == "client_address" => HashKey::ClientAddress,
                    None if k.get_ref() == "path" => HashKey::Path,
                    Some(("header", h)) if HeaderName::try_from(h).is_ok() => {
                        HashKey::Header(h.to_ascii_lowercase())
                    }
                    Some(("cookie", c)) if !c.is_empty() => HashKey::Cookie(c.to_owned()),
                    _ => {
                        let message = format!(
                            "cluster \"{name}\": hash_key \"{}\" is not one of \"client_address\", \"path\", \"header:NAME\", \"cookie:NAME\"",
                            k.get_ref()
                        );
                        check.error(k, message);
                        HashKey::ClientAddress
                    }
                },
            };
            LbPolicy::ConsistentHash { key }
        }
        other => {
            let message = format!(
                "cluster \"{name}\": lb \"{other}\" is not one of \"round_robin\", \"least_request\", \"random\", \"consistent_hash\", \"first\""
            );
            if let Some(lb) = &raw.lb {
                check.error(lb, message);
            }
            LbPolicy::RoundRobin
        }
    }
}

/// How an endpoint was written: `host:port`, `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Bare,
    Http,
    Https,
}

/// Parses `host:port`, where host is an IP address (IPv6 in brackets) or a DNS name, with an
/// optional `http://` or `https://` in front.
fn endpoint(text: &str) -> Result<(Scheme, Authority), String> {
    let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        (Scheme::Bare, text)
    };
    if rest.contains("://") {
        return Err(format!(
            "\"{text}\" has a scheme weir does not speak; write it as host:port, http://host:port or https://host:port"
        ));
    }
    if rest.contains('/') {
        return Err(format!(
            "\"{text}\" has a path; an endpoint is host:port (routes and plugins rewrite paths)"
        ));
    }
    authority(rest).map(|a| (scheme, a))
}

/// Parses `host:port`, where host is an IP address (IPv6 in brackets) or a DNS name.
fn authority(text: &str) -> Result<Authority, String> {
    if text.parse::<SocketAddr>().is_ok() {
        return text
            .parse::<Authority>()
            .map_err(|e| format!("\"{text}\": {e}"));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("\"{text}\" has no port; write it as host:port"));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!(
            "\"{text}\" has an invalid port \"{port}\" (expected 1-65535)"
        ));
    }
    if !is_dns_name(host) {
        return Err(format!(
            "\"{text}\": \"{host}\" is neither an IP address nor a valid host name"
        ));
    }
    text.parse::<Authority>()
        .map_err(|e| format!("\"{text}\": {e}"))
}

pub(super) fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn route(
    check: &mut Checker<'_>,
    raw: &RawRoute,
    clusters: &[ClusterConfig],
    limits: &Limits,
) -> Option<RouteConfig> {
    let name = raw.name.get_ref();
    // The target: a cluster, weighted backends, or a handler plugin; exactly one.
    let backends = raw
        .backends
        .as_ref()
        .map(|b| super::routing::backends(check, name, b, clusters));
    let target = match (&raw.cluster, &raw.handler) {
        _ if backends.is_some() && (raw.cluster.is_some() || raw.handler.is_some()) => {
            check.error(
                &raw.name,
                format!("route \"{name}\" names backends and a cluster or handler; give one"),
            );
            None
        }
        _ if backends.is_some() => backends.flatten().map(RouteTarget::Backends),
        (Some(cluster), None) => {
            let index = clusters.iter().position(|c| &c.name == cluster.get_ref());
            if index.is_none() {
                let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                let message = format!(
                    "route \"{name}\" names cluster \"{}\", which is not defined (defined: {})",
                    cluster.get_ref(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
                check.error(cluster, message);
            }
            index.map(|index| {
                RouteTarget::Cluster(ClusterRef {
                    name: cluster.get_ref().clone(),
                    index,
                })
            })
        }
        (None, Some(handler)) if handler.get_ref().is_empty() => {
            check.error(
                handler,
                format!("route \"{name}\": handler must not be empty"),
            );
            None
        }
        (None, Some(handler)) => Some(RouteTarget::Handler(handler.get_ref().clone())),
        (Some(_), Some(handler)) => {
            check.error(
                handler,
                format!("route \"{name}\" names both a cluster and a handler; give one"),
            );
            None
        }
        (None, None) => {
            check.error(
                &raw.name,
                format!("route \"{name}\" needs a cluster (or backends, or a handler plugin)"),
            );
            None
        }
    };

    let host = raw.host.as_ref().and_then(|h| {
        let normalized = h.get_ref().trim_end_matches('.').to_ascii_lowercase();
        let bare = normalized.strip_prefix("*.").unwrap_or(&normalized);
        if bare.contains(':') {
            check.error(
                h,
                format!(
                    "route \"{name}\": host \"{}\" must not include a port",
                    h.get_ref()
                ),
            );
            None
        } else if !is_dns_name(bare) {
            check.error(
                h,
                format!(
                    "route \"{name}\": \"{}\" is not a valid host name",
                    h.get_ref()
                ),
            );
            None
        } else {
            Some(normalized)
        }
    });

    let path_prefix = match &raw.path_prefix {
        Some(p) if !p.get_ref().starts_with('/') => {
            check.error(
                p,
                format!(
                    "route \"{name}\": path_prefix \"{}\" must start with \"/\"",
                    p.get_ref()
                ),
            );
            "/".to_owned()
        }
        Some(p) => p.get_ref().clone(),
        None => "/".to_owned(),
    };

    let path_exact = raw.path.as_ref().and_then(|p| {
        if p.get_ref().starts_with('/') {
            Some(p.get_ref().clone())
        } else {
            check.error(
                p,
                format!(
                    "route \"{name}\": path \"{}\" must start with \"/\"",
                    p.get_ref()
                ),
            );
            None
        }
    });
    let path_regex =
        raw.path_regex
            .as_ref()
            .and_then(|p| match super::routing::pattern(p.get_ref()) {
                Ok(pattern) => Some(pattern),
                Err(why) => {
                    check.error(
                        p,
                        format!("route \"{name}\": path_regex {:?}: {why}", p.get_ref()),
                    );
                    None
                }
            });
    let given = [
        raw.path_prefix.is_some(),
        raw.path.is_some(),
        raw.path_regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        check.error(
            &raw.name,
            format!("route \"{name}\": give one of path_prefix, path and path_regex"),
        );
    }
    let headers = super::routing::conditions(check, name, "headers", raw.headers.as_ref());
    let query = super::routing::conditions(check, name, "query", raw.query.as_ref());
    let split_by = raw
        .split_by
        .as_ref()
        .and_then(|s| super::routing::split_by(check, name, s));
    if let Some(s) = &raw.split_by
        && raw.backends.is_none()
    {
        check.error(s, format!("route \"{name}\": split_by needs backends"));
    }
    let mirror = raw
        .mirror
        .as_ref()
        .and_then(|m| super::routing::mirror(check, name, m, clusters));

    let methods =
        raw.methods.as_ref().map(|list| {
            let mut methods = Vec::new();
            for m in list {
                let text = m.get_ref();
                let standard = [
                    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                ];
                if text.is_empty() || Method::from_bytes(text.as_bytes()).is_err() {
                    check.error(
                        m,
                        format!("route \"{name}\": \"{text}\" is not an HTTP method"),
                    );
                } else if standard.contains(&text.to_ascii_uppercase().as_str())
                    && !standard.contains(&text.as_str())
                {
                    check.error(m, format!(
                    "route \"{name}\": methods are case-sensitive; \"{text}\" should be \"{}\"",
                    text.to_ascii_uppercase()
                ));
                } else if let Ok(method) = Method::from_bytes(text.as_bytes()) {
                    methods.push(method);
                }
            }
            methods
        });

    let plugins = raw.plugins.as_ref().map(|names| {
        for n in names.iter().filter(|n| n.get_ref().is_empty()) {
            check.error(
                n,
                format!("route \"{name}\": plugin names must not be empty"),
            );
        }
        names.iter().map(|n| n.get_ref().clone()).collect()
    });

    target.map(|target| RouteConfig {
        name: name.clone(),
        host,
        path_prefix,
        path_exact,
        path_regex,
        headers,
        query,
        methods,
        target,
        plugins,
        retry_non_idempotent: raw.retry_non_idempotent.unwrap_or(false),
        access_log: raw.access_log.unwrap_or(true),
        request_body_bytes: match &raw.request_body_bytes {
            Some(n) if *n.get_ref() == 0 => {
                check.error(
                    n,
                    format!("route \"{name}\": request_body_bytes must be at least 1"),
                );
                limits.request_body_bytes
            }
            Some(n) => Some(*n.get_ref()),
            None => limits.request_body_bytes,
        },
        compression: raw
            .compression
            .as_ref()
            .map(|c| super::compression::compression(check, name, c)),
        cache: raw
            .cache
            .as_ref()
            .map(|c| super::cache::cache(check, name, c)),
        split_by,
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse;

    /// Parses `text` and renders the outcome as `ok` or one `line:col: message` per problem.
    fn check(text: &str) -> String {
        match parse(Path::new("weir.toml"), text) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e
                .diagnostics
                .iter()
                .map(|d| {
                    format!(
                        "{}:{}: {}",
                        d.line.unwrap_or(0),
                        d.column.unwrap_or(0),
                        d.message
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[[clusters]]
name = "app"
endpoints = ["127.0.0.1:9001", "backend.internal:80", "[::1]:9003"]
"#;

    #[test]
    fn validation_table() {
        let cases: &[(&str, &str)] = &[
            ("", "ok"),
            (
                "[[routes]]\nname = \"api\"\nhost = \"API.Example.com\"\npath_prefix = \"/api\"\nmethods = [\"GET\"]\ncluster = \"app\"",
                "ok",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"nope\"",
                "10:11: route \"r\" names cluster \"nope\", which is not defined (defined: app)",
            ),
            (
                "[[clusters]]\nname = \"empty\"\nendpoints = []",
                "10:13: cluster \"empty\" has no endpoints",
            ),
            (
                "[[clusters]]\nname = \"app\"\nendpoints = [\"127.0.0.1:1\"]",
                "9:8: duplicate cluster name \"app\" (first defined on line 5)",
            ),
            (
                "[[clusters]]\nname = \"b\"\nendpoints = [\"127.0.0.1\", \"ftp://x:1\", \"bad_host:80\", \"h:0\", \"x:1/p\"]",
                "10:14: cluster \"b\": endpoint \"127.0.0.1\" has no port; write it as host:port\n\
              10:27: cluster \"b\": endpoint \"ftp://x:1\" has a scheme weir does not speak; write it as host:port, http://host:port or https://host:port\n\
              10:40: cluster \"b\": endpoint \"bad_host:80\": \"bad_host\" is neither an IP address nor a valid host name\n\
              10:55: cluster \"b\": endpoint \"h:0\" has an invalid port \"0\" (expected 1-65535)\n\
              10:62: cluster \"b\": endpoint \"x:1/p\" has a path; an endpoint is host:port (routes and plugins rewrite paths)",
            ),
            (
                "[[clusters]]\nname = \"t\"\nendpoints = [\"https://a:1\", \"b:2\"]",
                "10:29: cluster \"t\": endpoints mix https:// and plain ones; TLS is the cluster's, so give them all one scheme",
            ),
            (
                "[[clusters]]\nname = \"t\"\nendpoints = [\"a:1\"]\nprotocol = \"h2\"",
                "11:12: cluster \"t\": protocol \"h2\" is HTTP/2 over TLS, and the cluster has no TLS; use \"h2c\" for cleartext HTTP/2, or https:// endpoints",
            ),
            (
                "[[clusters]]\nname = \"t\"\nendpoints = [\"https://a:1\"]\nprotocol = \"h3\"\ntls = { verify = false, ca = \"ca.pem\" }",
                "11:12: cluster \"t\": protocol \"h3\" is not one of \"http1\", \"h2\", \"h2c\", \"auto\"\n\
              12:7: cluster \"t\": tls.verify = false accepts any certificate, so tls.ca and tls.pinned would be ignored; remove one or the other",
            ),
            (
                "[[clusters]]\nname = \"t\"\nendpoints = [\"http://a:1\"]\ntls = { sni = \"a\" }",
                "11:7: cluster \"t\" has a tls table and http:// endpoints; write them as https:// or host:port",
            ),
            (
                "[[routes]]\nname = \"r\"\npath_prefix = \"api\"\nmethods = [\"get\", \"\"]\ncluster = \"app\"",
                "10:15: route \"r\": path_prefix \"api\" must start with \"/\"\n\
              11:12: route \"r\": methods are case-sensitive; \"get\" should be \"GET\"\n\
              11:19: route \"r\": \"\" is not an HTTP method",
            ),
            (
                "[[routes]]\nname = \"r\"\nhost = \"a.b:80\"\ncluster = \"app\"",
                "10:8: route \"r\": host \"a.b:80\" must not include a port",
            ),
            (
                "[admin]\naddress = \"localhost:9901\"",
                "9:11: admin address \"localhost:9901\" is not an IP address and port, like \"127.0.0.1:8080\"",
            ),
            (
                "[[listeners]]\naddress = \"127.0.0.1:8080\"",
                "9:11: listener address 127.0.0.1:8080 is listed twice",
            ),
            (
                "[[listeners]]\naddress = \"127.0.0.1:8443\"\ntls = { certificates = [], min_version = \"1.1\" }\nredirect_to_https = {}",
                "10:24: listener tls: certificates is empty; give at least one { cert, key }\n\
              10:42: listener tls: min_version \"1.1\" is not supported; use \"1.2\" or \"1.3\"\n\
              11:21: redirect_to_https is for a plain listener; this one has tls",
            ),
            (
                "[server]\nupgrade_idle_timeout = \"0s\"\npath_normalization = { encoded_slashes = \"drop\" }\nidentity_headers = [\"x consumer\"]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1\", \"10.0.0.0/33\", \"proxy.internal\"]",
                "0:0: server.upgrade_idle_timeout must be greater than zero\n\
              10:42: server.path_normalization.encoded_slashes \"drop\" is not one of \"reject\", \"decode\", \"keep\"\n\
              11:21: server.identity_headers: \"x consumer\" is not a header name\n\
              12:46: server.trusted_proxies: \"10.0.0.0/33\" is not an address or a CIDR range like \"10.0.0.0/8\"\n\
              12:61: server.trusted_proxies: \"proxy.internal\" is not an address or a CIDR range like \"10.0.0.0/8\"",
            ),
            (
                "[server]\nidle_timeout = \"0s\"\nheader_read_timeout = \"0ms\"",
                "0:0: server.idle_timeout must be greater than zero\n\
              0:0: server.header_read_timeout must be greater than zero",
            ),
            (
                "[server.limits]\nhead_bytes = 100\nheaders = 0\nrequest_body_bytes = 0\nbody_read_timeout = \"0s\"\nh2_max_streams = 0",
                "0:0: server.limits.body_read_timeout must be greater than zero\n\
              9:14: server.limits.head_bytes must be at least 8192\n\
              10:11: server.limits.headers must be at least 1\n\
              11:22: server.limits.request_body_bytes must be at least 1\n\
              13:18: server.limits.h2_max_streams must be at least 1",
            ),
            (
                "[tracing]\nendpoint = \"https://collector\"\nprotocol = \"grpc\"\nsample = -1.0",
                "9:12: tracing.endpoint \"https://collector\" is not an http:// URL (an OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\")\n\
              10:12: tracing.protocol must be \"http/protobuf\" or \"http/json\", not \"grpc\"\n\
              11:10: tracing.sample must be between 0 and 1",
            ),
            (
                "[server]\nmax_connections = 0",
                "9:19: server.max_connections must be at least 1",
            ),
            (
                "[access_log]\npath = \"\"\nformat = \"xml\"\nsample = 1.5\nqueue = 0",
                "9:8: access_log.path must be a file, \"stdout\" or \"stderr\"\n\
              10:10: access_log.format must be \"json\" or \"text\", not \"xml\"\n\
              11:10: access_log.sample must be between 0 and 1\n\
              12:9: access_log.queue must be at least 1",
            ),
            (
                "[access_log]\npath = \"stderr\"\nfields = [\"status\", \"referer\", \"status\"]",
                "10:21: access_log.fields: \"referer\" is not one of time, request_id, trace_id, client, method, host, path, protocol, status, bytes_in, bytes_out, duration, upstream_duration, route, cluster, endpoint, attempts, plugin, incomplete, generation, tls_version, tls_sni, tls_client, or request_header:NAME\n\
              10:32: access_log.fields names \"status\" twice",
            ),
            (
                "[access_log]\npath = \"stderr\"\nfields = []",
                "10:10: access_log.fields must name at least one field (leave it out for all of them)",
            ),
            (
                "[access_log]\npath = \"stderr\"\nformat = \"text\"\nfields = [\"time\", \"client\", \"status\"]",
                "ok",
            ),
            (
                "[access_log]\npath = \"stderr\"\nfields = [\"request_header:Authorization\", \"request_header:bad name\", \"request_header:user-agent\", \"request_header:User-Agent\"]",
                "10:11: access_log.fields: \"request_header:Authorization\" would write credentials into the log\n\
              10:43: access_log.fields: \"bad name\" in \"request_header:bad name\" is not a header name\n\
              10:99: access_log.fields names \"request_header:User-Agent\" twice",
            ),
            // Credentials are refused however their header is spelled: in any case, with `_`
            // for `-` (read as `-` by servers that hand headers on as CGI variables), or with
            // a credential word inside a longer name.
            (
                "[access_log]\npath = \"stderr\"\nfields = [\"request_header:COOKIE\", \"request_header:Proxy-Authorization\", \"request_header:x_api_key\", \"request_header:X-Auth-Token\", \"request_header:x-forwarded-authorization\", \"request_header:apikey\", \"request_header:cookie2\", \"request_header:x-client-secret\", \"request_header:user_agent\"]",
                "10:11: access_log.fields: \"request_header:COOKIE\" would write credentials into the log\n\
              10:36: access_log.fields: \"request_header:Proxy-Authorization\" would write credentials into the log\n\
              10:74: access_log.fields: \"request_header:x_api_key\" would write credentials into the log\n\
              10:102: access_log.fields: \"request_header:X-Auth-Token\" would write credentials into the log\n\
              10:133: access_log.fields: \"request_header:x-forwarded-authorization\" would write credentials into the log\n\
              10:177: access_log.fields: \"request_header:apikey\" would write credentials into the log\n\
              10:202: access_log.fields: \"request_header:cookie2\" would write credentials into the log\n\
              10:228: access_log.fields: \"request_header:x-client-secret\" would write credentials into the log",
            ),
            (
                "[access_log]\npath = \"stderr\"\nfields = [\"status\", \"request_header:user-agent\", \"request_header:x-forwarded-for\"]",
                "ok",
            ),
            (
                "[[routes]]\nname = \"z\"\ncluster = \"app\"\ncompression = { algorithms = [\"gzip\", \"lz4\"] }\n[[routes]]\nname = \"y\"\ncluster = \"app\"\ncompression = { algorithms = [] }",
                "11:39: route \"z\": compression algorithm \"lz4\" is not one of zstd, br, gzip\n\
              15:15: route \"y\": compression.algorithms is empty; remove compression to turn it off",
            ),
            (
                "[[routes]]\nname = \"z\"\ncluster = \"app\"\ncompression = { min_bytes = 256, types = [\"text/*\", \"application/json\"] }",
                "ok",
            ),
            (
                "[kv]\nbackend = \"mongo\"",
                "9:11: kv.backend must be \"memory\" or \"redis\", not \"mongo\"",
            ),
            (
                "[kv]\nbackend = \"redis\"\nurl = \"http://:hunter2@cache:6379\"\nconnections = 0",
                "10:7: kv.url \"http://…@cache:6379\" must start with redis:// or rediss:// (TLS)\n\
              11:15: kv.connections must be between 1 and 64",
            ),
            (
                "[kv]\nbackend = \"redis\"\nurl = \"redis://a:1\"\ncluster = [\"redis://a:1\", \"http://b:2\"]",
                "10:7: kv: give url (one server) or cluster (seed nodes), not both\n\
              11:27: kv.cluster \"http://b:2\" must start with redis:// or rediss:// (TLS)",
            ),
            (
                "[kv]\nbackend = \"redis\"\ncluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]",
                "ok",
            ),
            (
                "[kv]\nurl = \"redis://cache\"",
                "9:7: kv.url is for backend = \"redis\"; the memory store has no address",
            ),
            (
                "[kv]\nbackend = \"redis\"\nurl = \"redis://:pw@127.0.0.1:6379/2\"\ntimeout = \"20ms\"\nbreaker = { consecutive_failures = 3, open_for = \"2s\" }",
                "ok",
            ),
            (
                "[access_log]\npath = \"stderr\"\nformat = \"text\"\nsample = 0.25\n[metrics]\nenabled = false\n[[routes]]\nname = \"quiet\"\ncluster = \"app\"\naccess_log = false",
                "ok",
            ),
            (
                "[[clusters]]\nname = \"w\"\nendpoints = [{ address = \"127.0.0.1:1\", weight = 0 }]",
                "10:14: cluster \"w\": endpoint 127.0.0.1:1 has weight 0; weights are 1 to 1000",
            ),
            (
                "[[clusters]]\nname = \"b\"\nendpoints = [{ address = \"127.0.0.1:1\", backup = true }]",
                "10:13: cluster \"b\" has only backup endpoints; at least one must be primary",
            ),
            (
                "[[clusters]]\nname = \"l\"\nendpoints = [\"127.0.0.1:1\"]\nlb = \"fastest\"",
                "11:6: cluster \"l\": lb \"fastest\" is not one of \"round_robin\", \"least_request\", \"random\", \"consistent_hash\", \"first\"",
            ),
            (
                "[[clusters]]\nname = \"h\"\nendpoints = [\"127.0.0.1:1\"]\nlb = \"consistent_hash\"\nhash_key = \"body\"",
                "12:12: cluster \"h\": hash_key \"body\" is not one of \"client_address\", \"path\", \"header:NAME\", \"cookie:NAME\"",
            ),
            (
                "[[clusters]]\nname = \"k\"\nendpoints = [\"127.0.0.1:1\"]\nhash_key = \"path\"",
                "11:12: cluster \"k\": hash_key applies only to lb = \"consistent_hash\"",
            ),
            (
                "[plugins]\nmemory_limit_mb = 300",
                "9:19: plugins.memory_limit_mb = 300: must be between 1 and 256",
            ),
            (
                "[plugins]\nmax_uses = 0",
                "9:12: plugins.max_uses must be at least 1",
            ),
            (
                "[server]\ndrain_timeout = \"soon\"",
                "9:17: expected a duration like \"5s\" or \"250ms\": expected number at 0",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\nretries = 3",
                "11:1: unknown field `retries`, expected one of `name`, `host`, `path_prefix`, `path`, `path_regex`, `methods`, `headers`, `query`, `cluster`, `backends`, `split_by`, `mirror`, `handler`, `plugins`, `retry_non_idempotent`, `access_log`, `request_body_bytes`, `compression`, `cache`",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\nhandler = \"agg\"",
                "11:11: route \"r\" names both a cluster and a handler; give one",
            ),
            (
                "[[routes]]\nname = \"r\"",
                "9:8: route \"r\" needs a cluster (or backends, or a handler plugin)",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\n[[routes]]\nname = \"r\"\ncluster = \"app\"",
                "12:8: duplicate route name \"r\" (first defined on line 9)",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\npath_regex = \"/admin)|(?:/.*\"",
                "11:14: route \"r\": path_regex \"/admin)|(?:/.*\": unopened group",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\npath = \"/a\"\npath_prefix = \"/b\"\npath_regex = \"(\"",
                "9:8: route \"r\": give one of path_prefix, path and path_regex\n13:14: route \"r\": path_regex \"(\": unclosed group",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\nheaders = [{ name = \"v\", exact = \"2\", present = true }, { name = \"bad name\", present = true }]\nquery = [{ name = \"q\", regex = \"a{99999}\" }]",
                "11:12: route \"r\": headers condition on v needs exactly one of exact, regex or present\n11:57: route \"r\": headers condition name \"bad name\" is not valid\n12:10: route \"r\": query condition on q: regex \"a{99999}\": compiles to more than 1024 KiB",
            ),
            (
                "[[routes]]\nname = \"r\"\nbackends = [{ cluster = \"app\", weight = 0 }]\nsplit_by = \"body\"\nmirror = { cluster = \"nope\", percent = 101 }",
                "10:12: route \"r\": every backend has weight 0; at least one must take traffic\n11:12: route \"r\": split_by \"body\" is not one of client_address, header:NAME, cookie:NAME\n12:10: route \"r\": mirror.percent must be between 0 and 100\n12:22: route \"r\": mirror names cluster \"nope\", which is not defined",
            ),
            (
                "[[routes]]\nname = \"r\"\ncluster = \"app\"\nsplit_by = \"client_address\"\nbackends = [{ cluster = \"app\" }, { cluster = \"gone\", weight = 5 }]",
                "9:8: route \"r\" names backends and a cluster or handler; give one\n12:46: route \"r\": backends names cluster \"gone\", which is not defined",
            ),
            // Session 47: settings that were accepted and then ignored, or that widened
            // what they named.
            (
                "[server]\ntrusted_proxies = [\"10.1.0.0/8\", \"10.1.0.0/16\", \"::1\"]",
                "9:20: server.trusted_proxies: \"10.1.0.0/8\" has bits set past its /8 prefix; write the range as \"10.0.0.0/8\" (or the address alone)",
            ),
            (
                "[[clusters]]\nname = \"t\"\nendpoints = [\"a:1\"]\nrequest_timeout = \"0s\"\nsticky = { ttl = \"500ms\" }",
                "9:8: cluster \"t\": request_timeout must be greater than zero\n12:10: cluster \"t\": sticky ttl must be at least 1s",
            ),
            (
                "[[clusters]]\nname = \"t\"\nendpoints = [\"http://a:1\", \"b:2\"]\n[[clusters]]\nname = \"u\"\nendpoints = [\"https://a:1\", \"http://b:2\"]",
                "13:29: cluster \"u\": endpoints mix https:// and plain ones; TLS is the cluster's, so give them all one scheme",
            ),
            (
                "[kv]\nbackend = \"memory\"\nprefix = \"x:\"\ntimeout = \"1s\"\nconnections = 4",
                "8:1: kv.prefix is for backend = \"redis\"; the memory store has no such setting\n8:1: kv.timeout is for backend = \"redis\"; the memory store has no such setting\n8:1: kv.connections is for backend = \"redis\"; the memory store has no such setting",
            ),
            (
                "[[routes]]\nname = \"z\"\ncluster = \"app\"\ncompression = { types = [\"json\", \"*/*\", \"text/*\", \"Application/JSON\", \"image/\"] }\n[[routes]]\nname = \"y\"\ncluster = \"app\"\ncompression = { types = [] }",
                "11:15: route \"z\": compression type \"json\" is not a media type like \"application/json\" or a range like \"text/*\"\n11:15: route \"z\": compression type \"*/*\" is not a media type like \"application/json\" or a range like \"text/*\"\n11:15: route \"z\": compression type \"image/\" is not a media type like \"application/json\" or a range like \"text/*\"\n15:15: route \"y\": compression.types is empty; remove compression to turn it off",
            ),
        ];
        for (extra, expect) in cases {
            let text = format!("{BASE}\n{extra}\n");
            assert_eq!(check(&text), *expect, "config:\n{text}");
        }
    }

    #[test]
    fn no_listener_is_an_error() {
        assert_eq!(
            check(""),
            "0:0: no [[listeners]]: weir needs at least one address to serve"
        );
    }

    #[test]
    fn defaults_and_relative_plugin_dir() {
        let config = parse(Path::new("/etc/weir/weir.toml"), BASE).expect("valid");
        assert_eq!(config.plugins.dir, Path::new("/etc/weir/plugins"));
        assert!(config.plugins.watch);
        assert_eq!(config.plugins.limits, super::PluginLimits::default());
        assert_eq!(
            config.clusters[0].connect_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(
            config.clusters[0].endpoints[1].authority.as_str(),
            "backend.internal:80"
        );
    }

    /// What one plugin call may hand weir follows `[server.limits]`, and is part of the
    /// limits the plugins were loaded under, so changing those limits reloads them.
    #[test]
    fn plugin_output_room_follows_the_server_limits() {
        let default = parse(Path::new("/etc/weir/weir.toml"), BASE).expect("valid");
        // Two lists of 100 changes of 8 KiB (each with its 64 bytes of place), an 8 KiB path.
        assert_eq!(
            default.plugins.limits.head_output_bytes,
            2 * 100 * (8192 + 64) + 8192
        );
        let text = format!("{BASE}\n[server.limits]\nheaders = 10\nheader_bytes = 1000\n");
        let small = parse(Path::new("/etc/weir/weir.toml"), &text).expect("valid");
        assert_eq!(
            small.plugins.limits.head_output_bytes,
            2 * 10 * (1000 + 64) + 8192
        );
        assert_ne!(small.plugins.limits, default.plugins.limits);
    }
}
