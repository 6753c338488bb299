//! The mock host used outside wasm: an in-memory kv with a settable clock, a log that
//! keeps its lines, and metrics checked by weir's rules. One per thread, so parallel tests do not share state. Driven by
//! [`testing`](crate::testing).
#![cfg_attr(
    target_arch = "wasm32",
    allow(dead_code, reason = "used only natively")
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::log::Level;

#[derive(Debug)]
pub(crate) struct MockHost {
    pub(crate) now: SystemTime,
    pub(crate) kv: HashMap<String, (Vec<u8>, Option<SystemTime>)>,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) level: Level,
    /// `kv` operations since the last reset: each is a host crossing in weir.
    pub(crate) kv_calls: usize,
    /// Declared metrics; a handle is an index.
    pub(crate) metrics: Vec<metrics::MockMetric>,
    /// Whether the filter is being built (`configure`): metrics are declared only then.
    pub(crate) configuring: bool,
    /// Metric updates weir would have ignored.
    pub(crate) metric_errors: usize,
    /// Set by `testing::fail_kv`: every kv call fails as unavailable with this text.
    pub(crate) kv_down: Option<String>,
    /// Set by `testing::kv_max_keys`: a write that would hold more live keys fails, as a
    /// full quota does in weir.
    pub(crate) kv_max_keys: Option<usize>,
    /// Answers to `outbound` calls (`testing::stub_outbound`), tried in order.
    pub(crate) outbound_stubs: Vec<outbound::Stub>,
    /// The `outbound` calls made, in order.
    pub(crate) outbound_calls: Vec<crate::outbound::Call>,
    /// The response cache key changes of the last request hook (`testing::cache_key`).
    pub(crate) cache_key: crate::http::CacheKeyChanges,
    /// The trailers of the response the body hook being run holds (`response-trailers`).
    pub(crate) trailers: Vec<(String, Vec<u8>)>,
}

impl Default for MockHost {
    fn default() -> MockHost {
        MockHost {
            now: SystemTime::now(),
            kv: HashMap::new(),
            logs: Vec::new(),
            level: Level::Trace,
            kv_calls: 0,
            metrics: Vec::new(),
            configuring: false,
            metric_errors: 0,
            kv_down: None,
            kv_max_keys: None,
            outbound_stubs: Vec::new(),
            outbound_calls: Vec::new(),
            cache_key: crate::http::CacheKeyChanges::default(),
            trailers: Vec::new(),
        }
    }
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost::default());
}

pub(crate) fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    HOST.with(|host| f(&mut host.borrow_mut()))
}

pub(crate) mod kv {
    use super::*;
    use crate::kv::{Bounded, KvError};

    fn live(host: &MockHost, key: &str) -> Option<Vec<u8>> {
        host.kv
            .get(key)
            .filter(|(_, expires)| expires.is_none_or(|at| at > host.now))
            .map(|(value, _)| value.clone())
    }

    /// Before a write that may create `key`: weir's error for a full `max_keys` quota when
    /// the key is not held yet and the quota is.
    fn room_for(host: &MockHost, key: &str) -> Result<(), KvError> {
        let Some(max) = host.kv_max_keys else {
            return Ok(());
        };
        let held = host.kv.keys().filter(|k| live(host, k).is_some()).count();
        if live(host, key).is_none() && held >= max {
            return Err(KvError::Invalid(format!(
                "quota: the plugin's kv holds {max} keys, its max_keys; delete keys or let them expire"
            )));
        }
        Ok(())
    }

    fn expiry(now: SystemTime, ttl_ms: Option<u64>) -> Option<SystemTime> {
        ttl_ms.map(|ms| now + Duration::from_millis(ms))
    }

    /// One kv call: counted, and failed if the test took the store down. Sizes are checked
    /// as weir checks them.
    fn call<R>(
        key: &str,
        value: &[u8],
        op: impl FnOnce(&mut MockHost) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        with(|host| {
            host.kv_calls += 1;
            if let Some(why) = &host.kv_down {
                return Err(KvError::Unavailable(why.clone()));
            }
            if key.len() > 1024 {
                return Err(KvError::Invalid(format!(
                    "the key is {} bytes; at most 1024 are allowed",
                    key.len()
                )));
            }
            if value.len() > 1 << 20 {
                return Err(KvError::Invalid(format!(
                    "the value is {} bytes; at most {} are allowed",
                    value.len(),
                    1 << 20
                )));
            }
            op(host)
        })
    }

    pub(crate) fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        call(key, &[], |host| Ok(live(host, key)))
    }

    pub(crate) fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        call(key, value, |host| {
            room_for(host, key)?;
            let expires = expiry(host.now, ttl_ms);
            host.kv.insert(key.to_owned(), (value.to_vec(), expires));
            Ok(())
        })
    }

    pub(crate) fn delete(key: &str) -> Result<(), KvError> {
        call(key, &[], |host| {
            host.kv.remove(key);
            Ok(())
        })
    }

    /// The host's semantics: decimal text, absent or expired counts as 0, TTL set on create.
    pub(crate) fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        call(key, &[], |host| {
            increment_in(host, key, delta, i64::MAX, ttl_ms).map(|bounded| bounded.value)
        })
    }

    pub(crate) fn increment_within(
        key: &str,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<Bounded, KvError> {
        call(key, &[], |host| {
            increment_in(host, key, delta, limit, ttl_ms)
        })
    }

    pub(crate) fn compare_and_set(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        call(key, value, |host| {
            if live(host, key).as_deref() != expected {
                return Ok(false);
            }
            room_for(host, key)?;
            let expires = expiry(host.now, ttl_ms);
            host.kv.insert(key.to_owned(), (value.to_vec(), expires));
            Ok(true)
        })
    }

    fn ttl_of(host: &MockHost, key: &str) -> Option<Duration> {
        let (_, expires) = host.kv.get(key)?;
        Some(
            expires
                .as_ref()?
                .duration_since(host.now)
                .unwrap_or_default(),
        )
    }

    fn increment_in(
        host: &mut MockHost,
        key: &str,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<Bounded, KvError> {
        let current = match live(host, key) {
            Some(value) => Some(
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Invalid("the value is not a decimal integer".into()))?,
            ),
            None => None,
        };
        let next = current.unwrap_or(0).checked_add(delta).ok_or_else(|| {
            KvError::Invalid("the counter would overflow a 64-bit integer".into())
        })?;
        if next > limit {
            return Ok(Bounded {
                applied: false,
                value: current.unwrap_or(0),
                ttl: current.and_then(|_| ttl_of(host, key)),
            });
        }
        match current {
            Some(_) => {
                if let Some(slot) = host.kv.get_mut(key) {
                    slot.0 = next.to_string().into_bytes();
                }
            }
            None => {
                room_for(host, key)?;
                let expires = expiry(host.now, ttl_ms);
                host.kv
                    .insert(key.to_owned(), (next.to_string().into_bytes(), expires));
            }
        }
        Ok(Bounded {
            applied: true,
            value: next,
            ttl: ttl_of(host, key),
        })
    }
}

pub(crate) mod outbound {
    use super::*;
    use crate::outbound::{Answer, Call, OutboundError};

    /// A canned answer for calls to `cluster` with `method` and `path` (path without query
    /// matches any query); `None` as the answer stands for a failure.
    #[derive(Debug, Clone)]
    pub(crate) struct Stub {
        pub(crate) cluster: String,
        pub(crate) method: String,
        pub(crate) path: String,
        pub(crate) answer: Result<Answer, OutboundError>,
    }

    pub(crate) fn send(call: Call) -> Result<Answer, OutboundError> {
        with(|host| {
            let path = call.path.split('?').next().unwrap_or_default().to_owned();
            // The latest stub for a call wins, so a test can change an answer.
            let answer = host
                .outbound_stubs
                .iter()
                .rev()
                .find(|s| {
                    s.cluster == call.cluster
                        && s.method.eq_ignore_ascii_case(&call.method)
                        && (s.path == call.path || s.path == path)
                })
                .map(|s| s.answer.clone());
            let what = format!("{} {} {}", call.method, call.cluster, call.path);
            host.outbound_calls.push(call);
            answer.unwrap_or_else(|| {
                Err(OutboundError::Unavailable(format!(
                    "no stub answers {what}"
                )))
            })
        })
    }
}

/// weir's rules for `request.set-cache-key` and `request.add-cache-key`
/// (`host/src/plugin/view.rs`), so a filter that passes its unit tests gives keys weir takes.
pub(crate) mod cache_key {
    use super::with;
    use crate::http::CacheKeyChanges;

    const MAX_BYTES: usize = 1024;
    const MAX_PARTS: usize = 16;

    fn check(call: &str, what: &str, text: &str) -> Result<(), String> {
        if text.len() > MAX_BYTES {
            return Err(format!(
                "{call}: the {what} is {} bytes (at most {MAX_BYTES})",
                text.len()
            ));
        }
        if let Some(at) = text.find(char::is_control) {
            return Err(format!(
                "{call}: the {what} has a control character at byte {at}"
            ));
        }
        Ok(())
    }

    /// Records a request hook's cache key changes, or says why weir would fail the call.
    pub(crate) fn record(changes: CacheKeyChanges) -> Result<(), String> {
        if let Some(key) = &changes.replaced {
            check("set-cache-key", "key", key)?;
        }
        for part in &changes.added {
            check("add-cache-key", "part", part)?;
        }
        if changes.added.len() > MAX_PARTS {
            return Err(format!(
                "add-cache-key: the request's cache key has {MAX_PARTS} parts already (at most {MAX_PARTS})"
            ));
        }
        with(|host| host.cache_key = changes);
        Ok(())
    }
}

/// weir's rules for `request.set-method` and `request.set-body` (0.3.6,
/// `host/src/plugin/view.rs`), so a filter that passes its unit tests makes requests weir
/// sends.
pub(crate) mod rewrite {
    const MAX_METHOD_BYTES: usize = 32;
    const MAX_BODY_BYTES: usize = 1 << 20;

    /// An HTTP token character (RFC 9110's `tchar`).
    fn tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    /// Why weir would fail a call that left `method` (the request's method as the call
    /// leaves it, and whether the filter set it) and `body`, if it would.
    pub(crate) fn check(method: &str, set: bool, body: Option<&[u8]>) -> Result<(), String> {
        if set {
            if method.len() > MAX_METHOD_BYTES {
                return Err(format!(
                    "set-method: the method is {} bytes (at most {MAX_METHOD_BYTES})",
                    method.len()
                ));
            }
            if method.is_empty() || !method.bytes().all(tchar) {
                return Err(format!(
                    "set-method: {method:?} is not an HTTP method (a token)"
                ));
            }
            if method == "CONNECT" {
                return Err("set-method: CONNECT opens a tunnel, and weir opens none".into());
            }
        }
        if let Some(body) = body {
            if body.len() > MAX_BODY_BYTES {
                return Err(format!(
                    "set-body: the body is {} bytes (at most {MAX_BODY_BYTES})",
                    body.len()
                ));
            }
            if !body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE" | "TRACE") {
                return Err(format!(
                    "set-body: a {method} request's content has no meaning (RFC 9110), and an upstream may refuse it; set-method as well"
                ));
            }
        }
        Ok(())
    }
}

pub(crate) mod log {
    use super::*;

    pub(crate) fn enabled(level: Level) -> bool {
        with(|host| level >= host.level)
    }

    pub(crate) fn log(level: Level, message: &str) {
        with(|host| host.logs.push((level, message.to_owned())));
    }
}

/// weir's rules for `weir:plugin/metrics` (`host/src/metrics/plugin.rs`), so a filter that
/// passes its unit tests declares what weir accepts.
pub(crate) mod metrics {
    use std::collections::BTreeMap;

    use super::with;
    use crate::metrics::Kind;

    const MAX_METRICS: usize = 32;
    const MAX_LABELS: usize = 4;
    const MAX_NAME: usize = 64;
    const MAX_HELP: usize = 256;
    const MAX_BUCKETS: usize = 32;
    const MAX_SERIES: usize = 1000;
    const MAX_LABEL_VALUE: usize = 128;
    const OVERFLOW: &str = "_overflow";

    /// One update.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Update {
        Add(f64),
        Set(f64),
        Observe(f64),
    }

    /// A declared metric and its series.
    #[derive(Debug)]
    pub(crate) struct MockMetric {
        /// The exported name without `weir_plugin_<plugin>_`.
        name: String,
        kind: Kind,
        help: String,
        labels: Vec<String>,
        buckets: Vec<f64>,
        series: BTreeMap<Vec<String>, Values>,
    }

    /// A series: a counter's or gauge's value, a histogram's count and sum.
    #[derive(Debug, Default, Clone, Copy)]
    struct Values {
        value: f64,
        count: u64,
        sum: f64,
    }

    fn name_ok(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && name.len() <= MAX_NAME
    }

    pub(crate) fn declare(
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[&str],
        buckets: Option<&[f64]>,
    ) -> Result<u32, String> {
        if !with(|host| host.configuring) {
            return Err(format!(
                "{name}: metrics can be declared only while configure runs"
            ));
        }
        if !name_ok(name) {
            return Err(format!(
                "metric name {name:?}: must be [a-z_][a-z0-9_]*, at most {MAX_NAME} characters"
            ));
        }
        if help.is_empty() || help.chars().count() > MAX_HELP {
            return Err(format!("{name}: help must be 1 to {MAX_HELP} characters"));
        }
        if labels.len() > MAX_LABELS {
            return Err(format!(
                "{name}: at most {MAX_LABELS} labels, not {}",
                labels.len()
            ));
        }
        for (i, label) in labels.iter().enumerate() {
            if !name_ok(label) || label.starts_with("__") {
                return Err(format!(
                    "{name}: label name {label:?}: must be [a-z_][a-z0-9_]*, at most {MAX_NAME} characters, not starting with __"
                ));
            }
            if labels[..i].contains(label) {
                return Err(format!("{name}: label name {label:?} is given twice"));
            }
            if kind == Kind::Histogram && *label == "le" {
                return Err(format!("{name}: a histogram cannot have a label named le"));
            }
        }
        let buckets = match (kind, buckets) {
            (Kind::Histogram, None) => {
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]
            }
            (Kind::Histogram, Some(buckets)) => {
                let ok = (1..=MAX_BUCKETS).contains(&buckets.len())
                    && buckets.iter().all(|b| b.is_finite())
                    && buckets.windows(2).all(|w| w[0] < w[1]);
                if !ok {
                    return Err(format!(
                        "{name}: 1 to {MAX_BUCKETS} buckets, finite and in increasing order"
                    ));
                }
                buckets.to_vec()
            }
            (_, None) => Vec::new(),
            (_, Some(_)) => return Err(format!("{name}: only a histogram has buckets")),
        };
        let exported = if kind == Kind::Counter && !name.ends_with("_total") {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        with(|host| {
            if let Some(i) = host.metrics.iter().position(|m| m.name == exported) {
                let m = &host.metrics[i];
                if m.kind == kind && m.help == help && m.labels == labels && m.buckets == buckets {
                    return Ok(i as u32);
                }
                return Err(format!(
                    "{exported} is already declared with another kind, help, labels or buckets"
                ));
            }
            if host.metrics.len() >= MAX_METRICS {
                return Err(format!(
                    "at most {MAX_METRICS} metrics per plugin; {exported} would be one more"
                ));
            }
            host.metrics.push(MockMetric {
                name: exported,
                kind,
                help: help.to_owned(),
                labels,
                buckets,
                series: BTreeMap::new(),
            });
            Ok((host.metrics.len() - 1) as u32)
        })
    }

    pub(crate) fn update(metric: u32, labels: &[&str], update: Update, kind: Kind) {
        with(|host| {
            let Some(m) = host.metrics.get_mut(metric as usize) else {
                host.metric_errors += 1;
                return;
            };
            let finite = !matches!(update, Update::Observe(v) if !v.is_finite());
            if m.kind != kind || labels.len() != m.labels.len() || !finite {
                host.metric_errors += 1;
                return;
            }
            let mut values: Vec<String> = labels
                .iter()
                .map(|value| {
                    let mut at = value.len().min(MAX_LABEL_VALUE);
                    while !value.is_char_boundary(at) {
                        at -= 1;
                    }
                    value[..at].to_owned()
                })
                .collect();
            if !m.series.contains_key(&values) && m.series.len() >= MAX_SERIES {
                host.metric_errors += 1;
                values = vec![OVERFLOW.to_owned(); m.labels.len()];
            }
            let series = m.series.entry(values).or_default();
            match update {
                Update::Add(delta) => series.value += delta,
                Update::Set(value) => series.value = value,
                Update::Observe(value) => {
                    series.count += 1;
                    series.sum += value;
                }
            }
        });
    }

    /// The value weir would export for series `name{labels}`: `NAME_count` and `NAME_sum`
    /// for a histogram.
    pub(crate) fn value(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        with(|host| {
            for m in &host.metrics {
                let part = if m.name == name {
                    None
                } else if m.kind == Kind::Histogram {
                    match name.strip_prefix(m.name.as_str()) {
                        Some("_count") => Some(true),
                        Some("_sum") => Some(false),
                        _ => continue,
                    }
                } else {
                    continue;
                };
                if labels.len() != m.labels.len() {
                    return None;
                }
                let mut values = Vec::with_capacity(labels.len());
                for label in &m.labels {
                    let (_, value) = labels.iter().find(|(n, _)| n == label)?;
                    values.push((*value).to_owned());
                }
                let series = m.series.get(&values)?;
                return Some(match part {
                    None => series.value,
                    Some(true) => series.count as f64,
                    Some(false) => series.sum,
                });
            }
            None
        })
    }
}
