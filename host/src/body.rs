//! The body type that flows through the proxy in both directions, and buffering a body
//! whole for the plugins' body hooks.
//!
//! Proxied bodies stream: a client's request body is hyper's [`Incoming`], an upstream's
//! response body is an [`UpstreamBody`] (which gives its connection back to the pool when it
//! ends). Replies weir makes itself (and bodies a plugin rewrote) are a [`Full`] buffer; a
//! response body that was partly read before it proved too large for a body hook is
//! [`Prefixed`]: what was read, then the rest of the stream; a response compressed on its
//! way out is `Coded` (boxed: it is the rare one). One enum avoids boxing every body on the
//! request path. What an upstream connection is sent is an [`Outgoing`]: a `ProxyBody`
//! boxed, or nothing for an empty body, so the request hyper's client moves stays small.
//!
//! The data path is generic over the client's request body ([`DownstreamBody`]): hyper's
//! `Incoming` from a real connection, taken as it is, or any other body, boxed (tests drive
//! the proxy with bodies made in memory).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

use crate::error::{BoxError, ErrorKind};
use crate::upstream::UpstreamBody;

/// A request or response body: streamed from a peer, or made by weir.
#[derive(Debug)]
pub enum ProxyBody {
    /// A client's request body, streamed.
    Client(ClientBody),
    /// An upstream's response body, streamed.
    Upstream(UpstreamBody),
    /// A body weir made.
    Full(Full<Bytes>),
    /// A response body read in part, then the rest of it.
    Prefixed(Prefixed),
    /// A response body compressed as it streams (`crate::coding::compress`).
    Coded(UnsyncBoxBody<Bytes, BoxError>),
}

/// A client's request body: hyper's own `Incoming` from a connection, or any other body,
/// boxed (the proxy's tests and `weir plugin test` make theirs in memory). Kept small: it
/// travels, by value, through every phase of a request.
#[derive(Debug)]
pub enum ClientBody {
    /// From a hyper connection.
    Incoming(Incoming),
    /// Made elsewhere.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// A body under its route's size limit and read timeout, its bytes counted for metrics
    /// and the access log, its faults noted (`proxy/client_body.rs`).
    Guarded(Box<crate::proxy::Guarded>),
}

/// What a client did wrong with its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BodyFault {
    /// The framing was invalid (a bad chunk size, a body longer than its `Content-Length`).
    Malformed = 1,
    /// The client closed or reset before the body's end.
    Closed = 2,
    /// The body grew past the route's `request_body_bytes`.
    TooLarge = 3,
    /// The client sent nothing for `body_read_timeout`.
    Stalled = 4,
}

impl BodyFault {
    fn from_u8(value: u8) -> Option<BodyFault> {
        Some(match value {
            1 => BodyFault::Malformed,
            2 => BodyFault::Closed,
            3 => BodyFault::TooLarge,
            4 => BodyFault::Stalled,
            _ => return None,
        })
    }

    /// The error the client's request is answered with.
    pub fn error_kind(self) -> ErrorKind {
        match self {
            BodyFault::Malformed => ErrorKind::BadRequest,
            BodyFault::Closed => ErrorKind::ClientClosed,
            BodyFault::TooLarge => ErrorKind::PayloadTooLarge,
            BodyFault::Stalled => ErrorKind::BodyTimeout,
        }
    }
}

/// A request body's fate, shared between the body (which is handed to hyper's client) and the
/// proxy (which sees only the client's error).
#[derive(Debug, Default)]
pub struct BodyWatch {
    fault: AtomicU8,
    ended: AtomicBool,
    end: Notify,
    /// Frames of the body handed on (to the upstream connection, as it takes them).
    handed_on: AtomicU64,
    /// The body is waiting for the client's next bytes.
    awaiting_client: AtomicBool,
}

impl BodyWatch {
    /// What the client did wrong, if anything.
    pub fn fault(&self) -> Option<BodyFault> {
        BodyFault::from_u8(self.fault.load(Ordering::Acquire))
    }

    /// Resolves once the body has been read to its end, or has failed.
    pub async fn ended(&self) {
        loop {
            let notified = self.end.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.end.notify_waiters();
    }

    /// A frame of the body was handed on.
    pub(crate) fn handed_on(&self) {
        self.handed_on.fetch_add(1, Ordering::Relaxed);
        self.awaiting_client.store(false, Ordering::Relaxed);
    }

    /// The body was asked for more and waits for the client.
    pub(crate) fn awaiting_client(&self) {
        self.awaiting_client.store(true, Ordering::Relaxed);
    }

    /// Frames handed on so far, and whether the body waits for the client: a count that
    /// stands still while the body does not wait means whoever takes it has stopped.
    pub fn progress(&self) -> (u64, bool) {
        (
            self.handed_on.load(Ordering::Relaxed),
            self.awaiting_client.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn fail(&self, fault: BodyFault) {
        let _ = self
            .fault
            .compare_exchange(0, fault as u8, Ordering::AcqRel, Ordering::Acquire);
        self.end();
    }
}

/// A client's request body the proxy can take (see [`ClientBody`]).
pub trait DownstreamBody: Body<Data = Bytes> + Send + Unpin + 'static {
    /// The body as the data path carries it.
    fn into_client_body(self) -> ClientBody;
}

impl DownstreamBody for Incoming {
    fn into_client_body(self) -> ClientBody {
        ClientBody::Incoming(self)
    }
}

impl DownstreamBody for UnsyncBoxBody<Bytes, BoxError> {
    fn into_client_body(self) -> ClientBody {
        ClientBody::Boxed(self)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Incoming(body) => ready_frame(Pin::new(body).poll_frame(cx)),
            ClientBody::Boxed(body) => Pin::new(body).poll_frame(cx),
            ClientBody::Guarded(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Incoming(body) => body.is_end_stream(),
            ClientBody::Boxed(body) => body.is_end_stream(),
            ClientBody::Guarded(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Incoming(body) => body.size_hint(),
            ClientBody::Boxed(body) => body.size_hint(),
            ClientBody::Guarded(body) => body.size_hint(),
        }
    }
}

/// Any body as the boxed kind [`DownstreamBody`] takes (and `MemoryConnector`'s endpoints
/// answer with): for bodies made in memory by tests and `weir plugin test`.
pub fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body over before its first frame that says nothing of its length: a `HEAD`'s answer
/// over HTTP/2, whose head gives the length of a body it does not carry (hyper would write
/// `content-length: 0` for a body of exactly nothing).
#[derive(Debug)]
pub struct Ended;

impl Body for Ended {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// How long an answer no one reads (a mirror's, a background revalidation's) is read before
/// it is dropped.
pub(crate) const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads `body` to its end for at most [`DRAIN_FOR`], each frame dropped as it comes: an
/// answer no one reads still gives its connection back when it ends, holds nothing of a
/// large body, and one that never ends is dropped then, with its connection.
pub(crate) async fn drain<B: Body + Unpin>(mut body: B) {
    let read = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(DRAIN_FOR, read).await;
}

/// A body weir makes itself.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::Full(Full::new(bytes.into()))
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is `Unpin`.
        match self.get_mut() {
            ProxyBody::Client(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Upstream(body) => ready_frame(Pin::new(body).poll_frame(cx)),
            ProxyBody::Full(body) => ready_frame(Pin::new(body).poll_frame(cx)),
            ProxyBody::Prefixed(body) => ready_frame(Pin::new(body).poll_frame(cx)),
            ProxyBody::Coded(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Client(body) => body.is_end_stream(),
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Full(body) => body.is_end_stream(),
            ProxyBody::Prefixed(body) => body.is_end_stream(),
            ProxyBody::Coded(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Client(body) => body.size_hint(),
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Full(body) => body.size_hint(),
            ProxyBody::Prefixed(body) => body.size_hint(),
            ProxyBody::Coded(body) => body.size_hint(),
        }
    }
}

/// A request body as an upstream connection takes it: one pointer wide, and nothing at all
/// for an empty body (every `GET`'s), so sending it allocates only when there is a body.
///
/// hyper's client moves the request it is given a dozen times a request (into its channel,
/// out of it, and back in the reply that can return it unsent). With a [`ProxyBody`] in it
/// the request is 344 bytes, with this 232: a third fewer bytes and cache lines written a
/// move, and within what glibc's AVX2 `memcpy` copies without a loop (ARCHITECTURE.md,
/// "Moves on the request path").
#[derive(Debug, Default)]
pub struct Outgoing(Option<Box<ProxyBody>>);

impl Outgoing {
    /// An empty body.
    pub fn empty() -> Outgoing {
        Outgoing(None)
    }

    /// `body`, boxed.
    pub fn new(body: ProxyBody) -> Outgoing {
        Outgoing(Some(Box::new(body)))
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Some(body) => Pin::new(&mut **body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint())
    }
}

/// A variant's frame with its error boxed.
fn ready_frame<E: Into<BoxError>>(
    frame: Poll<Option<Result<Frame<Bytes>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    frame.map(|frame| frame.map(|result| result.map_err(Into::into)))
}

/// Bytes already read from a stream, then the rest of it.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Option<Bytes>,
    rest: UpstreamBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        // Upper first: `set_lower` checks against the upper bound in place.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint.set_lower(rest.lower() + prefix);
        hint
    }
}

/// A body read whole, or the proof that it is larger than the limit.
#[derive(Debug)]
pub enum Buffered {
    /// The whole body, within the limit, and the trailers it ended with, if any (a body of
    /// bytes has none).
    Whole {
        bytes: Vec<u8>,
        trailers: Option<http::HeaderMap>,
    },
    /// Larger than the limit: the body as it was, to be sent on untouched.
    TooLarge(ProxyBody),
}

/// Reads `body` whole if it is at most `limit` bytes, with its trailers apart (the caller
/// decides what becomes of them). An error reading the stream is returned as is.
pub async fn buffer(body: ProxyBody, limit: usize) -> Result<Buffered, BufferError> {
    let mut stream = match body {
        ProxyBody::Upstream(stream) => stream,
        other => {
            let bytes = other.collect().await.map_err(BufferError)?.to_bytes();
            return Ok(if bytes.len() <= limit {
                Buffered::Whole {
                    bytes: Vec::from(bytes),
                    trailers: None,
                }
            } else {
                Buffered::TooLarge(full(bytes))
            });
        }
    };
    let mut read = BytesMut::new();
    let mut trailers: Option<http::HeaderMap> = None;
    while let Some(frame) = stream.frame().await {
        let frame = frame.map_err(|e| BufferError(e.into()))?;
        match frame.into_data() {
            Ok(data) => {
                read.extend_from_slice(&data);
                if read.len() > limit {
                    return Ok(Buffered::TooLarge(ProxyBody::Prefixed(Prefixed {
                        prefix: Some(read.freeze()),
                        rest: stream,
                    })));
                }
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    match &mut trailers {
                        Some(all) => all.extend(more),
                        None => trailers = Some(more),
                    }
                }
            }
        }
    }
    // `BytesMut` gives up its buffer: no copy of the body.
    Ok(Buffered::Whole {
        bytes: Vec::from(read),
        trailers,
    })
}

/// Reading a body failed.
#[derive(Debug, thiserror::Error)]
#[error("reading the body: {0}")]
pub struct BufferError(#[source] Box<dyn std::error::Error + Send + Sync>);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_outgoing_body_ends_at_once_and_says_it_has_no_bytes() {
        let body = Outgoing::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let collected = body.collect().await.expect("an empty body cannot fail");
        assert!(collected.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn an_outgoing_body_passes_its_bytes_and_length_through() {
        let body = Outgoing::new(full("hello"));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.expect("a full body cannot fail");
        assert_eq!(collected.to_bytes(), "hello");
    }

    /// What [`Outgoing`] is for: the moves of the request hyper's client makes stay
    /// within eight 32-byte vectors, which glibc's AVX2 `memcpy` copies without a loop
    /// (ARCHITECTURE.md, "Moves on the request path"). Its channel carries the request beside
    /// a 24-byte callback, and its reply can hand the request back unsent.
    #[test]
    fn an_upstream_request_and_its_reply_fit_a_short_copy() {
        type Reply = Result<
            http::Response<Incoming>,
            hyper::client::conn::TrySendError<crate::upstream::UpstreamRequest>,
        >;
        let request = size_of::<crate::upstream::UpstreamRequest>();
        assert!(request + 24 <= 256, "the request is {request} bytes");
        let reply = size_of::<Reply>();
        assert!(reply <= 256, "the reply is {reply} bytes");
    }
}
