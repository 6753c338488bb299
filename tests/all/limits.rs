//! Limits and blame (issue 22, deliverable 3), over raw HTTP/1.1 so no client tidies what is
//! sent: oversized heads, headers and targets get 431 and 414; a route's body limit is 413; a
//! client that sends bad framing, goes away mid-upload or stalls is answered as the one at
//! fault (400, 499, 408) and never costs the endpoint its health; an endpoint's response
//! timeout starts when the request has been sent, not while the client uploads; a malformed
//! `Host` is 400, and an absolute-form target's authority wins over `Host`.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::http2::{self, Raw, kind};
use weir_tests::{DEADLINE, Upstream, Weir};

/// Upstream `app` behind the catch-all route and a `small.test` route that takes bodies up
/// to 1,000 bytes, upstream `b` behind host `b.test`. Outlier detection ejects `app` after
/// three failures, so a client fault wrongly blamed on it shows within a few requests.
async fn start() -> (Upstream, Upstream, Weir) {
    let app = Upstream::start("app").await;
    let b = Upstream::start("b").await;
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[server.limits]
body_read_timeout = "1s"

[[clusters]]
name = "app"
endpoints = ["{app}"]
response_timeout = "500ms"
outlier_detection = {{ consecutive_failures = 3, base_ejection_time = "30s" }}

[[clusters]]
name = "b"
endpoints = ["{b}"]

[[routes]]
name = "small"
host = "small.test"
cluster = "app"
request_body_bytes = 1000

[[routes]]
name = "b"
host = "b.test"
cluster = "b"

[[routes]]
name = "default"
cluster = "app"
"#,
        app = app.addr,
        b = b.addr,
    );
    let weir = Weir::start(&config).await;
    (app, b, weir)
}

/// Writes `head` and `body` on a new connection, then closes the writing half when `close`;
/// the answer's status code (0 when the connection closed without one) and the whole answer.
async fn exchange(weir: &Weir, head: &str, body: &[u8], close: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    if close {
        stream.shutdown().await.expect("half-close");
    }
    read_answer(stream).await
}

async fn read_answer(mut stream: TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    // The answer, up to weir closing the connection (or resetting it after a bad request).
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// `crate::config` (a listener, an admin, cluster `app` at `app` behind the catch-all route)
/// with `server` lines in `[server]` and `cluster` lines in the cluster.
fn one_cluster(app: &Upstream, server: &str, cluster: &str) -> String {
    crate::config_with(&[app.addr], "", server, cluster)
}

/// Whether every endpoint of every cluster is healthy and not ejected.
async fn all_healthy(weir: &Weir) -> bool {
    let clusters = weir.clusters().await;
    clusters.as_array().is_some_and(|clusters| {
        clusters.iter().all(|cluster| {
            cluster["endpoints"].as_array().is_some_and(|endpoints| {
                endpoints.iter().all(|e| {
                    e["healthy"] == Value::Bool(true) && e["ejected_for_ms"] == Value::Null
                })
            })
        })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_headers_and_targets_are_refused_with_431_and_414() {
    let (app, _b, weir) = start().await;
    let get = |extra: &str, target: &str| {
        format!("GET {target} HTTP/1.1\r\nhost: a.test\r\n{extra}connection: close\r\n\r\n")
    };

    let (status, _) = exchange(&weir, &get("", "/"), b"", false).await;
    assert_eq!(status, 200, "a plain request passes");
    // One 9 KiB header (the limit is 8 KiB): weir's own check.
    let big = format!("x-big: {}\r\n", "a".repeat(9 * 1024));
    let (status, _) = exchange(&weir, &get(&big, "/"), b"", false).await;
    assert_eq!(status, 431, "a header over header_bytes");
    // Ten 7 KiB headers, each under 8 KiB, 70 KiB together (the head limit is 64 KiB).
    let many: String = (0..10)
        .map(|i| format!("x-part-{i}: {}\r\n", "b".repeat(7 * 1024)))
        .collect();
    let (status, _) = exchange(&weir, &get(&many, "/"), b"", false).await;
    assert_eq!(status, 431, "a head over head_bytes");
    // 101 small headers (the limit is 100).
    let count: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (status, _) = exchange(&weir, &get(&count, "/"), b"", false).await;
    assert_eq!(status, 431, "more than `headers` headers");
    // A 9 KiB target (the limit is 8 KiB).
    let long = format!("/{}", "c".repeat(9 * 1024));
    let (status, _) = exchange(&weir, &get("", &long), b"", false).await;
    assert_eq!(status, 414, "a target over uri_bytes");

    assert_eq!(
        app.requests().len(),
        1,
        "none of the refused reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_routes_body_limit_is_413_declared_or_streamed() {
    let (app, _b, weir) = start().await;
    let post = |framing: &str| {
        format!("POST /upload HTTP/1.1\r\nhost: small.test\r\n{framing}connection: close\r\n\r\n")
    };
    let (status, _) = exchange(&weir, &post("content-length: 2000\r\n"), b"", false).await;
    assert_eq!(
        status, 413,
        "a declared length over the limit, before any byte is read"
    );
    assert!(app.requests().is_empty());

    // Chunked, 1,500 bytes in three chunks: cut off past 1,000.
    let chunk = format!("1f4\r\n{}\r\n", "d".repeat(500));
    let body = format!("{chunk}{chunk}{chunk}0\r\n\r\n");
    let framing = "transfer-encoding: chunked\r\n";
    let (status, _) = exchange(&weir, &post(framing), body.as_bytes(), false).await;
    assert_eq!(status, 413, "a streamed body over the limit");

    // Within the limit, the same route passes.
    let (status, text) =
        exchange(&weir, &post("content-length: 10\r\n"), b"0123456789", false).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        all_healthy(&weir).await,
        "a body limit is not the endpoint's fault"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_framing_and_aborted_uploads_are_the_clients_fault_not_the_endpoints() {
    let (_app, _b, weir) = start().await;
    // The issue's bar: 20 requests with broken chunked framing from one client. The chunk
    // size line `zz` is not hexadecimal; the upstream has already seen the head and `hello`.
    let head = "POST /upload HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n";
    for _ in 0..20 {
        let (status, text) = exchange(&weir, head, b"5\r\nhello\r\nzz\r\n", false).await;
        assert_eq!(status, 400, "{text}");
    }
    assert!(all_healthy(&weir).await, "{}", weir.clusters().await);

    // Twelve clients that promise 1,000 bytes, send 10 and close their side.
    let head = "POST /upload HTTP/1.1\r\nhost: a.test\r\ncontent-length: 1000\r\n\r\n";
    for _ in 0..12 {
        let (status, text) = exchange(&weir, head, b"0123456789", true).await;
        assert!(status == 499 || status == 0, "{text}");
    }
    assert!(all_healthy(&weir).await, "{}", weir.clusters().await);

    // The endpoint still serves.
    let (status, _) = exchange(
        &weir,
        "GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
        b"",
        false,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_is_408_and_a_slow_one_is_not_the_endpoints_timeout() {
    let (_app, _b, weir) = start().await;
    // 10 of 1,000 bytes, then nothing: cut off after body_read_timeout (1 s).
    let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
    let head = "POST /upload HTTP/1.1\r\nhost: a.test\r\ncontent-length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(b"0123456789").await.expect("body");
    let (status, text) = read_answer(stream).await;
    assert_eq!(status, 408, "{text}");

    // 1,000 bytes in five chunks 250 ms apart (chunked, so streamed to the endpoint as they
    // come, not held for retries first): 1.25 s of upload, more than twice the endpoint's
    // 500 ms response timeout, which starts only once the body has been sent.
    let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
    let head = "POST /upload HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("c8\r\n{}\r\n", "e".repeat(200));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(chunk.as_bytes()).await.expect("chunk");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let (status, text) = read_answer(stream).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\r\n\r\n1000 "),
        "the upstream got the whole body: {text}"
    );
    assert!(all_healthy(&weir).await, "{}", weir.clusters().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_host_is_400_and_an_absolute_targets_authority_wins() {
    let (app, b, weir) = start().await;
    for host in ["a.test:abc", "a.test/x", "a.test:99999", "a b.test"] {
        let head = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let (status, text) = exchange(&weir, &head, b"", false).await;
        assert_eq!(status, 400, "Host {host:?}: {text}");
    }
    assert!(
        app.requests().is_empty(),
        "no malformed Host reached the catch-all"
    );

    // The target names b.test, the Host a.test: RFC 9112 §3.2.2 says the target wins.
    let head = "GET http://b.test/x HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n";
    let (status, text) = exchange(&weir, head, b"", false).await;
    assert_eq!(status, 200, "{text}");
    assert!(app.requests().is_empty(), "not routed by the Host header");
    let seen = b.requests();
    assert_eq!(seen.len(), 1, "routed by the target's authority");
    assert_eq!(
        seen[0].headers["host"], "b.test",
        "and the upstream is told that host"
    );
}

/// HTTP/2's limits, met by a raw h2 client (no hyper client to tidy the request first):
/// weir advertises `h2_max_streams` as its concurrent-stream limit, refuses a header list
/// over the head limit, and answers 400 to a `host` that differs from `:authority`; none of
/// those requests reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_header_lists_and_a_second_host_are_limited() {
    let app = Upstream::start("app").await;
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[server.limits]\nh2_max_streams = 4\n\n[[clusters]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"default\"\ncluster = \"app\"\n",
        app.addr
    );
    let weir = Weir::start(&config).await;
    let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
    let (client, connection) = http2::handshake(tcp).await;
    assert_eq!(connection.max_concurrent_send_streams(), 4);
    tokio::spawn(connection);
    let send = |request| http2::send(&client, request);

    let ok = send(
        http::Request::get("http://a.test/ok")
            .body(())
            .expect("request"),
    )
    .await;
    assert_eq!(ok, Ok(200));

    // 80 KiB of headers, over the 64 KiB head limit: refused, never forwarded.
    let mut big = http::Request::get("http://a.test/big");
    for i in 0..10 {
        big = big.header(format!("x-filler-{i}"), "f".repeat(8 * 1024));
    }
    let refused = send(big.body(()).expect("request")).await;
    assert!(refused != Ok(200), "an 80 KiB header list was accepted");
    if let Ok(status) = refused {
        assert_eq!(status, 431);
    }

    // A `host` header that names another host than `:authority`: which one is meant?
    let confused = http::Request::get("http://a.test/confused")
        .header("host", "b.test")
        .body(())
        .expect("request");
    assert_eq!(send(confused).await, Ok(400));
    let paths: Vec<String> = app.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(
        paths,
        ["/ok"],
        "only the plain request reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------
// Connection timeouts and HTTP/2 floods

/// Frames on `raw` up to the end of stream 1's response: its frames, and whether a GOAWAY
/// came before that end.
async fn answer_on_stream_1<S>(raw: &mut Raw<S>) -> (Vec<http2::Frame>, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut frames = Vec::new();
    let mut go_away_first = false;
    loop {
        let frame = raw
            .next()
            .await
            .expect("the answer, before the connection closed");
        go_away_first |= frame.kind == kind::GOAWAY;
        let end = frame.stream == 1
            && frame.flags & http2::END_STREAM != 0
            && matches!(frame.kind, kind::DATA | kind::HEADERS);
        frames.push(frame);
        if end {
            return (frames, go_away_first);
        }
    }
}

/// A `200` HEADERS frame on stream 1 (HPACK: `:status 200` is static-table index 8).
fn answered_200(frames: &[http2::Frame]) -> bool {
    frames
        .iter()
        .any(|f| f.kind == kind::HEADERS && f.stream == 1 && f.payload.first() == Some(&0x88))
}

/// The idle timeout on one HTTP/2 listener (`connect` opens a connection to it): a
/// connection whose only stream waits on a slow answer is neither sent GOAWAY nor cut while
/// it waits, longer than `idle_timeout`; a connection that made a request and then went
/// quiet is sent GOAWAY (`NO_ERROR`) and closed, no sooner than `idle_timeout`.
async fn idle_http2_connections_are_closed<S, C>(app: &Upstream, connect: impl Fn() -> C)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    C: std::future::Future<Output = S>,
{
    let seen = app.requests().len();
    let mut busy = Raw::start(connect().await).await;
    busy.get(1, "a.test", "/slow").await.expect("request");
    app.wait_for_requests(seen + 1).await;

    let mut idle = Raw::start(connect().await).await;
    // Timed from before the request: weir's idle time cannot begin before its answer, which
    // a loaded client may read well after it left.
    let quiet_since = tokio::time::Instant::now();
    idle.get(1, "a.test", "/ok").await.expect("request");
    let (frames, _) = answer_on_stream_1(&mut idle).await;
    assert!(answered_200(&frames), "{frames:?}");
    let rest = idle.until_closed().await;
    let quiet_for = quiet_since.elapsed();
    assert!(
        rest.iter()
            .any(|f| f.go_away_code() == Some(http2::NO_ERROR)),
        "closed without a GOAWAY: {rest:?}"
    );
    assert!(
        quiet_for >= Duration::from_millis(300),
        "closed after {quiet_for:?} of a 300 ms idle timeout"
    );

    // The busy connection's stream has been open longer than the idle timeout by now.
    app.release();
    let (frames, go_away_first) = answer_on_stream_1(&mut busy).await;
    assert!(!go_away_first, "GOAWAY while a stream was open: {frames:?}");
    assert!(answered_200(&frames), "{frames:?}");
    // And once its stream ended, it is idle too.
    let rest = busy.until_closed().await;
    assert!(
        rest.iter()
            .any(|f| f.go_away_code() == Some(http2::NO_ERROR)),
        "{rest:?}"
    );
}

/// `[server] idle_timeout` on HTTP/2 (issue 22: an idle h2c connection stayed open for ever),
/// over h2c and over TLS with ALPN `h2`.
#[tokio::test(flavor = "multi_thread")]
async fn idle_http2_connections_get_goaway_and_open_streams_are_not_cut() {
    let app = Upstream::start("app").await;
    let weir = Weir::start(&one_cluster(&app, "idle_timeout = \"300ms\"", "")).await;
    let addr = weir.proxy;
    idle_http2_connections_are_closed(&app, || async move {
        TcpStream::connect(addr).await.expect("connect")
    })
    .await;

    let ca = weir_tests::certs::Ca::new("weir test CA");
    let leaf = ca.server(&["site.test"], 1);
    let files = weir_tests::certs::leaf_files(&[("site", &leaf)]);
    let config = crate::tls_config(app.addr, &["site"], "", "idle_timeout = \"300ms\"");
    let weir = Weir::start_with_files(&config, &weir_tests::certs::as_refs(&files)).await;
    let (addr, tls) = (weir.proxy, ca.client_config(&[b"h2"]));
    idle_http2_connections_are_closed(&app, || {
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("site.test").expect("name");
            let stream = tls.connect(name, tcp).await.expect("TLS handshake");
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            stream
        }
    })
    .await;
}

/// `[server] idle_timeout` and `header_read_timeout` on HTTP/1.1: a kept-alive connection
/// waits for its next request for `idle_timeout`, however much longer that is than the head
/// timeout, and is closed after it; a head has `header_read_timeout` from its first byte.
#[tokio::test(flavor = "multi_thread")]
async fn http1_keep_alive_waits_idle_timeout_and_a_head_its_own_timeout() {
    let app = Upstream::start("app").await;
    let config = |server: &str| one_cluster(&app, server, "");
    let get = b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n";

    // Idle shorter than the head timeout: the kept-alive connection is closed at it.
    let weir = Weir::start(&config(
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"20s\"",
    ))
    .await;
    let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
    // Timed from before the request: weir's idle time begins after its answer.
    let quiet_since = tokio::time::Instant::now();
    stream.write_all(get).await.expect("request");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("app GET /") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
    }
    let (status, rest) = read_answer(stream).await;
    assert_eq!(
        (status, rest.as_str()),
        (0, ""),
        "closed, nothing more said"
    );
    let quiet_for = quiet_since.elapsed();
    assert!(
        quiet_for >= Duration::from_millis(300),
        "closed after {quiet_for:?}"
    );

    // Idle longer than the head timeout: a kept-alive connection outlives a head that is
    // cut off at it.
    let weir = Weir::start(&config(
        "idle_timeout = \"20s\"\nheader_read_timeout = \"300ms\"",
    ))
    .await;
    let mut kept = TcpStream::connect(weir.proxy).await.expect("connect");
    kept.write_all(get).await.expect("request");
    let n = tokio::time::timeout(DEADLINE, kept.read(&mut chunk))
        .await
        .expect("an answer")
        .expect("read");
    assert!(String::from_utf8_lossy(&chunk[..n]).starts_with("HTTP/1.1 200"));
    // Heads begun and never finished, on other connections, one after another after that
    // answer: each is cut off at the head timeout, and together they show the kept-alive
    // connection idle for three of them.
    for _ in 0..3 {
        // Timed from before the connection: weir's head timer starts once it has it.
        let began = tokio::time::Instant::now();
        let mut slow = TcpStream::connect(weir.proxy).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nx-slow: ")
            .await
            .expect("half a head");
        let (status, _) = read_answer(slow).await;
        assert_eq!(status, 0, "cut off without an answer");
        assert!(began.elapsed() >= Duration::from_millis(300));
    }
    // The kept-alive connection has been idle three times the head timeout: still served.
    kept.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("second request");
    let (status, text) = read_answer(kept).await;
    assert_eq!(status, 200, "{text}");
}

/// weir with one cluster, `app`, and an h2c client it has served once (`get_ok`), to show
/// that a flood on another connection leaves it served.
pub(crate) async fn weir_and_an_h2_client(
    app: &Upstream,
) -> (Weir, h2::client::SendRequest<bytes::Bytes>) {
    let weir = Weir::start(&one_cluster(app, "", "")).await;
    let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
    let (client, connection) = http2::handshake(tcp).await;
    tokio::spawn(connection);
    assert_eq!(http2::send(&client, get_ok()).await, Ok(200));
    (weir, client)
}

/// `GET /ok` for `a.test`.
pub(crate) fn get_ok() -> http::Request<()> {
    http::Request::get("http://a.test/ok")
        .body(())
        .expect("request")
}

/// HTTP/2 control-frame floods (issue 22: one h2c connection flooding WINDOW_UPDATE or
/// PRIORITY kept a core busy): 10,000 WINDOW_UPDATE, PRIORITY, PING or SETTINGS frames on
/// one connection get it a GOAWAY (`ENHANCE_YOUR_CALM`) and closed at once, each counted in
/// `weir_downstream_h2_floods_total`; a client on another connection is served throughout;
/// and curl downloading 64 MiB over h2c, granting window as it reads, is never cut.
#[tokio::test(flavor = "multi_thread")]
async fn http2_control_frame_floods_close_only_the_flooding_connection() {
    let app = Upstream::start("app").await;
    let (weir, client) = weir_and_an_h2_client(&app).await;
    let listener = weir.proxy.to_string();

    let floods = [
        // +1 to the connection's window, each.
        (
            "window_update",
            http2::encode(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]),
        ),
        // Stream 1 (idle) depends on stream 0, weight 16.
        (
            "priority",
            http2::encode(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 15]),
        ),
        ("ping", http2::encode(kind::PING, 0, 0, &[7; 8])),
        ("settings", http2::encode(kind::SETTINGS, 0, 0, &[])),
    ];
    for (name, frame) in floods {
        let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
        let mut raw = Raw::start(tcp).await;
        // Written while weir answers and then closes: a failed write is the point.
        let _ = raw.write(&frame.repeat(10_000)).await;
        let frames = raw.until_closed().await;
        assert!(
            frames
                .iter()
                .any(|f| f.go_away_code() == Some(http2::ENHANCE_YOUR_CALM)),
            "{name}: closed without GOAWAY(ENHANCE_YOUR_CALM): {:?}",
            frames.iter().map(|f| f.kind).collect::<Vec<_>>()
        );
        let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
        let counted = weir_tests::metric(
            &metrics,
            "weir_downstream_h2_floods_total",
            &[("listener", &listener), ("frame", name)],
        );
        assert_eq!(counted, Some(1.0), "{name}");
        assert_eq!(
            http2::send(&client, get_ok()).await,
            Ok(200),
            "after {name}"
        );
    }

    // curl's HTTP/2 (nghttp2) grants window as it reads: thousands of WINDOW_UPDATEs.
    let url = weir.url("/download/67108864");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "--max-time", "60"])
            .args([
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code} %{size_download}",
            ])
            .arg(url)
            .output()
    })
    .await
    .expect("join")
    .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200 67108864",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    let floods: f64 = [
        "window_update",
        "priority",
        "ping",
        "settings",
        "rst_stream",
        "other",
    ]
    .iter()
    .filter_map(|f| {
        let labels = [("listener", listener.as_str()), ("frame", f)];
        weir_tests::metric(&metrics, "weir_downstream_h2_floods_total", &labels)
    })
    .sum();
    assert_eq!(floods, 4.0, "curl's connection was counted as a flood");
}

/// A one-endpoint cluster (issue 22: a hanging endpoint took 2 × `response_timeout`): a
/// timeout is not retried on the endpoint that gave it, so the client gets its 504 after
/// one attempt, which is all the endpoint sees.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_single_endpoint_is_tried_once() {
    let app = Upstream::start("app").await;
    let cluster = "retries = 1\nresponse_timeout = \"300ms\"";
    let weir = Weir::start(&one_cluster(&app, "", cluster)).await;
    let head = "GET /hang HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n";
    let (status, text) = exchange(&weir, head, b"", false).await;
    assert_eq!(status, 504, "{text}");
    // Any retry would have been sent before the 504.
    let hangs = app.requests().iter().filter(|r| r.uri == "/hang").count();
    assert_eq!(hangs, 1, "the endpoint was tried {hangs} times");
}
