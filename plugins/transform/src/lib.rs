//! `transform`: changes requests and responses on their way through. Headers are renamed,
//! set from templates or removed in the head hooks; JSON bodies are changed by path in the
//! body hooks, which are asked for only when a direction has JSON changes, so a
//! headers-only config never makes weir buffer a body. See the README for every key.
//!
//! Order, per direction: headers `rename`, `remove`, `set`; then JSON `unwrap`, `remove`,
//! `rename`, `set`, `add`, `wrap`. weir corrects `Content-Length` after a body changes.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde_json::Value;
use weir_plugin::{Action, Body, Filter, Hooks, Reply, Request, Response};

/// The `[config]` table: one section per direction.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Changes to requests on their way upstream.
    #[serde(default)]
    pub request: Direction,
    /// Changes to responses on their way back.
    #[serde(default)]
    pub response: Direction,
}

/// The changes for one direction.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Direction {
    /// Header changes.
    #[serde(default)]
    pub headers: HeaderChanges,
    /// JSON body changes; applied only to `application/json` (or `+json`) bodies.
    #[serde(default)]
    pub json: JsonChanges,
}

/// Header changes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderChanges {
    /// Old name → new name; the values move.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Name → template; `{method}`, `{path}`, `{route}`, `{client}`, `{request_id}`,
    /// `{header.NAME}` (a request header), and for responses `{status}`.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

/// JSON body changes; paths are dotted (`user.address.city`, `items.0.id`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonChanges {
    /// Replace the body with the value at this path (take a payload out of an envelope).
    #[serde(default)]
    pub unwrap: Option<String>,
    /// Fields removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Path → new key (the field keeps its place in its parent object).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Path → value, set whether or not the field exists (parents created).
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// Path → value, set only if the field does not exist.
    #[serde(default)]
    pub add: BTreeMap<String, Value>,
    /// Put the body under this key of a new object (put it in an envelope).
    #[serde(default)]
    pub wrap: Option<String>,
}

impl JsonChanges {
    fn is_empty(&self) -> bool {
        self.unwrap.is_none()
            && self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.wrap.is_none()
    }
}

/// The filter.
#[derive(Debug)]
pub struct Transform {
    request: Direction,
    response: Direction,
}

impl Filter for Transform {
    type Config = Config;

    fn new(config: Config) -> Result<Transform, String> {
        for (name, direction) in [("request", &config.request), ("response", &config.response)] {
            let headers = &direction.headers;
            let names = headers
                .rename
                .iter()
                .flat_map(|(a, b)| [a, b])
                .chain(&headers.remove)
                .chain(headers.set.keys());
            for header in names {
                if header.is_empty() || !header.bytes().all(is_token_char) {
                    return Err(format!("{name}.headers: {header:?} is not a header name"));
                }
            }
            let json = &direction.json;
            let paths = json
                .remove
                .iter()
                .chain(json.rename.keys())
                .chain(json.set.keys())
                .chain(json.add.keys())
                .chain(&json.unwrap);
            for path in paths {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(format!("{name}.json: path {path:?} is not valid"));
                }
            }
            if json.wrap.as_deref() == Some("") {
                return Err(format!("{name}.json.wrap must not be empty"));
            }
        }
        Ok(Transform {
            request: config.request,
            response: config.response,
        })
    }

    fn hooks(&self) -> Hooks {
        let has_headers = |d: &Direction| {
            let h = &d.headers;
            !(h.rename.is_empty() && h.remove.is_empty() && h.set.is_empty())
        };
        Hooks {
            on_request: has_headers(&self.request),
            on_response: has_headers(&self.response),
            on_request_body: !self.request.json.is_empty(),
            on_response_body: !self.response.json.is_empty(),
        }
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let changes = &self.request.headers;
        for (from, to) in &changes.rename {
            if let Some(value) = request.header_bytes(from).map(<[u8]>::to_vec) {
                request.remove_header(from);
                request.set_header(to, value);
            }
        }
        changes.remove.iter().for_each(|n| request.remove_header(n));
        for (name, template) in &changes.set {
            let value = fill(template, request, None);
            request.set_header(name, value);
        }
        Action::Continue
    }

    fn on_response(&self, request: &Request, response: &mut Response) -> Action {
        let changes = &self.response.headers;
        for (from, to) in &changes.rename {
            let value = response.header(from).map(str::to_owned);
            if let Some(value) = value {
                response.remove_header(from);
                response.set_header(to, value);
            }
        }
        changes
            .remove
            .iter()
            .for_each(|n| response.remove_header(n));
        for (name, template) in &changes.set {
            let value = fill(template, request, Some(response.status()));
            response.set_header(name, value);
        }
        Action::Continue
    }

    fn on_request_body(&self, request: &mut Request, body: &mut Body) -> Action {
        if !is_json(request.header("content-type")) {
            return Action::Continue;
        }
        let Ok(mut value) = body.json::<Value>() else {
            return Reply::json(
                400,
                &serde_json::json!({ "message": "request body is not valid JSON" }),
            )
            .into();
        };
        apply_json(&self.request.json, &mut value);
        replace(body, &value);
        Action::Continue
    }

    fn on_response_body(&self, _: &Request, response: &mut Response, body: &mut Body) -> Action {
        if !is_json(response.header("content-type")) {
            return Action::Continue;
        }
        match body.json::<Value>() {
            Ok(mut value) => {
                apply_json(&self.response.json, &mut value);
                replace(body, &value);
            }
            Err(e) => weir_plugin::log::warn!("response body is not valid JSON, left as is: {e}"),
        }
        Action::Continue
    }
}

fn replace(body: &mut Body, value: &Value) {
    if let Err(e) = body.set_json(value) {
        weir_plugin::log::warn!("cannot serialise the transformed body: {e}");
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    let Some(media) = content_type.and_then(|c| c.split(';').next()) else {
        return false;
    };
    let media = media.trim().to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Fills a header template from the request (and the response status).
fn fill(template: &str, request: &Request, status: Option<u16>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        match name {
            "method" => out.push_str(request.method()),
            "path" => out.push_str(request.path()),
            "route" => out.push_str(request.route()),
            "client" => out.push_str(request.client_addr()),
            "request_id" => out.push_str(request.request_id()),
            "status" => out.push_str(&status.map(|s| s.to_string()).unwrap_or_default()),
            _ => match name.strip_prefix("header.") {
                Some(header) => out.push_str(request.header(header).unwrap_or("")),
                None => out.push_str(&rest[open..=open + close]),
            },
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn apply_json(changes: &JsonChanges, value: &mut Value) {
    if let Some(path) = &changes.unwrap {
        *value = lookup(value, path).cloned().unwrap_or(Value::Null);
    }
    for path in &changes.remove {
        take(value, path);
    }
    for (path, new_key) in &changes.rename {
        let (parent, key) = split(path);
        if let Some(Value::Object(object)) = lookup_mut(value, parent)
            && let Some(moved) = object.remove(key)
        {
            object.insert(new_key.clone(), moved);
        }
    }
    for (path, new) in &changes.set {
        put(value, path, new.clone(), true);
    }
    for (path, new) in &changes.add {
        put(value, path, new.clone(), false);
    }
    if let Some(key) = &changes.wrap {
        let inner = std::mem::take(value);
        *value = serde_json::json!({ key.as_str(): inner });
    }
}

/// `a.b.c` → (`a.b`, `c`); `c` → (``, `c`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('.').unwrap_or(("", path))
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(o) => o.get(key),
        Value::Array(a) => a.get(key.parse::<usize>().ok()?),
        _ => None,
    })
}

fn lookup_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(o) => o.get_mut(key),
        Value::Array(a) => a.get_mut(key.parse::<usize>().ok()?),
        _ => None,
    })
}

fn take(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, key) = split(path);
    match lookup_mut(value, parent)? {
        Value::Object(o) => o.remove(key),
        Value::Array(a) => {
            let i = key.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Sets `path` to `new`, creating missing parent objects; `overwrite = false` keeps an
/// existing value. A parent that exists but is not an object or array is left alone.
fn put(value: &mut Value, path: &str, new: Value, overwrite: bool) {
    let mut keys = path.split('.').peekable();
    let mut current = value;
    while let Some(key) = keys.next() {
        let last = keys.peek().is_none();
        current = match current {
            Value::Object(o) => {
                if last {
                    if overwrite || !o.contains_key(key) {
                        o.insert(key.to_owned(), new);
                    }
                    return;
                }
                o.entry(key.to_owned())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()))
            }
            Value::Array(a) => {
                let Some(slot) = key.parse::<usize>().ok().and_then(|i| a.get_mut(i)) else {
                    return;
                };
                if last {
                    if overwrite {
                        *slot = new;
                    }
                    return;
                }
                slot
            }
            _ => return,
        };
    }
}

weir_plugin::export_filter!(Transform);

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use weir_plugin::Hooks;
    use weir_plugin::testing::{Harness, TestRequest};

    use super::Transform;

    fn transform(config: &str) -> Harness<Transform> {
        Harness::new(config).expect("valid config")
    }

    fn json_body(reply: &weir_plugin::Reply) -> Value {
        serde_json::from_slice(&reply.body).expect("JSON body")
    }

    #[test]
    fn body_hooks_are_asked_for_only_with_json_changes() {
        let headers_only = transform("[request.headers]\nremove = [\"x-a\"]");
        assert_eq!(headers_only.hooks(), Hooks::REQUEST);
        let json = transform("[response.json]\nremove = [\"a\"]");
        assert!(json.hooks().on_response_body && !json.hooks().on_request_body);
    }

    #[test]
    fn request_headers_are_renamed_removed_and_set_from_templates() {
        let t = transform(
            r#"
[request.headers]
rename = { "x-old" = "x-new" }
remove = ["x-debug"]
set = { "x-trace" = "{request_id}/{method} {path} for {header.x-user}", "x-route" = "{route}" }
"#,
        );
        let out = t
            .request(
                TestRequest::get("/a")
                    .header("x-old", "v")
                    .header("x-debug", "1")
                    .header("x-user", "ann"),
            )
            .forwarded();
        assert_eq!(out.header_value("x-new"), Some("v"));
        assert_eq!(out.header_value("x-old"), None);
        assert_eq!(out.header_value("x-debug"), None);
        assert_eq!(
            out.header_value("x-trace"),
            Some("test-request/GET /a for ann")
        );
        assert_eq!(out.header_value("x-route"), Some("default"));
    }

    #[test]
    fn response_json_fields_are_removed_renamed_set_added_and_wrapped() {
        let t = transform(
            r#"
[response.json]
remove = ["password", "profile.ssn", "tags.0"]
rename = { "profile.mail" = "email" }
set = { "meta.gateway" = "weir" }
add = { "profile.plan" = "free", "id" = 0 }
wrap = "data"
"#,
        );
        let body = json!({
            "id": 7, "password": "x", "tags": ["a", "b"],
            "profile": {"mail": "a@example.com", "ssn": "1", "plan": "pro"}
        });
        let out = t
            .response_body(
                &TestRequest::get("/"),
                200,
                &[("content-type", "application/json; charset=utf-8")],
                &serde_json::to_vec(&body).expect("json"),
            )
            .continued();
        let got = json_body(&out);
        assert_eq!(
            got,
            json!({"data": {
                "id": 7, "tags": ["b"], "meta": {"gateway": "weir"},
                "profile": {"email": "a@example.com", "plan": "pro"}
            }})
        );
        assert_eq!(
            out.header_value("content-length"),
            Some(out.body.len().to_string().as_str())
        );
    }

    #[test]
    fn an_envelope_is_unwrapped_and_non_json_passes_untouched() {
        let t =
            transform("[request.json]\nunwrap = \"data.user\"\n[response.json]\nremove = [\"a\"]");
        let request =
            TestRequest::new("POST", "/").header("content-type", "application/vnd.api+json");
        let out = t
            .request_body(&request, br#"{"data": {"user": {"name": "ann"}}}"#)
            .continued();
        assert_eq!(json_body(&out), json!({"name": "ann"}));

        let text = t
            .response_body(&request, 200, &[("content-type", "text/plain")], b"a=1")
            .continued();
        assert_eq!(text.body, b"a=1");
        assert_eq!(text.header_value("content-length"), None, "nothing changed");
    }

    #[test]
    fn invalid_request_json_is_refused_and_invalid_response_json_is_kept() {
        let t = transform("[request.json]\nremove = [\"a\"]\n[response.json]\nremove = [\"a\"]");
        let request = TestRequest::new("POST", "/").header("content-type", "application/json");
        let reply = t.request_body(&request, b"{nope").responded();
        assert_eq!(reply.status, 400);
        let kept = t
            .response_body(
                &request,
                200,
                &[("content-type", "application/json")],
                b"{nope",
            )
            .continued();
        assert_eq!(kept.body, b"{nope");
    }

    #[test]
    fn bad_configs_are_refused() {
        for (config, want) in [
            (
                "[request.headers]\nremove = [\"bad name\"]",
                "not a header name",
            ),
            ("[response.json]\nremove = [\"a..b\"]", "not valid"),
            ("[response.json]\nwrap = \"\"", "must not be empty"),
            ("[response]\nbody = 1", "unknown field"),
        ] {
            let err = Harness::<Transform>::new(config).expect_err(config);
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
