//! Errors become short plain-text responses with the right status, and a log line that says
//! which route, cluster and endpoint failed.

use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use weir_tests::{Upstream, Weir, closed_port, empty, http1_client, read_body};

use crate::config;

async fn get(weir: &Weir, path: &str) -> (StatusCode, String, Duration) {
    let started = tokio::time::Instant::now();
    let response = http1_client()
        .request(Request::get(weir.url(path)).body(empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let body = read_body(response.into_body()).await;
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_route_is_404() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "").replace(
        "name = \"default\"\ncluster",
        "name = \"default\"\npath_prefix = \"/only\"\ncluster",
    );
    let weir = Weir::start(&config).await;
    let (status, body, _) = get(&weir, "/elsewhere").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "no route\n")
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_endpoint_is_502_at_once_and_logged() {
    let dead = closed_port();
    let mut weir = Weir::start(&config(&[dead.addr], "")).await;
    let (status, body, elapsed) = get(&weir, "/x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream connect error\n")
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "502 took {elapsed:?}, longer than the 1s connect timeout"
    );

    let line = weir.wait_for_message("request failed").await;
    assert_eq!(line["route"], "default");
    assert_eq!(line["cluster"], "app");
    assert_eq!(line["endpoint"], dead.to_string());
    assert_eq!(line["status"], 502);
    assert!(line["request_id"].as_str().is_some_and(|id| id.len() == 36));
}

/// An endpoint whose accept queue is full drops SYNs, so connecting hangs until weir's
/// connect timeout fires: the same thing a client sees from a blackholed host, without
/// sending a packet beyond 127.0.0.1.
#[tokio::test(flavor = "multi_thread")]
async fn connect_timeout_is_502_after_the_timeout() {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue (never accepted) until a connect attempt hangs.
    let mut held = Vec::new();
    let mut saturated = false;
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(e)) => panic!("connect failed instead of hanging: {e}"),
            Err(_) => {
                saturated = true;
                break;
            }
        }
    }
    assert!(
        saturated,
        "could not fill the accept queue of a listener with backlog 0"
    );

    let weir = Weir::start(
        &config(&[addr], "").replace("connect_timeout = \"1s\"", "connect_timeout = \"400ms\""),
    )
    .await;
    let (status, body, elapsed) = get(&weir, "/x").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream connect error\n")
    );
    assert!(
        elapsed >= Duration::from_millis(400),
        "gave up after {elapsed:?}, before the connect timeout"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_after_the_response_timeout() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nresponse_timeout = \"300ms\"",
    );
    let weir = Weir::start(&config).await;
    let (status, body, elapsed) = get(&weir, "/hang").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream timeout\n")
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "answered after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_400() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;
    for raw in [
        "GET / HTTP/1.1\r\n\r\n", // HTTP/1.1 without Host
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", // two Hosts
        "NOT A REQUEST\r\n\r\n",  // not HTTP at all
        "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nConnection: close\r\n\r\n", // no tunnels
    ] {
        let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
        stream.write_all(raw.as_bytes()).await.expect("write");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{raw:?} got {reply:?}");
    }
    assert!(upstream.requests().is_empty());
}

/// Time between two deadlines of one kind on one connection (an idle pause, a slow answer),
/// long enough that a timer firing at the earlier deadline would cut the later request short
/// by far more than scheduling noise.
const IDLE_GAP: Duration = Duration::from_millis(200);

/// One downstream connection reuses its timers from request to request (weir keeps a
/// connection's sleeps): after fast requests on it, a slow one still gets its 504 at the
/// response timeout, and the connection goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn the_response_timeout_holds_on_a_reused_connection() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nresponse_timeout = \"300ms\"",
    );
    let weir = Weir::start(&config).await;
    let stream = TcpStream::connect(weir.proxy).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let mut send = async |path: &str| {
        let request = Request::get(path)
            .header("host", "app.test")
            .body(empty())
            .expect("request");
        sender.ready().await.expect("ready");
        let started = tokio::time::Instant::now();
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        read_body(response.into_body()).await;
        (status, started.elapsed())
    };
    for _ in 0..3 {
        assert_eq!(send("/x").await.0, StatusCode::OK);
    }
    // Idle between requests: the reused sleep was filed under an earlier request's deadline,
    // which now comes before this one's.
    tokio::time::sleep(IDLE_GAP).await;
    let (status, elapsed) = send("/hang").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up after {elapsed:?}, before the response timeout"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(send("/x").await.0, StatusCode::OK);
}

/// A client that starts a request head and does not finish it is disconnected at the
/// header-read timeout: on a new connection, and on a kept-alive one after a request it completed (the
/// second head's timer is the first one's, reused).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_slow_to_send_its_head_is_cut_off() {
    let upstream = Upstream::start_with_delay("one", IDLE_GAP).await;
    let config = config(&[upstream.addr], "").replace(
        "drain_timeout = \"10s\"",
        "drain_timeout = \"10s\"\nheader_read_timeout = \"300ms\"",
    );
    let weir = Weir::start(&config).await;
    let partial = b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-Slow: ";

    // A new connection. weir's head timer (`server::timeouts::Clock`) starts once it has
    // accepted the connection, which can come before this client's `connect` returns (1.5 ms
    // before, once, under load): this clock starts before the connection exists.
    let started = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
    stream.write_all(partial).await.expect("write");
    let reply = read_until_closed(&mut stream).await;
    assert_cut_off(&reply, started.elapsed(), Duration::from_millis(300));

    // A kept-alive connection, after one whole request, timed from before it exists.
    let connected = tokio::time::Instant::now();
    let mut stream = TcpStream::connect(weir.proxy).await.expect("connect");
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .expect("write");
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    // weir times the next head from its first byte, which comes after the response, at least
    // IDLE_GAP after the connection began (the slow upstream): so it is cut off no sooner
    // than IDLE_GAP + 300 ms after that. The connection's one sleep is still filed under the
    // first head's deadline; firing at it would cut the second head ~200 ms (IDLE_GAP) short.
    // (A clock started here, after reading the response, could run behind weir's: 3.4 ms
    // once, under load.)
    stream.write_all(partial).await.expect("write");
    let reply = read_until_closed(&mut stream).await;
    assert_cut_off(
        &reply,
        connected.elapsed(),
        IDLE_GAP + Duration::from_millis(300),
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// One whole HTTP/1.1 response with a `content-length`, within 5 s.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let read_more = async |stream: &mut TcpStream, reply: &mut Vec<u8>| {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5s")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(reply));
        reply.extend_from_slice(&chunk[..n]);
    };
    let head_end = loop {
        if let Some(i) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, &mut reply).await;
    };
    let head = String::from_utf8_lossy(&reply[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    while reply.len() < head_end + length {
        read_more(stream, &mut reply).await;
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// Everything the peer sends until it closes, within 5 s.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("weir closed the connection within 5s")
        .expect("read");
    reply
}

fn assert_cut_off(reply: &[u8], elapsed: Duration, at_least: Duration) {
    // hyper closes the connection without a response (as nginx does); a 408 would do too.
    let reply = String::from_utf8_lossy(reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "got {reply:?}"
    );
    assert!(
        elapsed >= at_least,
        "cut off after {elapsed:?}, before the header-read timeout"
    );
}
