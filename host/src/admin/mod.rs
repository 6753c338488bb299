//! The admin listener: health, configuration and plugin views, and forced reloads, on their
//! own address, apart from proxy traffic. It binds only where the config says (there is no
//! default address).
//!
//! - `GET /`         — the dashboard (`dashboard.html`, embedded): a page that polls the
//!   endpoints below;
//! - `GET /healthz`  — 200 while serving;
//! - `GET /config`   — the effective configuration as JSON, secrets redacted;
//! - `GET /clusters` — each cluster's endpoints: health, last check error, requests in
//!   flight, weight, backup, failed requests;
//! - `GET /plugins`  — the plugin folder: each plugin's file, hash, hooks, load time,
//!   generation, last error and `[config]` (secrets redacted);
//! - `POST /reload`  — rescans the config file and plugin folder now; 200 with a report, or
//!   422 if anything was refused (what was valid still applied);
//! - `POST /cache/purge` — forgets stored responses by key or key prefix, in one route's
//!   cache or every route's (`{"route": ..., "key": ...}` or `"prefix"`), answering how many.
//!
//! Every request passes `guard::check` first: the bearer token, the `Host` check against
//! DNS rebinding and the `Origin` check against cross-site requests (`guard.rs` says which
//! applies when, and why).

mod guard;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::Service;
use serde_json::{Value, json};

use crate::config::AdminAuth;
use crate::generation::Generation;
use crate::metrics::metrics;
use crate::reload::ReloadHandle;

/// The admin service for a connection from `_peer`. Called once, at startup: it warns
/// there if the admin is open only because no token was configured.
pub(crate) fn service(
    generation: Arc<ArcSwap<Generation>>,
    reload: ReloadHandle,
) -> impl Fn(crate::server::Accepted) -> AdminService + Send + Sync + 'static {
    if let Some(admin) = &generation.load().config.admin
        && admin.auth == AdminAuth::OpenByDefault
    {
        tracing::warn!(
            address = %admin.address,
            "the admin listener has no token: anyone who can connect to it may read the \
             config and force reloads; set [admin] token_file or token_env, or open = true \
             to say this is meant"
        );
    }
    move |_accepted| AdminService {
        generation: generation.clone(),
        reload: reload.clone(),
    }
}

/// Serves the admin endpoints for one connection.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    generation: Arc<ArcSwap<Generation>>,
    reload: ReloadHandle,
}

type AdminResponse = Response<Full<Bytes>>;

impl Service<Request<Incoming>> for AdminService {
    type Response = AdminResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<AdminResponse, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

impl AdminService {
    async fn handle(&self, request: Request<Incoming>) -> AdminResponse {
        // The admin's settings cannot change while it runs (a reload that changes them is
        // refused), so the current generation's are the ones it was started with.
        let Some(admin) = self.generation.load().config.admin.clone() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin is not configured\n",
            );
        };
        if let Err(refusal) = guard::check(&admin, &request) {
            return refused(refusal);
        }
        let method = request.method();
        let read = method == Method::GET || method == Method::HEAD;
        match (request.uri().path(), read) {
            ("/", true) => dashboard(),
            ("/healthz", true) => text(StatusCode::OK, "ok\n"),
            ("/config", true) => self.config(),
            ("/plugins", true) => json(&plugins(&self.generation.load())),
            ("/clusters", true) => json(&clusters(&self.generation.load())),
            ("/metrics", true) => self.metrics(),
            ("/errors", true) => json(&recent_errors()),
            ("/reload", _) if method == Method::POST => self.force_reload().await,
            ("/cache/purge", _) if method == Method::POST => self.purge(request).await,
            (
                "/" | "/healthz" | "/config" | "/plugins" | "/clusters" | "/metrics" | "/errors"
                | "/reload" | "/cache/purge",
                _,
            ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try / (the dashboard), /healthz, /config, /clusters, /plugins, /metrics, /errors, POST /reload or POST /cache/purge\n",
            ),
        }
    }

    /// Prometheus text exposition; 404 when `[metrics] enabled = false`.
    fn metrics(&self) -> AdminResponse {
        let generation = self.generation.load();
        if !generation.config.metrics {
            return text(
                StatusCode::NOT_FOUND,
                "metrics are off ([metrics] enabled = false)\n",
            );
        }
        let mut response = Response::new(Full::new(Bytes::from(metrics().render(&generation))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    fn config(&self) -> AdminResponse {
        let generation = self.generation.load();
        match serde_json::to_value(generation.config.as_ref()) {
            Ok(mut value) => {
                redact(&mut value, &[]);
                json(&value)
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot render config: {e}\n"),
            ),
        }
    }

    /// `POST /cache/purge` with `{"route": NAME, "key": KEY}` or `{"prefix": PREFIX}`: forgets
    /// stored responses (every variant of a key) in one route's cache, or in every route's
    /// without `route`; answers how many keys went.
    async fn purge(&self, request: Request<Incoming>) -> AdminResponse {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Purge {
            route: Option<String>,
            key: Option<String>,
            prefix: Option<String>,
        }
        let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the body: {e}\n"),
                );
            }
        };
        let purge: Purge = match serde_json::from_slice(&body) {
            Ok(purge) => purge,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "expected {{\"route\": ..., \"key\": ...}} or {{\"route\": ..., \"prefix\": ...}}: {e}\n"
                    ),
                );
            }
        };
        let generation = self.generation.load();
        let caches: Vec<_> = generation
            .config
            .routes
            .iter()
            .zip(&generation.routes)
            .filter(|(config, _)| purge.route.as_ref().is_none_or(|r| *r == config.name))
            .filter_map(|(_, route)| route.cache.as_ref())
            .collect();
        if let Some(route) = &purge.route
            && caches.is_empty()
        {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no route {route:?} with a cache\n"),
            );
        }
        let purged: usize = match (&purge.key, &purge.prefix) {
            (Some(key), None) => caches.iter().filter(|c| c.remove(key)).count(),
            (None, Some(prefix)) => caches.iter().map(|c| c.remove_prefix(prefix)).sum(),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "give exactly one of key and prefix\n",
                );
            }
        };
        tracing::info!(
            route = purge.route,
            key = purge.key,
            prefix = purge.prefix,
            purged,
            "cache purged"
        );
        json(&json!({ "purged": purged }))
    }

    async fn force_reload(&self) -> AdminResponse {
        match self.reload.reload().await {
            Some(report) => {
                let mut response = json(&json!(report));
                if !report.errors.is_empty() {
                    *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                }
                response
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        }
    }
}

/// `GET /clusters`: each cluster with its algorithm and its endpoints' live state.
/// The latest failed requests, newest first.
fn recent_errors() -> Value {
    let list: Vec<Value> = crate::metrics::recent_errors()
        .list()
        .into_iter()
        .map(|e| {
            json!({
                "time": humantime::format_rfc3339_millis(e.time).to_string(),
                "status": e.status,
                "kind": format!("{:?}", e.kind),
                "route": e.route,
                "cluster": e.cluster,
                "endpoint": e.endpoint,
                "cause": e.cause,
                "request_id": e.request_id,
                "plugin": e.plugin,
            })
        })
        .collect();
    Value::Array(list)
}

fn clusters(generation: &Generation) -> Value {
    let list: Vec<Value> = generation
        .clusters
        .iter()
        .map(|cluster| {
            let endpoints: Vec<Value> = cluster
                .config
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let state = cluster.endpoints.get(i);
                    json!({
                        "address": e.authority.as_str(),
                        "weight": e.weight,
                        "backup": e.backup,
                        "healthy": state.map(|s| s.is_healthy()),
                        "last_check_error": state.and_then(|s| s.last_check_error()),
                        "ejected_for_ms": cluster.endpoints.ejected_for(i).map(|d| d.as_millis() as u64),
                        "in_flight": state.map(|s| s.in_flight()),
                        "failed_requests": state.map(|s| s.failures()),
                    })
                })
                .collect();
            json!({
                "name": cluster.config.name,
                "lb": cluster.config.lb,
                "health_checked": cluster.config.health_check.is_some(),
                "active_requests": cluster.endpoints.active(),
                "max_requests": cluster.config.max_requests,
                "rejected_requests": cluster.endpoints.rejected(),
                "open_connections": cluster.client.open_connections(),
                "max_connections": cluster.config.max_connections,
                "pending_requests": cluster.client.pending(),
                "max_pending": cluster.config.max_pending,
                "endpoints": endpoints,
            })
        })
        .collect();
    Value::Array(list)
}

/// `GET /plugins`: one object per plugin file, in chain order.
fn plugins(generation: &Generation) -> Value {
    let list: Vec<Value> = generation
        .plugins
        .iter()
        .map(|slot| {
            let serving = slot.serving.as_ref();
            let info = serving.map(|p| p.info());
            json!({
                "name": slot.name,
                "file": slot.file.display().to_string(),
                "status": if serving.is_some() { "serving" } else { "failed" },
                "hash": info.map(|p| p.hash.clone()),
                "hooks": serving.map(|p| p.hook_names()),
                "contract": info.map(|p| p.contract),
                "loaded_at": info.map(|p| humantime::format_rfc3339_millis(p.loaded_at).to_string()),
                "compile_ms": info.map(|p| p.compile_time.as_millis() as u64),
                "from_cache": info.map(|p| p.from_cache),
                "fail_open": info.map(|p| p.settings.fail_open),
                "deadline_ms": info.map(|p| p.settings.deadline.as_millis() as u64),
                "memory_limit_mb": info.map(|p| p.settings.memory_limit >> 20),
                "max_uses": info.map(|p| p.settings.max_uses),
                "max_body_bytes": info.map(|p| p.settings.max_body_bytes),
                "whole_heads": info.map(|p| p.settings.whole_heads),
                "config": info.map(|p| redacted(&p.settings.config, &p.settings.redact)),
                "generation": serving.map(|_| slot.since_generation),
                "last_error": slot.last_error,
            })
        })
        .collect();
    Value::Array(list)
}

/// `GET /`: the dashboard, one self-contained page (`dashboard.html`) that polls the JSON
/// and metrics endpoints above. Its script and style are inline, so the policy allows
/// inline code and nothing from anywhere but this listener.
fn dashboard() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        include_str!("dashboard.html").as_bytes(),
    )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; frame-ancestors 'none'",
        ),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A response refusing a request, in the admin's plain-text style.
fn refused(refusal: guard::Refusal) -> AdminResponse {
    let (status, challenge, message) = refusal.answer();
    let mut response = text(status, message);
    if let Some(challenge) = challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// Words that mark a key as holding a secret wherever they appear in its name (`api_key`,
/// `clientSecret`, `keys`, `db_password`). This errs towards hiding: `key` also hides a
/// rate limit's `key = "client"` and a hash key, which cost nothing to hide, while a secret
/// shown once is out.
const SECRET_WORDS: [&str; 8] = [
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "credential",
    "private",
    "authorization",
];

/// `value` with every secret redacted (see [`redact`]).
fn redacted(value: &Value, extra: &[String]) -> Value {
    let mut value = value.clone();
    redact(&mut value, extra);
    value
}

/// Replaces the value of every key, at any depth, that holds a secret with `"[redacted]"`:
/// a key with one of [`SECRET_WORDS`] in its name, or named (in any case) in `extra` (a
/// plugin's `redact`). An absent value (`null`) stays, so the page still shows it is unset.
fn redact(value: &mut Value, extra: &[String]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_WORDS.iter().any(|w| lower.contains(w))
                    || extra.iter().any(|e| e.eq_ignore_ascii_case(k));
                if secret && !v.is_null() {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v, extra);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, extra)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::redact;

    #[test]
    fn redacts_secret_looking_keys_at_any_depth() {
        let mut value = json!({
            "name": "api",
            "plugins": [{"api_key": "k1", "config": {"jwt_secret": "s", "Password": "p", "header": "x-api-key"}}],
            "upstream": {"auth": {"clientSecret": "c", "refresh_token": "r", "keys": ["a", "b"], "realm": "weir"}},
            "headers": {"Authorization": "Bearer t", "x-trace": "on"},
            "token": null,
        });
        redact(&mut value, &[]);
        assert_eq!(
            value,
            json!({
                "name": "api",
                "plugins": [{"api_key": "[redacted]", "config": {"jwt_secret": "[redacted]", "Password": "[redacted]", "header": "x-api-key"}}],
                "upstream": {"auth": {"clientSecret": "[redacted]", "refresh_token": "[redacted]", "keys": "[redacted]", "realm": "weir"}},
                "headers": {"Authorization": "[redacted]", "x-trace": "on"},
                "token": null,
            })
        );
    }

    #[test]
    fn redacts_the_keys_a_plugin_names() {
        let mut value = json!({"salt": "s", "nested": [{"SALT": "t", "pepper": "p"}], "name": "n"});
        redact(&mut value, &["salt".to_owned(), "pepper".to_owned()]);
        assert_eq!(
            value,
            json!({"salt": "[redacted]", "nested": [{"SALT": "[redacted]", "pepper": "[redacted]"}], "name": "n"})
        );
    }
}
