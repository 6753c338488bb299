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
    let response = http1_client()
        .request(Request::get(weir.url(path)).body(empty()).expect("request"))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&read_body(body).await).into_owned(),
    )
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
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    assert_eq!(get(&weir, "/ok").await.0, StatusCode::OK);
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
async fn rejected_config_keeps_the_plugin_out_and_its_routes_closed() {
    let upstream = Upstream::start("one").await;
    let mut weir = start(&upstream, Some("[config]\nreject = true\n")).await;
    let line = weir.wait_for_message("plugin rejected").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("10-test.wasm") && e.contains("reject is true")),
        "{line}"
    );
    // Never silently skipped: the route that needs it refuses traffic.
    let (status, _, body) = get(&weir, "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "plugin unavailable\n")
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_file_is_rejected_with_its_reason() {
    let upstream = Upstream::start("one").await;
    let mut weir = Weir::start_with_files(
        &config(&[upstream.addr], ""),
        &[("plugins/broken.wasm", b"not wasm at all")],
    )
    .await;
    let line = weir.wait_for_message("plugin rejected").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.wasm") && e.contains("not a valid wasm component")),
        "{line}"
    );
    assert_eq!(
        get(&weir, "/hello").await.0,
        StatusCode::SERVICE_UNAVAILABLE
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
    let weir = start(&upstream, Some("max_uses = 1\n")).await;
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
async fn two_files_with_one_plugin_name_refuse_the_second() {
    let upstream = Upstream::start("one").await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/20-test.wasm", PLUGIN),
    ];
    let mut weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let line = weir.wait_for_message("plugin rejected").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("20-test.wasm")
                && e.contains("already taken by")
                && e.contains("10-test.wasm")),
        "{line}"
    );
    // Ambiguous plugin set: the default chain, which includes both, refuses traffic.
    assert_eq!(
        get(&weir, "/hello").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_above_the_pool_slot_is_rejected_at_load() {
    let upstream = Upstream::start("one").await;
    let mut weir = start(&upstream, Some("memory_limit_mb = 1024\n")).await;
    let line = weir.wait_for_message("plugin rejected").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("memory_limit_mb = 1024: must be between 1 and 256")),
        "{line}"
    );
}
