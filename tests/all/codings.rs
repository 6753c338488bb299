//! Body hooks see plain bodies (issue 24, deliverable 2): with an upstream that gzips whatever
//! it is asked, `transform` still removes a field from the response; a gzipped request body
//! is decoded before the hooks and sent on plain; a gzip bomb is refused at the hook's limit
//! (413) and an unknown coding with 415, neither reaching the upstream; a route without body
//! hooks passes the client's `Accept-Encoding` and the upstream's coding through untouched.

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use weir_tests::scripted::Answer;
use weir_tests::{Scripted, Upstream, Weir, http1_client, read_body};

const TRANSFORM: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/transform.wasm"));

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut decoded)
        .expect("gunzip");
    decoded
}

/// weir with `transform` (removing `secret` both ways) on `/json` and `/echo`, and a plain
/// route `/plain`, in front of `coded` (a server that gzips every answer, whatever it is
/// asked) and `echo` (the test upstream).
async fn start(coded: &Scripted, echo: &Upstream) -> Weir {
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "coded"
endpoints = ["{coded}"]

[[clusters]]
name = "echo"
endpoints = ["{echo}"]

[[routes]]
name = "echo"
path_prefix = "/echo"
cluster = "echo"
plugins = ["transform"]

[[routes]]
name = "plain"
path_prefix = "/plain"
cluster = "coded"
plugins = []

[[routes]]
name = "json"
cluster = "coded"
plugins = ["transform"]
"#,
        cache = crate::plugin_cache().display(),
        coded = coded.addr,
        echo = echo.addr,
    );
    let settings = "[config.request.json]\nremove = [\"secret\"]\n[config.response.json]\nremove = [\"secret\"]\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/transform.wasm", TRANSFORM),
        ("plugins/transform.toml", settings.as_bytes()),
    ];
    Weir::start_with_files(&config, &files).await
}

/// A server that answers gzipped JSON to everything, noting the `Accept-Encoding` it got.
async fn gzipping_server() -> (Scripted, Arc<Mutex<Vec<String>>>) {
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = asked.clone();
    let server = Scripted::start(move |head| {
        let accept = head
            .headers
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned();
        if let Ok(mut seen) = seen.lock() {
            seen.push(accept);
        }
        Answer::status(200)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("etag", "\"v1\"")
            .body(gzip(br#"{"name":"ann","secret":"s3cret"}"#))
    })
    .await;
    (server, asked)
}

async fn get(weir: &Weir, path: &str) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let request = Request::get(weir.url(path))
        .header("accept-encoding", "gzip, br")
        .body(weir_tests::empty())
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, read_body(body).await.to_vec())
}

async fn post(weir: &Weir, path: &str, coding: &str, body: Vec<u8>) -> (StatusCode, String) {
    let request = Request::post(weir.url(path))
        .header("content-type", "application/json")
        .header("content-encoding", coding)
        .body(weir_tests::full(body))
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    let status = response.status();
    let body = String::from_utf8_lossy(&read_body(response.into_body()).await).into_owned();
    (status, body)
}

/// The issue's bar: with an upstream that gzips, `transform`'s `json.remove` still removes
/// the field.
#[tokio::test(flavor = "multi_thread")]
async fn a_field_is_removed_from_a_body_the_upstream_gzips() {
    let (coded, asked) = gzipping_server().await;
    let echo = Upstream::start("echo").await;
    let weir = start(&coded, &echo).await;

    let (status, headers, body) = get(&weir, "/users/7").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("plain JSON");
    assert_eq!(
        json,
        serde_json::json!({"name": "ann"}),
        "the field is gone"
    );
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert_eq!(
        headers["etag"], "W/\"v1\"",
        "a strong validator of the coded body is weakened"
    );
    // weir asked for the body plain; this server coded it anyway.
    assert_eq!(
        asked.lock().expect("asked").pop().as_deref(),
        Some("identity")
    );

    // Without body hooks, nothing is decoded or asked: the coding goes through.
    let (status, headers, body) = get(&weir, "/plain/users/7").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(gunzip(&body), br#"{"name":"ann","secret":"s3cret"}"#);
    assert_eq!(
        asked.lock().expect("asked").pop().as_deref(),
        Some("gzip, br")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gzipped_request_body_is_decoded_for_the_hooks_and_a_bomb_is_refused() {
    let (coded, _) = gzipping_server().await;
    let echo = Upstream::start("echo").await;
    let weir = start(&coded, &echo).await;

    let (status, body) = post(
        &weir,
        "/echo",
        "gzip",
        gzip(br#"{"name":"bo","secret":"x"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("the echo is plain JSON");
    assert_eq!(json, serde_json::json!({"name": "bo"}));
    let seen = echo.requests().pop().expect("forwarded");
    assert!(
        seen.headers.get("content-encoding").is_none(),
        "{:?}",
        seen.headers
    );

    // 64 MiB of zeros in about 64 KiB: refused at the hook's 1 MiB, never inflated.
    let before = echo.requests().len();
    let bomb = gzip(&vec![0u8; 64 << 20]);
    let (status, _) = post(&weir, "/echo", "gzip", bomb).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = post(&weir, "/echo", "compress", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = post(&weir, "/echo", "gzip", b"{\"not\": \"gzip\"}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        echo.requests().len(),
        before,
        "none of them reached the upstream"
    );
}
