//! A real upstream HTTP server for tests, on `127.0.0.1:0`, that records what it receives.
//!
//! Its behaviour is chosen by path, so one server type covers every test:
//! - `/upload` — streams the request body through SHA-256 and answers `LEN HEX`;
//! - `/download/N` — answers N bytes of [`PatternBody`];
//! - `/hop` — answers with hop-by-hop headers that a proxy must strip;
//! - `/slow` — answers only after [`Upstream::release`];
//! - `/hang` — never answers;
//! - `/echo` — answers with the request's body and `content-type`;
//! - `/json/...` (or any path, for [`Upstream::start_json`]) — after the delay, answers JSON:
//!   `{"upstream", "path", "query", "consumer" (its x-consumer-id), "secret"}`; after
//!   [`Upstream::hold`], only once [`Upstream::release`] is called;
//! - anything else — `200` with body `NAME METHOD PATH`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::{DEADLINE, PatternBody, hash_body};

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request method.
    pub method: Method,
    /// The request target as received.
    pub uri: Uri,
    /// The HTTP version the proxy used.
    pub version: Version,
    /// The request headers as received.
    pub headers: HeaderMap,
}

/// A running upstream server; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    name: String,
    seen: watch::Sender<Vec<Recorded>>,
    release: Arc<Notify>,
    stop: watch::Sender<bool>,
    status: Arc<std::sync::atomic::AtomicU16>,
    json: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    /// From now on, JSON answers wait for [`Upstream::release`]: a test can see several
    /// requests in flight at once.
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Like [`Upstream::start`], but the catch-all answers JSON as `/json/...` does: an API
    /// upstream.
    pub async fn start_json(name: &str) -> Upstream {
        let upstream = Upstream::start(name).await;
        upstream
            .json
            .store(true, std::sync::atomic::Ordering::Relaxed);
        upstream
    }

    /// Starts an upstream named `name` (its name appears in response bodies).
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_with_delay(name, std::time::Duration::ZERO).await
    }

    /// Like [`Upstream::start`], but every catch-all answer waits `delay` first: a slow
    /// endpoint.
    pub async fn start_with_delay(name: &str, delay: std::time::Duration) -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().expect("addr"), name, delay, None).await
    }

    /// Like [`Upstream::start`], speaking TLS with `config` (HTTP/1.1 or HTTP/2, as its ALPN
    /// and the client choose).
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let addr = "127.0.0.1:0".parse().expect("addr");
        Upstream::start_on(addr, name, std::time::Duration::ZERO, Some(acceptor)).await
    }

    /// Starts an upstream on `addr`: to bring back one that was dropped, on its address.
    pub async fn restart_at(addr: SocketAddr, name: &str) -> Upstream {
        Upstream::start_on(addr, name, std::time::Duration::ZERO, None).await
    }

    /// Like [`Upstream::start`], but every catch-all answer has status `status`: a failing
    /// endpoint.
    pub async fn start_with_status(name: &str, status: u16) -> Upstream {
        let upstream = Upstream::start_on(
            "127.0.0.1:0".parse().expect("addr"),
            name,
            std::time::Duration::ZERO,
            None,
        )
        .await;
        upstream
            .status
            .store(status, std::sync::atomic::Ordering::Relaxed);
        upstream
    }

    async fn start_on(
        addr: SocketAddr,
        name: &str,
        delay: std::time::Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let (seen, _) = watch::channel(Vec::new());
        let upstream = Upstream {
            addr,
            name: name.to_owned(),
            seen,
            release: Arc::new(Notify::new()),
            stop: watch::channel(false).0,
            status: Arc::new(std::sync::atomic::AtomicU16::new(200)),
            json: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            held: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let state = Arc::new(State {
            name: upstream.name.clone(),
            seen: upstream.seen.clone(),
            release: upstream.release.clone(),
            delay,
            status: upstream.status.clone(),
            json: upstream.json.clone(),
            held: upstream.held.clone(),
        });
        let mut stop = upstream.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let state = state.clone();
                let mut stop = stop.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    // Dropped when the upstream is: its open connections close too, as when
                    // a real server process dies.
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => tokio::select! {
                            _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                            _ = stop.wait_for(|stopped| *stopped) => {}
                        },
                        Some(tls) => {
                            // A client that refuses our certificate just goes away.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            tokio::select! {
                                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                                _ = stop.wait_for(|stopped| *stopped) => {}
                            }
                        }
                    }
                });
            }
        });
        upstream
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.borrow().clone()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.seen.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|seen| seen.len() >= n))
            .await
            .expect("upstream never received the expected requests")
            .expect("upstream state dropped");
    }

    /// Lets every waiting `/slow` request (and every held JSON one) answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[derive(Debug)]
struct State {
    name: String,
    seen: watch::Sender<Vec<Recorded>>,
    release: Arc<Notify>,
    delay: std::time::Duration,
    status: Arc<std::sync::atomic::AtomicU16>,
    json: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicBool>,
}

type Body = BoxBody<Bytes, Infallible>;

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let recorded = Recorded {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        };
        let path = req.uri().path().to_owned();
        // Register interest before recording, so a release cannot slip in between.
        let released = self.release.notified();
        self.seen.send_modify(|seen| seen.push(recorded));
        match path.as_str() {
            "/upload" => {
                let (len, hex) = hash_body(req.into_body()).await;
                text(format!("{len} {hex}"))
            }
            "/hop" => {
                let mut response = text("hop".into());
                let h = response.headers_mut();
                h.insert("connection", "x-up-secret".parse().expect("value"));
                h.insert("x-up-secret", "1".parse().expect("value"));
                h.insert("keep-alive", "timeout=5".parse().expect("value"));
                h.insert("x-upstream", self.name.parse().expect("value"));
                response
            }
            "/slow" => {
                released.await;
                text(format!("{} slow done", self.name))
            }
            "/hang" => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            "/echo" => {
                let content_type = req.headers().get("content-type").cloned();
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let mut response =
                    Response::new(http_body_util::Full::new(body.unwrap_or_default()).boxed());
                if let Some(value) = content_type {
                    response.headers_mut().insert("content-type", value);
                }
                response
            }
            p if p.starts_with("/json/")
                || self.json.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                if self.held.load(std::sync::atomic::Ordering::Relaxed) {
                    released.await;
                }
                let body = serde_json::json!({
                    "upstream": self.name,
                    "path": p,
                    "query": req.uri().query(),
                    "consumer": req.headers().get("x-consumer-id").and_then(|v| v.to_str().ok()),
                    "secret": "upstream-only",
                });
                let mut response =
                    Response::new(http_body_util::Full::new(Bytes::from(body.to_string())).boxed());
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().expect("value"));
                response
            }
            p if p.starts_with("/download/") => {
                let len: u64 = p["/download/".len()..].parse().unwrap_or(0);
                Response::new(PatternBody::new(len).boxed())
            }
            _ => {
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                let body = format!("{} {} {}", self.name, req.method(), path);
                let _ = req.into_body().collect().await;
                let mut response = text(body);
                response
                    .headers_mut()
                    .insert("x-upstream", self.name.parse().expect("value"));
                let status = self.status.load(std::sync::atomic::Ordering::Relaxed);
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                response
            }
        }
    }
}

fn text(body: String) -> Response<Body> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)).boxed());
    response
        .headers_mut()
        .insert("content-type", "text/plain".parse().expect("value"));
    response
}
