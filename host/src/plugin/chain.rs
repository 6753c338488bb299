//! A route's filter chain: runs `on-request` in chain order and `on-response` in reverse;
//! then, for plugins that asked for them, `on-request-body` in chain order over the whole
//! request body and `on-response-body` in reverse over the whole response body.
//!
//! Plugins see heads built from hyper's types once per phase (copied into a 0.2.0 or 0.1.0
//! plugin at each call, lent to a 0.3.0 plugin to read on demand) and return *changes*.
//! Each change is checked for HTTP validity the moment its plugin returns it, so an invalid
//! one names the plugin that made it, and is then applied twice: to hyper's parts (what is
//! sent on) and to the head (what the next plugin sees). Nothing is rebuilt when nothing
//! changes.
//!
//! Failure policy: a plugin whose call traps or hits a limit is skipped if it is
//! `fail_open`, otherwise the chain fails and the proxy answers 500. A chain that names a
//! plugin which is not loaded (missing, or rejected at load) is `unavailable`: the proxy
//! answers 503 rather than run the route without it.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{StatusCode, request, response};

use super::{
    BodyAction, CallError, HeaderOp, LocalResponse, Plugin, RequestAction, RequestHead,
    ResponseAction, ResponseHead,
};

/// A header list as the WIT records carry it.
type HeaderList = Vec<(String, Vec<u8>)>;

/// The plugins of one route, in order.
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
    unavailable: Option<String>,
    any_on_request: bool,
    any_on_response: bool,
    /// The smallest `max_body_bytes` of the plugins with `on-request-body`, if any.
    request_body_limit: Option<usize>,
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
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Chain {
        Chain {
            any_on_request: plugins.iter().any(|p| p.has_on_request()),
            any_on_response: plugins
                .iter()
                .any(|p| p.has_on_response() || p.has_on_response_body()),
            request_body_limit: plugins
                .iter()
                .filter(|p| p.has_on_request_body())
                .map(|p| p.settings.max_body_bytes)
                .min(),
            plugins,
            unavailable: None,
        }
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

    /// Whether any plugin has an `on-response` or `on-response-body` hook.
    pub fn has_response_hooks(&self) -> bool {
        self.any_on_response
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
            .map(|p| p.settings.max_body_bytes)
            .min()
    }

    /// Runs `on-request-body` across the chain over the whole request body. Header changes
    /// go into `parts` and `head`; a replaced body updates `content-length` in both.
    pub async fn on_request_body(
        &self,
        head: &mut RequestHead,
        parts: &mut request::Parts,
        mut body: Vec<u8>,
    ) -> Result<BodyStep, ChainError> {
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.has_on_request_body() {
                continue;
            }
            match plugin.on_request_body(head, &body).await {
                Ok(BodyAction::Continue(changes)) => {
                    for op in changes.headers {
                        apply_op(plugin, op, &mut head.headers, &mut parts.headers)?;
                    }
                    if let Some(replacement) = changes.body {
                        body = replacement;
                        set_length(body.len(), &mut head.headers, &mut parts.headers);
                    }
                }
                Ok(BodyAction::Respond(local)) => {
                    let (head, body) = local_response(plugin, local)?;
                    return Ok(BodyStep::Respond {
                        head,
                        body,
                        passed: i,
                    });
                }
                Err(e) => skip_or_fail(plugin, e, &head.request_id)?,
            }
        }
        Ok(BodyStep::Continue(body))
    }

    /// Runs `on-response-body` across the first `passed` plugins in reverse over the whole
    /// response body; returns the body to send. `content-length` is kept true.
    pub async fn on_response_body(
        &self,
        passed: usize,
        request: &RequestHead,
        parts: &mut response::Parts,
        mut body: Vec<u8>,
    ) -> Result<Vec<u8>, ChainError> {
        let mut head: Option<ResponseHead> = None;
        for plugin in self.plugins[..passed.min(self.plugins.len())].iter().rev() {
            if !plugin.has_on_response_body() {
                continue;
            }
            let head = head.get_or_insert_with(|| response_head(parts));
            match plugin.on_response_body(request, head, &body).await {
                Ok(BodyAction::Continue(changes)) => {
                    for op in changes.headers {
                        apply_op(plugin, op, &mut head.headers, &mut parts.headers)?;
                    }
                    if let Some(replacement) = changes.body {
                        body = replacement;
                    }
                }
                Ok(BodyAction::Respond(local)) => {
                    let (replacement, local_body) = local_response(plugin, local)?;
                    parts.status = replacement.status;
                    parts.headers = replacement.headers;
                    body = local_body;
                    *head = response_head(parts);
                }
                Err(e) => skip_or_fail(plugin, e, &request.request_id)?,
            }
            set_length(body.len(), &mut head.headers, &mut parts.headers);
        }
        Ok(body)
    }

    /// Runs `on-request` across the chain. Each plugin's changes go into `parts` and into
    /// `head`, so the next plugin sees them.
    pub async fn on_request(
        &self,
        head: &mut RequestHead,
        parts: &mut request::Parts,
    ) -> Result<RequestStep, ChainError> {
        if let Some(reason) = &self.unavailable {
            return Err(ChainError::Unavailable(reason.clone()));
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.has_on_request() {
                continue;
            }
            match plugin.on_request(head).await {
                Ok(RequestAction::Continue(changes)) => {
                    for op in changes.headers {
                        apply_op(plugin, op, &mut head.headers, &mut parts.headers)?;
                    }
                    if let Some(target) = changes.path {
                        apply_path(plugin, target, head, parts)?;
                    }
                }
                Ok(RequestAction::Respond(local)) => {
                    let (head, body) = local_response(plugin, local)?;
                    return Ok(RequestStep::Respond {
                        head,
                        body,
                        passed: i,
                    });
                }
                Err(e) => skip_or_fail(plugin, e, &head.request_id)?,
            }
        }
        Ok(RequestStep::Continue {
            passed: self.plugins.len(),
        })
    }

    /// Runs `on-response` across the first `passed` plugins in reverse, applying their
    /// changes to `parts`. Returns the body of a local response that replaced the
    /// upstream's, if a plugin answered. `request` is `&mut` only to be lent to each call
    /// (0.3.0 plugins read it through a handle); it is unchanged afterwards.
    pub async fn on_response(
        &self,
        passed: usize,
        request: &mut RequestHead,
        parts: &mut response::Parts,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        let mut body = None;
        // Copied out only once a plugin actually wants to see it.
        let mut head: Option<ResponseHead> = None;
        for plugin in self.plugins[..passed.min(self.plugins.len())].iter().rev() {
            if !plugin.has_on_response() {
                continue;
            }
            let head = head.get_or_insert_with(|| response_head(parts));
            match plugin.on_response(request, head).await {
                Ok(ResponseAction::Continue(ops)) => {
                    for op in ops {
                        apply_op(plugin, op, &mut head.headers, &mut parts.headers)?;
                    }
                }
                Ok(ResponseAction::Respond(local)) => {
                    let (replacement, local_body) = local_response(plugin, local)?;
                    parts.status = replacement.status;
                    parts.headers = replacement.headers;
                    *head = response_head(parts);
                    body = Some(local_body);
                }
                Err(e) => skip_or_fail(plugin, e, &request.request_id)?,
            }
        }
        Ok(body)
    }
}

/// Sets `content-length` to `len` in the map and the plugins' view.
fn set_length(len: usize, list: &mut HeaderList, map: &mut HeaderMap) {
    map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    map.remove(http::header::TRANSFER_ENCODING);
    list.retain(|(n, _)| n != "content-length" && n != "transfer-encoding");
    list.push(("content-length".to_owned(), len.to_string().into_bytes()));
}

fn skip_or_fail(plugin: &Plugin, error: CallError, request_id: &str) -> Result<(), ChainError> {
    tracing::warn!(
        plugin = &*plugin.name,
        hash = %plugin.hash,
        request_id,
        fail_open = plugin.settings.fail_open,
        error = %error.message,
        "plugin call failed"
    );
    if plugin.settings.fail_open {
        Ok(())
    } else {
        Err(ChainError::Failed(error))
    }
}

fn invalid(plugin: &Plugin, what: String) -> ChainError {
    ChainError::InvalidChange {
        plugin: plugin.name.clone(),
        what,
    }
}

fn header_name(plugin: &Plugin, name: &str) -> Result<HeaderName, ChainError> {
    // from_bytes lower-cases, so `X-Foo` and `x-foo` are one header.
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(plugin, format!("invalid header name {name:?}")))
}

fn header_value(
    plugin: &Plugin,
    name: &HeaderName,
    value: &[u8],
) -> Result<HeaderValue, ChainError> {
    HeaderValue::from_bytes(value)
        .map_err(|_| invalid(plugin, format!("invalid value for header {name}")))
}

/// Checks one header change and applies it to the map and to the plugins' view.
fn apply_op(
    plugin: &Plugin,
    op: HeaderOp,
    list: &mut HeaderList,
    map: &mut HeaderMap,
) -> Result<(), ChainError> {
    match op {
        HeaderOp::Set((name, value)) => {
            let name = header_name(plugin, &name)?;
            map.insert(name.clone(), header_value(plugin, &name, &value)?);
            list.retain(|(n, _)| n != name.as_str());
            list.push((name.as_str().to_owned(), value));
        }
        HeaderOp::Append((name, value)) => {
            let name = header_name(plugin, &name)?;
            map.append(name.clone(), header_value(plugin, &name, &value)?);
            list.push((name.as_str().to_owned(), value));
        }
        HeaderOp::Remove(name) => {
            let name = header_name(plugin, &name)?;
            map.remove(&name);
            list.retain(|(n, _)| n != name.as_str());
        }
    }
    Ok(())
}

/// Checks a new request target (`/path?query`) and applies it to the URI and the head.
fn apply_path(
    plugin: &Plugin,
    target: String,
    head: &mut RequestHead,
    parts: &mut request::Parts,
) -> Result<(), ChainError> {
    let bad = |e: &dyn std::fmt::Display| invalid(plugin, format!("path {target:?}: {e}"));
    if !target.starts_with('/') {
        return Err(bad(&"must start with /"));
    }
    let path_and_query = PathAndQuery::try_from(target.as_str()).map_err(|e| bad(&e))?;
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(path_and_query);
    parts.uri = http::Uri::from_parts(uri).map_err(|e| bad(&e))?;
    head.path = parts.uri.path().to_owned();
    head.query = parts.uri.query().map(str::to_owned);
    Ok(())
}

/// Checks a plugin's local response and turns it into hyper's parts.
fn local_response(
    plugin: &Plugin,
    local: LocalResponse,
) -> Result<(response::Parts, Vec<u8>), ChainError> {
    let (mut parts, ()) = response::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(local.status)
        .map_err(|_| invalid(plugin, format!("status {}", local.status)))?;
    parts.headers.reserve(local.headers.len());
    for (name, value) in &local.headers {
        let name = header_name(plugin, name)?;
        let value = header_value(plugin, &name, value)?;
        parts.headers.append(name, value);
    }
    Ok((parts, local.body))
}

/// The WIT view of a request head.
pub fn request_head(
    parts: &request::Parts,
    authority: Option<&HeaderValue>,
    client: String,
    route: &str,
    request_id: &HeaderValue,
) -> RequestHead {
    RequestHead {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        authority: authority.and_then(|a| a.to_str().ok()).map(str::to_owned),
        headers: header_list(&parts.headers),
        client_address: client,
        route: route.to_owned(),
        request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
    }
}

fn response_head(parts: &response::Parts) -> ResponseHead {
    ResponseHead {
        status: parts.status.as_u16(),
        headers: header_list(&parts.headers),
    }
}

fn header_list(headers: &HeaderMap) -> HeaderList {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}
