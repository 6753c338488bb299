//! A generation: one immutable snapshot of everything the data path reads.
//!
//! The data path loads the current generation once per request and keeps that `Arc` until the
//! request ends, so swapping in a new generation never disturbs a request in flight.

use std::sync::Arc;

use crate::balancer::{Balancer, RoundRobin};
use crate::config::{ClusterConfig, Config};
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
}

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
    /// Builds everything the data path needs from a validated config.
    pub fn build(config: Config) -> Generation {
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
        }
    }
}
