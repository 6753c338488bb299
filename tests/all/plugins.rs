//! Wasm filter plugins through a real weir: local replies, header changes both ways, traps,
//! limits, fail-open, rejected config, and the sandbox. The guest is `tests/plugins`.

use std::time::Duration;

use http::{Request, StatusCode};
use weir_tests::{Upstream, Weir, empty, http1_client, read_body};

use crate::config;

const PLUGIN: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));

async fn start(upstream: &Upstream, settings: Option<&str>) -> Weir {
    let mut files: Vec<(&str, &[u8])> = vec![("plugins/10-test.wasm", PLUGIN)];
    if let Some(settings) = settings {
        files.push(("plugins/10-test.toml", settings.as_bytes()));
    }
    Weir::start_with_files(&config(&[upstream.addr], ""), &files).await
}

async fn get(weir: &Weir, path: &str) -> (StatusCode, http::HeaderMap, String) {
    weir_tests::get_with(&weir.url(path), &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_changes_headers_both_ways() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, None).await;
    let (status, headers, body) = get(&weir, "/hello").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one GET /hello"));
    assert_eq!(headers["x-plugin-response"], "1");
    assert_eq!(upstream.requests()[0].headers["x-plugin"], "seen");
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_answers_locally_without_calling_upstream() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, None).await;
    let (status, headers, body) = get(&weir, "/deny").await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "denied\n"));
    assert_eq!(headers["x-answered-by"], "plugin");
    assert_eq!(headers["content-length"], "7");
    assert!(headers.contains_key("x-request-id"));
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_is_500_and_the_next_request_succeeds() {
    let upstream = Upstream::start("one").await;
    let mut weir = start(&upstream, None).await;
    let (status, _, body) = get(&weir, "/trap").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n")
    );
    let line = weir.wait_for_message("plugin call failed").await;
    assert_eq!(line["plugin"], "test");
    assert!(line["hash"].as_str().is_some_and(|h| h.len() == 16));
    assert!(line["request_id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable") || e.contains("trap")),
        "{line}"
    );

    let (status, _, _) = get(&weir, "/after").await;
    assert_eq!(status, StatusCode::OK);
}

/// A plugin that traps on every request is one "plugin call failed" line per kind of failure
/// per 10 s, not one per request (weir's own log held back as a plugin's own repeated lines
/// are), while `weir_plugin_failures_total` counts every failure; a request of another kind
/// of failure (a deadline) still gets its own line.
#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_plugin_is_one_failure_line_not_one_per_request() {
    let upstream = Upstream::start("one").await;
    // No breaker: every request calls the plugin.
    let settings = "fail_open = true\ndeadline = \"100ms\"\nbreaker = { failures = 0 }\n";
    let mut weir = start(&upstream, Some(settings)).await;
    for _ in 0..50 {
        let (status, _, _) = get(&weir, "/trap").await;
        assert_eq!(status, StatusCode::OK, "fail_open passes the request");
    }
    let (status, _, _) = get(&weir, "/loop").await;
    assert_eq!(status, StatusCode::OK);
    // The deadline's line is written after every trap line that would be written: once it
    // is read, they all are.
    let is_deadline = |l: &serde_json::Value| {
        l["fields"]["message"] == "plugin call failed"
            && l["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("interrupt") || e.contains("deadline"))
    };
    weir.wait_for_logs(|logs| logs.iter().any(is_deadline))
        .await;
    let traps = weir
        .logs()
        .iter()
        .filter(|l| l["fields"]["message"] == "plugin call failed" && !is_deadline(l))
        .count();
    assert_eq!(traps, 1, "50 traps within 10 s");
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    assert!(
        metrics.contains("weir_plugin_failures_total{kind=\"trap\",plugin=\"test\"} 50"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_skips_a_failing_plugin() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, Some("fail_open = true\n")).await;
    let (status, _, body) = get(&weir, "/trap").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "one GET /trap"));
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_is_stopped_by_the_deadline() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, Some("deadline = \"100ms\"\n")).await;
    let started = tokio::time::Instant::now();
    let (status, _, _) = get(&weir, "/loop").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        elapsed >= Duration::from_millis(100),
        "answered after {elapsed:?}, before the deadline"
    );
    // Loose: past its first slices a loop runs in short slices with pauses between them,
    // which a loaded machine stretches (the lower bound is the check that matters).
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    assert_eq!(get(&weir, "/ok").await.0, StatusCode::OK);
}

/// A plugin waiting in WASI (a 30 s sleep) is never found running by an epoch tick: a timer
/// cuts it off at its deadline, as a `deadline` failure, and its instance is not reused.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_plugin_is_cut_off_at_its_deadline() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, Some("deadline = \"200ms\"\n")).await;
    let started = tokio::time::Instant::now();
    let (status, _, _) = get(&weir, "/sleep").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        elapsed >= Duration::from_millis(200),
        "answered after {elapsed:?}, before the deadline"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    assert!(
        metrics.contains(r#"weir_plugin_failures_total{kind="deadline",plugin="test"} 1"#),
        "{metrics}"
    );
    assert_eq!(get(&weir, "/ok").await.0, StatusCode::OK);
}

/// A plugin in a loop yields its thread at every epoch tick: with one worker thread, while two
/// requests spin in it (each until its 3 s deadline), the admin listener and another route
/// still answer. Without the yield, nothing else on the thread runs until both have trapped.
#[tokio::test(flavor = "multi_thread")]
async fn a_looping_plugin_does_not_stall_its_thread() {
    let upstream = Upstream::start("one").await;
    let config =
        config(&[upstream.addr], "").replace("[server]\n", "[server]\nworker_threads = 1\n");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/10-test.toml", b"deadline = \"3s\"\n"),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let url = weir.url("/loop");
            tokio::spawn(async move { weir_tests::get_with(&url, &[]).await.0 })
        })
        .collect();
    // Both loops are running when the admin says two requests are in flight. A stalled
    // thread would answer only once both had trapped, with none in flight any more.
    let deadline = tokio::time::Instant::now() + weir_tests::DEADLINE;
    loop {
        let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
        if metrics.contains("weir_requests_in_flight 2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin did not see both loops running while they ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another request through the proxy is answered while they still spin.
    assert_eq!(get(&weir, "/ok").await.0, StatusCode::OK);
    assert!(
        loops.iter().all(|l| !l.is_finished()),
        "the loops ended first"
    );
    for l in loops {
        assert_eq!(l.await.expect("client"), StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_hog_hits_the_cap() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, Some("memory_limit_mb = 16\n")).await;
    let (status, _, _) = get(&weir, "/hog").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&weir, "/ok").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_whose_heap_keeps_growing_is_replaced_before_its_cap() {
    // Each call keeps 1 MiB for good: an instance reaches its 16 MiB cap in about a dozen
    // calls. weir retires it between calls once its memory is most of the way there, so no
    // call fails (with no `max_uses` set: the default 10,000 would be far too late).
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, Some("memory_limit_mb = 16\n")).await;
    for i in 0..40 {
        let (status, _, body) = get(&weir, "/leak").await;
        assert_eq!(status, StatusCode::OK, "call {i}: {body}");
    }
    // What an operator sees of it.
    assert!(retired(&weir, "memory_growth").await >= 1.0);
}

/// `weir_plugin_instances_retired_total` of the test plugin for `reason`.
async fn retired(weir: &Weir, reason: &str) -> f64 {
    let labels = [("plugin", "test"), ("reason", reason)];
    let retired = weir.metric("weir_plugin_instances_retired_total", &labels);
    retired.await.expect("the series")
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_that_rejects_its_config_stops_startup() {
    let error = crate::startup_error(&[
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/10-test.toml", b"[config]\nreject = true\n"),
    ])
    .await;
    assert!(
        error.contains("10-test.wasm") && error.contains("configuration rejected: reject is true"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_file_stops_startup_with_its_reason() {
    let error = crate::startup_error(&[("plugins/broken.wasm", b"not wasm at all")]).await;
    assert!(
        error.contains("broken.wasm") && error.contains("not a valid wasm component"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_naming_a_missing_plugin_stops_startup() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "plugins = [\"auth\"]\n");
    let mut weir = Weir::spawn_with_files(&config, &[]);
    assert!(!weir.wait_exit().await.success());
    let line = weir.wait_for_message("plugins failed to load").await;
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("route \"default\" names plugin \"auth\", which is not in")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_host_files_or_environment() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, None).await;
    let (status, _, body) = get(&weir, "/sandbox").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("READ"), "the plugin read host data: {body}");
    assert!(
        body.contains("env: denied") && body.contains("file: denied"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_counter_is_shared_across_instances_and_requests() {
    let upstream = Upstream::start("one").await;
    // max_uses = 1: every call gets a fresh instance, so 20 instances share one counter.
    let weir = start(&upstream, Some("max_uses = 1\nkv = true\n")).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = weir.url("/count");
        tasks.push(tokio::spawn(async move {
            let response = http1_client()
                .get(url.parse().expect("uri"))
                .await
                .expect("response");
            read_body(response.into_body()).await
        }));
    }
    let mut seen: Vec<u32> = Vec::new();
    for t in tasks {
        seen.push(
            String::from_utf8_lossy(&t.await.expect("task"))
                .trim()
                .parse()
                .expect("number"),
        );
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_change_is_500_naming_the_plugin() {
    let upstream = Upstream::start("one").await;
    // Two plugins, so the error must say which one made the change.
    let files: [(&str, &[u8]); 2] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/20-other.wasm", PLUGIN),
    ];
    let mut weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, _, body) = get(&weir, "/bad-header").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n")
    );
    let line = weir.wait_for_message("request failed").await;
    assert!(
        line["cause"]
            .as_str()
            .is_some_and(|c| c.contains("plugin test: invalid header name")),
        "{line}"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_files_with_one_plugin_name_stop_startup() {
    let error = crate::startup_error(&[
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/20-test.wasm", PLUGIN),
    ])
    .await;
    assert!(
        error.contains("20-test.wasm")
            && error.contains("already taken by")
            && error.contains("10-test.wasm"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_above_the_pool_slot_is_rejected_at_load() {
    let error = crate::startup_error(&[
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/10-test.toml", b"memory_limit_mb = 1024\n"),
    ])
    .await;
    assert!(
        error.contains("memory_limit_mb = 1024: must be between 1 and 256"),
        "{error}"
    );
}

/// Sends `GET path` with `x-secret: secret`; returns the body and `x-secret-seen`.
async fn with_secret(weir: &Weir, path: &str, secret: &str) -> (String, String) {
    let request = Request::get(weir.url(path))
        .header("x-secret", secret)
        .body(empty())
        .expect("request");
    let response = http1_client().request(request).await.expect("response");
    let seen = response
        .headers()
        .get("x-secret-seen")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&read_body(response.into_body()).await).into_owned();
    (body, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_never_see_each_others_requests() {
    let upstream = Upstream::start("one").await;
    let weir = start(&upstream, None).await;
    // Two clients share the plugin's instance pool; each must only ever see its own head.
    let mut tasks = Vec::new();
    for client in ["alice", "bob"] {
        let url = weir.url("/hello");
        tasks.push(tokio::spawn(async move {
            let http = http1_client();
            for i in 0..100 {
                let secret = format!("{client}-{i}");
                let request = Request::get(&url)
                    .header("x-secret", &secret)
                    .body(empty())
                    .expect("request");
                let response = http.request(request).await.expect("response");
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["x-secret-seen"], secret.as_str());
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn globals_persist_on_a_reused_instance_and_not_with_max_uses_1() {
    let upstream = Upstream::start("one").await;
    // Default: one idle instance serves both calls in turn, so what the plugin keeps on
    // purpose in a global is there for the next request (documented behaviour).
    let weir = start(&upstream, None).await;
    with_secret(&weir, "/remember", "alice").await;
    assert_eq!(
        with_secret(&weir, "/remember", "bob").await.0,
        "previous: alice\n"
    );
    drop(weir);

    // max_uses = 1: every call gets a fresh instance, so a plugin that tries to keep one
    // client's secret for the next client finds nothing.
    let weir = start(&upstream, Some("max_uses = 1\n")).await;
    for client in ["alice", "bob", "carol"] {
        assert_eq!(
            with_secret(&weir, "/remember", client).await.0,
            "previous: \n"
        );
    }
    // Each call's instance was retired after it: one for each hook the request called
    // (on-request, and on-response on its way back).
    let used_up = retired(&weir, "max_uses").await;
    assert!((3.0..=6.0).contains(&used_up), "{used_up}");
    assert_eq!(retired(&weir, "memory_growth").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn global_limits_apply_unless_the_plugin_overrides_them() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "").replace(
        "[plugins]\n",
        "[plugins]\ndeadline = \"20ms\"\nmemory_limit_mb = 8\nmax_uses = 50\n",
    );
    let files: [(&str, &[u8]); 3] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/20-own.wasm", PLUGIN),
        (
            "plugins/20-own.toml",
            b"deadline = \"100ms\"\nmemory_limit_mb = 32\n",
        ),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let plugins = admin_json(&weir, "/plugins").await;
    let limits = |i: usize| {
        (
            plugins[i]["name"].as_str().unwrap_or("").to_owned(),
            plugins[i]["deadline_ms"].as_u64(),
            plugins[i]["memory_limit_mb"].as_u64(),
            plugins[i]["max_uses"].as_u64(),
        )
    };
    assert_eq!(limits(0), ("test".into(), Some(20), Some(8), Some(50)));
    assert_eq!(limits(1), ("own".into(), Some(100), Some(32), Some(50)));
    // The global deadline is what stops the loop.
    let started = tokio::time::Instant::now();
    assert_eq!(
        get(&weir, "/loop").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn admin_json(weir: &Weir, path: &str) -> serde_json::Value {
    let response = http1_client()
        .get(weir.admin_url(path).parse().expect("uri"))
        .await
        .expect("admin response");
    serde_json::from_slice(&read_body(response.into_body()).await).expect("json")
}

/// A plugin built against a deprecated contract (0.1.0 here) loads and serves, with one
/// warning naming it and its version; a current one gets none.
#[tokio::test(flavor = "multi_thread")]
async fn a_deprecated_contract_loads_with_a_warning() {
    const CURRENT: &[u8] = include_bytes!(env!("TEST_PLUGIN_V0_3_1_WASM"));
    let upstream = Upstream::start("one").await;
    let extra = "\n[[routes]]\nname = \"old\"\npath_prefix = \"/old\"\ncluster = \"app\"\nplugins = [\"old\"]\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/old.wasm", PLUGIN),
        ("plugins/current.wasm", CURRENT),
    ];
    let mut weir = Weir::start_with_files(&config(&[upstream.addr], extra), &files).await;
    let warning = weir
        .wait_for_message("plugin built against a deprecated weir:plugin version")
        .await;
    assert_eq!(warning["plugin"], "old");
    assert_eq!(warning["contract"], "0.1.0");
    let deprecated: Vec<_> = weir
        .logs()
        .into_iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("deprecated"))
        })
        .collect();
    assert_eq!(deprecated.len(), 1, "{deprecated:?}");
    let (status, _, body) = get(&weir, "/old/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "one GET /old/hello")
    );
}

/// Polls the admin's `/metrics` until it contains `wanted`, for up to 5 s.
async fn wait_for_metric(weir: &Weir, wanted: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
        if metrics.contains(wanted) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {wanted:?} in {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three traps in a row open the plugin's breaker: its route answers 503 at once without
/// calling it, until after the cooldown a probe call succeeds and closes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_keeps_failing_is_not_called_until_a_probe_succeeds() {
    let upstream = Upstream::start("one").await;
    let weir = start(
        &upstream,
        Some("breaker = { failures = 3, cooldown = \"3s\" }\n"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(&weir, "/trap").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    wait_for_metric(&weir, r#"weir_plugin_breaker_open{plugin="test"} 1"#).await;
    let (status, _, body) = get(&weir, "/ok").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "plugin unavailable\n")
    );
    assert!(
        upstream.requests().is_empty(),
        "nothing passed the open breaker"
    );
    // Past the cooldown one call is let through; it succeeds, and the breaker closes.
    let deadline = tokio::time::Instant::now() + weir_tests::DEADLINE;
    while get(&weir, "/ok").await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.requests()[0].headers["x-plugin"], "seen");
    let metrics = wait_for_metric(&weir, r#"weir_plugin_breaker_open{plugin="test"} 0"#).await;
    assert!(
        metrics.contains(r#"weir_plugin_failures_total{kind="breaker_open",plugin="test"} "#),
        "{metrics}"
    );
}

/// A fail-open plugin whose breaker is open is skipped: the request goes on without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fail_open_plugin_with_an_open_breaker_is_skipped() {
    let upstream = Upstream::start("one").await;
    let weir = start(
        &upstream,
        Some("fail_open = true\nbreaker = { failures = 2, cooldown = \"1h\" }\n"),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(get(&weir, "/trap").await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&weir, "/deny").await.0,
        StatusCode::OK,
        "not called, so not denied"
    );
    let deny = upstream.requests().pop().expect("the request went on");
    assert!(!deny.headers.contains_key("x-plugin"));
}

/// One plugin with all its instances busy (`max_instances = 1`, held by a loop) makes its
/// next request wait for an instance and then answer 503, while another plugin on another
/// route is served at once: one plugin cannot take the pool from the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_with_all_its_instances_busy_does_not_hold_up_another() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "plugins = [\"other\"]\n").replace(
        "[[routes]]\nname = \"default\"",
        "[[routes]]\nname = \"busy\"\nmethods = [\"POST\"]\ncluster = \"app\"\nplugins = [\"test\"]\n\n[[routes]]\nname = \"default\"",
    );
    let files: [(&str, &[u8]); 3] = [
        ("plugins/10-test.wasm", PLUGIN),
        (
            "plugins/10-test.toml",
            b"max_instances = 1\ndeadline = \"1s\"\n",
        ),
        ("plugins/20-other.wasm", PLUGIN),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let post = |path: &str| {
        let url = weir.url(path);
        async move {
            let request = Request::post(url).body(empty()).expect("request");
            let response = http1_client().request(request).await.expect("answer");
            response.status()
        }
    };
    let looping = tokio::spawn(post("/loop"));
    wait_for_metric(&weir, "weir_requests_in_flight 1\n").await;
    assert_eq!(
        post("/ok").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "no instance of test was free within its deadline"
    );
    let (status, _, _) = get(&weir, "/ok").await;
    assert_eq!(status, StatusCode::OK, "other has instances of its own");
    assert!(
        !looping.is_finished(),
        "the loop still holds test's instance"
    );
    assert_eq!(
        looping.await.expect("client"),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    wait_for_metric(
        &weir,
        r#"weir_plugin_failures_total{kind="overloaded",plugin="test"} 1"#,
    )
    .await;
    assert_eq!(
        post("/ok").await,
        StatusCode::OK,
        "a fresh instance once it is free"
    );
}

/// All instances draw on one memory budget: a plugin allowed 64 MiB of its own is stopped
/// at the 24 MiB weir has for all of them, and gives the memory back when it is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn the_memory_budget_bounds_all_instances_together() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "").replace(
        "[plugins]\n",
        "[plugins]\nmemory_limit_mb = 16\nmemory_budget_mb = 24\n",
    );
    let files: [(&str, &[u8]); 2] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/10-test.toml", b"memory_limit_mb = 64\n"),
    ];
    let mut weir = Weir::start_with_files(&config, &files).await;
    assert_eq!(
        get(&weir, "/hog").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let line = weir.wait_for_message("plugin call failed").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("memory budget for plugins (24 MiB)")),
        "{line}"
    );
    assert_eq!(get(&weir, "/ok").await.0, StatusCode::OK);
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_plugin_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no weir_plugin_memory_bytes in {metrics}"));
    assert!(
        held > 0 && held < 24 << 20,
        "{held} bytes held after the hog"
    );
}

/// `whole_heads = true` makes weir call a 0.3.x filter's record forms, given whole heads,
/// for both head hooks; without it, the lazy hooks. The guest says which form ran, on the
/// request sent upstream and on the response. On an older plugin the setting changes
/// nothing, and weir says so.
#[tokio::test(flavor = "multi_thread")]
async fn whole_heads_chooses_the_record_forms_for_both_head_hooks() {
    const FORMS: &[u8] = include_bytes!(env!("TEST_PLUGIN_FORMS_WASM"));
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 5] = [
        ("plugins/lazy.wasm", FORMS),
        ("plugins/whole.wasm", FORMS),
        ("plugins/whole.toml", b"whole_heads = true\n"),
        // 0.1.0: always given whole heads, so the setting is said to do nothing.
        ("plugins/old.wasm", PLUGIN),
        ("plugins/old.toml", b"whole_heads = true\n"),
    ];
    let routes = crate::routes_through_plugins(&["lazy", "whole"]);
    let mut weir = Weir::start_with_files(&config(&[upstream.addr], &routes), &files).await;
    let warning = weir.wait_for_message("whole_heads has no effect").await;
    assert_eq!(warning["plugin"], "old");
    for (route, form) in [("lazy", "lazy"), ("whole", "record")] {
        let (status, headers, _) = get(&weir, &format!("/{route}/x")).await;
        assert_eq!(status, StatusCode::OK, "{route}");
        assert_eq!(headers["x-form"], form, "{route}: the response hook");
        let seen = upstream.requests().pop().expect("upstream saw the request");
        assert_eq!(seen.headers["x-form"], form, "{route}: the request hook");
    }
}
