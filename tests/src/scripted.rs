//! An HTTP server whose answers the test writes: a closure from the request's head to a
//! [`Scripted`] answer, for peers whose behaviour a test changes as it runs (an
//! authorization service that allows, denies and stalls; a JWKS endpoint whose keys
//! rotate). On `127.0.0.1:0`; stops when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One answer: status, headers and body, sent after `delay`.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            ..Answer::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Answer {
        self.body = body.into();
        self
    }

    /// Answers only after `delay`.
    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

/// A running scripted server.
#[derive(Debug)]
pub struct Scripted {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    /// Serves every request with `answer(head)`.
    pub async fn start(
        answer: impl Fn(&http::request::Parts) -> Answer + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (parts, _) = request.into_parts();
                            let scripted = answer(&parts);
                            async move {
                                tokio::time::sleep(scripted.delay).await;
                                let mut response =
                                    http::Response::new(Full::new(Bytes::from(scripted.body)));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(scripted.status)
                                        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                                for (name, value) in &scripted.headers {
                                    if let (Ok(name), Ok(value)) = (
                                        http::HeaderName::from_bytes(name.as_bytes()),
                                        http::HeaderValue::from_str(value),
                                    ) {
                                        response.headers_mut().append(name, value);
                                    }
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted { addr, task }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}
