//! Sending one request to a cluster: circuit breaking, the sticky endpoint, the balancer's
//! pick, and retries on other endpoints, with every outcome fed to outlier detection.
//!
//! A failed attempt is retried (up to the cluster's `retries`, within its retry budget) only
//! when sending the request again is safe and possible:
//! - possible: the request has no body, or one small enough (`retry_buffer_bytes`, known
//!   from `Content-Length`) that it was held in memory before the first attempt;
//! - safe: the connection failed (nothing reached the endpoint), or the method is idempotent
//!   (or the route opts in with `retry_non_idempotent`) and the endpoint reset the exchange,
//!   timed out before response headers, or answered a status in `retry_on_statuses`.
//!
//! A retry goes to an endpoint the request has not tried while one is left. After that
//! (always, in a one-endpoint cluster) it goes back to one it tried only after a failure that
//! cost no wait: a refused or dropped connection, or a reset. A timeout (connecting or
//! waiting for the response) or a status in `retry_on_statuses` is not retried on an
//! endpoint that gave it already: a hanging endpoint costs one `response_timeout`, not one
//! per attempt (nginx's `proxy_next_upstream` never tries a server twice).
//!
//! Nothing is ever retried once the client has seen a byte: retries happen before the
//! response head is returned.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;

use super::client_body::client_error;
use super::grpc;
use crate::balancer::PickContext;
use crate::body::{self, BodyWatch, ClientBody, Outgoing, ProxyBody};
use crate::error::{BoxError, ErrorKind, ProxyError, Retry};
use crate::generation::Cluster;
use crate::timer::Timers;
use crate::trace::RequestTrace;
use crate::upstream::UpstreamBody;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// What the caller needs of a finished exchange.
pub(super) struct Answer {
    /// The upstream's response head and streaming body.
    pub(super) response: Response<UpstreamBody>,
    /// A `Set-Cookie` to add for sticky sessions, when the client is (re)stuck.
    pub(super) set_cookie: Option<HeaderValue>,
}

/// One request on its way to a cluster.
pub(super) struct Exchange<'a> {
    /// Where it goes.
    pub(super) cluster: &'a Cluster,
    /// Its head, with upstream headers already applied.
    pub(super) parts: request::Parts,
    /// Its body: as the client sends it, or as the body hooks left it.
    pub(super) body: RequestBody,
    /// Its `consistent_hash` key, hashed.
    pub(super) hash: Option<u64>,
    /// Whether its route lets non-idempotent methods retry.
    pub(super) retry_non_idempotent: bool,
    /// A gRPC call: its `grpc-timeout` bounds the exchange.
    pub(super) grpc: bool,
    /// For log lines.
    pub(super) request_id: &'a HeaderValue,
    /// The downstream connection's response-timeout sleeps.
    pub(super) timers: &'a Timers,
    /// The request's trace: each attempt is a span, and the upstream gets `traceparent`.
    pub(super) trace: Option<&'a RequestTrace>,
    /// The client's body's fate: its faults are the client's, and the response timeout
    /// starts when it has been sent.
    pub(super) body_watch: Option<Arc<BodyWatch>>,
}

/// Sends the exchange. `progress` is kept up to date with the endpoint of the latest
/// attempt, for the error log line.
///
/// An `async` block returned, not an `async fn`, and [`attempts`] borrowing the exchange
/// from it, so that the 330-byte exchange is not copied into each future's locals
/// (ARCHITECTURE.md, "Moves on the request path").
#[expect(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: an async fn copies its arguments into its locals when first polled"
)]
pub(super) fn send(
    mut exchange: Exchange<'_>,
    progress: &mut Progress,
) -> impl Future<Output = Result<Answer, ProxyError>> {
    async move {
        let cluster = exchange.cluster;
        // Circuit breaking: over max_requests, fail fast. Held until the response head.
        let _admitted = cluster
            .endpoints
            .admit(cluster.config.max_requests)
            .map_err(|e| {
                cluster.metrics.overloaded.inc();
                ProxyError::new(ErrorKind::Overloaded).with_cause(e)
            })?;
        // gRPC is HTTP/2 only: a cluster that cannot speak it is a configuration error, said as
        // one rather than as whatever the endpoint makes of an HTTP/1.1 request.
        if exchange.grpc && !cluster.client.may_be_h2() {
            return Err(
            ProxyError::new(ErrorKind::UpstreamProtocol).with_cause(format!(
                "a gRPC call needs HTTP/2 and cluster {} speaks HTTP/1.1 (set its protocol to \"h2c\", or \"h2\" or \"auto\" over TLS)",
                cluster.config.name
            )),
        );
        }
        // A gRPC call's own deadline bounds it, instead of the cluster's response timeout: the
        // client said how long the call may take (`request_timeout`, when set, still caps it).
        let grpc_timeout = if exchange.grpc {
            grpc::timeout(&exchange.parts.headers)
        } else {
            None
        };
        let limit = match (cluster.config.request_timeout, grpc_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match limit {
            Some(limit) => {
                tokio::time::timeout(limit, attempts(&mut exchange, progress, grpc_timeout))
                    .await
                    .map_err(|e| ProxyError::new(ErrorKind::UpstreamTimeout).with_cause(e))?
            }
            None => attempts(&mut exchange, progress, None).await,
        }
    }
}

/// Where a request's exchange with its cluster has got to, for logs and the access log.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Progress {
    /// The endpoint of the latest attempt.
    pub(super) endpoint: Option<usize>,
    /// Attempts sent.
    pub(super) attempts: u32,
}

/// The attempts of one exchange; `response_timeout`, when given, replaces the cluster's.
/// The exchange is borrowed, and its body taken, so that its head is not copied (see
/// [`send`]).
async fn attempts(
    exchange: &mut Exchange<'_>,
    progress: &mut Progress,
    response_timeout: Option<std::time::Duration>,
) -> Result<Answer, ProxyError> {
    let body = std::mem::replace(&mut exchange.body, RequestBody::Buffered(Bytes::new()));
    let Exchange {
        cluster,
        ref mut parts,
        body: _,
        hash,
        retry_non_idempotent,
        grpc: _,
        request_id,
        timers,
        trace,
        ref body_watch,
    } = *exchange;
    let config = &cluster.config;
    let mut pick = PickContext { hash, tried: 0 };
    let idempotent = retry_non_idempotent || is_idempotent(&parts.method);
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // The body: streamed once, or held so every attempt can send it.
    let mut body = Payload::new(
        body,
        &parts.headers,
        config.retries,
        config.retry_buffer_bytes,
    )
    .await
    .map_err(|e| client_error(e, body_watch.as_deref()))?;
    // A streamed body is still arriving while the attempt is sent: the response timeout
    // waits for its end. A held one is sent at once.
    let uploading = body_watch.as_deref().filter(|_| !body.resendable());

    // Sticky sessions: the endpoint the cookie names, while it can take the request.
    let sticky = config.sticky.as_ref();
    let stuck_to = sticky
        .and_then(|s| super::cookie(&parts.headers, &s.cookie))
        .and_then(|id| cluster.sticky_ids.iter().position(|known| known == id));
    let mut preferred = stuck_to.filter(|&i| {
        cluster
            .endpoints
            .candidates(&pick)
            .admits_index(&cluster.endpoints, i)
    });

    let mut attempt = 0;
    let mut _retrying = None;
    loop {
        let endpoint = match preferred.take() {
            Some(i) => i,
            None => cluster
                .balancer
                .pick(&pick, &cluster.endpoints)
                .ok_or_else(|| ProxyError::new(ErrorKind::NoEndpoint))?,
        };
        progress.endpoint = Some(endpoint);
        progress.attempts += 1;
        let mut request = Request::new(body.next_attempt());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = Uri::from(path_and_query.clone());
        *request.version_mut() = parts.version;
        // The headers are copied only while a retry may still need them; the attempt that
        // can be the last (the common case with a streamed body or no retries) takes them.
        *request.headers_mut() = if attempt >= config.retries || !body.resendable() {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };

        // Each attempt is a span of the request's trace, and the upstream's parent.
        let span = trace.and_then(|t| {
            let span = t.child(
                || format!("{} {}", parts.method, config.name),
                SpanKind::Client,
            )?;
            Some(span.with(vec![
                KeyValue::new(
                    "server.address",
                    config.endpoints[endpoint].authority.to_string(),
                ),
                KeyValue::new("weir.attempt", i64::from(attempt) + 1),
            ]))
        });
        if let Some(trace) = trace {
            trace.inject(span.as_ref(), request.headers_mut());
        }

        // Counted until the response head arrives (or the attempt fails), for least_request.
        let in_flight = cluster.endpoints.start(endpoint);
        let result = cluster
            .client
            .send(endpoint, request, timers, uploading, response_timeout)
            .await;
        drop(in_flight);
        if let Some(span) = span {
            match &result {
                Ok(response) => span.end(
                    vec![KeyValue::new(
                        "http.response.status_code",
                        i64::from(response.status().as_u16()),
                    )],
                    response
                        .status()
                        .is_server_error()
                        .then(|| response.status().to_string()),
                ),
                Err(e) => span.end(Vec::new(), Some(format!("{:?}", e.kind))),
            }
        }

        let failure = match result {
            Ok(mut response) => {
                let status = response.status();
                // The endpoint's hop-by-hop headers go as its answer arrives, before weir
                // adds its own (its cache's `Cache-Status`, the sticky cookie) or a plugin's
                // outbound call reads it, so the endpoint's `Connection` cannot name weir's
                // headers away. A 101's are the upgrade's to read.
                if status != StatusCode::SWITCHING_PROTOCOLS {
                    super::forward::strip_hop_by_hop(response.headers_mut());
                }
                super::outcome(cluster, endpoint, status.is_server_error());
                if !config.retry_on_statuses.contains(&status.as_u16()) {
                    let set_cookie = sticky.filter(|_| stuck_to != Some(endpoint)).and_then(|s| {
                        HeaderValue::from_str(&format!(
                            "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                            s.cookie,
                            cluster.sticky_ids[endpoint],
                            s.ttl.as_secs()
                        ))
                        .ok()
                    });
                    return Ok(Answer {
                        response,
                        set_cookie,
                    });
                }
                Failure::Status(response)
            }
            // The cluster's own caps say nothing about the endpoint's health.
            Err(e) if e.kind == ErrorKind::Overloaded => return Err(e),
            // Nor does a client that sent a bad body, stalled, or went away mid-upload.
            Err(e) if body_watch.as_ref().is_some_and(|w| w.fault().is_some()) => {
                return Err(client_error(e.into(), body_watch.as_deref()));
            }
            Err(e) => {
                if let Some(state) = cluster.endpoints.get(endpoint) {
                    state.record_failure();
                }
                super::outcome(cluster, endpoint, true);
                Failure::Error(e)
            }
        };

        // Retry, or give up with this attempt's answer.
        let safe = match &failure {
            Failure::Error(e) if matches!(e.retry, Retry::Safe | Retry::Elsewhere) => true,
            Failure::Error(e) => {
                idempotent
                    && matches!(
                        e.kind,
                        ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout
                    )
            }
            Failure::Status(_) => idempotent,
        };
        pick.mark_tried(endpoint);
        // Somewhere to go: an endpoint not tried yet, or, after a failure that cost no wait,
        // one tried again.
        let fresh = cluster.endpoints.untried_left(&pick);
        let quick = match &failure {
            Failure::Error(e) => e.retry == Retry::Safe || e.kind == ErrorKind::UpstreamFailed,
            Failure::Status(_) => false,
        };
        let retry = safe && (fresh || quick) && attempt < config.retries && body.resendable();
        _retrying = if retry {
            cluster.endpoints.start_retry(config.retry_budget_percent)
        } else {
            None
        };
        if _retrying.is_none() {
            if retry {
                tracing::warn!(cluster = %config.name, request_id = %String::from_utf8_lossy(request_id.as_bytes()), "retry budget exhausted; not retrying");
            }
            return match failure {
                Failure::Error(e) => Err(e),
                Failure::Status(response) => Ok(Answer {
                    response,
                    set_cookie: None,
                }),
            };
        }
        attempt += 1;
        cluster.metrics.retries.inc();
        let why = match &failure {
            Failure::Error(e) => e
                .cause
                .as_ref()
                .map_or_else(|| format!("{:?}", e.kind), |c| c.to_string()),
            Failure::Status(r) => format!("status {}", r.status()),
        };
        let request_id = String::from_utf8_lossy(request_id.as_bytes());
        let endpoint = &config.endpoints[endpoint].authority;
        if fresh {
            tracing::warn!(%request_id, cluster = %config.name, %endpoint, attempt, error = %why, "retrying on another endpoint");
        } else {
            tracing::warn!(%request_id, cluster = %config.name, %endpoint, attempt, error = %why, "retrying on an endpoint already tried");
        }
    }
}

/// The request body handed to [`send`].
pub(super) enum RequestBody {
    /// Streamed from the client.
    Client(ClientBody),
    /// Read whole (by the body hooks); every attempt can send it.
    Buffered(Bytes),
}

/// Why an attempt did not end the exchange.
enum Failure {
    /// No usable response.
    Error(ProxyError),
    /// A response whose status is in `retry_on_statuses`.
    Status(Response<UpstreamBody>),
}

/// The request body across attempts.
enum Payload {
    /// No body: every attempt sends an empty one.
    Empty,
    /// Held in memory: every attempt sends a copy.
    Held(Bytes),
    /// Streamed: the first attempt takes it; no retry can send it again.
    Stream(Option<ClientBody>),
}

impl Payload {
    /// Holds the body in memory when retries are on and `Content-Length` says it fits.
    async fn new(
        body: RequestBody,
        headers: &http::HeaderMap,
        retries: u32,
        limit: usize,
    ) -> Result<Payload, BoxError> {
        let body = match body {
            RequestBody::Buffered(bytes) => return Ok(Payload::held(bytes)),
            RequestBody::Client(body) => body,
        };
        if body.is_end_stream() {
            return Ok(Payload::Empty);
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match length {
            Some(n) if retries > 0 && n <= limit => {
                let held = Limited::new(body, limit).collect().await?;
                Ok(Payload::held(held.to_bytes()))
            }
            _ => Ok(Payload::Stream(Some(body))),
        }
    }

    /// `bytes` held for every attempt; none at all when empty (a body buffered empty, or a
    /// `Content-Length: 0` before the stream's end), so an attempt sends nothing and
    /// allocates nothing.
    fn held(bytes: Bytes) -> Payload {
        if bytes.is_empty() {
            Payload::Empty
        } else {
            Payload::Held(bytes)
        }
    }

    fn next_attempt(&mut self) -> Outgoing {
        match self {
            Payload::Empty => Outgoing::empty(),
            Payload::Held(bytes) => Outgoing::new(body::full(bytes.clone())),
            Payload::Stream(body) => match body.take() {
                Some(body) => Outgoing::new(ProxyBody::Client(body)),
                None => Outgoing::empty(),
            },
        }
    }

    /// Whether another attempt can send the whole body again.
    fn resendable(&self) -> bool {
        !matches!(self, Payload::Stream(_))
    }
}

/// Methods RFC 9110 defines as idempotent: safe to send again after a reset.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}
