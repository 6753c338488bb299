//! The admin listener: health and configuration views, on their own address, apart from
//! proxy traffic. It binds only where the config says (there is no default address).
//!
//! - `GET /healthz` — 200 while serving;
//! - `GET /config`  — the effective configuration as JSON, secrets redacted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use serde_json::Value;

use crate::generation::Generation;

/// The admin service for a connection from `_peer`.
pub(crate) fn service(generation: Arc<ArcSwap<Generation>>) -> impl Fn(SocketAddr) -> AdminService {
    move |_peer| AdminService {
        generation: generation.clone(),
    }
}

/// Serves the admin endpoints for one connection.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    generation: Arc<ArcSwap<Generation>>,
}

impl Service<Request<Incoming>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.handle(&request)))
    }
}

impl AdminService {
    fn handle(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/config" => {
                let generation = self.generation.load();
                match serde_json::to_value(generation.config.as_ref()) {
                    Ok(mut value) => {
                        redact(&mut value);
                        json(&value)
                    }
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("cannot render config: {e}\n"),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz or /config\n",
            ),
        }
    }
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

/// Replaces the value of every key that looks like it holds a secret with `"[redacted]"`.
fn redact(value: &mut Value) {
    const SECRET_WORDS: [&str; 6] = [
        "secret",
        "password",
        "token",
        "credential",
        "private",
        "key",
    ];
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| k.contains(w)) && !v.is_null() {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
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
            "token": null,
        });
        redact(&mut value);
        assert_eq!(
            value,
            json!({
                "name": "api",
                "plugins": [{"api_key": "[redacted]", "config": {"jwt_secret": "[redacted]", "Password": "[redacted]", "header": "x-api-key"}}],
                "token": null,
            })
        );
    }
}
