//! A slow origin for `bench/mirror.sh`: hyper's HTTP/1 server on a current-thread runtime
//! answering every request `200 ok` after a fixed delay, as many at once as come. Waiting
//! costs it nothing, so the few microseconds each request takes leave the CPU it shares with
//! the benchmark's client to the client (a Python server there took 2.4 % of that CPU in
//! bursts of 50 ms, enough to move the client's p99).
//!
//! Usage: `slow-origin LISTEN MILLISECONDS` (`ip:port`).

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let (Some(listen), Some(delay)) = (args.next(), args.next()) else {
        eprintln!("usage: slow-origin LISTEN MILLISECONDS");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| invalid("LISTEN is not ip:port"))?;
    let delay = Duration::from_millis(delay.parse().map_err(|_| invalid("not milliseconds"))?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<Incoming>| async move {
                    // The body is read whole (a mirrored POST's), then the wait.
                    let _ = request.into_body().collect().await;
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                // A client that goes away mid-request is not the benchmark's concern.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
