//! The upstream client: pooled keep-alive HTTP/1.1 connections to a cluster's endpoints.
//!
//! One [`UpstreamClient`] per cluster, because connect and response timeouts and connection
//! caps are per cluster. Its pool is keyed by endpoint authority, so connections are reused
//! per endpoint.

mod limit;

pub use limit::PendingOverflow;

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use self::limit::LimitedConnector;
use crate::body::ProxyBody;
use crate::config::ClusterConfig;
use crate::error::{ErrorKind, ProxyError};

/// Sends requests to one cluster's endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<LimitedConnector, ProxyBody>,
    connector: LimitedConnector,
    max_connections: usize,
    response_timeout: Duration,
}

impl UpstreamClient {
    /// A client with the cluster's timeouts.
    pub fn new(cluster: &ClusterConfig) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cluster.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let connector =
            LimitedConnector::new(connector, cluster.max_connections, cluster.max_pending);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cluster.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        UpstreamClient {
            client,
            connector,
            max_connections: cluster.max_connections,
            response_timeout: cluster.response_timeout,
        }
    }

    /// Connections open to the cluster's endpoints now.
    pub fn open_connections(&self) -> usize {
        self.connector.open(self.max_connections)
    }

    /// Requests waiting for a connection now (all `max_connections` are open).
    pub fn pending(&self) -> usize {
        self.connector.waiting()
    }

    /// Sends `request` (its URI already names the endpoint) and waits for response headers.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() && caused_by_overflow(&e) => {
                Err(ProxyError::new(ErrorKind::Overloaded).with_cause(e))
            }
            Ok(Err(e)) if e.is_connect() => {
                Err(ProxyError::new(ErrorKind::UpstreamConnect).with_cause(e))
            }
            Ok(Err(e)) => Err(ProxyError::new(ErrorKind::UpstreamFailed).with_cause(e)),
            Err(elapsed) => Err(ProxyError::new(ErrorKind::UpstreamTimeout).with_cause(elapsed)),
        }
    }
}

/// Whether a connect error is [`PendingOverflow`] (the cluster's caps), not the network.
fn caused_by_overflow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<PendingOverflow>() {
            return true;
        }
        source = err.source();
    }
    false
}
