//! A generation: one immutable snapshot of everything the data path reads.
//!
//! The data path loads the current generation once per request and keeps that `Arc` until the
//! request ends, so swapping in a new generation never disturbs a request in flight.

use std::sync::Arc;

use crate::balancer::{Balancer, RoundRobin};
use crate::config::{ClusterConfig, Config};
use crate::plugin::chain::Chain;
use crate::plugin::{LoadError, Plugin};
use crate::router::Router;
use crate::upstream::UpstreamClient;

/// Config plus what is built from it: the route table and the clusters.
#[derive(Debug)]
pub struct Generation {
    /// The validated configuration this generation was built from.
    pub config: Arc<Config>,
    /// The route table.
    pub router: Router,
    /// Clusters, in the same order as `config.clusters`.
    pub clusters: Vec<Cluster>,
    /// Each route's plugin chain, in the same order as `config.routes`.
    pub chains: Vec<Chain>,
}

/// The plugin folder's contents: each file's plugin name and its loaded plugin or why not.
pub type PluginSet = [(String, Result<Arc<Plugin>, LoadError>)];

/// A cluster ready to serve: its endpoints, balancer and connection pool.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's configuration.
    pub config: ClusterConfig,
    /// Chooses an endpoint per request.
    pub balancer: Box<dyn Balancer>,
    /// Pooled connections to the endpoints.
    pub client: UpstreamClient,
}

impl Generation {
    /// Builds everything the data path needs from a validated config and the loaded plugins.
    pub fn build(config: Config, plugins: &PluginSet) -> Generation {
        let chains = config
            .routes
            .iter()
            .map(|route| chain(route.plugins.as_deref(), plugins))
            .collect();
        let router = Router::new(&config.routes);
        let clusters = config
            .clusters
            .iter()
            .map(|c| Cluster {
                config: c.clone(),
                balancer: Box::new(RoundRobin::new(c.endpoints.len())),
                client: UpstreamClient::new(c),
            })
            .collect();
        Generation {
            config: Arc::new(config),
            router,
            clusters,
            chains,
        }
    }
}

/// A route's chain: the named plugins in order, or every plugin in the folder. If one is
/// missing or was rejected at load, the chain refuses traffic rather than skip it.
fn chain(names: Option<&[String]>, plugins: &PluginSet) -> Chain {
    let entries: Vec<&(String, Result<Arc<Plugin>, LoadError>)> = match names {
        None => plugins.iter().collect(),
        Some(names) => {
            let mut entries = Vec::with_capacity(names.len());
            for name in names {
                match plugins.iter().find(|(n, _)| n == name) {
                    Some(entry) => entries.push(entry),
                    None => return Chain::unavailable(format!("plugin {name} is not loaded")),
                }
            }
            entries
        }
    };
    let mut chain = Vec::with_capacity(entries.len());
    for (name, loaded) in entries {
        match loaded {
            Ok(plugin) => chain.push(plugin.clone()),
            Err(e) => return Chain::unavailable(format!("plugin {name} failed to load: {e}")),
        }
    }
    Chain::new(chain)
}
