//! The upstream client: pooled keep-alive HTTP/1.1 connections to a cluster's endpoints.
//!
//! One [`UpstreamClient`] per cluster, because connect and response timeouts and connection
//! caps are per cluster. A request takes an idle connection to its endpoint, or opens one
//! while the cluster has fewer than `max_connections`, or waits (at most `max_pending` wait;
//! one more fails at once with [`PendingOverflow`], as Envoy's circuit breakers do). Its
//! response body gives the connection back when read to the end (see [`pool`]).

mod connect;
mod memory;
mod pool;

pub use connect::{Connecting, Connection, Connector, Io, TcpConnector};
pub use memory::{Answer, MemoryBody, MemoryConnector};
pub use pool::{PendingOverflow, UpstreamBody};

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper_util::rt::TokioIo;

use self::pool::{Acquired, Lease, Pool, Sender, Slot};
use crate::body::ProxyBody;
use crate::config::ClusterConfig;
use crate::error::{ErrorKind, ProxyError};
use crate::timer::{TimedOut, Timers};

/// Sends requests to one cluster's endpoints.
#[derive(Debug)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
    connector: Arc<dyn Connector>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

/// A connection ready for a request, and whether it served one before.
struct Checkout {
    sender: Sender,
    reused: bool,
}

impl UpstreamClient {
    /// A client with the cluster's timeouts and caps, opening connections with
    /// `connector`. Inside tokio, a task closes connections idle for `idle_timeout`; it ends
    /// when the client is dropped.
    pub fn new(cluster: &ClusterConfig, connector: Arc<dyn Connector>) -> UpstreamClient {
        let pool = Arc::new(Pool::new(
            cluster.endpoints.iter().map(|e| e.authority.clone()),
            cluster.max_connections,
            cluster.max_pending,
        ));
        pool::spawn_reaper(&pool, cluster.idle_timeout);
        UpstreamClient {
            pool,
            connector,
            connect_timeout: cluster.connect_timeout,
            response_timeout: cluster.response_timeout,
        }
    }

    /// Connections open to the cluster's endpoints now.
    pub fn open_connections(&self) -> usize {
        self.pool.open()
    }

    /// Requests waiting for a connection now (all `max_connections` are open).
    pub fn pending(&self) -> usize {
        self.pool.waiting()
    }

    /// Sends `request` (its URI in origin form: path and query) to the endpoint at index
    /// `endpoint` of the cluster, and waits for the response headers, timed by one of the
    /// downstream connection's `timers`.
    pub(crate) async fn send(
        &self,
        endpoint: usize,
        request: Request<ProxyBody>,
        timers: &Timers,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let deadline = timers.deadline(self.response_timeout);
        tokio::select! {
            biased;
            result = self.exchange(endpoint, request) => result,
            () = deadline => Err(ProxyError::new(ErrorKind::UpstreamTimeout)
                .with_cause(TimedOut(self.response_timeout))),
        }
    }

    async fn exchange(
        &self,
        endpoint: usize,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let Some(target) = self.pool.endpoints.get(endpoint) else {
            return Err(ProxyError::new(ErrorKind::NoEndpoint));
        };
        // HTTP/1.1 requires a Host; a request that came without one names the endpoint.
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(target.authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        loop {
            let Checkout { mut sender, reused } = self.checkout(endpoint).await?;
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        pool: self.pool.clone(),
                        endpoint,
                    };
                    return Ok(response.map(|body| UpstreamBody::new(body, lease)));
                }
                Err(mut e) => match e.take_message() {
                    // A kept-alive connection closed before the request went out: nothing
                    // reached the endpoint, so another connection may send it.
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        let error = e.into_error();
                        return Err(ProxyError::new(ErrorKind::UpstreamFailed).with_cause(error));
                    }
                },
            }
        }
    }

    /// An idle connection to `endpoint`, a new one, or — at `max_connections` — the first of
    /// either to become available.
    async fn checkout(&self, endpoint: usize) -> Result<Checkout, ProxyError> {
        match self.pool.acquire(endpoint).await? {
            Acquired::Idle(sender) => Ok(Checkout {
                sender,
                reused: true,
            }),
            Acquired::Slot(slot) => self.connect(endpoint, slot).await,
        }
    }

    /// Opens a connection to `endpoint`, driven by a task that holds `slot` until it closes.
    async fn connect(&self, endpoint: usize, slot: Slot) -> Result<Checkout, ProxyError> {
        let authority = &self.pool.endpoints[endpoint].authority;
        let failed = |cause: String| ProxyError::new(ErrorKind::UpstreamConnect).with_cause(cause);
        let stream =
            match tokio::time::timeout(self.connect_timeout, self.connector.connect(authority))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(failed(format!("connecting to {authority}: {e}"))),
                Err(_) => {
                    let limit = self.connect_timeout;
                    return Err(failed(format!(
                        "connecting to {authority}: timed out after {limit:?}"
                    )));
                }
            };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(format!("connecting to {authority}: {e}")))?;
        let authority = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %authority, "upstream connection ended with an error");
            }
            drop(slot);
        });
        Ok(Checkout {
            sender,
            reused: false,
        })
    }
}
