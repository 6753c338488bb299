//! A generation: one immutable snapshot of everything the data path reads.
//!
//! The data path loads the current generation once per request and keeps that `Arc` until the
//! request ends, so swapping in a new generation never disturbs a request in flight. Each
//! reload builds a new generation from the previous one: clusters whose config did not change
//! are shared, so their connection pools and balancer state carry over.

use std::path::PathBuf;
use std::sync::Arc;

use crate::access_log::{AccessLog, Names};
use crate::balancer::{self, Balancer, Endpoints};
use crate::cache::RouteCache;
use crate::config::{ClusterConfig, Config, RouteConfig, RouteTarget};
use crate::health::{self, HealthChecker};
use crate::metrics::{ClusterMetrics, NO_ROUTE, RouteMetrics, metrics};
use crate::pace::Pace;
use crate::plugin::chain::{Chain, OutputLimits};
use crate::plugin::{Filter, Handler, KvUsage, Plugin};
use crate::router::Router;
use crate::trace::Tracing;
use crate::upstream::{Transports, UpstreamClient};

/// Config plus what is built from it: the route table, the clusters and the plugin chains.
#[derive(Debug)]
pub struct Generation {
    /// Counts up from 1 at startup, by one per applied reload.
    pub number: u64,
    /// The validated configuration this generation was built from.
    pub config: Arc<Config>,
    /// The route table.
    pub router: Router,
    /// Clusters, in the same order as `config.clusters`.
    pub clusters: Vec<Arc<Cluster>>,
    /// Each route, in the same order as `config.routes` (the router's indices).
    pub routes: Vec<Route>,
    /// The plugin folder as this generation sees it, in file-name order.
    pub plugins: Vec<PluginSlot>,
    /// The metrics of requests that matched no route.
    pub no_route: RouteMetrics,
    /// Where access log records go, if anywhere (the process's one writer).
    pub access_log: Option<Arc<AccessLog>>,
    /// Route, cluster and endpoint names formatted for the access log (empty without one).
    pub log_names: Names,
    /// Where spans go, if anywhere (the process's one tracer).
    pub tracing: Option<Arc<Tracing>>,
}

/// The process's writers of what requests leave behind, the same for every generation.
#[derive(Debug, Clone, Default)]
pub struct Observers {
    /// The access log.
    pub access_log: Option<Arc<AccessLog>>,
    /// The tracer.
    pub tracing: Option<Arc<Tracing>>,
}

/// A route ready to serve: its chain of filters and what answers it.
#[derive(Debug)]
pub struct Route {
    /// The route's filters, in order.
    pub chain: Chain,
    /// What answers the requests the chain passes on.
    pub target: Target,
    /// The route's request counts, durations and bytes.
    pub metrics: RouteMetrics,
    /// How its responses are compressed, if they are.
    pub compression: Option<crate::config::Compression>,
    /// Its stored responses, if it has a cache.
    pub cache: Option<Arc<RouteCache>>,
    /// Spaces out its mirror's copies (unused by a route without a mirror).
    pub mirror_pace: Pace,
}

/// What answers a route.
#[derive(Debug)]
pub enum Target {
    /// The cluster at this index of [`Generation::clusters`].
    Cluster(usize),
    /// A handler plugin: the loaded handler, or why it cannot answer (the route then answers
    /// 503).
    Handler(Result<Arc<Handler>, String>),
    /// Clusters sharing the route's requests by weight.
    Backends(Split),
}

/// A route's weighted backends, as the ranges of one line their weights make.
#[derive(Debug)]
pub struct Split {
    /// Each backend's cluster index and the end of its range; ends ascending.
    ranges: Vec<(usize, u64)>,
    /// The line's length: the weights' sum.
    total: u64,
}

impl Split {
    fn new(backends: &[crate::config::Backend]) -> Split {
        let mut end = 0;
        let ranges = backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| {
                end += u64::from(b.weight);
                (b.cluster.index, end)
            })
            .collect();
        Split { ranges, total: end }
    }

    /// The cluster for a point anywhere in `u64`, scaled onto the line: a random point splits
    /// by weight; a client's hash keeps it on one backend while the weights stay, and a
    /// weight change moves only the clients whose place on the line changes hands (scaling,
    /// unlike a modulo, keeps every client's place when the sum changes).
    pub fn pick(&self, point: u64) -> usize {
        let point = ((u128::from(point) * u128::from(self.total)) >> 64) as u64;
        self.ranges
            .iter()
            .find(|(_, end)| point < *end)
            .or(self.ranges.last())
            .map_or(0, |(cluster, _)| *cluster)
    }
}

/// One plugin file: the version serving (if any) and the last load error (if any).
///
/// A file whose newest contents failed to load keeps serving its previous version; a file
/// that never loaded has no version and is left out of the default chain (a route that names
/// it answers 503).
#[derive(Debug, Clone)]
pub struct PluginSlot {
    /// The plugin's name: the file stem without its numeric ordering prefix.
    pub name: String,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// The version serving traffic.
    pub serving: Option<Plugin>,
    /// The generation in which `serving` went live.
    pub since_generation: u64,
    /// Why the file's newest contents were rejected, if they were.
    pub last_error: Option<String>,
}

/// A cluster ready to serve: its endpoints, balancer and connection pool.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's configuration.
    pub config: ClusterConfig,
    /// Chooses an endpoint per request.
    pub balancer: Box<dyn Balancer>,
    /// Each endpoint's health and requests in flight.
    pub endpoints: Endpoints,
    /// Active health checks, running while the cluster is in use.
    pub health: Option<HealthChecker>,
    /// Each endpoint's opaque sticky-cookie value.
    pub sticky_ids: Vec<String>,
    /// Pooled connections to the endpoints.
    pub client: UpstreamClient,
    /// Retries, circuit-breaker refusals, ejections and upstream durations.
    pub metrics: ClusterMetrics,
}

impl Generation {
    /// Builds everything the data path needs from a validated config and the plugin folder.
    /// Clusters of `previous` whose config is unchanged are reused, with their pools, health
    /// state and health checks. Starts health checks for new clusters: call inside tokio.
    pub fn build(
        number: u64,
        config: Arc<Config>,
        plugins: Vec<PluginSlot>,
        previous: Option<&Generation>,
        transports: &Transports,
        observers: &Observers,
    ) -> Generation {
        let output_limits = OutputLimits::from_limits(&config.server.limits);
        let routes = config
            .routes
            .iter()
            .map(|route| Route {
                chain: chain(route.plugins.as_deref(), &plugins)
                    .on_route(&route.name)
                    .limited(output_limits),
                target: match &route.target {
                    RouteTarget::Cluster(cluster) => Target::Cluster(cluster.index),
                    RouteTarget::Handler(name) => Target::Handler(handler(name, &plugins)),
                    RouteTarget::Backends(backends) => Target::Backends(Split::new(backends)),
                },
                metrics: metrics().route(&route.name),
                compression: route.compression.clone(),
                cache: route_cache(route, &config, previous),
                mirror_pace: crate::proxy::mirror_pace(),
            })
            .collect();
        let router = Router::new(&config.routes);
        for warning in router.shadow_warnings(&config.routes) {
            tracing::warn!("{warning}");
        }
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let same = previous
                    .and_then(|p| p.clusters.iter().find(|old| old.config == *c))
                    .cloned();
                same.unwrap_or_else(|| {
                    let endpoints = Endpoints::new(c);
                    let transport = transports.for_cluster(c);
                    Arc::new(Cluster {
                        metrics: metrics()
                            .cluster(&c.name, c.endpoints.iter().map(|e| e.authority.as_str())),
                        sticky_ids: sticky_ids(c),
                        config: c.clone(),
                        balancer: balancer::build(c),
                        health: health::spawn(c, &endpoints, &transport),
                        endpoints,
                        client: UpstreamClient::new(c, transport),
                    })
                })
            })
            .collect();
        let log_names = observers
            .access_log
            .as_ref()
            .map(|log| log.names(&config, number))
            .unwrap_or_default();
        Generation {
            number,
            config,
            router,
            clusters,
            routes,
            plugins,
            no_route: metrics().route(NO_ROUTE),
            access_log: observers.access_log.clone(),
            log_names,
            tracing: observers.tracing.clone(),
        }
    }

    /// What the plugins' shared `kv` store holds, per plugin namespace.
    pub fn kv_usage(&self) -> Vec<(String, KvUsage)> {
        self.plugins
            .iter()
            .find_map(|slot| match &slot.serving {
                Some(Plugin::Filter(filter)) => Some(filter.kv_usage()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// A route's cache: the previous generation's, when the route kept its name, its cache
/// settings and the name of what answers it (a cluster whose endpoints or timeouts changed
/// still serves the same resources, as nginx's cache outlives its reloads), else a new,
/// empty one.
fn route_cache(
    route: &RouteConfig,
    config: &Config,
    previous: Option<&Generation>,
) -> Option<Arc<RouteCache>> {
    let settings = route.cache.as_ref()?;
    let target = |route: &RouteConfig, config: &Config| match &route.target {
        RouteTarget::Cluster(c) => config.clusters[c.index].name.clone(),
        RouteTarget::Handler(name) => format!("handler {name}"),
        RouteTarget::Backends(backends) => backends
            .iter()
            .map(|b| config.clusters[b.cluster.index].name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    };
    let kept = previous.and_then(|p| {
        let (index, old) = p
            .config
            .routes
            .iter()
            .enumerate()
            .find(|(_, old)| old.name == route.name)?;
        let same =
            old.cache.as_ref() == Some(settings) && target(old, &p.config) == target(route, config);
        same.then(|| p.routes[index].cache.clone()).flatten()
    });
    Some(kept.unwrap_or_else(|| {
        Arc::new(RouteCache::new(
            settings.clone(),
            metrics().cache(&route.name),
        ))
    }))
}

/// Opaque per-endpoint ids for sticky cookies: a hash of the cluster and the address, so the
/// cookie does not reveal the address and stays valid across restarts and reloads.
fn sticky_ids(config: &ClusterConfig) -> Vec<String> {
    config
        .endpoints
        .iter()
        .map(|e| {
            let id = balancer::hash(("weir-sticky", &config.name, e.authority.as_str()));
            format!("{id:016x}")
        })
        .collect()
}

/// A route's chain: the named plugins in order, or every serving plugin in the folder. If a
/// named one is missing or never loaded, the chain refuses traffic rather than skip it.
fn chain(names: Option<&[String]>, plugins: &[PluginSlot]) -> Chain {
    let Some(names) = names else {
        return Chain::new(plugins.iter().filter_map(serving_filter).collect());
    };
    let mut chain = Vec::with_capacity(names.len());
    for name in names {
        match plugins.iter().find(|s| s.name == *name) {
            // A handler has no hooks to run in a chain. Skipping it would pass requests the
            // operator meant a plugin to see (a wrong file named like the auth plugin): the
            // route refuses traffic instead, saying why.
            Some(PluginSlot {
                serving: Some(Plugin::Handler(_)),
                ..
            }) => {
                return Chain::unavailable(format!(
                    "plugin {name} is a wasi:http handler, not a filter: it cannot run in a route's plugins (name it with handler = \"{name}\")"
                ));
            }
            Some(PluginSlot {
                serving: Some(Plugin::Filter(filter)),
                ..
            }) => chain.push(filter.clone()),
            Some(PluginSlot { last_error, .. }) => {
                let why = last_error.as_deref().unwrap_or("no version loaded");
                return Chain::unavailable(format!("plugin {name} failed to load: {why}"));
            }
            None => return Chain::unavailable(format!("plugin {name} is not loaded")),
        }
    }
    Chain::new(chain)
}

/// A route's handler: the named plugin, if it is loaded and is a `wasi:http` handler.
fn handler(name: &str, plugins: &[PluginSlot]) -> Result<Arc<Handler>, String> {
    match plugins.iter().find(|s| s.name == name) {
        Some(PluginSlot {
            serving: Some(Plugin::Handler(handler)),
            ..
        }) => Ok(handler.clone()),
        Some(PluginSlot {
            serving: Some(Plugin::Filter(_)),
            ..
        }) => Err(format!(
            "plugin {name} is a filter, not a wasi:http handler"
        )),
        Some(PluginSlot { last_error, .. }) => Err(format!(
            "handler {name} failed to load: {}",
            last_error.as_deref().unwrap_or("no version loaded")
        )),
        None => Err(format!("handler {name} is not loaded")),
    }
}

/// The slot's serving version, if it is a filter.
fn serving_filter(slot: &PluginSlot) -> Option<Arc<Filter>> {
    match &slot.serving {
        Some(Plugin::Filter(filter)) => Some(filter.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Split;
    use crate::config::{Backend, ClusterRef};

    fn split(weights: &[u32]) -> Split {
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| Backend {
                cluster: ClusterRef {
                    name: format!("c{index}"),
                    index,
                },
                weight,
            })
            .collect();
        Split::new(&backends)
    }

    #[test]
    fn a_weight_change_moves_only_the_points_that_change_hands() {
        let (even, uneven) = (split(&[1, 1]), split(&[1, 2]));
        let points: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let moved = points
            .iter()
            .filter(|&&p| even.pick(p) != uneven.pick(p))
            .count();
        // 1/2 → 1/3 for the first backend: a sixth of the points change hands, no more.
        assert!((1_500..=1_850).contains(&moved), "{moved} of 10000 moved");
        let zero = split(&[0, 5]);
        assert!(
            points.iter().all(|&p| zero.pick(p) == 1),
            "weight 0 takes nothing"
        );
    }
}
