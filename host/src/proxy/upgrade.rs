//! HTTP/1.1 upgrades (WebSocket and any other protocol): the `Upgrade` request runs the
//! route's request filters like any request (so an auth plugin guards a WebSocket
//! handshake), goes upstream on an HTTP/1.1 connection with its `Connection: upgrade` and
//! `Upgrade` kept, and when the endpoint answers `101 Switching Protocols` both connections
//! become one tunnel, copied both ways until either side closes or it carries no byte for
//! `server.upgrade_idle_timeout`. The tunnel keeps the client connection's place under the
//! server's `max_connections` (and the drain waits for it) and the endpoint connection's
//! place under its cluster's.
//!
//! A WebSocket over HTTP/2 (RFC 8441: an extended `CONNECT` with `:protocol websocket`) is
//! turned into the HTTP/1.1 handshake endpoints speak, and the endpoint's `101` back into the
//! `200` an HTTP/2 client expects; the tunnel is the same.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Client;
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::upstream::TunnelSlot;

/// An upgrade a client asked for.
#[derive(Debug)]
pub(super) struct Upgrade {
    /// The `Upgrade` header's value (`websocket`).
    protocol: HeaderValue,
    /// hyper's handle on the client connection, resolved once the 101 has been sent.
    downstream: OnUpgrade,
    /// Asked as an HTTP/2 extended CONNECT: answered 200, not 101.
    h2: bool,
}

/// Rewrites an HTTP/2 extended `CONNECT` for `websocket` (RFC 8441) in place into the
/// HTTP/1.1 handshake (RFC 6455) an endpoint expects: `GET` with `Upgrade: websocket`,
/// `Connection: upgrade` and a fresh `Sec-WebSocket-Key` (the client's other `Sec-WebSocket-*`
/// headers pass as they are). Returns whether it did.
#[inline]
pub(super) fn from_extended_connect<B>(request: &mut Request<B>) -> bool {
    if request.method() != Method::CONNECT || request.version() != Version::HTTP_2 {
        return false;
    }
    let websocket = request
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        return false;
    }
    *request.method_mut() = Method::GET;
    let headers = request.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    if let Ok(key) = HeaderValue::from_str(&base64(&key)) {
        headers.insert(header::SEC_WEBSOCKET_KEY, key);
    }
    true
}

/// Standard base64 with padding, for a WebSocket key.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The upgrade `parts` asks for: HTTP/1.1 with `Upgrade` and `upgrade` among `Connection`'s
/// tokens. Takes hyper's handle on the connection out of the request.
///
/// `h2c` is never an upgrade here: an endpoint that accepted it would speak HTTP/2 straight
/// to the client through the tunnel, every later request on it past weir's routing and
/// plugins ("h2c smuggling"). Such a request goes on as a plain request, its `Upgrade`
/// removed with the other hop-by-hop headers.
#[inline]
pub(super) fn requested(parts: &mut request::Parts, extended_connect: bool) -> Option<Upgrade> {
    if parts.version != Version::HTTP_11 && !extended_connect {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
    let h2c = protocol.to_str().map_or(true, |p| {
        p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    if h2c {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let downstream = parts.extensions.remove::<OnUpgrade>()?;
    Some(Upgrade {
        protocol,
        downstream,
        h2: extended_connect,
    })
}

/// Puts the upgrade's headers back after the hop-by-hop ones were removed.
pub(super) fn restore(headers: &mut HeaderMap, upgrade: &Upgrade) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.protocol.clone());
}

/// The endpoint's answers weir cannot pass on (502): a `101` to a request that asked for no
/// upgrade (or for `h2c`, which is never one) would tell the client of a switch weir does
/// not carry out, and hyper would close the connection after it; a `2xx` other than `101` to
/// a WebSocket over HTTP/2 would open the client's tunnel (RFC 8441) to nothing.
#[inline]
pub(super) fn check(
    response: &Response<ProxyBody>,
    upgrade: Option<&Upgrade>,
) -> Result<(), ProxyError> {
    let status = response.status();
    let why = match upgrade {
        None if status == StatusCode::SWITCHING_PROTOCOLS => {
            "the endpoint switched protocols, and the request asked for no upgrade".to_owned()
        }
        Some(upgrade) if upgrade.h2 && status.is_success() => {
            format!("the endpoint answered a WebSocket handshake with {status}, not 101")
        }
        _ => return Ok(()),
    };
    Err(ProxyError::new(ErrorKind::UpstreamFailed).with_cause(why))
}

/// If the response switches protocols, gives it its upgrade headers back — with the
/// protocol the endpoint chose, `switched_to` — and starts the tunnel between the two
/// connections (it runs once hyper has sent the 101).
pub(super) fn tunnel(
    response: &mut Response<ProxyBody>,
    mut upgrade: Upgrade,
    switched_to: Option<HeaderValue>,
    client: &Client,
    idle_timeout: Duration,
) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if let Some(protocol) = switched_to {
        upgrade.protocol = protocol;
    }
    let upstream = hyper::upgrade::on(&mut *response);
    // The endpoint connection's place under the cluster's `max_connections`.
    let upstream_slot = response.extensions_mut().remove::<TunnelSlot>();
    if upgrade.h2 {
        // RFC 8441: the stream is the tunnel once a 2xx answers the CONNECT.
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
    } else {
        restore(response.headers_mut(), &upgrade);
    }
    let slot = client.slot.clone();
    let peer = client.addr;
    tokio::spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(upgrade.downstream, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "upgrade did not complete");
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        let mut downstream = Watched::new(TokioIo::new(downstream), &activity);
        let mut upstream = Watched::new(TokioIo::new(upstream), &activity);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {
                if let Err(e) = copied {
                    tracing::debug!(error = %e, %peer, "tunnel ended with an error");
                }
            }
            () = activity.idle_for(idle_timeout) => {
                tracing::debug!(%peer, ?idle_timeout, "tunnel closed: idle");
            }
        }
        drop((slot, upstream_slot));
    });
}

/// When a tunnel last moved a byte, in milliseconds since it started.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that notes activity on every read and write.
struct Watched<'a, T> {
    inner: T,
    activity: &'a Activity,
}

impl<'a, T> Watched<'a, T> {
    fn new(inner: T, activity: &'a Activity) -> Watched<'a, T> {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_only_after_the_limit_without_a_byte() {
        let activity = Activity::new();
        let limit = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(6)).await;
        activity.touch();
        let started = Instant::now();
        activity.idle_for(limit).await;
        // Idle from the touch at 6 s, so 10 s after it, not 10 s after the start.
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn only_an_http11_request_with_connection_upgrade_asks_for_one() {
        let parts = |version: Version, connection: &str| {
            let mut request = http::Request::get("/")
                .version(version)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, connection)
                .body(())
                .expect("request");
            request
                .extensions_mut()
                .insert(hyper::upgrade::on(http::Request::new(())));
            request.into_parts().0
        };
        assert!(requested(&mut parts(Version::HTTP_11, "keep-alive, Upgrade"), false).is_some());
        assert!(requested(&mut parts(Version::HTTP_11, "keep-alive"), false).is_none());
        assert!(requested(&mut parts(Version::HTTP_2, "upgrade"), false).is_none());
        let mut h2c = parts(Version::HTTP_11, "Upgrade, HTTP2-Settings");
        h2c.headers
            .insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(requested(&mut h2c, false).is_none());
    }

    #[test]
    fn websocket_keys_are_base64_of_16_bytes() {
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
