//! Test harness for weir's end-to-end tests: a real `weir` process on `127.0.0.1:0`, real
//! upstream HTTP servers started in the test, and real HTTP/1.1 and HTTP/2 clients.
//!
//! Nothing here listens on a fixed port or talks beyond 127.0.0.1. Waiting is done on
//! signals (a log line appearing, a request arriving) with deadlines, never fixed sleeps.

#![forbid(unsafe_code)]

pub mod certs;
pub mod http2;
pub mod raw;
pub mod redis;
pub mod scripted;
pub mod upstream;
pub mod weir;

pub use redis::{Redis, RedisCluster};
pub use scripted::Scripted;
pub use upstream::Upstream;
pub use weir::Weir;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

/// A port on 127.0.0.1 that refuses connections, reserved for as long as the value lives: its
/// socket is bound but never listens. A port taken from a listener that is then dropped can
/// be handed to the next server bound to port 0 — weir itself, which then proxies to itself.
#[derive(Debug)]
pub struct ClosedPort {
    /// The address; connecting to it is refused.
    pub addr: std::net::SocketAddr,
    _socket: tokio::net::TcpSocket,
}

/// A new [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    ClosedPort {
        addr,
        _socket: socket,
    }
}

impl std::fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// Every wait in a test gives up after this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The request body type the test clients send.
pub type ClientBody = BoxBody<Bytes, Infallible>;

/// An HTTP/1.1 client with a connection pool.
pub fn http1_client() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client speaking cleartext prior knowledge (h2c, no upgrade).
pub fn http2_client() -> Client<HttpConnector, ClientBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An empty request body.
pub fn empty() -> ClientBody {
    http_body_util::Empty::new().boxed()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    http_body_util::Full::new(bytes.into()).boxed()
}

/// `GET url` with `headers` over HTTP/1.1: the status, headers and body as text.
pub async fn get_with(
    url: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, String) {
    send_with(http::Method::GET, url, headers).await
}

/// A bodiless `method` request to `url` with `headers`: status, headers and body as text.
pub async fn send_with(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, String) {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = http1_client()
        .request(request.body(empty()).expect("request"))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = String::from_utf8_lossy(&read_body(body).await).into_owned();
    (parts.status, parts.headers, body)
}

/// Reads a whole body into memory (for small bodies).
pub async fn read_body<B: Body<Data = Bytes>>(body: B) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

/// Streams a body through SHA-256 without holding it; returns (length, hex digest).
pub async fn hash_body<B: Body<Data = Bytes> + Unpin>(mut body: B) -> (u64, String)
where
    B::Error: std::fmt::Debug,
{
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    (len, hex(&hasher.finalize()))
}

/// The value of the Prometheus series `name` whose labels include `labels`, in `text` (a
/// `/metrics` page).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, set) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let pairs: Vec<&str> = set.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A deterministic pseudo-random byte stream of a given length, produced in 64 KiB frames
/// on demand, so a test can send or serve a body far larger than any buffer.
#[derive(Debug)]
pub struct PatternBody {
    remaining: u64,
    state: u64,
}

impl PatternBody {
    /// `len` bytes of the pattern.
    pub fn new(len: u64) -> PatternBody {
        PatternBody {
            remaining: len,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The length and SHA-256 of `PatternBody::new(len)`, computed without a proxy.
    pub fn expected(len: u64) -> (u64, String) {
        let mut body = PatternBody::new(len);
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.next_chunk() {
            hasher.update(&chunk);
        }
        (len, hex(&hasher.finalize()))
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(64 * 1024) as usize;
        let mut chunk = Vec::with_capacity(n);
        while chunk.len() < n {
            // xorshift64: cheap and never settles into a short cycle.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.extend_from_slice(&self.state.to_le_bytes());
        }
        chunk.truncate(n);
        self.remaining -= n as u64;
        Some(Bytes::from(chunk))
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.next_chunk().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}
