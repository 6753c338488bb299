//! `cargo xtask demo`: builds weir, starts two demo upstreams on the ports that
//! `examples/demo/weir.toml` names, runs weir on that config, and prints what to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::{cargo, root};

const UPSTREAMS: [(&str, &str); 2] = [("app-1", "127.0.0.1:9001"), ("app-2", "127.0.0.1:9002")];

pub(crate) fn run() -> anyhow::Result<()> {
    cargo(&["build", "-p", "weir-host"])?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for (name, addr) in UPSTREAMS {
            let addr: SocketAddr = addr.parse()?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("demo upstream {name} cannot listen on {addr} (is another demo running?)"))?;
            tokio::spawn(serve(name, listener));
        }
        println!(
            "\nweir demo: proxy on http://127.0.0.1:8080, admin on http://127.0.0.1:9901\n\
             Try, in another terminal:\n\
             \x20 curl -i http://127.0.0.1:8080/api/hello        # routed to cluster app, round robin: run it twice\n\
             \x20 curl -i --http2-prior-knowledge http://127.0.0.1:8080/api/h2\n\
             \x20 curl -i -X DELETE http://127.0.0.1:8080/api/x  # 404: route api allows GET and POST only\n\
             \x20 curl -i http://127.0.0.1:8080/down             # 502: cluster 'down' has a dead endpoint\n\
             \x20 curl -s http://127.0.0.1:9901/config           # the effective config\n\
             Ctrl-C stops weir (it drains in-flight requests) and the demo.\n"
        );
        let config = root().join("examples/demo/weir.toml");
        let weir = root().join("target/debug/weir");
        let status = tokio::task::spawn_blocking(move || Command::new(weir).arg("--config").arg(config).status()).await??;
        anyhow::ensure!(status.success(), "weir exited with {status}");
        Ok(())
    })
}

/// A demo upstream: answers every request with JSON describing what it received.
async fn serve(name: &'static str, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect();
                let body = serde_json::json!({
                    "upstream": name,
                    "method": req.method().as_str(),
                    "uri": req.uri().to_string(),
                    "headers": headers,
                });
                let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
                text.push(b'\n');
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
