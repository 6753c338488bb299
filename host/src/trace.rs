//! Distributed tracing: W3C trace context (`traceparent`, `tracestate`) continued from the
//! client or started here, spans for the downstream request, each plugin hook call and each
//! upstream attempt, exported over OTLP/HTTP by the OpenTelemetry SDK's batch processor (its
//! own thread; a full queue drops spans, never blocks a request).
//!
//! Sampling is parent-based: a client's sampled flag is followed; a trace weir starts is
//! sampled at the configured ratio. Unsampled requests still pass a `traceparent` upstream
//! (with the flag off), so the trace id stays one across services.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use crate::config::{TracingConfig, TracingProtocol};

/// The process's tracer and exporter.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// The configuration it was started with (a reload that changes it applies at restart).
    pub config: TracingConfig,
}

/// A request's place in a trace: the context holding its server span, for its children.
#[derive(Debug, Clone)]
pub struct Trace {
    cx: Context,
}

/// A traced request: its trace, the tracer, and its trace id as text (for log lines).
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// The server span's context.
    pub trace: Trace,
    /// The process's tracer.
    pub tracing: Arc<Tracing>,
    /// The trace id, 32 hex digits.
    pub id: Arc<str>,
}

impl RequestTrace {
    /// A child span of the request's, started now; `None` when the trace is not sampled.
    pub fn child(&self, name: impl FnOnce() -> String, kind: SpanKind) -> Option<Child> {
        self.trace.sampled().then(|| {
            self.tracing
                .child(&self.trace, name(), kind, SystemTime::now())
        })
    }

    /// Writes the trace context for an upstream request into `headers` (`traceparent`, and
    /// `tracestate` if the client sent one): the attempt's span as the parent when it is
    /// sampled, else the request's span (with the sampled flag off).
    pub fn inject(&self, attempt: Option<&Child>, headers: &mut HeaderMap) {
        let cx = attempt.map_or(&self.trace.cx, |child| &child.cx);
        self.tracing.inject(cx, headers);
    }
}

/// Spans queued for export before new ones are dropped.
const QUEUE: usize = 8192;

impl Tracing {
    /// Builds the exporter and the tracer. Call inside tokio (the exporter's HTTP client is
    /// made on a thread of its own).
    pub fn start(config: &TracingConfig) -> Result<Tracing, String> {
        let protocol = match config.protocol {
            TracingProtocol::HttpProtobuf => Protocol::HttpBinary,
            TracingProtocol::HttpJson => Protocol::HttpJson,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_scheduled_delay(config.flush_interval)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("weir");
        Ok(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            config: config.clone(),
        })
    }

    /// The server span of a request with `headers`, continuing the client's trace if it
    /// sent one, started at `start`.
    pub fn request(&self, headers: &HeaderMap, name: &'static str, start: SystemTime) -> Trace {
        let parent = self.propagator.extract(&Headers(headers));
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(name)
                .with_kind(SpanKind::Server)
                .with_start_time(start),
            &parent,
        );
        Trace {
            cx: parent.with_span(span),
        }
    }

    /// A child span of `trace`, started at `start`; end it with [`Child::end`].
    pub fn child(&self, trace: &Trace, name: String, kind: SpanKind, start: SystemTime) -> Child {
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(name)
                .with_kind(kind)
                .with_start_time(start),
            &trace.cx,
        );
        Child {
            cx: trace.cx.with_span(span),
        }
    }

    fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator.inject_context(cx, &mut HeadersMut(headers));
    }

    /// Exports what is queued and stops the exporter (on shutdown; blocks).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "tracing: export at shutdown failed");
        }
    }
}

impl Trace {
    /// The trace id as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Whether the trace is sampled (its spans are exported).
    pub fn sampled(&self) -> bool {
        self.cx.span().span_context().is_sampled()
    }

    /// Ends the server span, named `name`, with the response's status and what the request
    /// matched.
    pub fn end(&self, name: String, status: u16, attributes: Vec<KeyValue>, end: SystemTime) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.update_name(name);
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        for attribute in attributes {
            span.set_attribute(attribute);
        }
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end_with_timestamp(end);
    }
}

/// A child span in progress.
#[derive(Debug)]
pub struct Child {
    cx: Context,
}

impl Child {
    /// The span with `attributes` set.
    pub fn with(self, attributes: Vec<KeyValue>) -> Child {
        let span = self.cx.span();
        for attribute in attributes {
            span.set_attribute(attribute);
        }
        self
    }

    /// Ends the span with `attributes`; an error status when `error` says why.
    pub fn end(self, attributes: Vec<KeyValue>, error: Option<String>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        for attribute in attributes {
            span.set_attribute(attribute);
        }
        if let Some(why) = error {
            span.set_status(Status::error(why));
        }
        span.end_with_timestamp(SystemTime::now());
    }
}

/// Reads trace context headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes trace context headers.
struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
