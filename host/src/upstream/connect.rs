//! How weir reaches an endpoint: the [`Connector`] seam. The upstream client and the health
//! checks ask a connector for a byte stream to an endpoint's authority and speak HTTP over
//! it; they never open sockets themselves. [`TcpConnector`] is what weir runs with; tests
//! pass one that answers from memory, and TLS wraps a connector the same way.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to an endpoint.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An open connection to an endpoint, whatever carries it.
pub type Connection = Box<dyn Io>;

/// A connection being opened.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Connection>> + Send + 'a>>;

/// Opens connections to endpoints. The caller bounds each attempt with its connect timeout.
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// A new connection to `authority` (`host:port`; an IPv6 host in brackets).
    fn connect<'a>(&'a self, authority: &'a Authority) -> Connecting<'a>;
}

/// Plain TCP, with `TCP_NODELAY` (a proxy forwards small writes as they come).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, authority: &'a Authority) -> Connecting<'a> {
        Box::pin(async move {
            // An IPv6 literal comes bracketed in an authority, not in a socket address.
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = authority.port_u16().unwrap_or(80);
            let stream = TcpStream::connect((host, port)).await?;
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, %authority, "cannot set TCP_NODELAY");
            }
            Ok(Box::new(stream) as Connection)
        })
    }
}
