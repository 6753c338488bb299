//! Attacks by a hostile or broken upstream (an endpoint that lies, misbehaves or attacks),
//! each against a real weir process: answers followed by bytes nobody asked for (a second
//! response, a `HEAD`'s or a `204`'s or a `304`'s body, bytes sent late) that must never
//! reach another client over a reused keep-alive connection; `Content-Length` beside
//! chunked coding, conflicting or invalid lengths, bodies cut short; hop-by-hop headers and
//! what an endpoint's `Connection` names; an endless stream of `1xx` heads; a body stalled
//! mid-way (the connection slot given back when the client leaves); an endpoint that stops
//! reading the request body (with no answer, or after an early answer), over HTTP/1.1 and
//! h2c; a huge answer to a background revalidation (`stale-while-revalidate`); a gzip bomb
//! for the body hooks; and h2c endpoints that send GOAWAY and hold the connection, or
//! endless CONTINUATION frames.
//!
//! Every test fails if the defence it checks is missing. Upstreams are raw TCP (answers no
//! HTTP library would write) or raw HTTP/2 frames; clients are hyper's or raw TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use weir_tests::http2::{ACK, END_HEADERS, END_STREAM, encode, kind};
use weir_tests::raw::{self, Framing, find};
use weir_tests::{ClientBody, DEADLINE, PatternBody, Weir, http1_client, http2_client};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// weir with one cluster `app` over `endpoint` (with `cluster` lines added), a catch-all
/// route (with `route` lines added), and `server` lines in `[server]`.
fn config(endpoint: SocketAddr, cluster: &str, route: &str, server: &str) -> String {
    crate::config_with(&[endpoint], route, server, cluster)
}

/// A raw TCP endpoint: each accepted connection is handed, with its number (from 0), to
/// `serve`, which does with it what it likes.
struct Endpoint {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    async fn start<F, Fut>(serve: F) -> Endpoint
    where
        F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted: Arc<AtomicUsize> = Arc::default();
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, n));
            }
        });
        Endpoint {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A request head read off a raw connection.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
}

/// Reads the next request head into a [`Head`]; what follows it stays in `buf`. `None` at
/// the end of the stream.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut first = text.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    Some(Head { method, path })
}

/// `200` with `body`, framed by `Content-Length`.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A whole response that, taken as the answer to the next request, would poison it.
const FORGED: &str =
    "HTTP/1.1 200 OK\r\ncontent-length: 6\r\ncache-control: max-age=600\r\n\r\nPOISON";

/// Polls `done` until it holds, failing the test after [`DEADLINE`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < DEADLINE, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_connections(weir: &Weir) -> u64 {
    weir.clusters().await[0]["open_connections"]
        .as_u64()
        .expect("open_connections")
}

/// `method path` over HTTP/1.1 on a new client (another client each time): status, headers
/// and body, or why there is none (the body cut short, say).
async fn try_send(
    weir: &Weir,
    method: Method,
    path: &str,
    body: ClientBody,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let request = Request::builder()
        .method(method)
        .uri(weir.url(path))
        .body(body)
        .expect("request");
    let exchange = async {
        let response = http1_client()
            .request(request)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}

async fn get(weir: &Weir, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    try_send(weir, Method::GET, path, weir_tests::empty())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `GET path` over HTTP/2 (h2c prior knowledge): status and body, or why there is none.
async fn try_get_h2(weir: &Weir, path: &str) -> Result<(StatusCode, Bytes), String> {
    let request = Request::get(weir.url(path))
        .body(weir_tests::empty())
        .expect("request");
    let exchange = async {
        let response = http2_client()
            .request(request)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}

// ---------------------------------------------------------------------------------------
// Response desync over pooled connections
// ---------------------------------------------------------------------------------------

/// Bytes an endpoint sends past its answer — a second whole response after a
/// `Content-Length` body, a body after the head of a `HEAD`'s answer, of a `204` or of a
/// `304`, in the same write or a moment later — are never taken as the answer to another
/// client's request on the reused connection. With one connection allowed to the cluster,
/// every later request goes over that connection if weir kept it.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_an_endpoint_sends_past_its_answer_never_reach_another_client() {
    // The late forged answer is written once the test says so, and counted when written.
    let (late_tx, late_rx) = watch::channel(false);
    let (forged_tx, mut forged_rx) = watch::channel(false);
    let late_rx = Arc::new(late_rx);
    let forged_tx = Arc::new(forged_tx);
    let endpoint = Endpoint::start(move |mut stream, _| {
        let mut late = (*late_rx).clone();
        let forged = forged_tx.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut stream, &mut buf).await {
                let answer = match (head.method.as_str(), head.path.as_str()) {
                    (_, "/extra") => format!("{}{FORGED}", ok("first")),
                    ("HEAD", "/head-body") => {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{FORGED}",
                            FORGED.len()
                        )
                    }
                    (_, "/204-body") => format!("HTTP/1.1 204 No Content\r\n\r\n{FORGED}"),
                    (_, "/304-body") => {
                        format!("HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n{FORGED}")
                    }
                    (_, "/late") => {
                        if stream.write_all(ok("late").as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = late.wait_for(|go| *go).await;
                        let _ = stream.write_all(FORGED.as_bytes()).await;
                        forged.send_replace(true);
                        continue;
                    }
                    (_, path) => ok(path),
                };
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "max_connections = 1\nretries = 0",
        "",
        "",
    ))
    .await;

    let attacks = [
        (Method::GET, "/extra"),
        (Method::HEAD, "/head-body"),
        (Method::GET, "/204-body"),
        (Method::GET, "/304-body"),
        (Method::GET, "/late"),
    ];
    for (method, path) in attacks {
        let first = try_send(&weir, method.clone(), path, weir_tests::empty()).await;
        if let Ok((_, _, body)) = &first {
            assert!(
                !body.windows(6).any(|w| w == b"POISON"),
                "{method} {path}: {first:?}"
            );
        }
        if path == "/late" {
            // The connection is idle in the pool when the forged answer arrives: weir must
            // close it rather than keep it for the next request.
            late_tx.send_replace(true);
            forged_rx.wait_for(|done| *done).await.expect("forged");
            eventually("the desynchronised connection closing", || async {
                open_connections(&weir).await == 0
            })
            .await;
        }
        for i in 0..3 {
            let next = format!("/after{path}/{i}");
            let (status, _, body) = get(&weir, &next).await;
            assert_eq!(status, StatusCode::OK, "after {method} {path}");
            assert_eq!(
                body,
                next.as_bytes(),
                "after {method} {path}, another client got bytes the endpoint sent past its answer"
            );
        }
    }
}

/// `Content-Length` and `Transfer-Encoding: chunked` together: the chunks frame the body
/// (RFC 9112 §6.3), and an intermediary that forwards the message "MUST first remove the
/// received Content-Length field". On a route with neither cache nor plugins, weir must
/// pass on the body the chunks carry, never under the endpoint's `Content-Length`: a client
/// that trusts that length would read the rest of the body (here a forged response) as the
/// answer to its next request, or get a body cut short (which hyper's server does).
#[tokio::test(flavor = "multi_thread")]
async fn a_content_length_beside_chunked_coding_is_not_forwarded() {
    let mut chunk = b"12345".to_vec();
    chunk.extend_from_slice(FORGED.as_bytes());
    let sent = chunk.clone();
    let endpoint = Endpoint::start(move |mut stream, _| {
        let chunk = chunk.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut stream, &mut buf).await {
                let answer = if head.path == "/tecl" {
                    let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                    bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    bytes.extend_from_slice(&chunk);
                    bytes.extend_from_slice(b"\r\n0\r\n\r\n");
                    bytes
                } else {
                    ok(&head.path).into_bytes()
                };
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let weir = Weir::start(&config(endpoint.addr, "", "", "")).await;

    // HTTP/1.1, on one client connection: the answer, then the client's own next request;
    // and HTTP/2.
    let raw = raw::exchange(
        weir.proxy,
        b"GET /tecl HTTP/1.1\r\nhost: app.test\r\n\r\nGET /next HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n",
        DEADLINE,
    )
    .await;
    let over_h2 = try_get_h2(&weir, "/tecl").await;
    let shown = format!(
        "HTTP/1.1: {:?}; HTTP/2: {over_h2:?}",
        String::from_utf8_lossy(&raw)
    );
    // Read as a client that trusts `Content-Length` would.
    let (responses, rest) = raw::responses(&raw, Framing::LengthFirst);
    assert_eq!(responses.len(), 2, "two requests, two answers: {shown}");
    assert_eq!(
        (responses[0].status, responses[1].status),
        (200, 200),
        "{shown}"
    );
    assert_eq!(
        responses[0].body, sent,
        "the HTTP/1.1 client did not get the body the chunks framed: {shown}"
    );
    if let Some(length) = responses[0].header("content-length") {
        assert_eq!(length, sent.len().to_string(), "{shown}");
    }
    assert_eq!(responses[1].body, b"/next", "{shown}");
    assert!(rest.is_empty(), "{shown}");
    assert_eq!(
        over_h2.as_ref().map(|(_, body)| body.to_vec()),
        Ok(sent),
        "the HTTP/2 client did not get the body the chunks framed: {shown}"
    );
}

/// Lengths hyper's client refuses (two that differ, one that is not a number) and a
/// `Transfer-Encoding` on an HTTP/1.0 answer are a 502, and the next request is answered
/// by its own response over a fresh connection.
#[tokio::test(flavor = "multi_thread")]
async fn conflicting_or_invalid_lengths_are_a_bad_gateway_and_poison_nothing() {
    let endpoint = Endpoint::start(|mut stream, _| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut stream, &mut buf).await {
            let answer = match head.path.as_str() {
                "/two-lengths" => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: {}\r\n\r\nhello{FORGED}",
                    5 + FORGED.len()
                ),
                "/bad-length" => format!("HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello{FORGED}"),
                "/http10-chunked" => format!(
                    "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\nhello{FORGED}"
                ),
                path => ok(path),
            };
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "max_connections = 1\nretries = 0",
        "",
        "",
    ))
    .await;
    for path in ["/two-lengths", "/bad-length", "/http10-chunked"] {
        let (status, _, body) = get(&weir, path).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}: {body:?}");
        let next = format!("/after{path}");
        let (status, _, body) = get(&weir, &next).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, Bytes::from(next)),
            "{path}"
        );
    }
}

/// A body the endpoint cuts short (fewer bytes than its `Content-Length`; a chunk without
/// its bytes and no last chunk) is never passed to the client as a whole answer, over
/// HTTP/1.1 or HTTP/2: the client sees the answer fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_is_never_passed_on_as_whole() {
    let endpoint = Endpoint::start(|mut stream, _| async move {
        let mut buf = Vec::new();
        if let Some(head) = read_head(&mut stream, &mut buf).await {
            let answer = match head.path.as_str() {
                "/short-length" => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
                    "s".repeat(50)
                ),
                _ => format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n{}",
                    "s".repeat(50)
                ),
            };
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let weir = Weir::start(&config(endpoint.addr, "retries = 0", "", "")).await;
    for path in ["/short-length", "/short-chunked"] {
        let answer = try_send(&weir, Method::GET, path, weir_tests::empty()).await;
        assert!(
            answer.is_err()
                || answer
                    .as_ref()
                    .is_ok_and(|(status, _, _)| *status != StatusCode::OK),
            "HTTP/1.1 {path}: a cut body passed as whole: {answer:?}"
        );
        let answer = try_get_h2(&weir, path).await;
        assert!(
            answer.is_err()
                || answer
                    .as_ref()
                    .is_ok_and(|(status, _)| *status != StatusCode::OK),
            "HTTP/2 {path}: a cut body passed as whole: {answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------

/// Hop-by-hop headers from an endpoint (`Connection` and what it names, `Keep-Alive`,
/// `Proxy-*`, `Upgrade` on a 200, `TE`) never reach the client, over HTTP/1.1 or HTTP/2
/// (where any of them would be a protocol error); the endpoint's `Connection: close` ends
/// that upstream connection, not the client's.
#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_from_an_endpoint_never_reach_the_client() {
    let endpoint = Endpoint::start(|mut stream, _| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\nconnection: x-internal, close\r\nx-internal: secret\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nproxy-authenticate: Basic\r\nupgrade: h2c\r\nte: trailers\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok";
            let _ = stream.write_all(answer.as_bytes()).await;
            // As it said: closed after the answer.
        }
    })
    .await;
    let weir = Weir::start(&config(endpoint.addr, "", "", "")).await;
    for _ in 0..2 {
        let (status, headers, body) = get(&weir, "/hop").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        for name in [
            "connection",
            "x-internal",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "upgrade",
            "te",
        ] {
            assert!(
                !headers.contains_key(name),
                "{name} reached the client: {headers:?}"
            );
        }
        assert_eq!(
            headers.get("x-kept").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        let answer = try_get_h2(&weir, "/hop").await;
        assert_eq!(
            answer.map(|(status, body)| (status, body.to_vec())),
            Ok((StatusCode::OK, b"ok".to_vec()))
        );
    }
    assert_eq!(endpoint.accepted(), 4, "one connection per answer");
}

/// What an endpoint's `Connection` names is the endpoint's own hop-by-hop headers, not the
/// headers weir adds to the answer: `Connection: set-cookie` must not remove the sticky
/// session cookie weir sets (nor the request id it sets).
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoints_connection_header_cannot_remove_what_weir_adds() {
    let endpoint = Endpoint::start(|mut stream, _| async move {
        let mut buf = Vec::new();
        while let Some(_head) = read_head(&mut stream, &mut buf).await {
            let answer = "HTTP/1.1 200 OK\r\nconnection: set-cookie, x-request-id\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "sticky = { cookie = \"weir_sticky\" }",
        "",
        "",
    ))
    .await;
    let (status, headers, _) = get(&weir, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.as_bytes().starts_with(b"weir_sticky=")),
        "the endpoint's `Connection: set-cookie` removed weir's sticky cookie: {headers:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Interim responses, stalls, slots
// ---------------------------------------------------------------------------------------

/// An endpoint that answers with `100 Continue` heads for ever, and never a final one, gets
/// the client a 504 at the response timeout, and its connection is closed.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_stream_of_1xx_heads_ends_at_the_response_timeout() {
    let (ended_tx, mut ended_rx) = watch::channel(false);
    let ended_tx = Arc::new(ended_tx);
    let endpoint = Endpoint::start(move |mut stream, _| {
        let ended = ended_tx.clone();
        async move {
            let mut buf = Vec::new();
            if read_head(&mut stream, &mut buf).await.is_some() {
                let heads = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n".repeat(512);
                while stream.write_all(heads.as_bytes()).await.is_ok() {}
            }
            ended.send_replace(true);
        }
    })
    .await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "response_timeout = \"1s\"\nretries = 0",
        "",
        "",
    ))
    .await;
    let started = Instant::now();
    let (status, headers, _) = get(&weir, "/").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{headers:?}");
    assert!(!headers.contains_key("link"), "{headers:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    tokio::time::timeout(DEADLINE, ended_rx.wait_for(|e| *e))
        .await
        .expect("the flooding connection was never closed")
        .expect("ended");
    eventually("the connection slot given back", || async {
        open_connections(&weir).await == 0
    })
    .await;
}

/// An endpoint that sends its head and part of its body, then nothing, holds the client's
/// request as long as the client waits; once the client leaves, the upstream connection is
/// closed and its slot given back.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_stalled_mid_way_gives_its_slot_back_when_the_client_leaves() {
    let (closed_tx, mut closed_rx) = watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    let endpoint = Endpoint::start(move |mut stream, _| {
        let closed = closed_tx.clone();
        async move {
            let mut buf = Vec::new();
            if read_head(&mut stream, &mut buf).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst ten.")
                    .await;
                // Nothing more, until weir closes the connection.
                let mut rest = [0u8; 1024];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            }
            closed.send_modify(|n| *n += 1);
        }
    })
    .await;
    let weir = Weir::start(&config(endpoint.addr, "max_connections = 1", "", "")).await;

    let mut client = TcpStream::connect(weir.proxy).await.expect("connect");
    client
        .write_all(b"GET /stall HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&seen, b"first ten.").is_none() {
        let n = tokio::time::timeout(DEADLINE, client.read(&mut chunk))
            .await
            .expect("the head and first bytes in time")
            .expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(open_connections(&weir).await, 1);
    drop(client);
    tokio::time::timeout(DEADLINE, closed_rx.wait_for(|n| *n == 1))
        .await
        .expect("the stalled upstream connection was never closed")
        .expect("closed");
    eventually("the slot given back", || async {
        open_connections(&weir).await == 0
    })
    .await;
}

/// How long a request whose endpoint stopped reading its body may wait for an answer: the
/// cluster's response timeout and the server's body read timeout are 1 s each.
const STALL_BOUND: Duration = Duration::from_secs(10);

/// The config of the stalled-upload tests: 1 s timeouts, no retries.
fn stall_config(endpoint: SocketAddr, cluster: &str) -> String {
    config(
        endpoint,
        &format!("response_timeout = \"1s\"\nretries = 0\n{cluster}"),
        "",
        "[server.limits]\nbody_read_timeout = \"1s\"",
    )
}

/// A POST of `len` bytes (a streamed body, larger than any retry buffer): whatever weir
/// answers, or that it closed the connection, within [`STALL_BOUND`]; `None` if neither.
async fn upload(weir: &Weir, len: u64) -> Option<Result<StatusCode, String>> {
    let request = Request::post(weir.url("/upload"))
        .header("content-length", len.to_string())
        .body(PatternBody::new(len).boxed())
        .expect("request");
    let started = Instant::now();
    let answer = tokio::time::timeout(STALL_BOUND, http1_client().request(request)).await;
    let answer = answer
        .ok()
        .map(|r| r.map(|r| r.status()).map_err(|e| format!("{e:?}")));
    eprintln!("upload answered {answer:?} after {:?}", started.elapsed());
    answer
}

/// An HTTP/1.1 endpoint that reads a request's head and then neither reads its body nor
/// answers (nor closes): the upload stops once the socket buffers are full. The request
/// must still end within its timeouts (the response timeout, or the body read timeout):
/// a client that did nothing wrong is otherwise held for ever, and so are the request's
/// place under the cluster's `max_requests` and its upstream connection's slot.
#[tokio::test(flavor = "multi_thread")]
async fn an_http1_endpoint_that_stops_reading_the_request_body_is_timed_out() {
    let endpoint = Endpoint::start(|mut stream, _| async move {
        let mut buf = Vec::new();
        if read_head(&mut stream, &mut buf).await.is_some() {
            std::future::pending::<()>().await;
        }
        drop(stream);
    })
    .await;
    let weir = Weir::start(&stall_config(endpoint.addr, "")).await;
    let answer = upload(&weir, 256 << 20).await;
    assert!(
        answer.is_some(),
        "no answer within {STALL_BOUND:?} (response_timeout and body_read_timeout are 1 s): \
         the request waits for ever on an endpoint that stopped reading its body"
    );
}

/// An endpoint that answers before it has read the request body (a 200 here; a 401 or a 413
/// alike), then neither reads the rest nor closes: the client has its answer and leaves,
/// and the upstream connection must not stay stuck for ever holding the cluster's only
/// connection slot — later requests must be served.
#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_answers_early_and_stops_reading_does_not_keep_the_slot() {
    let endpoint = Endpoint::start(|mut stream, _| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_head(&mut stream, &mut buf).await {
            if head.method == "POST" {
                let _ = stream.write_all(ok("early").as_bytes()).await;
                // Never reads the body, never closes.
                std::future::pending::<()>().await;
            }
            if stream.write_all(ok(&head.path).as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let weir = Weir::start(&stall_config(endpoint.addr, "max_connections = 1")).await;

    // The client: a large upload written until the sockets are full, the answer read, then
    // gone.
    let mut client = TcpStream::connect(weir.proxy).await.expect("connect");
    let len: u64 = 256 << 20;
    client
        .write_all(
            format!("POST /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: {len}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("head");
    let (mut reader, mut writer) = client.into_split();
    let written: Arc<AtomicUsize> = Arc::default();
    let progress = written.clone();
    let writing = tokio::spawn(async move {
        let block = vec![b'u'; 1 << 20];
        for _ in 0..(len >> 20) {
            if writer.write_all(&block).await.is_err() {
                return;
            }
            progress.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while find(&seen, b"early").is_none() {
        let n = tokio::time::timeout(DEADLINE, reader.read(&mut chunk))
            .await
            .expect("the early answer in time")
            .expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    // The upload goes on until every buffer between the client and the endpoint is full
    // (its progress stops for a second), then the client leaves.
    let started = Instant::now();
    let mut last = (written.load(Ordering::SeqCst), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the upload never stopped");
    }
    assert!(
        (written.load(Ordering::SeqCst) as u64) < len >> 20,
        "the whole upload went through"
    );
    writing.abort();
    drop(reader);

    // Later requests: served, not each one 504 behind a slot that never comes back.
    let started = Instant::now();
    loop {
        let answer = try_send(&weir, Method::GET, "/later", weir_tests::empty()).await;
        if let Ok((StatusCode::OK, _, body)) = &answer {
            assert_eq!(&body[..], b"/later");
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the cluster's connection slot never came back: {answer:?}, open connections {}",
            open_connections(&weir).await
        );
    }
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// A stored answer revalidated in the background (`stale-while-revalidate`) is answered by
/// the endpoint with 64 MiB (over `max_object_bytes`, so not stored). The answer is read
/// to give its connection back, but must not be held in memory whole: an endpoint could
/// otherwise make weir allocate whatever it sends, or without end.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_answer_to_a_background_revalidation_is_not_held_in_memory() {
    const HUGE: usize = 64 << 20;
    let (done_tx, mut done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let served: Arc<AtomicUsize> = Arc::default();
    let count = served.clone();
    let endpoint = Endpoint::start(move |mut stream, _| {
        let (done, count) = (done_tx.clone(), count.clone());
        async move {
            let mut buf = Vec::new();
            while let Some(_head) = read_head(&mut stream, &mut buf).await {
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    let answer = "HTTP/1.1 200 OK\r\ncache-control: max-age=0, stale-while-revalidate=600\r\netag: \"v1\"\r\ncontent-length: 5\r\n\r\nsmall";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                // The revalidation: a new version, far too large to store.
                let head = format!("HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\netag: \"v2\"\r\ncontent-length: {HUGE}\r\n\r\n");
                let mut ok = stream.write_all(head.as_bytes()).await.is_ok();
                let block = vec![0u8; 1 << 20];
                for _ in 0..(HUGE >> 20) {
                    ok = ok && stream.write_all(&block).await.is_ok();
                }
                done.send_replace(true);
                if !ok {
                    return;
                }
            }
        }
    })
    .await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "",
        "cache = { max_object_bytes = 1048576 }",
        "",
    ))
    .await;
    let (_, _, body) = get(&weir, "/swr").await;
    assert_eq!(&body[..], b"small");
    let ((), growth) = weir
        .peak_rss_growth(async {
            // Stale at once: answered from the store, revalidated behind the answer.
            let (status, headers, body) = get(&weir, "/swr").await;
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"small"[..]),
                "{headers:?}"
            );
            tokio::time::timeout(DEADLINE, done_rx.wait_for(|d| *d))
                .await
                .expect("the revalidation's answer was never taken")
                .expect("done");
            // Let weir take the last of it off the socket.
            tokio::time::sleep(Duration::from_millis(500)).await;
        })
        .await;
    assert!(
        served.load(Ordering::SeqCst) >= 2,
        "no revalidation was sent"
    );
    assert!(
        growth < 32 * 1024,
        "weir's resident memory grew {growth} KiB reading a {} MiB answer to a background \
         revalidation",
        HUGE >> 20
    );
}

/// A gzip bomb (64 MiB of zeros in well under 1 MiB) answered to a route with a body hook
/// (`transform`) is not inflated past the hook's limit: weir's memory grows by far less
/// than the bomb, and the client gets the answer untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_bomb_answer_is_not_inflated_for_the_body_hooks() {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; 64 << 20]).expect("gzip");
    let bomb = encoder.finish().expect("gzip");
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let sent = bomb.clone();
    let endpoint = Endpoint::start(move |mut stream, _| {
        let bomb = bomb.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(_head) = read_head(&mut stream, &mut buf).await {
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                    bomb.len()
                )
                .into_bytes();
                answer.extend_from_slice(&bomb);
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let transform: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/transform.wasm"));
    let settings = b"[config.response.json]\nremove = [\"secret\"]\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/transform.wasm", transform),
        ("plugins/transform.toml", settings),
    ];
    let weir = Weir::start_with_files(
        &config(endpoint.addr, "", "plugins = [\"transform\"]", ""),
        &files,
    )
    .await;
    let (answers, growth) = weir
        .peak_rss_growth(async {
            let mut answers = Vec::new();
            for _ in 0..4 {
                answers.push(get(&weir, "/bomb").await);
            }
            answers
        })
        .await;
    for (status, headers, body) in answers {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"gzip"[..])
        );
        assert_eq!(body.len(), sent.len(), "the bomb was not passed untouched");
    }
    assert!(
        growth < 48 * 1024,
        "weir's resident memory grew {growth} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// HTTP/2 (h2c) endpoints, in raw frames
// ---------------------------------------------------------------------------------------

/// What a raw h2c endpoint does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Mode {
    /// `200` to the first request, then GOAWAY (last stream: that one), and then silence:
    /// it reads on but never answers and never closes.
    GoAwayAndHold,
    /// A HEADERS frame without END_HEADERS, then empty CONTINUATION frames for ever.
    Continuations,
    /// Nothing: never answers, never opens a window (the request body stops at 64 KiB).
    Silent,
}

/// An h2c endpoint speaking in raw frames as `mode` says; `answered` counts its `200`s.
async fn h2_endpoint(mode: H2Mode, answered: Arc<AtomicUsize>) -> Endpoint {
    Endpoint::start(move |mut stream, _| {
        let answered = answered.clone();
        async move {
            let mut preface = [0u8; 24];
            if stream.read_exact(&mut preface).await.is_err() {
                return;
            }
            if stream
                .write_all(&encode(kind::SETTINGS, 0, 0, &[]))
                .await
                .is_err()
            {
                return;
            }
            let mut going_away = false;
            loop {
                let mut head = [0u8; 9];
                if stream.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind_byte, flags) = (head[3], head[4]);
                let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                if stream.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let reply = match kind_byte {
                    kind::SETTINGS if flags & ACK == 0 => encode(kind::SETTINGS, ACK, 0, &[]),
                    kind::PING if flags & ACK == 0 => encode(kind::PING, ACK, 0, &payload),
                    kind::HEADERS => match mode {
                        H2Mode::GoAwayAndHold if !going_away => {
                            going_away = true;
                            answered.fetch_add(1, Ordering::SeqCst);
                            // `:status 200` is static-table entry 8.
                            let mut bytes =
                                encode(kind::HEADERS, END_HEADERS | END_STREAM, id, &[0x88]);
                            let mut goaway = id.to_be_bytes().to_vec();
                            goaway.extend_from_slice(&0u32.to_be_bytes());
                            bytes.extend_from_slice(&encode(kind::GOAWAY, 0, 0, &goaway));
                            bytes
                        }
                        H2Mode::Continuations => {
                            let _ = stream
                                .write_all(&encode(kind::HEADERS, 0, id, &[0x88]))
                                .await;
                            let empty = encode(0x9, 0, id, &[]).repeat(1024);
                            while stream.write_all(&empty).await.is_ok() {}
                            return;
                        }
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                if !reply.is_empty() && stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// An h2c endpoint that sends GOAWAY after its first answer and then holds the connection
/// open without a word: later requests are not stranded on it (they go over a new
/// connection, and are answered).
#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_endpoint_that_goes_away_and_holds_the_connection_strands_nothing() {
    let answered: Arc<AtomicUsize> = Arc::default();
    let endpoint = h2_endpoint(H2Mode::GoAwayAndHold, answered.clone()).await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "protocol = \"h2c\"\nresponse_timeout = \"2s\"",
        "",
        "",
    ))
    .await;
    for i in 0..4 {
        let (status, _, _) = get(&weir, &format!("/{i}")).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 4);
    assert_eq!(endpoint.accepted(), 4, "one connection per answer");
}

/// An h2c endpoint that starts a header block and continues it with empty CONTINUATION
/// frames for ever: a 502 in bounded time, and the connection is closed.
#[tokio::test(flavor = "multi_thread")]
async fn endless_continuation_frames_from_an_h2c_endpoint_are_cut_off() {
    let endpoint = h2_endpoint(H2Mode::Continuations, Arc::default()).await;
    let weir = Weir::start(&config(
        endpoint.addr,
        "protocol = \"h2c\"\nresponse_timeout = \"30s\"\nretries = 0",
        "",
        "",
    ))
    .await;
    let started = Instant::now();
    let (status, _, _) = get(&weir, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    eventually("the flooding connection closed", || async {
        open_connections(&weir).await == 0
    })
    .await;
}

/// An h2c endpoint that never opens its flow-control window and never answers: the request
/// body stops after the first 64 KiB. The request must still end within its timeouts.
#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_endpoint_that_never_opens_its_window_is_timed_out() {
    let endpoint = h2_endpoint(H2Mode::Silent, Arc::default()).await;
    let weir = Weir::start(&stall_config(endpoint.addr, "protocol = \"h2c\"")).await;
    let answer = upload(&weir, 1 << 20).await;
    assert!(
        answer.is_some(),
        "no answer within {STALL_BOUND:?} (response_timeout and body_read_timeout are 1 s): \
         the request waits for ever on an endpoint that never opens its window"
    );
}
