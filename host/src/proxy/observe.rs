//! What a request leaves behind when its response ends: its route's metrics (count, duration,
//! bytes) and, when the access log samples it, its record. [`Watch::start`] notes the
//! request's start; [`Watch::finish`] wraps the response body in an [`Observed`] that counts
//! the bytes sent and settles the request at the body's end, or when the body is dropped
//! unfinished (the client went away).
//!
//! With metrics off and no access log, nothing here runs: `start` returns `None`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::RequestContext;
use crate::access_log::Record;
use crate::body::ProxyBody;
use crate::error::BoxError;
use crate::generation::Generation;
use crate::metrics::metrics;
use crate::trace::RequestTrace;
use opentelemetry::KeyValue;

/// A request being watched, from its head to its response.
#[derive(Debug)]
pub(super) struct Watch {
    started: Instant,
    method: Method,
    /// The request's body bytes, counted as they are read (absent for a request without a
    /// body).
    pub(super) received: Option<Arc<AtomicU64>>,
    /// The access log record, begun when the log samples the request.
    record: Option<Box<Record>>,
    /// The request's trace, when tracing is on.
    pub(super) trace: Option<RequestTrace>,
    /// The path the client asked for, for the trace.
    path: Option<http::uri::PathAndQuery>,
}

impl Watch {
    /// Starts watching `request`, unless the generation keeps no metrics and no access log.
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
            RequestTrace {
                id: trace.trace_id().into(),
                trace,
                tracing: tracing.clone(),
            }
        });
        metrics().in_flight.inc();
        let received = (!request.body().is_end_stream()).then(Arc::default);
        let record = access_log.map(|_| {
            Box::new(Record {
                generation: generation.clone(),
                time: SystemTime::now(),
                request_id: None,
                trace_id: trace.as_ref().map(|t| t.id.to_string()),
                client: ctx.client.addr,
                method: request.method().clone(),
                host: request
                    .headers()
                    .get(http::header::HOST)
                    .cloned()
                    .or_else(|| {
                        request
                            .uri()
                            .authority()
                            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
                    }),
                uri: request.uri().clone(),
                version: request.version(),
                status: 0,
                bytes_in: 0,
                bytes_out: 0,
                duration: Default::default(),
                upstream_duration: None,
                route: None,
                cluster: None,
                endpoint: None,
                attempts: 0,
                plugin: None,
                incomplete: false,
                tls: ctx.client.tls.clone(),
            })
        });
        let path = trace
            .as_ref()
            .and_then(|_| request.uri().path_and_query().cloned());
        Some(Watch {
            started: Instant::now(),
            method: request.method().clone(),
            received,
            record,
            trace,
            path,
        })
    }

    /// The response, its body wrapped to settle the request when it ends.
    pub(super) fn finish(
        self,
        generation: Arc<Generation>,
        ctx: &RequestContext<'_>,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let mut record = self.record;
        if let Some(record) = &mut record {
            record.request_id = ctx.request_id.clone();
            record.route = ctx.route;
            record.cluster = ctx.cluster;
            record.endpoint = ctx.upstream.endpoint;
            record.attempts = ctx.upstream.attempts;
            record.upstream_duration = ctx.upstream_duration;
            record.plugin = ctx.answered_by.clone();
        }
        let settle = Settle {
            generation,
            started: self.started,
            method: self.method,
            status: response.status().as_u16(),
            route: ctx.route,
            cluster: ctx.cluster,
            received: self.received,
            record,
            trace: self.trace.map(|t| (t, self.path)),
        };
        if response.body().is_end_stream() {
            settle.settle(0, false);
            return response;
        }
        response.map(|body| {
            ProxyBody::Observed(Box::new(Observed {
                body,
                sent: 0,
                settle: Some(settle),
            }))
        })
    }
}

/// What settling a request needs once its response has ended.
#[derive(Debug)]
struct Settle {
    generation: Arc<Generation>,
    started: Instant,
    method: Method,
    status: u16,
    route: Option<usize>,
    cluster: Option<usize>,
    received: Option<Arc<AtomicU64>>,
    record: Option<Box<Record>>,
    trace: Option<(RequestTrace, Option<http::uri::PathAndQuery>)>,
}

impl Settle {
    fn settle(self, sent: u64, incomplete: bool) {
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
        if let Some((trace, path)) = self.trace {
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
        let Some(mut record) = self.record else {
            return;
        };
        let logged = self
            .route
            .is_none_or(|i| generation.config.routes[i].access_log);
        if let (true, Some(log)) = (logged, &generation.access_log) {
            record.status = self.status;
            record.bytes_in = received;
            record.bytes_out = sent;
            record.duration = duration;
            record.incomplete = incomplete;
            log.write(record);
        }
    }
}

/// A response body on its way to the client, counted; settles its request at its end.
#[derive(Debug)]
pub struct Observed {
    body: ProxyBody,
    sent: u64,
    settle: Option<Settle>,
}

impl Observed {
    fn settle(&mut self, incomplete: bool) {
        if let Some(settle) = self.settle.take() {
            settle.settle(self.sent, incomplete);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended.
                if this.body.is_end_stream() {
                    this.settle(false);
                }
            }
            Poll::Ready(None) => this.settle(false),
            Poll::Ready(Some(Err(_))) => this.settle(true),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let incomplete = !self.body.is_end_stream();
        self.settle(incomplete);
    }
}
