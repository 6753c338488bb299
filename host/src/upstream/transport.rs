//! How weir talks to one cluster's endpoints: a byte stream from the connector, TLS over it
//! when the cluster has TLS, then an HTTP/1.1 or HTTP/2 handshake as the cluster's protocol
//! (and, for `auto`, ALPN) says. The upstream client and the health checks both open
//! connections here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version, header};
use hyper::body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Connection, Connector};
use crate::config::{ClusterConfig, Protocol};
use crate::error::BoxError;
use crate::tls::ClientTls;

/// What a generation's clusters reach their endpoints with: one connector for all, and the
/// TLS client of each cluster that has TLS (by cluster name).
#[derive(Debug, Clone)]
pub struct Transports {
    /// Opens byte streams to endpoints.
    pub connector: Arc<dyn Connector>,
    /// Each TLS cluster's client config, loaded from its files.
    pub tls: HashMap<String, Arc<ClientTls>>,
}

impl Transports {
    /// Plain connections through `connector`, no cluster with TLS.
    pub fn plain(connector: Arc<dyn Connector>) -> Transports {
        Transports {
            connector,
            tls: HashMap::new(),
        }
    }

    /// The transport for `cluster`.
    pub(crate) fn for_cluster(&self, cluster: &ClusterConfig) -> Transport {
        Transport {
            connector: self.connector.clone(),
            tls: self.tls.get(&cluster.name).cloned(),
            protocol: cluster.protocol,
        }
    }
}

/// One cluster's way to its endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    connector: Arc<dyn Connector>,
    tls: Option<Arc<ClientTls>>,
    protocol: Protocol,
}

/// An HTTP connection's sending half, either version.
#[derive(Debug)]
pub(crate) enum Sender<B> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>),
}

impl Transport {
    /// Whether connections may be HTTP/2 (then they are shared between requests).
    pub(crate) fn may_be_h2(&self) -> bool {
        match self.protocol {
            Protocol::H2 | Protocol::H2c => true,
            Protocol::Auto => self.tls.is_some(),
            Protocol::Http1 => false,
        }
    }

    /// Whether every connection is HTTP/2 (an upgrade cannot be sent).
    pub(crate) fn only_h2(&self) -> bool {
        matches!(self.protocol, Protocol::H2 | Protocol::H2c)
    }

    /// `https` with TLS, else `http`: the scheme of HTTP/2 requests.
    pub(crate) fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// Opens a connection to `authority` and shakes hands in the HTTP version it will speak;
    /// `http1_only` for an upgrade. The caller bounds the whole with its connect timeout and
    /// drives the returned connection future (the connection lives while it runs).
    pub(crate) async fn open<B>(
        &self,
        authority: &Authority,
        http1_only: bool,
    ) -> Result<(Sender<B>, Driving), String>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let stream = self
            .connector
            .connect(authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let (stream, h2): (Connection, bool) = match &self.tls {
            Some(tls) => {
                let done = tls
                    .connect(authority, stream, http1_only)
                    .await
                    .map_err(|e| format!("connecting to {authority}: {e}"))?;
                if self.protocol == Protocol::H2 && !done.h2 && !http1_only {
                    return Err(format!(
                        "connecting to {authority}: the endpoint did not agree to HTTP/2 (ALPN h2), and the cluster's protocol is \"h2\""
                    ));
                }
                (done.stream, done.h2)
            }
            None => (stream, self.protocol == Protocol::H2c && !http1_only),
        };
        let io = TokioIo::new(stream);
        let authority = authority.clone();
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            // A connection that silently died (a NAT, a load balancer) is found by its
            // unanswered ping, not by every request on it timing out.
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            let (sender, connection) = builder
                .handshake(io)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
            Ok((
                Sender::Http2(sender),
                boxed_connection(connection, authority),
            ))
        } else {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake with {authority}: {e}"))?;
            let connection = connection.with_upgrades();
            Ok((
                Sender::Http1(sender),
                boxed_connection(connection, authority),
            ))
        }
    }
}

/// A connection's future: the connection lives while something drives it.
pub(crate) type Driving = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's future that logs how it ended.
fn boxed_connection<F, E>(connection: F, authority: Authority) -> Driving
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    Box::pin(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, %authority, "upstream connection ended with an error");
        }
    })
}

/// Readies `request` for an HTTP/1.1 connection: origin-form URI, the host in `Host`.
pub(crate) fn as_http1<B>(request: &mut Request<B>, endpoint: &Authority) {
    *request.version_mut() = Version::HTTP_11;
    if let Some(authority) = request.uri().authority().cloned() {
        // Made absolute for an HTTP/2 attempt before: back to origin form.
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = header::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(uri) = path.parse::<Uri>() {
            *request.uri_mut() = uri;
        }
    }
    // HTTP/1.1 requires a Host; a request that came without one names the endpoint.
    if !request.headers().contains_key(header::HOST)
        && let Ok(host) = header::HeaderValue::from_str(endpoint.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Readies `request` for an HTTP/2 connection: the host moves from `Host` to `:authority`
/// (an absolute URI), with the scheme.
pub(crate) fn as_http2<B>(request: &mut Request<B>, endpoint: &Authority, scheme: &Scheme) {
    *request.version_mut() = Version::HTTP_2;
    if request.uri().authority().is_some() {
        return;
    }
    let host = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().and_then(|h| h.parse::<Authority>().ok()))
        .unwrap_or_else(|| endpoint.clone());
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(host);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}
