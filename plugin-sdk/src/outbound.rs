//! Requests to other services, from a filter (weir:plugin 0.3.4): token introspection,
//! external authorization, a JWKS. A request names a *cluster* of weir's config, which the
//! plugin's `NAME.toml` must grant (`clusters = ["authz"]`); weir sends it with that
//! cluster's load balancing, retries, circuit breaking and TLS, and the hook waits (without
//! holding one of weir's threads) until the whole answer is read or the timeout passes.
//!
//! ```
//! use std::time::Duration;
//! use weir_plugin::outbound::Call;
//!
//! # weir_plugin::testing::stub_outbound("authz", "POST", "/check", 200, &[], b"{}");
//! let answer = Call::post("authz", "/check", br#"{"user":"alice"}"#.to_vec())
//!     .header("content-type", "application/json")
//!     .timeout(Duration::from_millis(200))
//!     .send()?;
//! assert_eq!(answer.status, 200);
//! # Ok::<(), weir_plugin::outbound::OutboundError>(())
//! ```
//!
//! Outside wasm (in `cargo test`) requests are answered by the stubs a test gives
//! [`testing::stub_outbound`](crate::testing::stub_outbound).

use std::time::Duration;

/// A request to a cluster, built then sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The cluster, as named in weir's config.
    pub cluster: String,
    /// The method.
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Headers to send (weir adds `x-request-id`).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (at most 1 MiB).
    pub body: Vec<u8>,
    /// The whole exchange's limit; weir's default (1 s) if `None`, at most 10 s (and at most
    /// what is left of the hook call's 10 s of excused waiting).
    pub timeout: Option<Duration>,
}

/// A cluster's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, read whole (at most 1 MiB).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (any case), if it is there and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The cluster is not granted to this plugin (or not configured), or the call was made
    /// outside a request.
    Denied(String),
    /// No endpoint could be reached, or every one failed.
    Unavailable(String),
    /// No whole answer within the timeout.
    Timeout,
    /// The request (method, path, header, size) or the answer (size) was refused.
    Invalid(String),
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundError::Denied(why) => write!(f, "outbound request denied: {why}"),
            OutboundError::Unavailable(why) => write!(f, "outbound request failed: {why}"),
            OutboundError::Timeout => f.write_str("outbound request timed out"),
            OutboundError::Invalid(why) => write!(f, "outbound request invalid: {why}"),
        }
    }
}

impl std::error::Error for OutboundError {}

impl Call {
    /// A `method` request to `path` on `cluster`.
    pub fn new(method: &str, cluster: &str, path: &str) -> Call {
        Call {
            cluster: cluster.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET`.
    pub fn get(cluster: &str, path: &str) -> Call {
        Call::new("GET", cluster, path)
    }

    /// A `POST` with `body`.
    pub fn post(cluster: &str, path: &str, body: Vec<u8>) -> Call {
        Call {
            body,
            ..Call::new("POST", cluster, path)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Call {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the whole exchange's limit.
    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = Some(timeout);
        self
    }

    /// Sends it and waits for the whole answer.
    pub fn send(self) -> Result<Answer, OutboundError> {
        imp::send(self)
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Answer, Call, OutboundError};
    use crate::bindings::weir::plugin::outbound;

    pub(super) fn send(call: Call) -> Result<Answer, OutboundError> {
        let timeout_ms = call
            .timeout
            .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1));
        let request = outbound::OutboundRequest {
            cluster: call.cluster,
            method: call.method,
            path: call.path,
            headers: call.headers,
            body: call.body,
            timeout_ms,
        };
        match outbound::send(&request) {
            Ok(answer) => Ok(Answer {
                status: answer.status,
                headers: answer.headers,
                body: answer.body,
            }),
            Err(outbound::OutboundError::Denied(why)) => Err(OutboundError::Denied(why)),
            Err(outbound::OutboundError::Unavailable(why)) => Err(OutboundError::Unavailable(why)),
            Err(outbound::OutboundError::Timeout) => Err(OutboundError::Timeout),
            Err(outbound::OutboundError::Invalid(why)) => Err(OutboundError::Invalid(why)),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::mock::outbound as imp;
