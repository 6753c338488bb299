//! Serving HTTP on one listener: the accept loop with its connection cap and accept backoff,
//! hyper's auto (HTTP/1.1 or HTTP/2 prior knowledge) connection per client, and the drain.

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
use tokio::sync::Semaphore;

use crate::config::ServerConfig;
use crate::error::BoxError;
use crate::shutdown::Drain;
use crate::timer::ConnectionTimer;

/// The first pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Failed accepts (usually EMFILE: out of file descriptors) retry at least this often.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `listener` until `drain` fires, then waits up to `settings.drain_timeout` for open
/// connections to finish their in-flight requests.
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    settings: ServerConfig,
    make_service: M,
    mut drain: Drain,
) where
    M: Fn(SocketAddr) -> S,
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
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    // A permit per open connection: past the cap, new clients wait in the kernel's accept
    // queue instead of costing memory and file descriptors here.
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let mut backoff = MIN_ACCEPT_BACKOFF;

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
        let service = make_service(peer);
        // Each connection's header-read timeouts reuse its own sleeps.
        let mut builder = builder.clone();
        builder.http1().timer(ConnectionTimer::default());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }

    // Closing the listener now makes new connection attempts fail fast instead of queueing.
    drop(listener);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(drain_timeout = ?settings.drain_timeout, "drain timed out; closing remaining connections");
    }
}
