//! The body type that flows through the proxy in both directions.
//!
//! Proxied bodies stay hyper's streaming [`Incoming`]; replies weir makes itself are a
//! [`Full`] buffer. An `Either` avoids boxing every body on the request path.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// A request or response body: streamed from a peer, or made by weir.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A body weir makes itself.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(bytes.into()))
}
