//! The request and response as a route's plugins see them: hyper's own heads and what weir
//! knows about the request. A 0.3.0 hook is lent a view whole and reads it on demand; the
//! WIT records that older plugins and body hooks take are made from it for each such call.
//! Since 0.3.6 a request hook may also change the method and give the request a body of
//! its own (`set-method`, `set-body`): staged during the call, checked and applied when it
//! returns, dropped when it fails.

use crate::trace::RequestTrace;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, request};

use super::outbound::Outbound;
use super::{HeaderOp, RequestHead, ResponseHead};
use crate::cache::PluginKey;
use crate::tls::TlsInfo;

/// The most response header changes one hook call may leave (`add-response-header-ops`, and
/// a 0.3.7 `request-hook` answer's, together); a call that leaves more traps.
const MAX_LEFT_PER_CALL: usize = 256;

/// The longest cache key or key part a plugin may give (`set-cache-key`, `add-cache-key`).
pub(crate) const MAX_CACHE_KEY_BYTES: usize = 1024;

/// The most parts the plugins may add to one request's cache key (`add-cache-key`), all
/// together.
pub(crate) const MAX_CACHE_KEY_PARTS: usize = 16;

/// The longest method a plugin may set (`set-method`); the registered ones are at most 17.
pub(crate) const MAX_METHOD_BYTES: usize = 32;

/// The largest body a request hook may give a request (`set-body`): a body built from a
/// head (a protobuf from a path and query) is small; rewriting a large one is a body hook's
/// work.
pub(crate) const MAX_SUPPLIED_BODY_BYTES: usize = 1 << 20;

/// The trailers of a response whose body the body hooks hold, in the response's
/// extensions for the one `on-response-body` call at a time that may read them
/// (`response-trailers`, 0.3.6).
#[derive(Debug, Clone)]
pub struct ResponseTrailers(pub Arc<HeaderMap>);

/// The request through the chain: its head as it will be sent on (every plugin's changes
/// are applied to `parts` as they are returned), and what the plugins may ask about it.
/// (`pub` because the generated bindings re-export it.)
///
/// Boxed: the view is swapped into the called instance's resource table and back around
/// every lazy hook call, and moved through the chain's futures, so each of those moves a
/// pointer rather than the 400 bytes of [`ViewFields`] (1,270 instructions a request on
/// bench/run.sh's weir+3 route: BENCHMARKS.md, "Session 44").
#[derive(Debug)]
pub struct RequestView(Box<ViewFields>);

/// What a [`RequestView`] holds (its fields are read through it).
#[derive(Debug)]
pub struct ViewFields {
    pub(crate) parts: request::Parts,
    /// The host the client asked for (`Host` or `:authority`).
    authority: Option<HeaderValue>,
    /// The client's `ip:port`.
    client: Arc<str>,
    route: Arc<str>,
    /// The request id (every hook call logs under it).
    request_id: RequestId,
    /// Response header changes plugins left, if any did (boxed: most requests have none, and
    /// the fields are allocated for every request with plugins).
    left: Option<Box<Left>>,
    /// The client connection's TLS, if it spoke TLS.
    tls: Option<Arc<TlsInfo>>,
    /// The request's trace, when tracing is on: each hook call is a span in it.
    trace: Option<RequestTrace>,
    /// Where plugins' `outbound` requests go, when the chain has a plugin granted clusters.
    outbound: Option<OutboundHandle>,
    /// The method and body request hooks set (0.3.6), if any did (boxed as `left` is).
    rewrite: Option<Box<Rewrite>>,
}

impl std::ops::Deref for RequestView {
    type Target = ViewFields;

    fn deref(&self) -> &ViewFields {
        &self.0
    }
}

impl std::ops::DerefMut for RequestView {
    fn deref_mut(&mut self) -> &mut ViewFields {
        &mut self.0
    }
}

/// A request's id, cheap to copy into each hook call's state, read as text only when
/// something is logged under it. weir's own id is the header itself (an allocation of its
/// own); a client's is copied (lossy if it is not UTF-8): hyper's header values are slices
/// of the connection's read buffer, which a plugin instance must not keep alive.
#[derive(Debug, Clone)]
pub(crate) enum RequestId {
    Header(HeaderValue),
    Copied(Arc<str>),
}

impl RequestId {
    fn new(id: &HeaderValue, ours: bool) -> RequestId {
        if ours && std::str::from_utf8(id.as_bytes()).is_ok() {
            RequestId::Header(id.clone())
        } else {
            // A client's id is checked once, by the lossy copy.
            RequestId::Copied(String::from_utf8_lossy(id.as_bytes()).into())
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Checked in `new`; a header's bytes do not change.
            RequestId::Header(id) => std::str::from_utf8(id.as_bytes()).unwrap_or_default(),
            RequestId::Copied(id) => id,
        }
    }
}

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId::Header(HeaderValue::from_static(""))
    }
}

/// What request hooks did to the method and body through the request's handle
/// (`set-method`, `set-body`, 0.3.6).
#[derive(Debug, Default)]
struct Rewrite {
    /// The method the call being made set, applied when it returns.
    staged_method: Option<Method>,
    /// The body the call being made gave, applied when it returns.
    staged_body: Option<Bytes>,
    /// The body the request carries instead of the client's, from a call that returned.
    body: Option<Bytes>,
}

/// The proxy's [`Outbound`] for one request (a wrapper only for `Debug`).
#[derive(Clone)]
struct OutboundHandle(Arc<dyn Outbound>);

impl std::fmt::Debug for OutboundHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbound")
    }
}

/// Response header changes left by request hooks (`add-response-header-ops`).
#[derive(Debug, Default)]
struct Left {
    /// What the plugin being called has left so far in this call.
    leaving: Vec<HeaderOp>,
    /// The bytes of `leaving` ([`held_bytes`]).
    leaving_bytes: usize,
    /// What the plugins that passed the request on left, tagged with the plugin's index in
    /// the chain, in chain order.
    kept: Vec<(usize, Vec<HeaderOp>)>,
}

/// What a header change left for the response holds: its name and value, and its place in
/// the list, as wasmtime's lift charges it to the host-call fuel.
fn held_bytes(op: &HeaderOp) -> usize {
    let (name, value) = match op {
        HeaderOp::Set((name, value)) | HeaderOp::Append((name, value)) => (name, value.len()),
        HeaderOp::Remove(name) => (name, 0),
    };
    size_of::<HeaderOp>() + name.len() + value
}

/// The response through the chain's response hooks. (`pub` as [`RequestView`].)
#[derive(Debug)]
pub struct ResponseView {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

impl RequestView {
    /// The view of a routed request; `request_id_is_ours` when weir made the id.
    pub fn new(
        parts: request::Parts,
        authority: Option<HeaderValue>,
        client: Arc<str>,
        route: Arc<str>,
        request_id: &HeaderValue,
        request_id_is_ours: bool,
    ) -> RequestView {
        RequestView(Box::new(ViewFields {
            parts,
            authority,
            client,
            route,
            request_id: RequestId::new(request_id, request_id_is_ours),
            left: None,
            tls: None,
            trace: None,
            outbound: None,
            rewrite: None,
        }))
    }

    /// Sends the plugins' `outbound` requests through `outbound`.
    pub fn set_outbound(&mut self, outbound: Arc<dyn Outbound>) {
        self.outbound = Some(OutboundHandle(outbound));
    }

    /// Where the plugins' `outbound` requests go, if anywhere.
    pub(crate) fn outbound(&self) -> Option<&Arc<dyn Outbound>> {
        self.outbound.as_ref().map(|handle| &handle.0)
    }

    /// Puts the request's hook calls in `trace`.
    pub fn set_trace(&mut self, trace: RequestTrace) {
        self.trace = Some(trace);
    }

    /// The request's trace, if it is traced.
    pub(crate) fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_ref()
    }

    /// Tells the plugins what the client's TLS handshake settled.
    pub fn set_tls(&mut self, tls: Arc<TlsInfo>) {
        self.tls = Some(tls);
    }

    /// The client connection's TLS, if any.
    pub(crate) fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_deref()
    }

    /// The empty view an instance's resource table holds between calls, and the chain holds
    /// while its own is lent to one (made once per instance).
    pub(crate) fn placeholder() -> RequestView {
        RequestView(Box::new(ViewFields {
            parts: request::Request::new(()).into_parts().0,
            authority: None,
            client: empty(),
            route: empty(),
            request_id: RequestId::default(),
            left: None,
            tls: None,
            trace: None,
            outbound: None,
            rewrite: None,
        }))
    }

    /// The request as it is now.
    pub fn parts(&self) -> &request::Parts {
        &self.parts
    }

    /// The request as it is now, to send on; the view keeps nothing.
    pub fn into_parts(self) -> request::Parts {
        self.0.parts
    }

    /// The request as it is now, to send on, leaving a copy of its method, target and
    /// headers in the view for the response hooks (which see the request as it was sent).
    /// The extensions (hyper's upgrade handle among them) go with the request.
    pub fn split_off_parts(&mut self) -> request::Parts {
        let mut copy = request::Request::new(()).into_parts().0;
        copy.method = self.parts.method.clone();
        copy.uri = self.parts.uri.clone();
        copy.version = self.parts.version;
        copy.headers = self.parts.headers.clone();
        std::mem::replace(&mut self.parts, copy)
    }

    /// The request as it is now, to send on, leaving an empty head in the view: for a
    /// response phase that only applies the changes plugins left (no hook reads the
    /// request).
    pub fn take_parts(&mut self) -> request::Parts {
        std::mem::replace(&mut self.parts, request::Request::new(()).into_parts().0)
    }

    /// Records response header changes the plugin being called leaves (the resource's
    /// `add-response-header-ops`). Refuses more than [`MAX_LEFT_PER_CALL`] in one call, and
    /// more than `room` bytes in one call, all its `add-response-header-ops` together: each
    /// of those crossings is bounded by the host-call fuel, but what they leave is held until
    /// the call returns and checked only when it is applied, so a plugin passing the same
    /// large change again and again would make weir hold it once per crossing. A change
    /// counts as wasmtime's lift charges it: its name, its value and its place in the list.
    pub(crate) fn leave(&mut self, ops: Vec<HeaderOp>, room: usize) -> Result<(), String> {
        let left = self.left.get_or_insert_with(Box::default);
        let total = left.leaving.len() + ops.len();
        if total > MAX_LEFT_PER_CALL {
            return Err(format!(
                "{total} changes left in one call (at most {MAX_LEFT_PER_CALL})"
            ));
        }
        let bytes = ops.iter().fold(left.leaving_bytes, |bytes, op| {
            bytes.saturating_add(held_bytes(op))
        });
        if bytes > room {
            return Err(format!(
                "{bytes} bytes of changes left in one call (at most {room}, what one call may hand weir)"
            ));
        }
        left.leaving_bytes = bytes;
        if left.leaving.is_empty() {
            left.leaving = ops;
        } else {
            left.leaving.extend(ops);
        }
        Ok(())
    }

    /// What the call that just returned left for the response (and forgets it): the
    /// lender (the current contract's `on_request`, `on_response`) takes it right after each call, so a
    /// call always starts with nothing left.
    pub(crate) fn take_leaving(&mut self) -> Vec<HeaderOp> {
        match &mut self.left {
            Some(left) => {
                left.leaving_bytes = 0;
                std::mem::take(&mut left.leaving)
            }
            None => Vec::new(),
        }
    }

    /// Keeps what plugin `index` left for the response phase (its call passed the request
    /// on). Plugins are called in chain order, so the kept changes stay sorted by index.
    pub(crate) fn keep_left(&mut self, index: usize, ops: Vec<HeaderOp>) {
        if !ops.is_empty() {
            let left = self.left.get_or_insert_with(Box::default);
            left.kept.push((index, ops));
        }
    }

    /// Whether any plugin left changes for the response.
    pub fn has_left(&self) -> bool {
        self.left.as_ref().is_some_and(|left| !left.kept.is_empty())
    }

    /// Drops what plugins from `passed` on left: they did not pass the request on (one
    /// answered it from a body hook), so the response phase does not reach them.
    pub(crate) fn drop_left_from(&mut self, passed: usize) {
        if let Some(left) = &mut self.left {
            while left.kept.last().is_some_and(|(i, _)| *i >= passed) {
                left.kept.pop();
            }
        }
    }

    /// What plugin `index` left for the response, if anything: taken in reverse chain order,
    /// as the response phase reaches each plugin.
    pub(crate) fn take_left(&mut self, index: usize) -> Option<Vec<HeaderOp>> {
        let kept = &mut self.left.as_mut()?.kept;
        match kept.last() {
            Some((i, _)) if *i == index => kept.pop().map(|(_, ops)| ops),
            _ => None,
        }
    }

    /// Makes `key` the request's cache key instead of weir's (`set-cache-key`, 0.3.5),
    /// replacing any a plugin set before. Refuses a key over [`MAX_CACHE_KEY_BYTES`] or with
    /// a control character, saying why.
    pub(crate) fn set_cache_key(&mut self, key: String) -> Result<(), String> {
        check_key_text("key", &key)?;
        self.plugin_key().replaced = Some(key);
        Ok(())
    }

    /// Adds `part` to the request's cache key (`add-cache-key`, 0.3.5). Refuses a part as
    /// [`RequestView::set_cache_key`] refuses a key, and one more than
    /// [`MAX_CACHE_KEY_PARTS`] for the request.
    pub(crate) fn add_cache_key(&mut self, part: String) -> Result<(), String> {
        check_key_text("part", &part)?;
        let key = self.plugin_key();
        if key.added.len() >= MAX_CACHE_KEY_PARTS {
            return Err(format!(
                "the request's cache key has {MAX_CACHE_KEY_PARTS} parts already (at most {MAX_CACHE_KEY_PARTS})"
            ));
        }
        key.added.push(part);
        Ok(())
    }

    /// What the plugins made of the cache key so far, kept in the request's extensions,
    /// where the route's cache reads it.
    fn plugin_key(&mut self) -> &mut PluginKey {
        self.parts.extensions.get_or_insert_default::<PluginKey>()
    }

    /// The cache key changes so far, if any, to put back with
    /// [`RequestView::restore_cache_key`] if the call about to be made fails.
    pub(crate) fn cache_key(&self) -> Option<PluginKey> {
        self.parts.extensions.get::<PluginKey>().cloned()
    }

    /// Puts back the cache key changes as they were before a call that failed: what that
    /// call set or added is dropped.
    pub(crate) fn restore_cache_key(&mut self, before: Option<PluginKey>) {
        match before {
            Some(key) => {
                self.parts.extensions.insert(key);
            }
            None => {
                self.parts.extensions.remove::<PluginKey>();
            }
        }
    }

    /// Stages `method` as the request's (`set-method`, 0.3.6), applied by
    /// [`RequestView::apply_staged`] when the call returns. Refuses a method that is not an
    /// HTTP token of at most [`MAX_METHOD_BYTES`], and `CONNECT`, saying why.
    pub(crate) fn set_method(&mut self, method: &str) -> Result<(), String> {
        if method.len() > MAX_METHOD_BYTES {
            return Err(format!(
                "the method is {} bytes (at most {MAX_METHOD_BYTES})",
                method.len()
            ));
        }
        // `Method::from_bytes` accepts exactly RFC 9110's tokens (and refuses an empty one).
        let parsed = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("{method:?} is not an HTTP method (a token)"))?;
        if parsed == Method::CONNECT {
            return Err("CONNECT opens a tunnel, and weir opens none".into());
        }
        self.rewrite.get_or_insert_default().staged_method = Some(parsed);
        Ok(())
    }

    /// Stages `body` as the request's (`set-body`, 0.3.6), applied by
    /// [`RequestView::apply_staged`] when the call returns. Refuses one over
    /// [`MAX_SUPPLIED_BODY_BYTES`].
    pub(crate) fn set_body(&mut self, body: Vec<u8>) -> Result<(), String> {
        if body.len() > MAX_SUPPLIED_BODY_BYTES {
            return Err(format!(
                "the body is {} bytes (at most {MAX_SUPPLIED_BODY_BYTES})",
                body.len()
            ));
        }
        self.rewrite.get_or_insert_default().staged_body = Some(Bytes::from(body));
        Ok(())
    }

    /// Applies what the call that just returned staged with `set-method` and `set-body`: the
    /// method goes into the head, the body is kept for the proxy ([`RequestView::take_body`])
    /// with `content-length` set and `transfer-encoding` and `content-encoding` removed.
    /// Refuses a non-empty body the request's method gives no meaning (RFC 9110: `GET`,
    /// `HEAD`, `DELETE`, `TRACE`), changing nothing. The lender calls this only for a call
    /// that succeeded, and [`RequestView::drop_staged`] for one that failed.
    pub(crate) fn apply_staged(&mut self) -> Result<(), String> {
        // The fields themselves, so that `rewrite` and `parts` are borrowed apart.
        let this = &mut *self.0;
        let Some(rewrite) = &mut this.rewrite else {
            return Ok(());
        };
        let (staged_method, staged_body) =
            (rewrite.staged_method.take(), rewrite.staged_body.take());
        if staged_method.is_none() && staged_body.is_none() {
            return Ok(());
        }
        let method = staged_method.as_ref().unwrap_or(&this.parts.method);
        let body = staged_body.as_ref().or(rewrite.body.as_ref());
        if let Some(body) = body
            && !body.is_empty()
            && !has_content(method)
        {
            return Err(format!(
                "set-body: a {method} request's content has no meaning (RFC 9110), and an upstream may refuse it; set-method as well"
            ));
        }
        if let Some(method) = staged_method {
            this.parts.method = method;
        }
        if let Some(body) = staged_body {
            rewrite.body = Some(body);
        }
        if let Some(body) = &rewrite.body {
            let headers = &mut this.parts.headers;
            headers.remove(header::TRANSFER_ENCODING);
            headers.remove(header::CONTENT_ENCODING);
            if body.is_empty() && !has_content(&this.parts.method) {
                headers.remove(header::CONTENT_LENGTH);
            } else {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
        }
        Ok(())
    }

    /// Drops what a call that failed staged with `set-method` and `set-body`; what earlier
    /// calls applied stays.
    pub(crate) fn drop_staged(&mut self) {
        if let Some(rewrite) = &mut self.rewrite {
            rewrite.staged_method = None;
            rewrite.staged_body = None;
        }
    }

    /// The body a request hook gave the request instead of the client's (`set-body`), if one
    /// did; the view keeps none afterwards.
    pub fn take_body(&mut self) -> Option<Bytes> {
        self.rewrite
            .as_mut()
            .and_then(|rewrite| rewrite.body.take())
    }

    /// The host the client asked for, if it is text.
    pub(crate) fn authority(&self) -> Option<&str> {
        self.authority.as_ref().and_then(|a| a.to_str().ok())
    }

    pub(crate) fn client(&self) -> &str {
        &self.client
    }

    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// The request id, for logs and for the plugins (lossy if a client sent a non-UTF-8 one).
    pub(crate) fn request_id(&self) -> &str {
        self.request_id.as_str()
    }

    /// The request id, to be kept by what logs under it.
    pub(crate) fn request_id_handle(&self) -> &RequestId {
        &self.request_id
    }

    /// The WIT record of the request, for a hook that takes it whole.
    pub fn record(&self) -> RequestHead {
        RequestHead {
            method: self.parts.method.as_str().to_owned(),
            path: self.parts.uri.path().to_owned(),
            query: self.parts.uri.query().map(str::to_owned),
            authority: self.authority().map(str::to_owned),
            headers: header_list(&self.parts.headers),
            client_address: self.client.to_string(),
            route: self.route.to_string(),
            request_id: self.request_id().to_owned(),
        }
    }
}

/// Whether RFC 9110 gives a request's content a meaning with `method`: not for `GET`,
/// `HEAD`, `DELETE` ("no generally defined semantics", which "might lead some
/// implementations to reject the request") and `TRACE` (a client "MUST NOT send content").
fn has_content(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::TRACE
    )
}

/// Checks a cache key or key part a plugin gave: at most [`MAX_CACHE_KEY_BYTES`], and no
/// control characters (a key is text an operator names to purge it).
fn check_key_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_CACHE_KEY_BYTES {
        return Err(format!(
            "the {what} is {} bytes (at most {MAX_CACHE_KEY_BYTES})",
            text.len()
        ));
    }
    if let Some(at) = text.find(char::is_control) {
        return Err(format!("the {what} has a control character at byte {at}"));
    }
    Ok(())
}

/// An empty text, shared rather than allocated for each placeholder.
fn empty() -> Arc<str> {
    static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// The WIT record of a response head.
pub(crate) fn response_record(status: StatusCode, headers: &HeaderMap) -> ResponseHead {
    ResponseHead {
        status: status.as_u16(),
        headers: header_list(headers),
    }
}

/// Every header as the WIT records carry them.
pub(crate) fn header_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RequestView {
        let (mut parts, ()) = request::Request::get("/a/b?x=1")
            .header("host", "api.example.com")
            .header("x-tag", "one")
            .header("x-tag", "two")
            .body(())
            .expect("request")
            .into_parts();
        parts.extensions.insert(7_u32);
        RequestView::new(
            parts,
            Some(HeaderValue::from_static("api.example.com")),
            Arc::from("10.0.0.7:50412"),
            Arc::from("api"),
            &HeaderValue::from_static("id-1"),
            true,
        )
    }

    #[test]
    fn the_record_carries_every_field_and_header() {
        let record = view().record();
        assert_eq!(record.method, "GET");
        assert_eq!(record.path, "/a/b");
        assert_eq!(record.query.as_deref(), Some("x=1"));
        assert_eq!(record.authority.as_deref(), Some("api.example.com"));
        assert_eq!(record.client_address, "10.0.0.7:50412");
        assert_eq!(record.route, "api");
        assert_eq!(record.request_id, "id-1");
        let tags: Vec<&[u8]> = record
            .headers
            .iter()
            .filter(|(n, _)| n == "x-tag")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(tags, [b"one".as_slice(), b"two".as_slice()]);
    }

    #[test]
    fn request_ids_are_text_and_a_client_id_that_is_not_utf8_is_made_lossy() {
        assert_eq!(view().request_id(), "id-1");
        let (parts, ()) = request::Request::new(()).into_parts();
        let sent = HeaderValue::from_bytes(b"id-\xff-\xc3\xa9").expect("obs-text is allowed");
        let lossy = RequestView::new(parts, None, Arc::from(""), Arc::from(""), &sent, false);
        assert_eq!(lossy.request_id(), "id-\u{fffd}-\u{e9}");
        assert_eq!(lossy.record().request_id, "id-\u{fffd}-\u{e9}");
        assert_eq!(RequestView::placeholder().request_id(), "");
    }

    #[test]
    fn a_client_request_id_is_copied_and_weirs_own_is_shared() {
        // A client's id, a slice of what hyper read from the connection.
        let read = bytes::Bytes::from(b"GET / HTTP/1.1\r\nx-request-id: abc-123\r\n".to_vec());
        let sent = HeaderValue::from_maybe_shared(read.slice(30..37)).expect("header value");
        let view = |ours| {
            let (parts, ()) = request::Request::new(()).into_parts();
            RequestView::new(parts, None, Arc::from(""), Arc::from(""), &sent, ours)
        };
        let client = view(false);
        assert_eq!(client.request_id(), "abc-123");
        assert_ne!(client.request_id().as_ptr(), sent.as_bytes().as_ptr());
        let ours = view(true);
        assert_eq!(ours.request_id(), "abc-123");
        assert_eq!(ours.request_id().as_ptr(), sent.as_bytes().as_ptr());
    }

    #[test]
    fn split_off_parts_sends_the_extensions_and_keeps_a_copy_of_the_head() {
        let mut view = view();
        let sent = view.split_off_parts();
        assert_eq!(sent.extensions.get::<u32>(), Some(&7));
        assert_eq!(view.parts().extensions.get::<u32>(), None);
        assert_eq!(view.parts().uri, sent.uri);
        assert_eq!(view.parts().headers, sent.headers);
        assert_eq!(view.parts().method, sent.method);
    }

    fn set(name: &str) -> HeaderOp {
        HeaderOp::Set((name.into(), b"1".to_vec()))
    }

    #[test]
    fn response_changes_are_kept_per_plugin_and_taken_in_reverse() {
        let mut view = view();
        // Plugin 0 leaves two changes in two calls of the method, plugin 1 none, plugin 2 one.
        view.leave(vec![set("a")], ROOM).expect("room");
        view.leave(vec![set("b")], ROOM).expect("room");
        let left = view.take_leaving();
        view.keep_left(0, left);
        let nothing = view.take_leaving();
        view.keep_left(1, nothing);
        view.leave(vec![set("c")], ROOM).expect("room");
        let left = view.take_leaving();
        view.keep_left(2, left);
        assert!(view.has_left());

        assert_eq!(view.take_left(2).map(|ops| ops.len()), Some(1));
        assert!(view.take_left(1).is_none());
        assert_eq!(view.take_left(0).map(|ops| ops.len()), Some(2));
        assert!(!view.has_left());
    }

    #[test]
    fn changes_of_plugins_the_response_does_not_reach_are_dropped() {
        let mut view = view();
        for plugin in 0..3 {
            view.keep_left(plugin, vec![set("x")]);
        }
        // Plugin 1 answered from a body hook: only plugin 0 sees the response.
        view.drop_left_from(1);
        assert!(view.take_left(2).is_none());
        assert!(view.take_left(1).is_none());
        assert!(view.take_left(0).is_some());
    }

    /// Room enough for any number of `set` below.
    const ROOM: usize = usize::MAX;

    #[test]
    fn one_call_may_leave_at_most_the_limit() {
        let mut view = view();
        view.leave(vec![set("a"); MAX_LEFT_PER_CALL - 1], ROOM)
            .expect("room");
        let refused = view
            .leave(vec![set("b"); 2], ROOM)
            .expect_err("one too many");
        assert!(refused.starts_with("257 changes"), "{refused}");
        view.leave(vec![set("c")], ROOM).expect("exactly the limit");
        assert_eq!(view.take_leaving().len(), MAX_LEFT_PER_CALL);
        // The next call starts from nothing.
        view.leave(vec![set("d")], ROOM).expect("room");
    }

    #[test]
    fn one_call_may_leave_at_most_its_room_in_all_its_crossings() {
        let mut view = view();
        let op = HeaderOp::Set(("x-left".into(), vec![b'l'; 1000]));
        let each = size_of::<HeaderOp>() + "x-left".len() + 1000;
        // Three crossings of one change each fill the room exactly; a fourth passes it.
        for _ in 0..3 {
            view.leave(vec![op.clone()], 3 * each).expect("room");
        }
        let refused = view
            .leave(vec![HeaderOp::Remove("a".into())], 3 * each)
            .expect_err("past the room");
        assert!(refused.contains("at most"), "{refused}");
        assert_eq!(
            view.take_leaving().len(),
            3,
            "the refused change is not kept"
        );
        // The next call starts from nothing.
        view.leave(vec![op.clone(), op.clone(), op], 3 * each)
            .expect("room");
    }

    fn plugin_key(view: &RequestView) -> Option<&PluginKey> {
        view.parts().extensions.get::<PluginKey>()
    }

    #[test]
    fn cache_key_changes_go_into_the_extensions_the_cache_reads() {
        let mut view = view();
        assert_eq!(plugin_key(&view), None, "no plugin, no key of theirs");
        view.add_cache_key("tenant-a".into()).expect("a part");
        view.set_cache_key("http://api.example.com/a/b".into())
            .expect("a key");
        view.add_cache_key("gold".into()).expect("a part");
        // A later set replaces the key; the parts stay, in order.
        view.set_cache_key("http://api.example.com/c".into())
            .expect("a key");
        let expected = PluginKey {
            replaced: Some("http://api.example.com/c".into()),
            added: vec!["tenant-a".into(), "gold".into()],
        };
        assert_eq!(plugin_key(&view), Some(&expected));
        // They go upstream with the request, where the cache looks them up.
        let sent = view.split_off_parts();
        assert_eq!(sent.extensions.get::<PluginKey>(), Some(&expected));
    }

    #[test]
    fn cache_keys_and_parts_are_bounded() {
        let mut view = view();
        let longest = "k".repeat(MAX_CACHE_KEY_BYTES);
        view.set_cache_key(longest.clone())
            .expect("exactly the limit");
        view.add_cache_key(longest.clone())
            .expect("exactly the limit");
        let longer = format!("{longest}k");
        let refused = view.set_cache_key(longer.clone()).expect_err("too long");
        assert!(refused.contains("1025 bytes"), "{refused}");
        assert!(view.add_cache_key(longer).is_err());
        // Multi-byte characters count in bytes.
        assert!(view.add_cache_key("é".repeat(513)).is_err());
        for control in ["a\rb", "a\nb", "a\0b", "\x7f", "tab\there", "\u{85}"] {
            assert!(view.set_cache_key(control.into()).is_err(), "{control:?}");
            assert!(view.add_cache_key(control.into()).is_err(), "{control:?}");
        }
        // Nothing refused was kept.
        let key = plugin_key(&view).expect("a key");
        assert_eq!(key.replaced.as_deref(), Some(longest.as_str()));
        assert_eq!(key.added, [longest]);
    }

    #[test]
    fn a_request_takes_at_most_the_limit_of_parts_from_every_plugin_together() {
        let mut view = view();
        for i in 0..MAX_CACHE_KEY_PARTS {
            view.add_cache_key(format!("part-{i}")).expect("room");
        }
        let refused = view.add_cache_key("one-more".into()).expect_err("full");
        assert!(refused.contains("16 parts"), "{refused}");
        assert_eq!(
            plugin_key(&view).map(|k| k.added.len()),
            Some(MAX_CACHE_KEY_PARTS)
        );
        // Setting the key is not a part: still allowed.
        view.set_cache_key("k".into()).expect("a key");
    }

    #[test]
    fn a_failed_call_s_cache_key_changes_are_put_back() {
        let mut view = view();
        // A call that fails after changes, on a request no plugin had keyed: none are left.
        let before = view.cache_key();
        view.set_cache_key("dropped".into()).expect("a key");
        view.add_cache_key("dropped".into()).expect("a part");
        view.restore_cache_key(before);
        assert_eq!(plugin_key(&view), None);
        // After a call that kept its changes, a failing one goes back to them.
        view.add_cache_key("kept".into()).expect("a part");
        let before = view.cache_key();
        view.set_cache_key("dropped".into()).expect("a key");
        view.add_cache_key("dropped".into()).expect("a part");
        view.restore_cache_key(before);
        let key = plugin_key(&view).expect("the kept part");
        assert_eq!(
            (key.replaced.as_deref(), key.added.as_slice()),
            (None, &["kept".to_owned()][..])
        );
    }

    #[test]
    fn a_staged_method_and_body_apply_when_the_call_returns() {
        let mut view = view();
        view.parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        view.parts
            .headers
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        view.set_body(b"frame".to_vec()).expect("small");
        view.set_method("POST").expect("a token");
        // Staged: the call still sees the request as it was.
        assert_eq!(view.parts().method, Method::GET);
        view.apply_staged().expect("a POST may carry a body");
        assert_eq!(view.parts().method, Method::POST);
        let headers = &view.parts().headers;
        assert_eq!(
            headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
        assert_eq!(view.take_body().as_deref(), Some(&b"frame"[..]));
        assert_eq!(view.take_body(), None, "taken once");
    }

    #[test]
    fn a_failed_call_s_method_and_body_are_dropped() {
        let mut view = view();
        view.set_method("PUT").expect("a token");
        view.set_body(b"kept".to_vec()).expect("small");
        view.apply_staged().expect("a PUT may carry a body");
        // The next call fails after staging others: the first call's stay.
        view.set_method("PATCH").expect("a token");
        view.set_body(b"dropped".to_vec()).expect("small");
        view.drop_staged();
        view.apply_staged().expect("nothing staged");
        assert_eq!(view.parts().method, Method::PUT);
        assert_eq!(view.take_body().as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn methods_and_bodies_are_checked() {
        let mut request = view();
        for bad in [
            "",
            "GE T",
            "G\r\nET",
            "GET/",
            "CONNECT",
            &"M".repeat(MAX_METHOD_BYTES + 1),
        ] {
            assert!(request.set_method(bad).is_err(), "{bad:?}");
        }
        request
            .set_method(&"M".repeat(MAX_METHOD_BYTES))
            .expect("exactly the limit");
        request
            .set_method("purge")
            .expect("methods are case-sensitive tokens");
        request.drop_staged();
        let refused = request
            .set_body(vec![0; MAX_SUPPLIED_BODY_BYTES + 1])
            .expect_err("too large");
        assert!(refused.contains("1048577 bytes"), "{refused}");
        request
            .set_body(vec![0; MAX_SUPPLIED_BODY_BYTES])
            .expect("exactly the limit");
        request.drop_staged();

        // A body on a method that gives content no meaning fails the call, changing nothing.
        for method in ["GET", "HEAD", "DELETE", "TRACE"] {
            let mut request = view();
            request.set_method(method).expect("a token");
            request.set_body(b"x".to_vec()).expect("small");
            let refused = request.apply_staged().expect_err("no content semantics");
            assert!(refused.contains(method), "{refused}");
            assert_eq!(request.parts().method, Method::GET);
            assert_eq!(request.take_body(), None);
        }
        // Nor may a later call make a request that has a plugin's body a GET.
        let mut request = view();
        request.set_method("POST").expect("a token");
        request.set_body(b"x".to_vec()).expect("small");
        request.apply_staged().expect("a POST");
        request.set_method("GET").expect("a token");
        assert!(request.apply_staged().is_err());
        assert_eq!(request.parts().method, Method::POST);
        // An empty body is none: a GET sends no content-length, a POST `0`.
        let mut request = view();
        request.set_body(Vec::new()).expect("empty");
        request.apply_staged().expect("an empty body on a GET");
        assert!(
            request
                .parts()
                .headers
                .get(header::CONTENT_LENGTH)
                .is_none()
        );
        request.set_method("POST").expect("a token");
        request.apply_staged().expect("a POST");
        let length = request.parts().headers.get(header::CONTENT_LENGTH);
        assert_eq!(length.map(|v| v.as_bytes()), Some(&b"0"[..]));
    }

    #[test]
    fn take_parts_leaves_an_empty_head() {
        let mut view = view();
        let sent = view.take_parts();
        assert_eq!(sent.extensions.get::<u32>(), Some(&7));
        assert_eq!(sent.headers.get_all("x-tag").iter().count(), 2);
        assert!(view.parts().headers.is_empty());
    }

    #[test]
    fn the_placeholder_is_empty() {
        let placeholder = RequestView::placeholder();
        assert!(placeholder.parts().headers.is_empty());
        assert_eq!(placeholder.route(), "");
        assert_eq!(placeholder.client(), "");
    }
}
