//! Implementation of the `weir:plugin/outbound` interface (since 0.3.4): a filter's requests
//! to the clusters its `NAME.toml` grants, handed to the proxy's [`Outbound`] for the
//! request being served. Everything the guest passes is checked here (grant, method, path,
//! headers, sizes), and the whole exchange — the answer's body included — is bounded by the
//! request's timeout, which replaces the plugin's wall-clock budget while it waits.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};

use crate::plugin::contract::current::outbound::{
    Host, OutboundError, OutboundRequest, OutboundResponse,
};
use crate::plugin::outbound::OutboundError as ProxyError;
use crate::plugin::state::PluginState;

/// The largest request body a filter may send, and response body it may receive.
const MAX_BODY_BYTES: usize = 1 << 20;
/// A request's timeout when the plugin names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest timeout a plugin may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

impl Host for PluginState {
    async fn send(&mut self, request: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        if !self.granted.contains(&request.cluster) {
            return Err(OutboundError::Denied(format!(
                "cluster {:?} is not in this plugin's clusters (NAME.toml)",
                request.cluster
            )));
        }
        let Some(outbound) = self.outbound.clone() else {
            return Err(OutboundError::Denied(
                "outbound requests are sent only while a request is served".into(),
            ));
        };
        // A hook's waits are excused up to a bound in all (`budget::MAX_EXCUSED`): a hook
        // calling in a loop cannot hold its request forever.
        let excusable = self.budget.excusable();
        if excusable.is_zero() {
            return Err(OutboundError::Timeout);
        }
        let timeout = request
            .timeout_ms
            .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms.into()))
            .min(MAX_TIMEOUT)
            .min(excusable);
        let cluster = request.cluster.clone();
        let http_request = build(request)?;
        let started = self.budget.waiting();
        let answer = tokio::time::timeout(timeout, async move {
            let response = outbound
                .send(cluster, http_request)
                .await
                .map_err(|e| match e {
                    ProxyError::UnknownCluster(name) => {
                        OutboundError::Denied(format!("no cluster named {name:?} in weir's config"))
                    }
                    ProxyError::Timeout => OutboundError::Timeout,
                    ProxyError::Connect(why) | ProxyError::Failed(why) => {
                        OutboundError::Unavailable(why)
                    }
                })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        OutboundError::Invalid(format!(
                            "the answer's body is larger than {MAX_BODY_BYTES} bytes"
                        ))
                    } else {
                        OutboundError::Unavailable(format!("the answer's body failed: {e}"))
                    }
                })?
                .to_bytes();
            Ok(OutboundResponse {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect(),
                body: body.to_vec(),
            })
        })
        .await
        .unwrap_or(Err(OutboundError::Timeout));
        self.budget.waited(started);
        answer
    }
}

/// The guest's request as an HTTP request with only a path and query in its URI.
fn build(request: OutboundRequest) -> Result<http::Request<Bytes>, OutboundError> {
    let invalid = |what: String| OutboundError::Invalid(what);
    if request.body.len() > MAX_BODY_BYTES {
        return Err(invalid(format!(
            "the body is {} bytes; at most {MAX_BODY_BYTES} are allowed",
            request.body.len()
        )));
    }
    let method = http::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| invalid(format!("method {:?} is not an HTTP method", request.method)))?;
    if !request.path.starts_with('/') {
        return Err(invalid(format!(
            "path {:?} must start with /",
            request.path
        )));
    }
    let uri: http::Uri = request.path.parse().map_err(|_| {
        invalid(format!(
            "path {:?} is not a valid path and query",
            request.path
        ))
    })?;
    let mut built = http::Request::builder().method(method).uri(uri);
    for (name, value) in request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("header name {name:?} is not valid HTTP")))?;
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| invalid(format!("the value of header {name} is not valid HTTP")))?;
        built = built.header(name, value);
    }
    built
        .body(Bytes::from(request.body))
        .map_err(|e| invalid(e.to_string()))
}
