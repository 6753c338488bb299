//! Implementation of the `weir:plugin/metrics` interface (since 0.3.3): declarations during
//! `configure` go to the loaded version's [`PluginMetricSet`](crate::metrics::PluginMetricSet)
//! and become this instance's handles; an update finds its metric by handle and never fails
//! the call — what cannot be applied is counted and logged once (`crate::metrics`'s
//! `plugin.rs` holds the rules and the bounds).

use crate::metrics::{PluginMetricError, PluginMetricKind, PluginMetricSpec, PluginMetricUpdate};
use crate::plugin::contract::current::metrics::{Host, Kind, Metric};
use crate::plugin::state::PluginState;

impl Host for PluginState {
    fn declare(
        &mut self,
        name: String,
        help: String,
        kind: Kind,
        labels: Vec<String>,
        buckets: Option<Vec<f64>>,
    ) -> Result<Metric, String> {
        if !self.configuring {
            return Err(format!(
                "{name}: metrics can be declared only while configure runs"
            ));
        }
        let kind = match kind {
            Kind::Counter => PluginMetricKind::Counter,
            Kind::Gauge => PluginMetricKind::Gauge,
            Kind::Histogram => PluginMetricKind::Histogram,
        };
        let spec = PluginMetricSpec {
            name,
            help,
            kind,
            labels,
            buckets,
        };
        let metric = self.metric_set.declare(spec)?;
        let index = match self
            .metrics
            .iter()
            .position(|m| std::sync::Arc::ptr_eq(m, &metric))
        {
            Some(index) => index,
            None => {
                self.metrics.push(metric);
                self.metrics.len() - 1
            }
        };
        // At most MAX_METRICS handles: the set refuses more.
        Ok(index as Metric)
    }

    fn counter_add(&mut self, metric: Metric, labels: Vec<String>, delta: u64) {
        update(self, metric, labels, PluginMetricUpdate::CounterAdd(delta));
    }

    fn gauge_set(&mut self, metric: Metric, labels: Vec<String>, value: i64) {
        update(self, metric, labels, PluginMetricUpdate::GaugeSet(value));
    }

    fn gauge_add(&mut self, metric: Metric, labels: Vec<String>, delta: i64) {
        update(self, metric, labels, PluginMetricUpdate::GaugeAdd(delta));
    }

    fn histogram_observe(&mut self, metric: Metric, labels: Vec<String>, value: f64) {
        update(self, metric, labels, PluginMetricUpdate::Observe(value));
    }
}

/// Applies one update, counting (and logging once) what cannot be applied as asked.
fn update(
    state: &mut PluginState,
    handle: Metric,
    labels: Vec<String>,
    update: PluginMetricUpdate,
) {
    let metric = state.metrics.get(handle as usize);
    let result = match metric {
        Some(metric) => metric.update(labels, update),
        None => Err(PluginMetricError::Handle),
    };
    if let Err(error) = result {
        let name = metric.map(|m| m.name());
        state
            .metric_set
            .failed(error, name, state.request_id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::plugin::memory::{Limits, MemoryBudget};

    use super::*;
    use crate::kv::KvStore;
    use crate::metrics::metrics;

    fn state(plugin: &str) -> PluginState {
        PluginState::new(
            plugin.into(),
            Arc::new(KvStore::default()),
            metrics().plugin(plugin).declared,
            Limits::new(usize::MAX, Arc::new(MemoryBudget::new(usize::MAX))),
            None,
        )
    }

    fn value(plugin: &str, short: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metrics()
            .plugin_samples(plugin)
            .into_iter()
            .find(|s| {
                s.short == short
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(n, x)| n == k && x == v))
            })
            .map(|s| s.value)
    }

    fn errors(plugin: &str, error: &str) -> u64 {
        metrics()
            .metric_errors
            .with_label_values(&[plugin, error])
            .get()
    }

    fn labels(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn metrics_are_declared_only_while_configure_runs() {
        let mut instance = state("host-api-configure");
        let error = instance
            .declare("x".into(), "help".into(), Kind::Counter, vec![], None)
            .expect_err("not configuring");
        assert!(error.contains("only while configure runs"), "{error}");
        instance.configuring = true;
        let handle = instance
            .declare("x".into(), "help".into(), Kind::Counter, vec![], None)
            .expect("configuring");
        instance.configuring = false;
        instance.counter_add(handle, vec![], 3);
        assert_eq!(value("host-api-configure", "x_total", &[]), Some(3.0));
    }

    /// Each instance configures itself, so each declares again: same metric, the same
    /// handle, one set of values; a bad declaration is an error the plugin sees.
    #[test]
    fn instances_share_what_they_declare_and_bad_declarations_are_errors() {
        let set = metrics().plugin("host-api-instances").declared;
        let mut handles = Vec::new();
        for _ in 0..2 {
            let mut instance = PluginState::new(
                "host-api-instances".into(),
                Arc::new(KvStore::default()),
                set.clone(),
                Limits::new(usize::MAX, Arc::new(MemoryBudget::new(usize::MAX))),
                None,
            );
            instance.configuring = true;
            let refusals = instance
                .declare(
                    "refusals".into(),
                    "h".into(),
                    Kind::Counter,
                    labels(&["limit"]),
                    None,
                )
                .expect("declared");
            let again = instance
                .declare(
                    "refusals".into(),
                    "h".into(),
                    Kind::Counter,
                    labels(&["limit"]),
                    None,
                )
                .expect("declared again");
            assert_eq!(refusals, again);
            let error = instance
                .declare("Bad".into(), "h".into(), Kind::Gauge, vec![], None)
                .expect_err("bad name");
            assert!(error.contains("[a-z_]"), "{error}");
            let error = instance
                .declare(
                    "wide".into(),
                    "h".into(),
                    Kind::Gauge,
                    labels(&["a", "b", "c", "d", "e"]),
                    None,
                )
                .expect_err("too many labels");
            assert!(error.contains("at most 4 labels"), "{error}");
            instance.configuring = false;
            instance.counter_add(refusals, labels(&["10/1s"]), 1);
            handles.push(refusals);
        }
        assert_eq!(handles[0], handles[1]);
        assert_eq!(
            value(
                "host-api-instances",
                "refusals_total",
                &[("limit", "10/1s")]
            ),
            Some(2.0)
        );
    }

    /// Updates never trap: an unknown handle, a handle of another kind, the wrong label
    /// count or a NaN are ignored and counted.
    #[test]
    fn bad_updates_are_ignored_and_counted() {
        let plugin = "host-api-bad-updates";
        let mut instance = state(plugin);
        instance.configuring = true;
        let counter = instance
            .declare("c".into(), "h".into(), Kind::Counter, labels(&["a"]), None)
            .expect("declared");
        let histogram = instance
            .declare(
                "h".into(),
                "h".into(),
                Kind::Histogram,
                vec![],
                Some(vec![1.0]),
            )
            .expect("declared");
        instance.configuring = false;
        instance.counter_add(99, labels(&["x"]), 1);
        instance.gauge_set(counter, labels(&["x"]), 1);
        assert_eq!(errors(plugin, "handle"), 2);
        instance.counter_add(counter, vec![], 1);
        instance.counter_add(counter, labels(&["x", "y"]), 1);
        assert_eq!(errors(plugin, "labels"), 2);
        instance.histogram_observe(histogram, vec![], f64::NAN);
        instance.histogram_observe(histogram, vec![], f64::INFINITY);
        assert_eq!(errors(plugin, "value"), 2);
        instance.histogram_observe(histogram, vec![], 0.5);
        instance.counter_add(counter, labels(&["x"]), 4);
        assert_eq!(value(plugin, "c_total", &[("a", "x")]), Some(4.0));
        assert_eq!(value(plugin, "h_count", &[]), Some(1.0));
    }
}
