//! hyper's floor: the least an HTTP/1.1 reverse proxy on hyper and tokio does per request,
//! to measure weir against (`bench/callgrind.sh`, `bench/run.sh`).
//!
//! hyper's HTTP/1 server on a current-thread runtime; each request is forwarded unchanged
//! (no header rewriting, no timeouts, no routing, no retries) over a LIFO pool of
//! `hyper::client::conn::http1` connections to one upstream, and a connection goes back to
//! the pool when its response body ends — the same client weir's `upstream/` drives. What
//! weir spends above this is what its features cost; what this spends above nginx is what
//! building on hyper costs.
//!
//! Usage: `hyper-floor LISTEN UPSTREAM` (both `ip:port`).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Idle upstream connections, most recently used last.
type Pool = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper-floor LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let parse = |text: String| {
        text.parse::<SocketAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (listen, upstream) = (parse(listen)?, parse(upstream)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    // SIGTERM (what bench/run.sh stops it with) ends the process through `exit`, so a build
    // instrumented for profile-guided optimisation writes its counts (BENCHMARKS.md, session
    // 32). Off the request path: one signal stream, polled only when a signal arrives.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        terminate.recv().await;
        std::process::exit(0);
    });
    let listener = TcpListener::bind(listen).await?;
    let pool = Pool::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(request, pool.clone(), upstream));
            // A client that goes away mid-request is not the floor's concern.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type ReplyBody = Either<PooledBody, Empty<Bytes>>;

/// Sends `request` upstream on a pooled connection; a 502 if none can be had.
async fn forward(
    request: Request<Incoming>,
    pool: Pool,
    upstream: SocketAddr,
) -> Result<Response<ReplyBody>, Infallible> {
    let Some(mut sender) = checkout(&pool, upstream).await else {
        return Ok(bad_gateway());
    };
    let Ok(response) = sender.send_request(request).await else {
        return Ok(bad_gateway());
    };
    Ok(response.map(|body| {
        Either::Left(PooledBody {
            body,
            sender: Some(sender),
            pool,
        })
    }))
}

/// An idle connection to `upstream`, or a new one.
async fn checkout(pool: &Pool, upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    loop {
        let idle = pool.lock().ok()?.pop();
        match idle {
            Some(mut sender) if !sender.is_closed() => {
                if sender.ready().await.is_ok() {
                    return Some(sender);
                }
            }
            Some(_closed) => {}
            None => break,
        }
    }
    let stream = TcpStream::connect(upstream).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

fn bad_gateway() -> Response<ReplyBody> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// The upstream's response body; its connection goes back to the pool when it ends.
#[derive(Debug)]
struct PooledBody {
    body: Incoming,
    sender: Option<SendRequest<Incoming>>,
    pool: Pool,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            _ => false,
        };
        if ended
            && let Some(sender) = self.sender.take()
            && let Ok(mut idle) = self.pool.lock()
        {
            idle.push(sender);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
