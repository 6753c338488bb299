//! A plugin's say in the response cache key (`request.set-cache-key`, `request.add-cache-key`,
//! weir:plugin 0.3.5) through a real weir, in front of a scripted upstream that numbers its
//! answers: the SDK-based guest `tests/plugins/cache_key` adds `x-tenant` to the key, leaves
//! a `utm` parameter out of it, and gives a part weir refuses on `x-bad-key: 1`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use weir_tests::scripted::Answer;
use weir_tests::{Scripted, Weir};

const CACHE_KEY: &[u8] = include_bytes!(env!("TEST_PLUGIN_CACHE_KEY_WASM"));

/// An upstream answering every request with `response N` (N counting from 1), fresh for a
/// minute, noting the path and query of each.
struct Origin {
    server: Scripted,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    async fn start() -> Origin {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let count = AtomicUsize::new(0);
        let server = Scripted::start(move |head| {
            let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
            record.lock().expect("seen").push(target.to_owned());
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            Answer::status(200)
                .header("cache-control", "max-age=60")
                .header("content-type", "text/plain")
                .body(format!("response {n}"))
        })
        .await;
        Origin { server, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// How many requests reached it.
    fn requests(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }

    /// The path and query of every request that reached it, in order.
    fn targets(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

/// weir with a cached route `/open` whose plugin is `fail_open`, and a cached catch-all
/// route whose plugin is not, both the cache_key guest.
async fn start(origin: &Origin) -> Weir {
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{upstream}"]

[[routes]]
name = "open"
path_prefix = "/open"
cluster = "app"
plugins = ["keyed-open"]
cache = {{}}

[[routes]]
name = "keyed"
cluster = "app"
plugins = ["keyed"]
cache = {{}}
"#,
        cache = crate::plugin_cache().display(),
        upstream = origin.addr(),
    );
    let files: [(&str, &[u8]); 3] = [
        ("plugins/keyed.wasm", CACHE_KEY),
        ("plugins/keyed-open.wasm", CACHE_KEY),
        ("plugins/keyed-open.toml", b"fail_open = true\n"),
    ];
    Weir::start_with_files(&config, &files).await
}

/// `GET path` with `headers`: the status and the body.
async fn get(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let (status, _, body) = weir_tests::get_with(&weir.url(path), headers).await;
    (status, body)
}

/// One URL is stored once per tenant (`add-cache-key`): two tenants asking twice each cost
/// two upstream requests, each tenant getting its own copy; and a request whose only
/// difference is a `utm` parameter shares the entry of the URL without it (`set-cache-key`),
/// the tenant's part still following the key the plugin set.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_get_a_stored_copy_each_and_a_utm_parameter_shares_the_entry() {
    let origin = Origin::start().await;
    let weir = start(&origin).await;

    let mut bodies = Vec::new();
    for tenant in ["a", "b", "a", "b"] {
        let (status, body) = get(&weir, "/page", &[("x-tenant", tenant)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        bodies.push(body);
    }
    assert_eq!(
        bodies,
        ["response 1", "response 2", "response 1", "response 2"]
    );
    assert_eq!(origin.requests(), 2, "{:?}", origin.targets());

    // Without a tenant, a key of its own; with `utm`, the same one.
    assert_eq!(
        get(&weir, "/page", &[]).await,
        (StatusCode::OK, "response 3".into())
    );
    assert_eq!(
        get(&weir, "/page?utm=x", &[]).await,
        (StatusCode::OK, "response 3".into())
    );
    // The key set without `utm`, then tenant a's part: tenant a's copy of /page.
    assert_eq!(
        get(&weir, "/page?utm=y", &[("x-tenant", "a")]).await,
        (StatusCode::OK, "response 1".into())
    );
    // Another parameter stays in the key.
    assert_eq!(
        get(&weir, "/page?utm=x&lang=de", &[]).await,
        (StatusCode::OK, "response 4".into())
    );
    assert_eq!(
        get(&weir, "/page?lang=de", &[]).await,
        (StatusCode::OK, "response 4".into())
    );
    assert_eq!(
        origin.targets(),
        ["/page", "/page", "/page", "/page?utm=x&lang=de"],
        "the request goes upstream as the client sent it; only its key changes"
    );
}

/// A 2,000-byte part breaks `add-cache-key`'s bound: the call fails, so the request is
/// answered 500 and never reaches the upstream. On a `fail_open` plugin the request goes on
/// without it, and the key the failed call had extended (the tenant's part first) is as it
/// was before the call: the URL's own, which a request without a tenant then hits.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_over_the_bound_fails_the_call_and_its_key_changes_are_dropped() {
    let origin = Origin::start().await;
    let weir = start(&origin).await;

    let (status, body) = get(&weir, "/page", &[("x-bad-key", "1")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (status, body) = get(&weir, "/page", &[("x-tenant", "a"), ("x-bad-key", "1")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(origin.requests(), 0, "the failed requests went nowhere");

    let (status, body) = get(
        &weir,
        "/open/page",
        &[("x-tenant", "a"), ("x-bad-key", "1")],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "response 1"));
    assert_eq!(
        get(&weir, "/open/page", &[]).await,
        (StatusCode::OK, "response 1".into()),
        "stored under the URL's own key, without the failed call's tenant part"
    );
    let (status, body) = get(&weir, "/open/page", &[("x-tenant", "a")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "response 2"));
    assert_eq!(origin.requests(), 2, "{:?}", origin.targets());
}
