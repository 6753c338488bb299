//! A request hook's method and body (`request.set-method`, `request.set-body`, weir:plugin
//! 0.3.6) through a real weir: the SDK-based guest `tests/plugins/method_body` turns a GET
//! into a POST with a body of its own, replaces a client's body, and gives weir a body it
//! refuses (a GET's) or one too large; a call that fails after weir has its body drops it
//! (a `fail_open` plugin's trap leaves the request as it came, even with another plugin
//! after it).

use http::StatusCode;
use http_body_util::BodyExt as _;
use weir_tests::{Upstream, Weir};

const METHOD_BODY: &[u8] = include_bytes!(env!("TEST_PLUGIN_METHOD_BODY_WASM"));

/// weir with the guest twice on one route: `trapping` (`trap = true`, `fail_open`) first,
/// then `passing`.
async fn start(upstream: &Upstream) -> Weir {
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{upstream}"]

[[routes]]
name = "app"
cluster = "app"
plugins = ["trapping", "passing"]
"#,
        cache = crate::plugin_cache().display(),
        upstream = upstream.addr,
    );
    let files: [(&str, &[u8]); 4] = [
        ("plugins/trapping.wasm", METHOD_BODY),
        (
            "plugins/trapping.toml",
            b"fail_open = true\n[config]\ntrap = true\n",
        ),
        ("plugins/passing.wasm", METHOD_BODY),
        ("plugins/passing.toml", b"[config]\n"),
    ];
    Weir::start_with_files(&config, &files).await
}

/// `method path` with `body` (none if `None`): the status and the body as text.
async fn send(weir: &Weir, method: &str, path: &str, body: Option<&str>) -> (StatusCode, String) {
    let mut request = http::Request::builder().method(method).uri(weir.url(path));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = match body {
        Some(text) => weir_tests::full(text.to_owned()),
        None => weir_tests::empty(),
    };
    let response = weir_tests::http1_client()
        .request(request.body(body).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_hook_makes_a_get_a_post_with_a_body_of_its_own() {
    let upstream = Upstream::start("app").await;
    let weir = start(&upstream).await;
    let (status, body) = send(&weir, "GET", "/as-post?q=weir", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "made of q=weir"));
    let seen = upstream.requests();
    let last = seen.last().expect("a request upstream");
    assert_eq!((last.method.as_str(), last.uri.path()), ("POST", "/echo"));
    let header = |name: &str| last.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("content-length"), Some("14"));
    assert_eq!(header("content-type"), Some("text/plain"));
    assert_eq!(header("transfer-encoding"), None);

    // A client's body is replaced, not read: the upstream gets the plugin's.
    let (status, body) = send(&weir, "POST", "/replace", Some(r#"{"client":1}"#)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "replaced"));
}

/// A `fail_open` plugin's call that traps after weir has its body (`set-body`, then a
/// `set-method` weir refuses) is skipped with everything it set: the request reaches the
/// upstream as the client sent it, though the plugin after it passes the request on.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_call_s_method_and_body_are_dropped() {
    let upstream = Upstream::start("app").await;
    let weir = start(&upstream).await;
    let (status, body) = send(&weir, "GET", "/trap", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app GET /trap"));
    let seen = upstream.requests();
    let last = seen.last().expect("a request upstream");
    assert_eq!(last.method, http::Method::GET);
    assert_eq!(last.headers.get("content-length"), None);
}

/// A body weir refuses fails the call of a plugin that is not `fail_open`: a GET's (RFC 9110
/// gives it no meaning) and one over 1 MiB. The upstream sees neither.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_weir_refuses_fail_the_call() {
    let upstream = Upstream::start("app").await;
    let weir = start(&upstream).await;
    for path in ["/get-body", "/huge"] {
        let (status, body) = send(&weir, "GET", path, None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
    }
    assert!(upstream.requests().is_empty());
}

/// `weir plugin test` checks the method and body a case's request reaches the upstream with
/// (`expect.forwarded.method`, `.body`): one case passes, one expecting the old method fails
/// saying what it got.
#[test]
fn plugin_test_checks_the_method_and_body_sent_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("method-body.wasm"), METHOD_BODY).expect("write");
    let cases = r#"
[[case]]
name = "a GET made a POST"
request = { method = "GET", path = "/as-post?q=x" }
expect = { status = 200, forwarded = { method = "POST", path = "/echo", body = "made of q=x", headers = { "content-length" = "11" } } }

[[case]]
name = "expects the old method"
request = { method = "GET", path = "/as-post?q=x" }
expect = { forwarded = { method = "GET" } }
"#;
    std::fs::write(dir.path().join("cases.toml"), cases).expect("write");
    let out = std::process::Command::new(weir_tests::weir::weir_bin())
        .args(["plugin", "test", "method-body.wasm", "--case", "cases.toml"])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", crate::cache_home())
        .output()
        .expect("run weir plugin test");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a case must fail:\n{report}");
    assert!(report.contains("ok    a GET made a POST"), "{report}");
    assert!(
        report.contains(r#"forwarded method: expected "GET", got "POST""#),
        "{report}"
    );
    assert!(report.contains("1 passed, 1 failed"), "{report}");
}
