//! Serving HTTP on one listener: the accept loop with its connection cap and accept backoff,
//! the TLS handshake when the listener has TLS, hyper's auto (HTTP/1.1 with upgrades, or
//! HTTP/2) connection per client, and the drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::error::BoxError;
use crate::shutdown::Drain;
use crate::timer::ConnectionTimer;
use crate::tls::{ServerTls, TlsInfo};

/// A client connection, accepted and (on a TLS listener) past its handshake.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// What the TLS handshake settled; `None` on a plain listener.
    pub(crate) tls: Option<TlsInfo>,
    /// The connection's place under `max_connections`: freed when the last holder drops it
    /// (the connection, or a tunnel an upgrade turned it into).
    pub(crate) slot: Arc<OwnedSemaphorePermit>,
}

/// The first pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Failed accepts (usually EMFILE: out of file descriptors) retry at least this often.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `listener` (with TLS, if `tls`) until `drain` fires, then waits up to
/// `settings.drain_timeout` for open connections to finish their in-flight requests and for
/// upgraded connections to close.
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    settings: ServerConfig,
    make_service: M,
    mut drain: Drain,
) where
    M: Fn(Accepted) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(settings.header_read_timeout);
    // WebSockets over HTTP/2 (RFC 8441) arrive as extended CONNECTs.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    // A permit per open connection: past the cap, new clients wait in the kernel's accept
    // queue instead of costing memory and file descriptors here.
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let make_service = Arc::new(make_service);

    loop {
        let permit = tokio::select! {
            _ = drain.signaled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = MIN_ACCEPT_BACKOFF;
                    accepted
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        // Each connection's header-read timeouts reuse its own sleeps.
        let mut builder = builder.clone();
        builder.http1().timer(ConnectionTimer::default());
        let watcher = graceful.watcher();
        let slot = Arc::new(permit);
        let make_service = make_service.clone();
        match &tls {
            None => {
                let service = make_service(Accepted {
                    peer,
                    tls: None,
                    slot,
                });
                tokio::spawn(async move {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                // A client that never finishes its handshake gets as long as one that never
                // finishes its headers.
                let handshake_timeout = settings.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let info = TlsInfo::of(&stream);
                    let service = make_service(Accepted {
                        peer,
                        tls: Some(info),
                        slot,
                    });
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
        }
    }

    // Closing the listener now makes new connection attempts fail fast instead of queueing.
    drop(listener);
    let drained = async {
        graceful.shutdown().await;
        // Every slot back: upgraded connections (tunnels) hold theirs until they close.
        let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
        let _ = connections.acquire_many(all).await;
    };
    if tokio::time::timeout(settings.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(drain_timeout = ?settings.drain_timeout, "drain timed out; closing remaining connections");
    }
}
