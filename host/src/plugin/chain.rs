//! A route's filter chain: runs `on-request` in chain order and `on-response` in reverse,
//! applies each plugin's changes before the next plugin sees the request, and converts
//! between hyper's types and the WIT records.
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
    CallError, HeaderOp, LocalResponse, Plugin, RequestAction, RequestHead, ResponseAction,
    ResponseHead,
};

/// The plugins of one route, in order.
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
    unavailable: Option<String>,
    any_on_response: bool,
}

/// What the request phase decided.
#[derive(Debug)]
pub enum RequestStep {
    /// Send the (changed) request on. `passed` plugins ran `on-request`.
    Continue {
        /// How many plugins, from the start of the chain, passed the request on.
        passed: usize,
    },
    /// A plugin answered; the plugins before it (`passed`) still see the response.
    Respond {
        /// The plugin's response.
        response: LocalResponse,
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
        let any_on_response = plugins.iter().any(|p| p.has_on_response());
        Chain {
            plugins,
            unavailable: None,
            any_on_response,
        }
    }

    /// A chain that refuses traffic because a plugin it needs is not loaded.
    pub fn unavailable(reason: String) -> Chain {
        Chain {
            plugins: Vec::new(),
            unavailable: Some(reason),
            any_on_response: false,
        }
    }

    /// Whether requests on this route skip plugins entirely.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty() && self.unavailable.is_none()
    }

    /// Whether any plugin has an `on-response` hook.
    pub fn has_response_hooks(&self) -> bool {
        self.any_on_response
    }

    /// Runs `on-request` across the chain, applying each plugin's changes to `head`.
    ///
    /// Hook calls are synchronous wasm calls, and WASI's synchronous host functions (a guest
    /// writing its panic message to stderr, say) block on the tokio runtime; both need the
    /// worker thread to leave the async context, hence `block_in_place`. Requires the
    /// multi-thread runtime, which `main` always builds.
    pub fn on_request(&self, head: &mut RequestHead) -> Result<RequestStep, ChainError> {
        tokio::task::block_in_place(|| self.run_on_request(head))
    }

    fn run_on_request(&self, head: &mut RequestHead) -> Result<RequestStep, ChainError> {
        if let Some(reason) = &self.unavailable {
            return Err(ChainError::Unavailable(reason.clone()));
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            if !plugin.has_on_request() {
                continue;
            }
            match plugin.on_request(head) {
                Ok(RequestAction::Continue(changes)) => {
                    apply_ops(&mut head.headers, changes.headers);
                    if let Some(path) = changes.path {
                        let (path, query) = match path.split_once('?') {
                            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                            None => (path, None),
                        };
                        head.path = path;
                        head.query = query;
                    }
                }
                Ok(RequestAction::Respond(response)) => {
                    return Ok(RequestStep::Respond {
                        response,
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

    /// Runs `on-response` across the first `passed` plugins in reverse. Returns the body of
    /// a local response that replaced the upstream's, if a plugin answered.
    pub fn on_response(
        &self,
        passed: usize,
        request: &RequestHead,
        head: &mut ResponseHead,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        tokio::task::block_in_place(|| self.run_on_response(passed, request, head))
    }

    fn run_on_response(
        &self,
        passed: usize,
        request: &RequestHead,
        head: &mut ResponseHead,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        let mut body = None;
        for plugin in self.plugins[..passed.min(self.plugins.len())].iter().rev() {
            if !plugin.has_on_response() {
                continue;
            }
            match plugin.on_response(request, head) {
                Ok(ResponseAction::Continue(ops)) => apply_ops(&mut head.headers, ops),
                Ok(ResponseAction::Respond(local)) => {
                    head.status = local.status;
                    head.headers = local.headers;
                    body = Some(local.body);
                }
                Err(e) => skip_or_fail(plugin, e, &request.request_id)?,
            }
        }
        Ok(body)
    }
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

fn apply_ops(headers: &mut Vec<(String, Vec<u8>)>, ops: Vec<HeaderOp>) {
    for op in ops {
        match op {
            HeaderOp::Set((name, value)) => {
                let name = name.to_ascii_lowercase();
                headers.retain(|(n, _)| *n != name);
                headers.push((name, value));
            }
            HeaderOp::Append((name, value)) => headers.push((name.to_ascii_lowercase(), value)),
            HeaderOp::Remove(name) => {
                let name = name.to_ascii_lowercase();
                headers.retain(|(n, _)| *n != name);
            }
        }
    }
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

/// Writes a head's headers and path back into the request.
pub fn apply_request_head(
    parts: &mut request::Parts,
    head: &RequestHead,
    plugin_chain: &Chain,
) -> Result<(), ChainError> {
    parts.headers = header_map(&head.headers).map_err(|what| invalid(plugin_chain, what))?;
    let target = match &head.query {
        Some(q) => format!("{}?{q}", head.path),
        None => head.path.clone(),
    };
    if parts.uri.path_and_query().map(PathAndQuery::as_str) != Some(target.as_str()) {
        let path = PathAndQuery::try_from(target.as_str())
            .map_err(|e| invalid(plugin_chain, format!("path {target:?}: {e}")))?;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(path);
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|e| invalid(plugin_chain, format!("path {target:?}: {e}")))?;
    }
    Ok(())
}

/// The WIT view of a response head.
pub fn response_head(parts: &response::Parts) -> ResponseHead {
    ResponseHead {
        status: parts.status.as_u16(),
        headers: header_list(&parts.headers),
    }
}

/// Writes a head's status and headers back into the response.
pub fn apply_response_head(
    parts: &mut response::Parts,
    head: &ResponseHead,
    plugin_chain: &Chain,
) -> Result<(), ChainError> {
    parts.status = StatusCode::from_u16(head.status)
        .map_err(|_| invalid(plugin_chain, format!("status {}", head.status)))?;
    parts.headers = header_map(&head.headers).map_err(|what| invalid(plugin_chain, what))?;
    Ok(())
}

fn invalid(chain: &Chain, what: String) -> ChainError {
    // The change is attributed to the chain: which plugin made it is lost once changes merge.
    let names: Vec<&str> = chain.plugins.iter().map(|p| &*p.name).collect();
    ChainError::InvalidChange {
        plugin: names.join(",").into(),
        what,
    }
}

fn header_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn header_map(list: &[(String, Vec<u8>)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(list.len());
    for (name, value) in list {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("invalid value for header {name}"))?;
        map.append(name, value);
    }
    Ok(map)
}
