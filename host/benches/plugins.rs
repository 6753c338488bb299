//! Plugin call costs: one hook call on a reused instance and on a fresh one; the chain of
//! key-auth and headers over a whole request and response; each phase plugin's hook
//! (jwt-auth, rate-limit, rewrite, transform); and the three-plugin chain jwt-auth →
//! rate-limit → rewrite, its request phase and the whole round; and the guard filter of `examples/filters/<lang>` in every
//! language, on a reused and on a fresh instance (`cargo xtask examples` builds them; a
//! language whose build is missing is skipped with a message). With `WEIR_GUARD_BEFORE` set
//! to a folder of other builds of the guard (`<lang>.wasm`, for example copies made before a
//! change), each language's build there is measured right before the current one, as
//! `guard/<lang>/before/...`: a before/after comparison in one run.
//!
//! Needs the bundled plugins: `cargo xtask plugins && cargo bench -p weir-host --bench
//! plugins` (or point `WEIR_PLUGINS_DIR` at a folder holding them).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group};
use http::{HeaderValue, Request, Response};
use weir::config::PluginLimits;
use weir::plugin::chain::{Chain, RequestStep};
use weir::plugin::view::RequestView;
use weir::plugin::{Filter, Plugin, PluginRuntime, PluginSource, RequestAction};

/// The allocator the `weir` binary uses (`host/src/main.rs`), so that what the host allocates
/// per call costs here what it costs a request.
#[global_allocator]
static ALLOCATOR: weir_alloc::Mimalloc = weir_alloc::Mimalloc;

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
) -> Arc<Filter> {
    let file = plugins_dir().join(format!("{name}.wasm"));
    if !file.exists() {
        panic!(
            "{}: build the bundled plugins first: cargo xtask plugins",
            file.display()
        );
    }
    load_file(runtime, plugins, &file, settings)
}

/// The filter in `file` with `settings` (its `NAME.toml`) and a deadline of a second, not the
/// default 50 ms: a stall of this VM must not fail a benchmark (the deadline is not what is
/// measured).
fn load_file(
    runtime: &tokio::runtime::Runtime,
    plugins: &PluginRuntime,
    file: &Path,
    settings: &str,
) -> Arc<Filter> {
    let wasm = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let source = PluginSource {
        file: file.to_path_buf(),
        wasm,
        settings: Some((
            file.with_extension("toml"),
            format!("deadline = \"1s\"\n{settings}"),
        )),
    };
    let plugin = runtime
        .block_on(plugins.load(source, &PluginLimits::default()))
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    filter(plugin)
}

/// The loaded plugin as a filter; the benchmarks load no handlers.
fn filter(plugin: Plugin) -> Arc<Filter> {
    match plugin {
        Plugin::Filter(filter) => filter,
        Plugin::Handler(handler) => panic!("{} is a handler, not a filter", handler.info.name),
    }
}

const JWT_AUTH_TOML: &str = r#"
[config]
[[config.keys]]
algorithm = "HS256"
secret = "weir-example-secret-of-32-bytes!"
"#;

/// HS256 over the secret above, `sub` = bench, expiring in 2049 (`cargo xtask token bench
/// 2500000000`).
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJleHAiOjQyOTU4MjE0MTAsImlhdCI6MTc5NTgyMTQxMCwic3ViIjoiYmVuY2gifQ.sxj_sLZNtkhE-cCAdjAyUxbBZly1RVjS4EKCFTiF2_Q";

const RATE_LIMIT_TOML: &str = r#"
[config]
key = "consumer"
[[config.limits]]
requests = 1000000000
window = "1s"
"#;

const REWRITE_TOML: &str = r#"
[[config.rules]]
path = '^/api/(orders|users)/(\d+)$'
rewrite = '/$1/$2'
"#;

const TRANSFORM_TOML: &str = r#"
[config.request.headers]
set = { "x-gateway-route" = "{route}" }
[config.response.json]
remove = ["secret"]
"#;

/// A typical proxied request: a handful of headers, an API key.
fn request() -> RequestView {
    let (parts, ()) = Request::get("/api/orders/42?expand=items")
        .header("host", "api.example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header("x-api-key", "alice-key")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-request-id", "0d6f2a3c-bench")
        .body(())
        .expect("request")
        .into_parts();
    let host = parts.headers.get("host").cloned();
    RequestView::new(
        parts,
        host,
        Arc::from("10.0.0.7:50412"),
        Arc::from("api"),
        &HeaderValue::from_static("0d6f2a3c-bench"),
        true,
    )
}

/// One `on-request` call with the request in `slot`, lent to the call in place (it takes
/// `&mut`): neither copied nor moved per iteration, so what is measured is the call.
#[expect(
    clippy::await_holding_refcell_ref,
    reason = "one call at a time on a current-thread runtime: nothing else borrows the slot"
)]
async fn call(plugin: &Filter, slot: &RefCell<RequestView>) -> RequestAction {
    let mut head = slot.borrow_mut();
    let (action, _left) = plugin
        .on_request(&mut head)
        .await
        .unwrap_or_else(|e| panic!("the plugin call failed: {e}"));
    action
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
    let head = RefCell::new(request());

    let mut hook = c.benchmark_group("hook");
    hook.bench_function("on_request/reused_instance", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&headers, &head).await })
    });
    // max_uses = 1: every call instantiates and configures a new instance first.
    hook.bench_function("on_request/fresh_instance", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&fresh, &head).await })
    });
    hook.finish();

    let chain = Chain::new(vec![key_auth, headers]);
    bench_round(
        c,
        "chain/key-auth+headers/request_and_response",
        &chain,
        &runtime,
    );
}

/// A whole request through `chain`: the request phase, then the response phase over
/// [`response`] (the plugins' response hooks and the changes they left for it).
fn bench_round(c: &mut Criterion, name: &str, chain: &Chain, runtime: &tokio::runtime::Runtime) {
    c.bench_function(name, |b| {
        b.to_async(runtime).iter_batched(
            || (request(), response()),
            |(mut request, mut response)| async move {
                let passed = match chain.on_request(&mut request).await {
                    Ok(RequestStep::Continue { passed }) => passed,
                    other => panic!("the chain did not pass the request: {other:?}"),
                };
                chain
                    .on_response(passed, &mut request, &mut response)
                    .await
                    .expect("response phase");
                (request, response)
            },
            BatchSize::SmallInput,
        )
    });
}

/// Each phase plugin's hook on a reused instance, and the three-plugin chain (the request
/// phase, and the whole round).
fn phase_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let plugins = PluginRuntime::new(None).expect("plugin runtime");
    let jwt_auth = load(&runtime, &plugins, "jwt-auth", JWT_AUTH_TOML);
    let rate_limit = load(&runtime, &plugins, "rate-limit", RATE_LIMIT_TOML);
    let rewrite = load(&runtime, &plugins, "rewrite", REWRITE_TOML);
    let transform = load(&runtime, &plugins, "transform", TRANSFORM_TOML);
    let head = RefCell::new(request());
    let body = serde_json::to_vec(&serde_json::json!({
        "id": 42, "status": "shipped", "secret": "upstream-only",
        "items": (0..10).map(|i| serde_json::json!({"sku": format!("sku-{i}"), "qty": i})).collect::<Vec<_>>(),
    }))
    .expect("json");
    let body_request = request();
    let response_head = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(())
        .expect("response")
        .into_parts()
        .0;

    let mut group = c.benchmark_group("phase");
    group.bench_function("jwt-auth/on_request/hs256", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&jwt_auth, &head).await })
    });
    group.bench_function("rate-limit/on_request", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&rate_limit, &head).await })
    });
    group.bench_function("rewrite/on_request", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&rewrite, &head).await })
    });
    group.bench_function("transform/on_request", |b| {
        b.to_async(&runtime)
            .iter(|| async { call(&transform, &head).await })
    });
    group.bench_function("transform/on_response_body/json_300B", |b| {
        b.to_async(&runtime).iter(|| async {
            transform
                .on_response_body(&body_request, &response_head, &body)
                .await
                .expect("call")
        })
    });
    group.finish();

    let chain = Chain::new(vec![jwt_auth, rate_limit, rewrite]);
    c.bench_function("chain/jwt-auth+rate-limit+rewrite/request", |b| {
        b.to_async(&runtime).iter_batched(
            request,
            |mut request| {
                let chain = &chain;
                async move {
                    match chain.on_request(&mut request).await {
                        Ok(RequestStep::Continue { .. }) => {}
                        other => panic!("the chain did not pass the request: {other:?}"),
                    }
                    request
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The whole round: since weir:plugin 0.3.1 rate-limit leaves its RateLimit-* headers
    // from the request hook, so the response phase calls no plugin and only applies them.
    bench_round(
        c,
        "chain/jwt-auth+rate-limit+rewrite/request_and_response",
        &chain,
        &runtime,
    );
}

/// The guard example in each language: one `on-request` on a reused instance (the client
/// is outside `deny`, so the answer is "continue, minus the token header") and on a fresh one
/// (`max_uses = 1`: instantiate, `configure`, then the call). With `WEIR_GUARD_BEFORE`, the
/// build of each language in that folder first, under `<lang>/before/`. `WEIR_GUARDS=python,go`
/// loads only those languages (each load compiles two instances' worth of code, which a
/// profile of one language's calls need not sample), and `WEIR_PLUGIN_CACHE` is a compile
/// cache to load them from.
fn language_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cache = std::env::var_os("WEIR_PLUGIN_CACHE").map(PathBuf::from);
    let plugins = PluginRuntime::new(cache.as_deref()).expect("plugin runtime");
    let wanted = std::env::var("WEIR_GUARDS").ok();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/filters");
    let before = std::env::var_os("WEIR_GUARD_BEFORE").map(PathBuf::from);
    let head = RefCell::new(request());
    let mut group = c.benchmark_group("guard");
    for lang in ["rust", "c", "zig", "go", "python", "js", "js-quickjs", "ts"] {
        if wanted
            .as_deref()
            .is_some_and(|w| !w.split(',').any(|l| l == lang))
        {
            continue;
        }
        let builds = before
            .iter()
            .map(|dir| (format!("{lang}/before"), dir.join(format!("{lang}.wasm"))))
            .chain([(lang.to_owned(), examples.join(lang).join("guard.wasm"))]);
        for (id, file) in builds {
            if !file.exists() {
                eprintln!(
                    "{}: not built (cargo xtask examples); skipped",
                    file.display()
                );
                continue;
            }
            // The QuickJS guard asks for whole heads, as its guard.toml does.
            let whole = if lang == "js-quickjs" {
                "whole_heads = true\n"
            } else {
                ""
            };
            let reused = load_guard(&runtime, &plugins, &file, whole);
            let fresh = load_guard(&runtime, &plugins, &file, &format!("{whole}max_uses = 1\n"));
            group.bench_function(format!("{id}/on_request/reused_instance"), |b| {
                b.to_async(&runtime)
                    .iter(|| async { call(&reused, &head).await })
            });
            group.bench_function(format!("{id}/on_request/fresh_instance"), |b| {
                b.to_async(&runtime)
                    .iter(|| async { call(&fresh, &head).await })
            });
        }
    }
    group.finish();
}

/// The guard example built into `file`, outside `deny` for the bench's request, with `extra`
/// settings (`max_uses = 1\n` for a fresh instance per call).
fn load_guard(
    runtime: &tokio::runtime::Runtime,
    plugins: &PluginRuntime,
    file: &Path,
    extra: &str,
) -> Arc<Filter> {
    let settings =
        format!("{extra}[config]\ndeny = [\"192.168.0.0/16\"]\ntoken = \"open-sesame\"\n");
    load_file(runtime, plugins, file, &settings)
}

/// `WEIR_COUNT_CALLS=N`: instead of the benchmarks, `N` calls of the
/// `hook/on_request/reused_instance` benchmark's hook, or with `WEIR_COUNT_GUARD=FILE` of that
/// guard build's `on-request` as the `guard/` benchmarks call it (after 1,000 unmeasured ones), for
/// counting instructions with callgrind: run it with two values of `N` and divide the
/// difference of the totals by the difference of the counts, which leaves out loading and
/// warm-up. `WEIR_COUNT_SETTINGS` replaces the `headers` filter's `NAME.toml` (one header
/// change at a time tells what each costs). `WEIR_PLUGIN_CACHE` is the compile cache to use. Fill it with a short run first so
/// the counted runs compile nothing: outside valgrind under the same `ulimit -v` served the
/// bundled plugins (session 21), but for a guard build only a run under valgrind itself did
/// (session 25: valgrind's CPU reports other features, which the cache's key holds).
fn count_calls(calls: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cache = std::env::var_os("WEIR_PLUGIN_CACHE").map(PathBuf::from);
    let plugins = PluginRuntime::new(cache.as_deref()).expect("plugin runtime");
    let plugin = match std::env::var_os("WEIR_COUNT_GUARD") {
        Some(file) => load_guard(&runtime, &plugins, Path::new(&file), ""),
        None => match std::env::var("WEIR_COUNT_SETTINGS") {
            Ok(settings) => load(&runtime, &plugins, "headers", &settings),
            Err(_) => load(&runtime, &plugins, "headers", HEADERS_TOML),
        },
    };
    let head = RefCell::new(request());
    runtime.block_on(async {
        for _ in 0..1_000 {
            call(&plugin, &head).await;
        }
        for _ in 0..calls {
            std::hint::black_box(call(&plugin, &head).await);
        }
    });
    println!("{calls} calls");
}

criterion_group!(plugin_benches, benches, phase_benches, language_benches);

fn main() {
    let counted = std::env::var("WEIR_COUNT_CALLS").ok();
    if let Some(calls) = counted.and_then(|n| n.parse().ok()) {
        count_calls(calls);
        return;
    }
    plugin_benches();
    Criterion::default().configure_from_args().final_summary();
}
