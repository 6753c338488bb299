//! `aggregate`: a *handler* plugin. A route names it instead of a cluster; for each request
//! it calls several clusters **concurrently** through weir and merges their JSON answers
//! into one document, `{"profile": …, "orders": …}`. See the README for every key.
//!
//! It is a standard `wasi:http` `proxy`-world component (built with `wstd`), so the same
//! code runs under any wasi:http host. weir maps each outgoing request's authority to the
//! cluster of that name (`http://users/users/7` → cluster `users`), with the cluster's
//! load balancing, and refuses clusters the plugin's `clusters = [...]` does not grant.
//! Its `[config]` arrives as JSON in the environment variable `WEIR_CONFIG`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use wstd::future::FutureExt as _;
use wstd::http::{Body, Client, Request, Response, StatusCode};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The incoming path pattern; `{name}` matches one path segment, for the templates.
    pub path: String,
    /// The sub-requests, all sent at once.
    pub calls: Vec<Call>,
    /// Request headers copied onto every sub-request.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

/// One sub-request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The key its answer gets in the merged document.
    pub name: String,
    /// The cluster it goes to (must be granted in `clusters`).
    pub cluster: String,
    /// Path and query template: `{name}` from the path pattern, `{query.NAME}`,
    /// `{header.NAME}`.
    pub path: String,
    /// Headers to set, as templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A failed required call fails the whole response with 502; an optional one becomes
    /// `null` and an entry in `errors`.
    #[serde(default = "yes")]
    pub required: bool,
    /// How long to wait for this call's answer.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn yes() -> bool {
    true
}
fn default_timeout() -> String {
    "2s".into()
}

/// The config, checked.
#[derive(Debug)]
struct Plan {
    pattern: Vec<Segment>,
    calls: Vec<(Call, Duration)>,
    forward_headers: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    Capture(String),
}

/// Reads and checks `WEIR_CONFIG`.
fn plan() -> Result<Plan, String> {
    let text = std::env::var("WEIR_CONFIG").map_err(|_| "WEIR_CONFIG is not set".to_owned())?;
    plan_from(&text)
}

fn plan_from(text: &str) -> Result<Plan, String> {
    let config: Config =
        serde_json::from_str(text).map_err(|e| format!("invalid [config]: {e}"))?;
    if !config.path.starts_with('/') {
        return Err(format!("path {:?} must start with /", config.path));
    }
    if config.calls.is_empty() {
        return Err("no calls".into());
    }
    let pattern = config.path[1..]
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Capture(name.to_owned()),
                None => Segment::Literal(s.to_owned()),
            },
        )
        .collect();
    let mut calls = Vec::new();
    for call in config.calls {
        let timeout = humantime::parse_duration(&call.timeout)
            .map_err(|e| format!("calls.{}.timeout: {e}", call.name))?;
        if !call.path.starts_with('/') {
            return Err(format!("calls.{}.path must start with /", call.name));
        }
        calls.push((call, timeout));
    }
    Ok(Plan {
        pattern,
        calls,
        forward_headers: config.forward_headers,
    })
}

/// The path's captures, if it matches the pattern.
fn captures(pattern: &[Segment], path: &str) -> Option<BTreeMap<String, String>> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if segments.len() != pattern.len() {
        return None;
    }
    let mut found = BTreeMap::new();
    for (want, got) in pattern.iter().zip(segments) {
        match want {
            Segment::Literal(l) if l == got => {}
            Segment::Capture(name) if !got.is_empty() => {
                found.insert(name.clone(), got.to_owned());
            }
            _ => return None,
        }
    }
    Some(found)
}

/// Fills `{name}`, `{query.NAME}` and `{header.NAME}`; unknown names become empty.
fn fill(template: &str, captures: &BTreeMap<String, String>, request: &Request<Body>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + len];
        let value = if let Some(param) = name.strip_prefix("query.") {
            request.uri().query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == param).then(|| v.to_owned())
                })
            })
        } else if let Some(header) = name.strip_prefix("header.") {
            request
                .headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        } else {
            captures.get(name).cloned()
        };
        out.push_str(&value.unwrap_or_default());
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

/// One call's outcome: its JSON, or why it failed.
async fn call(
    cluster: &str,
    target: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
) -> Result<Value, String> {
    let mut builder = Request::get(format!("http://{cluster}{target}"));
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(Body::empty()).map_err(|e| e.to_string())?;
    let mut client = Client::new();
    client.set_first_byte_timeout(timeout);
    let exchange = async {
        let response = client.send(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let mut body = response.into_body();
        let bytes = body
            .contents()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_vec();
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("not JSON: {e}"))
    };
    match exchange.timeout(wstd::time::Duration::from(timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        wstd::http::HeaderValue::from_static("application/json"),
    );
    response
}

// The export exists only in the wasm build; natively the crate builds for its unit tests.
#[cfg(target_arch = "wasm32")]
#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, wstd::http::Error> {
    Ok(handle(request).await)
}

/// Answers one request: every call at once, then the merged document.
pub async fn handle(request: Request<Body>) -> Response<Body> {
    let plan = match plan() {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("aggregate: {why}");
            let body = json!({ "message": "aggregate is misconfigured" });
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &body);
        }
    };
    let Some(found) = captures(&plan.pattern, request.uri().path()) else {
        let body = json!({ "message": "no such resource" });
        return json_response(StatusCode::NOT_FOUND, &body);
    };

    let forwarded: Vec<(String, String)> = plan
        .forward_headers
        .iter()
        .filter_map(|name| {
            let value = request.headers().get(name.as_str())?.to_str().ok()?;
            Some((name.clone(), value.to_owned()))
        })
        .collect();
    let pending = plan.calls.iter().map(|(c, timeout)| {
        let target = fill(&c.path, &found, &request);
        let mut headers = forwarded.clone();
        headers.extend(
            c.headers
                .iter()
                .map(|(name, template)| (name.clone(), fill(template, &found, &request))),
        );
        call(&c.cluster, target, headers, *timeout)
    });
    // Every call is in flight at once; the slowest one sets the response time.
    let results = futures_util::future::join_all(pending).await;

    let mut merged = serde_json::Map::new();
    let mut errors = Vec::new();
    let mut failed_required = None;
    for ((c, _), result) in plan.calls.iter().zip(results) {
        match result {
            Ok(value) => {
                merged.insert(c.name.clone(), value);
            }
            Err(why) => {
                errors.push(json!({ "call": c.name, "cluster": c.cluster, "error": why }));
                merged.insert(c.name.clone(), Value::Null);
                if c.required && failed_required.is_none() {
                    failed_required = Some(c.name.clone());
                }
            }
        }
    }
    if let Some(name) = failed_required {
        let body = json!({
            "message": format!("required call {name:?} failed"),
            "errors": errors,
        });
        return json_response(StatusCode::BAD_GATEWAY, &body);
    }
    if !errors.is_empty() {
        merged.insert("errors".into(), Value::Array(errors));
    }
    json_response(StatusCode::OK, &Value::Object(merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
        "path": "/dashboard/{id}",
        "calls": [
            {"name": "profile", "cluster": "users", "path": "/users/{id}"},
            {"name": "orders", "cluster": "orders", "path": "/orders?user={id}&page={query.page}",
             "required": false, "timeout": "500ms"}
        ]
    }"#;

    #[test]
    fn the_config_is_checked() {
        let plan = plan_from(CONFIG).expect("valid");
        assert_eq!(plan.calls.len(), 2);
        assert_eq!(plan.calls[1].1, Duration::from_millis(500));
        assert!(plan_from(r#"{"path": "x", "calls": []}"#).is_err());
        assert!(plan_from(r#"{"path": "/x", "calls": []}"#).is_err());
        let bad_timeout = r#"{"path": "/x", "calls": [{"name": "a", "cluster": "c", "path": "/", "timeout": "soon"}]}"#;
        assert!(
            plan_from(bad_timeout)
                .unwrap_err()
                .contains("calls.a.timeout")
        );
    }

    #[test]
    fn paths_match_segment_by_segment() {
        let plan = plan_from(CONFIG).expect("valid");
        let found = captures(&plan.pattern, "/dashboard/7").expect("matches");
        assert_eq!(found["id"], "7");
        assert!(captures(&plan.pattern, "/dashboard/7/x").is_none());
        assert!(captures(&plan.pattern, "/dashboard/").is_none());
        assert!(captures(&plan.pattern, "/other/7").is_none());
    }

    #[test]
    fn templates_fill_from_path_query_and_headers() {
        let request = Request::get("http://weir/dashboard/7?page=2")
            .header("x-user", "ann")
            .body(Body::empty())
            .expect("request");
        let found = BTreeMap::from([("id".to_owned(), "7".to_owned())]);
        assert_eq!(
            fill(
                "/orders?user={id}&page={query.page}&by={header.x-user}{nope}",
                &found,
                &request
            ),
            "/orders?user=7&page=2&by=ann"
        );
    }
}
