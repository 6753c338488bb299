//! Upstream keep-alive: connections are reused, closed when idle, never reused once the
//! upstream closed them, and an idle connection to one endpoint gives way at
//! `max_connections` to a request for another. The upstream here is a bare TCP server that
//! counts its connections, which the test upstream (a hyper server) does not expose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_tests::{DEADLINE, Weir, get_with};

/// An HTTP/1.1 upstream that answers every request `200 NAME` and counts connections.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Counting {
    /// With `close_after_each`, it closes the connection after each answer without a
    /// `Connection: close`, as a server whose keep-alive timeout just ran out.
    async fn start(name: &'static str, close_after_each: bool) -> Counting {
        Counting::start_with(name, close_after_each, false).await
    }

    /// With `trailers`, each answer is chunked and ends in a trailer field.
    async fn start_with(name: &'static str, close_after_each: bool, trailers: bool) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let counting = Counting {
            addr: listener.local_addr().expect("addr"),
            accepted: Arc::default(),
            closed: Arc::default(),
            requests: Arc::default(),
        };
        let (accepted, closed, requests) = (
            counting.accepted.clone(),
            counting.closed.clone(),
            counting.requests.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (closed, requests) = (closed.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests here have no body: a head ends each one.
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        buf.drain(..end + 4);
                        requests.fetch_add(1, Ordering::SeqCst);
                        let answer = if trailers {
                            format!(
                                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n{:x}\r\n{name}\r\n0\r\nx-sum: 1\r\n\r\n",
                                name.len()
                            )
                        } else {
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                                name.len()
                            )
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() || close_after_each {
                            break;
                        }
                    }
                    drop(stream);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        counting
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// weir over `endpoints`, with `settings` added to the cluster.
fn config(endpoints: &[SocketAddr], settings: &str) -> String {
    crate::config(endpoints, "").replace(
        "connect_timeout = \"1s\"",
        &format!("connect_timeout = \"1s\"\n{settings}"),
    )
}

async fn get(weir: &Weir) -> String {
    let (status, _, body) = get_with(&weir.url("/"), &[]).await;
    assert_eq!(status, http::StatusCode::OK);
    body
}

async fn open_connections(weir: &Weir) -> u64 {
    weir.clusters().await[0]["open_connections"]
        .as_u64()
        .expect("open_connections")
}

/// Polls `done` until it holds, failing the test after [`DEADLINE`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = tokio::time::Instant::now();
    while !done().await {
        assert!(started.elapsed() < DEADLINE, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connections_are_reused_then_closed_when_idle() {
    let upstream = Counting::start("one", false).await;
    // Long enough that a loaded machine's pause between two requests does not close it.
    let weir = Weir::start(&config(&[upstream.addr], "idle_timeout = \"2s\"")).await;
    for _ in 0..5 {
        assert_eq!(get(&weir).await, "one");
    }
    assert_eq!(upstream.requests(), 5);
    assert_eq!(
        upstream.accepted(),
        1,
        "sequential requests share one connection"
    );
    assert_eq!(open_connections(&weir).await, 1);

    eventually("closing the idle connection", || async {
        upstream.closed() == 1 && open_connections(&weir).await == 0
    })
    .await;
    assert_eq!(get(&weir).await, "one");
    assert_eq!(
        upstream.accepted(),
        2,
        "a new connection after the idle one closed"
    );
}

/// Trailers end a chunked answer as surely as its last chunk: the connection goes back to
/// the pool. (hyper says nothing more after a trailers frame, and until session 47 weir took
/// that for an answer cut short and closed the connection after each one.)
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_answer_ended_in_trailers_is_reused() {
    let upstream = Counting::start_with("one", false, true).await;
    let weir = Weir::start(&config(&[upstream.addr], "idle_timeout = \"2s\"")).await;
    for _ in 0..3 {
        assert_eq!(get(&weir).await, "one");
    }
    assert_eq!(upstream.requests(), 3);
    assert_eq!(
        upstream.accepted(),
        1,
        "sequential requests share one connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    let upstream = Counting::start("one", true).await;
    let weir = Weir::start(&config(&[upstream.addr], "retries = 0")).await;
    for round in 1..=3 {
        assert_eq!(get(&weir).await, "one");
        eventually("weir seeing the upstream close", || async {
            upstream.closed() == round && open_connections(&weir).await == 0
        })
        .await;
    }
    assert_eq!(upstream.accepted(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_max_connections_an_idle_connection_to_another_endpoint_makes_room() {
    let a = Counting::start("a", false).await;
    let b = Counting::start("b", false).await;
    // Without making room, the second request would wait for the first endpoint's idle
    // connection to time out (a minute) and fail with 504 after `response_timeout`.
    let settings = "max_connections = 1\nidle_timeout = \"60s\"\nresponse_timeout = \"5s\"";
    let weir = Weir::start(&config(&[a.addr, b.addr], settings)).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&weir).await);
    }
    answers.sort();
    assert_eq!(answers, ["a", "a", "b", "b"]);
    assert_eq!((a.accepted(), b.accepted()), (2, 2));
    assert_eq!(open_connections(&weir).await, 1);
}
