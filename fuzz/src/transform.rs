//! `transform`: the bundled transform plugin's config and a whole exchange, compiled
//! natively (its Rust logic — header templates, JSON paths, XML ↔ JSON — through the SDK's
//! test harness, not the wasm). The input is text, five sections split by `%%` lines:
//!
//! ```text
//! [request]                 <- the plugin's [config] table, as in NAME.toml without [config]
//! xml_to_json = true
//! %%
//! POST /orders              <- the request head
//! content-type: application/xml
//! %%
//! <order id="7"/>           <- the request body
//! %%
//! 200                       <- the response head
//! content-type: application/json
//! %%
//! {"ok": true}              <- the response body
//! ```
//!
//! Asserts, besides no panic: a body the plugin changed and says is JSON parses as JSON,
//! one it changed and says is XML starts with the XML declaration (a body it could not
//! change goes on as it came, whatever it is), and a refused request body is a 400.

use transform::Transform;
use weir_plugin::Reply;
use weir_plugin::testing::{BodyOutcome, Harness, RequestOutcome, TestRequest};

use crate::text::{head, pairs, sections};

/// Runs the exchange in `input` through a transform configured by its first section.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let sections = sections(text);
    let part = |i: usize| sections.get(i).copied().unwrap_or_default();
    let Ok(harness) = Harness::<Transform>::new(part(0)) else {
        return;
    };
    let hooks = harness.hooks();
    let (line, headers) = head(part(1));
    let (method, target) = line.split_once(' ').unwrap_or(("POST", line));
    let mut request = TestRequest::new(method, &format!("/{}", target.trim_start_matches('/')));
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let request = match harness.request(request) {
        RequestOutcome::Forwarded(forwarded) => forwarded,
        RequestOutcome::Responded(reply) => panic!("transform answered a request head: {reply:?}"),
    };
    if hooks.on_request_body {
        match harness.request_body(&request, part(2).as_bytes()) {
            BodyOutcome::Continued(message) => check_body(&message, part(2).as_bytes()),
            BodyOutcome::Responded(reply) => {
                assert_eq!(reply.status, 400, "a refused request body: {reply:?}");
                return;
            }
        }
    }
    let (status, headers) = head(part(3));
    let status = status.trim().parse().unwrap_or(200);
    let headers = pairs(&headers);
    let _ = harness.response(&request, status, &headers);
    if hooks.on_response_body {
        match harness.response_body(&request, status, &headers, part(4).as_bytes()) {
            BodyOutcome::Continued(message) => check_body(&message, part(4).as_bytes()),
            BodyOutcome::Responded(reply) => panic!("transform replaced a response: {reply:?}"),
        }
    }
}

/// A body the plugin changed from `sent`: as JSON it parses; as XML it has the declaration
/// first.
fn check_body(message: &Reply, sent: &[u8]) {
    if message.body == sent {
        return;
    }
    match message.header_value("content-type") {
        Some("application/json") => assert!(
            serde_json::from_slice::<serde_json::Value>(&message.body).is_ok(),
            "a body sent on as JSON is not JSON: {:?}",
            String::from_utf8_lossy(&message.body)
        ),
        Some("application/xml") => assert!(
            message.body.starts_with(b"<?xml"),
            "a body sent on as XML has no declaration: {:?}",
            String::from_utf8_lossy(&message.body)
        ),
        _ => {}
    }
}
