//! Body hooks see plain bodies (issue 24, deliverable 2): with an upstream that gzips whatever
//! it is asked, `transform` still removes a field from the response; a gzipped request body
//! is decoded before the hooks and sent on plain; a gzip bomb is refused at the hook's limit
//! (413) and an unknown coding with 415, neither reaching the upstream; a route without body
//! hooks passes the client's `Accept-Encoding` and the upstream's coding through untouched.
//!
//! Compression (issue 24, deliverable 1): a route with `compression` answers gzip, br and
//! zstd as the client's `Accept-Encoding` q-values ask, decoded here by real clients (curl
//! `--compressed`, Python's zlib, brotli and zstandard), and leaves alone what is not worth
//! it (small, unlisted type, `no-transform`, coded already, `HEAD`).

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

/// A server whose answer is chosen by path: `/big` 64 KiB of JSON with a strong ETag,
/// `/small` 100 bytes of JSON, `/png` 64 KiB of `image/png`, `/no-transform` the big JSON
/// with `Cache-Control: no-transform`, `/coded` gzipped JSON.
async fn content_server() -> Scripted {
    Scripted::start(|head| {
        let big = big_json();
        match head.uri.path() {
            "/small" => Answer::status(200)
                .header("content-type", "application/json")
                .body(vec![b' '; 100]),
            "/png" => Answer::status(200)
                .header("content-type", "image/png")
                .body(big.into_bytes()),
            "/no-transform" => Answer::status(200)
                .header("content-type", "application/json")
                .header("cache-control", "public, no-transform")
                .body(big.into_bytes()),
            "/coded" => Answer::status(200)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(gzip(big.as_bytes())),
            _ => Answer::status(200)
                .header("content-type", "application/json; charset=utf-8")
                .header("etag", "\"big-1\"")
                .body(big.into_bytes()),
        }
    })
    .await
}

fn big_json() -> String {
    let items: Vec<String> = (0..1400)
        .map(|i| format!(r#"{{"id":{i},"name":"item {i}","ok":true}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

async fn compressing(server: &Scripted) -> Weir {
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "content"
endpoints = ["{addr}"]

[[routes]]
name = "gzip-only"
path_prefix = "/gzip-only"
cluster = "content"
plugins = []
compression = {{ algorithms = ["gzip"] }}

[[routes]]
name = "content"
cluster = "content"
plugins = []
compression = {{ algorithms = ["zstd", "br", "gzip"], min_bytes = 1024 }}
"#,
        cache = crate::plugin_cache().display(),
        addr = server.addr,
    );
    Weir::start(&config).await
}

/// `curl -sS -D - --compressed -H 'accept-encoding: CODING' URL`: the response's headers
/// and curl's decoded body.
fn curl(url: &str, coding: &str) -> (String, Vec<u8>) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-D", "-", "--compressed", "-H"])
        .arg(format!("accept-encoding: {coding}"))
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = out.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    (
        String::from_utf8_lossy(&text[..split]).to_lowercase(),
        text[split..].to_vec(),
    )
}

/// Python's own decoder for `coding` over `bytes`.
fn python_decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let program = match coding {
        "gzip" => {
            "import sys, zlib; sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read(), 16 + zlib.MAX_WBITS))"
        }
        "br" => {
            "import sys, brotli; sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))"
        }
        _ => {
            "import sys, zstandard; sys.stdout.buffer.write(zstandard.ZstdDecompressor().decompressobj().decompress(sys.stdin.buffer.read()))"
        }
    };
    let mut child = std::process::Command::new("python3")
        .args(["-c", program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (pip install brotli zstandard)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "{coding}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

async fn get_coded(weir: &Weir, path: &str, accept: &str) -> (http::HeaderMap, Vec<u8>) {
    let request = Request::get(weir.url(path))
        .header("accept-encoding", accept)
        .body(weir_tests::empty())
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    assert_eq!(parts.status, 200);
    (parts.headers, read_body(body).await.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_compressed_as_clients_ask_and_decoded_by_real_clients() {
    let server = content_server().await;
    let weir = compressing(&server).await;
    let plain = big_json().into_bytes();

    for coding in ["gzip", "br", "zstd"] {
        // curl asks for the coding, decodes it, and says what it got.
        let (head, body) = curl(&weir.url("/big"), coding);
        assert!(
            head.contains(&format!("content-encoding: {coding}")),
            "{coding}: {head}"
        );
        assert!(!head.contains("content-length"), "{coding}: {head}");
        assert!(head.contains("vary: accept-encoding"), "{coding}: {head}");
        assert!(head.contains("etag: w/\"big-1\""), "{coding}: {head}");
        assert_eq!(body, plain, "{coding}: curl's decoding");
        // Python's decoders on the bytes as sent.
        let (headers, coded) = get_coded(&weir, "/big", coding).await;
        assert_eq!(headers["content-encoding"], coding);
        assert!(
            coded.len() < plain.len() / 4,
            "{coding}: {} bytes",
            coded.len()
        );
        assert_eq!(
            python_decode(coding, &coded),
            plain,
            "{coding}: Python's decoding"
        );
    }
    // q-values choose; ties go to the route's order (zstd, br, gzip).
    let (headers, _) = get_coded(&weir, "/big", "gzip;q=1, br;q=0.5, zstd;q=0.1").await;
    assert_eq!(headers["content-encoding"], "gzip");
    let (headers, _) = get_coded(&weir, "/big", "gzip, br, zstd").await;
    assert_eq!(headers["content-encoding"], "zstd");
    let (headers, _) = get_coded(&weir, "/gzip-only/big", "br, zstd, gzip;q=0.1").await;
    assert_eq!(
        headers["content-encoding"], "gzip",
        "only what the route allows"
    );
    // A client that takes none gets it plain, still told the response varies.
    let (headers, body) = get_coded(&weir, "/big", "identity").await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(headers["vary"], "accept-encoding");
    assert_eq!(body, plain);

    // Not worth it or not allowed: sent as it is.
    for path in ["/small", "/png", "/no-transform"] {
        let (headers, body) = get_coded(&weir, path, "gzip, br, zstd").await;
        assert!(
            headers.get("content-encoding").is_none(),
            "{path}: {headers:?}"
        );
        assert!(!body.is_empty(), "{path}");
    }
    let (headers, body) = get_coded(&weir, "/coded", "br").await;
    assert_eq!(
        headers["content-encoding"], "gzip",
        "coded already: left alone"
    );
    assert_eq!(gunzip(&body), plain);
    let head = Request::head(weir.url("/big"))
        .header("accept-encoding", "gzip")
        .body(weir_tests::empty())
        .expect("request");
    let response = http1_client().request(head).await.expect("response");
    assert!(
        response.headers().get("content-encoding").is_none(),
        "HEAD: {:?}",
        response.headers()
    );

    // What compression saved, per route and coding: plain bytes in, coded bytes out.
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    let value = |side: &str| -> f64 {
        let series = format!(
            "weir_compression_bytes_total{{coding=\"br\",route=\"content\",side=\"{side}\"}} "
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert!(
        value("plain") >= 2.0 * plain.len() as f64,
        "two br responses went out"
    );
    assert!(value("coded") < value("plain") / 4.0);
}
