//! `cargo xtask gateway`: the API-gateway example. Builds weir and the bundled plugins,
//! stages `examples/gateway/` in `target/gateway/` with every phase plugin, starts the two
//! example upstreams (users on :9001, orders on :9002), runs weir, and prints what to try.
//! `cargo xtask token [SUBJECT] [SECONDS]` mints a token the example's jwt-auth accepts.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{cargo, plugins, root, target_dir};

/// The example's HS256 secret, as in `examples/gateway/plugins/jwt-auth.toml`.
const EXAMPLE_SECRET: &str = "weir-example-secret-of-32-bytes!";
const UPSTREAMS: [(&str, &str); 2] = [("users", "127.0.0.1:9001"), ("orders", "127.0.0.1:9002")];
const PLUGINS: [&str; 5] = [
    "jwt-auth",
    "rate-limit",
    "rewrite",
    "transform",
    "aggregate",
];

pub(crate) fn run() -> anyhow::Result<()> {
    cargo(&["build", "-p", "weir-host"])?;
    let built = plugins()?;
    let staged = stage(&built)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for (name, addr) in UPSTREAMS {
            let addr: SocketAddr = addr.parse()?;
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("example upstream {name} cannot listen on {addr} (is another demo running?)")
            })?;
            tokio::spawn(serve(name, listener));
        }
        println!(
            "\nweir API gateway: http://127.0.0.1:8080 (admin http://127.0.0.1:9901)\n\
             Walk through the phases (examples/gateway/README.md explains each):\n\
             \x20 TOKEN=$(cargo xtask token user-7)\n\
             \x20 curl -i http://127.0.0.1:8080/v1/users/7                                 # 401: no token\n\
             \x20 curl -i -H \"authorization: Bearer $TOKEN\" http://127.0.0.1:8080/v1/users/7  # 200, as /users/7\n\
             \x20 curl -s -H \"authorization: Bearer $TOKEN\" http://127.0.0.1:8080/dashboard/7 # both upstreams, merged\n\
             Ctrl-C stops weir and the upstreams.\n"
        );
        let config = staged.join("weir.toml");
        let weir = target_dir().join("debug/weir");
        let status = tokio::task::spawn_blocking(move || {
            Command::new(weir).arg("--config").arg(config).status()
        })
        .await??;
        anyhow::ensure!(status.success(), "weir exited with {status}");
        Ok(())
    })
}

/// Prints an HS256 token for the example gateway: `sub` = `subject`, valid `seconds`.
pub(crate) fn token(subject: Option<String>, seconds: Option<String>) -> anyhow::Result<()> {
    let subject = subject.unwrap_or_else(|| "user-7".into());
    let seconds: u64 = seconds
        .as_deref()
        .unwrap_or("3600")
        .parse()
        .context("SECONDS")?;
    println!("{}", mint(&subject, seconds)?);
    Ok(())
}

/// An HS256 token the example's jwt-auth accepts: `sub` = `subject`, valid `seconds`.
pub(crate) fn mint(subject: &str, seconds: u64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({"sub": subject, "iat": now, "exp": now + seconds});
    let key = jsonwebtoken::EncodingKey::from_secret(EXAMPLE_SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// `target/gateway/`: the example's `weir.toml` and `plugins/` with each plugin's wasm and
/// settings.
fn stage(built: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let source = root().join("examples/gateway");
    let staged = target_dir().join("gateway");
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(staged.join("plugins"))?;
    let copy = |from: std::path::PathBuf, to: std::path::PathBuf| {
        std::fs::copy(&from, &to)
            .map(drop)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
    };
    copy(source.join("weir.toml"), staged.join("weir.toml"))?;
    for name in PLUGINS {
        copy(
            built.join(format!("{name}.wasm")),
            staged.join(format!("plugins/{name}.wasm")),
        )?;
        copy(
            source.join(format!("plugins/{name}.toml")),
            staged.join(format!("plugins/{name}.toml")),
        )?;
    }
    Ok(staged)
}

/// An example API upstream: answers JSON about the request, with a field the gateway must
/// never pass on (`secret`).
async fn serve(name: &'static str, listener: TcpListener) {
    crate::demo::serve_json(listener, move |req| {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        serde_json::json!({
            "upstream": name,
            "path": req.uri().path(),
            "query": req.uri().query(),
            "consumer": header("x-consumer-id"),
            "gateway_route": header("x-gateway-route"),
            "secret": "upstream-only",
        })
    })
    .await
}
