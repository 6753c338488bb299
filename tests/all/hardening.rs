//! Hardening (issue 22), what exists of it: no spelling of a path reaches a route other than
//! the one its normal form names, so a route's auth cannot be walked around, over HTTP/1.1
//! (written raw, so no client tidies the path first) and HTTP/2; and a client's own identity
//! headers (`x-consumer-id`) never reach a plugin or an upstream.

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::{DEADLINE, Upstream, Weir, http2_client, read_body};

/// `/private` behind key-auth, everything else open, one upstream answering `NAME METHOD PATH`.
async fn private_and_open() -> (Upstream, Weir) {
    let upstream = Upstream::start("app").await;
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{addr}"]

[[routes]]
name = "private"
path_prefix = "/private"
cluster = "app"
plugins = ["key-auth"]

[[routes]]
name = "open"
cluster = "app"
plugins = []
"#,
        addr = upstream.addr,
        cache = crate::plugin_cache().display()
    );
    let files = crate::key_auth_files();
    let weir = Weir::start_with_files(&config, &files).await;
    (upstream, weir)
}

/// The spellings of `/private/file` an attacker tries.
const VARIANTS: [&str; 14] = [
    "/private/file",
    "/%70rivate/file",
    "/privat%65/file",
    "//private/file",
    "/./private/file",
    "/x/../private/file",
    "/%2e/private/file",
    "/%2E%2E/private/file",
    "/public/../private/file",
    "/public/%2e%2e/private/file",
    "/%2fprivate/file",
    "/private%2f../file",
    "/public/..%2fprivate/file",
    "/public\\..\\private/file",
];

/// One raw HTTP/1.1 request for `target`; the status code.
async fn raw_status(weir: &Weir, target: &str, key: Option<&str>) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    let key = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    let head = format!("GET {target} HTTP/1.1\r\nhost: app.test\r\n{key}connection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_path_reaches_the_open_route_over_http1() {
    let (upstream, weir) = private_and_open().await;
    for target in VARIANTS {
        let status = raw_status(&weir, target, None).await;
        assert!(
            [400, 401, 404].contains(&status),
            "{target}: {status} without a key"
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "the upstream saw {:?}",
        upstream
            .requests()
            .iter()
            .map(|r| r.uri.to_string())
            .collect::<Vec<_>>()
    );
    // With the key, a spelling that normalises cleanly reaches the upstream as the normal path.
    assert_eq!(
        raw_status(&weir, "/%70rivate/./x/../file", Some("alice-key")).await,
        200
    );
    assert_eq!(upstream.requests()[0].uri, "/private/file");
    // Escaped slashes are refused before routing (the default policy).
    assert_eq!(
        raw_status(&weir, "/%2fprivate/file", Some("alice-key")).await,
        400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_path_reaches_the_open_route_over_http2() {
    let (upstream, weir) = private_and_open().await;
    let client = http2_client();
    for target in VARIANTS {
        // A backslash is not a valid URI character for the client's parser: raw HTTP/1.1 only.
        let Ok(uri) = format!("http://{}{target}", weir.proxy).parse::<http::Uri>() else {
            continue;
        };
        let response = tokio::time::timeout(DEADLINE, client.get(uri))
            .await
            .expect("in time")
            .expect("response");
        let status = response.status();
        let _ = read_body(response.into_body()).await;
        assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::UNAUTHORIZED,
                StatusCode::NOT_FOUND
            ]
            .contains(&status),
            "{target}: {status} without a key over HTTP/2"
        );
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_pose_as_a_consumer_on_any_route() {
    let (upstream, weir) = private_and_open().await;
    // On a route without plugins: the forged identity never reaches the upstream.
    let (status, _, _) = weir_tests::get_with(
        &weir.url("/open"),
        &[("x-consumer-id", "admin"), ("x-consumer", "admin")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("a request");
    assert!(seen.headers.get("x-consumer-id").is_none(), "{seen:?}");
    assert!(seen.headers.get("x-consumer").is_none(), "{seen:?}");
    // Behind key-auth: the consumer is the key's, whatever the client said.
    let (status, _, _) = weir_tests::get_with(
        &weir.url("/private/file"),
        &[("x-consumer-id", "admin"), ("x-api-key", "alice-key")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("a request");
    let consumers: Vec<_> = seen.headers.get_all("x-consumer-id").iter().collect();
    assert_eq!(consumers, ["alice"]);
}
