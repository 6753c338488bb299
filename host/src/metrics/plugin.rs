//! Metrics plugins declare (`weir:plugin/metrics`, since 0.3.3), exported beside weir's own
//! as `weir_plugin_<plugin>_<name>`.
//!
//! A plugin declares each metric while it is configured, with its label names; the
//! declaration is checked here and the metric made once, whichever instance (or reloaded
//! version) of the plugin declares it first. Each load of a plugin has
//! a [`PluginMetricSet`], the metrics that version declared (at most [`MAX_METRICS`]); each
//! instance keeps handles into it (`PluginState`), so an update is an index, a hash lookup of
//! its label values under a read lock and an atomic operation.
//!
//! Label values come from the plugin, so the number of series is bounded here instead of by
//! the config: at most [`MAX_SERIES`] combinations per metric, then the overflow series (every
//! label value [`OVERFLOW`]); values are cut to [`MAX_LABEL_VALUE`] bytes. An update that
//! cannot be applied is never the plugin's failure: it is ignored, counted in
//! `weir_plugin_metric_errors_total` and logged once per loaded version.
//!
//! A redeclaration with another shape is an error in the version that declared the first,
//! and replaces the old metric when a reloaded version declares it. (So these metrics are
//! kept here, not in the registry: it keeps a name's labels and help for the life of the
//! process, even once the metric is unregistered.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Metrics one loaded version of a plugin may declare.
pub(crate) const MAX_METRICS: usize = 32;
/// Label names per metric.
pub(crate) const MAX_LABELS: usize = 4;
/// Characters in a metric or label name.
pub(crate) const MAX_NAME: usize = 64;
/// Characters in a metric's help.
pub(crate) const MAX_HELP: usize = 256;
/// Buckets a histogram may declare.
pub(crate) const MAX_BUCKETS: usize = 32;
/// Label-value combinations per metric, beyond which updates go to the overflow series.
pub(crate) const MAX_SERIES: usize = 1000;
/// Bytes of a label value; a longer one is cut.
pub(crate) const MAX_LABEL_VALUE: usize = 128;
/// Every label value of a metric's overflow series.
pub(crate) const OVERFLOW: &str = "_overflow";
/// A histogram's buckets when the plugin gives none: Prometheus' default, 5 ms to 10 s.
const DEFAULT_BUCKETS: &[f64] = prometheus::DEFAULT_BUCKETS;

/// What a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observed values in buckets.
    Histogram,
}

/// A declaration, as the plugin made it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) kind: Kind,
    pub(crate) labels: Vec<String>,
    pub(crate) buckets: Option<Vec<f64>>,
}

/// One update a plugin asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Update {
    CounterAdd(u64),
    GaugeSet(i64),
    GaugeAdd(i64),
    Observe(f64),
}

/// Why an update was not applied as asked, for `weir_plugin_metric_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateError {
    /// No metric has that handle in the instance, or it is of another kind: ignored.
    Handle,
    /// Not one label value per declared label name: ignored.
    Labels,
    /// A histogram value that is not finite: ignored.
    Value,
    /// A new label-value combination past [`MAX_SERIES`]: applied to the overflow series.
    Overflow,
}

impl UpdateError {
    const ALL: [UpdateError; 4] = [
        UpdateError::Handle,
        UpdateError::Labels,
        UpdateError::Value,
        UpdateError::Overflow,
    ];

    /// The label value in `weir_plugin_metric_errors_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            UpdateError::Handle => "handle",
            UpdateError::Labels => "labels",
            UpdateError::Value => "value",
            UpdateError::Overflow => "overflow",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What two declarations of one name must agree on to be the same metric.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    kind: Kind,
    help: String,
    labels: Vec<String>,
    /// A histogram's buckets (the default ones if none were given); empty otherwise.
    buckets: Vec<f64>,
}

/// The registered collector.
#[derive(Debug)]
enum Family {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

/// One label-value combination's handle.
#[derive(Debug, Clone)]
enum Series {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

impl Family {
    fn new(name: &str, shape: &Shape) -> prometheus::Result<Family> {
        let labels: Vec<&str> = shape.labels.iter().map(String::as_str).collect();
        let opts = Opts::new(name, shape.help.as_str());
        Ok(match shape.kind {
            Kind::Counter => Family::Counter(IntCounterVec::new(opts, &labels)?),
            Kind::Gauge => Family::Gauge(IntGaugeVec::new(opts, &labels)?),
            Kind::Histogram => {
                let opts = HistogramOpts::from(opts).buckets(shape.buckets.clone());
                Family::Histogram(HistogramVec::new(opts, &labels)?)
            }
        })
    }

    fn series(&self, values: &[String]) -> prometheus::Result<Series> {
        Ok(match self {
            Family::Counter(vec) => Series::Counter(vec.get_metric_with_label_values(values)?),
            Family::Gauge(vec) => Series::Gauge(vec.get_metric_with_label_values(values)?),
            Family::Histogram(vec) => Series::Histogram(vec.get_metric_with_label_values(values)?),
        })
    }

    fn collector(&self) -> Box<dyn Collector> {
        match self {
            Family::Counter(vec) => Box::new(vec.clone()),
            Family::Gauge(vec) => Box::new(vec.clone()),
            Family::Histogram(vec) => Box::new(vec.clone()),
        }
    }
}

impl Series {
    /// Applies `update`, which the caller checked is of this series' kind.
    fn apply(&self, update: Update) {
        match (self, update) {
            (Series::Counter(c), Update::CounterAdd(delta)) => c.inc_by(delta),
            (Series::Gauge(g), Update::GaugeSet(value)) => g.set(value),
            (Series::Gauge(g), Update::GaugeAdd(delta)) => g.add(delta),
            (Series::Histogram(h), Update::Observe(value)) => h.observe(value),
            _ => {}
        }
    }

    /// `(suffix, value)` for each sample the series exports.
    fn samples(&self) -> Vec<(&'static str, f64)> {
        match self {
            Series::Counter(c) => vec![("", c.get() as f64)],
            Series::Gauge(g) => vec![("", g.get() as f64)],
            Series::Histogram(h) => vec![
                ("_count", h.get_sample_count() as f64),
                ("_sum", h.get_sample_sum()),
            ],
        }
    }
}

impl Kind {
    fn takes(self, update: Update) -> bool {
        matches!(
            (self, update),
            (Kind::Counter, Update::CounterAdd(_))
                | (Kind::Gauge, Update::GaugeSet(_) | Update::GaugeAdd(_))
                | (Kind::Histogram, Update::Observe(_))
        )
    }
}

/// A metric a plugin declared.
#[derive(Debug)]
pub(crate) struct PluginMetric {
    plugin: Arc<str>,
    /// The exported name, `weir_plugin_<plugin>_<name>[_total]`.
    name: String,
    /// The exported name without `weir_plugin_<plugin>_`.
    short: String,
    shape: Shape,
    family: Family,
    series: RwLock<HashMap<Box<[String]>, Series>>,
    overflow: OnceLock<Series>,
    /// The [`PluginMetricSet::id`] of the loaded version that declared it last.
    owner: AtomicU64,
}

impl PluginMetric {
    /// The exported name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Applies `update` to the series of `values`. `Err(Overflow)` was applied to the
    /// overflow series; any other `Err` was not applied.
    pub(crate) fn update(
        &self,
        mut values: Vec<String>,
        update: Update,
    ) -> Result<(), UpdateError> {
        if !self.shape.kind.takes(update) {
            return Err(UpdateError::Handle);
        }
        if values.len() != self.shape.labels.len() {
            return Err(UpdateError::Labels);
        }
        if let Update::Observe(value) = update
            && !value.is_finite()
        {
            return Err(UpdateError::Value);
        }
        for value in &mut values {
            cut(value);
        }
        let known = self.series.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = known.get(values.as_slice()) {
            series.apply(update);
            return Ok(());
        }
        drop(known);
        let mut known = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = known.get(values.as_slice()) {
            series.apply(update);
            return Ok(());
        }
        if known.len() >= MAX_SERIES {
            drop(known);
            self.overflow_series()?.apply(update);
            return Err(UpdateError::Overflow);
        }
        let series = self
            .family
            .series(&values)
            .map_err(|_| UpdateError::Labels)?;
        series.apply(update);
        known.insert(values.into_boxed_slice(), series);
        Ok(())
    }

    fn overflow_series(&self) -> Result<&Series, UpdateError> {
        if let Some(series) = self.overflow.get() {
            return Ok(series);
        }
        let values = vec![OVERFLOW.to_owned(); self.shape.labels.len()];
        let series = self
            .family
            .series(&values)
            .map_err(|_| UpdateError::Labels)?;
        Ok(self.overflow.get_or_init(|| series))
    }

    /// Every sample the metric exports now.
    fn samples(&self, out: &mut Vec<PluginSample>) {
        let known = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let overflow = self.overflow.get().map(|series| {
            let values = vec![OVERFLOW.to_owned(); self.shape.labels.len()];
            (values.into_boxed_slice(), series)
        });
        let all = known
            .iter()
            .map(|(values, series)| (values.clone(), series))
            .chain(overflow);
        for (values, series) in all {
            let labels: Vec<(String, String)> = self
                .shape
                .labels
                .iter()
                .cloned()
                .zip(values.iter().cloned())
                .collect();
            for (suffix, value) in series.samples() {
                out.push(PluginSample {
                    name: format!("{}{suffix}", self.name),
                    short: format!("{}{suffix}", self.short),
                    labels: labels.clone(),
                    value,
                });
            }
        }
    }
}

/// One sample of a plugin's metric, as `/metrics` exports it (for `weir plugin test`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSample {
    /// The sample's name: `weir_plugin_<plugin>_<name>`, plus `_count` or `_sum` for a
    /// histogram's.
    pub name: String,
    /// `name` without `weir_plugin_<plugin>_`, as the plugin declared it (with `_total` for
    /// a counter).
    pub short: String,
    /// Label names and values.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// The metrics one loaded version of a plugin declared, and its count of ignored updates.
/// Shared by its instances; each instance holds handles to its metrics.
#[derive(Debug)]
pub(crate) struct PluginMetricSet {
    plugin: Arc<str>,
    /// Unique per loaded version: who declared a metric last.
    id: u64,
    declared: Mutex<Vec<Arc<PluginMetric>>>,
    errors: [IntCounter; 4],
    warned: [AtomicBool; 4],
}

impl PluginMetricSet {
    pub(super) fn new(plugin: &str, errors: &IntCounterVec) -> PluginMetricSet {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        PluginMetricSet {
            plugin: plugin.into(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            declared: Mutex::new(Vec::new()),
            errors: UpdateError::ALL.map(|e| errors.with_label_values(&[plugin, e.label()])),
            warned: Default::default(),
        }
    }

    /// Declares a metric (see the WIT's `declare`): the one already declared under its
    /// name if the shape is the same, else a new one; the message says what is wrong.
    pub(crate) fn declare(&self, spec: Spec) -> Result<Arc<PluginMetric>, String> {
        let (short, shape) = check(&spec)?;
        let name = format!("{}{short}", prefix(&self.plugin));
        let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(metric) = declared.iter().find(|m| m.name == name) {
            if metric.shape == shape {
                return Ok(metric.clone());
            }
            return Err(format!(
                "{name} is already declared with another kind, help, labels or buckets"
            ));
        }
        if declared.len() >= MAX_METRICS {
            return Err(format!(
                "at most {MAX_METRICS} metrics per plugin; {name} would be one more"
            ));
        }
        let metric = super::metrics()
            .declared
            .declare(self, name, short, shape)?;
        declared.push(metric.clone());
        Ok(metric)
    }

    /// Counts an update that was not applied as asked, and logs the first of each kind.
    pub(crate) fn failed(&self, error: UpdateError, metric: Option<&str>, request_id: &str) {
        self.errors[error.index()].inc();
        if !self.warned[error.index()].swap(true, Ordering::Relaxed) {
            let why = match error {
                UpdateError::Handle => "no metric of that kind has this handle: ignored",
                UpdateError::Labels => "label values do not match the declared names: ignored",
                UpdateError::Value => "the value is not finite: ignored",
                UpdateError::Overflow => {
                    "too many label-value combinations: counted in the _overflow series"
                }
            };
            tracing::warn!(
                plugin = &*self.plugin,
                metric,
                request_id,
                "a plugin metric update: {why} (counted in weir_plugin_metric_errors_total; logged once per version of the plugin)"
            );
        }
    }
}

/// The declared metrics of every plugin, by exported name. Not in the registry, which keeps
/// a name's labels and help for the life of the process even once its metric is gone: a
/// reloaded plugin could then never change a metric's shape. `/metrics` gathers them beside
/// the registry's.
#[derive(Debug, Default)]
pub(super) struct Declared(Mutex<HashMap<String, Arc<PluginMetric>>>);

impl Declared {
    /// The metric `name` for `set`: the declared one if its shape is the same (its values
    /// go on), else a new one in its place.
    fn declare(
        &self,
        set: &PluginMetricSet,
        name: String,
        short: String,
        shape: Shape,
    ) -> Result<Arc<PluginMetric>, String> {
        if super::own_name_taken(&name) {
            return Err(format!("{name} is one of weir's own metrics"));
        }
        let mut declared = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = declared.get(&name) {
            if existing.plugin != set.plugin {
                return Err(format!(
                    "{name} is already declared by plugin {:?}",
                    &*existing.plugin
                ));
            }
            if existing.shape == shape {
                existing.owner.store(set.id, Ordering::Relaxed);
                return Ok(existing.clone());
            }
            if existing.owner.load(Ordering::Relaxed) == set.id {
                return Err(format!(
                    "{name} is already declared with another kind, help, labels or buckets"
                ));
            }
            // A reloaded version changed the metric: the old one goes (the version that
            // declared it updates a metric nobody scrapes until it is dropped). Should the
            // new version then fail to load, the old one, which keeps serving, is not
            // scraped either until it is replaced or weir restarts.
            tracing::info!(
                plugin = &*set.plugin,
                metric = name,
                "a reloaded plugin declared its metric with another shape: its values start again"
            );
        }
        let family = Family::new(&name, &shape).map_err(|e| format!("{name}: {e}"))?;
        let metric = Arc::new(PluginMetric {
            plugin: set.plugin.clone(),
            name: name.clone(),
            short,
            shape,
            family,
            series: RwLock::default(),
            overflow: OnceLock::new(),
            owner: AtomicU64::new(set.id),
        });
        declared.insert(name, metric.clone());
        Ok(metric)
    }

    /// The metric families to export (those with at least one series).
    pub(super) fn gather(&self) -> Vec<MetricFamily> {
        let declared = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        declared
            .values()
            .flat_map(|metric| metric.family.collector().collect())
            .filter(|family| !family.get_metric().is_empty())
            .collect()
    }

    /// Every sample of `plugin`'s metrics, sorted.
    fn samples(&self, plugin: &str) -> Vec<PluginSample> {
        let declared = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for metric in declared.values().filter(|m| &*m.plugin == plugin) {
            metric.samples(&mut out);
        }
        out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        out
    }
}

impl super::Metrics {
    /// Every sample of the metrics plugin `plugin` declared, sorted by name and labels
    /// (`weir plugin test` checks a case's `metrics` against them).
    pub fn plugin_samples(&self, plugin: &str) -> Vec<PluginSample> {
        self.declared.samples(plugin)
    }
}

/// `weir_plugin_<plugin>_`: the plugin's name with anything but ASCII letters, digits and
/// `_` made `_` (`rate-limit` → `weir_plugin_rate_limit_`).
fn prefix(plugin: &str) -> String {
    let mut out = String::from("weir_plugin_");
    out.extend(plugin.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out.push('_');
    out
}

/// Checks a declaration; returns the exported name without the plugin's prefix, and the
/// shape.
fn check(spec: &Spec) -> Result<(String, Shape), String> {
    let name = &spec.name;
    check_name("metric name", name)?;
    if spec.help.is_empty() || spec.help.chars().count() > MAX_HELP {
        return Err(format!("{name}: help must be 1 to {MAX_HELP} characters"));
    }
    if spec.labels.len() > MAX_LABELS {
        return Err(format!(
            "{name}: at most {MAX_LABELS} labels, not {}",
            spec.labels.len()
        ));
    }
    for (i, label) in spec.labels.iter().enumerate() {
        check_name("label name", label).map_err(|e| format!("{name}: {e}"))?;
        if label.starts_with("__") {
            return Err(format!(
                "{name}: label name {label:?} must not start with __ (reserved)"
            ));
        }
        if spec.labels[..i].contains(label) {
            return Err(format!("{name}: label name {label:?} is given twice"));
        }
        if spec.kind == Kind::Histogram && label == "le" {
            return Err(format!(
                "{name}: a histogram cannot have a label named le (its buckets' label)"
            ));
        }
    }
    let buckets = match (spec.kind, &spec.buckets) {
        (Kind::Histogram, None) => DEFAULT_BUCKETS.to_vec(),
        (Kind::Histogram, Some(buckets)) => {
            if buckets.is_empty() || buckets.len() > MAX_BUCKETS {
                return Err(format!(
                    "{name}: 1 to {MAX_BUCKETS} buckets, not {}",
                    buckets.len()
                ));
            }
            let finite = buckets.iter().all(|b| b.is_finite());
            let increasing = buckets.windows(2).all(|w| w[0] < w[1]);
            if !finite || !increasing {
                return Err(format!(
                    "{name}: buckets must be finite and in increasing order"
                ));
            }
            buckets.clone()
        }
        (_, None) => Vec::new(),
        (_, Some(_)) => return Err(format!("{name}: only a histogram has buckets")),
    };
    let short = if spec.kind == Kind::Counter && !name.ends_with("_total") {
        format!("{name}_total")
    } else {
        name.clone()
    };
    Ok((
        short,
        Shape {
            kind: spec.kind,
            help: spec.help.clone(),
            labels: spec.labels.clone(),
            buckets,
        },
    ))
}

/// `[a-z_][a-z0-9_]*`, at most [`MAX_NAME`] characters.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || name.len() > MAX_NAME {
        return Err(format!(
            "{what} {name:?}: must be [a-z_][a-z0-9_]*, at most {MAX_NAME} characters"
        ));
    }
    Ok(())
}

/// Cuts `value` to at most [`MAX_LABEL_VALUE`] bytes, at a character boundary.
fn cut(value: &mut String) {
    if value.len() > MAX_LABEL_VALUE {
        let mut at = MAX_LABEL_VALUE;
        while !value.is_char_boundary(at) {
            at -= 1;
        }
        value.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::metrics;

    fn spec(name: &str, kind: Kind, labels: &[&str]) -> Spec {
        Spec {
            name: name.into(),
            help: "help".into(),
            kind,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            buckets: None,
        }
    }

    fn set(plugin: &str) -> PluginMetricSet {
        PluginMetricSet::new(plugin, &metrics().metric_errors)
    }

    fn values(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|l| (*l).to_owned()).collect()
    }

    fn sample(plugin: &str, short: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metrics()
            .plugin_samples(plugin)
            .into_iter()
            .find(|s| {
                s.short == short
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(n, x)| n == k && x == v))
            })
            .map(|s| s.value)
    }

    #[test]
    fn names_labels_help_and_buckets_are_checked() {
        let plugins = set("unit-checks");
        let long = "a".repeat(MAX_NAME + 1);
        let mut too_many_buckets = spec("h", Kind::Histogram, &[]);
        too_many_buckets.buckets = Some((0..=MAX_BUCKETS).map(|b| b as f64).collect());
        let mut unordered = spec("h", Kind::Histogram, &[]);
        unordered.buckets = Some(vec![1.0, 0.5]);
        let mut infinite = spec("h", Kind::Histogram, &[]);
        infinite.buckets = Some(vec![1.0, f64::INFINITY]);
        let mut gauge_buckets = spec("g", Kind::Gauge, &[]);
        gauge_buckets.buckets = Some(vec![1.0]);
        let mut no_help = spec("x", Kind::Counter, &[]);
        no_help.help = String::new();
        let refused = [
            (spec("Upper", Kind::Counter, &[]), "must be [a-z_]"),
            (spec("1st", Kind::Counter, &[]), "must be [a-z_]"),
            (spec("a-b", Kind::Counter, &[]), "must be [a-z_]"),
            (spec("", Kind::Counter, &[]), "must be [a-z_]"),
            (spec(&long, Kind::Counter, &[]), "at most 64"),
            (
                spec("x", Kind::Counter, &["a", "b", "c", "d", "e"]),
                "at most 4 labels",
            ),
            (spec("x", Kind::Counter, &["a", "a"]), "given twice"),
            (spec("x", Kind::Counter, &["__a"]), "reserved"),
            (spec("x", Kind::Counter, &["A"]), "label name"),
            (spec("x", Kind::Histogram, &["le"]), "named le"),
            (too_many_buckets, "1 to 32 buckets"),
            (unordered, "increasing"),
            (infinite, "finite"),
            (gauge_buckets, "only a histogram"),
            (no_help, "help must be"),
        ];
        for (spec, want) in refused {
            let error = plugins.declare(spec.clone()).expect_err(&spec.name);
            assert!(error.contains(want), "{spec:?}: {error}");
        }
        let ok = plugins
            .declare(spec("ok_1", Kind::Gauge, &["a", "b", "c", "d"]))
            .expect("valid");
        assert_eq!(ok.name(), "weir_plugin_unit_checks_ok_1");
    }

    #[test]
    fn a_declaration_is_idempotent_and_a_counter_is_named_total() {
        let first = set("unit-idempotent");
        let a = first
            .declare(spec("refusals", Kind::Counter, &["limit"]))
            .expect("declared");
        assert_eq!(a.name(), "weir_plugin_unit_idempotent_refusals_total");
        let again = first
            .declare(spec("refusals", Kind::Counter, &["limit"]))
            .expect("same shape");
        assert!(Arc::ptr_eq(&a, &again));
        // `refusals_total` is the same exported name.
        let total = first
            .declare(spec("refusals_total", Kind::Counter, &["limit"]))
            .expect("same metric");
        assert!(Arc::ptr_eq(&a, &total));
        let other = first
            .declare(spec("refusals", Kind::Counter, &["reason"]))
            .expect_err("another shape in the same version");
        assert!(other.contains("another kind, help, labels"), "{other}");

        // Another instance's configure, or a reload with the same declaration: the same
        // metric, its values kept.
        a.update(values(&["x"]), Update::CounterAdd(2))
            .expect("applied");
        let reloaded = set("unit-idempotent");
        let b = reloaded
            .declare(spec("refusals", Kind::Counter, &["limit"]))
            .expect("same shape");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            sample("unit-idempotent", "refusals_total", &[("limit", "x")]),
            Some(2.0)
        );
    }

    #[test]
    fn a_reloaded_version_may_change_a_metric_and_other_plugins_may_not_take_it() {
        let old = set("unit-reload");
        let before = old
            .declare(spec("queue", Kind::Gauge, &["a"]))
            .expect("declared");
        before
            .update(values(&["1"]), Update::GaugeSet(5))
            .expect("set");
        let new = set("unit-reload");
        let after = new
            .declare(spec("queue", Kind::Gauge, &["a", "b"]))
            .expect("a new version replaces it");
        assert!(!Arc::ptr_eq(&before, &after));
        after
            .update(values(&["1", "2"]), Update::GaugeAdd(-3))
            .expect("added");
        assert_eq!(
            sample("unit-reload", "queue", &[("a", "1"), ("b", "2")]),
            Some(-3.0)
        );
        assert_eq!(sample("unit-reload", "queue", &[("a", "1")]), None);
        let rendered = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &metrics().gather(),
                &mut out,
            )
            .expect("encodes");
            String::from_utf8(out).expect("utf-8")
        };
        assert!(
            rendered.contains(r#"weir_plugin_unit_reload_queue{a="1",b="2"} -3"#),
            "{rendered}"
        );

        // `unit_reload` is another plugin whose names map to the same prefix.
        let error = set("unit_reload")
            .declare(spec("queue", Kind::Gauge, &["a", "b"]))
            .expect_err("another plugin's metric");
        assert!(error.contains("already declared by plugin"), "{error}");
        // weir's own metrics cannot be taken either.
        let error = set("hook")
            .declare(spec("duration_seconds", Kind::Gauge, &[]))
            .expect_err("weir's own name");
        assert!(
            error.contains("weir_plugin_hook_duration_seconds"),
            "{error}"
        );
    }

    #[test]
    fn at_most_32_metrics_per_plugin() {
        let plugins = set("unit-many");
        for i in 0..MAX_METRICS {
            plugins
                .declare(spec(&format!("m{i}"), Kind::Counter, &[]))
                .expect("within the cap");
        }
        let error = plugins
            .declare(spec("one_more", Kind::Counter, &[]))
            .expect_err("past the cap");
        assert!(error.contains("at most 32"), "{error}");
        // Declaring one it has is not one more.
        plugins
            .declare(spec("m0", Kind::Counter, &[]))
            .expect("already declared");
    }

    #[test]
    fn updates_of_the_wrong_kind_count_or_value_are_refused_and_long_values_cut() {
        let plugins = set("unit-updates");
        let counter = plugins
            .declare(spec("c", Kind::Counter, &["a"]))
            .expect("declared");
        let mut buckets = spec("h", Kind::Histogram, &[]);
        buckets.buckets = Some(vec![0.1, 1.0]);
        let histogram = plugins.declare(buckets).expect("declared");
        assert_eq!(
            counter.update(values(&["x"]), Update::GaugeSet(1)),
            Err(UpdateError::Handle)
        );
        assert_eq!(
            counter.update(values(&[]), Update::CounterAdd(1)),
            Err(UpdateError::Labels)
        );
        assert_eq!(
            counter.update(values(&["x", "y"]), Update::CounterAdd(1)),
            Err(UpdateError::Labels)
        );
        assert_eq!(
            histogram.update(values(&[]), Update::Observe(f64::NAN)),
            Err(UpdateError::Value)
        );
        histogram
            .update(values(&[]), Update::Observe(0.5))
            .expect("observed");
        histogram
            .update(values(&[]), Update::Observe(2.0))
            .expect("observed");
        assert_eq!(sample("unit-updates", "h_count", &[]), Some(2.0));
        assert_eq!(sample("unit-updates", "h_sum", &[]), Some(2.5));

        let long = "é".repeat(100);
        counter
            .update(vec![long.clone()], Update::CounterAdd(1))
            .expect("applied");
        let cut: String = "é".repeat(MAX_LABEL_VALUE / 2);
        assert_eq!(sample("unit-updates", "c_total", &[("a", &cut)]), Some(1.0));
    }

    #[test]
    fn past_1000_series_updates_go_to_the_overflow_series() {
        let plugins = set("unit-cardinality");
        let counter = plugins
            .declare(spec("by_user", Kind::Counter, &["user", "kind"]))
            .expect("declared");
        for i in 0..MAX_SERIES {
            counter
                .update(values(&[&format!("u{i}"), "k"]), Update::CounterAdd(1))
                .expect("within the cap");
        }
        for i in 0..5 {
            assert_eq!(
                counter.update(values(&[&format!("new{i}"), "k"]), Update::CounterAdd(2)),
                Err(UpdateError::Overflow)
            );
        }
        // A known series still counts as itself.
        counter
            .update(values(&["u7", "k"]), Update::CounterAdd(1))
            .expect("known");
        assert_eq!(
            sample(
                "unit-cardinality",
                "by_user_total",
                &[("user", "u7"), ("kind", "k")]
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                "unit-cardinality",
                "by_user_total",
                &[("user", OVERFLOW), ("kind", OVERFLOW)]
            ),
            Some(10.0)
        );
        assert_eq!(
            metrics().plugin_samples("unit-cardinality").len(),
            MAX_SERIES + 1
        );
    }

    #[test]
    fn a_plugin_name_becomes_a_valid_prefix() {
        assert_eq!(prefix("rate-limit"), "weir_plugin_rate_limit_");
        assert_eq!(prefix("10-jwt.auth"), "weir_plugin_10_jwt_auth_");
    }
}
