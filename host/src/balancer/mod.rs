//! Choosing an endpoint of a cluster for one request.
//!
//! A [`Balancer`] only chooses; it owns no connections and does no I/O, so picking is a few
//! atomic operations on the request path. Algorithms live one per file beside this one.
//!
//! Every algorithm chooses among the same [`Candidates`]: the healthy primary endpoints; if
//! none is healthy, the healthy backups; if none of those either, every primary (better to
//! try an endpoint believed down than to fail every request, as Envoy's panic mode does).
//! Health is an atomic flag per endpoint, set by active health checks, and an ejection
//! deadline, set by outlier detection (passive health) from real requests; both are read
//! lock-free here.

mod consistent_hash;
mod first;
mod least_request;
mod random;
mod round_robin;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use consistent_hash::{ConsistentHash, hash};
pub use first::First;
pub use least_request::LeastRequest;
pub use random::Random;
pub use round_robin::RoundRobin;

use crate::config::{ClusterConfig, LbPolicy, OutlierDetection};

/// What a balancer may look at to choose.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext {
    /// The request's hash key (for `consistent_hash`), already hashed.
    pub hash: Option<u64>,
    /// Endpoints this request already failed on (bit `i` for endpoint `i < 64`): a retry
    /// avoids them while any other candidate remains.
    pub tried: u64,
}

impl PickContext {
    /// Whether endpoint `i` was already tried.
    fn has_tried(&self, i: usize) -> bool {
        i < 64 && self.tried & (1 << i) != 0
    }

    /// Records endpoint `i` as tried.
    pub fn mark_tried(&mut self, i: usize) {
        if i < 64 {
            self.tried |= 1 << i;
        }
    }
}

/// An endpoint-selection algorithm over a cluster's endpoints, indexed `0..len`.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of the endpoint to use, or `None` when the cluster has no endpoint.
    fn pick(&self, ctx: &PickContext, endpoints: &Endpoints) -> Option<usize>;
}

/// Builds the balancer `config.lb` names.
pub fn build(config: &ClusterConfig) -> Box<dyn Balancer> {
    let weights: Vec<u32> = config.endpoints.iter().map(|e| e.weight).collect();
    match &config.lb {
        LbPolicy::RoundRobin => Box::new(RoundRobin::new(&weights)),
        LbPolicy::LeastRequest => Box::new(LeastRequest::new(&weights)),
        LbPolicy::Random => Box::new(Random::new(&weights)),
        LbPolicy::ConsistentHash { .. } => {
            let names: Vec<String> = config
                .endpoints
                .iter()
                .map(|e| e.authority.to_string())
                .collect();
            Box::new(ConsistentHash::new(&names, &weights))
        }
        LbPolicy::First => Box::new(First),
    }
}

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

    /// Marks the endpoint healthy or not; returns whether that changed anything.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Healthy and not ejected at `now_ms`.
    fn is_up(&self, now_ms: u64) -> bool {
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
        }))
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

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX)
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
        state.ejected_until_ms.store(until, Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        Some(ejection)
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

    /// The set every algorithm chooses from (see the module docs), leaving out what `ctx`
    /// already tried unless nothing else is left.
    pub fn candidates(&self, ctx: &PickContext) -> Candidates {
        let now = self.now_ms();
        let untried = |i: usize| !ctx.has_tried(i);
        let any = |pred: &dyn Fn(&EndpointState) -> bool, tried: &dyn Fn(usize) -> bool| {
            self.0.iter().enumerate().any(|(i, e)| tried(i) && pred(e))
        };
        let primary_up = |e: &EndpointState| !e.backup && e.is_up(now);
        let backup_up = |e: &EndpointState| e.backup && e.is_up(now);
        let primary = |e: &EndpointState| !e.backup;
        // Panic mode: with too few primaries up, balance across all of them (Envoy's panic
        // threshold), so the few left are not flattened by the whole load.
        let panic = self.0.panic_percent > 0 && {
            let primaries = self.0.iter().filter(|e| primary(e)).count() as u64;
            let up = self.0.iter().filter(|e| primary_up(e)).count() as u64;
            up * 100 < u64::from(self.0.panic_percent) * primaries
        };
        let tier = if any(&primary_up, &untried) && !panic {
            Tier::HealthyPrimaries
        } else if any(&backup_up, &untried) {
            Tier::HealthyBackups
        } else {
            Tier::AllPrimaries
        };
        let avoid = match tier {
            Tier::HealthyPrimaries | Tier::HealthyBackups => ctx.tried,
            Tier::AllPrimaries if any(&primary, &untried) => ctx.tried,
            Tier::AllPrimaries => 0,
        };
        Candidates { tier, avoid, now }
    }
}

/// Which endpoints may take a request now.
#[derive(Debug, Clone, Copy)]
pub struct Candidates {
    tier: Tier,
    avoid: u64,
    now: u64,
}

#[derive(Debug, Clone, Copy)]
enum Tier {
    HealthyPrimaries,
    HealthyBackups,
    AllPrimaries,
}

impl Candidates {
    /// Whether endpoint `i`, whose state is `e`, is one of them.
    pub fn admits(&self, i: usize, e: &EndpointState) -> bool {
        if i < 64 && self.avoid & (1 << i) != 0 {
            return false;
        }
        match self.tier {
            Tier::HealthyPrimaries => !e.backup && e.is_up(self.now),
            Tier::HealthyBackups => e.backup && e.is_up(self.now),
            Tier::AllPrimaries => !e.backup,
        }
    }

    /// Whether endpoint `i` of `endpoints` is one of them.
    pub fn admits_index(&self, endpoints: &Endpoints, i: usize) -> bool {
        endpoints.get(i).is_some_and(|e| self.admits(i, e))
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

/// Weighted choice among admitted endpoints with `r` in `0..total admitted weight`.
fn weighted_choice(
    endpoints: &Endpoints,
    weights: &[u32],
    candidates: Candidates,
    mut r: u64,
) -> Option<usize> {
    for (i, e) in endpoints.0.iter().enumerate() {
        if candidates.admits(i, e) {
            let w = u64::from(weights.get(i).copied().unwrap_or(1));
            if r < w {
                return Some(i);
            }
            r -= w;
        }
    }
    None
}

/// The total weight of admitted endpoints.
fn admitted_weight(endpoints: &Endpoints, weights: &[u32], candidates: Candidates) -> u64 {
    endpoints
        .0
        .iter()
        .enumerate()
        .filter(|(i, e)| candidates.admits(*i, e))
        .map(|(i, _)| u64::from(weights.get(i).copied().unwrap_or(1)))
        .sum()
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::{Endpoint, LbPolicy};

    /// A cluster config with endpoints `(weight, backup)` on ports 1, 2, …
    pub(crate) fn cluster(endpoints: &[(u32, bool)], lb: LbPolicy) -> ClusterConfig {
        ClusterConfig {
            name: "c".into(),
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, &(weight, backup))| Endpoint {
                    authority: format!("10.0.0.{}:80", i + 1).parse().expect("authority"),
                    weight,
                    backup,
                })
                .collect(),
            lb,
            retries: 0,
            retry_on_statuses: Vec::new(),
            retry_budget_percent: 20,
            retry_buffer_bytes: 0,
            request_timeout: None,
            health_check: None,
            outlier_detection: None,
            max_requests: 1024,
            panic_threshold: 0,
            max_connections: 1024,
            max_pending: 1024,
            sticky: None,
            connect_timeout: std::time::Duration::from_secs(1),
            response_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
        }
    }

    /// How many of `n` picks went to each endpoint.
    pub(crate) fn spread(config: &ClusterConfig, endpoints: &Endpoints, n: usize) -> Vec<usize> {
        let balancer = build(config);
        let mut counts = vec![0; endpoints.len()];
        for i in 0..n {
            let ctx = PickContext {
                hash: Some(i as u64),
                tried: 0,
            };
            if let Some(e) = balancer.pick(&ctx, endpoints) {
                counts[e] += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{cluster, spread};
    use super::*;

    #[test]
    fn backups_serve_only_when_no_primary_is_healthy_and_all_down_means_all_primaries() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::Random,
            LbPolicy::First,
            LbPolicy::ConsistentHash {
                key: crate::config::HashKey::Path,
            },
        ] {
            let config = cluster(&[(1, false), (1, false), (1, true)], lb.clone());
            let endpoints = Endpoints::new(&config);
            assert_eq!(spread(&config, &endpoints, 100)[2], 0, "{lb:?}");
            endpoints.0[0].set_healthy(false);
            let s = spread(&config, &endpoints, 100);
            assert_eq!((s[0], s[1], s[2]), (0, 100, 0), "{lb:?}");
            endpoints.0[1].set_healthy(false);
            assert_eq!(spread(&config, &endpoints, 100), [0, 0, 100], "{lb:?}");
            endpoints.0[2].set_healthy(false);
            let s = spread(&config, &endpoints, 100);
            assert_eq!((s[0] + s[1], s[2]), (100, 0), "{lb:?}: all down");
        }
    }

    #[test]
    fn below_the_panic_threshold_every_primary_takes_load() {
        let mut config = cluster(&[(1, false); 4], LbPolicy::RoundRobin);
        config.panic_threshold = 50;
        let endpoints = Endpoints::new(&config);
        endpoints.0[0].set_healthy(false);
        assert_eq!(
            spread(&config, &endpoints, 30)[0],
            0,
            "3 of 4 up: above 50 %"
        );
        endpoints.0[1].set_healthy(false);
        assert_eq!(
            spread(&config, &endpoints, 30)[0],
            0,
            "2 of 4 up: exactly 50 %"
        );
        endpoints.0[2].set_healthy(false);
        assert_eq!(
            spread(&config, &endpoints, 40),
            [10, 10, 10, 10],
            "1 of 4: panic"
        );
    }

    #[test]
    fn a_retry_avoids_tried_endpoints_while_others_remain() {
        let config = cluster(&[(1, false), (1, false), (1, true)], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        let balancer = build(&config);
        let mut ctx = PickContext::default();
        ctx.mark_tried(0);
        for _ in 0..10 {
            assert_eq!(balancer.pick(&ctx, &endpoints), Some(1));
        }
        // Both primaries tried: the backup, though primaries are healthy.
        ctx.mark_tried(1);
        assert_eq!(balancer.pick(&ctx, &endpoints), Some(2));
        // Everything tried: any primary again rather than nothing.
        ctx.mark_tried(2);
        assert!(matches!(balancer.pick(&ctx, &endpoints), Some(0 | 1)));
    }

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
        assert_eq!(endpoints.0[0].in_flight(), 2);
        drop((a, b));
        assert_eq!(endpoints.0[0].in_flight(), 0);
    }
}
