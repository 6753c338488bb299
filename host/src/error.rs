//! Error types: [`ProxyError`] for one request on the data path, [`HostError`] for startup.
//!
//! A `ProxyError` says what failed (`kind`), whose fault it was (`source`) and whether trying
//! again elsewhere could help (`retry`). It never carries a status code: turning an error into
//! a response is the job of exactly one function, `proxy::fail`.

use std::net::SocketAddr;

use crate::config::ConfigError;

/// A boxed error cause, kept only for logging.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong while proxying one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was malformed (for example an HTTP/1.1 request without `Host`).
    BadRequest,
    /// The request body is larger than its route accepts (`request_body_bytes`, or a body
    /// hook's `max_body_bytes`, before or after its content coding is undone).
    PayloadTooLarge,
    /// The request body's `Content-Encoding` is one weir cannot undo for a body hook.
    UnsupportedEncoding,
    /// A request header is larger than `[server.limits] header_bytes`.
    HeaderTooLarge,
    /// The request target is longer than `[server.limits] uri_bytes`.
    UriTooLong,
    /// The client stopped sending its request body for `body_read_timeout`.
    BodyTimeout,
    /// The client went away (closed or reset) before its request body ended.
    ClientClosed,
    /// No route matches the request.
    NoRoute,
    /// The route's cluster has no endpoint to take the request.
    NoEndpoint,
    /// The cluster already has `max_requests` in flight (circuit breaking).
    Overloaded,
    /// Connecting to the chosen endpoint failed or timed out.
    UpstreamConnect,
    /// The endpoint did not send response headers within the response timeout.
    UpstreamTimeout,
    /// The exchange with the endpoint failed after connecting (reset, malformed response).
    UpstreamFailed,
    /// The request needs a protocol the cluster does not speak (gRPC to an HTTP/1.1 cluster).
    UpstreamProtocol,
    /// A plugin the route needs is not loaded.
    PluginUnavailable,
    /// A fail-closed plugin trapped, hit a limit, or returned an invalid change.
    PluginFailed,
}

/// Whose fault an error is, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong.
    Downstream,
    /// The upstream endpoint failed.
    Upstream,
    /// The configuration cannot serve the request.
    Internal,
    /// A plugin failed.
    Plugin,
}

/// Whether the request may be sent again, whatever its method, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the upstream (the connection was refused or dropped): another
    /// endpoint may succeed, and so may the same one, on a new connection.
    Safe,
    /// Nothing reached the upstream, which did not answer in time (a connect timeout):
    /// another endpoint may succeed; the same one would likely cost the same wait again.
    Elsewhere,
    /// The upstream may have acted on the request, or retrying cannot help (only an
    /// idempotent request is sent again, after a reset or a timeout).
    Never,
}

/// An error on the data path. Becomes a response in `proxy::fail`.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} ({source_:?})")]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Whose fault it was.
    pub source_: ErrorSource,
    /// Whether a retry elsewhere may help.
    pub retry: Retry,
    /// The underlying cause, for the log line.
    #[source]
    pub cause: Option<BoxError>,
}

impl ProxyError {
    /// An error of `kind` with the source and retry class that kind implies.
    pub fn new(kind: ErrorKind) -> ProxyError {
        let (source_, retry) = match kind {
            ErrorKind::BadRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedEncoding
            | ErrorKind::HeaderTooLarge
            | ErrorKind::UriTooLong
            | ErrorKind::BodyTimeout
            | ErrorKind::ClientClosed => (ErrorSource::Downstream, Retry::Never),
            ErrorKind::NoRoute
            | ErrorKind::NoEndpoint
            | ErrorKind::Overloaded
            | ErrorKind::UpstreamProtocol => (ErrorSource::Internal, Retry::Never),
            ErrorKind::UpstreamConnect => (ErrorSource::Upstream, Retry::Safe),
            ErrorKind::UpstreamTimeout | ErrorKind::UpstreamFailed => {
                (ErrorSource::Upstream, Retry::Never)
            }
            ErrorKind::PluginUnavailable | ErrorKind::PluginFailed => {
                (ErrorSource::Plugin, Retry::Never)
            }
        };
        ProxyError {
            kind,
            source_,
            retry,
            cause: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_cause(mut self, cause: impl Into<BoxError>) -> ProxyError {
        self.cause = Some(cause.into());
        self
    }

    /// Replaces the retry class the kind implies.
    pub fn with_retry(mut self, retry: Retry) -> ProxyError {
        self.retry = retry;
        self
    }
}

/// Why weir could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The wasm engine could not be created.
    #[error("cannot start the plugin runtime")]
    PluginRuntime(#[source] BoxError),
    /// Plugins failed to load at startup, or routes name plugins that are not there.
    #[error("plugins failed to load:\n  {}", .0.join("\n  "))]
    Plugins(Vec<String>),
    /// A TLS listener's or cluster's certificates or keys could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The access log's file could not be opened.
    #[error("access log: {0}")]
    AccessLog(String),
    /// The tracing exporter could not be set up.
    #[error("tracing: {0}")]
    Tracing(String),
    /// A listener could not bind its address.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address that could not be bound.
        address: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}
