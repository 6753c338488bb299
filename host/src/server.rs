//! Serving HTTP on one listener: the accept loop with its connection cap and accept backoff,
//! the PROXY protocol header and the TLS handshake when the listener has them, hyper's auto
//! (HTTP/1.1 with upgrades, or HTTP/2) connection per client, its timeouts, and the drain.
//!
//! Each connection's task serves it with hyper and keeps its timeouts (`timeouts`: the
//! header-read and idle timeouts, on one sleep); its bytes go through `io::ClientIo`, which
//! tells HTTP/2 from HTTP/1.1 and counts HTTP/2 frames against floods (`frames`).

mod frames;
mod io;
mod timeouts;
mod woken;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::io::{ClientIo, FloodCounts};
use self::timeouts::{Clock, Counted, Due};
use self::woken::Woken;
use crate::config::ServerConfig;
use crate::error::BoxError;
use crate::proxy_protocol::{self, Rewind};
use crate::shutdown::{Drain, Listening};
use crate::tls::{ServerTls, TlsInfo};

/// A client connection, accepted and (on a TLS listener) past its handshake.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// What the TLS handshake settled; `None` on a plain listener.
    pub(crate) tls: Option<TlsInfo>,
    /// The connection's place: freed when the last holder drops it (the connection, or a
    /// tunnel an upgrade turned it into).
    pub(crate) slot: Arc<Place>,
}

/// A client connection's place under `max_connections`, and its count in
/// `weir_downstream_connections`: held by the connection's task and by any tunnel an upgrade
/// turns the connection into, so a WebSocket counts as open until it closes.
#[derive(Debug)]
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    _open: Option<crate::metrics::Held>,
}

/// What a listener does with a connection before HTTP.
#[derive(Debug, Default)]
pub(crate) struct Accept {
    /// The TLS handshake, on a TLS listener.
    pub(crate) tls: Option<Arc<ServerTls>>,
    /// A PROXY protocol header first, naming the client.
    pub(crate) proxy_protocol: bool,
    /// Told of the requests hyper answers itself.
    pub(crate) refused: Option<RefusedHeads>,
}

/// Told of each request hyper answers itself because it could not read the head (431 when
/// too large or with too many fields, 400 when malformed), which no service sees: proxy
/// listeners log and count them as any request.
#[derive(Clone)]
pub(crate) struct RefusedHeads(pub(crate) Arc<dyn Fn(SocketAddr, u16) + Send + Sync>);

impl std::fmt::Debug for RefusedHeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusedHeads")
    }
}

/// The status hyper answered a connection's last request with, if the connection ended
/// because hyper could not read that request's head.
fn refused_status(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if error.is_parse_too_large() {
        Some(431)
    } else if error.is_parse() {
        Some(400)
    } else {
        None
    }
}

/// How often an HTTP/2 client connection is pinged, and how long its answer may take before
/// the connection is closed (Envoy's and gRPC's usual keepalive figures).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The first pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Failed accepts (usually EMFILE: out of file descriptors) retry at least this often.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `listener` (with TLS, if `tls`) until `drain` fires, then closes it (and drops
/// `listening`) and waits up to `settings.drain_timeout` for open connections to finish
/// their in-flight requests and for upgraded connections to close.
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    accept: Accept,
    settings: ServerConfig,
    make_service: M,
    drain: Drain,
    listening: Listening,
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
    // hyper's header-read timeout would count a kept-alive connection's idle time against
    // its next head: the connection's `Clock` times heads instead.
    builder
        .http1()
        .header_read_timeout(None)
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
    let builder = Arc::new(builder);
    // A permit per open connection: past the cap, new clients wait in the kernel's accept
    // queue instead of costing memory and file descriptors here.
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    let make_service = Arc::new(make_service);
    let address = listener.local_addr().map(|a| a.to_string()).ok();
    let open = address
        .as_deref()
        .map(|a| crate::metrics::metrics().listener(a));
    let floods = address.as_deref().map(|a| Arc::new(FloodCounts::of(a)));
    let timeouts = (settings.header_read_timeout, settings.idle_timeout);

    let mut accepting = drain.clone();
    loop {
        let permit = tokio::select! {
            _ = accepting.signaled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = accepting.signaled() => break,
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
        let builder = builder.clone();
        let drain = drain.clone();
        let floods = floods.clone();
        // Counted in `weir_downstream_connections` while the connection, or its tunnel, is.
        let slot = Arc::new(Place {
            _permit: permit,
            _open: open.as_ref().map(crate::metrics::Held::new),
        });
        let make_service = make_service.clone();
        let acceptor = accept.tls.as_ref().map(|tls| tls.acceptor());
        let proxy_protocol = accept.proxy_protocol;
        let refused = accept.refused.clone();
        // A client gets as long to finish its TLS handshake, and then its first bytes, as
        // to finish its headers.
        let limit = settings.header_read_timeout;
        tokio::spawn(async move {
            // The task holds the slot too: a service may drop its `Accepted` at once.
            let _held = slot.clone();
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
            let connection = Connection {
                builder: &builder,
                drain,
                peer,
                slot: &_held,
                refused,
            };
            let Some(acceptor) = acceptor else {
                let service = make_service(Accepted {
                    peer,
                    tls: None,
                    slot,
                });
                let clock = Arc::new(Clock::new(timeouts.0, timeouts.1));
                let stream = ClientIo::new(stream, clock.clone(), floods);
                return connection.serve(stream, service, clock).await;
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
            let clock = Arc::new(Clock::new(timeouts.0, timeouts.1));
            let stream = ClientIo::new(stream, clock.clone(), floods);
            connection.serve(stream, service, clock).await;
        });
    }

    // Closing the listener now makes new connection attempts fail fast instead of queueing.
    drop(listener);
    drop(listening);
    // Every slot back: each connection's task holds its own (its drain signal lets the
    // requests in progress finish), and upgraded connections (tunnels) theirs until they
    // close.
    let drained = async {
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

/// One client connection's task, after its TLS handshake.
struct Connection<'a> {
    builder: &'a auto::Builder<TokioExecutor>,
    /// Draining: requests in progress finish, then the connection closes.
    drain: Drain,
    peer: SocketAddr,
    /// The connection's place under `max_connections`, which tunnels hold too.
    slot: &'a Arc<Place>,
    refused: Option<RefusedHeads>,
}

impl Connection<'_> {
    /// Serves `stream` until it ends, or its timeouts, or the drain, end it.
    async fn serve<I, S, B>(mut self, stream: I, service: S, clock: Arc<Clock>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let peer = self.peer;
        let tunnels = Tunnels::new(self.slot);
        let service = Counted::new(service, clock.clone());
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        // Polled only when their own wake-up comes, not at each of the connection's.
        let sleep = Woken::new(tokio::time::sleep_until(clock.first_check()));
        let mut sleep = std::pin::pin!(sleep);
        let drained = Woken::new(self.drain.signaled());
        let mut drained = std::pin::pin!(drained);
        // Shut down gracefully (idle, or draining): the next idle check closes it outright.
        let mut closing = false;
        let mut draining = false;
        loop {
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(e) = ended {
                        if let (Some(status), Some(refused)) = (refused_status(&*e), &self.refused) {
                            (refused.0)(peer, status);
                        }
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    return;
                }
                () = drained.as_mut(), if !draining => {
                    draining = true;
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = sleep.as_mut() => {
                    let now = tokio::time::Instant::now();
                    match clock.check(now, tunnels.open()) {
                        Due::Wait(at) => sleep.as_mut().inner_mut().reset(at),
                        Due::Idle if !closing => {
                            tracing::debug!(%peer, "connection idle; closing");
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                            // Still idle at the next check (a client that never answers
                            // the GOAWAY): closed then.
                            sleep.as_mut().inner_mut().reset(now + clock.step());
                        }
                        Due::Idle => return tracing::debug!(%peer, "idle connection closed"),
                        Due::Head => {
                            return tracing::debug!(%peer, "request head not in within header_read_timeout");
                        }
                    }
                }
            }
        }
    }
}

/// Whether the connection carries an open HTTP/2 tunnel (RFC 8441): each holds a clone of
/// the connection's slot (`Accepted::slot`) until it closes, past the request that opened
/// it, so more holders than the connection had when its service was made are tunnels.
struct Tunnels<'a> {
    slot: &'a Arc<Place>,
    own: usize,
}

impl Tunnels<'_> {
    /// Counts the holders of `slot` now, after the service was made and before any request.
    fn new(slot: &Arc<Place>) -> Tunnels<'_> {
        Tunnels {
            slot,
            own: Arc::strong_count(slot),
        }
    }

    fn open(&self) -> bool {
        Arc::strong_count(self.slot) > self.own
    }
}
