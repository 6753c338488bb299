//! Choosing an endpoint of a cluster for one request.
//!
//! A [`Balancer`] only chooses; it owns no connections and does no I/O, so picking is a few
//! atomic operations on the request path. Algorithms live one per file beside this one.
//!
//! Every algorithm chooses among the same [`Candidates`]: the healthy primary endpoints; if
//! none is healthy, the healthy backups; if none of those either, every primary (better to
//! try an endpoint believed down than to fail every request, as Envoy's panic mode does).
//! Health and ejections are the endpoints' live state (`crate::endpoints`), read lock-free
//! here; nothing in this module changes it. The cluster counts its unhealthy endpoints and
//! keeps its latest ejection deadline, so a first attempt while every endpoint is up (the
//! usual case) knows its candidates without a pass over the endpoints.

mod consistent_hash;
mod first;
mod least_request;
mod random;
mod round_robin;

pub use consistent_hash::{ConsistentHash, hash};
pub use first::First;
pub use least_request::LeastRequest;
pub use random::Random;
pub use round_robin::RoundRobin;

use crate::config::{ClusterConfig, LbPolicy};
pub use crate::endpoints::{EndpointState, Endpoints};

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
        LbPolicy::LeastRequest => Box::new(LeastRequest),
        LbPolicy::Random => Box::new(Random),
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

impl Endpoints {
    /// The set every algorithm chooses from (see the module docs), leaving out what `ctx`
    /// already tried unless nothing else is left.
    pub fn candidates(&self, ctx: &PickContext) -> Candidates {
        // The usual case, a first attempt with every endpoint up: the healthy primaries,
        // known without a look at each endpoint (a pass over them all, twice with a panic
        // threshold, on every request of a large cluster).
        // The clock is read only once an endpoint has been ejected: an ejection deadline is
        // the only thing `now` is compared with.
        let now = self.ejection_clock();
        let primaries = self.primary_count() as u64;
        if ctx.tried == 0
            && primaries > 0
            && !in_panic(primaries, primaries, self.panic_percent())
            && self.all_up(now)
        {
            return Candidates {
                tier: Tier::HealthyPrimaries,
                avoid: 0,
                now,
                all_primaries: true,
            };
        }
        self.candidates_endpoint_by_endpoint(ctx, now)
    }

    /// [`Endpoints::candidates`] from each endpoint's state at `now`.
    fn candidates_endpoint_by_endpoint(&self, ctx: &PickContext, now: u64) -> Candidates {
        let untried = |i: usize| !ctx.has_tried(i);
        let any = |pred: &dyn Fn(&EndpointState) -> bool, tried: &dyn Fn(usize) -> bool| {
            self.iter().enumerate().any(|(i, e)| tried(i) && pred(e))
        };
        let primary_up = |e: &EndpointState| !e.backup && e.is_up(now);
        let backup_up = |e: &EndpointState| e.backup && e.is_up(now);
        let primary = |e: &EndpointState| !e.backup;
        // Panic mode: with too few primaries up, balance across all of them (Envoy's panic
        // threshold), so the few left are not flattened by the whole load.
        let panic_percent = self.panic_percent();
        let panic = panic_percent > 0 && {
            let primaries = self.iter().filter(|e| primary(e)).count() as u64;
            let up = self.iter().filter(|e| primary_up(e)).count() as u64;
            in_panic(up, primaries, panic_percent)
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
        Candidates {
            tier,
            avoid,
            now,
            all_primaries: false,
        }
    }

    /// Whether a pick with `ctx` can still avoid every endpoint it tried (false once all
    /// have been: then any primary is picked again).
    pub fn untried_left(&self, ctx: &PickContext) -> bool {
        self.candidates(ctx).avoid == ctx.tried
    }
}

/// Panic mode: fewer than `percent` % of the `primaries` are `up`.
fn in_panic(up: u64, primaries: u64, percent: u32) -> bool {
    up * 100 < u64::from(percent) * primaries
}

/// Which endpoints may take a request now.
#[derive(Debug, Clone, Copy)]
pub struct Candidates {
    tier: Tier,
    avoid: u64,
    now: u64,
    /// Every primary, and only the primaries (every endpoint up, nothing tried): a weighted
    /// choice needs no pass over the endpoints ([`Endpoints::primary_by_weight`]).
    all_primaries: bool,
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

/// The candidates' total weight and a weighted choice among them (`None` if there is none),
/// at random.
fn weighted_pick(endpoints: &Endpoints, candidates: Candidates) -> Option<(u64, usize)> {
    if candidates.all_primaries {
        let total = endpoints.primary_weight();
        let r = (total > 0).then(|| fastrand::u64(0..total))?;
        return Some((total, endpoints.primary_by_weight(r)?));
    }
    let total = admitted_weight(endpoints, candidates);
    let r = (total > 0).then(|| fastrand::u64(0..total))?;
    Some((total, weighted_choice_or_first(endpoints, candidates, r)?))
}

/// [`weighted_choice`]; or, when `r` falls past the weights admitted now (an endpoint went
/// down after they were totalled), the first endpoint admitted, rather than none at all.
fn weighted_choice_or_first(
    endpoints: &Endpoints,
    candidates: Candidates,
    r: u64,
) -> Option<usize> {
    weighted_choice(endpoints, candidates, r)
        .or_else(|| (0..endpoints.len()).find(|&i| candidates.admits_index(endpoints, i)))
}

/// Weighted choice among admitted endpoints with `r` in `0..total admitted weight`.
fn weighted_choice(endpoints: &Endpoints, candidates: Candidates, r: u64) -> Option<usize> {
    weighted_choice_except(endpoints, candidates, usize::MAX, r)
}

/// [`weighted_choice`] among the admitted endpoints other than `except`, with `r` in `0..`
/// their total weight.
fn weighted_choice_except(
    endpoints: &Endpoints,
    candidates: Candidates,
    except: usize,
    mut r: u64,
) -> Option<usize> {
    for (i, e) in endpoints.iter().enumerate() {
        if i != except && candidates.admits(i, e) {
            let w = endpoints.weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
    }
    None
}

/// The total weight of admitted endpoints.
fn admitted_weight(endpoints: &Endpoints, candidates: Candidates) -> u64 {
    endpoints
        .iter()
        .enumerate()
        .filter(|(i, e)| candidates.admits(*i, e))
        .map(|(i, _)| endpoints.weight(i))
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
            protocol: crate::config::Protocol::Auto,
            max_streams: 100,
            tls: None,
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
            endpoints.set_healthy(0, false);
            let s = spread(&config, &endpoints, 100);
            assert_eq!((s[0], s[1], s[2]), (0, 100, 0), "{lb:?}");
            endpoints.set_healthy(1, false);
            assert_eq!(spread(&config, &endpoints, 100), [0, 0, 100], "{lb:?}");
            endpoints.set_healthy(2, false);
            let s = spread(&config, &endpoints, 100);
            assert_eq!((s[0] + s[1], s[2]), (100, 0), "{lb:?}: all down");
        }
    }

    /// The shortcut for a cluster with every endpoint up admits exactly the endpoints the
    /// look at each endpoint admits: every mix of three endpoints' backup flags, health,
    /// ejections (running, and over) and tried bits, with panic thresholds 0, 50 and 100.
    #[test]
    fn all_up_shortcut_admits_what_each_endpoints_state_admits() {
        let mut shortcuts = 0;
        for pct in [0, 50, 100] {
            for backups in 0..8u32 {
                for down in 0..8u32 {
                    for ejected in 0..16u32 {
                        for tried in 0..8u64 {
                            let bit = |mask: u32, i: usize| mask & (1 << i) != 0;
                            let shape: Vec<(u32, bool)> =
                                (0..3).map(|i| (1, bit(backups, i))).collect();
                            let mut config = cluster(&shape, LbPolicy::RoundRobin);
                            config.panic_threshold = pct;
                            let endpoints = Endpoints::new(&config);
                            for i in 0..3 {
                                if bit(down, i) {
                                    endpoints.set_healthy(i, false);
                                }
                                if bit(ejected, i) {
                                    endpoints.eject_for_test(i, endpoints.now_ms() + 60_000);
                                }
                            }
                            // Bit 3: an ejection that has ended (its deadline passed).
                            if bit(ejected, 3) {
                                endpoints.eject_for_test(0, 0);
                            }
                            let ctx = PickContext { hash: None, tried };
                            let quick = endpoints.candidates(&ctx);
                            let now = endpoints.ejection_clock();
                            let each = endpoints.candidates_endpoint_by_endpoint(&ctx, now);
                            let case = (pct, backups, down, ejected, tried);
                            for i in 0..3 {
                                assert_eq!(
                                    quick.admits_index(&endpoints, i),
                                    each.admits_index(&endpoints, i),
                                    "endpoint {i} in {case:?}"
                                );
                            }
                            if quick.all_primaries {
                                shortcuts += 1;
                            }
                        }
                    }
                }
            }
        }
        // The shortcut is taken, not only never wrong.
        assert!(shortcuts > 10, "{shortcuts}");
    }

    /// With every endpoint up, the binary searches over the primaries' weights choose what
    /// the pass over the endpoints chooses, for every draw: the first choice, and the second
    /// of least_request's, with the first's share taken out.
    #[test]
    fn weighted_choice_among_all_primaries_is_the_pass_over_the_endpoints() {
        let shape = [
            (3, false),
            (1, true),
            (5, false),
            (2, false),
            (4, true),
            (1, false),
        ];
        let config = cluster(&shape, LbPolicy::LeastRequest);
        let endpoints = Endpoints::new(&config);
        let ctx = PickContext::default();
        let quick = endpoints.candidates(&ctx);
        let each = endpoints.candidates_endpoint_by_endpoint(&ctx, 0);
        assert!(quick.all_primaries && !each.all_primaries);
        let total = admitted_weight(&endpoints, each);
        assert_eq!(endpoints.primary_weight(), total);
        for r in 0..total {
            let a = weighted_choice(&endpoints, each, r);
            assert_eq!(endpoints.primary_by_weight(r), a, "r = {r}");
            let a = a.expect("a primary");
            let (start, weight) = endpoints.primary_share(a).expect("a primary");
            assert_eq!(weight, endpoints.weight(a));
            for r in 0..total - weight {
                let b = weighted_choice_except(&endpoints, each, a, r);
                let moved = if r < start { r } else { r + weight };
                assert_eq!(endpoints.primary_by_weight(moved), b, "a = {a}, r = {r}");
            }
        }
        assert_eq!(endpoints.primary_by_weight(total), None);
        // A draw past the weights admitted now (one went down after they were totalled)
        // still finds an endpoint.
        endpoints.set_healthy(0, false);
        let now = endpoints.candidates(&ctx);
        assert_eq!(weighted_choice(&endpoints, now, total - 1), None);
        assert_eq!(
            weighted_choice_or_first(&endpoints, now, total - 1),
            Some(2)
        );
    }

    #[test]
    fn below_the_panic_threshold_every_primary_takes_load() {
        let mut config = cluster(&[(1, false); 4], LbPolicy::RoundRobin);
        config.panic_threshold = 50;
        let endpoints = Endpoints::new(&config);
        endpoints.set_healthy(0, false);
        assert_eq!(
            spread(&config, &endpoints, 30)[0],
            0,
            "3 of 4 up: above 50 %"
        );
        endpoints.set_healthy(1, false);
        assert_eq!(
            spread(&config, &endpoints, 30)[0],
            0,
            "2 of 4 up: exactly 50 %"
        );
        endpoints.set_healthy(2, false);
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
        assert!(endpoints.untried_left(&ctx));
        // Everything tried: any primary again rather than nothing.
        ctx.mark_tried(2);
        assert!(!endpoints.untried_left(&ctx));
        assert!(matches!(balancer.pick(&ctx, &endpoints), Some(0 | 1)));

        // One endpoint: tried once is all tried.
        let config = cluster(&[(1, false)], LbPolicy::RoundRobin);
        let endpoints = Endpoints::new(&config);
        let mut ctx = PickContext::default();
        assert!(endpoints.untried_left(&ctx));
        ctx.mark_tried(0);
        assert!(!endpoints.untried_left(&ctx));
    }
}
