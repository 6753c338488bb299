//! The upstream client: pooled connections to a cluster's endpoints, HTTP/1.1 or HTTP/2,
//! plain or TLS.
//!
//! One [`UpstreamClient`] per cluster, because connect and response timeouts and connection
//! caps are per cluster. A request takes a stream on an open HTTP/2 connection or an idle
//! HTTP/1.1 connection to its endpoint, or opens one while the cluster has fewer than
//! `max_connections`, or waits (at most `max_pending` wait; one more fails at once with
//! [`PendingOverflow`], as Envoy's circuit breakers do). Its response body gives the
//! connection back when read to the end (see [`pool`]). How a connection is opened — TCP,
//! TLS, which HTTP — is the cluster's [`Transport`](transport).

mod connect;
mod memory;
mod pool;
mod transport;

pub use connect::{Connecting, Connection, Connector, Io, TcpConnector};
pub use memory::{Answer, MemoryBody, MemoryConnector};
pub use pool::{PendingOverflow, TunnelSlot, UpstreamBody};
pub use transport::Transports;
pub(crate) use transport::{Sender, Transport, as_http1, as_http2};

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Request, Response, StatusCode};

use self::pool::{Acquired, Lease, Pool, Shared, Slot, Stream};
use crate::body::{BodyWatch, Outgoing};
use crate::config::ClusterConfig;
use crate::error::{ErrorKind, ProxyError, Retry};
use crate::timer::{TimedOut, Timers};

/// A request as an upstream connection is sent it: its body an [`Outgoing`], so that the
/// request stays small as hyper's client moves it (ARCHITECTURE.md, "Moves on the request
/// path"; `body::tests` holds its size).
pub(crate) type UpstreamRequest = Request<Outgoing>;

/// Sends requests to one cluster's endpoints.
#[derive(Debug)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
    transport: Transport,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_streams: usize,
}

/// A connection ready for a request, and whether it served one before.
enum Checkout {
    Http1 {
        sender: pool::Sender,
        reused: bool,
    },
    Http2 {
        sender: Shared,
        stream: Stream,
        reused: bool,
    },
}

impl UpstreamClient {
    /// A client with the cluster's timeouts and caps, opening connections with
    /// `transport`. Inside tokio, a task closes connections idle for `idle_timeout`; it ends
    /// when the client is dropped.
    pub(crate) fn new(cluster: &ClusterConfig, transport: Transport) -> UpstreamClient {
        let pool = Arc::new(Pool::new(
            cluster.endpoints.iter().map(|e| e.authority.clone()),
            cluster.max_connections,
            cluster.max_pending,
        ));
        pool::spawn_reaper(&pool, cluster.idle_timeout);
        UpstreamClient {
            pool,
            transport,
            connect_timeout: cluster.connect_timeout,
            response_timeout: cluster.response_timeout,
            max_streams: cluster.max_streams as usize,
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
    /// downstream connection's `timers` from when the request has been sent: at once, or,
    /// when its body is still `uploading` from the client, when that body ends (a slow
    /// upload is the client's, bounded by its read timeout, not the endpoint's) — unless the
    /// endpoint stops taking the body, which [`sent`] times out.
    ///
    /// `response_timeout` replaces the cluster's for this request (a gRPC call's own
    /// `grpc-timeout`).
    ///
    /// An `async` block returned, not an `async fn`, here and in [`Self::exchange`], so that
    /// the request (232 bytes) is not copied into each future's locals (ARCHITECTURE.md,
    /// "Moves on the request path").
    #[expect(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: an async fn copies its arguments into its locals when first polled"
    )]
    pub(crate) fn send(
        &self,
        endpoint: usize,
        request: UpstreamRequest,
        timers: &Timers,
        uploading: Option<&BodyWatch>,
        response_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> {
        async move {
            let limit = response_timeout.unwrap_or(self.response_timeout);
            let deadline = async {
                if let Some(upload) = uploading
                    && sent(upload, limit).await.is_err()
                {
                    return;
                }
                timers.deadline(limit).await;
            };
            tokio::select! {
                biased;
                result = self.exchange(endpoint, request) => result,
                () = deadline => Err(ProxyError::new(ErrorKind::UpstreamTimeout)
                    .with_cause(TimedOut(limit))),
            }
        }
    }

    /// Whether requests may go to the endpoints over HTTP/2 (`h2`, `h2c`, or `auto` over
    /// TLS, where ALPN decides).
    pub(crate) fn may_be_h2(&self) -> bool {
        self.transport.may_be_h2()
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: an async fn copies its arguments into its locals when first polled"
    )]
    fn exchange(
        &self,
        endpoint: usize,
        mut request: UpstreamRequest,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> {
        async move {
            let Some(target) = self.pool.endpoints.get(endpoint) else {
                return Err(ProxyError::new(ErrorKind::NoEndpoint));
            };
            // The proxy keeps `Upgrade` only on a request that asks for one.
            let upgrade = request.headers().contains_key(header::UPGRADE);
            if upgrade && self.transport.only_h2() {
                return Err(ProxyError::new(ErrorKind::UpstreamFailed).with_cause(
                "the request asks for an upgrade, which needs HTTP/1.1, and the cluster speaks only HTTP/2",
            ));
            }
            loop {
                let (result, reused) = match self.checkout(endpoint, upgrade).await? {
                    Checkout::Http1 { mut sender, reused } => {
                        as_http1(&mut request, &target.authority);
                        let result = sender.try_send_request(request).await.map(|response| {
                            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                                // The connection is the tunnel's now, not the pool's; its slot
                                // goes with it.
                                let mut response = response.map(UpstreamBody::unleased);
                                response
                                    .extensions_mut()
                                    .insert(TunnelSlot::new(sender.slot.clone()));
                                return response;
                            }
                            let lease = Lease::Http1 {
                                sender,
                                pool: self.pool.clone(),
                                endpoint,
                            };
                            response.map(|body| UpstreamBody::new(body, lease))
                        });
                        (result, reused)
                    }
                    Checkout::Http2 {
                        mut sender,
                        stream,
                        reused,
                    } => {
                        as_http2(&mut request, &target.authority, &self.transport.scheme());
                        let result = sender.try_send_request(request).await.map(|response| {
                            response.map(|body| UpstreamBody::new(body, Lease::Http2(stream)))
                        });
                        (result, reused)
                    }
                };
                match result {
                    Ok(response) => return Ok(response),
                    Err(mut e) => match e.take_message() {
                        // A kept-alive connection closed before the request went out: nothing
                        // reached the endpoint, so another connection may send it.
                        Some(unsent) if reused => request = unsent,
                        _ => {
                            let error = e.into_error();
                            return Err(
                                ProxyError::new(ErrorKind::UpstreamFailed).with_cause(error)
                            );
                        }
                    },
                }
            }
        }
    }

    /// A stream on an open HTTP/2 connection, an idle HTTP/1.1 connection, a new one, or —
    /// at `max_connections` — the first of these to become available.
    async fn checkout(&self, endpoint: usize, upgrade: bool) -> Result<Checkout, ProxyError> {
        let shared = self.transport.may_be_h2() && !upgrade;
        match self
            .pool
            .acquire(endpoint, self.max_streams, shared)
            .await?
        {
            Acquired::Idle(sender) => Ok(Checkout::Http1 {
                sender,
                reused: true,
            }),
            Acquired::Shared(sender, stream) => Ok(Checkout::Http2 {
                sender,
                stream,
                reused: true,
            }),
            Acquired::Slot(slot) => self.connect(endpoint, slot, upgrade).await,
        }
    }

    /// Opens a connection to `endpoint`, driven by a task that holds `slot` until it closes.
    /// HTTP/2 connections are opened one at a time per endpoint: a request that waited for
    /// another's takes a stream on it instead.
    async fn connect(
        &self,
        endpoint: usize,
        slot: Slot,
        upgrade: bool,
    ) -> Result<Checkout, ProxyError> {
        let target = &self.pool.endpoints[endpoint];
        let may_be_h2 = self.transport.may_be_h2()
            && !upgrade
            && !target
                .speaks_http1
                .load(std::sync::atomic::Ordering::Relaxed);
        let _one_at_a_time = if may_be_h2 {
            // Bounded like the connect itself: behind an endpoint that swallows connects,
            // queued requests fail (and may retry elsewhere) rather than wait in turn.
            let Ok(guard) =
                tokio::time::timeout(self.connect_timeout, target.connecting.lock()).await
            else {
                let (authority, limit) = (&target.authority, self.connect_timeout);
                return Err(ProxyError::new(ErrorKind::UpstreamConnect)
                    .with_cause(format!(
                        "connecting to {authority}: another connection still being opened after {limit:?}"
                    ))
                    .with_retry(Retry::Elsewhere));
            };
            if let Some((sender, stream)) = target.stream(self.max_streams) {
                return Ok(Checkout::Http2 {
                    sender,
                    stream,
                    reused: true,
                });
            }
            Some(guard)
        } else {
            None
        };
        let authority = &target.authority;
        let opened = tokio::time::timeout(
            self.connect_timeout,
            self.transport.open::<Outgoing>(authority, upgrade),
        )
        .await;
        let (sender, connection) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(why)) => {
                return Err(ProxyError::new(ErrorKind::UpstreamConnect).with_cause(why));
            }
            Err(_) => {
                let limit = self.connect_timeout;
                return Err(ProxyError::new(ErrorKind::UpstreamConnect)
                    .with_cause(format!(
                        "connecting to {authority}: timed out after {limit:?}"
                    ))
                    .with_retry(Retry::Elsewhere));
            }
        };
        let slot = Arc::new(pool::Held::new(slot));
        let held = slot.clone();
        let driving = tokio::spawn(async move {
            connection.await;
            drop(held);
        });
        slot.driven_by(driving.abort_handle());
        Ok(match sender {
            Sender::Http1(sender) => {
                let sender = pool::Sender::new(sender, slot);
                if may_be_h2 {
                    // ALPN said HTTP/1.1: later connections need not wait for each other.
                    target
                        .speaks_http1
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Checkout::Http1 {
                    sender,
                    reused: false,
                }
            }
            Sender::Http2(sender) => Checkout::Http2 {
                stream: target.share(sender.clone()),
                sender,
                reused: false,
            },
        })
    }
}

/// Waits until the client's body has been sent whole. A slow client is the client's
/// (the body's read timeout bounds it); an endpoint that takes none of the body — a full
/// socket, an HTTP/2 window it never opens — is the endpoint's, and like one that does not
/// answer it gets `limit`: `Err` once no frame has been handed on for that long while the
/// body was not waiting for the client (checked every eighth of it). nginx's
/// `proxy_send_timeout`.
async fn sent(upload: &BodyWatch, limit: Duration) -> Result<(), ()> {
    let step = (limit / 8).max(Duration::from_millis(1));
    let (mut last, _) = upload.progress();
    let mut still = Duration::ZERO;
    loop {
        tokio::select! {
            () = upload.ended() => return Ok(()),
            () = tokio::time::sleep(step) => {}
        }
        let (handed_on, awaiting_client) = upload.progress();
        if handed_on != last || awaiting_client {
            last = handed_on;
            still = Duration::ZERO;
            continue;
        }
        still += step;
        if still >= limit {
            return Err(());
        }
    }
}
