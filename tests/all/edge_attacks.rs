//! Attacks on the edge, each against a real weir process: h2c and WebSocket request
//! smuggling through upgrades, an endpoint switching protocols unasked, upgrades (HTTP/1.1
//! and RFC 8441 extended CONNECT) past an auth plugin, clients that stall before HTTP begins
//! (in the TLS handshake, before the first byte, inside the HTTP/2 preface), tunnels and
//! connection caps (downstream and upstream), SNI and TLS-version tricks, session resumption
//! across a client-CA rotation, a host that differs between what weir routed on and what an
//! HTTP/2 upstream is told, and gRPC errors. Each test fails if the defence it attacks is
//! removed.
//!
//! Most upstreams here are [`RawUpstream`], a bare TCP server that records every byte it is
//! sent and can switch protocols when asked, always, or never: the test upstream (a hyper
//! server) would neither agree to an upgrade nor show bytes that were not HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir_tests::certs::{self, Ca, Leaf};
use weir_tests::raw::find;
use weir_tests::{DEADLINE, Upstream, Weir};

/// The header-read timeout of the tests about stalled clients.
const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(300);

/// A WebSocket handshake for `path`, as a browser sends it (less the `Origin`).
fn websocket_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// An h2c upgrade request (RFC 7540 §3.2) for `path`: the start of h2c smuggling.
fn h2c_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
}

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// ---------------------------------------------------------------------------------------
// A raw upstream

/// How a [`RawUpstream`] answers a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `101` to a request with an `Upgrade` header, then every byte echoed back; `200 plain`
    /// to any other request.
    SwitchWhenAsked,
    /// `101` to every request, asked or not, then every byte echoed back.
    SwitchAlways,
    /// `101` to a request with an `Upgrade` header, then silence: it reads but never
    /// writes and never closes (until the test ends).
    SwitchAndHold,
    /// This status (with body `refused`) to every request, the connection kept alive: an
    /// endpoint that refuses upgrades.
    Refuse(u16),
}

/// What a [`RawUpstream`] was sent.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Every request head, as text.
    heads: Vec<String>,
    /// Bytes received, heads and all.
    bytes: usize,
    /// Bytes received after it switched protocols.
    tunnelled: Vec<u8>,
    /// Connections accepted.
    connections: usize,
    /// Connections open now.
    open: usize,
    /// The most connections open at once.
    peak: usize,
}

/// An HTTP/1.1 upstream on a bare socket (requests without bodies) that records what it is
/// sent and switches protocols as its [`Mode`] says.
struct RawUpstream {
    addr: SocketAddr,
    seen: watch::Receiver<Seen>,
}

impl RawUpstream {
    async fn start(mode: Mode) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = watch::channel(Seen::default());
        let tx = Arc::new(tx);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, mode, tx.clone()));
            }
        });
        RawUpstream { addr, seen }
    }

    fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits until what it was sent satisfies `done`.
    async fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
        let mut rx = self.seen.clone();
        match tokio::time::timeout(DEADLINE, rx.wait_for(|s| done(s))).await {
            Ok(Ok(seen)) => seen.clone(),
            _ => panic!("the upstream never saw {what}: {:?}", self.seen()),
        }
    }
}

/// Counts a connection open until dropped.
struct OpenConnection(Arc<watch::Sender<Seen>>);

impl OpenConnection {
    fn new(seen: Arc<watch::Sender<Seen>>) -> OpenConnection {
        seen.send_modify(|s| {
            s.connections += 1;
            s.open += 1;
            s.peak = s.peak.max(s.open);
        });
        OpenConnection(seen)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.open -= 1);
    }
}

async fn serve_raw(mut stream: TcpStream, mode: Mode, seen: Arc<watch::Sender<Seen>>) {
    let _open = OpenConnection::new(seen.clone());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            seen.send_modify(|s| s.bytes += n);
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let asks = head.to_ascii_lowercase().contains("\r\nupgrade:");
        seen.send_modify(|s| s.heads.push(head));
        let switch = match mode {
            Mode::SwitchAlways => true,
            Mode::SwitchWhenAsked | Mode::SwitchAndHold => asks,
            Mode::Refuse(_) => false,
        };
        if !switch {
            let (status, body) = match mode {
                Mode::Refuse(status) => (status, "refused"),
                _ => (200, "plain"),
            };
            let answer = format!(
                "HTTP/1.1 {status} Answer\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
        if stream.write_all(switched).await.is_err() {
            return;
        }
        let echo = mode != Mode::SwitchAndHold;
        // Whatever came after the head is the tunnel's first bytes.
        seen.send_modify(|s| s.tunnelled.extend_from_slice(&buf));
        if echo && !buf.is_empty() && stream.write_all(&buf).await.is_err() {
            return;
        }
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.send_modify(|s| {
                s.bytes += n;
                s.tunnelled.extend_from_slice(&chunk[..n]);
            });
            if echo && stream.write_all(&chunk[..n]).await.is_err() {
                return;
            }
        }
        if !echo {
            // Neither closes nor answers: the tunnel stays until weir gives up on it.
            std::future::pending::<()>().await;
        }
        return;
    }
}

// ---------------------------------------------------------------------------------------
// A raw client

/// Reads more bytes into `buf`; `false` when the connection closed (or failed). Panics if
/// nothing comes within the deadline.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(_) => panic!(
            "nothing within {DEADLINE:?} after {:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

/// One HTTP/1.1 response.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The head, lower case.
    head: String,
    body: Vec<u8>,
}

/// Reads one HTTP/1.1 response (a body by `content-length` or chunked; none for 1xx, 204,
/// 304); what follows it stays in `buf`. `None` if the connection closed before a head.
async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Answer> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {head:?}"));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
    };
    let mut body = Vec::new();
    if (100..200).contains(&status) || status == 204 || status == 304 {
    } else if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                assert!(read_more(stream, buf).await, "closed inside a chunk");
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if size == 0 {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    assert!(read_more(stream, buf).await, "closed inside trailers");
                };
                buf.drain(..end);
                break;
            }
            while buf.len() < line_end + 2 + size + 2 {
                assert!(read_more(stream, buf).await, "closed inside a chunk");
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
        }
    } else {
        let len: usize = header("content-length").map_or(0, |l| l.parse().expect("length"));
        while buf.len() < len {
            assert!(read_more(stream, buf).await, "closed inside a body");
        }
        body = buf.drain(..len).collect();
    }
    Some(Answer { status, head, body })
}

/// Reads until weir closes the connection (or resets it); what came before. Panics if it is
/// still open at the deadline.
async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: weir kept the connection open for {DEADLINE:?} (sent {:?})",
        String::from_utf8_lossy(&got)
    );
    got
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
}

// ---------------------------------------------------------------------------------------
// Configs

/// One plain listener (and admin) in front of cluster `app` at `upstream`: route `open` (no
/// plugins) for everything, route `secret` (`/secret`, key-auth) beside it; `server` goes
/// in `[server]`, `cluster` in the cluster's table.
fn guarded(upstream: SocketAddr, server: &str, cluster: &str) -> String {
    let secret = r#"plugins = []

[[routes]]
name = "secret"
path_prefix = "/secret"
cluster = "app"
plugins = ["key-auth"]
"#;
    crate::config_with(&[upstream], secret, server, cluster)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca root");
    }
    roots
}

/// A TLS client trusting `ca`, offering `versions`, HTTP/1.1 by ALPN, presenting `client`'s
/// certificate if given, resuming sessions if `resume`.
fn tls_client(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client: Option<&Leaf>,
    resume: bool,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots(ca));
    let mut config = match client {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key pem");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Tls, String> {
    let tcp = connect(addr).await;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("a handshake that ends")
    .map_err(|e| format!("handshake: {e}"))
}

/// `GET path` over a new TLS connection: the status and whether the session was resumed,
/// or why there was none (a refused handshake, or a connection closed with no answer).
async fn tls_get(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(u16, bool), String> {
    let mut tls = tls_connect(addr, name, config).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    match read_answer(&mut tls, &mut buf).await {
        Some(answer) => Ok((answer.status, resumed)),
        None => Err("closed without an answer".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Upgrades: smuggling and auth

/// h2c smuggling: a client asks to upgrade to h2c (cleartext HTTP/2) through weir, to an
/// endpoint that would agree. Were weir to pass the upgrade on and tunnel the 101, the client
/// would speak HTTP/2 straight to the endpoint, every later request past weir's routing and
/// plugins. weir must send it on as a plain request, without `Upgrade` or `HTTP2-Settings`,
/// and keep parsing the connection as HTTP/1.1: a following request for a route that needs
/// a key gets weir's 401, and the HTTP/2 preface is never forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_upgrade_goes_upstream_as_a_plain_request_and_the_connection_stays_http() {
    let upstream = RawUpstream::start(Mode::SwitchWhenAsked).await;
    let weir =
        Weir::start_with_files(&guarded(upstream.addr, "", ""), &crate::key_auth_files()).await;
    let mut client = connect(weir.proxy).await;
    let mut buf = Vec::new();

    send(&mut client, h2c_request("/smuggle").as_bytes()).await;
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"plain");
    assert!(!answer.head.contains("upgrade"), "{answer:?}");
    let seen = upstream.seen();
    assert_eq!(seen.heads.len(), 1, "{seen:?}");
    let head = seen.heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /smuggle http/1.1\r\n"), "{head}");
    for smuggled in ["upgrade", "http2-settings", "h2c"] {
        assert!(
            !head.contains(smuggled),
            "the upstream saw {smuggled}: {head}"
        );
    }

    // The connection is still weir's HTTP/1.1: routing and key-auth apply.
    send(
        &mut client,
        b"GET /secret/x HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await;
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 401, "{answer:?}");

    // What an h2c client sends after its upgrade is garbage to HTTP/1.1: weir answers it
    // (or closes), and none of it reaches the endpoint.
    send(&mut client, H2_PREFACE).await;
    let rest = read_until_closed(&mut client, "after the HTTP/2 preface").await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.is_empty() || rest.starts_with("HTTP/1.1 4") || rest.starts_with("HTTP/1.1 5"));
    let seen = upstream.seen();
    assert_eq!(seen.heads.len(), 1, "{seen:?}");
    assert_eq!(seen.bytes, seen.heads[0].len(), "{seen:?}");
    assert!(seen.tunnelled.is_empty(), "{seen:?}");
}

/// An endpoint that answers `101 Switching Protocols` to a request that asked for no upgrade
/// (weir removes `Upgrade: h2c`, and a plain GET has none): weir starts no tunnel for it, so
/// relaying the 101 would tell the client a protocol switch happened that did not. The client
/// must get a gateway error, not a 101, and none of its later bytes may reach the endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_switching_protocols_unasked_gets_no_101_to_the_client() {
    let upstream = RawUpstream::start(Mode::SwitchAlways).await;
    let weir = Weir::start_with_files(
        &guarded(upstream.addr, "", "retries = 0"),
        &crate::key_auth_files(),
    )
    .await;

    for (i, request) in [
        h2c_request("/h2c"),
        "GET /plain HTTP/1.1\r\nHost: app.test\r\n\r\n".into(),
    ]
    .iter()
    .enumerate()
    {
        let mut client = connect(weir.proxy).await;
        let mut buf = Vec::new();
        send(&mut client, request.as_bytes()).await;
        let answer = read_answer(&mut client, &mut buf).await;
        let status = answer.as_ref().map(|a| a.status);
        assert_ne!(status, Some(101), "request {i}: {answer:?}");
        assert_eq!(status, Some(502), "request {i}: {answer:?}");
        // The connection is still weir's HTTP/1.1: what the client sends next is routed and
        // guarded, not the endpoint's.
        send(
            &mut client,
            b"GET /secret/smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
        )
        .await;
        let answer = read_answer(&mut client, &mut buf).await;
        assert_eq!(answer.map(|a| a.status), Some(401), "request {i}");
        let seen = upstream.seen();
        assert_eq!(seen.heads.len(), i + 1, "request {i}: {seen:?}");
        assert!(seen.tunnelled.is_empty(), "request {i}: {seen:?}");
    }

    // An HTTP/2 client (where 101 does not exist at all) gets the gateway error too.
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(connect(weir.proxy).await),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get("http://app.test/h2")
        .body(weir_tests::empty())
        .expect("request");
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("an answer in time");
    let status = response.as_ref().map(|r| r.status());
    assert_eq!(status.ok(), Some(StatusCode::BAD_GATEWAY), "{response:?}");
    assert!(upstream.seen().tunnelled.is_empty());
}

/// WebSocket smuggling: the client asks for an upgrade the endpoint refuses (426), then
/// sends, on the same connection, a request for a route that needs a key, then raw bytes.
/// A proxy that tunnels without checking for a 101 would hand both to the endpoint. weir
/// must answer the second request itself (401) and never forward the raw bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upgrade_leaves_the_connection_to_weir() {
    let upstream = RawUpstream::start(Mode::Refuse(426)).await;
    let weir =
        Weir::start_with_files(&guarded(upstream.addr, "", ""), &crate::key_auth_files()).await;
    let mut client = connect(weir.proxy).await;
    let mut buf = Vec::new();

    // Both requests in one write: the second is already in weir's buffer when the refusal
    // comes back.
    let pipelined = format!(
        "{}GET /secret/admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        websocket_request("/ws")
    );
    send(&mut client, pipelined.as_bytes()).await;
    let refused = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(refused.status, 426, "{refused:?}");
    assert_eq!(refused.body, b"refused");
    let guarded = read_answer(&mut client, &mut buf)
        .await
        .expect("a second answer");
    assert_eq!(guarded.status, 401, "{guarded:?}");

    // A WebSocket frame where HTTP is expected: weir's to refuse, not the endpoint's to read.
    send(
        &mut client,
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58\r\n\r\n",
    )
    .await;
    let _ = read_until_closed(&mut client, "after a frame where a request belongs").await;
    let seen = upstream.seen();
    assert_eq!(seen.heads.len(), 1, "{seen:?}");
    assert!(seen.heads[0].starts_with("GET /ws "), "{seen:?}");
    assert_eq!(seen.bytes, seen.heads[0].len(), "{seen:?}");
}

/// An upgrade on a route whose key-auth refuses it: the endpoint (which would switch) is never
/// even connected to, and bytes the client sends after the handshake are not tunnelled.
#[tokio::test(flavor = "multi_thread")]
async fn key_auth_refusing_an_upgrade_keeps_it_from_the_upstream() {
    let upstream = RawUpstream::start(Mode::SwitchWhenAsked).await;
    let weir =
        Weir::start_with_files(&guarded(upstream.addr, "", ""), &crate::key_auth_files()).await;
    let mut client = connect(weir.proxy).await;
    let mut buf = Vec::new();

    let attempt = format!("{}hello, endpoint\r\n\r\n", websocket_request("/secret/ws"));
    send(&mut client, attempt.as_bytes()).await;
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(!answer.head.contains("upgrade"), "{answer:?}");
    let _ = read_until_closed(&mut client, "after bytes that are not HTTP").await;
    let seen = upstream.seen();
    assert_eq!(seen.connections, 0, "{seen:?}");

    // With the key the same upgrade goes through: the refusal was key-auth's.
    let mut client = connect(weir.proxy).await;
    let with_key = websocket_request("/secret/ws").replace(
        "Host: app.test\r\n",
        "Host: app.test\r\nx-api-key: alice-key\r\n",
    );
    send(&mut client, with_key.as_bytes()).await;
    let mut buf = Vec::new();
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 101, "{answer:?}");
    send(&mut client, b"ping").await;
    while buf.len() < 4 {
        assert!(read_more(&mut client, &mut buf).await, "closed");
    }
    assert_eq!(buf, b"ping");
}

/// An HTTP/2 connection to weir (cleartext, prior knowledge), past a first exchange so
/// weir's SETTINGS (extended CONNECT enabled) have arrived.
async fn h2_connection(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<weir_tests::ClientBody> {
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(connect(addr).await),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let warm = http::Request::get("http://app.test/warm")
        .body(weir_tests::empty())
        .expect("request");
    let _ = sender.send_request(warm).await;
    sender
}

/// An RFC 8441 extended CONNECT for `protocol` at `path`, with `headers`.
fn extended_connect(
    protocol: &'static str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Request<weir_tests::ClientBody> {
    let mut request = http::Request::connect(format!("http://app.test{path}"))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(weir_tests::empty()).expect("request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    request
}

/// A WebSocket over HTTP/2 (an extended CONNECT) on a route whose key-auth refuses it: the
/// endpoint is never connected to. With the key, the same CONNECT becomes a tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn key_auth_refusing_an_http2_websocket_keeps_it_from_the_upstream() {
    let upstream = RawUpstream::start(Mode::SwitchWhenAsked).await;
    let weir =
        Weir::start_with_files(&guarded(upstream.addr, "", ""), &crate::key_auth_files()).await;
    let mut sender = h2_connection(weir.proxy).await;
    let warmed = upstream
        .wait("the warm-up request", |s| s.heads.len() == 1)
        .await;

    let refused = sender
        .send_request(extended_connect("websocket", "/secret/ws", &[]))
        .await
        .expect("a response");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let seen = upstream.seen();
    assert_eq!(seen.heads.len(), warmed.heads.len(), "{seen:?}");
    assert!(seen.tunnelled.is_empty(), "{seen:?}");

    let mut accepted = sender
        .send_request(extended_connect(
            "websocket",
            "/secret/ws",
            &[("x-api-key", "alice-key")],
        ))
        .await
        .expect("a response");
    assert_eq!(accepted.status(), StatusCode::OK);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(&mut accepted).await.expect("upgraded"));
    send(&mut tunnel, b"ping").await;
    let mut buf = Vec::new();
    while buf.len() < 4 {
        assert!(read_more(&mut tunnel, &mut buf).await, "the tunnel closed");
    }
    assert_eq!(buf, b"ping");
}

/// An extended CONNECT for a protocol other than `websocket` (`h2c` here, or any a client
/// names) is a CONNECT weir must refuse: a tunnel for it would carry whatever the client
/// likes to the endpoint, past routing and plugins.
#[tokio::test(flavor = "multi_thread")]
async fn an_extended_connect_for_another_protocol_is_refused() {
    let upstream = RawUpstream::start(Mode::SwitchAlways).await;
    let weir =
        Weir::start_with_files(&guarded(upstream.addr, "", ""), &crate::key_auth_files()).await;
    let mut sender = h2_connection(weir.proxy).await;
    let before = upstream.seen().heads.len();
    for protocol in ["h2c", "connect-udp", "websocket2"] {
        let response = sender
            .send_request(extended_connect(protocol, "/open", &[]))
            .await
            .expect("a response");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{protocol}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.heads.len(), before, "{seen:?}");
}

// ---------------------------------------------------------------------------------------
// Clients that stall before HTTP begins

/// A TLS client that connects and sends nothing, or half a ClientHello, holds a connection
/// slot and a task: it is disconnected at the header-read timeout, whichever it did.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_client_stalling_in_its_handshake_is_cut_off() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let site = ca.server(&["site.test"], 1);
    let files = certs::leaf_files(&[("site", &site)]);
    let config = crate::tls_config(
        upstream.addr,
        &["site"],
        "",
        "header_read_timeout = \"300ms\"",
    );
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;

    // Timed from before the connection: weir's handshake timer starts once it has it.
    let started = tokio::time::Instant::now();
    let mut silent = connect(weir.proxy).await;
    let got = read_until_closed(&mut silent, "a client that sent nothing").await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT,
        "cut off after {:?}, before the timeout",
        started.elapsed()
    );

    // A handshake record announcing 512 bytes, of which 10 come.
    let mut partial = connect(weir.proxy).await;
    send(
        &mut partial,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03],
    )
    .await;
    let _ = read_until_closed(&mut partial, "a client that sent half a ClientHello").await;

    // A whole handshake is not cut off.
    let client = tls_client(&ca, &[&rustls::version::TLS13], None, false);
    let (status, _) = tls_get(weir.proxy, "site.test", client, "/after")
        .await
        .expect("served");
    assert_eq!(status, 200);
}

/// `[server]` for the tests of clients that never start HTTP: one connection slot, so one
/// such client left connected would keep every other client out.
const ONE_SLOT: &str = "header_read_timeout = \"300ms\"\nmax_connections = 1";

/// A client that connects and never sends a byte must not hold its connection slot for ever:
/// with `max_connections = 1`, one such socket keeps every other client out. It is cut off at
/// the header-read timeout, as a client that stops inside its request head is, and the client
/// waiting behind it is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_plain_client_that_never_sends_a_byte_is_cut_off() {
    let upstream = Upstream::start("app").await;
    let weir = Weir::start(&crate::config(&[upstream.addr], "").replace(
        "drain_timeout = \"10s\"",
        &format!("drain_timeout = \"10s\"\n{ONE_SLOT}"),
    ))
    .await;
    let mut silent = connect(weir.proxy).await;
    // Behind it, a real client, waiting in the accept queue.
    let request = http::Request::get(weir.url("/behind"))
        .header("host", "app.test")
        .body(weir_tests::empty())
        .expect("request");
    let behind = tokio::spawn(weir_tests::http1_client().request(request));
    let got = read_until_closed(&mut silent, "a plain client that sent nothing").await;
    assert!(got.is_empty(), "{got:?}");
    let response = tokio::time::timeout(DEADLINE, behind)
        .await
        .expect("the client behind the silent one was served")
        .expect("task")
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
}

/// The same after a TLS handshake, whichever protocol ALPN chose: the handshake's own timeout
/// is over, and the client sends nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_client_that_sends_nothing_after_its_handshake_is_cut_off() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let site = ca.server(&["site.test"], 1);
    let files = certs::leaf_files(&[("site", &site)]);
    let config = crate::tls_config(upstream.addr, &["site"], "", ONE_SLOT);
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut client = (*tls_client(&ca, &[&rustls::version::TLS13], None, false)).clone();
        client.alpn_protocols = vec![alpn.to_vec()];
        let mut tls = tls_connect(weir.proxy, "site.test", Arc::new(client))
            .await
            .expect("handshake");
        let what = format!(
            "a TLS client ({}) that sent nothing",
            String::from_utf8_lossy(alpn)
        );
        let _ = read_until_closed(&mut tls, &what).await;
    }
    // And the slot is free again.
    let client = tls_client(&ca, &[&rustls::version::TLS13], None, false);
    let (status, _) = tls_get(weir.proxy, "site.test", client, "/after")
        .await
        .expect("served");
    assert_eq!(status, 200);
}

/// A client that starts the HTTP/2 preface and stops: hyper is still deciding between HTTP/1.1
/// and HTTP/2, where no header-read timeout runs yet. It is cut off all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_stalling_inside_the_http2_preface_is_cut_off() {
    let upstream = Upstream::start("app").await;
    let weir = Weir::start(&crate::config(&[upstream.addr], "").replace(
        "drain_timeout = \"10s\"",
        "drain_timeout = \"10s\"\nheader_read_timeout = \"300ms\"",
    ))
    .await;
    let mut client = connect(weir.proxy).await;
    send(&mut client, &H2_PREFACE[..16]).await;
    let _ = read_until_closed(&mut client, "a client that sent half the HTTP/2 preface").await;
}

// ---------------------------------------------------------------------------------------
// Tunnels and connection caps

/// Opens a tunnel through weir to a [`RawUpstream`] that echoes, and proves it echoes.
async fn open_tunnel(addr: SocketAddr, path: &str) -> TcpStream {
    let mut client = connect(addr).await;
    send(&mut client, websocket_request(path).as_bytes()).await;
    let mut buf = Vec::new();
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 101, "{answer:?}");
    echo(&mut client, &mut buf, path.as_bytes()).await;
    client
}

/// Sends `bytes` through a tunnel and reads them back.
async fn echo(client: &mut TcpStream, buf: &mut Vec<u8>, bytes: &[u8]) {
    send(client, bytes).await;
    while buf.len() < bytes.len() {
        assert!(read_more(client, buf).await, "the tunnel closed");
    }
    assert_eq!(&buf[..bytes.len()], bytes);
    buf.drain(..bytes.len());
}

/// With `max_connections = 2`, two open tunnels hold both slots: a third client waits in the
/// kernel's accept queue, unserved, until a tunnel closes — then it is served. (Were a tunnel
/// to give its slot back at the upgrade, the cap would not bound tunnels at all; were a closed
/// tunnel to keep it, the third would never be served.)
#[tokio::test(flavor = "multi_thread")]
async fn open_tunnels_hold_their_connection_slots_until_they_close() {
    let upstream = RawUpstream::start(Mode::SwitchWhenAsked).await;
    let weir = Weir::start_with_files(
        &guarded(upstream.addr, "max_connections = 2", ""),
        &crate::key_auth_files(),
    )
    .await;
    let first = open_tunnel(weir.proxy, "/one").await;
    let mut second = open_tunnel(weir.proxy, "/two").await;

    let mut third = connect(weir.proxy).await;
    send(&mut third, b"GET /third HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let mut third_buf = Vec::new();
    let mut buf = Vec::new();
    // Both tunnels still carry bytes, and the third has had time to be served were a slot
    // free: it was not.
    echo(&mut second, &mut buf, b"still open").await;
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        read_answer(&mut third, &mut third_buf),
    )
    .await;
    assert!(
        early.is_err(),
        "served while both tunnels were open: {early:?}"
    );
    assert_eq!(upstream.seen().heads.len(), 2);

    // The client closes the first tunnel; weir closes its end to the endpoint, which closes
    // back, and the slot is free.
    drop(first);
    let answer = tokio::time::timeout(DEADLINE, read_answer(&mut third, &mut third_buf))
        .await
        .expect("served once a tunnel closed")
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    echo(&mut second, &mut buf, b"and still").await;
}

/// A tunnel whose client vanished while its endpoint stays open and silent is closed at
/// `upgrade_idle_timeout`, and its connection slot comes back: otherwise an endpoint that
/// ignores the end of its client would keep slots for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_tunnel_gives_its_slot_back_after_the_idle_timeout() {
    let upstream = RawUpstream::start(Mode::SwitchAndHold).await;
    let weir = Weir::start_with_files(
        &guarded(
            upstream.addr,
            "max_connections = 1\nupgrade_idle_timeout = \"300ms\"",
            "",
        ),
        &crate::key_auth_files(),
    )
    .await;
    let mut client = connect(weir.proxy).await;
    send(&mut client, websocket_request("/ws").as_bytes()).await;
    let mut buf = Vec::new();
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 101, "{answer:?}");
    send(&mut client, b"bye").await;
    upstream
        .wait("the tunnel's bytes", |s| s.tunnelled == b"bye")
        .await;
    drop(client);

    let (status, _, body) = tokio::time::timeout(
        DEADLINE,
        weir_tests::get_with(&weir.url("/next"), &[("host", "app.test")]),
    )
    .await
    .expect("the slot came back");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain"));
}

/// A cluster's `max_connections` bounds the connections open to its endpoints; a tunnel is
/// one. With `max_connections = 1` and `max_pending = 0`, a second WebSocket while the first
/// is open must be refused (503), not open a second connection to the endpoint — else any
/// client opens as many endpoint connections as it likes, past the cap meant to protect it.
#[tokio::test(flavor = "multi_thread")]
async fn tunnels_count_against_the_clusters_max_connections() {
    let upstream = RawUpstream::start(Mode::SwitchWhenAsked).await;
    let mut weir = Weir::start_with_files(
        &guarded(upstream.addr, "", "max_connections = 1\nmax_pending = 0"),
        &crate::key_auth_files(),
    )
    .await;
    let mut first = open_tunnel(weir.proxy, "/one").await;
    let clusters = weir.clusters().await;
    assert_eq!(
        clusters[0]["open_connections"].as_u64(),
        Some(1),
        "the open tunnel is an open connection: {clusters}"
    );

    let mut second = connect(weir.proxy).await;
    send(&mut second, websocket_request("/two").as_bytes()).await;
    let mut buf = Vec::new();
    let answer = read_answer(&mut second, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 503, "{answer:?}");
    let seen = upstream.seen();
    assert!(
        seen.peak <= 1,
        "{} connections open at once: {seen:?}",
        seen.peak
    );
    let _ = weir.wait_for_message("request failed").await;

    // Once the first tunnel closes, its connection's place is free again.
    let mut buf = Vec::new();
    echo(&mut first, &mut buf, b"last").await;
    drop(first);
    upstream
        .wait("the first tunnel closed", |s| s.open == 0)
        .await;
    // The upstream sees the close before weir's tunnel task has let its slot go: wait for
    // weir's own count.
    let deadline = tokio::time::Instant::now() + weir_tests::DEADLINE;
    while weir.clusters().await[0]["open_connections"].as_u64() != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed tunnel's slot was never given back: {}",
            weir.clusters().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = open_tunnel(weir.proxy, "/three").await;
}

// ---------------------------------------------------------------------------------------
// TLS: SNI, versions, resumption

/// The subject line openssl prints for the certificate weir presents to `servername`.
fn presented_subject(port: u16, servername: &str) -> String {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername '{servername}' </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// SNI tricks: a name no certificate has gets the first (default) certificate rather than a
/// failed handshake or another's; a name in another case or with the trailing dot of a
/// fully-qualified name still gets its own certificate.
#[tokio::test(flavor = "multi_thread")]
async fn sni_falls_back_to_the_first_certificate_and_ignores_case_and_a_trailing_dot() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let (a, b) = (ca.server(&["a.test"], 1), ca.server(&["b.test"], 2));
    let files = certs::leaf_files(&[("a", &a), ("b", &b)]);
    let config = crate::tls_config(upstream.addr, &["a", "b"], "", "");
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    let port = weir.proxy.port();
    let is = |subject: &str, cn: &str| {
        subject.contains(&format!("CN = {cn}")) || subject.contains(&format!("CN={cn}"))
    };
    for (sni, cn) in [
        ("unknown.test", "a.test"),
        ("b.test", "b.test"),
        ("B.TeSt", "b.test"),
        ("b.test.", "b.test"),
        ("B.TEST.", "b.test"),
        ("x.b.test", "a.test"),
    ] {
        let subject = presented_subject(port, sni);
        assert!(is(&subject, cn), "SNI {sni:?}: {subject:?}, not CN={cn}");
    }
}

/// A listener with `min_version = "1.3"` refuses a client that offers only TLS 1.2 (a
/// downgrade), and serves a TLS 1.3 client.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls12_only_client_is_refused_by_a_tls13_listener() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let site = ca.server(&["site.test"], 1);
    let files = certs::leaf_files(&[("site", &site)]);
    let config = crate::tls_config(upstream.addr, &["site"], ", min_version = \"1.3\"", "");
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;

    let old = tls_client(&ca, &[&rustls::version::TLS12], None, false);
    let refused = tls_connect(weir.proxy, "site.test", old).await;
    assert!(refused.is_err(), "a TLS 1.2 handshake succeeded");
    let current = tls_client(&ca, &[&rustls::version::TLS13], None, false);
    let (status, _) = tls_get(weir.proxy, "site.test", current, "/ok")
        .await
        .expect("a TLS 1.3 client is served");
    assert_eq!(status, 200);

    // openssl agrees, with its own TLS stack.
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername site.test -tls1_2 </dev/null",
            weir.proxy.port()
        ))
        .output()
        .expect("openssl");
    assert!(!output.status.success(), "openssl -tls1_2 connected");
}

/// A listener requiring client certificates has its client CA replaced (the old one revoked,
/// say). A client whose certificate only the old CA signed is refused on a full handshake; it
/// must be refused too when it resumes a TLS 1.3 session from before the change, since a
/// resumed handshake carries no certificate to check against the new CA.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_ca_rotation_is_not_bypassed_by_resuming_an_old_session() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let server = ca.server(&["m.test"], 1);
    let (old_clients, new_clients) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let alice = old_clients.client("alice");
    let mut files = certs::leaf_files(&[("m", &server)]);
    files.push(("clients.pem".into(), old_clients.pem.as_bytes().to_vec()));
    let config = crate::tls_config(
        upstream.addr,
        &["m"],
        ", client_auth = { ca = \"clients.pem\", required = true }",
        "",
    );
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    let v13 = &[&rustls::version::TLS13];

    // Alice connects and gets a session ticket.
    let resuming = tls_client(&ca, v13, Some(&alice), true);
    let (status, _) = tls_get(weir.proxy, "m.test", resuming.clone(), "/first")
        .await
        .expect("alice is served");
    assert_eq!(status, 200);
    // (Resumption works, before the change.)
    let (status, resumed) = tls_get(weir.proxy, "m.test", resuming.clone(), "/again")
        .await
        .expect("alice is served again");
    assert_eq!((status, resumed), (200, true));

    // The old CA goes; a full handshake by alice is refused once weir has the new one.
    weir.write_and_rename("clients.pem", new_clients.pem.as_bytes());
    let fresh = tls_client(&ca, v13, Some(&alice), false);
    let started = tokio::time::Instant::now();
    while let Ok((200, _)) = tls_get(weir.proxy, "m.test", fresh.clone(), "/poll").await {
        assert!(
            started.elapsed() < DEADLINE,
            "the new client CA never took effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let resumed = tls_get(weir.proxy, "m.test", resuming, "/resumed").await;
    assert!(
        !matches!(resumed, Ok((200, _))),
        "alice resumed a session the old CA's certificate began: {resumed:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Host and :authority

/// weir routes on `Host`; an HTTP/2 upstream routes on `:authority`. A request whose two
/// differ — HTTP/1.1 in absolute form (`GET http://admin.test/ …` with `Host: open.test`), or
/// HTTP/2 with `:authority` and a `host` header — is routed by weir as `open.test` (no key
/// needed); the endpoint must then be told `open.test` too, never `admin.test`, the host
/// whose route needs a key.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_upstream_is_told_the_host_weir_routed_on() {
    let upstream = Upstream::start("app").await;
    let config = crate::config(
        &[upstream.addr],
        r#"plugins = []

[[routes]]
name = "admin"
host = "admin.test"
cluster = "app"
plugins = ["key-auth"]
"#,
    )
    .replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nprotocol = \"h2c\"",
    );
    let weir = Weir::start_with_files(&config, &crate::key_auth_files()).await;

    // The admin route needs a key.
    let (status, _, _) =
        weir_tests::get_with(&weir.url("/secret"), &[("host", "admin.test")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // HTTP/1.1, absolute form.
    let mut client = connect(weir.proxy).await;
    send(
        &mut client,
        b"GET http://admin.test/secret HTTP/1.1\r\nHost: open.test\r\n\r\n",
    )
    .await;
    let mut buf = Vec::new();
    let answer = read_answer(&mut client, &mut buf).await.expect("an answer");

    // HTTP/2, :authority and host.
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(connect(weir.proxy).await),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get("http://admin.test/secret2")
        .header("host", "open.test")
        .body(weir_tests::empty())
        .expect("request");
    let h2_answer = sender.send_request(request).await;

    let seen = upstream.requests();
    for request in &seen {
        let authority = request.uri.authority().map(|a| a.as_str().to_owned());
        let host = request
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap_or("").to_owned());
        assert!(
            authority.as_deref() != Some("admin.test") && host.as_deref() != Some("admin.test"),
            "weir routed on open.test, and the endpoint was told {authority:?} (host {host:?}) \
             ({answer:?}, {h2_answer:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------
// gRPC

/// A gRPC call for which weir has no route gets a gRPC error a gRPC client can read:
/// HTTP 200, `grpc-status: 12` (UNIMPLEMENTED) in the headers, which end the stream
/// (trailers-only) — not a plain-text 404, which gRPC clients report as a protocol error.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_call_without_a_route_is_unimplemented_trailers_only() {
    let upstream = Upstream::start("app").await;
    let config = crate::config(&[upstream.addr], "host = \"only.test\"");
    let weir = Weir::start(&config).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(connect(weir.proxy).await),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::post("http://app.test/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(weir_tests::full(&b"\0\0\0\0\0"[..]))
        .expect("request");
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("in time")
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["grpc-status"], "12", "{headers:?}");
    assert_eq!(headers["content-type"], "application/grpc", "{headers:?}");
    assert!(headers.contains_key("grpc-message"), "{headers:?}");
    let collected = response.into_body().collect().await.expect("body");
    assert!(collected.trailers().is_none(), "a status in trailers too");
    assert!(collected.to_bytes().is_empty());
    assert!(upstream.requests().is_empty());
}

/// An endpoint that answers a WebSocket over HTTP/2 with a plain `200` (no switch): for an
/// extended CONNECT a `2xx` opens the client's tunnel, so passing it on would open one to
/// nothing. weir answers 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_2xx_that_is_not_a_switch_opens_no_http2_websocket() {
    let upstream = RawUpstream::start(Mode::Refuse(200)).await;
    let weir =
        Weir::start_with_files(&guarded(upstream.addr, "", ""), &crate::key_auth_files()).await;
    let mut sender = h2_connection(weir.proxy).await;
    let answer = sender
        .send_request(extended_connect("websocket", "/ws", &[]))
        .await
        .expect("a response");
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
}

/// A listener that serves no proxy (here one that only redirects to HTTPS) still counts its
/// connections against `max_connections`: with one slot, a second client is not served while
/// the first keeps its connection open, and is once it closes.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_listener_counts_its_connections() {
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
redirect_to_https = {{ port = 8443 }}

[server]
max_connections = 1

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:9"]

[[routes]]
name = "default"
cluster = "app"
"#,
        cache = crate::plugin_cache().display()
    );
    let weir = Weir::start(&config).await;
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut first = connect(weir.proxy).await;
    let mut first_buf = Vec::new();
    send(&mut first, request).await;
    let answer = read_answer(&mut first, &mut first_buf)
        .await
        .expect("first");
    assert_eq!(answer.status, 308);

    let mut second = connect(weir.proxy).await;
    let mut second_buf = Vec::new();
    send(&mut second, request).await;
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        read_answer(&mut second, &mut second_buf),
    )
    .await;
    assert!(
        early.is_err(),
        "served while the first held the one slot: {early:?}"
    );
    drop(first);
    let answer = tokio::time::timeout(DEADLINE, read_answer(&mut second, &mut second_buf))
        .await
        .expect("served once the first closed")
        .expect("an answer");
    assert_eq!(answer.status, 308);
}

/// An HTTP/2 endpoint that accepts TCP and never answers the TLS handshake: requests that
/// queue behind the one opening a connection give up at `connect_timeout` (502, saying so),
/// rather than each waiting its turn for a whole connect timeout of its own.
#[tokio::test(flavor = "multi_thread")]
async fn requests_queued_behind_a_stuck_http2_connect_fail_at_the_connect_timeout() {
    // Accepts and then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let cluster = "protocol = \"h2\"\ntls = { verify = false }\nretries = 0";
    let config = crate::config(&[addr], "")
        .replace(&format!("\"{addr}\""), &format!("\"https://{addr}\""))
        .replace(
            "connect_timeout = \"1s\"",
            &format!("connect_timeout = \"300ms\"\n{cluster}"),
        );
    let mut weir = Weir::start(&config).await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..8 {
        let url = weir.url(&format!("/q/{i}"));
        requests.spawn(async move { weir_tests::get_with(&url, &[]).await.0 });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.expect("request"), StatusCode::BAD_GATEWAY);
    }
    let logs = weir
        .wait_for_logs(|logs| {
            logs.iter().any(|l| {
                l["fields"]["cause"]
                    .as_str()
                    .is_some_and(|c| c.contains("another connection still being opened"))
            })
        })
        .await;
    assert!(!logs.is_empty());
}
