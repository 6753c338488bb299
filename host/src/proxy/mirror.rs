//! A route's `mirror`: a sample of its requests, as they go upstream, copied to another
//! cluster on a task of their own. The client's answer and latency never wait on the copy:
//! the copy's answer is read and dropped, its failure counted. Only requests whose whole
//! body is known and small are copied (none, or a `Content-Length` up to `max_body_bytes`,
//! read before the request goes on, as a retry's body is); others are counted as skipped.
//! Copies are refused, and counted as failed, while the mirror cluster is at its
//! `max_requests` or past the route's pace ([`COPIES_PER_SECOND`], [`BURST`] at once).
//! The copy's `Host` gets `-shadow` appended (as Envoy's), so the shadow service and its
//! logs can tell copies from real traffic.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, request};
use hyper::body::Body as _;

use super::attempts::RequestBody;
use super::outbound::ClusterOutbound;
use crate::body::BodyWatch;
use crate::config::Mirror;
use crate::error::ProxyError;
use crate::generation::Generation;
use crate::metrics::{MirrorResult, RouteMetrics};
use crate::pace::Pace;
use crate::plugin::outbound::Outbound as _;

/// The most copies a route's mirror starts a second, and at once. A slow mirror cluster
/// frees its `max_requests` all together when its answers come; without a pace, the copies
/// that fill it again would be made in one burst on the client's thread.
const COPIES_PER_SECOND: u64 = 10_000;
const BURST: u64 = 16;

/// A pace for a route's mirror.
pub(crate) fn pace() -> Pace {
    Pace::new(COPIES_PER_SECOND, BURST)
}

/// The copy's `Host`: `-shadow` after the host name, before a port (`example.com-shadow:8080`,
/// as Envoy writes it).
fn shadow_host(host: &str) -> String {
    let split = match host.rfind(':') {
        // A port after a name or an IPv4 address, or after an IPv6 literal's `]`.
        Some(i) if !host[..i].contains(':') || host[..i].ends_with(']') => i,
        _ => host.len(),
    };
    format!("{}-shadow{}", &host[..split], &host[split..])
}

/// The request being copied, as it goes upstream.
pub(super) struct Copying<'a> {
    /// The route's pace of copies.
    pub(super) pace: &'a Pace,
    pub(super) parts: &'a request::Parts,
    pub(super) request_id: &'a HeaderValue,
    /// The fate of the client's body: a failure reading it for the copy is answered as the
    /// primary path answers one (the client's fault: 400, 408, 413, 499).
    pub(super) watch: Option<&'a BodyWatch>,
}

/// Copies the request (`parts`, `body`) to the mirror's cluster if this one is in the
/// sample. A small streamed body is read first (and goes on as read); a failure reading it
/// fails the request as the client's, through its `BodyWatch`, as if the upstream were
/// reading it.
pub(super) async fn copy(
    mirror: &Mirror,
    generation: &Arc<Generation>,
    copying: Copying<'_>,
    body: &mut RequestBody,
    metrics: &RouteMetrics,
) -> Result<(), ProxyError> {
    let Copying {
        pace,
        parts,
        request_id,
        watch,
    } = copying;
    if fastrand::f64() * 100.0 >= mirror.percent {
        return Ok(());
    }
    // A mirror cluster at its `max_requests` (a slow shadow) would refuse the copy anyway:
    // refused here, before anything is copied or spawned, it costs the client nothing.
    let cluster = &generation.clusters[mirror.cluster.index];
    // So would one past the route's pace, spacing out the copies that refill the cluster.
    if cluster.endpoints.active() >= cluster.config.max_requests || !pace.admit() {
        metrics.mirrored(MirrorResult::Failed);
        return Ok(());
    }
    let bytes = match body {
        RequestBody::Buffered(bytes) => bytes.clone(),
        RequestBody::Client(streamed) if streamed.is_end_stream() => Bytes::new(),
        RequestBody::Client(_) => {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_none_or(|n| n > mirror.max_body_bytes) {
                metrics.mirrored(MirrorResult::Skipped);
                return Ok(());
            }
            let RequestBody::Client(streamed) =
                std::mem::replace(body, RequestBody::Buffered(Bytes::new()))
            else {
                return Ok(());
            };
            let limit = usize::try_from(mirror.max_body_bytes).unwrap_or(usize::MAX);
            let read = Bytes::from(
                super::filters::read_request_body(streamed, &parts.headers, limit, watch).await?,
            );
            *body = RequestBody::Buffered(read.clone());
            read
        }
    };
    let mut copy = Request::new(bytes);
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.headers_mut() = parts.headers.clone();
    let host = copy
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(shadow_host)
        .and_then(|h| HeaderValue::from_str(&h).ok());
    if let Some(host) = host {
        copy.headers_mut().insert(header::HOST, host);
    }
    let outbound = ClusterOutbound {
        generation: generation.clone(),
        request_id: request_id.clone(),
    };
    let sent = outbound.send(mirror.cluster.name.clone(), copy);
    let counters = metrics.mirror_counters();
    tokio::spawn(async move {
        let result = match sent.await {
            Ok(response) => {
                let failed = response.status().is_server_error();
                crate::body::drain(response.into_body()).await;
                if failed {
                    MirrorResult::Failed
                } else {
                    MirrorResult::Sent
                }
            }
            Err(error) => {
                tracing::debug!(%error, "mirrored request failed");
                MirrorResult::Failed
            }
        };
        counters.count(result);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shadow_host;

    #[test]
    fn the_shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_host("example.com"), "example.com-shadow");
        assert_eq!(shadow_host("example.com:8080"), "example.com-shadow:8080");
        assert_eq!(shadow_host("127.0.0.1:80"), "127.0.0.1-shadow:80");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
    }
}
