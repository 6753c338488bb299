//! The bundled plugins (`plugins/headers`, `plugins/key-auth`) through a real weir, built
//! the way `cargo xtask plugins` builds them; and the compiled-plugin cache across restarts.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use weir_tests::{DEADLINE, Upstream, Weir, http1_client, read_body};

use crate::config;

const HEADERS: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/headers.wasm"));
const KEY_AUTH: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/key_auth.wasm"));

const HEADERS_TOML: &str = r#"
[config.request]
set = { "x-from" = "weir" }
remove = ["x-internal"]

[config.response]
set = { "x-frame-options" = "DENY" }
remove = ["x-upstream-secret"]
"#;

const KEY_AUTH_TOML: &str = r#"
[config]
query = "api_key"

[[config.consumers]]
name = "alice"
keys = ["alice-key"]
"#;

async fn send(
    weir: &Weir,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    weir_tests::get_with(&weir.url(path), headers).await
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_and_key_auth_in_one_chain() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 4] = [
        ("plugins/10-key-auth.wasm", KEY_AUTH),
        ("plugins/10-key-auth.toml", KEY_AUTH_TOML.as_bytes()),
        ("plugins/20-headers.wasm", HEADERS),
        ("plugins/20-headers.toml", HEADERS_TOML.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    // No key: key-auth answers, the upstream never sees it.
    let (status, headers, body) = send(&weir, "/hello", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Key realm=\"weir\"");
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.contains("No API key found in request"), "{body}");
    let (status, _, body) = send(&weir, "/hello", &[("x-api-key", "wrong")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body.contains("Invalid authentication credentials"),
        "{body}"
    );
    assert!(upstream.requests().is_empty());

    // A good key, in the header: consumer forwarded, key hidden, headers' changes applied
    // both ways.
    let (status, headers, _) = send(
        &weir,
        "/hello",
        &[
            ("x-api-key", "alice-key"),
            ("x-internal", "1"),
            ("x-consumer-id", "admin"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-frame-options"], "DENY");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.headers["x-consumer-id"], "alice");
    assert_eq!(seen.headers.get_all("x-consumer-id").iter().count(), 1);
    assert_eq!(seen.headers["x-from"], "weir");
    assert!(seen.headers.get("x-api-key").is_none());
    assert!(seen.headers.get("x-internal").is_none());

    // In the query: removed from what goes upstream.
    let (status, _, _) = send(&weir, "/items?api_key=alice-key&page=2", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.uri, "/items?page=2");
}

/// The instance pool reserves its address space up front, far more than a process limited
/// in it (`ulimit -v`, valgrind) may have. weir then allocates instances on demand, says so,
/// and the plugins run as before.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_run_when_the_instance_pool_cannot_reserve_its_address_space() {
    const LIMIT: u64 = 64 << 30; // room for weir and a few instances, not for the pool
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/headers.wasm", HEADERS),
        ("plugins/headers.toml", HEADERS_TOML.as_bytes()),
    ];
    let mut weir =
        Weir::start_with_address_space_limit(&config(&[upstream.addr], ""), &files, LIMIT).await;
    weir.wait_for_message("cannot reserve the plugin instance pool")
        .await;

    let (status, headers, _) = send(&weir, "/hello", &[("x-internal", "1")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-frame-options"], "DENY");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.headers["x-from"], "weir");
    assert!(seen.headers.get("x-internal").is_none());
}

/// Chain order decides which response hooks see a local reply: they run, in reverse, only
/// for the plugins the request passed before a plugin answered it.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_reply_runs_the_response_hooks_of_the_plugins_already_passed() {
    let upstream = Upstream::start("one").await;
    // headers first: key-auth's 401 passes back through headers' on-response.
    let files: [(&str, &[u8]); 4] = [
        ("plugins/10-headers.wasm", HEADERS),
        ("plugins/10-headers.toml", HEADERS_TOML.as_bytes()),
        ("plugins/20-key-auth.wasm", KEY_AUTH),
        ("plugins/20-key-auth.toml", KEY_AUTH_TOML.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, headers, _) = send(&weir, "/hello", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(upstream.requests().is_empty());
    drop(weir);

    // key-auth first (the order of the other test): the 401 never reaches headers.
    let files: [(&str, &[u8]); 4] = [
        ("plugins/10-key-auth.wasm", KEY_AUTH),
        ("plugins/10-key-auth.toml", KEY_AUTH_TOML.as_bytes()),
        ("plugins/20-headers.wasm", HEADERS),
        ("plugins/20-headers.toml", HEADERS_TOML.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, headers, _) = send(&weir, "/hello", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get("x-frame-options").is_none());

    // A route's own chain overrides the folder order.
    let config = config(&[upstream.addr], "plugins = [\"headers\", \"key-auth\"]\n");
    drop(weir);
    let weir = Weir::start_with_files(&config, &files).await;
    let (status, headers, _) = send(&weir, "/hello", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-frame-options"], "DENY");
}

/// The issue's bar, as the demo does it: key-auth dropped into a running weir's folder
/// turns requests without a key into 401 within a second and with it into 200; deleting
/// it turns it back, with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn key_auth_dropped_into_a_running_weir_and_removed_again() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;
    assert_eq!(send(&weir, "/hello", &[]).await.0, StatusCode::OK);
    // The second asserted here is the reload path's (watch, debounce, load, swap); the
    // compile itself (~0.5 s here when cold, more on a busy CI core) is measured by
    // bench/reload-latency.sh. So compile these bytes into the cache first, under a name no
    // route uses.
    warm_cache(&weir, KEY_AUTH, KEY_AUTH_TOML).await;

    weir.write("plugins/key-auth.toml", KEY_AUTH_TOML.as_bytes());
    weir.write("plugins/key-auth.wasm", KEY_AUTH);
    let took = until(&weir, StatusCode::UNAUTHORIZED, &[]).await;
    assert!(
        took < Duration::from_secs(1),
        "key-auth took {took:?} to apply"
    );
    assert_eq!(
        send(&weir, "/hello", &[("x-api-key", "alice-key")]).await.0,
        StatusCode::OK
    );

    weir.remove("plugins/key-auth.wasm");
    let took = until(&weir, StatusCode::OK, &[]).await;
    assert!(
        took < Duration::from_secs(1),
        "removing key-auth took {took:?}"
    );
}

/// Loads `wasm` as plugin `warm` (configured with `settings`) into a weir whose plugin
/// folder is empty, and removes it again, so the compile cache holds those bytes. Call it
/// before the measured part of a test: while `warm` is loaded it is in the default chain.
pub(crate) async fn warm_cache(weir: &Weir, wasm: &[u8], settings: &str) {
    weir.write("plugins/warm.toml", settings.as_bytes());
    weir.write("plugins/warm.wasm", wasm);
    let has_warm = |plugins: &Value| {
        plugins.as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["name"] == "warm" && p["status"] == "serving")
        })
    };
    let started = tokio::time::Instant::now();
    while !has_warm(&plugins(weir).await) {
        assert!(started.elapsed() < DEADLINE, "plugin warm never loaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    weir.remove("plugins/warm.wasm");
    weir.remove("plugins/warm.toml");
    while plugins(weir)
        .await
        .as_array()
        .is_some_and(|l| !l.is_empty())
    {
        assert!(started.elapsed() < DEADLINE, "plugin warm never went away");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `/hello` until it answers `status`; returns how long that took.
async fn until(weir: &Weir, status: StatusCode, headers: &[(&str, &str)]) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        if send(weir, "/hello", headers).await.0 == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < DEADLINE, "never answered {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn plugins(weir: &Weir) -> Value {
    let response = http1_client()
        .get(weir.admin_url("/plugins").parse().expect("uri"))
        .await
        .expect("admin");
    serde_json::from_slice(&read_body(response.into_body()).await).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_loads_unchanged_plugins_from_the_cache() {
    let upstream = Upstream::start("one").await;
    let cache = tempfile::tempdir().expect("tempdir");
    let config = config(&[upstream.addr], "").replace(
        &crate::plugin_cache().display().to_string(),
        &cache.path().display().to_string(),
    );
    let files: [(&str, &[u8]); 1] = [("plugins/headers.wasm", HEADERS)];
    let first = Weir::start_with_files(&config, &files).await;
    assert_eq!(plugins(&first).await[0]["from_cache"], false);
    drop(first);
    assert!(
        std::fs::read_dir(cache.path())
            .expect("cache folder")
            .count()
            > 0,
        "nothing was cached"
    );
    let second = Weir::start_with_files(&config, &files).await;
    assert_eq!(plugins(&second).await[0]["from_cache"], true);
}

/// `whole_heads = true`: weir calls a 0.3.x filter's record forms, given whole heads, instead
/// of its lazy hooks (for a toolchain that cannot give a lent handle back). Its changes to
/// the request apply; what only the request's handle can carry, header changes left for the
/// response, cannot be made, and the SDK says so in weir's log.
#[tokio::test(flavor = "multi_thread")]
async fn whole_heads_calls_the_record_forms_which_leave_nothing_for_the_response() {
    let upstream = Upstream::start("one").await;
    let whole = format!("whole_heads = true\n{HEADERS_TOML}");
    let files: [(&str, &[u8]); 4] = [
        ("plugins/lazy.wasm", HEADERS),
        ("plugins/lazy.toml", HEADERS_TOML.as_bytes()),
        ("plugins/whole.wasm", HEADERS),
        ("plugins/whole.toml", whole.as_bytes()),
    ];
    let routes = crate::routes_through_plugins(&["lazy", "whole"]);
    let mut weir = Weir::start_with_files(&config(&[upstream.addr], &routes), &files).await;

    for route in ["lazy", "whole"] {
        let path = format!("/{route}/x");
        let (status, headers, _) = send(&weir, &path, &[("x-internal", "1")]).await;
        assert_eq!(status, StatusCode::OK, "{route}");
        let seen = upstream.requests().pop().expect("upstream saw the request");
        assert_eq!(seen.headers["x-from"], "weir", "{route}");
        assert!(seen.headers.get("x-internal").is_none(), "{route}");
        // The response header is left through the request's handle, which a record form
        // does not have.
        let left = headers.get("x-frame-options").map(|v| v.as_bytes());
        let expected: Option<&[u8]> = (route == "lazy").then_some(b"DENY");
        assert_eq!(left, expected, "{route}");
    }
    weir.wait_for_message("response header changes made in on-request (whole head) dropped")
        .await;

    let plugins = plugins(&weir).await;
    let whole_heads = |name: &str| {
        plugins
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .map(|p| p["whole_heads"].clone())
    };
    assert_eq!(whole_heads("lazy"), Some(Value::Bool(false)));
    assert_eq!(whole_heads("whole"), Some(Value::Bool(true)));
}
