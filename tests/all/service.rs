//! The proxy's service driven in memory, with no socket: real bundled plugins loaded by the
//! real runtime, a generation built from a config, and an upstream answered by
//! `MemoryConnector`. What a chain does to a request — its order, and a plugin's refusal
//! cutting it short — checked without a process or a port.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use weir::body::boxed;
use weir::config::PluginLimits;
use weir::generation::{Generation, PluginSlot};
use weir::plugin::{Plugin, PluginRuntime, PluginSource};
use weir::proxy::{Client, ProxyService};
use weir::upstream::{Answer, Connector, MemoryConnector, Transports};

use crate::header_values as values;

/// Loads bundled plugin `stem` as if its file were `file` (the name comes from the file).
async fn load(runtime: &PluginRuntime, stem: &str, file: &str, settings: &str) -> PluginSlot {
    let bundled = PathBuf::from(env!("BUNDLED_PLUGINS_DIR")).join(format!("{stem}.wasm"));
    let wasm = std::fs::read(&bundled).unwrap_or_else(|e| panic!("{}: {e}", bundled.display()));
    let file = PathBuf::from(file);
    let source = PluginSource {
        file: file.clone(),
        wasm,
        settings: Some((file.with_extension("toml"), settings.to_owned())),
    };
    let plugin: Plugin = runtime
        .load(source, &PluginLimits::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    PluginSlot {
        name: plugin.info().name.to_string(),
        file,
        serving: Some(plugin),
        since_generation: 1,
        last_error: None,
    }
}

fn order_headers(value: &str) -> String {
    format!(
        "deadline = \"5s\"\n[config.request]\nappend = {{ \"x-order\" = \"{value}\" }}\n[config.response]\nappend = {{ \"x-order\" = \"{value}\" }}\n"
    )
}

#[tokio::test]
async fn a_chain_runs_in_order_and_a_refusal_cuts_it_short() {
    let runtime = PluginRuntime::new(Some(&crate::plugin_cache())).expect("plugin runtime");
    let slots = vec![
        load(&runtime, "headers", "10-outer.wasm", &order_headers("outer")).await,
        load(
            &runtime,
            "key_auth",
            "20-auth.wasm",
            "deadline = \"5s\"\n[config]\n[[config.consumers]]\nname = \"alice\"\nkeys = [\"k-alice\"]\n",
        )
        .await,
        load(&runtime, "headers", "30-inner.wasm", &order_headers("inner")).await,
    ];
    // The upstream records the order the request hooks left and answers 200.
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let upstream_seen = seen.clone();
    let connector = MemoryConnector::new().endpoint("127.0.0.1:1", move |request| -> Answer {
        if let Ok(mut seen) = upstream_seen.lock() {
            seen.push(values(request.headers(), "x-order"));
        }
        let body = boxed(Full::new(Bytes::from_static(b"upstream")));
        Box::pin(std::future::ready(Ok(Response::new(body))))
    });
    let config = r#"
[[listeners]]
address = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "chain"
cluster = "app"
plugins = ["outer", "auth", "inner"]
"#;
    let config = weir::config::parse(Path::new("weir.toml"), config).expect("config");
    let connector: Arc<dyn Connector> = Arc::new(connector);
    let generation = Generation::build(
        1,
        Arc::new(config),
        slots,
        None,
        &Transports::plain(connector),
        &Default::default(),
    );
    let proxy = ProxyService::new(Arc::new(ArcSwap::from_pointee(generation)));
    let client = Client::new(([127, 0, 0, 1], 40000).into());
    let request = |key: Option<&str>| {
        let mut builder = Request::get("/x").header("host", "svc.test");
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.body(boxed(Empty::<Bytes>::new())).expect("request")
    };

    // With a key: request hooks in chain order, response changes in reverse.
    let response = proxy.handle(request(Some("k-alice")), &client).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(values(response.headers(), "x-order"), ["inner", "outer"]);
    let upstream = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(upstream, [vec!["outer".to_owned(), "inner".to_owned()]]);

    // Without one: key-auth answers; the plugin after it never runs, the one before it
    // sees the refusal on its way out, and nothing reaches the upstream.
    let response = proxy.handle(request(None), &client).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(values(response.headers(), "x-order"), ["outer"]);
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 1);
}
