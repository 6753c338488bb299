//! A client connection's two waits for a request, and when each is over:
//! `header_read_timeout`, from the first byte of a request head to its end (for a new
//! connection, from the accept or the TLS handshake, until its first head, or its HTTP/2
//! preface, is in); and `idle_timeout`, with no request in progress, until the next one
//! starts (nginx's `client_header_timeout` and `keepalive_timeout`; Envoy's
//! `idle_timeout`).
//!
//! The connection's task keeps one sleep and asks [`Clock::check`] what to do when it fires:
//! nothing yet (sleep again, until a time that no later event can bring forward), close a
//! connection whose head is late, or close an idle one gracefully (HTTP/2: GOAWAY first). The
//! request path only notes events, with no wake-up: a request starting and ending
//! ([`Counted`], which wraps the connection's service and its response bodies) and, on
//! HTTP/1.1, bytes arriving while no request is in progress (`ClientIo`). A request is in
//! progress from hyper handing its head to the service to its response body's end; an
//! HTTP/2 tunnel (RFC 8441) is one until it closes.
//!
//! hyper's own HTTP/1.1 header-read timeout is off: it starts when the previous response
//! ends, so a kept-alive connection's idle time would count against its next head.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use tokio::time::Instant;

/// No head begun since the connection last went idle.
const NO_HEAD: u64 = u64::MAX;

/// One connection's requests in progress and the times its waits began, in milliseconds
/// since the clock started (the accept, or the end of the TLS handshake).
#[derive(Debug)]
pub(crate) struct Clock {
    started: Instant,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    in_flight: AtomicUsize,
    /// When the last request in progress ended (0: the connection is new).
    idle_since: AtomicU64,
    /// When the first byte of the next HTTP/1.1 head arrived, or [`NO_HEAD`].
    head_since: AtomicU64,
    /// The client sent the HTTP/2 preface: no head is timed, only idleness.
    http2: AtomicBool,
}

/// What a connection's task does when its sleep fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing yet: sleep until then.
    Wait(Instant),
    /// A head (or a new connection's first one) is later than `header_read_timeout`: close.
    Head,
    /// No request in progress for `idle_timeout`: close gracefully.
    Idle,
}

impl Clock {
    /// A connection's clock, starting now with its first head awaited.
    pub(crate) fn new(header_read_timeout: Duration, idle_timeout: Duration) -> Clock {
        Clock {
            started: Instant::now(),
            header_read_timeout,
            idle_timeout,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    /// When the task should first look: no deadline can come sooner.
    pub(crate) fn first_check(&self) -> Instant {
        self.started + self.step()
    }

    /// The client sent the HTTP/2 preface.
    pub(crate) fn http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// HTTP/1.1 bytes arrived: with no request in progress, they begin the next head. Two
    /// loads per read; the clock is read once per head.
    pub(crate) fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// A request's head is in: it is in progress until the returned guard drops.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NO_HEAD, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// What is due at `now`; `tunnels` says whether an HTTP/2 tunnel the connection carries
    /// is still open.
    pub(crate) fn check(&self, now: Instant, tunnels: bool) -> Due {
        // No deadline that starts after `now` can fall before this.
        let soonest = now + self.step();
        if self.in_flight.load(Ordering::Acquire) > 0 || tunnels {
            return Due::Wait(soonest);
        }
        let at = |ms: u64| self.started + Duration::from_millis(ms);
        if !self.http2.load(Ordering::Relaxed) {
            let head = self.head_since.load(Ordering::Relaxed);
            if head != NO_HEAD {
                let due = at(head) + self.header_read_timeout;
                return if now >= due {
                    Due::Head
                } else {
                    Due::Wait(due)
                };
            }
        }
        let due = at(self.idle_since.load(Ordering::Relaxed)) + self.idle_timeout;
        if now >= due {
            Due::Idle
        } else if self.http2.load(Ordering::Relaxed) {
            Due::Wait(due)
        } else {
            // An HTTP/1.1 head may begin any moment, and be due sooner than idleness.
            Due::Wait(due.min(soonest))
        }
    }

    /// The longest wait between checks that cannot miss a deadline begun after the first.
    pub(crate) fn step(&self) -> Duration {
        self.header_read_timeout.min(self.idle_timeout)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

/// A request in progress; its end starts the connection's idle time.
#[derive(Debug)]
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let clock = &self.0;
        // Written before the count goes down: whoever sees the count at zero sees this.
        clock.idle_since.store(clock.now_ms(), Ordering::Relaxed);
        clock.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service, counting its requests in progress on the connection's clock.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, clock: Arc<Clock>) -> Counted<S> {
        Counted { inner, clock }
    }
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<CountedBody<B>>;
    type Error = Infallible;
    type Future = CountedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.clock.request_started();
        CountedFuture {
            inner: self.inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being answered; a response hands the count to its body.
    pub(crate) struct CountedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<CountedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| CountedBody { inner, in_flight })))
    }
}

pin_project_lite::pin_project! {
    /// A response body; the request is in progress until it ends or is dropped.
    pub(crate) struct CountedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            // Ended: hyper may keep the body a while before dropping it.
            this.in_flight.take();
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(60);

    /// The response hyper's server is handed stays within the 256 bytes glibc's AVX2
    /// `memcpy` copies without a loop: it is moved several times on its way from the proxy
    /// to the connection (ARCHITECTURE.md, "Moves on the request path").
    #[test]
    fn a_response_fits_a_short_copy() {
        let size = size_of::<Response<CountedBody<crate::proxy::ResponseBody>>>();
        assert!(size <= 256, "the response is {size} bytes");
    }

    /// Advances paused time by `d`.
    async fn pass(d: Duration) {
        tokio::time::advance(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_head_timeout_for_its_first_head() {
        let clock = Arc::new(Clock::new(HEAD, IDLE));
        let start = Instant::now();
        assert_eq!(clock.first_check(), start + HEAD);
        assert_eq!(clock.check(start, false), Due::Wait(start + HEAD));
        pass(HEAD).await;
        // Silent, or some bytes of a head: cut at the head timeout either way.
        clock.bytes_arrived();
        assert_eq!(clock.check(Instant::now(), false), Due::Head);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_after_its_preface_is_timed_only_by_idleness() {
        let clock = Arc::new(Clock::new(HEAD, IDLE));
        let start = Instant::now();
        clock.http2();
        pass(HEAD).await;
        assert_eq!(clock.check(Instant::now(), false), Due::Wait(start + IDLE));
        // A stream open across the idle timeout: nothing is due.
        let stream = clock.request_started();
        pass(IDLE * 2).await;
        assert_eq!(
            clock.check(Instant::now(), false),
            Due::Wait(Instant::now() + HEAD)
        );
        let ended = Instant::now();
        drop(stream);
        pass(IDLE - Duration::from_secs(1)).await;
        assert_eq!(clock.check(Instant::now(), false), Due::Wait(ended + IDLE));
        // A tunnel counts as a stream.
        pass(Duration::from_secs(1)).await;
        assert!(matches!(clock.check(Instant::now(), true), Due::Wait(_)));
        assert_eq!(clock.check(Instant::now(), false), Due::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_http1_connection_waits_idle_then_times_its_next_head() {
        let clock = Arc::new(Clock::new(HEAD, IDLE));
        clock.bytes_arrived();
        let request = clock.request_started();
        // Bytes read while a request is in progress (its body, a pipelined head) begin
        // nothing.
        clock.bytes_arrived();
        pass(HEAD * 3).await;
        drop(request);
        // Idle for longer than the head timeout: not cut, and looked at again no later
        // than a head beginning now could be due.
        pass(HEAD * 2).await;
        let now = Instant::now();
        assert_eq!(clock.check(now, false), Due::Wait(now + HEAD));
        // The next head begins: it has the head timeout from its first byte.
        clock.bytes_arrived();
        let began = Instant::now();
        pass(HEAD - Duration::from_secs(1)).await;
        assert_eq!(clock.check(Instant::now(), false), Due::Wait(began + HEAD));
        pass(Duration::from_secs(1)).await;
        assert_eq!(clock.check(Instant::now(), false), Due::Head);

        // Without a next head, the connection is idle at the idle timeout.
        let clock = Arc::new(Clock::new(HEAD, IDLE));
        clock.bytes_arrived();
        drop(clock.request_started());
        pass(IDLE).await;
        assert_eq!(clock.check(Instant::now(), false), Due::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_holds_its_request_in_progress_until_it_ends() {
        use http_body_util::{BodyExt, Full};
        let clock = Arc::new(Clock::new(HEAD, IDLE));
        clock.http2();
        // As `Counted::call` makes it (a request's `Incoming` body only hyper can make).
        let answer = async { Ok(Response::new(Full::new(bytes::Bytes::from_static(b"hi")))) };
        let future = CountedFuture {
            inner: answer,
            in_flight: Some(clock.request_started()),
        };
        let Ok(response) = future.await;
        pass(IDLE).await;
        assert!(matches!(clock.check(Instant::now(), false), Due::Wait(_)));
        let body = response.into_body().collect().await;
        assert!(body.is_ok());
        pass(IDLE).await;
        assert_eq!(clock.check(Instant::now(), false), Due::Idle);
    }
}
