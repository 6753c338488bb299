//! `cargo xtask demo`: builds weir and the bundled plugins, stages a demo folder in
//! `target/demo/` (the config, `plugins/` with `headers` live, and `key-auth` waiting in
//! `extra/`), starts two demo upstreams on the ports the config names, runs weir, and prints
//! what to try.

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

use crate::{cargo, plugins, root, target_dir};

const UPSTREAMS: [(&str, &str); 2] = [("app-1", "127.0.0.1:9001"), ("app-2", "127.0.0.1:9002")];

pub(crate) fn run() -> anyhow::Result<()> {
    cargo(&["build", "-p", "weir-host"])?;
    let built = plugins()?;
    let demo = stage(&built)?;
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
             \x20 curl -s http://127.0.0.1:9901/plugins          # the plugins serving\n\
             Hot reload: turn on API keys, then try again without and with a key:\n\
             \x20 cp {extra}/20-key-auth.* {plugins}/\n\
             \x20 curl -i http://127.0.0.1:8080/api/hello        # 401\n\
             \x20 curl -i -H 'x-api-key: demo-key' http://127.0.0.1:8080/api/hello\n\
             \x20 rm {plugins}/20-key-auth.wasm                # and it is gone again\n\
             Ctrl-C stops weir (it drains in-flight requests) and the demo.\n",
            extra = demo.join("extra").display(),
            plugins = demo.join("plugins").display(),
        );
        let config = demo.join("weir.toml");
        let weir = target_dir().join("debug/weir");
        let status = tokio::task::spawn_blocking(move || Command::new(weir).arg("--config").arg(config).status()).await??;
        anyhow::ensure!(status.success(), "weir exited with {status}");
        Ok(())
    })
}

/// `target/demo/`: `weir.toml` from `examples/demo`, `plugins/` with `headers` and its
/// settings, and `extra/` with `key-auth` and its settings, ready to be copied in.
fn stage(built: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let source = root().join("examples/demo");
    let demo = target_dir().join("demo");
    let copy = |from: std::path::PathBuf, to: std::path::PathBuf| {
        std::fs::copy(&from, &to)
            .map(drop)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
    };
    // Start clean, so a key-auth left in plugins/ by an earlier run does not linger.
    let _ = std::fs::remove_dir_all(&demo);
    for dir in ["plugins", "extra"] {
        std::fs::create_dir_all(demo.join(dir))?;
    }
    copy(source.join("weir.toml"), demo.join("weir.toml"))?;
    copy(
        built.join("headers.wasm"),
        demo.join("plugins/10-headers.wasm"),
    )?;
    copy(
        source.join("10-headers.toml"),
        demo.join("plugins/10-headers.toml"),
    )?;
    copy(
        built.join("key-auth.wasm"),
        demo.join("extra/20-key-auth.wasm"),
    )?;
    copy(
        source.join("20-key-auth.toml"),
        demo.join("extra/20-key-auth.toml"),
    )?;
    Ok(demo)
}

/// A demo upstream: answers every request with JSON describing what it received.
async fn serve(name: &'static str, listener: TcpListener) {
    serve_json(listener, move |req| {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        serde_json::json!({
            "upstream": name,
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "headers": headers,
        })
    })
    .await
}

/// Serves `listener` forever, answering each request with the JSON `describe` makes of it.
pub(crate) async fn serve_json(
    listener: TcpListener,
    describe: impl Fn(&Request<Incoming>) -> serde_json::Value + Copy + Send + Sync + 'static,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let mut text = serde_json::to_vec_pretty(&describe(&req)).unwrap_or_default();
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
