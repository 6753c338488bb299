//! `plugin_output`: whatever a plugin can return — header changes with any name and value,
//! a new path and query, a local reply with any status, headers and body, replaced bodies,
//! huge headers, thousands of headers — through the real proxy: the guest filter in
//! `guest/` (compiled by `build.rs`) loaded by the real runtime on a route of a real
//! `Generation`, requests handled by `ProxyService` with the upstream in memory. The input's
//! first byte picks the route (even: the guest with body hooks, so bodies are buffered; odd:
//! without, so they stream); the rest is the guest's script (its module doc), sent
//! hex-encoded in the request's `x-fuzz` header.
//!
//! Going through `ProxyService::handle` rather than the chain's checks themselves keeps the
//! target independent of how those checks are written. Asserts, besides no panic, that
//! what would go on the wire is self-consistent: the client's and the upstream's messages
//! each have at most one `content-length`, equal to the body's length, and never beside
//! `transfer-encoding`; and no request waits for its response timeout (a 504): the
//! upstream answers at once, so a wait means weir framed the request wrong and the
//! upstream is still reading it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use weir::body::boxed;
use weir::config::PluginLimits;
use weir::generation::{Generation, PluginSlot};
use weir::plugin::{PluginRuntime, PluginSource};
use weir::proxy::{Client, ProxyService};
use weir::upstream::{Answer, Connector, MemoryConnector, Transports};

/// The proxy, built once per process (loading the guest compiles it).
struct Proxy {
    runtime: tokio::runtime::Runtime,
    service: ProxyService,
    client: Client,
    // Kept for as long as the plugin: the engine and its epoch ticker.
    _plugins: Arc<PluginRuntime>,
}

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]
response_timeout = "2s"

[[routes]]
name = "buffered"
path = "/buffered"
cluster = "app"
plugins = ["buffered"]

[[routes]]
name = "streamed"
path = "/streamed"
cluster = "app"
plugins = ["streamed"]
"#;

/// What a request sends, so the body hooks have something to change.
const REQUEST_BODY: &[u8] = b"{\"fuzz\": true}";

fn proxy() -> &'static Proxy {
    static PROXY: OnceLock<Proxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let plugins = Arc::new(PluginRuntime::new(None).expect("the plugin runtime"));
        let wasm = std::fs::read(env!("FUZZ_GUEST_WASM")).expect("the fuzz guest (build.rs)");
        let slots = [("buffered", true), ("streamed", false)].map(|(name, bodies)| {
            let file = PathBuf::from(format!("{name}.wasm"));
            let settings = format!("deadline = \"5s\"\n[config]\nbodies = {bodies}\n");
            let source = PluginSource {
                file: file.clone(),
                wasm: wasm.clone(),
                settings: Some((file.with_extension("toml"), settings)),
            };
            let plugin = runtime
                .block_on(plugins.load(source, &PluginLimits::default()))
                .expect("the fuzz guest loads");
            PluginSlot {
                name: plugin.info().name.to_string(),
                file,
                serving: Some(plugin),
                since_generation: 1,
                last_error: None,
            }
        });
        let connector = MemoryConnector::new().endpoint("127.0.0.1:1", upstream);
        let config = weir::config::parse(Path::new("weir.toml"), CONFIG).expect("the config");
        let connector: Arc<dyn Connector> = Arc::new(connector);
        let generation = Generation::build(
            1,
            Arc::new(config),
            slots.into(),
            None,
            &Transports::plain(connector),
            &Default::default(),
        );
        Proxy {
            runtime,
            service: ProxyService::new(Arc::new(ArcSwap::from_pointee(generation))),
            client: Client::new(([127, 0, 0, 1], 40000).into()),
            _plugins: plugins,
        }
    })
}

/// The upstream: checks the request it got is framed consistently, and answers 200.
fn upstream(request: Request<Bytes>) -> Answer {
    check_framing(
        "the upstream's request",
        request.headers(),
        request.body().len(),
    );
    let body = boxed(Full::new(Bytes::from_static(b"{\"upstream\": true}")));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Box::pin(std::future::ready(Ok(response)))
}

/// Sends one request on the route `input`'s first byte picks, with the rest as its `x-fuzz`
/// script, and checks the answer.
pub fn run(input: &[u8]) {
    let Some((&route, input)) = input.split_first() else {
        return;
    };
    let proxy = proxy();
    let mut script = String::with_capacity(input.len() * 2);
    for b in input {
        script.push_str(&format!("{b:02x}"));
    }
    let path = if route & 1 == 0 {
        "/buffered"
    } else {
        "/streamed"
    };
    let request = Request::post(path)
        .header("host", "fuzz.test")
        .header("content-type", "application/json")
        .header("x-fuzz", script)
        .body(boxed(Full::new(Bytes::from_static(REQUEST_BODY))))
        .expect("a request");
    proxy.runtime.block_on(async {
        let response = proxy.service.handle(request, &proxy.client).await;
        assert_ne!(
            response.status(),
            http::StatusCode::GATEWAY_TIMEOUT,
            "the upstream answers at once: weir framed the request wrong"
        );
        let (parts, body) = response.into_parts();
        // A body that fails to read is an upstream reset or a refusal; its framing is moot.
        if let Ok(body) = body.collect().await {
            check_framing(
                "the client's response",
                &parts.headers,
                body.to_bytes().len(),
            );
        }
    });
}

/// At most one `content-length`, equal to `len`, and not beside `transfer-encoding`.
fn check_framing(what: &str, headers: &HeaderMap, len: usize) {
    let lengths: Vec<_> = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    if lengths.is_empty() {
        return;
    }
    assert_eq!(
        lengths.len(),
        1,
        "{what}: {} content-lengths",
        lengths.len()
    );
    assert!(
        !headers.contains_key(http::header::TRANSFER_ENCODING),
        "{what}: content-length and transfer-encoding"
    );
    let declared = lengths[0]
        .to_str()
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(
        declared,
        Some(len),
        "{what}: content-length {:?} for a body of {len} bytes",
        lengths[0]
    );
}
