//! HTTP/1.1 upgrades (WebSocket and any other protocol): the `Upgrade` request runs the
//! route's request filters like any request (so an auth plugin guards a WebSocket
//! handshake), goes upstream on an HTTP/1.1 connection with its `Connection: upgrade` and
//! `Upgrade` kept, and when the endpoint answers `101 Switching Protocols` both connections
//! become one tunnel, copied both ways until either side closes or it carries no byte for
//! `server.upgrade_idle_timeout`. The tunnel keeps the client connection's place under
//! `max_connections` and the drain waits for it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Client;
use crate::body::ProxyBody;

/// An upgrade a client asked for.
#[derive(Debug)]
pub(super) struct Upgrade {
    /// The `Upgrade` header's value (`websocket`).
    protocol: HeaderValue,
    /// hyper's handle on the client connection, resolved once the 101 has been sent.
    downstream: OnUpgrade,
}

/// The upgrade `parts` asks for: HTTP/1.1 with `Upgrade` and `upgrade` among `Connection`'s
/// tokens. Takes hyper's handle on the connection out of the request.
#[inline]
pub(super) fn requested(parts: &mut request::Parts) -> Option<Upgrade> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
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
    })
}

/// Puts the upgrade's headers back after the hop-by-hop ones were removed.
pub(super) fn restore(headers: &mut HeaderMap, upgrade: &Upgrade) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade.protocol.clone());
}

/// If the response switches protocols, gives it its upgrade headers back and starts the
/// tunnel between the two connections (it runs once hyper has sent the 101).
pub(super) fn tunnel(
    response: &mut Response<ProxyBody>,
    upgrade: Upgrade,
    client: &Client,
    idle_timeout: Duration,
) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut *response);
    restore(response.headers_mut(), &upgrade);
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
        drop(slot);
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
        assert!(requested(&mut parts(Version::HTTP_11, "keep-alive, Upgrade")).is_some());
        assert!(requested(&mut parts(Version::HTTP_11, "keep-alive")).is_none());
        assert!(requested(&mut parts(Version::HTTP_2, "upgrade")).is_none());
    }
}
