//! The data path: [`ProxyService::handle`] takes one downstream request through its phases,
//! top to bottom, and [`fail`] is the one place an error becomes a response.
//!
//! Phases, in order:
//! 1. `request_filter` (downstream): validate the request, find its host, ensure a request id;
//! 2. route: match host, path and method to a route and its cluster;
//! 3. `request_filter` (plugins): the route's chain may change the request or answer it;
//! 4. `upstream_peer`: the cluster's balancer picks an endpoint;
//! 5. `upstream_request_filter`: hop-by-hop headers out, forwarding headers in;
//! 6. forward: send upstream, wait for response headers (bodies stream both ways) — or,
//!    on a route answered by a handler plugin, run the handler (its sub-requests go to
//!    clusters through [`ClusterOutbound`]);
//! 7. `response_filter`: hop-by-hop headers out of the response, then the chain's
//!    `on-response` hooks in reverse order (with the response header changes plugins left
//!    in step 3, each at its plugin's place). A plugin's local reply (step 3) skips 4–6 and
//!    goes through the response hooks of the plugins before it.
//!
//! Body hooks (`weir:plugin@0.2.0`) are the only reason a body is buffered: after step 3,
//! if a plugin on the route has `on-request-body`, the request body is read whole (413 if
//! it is larger than the smallest `max_body_bytes` of those plugins) and passed through
//! them; after step 7, if a plugin the request passed has `on-response-body`, the response
//! body is read whole and passed through them in reverse (one larger than the limit is
//! sent on untouched, with a warning). Either way `content-length` is set to what is sent.

mod attempts;
mod forward;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};

use crate::balancer::hash;
use crate::body::{self, Buffered, ProxyBody};
use crate::config::{HashKey, LbPolicy};
use crate::error::{ErrorKind, ProxyError};
use crate::generation::Generation;
use crate::plugin::chain::{BodyStep, Chain, ChainError, RequestStep};
use crate::plugin::handler::{HandlerBody, Outbound, OutboundBody, OutboundError};
use crate::plugin::view::RequestView;
use crate::timer::Timers;

use self::attempts::RequestBody;

/// The proxy as a hyper-agnostic service: a request in, a response out, never an error.
#[derive(Debug, Clone)]
pub struct ProxyService {
    generation: Arc<ArcSwap<Generation>>,
}

/// The client end of one downstream connection, shared by the requests on it.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    /// The IP as `X-Forwarded-For` text, formatted once per connection rather than per
    /// request.
    ip_value: HeaderValue,
    /// `ip:port` as the plugins are told it, formatted when the first request on a route
    /// with plugins asks.
    addr_text: OnceLock<Arc<str>>,
    /// The connection's sleeps for upstream response timeouts, reused request to request.
    timers: Timers,
}

impl Client {
    /// The client connected from `addr`.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            ip_value: forward::client_ip_value(addr.ip()),
            addr_text: OnceLock::new(),
            timers: Timers::default(),
        }
    }

    /// `ip:port`, as the plugins are told it.
    fn addr_text(&self) -> Arc<str> {
        self.addr_text
            .get_or_init(|| Arc::from(self.addr.to_string()))
            .clone()
    }
}

/// What is known about a request so far; every log line about it comes from here.
#[derive(Debug)]
struct RequestContext<'c> {
    client: &'c Client,
    request_id: Option<HeaderValue>,
    route: Option<usize>,
    cluster: Option<usize>,
    endpoint: Option<usize>,
}

impl ProxyService {
    /// A service that serves whatever generation `generation` holds at each request.
    pub fn new(generation: Arc<ArcSwap<Generation>>) -> ProxyService {
        ProxyService { generation }
    }

    /// Proxies one request from `client`. Always produces a response.
    pub async fn handle(&self, request: Request<Incoming>, client: &Client) -> Response<ProxyBody> {
        // One generation for the whole request, even if a reload swaps it meanwhile.
        let generation = self.generation.load_full();
        let mut ctx = RequestContext {
            client,
            request_id: None,
            route: None,
            cluster: None,
            endpoint: None,
        };
        match proxy(&generation, request, &mut ctx).await {
            Ok(response) => response,
            Err(error) => fail(&generation, &ctx, error),
        }
    }
}

async fn proxy(
    generation: &Arc<Generation>,
    mut request: Request<Incoming>,
    ctx: &mut RequestContext<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // request_filter (downstream)
    let request_id = forward::ensure_request_id(request.headers_mut());
    ctx.request_id = Some(request_id.clone());
    if request.method() == http::Method::CONNECT {
        return Err(bad_request(
            "CONNECT: weir is a reverse proxy and opens no tunnels",
        ));
    }
    let host_value = request_host(&request)?;
    let host = host_value.as_ref().map(normalize_host).transpose()?;

    // route
    let route = generation
        .router
        .route(host.as_deref(), request.uri().path(), request.method())
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute))?;
    ctx.route = Some(route.0);
    ctx.cluster = generation.config.routes[route.0].cluster_index;

    // request_filter (plugins): may change the request or answer it.
    let chain = &generation.chains[route.0];
    let (mut parts, incoming) = request.into_parts();
    let mut body = RequestBody::Client(incoming);
    let mut response_hooks: Option<(RequestView, usize)> = None;
    if chain.is_active() {
        let mut view = RequestView::new(
            parts,
            host_value.clone(),
            ctx.client.addr_text(),
            chain.route().clone(),
            &request_id,
        );
        let passed = match chain.on_request(&mut view).await.map_err(plugin_error)? {
            RequestStep::Respond {
                head: reply,
                body,
                passed,
            } => {
                return local_reply(chain, passed, &mut view, reply, body, request_id).await;
            }
            RequestStep::Continue { passed } => passed,
        };
        // request_body_filter (plugins): only when a plugin asked for the body.
        if let Some(limit) = chain.request_body_limit() {
            body = match body {
                RequestBody::Client(incoming) if !incoming.is_end_stream() => {
                    let bytes = read_request_body(incoming, &view.parts().headers, limit).await?;
                    let step = chain.on_request_body(&mut view, bytes).await;
                    match step.map_err(plugin_error)? {
                        BodyStep::Continue(bytes) => RequestBody::Buffered(bytes.into()),
                        BodyStep::Respond {
                            head: reply,
                            body,
                            passed,
                        } => {
                            return local_reply(chain, passed, &mut view, reply, body, request_id)
                                .await;
                        }
                    }
                }
                unread => unread,
            };
        }
        parts = if chain.has_response_hooks() {
            // The response hooks see the request as it was sent on.
            let sent = view.split_off_parts();
            response_hooks = Some((view, passed));
            sent
        } else if view.has_left() {
            // Only the response header changes plugins left: no hook reads the request.
            let sent = view.take_parts();
            response_hooks = Some((view, passed));
            sent
        } else {
            view.into_parts()
        };
    }

    // upstream_request_filter: headers once, whichever endpoint is chosen.
    forward::strip_hop_by_hop(&mut parts.headers);
    let downstream = forward::Downstream {
        client_ip: &ctx.client.ip_value,
        host: host_value.as_ref(),
        version: parts.version,
        scheme: "http",
    };
    forward::upstream_request_headers(&mut parts.headers, &downstream);

    let (mut parts, body) = match (ctx.cluster, &generation.handlers[route.0]) {
        // upstream_peer + forward (with retries): see `attempts`.
        (Some(cluster_index), _) => {
            let cluster = &generation.clusters[cluster_index];
            parts.version = Version::HTTP_11;
            let hash = hash_key(&cluster.config.lb, &parts, ctx.client.addr);
            let retry_non_idempotent = generation.config.routes[route.0].retry_non_idempotent;
            let exchange = attempts::Exchange {
                cluster,
                parts,
                body,
                hash,
                retry_non_idempotent,
                request_id: &request_id,
                timers: &ctx.client.timers,
            };
            let answer = attempts::send(exchange, &mut ctx.endpoint).await?;
            let (mut parts, body) = answer.response.into_parts();
            if let Some(cookie) = answer.set_cookie {
                parts.headers.append(header::SET_COOKIE, cookie);
            }
            (parts, ProxyBody::Upstream(body))
        }
        // handler: the plugin answers; its sub-requests go to clusters.
        (None, Some(handler)) => {
            let handler = handler.as_ref().map_err(|why| {
                ProxyError::new(ErrorKind::PluginUnavailable).with_cause(why.clone())
            })?;
            let body = match body {
                RequestBody::Client(incoming) => HandlerBody::Stream(incoming),
                RequestBody::Buffered(bytes) => HandlerBody::Full(bytes),
            };
            let outbound = Arc::new(ClusterOutbound {
                generation: generation.clone(),
                request_id: request_id.clone(),
            });
            let response = handler
                .handle(Request::from_parts(parts, body), outbound)
                .await
                .map_err(|e| ProxyError::new(ErrorKind::PluginFailed).with_cause(e))?;
            let (parts, bytes) = response.into_parts();
            (parts, body::full(bytes))
        }
        (None, None) => return Err(ProxyError::new(ErrorKind::NoRoute)),
    };

    // response_filter
    forward::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(forward::X_REQUEST_ID.clone(), request_id);
    let response = Response::from_parts(parts, body);

    // response_filter (plugins), in reverse chain order.
    match response_hooks {
        Some((mut request, passed)) => {
            response_filter_plugins(chain, passed, &mut request, response).await
        }
        None => Ok(response),
    }
}

/// Sends a handler's sub-requests to the generation's clusters, with their balancing,
/// retries and circuit breaking. The handler runtime checks the grant before this is called.
struct ClusterOutbound {
    generation: Arc<Generation>,
    request_id: HeaderValue,
}

impl Outbound for ClusterOutbound {
    fn send(
        &self,
        cluster: String,
        request: Request<bytes::Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<OutboundBody>, OutboundError>> + Send>> {
        let generation = self.generation.clone();
        let request_id = self.request_id.clone();
        Box::pin(async move {
            let index = generation
                .config
                .clusters
                .iter()
                .position(|c| c.name == cluster)
                .ok_or(OutboundError::UnknownCluster(cluster))?;
            let (mut parts, body) = request.into_parts();
            forward::strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(forward::X_REQUEST_ID.clone(), request_id.clone());
            parts.version = Version::HTTP_11;
            let exchange = attempts::Exchange {
                cluster: &generation.clusters[index],
                parts,
                body: RequestBody::Buffered(body),
                hash: None,
                retry_non_idempotent: false,
                request_id: &request_id,
                timers: &Timers::default(),
            };
            let mut endpoint = None;
            match attempts::send(exchange, &mut endpoint).await {
                Ok(answer) => Ok(answer.response.map(|body| body.boxed_unsync())),
                Err(e) => Err(match e.kind {
                    ErrorKind::UpstreamConnect | ErrorKind::NoEndpoint => {
                        OutboundError::Connect(format!("{e}"))
                    }
                    ErrorKind::UpstreamTimeout => OutboundError::Timeout,
                    _ => OutboundError::Failed(format!("{e}")),
                }),
            }
        })
    }
}

/// A plugin's local reply, passed back through the response hooks of the plugins before it.
async fn local_reply(
    chain: &Chain,
    passed: usize,
    request: &mut RequestView,
    mut parts: http::response::Parts,
    body: Vec<u8>,
    request_id: HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    // hyper frames the body from its real length.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(forward::X_REQUEST_ID.clone(), request_id);
    let response = Response::from_parts(parts, body::full(body));
    if chain.needs_response_phase(request) {
        response_filter_plugins(chain, passed, request, response).await
    } else {
        Ok(response)
    }
}

/// Runs the chain's `on-response` hooks over a response head (a plugin may replace the
/// body), then its `on-response-body` hooks over the whole body if any plugin has one.
async fn response_filter_plugins(
    chain: &Chain,
    passed: usize,
    request: &mut RequestView,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = response.into_parts();
    let replaced = chain
        .on_response(passed, request, &mut parts)
        .await
        .map_err(plugin_error)?;
    let body = match replaced {
        Some(bytes) => {
            // The upstream's length no longer describes the body.
            parts.headers.remove(header::CONTENT_LENGTH);
            body::full(bytes)
        }
        None => body,
    };

    // response_body_filter (plugins)
    let Some(limit) = chain.response_body_limit(passed) else {
        return Ok(Response::from_parts(parts, body));
    };
    let bodiless = request.parts().method == http::Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || body.is_end_stream();
    if bodiless {
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = match body::buffer(body, limit).await {
        Ok(Buffered::Whole(bytes)) => bytes,
        Ok(Buffered::TooLarge(body)) => {
            tracing::warn!(
                request_id = request.request_id(),
                max_body_bytes = limit,
                "response body is larger than a body hook accepts; sent on untouched"
            );
            return Ok(Response::from_parts(parts, body));
        }
        Err(e) => return Err(ProxyError::new(ErrorKind::UpstreamFailed).with_cause(e)),
    };
    let bytes = chain
        .on_response_body(passed, request, &mut parts, bytes)
        .await
        .map_err(plugin_error)?;
    Ok(Response::from_parts(parts, body::full(bytes)))
}

/// Reads a request body whole for the body hooks: 413 when `Content-Length` or the bytes
/// that arrive exceed `limit`.
async fn read_request_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Vec<u8>, ProxyError> {
    let too_large = || ProxyError::new(ErrorKind::PayloadTooLarge);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large().with_cause("content-length is over the body hooks' limit"));
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Vec::from(collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(too_large().with_cause("the body is over the body hooks' limit"))
        }
        Err(e) => Err(ProxyError::new(ErrorKind::BadRequest).with_cause(e)),
    }
}

fn plugin_error(error: ChainError) -> ProxyError {
    let kind = match error {
        ChainError::Unavailable(_) => ErrorKind::PluginUnavailable,
        ChainError::Failed(_) | ChainError::InvalidChange { .. } => ErrorKind::PluginFailed,
    };
    ProxyError::new(kind).with_cause(error)
}

/// The host the client asked for: the Host header, or the URI authority (HTTP/2, absolute
/// form). HTTP/1.1 requires exactly one Host header (RFC 9112 §3.2).
fn request_host(request: &Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(bad_request("more than one Host header")),
        (Some(host), None) => Ok(Some(host.clone())),
        (None, _) => match request.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str())
                .map(Some)
                .map_err(|e| ProxyError::new(ErrorKind::BadRequest).with_cause(e)),
            None if request.version() == Version::HTTP_11 => {
                Err(bad_request("HTTP/1.1 request without Host"))
            }
            None => Ok(None),
        },
    }
}

/// Lower-cases the host and drops its port and trailing dot, for route matching.
fn normalize_host(value: &HeaderValue) -> Result<Cow<'_, str>, ProxyError> {
    let text = value
        .to_str()
        .map_err(|_| bad_request("Host is not ASCII"))?;
    let host = if let Some(rest) = text.strip_prefix('[') {
        // [v6]:port
        let end = rest
            .find(']')
            .ok_or_else(|| bad_request("malformed IPv6 Host"))?;
        &text[..end + 2]
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => text,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(bad_request("empty Host"));
    }
    Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn bad_request(why: &'static str) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest).with_cause(why)
}

/// Turns an error into the response the client gets, and logs who failed. The only place
/// that maps an error to a status code.
fn fail(
    generation: &Generation,
    ctx: &RequestContext<'_>,
    error: ProxyError,
) -> Response<ProxyBody> {
    let (status, text) = match error.kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad request\n"),
        ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        ErrorKind::NoRoute => (StatusCode::NOT_FOUND, "no route\n"),
        ErrorKind::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "no endpoint available\n"),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded\n"),
        ErrorKind::UpstreamConnect => (StatusCode::BAD_GATEWAY, "upstream connect error\n"),
        ErrorKind::UpstreamFailed => (StatusCode::BAD_GATEWAY, "upstream error\n"),
        ErrorKind::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timeout\n"),
        ErrorKind::PluginUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "plugin unavailable\n"),
        ErrorKind::PluginFailed => (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n"),
    };

    let config = &generation.config;
    let route = ctx.route.map(|i| config.routes[i].name.as_str());
    let cluster = ctx.cluster.map(|i| &config.clusters[i]);
    let endpoint = cluster
        .zip(ctx.endpoint)
        .map(|(c, e)| c.endpoints[e].authority.as_str());
    let request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok());
    let cause = error.cause.as_ref().map(|c| error_chain(c.as_ref()));
    tracing::warn!(
        status = status.as_u16(),
        kind = ?error.kind,
        source = ?error.source_,
        client = %ctx.client.addr,
        request_id,
        route,
        cluster = cluster.map(|c| c.name.as_str()),
        endpoint,
        cause,
        "request failed"
    );

    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(id) = &ctx.request_id {
        headers.insert(forward::X_REQUEST_ID.clone(), id.clone());
    }
    response
}

/// `outer: inner: innermost`, the way people read error causes.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// The request's key for `consistent_hash`, hashed; `None` for other algorithms.
fn hash_key(lb: &LbPolicy, request: &http::request::Parts, client: SocketAddr) -> Option<u64> {
    let LbPolicy::ConsistentHash { key } = lb else {
        return None;
    };
    Some(match key {
        HashKey::ClientAddress => hash(client.ip()),
        HashKey::Path => hash(request.uri.path()),
        HashKey::Header(name) => hash(
            request
                .headers
                .get(name.as_str())
                .map_or(&[][..], |v| v.as_bytes()),
        ),
        HashKey::Cookie(name) => hash(cookie(&request.headers, name).unwrap_or("")),
    })
}

/// Feeds one attempt's outcome to the cluster's outlier detection; logs an ejection.
fn outcome(cluster: &crate::generation::Cluster, endpoint: usize, failed: bool) {
    let Some(detection) = &cluster.config.outlier_detection else {
        return;
    };
    if let Some(ejected) = cluster
        .endpoints
        .record_outcome(endpoint, failed, detection)
    {
        tracing::warn!(
            cluster = %cluster.config.name,
            endpoint = %cluster.config.endpoints[endpoint].authority,
            ejected_for = %humantime::format_duration(ejected),
            "endpoint ejected after consecutive failures"
        );
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalization() {
        let cases = [
            ("api.example.com", Some("api.example.com")),
            ("API.Example.COM:8080", Some("api.example.com")),
            ("example.com.", Some("example.com")),
            ("[::1]:8080", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1", None),
            (":80", None),
        ];
        for (input, expect) in cases {
            let value = HeaderValue::from_static(input);
            let got = normalize_host(&value).ok().map(Cow::into_owned);
            assert_eq!(got.as_deref(), expect, "{input}");
        }
    }

    #[test]
    fn cookie_values_are_found_across_headers() {
        let mut headers = http::HeaderMap::new();
        headers.append("cookie", "a=1; session=abc".parse().expect("value"));
        headers.append("cookie", "theme=dark".parse().expect("value"));
        assert_eq!(super::cookie(&headers, "session"), Some("abc"));
        assert_eq!(super::cookie(&headers, "theme"), Some("dark"));
        assert_eq!(super::cookie(&headers, "sess"), None);
    }
}
