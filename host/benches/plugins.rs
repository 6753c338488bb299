//! Plugin call costs: one hook call on a reused instance and on a fresh one, and the chain of
//! the two bundled plugins (key-auth, then headers) over a whole request and response.
//!
//! Needs the bundled plugins: `cargo xtask plugins && cargo bench -p weir-host --bench
//! plugins` (or point `WEIR_PLUGINS_DIR` at a folder holding `headers.wasm` and
//! `key-auth.wasm`).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use weir::config::PluginLimits;
use weir::plugin::chain::{Chain, RequestStep, request_head};
use weir::plugin::{Plugin, PluginRuntime, PluginSource, RequestHead};

const HEADERS_TOML: &str = r#"
[config.request]
set = { "x-from" = "weir" }
remove = ["x-internal"]
[config.response]
set = { "x-frame-options" = "DENY" }
"#;

const KEY_AUTH_TOML: &str = r#"
[config]
[[config.consumers]]
name = "alice"
keys = ["alice-key"]
"#;

fn plugins_dir() -> PathBuf {
    std::env::var_os("WEIR_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"))
}

fn load(
    runtime: &tokio::runtime::Runtime,
    plugins: &PluginRuntime,
    name: &str,
    settings: &str,
) -> Arc<Plugin> {
    let file = plugins_dir().join(format!("{name}.wasm"));
    let wasm = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the bundled plugins first: cargo xtask plugins",
            file.display()
        )
    });
    let source = PluginSource {
        file: file.clone(),
        wasm,
        settings: Some((file.with_extension("toml"), settings.to_owned())),
    };
    let plugin = runtime
        .block_on(plugins.load(source, &PluginLimits::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(plugin)
}

/// A typical proxied request: a handful of headers, an API key.
fn request() -> (http::request::Parts, RequestHead) {
    let (parts, ()) = Request::get("/api/orders/42?expand=items")
        .header("host", "api.example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header("x-api-key", "alice-key")
        .header("x-request-id", "0d6f2a3c-bench")
        .body(())
        .expect("request")
        .into_parts();
    let head = request_head(
        &parts,
        parts.headers.get("host"),
        "10.0.0.7:50412".into(),
        "api",
        &HeaderValue::from_static("0d6f2a3c-bench"),
    );
    (parts, head)
}

fn response() -> http::response::Parts {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("content-length", "1024")
        .header("cache-control", "no-store")
        .body(())
        .expect("response")
        .into_parts()
        .0
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let plugins = PluginRuntime::new(None).expect("plugin runtime");
    let headers = load(&runtime, &plugins, "headers", HEADERS_TOML);
    let fresh = load(
        &runtime,
        &plugins,
        "headers",
        &format!("max_uses = 1\n{HEADERS_TOML}"),
    );
    let key_auth = load(&runtime, &plugins, "key-auth", KEY_AUTH_TOML);
    let (_, head) = request();

    let mut hook = c.benchmark_group("hook");
    hook.bench_function("on_request/reused_instance", |b| {
        b.to_async(&runtime)
            .iter(|| async { headers.on_request(&head).await.expect("call") })
    });
    // max_uses = 1: every call instantiates and configures a new instance first.
    hook.bench_function("on_request/fresh_instance", |b| {
        b.to_async(&runtime)
            .iter(|| async { fresh.on_request(&head).await.expect("call") })
    });
    hook.finish();

    let chain = Chain::new(vec![key_auth, headers]);
    c.bench_function("chain/key-auth+headers/request_and_response", |b| {
        b.to_async(&runtime).iter_batched(
            || (request(), response()),
            |((mut parts, mut head), mut response)| {
                let chain = &chain;
                async move {
                    let passed = match chain.on_request(&mut head, &mut parts).await {
                        Ok(RequestStep::Continue { passed }) => passed,
                        other => panic!("the chain did not pass the request: {other:?}"),
                    };
                    chain
                        .on_response(passed, &head, &mut response)
                        .await
                        .expect("response hooks");
                    (parts, response)
                }
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(plugin_benches, benches);
criterion_main!(plugin_benches);
