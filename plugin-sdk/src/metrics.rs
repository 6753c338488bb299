//! Metrics of your own, exported by weir's `GET /metrics` beside weir's as
//! `weir_plugin_<plugin>_<name>` (`weir:plugin/metrics`, since 0.3.3).
//!
//! Declare each metric in [`Filter::new`](crate::Filter::new), with its label names, and keep
//! the handle in the filter; update it per request with one label value per name:
//!
//! ```
//! use weir_plugin::metrics::Counter;
//! use weir_plugin::{Action, Filter, NoConfig, Reply, Request};
//!
//! struct Guard {
//!     refusals: Counter,
//! }
//!
//! impl Filter for Guard {
//!     type Config = NoConfig;
//!
//!     fn new(_: NoConfig) -> Result<Guard, String> {
//!         // weir_plugin_<plugin>_refusals_total{reason="..."}
//!         let refusals = Counter::declare("refusals", "Requests refused, by reason.", &["reason"])?;
//!         Ok(Guard { refusals })
//!     }
//!
//!     fn on_request(&self, request: &mut Request) -> Action {
//!         if request.header("x-token").is_none() {
//!             self.refusals.inc(&["missing"]);
//!             return Reply::text(401, "no token\n").into();
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! # use weir_plugin::testing::{self, Harness, TestRequest};
//! let guard = Harness::<Guard>::new("").expect("configured");
//! guard.request(TestRequest::get("/")).reply();
//! assert_eq!(testing::metric("refusals_total", &[("reason", "missing")]), Some(1.0));
//! ```
//!
//! The rules, which weir checks:
//! - metrics are declared only while the filter is built ([`Filter::new`](crate::Filter::new));
//!   later declarations fail. Every instance builds its filter, so declaring is idempotent:
//!   the same name, kind, help and labels give the same metric, shared by every instance;
//! - names and label names are `[a-z_][a-z0-9_]*`, at most 64 characters; at most 4 labels
//!   per metric and 32 metrics per plugin; a counter's exported name ends in `_total` (added
//!   if the name does not end in it);
//! - label values come from your code, so weir bounds them: at most 1,000 combinations per
//!   metric (further updates go to one series whose every label value is `_overflow`), each
//!   value cut to 128 bytes. Prefer values from a fixed set or from the config;
//! - an update never fails or traps: one weir cannot apply (a label count that does not match
//!   the declaration, a histogram value that is not finite) is ignored, and weir counts it in
//!   `weir_plugin_metric_errors_total` and logs it once.
//!
//! Outside wasm (in `cargo test`) the mock host keeps the values, which
//! [`testing::metric`](crate::testing::metric) reads.

/// Why a declaration failed: the message names what is wrong. Converts into `String`, so
/// `?` works in [`Filter::new`](crate::Filter::new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricError(String);

impl MetricError {
    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MetricError {}

impl From<MetricError> for String {
    fn from(error: MetricError) -> String {
        error.0
    }
}

/// What a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A count that only goes up (requests refused, bytes seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(u32);

impl Counter {
    /// Declares the counter `name` with label names `labels`; exported as
    /// `weir_plugin_<plugin>_<name>_total`.
    pub fn declare(name: &str, help: &str, labels: &[&str]) -> Result<Counter, MetricError> {
        imp::declare(name, help, Kind::Counter, labels, None).map(Counter)
    }

    /// Adds `delta` to the series of `labels` (one value per declared label name, in order).
    pub fn add(&self, labels: &[&str], delta: u64) {
        imp::counter_add(self.0, labels, delta);
    }

    /// Adds 1 to the series of `labels`.
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }
}

/// A value that goes up and down (items queued, the size of a cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge(u32);

impl Gauge {
    /// Declares the gauge `name` with label names `labels`.
    pub fn declare(name: &str, help: &str, labels: &[&str]) -> Result<Gauge, MetricError> {
        imp::declare(name, help, Kind::Gauge, labels, None).map(Gauge)
    }

    /// Sets the series of `labels` to `value`.
    pub fn set(&self, labels: &[&str], value: i64) {
        imp::gauge_set(self.0, labels, value);
    }

    /// Adds `delta` (negative to subtract) to the series of `labels`.
    pub fn add(&self, labels: &[&str], delta: i64) {
        imp::gauge_add(self.0, labels, delta);
    }
}

/// A distribution of values counted into buckets (sizes, times): exported as
/// `_bucket`, `_count` and `_sum` series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram(u32);

impl Histogram {
    /// Declares the histogram `name` with label names `labels` and the buckets' upper
    /// bounds (1 to 32, increasing); `None` gives Prometheus' default, 0.005 to 10 (seconds).
    pub fn declare(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<Histogram, MetricError> {
        imp::declare(name, help, Kind::Histogram, labels, buckets).map(Histogram)
    }

    /// Counts `value` into the series of `labels`.
    pub fn observe(&self, labels: &[&str], value: f64) {
        imp::histogram_observe(self.0, labels, value);
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Kind, MetricError};
    use crate::bindings::weir::plugin::metrics as host;

    fn owned(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|l| (*l).to_owned()).collect()
    }

    pub(super) fn declare(
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<u32, MetricError> {
        let kind = match kind {
            Kind::Counter => host::Kind::Counter,
            Kind::Gauge => host::Kind::Gauge,
            Kind::Histogram => host::Kind::Histogram,
        };
        host::declare(name, help, kind, &owned(labels), buckets).map_err(MetricError)
    }

    pub(super) fn counter_add(metric: u32, labels: &[&str], delta: u64) {
        host::counter_add(metric, &owned(labels), delta);
    }

    pub(super) fn gauge_set(metric: u32, labels: &[&str], value: i64) {
        host::gauge_set(metric, &owned(labels), value);
    }

    pub(super) fn gauge_add(metric: u32, labels: &[&str], delta: i64) {
        host::gauge_add(metric, &owned(labels), delta);
    }

    pub(super) fn histogram_observe(metric: u32, labels: &[&str], value: f64) {
        host::histogram_observe(metric, &owned(labels), value);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Kind, MetricError};
    use crate::mock::metrics as mock;

    pub(super) fn declare(
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<u32, MetricError> {
        mock::declare(name, help, kind, labels, buckets).map_err(MetricError)
    }

    pub(super) fn counter_add(metric: u32, labels: &[&str], delta: u64) {
        mock::update(
            metric,
            labels,
            mock::Update::Add(delta as f64),
            Kind::Counter,
        );
    }

    pub(super) fn gauge_set(metric: u32, labels: &[&str], value: i64) {
        mock::update(metric, labels, mock::Update::Set(value as f64), Kind::Gauge);
    }

    pub(super) fn gauge_add(metric: u32, labels: &[&str], delta: i64) {
        mock::update(metric, labels, mock::Update::Add(delta as f64), Kind::Gauge);
    }

    pub(super) fn histogram_observe(metric: u32, labels: &[&str], value: f64) {
        mock::update(
            metric,
            labels,
            mock::Update::Observe(value),
            Kind::Histogram,
        );
    }
}
