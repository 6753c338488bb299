//! The data path: [`ProxyService::handle`] takes one downstream request through its phases,
//! top to bottom, and [`fail`] is the one place an error becomes a response.
//!
//! Phases, in order, each a function below or a module beside this one:
//! 1. downstream (in `proxy()` and `downstream`): ensure a request id, refuse `CONNECT`,
//!    find the host, normalise the path (`path`), remove the identity headers only plugins
//!    may set, note a gRPC call (`grpc`) and an upgrade (`upgrade`);
//! 2. `route`: normalise the host, match host, path and method to a route (its chain and
//!    its target);
//! 3. `filters::on_request`: the route's chain may change the request or answer it (then
//!    its reply goes back through the plugins before it, and phases 4–7 are skipped);
//! 4. `upstream_request`: hop-by-hop headers out (but an upgrade's, and gRPC's
//!    `te: trailers`), forwarding headers in;
//! 5. on a route with a cache (`caching`): an answer from the store, which skips phase 6,
//!    or what the target's answer does to the store;
//! 6. the target: a cluster (`attempts`: circuit breaker, endpoint choice, send, retries)
//!    or a handler plugin (its sub-requests go to clusters through `outbound`);
//! 7. `downstream_response`: hop-by-hop headers out of the response, the request id in;
//! 8. an upgrade's `101 Switching Protocols` becomes a tunnel (`upgrade`), which starts once
//!    the client has it; a `101` nobody asked for is an error;
//! 9. `filters::on_response`: the chain's response hooks in reverse order (with the
//!    response header changes plugins left in phase 3, each at its plugin's place).
//! 10. on a route with `compression`, the response compressed as it streams (`Compressing`).
//!
//! The service is generic over the client's request body ([`DownstreamBody`]) and reaches
//! endpoints only through the generation's clusters and their connector, so tests drive it
//! in memory, without a socket.
//!
//! The small phase functions are `#[inline]` (across modules, codegen units would keep them
//! apart): called once per request from `proxy()`, inlined they cost what the same code
//! written inside it did. Phases with futures of their own are awaited from `proxy()`
//! directly, not from a helper's future: each level of nesting moves the nested future
//! once more.

mod attempts;
mod caching;
mod client_body;
mod downstream;
mod filters;
mod forward;
mod grpc;
mod mirror;
pub(crate) use mirror::pace as mirror_pace;
mod observe;
mod outbound;
pub(crate) mod path;
mod upgrade;

pub use self::client_body::Guarded;
pub use self::observe::ResponseBody;
pub(crate) use self::observe::refused_head;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version, request};
use hyper::body::SizeHint;

use self::attempts::{Progress, RequestBody};
use self::filters::Filtered;
use self::outbound::ClusterOutbound;
use crate::balancer::hash;
use crate::body::{self, ClientBody, DownstreamBody, ProxyBody};
use crate::coding;
use crate::config::{HashKey, LbPolicy};
use crate::error::{ErrorKind, ProxyError};
use crate::generation::{Generation, Route, Target};
use crate::plugin::Handler;
use crate::plugin::chain::OutputLimits;
use crate::plugin::handler::HandlerBody;
use crate::plugin::view::RequestView;
use crate::server::Accepted;
use crate::timer::Timers;
use crate::tls::TlsInfo;
use crate::trace::RequestTrace;

/// The proxy: a request in, a response out, never an error.
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
    /// What the TLS handshake settled, on a TLS listener.
    tls: Option<Arc<TlsInfo>>,
    /// The connection's place under `max_connections`, which a tunnel keeps after an upgrade.
    slot: Option<Arc<crate::server::Place>>,
    /// On a listener with `redirect_to_https`: the HTTPS port every request is sent to.
    redirect_to_https: Option<u16>,
}

impl Client {
    /// The client connected from `addr`, in plain HTTP.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            ip_value: forward::client_ip_value(addr.ip()),
            addr_text: OnceLock::new(),
            timers: Timers::default(),
            tls: None,
            slot: None,
            redirect_to_https: None,
        }
    }

    /// The client of a listener that redirects every request to HTTPS on `port`.
    pub(crate) fn redirecting(self, port: u16) -> Client {
        Client {
            redirect_to_https: Some(port),
            ..self
        }
    }

    /// The client of a connection a listener accepted.
    pub(crate) fn accepted(accepted: Accepted) -> Client {
        Client {
            tls: accepted.tls.map(Arc::new),
            slot: Some(accepted.slot),
            ..Client::new(accepted.peer)
        }
    }

    /// `ip:port`, as the plugins are told it.
    pub(crate) fn addr_text(&self) -> Arc<str> {
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
    /// weir made the request id.
    request_id_is_ours: bool,
    route: Option<usize>,
    cluster: Option<usize>,
    /// The endpoint of the latest attempt and the number of attempts.
    upstream: Progress,
    /// The request is a gRPC call: errors are answered as gRPC statuses.
    grpc: bool,
    /// The request goes upstream as a gRPC call: the client's, or one a plugin made of it
    /// (`grpc-json`); it gets `te: trailers`, its `grpc-timeout`, an HTTP/2 cluster.
    grpc_upstream: bool,
    /// Metrics or the access log are on: time the exchange with the upstream.
    observing: bool,
    /// The access log records the request.
    logging: bool,
    /// The request's `Host` for its access log record (when `logging`): the one it is
    /// routed by, or the client's if it is refused before that is known.
    host: Option<HeaderValue>,
    /// From the first attempt to the upstream's response head, when observed.
    upstream_duration: Option<std::time::Duration>,
    /// The plugin that answered the request itself.
    answered_by: Option<Arc<str>>,
    /// The request body's bytes, counted when observed.
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The request's trace, when tracing is on.
    trace: Option<RequestTrace>,
    /// The fate of the request's body, when it has one: a client's fault is answered as one.
    body: Option<Arc<crate::body::BodyWatch>>,
    /// The peer is a trusted proxy (`[server] trusted_proxies`).
    trusted: bool,
    /// The client behind a trusted proxy, from `X-Forwarded-For` (port 0), and as text.
    forwarded: Option<(SocketAddr, Arc<str>)>,
    /// The request's metrics, log record and span, until its response begins.
    watch: Option<observe::Watch>,
}

impl Drop for RequestContext<'_> {
    /// A request dropped before its response began (its client reset the stream or closed
    /// the connection) is settled here: counted, logged and its span ended, as nginx's 499.
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.abandon(self);
        }
    }
}

impl RequestContext<'_> {
    /// Who the client is: the peer, or the client a trusted proxy names.
    fn client_addr(&self) -> SocketAddr {
        self.forwarded.as_ref().map_or(self.client.addr, |f| f.0)
    }

    /// [`RequestContext::client_addr`] as `ip:port`.
    fn client_text(&self) -> Arc<str> {
        match &self.forwarded {
            Some((_, text)) => text.clone(),
            None => self.client.addr_text(),
        }
    }
}

impl ProxyService {
    /// A service that serves whatever generation `generation` holds at each request.
    pub fn new(generation: Arc<ArcSwap<Generation>>) -> ProxyService {
        ProxyService { generation }
    }

    /// Proxies one request from `client`. Always produces a response.
    ///
    /// An `async` block returned, not an `async fn`, as [`proxy`] is, so that the request
    /// is not copied into the future's locals (ARCHITECTURE.md, "Moves on the request path").
    #[expect(
        clippy::manual_async_fn,
        reason = "an async block, not an async fn: an async fn copies its arguments into its locals when first polled"
    )]
    pub fn handle<B: DownstreamBody>(
        &self,
        request: Request<B>,
        client: &Client,
    ) -> impl Future<Output = Response<ResponseBody>> {
        async move {
            // One generation for the whole request, even if a reload swaps it meanwhile.
            let generation = self.generation.load_full();
            let mut ctx = RequestContext {
                client,
                request_id: None,
                request_id_is_ours: false,
                route: None,
                cluster: None,
                upstream: Progress::default(),
                grpc: false,
                grpc_upstream: false,
                observing: false,
                logging: false,
                host: None,
                upstream_duration: None,
                answered_by: None,
                received: None,
                trace: None,
                body: None,
                trusted: false,
                forwarded: None,
                watch: None,
            };
            let watch = observe::Watch::start(&generation, &request, &ctx);
            if let Some(watch) = &watch {
                ctx.observing = true;
                ctx.logging = watch.logs();
                ctx.received = watch.received().cloned();
                ctx.trace = watch.trace().cloned();
            }
            ctx.watch = watch;
            let head_over_h2 =
                request.version() == Version::HTTP_2 && request.method() == http::Method::HEAD;
            let mut response = match proxy(&generation, request, &mut ctx).await {
                Ok(response) => response,
                Err(error) => fail(&generation, &ctx, error),
            };
            if head_over_h2 {
                response = head_only(response);
            }
            match ctx.watch.take() {
                None => response.map(ResponseBody::unwatched),
                Some(watch) => watch.finish(&mut ctx, response),
            }
        }
    }

    /// The proxy as hyper's `Service` for the connection from `client`.
    pub fn for_connection<B: DownstreamBody>(
        self,
        client: Client,
    ) -> impl hyper::service::Service<
        Request<B>,
        Response = Response<ResponseBody>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        let proxy = self;
        let client = Arc::new(client);
        hyper::service::service_fn(move |request: Request<B>| {
            let proxy = proxy.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request, &client).await) }
        })
    }
}

/// The answer to a `HEAD` over HTTP/2: its head alone. hyper's HTTP/1.1 server writes no
/// body for a `HEAD`, but its HTTP/2 server sends any body it is given, and DATA on a
/// `HEAD`'s stream is a protocol error to the client (RFC 9113 §8.1.1). weir's own answers
/// (a 404's text, a plugin's reply, a handler's) have bodies: their head says the length the
/// body would have had, as over HTTP/1.1. An endpoint's answer keeps its own head (hyper
/// gives a `HEAD`'s answer an empty body, whose length says nothing of the resource's).
fn head_only(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let (mut head, body) = response.into_parts();
    let own = !matches!(body, ProxyBody::Upstream(_));
    if own
        && forward::framed_by_body(&http::Method::GET, head.status)
        && let Some(length) = hyper::body::Body::size_hint(&body).exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Response::from_parts(head, ProxyBody::Coded(body::boxed(body::Ended)))
}

/// One request through every phase; an error is answered by [`fail`]. (An `async` block
/// returned: see [`ProxyService::handle`].)
#[expect(
    clippy::manual_async_fn,
    reason = "an async block, not an async fn: an async fn copies its arguments into its locals when first polled"
)]
fn proxy<B: DownstreamBody>(
    generation: &Arc<Generation>,
    mut request: Request<B>,
    ctx: &mut RequestContext<'_>,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
    async move {
        let (request_id, ours) = forward::ensure_request_id(request.headers_mut());
        ctx.request_id = Some(request_id.clone());
        ctx.request_id_is_ours = ours;
        // A redirecting listener proxies nothing; its answers are logged and counted as any.
        if let Some(port) = ctx.client.redirect_to_https {
            if ctx.logging {
                ctx.host = request.headers().get(header::HOST).cloned();
            }
            return Ok(crate::redirect::redirect(&request, port));
        }
        let extended_connect = upgrade::from_extended_connect(&mut request);
        // A request refused before its Host is known is logged with the client's.
        let refuse = |request: &Request<B>, ctx: &mut RequestContext<'_>, error| {
            if ctx.logging {
                ctx.host = request.headers().get(header::HOST).cloned();
            }
            Err(error)
        };
        if request.method() == http::Method::CONNECT {
            let error = bad_request("CONNECT: weir is a reverse proxy and opens no tunnels");
            return refuse(&request, ctx, error);
        }
        // gRPC is HTTP/2 only: an HTTP/1.1 request pays no header lookup for it. Known first,
        // so every refusal below reaches a gRPC client as a gRPC status.
        ctx.grpc = request.version() == Version::HTTP_2 && grpc::is_grpc(request.headers());
        let server = &generation.config.server;
        let host = match downstream::check_limits(&request, &server.limits)
            .and_then(|()| downstream::request_host(&mut request))
        {
            Ok(host) => host,
            Err(error) => return refuse(&request, ctx, error),
        };
        if ctx.logging {
            ctx.host = host.clone();
        }
        // One path from here on, for the router, the plugins and the upstream.
        path::apply(&mut request, &server.path_normalization)?;
        // Where the request comes from: the peer, or, behind a trusted proxy, whom it names.
        ctx.trusted = forward::is_trusted(ctx.client.addr.ip(), &server.trusted_proxies);
        if ctx.trusted {
            let client = forward::forwarded_client(request.headers(), &server.trusted_proxies);
            ctx.forwarded = client.map(|ip| {
                let addr = SocketAddr::new(ip, 0);
                (addr, Arc::from(addr.to_string()))
            });
        }
        // Anyone else's forwarding headers are removed, not believed; who the client is, only
        // weir's plugins say.
        forward::strip_untrusted(request.headers_mut(), &server.identity_headers, ctx.trusted);
        let route = route(generation, host.as_ref(), &request, ctx)?;
        // Whether the client sent credentials, before a filter may take them out: the cache
        // stores an answer to it only if the answer says it may be shared.
        let authorization =
            route.cache.is_some() && request.headers().contains_key(header::AUTHORIZATION);
        // What compressing the response needs of the request, on a route that compresses.
        let compression = route.compression.as_ref().map(|config| Compressing {
            config,
            accepted: request.headers().get(header::ACCEPT_ENCODING).cloned(),
            head: request.method() == http::Method::HEAD,
        });

        let (mut parts, body) = request.into_parts();
        // The method as the client sent it: a response to HEAD is framed by its headers.
        let method = parts.method.clone();
        let upgrade = upgrade::requested(&mut parts, extended_connect);
        let mut body = body.into_client_body();
        if !hyper::body::Body::is_end_stream(&body) {
            // A gRPC call's or a tunnel's stream may rightly stay quiet: no read timeout there
            // (grpc-timeout and upgrade_idle_timeout bound them).
            let streaming = ctx.grpc || upgrade.is_some();
            body = guard_body(generation, body, &parts.headers, ctx, streaming)?;
        }
        let mut body = RequestBody::Client(body);
        // Assigned in place, not returned as a tuple from the `if`: that would copy the head and
        // the response phase's view on every request, plugins or not.
        let mut response_phase = None;
        if route.chain.is_active() {
            let chain = &route.chain;
            let route_name = chain.route().clone();
            let client = ctx.client_text();
            let ours = ctx.request_id_is_ours;
            let mut view =
                RequestView::new(parts, host.clone(), client, route_name, &request_id, ours);
            if let Some(tls) = &ctx.client.tls {
                view.set_tls(tls.clone());
            }
            if let Some(trace) = &ctx.trace {
                view.set_trace(trace.clone());
            }
            if chain.needs_outbound() {
                view.set_outbound(Arc::new(ClusterOutbound {
                    generation: generation.clone(),
                    request_id: request_id.clone(),
                }));
            }
            let watch = ctx.body.as_deref();
            match filters::on_request(chain, &mut view, &mut body, watch, &request_id).await? {
                Filtered::Forward(passed) => {
                    (parts, response_phase) = filters::sent(chain, view, passed);
                }
                Filtered::Answered(mut reply, by) => {
                    ctx.answered_by = chain.plugin_name(by).cloned();
                    if forward::framed_by_body(&method, reply.status()) {
                        let hint = hyper::body::Body::size_hint(reply.body());
                        forward::frame(reply.headers_mut(), &hint);
                    }
                    return Ok(if ctx.grpc {
                        grpc::local_reply(reply)
                    } else {
                        reply
                    });
                }
            }
        }

        if route.chain.is_active() {
            // Plugins change headers, never framing: the upstream's is the body's own.
            let hint = match &body {
                RequestBody::Client(streamed) => hyper::body::Body::size_hint(streamed),
                RequestBody::Buffered(bytes) => SizeHint::with_exact(bytes.len() as u64),
            };
            forward::frame(&mut parts.headers, &hint);
        }
        // A plugin may have made the request a gRPC call (a REST client's, transcoded).
        ctx.grpc_upstream = ctx.grpc || (route.chain.is_active() && grpc::is_grpc(&parts.headers));
        upstream_request(&mut parts, host.as_ref(), ctx);
        if let Some(upgrade) = &upgrade {
            upgrade::restore(&mut parts.headers, upgrade);
        }
        // A sample of the route's requests, copied as they go upstream; never waited for.
        let mirror = ctx
            .route
            .and_then(|i| generation.config.routes[i].mirror.as_ref());
        if let Some(mirror) = mirror
            && upgrade.is_none()
        {
            let metrics = &route.metrics;
            let copying = mirror::Copying {
                pace: &route.mirror_pace,
                parts: &parts,
                request_id: &request_id,
                watch: ctx.body.as_deref(),
            };
            mirror::copy(mirror, generation, copying, &mut body, metrics).await?;
        }
        // The route's cache, after the filters (a hit never skips an auth plugin): an answer from
        // the store, or what the upstream's answer does to it.
        let (mut stored, mut fill) = (None, None);
        if let Some(cache) = &route.cache
            && upgrade.is_none()
        {
            let scheme = if ctx.client.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let identity = &generation.config.server.identity_headers;
            let asked = caching::Asked {
                scheme,
                host: host.as_ref(),
                authenticated: authorization
                    || identity.iter().any(|h| parts.headers.contains_key(h)),
                body: match &body {
                    RequestBody::Client(streamed) => !hyper::body::Body::is_end_stream(streamed),
                    RequestBody::Buffered(bytes) => !bytes.is_empty(),
                },
            };
            match caching::before(cache, &mut parts, asked).await {
                caching::Before::Answer(answer) => stored = Some(answer),
                caching::Before::AnswerAndRevalidate(answer, revalidation) => {
                    if let Some(cluster) = ctx.cluster {
                        let id = request_id.clone();
                        caching::revalidate_behind(
                            generation.clone(),
                            cluster,
                            &parts,
                            id,
                            revalidation,
                        );
                    }
                    stored = Some(answer);
                }
                caching::Before::Forward(filling) => fill = Some(filling),
            }
        }
        let mut sticky = None;
        // Whether the upstream's hop-by-hop headers are gone already.
        let mut stripped = false;
        let mut response = match stored {
            Some(answer) => answer,
            None => {
                let answer = match (&route.target, ctx.cluster) {
                    (Target::Handler(handler), _) => {
                        let handler = handler.as_ref().map_err(|why| {
                            ProxyError::new(ErrorKind::PluginUnavailable).with_cause(why.clone())
                        })?;
                        call_handler(generation, handler, parts, body, &request_id).await
                    }
                    (_, None) => Err(ProxyError::new(ErrorKind::NoEndpoint)),
                    (_, Some(cluster)) => {
                        // The exchange's future is awaited here, not inside a helper's: each level
                        // of async nesting moves the whole nested future once more (a memcpy per
                        // request).
                        let trace = ctx.trace.clone();
                        let exchange = exchange(
                            generation,
                            cluster,
                            parts,
                            body,
                            &request_id,
                            ctx,
                            trace.as_ref(),
                        );
                        let sent = ctx.observing.then(crate::metrics::Tick::now);
                        let answer = attempts::send(exchange, &mut ctx.upstream).await;
                        if let Some(sent) = sent {
                            let took = sent.elapsed();
                            ctx.upstream_duration = Some(took);
                            let metrics = &generation.clusters[cluster].metrics;
                            metrics.upstream_duration.observe(took.as_secs_f64());
                        }
                        answer.map(|answer| {
                            sticky = answer.set_cookie;
                            // `attempts` stripped the endpoint's hop-by-hop headers (a
                            // 101's are the upgrade's to read).
                            stripped = answer.response.status() != StatusCode::SWITCHING_PROTOCOLS;
                            answer.response.map(ProxyBody::Upstream)
                        })
                    }
                };
                match fill {
                    Some(fill) => fill.after(answer).await?,
                    None => answer?,
                }
            }
        };
        // The sticky cookie is this client's, never stored.
        if let Some(cookie) = sticky {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        upgrade::check(&response, upgrade.as_ref())?;
        match upgrade {
            None => downstream_response(&mut response, request_id, stripped),
            // The tunnel starts once the client has the 101 (or, over HTTP/2, the 200); the
            // response filters see the answer as the client will.
            Some(upgrade) => {
                let switched_to = response.headers().get(header::UPGRADE).cloned();
                downstream_response(&mut response, request_id, stripped);
                let idle_timeout = generation.config.server.upgrade_idle_timeout;
                upgrade::tunnel(
                    &mut response,
                    upgrade,
                    switched_to,
                    ctx.client,
                    idle_timeout,
                );
            }
        }
        // Borrowed where it lies: the phase holds the request's view, a few hundred bytes.
        let response = match response_phase.as_mut() {
            Some(phase) => {
                let (passed, request) = (phase.passed, &mut phase.request);
                let mut response =
                    filters::on_response(&route.chain, passed, request, response).await?;
                // Plugins change headers, never framing: the client's is the body's own.
                if forward::framed_by_body(&method, response.status()) {
                    let hint = hyper::body::Body::size_hint(response.body());
                    forward::frame(response.headers_mut(), &hint);
                }
                response
            }
            None => response,
        };
        Ok(match compression {
            Some(compressing) => compressing.apply(response, &route.metrics),
            None => response,
        })
    }
}

/// A route's compression, with what the request said about it.
struct Compressing<'g> {
    config: &'g crate::config::Compression,
    /// The client's `Accept-Encoding`.
    accepted: Option<HeaderValue>,
    head: bool,
}

impl Compressing<'_> {
    /// The response as this client gets it: compressed if it is worth it and the client
    /// takes a coding the route allows; `Vary: Accept-Encoding` whenever it is worth it.
    fn apply(
        self,
        response: Response<ProxyBody>,
        metrics: &crate::metrics::RouteMetrics,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        if !coding::compressible(self.head, &parts, self.config) {
            return Response::from_parts(parts, body);
        }
        coding::vary_on_accept_encoding(&mut parts.headers);
        match coding::negotiate(self.accepted.as_ref(), &self.config.algorithms) {
            Some(algorithm) => {
                let counted = metrics.compressed(algorithm);
                let (parts, body) = coding::compress(parts, body, algorithm, counted);
                Response::from_parts(parts, body)
            }
            None => Response::from_parts(parts, body),
        }
    }
}

/// The route for the request's host, path and method.
#[inline]
fn route<'g, B>(
    generation: &'g Generation,
    host: Option<&HeaderValue>,
    request: &Request<B>,
    ctx: &mut RequestContext<'_>,
) -> Result<&'g Route, ProxyError> {
    let host = host.map(downstream::normalize_host).transpose()?;
    let index = generation
        .router
        .route(host.as_deref(), request)
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute))?
        .0;
    let route = &generation.routes[index];
    ctx.route = Some(index);
    match &route.target {
        Target::Cluster(cluster) => ctx.cluster = Some(*cluster),
        // The backend is chosen once, here: by the client's key when the route keeps clients
        // on one, else at random by weight.
        Target::Backends(split) => {
            let config = &generation.config.routes[index];
            // A client without the key (no session cookie yet) is split by weight at random,
            // not all sent to wherever the empty key falls. The key is salted, so a backend
            // that balances by the same key with consistent_hash sees all of its ring.
            let point = config
                .split_by
                .as_ref()
                .filter(|key| has_key(key, request.headers()))
                .map_or_else(
                    || fastrand::u64(..),
                    |key| {
                        let hashed =
                            key_hash(key, request.headers(), request.uri(), ctx.client_addr());
                        hash(("weir-split", hashed))
                    },
                );
            ctx.cluster = Some(split.pick(point));
        }
        Target::Handler(_) => {}
    }
    Ok(route)
}

/// The request's headers for the upstream, once, whichever endpoint is chosen.
#[inline]
fn upstream_request(
    parts: &mut request::Parts,
    host: Option<&HeaderValue>,
    ctx: &RequestContext<'_>,
) {
    let client = ctx.client;
    forward::strip_hop_by_hop(&mut parts.headers);
    if ctx.grpc_upstream {
        // gRPC servers need it to know that trailers (the call's status) get through.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let downstream = forward::Downstream {
        client_ip: &client.ip_value,
        host,
        version: parts.version,
        tls: client.tls.is_some(),
        trusted: ctx.trusted,
    };
    forward::upstream_request_headers(&mut parts.headers, &downstream);
}

/// The request on its way to cluster `cluster_index`, for `attempts::send` (circuit breaker,
/// endpoint choice, retries). Inlined so the exchange is built where `attempts::send`'s
/// future keeps it, not built here and copied there (312 bytes per request).
#[inline(always)]
fn exchange<'a>(
    generation: &'a Generation,
    cluster_index: usize,
    mut parts: request::Parts,
    body: RequestBody,
    request_id: &'a HeaderValue,
    ctx: &RequestContext<'a>,
    trace: Option<&'a RequestTrace>,
) -> attempts::Exchange<'a> {
    let cluster = &generation.clusters[cluster_index];
    // The upstream client sets the version its connection speaks.
    parts.version = Version::HTTP_11;
    let hash = hash_key(&cluster.config.lb, &parts, ctx.client_addr());
    let retry_non_idempotent = ctx
        .route
        .is_some_and(|i| generation.config.routes[i].retry_non_idempotent);
    attempts::Exchange {
        cluster,
        parts,
        body,
        hash,
        retry_non_idempotent,
        grpc: ctx.grpc_upstream,
        request_id,
        timers: &ctx.client.timers,
        trace,
        body_watch: ctx.body.clone(),
    }
}

/// The client's body under its route's size limit (413 at once when `Content-Length` is over
/// it) and, unless `streaming`, the read timeout; its bytes counted when observed, its fate
/// watched.
fn guard_body(
    generation: &Generation,
    body: ClientBody,
    headers: &http::HeaderMap,
    ctx: &mut RequestContext<'_>,
    streaming: bool,
) -> Result<ClientBody, ProxyError> {
    let limit = ctx
        .route
        .and_then(|i| generation.config.routes[i].request_body_bytes);
    if let Some(limit) = limit {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(
                ProxyError::new(ErrorKind::PayloadTooLarge).with_cause(format!(
                    "content-length is over request_body_bytes = {limit}"
                )),
            );
        }
    }
    let watch = Arc::new(crate::body::BodyWatch::default());
    ctx.body = Some(watch.clone());
    let idle = (!streaming).then_some(generation.config.server.limits.body_read_timeout);
    Ok(ClientBody::Guarded(Box::new(Guarded::new(
        body,
        limit,
        idle,
        ctx.received.clone(),
        watch,
    ))))
}

/// A handler plugin's answer; its sub-requests go to the generation's clusters.
async fn call_handler(
    generation: &Arc<Generation>,
    handler: &Handler,
    parts: request::Parts,
    body: RequestBody,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    let body = match body {
        RequestBody::Client(streamed) => HandlerBody::Stream(streamed),
        RequestBody::Buffered(bytes) => HandlerBody::Full(bytes),
    };
    let outbound = Arc::new(ClusterOutbound {
        generation: generation.clone(),
        request_id: request_id.clone(),
    });
    let response = handler
        .handle(
            Request::from_parts(parts, body),
            outbound,
            OutputLimits::from_limits(&generation.config.server.limits),
        )
        .await
        .map_err(|e| {
            let kind = if e.unavailable() {
                ErrorKind::PluginUnavailable
            } else {
                ErrorKind::PluginFailed
            };
            ProxyError::new(kind).with_cause(e)
        })?;
    Ok(response.map(body::full))
}

/// The response head as the client gets it, before the response hooks.
#[inline]
/// The response's headers for the client: the upstream's hop-by-hop ones removed (unless
/// `stripped` already), the request id added.
fn downstream_response(
    response: &mut Response<ProxyBody>,
    request_id: HeaderValue,
    stripped: bool,
) {
    let headers = response.headers_mut();
    if !stripped {
        forward::strip_hop_by_hop(headers);
    }
    headers.insert(forward::X_REQUEST_ID.clone(), request_id);
}

fn bad_request(why: &'static str) -> ProxyError {
    ProxyError::new(ErrorKind::BadRequest).with_cause(why)
}

/// Turns an error into the response the client gets, and logs who failed. The only place
/// that maps an error to a status code.
/// nginx's status for a request whose client went away before it was answered (access log and
/// metrics only: the client is gone).
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

fn fail(
    generation: &Generation,
    ctx: &RequestContext<'_>,
    error: ProxyError,
) -> Response<ProxyBody> {
    let (status, text) = match error.kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad request\n"),
        ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
        ErrorKind::UnsupportedEncoding => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request body content-encoding not supported\n",
        ),
        ErrorKind::HeaderTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header too large\n",
        ),
        ErrorKind::UriTooLong => (StatusCode::URI_TOO_LONG, "request target too long\n"),
        ErrorKind::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request body timeout\n"),
        // nginx's code for a client that went away; no one reads the answer.
        ErrorKind::ClientClosed => (CLIENT_CLOSED, "client closed the request\n"),
        ErrorKind::NoRoute => (StatusCode::NOT_FOUND, "no route\n"),
        ErrorKind::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "no endpoint available\n"),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded\n"),
        ErrorKind::UpstreamConnect => (StatusCode::BAD_GATEWAY, "upstream connect error\n"),
        ErrorKind::UpstreamFailed => (StatusCode::BAD_GATEWAY, "upstream error\n"),
        ErrorKind::UpstreamProtocol => (
            StatusCode::BAD_GATEWAY,
            "the upstream cluster does not speak HTTP/2, which gRPC needs\n",
        ),
        ErrorKind::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timeout\n"),
        ErrorKind::PluginUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "plugin unavailable\n"),
        ErrorKind::PluginFailed => (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n"),
    };

    let config = &generation.config;
    let route = ctx.route.map(|i| config.routes[i].name.as_str());
    let cluster = ctx.cluster.map(|i| &config.clusters[i]);
    let endpoint = cluster
        .zip(ctx.upstream.endpoint)
        .map(|(c, e)| c.endpoints[e].authority.as_str());
    let request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok());
    let cause = error.cause.as_ref().map(|c| error_chain(c.as_ref()));
    crate::metrics::recent_errors().push(crate::metrics::RecentError {
        time: std::time::SystemTime::now(),
        status: status.as_u16(),
        kind: error.kind,
        route: route.map(str::to_owned),
        cluster: cluster.map(|c| c.name.clone()),
        endpoint: endpoint.map(str::to_owned),
        cause: cause.clone(),
        request_id: request_id.map(str::to_owned),
        plugin: failed_plugin(&error),
    });
    tracing::warn!(
        status = status.as_u16(),
        kind = ?error.kind,
        source = ?error.source_,
        client = %ctx.client_addr(),
        request_id,
        route,
        cluster = cluster.map(|c| c.name.as_str()),
        endpoint,
        cause,
        "request failed"
    );

    let mut response = if ctx.grpc {
        grpc::error(grpc::code_for_error(error.kind), text.trim_end())
    } else {
        let mut response = Response::new(body::full(text));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    let headers = response.headers_mut();
    if let Some(id) = &ctx.request_id {
        headers.insert(forward::X_REQUEST_ID.clone(), id.clone());
    }
    response
}

/// The plugin whose call or change failed the request, if one did.
fn failed_plugin(error: &ProxyError) -> Option<String> {
    use crate::plugin::chain::ChainError;
    match error.cause.as_ref()?.downcast_ref::<ChainError>()? {
        ChainError::Failed(call) => Some(call.plugin.to_string()),
        ChainError::InvalidChange { plugin, .. } => Some(plugin.to_string()),
        ChainError::Unavailable(_) => None,
    }
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
    Some(key_hash(key, &request.headers, &request.uri, client))
}

/// Whether the request carries `key` (a client address and a path it always has).
fn has_key(key: &HashKey, headers: &http::HeaderMap) -> bool {
    match key {
        HashKey::ClientAddress | HashKey::Path => true,
        HashKey::Header(name) => headers.contains_key(name.as_str()),
        HashKey::Cookie(name) => cookie(headers, name).is_some(),
    }
}

/// A request's `key` (its client, path, a header or a cookie), hashed.
fn key_hash(key: &HashKey, headers: &http::HeaderMap, uri: &http::Uri, client: SocketAddr) -> u64 {
    match key {
        HashKey::ClientAddress => hash(client.ip()),
        HashKey::Path => hash(uri.path()),
        HashKey::Header(name) => hash(headers.get(name.as_str()).map_or(&[][..], |v| v.as_bytes())),
        HashKey::Cookie(name) => hash(cookie(headers, name).unwrap_or("")),
    }
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
        if let Some(ejections) = cluster.metrics.ejections.get(endpoint) {
            ejections.inc();
        }
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
mod tests;
