//! XML ↔ JSON in `transform` (issue 25, deliverable 4), through a real weir: an XML order
//! posted to a JSON upstream arrives as JSON (`Content-Type` and `Content-Length` to match)
//! and the upstream's JSON answer returns to the client as XML; a SOAP envelope goes to the
//! upstream as JSON and comes back as the same envelope; a body that cannot be converted is
//! refused (a request) or passed on as it came with a warning (a response).
//!
//! Two copies of the bundled plugin: `transform` (both directions) on every `POST`, and
//! `xml-in` (XML → JSON on the request only) on `PUT /echo`, so the test upstream's echo
//! shows the client exactly the JSON the upstream was sent.

use http::{Request, StatusCode};
use weir_tests::{Upstream, Weir, http1_client, read_body};

const TRANSFORM: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/transform.wasm"));

/// Requests: XML to JSON, and the upstream asked for JSON back. Responses: JSON to XML,
/// under `<reply>` when the JSON is not an object with one key.
const BOTH_WAYS: &str = r#"
[config.request]
xml_to_json = true
[config.request.headers]
set = { "accept" = "application/json" }

[config.response]
json_to_xml = true
xml_root = "reply"
"#;

const REQUEST_ONLY: &str = "[config.request]\nxml_to_json = true\n";

const ORDER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<order id="A-17" xmlns="urn:example:orders">
  <customer email="ann@example.org">Ann &amp; Bo</customer>
  <line sku="X1"><qty>2</qty><price currency="EUR">9.90</price></line>
  <line sku="Y2"><qty>1</qty><price currency="EUR">4.50</price></line>
  <!-- gift wrapped -->
  <note><![CDATA[Ring <twice>]]></note>
</order>
"#;

/// The JSON `ORDER` becomes, byte for byte: document order, compact.
const ORDER_JSON: &str = concat!(
    r##"{"order":{"@id":"A-17","@xmlns":"urn:example:orders","##,
    r##""customer":{"@email":"ann@example.org","#text":"Ann & Bo"},"##,
    r##""line":[{"@sku":"X1","qty":"2","price":{"@currency":"EUR","#text":"9.90"}},"##,
    r##"{"@sku":"Y2","qty":"1","price":{"@currency":"EUR","#text":"4.50"}}],"##,
    r##""note":"Ring <twice>"}}"##
);

/// weir in front of `upstream`: `transform` on the catch-all route, `xml-in` on `PUT /echo`.
async fn start(upstream: &Upstream) -> Weir {
    let routes = r#"plugins = ["transform"]

[[routes]]
name = "inspect"
path_prefix = "/echo"
methods = ["PUT"]
cluster = "app"
plugins = ["xml-in"]
"#;
    let files: [(&str, &[u8]); 4] = [
        ("plugins/transform.wasm", TRANSFORM),
        ("plugins/transform.toml", BOTH_WAYS.as_bytes()),
        ("plugins/xml-in.wasm", TRANSFORM),
        ("plugins/xml-in.toml", REQUEST_ONLY.as_bytes()),
    ];
    Weir::start_with_files(&crate::config(&[upstream.addr], routes), &files).await
}

/// Sends `body` as `content_type`; returns the status, headers and body of the answer.
async fn send(
    weir: &Weir,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let request = Request::builder()
        .method(method)
        .uri(weir.url(path))
        .header("content-type", content_type)
        .header("soapaction", "\"urn:example:orders/Place\"")
        .body(weir_tests::full(body.to_owned()))
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = String::from_utf8(read_body(body).await.to_vec()).expect("UTF-8");
    (parts.status, parts.headers, body)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

/// The issue's bar.
#[tokio::test(flavor = "multi_thread")]
async fn an_xml_order_reaches_a_json_upstream_as_json_and_its_answer_returns_as_xml() {
    let upstream = Upstream::start_json("orders").await;
    let weir = start(&upstream).await;

    // The JSON upstream is sent JSON, and asked for JSON back.
    let (status, headers, body) =
        send(&weir, "POST", "/api/orders", "application/xml", ORDER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = upstream
        .requests()
        .pop()
        .expect("the upstream saw the order");
    assert_eq!(header(&seen.headers, "content-type"), "application/json");
    assert_eq!(
        header(&seen.headers, "content-length"),
        ORDER_JSON.len().to_string(),
        "Content-Length describes the JSON sent"
    );
    assert_eq!(header(&seen.headers, "accept"), "application/json");
    assert!(seen.headers.get("transfer-encoding").is_none());

    // Its JSON answer (several keys) comes back as XML under <reply>.
    assert_eq!(header(&headers, "content-type"), "application/xml");
    assert_eq!(header(&headers, "content-length"), body.len().to_string());
    assert!(
        body.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><reply>"#),
        "{body}"
    );
    for element in [
        "<upstream>orders</upstream>",
        "<path>/api/orders</path>",
        "<query/>",
        "<secret>upstream-only</secret>",
    ] {
        assert!(body.contains(element), "{element} in {body}");
    }
    assert!(body.ends_with("</reply>"), "{body}");

    // Exactly the JSON the upstream was sent, echoed back through `xml-in` (request only).
    let (status, headers, echoed) =
        send(&weir, "PUT", "/echo", "text/xml; charset=utf-8", ORDER).await;
    assert_eq!(status, StatusCode::OK, "{echoed}");
    assert_eq!(echoed, ORDER_JSON);
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert_eq!(
        header(&headers, "content-length"),
        ORDER_JSON.len().to_string()
    );
}

/// A SOAP 1.1 call whose upstream speaks JSON: the envelope goes up as JSON, and the JSON
/// that comes back (the echo, here) returns to the client as the same envelope: prefixes,
/// namespace declarations, attributes and the order of header and body as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_soap_envelope_round_trips_through_weir() {
    let upstream = Upstream::start("soap").await;
    let weir = start(&upstream).await;
    let envelope = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <soap:Header>
    <auth:Token xmlns:auth="urn:example:auth" soap:mustUnderstand="1">t-123</auth:Token>
  </soap:Header>
  <soap:Body>
    <m:PlaceOrder xmlns:m="urn:example:orders">
      <m:Item sku="X1" qty="2"/>
      <m:Item sku="Y2" qty="1"/>
      <m:Coupon xsi:nil="true"/>
      <m:Note><![CDATA[ring twice & wait]]></m:Note>
    </m:PlaceOrder>
  </soap:Body>
</soap:Envelope>
"#;
    let (status, headers, body) =
        send(&weir, "POST", "/echo", "text/xml; charset=utf-8", envelope).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let seen = upstream
        .requests()
        .pop()
        .expect("the upstream saw the call");
    assert_eq!(header(&seen.headers, "content-type"), "application/json");
    assert_eq!(
        header(&seen.headers, "soapaction"),
        "\"urn:example:orders/Place\""
    );

    // The same envelope, without the indentation; CDATA as escaped text.
    assert_eq!(header(&headers, "content-type"), "application/xml");
    assert_eq!(header(&headers, "content-length"), body.len().to_string());
    assert_eq!(
        body,
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<soap:Header><auth:Token xmlns:auth="urn:example:auth" soap:mustUnderstand="1">t-123</auth:Token></soap:Header>"#,
            r#"<soap:Body><m:PlaceOrder xmlns:m="urn:example:orders">"#,
            r#"<m:Item sku="X1" qty="2"/><m:Item sku="Y2" qty="1"/><m:Coupon xsi:nil="true"/>"#,
            r#"<m:Note>ring twice &amp; wait</m:Note>"#,
            r#"</m:PlaceOrder></soap:Body></soap:Envelope>"#,
        )
    );

    // What went up, through `xml-in`: the envelope as JSON.
    let (_, _, json) = send(&weir, "PUT", "/echo", "text/xml; charset=utf-8", envelope).await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(
        json["soap:Envelope"]["soap:Body"]["m:PlaceOrder"]["m:Item"],
        serde_json::json!([{"@sku": "X1", "@qty": "2"}, {"@sku": "Y2", "@qty": "1"}])
    );
    assert_eq!(
        json["soap:Envelope"]["soap:Header"]["auth:Token"],
        serde_json::json!({"@xmlns:auth": "urn:example:auth", "@soap:mustUnderstand": "1", "#text": "t-123"})
    );
}

/// A request body that cannot be converted never reaches the upstream (400, saying why);
/// a response that cannot be converted reaches the client as it came, with a warning.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_cannot_be_converted_is_refused_or_passed_on() {
    let upstream = Upstream::start("app").await;
    let mut weir = start(&upstream).await;

    let before = upstream.requests().len();
    let lol = r#"<!DOCTYPE l [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;">]><l>&l2;</l>"#;
    for body in ["<order><id>1</order>", lol, &"<a>".repeat(100)] {
        let (status, headers, reply) = send(&weir, "POST", "/echo", "application/xml", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(header(&headers, "content-type"), "application/json");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(
            reply["message"],
            "request body cannot be converted from XML"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        before,
        "none reached the upstream"
    );

    // JSON goes up untouched (it is not XML); the echo's top-level array has no XML form.
    let (status, headers, body) = send(&weir, "POST", "/echo", "application/json", "[1, 2]").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "[1, 2]");
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert_eq!(header(&headers, "content-length"), "6");
    let fields = weir
        .wait_for_message("response body cannot be converted to XML, left as is")
        .await;
    assert_eq!(fields["plugin"], "transform");
}
