//! The attack review of weir's request accounting: for every request a client starts on a
//! proxy listener, whatever happens to it, exactly one access log record (with the status
//! the client got, or 499 when it went away before any head; `incomplete` when the response
//! did not finish; its body bytes, route and cluster), one count in `weir_requests_total`,
//! and `weir_requests_in_flight` back at 0 once it is over.
//!
//! Each test drives one path — HEAD answered by weir itself, heads hyper refuses before weir
//! sees them, a redirecting listener, shutdown past the drain timeout, bodies with trailers,
//! clients and upstreams gone mid-body, tunnels, retries, mirrors, the cache, reloads, ... —
//! and asserts the invariant for it. Records are read once a marker request (`OPTIONS
//! /marker`, settled after the scenario) has been logged, so a record written twice, or
//! late, is seen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use http_body_util::BodyExt as _;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::{DEADLINE, Upstream, Weir};

use crate::config;

/// The access log section every test appends last.
const LOG: &str = "\n[access_log]\npath = \"access.log\"\n";

/// The JSON records of `weir`'s access log so far.
fn records(weir: &Weir) -> Vec<Value> {
    std::fs::read_to_string(weir.dir().join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Sends `OPTIONS /marker-N` and waits for its record: every request settled before it is
/// in the log then. Returns the records before the marker's (the marker's and earlier
/// markers' left out).
async fn logged_before_marker(weir: &Weir) -> Vec<Value> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = format!("/marker-{n}");
    // Raw, its answer whatever it is: some tests' endpoints answer nothing whole.
    let request =
        format!("OPTIONS {path} HTTP/1.1\r\nhost: marker.test\r\nconnection: close\r\n\r\n");
    let _ = raw_exchange(weir.proxy, request.as_bytes()).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let all = records(weir);
        if all.iter().any(|r| r["path"] == path.as_str()) {
            return all
                .into_iter()
                .filter(|r| {
                    !r["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/marker-"))
                })
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the marker's record never came: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `weir_requests_total` series but the markers' (`OPTIONS`): labels → value.
async fn request_counts(weir: &Weir) -> BTreeMap<String, f64> {
    let text = weir.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("weir_requests_total{"))
        .filter(|l| !l.contains("method=\"OPTIONS\""))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series
                .strip_prefix("weir_requests_total{")?
                .strip_suffix('}')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of [`request_counts`].
async fn requests_counted(weir: &Weir) -> f64 {
    request_counts(weir).await.values().sum()
}

/// `weir_requests_in_flight`, once it reads 0 or at the deadline.
async fn in_flight_settled(weir: &Weir) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = weir
            .metric("weir_requests_in_flight", &[])
            .await
            .expect("weir_requests_in_flight");
        if now == 0.0 || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields of `record` the invariant is about.
fn summary(record: &Value) -> (Option<u64>, Option<bool>, Option<&str>, Option<&str>) {
    (
        record["status"].as_u64(),
        record["incomplete"].as_bool(),
        record["route"].as_str(),
        record["cluster"].as_str(),
    )
}

/// Writes `bytes` on a fresh connection to `addr` and reads until the peer closes (or the
/// deadline); the whole answer as text.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let answer = weir_tests::raw::exchange(addr, bytes, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A one-shot HTTP/1.1 upstream on 127.0.0.1:0 that reads a request head and writes
/// `answer` (raw bytes) on every connection, then, if `close`, closes it.
async fn raw_upstream(answer: &'static [u8], close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                if close {
                    let _ = stream.shutdown().await;
                    return;
                }
                // Kept open (as a kept-alive connection is) until weir closes it.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------
// HEAD answered by weir itself
// ---------------------------------------------------------------------------------------

/// A `HEAD` weir answers itself — no route (404), an endpoint that refuses connections
/// (502) — is answered in full: the head, and no body, as HEAD's answer has none. It must be
/// logged complete, as a proxied HEAD is (`responses_without_a_body_are_logged_once_and_
/// complete`). hyper never polls a HEAD answer's body and drops it; a body weir made itself
/// (`fail`'s text) does not say it has ended, and `ResponseBody::drop` logs the request
/// `incomplete`.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_weir_answers_itself_is_logged_complete() {
    let upstream = Upstream::start("app").await;
    let down = weir_tests::closed_port();
    let extra = format!(
        "path_prefix = \"/app\"\n\n[[clusters]]\nname = \"down\"\nendpoints = [\"{down}\"]\n\n[[routes]]\nname = \"down\"\npath_prefix = \"/down\"\ncluster = \"down\"\n{LOG}"
    );
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;

    let (status, _, body) =
        weir_tests::send_with(http::Method::HEAD, &weir.url("/nowhere"), &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
    let (status, _, body) =
        weir_tests::send_with(http::Method::HEAD, &weir.url("/down/x"), &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_GATEWAY, ""));
    // A proxied HEAD, for comparison: complete.
    let (status, _, _) = weir_tests::send_with(http::Method::HEAD, &weir.url("/app/x"), &[]).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let seen: Vec<_> = logged
        .iter()
        .map(|r| (r["path"].as_str(), summary(r)))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("/nowhere"), (Some(404), Some(false), None, None)),
            (
                Some("/down/x"),
                (Some(502), Some(false), Some("down"), Some("down"))
            ),
            (
                Some("/app/x"),
                (Some(200), Some(false), Some("default"), Some("app"))
            ),
        ],
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 3.0);
}

// ---------------------------------------------------------------------------------------
// Requests refused before weir's service sees them
// ---------------------------------------------------------------------------------------

/// A request whose head hyper refuses itself — more headers than `[server.limits] headers`
/// (431, which README's error table lists as weir's answer), a malformed header line (400)
/// — is a request the client started and was answered. It must be logged and counted like
/// weir's own refusals (a single header over `header_bytes`: 431, logged). hyper answers
/// these from its connection code (`http1().max_headers`, its parse errors) and the service,
/// where the request is watched, never runs: the connection's end tells weir.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_hyper_refuses_is_logged_and_counted() {
    let upstream = Upstream::start("app").await;
    let weir = Weir::start(&config(&[upstream.addr], LOG)).await;

    // For comparison: one header over header_bytes (8192), refused by weir itself.
    let mut long = b"GET /long HTTP/1.1\r\nhost: a.test\r\nx-long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    long.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    let answer = raw_exchange(weir.proxy, &long).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // 101 headers: over `headers = 100`.
    let mut many = b"GET /many HTTP/1.1\r\nhost: a.test\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let answer = raw_exchange(weir.proxy, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A header line without a colon.
    let answer = raw_exchange(
        weir.proxy,
        b"GET /malformed HTTP/1.1\r\nhost: a.test\r\nno colon here\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let statuses: Vec<_> = logged
        .iter()
        .map(|r| (r["path"].as_str(), r["status"].as_u64()))
        .collect();
    assert_eq!(
        statuses,
        [
            (Some("/long"), Some(431)),
            // hyper keeps nothing of a head it refuses: method and path are `-`, as in
            // nginx's record of a request it could not read.
            (Some("-"), Some(431)),
            (Some("-"), Some(400)),
        ],
        "one record per refused request: {logged:#?}"
    );
    assert!(
        logged[1..]
            .iter()
            .all(|r| r["method"] == "-" && r["route"].is_null()),
        "{logged:#?}"
    );
    assert_eq!(
        requests_counted(&weir).await,
        3.0,
        "{:?}",
        request_counts(&weir).await
    );
}

/// Weir's own refusals before routing — CONNECT (400), a bad `Host` (400), a target over
/// `uri_bytes` (414), an escaped slash (400), a body over `request_body_bytes` (413) — each
/// logged once with its status, counted once.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_before_routing_are_logged_once_each() {
    let upstream = Upstream::start("app").await;
    let extra = format!("request_body_bytes = 10\n{LOG}");
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;

    let cases: [(&[u8], &str); 4] = [
        (
            b"CONNECT a.test:443 HTTP/1.1\r\nhost: a.test:443\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET /badhost HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET /a%2Fb HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"POST /big HTTP/1.1\r\nhost: a.test\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world",
            "HTTP/1.1 413",
        ),
    ];
    for (request, expected) in cases {
        let answer = raw_exchange(weir.proxy, request).await;
        assert!(
            answer.starts_with(expected),
            "{}: {answer}",
            String::from_utf8_lossy(request)
        );
    }
    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let answer = raw_exchange(weir.proxy, long.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let statuses: Vec<_> = logged.iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(
        statuses,
        [Some(400), Some(400), Some(400), Some(413), Some(414)],
        "{logged:#?}"
    );
    for record in &logged {
        assert_eq!(record["incomplete"], false, "{record}");
    }
    assert_eq!(requests_counted(&weir).await, 5.0);
}

// ---------------------------------------------------------------------------------------
// A listener that only redirects
// ---------------------------------------------------------------------------------------

/// A `[[listeners]]` entry with `redirect_to_https` is a proxy listener whose every request
/// is answered 308. Those requests are requests too: logged ("One record per request") and
/// counted. `redirect::Redirect` answers them with no watch at all.
#[tokio::test(flavor = "multi_thread")]
async fn requests_on_a_redirecting_listener_are_logged_and_counted() {
    let upstream = Upstream::start("app").await;
    let base = config(&[upstream.addr], LOG);
    // A second listener, redirecting, after the proxy's.
    let config = base.replacen(
        "[admin]",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nredirect_to_https = { port = 8443 }\n\n[admin]",
        1,
    );
    let weir = Weir::start(&config).await;
    let redirecting = weir
        .logs()
        .iter()
        .filter(|l| l["fields"]["message"] == "listening" && l["fields"]["kind"] != "admin")
        .filter_map(|l| l["fields"]["address"].as_str()?.parse::<SocketAddr>().ok())
        .find(|a| *a != weir.proxy)
        .expect("the redirecting listener's address");
    let (status, headers, _) = weir_tests::get_with(
        &format!("http://{redirecting}/to/secure?q=1"),
        &[("host", "a.test")],
    )
    .await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "https://a.test:8443/to/secure?q=1");

    let logged = logged_before_marker(&weir).await;
    let seen: Vec<_> = logged
        .iter()
        .map(|r| (r["path"].as_str(), r["status"].as_u64()))
        .collect();
    assert_eq!(seen, [(Some("/to/secure?q=1"), Some(308))], "{logged:#?}");
    assert_eq!(requests_counted(&weir).await, 1.0);
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// A request still waiting on its upstream when the drain timeout passes is cut off: its
/// client gets nothing, and it must still get its record (499, incomplete) before weir
/// exits. `weir::run` flushes the access log once the listeners' tasks end, while the
/// connection tasks are still alive; they are dropped with the runtime afterwards, and the
/// record `Watch::abandon` writes then never reaches the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_cut_off_by_the_drain_timeout_is_logged() {
    let upstream = Upstream::start("app").await;
    let config = config(&[upstream.addr], LOG)
        .replace("drain_timeout = \"10s\"", "drain_timeout = \"500ms\"");
    let mut weir = Weir::start(&config).await;
    // A request answered before, so the log's file exists and has one record.
    let (status, _, _) = weir_tests::get_with(&weir.url("/before"), &[]).await;
    assert_eq!(status, StatusCode::OK);

    let mut client = TcpStream::connect(weir.proxy).await.expect("connect");
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .expect("request");
    upstream.wait_for_requests(2).await;
    weir.signal(Signal::SIGTERM);
    assert!(weir.wait_exit().await.success());
    let logs = weir.logs();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "drain timed out; closing remaining connections"),
        "the request outlived the drain timeout"
    );
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, client.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "the client got nothing");

    let logged = records(&weir);
    let seen: Vec<_> = logged
        .iter()
        .map(|r| (r["path"].as_str(), summary(r)))
        .collect();
    assert_eq!(
        seen,
        [
            (
                Some("/before"),
                (Some(200), Some(false), Some("default"), Some("app"))
            ),
            (
                Some("/slow"),
                (Some(499), Some(true), Some("default"), Some("app"))
            ),
        ],
        "{logged:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Bodies with trailers
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 endpoint's chunked answer that ends with trailers, read to its end by the
/// client: complete, and its 5 body bytes. hyper stops polling a body after its trailers
/// frame and drops it; the upstream's chunked body does not say it has ended then
/// (`Incoming::is_end_stream` is true only for a known length at 0), so
/// `ResponseBody::drop` logs it `incomplete`.
#[tokio::test(flavor = "multi_thread")]
async fn an_http1_answer_ending_in_trailers_is_logged_complete() {
    let endpoint = raw_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n",
        false,
    )
    .await;
    let weir = Weir::start(&config(&[endpoint], LOG)).await;

    // HTTP/1.1 and HTTP/2 clients, each reading the whole answer.
    let (status, _, body) = weir_tests::get_with(&weir.url("/h1"), &[("te", "trailers")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    let response = weir_tests::http2_client()
        .request(
            http::Request::get(weir.url("/h2"))
                .body(weir_tests::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.expect("body");
    assert_eq!(
        collected.trailers().and_then(|t| t.get("x-checksum")),
        Some(&http::HeaderValue::from_static("abc")),
        "the trailers reached the HTTP/2 client"
    );
    assert_eq!(collected.to_bytes(), "hello");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let seen: Vec<_> = logged
        .iter()
        .map(|r| (r["path"].as_str(), summary(r), r["bytes_out"].as_u64()))
        .collect();
    let whole = (Some(200), Some(false), Some("default"), Some("app"));
    assert_eq!(
        seen,
        [(Some("/h1"), whole, Some(5)), (Some("/h2"), whole, Some(5))],
        "{logged:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Clients and upstreams gone
// ---------------------------------------------------------------------------------------

/// An HTTP/2 client whose connection closes (no RST_STREAM, no GOAWAY: the socket is gone)
/// while weir waits on the upstream: 499, incomplete, out of flight.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_closed_while_waiting_is_logged_as_499() {
    use weir_tests::http2::Raw;
    let upstream = Upstream::start("app").await;
    let weir = Weir::start(&config(&[upstream.addr], LOG)).await;
    let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
    let mut h2 = Raw::start(tcp).await;
    h2.get(1, "a.test", "/slow").await.expect("request");
    h2.get(3, "a.test", "/slow").await.expect("request");
    upstream.wait_for_requests(2).await;
    drop(h2);

    assert_eq!(in_flight_settled(&weir).await, 0.0, "out of flight");
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 2, "{logged:#?}");
    for record in &logged {
        assert_eq!(
            summary(record),
            (Some(499), Some(true), Some("default"), Some("app")),
            "{record}"
        );
    }
    upstream.release();
    assert_eq!(requests_counted(&weir).await, 2.0);
}

/// A client that goes away mid-body — HTTP/1.1 (connection closed) and HTTP/2 (stream
/// reset) — while a large answer streams: logged once with the status it got, incomplete,
/// the bytes sent so far; out of flight; the upstream connections it held closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_body_is_logged_once_incomplete() {
    let upstream = Upstream::start("app").await;
    let weir = Weir::start(&config(&[upstream.addr], LOG)).await;
    const LEN: u64 = 64 * 1024 * 1024;

    for client in [weir_tests::http1_client(), weir_tests::http2_client()] {
        let response = client
            .request(
                http::Request::get(weir.url(&format!("/download/{LEN}")))
                    .body(weir_tests::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut read = 0;
        while read < 256 * 1024 {
            let frame = body.frame().await.expect("a frame").expect("ok");
            read += frame.data_ref().map_or(0, bytes::Bytes::len);
        }
        drop(body);
        drop(client);
    }

    assert_eq!(in_flight_settled(&weir).await, 0.0, "out of flight");
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 2, "{logged:#?}");
    for record in &logged {
        assert_eq!(
            summary(record),
            (Some(200), Some(true), Some("default"), Some("app")),
            "{record}"
        );
        let out = record["bytes_out"].as_u64().expect("bytes_out");
        assert!((256 * 1024..LEN).contains(&out), "{record}");
    }
    assert_eq!(requests_counted(&weir).await, 2.0);
}

/// An endpoint that closes its connection mid-body (10 of 100,000 bytes sent): the client's
/// answer is cut short; logged once, 200 (the head the client got), incomplete, 10 bytes
/// out; counted once; out of flight; no upstream connection left open.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_gone_mid_body_is_logged_once_incomplete() {
    let endpoint = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n0123456789",
        true,
    )
    .await;
    let weir = Weir::start(&config(&[endpoint], LOG)).await;
    let response = weir_tests::http1_client()
        .request(
            http::Request::get(weir.url("/cut"))
                .body(weir_tests::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err(), "cut short");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        (summary(&logged[0]), logged[0]["bytes_out"].as_u64()),
        (
            (Some(200), Some(true), Some("default"), Some("app")),
            Some(10)
        ),
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 1.0);
    let open = weir
        .metric("weir_cluster_connections_open", &[("cluster", "app")])
        .await;
    assert_eq!(open, Some(0.0));
}

/// The same HEAD answers as [`a_head_weir_answers_itself_is_logged_complete`] over HTTP/2:
/// the client gets the head and no body; one record, complete, no bytes out.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_weir_answers_itself_over_http2_is_logged_complete() {
    let upstream = Upstream::start("app").await;
    let extra = format!("path_prefix = \"/app\"\n{LOG}");
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;
    let response = weir_tests::http2_client()
        .request(
            http::Request::head(weir.url("/nowhere"))
                .body(weir_tests::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    // What the client got, beside what weir logged of it.
    assert_eq!(
        (body, summary(&logged[0]), logged[0]["bytes_out"].as_u64()),
        (
            Ok(bytes::Bytes::new()),
            (Some(404), Some(false), None, None),
            Some(0)
        ),
        "{logged:#?}"
    );
}

/// Over HTTP/2, weir's own answer to a HEAD says the length its body would have had, and an
/// endpoint's answer keeps its own head: one that gave no length (a chunked resource) is not
/// made to claim `content-length: 0`.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_http2_says_the_length_only_where_one_is_known() {
    let endpoint = raw_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-from: endpoint\r\n\r\n",
        false,
    )
    .await;
    let extra = format!("path_prefix = \"/app\"\n{LOG}");
    let weir = Weir::start(&config(&[endpoint], &extra)).await;
    let head = |path: &'static str| {
        let url = weir.url(path);
        async move {
            let response = weir_tests::http2_client()
                .request(
                    http::Request::head(url)
                        .body(weir_tests::empty())
                        .expect("request"),
                )
                .await
                .expect("response");
            let length = response
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            (response.status(), length)
        }
    };
    assert_eq!(
        head("/app/x").await,
        (StatusCode::OK, None),
        "the endpoint's head, as it was"
    );
    assert_eq!(
        head("/nowhere").await,
        (StatusCode::NOT_FOUND, Some("9".to_owned())),
        "weir's `no route\\n` is 9 bytes"
    );
}

/// A plugin's local reply (key-auth's 401) to GET and to HEAD: one record each, the
/// plugin named, complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_reply_is_logged_once_complete_also_to_head() {
    let upstream = Upstream::start("app").await;
    let weir =
        Weir::start_with_files(&config(&[upstream.addr], LOG), &crate::key_auth_files()).await;
    let (status, _, _) = weir_tests::get_with(&weir.url("/get"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) =
        weir_tests::send_with(http::Method::HEAD, &weir.url("/head"), &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, ""));

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let seen: Vec<_> = logged
        .iter()
        .map(|r| (r["path"].as_str(), r["plugin"].as_str(), summary(r)))
        .collect();
    let answered = (Some(401), Some(false), Some("default"), Some("app"));
    assert_eq!(
        seen,
        [
            (Some("/get"), Some("key-auth"), answered),
            (Some("/head"), Some("key-auth"), answered),
        ],
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 2.0);
}

/// An HTTP/2 endpoint's answer ending in trailers (as every gRPC answer does), read whole
/// by an HTTP/2 client: one record, complete, its body bytes.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_answer_ending_in_trailers_is_logged_complete() {
    use hyper::body::Frame;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                        Ok(Frame::data(bytes::Bytes::from_static(b"hello"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    let config = config(&[endpoint], LOG).replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nprotocol = \"h2c\"",
    );
    let weir = Weir::start(&config).await;
    let response = weir_tests::http2_client()
        .request(
            http::Request::get(weir.url("/call"))
                .header("te", "trailers")
                .body(weir_tests::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.expect("body");
    assert!(collected.trailers().is_some(), "the trailers came");
    assert_eq!(collected.to_bytes(), "hello");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        (summary(&logged[0]), logged[0]["bytes_out"].as_u64()),
        (
            (Some(200), Some(false), Some("default"), Some("app")),
            Some(5)
        ),
        "{logged:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Tunnels
// ---------------------------------------------------------------------------------------

/// A WebSocket over HTTP/1.1, opened, used and closed: one record (101) for its handshake,
/// never a second; counted once; nothing left in flight once it closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_is_logged_once_and_leaves_nothing_in_flight() {
    use tokio_tungstenite::tungstenite::Message;
    let echo = crate::edge::websocket_echo().await;
    let weir = Weir::start(&config(&[echo], LOG)).await;
    let url = format!("ws://{}/chat", weir.proxy);
    let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.expect("send");
    let reply = tokio::time::timeout(DEADLINE, ws.next()).await;
    assert!(
        matches!(&reply, Ok(Some(Ok(m))) if *m == Message::text("echo: hello")),
        "{reply:?}"
    );
    ws.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        summary(&logged[0]),
        (Some(101), Some(false), Some("default"), Some("app")),
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 1.0);
}

/// A WebSocket over HTTP/2 (RFC 8441's extended CONNECT): one record for the CONNECT, with
/// the 200 the client got; nothing in flight once it closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_http2_is_logged_once() {
    use tokio_tungstenite::tungstenite::Message;
    let echo = crate::edge::websocket_echo().await;
    let weir = Weir::start(&config(&[echo], LOG)).await;
    // Its warm-up, an OPTIONS, is left out of the counts.
    let (sender, mut ws) = crate::edge::websocket_over_http2(&weir, "/marker-warm").await;
    ws.send(Message::text("over h2")).await.expect("send");
    let reply = tokio::time::timeout(DEADLINE, ws.next()).await;
    assert!(
        matches!(&reply, Ok(Some(Ok(m))) if *m == Message::text("echo: over h2")),
        "{reply:?}"
    );
    ws.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);
    drop(sender);

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        (logged[0]["method"].as_str(), summary(&logged[0])),
        (
            Some("CONNECT"),
            (Some(200), Some(false), Some("default"), Some("app"))
        ),
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 1.0);
}

// ---------------------------------------------------------------------------------------
// Retries, mirrors, the cache, compression
// ---------------------------------------------------------------------------------------

/// A request retried after a refused connection: one record, `attempts: 2`, the endpoint
/// that answered; counted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_is_logged_once_with_its_attempts() {
    let upstream = Upstream::start("app").await;
    let down = weir_tests::closed_port();
    let config = crate::config_with(&[down.addr, upstream.addr], LOG, "", "lb = \"first\"");
    let weir = Weir::start(&config).await;
    let (status, _, _) = weir_tests::get_with(&weir.url("/retried"), &[]).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        (
            summary(&logged[0]),
            logged[0]["attempts"].as_u64(),
            logged[0]["endpoint"].as_str()
        ),
        (
            (Some(200), Some(false), Some("default"), Some("app")),
            Some(2),
            Some(upstream.addr.to_string().as_str())
        ),
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 1.0);
}

/// A mirrored request: one record and one count for the client's request; the copy is
/// counted only in `weir_mirror_requests_total`.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirrored_request_is_logged_and_counted_once() {
    let upstream = Upstream::start("app").await;
    let shadow = Upstream::start("shadow").await;
    let extra = format!(
        "mirror = {{ cluster = \"shadow\" }}\n\n[[clusters]]\nname = \"shadow\"\nendpoints = [\"{}\"]\n{LOG}",
        shadow.addr
    );
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;
    let (status, _, _) = weir_tests::get_with(&weir.url("/mirrored"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    shadow.wait_for_requests(1).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while weir
        .metric(
            "weir_mirror_requests_total",
            &[("route", "default"), ("result", "sent")],
        )
        .await
        != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        summary(&logged[0]),
        (Some(200), Some(false), Some("default"), Some("app"))
    );
    assert_eq!(requests_counted(&weir).await, 1.0);
}

/// On a route with a cache: a request waiting for another's fetch of its key whose client
/// goes away (499), the fetching request answered (200), then a hit (200): three records,
/// three counts, nothing in flight.
#[tokio::test(flavor = "multi_thread")]
async fn a_collapsed_cache_waiter_whose_client_goes_away_is_logged_as_499() {
    let upstream = Upstream::start("app").await;
    let extra = format!("cache = {{}}\n{LOG}");
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;

    let mut fetching = TcpStream::connect(weir.proxy).await.expect("connect");
    fetching
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    upstream.wait_for_requests(1).await;
    let mut waiting = TcpStream::connect(weir.proxy).await.expect("connect");
    waiting
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    // Both in flight: the second waits on the first's fetch, not upstream.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while weir.metric("weir_requests_in_flight", &[]).await != Some(2.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never two in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(waiting);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while weir.metric("weir_requests_in_flight", &[]).await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter stayed in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.release();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, fetching.read_to_end(&mut answer))
        .await
        .expect("in time")
        .expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(upstream.requests().len(), 1, "one fetch");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let statuses: Vec<_> = logged.iter().map(|r| summary(r)).collect();
    assert_eq!(
        statuses,
        [
            (Some(499), Some(true), Some("default"), Some("app")),
            (Some(200), Some(false), Some("default"), Some("app")),
        ],
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 2.0);
}

/// A compressed answer read whole: complete; `bytes_out` the coded bytes the client got,
/// `bytes_in` the request body's.
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_answer_is_logged_complete_with_the_bytes_sent() {
    let upstream = Upstream::start("app").await;
    let extra = format!(
        "compression = {{ algorithms = [\"gzip\"], min_bytes = 10, types = [\"text/*\"] }}\n{LOG}"
    );
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;
    let body = "a".repeat(5000);
    let response = weir_tests::http1_client()
        .request(
            http::Request::post(weir.url("/echo"))
                .header("content-type", "text/plain")
                .header("accept-encoding", "gzip")
                .body(weir_tests::full(body))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let got = weir_tests::read_body(response.into_body()).await;

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        (
            summary(&logged[0]),
            logged[0]["bytes_in"].as_u64(),
            logged[0]["bytes_out"].as_u64()
        ),
        (
            (Some(200), Some(false), Some("default"), Some("app")),
            Some(5000),
            Some(got.len() as u64)
        ),
        "{logged:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Connections: timeouts, pipelining, reload
// ---------------------------------------------------------------------------------------

/// A request body that stalls past `body_read_timeout` (408), and two requests pipelined
/// on one connection: one record each.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_and_pipelined_requests_are_logged_once_each() {
    let upstream = Upstream::start("app").await;
    let extra = format!("\n[server.limits]\nbody_read_timeout = \"300ms\"\n{LOG}");
    let weir = Weir::start(&config(&[upstream.addr], &extra)).await;
    let answer = raw_exchange(
        weir.proxy,
        b"POST /stalled HTTP/1.1\r\nhost: a.test\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let answer = raw_exchange(
        weir.proxy,
        b"GET /one HTTP/1.1\r\nhost: a.test\r\n\r\nGET /two HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    let seen: Vec<_> = logged
        .iter()
        .map(|r| {
            (
                r["path"].as_str(),
                r["status"].as_u64(),
                r["bytes_in"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("/stalled"), Some(408), Some(3)),
            (Some("/one"), Some(200), Some(0)),
            (Some("/two"), Some(200), Some(0)),
        ],
        "{logged:#?}"
    );
    assert_eq!(requests_counted(&weir).await, 3.0);
}

/// A request in flight across a reload that renames its route: answered, logged once
/// under the route it was served by, counted once, out of flight.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_across_a_reload_is_logged_once() {
    let upstream = Upstream::start("app").await;
    let config = config(&[upstream.addr], LOG).replace("[plugins]\n", "[plugins]\nwatch = false\n");
    let weir = Weir::start(&config).await;
    let mut client = TcpStream::connect(weir.proxy).await.expect("connect");
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    upstream.wait_for_requests(1).await;

    weir.write(
        "weir.toml",
        config
            .replace("name = \"default\"", "name = \"renamed\"")
            .as_bytes(),
    );
    let response = weir_tests::http1_client()
        .request(
            http::Request::post(weir.admin_url("/reload"))
                .body(weir_tests::empty())
                .expect("request"),
        )
        .await
        .expect("admin");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(weir.metric("weir_generation", &[]).await, Some(2.0));

    upstream.release();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut answer))
        .await
        .expect("in time")
        .expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200"));

    assert_eq!(in_flight_settled(&weir).await, 0.0);
    let logged = logged_before_marker(&weir).await;
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert_eq!(
        (summary(&logged[0]), logged[0]["generation"].as_u64()),
        (
            (Some(200), Some(false), Some("default"), Some("app")),
            Some(1)
        ),
        "{logged:#?}"
    );
    let counts = request_counts(&weir).await;
    assert_eq!(counts.values().sum::<f64>(), 1.0, "{counts:?}");
}

/// `weir_downstream_connections` of the proxy listener, once it reads `want` or at the
/// deadline.
async fn downstream_connections(weir: &Weir, want: f64) -> Option<f64> {
    let listener = weir.proxy.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = weir
            .metric("weir_downstream_connections", &[("listener", &listener)])
            .await;
        if now == Some(want) || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client connection carrying a WebSocket is open: `weir_downstream_connections` counts it
/// while the tunnel is open, and is back at 0 once it closed. The gauge is held by the
/// connection's task (`server::serve`), which ends when hyper hands the connection to the
/// tunnel; the tunnel task keeps the connection's slot, not the gauge.
#[tokio::test(flavor = "multi_thread")]
async fn a_tunnels_connection_counts_as_open_until_it_closes() {
    use tokio_tungstenite::tungstenite::Message;
    let echo = crate::edge::websocket_echo().await;
    let weir = Weir::start(&config(&[echo], LOG)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", weir.proxy))
        .await
        .expect("handshake");
    ws.send(Message::text("hello")).await.expect("send");
    let reply = tokio::time::timeout(DEADLINE, ws.next()).await;
    assert!(matches!(reply, Ok(Some(Ok(_)))), "{reply:?}");
    let open = weir
        .metric(
            "weir_downstream_connections",
            &[("listener", &weir.proxy.to_string())],
        )
        .await;
    assert_eq!(open, Some(1.0), "the WebSocket's connection, open");
    // Still carrying messages, so still open.
    ws.send(Message::text("again")).await.expect("send");
    let reply = tokio::time::timeout(DEADLINE, ws.next()).await;
    assert!(matches!(reply, Ok(Some(Ok(_)))), "{reply:?}");

    ws.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    drop(ws);
    assert_eq!(downstream_connections(&weir, 0.0).await, Some(0.0));
}

/// Connections of every kind, closed — kept-alive HTTP/1.1, HTTP/2, one refused by hyper,
/// one that never sent a byte past its header-read timeout: the gauge back at 0.
#[tokio::test(flavor = "multi_thread")]
async fn downstream_connections_are_back_at_zero_once_closed() {
    let upstream = Upstream::start("app").await;
    let config = crate::config_with(&[upstream.addr], LOG, "header_read_timeout = \"300ms\"", "");
    let weir = Weir::start(&config).await;
    {
        let http1 = weir_tests::http1_client();
        let http2 = weir_tests::http2_client();
        for client in [&http1, &http2] {
            let response = client
                .request(
                    http::Request::get(weir.url("/kept"))
                        .body(weir_tests::empty())
                        .expect("request"),
                )
                .await
                .expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            let _ = response.into_body().collect().await;
        }
        let _ = raw_exchange(weir.proxy, b"GET / HTTP/1.1\r\nno colon\r\n\r\n").await;
        let silent = TcpStream::connect(weir.proxy).await.expect("connect");
        let mut silent = silent;
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(DEADLINE, silent.read(&mut buf)).await;
    }
    assert_eq!(downstream_connections(&weir, 0.0).await, Some(0.0));
    assert_eq!(in_flight_settled(&weir).await, 0.0);
}
