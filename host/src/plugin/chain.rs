//! A route's filter chain: runs `on-request` in chain order and `on-response` in reverse;
//! then, for plugins that asked for them, `on-request-body` in chain order over the whole
//! request body and `on-response-body` in reverse over the whole response body.
//!
//! Plugins see hyper's own heads (`view`: lent to a 0.3.0 plugin to read on demand, copied
//! into a WIT record for an older plugin or a body hook at each call) and return *changes*.
//! Each change is checked for HTTP validity the moment its plugin returns it, so an invalid
//! one names the plugin that made it, and is then applied to hyper's head, which is both
//! what is sent on and what the next plugin sees. Response header changes a 0.3.1 request
//! hook leaves (`add-response-header-ops`) are kept in the view, tagged with the plugin's
//! place, and applied there in the response phase.
//!
//! What a plugin returns is bounded before any of it is used ([`OutputLimits`]): a local or
//! replacing response's status must be 200 to 599 (a 1xx would be an interim or a
//! protocol switch weir never asked for, and 999 is no status at all); a call may return
//! at most `[server.limits] headers` header changes (or local-reply headers), each header at
//! most `header_bytes`, name and value: a plugin cannot make a head weir would refuse from a
//! client; and a local reply's body or a body hook's replacement is at most the plugin's
//! `max_body_bytes`, the size it is trusted with one way and so the other. A refused output
//! is used not at all (no change of it is applied), counted as `invalid_output` and logged
//! like a failed call.
//!
//! Failure policy: a plugin whose call traps, hits a limit or returns refused output is
//! skipped if it is `fail_open`, otherwise the chain fails and the proxy answers 500. (A call that lost the
//! request or response it was lent fails the chain either way: nothing is left to send.) A chain that names a
//! plugin which is not loaded (missing, or rejected at load) is `unavailable`: the proxy
//! answers 503 rather than run the route without it.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{StatusCode, response};

use super::view::RequestView;
use super::{
    BodyAction, CallError, Filter, HeaderOp, LocalResponse, RequestAction, ResponseAction,
};
use crate::metrics::FailureKind;
use crate::trace::Child;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// What weir takes from a plugin's output: a client's request head's bounds
/// (`[server.limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// One header, name and value, in bytes.
    pub header_bytes: usize,
    /// Header changes one call may return, or headers a local reply may have.
    pub headers: usize,
}

impl OutputLimits {
    /// The bounds `[server.limits]` sets for a client's request.
    pub fn from_limits(limits: &crate::config::Limits) -> OutputLimits {
        OutputLimits {
            header_bytes: limits.header_bytes,
            headers: limits.headers,
        }
    }

    /// A plugin's response status, if weir sends it: 200 to 599. A 1xx is an interim answer
    /// (101 a protocol switch) that weir never asked for: a client would wait for the real
    /// one, or take the connection for a tunnel to nothing.
    pub(crate) fn status(status: u16) -> Result<StatusCode, String> {
        if !(200..=599).contains(&status) {
            return Err(format!(
                "status {status}: a plugin's response must be 200 to 599"
            ));
        }
        StatusCode::from_u16(status).map_err(|e| format!("status: {e}"))
    }

    /// At most `headers` of `what` (a call's header changes, a response's headers).
    pub(crate) fn count(&self, count: usize, what: &str) -> Result<(), String> {
        if count > self.headers {
            return Err(format!(
                "{count} {what}; at most {} are taken ([server.limits] headers)",
                self.headers
            ));
        }
        Ok(())
    }

    /// A header of `size` bytes, name and value, if within `header_bytes`.
    pub(crate) fn header_size(&self, name: &HeaderName, size: usize) -> Result<(), String> {
        if size > self.header_bytes {
            return Err(format!(
                "header {name} is {size} bytes; at most {} are taken ([server.limits] header_bytes)",
                self.header_bytes
            ));
        }
        Ok(())
    }
}

impl Default for OutputLimits {
    fn default() -> OutputLimits {
        OutputLimits::from_limits(&crate::config::Limits::default())
    }
}

/// The plugins of one route, in order.
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Arc<Filter>>,
    /// The route's name, as the plugins are told it.
    route: Arc<str>,
    unavailable: Option<String>,
    any_on_request: bool,
    any_on_response: bool,
    /// The smallest `max_body_bytes` of the plugins with `on-request-body`, if any.
    request_body_limit: Option<usize>,
    /// Whether a plugin is granted clusters for `outbound` requests.
    any_outbound: bool,
    /// Whether a plugin has `on-response-body`.
    any_on_response_body: bool,
    /// What the plugins' output may be.
    limits: OutputLimits,
}

/// What a body hook pass decided.
#[derive(Debug)]
pub enum BodyStep {
    /// Send this body on.
    Continue(Vec<u8>),
    /// A plugin answered.
    Respond {
        /// The plugin's response head, checked.
        head: response::Parts,
        /// The plugin's response body.
        body: Vec<u8>,
        /// How many plugins, from the start of the chain, had passed the request on.
        passed: usize,
    },
}

/// What the request phase decided.
#[derive(Debug)]
pub enum RequestStep {
    /// Send the (changed) request on.
    Continue {
        /// How many plugins, from the start of the chain, passed the request on.
        passed: usize,
    },
    /// A plugin answered; the plugins before it (`passed`) still see the response.
    Respond {
        /// The plugin's response head, checked.
        head: response::Parts,
        /// The plugin's response body.
        body: Vec<u8>,
        /// How many plugins, from the start of the chain, passed the request on.
        passed: usize,
    },
}

/// Why a chain could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A plugin the route needs is not loaded.
    #[error("{0}")]
    Unavailable(String),
    /// A fail-closed plugin trapped or hit a limit.
    #[error(transparent)]
    Failed(#[from] CallError),
    /// A plugin returned a change that is not valid HTTP.
    #[error("plugin {plugin}: {what}")]
    InvalidChange {
        /// The plugin's name.
        plugin: Arc<str>,
        /// What was invalid.
        what: String,
    },
}

impl Chain {
    /// A chain of loaded plugins.
    pub fn new(plugins: Vec<Arc<Filter>>) -> Chain {
        Chain {
            any_on_request: plugins.iter().any(|p| p.has_on_request()),
            any_on_response: plugins
                .iter()
                .any(|p| p.has_on_response() || p.has_on_response_body()),
            request_body_limit: plugins
                .iter()
                .filter(|p| p.has_on_request_body())
                .map(|p| p.info.settings.max_body_bytes)
                .min(),
            any_outbound: plugins.iter().any(|p| !p.info.settings.clusters.is_empty()),
            any_on_response_body: plugins.iter().any(|p| p.has_on_response_body()),
            plugins,
            route: Arc::from(""),
            unavailable: None,
            limits: OutputLimits::default(),
        }
    }

    /// The chain, taking plugins' output within `limits`.
    pub fn limited(self, limits: OutputLimits) -> Chain {
        Chain { limits, ..self }
    }

    /// The chain, on the route named `route`.
    pub fn on_route(self, route: &str) -> Chain {
        Chain {
            route: Arc::from(route),
            ..self
        }
    }

    /// The name of the plugin at `index` in the chain.
    pub fn plugin_name(&self, index: usize) -> Option<&Arc<str>> {
        self.plugins.get(index).map(|p| &p.info.name)
    }

    /// The route's name, as the plugins are told it.
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// A chain that refuses traffic because a plugin it needs is not loaded.
    pub fn unavailable(reason: String) -> Chain {
        Chain {
            unavailable: Some(reason),
            ..Chain::default()
        }
    }

    /// Whether requests on this route need the chain at all: it has a hook to call, or it
    /// must refuse them.
    pub fn is_active(&self) -> bool {
        self.unavailable.is_some()
            || self.any_on_request
            || self.any_on_response
            || self.request_body_limit.is_some()
    }

    /// Whether a plugin may send `outbound` requests: the view needs the proxy's
    /// [`Outbound`](super::outbound::Outbound).
    pub fn needs_outbound(&self) -> bool {
        self.any_outbound
    }

    /// Whether any plugin has an `on-response-body` hook: the response body must reach it
    /// plain.
    pub fn has_response_body_hooks(&self) -> bool {
        self.any_on_response_body
    }

    /// Whether any plugin has an `on-response` or `on-response-body` hook.
    pub fn has_response_hooks(&self) -> bool {
        self.any_on_response
    }

    /// Whether `request` needs the response phase: a plugin has a response hook, or one
    /// left response header changes in the request phase.
    pub fn needs_response_phase(&self, request: &RequestView) -> bool {
        self.any_on_response || request.has_left()
    }

    /// The largest request body the chain's `on-request-body` hooks accept, if any plugin
    /// has one: a larger body is refused with 413.
    pub fn request_body_limit(&self) -> Option<usize> {
        self.request_body_limit
    }

    /// The largest response body the `on-response-body` hooks of the first `passed`
    /// plugins accept, if any has one: a larger body passes through untouched.
    pub fn response_body_limit(&self, passed: usize) -> Option<usize> {
        self.plugins[..passed.min(self.plugins.len())]
            .iter()
            .filter(|p| p.has_on_response_body())
            .map(|p| p.info.settings.max_body_bytes)
            .min()
    }

    /// Runs `on-request-body` across the chain over the whole request body. Header changes
    /// go into the request; a replaced body updates its `content-length`.
    pub async fn on_request_body(
        &self,
        request: &mut RequestView,
        mut body: Vec<u8>,
    ) -> Result<BodyStep, ChainError> {
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.has_on_request_body() {
                continue;
            }
            let span = hook_span(request, plugin, "on-request-body");
            let result = plugin.on_request_body(request, &body).await;
            end_span(span, &result);
            match result {
                Ok(BodyAction::Continue(changes)) => {
                    let checked = checked_ops(changes.headers, &self.limits)
                        .and_then(|ops| Ok((ops, checked_body(plugin, changes.body)?)));
                    match checked.and_then(|(ops, replacement)| {
                        apply(ops, &mut request.parts.headers)?;
                        Ok(replacement)
                    }) {
                        Ok(Some(replacement)) => {
                            body = replacement;
                            set_length(body.len(), &mut request.parts.headers);
                        }
                        Ok(None) => {}
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Ok(BodyAction::Respond(local)) => {
                    match local_response(plugin, local, &self.limits) {
                        Ok((head, body)) => {
                            return Ok(BodyStep::Respond {
                                head,
                                body,
                                passed: i,
                            });
                        }
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Err(e) => skip_or_fail(plugin, e, request)?,
            }
        }
        Ok(BodyStep::Continue(body))
    }

    /// Runs `on-response-body` across the first `passed` plugins in reverse over the whole
    /// response body; returns the body to send. `content-length` is kept true.
    pub async fn on_response_body(
        &self,
        passed: usize,
        request: &RequestView,
        parts: &mut response::Parts,
        mut body: Vec<u8>,
    ) -> Result<Vec<u8>, ChainError> {
        for plugin in self.plugins[..passed.min(self.plugins.len())].iter().rev() {
            if !plugin.has_on_response_body() {
                continue;
            }
            let span = hook_span(request, plugin, "on-response-body");
            let result = plugin.on_response_body(request, parts, &body).await;
            end_span(span, &result);
            match result {
                Ok(BodyAction::Continue(changes)) => {
                    let checked = checked_ops(changes.headers, &self.limits)
                        .and_then(|ops| Ok((ops, checked_body(plugin, changes.body)?)));
                    match checked.and_then(|(ops, replacement)| {
                        apply(ops, &mut parts.headers)?;
                        Ok(replacement)
                    }) {
                        Ok(Some(replacement)) => body = replacement,
                        Ok(None) => {}
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Ok(BodyAction::Respond(local)) => {
                    match local_response(plugin, local, &self.limits) {
                        Ok((replacement, local_body)) => {
                            parts.status = replacement.status;
                            parts.headers = replacement.headers;
                            body = local_body;
                        }
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Err(e) => skip_or_fail(plugin, e, request)?,
            }
            set_length(body.len(), &mut parts.headers);
        }
        Ok(body)
    }

    /// Runs `on-request` across the chain. Each plugin's changes go into the request, so the
    /// next plugin sees them.
    pub async fn on_request(&self, request: &mut RequestView) -> Result<RequestStep, ChainError> {
        if let Some(reason) = &self.unavailable {
            return Err(ChainError::Unavailable(reason.clone()));
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.has_on_request() {
                continue;
            }
            let span = hook_span(request, plugin, "on-request");
            let result = plugin.on_request(request).await;
            end_span(span, &result);
            match result {
                // What the call left for the response is kept only if it passed the request on.
                Ok((RequestAction::Continue(changes), left)) => {
                    let checked = checked_ops(changes.headers, &self.limits).and_then(|ops| {
                        let uri = match changes.path {
                            Some(target) => Some(checked_path(target, &request.parts.uri)?),
                            None => None,
                        };
                        Ok((ops, uri))
                    });
                    let applied = checked.and_then(|(ops, uri)| {
                        apply(ops, &mut request.parts.headers)?;
                        if let Some(uri) = uri {
                            request.parts.uri = uri;
                        }
                        Ok(())
                    });
                    match applied {
                        Ok(()) => request.keep_left(i, left),
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Ok((RequestAction::Respond(local), _)) => {
                    match local_response(plugin, local, &self.limits) {
                        Ok((head, body)) => {
                            return Ok(RequestStep::Respond {
                                head,
                                body,
                                passed: i,
                            });
                        }
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Err(e) => skip_or_fail(plugin, e, request)?,
            }
        }
        Ok(RequestStep::Continue {
            passed: self.plugins.len(),
        })
    }

    /// Runs the response phase across the first `passed` plugins in reverse: at each
    /// plugin's place, the response header changes it left in the request phase, then its
    /// `on-response`, applying every change to `parts`. Returns the body of a local response
    /// that replaced the upstream's, if a plugin answered. `request` is `&mut` to be lent to
    /// each call (0.3.x plugins read it through a handle) and to take the changes left in it;
    /// its head is unchanged afterwards.
    pub async fn on_response(
        &self,
        passed: usize,
        request: &mut RequestView,
        parts: &mut response::Parts,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        let mut body = None;
        let passed = passed.min(self.plugins.len());
        request.drop_left_from(passed);
        for (i, plugin) in self.plugins[..passed].iter().enumerate().rev() {
            if let Some(ops) = request.take_left(i)
                && let Err(what) =
                    checked_ops(ops, &self.limits).and_then(|ops| apply(ops, &mut parts.headers))
            {
                refuse(plugin, what, request)?;
            }
            if !plugin.has_on_response() {
                continue;
            }
            let span = hook_span(request, plugin, "on-response");
            let result = plugin.on_response(request, parts).await;
            end_span(span, &result);
            match result {
                Ok((ResponseAction::Continue(mut ops), left)) => {
                    ops.extend(left);
                    if let Err(what) = checked_ops(ops, &self.limits)
                        .and_then(|ops| apply(ops, &mut parts.headers))
                    {
                        refuse(plugin, what, request)?;
                    }
                }
                Ok((ResponseAction::Respond(local), _)) => {
                    match local_response(plugin, local, &self.limits) {
                        Ok((replacement, local_body)) => {
                            parts.status = replacement.status;
                            parts.headers = replacement.headers;
                            body = Some(local_body);
                        }
                        Err(what) => refuse(plugin, what, request)?,
                    }
                }
                Err(e) => skip_or_fail(plugin, e, request)?,
            }
        }
        Ok(body)
    }
}

/// The span of one hook call, when the request is traced and sampled.
fn hook_span(request: &RequestView, plugin: &Filter, hook: &'static str) -> Option<Child> {
    let child = request.trace()?.child(
        || format!("plugin {} {hook}", plugin.info.name),
        SpanKind::Internal,
    )?;
    Some(child.with(vec![
        KeyValue::new("weir.plugin", plugin.info.name.to_string()),
        KeyValue::new("weir.plugin.hook", hook),
    ]))
}

/// Ends a hook call's span with its outcome.
fn end_span<T>(span: Option<Child>, result: &Result<T, CallError>) {
    if let Some(span) = span {
        let error = result
            .as_ref()
            .err()
            .map(|e| format!("{}: {}", e.kind.label(), e.message));
        span.end(Vec::new(), error);
    }
}

/// Sets `content-length` to `len`.
pub(crate) fn set_length(len: usize, map: &mut HeaderMap) {
    map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    map.remove(http::header::TRANSFER_ENCODING);
}

fn skip_or_fail(
    plugin: &Filter,
    error: CallError,
    request: &RequestView,
) -> Result<(), ChainError> {
    // One line per kind of failure per 10 s, saying how many were held back since.
    if let Some(repeated) = plugin.failure_lines.admit_host_line(error.kind.label()) {
        tracing::warn!(
            plugin = &*plugin.info.name,
            hash = %plugin.info.hash,
            request_id = request.request_id(),
            fail_open = plugin.info.settings.fail_open,
            error = %error.message,
            repeated = (repeated > 0).then_some(repeated),
            "plugin call failed"
        );
    }
    if plugin.info.settings.fail_open && !error.lost_view {
        Ok(())
    } else {
        Err(ChainError::Failed(error))
    }
}

/// A plugin's output that weir will not use: counted against the plugin and logged (one
/// line per plugin per 10 s, as a failed call's); then the plugin is skipped if it is
/// `fail_open` (none of the output is used), else the chain fails.
fn refuse(plugin: &Filter, what: String, request: &RequestView) -> Result<(), ChainError> {
    plugin.metrics.failed(FailureKind::InvalidOutput);
    if let Some(repeated) = plugin
        .failure_lines
        .admit_host_line(FailureKind::InvalidOutput.label())
    {
        tracing::warn!(
            plugin = &*plugin.info.name,
            hash = %plugin.info.hash,
            request_id = request.request_id(),
            fail_open = plugin.info.settings.fail_open,
            error = %format_args!("invalid output: {what}"),
            repeated = (repeated > 0).then_some(repeated),
            "plugin call failed"
        );
    }
    if plugin.info.settings.fail_open {
        Ok(())
    } else {
        Err(ChainError::InvalidChange {
            plugin: plugin.info.name.clone(),
            what,
        })
    }
}

/// A header change, checked.
enum Change {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    // A plugin sets the same few names on every request: each thread keeps the names it
    // made last, so a repeated one is a look-up and a reference count, not a validation,
    // a lower-casing and (for a name hyper does not know) an allocation.
    let slot = name_slot(name);
    let cached = NAMES.with_borrow(|names| match &names[slot] {
        Some((made_from, made)) if **made_from == *name => Some(made.clone()),
        _ => None,
    });
    if let Some(made) = cached {
        return Ok(made);
    }
    // from_bytes lower-cases, so `X-Foo` and `x-foo` are one header.
    let made = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    if name.len() <= MAX_CACHED_NAME {
        NAMES.with_borrow_mut(|names| names[slot] = Some((name.into(), made.clone())));
    }
    Ok(made)
}

/// The header names plugins made last on this thread, each under a slot its text hashes
/// to (a name that hashes to a taken slot replaces the one there).
type NameCache = [Option<(Box<str>, HeaderName)>; NAME_SLOTS];

/// A power of two ([`name_slot`] takes the top bits of a product).
const NAME_SLOTS: usize = 64;

/// Longer names are made every time: a plugin making long names cannot make each thread
/// hold more than a few kilobytes of them.
const MAX_CACHED_NAME: usize = 64;

thread_local! {
    static NAMES: std::cell::RefCell<NameCache> =
        const { std::cell::RefCell::new([const { None }; NAME_SLOTS]) };
}

/// The slot `name` is kept in: its length and its first and last eight bytes, mixed by one
/// multiplication (a name's bytes one by one cost more than the look-up saves), so names
/// that share a start (`x-ratelimit-limit`, `x-ratelimit-reset`) land apart.
fn name_slot(name: &str) -> usize {
    let bytes = name.as_bytes();
    let word = |part: &[u8]| {
        part.try_into()
            .map(u64::from_le_bytes)
            .unwrap_or_else(|_| part.iter().fold(0, |w, &b| (w << 8) | u64::from(b)))
    };
    let head = word(bytes.get(..8).unwrap_or(bytes));
    let tail = word(
        bytes
            .get(bytes.len().saturating_sub(8)..)
            .unwrap_or_default(),
    );
    let mixed =
        (head ^ tail.rotate_left(29) ^ bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> (64 - NAME_SLOTS.trailing_zeros())) as usize
}

/// The plugin's header as hyper's, without a copy of the value (the bytes were lifted out of
/// the plugin's memory already), if it is valid and within `header_bytes`.
fn header(
    name: &str,
    value: Vec<u8>,
    limits: &OutputLimits,
) -> Result<(HeaderName, HeaderValue), String> {
    let name = header_name(name)?;
    limits.header_size(&name, name.as_str().len() + value.len())?;
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

/// A call's header changes, each checked, before any is applied.
fn checked_ops(ops: Vec<HeaderOp>, limits: &OutputLimits) -> Result<Vec<Change>, String> {
    limits.count(ops.len(), "header changes in one call")?;
    // A loop into a vector of the right size: `collect` into a `Result` (an in-place
    // collect through a short-circuiting adapter) cost about 200 instructions more a change
    // (BENCHMARKS.md, "Session 44").
    let mut changes = Vec::with_capacity(ops.len());
    for op in ops {
        changes.push(match op {
            HeaderOp::Set((name, value)) => {
                let (name, value) = header(&name, value, limits)?;
                Change::Set(name, value)
            }
            HeaderOp::Append((name, value)) => {
                let (name, value) = header(&name, value, limits)?;
                Change::Append(name, value)
            }
            HeaderOp::Remove(name) => Change::Remove(header_name(&name)?),
        });
    }
    Ok(changes)
}

/// Applies checked changes. `HeaderMap` refuses (rather than panics) only past its own
/// capacity (32,768), which `[server.limits] headers` would have to be set near to reach.
fn apply(changes: Vec<Change>, map: &mut HeaderMap) -> Result<(), String> {
    let full = |_| "the head would pass the most headers a head can hold".to_owned();
    for change in changes {
        match change {
            Change::Set(name, value) => {
                map.try_insert(name, value).map_err(full)?;
            }
            Change::Append(name, value) => {
                map.try_append(name, value).map_err(full)?;
            }
            Change::Remove(name) => {
                map.remove(&name);
            }
        }
    }
    Ok(())
}

/// A body hook's replacement body, if it is at most the plugin's `max_body_bytes`.
fn checked_body(plugin: &Filter, body: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, String> {
    let limit = plugin.info.settings.max_body_bytes;
    match body {
        Some(body) if body.len() > limit => Err(format!(
            "a body of {} bytes; at most {limit} are taken (max_body_bytes)",
            body.len()
        )),
        body => Ok(body),
    }
}

/// A new request target (`/path?query`), checked, as the whole URI.
fn checked_path(target: String, uri: &http::Uri) -> Result<http::Uri, String> {
    let bad = |e: &dyn std::fmt::Display| format!("path {target:?}: {e}");
    if !target.starts_with('/') {
        return Err(bad(&"must start with /"));
    }
    let path_and_query = PathAndQuery::try_from(target.as_str()).map_err(|e| bad(&e))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts).map_err(|e| bad(&e))
}

/// Checks a plugin's local response and turns it into hyper's parts.
fn local_response(
    plugin: &Filter,
    local: LocalResponse,
    limits: &OutputLimits,
) -> Result<(response::Parts, Vec<u8>), String> {
    let status = OutputLimits::status(local.status)?;
    limits.count(local.headers.len(), "headers")?;
    let limit = plugin.info.settings.max_body_bytes;
    if local.body.len() > limit {
        return Err(format!(
            "a response body of {} bytes; at most {limit} are taken (max_body_bytes)",
            local.body.len()
        ));
    }
    let (mut parts, ()) = response::Response::new(()).into_parts();
    parts.status = status;
    let _ = parts.headers.try_reserve(local.headers.len());
    for (name, value) in local.headers {
        let (name, value) = header(&name, value, limits)?;
        parts
            .headers
            .try_append(name, value)
            .map_err(|_| "the head would pass the most headers a head can hold".to_owned())?;
    }
    plugin.metrics.local_replies.inc();
    Ok((parts, local.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_made_once_per_thread_and_checked_every_time() {
        let first = header_name("X-RateLimit-Limit").unwrap();
        assert_eq!(first.as_str(), "x-ratelimit-limit");
        // Made again from the cache: the same name, sharing its bytes.
        let again = header_name("X-RateLimit-Limit").unwrap();
        assert_eq!(again, first);
        assert_eq!(again.as_str().as_ptr(), first.as_str().as_ptr());
        // Another spelling is another entry, for the same header.
        assert_eq!(header_name("x-ratelimit-limit").unwrap(), first);
        // Invalid names are refused every time, and never cached.
        for _ in 0..2 {
            assert!(header_name("bad name").is_err());
            assert!(header_name("").is_err());
        }
        // Every slot taken and taken again: each look-up still answers its own name.
        for round in 0..2 {
            for i in 0..(3 * NAME_SLOTS) {
                let name = format!("x-name-{i}");
                assert_eq!(header_name(&name).unwrap().as_str(), name, "round {round}");
            }
        }
        assert_ne!(
            name_slot("x-ratelimit-limit"),
            name_slot("x-ratelimit-reset")
        );
        // The longest name kept is kept; one byte more is made, not kept.
        let kept = |name: &str| {
            NAMES.with_borrow(|names| {
                names[name_slot(name)]
                    .as_ref()
                    .is_some_and(|(made_from, _)| **made_from == *name)
            })
        };
        let longest = "x".repeat(MAX_CACHED_NAME);
        let long = "y".repeat(MAX_CACHED_NAME + 1);
        assert_eq!(header_name(&longest).unwrap().as_str(), longest);
        assert_eq!(header_name(&long).unwrap().as_str(), long);
        assert!(kept(&longest));
        assert!(!kept(&long));
    }
}
