//! The seam between plugins and the proxy for requests a plugin sends to clusters: a
//! handler's `wasi:http` outgoing requests and a filter's `weir:plugin/outbound` calls both
//! reach the proxy's [`Outbound`], which sends them with the cluster's balancing, retries and
//! circuit breaking. Each plugin kind checks its grant (`NAME.toml` `clusters`) first.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Sends a plugin's request to a named cluster; implemented by the proxy, one per request.
pub trait Outbound: Send + Sync {
    /// Sends `request` (its URI holds only the path and query) to `cluster`.
    fn send(
        &self,
        cluster: String,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<OutboundBody>, OutboundError>> + Send>>;
}

/// The body of a cluster's response to a plugin's request.
pub type OutboundBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Why an outgoing request failed, as far as the guest is told.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// No cluster has that name.
    #[error("no cluster named {0:?}")]
    UnknownCluster(String),
    /// No endpoint could be reached.
    #[error("connecting failed: {0}")]
    Connect(String),
    /// The response did not come in time.
    #[error("timed out")]
    Timeout,
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}
