//! The phase plugins (`jwt-auth`, `rate-limit`, `rewrite`) through a real weir against real
//! upstreams, as users configure them.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use weir_tests::{Upstream, Weir, http1_client, read_body};

use crate::{config, config_with};

const JWT_AUTH: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/jwt_auth.wasm"));
const RATE_LIMIT: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/rate_limit.wasm"));
const REWRITE: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/rewrite.wasm"));

const SECRET: &str = "weir-example-secret-of-32-bytes!";

async fn send(
    weir: &Weir,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    weir_tests::get_with(&weir.url(path), headers).await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn token(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_auth_admits_valid_tokens_and_names_why_it_refuses_others() {
    let upstream = Upstream::start("one").await;
    let settings = format!(
        "[config]\nleeway = \"5s\"\n[[config.keys]]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
    );
    let files: [(&str, &[u8]); 2] = [
        ("plugins/jwt-auth.wasm", JWT_AUTH),
        ("plugins/jwt-auth.toml", settings.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    let (status, headers, _) = send(&weir, "/me", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"weir\"");

    let good = token(serde_json::json!({"sub": "user-7", "exp": unix_now() + 60}));
    let bearer = format!("Bearer {good}");
    let (status, _, _) = send(
        &weir,
        "/me",
        &[("authorization", &bearer), ("x-consumer-id", "spoofed")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.headers["x-consumer-id"], "user-7");
    assert_eq!(seen.headers.get_all("x-consumer-id").iter().count(), 1);

    let expired = token(serde_json::json!({"sub": "user-7", "exp": unix_now() - 60}));
    let bearer = format!("Bearer {expired}");
    let (status, headers, body) = send(&weir, "/me", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers["www-authenticate"].to_str().expect("text");
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains("token expired"),
        "{challenge}"
    );
    assert!(!body.contains(SECRET));
    assert_eq!(
        upstream.requests().len(),
        1,
        "refused requests never reach upstream"
    );
}

/// The issue's accuracy bar: 4 clients hammer one key limited to 100 per 10 s; between 100
/// and 102 get through (here exactly 100: the shared counter hands out unique positions).
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_admits_the_limit_and_no_more_under_concurrent_clients() {
    let upstream = Upstream::start("one").await;
    let settings = "kv = true\n[config]\nkey = \"route\"\n[[config.limits]]\nrequests = 100\nwindow = \"10s\"\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/rate-limit.wasm", RATE_LIMIT),
        ("plugins/rate-limit.toml", settings.as_bytes()),
    ];
    let weir =
        std::sync::Arc::new(Weir::start_with_files(&config(&[upstream.addr], ""), &files).await);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let weir = weir.clone();
        clients.spawn(async move {
            let mut admitted = 0;
            let mut refused = Vec::new();
            for _ in 0..50 {
                let (status, headers, _) = send(&weir, "/", &[]).await;
                match status {
                    StatusCode::OK => {
                        assert!(headers.contains_key("ratelimit-remaining"));
                        assert_eq!(headers["ratelimit-limit"], "100");
                        admitted += 1;
                    }
                    StatusCode::TOO_MANY_REQUESTS => refused.push(headers),
                    other => panic!("unexpected {other}"),
                }
            }
            (admitted, refused)
        });
    }
    let mut admitted = 0;
    let mut refused = Vec::new();
    while let Some(result) = clients.join_next().await {
        let (a, r) = result.expect("client task");
        admitted += a;
        refused.extend(r);
    }
    assert!(
        (100..=102).contains(&admitted),
        "{admitted} admitted of 200 for a limit of 100"
    );
    assert_eq!(refused.len(), 200 - admitted);
    for headers in &refused {
        let retry: u64 = headers["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("numeric Retry-After");
        assert!((1..=11).contains(&retry), "Retry-After {retry}");
        assert_eq!(headers["ratelimit-remaining"], "0");
    }
    assert_eq!(upstream.requests().len(), admitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrite_changes_path_host_and_query_and_redirects() {
    let upstream = Upstream::start("one").await;
    let settings = r#"
[[config.rules]]
path = '^/old/(.*)$'
redirect = '/new/$1'
redirect_status = 301

[[config.rules]]
path = '^/v1/(?P<kind>users|orders)/(\d+)$'
rewrite = '/${kind}/$2'
host = "internal.example"
query_remove = ["debug"]
query_set = { source = "weir" }
"#;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/rewrite.wasm", REWRITE),
        ("plugins/rewrite.toml", settings.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    let (status, _, body) = send(&weir, "/v1/users/7?debug=1&page=2", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "one GET /users/7");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.uri, "/users/7?page=2&source=weir");
    assert_eq!(seen.headers["host"], "internal.example");

    let (status, headers, _) = send(&weir, "/old/a/b?x=1", &[]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/new/a/b?x=1");
    assert_eq!(upstream.requests().len(), 1);
}

const TRANSFORM: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/transform.wasm"));
const GUEST_0_1: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));

async fn post(weir: &Weir, path: &str, content_type: &str, body: &str) -> (StatusCode, String) {
    let request = Request::post(weir.url(path))
        .header("content-type", content_type)
        .body(weir_tests::full(body.to_owned()))
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    let status = response.status();
    let body = String::from_utf8_lossy(&read_body(response.into_body()).await).into_owned();
    (status, body)
}

const HEADERS: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/headers.wasm"));
const KEY_AUTH: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/key_auth.wasm"));

/// rate-limit leaves its `RateLimit-*` headers for the response from its request hook
/// (`add-response-header-ops`, 0.3.1): they are applied at its place in the response phase
/// (after the response hooks of plugins behind it, before those of plugins ahead of it),
/// and to a later plugin's local reply too.
#[tokio::test(flavor = "multi_thread")]
async fn response_headers_left_by_a_request_hook_apply_at_the_plugins_place() {
    let upstream = Upstream::start("one").await;
    let limit = "kv = true\n[config]\nkey = \"route\"\n[[config.limits]]\nrequests = 1000\nwindow = \"1m\"\n";
    let headers = "[config.response]\nset = { \"ratelimit-policy\" = \"from-headers\" }\n";
    let keys = "[config]\n[[config.consumers]]\nname = \"alice\"\nkeys = [\"alice-key\"]\n";
    let files: [(&str, &[u8]); 6] = [
        ("plugins/rate-limit.wasm", RATE_LIMIT),
        ("plugins/rate-limit.toml", limit.as_bytes()),
        ("plugins/headers.wasm", HEADERS),
        ("plugins/headers.toml", headers.as_bytes()),
        ("plugins/key-auth.wasm", KEY_AUTH),
        ("plugins/key-auth.toml", keys.as_bytes()),
    ];
    let route = |name: &str, plugins: &str| {
        format!(
            "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\ncluster = \"app\"\nplugins = [{plugins}]\n"
        )
    };
    let extra = [
        "plugins = []\n".to_owned(),
        route("headers-first", "\"headers\", \"rate-limit\""),
        route("limit-first", "\"rate-limit\", \"headers\""),
        route("limit-then-auth", "\"rate-limit\", \"key-auth\""),
        route("auth-then-limit", "\"key-auth\", \"rate-limit\""),
    ]
    .concat();
    let weir = Weir::start_with_files(&config(&[upstream.addr], &extra), &files).await;

    // headers is ahead of rate-limit: its response hook runs after rate-limit's changes.
    let (status, h, _) = send(&weir, "/headers-first/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["ratelimit-limit"], "1000");
    assert_eq!(h["ratelimit-policy"], "from-headers");
    // rate-limit is ahead: its changes come after headers' response hook.
    let (status, h, _) = send(&weir, "/limit-first/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["ratelimit-policy"], "1000;w=60");
    assert_eq!(h.get_all("ratelimit-policy").iter().count(), 1);
    // On a route whose plugins have no response hook at all.
    let (status, h, _) = send(&weir, "/limit-then-auth/", &[("x-api-key", "alice-key")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["ratelimit-limit"], "1000");
    // A later plugin's local reply gets them too; one that answers before rate-limit does not.
    let (status, h, _) = send(&weir, "/limit-then-auth/", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["ratelimit-limit"], "1000");
    let (status, h, _) = send(&weir, "/auth-then-limit/", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.get("ratelimit-limit").is_none());
    // The upstream never sees them.
    for seen in upstream.requests() {
        assert!(seen.headers.get("ratelimit-limit").is_none());
    }
}

const GUEST_0_3_1: &[u8] = include_bytes!(env!("TEST_PLUGIN_V0_3_1_WASM"));

/// Response header changes a plugin leaves through its request handle, from either lazy hook
/// (raw bindings on the frozen 0.3.1 contract — the SDK cannot leave them from a response
/// hook —, so this also proves a 0.3.1 plugin runs unchanged on the 0.3.7 host): those left by the
/// request hook apply before the plugin's response hook (which sees them), its own changes
/// next, then those it left during that hook. A local reply drops what its call left; more
/// than 256 in one call fails the request.
#[tokio::test(flavor = "multi_thread")]
async fn changes_left_from_both_hooks_apply_in_order() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 1] = [("plugins/left.wasm", GUEST_0_3_1)];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    let (status, h, _) = send(&weir, "/left-order", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let order: Vec<_> = h.get_all("x-order").iter().collect();
    assert_eq!(order, ["left-by-request", "own", "left-by-response"]);
    assert_eq!(h["x-seen"], "left-by-request");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert!(seen.headers.get("x-order").is_none());

    let (status, h, body) = send(&weir, "/left-then-reply", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "no\n"));
    assert!(h.get("x-order").is_none(), "{h:?}");

    let (status, h, body) = send(&weir, "/too-many", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n")
    );
    assert!(h.get("x-many").is_none());
    assert_eq!(
        upstream.requests().len(),
        1,
        "the failed requests went nowhere"
    );
}

const GUEST_0_3_0: &[u8] = include_bytes!(env!("TEST_PLUGIN_V0_3_0_WASM"));

/// The contract is 0.3.7; a plugin built against 0.3.0 (`wit/0.3.0/`) loads unchanged: its
/// imports are served by semver-compatible linking, its lazy hooks found and called.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_0_3_0_loads_and_runs_unchanged() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 1] = [("plugins/old.wasm", GUEST_0_3_0)];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, headers, _) = send(&weir, "/some/path", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-v030-status"], "200");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.headers["x-v030-path"], "/some/path");

    let (_, _, plugins) = send_admin(&weir, "/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("JSON");
    assert_eq!(plugins[0]["name"], "old");
    assert_eq!(plugins[0]["contract"], "0.3.0");
}

const GUEST_0_3_4: &[u8] = include_bytes!(env!("TEST_PLUGIN_V0_3_4_WASM"));

/// A plugin built against 0.3.4 (`wit/0.3.4/`, raw bindings) loads unchanged on the 0.3.7
/// host, which reports the patch it was built against, and its 0.3.4 imports
/// (`kv.increment-within`, `kv.compare-and-set`) are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_0_3_4_loads_and_runs_unchanged() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/old.wasm", GUEST_0_3_4),
        ("plugins/old.toml", b"kv = true\n"),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let mut within = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = send(&weir, "/within", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        within.push(body);
    }
    assert_eq!(within, ["true 1", "true 2", "false 2"]);
    let (_, _, first) = send(&weir, "/swap", &[]).await;
    let (_, _, second) = send(&weir, "/swap", &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("true", "false"));
    // Anything else passes through to the upstream.
    let (status, _, body) = send(&weir, "/else", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one GET /else"));

    let (_, _, plugins) = send_admin(&weir, "/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("JSON");
    assert_eq!(plugins[0]["name"], "old");
    assert_eq!(plugins[0]["contract"], "0.3.4");
}

const GUEST_0_3_5: &[u8] = include_bytes!(env!("TEST_PLUGIN_V0_3_5_WASM"));

/// A plugin built against 0.3.5 (`wit/0.3.5/`, raw bindings) loads unchanged on the 0.3.7
/// host, which reports the patch it was built against, and its 0.3.5 imports
/// (`request.add-cache-key`, `request.set-cache-key`) are served: a part passes, a key over
/// 1,024 bytes fails the call.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_0_3_5_loads_and_runs_unchanged() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 1] = [("plugins/old.wasm", GUEST_0_3_5)];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, _, body) = send(&weir, "/part", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one GET /part"));
    let (status, _, _) = send(&weir, "/too-long", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    let (_, _, plugins) = send_admin(&weir, "/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("JSON");
    assert_eq!(plugins[0]["name"], "old");
    assert_eq!(plugins[0]["contract"], "0.3.5");
}

const GUEST_0_3_6: &[u8] = include_bytes!(env!("TEST_PLUGIN_V0_3_6_WASM"));

/// A plugin built against 0.3.6 (`wit/0.3.6/`, raw bindings), before `request-hook`, loads
/// unchanged on the 0.3.7 host, which reports the patch it was built against, calls its
/// `on-request-lazy`, and applies the header it leaves through `add-response-header-ops`.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_0_3_6_loads_and_runs_unchanged() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 1] = [("plugins/old.wasm", GUEST_0_3_6)];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, h, body) = send(&weir, "/anything", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "one GET /anything")
    );
    assert_eq!(h["x-left"], "0.3.6");

    let (_, _, plugins) = send_admin(&weir, "/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("JSON");
    assert_eq!(plugins[0]["contract"], "0.3.6");
}

const REQUEST_HOOK: &[u8] = include_bytes!(env!("TEST_PLUGIN_REQUEST_HOOK_WASM"));

/// A filter that exports `request-hook` (0.3.7) is called there, not at `on-request-lazy`
/// (which answers 418 in this guest), and the response header changes it answers with apply
/// after those it left through `add-response-header-ops` in the same call. They are dropped
/// when it answers itself; more than 256 both ways together fail the call before the request
/// goes upstream (`[server.limits] headers` is raised past them here, so that bound is the
/// one tested). With `whole_heads` weir calls the record form instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_hook_answers_with_the_changes_it_leaves() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 1] = [("plugins/hook.wasm", REQUEST_HOOK)];
    let limits = "limits = { headers = 1000 }";
    let weir = Weir::start_with_files(&config_with(&[upstream.addr], "", limits, ""), &files).await;

    let (status, h, body) = send(&weir, "/both", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one GET /both"));
    assert_eq!(h["x-order"], "answer", "the answer's changes come last");
    assert_eq!(h["x-import"], "1");
    assert_eq!(h["x-answer"], "1");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert!(
        seen.headers.get("x-answer").is_none(),
        "left for the response only"
    );

    let (status, h, body) = send(&weir, "/respond", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "refused\n")
    );
    assert!(h.get("x-dropped").is_none(), "{h:?}");

    // 200 through the import and 56 in the answer: 256, the most one call may leave. Each
    // sets `x-n` to its number in its list, so the answer's last one is what arrives.
    let (status, h, _) = send(&weir, "/limit/200/56", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["x-n"], "55");
    let sent = upstream.requests().len();
    let (status, h, body) = send(&weir, "/limit/200/57", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n")
    );
    assert!(h.get("x-n").is_none());
    // The answer alone is held to the same bound.
    let (status, _, _) = send(&weir, "/limit/0/257", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        upstream.requests().len(),
        sent,
        "the calls failed before the requests went upstream"
    );

    let (_, _, plugins) = send_admin(&weir, "/plugins").await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("JSON");
    assert_eq!(plugins[0]["contract"], "0.3.7");

    // `whole_heads`: the record form, `on-request`, which this guest answers unchanged.
    let files: [(&str, &[u8]); 2] = [
        ("plugins/hook.wasm", REQUEST_HOOK),
        ("plugins/hook.toml", b"whole_heads = true\n"),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, h, body) = send(&weir, "/both", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one GET /both"));
    assert!(
        h.get("x-answer").is_none() && h.get("x-import").is_none(),
        "{h:?}"
    );
}

const SDK_LAZY: &[u8] = include_bytes!(env!("TEST_PLUGIN_SDK_LAZY_WASM"));

/// The Rust SDK's `on-request-lazy` path, the one a weir older than 0.3.7 takes (the guest is
/// built without `request-hook`, so weir calls it there): the response header, the method
/// and the body the filter leaves reach weir through the request's handle.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_path_for_hosts_before_0_3_7_leaves_its_changes_by_imports() {
    assert!(
        !crate::exports_request_hook(SDK_LAZY),
        "the guest exports request-hook, so weir would not call its on-request-lazy"
    );
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 1] = [("plugins/lazy.wasm", SDK_LAZY)];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, h, body) = send(&weir, "/echo", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "made"));
    assert_eq!(h["x-left"], "sdk");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.method, http::Method::POST);
}

/// What one call leaves for the response is held to one bound in all, whichever way it
/// leaves it: through `add-response-header-ops` and in a 0.3.7 answer together, at most what
/// one call may hand weir (2,767,104 bytes with the default limits). 2 MB through the import
/// and 1 MB in the answer, each within its own crossing's bound, pass it together: the call
/// traps there. 1 MB and 1 MB are taken in, and refused when applied as headers past
/// `header_bytes` (invalid output): the bound is where it says.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_hook_leaves_at_most_one_bound_through_the_import_and_its_answer_together() {
    let upstream = Upstream::start("app").await;
    let files: [(&str, &[u8]); 1] = [("plugins/hook.wasm", REQUEST_HOOK)];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (trapped, refused) = (
        [("plugin", "hook"), ("kind", "trap")],
        [("plugin", "hook"), ("kind", "invalid_output")],
    );
    let (status, _, _) = send(&weir, "/bytes/1000000/1000000", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let failures = weir_tests::metric(
        &weir.metrics().await,
        "weir_plugin_failures_total",
        &refused,
    );
    assert_eq!(failures, Some(1.0));
    let (status, _, _) = send(&weir, "/bytes/2000000/1000000", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let metrics = weir.metrics().await;
    assert_eq!(
        weir_tests::metric(&metrics, "weir_plugin_failures_total", &trapped),
        Some(1.0)
    );
    assert_eq!(
        weir_tests::metric(&metrics, "weir_plugin_failures_total", &refused),
        Some(1.0)
    );
}

const REQUEST_HOOK_MISTYPED: &[u8] = include_bytes!(env!("TEST_PLUGIN_REQUEST_HOOK_MISTYPED_WASM"));

/// A filter whose `request-hook.on-request` has another type than the contract's (it answers
/// a bare `request-action`) is refused at load with an error naming the function: weir
/// neither calls it with the wrong type nor quietly serves the plugin at `on-request-lazy`.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_hook_of_another_type_is_refused_at_load() {
    let error = crate::startup_error(&[("plugins/mistyped.wasm", REQUEST_HOOK_MISTYPED)]).await;
    assert!(
        error.contains("mistyped") && error.contains("request-hook.on-request has another type"),
        "{error}"
    );
}

async fn send_admin(weir: &Weir, path: &str) -> (StatusCode, http::HeaderMap, String) {
    weir_tests::get_with(&weir.admin_url(path), &[]).await
}

/// Body hooks (`weir:plugin@0.2.0`) through weir, next to a plugin built against 0.1.0.
#[tokio::test(flavor = "multi_thread")]
async fn transform_rewrites_json_bodies_both_ways_with_true_content_length() {
    let upstream = Upstream::start("users").await;
    let settings = r#"
[config.request.json]
set = { "meta.via" = "weir" }

[config.response.headers]
rename = { "x-upstream" = "x-served-by" }

[config.response.json]
remove = ["secret"]
"#;
    let files: [(&str, &[u8]); 3] = [
        ("plugins/10-guest.wasm", GUEST_0_1),
        ("plugins/20-transform.wasm", TRANSFORM),
        ("plugins/20-transform.toml", settings.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    // The response: a field removed, Content-Length describing what is sent.
    let (status, headers, body) = send(&weir, "/json/users/7", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["path"], "/json/users/7");
    assert!(json.get("secret").is_none(), "{body}");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    // The 0.1.0 guest's response hook ran too.
    assert_eq!(headers["x-plugin-response"], "1");

    // The request body: changed before it went upstream (the echo returns it).
    let (status, body) = post(
        &weir,
        "/echo",
        "application/json",
        r#"{"name": "ann", "secret": "s"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"name": "ann", "meta": {"via": "weir"}})
    );
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(
        seen.headers["content-length"],
        r#"{"name":"ann","secret":"s","meta":{"via":"weir"}}"#
            .len()
            .to_string()
            .as_str()
    );

    // Invalid JSON in a request is refused before the upstream.
    let before = upstream.requests().len();
    let (status, _) = post(&weir, "/echo", "application/json", "{nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(upstream.requests().len(), before);

    // Each plugin reports the contract it was built against.
    let plugins: serde_json::Value = serde_json::from_slice(
        &read_body(
            http1_client()
                .get(weir.admin_url("/plugins").parse().expect("url"))
                .await
                .expect("admin")
                .into_body(),
        )
        .await,
    )
    .expect("JSON");
    let contract = |name: &str| {
        plugins
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .map(|p| p["contract"].clone())
    };
    assert_eq!(contract("guest"), Some("0.1.0".into()));
    assert_eq!(contract("transform"), Some("0.3.7".into()));
}

/// Over `max_body_bytes`: a request body gets 413, a response passes untouched with a
/// warning.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_413_or_pass_untouched() {
    let upstream = Upstream::start("users").await;
    let settings = "max_body_bytes = 40\n[config.request.json]\nremove = [\"a\"]\n[config.response.json]\nremove = [\"secret\"]\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/transform.wasm", TRANSFORM),
        ("plugins/transform.toml", settings.as_bytes()),
    ];
    let mut weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    let small = r#"{"a": 1, "b": 2}"#;
    let (status, body) = post(&weir, "/echo", "application/json", small).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"b":2}"#));

    let large = format!(r#"{{"a": 1, "pad": "{}"}}"#, "x".repeat(100));
    let (status, _) = post(&weir, "/echo", "application/json", &large).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // The JSON answer (about 90 bytes) is over 40: untouched, secret and all.
    let (status, headers, body) = send(&weir, "/json/big", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("upstream-only"), "{body}");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    weir.wait_for_message("response body is larger than a body hook accepts")
        .await;
}

const AGGREGATE: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/aggregate.wasm"));

/// A dashboard route answered by the `aggregate` handler over three clusters.
fn dashboard_config(
    app: std::net::SocketAddr,
    users: &[std::net::SocketAddr],
    extra: &str,
) -> String {
    let cluster = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "[[clusters]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\nconnect_timeout = \"1s\"\n"
        )
    };
    format!(
        "{}{}{}{}\n[[routes]]\nname = \"dashboard\"\npath_prefix = \"/dashboard/\"\nhandler = \"aggregate\"\nplugins = []\n{extra}",
        config(&[app], ""),
        cluster("users", users[0]),
        cluster("orders", users[1]),
        cluster("recs", users[2]),
    )
}

const AGGREGATE_TOML: &str = r#"
clusters = ["users", "orders", "recs"]
deadline = "5s"

[config]
path = "/dashboard/{id}"
forward_headers = ["x-consumer-id"]

[[config.calls]]
name = "profile"
cluster = "users"
path = "/json/users/{id}"

[[config.calls]]
name = "orders"
cluster = "orders"
path = "/json/orders?user={id}&page={query.page}"
required = false
timeout = "2s"

[[config.calls]]
name = "recommendations"
cluster = "recs"
path = "/json/recs/{id}"
required = false
"#;

/// The issue's bars: the merged document from every cluster, and concurrency — three
/// sub-requests to upstreams that each take 1 s finish in under 2 s: all at once, not one
/// after another, nor in two waves (the issue's 200 ms in 400 ms, with room for a loaded CI
/// machine; `orders` has a 2 s timeout).
#[tokio::test(flavor = "multi_thread")]
async fn aggregate_calls_clusters_concurrently_and_merges_their_json() {
    let app = Upstream::start("app").await;
    let delay = std::time::Duration::from_secs(1);
    let users = Upstream::start_with_delay("users", delay).await;
    let orders = Upstream::start_with_delay("orders", delay).await;
    let recs = Upstream::start_with_delay("recs", delay).await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/aggregate.wasm", AGGREGATE),
        ("plugins/aggregate.toml", AGGREGATE_TOML.as_bytes()),
    ];
    // The client sends x-consumer-id itself, standing in for an auth plugin before the
    // handler: weir must not remove it as a forged identity here.
    let config = dashboard_config(app.addr, &[users.addr, orders.addr, recs.addr], "").replace(
        "drain_timeout = \"10s\"",
        "drain_timeout = \"10s\"\nidentity_headers = []",
    );
    let weir = Weir::start_with_files(&config, &files).await;

    // One request to warm the instance path, then the measured one.
    send(&weir, "/dashboard/1", &[]).await;
    let started = tokio::time::Instant::now();
    let (status, headers, body) =
        send(&weir, "/dashboard/7?page=2", &[("x-consumer-id", "user-7")]).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let merged: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(merged["profile"]["upstream"], "users");
    assert_eq!(merged["profile"]["path"], "/json/users/7");
    assert_eq!(merged["orders"]["upstream"], "orders");
    assert_eq!(merged["orders"]["query"], "user=7&page=2");
    assert_eq!(merged["recommendations"]["path"], "/json/recs/7");
    assert!(merged.get("errors").is_none(), "{body}");
    assert!(
        took < std::time::Duration::from_millis(1_900),
        "three 1 s calls took {took:?}: not concurrent"
    );
    let seen = users.requests().pop().expect("users saw the sub-request");
    assert_eq!(seen.headers["x-consumer-id"], "user-7");
    assert_eq!(seen.headers["host"], "users");
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(
        app.requests().is_empty(),
        "the handler route never touches the app cluster"
    );

    // A path the pattern does not match: the handler's own 404.
    let (status, _, _) = send(&weir, "/dashboard/7/extra", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An optional call that fails becomes `null` plus an entry in `errors`; a required one
/// fails the response with 502; a cluster the plugin is not granted is refused.
#[tokio::test(flavor = "multi_thread")]
async fn aggregate_failures_are_null_optional_502_required_and_ungranted_is_refused() {
    let app = Upstream::start("app").await;
    let users = Upstream::start("users").await;
    let orders = Upstream::start_with_status("orders", 500).await;
    // A port with nothing listening.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let settings = r#"
clusters = ["users", "orders", "recs"]
deadline = "5s"

[config]
path = "/dashboard/{id}"

[[config.calls]]
name = "profile"
cluster = "users"
path = "/json/users/{id}"

[[config.calls]]
name = "orders"
cluster = "orders"
path = "/orders/{id}"
required = false

[[config.calls]]
name = "secret"
cluster = "app"
path = "/json/secret"
required = false
"#;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/aggregate.wasm", AGGREGATE),
        ("plugins/aggregate.toml", settings.as_bytes()),
    ];
    let config = dashboard_config(app.addr, &[users.addr, orders.addr, dead], "");
    let weir = Weir::start_with_files(&config, &files).await;
    let (status, _, body) = send(&weir, "/dashboard/7", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let merged: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(merged["profile"]["upstream"], "users");
    assert!(merged["orders"].is_null());
    assert!(merged["secret"].is_null());
    let errors = merged["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{body}");
    assert!(
        errors[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{body}"
    );
    assert!(
        errors[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Denied")),
        "{body}"
    );
    assert!(
        app.requests().is_empty(),
        "an ungranted cluster is never called"
    );

    // The required call's cluster gone: 502 naming it.
    drop(users);
    let (status, _, body) = send(&weir, "/dashboard/7", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("required call \\\"profile\\\" failed"),
        "{body}"
    );
}
