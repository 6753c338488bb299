//! Serving HTTP on one listener: the accept loop with its connection cap and accept backoff,
//! the PROXY protocol header and the TLS handshake when the listener has them, hyper's auto
//! (HTTP/1.1 with upgrades, or HTTP/2) connection per client, and the drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::config::ServerConfig;
use crate::error::BoxError;
use crate::proxy_protocol::{self, Rewind};
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

/// What a listener does with a connection before HTTP.
#[derive(Debug, Default)]
pub(crate) struct Accept {
    /// The TLS handshake, on a TLS listener.
    pub(crate) tls: Option<Arc<ServerTls>>,
    /// A PROXY protocol header first, naming the client.
    pub(crate) proxy_protocol: bool,
}

/// How often an HTTP/2 client connection is pinged, and how long its answer may take before
/// the connection is closed (Envoy's and gRPC's usual keepalive figures).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The first pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Failed accepts (usually EMFILE: out of file descriptors) retry at least this often.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `listener` (with TLS, if `tls`) until `drain` fires, then waits up to
/// `settings.drain_timeout` for open connections to finish their in-flight requests and for
/// upgraded connections to close.
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    accept: Accept,
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
    let limits = &settings.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A head past `head_bytes` or with more than `headers` headers: hyper answers 431.
    builder
        .http1()
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(limits.head_bytes)
        .max_headers(limits.headers);
    // WebSockets over HTTP/2 (RFC 8441) arrive as extended CONNECTs.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_streams)
        .enable_connect_protocol()
        // A peer that stopped answering (gone behind a NAT) is found and its slot freed.
        .keep_alive_interval(Some(H2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    // A permit per open connection: past the cap, new clients wait in the kernel's accept
    // queue instead of costing memory and file descriptors here.
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let make_service = Arc::new(make_service);
    let open = listener
        .local_addr()
        .map(|a| crate::metrics::metrics().listener(&a.to_string()))
        .ok();

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
        let acceptor = accept.tls.as_ref().map(|tls| tls.acceptor());
        let proxy_protocol = accept.proxy_protocol;
        // A client gets as long to finish its TLS handshake, and then its first bytes, as
        // to finish its headers.
        let limit = settings.header_read_timeout;
        // Counted in `weir_downstream_connections` while the task runs.
        let open = open.as_ref().map(crate::metrics::Held::new);
        tokio::spawn(async move {
            // The task holds the slot too: a service may drop its `Accepted` at once.
            let _held = slot.clone();
            let _open = open;
            // Behind a load balancer speaking the PROXY protocol, the client is whom it names.
            let (peer, stream) = if proxy_protocol {
                let mut stream = stream;
                let header = proxy_protocol::read_header(&mut stream);
                match tokio::time::timeout(limit, header).await {
                    Ok(Ok((client, ahead))) => (client.unwrap_or(peer), Rewind::new(stream, ahead)),
                    Ok(Err(e)) => {
                        return tracing::debug!(error = %e, %peer, "no valid PROXY protocol header");
                    }
                    Err(_) => {
                        return tracing::debug!(%peer, "PROXY protocol header timed out");
                    }
                }
            } else {
                (peer, Rewind::new(stream, bytes::Bytes::new()))
            };
            let Some(acceptor) = acceptor else {
                let service = make_service(Accepted {
                    peer,
                    tls: None,
                    slot,
                });
                let stream = FirstBytes::new(stream, limit);
                return serve_connection(&builder, stream, service, watcher, peer).await;
            };
            let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let service = make_service(Accepted {
                peer,
                tls: Some(TlsInfo::of(&stream)),
                slot,
            });
            let stream = FirstBytes::new(stream, limit);
            serve_connection(&builder, stream, service, watcher, peer).await;
        });
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

/// One client connection, plain or TLS, served until it ends (or the drain ends it).
async fn serve_connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: I,
    service: S,
    watcher: Watcher,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// The bytes that settle a connection's protocol: the HTTP/2 preface is 24 bytes, and an
/// HTTP/1.1 request line with its first header is longer.
const FIRST_BYTES: usize = 24;

/// A client connection whose first [`FIRST_BYTES`] must arrive within a time limit. hyper-util
/// reads them to choose HTTP/1.1 or HTTP/2 with no timeout of its own, and hyper's
/// `header_read_timeout` starts only after: without this, a client that connects and sends
/// nothing (or a few bytes of the HTTP/2 preface) would hold its connection slot forever.
struct FirstBytes<T> {
    inner: T,
    /// Until the first bytes are in.
    deadline: Option<Pin<Box<Sleep>>>,
    wanted: usize,
}

impl<T> FirstBytes<T> {
    fn new(inner: T, limit: Duration) -> FirstBytes<T> {
        FirstBytes {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            wanted: FIRST_BYTES,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                self.wanted = self.wanted.saturating_sub(read);
                if self.wanted == 0 {
                    self.deadline = None;
                }
            }
            Poll::Pending => {
                if let Some(deadline) = &mut self.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent too little to start HTTP within header_read_timeout",
                    )));
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

proxy_protocol::write_through!(FirstBytes);

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_must_send_its_first_bytes_in_time_and_then_may_idle() {
        let limit = Duration::from_secs(5);
        // Silent: cut at the limit.
        let (_client, server) = tokio::io::duplex(64);
        let mut silent = FirstBytes::new(server, limit);
        let started = tokio::time::Instant::now();
        let error = silent.read(&mut [0; 8]).await.expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), limit);

        // The HTTP/2 preface in time: from then on, no limit.
        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstBytes::new(server, limit);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut preface = [0; FIRST_BYTES];
        talking.read_exact(&mut preface).await.expect("preface");
        let later = tokio::time::timeout(limit * 3, talking.read(&mut [0; 8])).await;
        assert!(
            later.is_err(),
            "an idle connection past its first bytes was cut"
        );
    }
}
