//! What a request leaves behind when its response ends: its route's metrics (count, duration,
//! bytes), when the access log samples it, its record, and when it is traced, its span. [`Watch::start`] notes the
//! request's start; [`Watch::finish`] hands the watch to the [`ResponseBody`] every response
//! leaves in, which counts the bytes sent and settles the request at the body's end, or when
//! the body is dropped unfinished (the client went away). A request dropped before its
//! response began is settled by [`Watch::abandon`], as status 499.
//!
//! With metrics off, no access log and no tracing, nothing here runs: `start` returns `None`, and the
//! response body is the proxy's, with one branch per frame.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use super::RequestContext;
use crate::access_log::Entry;
use crate::body::ProxyBody;
use crate::error::BoxError;
use crate::generation::Generation;
use crate::metrics::{Tick, metrics};
use crate::trace::RequestTrace;
use opentelemetry::KeyValue;

/// A request being watched, from its head to its response: what its [`ResponseBody`] will
/// settle, allocated when the request starts, so that what it holds is never moved again.
#[derive(Debug)]
pub(super) struct Watch(Box<Observed>);

impl Watch {
    /// Starts watching `request`, unless the generation keeps no metrics, no access log and
    /// no traces.
    pub(super) fn start<B: Body>(
        generation: &Arc<Generation>,
        request: &Request<B>,
        ctx: &RequestContext<'_>,
    ) -> Option<Watch> {
        let access_log = generation.access_log.as_ref().filter(|log| log.sampled());
        let tracing = generation.tracing.as_ref();
        if !generation.config.metrics && access_log.is_none() && tracing.is_none() {
            return None;
        }
        let trace = tracing.map(|tracing| {
            let trace = tracing.request(request.headers(), "HTTP", SystemTime::now());
            let trace = RequestTrace {
                id: trace.trace_id().into(),
                trace,
                tracing: tracing.clone(),
            };
            Box::new((trace, request.uri().path_and_query().cloned()))
        });
        metrics().in_flight.inc();
        let received = (!request.body().is_end_stream()).then(Arc::default);
        // Allocated first and written in place, not built on the stack and copied in.
        let slot = Box::new_uninit();
        Some(Watch(Box::write(
            slot,
            Observed {
                sent: 0,
                generation: generation.clone(),
                started: Tick::now(),
                method: request.method().clone(),
                status: 0,
                route: None,
                cluster: None,
                received,
                // Built here, in place. The Host is not looked up: the proxy does, to route
                // (`RequestContext::host`).
                logged: access_log.map(|log| Logged {
                    client: ctx.client.addr_text(),
                    host: None,
                    path: request.uri().path_and_query().cloned(),
                    version: request.version(),
                    tls: ctx.client.tls.clone(),
                    request_id: None,
                    request_id_is_ours: false,
                    endpoint: None,
                    attempts: 0,
                    upstream_duration: None,
                    plugin: None,
                    request_headers: log.request_headers(request.headers()),
                }),
                trace,
            },
        )))
    }

    /// The request's body bytes, counted as they are read (absent for a request without a
    /// body).
    pub(super) fn received(&self) -> Option<&Arc<AtomicU64>> {
        self.0.received.as_ref()
    }

    /// The access log records this request.
    pub(super) fn logs(&self) -> bool {
        self.0.logged.is_some()
    }

    /// The request's trace, when tracing is on.
    pub(super) fn trace(&self) -> Option<&RequestTrace> {
        Some(&self.0.trace.as_ref()?.0)
    }

    /// The response, its body to settle the request when it ends.
    pub(super) fn finish(
        self,
        ctx: &mut RequestContext<'_>,
        response: Response<ProxyBody>,
    ) -> Response<ResponseBody> {
        let mut observed = self.0;
        observed.status = response.status().as_u16();
        observed.take_from(ctx);
        // A body that is over already (no content) is dropped as soon as the head is
        // written, and settled then.
        response.map(|body| ResponseBody {
            body,
            watch: Some(observed),
        })
    }

    /// Settles a request that ends before its response began, its client gone: status 499
    /// (nginx's), incomplete.
    pub(super) fn abandon(self, ctx: &mut RequestContext<'_>) {
        let mut observed = self.0;
        observed.status = super::CLIENT_CLOSED.as_u16();
        observed.take_from(ctx);
        observed.settle(true);
    }
}

/// A watched request: what its response body keeps (the bytes sent so far) and what settling
/// the request needs once the response has ended.
#[derive(Debug)]
pub(super) struct Observed {
    sent: u64,
    generation: Arc<Generation>,
    started: Tick,
    method: Method,
    status: u16,
    route: Option<usize>,
    cluster: Option<usize>,
    received: Option<Arc<AtomicU64>>,
    /// In the same allocation as the rest (a request logged allocates once).
    logged: Option<Logged>,
    /// The request's trace and the path the client asked for.
    trace: Option<Box<(RequestTrace, Option<http::uri::PathAndQuery>)>>,
}

impl Observed {
    /// What the request's context knows of it that its record and metrics need; the
    /// request is over, so what the context holds is taken, not copied.
    fn take_from(&mut self, ctx: &mut RequestContext<'_>) {
        self.route = ctx.route;
        self.cluster = ctx.cluster;
        if let Some(logged) = &mut self.logged {
            if let Some((_, client)) = &ctx.forwarded {
                logged.client = client.clone();
            }
            logged.host = ctx.host.take();
            logged.request_id = ctx.request_id.take();
            logged.request_id_is_ours = ctx.request_id_is_ours;
            logged.endpoint = ctx.upstream.endpoint;
            logged.attempts = ctx.upstream.attempts;
            logged.upstream_duration = ctx.upstream_duration;
            logged.plugin = ctx.answered_by.take();
        }
    }

    /// Counts and logs the request; run once, by [`ResponseBody`] or [`Watch::abandon`].
    fn settle(&mut self, incomplete: bool) {
        let sent = self.sent;
        let duration = self.started.elapsed();
        let received = self
            .received
            .as_ref()
            .map_or(0, |r| r.load(Ordering::Relaxed));
        let generation = &self.generation;
        let route = self.route.and_then(|i| generation.routes.get(i));
        if generation.config.metrics {
            let route_metrics = route.map_or(&generation.no_route, |r| &r.metrics);
            route_metrics.count(&self.method, self.status);
            route_metrics.duration.observe(duration.as_secs_f64());
            if received > 0 {
                route_metrics.request_bytes.inc_by(received);
            }
            route_metrics.response_bytes.inc_by(sent);
        }
        metrics().in_flight.dec();
        if let (Some(logged), Some(log)) = (&self.logged, &generation.access_log) {
            let route_logs = self
                .route
                .is_none_or(|i| generation.config.routes[i].access_log);
            if route_logs {
                log.write(&Entry {
                    generation,
                    time: self.started,
                    request_id: logged.request_id.as_ref(),
                    request_id_is_ours: logged.request_id_is_ours,
                    trace_id: self.trace.as_ref().map(|t| &*t.0.id),
                    client: &logged.client,
                    method: &self.method,
                    host: logged.host.as_ref().map(http::HeaderValue::as_bytes),
                    path: logged.path.as_ref().map_or("/", |p| p.as_str()),
                    version: logged.version,
                    status: self.status,
                    bytes_in: received,
                    bytes_out: sent,
                    duration,
                    upstream_duration: logged.upstream_duration,
                    route: self.route,
                    cluster: self.cluster,
                    endpoint: logged.endpoint,
                    attempts: logged.attempts,
                    plugin: logged.plugin.as_deref(),
                    incomplete,
                    tls: logged.tls.as_deref(),
                    request_headers: &logged.request_headers,
                });
            }
        }
        if let Some(trace) = self.trace.take() {
            let (trace, path) = *trace;
            let config = &generation.config;
            let route = self.route.map(|i| config.routes[i].name.as_str());
            let name = match route {
                Some(route) => format!("{} {route}", self.method),
                None => self.method.to_string(),
            };
            let mut attributes = vec![
                KeyValue::new("http.request.method", self.method.to_string()),
                KeyValue::new(
                    "url.path",
                    path.map_or_else(String::new, |p| p.path().to_owned()),
                ),
            ];
            if let Some(route) = route {
                attributes.push(KeyValue::new("http.route", route.to_owned()));
            }
            if let Some(cluster) = self.cluster {
                attributes.push(KeyValue::new(
                    "weir.cluster",
                    config.clusters[cluster].name.clone(),
                ));
            }
            trace
                .trace
                .end(name, self.status, attributes, SystemTime::now());
        }
    }
}

/// Counts and logs a request whose head hyper answered itself, before any service saw it
/// (too large: 431; malformed: 400). Nothing of it is known but its client: its method and
/// path are `-`, as in nginx's record of such a request, and it has no duration to time.
pub(crate) fn refused_head(generation: &Generation, client: SocketAddr, status: u16) {
    let method = Method::from_bytes(b"-").unwrap_or(Method::GET);
    if generation.config.metrics {
        generation.no_route.count(&method, status);
    }
    if let Some(log) = generation.access_log.as_ref().filter(|log| log.sampled()) {
        log.write(&Entry {
            generation,
            time: Tick::now(),
            request_id: None,
            request_id_is_ours: false,
            trace_id: None,
            client: &client.to_string(),
            method: &method,
            host: None,
            path: "-",
            version: http::Version::HTTP_11,
            status,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream_duration: None,
            route: None,
            cluster: None,
            endpoint: None,
            attempts: 0,
            plugin: None,
            incomplete: false,
            tls: None,
            request_headers: &[],
        });
    }
}

/// What the access log needs of a request that its response does not carry.
#[derive(Debug)]
struct Logged {
    /// `ip:port`.
    client: Arc<str>,
    /// The `Host` (or HTTP/2 `:authority`) the request was routed by, or the client's `Host`
    /// if it was refused before.
    host: Option<http::HeaderValue>,
    /// The target's path and query as the client sent them.
    path: Option<http::uri::PathAndQuery>,
    version: http::Version,
    tls: Option<Arc<crate::tls::TlsInfo>>,
    request_id: Option<http::HeaderValue>,
    request_id_is_ours: bool,
    endpoint: Option<usize>,
    attempts: u32,
    upstream_duration: Option<Duration>,
    plugin: Option<Arc<str>>,
    /// The request headers `[access_log] fields` chose, copied (empty if it chose none).
    request_headers: Vec<Option<Bytes>>,
}

/// Every response's body on its way to the client: the proxy's body and, when the request is
/// watched, its watch, which counts the bytes sent and settles the request at the body's end
/// (or when the body is dropped unfinished). One struct, not a variant of [`ProxyBody`]
/// around another: a frame goes through one `match` of the proxy's body, not two.
#[derive(Debug)]
pub struct ResponseBody {
    body: ProxyBody,
    /// Until the request is settled.
    watch: Option<Box<Observed>>,
}

impl ResponseBody {
    /// A body whose request is not watched.
    pub fn unwatched(body: ProxyBody) -> ResponseBody {
        ResponseBody { body, watch: None }
    }

    /// Settles the request, once.
    fn settle(&mut self, incomplete: bool) {
        if let Some(mut watch) = self.watch.take() {
            watch.settle(incomplete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let Some(watch) = &mut this.watch else {
            return frame;
        };
        match &frame {
            // A body that says it has ended after this frame is not polled again: hyper
            // drops it at once, and `drop` settles the request then.
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    watch.sent += data.len() as u64;
                } else if frame.is_trailers() {
                    // The last frame of any body; hyper does not poll for an end after it.
                    this.settle(false);
                }
            }
            Poll::Ready(None) => this.settle(false),
            Poll::Ready(Some(Err(_))) => this.settle(true),
            Poll::Pending => {}
        }
        frame
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ResponseBody {
    /// Settles a request whose body said it had ended (hyper drops such a body without
    /// polling it again), or whose client went away before the end (incomplete). The body
    /// of an answer to `HEAD` is never sent, so it never ends: its head was all there was.
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            let incomplete = !self.body.is_end_stream() && watch.method != Method::HEAD;
            self.settle(incomplete);
        }
    }
}
