//! Prometheus metrics: one registry for the process, the handles the data path updates
//! (resolved once per route, cluster and plugin when they are built, never looked up by
//! request data), the gauges read from the current generation at scrape time, and the text
//! exposition `GET /metrics` serves.
//!
//! Labels come only from configured names — routes, clusters, endpoints, plugins, listeners
//! — and from small fixed sets (the method among nine, the status class, the hook, the kind
//! of failure), so the number of series is bounded by the config, whatever clients send.
//!
//! The registry is process-wide (as Prometheus clients are): counters keep counting across
//! reloads, and a route or plugin that a reload keeps keeps its series.
//!
//! The metrics plugins declare themselves (`weir:plugin/metrics`) are bounded differently,
//! their label values coming from the plugin: `plugin.rs`.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};

use http::Method;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::generation::Generation;

mod plugin;
mod tick;

pub use plugin::PluginSample;
pub(crate) use plugin::{
    Kind as PluginMetricKind, PluginMetric, PluginMetricSet, Spec as PluginMetricSpec,
    Update as PluginMetricUpdate, UpdateError as PluginMetricError,
};
pub use tick::Tick;

/// Buckets for request and upstream durations, in seconds: 0.5 ms to 30 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for plugin hook calls, in seconds: 1 µs to 1 s (a hook's deadline is in ms).
const HOOK_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
];

/// The methods counted by name; any other is `OTHER`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
const METHOD_SLOTS: usize = METHODS.len() + 1;
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The route label of requests that matched no route.
pub const NO_ROUTE: &str = "-";

/// Every metric weir exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    /// Requests between their head arriving and their response body ending.
    pub in_flight: IntGauge,
    connections: IntGaugeVec,
    h2_floods: IntCounterVec,
    upstream_duration: HistogramVec,
    retries: IntCounterVec,
    overloaded: IntCounterVec,
    ejections: IntCounterVec,
    endpoint_healthy: IntGaugeVec,
    endpoint_in_flight: IntGaugeVec,
    upstream_connections: IntGaugeVec,
    upstream_pending: IntGaugeVec,
    hook_duration: HistogramVec,
    plugin_failures: IntCounterVec,
    local_replies: IntCounterVec,
    instances: IntGaugeVec,
    instances_created: IntCounterVec,
    instances_retired: IntCounterVec,
    breaker_open: IntGaugeVec,
    /// Linear memory held by all plugin instances (`[plugins] memory_budget_mb` bounds it).
    pub(crate) plugin_memory: IntGauge,
    plugin_loads: IntCounterVec,
    plugin_serving: IntGaugeVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    kv_keys: IntGaugeVec,
    kv_bytes: IntGaugeVec,
    /// Redis `kv` calls that failed, by `reason`: `timeout`, `error`, `breaker_open`.
    pub(crate) kv_failures: IntCounterVec,
    /// Whether the Redis `kv` store's circuit breaker is open.
    pub(crate) kv_breaker_open: IntGauge,
    /// Bytes of compressed responses, by route, coding and side (`plain` in, `coded` out):
    /// their ratio is what compression saves.
    pub(crate) compression_bytes: IntCounterVec,
    cache_lookups: IntCounterVec,
    mirror_requests: IntCounterVec,
    cache_bytes: IntGaugeVec,
    cache_entries: IntGaugeVec,
    cache_evictions: IntCounterVec,
    pub(crate) metric_errors: IntCounterVec,
    /// The metrics plugins declared.
    declared: plugin::Declared,
    /// Access log records written, and dropped because the writer fell behind.
    pub access_log_written: IntCounter,
    /// See `access_log_written`.
    pub access_log_dropped: IntCounter,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

/// Registers a metric whose options are constants of this file: a failure is a bug here.
fn register<C: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<C>) -> C {
    let metric = made.expect("metric options are valid constants");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    let mut own = OWN_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    own.extend(metric.desc().iter().map(|desc| desc.fq_name.clone()));
    metric
}

/// The names of weir's own metrics, as they are registered: no plugin's metric may take one.
static OWN_NAMES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether `name`, or a histogram's sample of it, is one of weir's own metrics.
fn own_name_taken(name: &str) -> bool {
    let own = OWN_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    own.contains(name)
        || ["_count", "_sum", "_bucket"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix).is_some_and(|n| own.contains(n)))
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let single =
            |name: &str, help: &str| -> IntGauge { register(&r, IntGauge::new(name, help)) };
        let single_counter =
            |name: &str, help: &str| -> IntCounter { register(&r, IntCounter::new(name, help)) };
        Metrics {
            requests: counter(
                &r,
                "weir_requests_total",
                "Requests answered, by route, method and status class.",
                &["route", "method", "class"],
            ),
            request_duration: histogram(
                &r,
                "weir_request_duration_seconds",
                "Time from a request's head arriving to its response body's end.",
                &["route"],
                REQUEST_BUCKETS,
            ),
            request_bytes: counter(
                &r,
                "weir_request_bytes_total",
                "Request body bytes received from clients.",
                &["route"],
            ),
            response_bytes: counter(
                &r,
                "weir_response_bytes_total",
                "Response body bytes sent to clients.",
                &["route"],
            ),
            in_flight: single(
                "weir_requests_in_flight",
                "Requests whose response has not ended.",
            ),
            connections: gauge(
                &r,
                "weir_downstream_connections",
                "Open client connections, by listener address.",
                &["listener"],
            ),
            h2_floods: counter(
                &r,
                "weir_downstream_h2_floods_total",
                "Client HTTP/2 connections closed for a control-frame flood, by listener address and the frame type over its budget.",
                &["listener", "frame"],
            ),
            upstream_duration: histogram(
                &r,
                "weir_upstream_duration_seconds",
                "Time from a request's first attempt to the upstream response head, retries included.",
                &["cluster"],
                REQUEST_BUCKETS,
            ),
            retries: counter(
                &r,
                "weir_cluster_retries_total",
                "Attempts retried on another endpoint.",
                &["cluster"],
            ),
            overloaded: counter(
                &r,
                "weir_cluster_overloaded_total",
                "Requests refused by the cluster's circuit breaker (max_requests).",
                &["cluster"],
            ),
            ejections: counter(
                &r,
                "weir_endpoint_ejections_total",
                "Times outlier detection ejected the endpoint.",
                &["cluster", "endpoint"],
            ),
            endpoint_healthy: gauge(
                &r,
                "weir_endpoint_healthy",
                "1 when the endpoint takes requests (healthy and not ejected), else 0.",
                &["cluster", "endpoint"],
            ),
            endpoint_in_flight: gauge(
                &r,
                "weir_endpoint_requests_in_flight",
                "Requests sent to the endpoint and waiting for its response head.",
                &["cluster", "endpoint"],
            ),
            upstream_connections: gauge(
                &r,
                "weir_cluster_connections_open",
                "Open upstream connections.",
                &["cluster"],
            ),
            upstream_pending: gauge(
                &r,
                "weir_cluster_requests_pending",
                "Requests waiting for an upstream connection.",
                &["cluster"],
            ),
            hook_duration: histogram(
                &r,
                "weir_plugin_hook_duration_seconds",
                "Plugin hook calls and their duration; _count is the number of calls.",
                &["plugin", "hook"],
                HOOK_BUCKETS,
            ),
            plugin_failures: counter(
                &r,
                "weir_plugin_failures_total",
                "Failed plugin calls by kind: trap, deadline, memory, invalid_output, instantiate, overloaded, breaker_open.",
                &["plugin", "kind"],
            ),
            local_replies: counter(
                &r,
                "weir_plugin_local_replies_total",
                "Requests a plugin answered itself instead of passing them on.",
                &["plugin"],
            ),
            instances: gauge(
                &r,
                "weir_plugin_instances",
                "Live instances of the plugin (idle in its pool or in a call).",
                &["plugin"],
            ),
            instances_created: counter(
                &r,
                "weir_plugin_instances_created_total",
                "Instances of the plugin created.",
                &["plugin"],
            ),
            instances_retired: counter(
                &r,
                "weir_plugin_instances_retired_total",
                "Instances of the plugin dropped after a call that did not fail, by reason: max_uses (it served its share), memory_growth (its memory grew three quarters of the way from its size after its first call to its cap) or held_resources (a reused handler kept something of its request).",
                &["plugin", "reason"],
            ),
            breaker_open: gauge(
                &r,
                "weir_plugin_breaker_open",
                "Hooks of the plugin whose breaker is open (not called until a probe succeeds).",
                &["plugin"],
            ),
            plugin_memory: register(
                &r,
                IntGauge::new(
                    "weir_plugin_memory_bytes",
                    "Linear memory held by all plugin instances.",
                ),
            ),
            plugin_loads: counter(
                &r,
                "weir_plugin_loads_total",
                "Plugin files loaded (accepted) or refused, at startup and on reload.",
                &["plugin", "result"],
            ),
            plugin_serving: gauge(
                &r,
                "weir_plugin_serving",
                "1 when a version of the plugin is serving, else 0.",
                &["plugin"],
            ),
            reloads: counter(
                &r,
                "weir_reloads_total",
                "Rescans of the config and the plugin folder, applied or with errors.",
                &["result"],
            ),
            generation: single("weir_generation", "The serving generation's number."),
            kv_keys: gauge(
                &r,
                "weir_kv_keys",
                "Keys in the plugin's kv namespace (memory backend).",
                &["plugin"],
            ),
            kv_bytes: gauge(
                &r,
                "weir_kv_bytes",
                "Bytes of keys and values in the plugin's kv namespace (memory backend).",
                &["plugin"],
            ),
            kv_failures: counter(
                &r,
                "weir_kv_failures_total",
                "Calls to the Redis kv store that failed: timeout, error, or breaker_open (failed at once).",
                &["reason"],
            ),
            compression_bytes: counter(
                &r,
                "weir_compression_bytes_total",
                "Bytes of the responses weir compressed, by route, coding and side: plain (before) and coded (sent).",
                &["route", "coding", "side"],
            ),
            cache_lookups: counter(
                &r,
                "weir_cache_lookups_total",
                "Requests on routes with a cache, by route and result: hit, miss, stale (served stale), revalidated (refreshed by a 304), collapsed (answered by another request's fetch), bypass (not looked up: a method, Range or the request's own directives).",
                &["route", "result"],
            ),
            mirror_requests: counter(
                &r,
                "weir_mirror_requests_total",
                "Copies of a route's requests sent to its mirror cluster, by route and result: sent, failed (no answer or a 5xx), skipped (a body too large or of unknown length).",
                &["route", "result"],
            ),
            cache_bytes: gauge(
                &r,
                "weir_cache_stored_bytes",
                "Bytes a route's cache holds, heads and bodies.",
                &["route"],
            ),
            cache_entries: gauge(
                &r,
                "weir_cache_entries",
                "Responses a route's cache holds (each variant counts).",
                &["route"],
            ),
            cache_evictions: counter(
                &r,
                "weir_cache_evictions_total",
                "Responses a route's cache dropped for room (expired and purged ones are not counted).",
                &["route"],
            ),
            kv_breaker_open: single(
                "weir_kv_breaker_open",
                "1 while the Redis kv store's circuit breaker is open (calls fail at once).",
            ),
            access_log_written: single_counter(
                "weir_access_log_records_total",
                "Access log records written.",
            ),
            access_log_dropped: single_counter(
                "weir_access_log_dropped_total",
                "Access log records dropped because the writer fell behind.",
            ),
            metric_errors: counter(
                &r,
                "weir_plugin_metric_errors_total",
                "Updates of a plugin's own metrics weir could not apply as asked: an unknown handle or one of another kind (handle), label values not matching the declared names (labels), a value that is not finite (value), all ignored; a new series past the cap, counted in the _overflow series instead (overflow).",
                &["plugin", "error"],
            ),
            declared: plugin::Declared::default(),
            registry: r,
        }
    }

    /// The handles of route `route`.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            name: route.into(),
            requests: Box::new(std::array::from_fn(|_| OnceLock::new())),
            duration: self.request_duration.with_label_values(&[route]),
            request_bytes: self.request_bytes.with_label_values(&[route]),
            response_bytes: self.response_bytes.with_label_values(&[route]),
            compressed: std::array::from_fn(|_| OnceLock::new()),
            mirror: OnceLock::new(),
        }
    }

    /// The handles of route `route`'s cache.
    pub fn cache(&self, route: &str) -> CacheMetrics {
        CacheMetrics {
            lookups: std::array::from_fn(|i| {
                self.cache_lookups
                    .with_label_values(&[route, CacheLookup::ALL[i].label()])
            }),
            bytes: self.cache_bytes.with_label_values(&[route]),
            entries: self.cache_entries.with_label_values(&[route]),
            evictions: self.cache_evictions.with_label_values(&[route]),
        }
    }

    /// The handles of cluster `cluster` with endpoints `endpoints` (their authorities).
    pub fn cluster<'a>(
        &self,
        cluster: &str,
        endpoints: impl Iterator<Item = &'a str>,
    ) -> ClusterMetrics {
        ClusterMetrics {
            upstream_duration: self.upstream_duration.with_label_values(&[cluster]),
            retries: self.retries.with_label_values(&[cluster]),
            overloaded: self.overloaded.with_label_values(&[cluster]),
            ejections: endpoints
                .map(|e| self.ejections.with_label_values(&[cluster, e]))
                .collect(),
        }
    }

    /// The handles of plugin `plugin`.
    pub fn plugin(&self, plugin: &str) -> PluginMetrics {
        let hook = |hook: &str| self.hook_duration.with_label_values(&[plugin, hook]);
        PluginMetrics {
            on_request: hook("on-request"),
            on_response: hook("on-response"),
            on_request_body: hook("on-request-body"),
            on_response_body: hook("on-response-body"),
            local_replies: self.local_replies.with_label_values(&[plugin]),
            instances: self.instances(plugin),
            retired: self.retirements(plugin),
            declared: Arc::new(PluginMetricSet::new(plugin, &self.metric_errors)),
        }
    }

    /// The handles of handler `plugin`: its requests, as calls of the hook `handle`, and
    /// its failures, instances and breaker, as a filter's (its retirements are its pool's,
    /// [`Metrics::retirements`]).
    pub fn handler(&self, plugin: &str) -> HandlerMetrics {
        HandlerMetrics {
            handle: self.hook_duration.with_label_values(&[plugin, "handle"]),
            instances: self.instances(plugin),
        }
    }

    /// What filter or handler `plugin` counts of its calls' failures and its instances.
    fn instances(&self, plugin: &str) -> InstanceMetrics {
        let failed = |kind: FailureKind| {
            self.plugin_failures
                .with_label_values(&[plugin, kind.label()])
        };
        InstanceMetrics {
            failures: FailureKind::ALL.map(failed),
            live: self.instances.with_label_values(&[plugin]),
            created: self.instances_created.with_label_values(&[plugin]),
            breaker_open: self.breaker_open.with_label_values(&[plugin]),
        }
    }

    /// The counters of plugin `plugin`'s instances retired between calls.
    pub fn retirements(&self, plugin: &str) -> Retirements {
        let reason = |reason: &str| self.instances_retired.with_label_values(&[plugin, reason]);
        Retirements {
            used_up: reason("max_uses"),
            outgrown: reason("memory_growth"),
            held: reason("held_resources"),
        }
    }

    /// The open-connections gauge of the listener on `address`.
    pub fn listener(&self, address: &str) -> IntGauge {
        self.connections.with_label_values(&[address])
    }

    /// The flood counter of listener `address` for HTTP/2 frames of type `frame`.
    pub(crate) fn h2_flood(&self, address: &str, frame: &str) -> IntCounter {
        self.h2_floods.with_label_values(&[address, frame])
    }

    /// Counts one load of plugin `plugin`, accepted or refused.
    pub fn plugin_loaded(&self, plugin: &str, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.plugin_loads.with_label_values(&[plugin, result]).inc();
    }

    /// Counts one rescan, applied cleanly or with errors.
    pub fn reloaded(&self, clean: bool) {
        let result = if clean { "applied" } else { "errors" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The text exposition of every metric, with the gauges that are read from the serving
    /// generation (endpoint health, connections, plugins serving, kv) brought up to date.
    pub fn render(&self, generation: &Generation) -> String {
        self.refresh(generation);
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a metric family the encoder cannot write, which
        // the metric types above never produce.
        if let Err(e) = TextEncoder::new().encode(&self.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// weir's metrics and those plugins declared, sorted by name.
    fn gather(&self) -> Vec<MetricFamily> {
        let mut families = self.registry.gather();
        families.extend(self.declared.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }

    fn refresh(&self, generation: &Generation) {
        self.generation.set(generation.number as i64);
        for vec in [
            &self.endpoint_healthy,
            &self.endpoint_in_flight,
            &self.upstream_connections,
            &self.upstream_pending,
            &self.plugin_serving,
            &self.kv_keys,
            &self.kv_bytes,
        ] {
            // Series of clusters and plugins a reload removed disappear.
            vec.reset();
        }
        for cluster in &generation.clusters {
            let name = cluster.config.name.as_str();
            for (i, endpoint) in cluster.config.endpoints.iter().enumerate() {
                let labels = [name, endpoint.authority.as_str()];
                let up = cluster.endpoints.get(i).is_some_and(|s| s.is_healthy())
                    && cluster.endpoints.ejected_for(i).is_none();
                self.endpoint_healthy
                    .with_label_values(&labels)
                    .set(i64::from(up));
                let in_flight = cluster.endpoints.get(i).map_or(0, |s| s.in_flight());
                self.endpoint_in_flight
                    .with_label_values(&labels)
                    .set(in_flight as i64);
            }
            self.upstream_connections
                .with_label_values(&[name])
                .set(cluster.client.open_connections() as i64);
            self.upstream_pending
                .with_label_values(&[name])
                .set(cluster.client.pending() as i64);
        }
        for slot in &generation.plugins {
            self.plugin_serving
                .with_label_values(&[&slot.name])
                .set(i64::from(slot.serving.is_some()));
        }
        for (plugin, usage) in generation.kv_usage() {
            self.kv_keys
                .with_label_values(&[&plugin])
                .set(usage.keys as i64);
            self.kv_bytes
                .with_label_values(&[&plugin])
                .set(usage.bytes as i64);
        }
    }
}

/// Failed requests kept for the admin listener's `/errors` (and the dashboard).
const RECENT_ERRORS: usize = 50;

/// One failed request, as `/errors` lists it.
#[derive(Debug, Clone)]
pub struct RecentError {
    /// When it failed.
    pub time: std::time::SystemTime,
    /// The status the client got.
    pub status: u16,
    /// What failed.
    pub kind: crate::error::ErrorKind,
    /// The route, cluster and endpoint, as far as the request got.
    pub route: Option<String>,
    /// See `route`.
    pub cluster: Option<String>,
    /// See `route`.
    pub endpoint: Option<String>,
    /// The cause, outer to inner.
    pub cause: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// The plugin that failed, for a plugin failure.
    pub plugin: Option<String>,
}

/// The latest failed requests, newest last.
#[derive(Debug, Default)]
pub struct RecentErrors(std::sync::Mutex<std::collections::VecDeque<RecentError>>);

impl RecentErrors {
    /// Keeps `error`, forgetting the oldest beyond [`RECENT_ERRORS`].
    pub fn push(&self, error: RecentError) {
        if let Ok(mut list) = self.0.lock() {
            if list.len() == RECENT_ERRORS {
                list.pop_front();
            }
            list.push_back(error);
        }
    }

    /// The kept errors, newest first.
    pub fn list(&self) -> Vec<RecentError> {
        self.0
            .lock()
            .map(|list| list.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// The process's recent errors.
pub fn recent_errors() -> &'static RecentErrors {
    static ERRORS: LazyLock<RecentErrors> = LazyLock::new(RecentErrors::default);
    &ERRORS
}

/// A route's handles: its request counts (by method and status class, resolved on first
/// use), its duration histogram and byte counters.
#[derive(Debug)]
pub struct RouteMetrics {
    name: Box<str>,
    requests: Box<[OnceLock<IntCounter>; METHOD_SLOTS * CLASSES.len()]>,
    /// Time from the request's head to its response body's end.
    pub duration: Histogram,
    /// Request body bytes.
    pub request_bytes: IntCounter,
    /// Response body bytes.
    pub response_bytes: IntCounter,
    /// Bytes before and after compression, per coding (`Algorithm as usize`), resolved at
    /// the first response the route compresses with it.
    compressed: [OnceLock<Compressed>; 3],
    /// Mirrored requests, resolved at the route's first.
    mirror: OnceLock<std::sync::Arc<MirrorCounters>>,
}

/// What became of a mirrored request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    /// Sent and answered.
    Sent,
    /// No answer, or a 5xx.
    Failed,
    /// Not copied: its body is too large or of unknown length.
    Skipped,
}

/// A route's mirror counters, by [`MirrorResult`].
#[derive(Debug)]
pub struct MirrorCounters([IntCounter; 3]);

impl MirrorCounters {
    /// Counts one mirrored request.
    pub fn count(&self, result: MirrorResult) {
        self.0[result as usize].inc();
    }

    /// The mirrored requests counted as `result`.
    #[cfg(test)]
    pub(crate) fn get(&self, result: MirrorResult) -> u64 {
        self.0[result as usize].get()
    }
}

/// How a request on a route with a cache was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// From the store, fresh.
    Hit,
    /// From the upstream: nothing usable was stored.
    Miss,
    /// From the store, stale (`stale-while-revalidate`, `stale-if-error`).
    Stale,
    /// From the store after the upstream's `304`.
    Revalidated,
    /// By another request's fetch of the same key.
    Collapsed,
    /// Not looked up.
    Bypass,
}

impl CacheLookup {
    const ALL: [CacheLookup; 6] = [
        CacheLookup::Hit,
        CacheLookup::Miss,
        CacheLookup::Stale,
        CacheLookup::Revalidated,
        CacheLookup::Collapsed,
        CacheLookup::Bypass,
    ];

    fn label(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::Stale => "stale",
            CacheLookup::Revalidated => "revalidated",
            CacheLookup::Collapsed => "collapsed",
            CacheLookup::Bypass => "bypass",
        }
    }
}

/// A route cache's handles.
#[derive(Debug)]
pub struct CacheMetrics {
    lookups: [IntCounter; 6],
    /// Bytes held.
    pub bytes: IntGauge,
    /// Responses held.
    pub entries: IntGauge,
    /// Responses dropped for room.
    pub evictions: IntCounter,
}

impl CacheMetrics {
    /// Counts one lookup's outcome.
    pub fn count(&self, lookup: CacheLookup) {
        self.lookups[lookup as usize].inc();
    }
}

/// A route's compression counters for one coding: plain bytes in, coded bytes out.
#[derive(Debug, Clone)]
pub struct Compressed {
    /// Bytes before compression.
    pub plain: IntCounter,
    /// Bytes sent, compressed.
    pub coded: IntCounter,
}

impl RouteMetrics {
    /// The counters of responses this route compresses with `algorithm`.
    pub fn compressed(&self, algorithm: crate::config::Algorithm) -> &Compressed {
        self.compressed[algorithm as usize].get_or_init(|| {
            let vec = &metrics().compression_bytes;
            let name = algorithm.name();
            Compressed {
                plain: vec.with_label_values(&[&self.name, name, "plain"]),
                coded: vec.with_label_values(&[&self.name, name, "coded"]),
            }
        })
    }

    /// The route's mirror counters.
    pub fn mirror_counters(&self) -> std::sync::Arc<MirrorCounters> {
        self.mirror
            .get_or_init(|| {
                let vec = &metrics().mirror_requests;
                std::sync::Arc::new(MirrorCounters(
                    ["sent", "failed", "skipped"]
                        .map(|result| vec.with_label_values(&[&self.name, result])),
                ))
            })
            .clone()
    }

    /// Counts one mirrored request.
    pub fn mirrored(&self, result: MirrorResult) {
        self.mirror_counters().count(result);
    }

    /// Counts one answered request.
    pub fn count(&self, method: &Method, status: u16) {
        // Most requests are GETs: one comparison, not a search.
        let method_slot = if *method == Method::GET {
            0
        } else {
            METHODS
                .iter()
                .position(|m| m == method)
                .unwrap_or(METHODS.len())
        };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[method_slot * CLASSES.len() + class]
            .get_or_init(|| {
                let method = METHODS.get(method_slot).map_or("OTHER", |m| m.as_str());
                metrics()
                    .requests
                    .with_label_values(&[&self.name, method, CLASSES[class]])
            })
            .inc();
    }
}

/// Counts one in `gauge` while it lives (an open connection, a live plugin instance).
#[derive(Debug)]
pub struct Held(IntGauge);

impl Held {
    /// Adds one to `gauge` until the value is dropped.
    pub fn new(gauge: &IntGauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A cluster's handles.
#[derive(Debug)]
pub struct ClusterMetrics {
    /// Time to the response head, all attempts.
    pub upstream_duration: Histogram,
    /// Attempts retried.
    pub retries: IntCounter,
    /// Requests the circuit breaker refused.
    pub overloaded: IntCounter,
    /// Ejections, by endpoint index.
    pub ejections: Vec<IntCounter>,
}

/// How a plugin call failed, for `weir_plugin_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access).
    Trap,
    /// The call ran past its deadline.
    Deadline,
    /// The instance hit its memory cap.
    Memory,
    /// The plugin returned a change or a reply that is not valid HTTP or past weir's
    /// bounds, or handed weir more than a call may (its host-call fuel).
    InvalidOutput,
    /// A fresh instance could not be made (its `configure` failed).
    Instantiate,
    /// No instance was free within the deadline: the plugin has `max_instances` busy.
    Overloaded,
    /// Not called: the plugin's breaker is open after failures in a row.
    BreakerOpen,
}

impl FailureKind {
    const ALL: [FailureKind; 7] = [
        FailureKind::Trap,
        FailureKind::Deadline,
        FailureKind::Memory,
        FailureKind::InvalidOutput,
        FailureKind::Instantiate,
        FailureKind::Overloaded,
        FailureKind::BreakerOpen,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::InvalidOutput => "invalid_output",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Overloaded => "overloaded",
            FailureKind::BreakerOpen => "breaker_open",
        }
    }
}

/// A plugin's handles.
#[derive(Debug)]
pub struct PluginMetrics {
    /// Per hook: calls and their duration.
    pub on_request: Histogram,
    /// See `on_request`.
    pub on_response: Histogram,
    /// See `on_request`.
    pub on_request_body: Histogram,
    /// See `on_request`.
    pub on_response_body: Histogram,
    /// Requests the plugin answered itself.
    pub local_replies: IntCounter,
    /// Failures, instances and open breakers (hooks whose breaker is open).
    pub instances: InstanceMetrics,
    /// Instances dropped after calls that did not fail.
    pub retired: Retirements,
    /// The metrics this loaded version of the plugin declared (`weir:plugin/metrics`).
    pub(crate) declared: Arc<PluginMetricSet>,
}

/// Why a plugin's instances were dropped after a call that did not fail. An instance whose
/// call trapped, ran out of time or memory is dropped too, and counted among the failures.
#[derive(Debug, Clone)]
pub struct Retirements {
    /// It had served `max_uses` calls (or requests, for a handler).
    pub used_up: IntCounter,
    /// Its memory had grown most of the way to its cap since its first call.
    pub outgrown: IntCounter,
    /// A reused handler's instance kept a body of its request open, or more handles than
    /// an instance may keep between requests.
    pub held: IntCounter,
}

impl PluginMetrics {
    /// Counts one failed call.
    pub fn failed(&self, kind: FailureKind) {
        self.instances.failed(kind);
    }
}

/// A handler's handles ([`Metrics::handler`]).
#[derive(Debug)]
pub struct HandlerMetrics {
    /// Requests it served (or failed), and their duration to the response's end.
    pub handle: Histogram,
    /// Failures, instances and its breaker (1 while open).
    pub instances: InstanceMetrics,
}

/// What a filter and a handler alike count of their calls and instances.
#[derive(Debug)]
pub struct InstanceMetrics {
    failures: [IntCounter; 7],
    /// Live instances.
    pub live: IntGauge,
    /// Instances created.
    pub created: IntCounter,
    /// Open breakers.
    pub breaker_open: IntGauge,
}

impl InstanceMetrics {
    /// Counts one failed call.
    pub fn failed(&self, kind: FailureKind) {
        // `ALL` lists the kinds in declaration order.
        self.failures[kind as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_counts_by_method_and_class_and_renders_as_prometheus_text() {
        let route = metrics().route("metrics-unit-test");
        route.count(&Method::GET, 200);
        route.count(&Method::GET, 204);
        route.count(&Method::from_bytes(b"PURGE").expect("method"), 503);
        route.duration.observe(0.002);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&metrics().gather(), &mut out)
            .expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains(
            r#"weir_requests_total{class="2xx",method="GET",route="metrics-unit-test"} 2"#
        ));
        assert!(text.contains(
            r#"weir_requests_total{class="5xx",method="OTHER",route="metrics-unit-test"} 1"#
        ));
        assert!(text.contains(
            r#"weir_request_duration_seconds_bucket{route="metrics-unit-test",le="0.0025"} 1"#
        ));
    }
}
