//! An in-memory [`Connector`]: each connection is a duplex pipe with a hyper server on the
//! far end (HTTP/1.1, or HTTP/2 with prior knowledge for an `h2c` cluster), answering every request with a function of it. What the data path's
//! tests and `weir plugin test` put behind a cluster, so that nothing leaves the process.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{Connecting, Connection, Connector};
use crate::error::BoxError;

/// A response body an in-memory endpoint sends.
pub type MemoryBody = UnsyncBoxBody<Bytes, BoxError>;

/// An in-memory endpoint's answer: a response, or an error, which resets the connection
/// without one.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<MemoryBody>, io::Error>> + Send>>;

type Endpoint = Arc<dyn Fn(Request<Bytes>) -> Answer + Send + Sync>;

/// Endpoints by authority, each a function from a request (its body read whole) to an
/// answer. An authority with no endpoint refuses connections.
#[derive(Clone, Default)]
pub struct MemoryConnector {
    endpoints: HashMap<String, Endpoint>,
}

impl fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnector")
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MemoryConnector {
    /// No endpoints: every connection is refused.
    pub fn new() -> MemoryConnector {
        MemoryConnector::default()
    }

    /// Answers connections to `authority` (`host:port`) with `answer`.
    pub fn endpoint(
        mut self,
        authority: &str,
        answer: impl Fn(Request<Bytes>) -> Answer + Send + Sync + 'static,
    ) -> MemoryConnector {
        self.endpoints
            .insert(authority.to_owned(), Arc::new(answer));
        self
    }
}

impl Connector for MemoryConnector {
    fn connect<'a>(&'a self, authority: &'a Authority) -> Connecting<'a> {
        let endpoint = self.endpoints.get(authority.as_str()).cloned();
        Box::pin(async move {
            let Some(endpoint) = endpoint else {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            };
            let (near, far) = tokio::io::duplex(64 * 1024);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let endpoint = endpoint.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = match body.collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(e) => return Err(io::Error::other(e)),
                    };
                    endpoint(Request::from_parts(parts, body)).await
                }
            });
            tokio::spawn(async move {
                // HTTP/1.1, or HTTP/2 with prior knowledge for an `h2c` cluster.
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let connection = builder.serve_connection(TokioIo::new(far), service);
                // An endpoint that answers with an error ends its connection on purpose.
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "in-memory endpoint connection ended");
                }
            });
            Ok(Box::new(near) as Connection)
        })
    }
}
