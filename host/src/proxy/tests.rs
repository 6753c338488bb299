//! The data path driven in memory: a generation built from a config, upstream endpoints
//! answered by an in-memory connector (a duplex pipe per connection, a hyper server on the
//! far end), and requests made of in-memory bodies. No socket is opened.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

use super::{Client, ProxyService};
use crate::error::BoxError;
use crate::generation::Generation;
use crate::upstream::{Connecting, Connection, Connector};

/// How an in-memory endpoint treats a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Endpoint {
    /// Answers with this status and a body naming the endpoint.
    Answer(u16),
    /// Refuses the connection: nothing reaches it.
    Refuse,
    /// Reads the request, then closes the connection without an answer.
    ResetBeforeHead,
    /// Answers 200 and a 100-byte `Content-Length`, then breaks off after 10 bytes.
    ResetMidBody,
}

/// Endpoints by authority; every request an endpoint received, in order.
#[derive(Debug, Default)]
struct MemoryConnector {
    endpoints: HashMap<String, Endpoint>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Lets a `ResetMidBody` endpoint break off (after its first bytes reached the client).
    break_off: Arc<tokio::sync::Notify>,
}

/// A request as an in-memory endpoint received it.
#[derive(Debug, Clone)]
struct Seen {
    endpoint: String,
    body: Bytes,
}

impl Connector for MemoryConnector {
    fn connect<'a>(&'a self, authority: &'a Authority) -> Connecting<'a> {
        let endpoint = self.endpoints.get(authority.as_str()).copied();
        let (name, seen) = (authority.to_string(), self.seen.clone());
        let break_off = self.break_off.clone();
        Box::pin(async move {
            let endpoint = match endpoint {
                None | Some(Endpoint::Refuse) => {
                    return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                }
                Some(endpoint) => endpoint,
            };
            let (near, far) = tokio::io::duplex(64 * 1024);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (name, seen) = (name.clone(), seen.clone());
                let break_off = break_off.clone();
                async move {
                    let body = match request.into_body().collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(e) => return Err(io::Error::other(e)),
                    };
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(Seen {
                            endpoint: name.clone(),
                            body,
                        });
                    }
                    answer(endpoint, &name, break_off)
                }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(far), service);
                // An endpoint told to reset ends its connection with an error on purpose.
                let _ = connection.await;
            });
            Ok(Box::new(near) as Connection)
        })
    }
}

type EndpointBody = UnsyncBoxBody<Bytes, BoxError>;

fn answer(
    endpoint: Endpoint,
    name: &str,
    break_off: Arc<tokio::sync::Notify>,
) -> Result<Response<EndpointBody>, io::Error> {
    let response = match endpoint {
        Endpoint::Answer(status) => Response::builder()
            .status(status)
            .body(boxed(Full::new(Bytes::from(format!("from {name}"))))),
        Endpoint::ResetBeforeHead | Endpoint::Refuse => return Err(io::Error::other("reset")),
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

fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A proxy over `config` (a whole weir config; its endpoints are answered by `connector`).
fn proxy(config: &str, connector: MemoryConnector) -> (ProxyService, Arc<Mutex<Vec<Seen>>>) {
    let config = crate::config::parse(Path::new("weir.toml"), config)
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let seen = connector.seen.clone();
    let connector: Arc<dyn Connector> = Arc::new(connector);
    let generation = Generation::build(1, Arc::new(config), Vec::new(), None, &connector);
    (
        ProxyService::new(Arc::new(ArcSwap::from_pointee(generation))),
        seen,
    )
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

fn connector(first: Endpoint) -> MemoryConnector {
    MemoryConnector {
        endpoints: HashMap::from([
            ("127.0.0.1:1".to_owned(), first),
            ("127.0.0.1:2".to_owned(), Endpoint::Answer(200)),
        ]),
        seen: Arc::default(),
        break_off: Arc::default(),
    }
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
                let (service, seen) = proxy(&two_endpoints(opt_in), connector(failure));
                let response = service.handle(request(&method, sent), &client()).await;
                let case = format!("{method} (opt-in {opt_in}) × {failure:?} × {sent:?}");
                assert_eq!(response.status(), expect, "{case}");
                let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
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

/// An endpoint that breaks off mid-body: the client already has the head, so nothing is
/// retried and the client's body ends in an error rather than looking complete.
#[tokio::test]
async fn an_upstream_reset_mid_body_reaches_the_client_as_a_broken_body() {
    let memory = connector(Endpoint::ResetMidBody);
    let break_off = memory.break_off.clone();
    let (service, seen) = proxy(&two_endpoints(false), memory);
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
    break_off.notify_one();
    let rest = body.collect().await;
    assert!(
        rest.is_err(),
        "the body must fail, not end early as if complete: {:?}",
        rest.map(|b| b.to_bytes())
    );
    let seen = seen.lock().map(|s| s.len()).unwrap_or_default();
    assert_eq!(seen, 1, "no retry once the head went to the client");
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
    let mut memory = MemoryConnector::default();
    memory
        .endpoints
        .insert("127.0.0.1:1".into(), Endpoint::Refuse);
    let (service, _) = proxy(config, memory);
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
