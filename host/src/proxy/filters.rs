//! The plugin phases of a request: the route's chain on the request (head hooks, then body
//! hooks when a plugin asked for the body) and on the response (head hooks in reverse, then
//! body hooks), and a plugin's local reply passed back through the plugins before it.
//!
//! Body hooks are the only reason a body is buffered: if a plugin on the route has
//! `on-request-body`, the request body is read whole (413 if it is larger than the smallest
//! `max_body_bytes` of those plugins); if a plugin the request passed has
//! `on-response-body`, the response body is read whole (one larger than the limit is sent
//! on untouched, with a warning). Either way `content-length` is set to what is sent.
//!
//! Body hooks see plain bodies (`crate::coding`). A request body with a `Content-Encoding`
//! is decoded before them (413 past the limit decoded, 415 for a coding weir cannot undo,
//! 400 for bytes that are not what they claim) and goes on decoded. On a route with
//! `on-response-body` the upstream is asked for `Accept-Encoding: identity`, and a response
//! coded anyway is decoded for the hooks and sent on decoded (one that cannot be decoded
//! within the limit is sent on untouched, with a warning, as one too large is).
//!
//! A request hook may give the request a body of its own (`set-body`, 0.3.6): it replaces
//! the client's, which is then never read, and is what the body hooks see. A response's
//! trailers, when its body is read for the body hooks, are lent to them
//! (`response-trailers`, 0.3.6) and not sent on: the body they send is a whole one.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode, request};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;

use super::attempts::RequestBody;
use super::forward;
use crate::body::{self, BodyWatch, Buffered, ClientBody, ProxyBody};
use crate::coding::{self, DecodeError};
use crate::error::{ErrorKind, ProxyError};
use crate::plugin::chain::{self, BodyStep, Chain, ChainError, RequestStep};
use crate::plugin::view::{RequestView, ResponseTrailers};

/// What the request phase decided.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and matched at once; boxing the reply would allocate"
)]
pub(super) enum Filtered {
    /// Send the (changed) request on; this many plugins, from the chain's start, passed it.
    Forward(usize),
    /// The plugin at this place in the chain answered; its reply has been through the
    /// response phase already.
    Answered(Response<ProxyBody>, usize),
}

/// What the response phase needs of the request phase: the request as it was sent on (with
/// the response header changes plugins left) and how many plugins passed it.
pub(super) struct ResponsePhase {
    pub(super) request: RequestView,
    pub(super) passed: usize,
}

/// The request as the route's chain leaves it, in `request` and `body`: changed and sent
/// on, or answered. Call it only for a chain that [`Chain::is_active`]. (The view is the
/// caller's and borrowed here; on `Forward` the caller hands it to the response phase,
/// [`sent`].)
pub(super) async fn on_request(
    chain: &Chain,
    request: &mut RequestView,
    body: &mut RequestBody,
    watch: Option<&BodyWatch>,
    request_id: &HeaderValue,
) -> Result<Filtered, ProxyError> {
    let passed = match chain.on_request(request).await.map_err(plugin_error)? {
        RequestStep::Respond {
            head: reply,
            body,
            passed,
        } => {
            let reply = local_reply(chain, passed, request, reply, body, request_id).await?;
            return Ok(Filtered::Answered(reply, passed));
        }
        RequestStep::Continue { passed } => passed,
    };
    // A body a request hook gave replaces the client's, which is dropped unread.
    let supplied = request.take_body();
    let is_supplied = supplied.is_some();
    if let Some(bytes) = supplied {
        *body = RequestBody::Buffered(bytes);
    }
    if let Some(limit) = chain.request_body_limit() {
        let unread = std::mem::replace(body, RequestBody::Buffered(bytes::Bytes::new()));
        let read = on_request_body(
            chain,
            request,
            unread,
            is_supplied,
            limit,
            watch,
            request_id,
        );
        match read.await? {
            Ok(read) => *body = read,
            Err(answered) => {
                let (answered, by) = *answered;
                return Ok(Filtered::Answered(answered, by));
            }
        }
    }
    Ok(Filtered::Forward(passed))
}

/// The head to send on, taken from the view after the request phase, and what the response
/// phase needs, when it has work: the request as it was sent on, for the response hooks, or
/// only the response header changes plugins left.
#[inline(always)]
pub(super) fn sent(
    chain: &Chain,
    mut request: RequestView,
    passed: usize,
) -> (request::Parts, Option<ResponsePhase>) {
    if chain.has_response_hooks() {
        let mut sent = request.split_off_parts();
        if chain.has_response_body_hooks() {
            // The hooks must see the body plain: ask for it so (it is decoded if coded anyway).
            sent.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        (sent, Some(ResponsePhase { request, passed }))
    } else if request.has_left() {
        let sent = request.take_parts();
        (sent, Some(ResponsePhase { request, passed }))
    } else {
        (request.into_parts(), None)
    }
}

/// The request body through the body hooks: the body to send on, or a plugin's answer and
/// the plugin's place in the chain.
async fn on_request_body(
    chain: &Chain,
    view: &mut RequestView,
    body: RequestBody,
    supplied: bool,
    limit: usize,
    watch: Option<&BodyWatch>,
    request_id: &HeaderValue,
) -> Result<Result<RequestBody, Box<(Response<ProxyBody>, usize)>>, ProxyError> {
    let bytes = match body {
        RequestBody::Client(streamed) if !streamed.is_end_stream() => {
            let bytes = read_request_body(streamed, &view.parts().headers, limit, watch).await?;
            decoded_request_body(view, bytes, limit).await?
        }
        // A request hook's body (`set-body`) goes to the body hooks as it is; over their
        // limit, it is the plugins' inconsistency, not the client's (no 413).
        RequestBody::Buffered(bytes) if supplied => {
            if bytes.len() > limit {
                return Err(ProxyError::new(ErrorKind::PluginFailed).with_cause(format!(
                    "a request hook's body ({} bytes) is over the body hooks' max_body_bytes = {limit}",
                    bytes.len()
                )));
            }
            Vec::from(bytes)
        }
        unread => return Ok(Ok(unread)),
    };
    match chain
        .on_request_body(view, bytes)
        .await
        .map_err(plugin_error)?
    {
        BodyStep::Continue(bytes) => Ok(Ok(RequestBody::Buffered(bytes.into()))),
        BodyStep::Respond {
            head: reply,
            body,
            passed,
        } => local_reply(chain, passed, view, reply, body, request_id)
            .await
            .map(|reply| Err(Box::new((reply, passed)))),
    }
}

/// A plugin's local reply, passed back through the response hooks of the plugins before it.
async fn local_reply(
    chain: &Chain,
    passed: usize,
    request: &mut RequestView,
    mut parts: http::response::Parts,
    body: Vec<u8>,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    // hyper frames the body from its real length.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(forward::X_REQUEST_ID.clone(), request_id.clone());
    let response = Response::from_parts(parts, body::full(body));
    if chain.needs_response_phase(request) {
        on_response(chain, passed, request, response).await
    } else {
        Ok(response)
    }
}

/// The response phase: the chain's `on-response` hooks over a response head (a plugin may
/// replace the body), then its `on-response-body` hooks over the whole body if any plugin
/// has one; for the plugins that passed the request (`passed`), with the request as it was
/// sent on.
pub(super) async fn on_response(
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
    let (bytes, trailers) = match body::buffer(body, limit).await {
        Ok(Buffered::Whole { bytes, trailers }) => (bytes, trailers),
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
    let bytes = match decoded_response_body(&mut parts, bytes, limit, request.request_id()).await {
        Ok(plain) => plain,
        Err(untouched) => return Ok(Response::from_parts(parts, body::full(untouched))),
    };
    // Lent to the body hooks only: a whole body goes on without them.
    if let Some(trailers) = trailers {
        parts
            .extensions
            .insert(ResponseTrailers(std::sync::Arc::new(trailers)));
    }
    let bytes = chain
        .on_response_body(passed, request, &mut parts, bytes)
        .await
        .map_err(plugin_error)?;
    parts.extensions.remove::<ResponseTrailers>();
    Ok(Response::from_parts(parts, body::full(bytes)))
}

/// A request body with its content coding undone, the head saying so (no
/// `content-encoding`, the decoded `content-length`).
async fn decoded_request_body(
    view: &mut RequestView,
    bytes: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, ProxyError> {
    let coding = match coding::of(&view.parts.headers) {
        Ok(None) => return Ok(bytes),
        Ok(Some(coding)) => coding,
        Err(e) => return Err(ProxyError::new(ErrorKind::UnsupportedEncoding).with_cause(e)),
    };
    let decoded = coding::decode(coding, &bytes, limit)
        .await
        .map_err(|e| match e {
            DecodeError::TooLarge(_) => ProxyError::new(ErrorKind::PayloadTooLarge).with_cause(e),
            DecodeError::Unsupported(_) => {
                ProxyError::new(ErrorKind::UnsupportedEncoding).with_cause(e)
            }
            DecodeError::Corrupt(..) => ProxyError::new(ErrorKind::BadRequest).with_cause(e),
        })?;
    view.parts.headers.remove(header::CONTENT_ENCODING);
    chain::set_length(decoded.len(), &mut view.parts.headers);
    Ok(decoded)
}

/// A response body with its content coding undone for the body hooks, the head saying so;
/// `Err` gives the bytes back when they cannot be (a coding weir does not decode, bytes that
/// are not valid, or more than `limit` decoded), to be sent on untouched.
async fn decoded_response_body(
    parts: &mut http::response::Parts,
    bytes: Vec<u8>,
    limit: usize,
    request_id: &str,
) -> Result<Vec<u8>, Vec<u8>> {
    let coding = match coding::of(&parts.headers) {
        Ok(None) => return Ok(bytes),
        Ok(Some(coding)) => coding,
        Err(e) => {
            tracing::warn!(request_id, error = %e, "response body not decoded for the body hooks; sent on untouched");
            return Err(bytes);
        }
    };
    match coding::decode(coding, &bytes, limit).await {
        Ok(decoded) => {
            parts.headers.remove(header::CONTENT_ENCODING);
            chain::set_length(decoded.len(), &mut parts.headers);
            coding::weaken_etag(&mut parts.headers);
            Ok(decoded)
        }
        Err(e) => {
            tracing::warn!(request_id, error = %e, max_body_bytes = limit, "response body not decoded for the body hooks; sent on untouched");
            Err(bytes)
        }
    }
}

/// Reads a request body whole (for the body hooks, or a mirror's copy): 413 when
/// `Content-Length` or the bytes that arrive exceed `limit`. A failure reading it is the
/// client's, answered as `watch` (the request's `BodyWatch`) says, as when the body fails
/// on its way upstream.
pub(super) async fn read_request_body(
    body: ClientBody,
    headers: &http::HeaderMap,
    limit: usize,
    watch: Option<&BodyWatch>,
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
        Err(e) => Err(super::client_body::client_error(e, watch)),
    }
}

fn plugin_error(error: ChainError) -> ProxyError {
    let kind = match &error {
        ChainError::Unavailable(_) => ErrorKind::PluginUnavailable,
        ChainError::Failed(call) if call.unavailable() => ErrorKind::PluginUnavailable,
        ChainError::Failed(_) | ChainError::InvalidChange { .. } => ErrorKind::PluginFailed,
    };
    ProxyError::new(kind).with_cause(error)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::read_request_body;
    use crate::body::{BodyFault, BodyWatch, ClientBody};
    use crate::error::ErrorKind;

    /// A body that fails with an error that says nothing of the client.
    fn failing() -> ClientBody {
        let stream = futures_util::stream::iter([Err::<hyper::body::Frame<bytes::Bytes>, _>(
            crate::error::BoxError::from("connection reset"),
        )]);
        ClientBody::Boxed(http_body_util::StreamBody::new(stream).boxed_unsync())
    }

    /// A failed read is answered as the request's body watch says the client failed (as
    /// `attempts` answers a body that fails on its way upstream), whoever reads it: the
    /// body hooks, or a mirror's copy.
    #[tokio::test]
    async fn a_failed_read_is_the_fault_the_watch_holds() {
        let headers = http::HeaderMap::new();
        let watch = BodyWatch::default();
        watch.fail(BodyFault::Stalled);
        let error = read_request_body(failing(), &headers, 100, Some(&watch))
            .await
            .expect_err("fails");
        assert_eq!(error.kind, ErrorKind::BodyTimeout);
        // Without a watch, only what the error itself says: a bad request.
        let error = read_request_body(failing(), &headers, 100, None)
            .await
            .expect_err("fails");
        assert_eq!(error.kind, ErrorKind::BadRequest);
    }
}
