//! The connection pool of one cluster: each endpoint's idle keep-alive HTTP/1.1 connections
//! and shared HTTP/2 connections, the cluster's connection slots, and the response body that
//! gives its connection back.
//!
//! An HTTP/1.1 connection is owned by one request at a time. It goes back to its endpoint's
//! idle list when the request's response body has been read to its end (or was empty) and
//! hyper can send on it again; a body dropped early, or one that failed, takes its connection
//! with it, and hyper closes it. Idle lists are last-in first-out, so a quiet period lets the
//! surplus connections idle out.
//!
//! An HTTP/2 connection carries up to `max_streams` requests at once: a request takes a
//! stream on the least busy one, and a new connection is opened (one at a time per endpoint)
//! only when every open one is full. At `max_connections`, requests share the open ones
//! beyond `max_streams` (HTTP/2's own flow control queues them) rather than wait.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::UpstreamRequest;
use crate::body::Outgoing;
use crate::error::{BoxError, ErrorKind, ProxyError};

/// How long a connection whose answer has ended may take to be ready for another request
/// before it is closed instead: hyper is ready within the same turn, unless the request's
/// body is still on its way (the endpoint answered before reading it all).
const REUSE_WAIT: Duration = Duration::from_secs(1);

/// The sending half of one HTTP/1.1 connection to an endpoint, with the connection's slot
/// (shared with the task driving it, so an upgrade's tunnel can keep it after that ends).
#[derive(Debug)]
pub(super) struct Sender {
    send: http1::SendRequest<Outgoing>,
    pub(super) slot: Arc<Held>,
}

/// A connection's slot, and the task that drives the connection, once spawned. (Kept behind
/// the slot's `Arc`, not in [`Sender`]: a response body holds a `Sender`, and every byte of
/// it is copied each time the response moves.)
#[derive(Debug)]
pub(super) struct Held {
    _slot: Slot,
    driving: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Held {
    pub(super) fn new(slot: Slot) -> Held {
        Held {
            _slot: slot,
            driving: std::sync::OnceLock::new(),
        }
    }

    /// Notes the task that drives the connection.
    pub(super) fn driven_by(&self, task: tokio::task::AbortHandle) {
        let _ = self.driving.set(task);
    }
}

impl Sender {
    pub(super) fn new(send: http1::SendRequest<Outgoing>, slot: Arc<Held>) -> Sender {
        Sender { send, slot }
    }

    /// Closes the connection now, whatever it is doing, and frees its slot.
    fn close(self) {
        if let Some(driving) = self.slot.driving.get() {
            driving.abort();
        }
    }

    fn is_ready(&self) -> bool {
        self.send.is_ready()
    }

    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        self.send.ready().await
    }

    #[expect(
        clippy::result_large_err,
        reason = "hyper's error hands back the request it did not send; boxing it would \
                  allocate on every send for the rare retry"
    )]
    pub(super) fn try_send_request(
        &mut self,
        request: UpstreamRequest,
    ) -> impl Future<
        Output = Result<
            http::Response<Incoming>,
            hyper::client::conn::TrySendError<UpstreamRequest>,
        >,
    > {
        self.send.try_send_request(request)
    }
}

/// A connection slot that an upgraded connection's tunnel holds: the tunnel counts against
/// the cluster's `max_connections` until it closes. Found in a `101` response's extensions.
#[derive(Debug, Clone)]
pub struct TunnelSlot(#[expect(dead_code, reason = "held for its drop")] Arc<Held>);

impl TunnelSlot {
    pub(super) fn new(slot: Arc<Held>) -> TunnelSlot {
        TunnelSlot(slot)
    }
}
/// A handle on one HTTP/2 connection to an endpoint (many per connection).
pub(super) type Shared = http2::SendRequest<Outgoing>;

/// Too many requests are already waiting for a connection.
#[derive(Debug, thiserror::Error)]
#[error("{0} requests already wait for a connection (max_pending)")]
pub struct PendingOverflow(pub usize);

/// What [`Pool::acquire`] gives a request.
pub(super) enum Acquired {
    /// An idle connection to the endpoint: it served a request before.
    Idle(Sender),
    /// A stream on an open HTTP/2 connection to the endpoint.
    Shared(Shared, Stream),
    /// A free slot: the caller opens a new connection with it.
    Slot(Slot),
}

/// What the requests to one cluster share.
#[derive(Debug)]
pub(super) struct Pool {
    /// One per endpoint, in the cluster's order.
    pub(super) endpoints: Vec<EndpointPool>,
    /// One permit per open connection, held by the connection's task until it closes.
    slots: Arc<Semaphore>,
    /// Requests waiting for a connection now.
    waiting: AtomicUsize,
    max_connections: usize,
    max_pending: usize,
}

/// One endpoint's idle connections.
#[derive(Debug)]
pub(super) struct EndpointPool {
    /// Where the connections go.
    pub(super) authority: Authority,
    idle: Mutex<Vec<Idle>>,
    /// Signalled when a connection comes back, for requests waiting at `max_connections`.
    returned: Notify,
    /// Open HTTP/2 connections, each with its streams in use.
    shared: Mutex<Vec<SharedConnection>>,
    /// Held while an HTTP/2 connection is being opened, so concurrent requests wait for it
    /// instead of each opening their own.
    pub(super) connecting: tokio::sync::Mutex<()>,
    /// ALPN chose HTTP/1.1 here before (an `auto` cluster): connections open concurrently.
    pub(super) speaks_http1: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct SharedConnection {
    sender: Shared,
    streams: Arc<AtomicUsize>,
    /// When it last had no stream in use (for the idle timeout).
    since: Instant,
}

/// A request's stream on a shared HTTP/2 connection, counted until dropped.
#[derive(Debug)]
pub(super) struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    pub(super) fn new(
        authorities: impl Iterator<Item = Authority>,
        max_connections: usize,
        max_pending: usize,
    ) -> Pool {
        Pool {
            endpoints: authorities
                .map(|authority| EndpointPool {
                    authority,
                    idle: Mutex::new(Vec::new()),
                    returned: Notify::new(),
                    shared: Mutex::new(Vec::new()),
                    connecting: tokio::sync::Mutex::new(()),
                    speaks_http1: std::sync::atomic::AtomicBool::new(false),
                })
                .collect(),
            slots: Arc::new(Semaphore::new(max_connections)),
            waiting: AtomicUsize::new(0),
            max_connections,
            max_pending,
        }
    }

    /// Connections open now, idle or in use. Idle HTTP/1.1 connections the endpoint closed
    /// are let go first: each holds its slot (an upgrade may carry it on into a tunnel) until
    /// it leaves the idle list.
    pub(super) fn open(&self) -> usize {
        for pool in &self.endpoints {
            lock(&pool.idle).retain(|idle| !idle.sender.is_closed());
        }
        self.max_connections - self.slots.available_permits()
    }

    /// Requests waiting for a connection now.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// An idle connection to `endpoint`, or a slot to open one while the cluster has fewer
    /// than `max_connections` open. At the cap the request waits, counted against
    /// `max_pending`, for the first of either; meanwhile an idle connection to another
    /// endpoint is closed to make room.
    ///
    /// With `shared` (the connection may be HTTP/2 and the request is no upgrade), a stream
    /// on an open HTTP/2 connection with fewer than `max_streams` in use comes first; at the
    /// cap, one past `max_streams` rather than a wait.
    ///
    /// Fails with [`ErrorKind::Overloaded`] when `max_pending` requests already wait.
    pub(super) async fn acquire(
        &self,
        endpoint: usize,
        max_streams: usize,
        shared: bool,
    ) -> Result<Acquired, ProxyError> {
        let target = &self.endpoints[endpoint];
        let mut waiting = None;
        loop {
            if shared && let Some((sender, stream)) = target.stream(max_streams) {
                return Ok(Acquired::Shared(sender, stream));
            }
            if let Some(sender) = target.pop() {
                return Ok(Acquired::Idle(sender));
            }
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return Ok(Acquired::Slot(slot));
            }
            if shared && let Some((sender, stream)) = target.stream(usize::MAX) {
                return Ok(Acquired::Shared(sender, stream));
            }
            if waiting.is_none() {
                waiting = Some(self.wait().map_err(overloaded)?);
                self.close_one_idle_except(endpoint);
            }
            tokio::select! {
                () = target.returned.notified() => {}
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => return Ok(Acquired::Slot(slot)),
                    Err(closed) => return Err(overloaded(closed)),
                },
            }
        }
    }

    /// Counts one more request waiting for a connection, until the guard is dropped; fails
    /// when `max_pending` already wait.
    fn wait(&self) -> Result<Waiting<'_>, PendingOverflow> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let guard = Waiting(&self.waiting);
        if before >= self.max_pending {
            return Err(PendingOverflow(before));
        }
        Ok(guard)
    }

    /// Closes one idle connection to an endpoint other than `endpoint`, so its slot can
    /// serve a request that waits for `endpoint`.
    fn close_one_idle_except(&self, endpoint: usize) {
        for (i, pool) in self.endpoints.iter().enumerate() {
            if i != endpoint && lock(&pool.idle).pop().is_some() {
                return;
            }
        }
        // Else an HTTP/2 connection to another endpoint with no stream in use.
        for (i, pool) in self.endpoints.iter().enumerate() {
            let mut shared = lock(&pool.shared);
            let idle = shared
                .iter()
                .position(|conn| conn.streams.load(Ordering::Relaxed) == 0);
            if i != endpoint
                && let Some(idle) = idle
            {
                shared.swap_remove(idle);
                return;
            }
        }
    }

    /// Closes the connections idle for `idle_timeout` or longer.
    fn close_idle(&self, idle_timeout: Duration) {
        let now = Instant::now();
        for pool in &self.endpoints {
            lock(&pool.idle).retain(|idle| {
                !idle.sender.is_closed() && now.duration_since(idle.since) < idle_timeout
            });
            lock(&pool.shared).retain_mut(|conn| {
                if conn.streams.load(Ordering::Relaxed) > 0 {
                    conn.since = now;
                }
                !conn.sender.is_closed() && now.duration_since(conn.since) < idle_timeout
            });
        }
    }

    /// Puts a connection whose exchange is over back in the idle list, once hyper is ready
    /// to send on it: at once, nearly always; an upstream that answered before the request
    /// body was all sent is ready only when it has been, so a task waits for that.
    fn give_back(self: &Arc<Pool>, endpoint: usize, mut sender: Sender) {
        if sender.is_ready() {
            self.endpoints[endpoint].push(sender);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let pool = self.clone();
            runtime.spawn(async move {
                // Ready as soon as hyper has seen the exchange end, unless the request's body
                // is still being sent after its answer: an endpoint that takes no more of it
                // would hold the connection, and its slot, for ever.
                match tokio::time::timeout(REUSE_WAIT, sender.ready()).await {
                    Ok(Ok(())) => pool.endpoints[endpoint].push(sender),
                    _ => sender.close(),
                }
            });
        }
    }
}

impl EndpointPool {
    /// A stream on the open HTTP/2 connection with the fewest in use, if that is fewer than
    /// `max_streams`.
    pub(super) fn stream(&self, max_streams: usize) -> Option<(Shared, Stream)> {
        let mut shared = lock(&self.shared);
        if shared.is_empty() {
            return None;
        }
        shared.retain(|conn| !conn.sender.is_closed());
        let conn = shared
            .iter_mut()
            .min_by_key(|conn| conn.streams.load(Ordering::Relaxed))?;
        if conn.streams.load(Ordering::Relaxed) >= max_streams {
            return None;
        }
        conn.streams.fetch_add(1, Ordering::Relaxed);
        // In use now: the reaper counts its idle time from its last use.
        conn.since = Instant::now();
        Some((conn.sender.clone(), Stream(conn.streams.clone())))
    }

    /// Adds a new HTTP/2 connection, with one stream in use by the caller.
    pub(super) fn share(&self, sender: Shared) -> Stream {
        let streams = Arc::new(AtomicUsize::new(1));
        lock(&self.shared).push(SharedConnection {
            sender,
            streams: streams.clone(),
            since: Instant::now(),
        });
        // Requests waiting at the cap can take streams on it now.
        self.returned.notify_waiters();
        Stream(streams)
    }

    /// The most recently returned idle connection still open, if any.
    fn pop(&self) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        while let Some(Idle { sender, .. }) = idle.pop() {
            // Closed by the upstream while idle (its keep-alive timeout, a restart).
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn push(&self, sender: Sender) {
        lock(&self.idle).push(Idle {
            sender,
            since: Instant::now(),
        });
        self.returned.notify_one();
    }
}

fn overloaded(cause: impl Into<BoxError>) -> ProxyError {
    ProxyError::new(ErrorKind::Overloaded).with_cause(cause)
}

/// A connection list is never left half-changed, so a panic elsewhere does not poison it.
fn lock<T>(list: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One request counted in [`Pool::waiting`].
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes idle connections every half `idle_timeout` until the pool is dropped.
pub(super) fn spawn_reaper(pool: &Arc<Pool>, idle_timeout: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool: Weak<Pool> = Arc::downgrade(pool);
    let period = (idle_timeout / 2).max(Duration::from_millis(10));
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            pool.close_idle(idle_timeout);
        }
    });
}

/// A connection in use by one request: all of an HTTP/1.1 one, or a stream of an HTTP/2 one.
#[derive(Debug)]
pub(super) enum Lease {
    Http1 {
        sender: Sender,
        pool: Arc<Pool>,
        endpoint: usize,
    },
    /// Counted until the body ends or is dropped.
    Http2(#[expect(dead_code, reason = "held for its drop: the stream's count")] Stream),
}

/// An upstream response body, streamed. Its end gives the connection back to the pool.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, lease: Lease) -> UpstreamBody {
        UpstreamBody {
            inner,
            lease: Some(lease),
        }
    }

    /// A body whose connection is no longer the pool's (an upgrade took it).
    pub(super) fn unleased(inner: Incoming) -> UpstreamBody {
        UpstreamBody { inner, lease: None }
    }

    fn give_back(&mut self) {
        if let Some(Lease::Http1 {
            sender,
            pool,
            endpoint,
        }) = self.lease.take()
        {
            pool.give_back(endpoint, sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            // A connection that failed mid-body is not reused.
            Some(Err(_)) => self.lease = None,
            None => self.give_back(),
            // Trailers end a message: hyper says nothing more of an HTTP/1.1 chunked body
            // (its `is_end_stream` stays false) and is not polled again.
            Some(Ok(frame)) if frame.is_trailers() || self.inner.is_end_stream() => {
                self.give_back();
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Read to its end (or empty: HEAD, 204, 304): the connection can take another
        // request. Otherwise the lease is dropped with it and hyper closes the connection.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

/// A connection slot, held by the task that drives the connection.
pub(super) type Slot = OwnedSemaphorePermit;
