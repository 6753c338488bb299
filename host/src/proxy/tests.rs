//! The data path driven in memory: a generation built from a config, upstream endpoints
//! answered by an in-memory connector (a duplex pipe per connection, a hyper server on the
//! far end), and requests made of in-memory bodies. No socket is opened.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Frame;

use super::{Client, ProxyService};
use crate::body::boxed;
use crate::error::BoxError;
use crate::generation::Generation;
use crate::upstream::{Answer, Connector, MemoryBody, MemoryConnector, Transports};

/// How an in-memory endpoint treats a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Endpoint {
    /// Answers with this status and a body naming the endpoint.
    Answer(u16),
    /// Refuses the connection: nothing reaches it.
    Refuse,
    /// Reads the request, then closes the connection without an answer.
    ResetBeforeHead,
    /// Answers 200 and a 100-byte `Content-Length`, then breaks off after 10 bytes, when
    /// `break_off` is notified (after its first bytes reached the client).
    ResetMidBody,
    /// Reads the request and never answers.
    Hang,
}

/// A request as an in-memory endpoint received it.
#[derive(Debug, Clone)]
struct Seen {
    endpoint: String,
    body: Bytes,
}

/// What the tests watch of their endpoints.
#[derive(Debug, Clone, Default)]
struct Watch {
    seen: Arc<Mutex<Vec<Seen>>>,
    break_off: Arc<tokio::sync::Notify>,
}

impl Watch {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A connector whose endpoints behave as `endpoints` say.
fn connector(endpoints: &[(&str, Endpoint)], watch: &Watch) -> MemoryConnector {
    let mut connector = MemoryConnector::new();
    for &(name, endpoint) in endpoints {
        if endpoint == Endpoint::Refuse {
            continue;
        }
        let (name, watch) = (name.to_owned(), watch.clone());
        let answer_as = name.clone();
        connector = connector.endpoint(&answer_as, move |request: Request<Bytes>| -> Answer {
            if let Ok(mut seen) = watch.seen.lock() {
                seen.push(Seen {
                    endpoint: name.clone(),
                    body: request.body().clone(),
                });
            }
            let (name, break_off) = (name.clone(), watch.break_off.clone());
            Box::pin(async move {
                if endpoint == Endpoint::Hang {
                    std::future::pending::<()>().await;
                }
                answer(endpoint, &name, break_off)
            })
        });
    }
    connector
}

fn answer(
    endpoint: Endpoint,
    name: &str,
    break_off: Arc<tokio::sync::Notify>,
) -> Result<Response<MemoryBody>, io::Error> {
    let response = match endpoint {
        Endpoint::Answer(status) => Response::builder()
            .status(status)
            .body(boxed(Full::new(Bytes::from(format!("from {name}"))))),
        Endpoint::ResetBeforeHead | Endpoint::Refuse => return Err(io::Error::other("reset")),
        Endpoint::Hang => unreachable!("a hanging endpoint never answers"),
        Endpoint::ResetMidBody => Response::builder()
            .header(http::header::CONTENT_LENGTH, "100")
            .body(UnsyncBoxBody::new(BreaksOff {
                sent: false,
                signal: Box::pin(async move { break_off.notified().await }),
            })),
    };
    response.map_err(io::Error::other)
}

/// Ten bytes of a promised hundred, then, when signalled, an error.
struct BreaksOff {
    sent: bool,
    signal: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl hyper::body::Body for BreaksOff {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        if !std::mem::replace(&mut self.sent, true) {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))));
        }
        match self.signal.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("the endpoint went away".into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A proxy over `config` (a whole weir config; its endpoints are answered by `connector`).
fn proxy(config: &str, connector: impl Connector) -> ProxyService {
    let config = crate::config::parse(Path::new("weir.toml"), config)
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let connector: Arc<dyn Connector> = Arc::new(connector);
    let generation = Generation::build(
        1,
        Arc::new(config),
        Vec::new(),
        None,
        &Transports::plain(connector),
        &Default::default(),
    );
    ProxyService::new(Arc::new(ArcSwap::from_pointee(generation)))
}

/// Two endpoints in the order `lb = "first"` tries them; one retry.
fn two_endpoints(retry_non_idempotent: bool) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
lb = "first"
retries = 1
retry_on_statuses = [503]

[[routes]]
name = "all"
cluster = "app"
retry_non_idempotent = {retry_non_idempotent}
"#
    )
}

/// The first endpoint failing as `first`, the second answering 200.
fn first_fails(first: Endpoint, watch: &Watch) -> MemoryConnector {
    connector(
        &[
            ("127.0.0.1:1", first),
            ("127.0.0.1:2", Endpoint::Answer(200)),
        ],
        watch,
    )
}

/// How the client sends its body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    /// No body.
    Nothing,
    /// Five bytes with `Content-Length`: held for a retry.
    Small,
    /// Five bytes without a length: streamed, so no attempt can send them again.
    Streamed,
}

fn request(method: &Method, sent: Sent) -> Request<UnsyncBoxBody<Bytes, BoxError>> {
    let builder = Request::builder()
        .method(method.clone())
        .uri("/x")
        .header(http::header::HOST, "svc.test");
    let result = match sent {
        Sent::Nothing => builder.body(boxed(Empty::<Bytes>::new())),
        Sent::Small => builder
            .header(http::header::CONTENT_LENGTH, "5")
            .body(boxed(Full::new(Bytes::from_static(b"hello")))),
        Sent::Streamed => builder.body(boxed(Full::new(Bytes::from_static(b"hello")))),
    };
    result.unwrap_or_else(|e| panic!("request: {e}"))
}

fn client() -> Client {
    Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)))
}

/// Retry safety: for each method, failure and body, whether the second endpoint is tried,
/// and what the client gets.
#[tokio::test]
async fn the_proxy_service_retries_only_what_is_safe_and_possible() {
    use Endpoint::{Refuse, ResetBeforeHead};
    let failures = [Refuse, ResetBeforeHead, Endpoint::Answer(503)];
    let mut checked = 0;
    for (method, opt_in) in [
        (Method::GET, false),
        (Method::PUT, false),
        (Method::POST, false),
        (Method::POST, true),
    ] {
        for failure in failures {
            for sent in [Sent::Nothing, Sent::Small, Sent::Streamed] {
                let idempotent = opt_in || method != Method::POST;
                let resendable = sent != Sent::Streamed;
                // Nothing reached a refusing endpoint: any method may go elsewhere.
                let safe = failure == Refuse || idempotent;
                let retried = safe && resendable;
                let expect = match (retried, failure) {
                    (true, _) => StatusCode::OK,
                    (false, Endpoint::Answer(503)) => StatusCode::SERVICE_UNAVAILABLE,
                    (false, _) => StatusCode::BAD_GATEWAY,
                };
                let watch = Watch::default();
                let service = proxy(&two_endpoints(opt_in), first_fails(failure, &watch));
                let response = service.handle(request(&method, sent), &client()).await;
                let case = format!("{method} (opt-in {opt_in}) × {failure:?} × {sent:?}");
                assert_eq!(response.status(), expect, "{case}");
                let seen = watch.seen();
                let reached_second = seen.iter().any(|s| s.endpoint == "127.0.0.1:2");
                assert_eq!(reached_second, retried, "{case}: {seen:?}");
                // Whatever reached an endpoint carried the whole body.
                for s in &seen {
                    let want: &[u8] = if sent == Sent::Nothing { b"" } else { b"hello" };
                    assert_eq!(s.body, want, "{case}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36);
}

/// A route's mirror copies no faster than its pace: with the pace spent, the client's
/// requests are answered as ever, no copy is made, and each is counted as a failed copy.
#[tokio::test]
async fn a_mirror_past_its_pace_makes_no_copy() {
    let config = r#"
[[listeners]]
address = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[clusters]]
name = "shadow"
endpoints = ["127.0.0.1:2"]

[[routes]]
name = "paced-mirror"
cluster = "app"
mirror = { cluster = "shadow", percent = 100 }
"#;
    let watch = Watch::default();
    let service = proxy(
        config,
        connector(
            &[
                ("127.0.0.1:1", Endpoint::Answer(200)),
                ("127.0.0.1:2", Endpoint::Answer(200)),
            ],
            &watch,
        ),
    );
    let generation = service.generation.load_full();
    generation.routes[0].mirror_pace.close();
    let counters = generation.routes[0].metrics.mirror_counters();
    for _ in 0..3 {
        let response = service
            .handle(request(&Method::GET, Sent::Nothing), &client())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    use crate::metrics::MirrorResult;
    assert_eq!(
        counters.get(MirrorResult::Failed),
        3,
        "each refused copy is counted"
    );
    assert_eq!(counters.get(MirrorResult::Sent), 0);
    let seen = watch.seen();
    assert!(seen.iter().all(|s| s.endpoint == "127.0.0.1:1"), "{seen:?}");
}

/// A connector that counts connection attempts, and whose connections never open when it
/// `stalls` (an endpoint that swallows connects).
#[derive(Debug)]
struct Counting {
    inner: MemoryConnector,
    stalls: bool,
    connects: Arc<std::sync::atomic::AtomicUsize>,
}

impl Connector for Counting {
    fn connect<'a>(
        &'a self,
        authority: &'a http::uri::Authority,
    ) -> crate::upstream::Connecting<'a> {
        self.connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.stalls {
            return Box::pin(std::future::pending());
        }
        self.inner.connect(authority)
    }
}

/// A one-endpoint cluster with one retry: a retry goes back to its only endpoint after a
/// refused connection or a reset, never after a timeout or a `retry_on_statuses` answer, so
/// a hanging endpoint costs one `response_timeout`.
#[tokio::test(start_paused = true)]
async fn a_one_endpoint_cluster_retries_only_failures_that_cost_no_wait() {
    let config = r#"
[[listeners]]
address = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]
retries = 1
retry_on_statuses = [503]
connect_timeout = "500ms"
response_timeout = "1s"

[[routes]]
name = "all"
cluster = "app"
"#;
    // (the endpoint, whether connects stall, connection attempts, requests it saw, status)
    let table = [
        (Endpoint::Refuse, false, 2, 0, StatusCode::BAD_GATEWAY),
        (Endpoint::Answer(200), true, 1, 0, StatusCode::BAD_GATEWAY),
        (
            Endpoint::ResetBeforeHead,
            false,
            2,
            2,
            StatusCode::BAD_GATEWAY,
        ),
        (Endpoint::Hang, false, 1, 1, StatusCode::GATEWAY_TIMEOUT),
        (
            Endpoint::Answer(503),
            false,
            1,
            1,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (endpoint, stalls, connects, seen, status) in table {
        let watch = Watch::default();
        let counting = Counting {
            inner: connector(&[("127.0.0.1:1", endpoint)], &watch),
            stalls,
            connects: Arc::default(),
        };
        let count = counting.connects.clone();
        let service = proxy(config, counting);
        let started = tokio::time::Instant::now();
        let response = service
            .handle(request(&Method::GET, Sent::Nothing), &client())
            .await;
        let case = format!("{endpoint:?} (connects stall: {stalls})");
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(
            count.load(std::sync::atomic::Ordering::Relaxed),
            connects,
            "{case}: connection attempts"
        );
        assert_eq!(
            watch.seen().len(),
            seen,
            "{case}: requests the endpoint saw"
        );
        // Paused time: only the timeouts advance the clock.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{case}: took {:?}, a timeout more than once",
            started.elapsed()
        );
    }
}

/// An endpoint that breaks off mid-body: the client already has the head, so nothing is
/// retried and the client's body ends in an error rather than looking complete.
#[tokio::test]
async fn an_upstream_reset_mid_body_reaches_the_client_as_a_broken_body() {
    let watch = Watch::default();
    let service = proxy(
        &two_endpoints(false),
        first_fails(Endpoint::ResetMidBody, &watch),
    );
    let response = service
        .handle(request(&Method::GET, Sent::Nothing), &client())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.map(|f| f.map(|f| f.into_data().ok()));
    assert!(
        matches!(&first, Some(Ok(Some(data))) if &data[..] == b"0123456789"),
        "{first:?}"
    );
    watch.break_off.notify_one();
    let rest = body.collect().await;
    assert!(
        rest.is_err(),
        "the body must fail, not end early as if complete: {:?}",
        rest.map(|b| b.to_bytes())
    );
    assert_eq!(
        watch.seen().len(),
        1,
        "no retry once the head went to the client"
    );
}

/// Requests no route matches, and a route's cluster that refuses every connection.
#[tokio::test]
async fn errors_become_responses_in_memory() {
    let config = r#"
[[listeners]]
address = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "api"
path_prefix = "/api"
cluster = "app"
"#;
    let service = proxy(config, MemoryConnector::new());
    let response = service
        .handle(request(&Method::GET, Sent::Nothing), &client())
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let mut api = request(&Method::GET, Sent::Nothing);
    *api.uri_mut() = "/api/x".parse().unwrap_or_else(|e| panic!("{e}"));
    let response = service.handle(api, &client()).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.headers().contains_key("x-request-id"));
}

#[test]
fn cookie_values_are_found_across_headers() {
    let mut headers = http::HeaderMap::new();
    headers.append("cookie", "a=1; session=abc".parse().expect("value"));
    headers.append("cookie", "theme=dark".parse().expect("value"));
    assert_eq!(super::cookie(&headers, "session"), Some("abc"));
    assert_eq!(super::cookie(&headers, "theme"), Some("dark"));
    assert_eq!(super::cookie(&headers, "sess"), None);
}

/// A body that sends `hello`, then nothing for two seconds, then ` world` (time is paused in
/// the test, so the pause costs nothing).
fn pausing_body() -> UnsyncBoxBody<Bytes, BoxError> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    tokio::spawn(async move {
        let _ = sender
            .send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let _ = sender
            .send(Ok(Frame::data(Bytes::from_static(b" world"))))
            .await;
    });
    boxed(Channel(receiver))
}

/// A body fed through a channel.
struct Channel(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

/// `body_read_timeout` (here 1 s) ends a request body that pauses longer with 408, never
/// counted against the endpoint; a gRPC call's stream may pause (its own deadline bounds it).
/// (The cluster speaks h2c: a gRPC call to an HTTP/1.1 cluster is refused before its body.)
#[tokio::test(start_paused = true)]
async fn a_paused_body_is_408_except_a_grpc_stream() {
    let config = format!(
        "{}\n[server.limits]\nbody_read_timeout = \"1s\"\n",
        two_endpoints(false).replace("retries = 1", "retries = 0\nprotocol = \"h2c\"")
    );
    let watch = Watch::default();
    let service = proxy(&config, first_fails(Endpoint::Answer(200), &watch));
    let post = |grpc: bool| {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/x")
            .header(http::header::HOST, "svc.test");
        if grpc {
            builder = builder
                .version(http::Version::HTTP_2)
                .header(http::header::CONTENT_TYPE, "application/grpc");
        }
        builder
            .body(pausing_body())
            .unwrap_or_else(|e| panic!("request: {e}"))
    };
    let response = service.handle(post(false), &client()).await;
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let response = service.handle(post(true), &client()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = watch.seen();
    assert_eq!(seen.last().map(|s| &s.body[..]), Some(&b"hello world"[..]));
}
