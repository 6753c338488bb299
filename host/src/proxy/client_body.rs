//! A client's request body, guarded: its size against the route's `request_body_bytes` (413),
//! its pauses against `body_read_timeout` (408), its bytes counted for metrics, and what went
//! wrong with it (bad framing, the client gone) noted in a `BodyWatch` that the proxy reads
//! when an upstream exchange fails. A client's fault is answered as one (400, 408, 413, 499)
//! and never counted against the endpoint it was being sent to.
//!
//! The watch also says when the body has been read to its end: an endpoint's
//! `response_timeout` starts then, not while the client is still uploading.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{BodyFault, BodyWatch, ClientBody};
use crate::error::{BoxError, ErrorKind, ProxyError};

/// The error a guarded body yields: what the client did, and the cause.
#[derive(Debug)]
pub(crate) struct ClientBodyError {
    /// What the client did wrong.
    pub fault: BodyFault,
    cause: BoxError,
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.fault {
            BodyFault::Malformed => "the client's request body is malformed",
            BodyFault::Closed => "the client went away before its request body ended",
            BodyFault::TooLarge => "the client's request body is over the route's limit",
            BodyFault::Stalled => "the client stopped sending its request body",
        };
        f.write_str(what)
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.cause.as_ref())
    }
}

/// The error for a failure reading a client's body: its own fault when the guard knows it
/// (`watch`, or a [`ClientBodyError`] in `error`'s causes), else a bad request.
pub(super) fn client_error(error: BoxError, watch: Option<&BodyWatch>) -> ProxyError {
    let fault = watch.and_then(BodyWatch::fault).or_else(|| {
        let mut next: Option<&(dyn StdError + 'static)> = Some(error.as_ref());
        while let Some(e) = next {
            if let Some(body) = e.downcast_ref::<ClientBodyError>() {
                return Some(body.fault);
            }
            next = e.source();
        }
        None
    });
    let kind = fault.map_or(ErrorKind::BadRequest, BodyFault::error_kind);
    ProxyError::new(kind).with_cause(error)
}

/// A read timeout too long to add to now: a year.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A client's request body under its route's limits.
#[derive(Debug)]
pub struct Guarded {
    body: ClientBody,
    received: u64,
    limit: Option<u64>,
    /// Shared with the request's metrics and access log.
    counted: Option<Arc<AtomicU64>>,
    /// The read timeout; none for streams that may rightly stay quiet.
    idle: Option<Duration>,
    /// The read timeout, made at the body's first pause and reset at each later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer is set for the pause in progress.
    paused: bool,
    watch: Arc<BodyWatch>,
}

impl Guarded {
    /// Guards `body`, noting its fate in `watch`.
    pub fn new(
        body: ClientBody,
        limit: Option<u64>,
        idle: Option<Duration>,
        counted: Option<Arc<AtomicU64>>,
        watch: Arc<BodyWatch>,
    ) -> Guarded {
        Guarded {
            body,
            received: 0,
            limit,
            counted,
            idle,
            timer: None,
            paused: false,
            watch,
        }
    }

    fn fail(
        &self,
        fault: BodyFault,
        cause: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.watch.fail(fault);
        Poll::Ready(Some(Err(Box::new(ClientBodyError { fault, cause }))))
    }
}

/// Whether a failed read of a client's body was the client going away or bad framing: hyper
/// reports an early end as `UnexpectedEof` and a bad chunk as `InvalidInput`/`InvalidData`.
fn fault_of(error: &BoxError) -> BodyFault {
    let mut next: Option<&(dyn StdError + 'static)> = Some(error.as_ref());
    while let Some(e) = next {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled())
        {
            return BodyFault::Closed;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                    BodyFault::Malformed
                }
                _ => BodyFault::Closed,
            };
        }
        next = e.source();
    }
    // An HTTP/2 stream reset by the client, and anything else that is not bad framing.
    BodyFault::Closed
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.paused = false;
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.received += n;
                    if let Some(counted) = &this.counted {
                        counted.fetch_add(n, Ordering::Relaxed);
                    }
                    if let Some(limit) = this.limit.filter(|&limit| this.received > limit) {
                        let cause = format!("more than request_body_bytes = {limit}");
                        return this.fail(BodyFault::TooLarge, cause.into());
                    }
                }
                this.watch.handed_on();
                if this.body.is_end_stream() {
                    this.watch.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.watch.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(fault_of(&e), e),
            Poll::Pending => {
                this.watch.awaiting_client();
                let Some(idle) = this.idle else {
                    return Poll::Pending;
                };
                if !std::mem::replace(&mut this.paused, true) {
                    // A pause begins: the client has `idle` to send more.
                    let now = Instant::now();
                    let deadline = now.checked_add(idle).unwrap_or(now + FAR);
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                if let Some(timer) = &mut this.timer
                    && timer.as_mut().poll(cx).is_ready()
                {
                    let cause = format!("nothing for body_read_timeout = {idle:?}");
                    return this.fail(BodyFault::Stalled, cause.into());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
