//! `transform`: changes requests and responses on their way through. Headers are renamed,
//! set from templates or removed in the head hooks; bodies are converted between XML and
//! JSON (`xml.rs`) and JSON bodies changed by path (`json.rs`) in the body hooks, which are
//! asked for only when a direction has body changes, so a headers-only config never makes
//! weir buffer a body. See the README for every key.
//!
//! Order, per direction: headers `rename`, `remove`, `set`; then the body: XML → JSON, JSON
//! `unwrap`, `remove`, `rename`, `set`, `add`, `wrap`, JSON → XML. Converting first and last
//! lets the JSON changes work on a converted body, and on a body before it is converted.
//! weir corrects `Content-Length` after a body changes.

#![forbid(unsafe_code)]

mod json;
mod xml;

use std::collections::BTreeMap;

use weir_plugin::{Action, Body, Filter, Hooks, Reply, Request, Response};

pub use json::Json;

/// The `Content-Type` of a body converted to JSON.
const JSON_TYPE: &str = "application/json";
/// The `Content-Type` of a body converted to XML.
const XML_TYPE: &str = "application/xml";
/// The root element of JSON → XML when the JSON is not an object with one key.
const DEFAULT_ROOT: &str = "root";

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
    /// JSON body changes; applied only to `application/json` (or `+json`) bodies, and to
    /// XML bodies `xml_to_json` converted.
    #[serde(default)]
    pub json: JsonChanges,
    /// Convert XML bodies (`application/xml`, `text/xml`, `+xml`) to JSON, before the JSON
    /// changes.
    #[serde(default)]
    pub xml_to_json: bool,
    /// Convert JSON bodies to XML, after the JSON changes.
    #[serde(default)]
    pub json_to_xml: bool,
    /// The root element `json_to_xml` puts a body in when it is not an object with one key
    /// (`root` if not set).
    #[serde(default)]
    pub xml_root: Option<String>,
}

impl Direction {
    fn has_body_changes(&self) -> bool {
        !self.json.is_empty() || self.xml_to_json || self.json_to_xml
    }

    /// Runs this direction's body changes on `body`, in order: XML → JSON, the JSON
    /// changes, JSON → XML. Returns the body's new `Content-Type` if a conversion changed
    /// it. On an error, the body is as it came.
    fn change_body(
        &self,
        content_type: Option<&str>,
        body: &mut Body,
    ) -> Result<Option<&'static str>, Failure> {
        let (media, charset) = media(content_type);
        let mut value = match media {
            Media::Xml if self.xml_to_json => {
                xml::to_json(body.bytes(), charset).map_err(Failure::FromXml)?
            }
            Media::Json if !self.json.is_empty() || self.json_to_xml => {
                body.json::<Json>().map_err(Failure::Json)?
            }
            _ => return Ok(None),
        };
        json::apply(&self.json, &mut value);
        if self.json_to_xml {
            let root = self.xml_root.as_deref().unwrap_or(DEFAULT_ROOT);
            let xml = xml::from_json(&value, root, body.bytes().len()).map_err(Failure::ToXml)?;
            body.replace(xml);
            return Ok(Some(XML_TYPE));
        }
        replace(body, &value);
        Ok((media == Media::Xml).then_some(JSON_TYPE))
    }
}

/// Why a body was not changed.
#[derive(Debug)]
enum Failure {
    Json(serde_json::Error),
    FromXml(xml::Error),
    ToXml(xml::Error),
}

impl Failure {
    /// What failed, for the client's 400 or the log: "`what` body is not valid JSON".
    fn summary(&self, what: &str) -> String {
        match self {
            Failure::Json(_) => format!("{what} body is not valid JSON"),
            Failure::FromXml(_) => format!("{what} body cannot be converted from XML"),
            Failure::ToXml(_) => format!("{what} body cannot be converted to XML"),
        }
    }

    /// Why.
    fn detail(&self) -> String {
        match self {
            Failure::Json(e) => e.to_string(),
            Failure::FromXml(e) | Failure::ToXml(e) => e.to_string(),
        }
    }
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
    pub set: BTreeMap<String, Json>,
    /// Path → value, set only if the field does not exist.
    #[serde(default)]
    pub add: BTreeMap<String, Json>,
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
            if direction.xml_to_json && direction.json_to_xml {
                return Err(format!(
                    "{name}: xml_to_json and json_to_xml cannot both be set"
                ));
            }
            if let Some(root) = &direction.xml_root {
                if !direction.json_to_xml {
                    return Err(format!("{name}.xml_root is used only with json_to_xml"));
                }
                if !xml::is_name(root) {
                    return Err(format!("{name}.xml_root: {root:?} is not an XML name"));
                }
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
            on_request_body: self.request.has_body_changes(),
            on_response_body: self.response.has_body_changes(),
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

    /// A request body that cannot be read or converted is refused (400): the upstream
    /// expects what the conversion would have made.
    fn on_request_body(&self, request: &mut Request, body: &mut Body) -> Action {
        match self
            .request
            .change_body(request.header("content-type"), body)
        {
            Ok(Some(content_type)) => request.set_header("content-type", content_type),
            Ok(None) => {}
            Err(failure) => {
                let (summary, detail) = (failure.summary("request"), failure.detail());
                weir_plugin::log::info!("{summary}, refused with 400: {detail}");
                let message = serde_json::json!({ "message": summary, "detail": detail });
                return Reply::json(400, &message).into();
            }
        }
        Action::Continue
    }

    /// A response body that cannot be read or converted goes on as it came, logged: the
    /// client gets the upstream's answer rather than an error of ours.
    fn on_response_body(&self, _: &Request, response: &mut Response, body: &mut Body) -> Action {
        match self
            .response
            .change_body(response.header("content-type"), body)
        {
            Ok(Some(content_type)) => response.set_header("content-type", content_type),
            Ok(None) => {}
            Err(failure) => {
                let (summary, detail) = (failure.summary("response"), failure.detail());
                weir_plugin::log::warn!("{summary}, left as is: {detail}");
            }
        }
        Action::Continue
    }
}

fn replace(body: &mut Body, value: &Json) {
    if let Err(e) = body.set_json(value) {
        weir_plugin::log::warn!("cannot serialise the transformed body: {e}");
    }
}

/// What a body is, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    /// `application/json`, `application/*+json`.
    Json,
    /// `application/xml`, `text/xml`, `application/*+xml`, `text/*+xml`.
    Xml,
    Other,
}

/// The kind of body `content_type` names, and its `charset` parameter if it has one.
fn media(content_type: Option<&str>) -> (Media, Option<&str>) {
    let Some(content_type) = content_type else {
        return (Media::Other, None);
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    });
    let (kind, subtype) = essence.split_once('/').unwrap_or((&essence, ""));
    let media = match (kind, subtype) {
        ("application", "json") => Media::Json,
        ("application", s) if s.ends_with("+json") => Media::Json,
        ("application" | "text", "xml") => Media::Xml,
        ("application" | "text", s) if s.ends_with("+xml") => Media::Xml,
        _ => Media::Other,
    };
    (media, charset)
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
    fn body_hooks_are_asked_for_only_with_body_changes() {
        let headers_only = transform("[request.headers]\nremove = [\"x-a\"]");
        assert_eq!(headers_only.hooks(), Hooks::REQUEST);
        let json = transform("[response.json]\nremove = [\"a\"]");
        assert!(json.hooks().on_response_body && !json.hooks().on_request_body);
        let xml = transform("[request]\nxml_to_json = true\n[response]\njson_to_xml = true");
        assert_eq!(
            xml.hooks(),
            Hooks {
                on_request_body: true,
                on_response_body: true,
                ..Hooks::NONE
            }
        );
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
            (
                "[request]\nxml_to_json = true\njson_to_xml = true",
                "cannot both be set",
            ),
            (
                "[response]\nxml_root = \"doc\"",
                "xml_root is used only with json_to_xml",
            ),
            (
                "[response]\njson_to_xml = true\nxml_root = \"1doc\"",
                "is not an XML name",
            ),
        ] {
            let err = Harness::<Transform>::new(config).expect_err(config);
            assert!(err.contains(want), "{config}: {err}");
        }
    }

    const ORDER_XML: &str = r#"<?xml version="1.0"?>
<order id="A-17" xmlns="urn:example:orders">
  <customer>Ann</customer>
  <card>4111 1111 1111 1111</card>
  <line sku="X1"><qty>2</qty></line>
  <line sku="Y2"><qty>1</qty></line>
</order>"#;

    fn xml_value(reply: &weir_plugin::Reply) -> Value {
        let json = crate::xml::to_json(&reply.body, None).expect("XML body");
        serde_json::to_value(&json).expect("JSON")
    }

    fn content_length_is_right(reply: &weir_plugin::Reply) {
        let len = reply.body.len().to_string();
        assert_eq!(reply.header_value("content-length"), Some(len.as_str()));
    }

    #[test]
    fn an_xml_request_goes_upstream_as_json_and_the_json_reply_returns_as_xml() {
        let t = transform("[request]\nxml_to_json = true\n[response]\njson_to_xml = true");
        let request =
            TestRequest::new("POST", "/orders").header("content-type", "text/xml; charset=utf-8");
        let upstream = t.request_body(&request, ORDER_XML.as_bytes()).continued();
        assert_eq!(
            upstream.header_value("content-type"),
            Some("application/json")
        );
        content_length_is_right(&upstream);
        let text = std::str::from_utf8(&upstream.body).expect("UTF-8");
        assert!(
            text.starts_with(
                r#"{"order":{"@id":"A-17","@xmlns":"urn:example:orders","customer":"Ann""#
            ),
            "document order: {text}"
        );
        assert_eq!(
            json_body(&upstream)["order"]["line"],
            json!([{"@sku": "X1", "qty": "2"}, {"@sku": "Y2", "qty": "1"}])
        );

        let reply = br#"{"status": "accepted", "id": "A-17", "lines": 2}"#;
        let client = t
            .response_body(
                &request,
                201,
                &[("content-type", "application/json")],
                reply,
            )
            .continued();
        assert_eq!(client.status, 201);
        assert_eq!(client.header_value("content-type"), Some("application/xml"));
        content_length_is_right(&client);
        let text = std::str::from_utf8(&client.body).expect("UTF-8");
        assert_eq!(
            text,
            r#"<?xml version="1.0" encoding="UTF-8"?><root><status>accepted</status><id>A-17</id><lines>2</lines></root>"#
        );
    }

    #[test]
    fn a_json_request_goes_upstream_as_xml_and_the_xml_reply_returns_as_json() {
        let t = transform(
            "[request]\njson_to_xml = true\nxml_root = \"request\"\n[response]\nxml_to_json = true",
        );
        let request = TestRequest::new("POST", "/").header("content-type", "application/json");
        let upstream = t
            .request_body(&request, br#"{"user": "ann", "age": 40}"#)
            .continued();
        assert_eq!(
            upstream.header_value("content-type"),
            Some("application/xml")
        );
        content_length_is_right(&upstream);
        assert_eq!(
            xml_value(&upstream),
            json!({"request": {"user": "ann", "age": "40"}})
        );

        let soap = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><ok/></s:Body></s:Envelope>"#;
        let client = t
            .response_body(
                &request,
                200,
                &[("content-type", "application/soap+xml; charset=utf-8")],
                soap,
            )
            .continued();
        assert_eq!(
            client.header_value("content-type"),
            Some("application/json")
        );
        content_length_is_right(&client);
        assert_eq!(
            json_body(&client),
            json!({"s:Envelope": {"@xmlns:s": "http://www.w3.org/2003/05/soap-envelope", "s:Body": {"ok": null}}})
        );
    }

    #[test]
    fn json_changes_run_after_xml_to_json_and_before_json_to_xml() {
        let t = transform(
            r#"
[request]
xml_to_json = true
[request.json]
remove = ["order.card"]
rename = { "order.@id" = "id" }
set = { "order.via" = "weir" }

[response]
json_to_xml = true
xml_root = "orders"
[response.json]
wrap = "order"
"#,
        );
        let request = TestRequest::new("POST", "/").header("content-type", "application/xml");
        let upstream = t.request_body(&request, ORDER_XML.as_bytes()).continued();
        let order = &json_body(&upstream)["order"];
        assert!(order.get("card").is_none(), "{order}");
        assert_eq!(order["id"], "A-17");
        assert_eq!(order["via"], "weir");
        let text = std::str::from_utf8(&upstream.body).expect("UTF-8");
        assert!(
            text.starts_with(r#"{"order":{"id":"A-17","@xmlns""#),
            "renamed in place: {text}"
        );

        // A top-level array has no XML form; wrapped first, it is the repeated element.
        let reply = br#"[{"id": 1}, {"id": 2}]"#;
        let client = t
            .response_body(
                &request,
                200,
                &[("content-type", "application/json")],
                reply,
            )
            .continued();
        assert_eq!(
            std::str::from_utf8(&client.body).expect("UTF-8"),
            r#"<?xml version="1.0" encoding="UTF-8"?><orders><order><id>1</id></order><order><id>2</id></order></orders>"#
        );
    }

    #[test]
    fn only_xml_and_json_content_types_are_converted() {
        let t = transform("[request]\nxml_to_json = true\n[response]\njson_to_xml = true");
        for content_type in [
            "application/xml",
            "text/xml",
            "Application/XML; charset=UTF-8",
            "application/atom+xml",
            "application/rss+xml",
            "text/vnd.example+xml",
        ] {
            let request = TestRequest::new("POST", "/").header("content-type", content_type);
            let out = t.request_body(&request, b"<a>1</a>").continued();
            assert_eq!(json_body(&out), json!({"a": "1"}), "{content_type}");
        }
        for content_type in [
            "text/plain",
            "application/xml-dtd",
            "image/svg",
            "application/json",
        ] {
            let request = TestRequest::new("POST", "/").header("content-type", content_type);
            let out = t.request_body(&request, b"<a>1</a>").continued();
            assert_eq!(out.body, b"<a>1</a>", "{content_type}");
            assert_eq!(
                out.header_value("content-length"),
                None,
                "{content_type}: untouched"
            );
        }
        let untyped = t
            .request_body(&TestRequest::new("POST", "/"), b"<a/>")
            .continued();
        assert_eq!(untyped.body, b"<a/>");

        // json_to_xml leaves XML (and anything else that is not JSON) alone.
        for (content_type, body) in [("application/xml", "<a/>"), ("text/csv", "a,b")] {
            let out = t
                .response_body(
                    &TestRequest::get("/"),
                    200,
                    &[("content-type", content_type)],
                    body.as_bytes(),
                )
                .continued();
            assert_eq!(out.body, body.as_bytes(), "{content_type}");
            assert_eq!(out.header_value("content-type"), Some(content_type));
        }
        let out = t
            .response_body(
                &TestRequest::get("/"),
                200,
                &[("content-type", "application/problem+json")],
                br#"{"title": "x"}"#,
            )
            .continued();
        assert_eq!(out.header_value("content-type"), Some("application/xml"));
    }

    #[test]
    fn a_request_that_cannot_be_converted_is_refused_and_a_response_goes_on_as_it_came() {
        let t = transform(
            "[request]\nxml_to_json = true\n[response]\njson_to_xml = true\n[response.json]\nremove = [\"a\"]",
        );
        let request = TestRequest::new("POST", "/").header("content-type", "application/xml");
        let lol = r#"<!DOCTYPE l [<!ENTITY l "lol">]><l>&l;</l>"#;
        for (body, detail) in [
            ("<order><id>1</order>", "not well-formed XML"),
            (lol, "only the five predefined entities"),
            (&"<a>".repeat(65), "nest deeper than 64"),
        ] {
            let reply = t.request_body(&request, body.as_bytes()).responded();
            assert_eq!(reply.status, 400);
            let message = json_body(&reply);
            assert_eq!(
                message["message"],
                "request body cannot be converted from XML"
            );
            let got = message["detail"].as_str().unwrap_or_default();
            assert!(got.contains(detail), "{body}: {got}");
        }
        let logs = weir_plugin::testing::logs();
        assert!(
            logs.iter().any(|(_, line)| line
                .starts_with("request body cannot be converted from XML, refused with 400")),
            "{logs:?}"
        );

        for (body, want) in [
            (
                &b"[1, 2]"[..],
                "response body cannot be converted to XML, left as is: a top-level array",
            ),
            (
                br#"{"1x": 1}"#,
                "response body cannot be converted to XML, left as is: \"1x\" is not an XML element name",
            ),
            (b"{nope", "response body is not valid JSON, left as is"),
        ] {
            let before = weir_plugin::testing::logs().len();
            let out = t
                .response_body(&request, 200, &[("content-type", "application/json")], body)
                .continued();
            assert_eq!(out.body, body, "untouched");
            assert_eq!(out.header_value("content-type"), Some("application/json"));
            assert_eq!(out.header_value("content-length"), None);
            let logs = weir_plugin::testing::logs();
            assert_eq!(logs.len(), before + 1, "logged once: {logs:?}");
            let (level, line) = &logs[before];
            assert_eq!(*level, weir_plugin::log::Level::Warn);
            assert!(line.starts_with(want), "{line}");
        }
    }
}
