//! The live state of a cluster's endpoints, shared by the balancer (which only reads it),
//! the proxy and health checking: each endpoint's health flag, requests in flight, failure
//! counts and outlier ejection; and the cluster's circuit breaker (`max_requests`), retry
//! budget, count of unhealthy endpoints and latest ejection deadline (so a pick can tell
//! that every endpoint is up without looking at each). All atomics, read lock-free on the
//! request path. Beside them, what the config fixes: each endpoint's weight, and the
//! primaries' running weight totals for a weighted choice among them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ClusterConfig, OutlierDetection};

/// The live state of one endpoint, shared by the balancer, the proxy and health checking.
#[derive(Debug)]
pub struct EndpointState {
    /// Only used when no primary is healthy.
    pub backup: bool,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    failures: AtomicU64,
    /// Failed requests in a row, for outlier detection.
    consecutive_failures: AtomicU32,
    /// Ejected until this many milliseconds after [`Endpoints`]' start; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// How many times it has been ejected.
    ejections: AtomicU32,
    /// The last health check's failure, for `/clusters`; `None` after a pass.
    last_check_error: Mutex<Option<String>>,
}

impl EndpointState {
    /// Whether the endpoint is believed healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Healthy and not ejected at `now_ms`.
    pub(crate) fn is_up(&self, now_ms: u64) -> bool {
        self.is_healthy() && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Requests sent to it and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests to it that failed (connect errors, resets, timeouts) since it was configured.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts a failed request.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The last health check's failure, if it failed.
    pub fn last_check_error(&self) -> Option<String> {
        self.last_check_error.lock().ok().and_then(|e| e.clone())
    }

    /// Records a health check's outcome.
    pub fn set_check_result(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_check_error.lock() {
            *last = error;
        }
    }
}

/// A cluster's live state: its endpoints' (in config order) and its own counters. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Endpoints(Arc<ClusterState>);

#[derive(Debug)]
struct ClusterState {
    states: Box<[EndpointState]>,
    /// Time zero for ejection deadlines.
    start: Instant,
    /// Requests in flight to the cluster, for `max_requests`.
    active: AtomicUsize,
    /// Requests refused because `max_requests` were in flight.
    rejected: AtomicU64,
    /// Retries in flight, for the retry budget.
    retrying: AtomicUsize,
    /// `panic_threshold`: below this share of primaries up, balance across all primaries.
    panic_percent: u32,
    /// Endpoints marked unhealthy by their health checks now.
    unhealthy: AtomicUsize,
    /// The latest ejection deadline ever set: from then on, no endpoint is ejected (an
    /// ejection ended early leaves it as it was). 0 until an endpoint is ejected, when no
    /// deadline needs the clock.
    ejected_until_max: AtomicU64,
    /// Each endpoint's weight, from the config.
    weights: Box<[u32]>,
    /// The primaries in config order, each with the sum of the weights up to and including
    /// its own: a weighted choice among all of them is a binary search.
    primaries: Box<[(u64, usize)]>,
}

impl std::ops::Deref for ClusterState {
    type Target = [EndpointState];

    fn deref(&self) -> &[EndpointState] {
        &self.states
    }
}

/// Why [`Endpoints::admit`] refused a request.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0} requests in flight (max_requests)")]
pub struct Overloaded(pub usize);

/// Retries in flight always allowed whatever the budget says (Envoy allows 3; a burst of
/// resets from one dying endpoint easily needs more at low concurrency).
pub const MIN_RETRIES_ALLOWED: usize = 10;

/// A retry counted against the cluster's retry budget until dropped.
#[derive(Debug)]
pub struct Retrying(Endpoints);

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.0.retrying.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request counted against the cluster's `max_requests` until dropped.
#[derive(Debug)]
pub struct Admitted(Endpoints);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoints {
    /// State for `config`'s endpoints: all healthy, nothing in flight.
    pub fn new(config: &ClusterConfig) -> Endpoints {
        let states = config
            .endpoints
            .iter()
            .map(|e| EndpointState {
                backup: e.backup,
                healthy: AtomicBool::new(true),
                in_flight: AtomicUsize::new(0),
                failures: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
                ejections: AtomicU32::new(0),
                last_check_error: Mutex::new(None),
            })
            .collect();
        Endpoints(Arc::new(ClusterState {
            states,
            start: Instant::now(),
            active: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            retrying: AtomicUsize::new(0),
            panic_percent: config.panic_threshold,
            unhealthy: AtomicUsize::new(0),
            ejected_until_max: AtomicU64::new(0),
            weights: config.endpoints.iter().map(|e| e.weight).collect(),
            primaries: config
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.backup)
                .scan(0u64, |sum, (i, e)| {
                    *sum += u64::from(e.weight);
                    Some((*sum, i))
                })
                .collect(),
        }))
    }

    /// Endpoint `i`'s weight.
    pub(crate) fn weight(&self, i: usize) -> u64 {
        self.0.weights.get(i).map_or(1, |&w| u64::from(w))
    }

    /// How many of the endpoints are primaries.
    pub(crate) fn primary_count(&self) -> usize {
        self.0.primaries.len()
    }

    /// The primaries' weights together.
    pub(crate) fn primary_weight(&self) -> u64 {
        self.0.primaries.last().map_or(0, |&(sum, _)| sum)
    }

    /// The primary that `r`, in `0..primary_weight()`, falls on when each primary takes as
    /// much of that range as its weight, in config order.
    pub(crate) fn primary_by_weight(&self, r: u64) -> Option<usize> {
        let at = self.0.primaries.partition_point(|&(sum, _)| sum <= r);
        self.0.primaries.get(at).map(|&(_, i)| i)
    }

    /// Primary `i`'s share of `0..primary_weight()`: where it starts, and its weight.
    pub(crate) fn primary_share(&self, i: usize) -> Option<(u64, u64)> {
        let primaries = &self.0.primaries;
        let at = primaries.binary_search_by_key(&i, |&(_, e)| e).ok()?;
        let start = at.checked_sub(1).map_or(0, |p| primaries[p].0);
        Some((start, primaries[at].0 - start))
    }

    /// Marks endpoint `i` healthy or not; returns whether that changed anything.
    pub fn set_healthy(&self, i: usize, healthy: bool) -> bool {
        let Some(state) = self.0.get(i) else {
            return false;
        };
        let changed = state.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed && healthy {
            self.0.unhealthy.fetch_sub(1, Ordering::Relaxed);
        } else if changed {
            self.0.unhealthy.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// Whether every endpoint is healthy and none is ejected at `now` (from
    /// [`Endpoints::ejection_clock`]): the usual state, in which no endpoint need be looked at.
    pub(crate) fn all_up(&self, now: u64) -> bool {
        self.0.unhealthy.load(Ordering::Relaxed) == 0
            && self.0.ejected_until_max.load(Ordering::Relaxed) <= now
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Endpoint `i`'s state.
    pub fn get(&self, i: usize) -> Option<&EndpointState> {
        self.0.get(i)
    }

    /// Admits a request if fewer than `max` are in flight to the cluster (circuit breaking:
    /// over the cap, fail fast instead of queueing without bound).
    pub fn admit(&self, max: usize) -> Result<Admitted, Overloaded> {
        let before = self.0.active.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(self.clone());
        if before >= max {
            self.0.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Overloaded(before));
        }
        Ok(admitted)
    }

    /// Starts a retry if the budget allows: retries in flight stay within `percent` of the
    /// requests in flight, with [`MIN_RETRIES_ALLOWED`] always allowed. Counted until dropped.
    pub fn start_retry(&self, percent: u32) -> Option<Retrying> {
        let active = self.0.active.load(Ordering::Relaxed);
        let allowed = (active * percent as usize / 100).max(MIN_RETRIES_ALLOWED);
        let before = self.0.retrying.fetch_add(1, Ordering::Relaxed);
        let retrying = Retrying(self.clone());
        (before < allowed).then_some(retrying)
    }

    /// Requests in flight to the cluster.
    pub fn active(&self) -> usize {
        self.0.active.load(Ordering::Relaxed)
    }

    /// Requests refused by `max_requests` so far.
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }

    /// How much longer endpoint `i` stays ejected, if it is.
    pub fn ejected_for(&self, i: usize) -> Option<Duration> {
        let until = self.0.get(i)?.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Ends endpoint `i`'s ejection early (a passing active health check outranks passive
    /// detection, as in Envoy); returns whether it was ejected.
    pub fn uneject(&self, i: usize) -> bool {
        let Some(state) = self.0.get(i) else {
            return false;
        };
        let was = state.ejected_until_ms.swap(0, Ordering::Relaxed) > self.now_ms();
        state.consecutive_failures.store(0, Ordering::Relaxed);
        was
    }

    /// Feeds one request's outcome on endpoint `i` to outlier detection. Returns the
    /// ejection time if this failure ejected the endpoint.
    pub fn record_outcome(
        &self,
        i: usize,
        failed: bool,
        detection: &OutlierDetection,
    ) -> Option<Duration> {
        let state = self.0.get(i)?;
        if !failed {
            state.consecutive_failures.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now_ms();
        if streak < detection.consecutive_failures
            || state.ejected_until_ms.load(Ordering::Relaxed) > now
        {
            return None;
        }
        // Never eject past max_ejection_percent, but always allow one.
        let ejected = self
            .0
            .iter()
            .filter(|e| e.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        let cap = self.0.len() * detection.max_ejection_percent as usize / 100;
        if ejected > 0 && ejected + 1 > cap {
            return None;
        }
        let times = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ejection = detection.base_ejection_time * times.min(10);
        let until = now.saturating_add(u64::try_from(ejection.as_millis()).unwrap_or(u64::MAX));
        self.eject_until(state, until);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        Some(ejection)
    }

    /// Ejects `state`, one of these endpoints', until `until` on [`Endpoints::now_ms`]'s clock.
    fn eject_until(&self, state: &EndpointState, until: u64) {
        self.0.ejected_until_max.fetch_max(until, Ordering::Relaxed);
        state.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    /// Ejects endpoint `i` until `until`, as outlier detection would.
    #[cfg(test)]
    pub(crate) fn eject_for_test(&self, i: usize, until: u64) {
        if let Some(state) = self.0.get(i) {
            self.eject_until(state, until);
        }
    }

    /// Counts a request in flight to endpoint `i` until the guard is dropped.
    pub fn start(&self, i: usize) -> InFlight {
        if let Some(e) = self.0.get(i) {
            e.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            endpoints: self.clone(),
            index: i,
        }
    }

    /// Every endpoint's state, in config order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, EndpointState> {
        self.0.states.iter()
    }

    /// `panic_threshold`: below this share of primaries up, balance across all primaries.
    pub(crate) fn panic_percent(&self) -> u32 {
        self.0.panic_percent
    }

    /// The clock ejection deadlines are compared with: 0 until an endpoint has been ejected
    /// (every deadline is 0 then, already past, and the clock is not read), else
    /// [`Endpoints::now_ms`].
    pub(crate) fn ejection_clock(&self) -> u64 {
        if self.0.ejected_until_max.load(Ordering::Relaxed) == 0 {
            0
        } else {
            self.now_ms()
        }
    }

    /// Milliseconds since these endpoints were configured: the clock ejections are kept in.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request counted as in flight to one endpoint; uncounted when dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoints: Endpoints,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(e) = self.endpoints.0.get(self.index) {
            e.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{cluster, spread};
    use crate::config::LbPolicy;

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_growing_times_within_the_percent_cap() {
        let config = cluster(&[(1, false); 4], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        let detection = OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 50,
        };
        let fail = |i| endpoints.record_outcome(i, true, &detection);
        assert_eq!((fail(0), fail(0)), (None, None));
        // A success in between starts the count again.
        assert_eq!(endpoints.record_outcome(0, false, &detection), None);
        assert_eq!((fail(0), fail(0)), (None, None));
        assert_eq!(fail(0), Some(Duration::from_secs(10)));
        assert_eq!(
            spread(&config, &endpoints, 30)[0],
            0,
            "ejected endpoints get nothing"
        );
        // Two of four may be out at once (50 %); the third stays in.
        assert_eq!(
            (fail(1), fail(1), fail(1)),
            (None, None, Some(Duration::from_secs(10)))
        );
        assert_eq!((fail(2), fail(2), fail(2)), (None, None, None));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(endpoints.ejected_for(0), None);
        assert_eq!(
            spread(&config, &endpoints, 40)[0],
            10,
            "back after the ejection"
        );
        // The second ejection lasts twice as long.
        assert_eq!(
            (fail(0), fail(0), fail(0)),
            (None, None, Some(Duration::from_secs(20)))
        );
    }

    #[test]
    fn the_retry_budget_allows_ten_then_a_share_of_active_requests() {
        let config = cluster(&[(1, false)], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        let retries: Vec<_> = (0..10).map(|_| endpoints.start_retry(50)).collect();
        assert!(retries.iter().all(Option::is_some));
        assert!(endpoints.start_retry(50).is_none());
        let _active: Vec<_> = (0..30).map(|_| endpoints.admit(100)).collect();
        assert!(
            endpoints.start_retry(50).is_some(),
            "50 % of 30 in flight is 15"
        );
        drop(retries);
        assert!(endpoints.start_retry(50).is_some());
    }

    #[test]
    fn max_requests_fails_fast_and_frees_on_drop() {
        let config = cluster(&[(1, false)], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        let first = endpoints.admit(2).expect("admitted");
        let second = endpoints.admit(2).expect("admitted");
        assert!(endpoints.admit(2).is_err());
        assert_eq!((endpoints.active(), endpoints.rejected()), (2, 1));
        drop((first, second));
        assert!(endpoints.admit(2).is_ok());
    }

    #[test]
    fn in_flight_is_counted_until_the_guard_drops() {
        let config = cluster(&[(1, false)], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        let a = endpoints.start(0);
        let b = endpoints.start(0);
        assert_eq!(endpoints.get(0).expect("endpoint").in_flight(), 2);
        drop((a, b));
        assert_eq!(endpoints.get(0).expect("endpoint").in_flight(), 0);
    }
}
