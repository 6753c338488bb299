//! Proxy semantics: headers both ways, HTTP/2, balancing, streaming.

use http::{Request, StatusCode, Version};
use weir_tests::{
    PatternBody, Upstream, Weir, empty, hash_body, http1_client, http2_client, read_body,
};

use crate::config;

#[tokio::test(flavor = "multi_thread")]
async fn request_headers_are_rewritten_like_a_proxy() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;

    let request = Request::get(weir.url("/hello?x=1"))
        .header("host", "app.test")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(empty())
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let response_id = response
        .headers()
        .get("x-request-id")
        .cloned()
        .expect("x-request-id in response");
    assert_eq!(read_body(response.into_body()).await, "one GET /hello");

    let seen = &upstream.requests()[0];
    let h = &seen.headers;
    assert_eq!(seen.uri, "/hello?x=1");
    assert_eq!(h["host"], "app.test");
    // The test client is no trusted proxy: what it wrote is replaced, not extended.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.test");
    assert_eq!(h["via"], "1.1 weir");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-request-id"], response_id);
    for gone in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    // Connection may be re-added by the upstream client for its own connection, but it must
    // not carry the client's tokens.
    assert!(
        h.get("connection")
            .is_none_or(|v| !v.to_str().unwrap_or("").contains("x-secret"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn response_is_passed_through_without_hop_by_hop_headers() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;

    let response = http1_client()
        .get(weir.url("/hop").parse().expect("uri"))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h["x-upstream"], "one");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(h["content-length"], "3");
    assert!(
        !h.contains_key("x-up-secret"),
        "a header named in the upstream's Connection reached the client"
    );
    assert!(!h.contains_key("keep-alive"));
    assert_eq!(read_body(response.into_body()).await, "hop");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_request_id_is_passed_upstream_unchanged() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;
    let request = Request::get(weir.url("/"))
        .header("x-request-id", "client-chosen-id")
        .body(empty())
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id");
    assert_eq!(
        upstream.requests()[0].headers["x-request-id"],
        "client-chosen-id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_prior_knowledge_clients_are_proxied_to_http1_upstreams() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;

    let request = Request::get(weir.url("/h2"))
        .body(empty())
        .expect("request");
    let response = http2_client().request(request).await.expect("response");
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_body(response.into_body()).await, "one GET /h2");

    let seen = &upstream.requests()[0];
    assert_eq!(seen.version, Version::HTTP_11);
    // The :authority becomes Host, so the upstream sees what the client asked for.
    assert_eq!(seen.headers["host"], weir.proxy.to_string());
    assert_eq!(seen.headers["via"], "2 weir");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

/// `worker_threads = 1` runs tokio's current-thread scheduler: concurrent HTTP/1.1 and HTTP/2
/// clients and plugin hooks all share the one thread.
#[tokio::test(flavor = "multi_thread")]
async fn one_worker_thread_serves_everything_on_one_thread() {
    let upstream = Upstream::start("one").await;
    let config =
        config(&[upstream.addr], "").replace("[server]\n", "[server]\nworker_threads = 1\n");
    let plugin: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));
    let weir = Weir::start_with_files(&config, &[("plugins/test.wasm", plugin)]).await;
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = weir.url(&format!("/one/{i}"));
        clients.spawn(async move {
            let client = if i % 2 == 0 {
                http1_client()
            } else {
                http2_client()
            };
            let request = Request::get(url).body(empty()).expect("request");
            let response = client.request(request).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["x-plugin-response"], "1");
            read_body(response.into_body()).await
        });
    }
    while let Some(body) = clients.join_next().await {
        assert!(body.expect("client").starts_with(b"one GET /one/"));
    }
    assert_eq!(upstream.requests().len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_requests_evenly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let weir = Weir::start(&config(&[a.addr, b.addr], "")).await;
    let client = http1_client();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let response = client
            .get(weir.url("/rr").parse().expect("uri"))
            .await
            .expect("response");
        bodies.push(read_body(response.into_body()).await);
    }
    assert_eq!(a.requests().len(), 5);
    assert_eq!(b.requests().len(), 5);
    // Strictly alternating, whichever goes first.
    assert!(bodies.windows(2).all(|w| w[0] != w[1]), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_path_and_method() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let extra = format!(
        r#"
[[clusters]]
name = "other"
endpoints = ["{}"]

[[routes]]
name = "api-writes"
host = "api.test"
path_prefix = "/api"
methods = ["POST"]
cluster = "other"
"#,
        b.addr
    );
    let weir = Weir::start(&config(&[a.addr], &extra)).await;
    let client = http1_client();
    let send = |method: &str, host: &str| {
        let request = Request::builder()
            .method(method)
            .uri(weir.url("/api/items"))
            .header("host", host)
            .body(empty())
            .expect("request");
        client.request(request)
    };
    let body = |r: http::Response<hyper::body::Incoming>| read_body(r.into_body());
    assert_eq!(
        body(send("POST", "API.test:8080").await.expect("response")).await,
        "b POST /api/items"
    );
    assert_eq!(
        body(send("GET", "api.test").await.expect("response")).await,
        "a GET /api/items"
    );
    assert_eq!(
        body(send("POST", "other.test").await.expect("response")).await,
        "a POST /api/items"
    );
}

/// Bodies far larger than any buffer stream through intact both ways, and weir's memory
/// does not grow with their size.
#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;
    let client = http1_client();
    let rss_before = weir.peak_rss_kib();

    let upload = Request::post(weir.url("/upload"))
        .body(http_body_util::BodyExt::boxed(PatternBody::new(SIZE)))
        .expect("request");
    let response = client.request(upload).await.expect("upload response");
    assert_eq!(response.status(), StatusCode::OK);
    let (len, hex) = PatternBody::expected(SIZE);
    assert_eq!(
        read_body(response.into_body()).await,
        format!("{len} {hex}")
    );
    // With no Content-Length the body was chunked; weir must not have buffered it to add one.
    assert!(
        !upstream.requests()[0]
            .headers
            .contains_key("content-length")
    );

    let response = client
        .get(weir.url(&format!("/download/{SIZE}")).parse().expect("uri"))
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(hash_body(response.into_body()).await, (len, hex));

    let growth = weir.peak_rss_kib() - rss_before;
    assert!(
        growth < 32 * 1024,
        "weir's peak RSS grew by {growth} KiB while streaming {SIZE} bytes each way"
    );
}
