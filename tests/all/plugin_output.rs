//! What a plugin returns is bounded (issue 22): a hostile guest (`tests/plugins/
//! hostile_outbound` with `output = true`) answers with statuses outside 200–599, headers over
//! `[server.limits] header_bytes`, more header changes than `headers`, and bodies over its
//! `max_body_bytes`, in every place weir takes a plugin's output — a local reply, request and
//! response header changes, a response it replaces, a body hook's body. Each is refused: the
//! client gets 500 (or, with `fail_open`, the plugin is skipped), neither the upstream nor the
//! client sees the output, and the refusals are counted and logged once per 10 s. The same
//! output just within the bounds goes through, so each bound is where it says.

use http::StatusCode;
use weir_tests::{Upstream, Weir};

/// `[server.limits]` for these tests: small, so the boundaries are cheap to reach.
const LIMITS: &str = "[server.limits]\nheader_bytes = 4096\nheaders = 50\n";

/// Output over a bound, by where weir takes it.
const REFUSED: [&str; 17] = [
    // A local reply: a status that is none, an interim one, a protocol switch.
    "/out-status?code=999",
    "/out-status?code=101",
    "/out-status?code=100",
    "/out-status?code=199",
    "/out-header?bytes=4092",
    "/out-headers?count=51",
    "/out-headers?count=40000",
    "/out-body?bytes=65537",
    // Request header changes.
    "/req-header?bytes=4092",
    "/req-headers?count=51",
    // A response replaced, or its headers changed.
    "/resp-status?code=101",
    "/resp-status?code=999",
    "/resp-header?bytes=4092",
    "/resp-headers?count=51",
    // Body hooks.
    "/body-req?bytes=65537",
    "/body-resp?bytes=65537",
    "/body-status?code=101",
];

/// The same outputs just within the bounds ("x-big" is 5 bytes of each header's 4,096), and
/// what the client gets.
const TAKEN: [(&str, u16); 12] = [
    ("/out-status?code=599", 599),
    ("/out-status?code=200", 200),
    ("/out-header?bytes=4091", 200),
    ("/out-headers?count=50", 200),
    ("/out-body?bytes=65536", 200),
    ("/req-header?bytes=4091", 200),
    ("/req-headers?count=50", 200),
    ("/resp-status?code=203", 203),
    ("/resp-header?bytes=4091", 200),
    ("/resp-headers?count=50", 200),
    ("/body-req?bytes=65536", 200),
    ("/body-resp?bytes=65536", 200),
];

async fn hostile(app: &Upstream, settings: &str) -> Weir {
    let wasm =
        std::fs::read(env!("TEST_PLUGIN_HOSTILE_OUTBOUND_WASM")).expect("the hostile plugin");
    // A deadline no busy machine trips while 40,000 headers are made and lifted: what is
    // refused must be the output, not the time.
    let toml =
        format!("max_body_bytes = 65536\ndeadline = \"5s\"\n{settings}\n[config]\noutput = true\n");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/hostile.wasm", &wasm),
        ("plugins/hostile.toml", toml.as_bytes()),
    ];
    Weir::start_with_files(&crate::config(&[app.addr], LIMITS), &files).await
}

/// `path` through weir: a `POST` of `hello` for the request body hooks (which run only on a
/// request with a body), else a `GET`.
async fn send(weir: &Weir, path: &str) -> (StatusCode, http::HeaderMap, String) {
    if !(path.starts_with("/body-req") || path.starts_with("/body-status")) {
        return weir_tests::get_with(&weir.url(path), &[]).await;
    }
    let request = http::Request::post(weir.url(path))
        .body(weir_tests::full("hello"))
        .expect("request");
    let response = weir_tests::http1_client()
        .request(request)
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = weir_tests::read_body(body).await;
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Whether a response or request head carries anything the plugin made.
fn carries_output(headers: &http::HeaderMap) -> bool {
    headers.contains_key("x-big") || headers.contains_key("x-h-0")
}

async fn failures(weir: &Weir) -> String {
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("weir_plugin_failures_total{kind=\"invalid_output\",plugin=\"hostile\"}")
        })
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_plugin_output_is_a_500_that_nobody_sees() {
    let app = Upstream::start("app").await;
    let mut weir = hostile(&app, "").await;
    for path in REFUSED {
        let before = app.requests().len();
        let (status, headers, body) = send(&weir, path).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "plugin error\n"),
            "{path}"
        );
        assert!(!carries_output(&headers), "{path}: {headers:?}");
        let seen = &app.requests()[before..];
        // Refused in the request phase: nothing went upstream. In the response phase the
        // upstream answered, but never with the plugin's headers.
        let response_phase = path.starts_with("/resp") || path.starts_with("/body-resp");
        assert_eq!(seen.len(), usize::from(response_phase), "{path}");
        assert!(seen.iter().all(|r| !carries_output(&r.headers)), "{path}");
    }
    // Counted every time; weir's line about it held back to one per 10 s.
    assert_eq!(
        failures(&weir).await,
        format!(
            "weir_plugin_failures_total{{kind=\"invalid_output\",plugin=\"hostile\"}} {}",
            REFUSED.len()
        )
    );
    let line = weir.wait_for_message("plugin call failed").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid output: status 999")),
        "{line}"
    );
    let lines = weir
        .logs()
        .iter()
        .filter(|l| l["fields"]["message"] == "plugin call failed")
        .count();
    assert_eq!(lines, 1, "one line for {} refusals", REFUSED.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_within_the_bounds_is_taken() {
    let app = Upstream::start("app").await;
    let weir = hostile(&app, "").await;
    for (path, want) in TAKEN {
        let before = app.requests().len();
        let (status, headers, body) = send(&weir, path).await;
        assert_eq!(status.as_u16(), want, "{path}: {body}");
        let seen = &app.requests()[before..];
        match path.split('?').next().unwrap_or_default() {
            "/out-header" | "/resp-header" => assert_eq!(headers["x-big"].len(), 4091),
            "/out-headers" | "/resp-headers" => assert!(headers.contains_key("x-h-49")),
            "/out-body" | "/body-resp" => assert_eq!(body.len(), 65536, "{path}"),
            "/req-header" => assert_eq!(seen[0].headers["x-big"].len(), 4091),
            "/req-headers" => assert!(seen[0].headers.contains_key("x-h-49")),
            "/body-req" => assert_eq!(seen[0].headers["content-length"], "65536"),
            "/resp-status" => assert_eq!(body, "replaced"),
            _ => {}
        }
    }
    let refused = failures(&weir).await;
    assert!(refused.is_empty() || refused.ends_with(" 0"), "{refused}");
}

/// With `fail_open`, refused output is dropped whole and the request goes on as if the plugin
/// were not there: to the upstream unchanged, and the upstream's answer to the client.
#[tokio::test(flavor = "multi_thread")]
async fn a_fail_open_plugin_with_refused_output_is_skipped() {
    let app = Upstream::start("app").await;
    let weir = hostile(&app, "fail_open = true").await;
    for path in REFUSED {
        let before = app.requests().len();
        let (status, headers, body) = send(&weir, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let plain = path.split('?').next().unwrap_or_default();
        let method = if path.starts_with("/body-req") || path.starts_with("/body-status") {
            "POST"
        } else {
            "GET"
        };
        assert_eq!(
            body,
            format!("app {method} {plain}"),
            "the upstream's own answer"
        );
        assert!(!carries_output(&headers), "{path}: {headers:?}");
        let seen = &app.requests()[before..];
        assert_eq!(seen.len(), 1, "{path}");
        assert!(!carries_output(&seen[0].headers), "{path}");
        assert!(
            seen[0]
                .headers
                .get("content-length")
                .is_none_or(|n| n == "0" || n == "5"),
            "{path}: the client's body"
        );
    }
    assert_eq!(
        failures(&weir).await,
        format!(
            "weir_plugin_failures_total{{kind=\"invalid_output\",plugin=\"hostile\"}} {}",
            REFUSED.len()
        )
    );
}

/// A request hook may leave up to 256 header changes for the response, in as many
/// `add-response-header-ops` calls; each call hands weir no more than its host-call fuel,
/// but what the calls leave is held until the hook returns and checked only when applied. A
/// guest passing the same 1 MiB change 256 times (1 MiB of its memory) would make weir hold
/// 256 MiB for the one request. What one hook call leaves is bounded by the same fuel, in
/// all its calls together: the call traps once it passes that (500, nothing sent), and
/// weir's peak memory stays near where it was. The most a call could leave that weir
/// would apply, `headers` changes of `header_bytes` each, is still taken.
#[tokio::test(flavor = "multi_thread")]
async fn changes_left_call_by_call_cannot_make_weir_hold_more_than_a_call_may_hand_over() {
    let app = Upstream::start("app").await;
    let weir = hostile(&app, "").await;
    // An instance made and warmed, then the peak measured from here.
    let (status, _, _) = send(&weir, "/leave?calls=1&bytes=10").await;
    assert_eq!(status, StatusCode::OK);
    let before = app.requests().len();
    let leave = send(&weir, "/leave?calls=256&bytes=1048576");
    let ((status, headers, body), growth) = weir.peak_rss_growth(leave).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(!headers.contains_key("x-left"));
    assert!(
        growth < 64 * 1024,
        "weir's peak RSS grew by {growth} KiB for 1 MiB of the plugin's memory"
    );
    assert_eq!(app.requests().len(), before, "the request was sent anyway");

    // 50 changes (`headers`) of 4,096 bytes (`header_bytes`), one call each: taken.
    let (status, headers, body) = send(&weir, "/leave?calls=50&bytes=4090").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-left"].len(), 4090);
}

/// What the bound on one call leaves room for includes every import's largest arguments: a
/// `kv` compare-and-set hands weir the value it expects and the new one, each up to 1 MiB,
/// in one call, whatever `[server.limits]` allows the heads (here 50 headers of 4 KiB, which
/// with the 1 MiB body limit would leave about 1.5 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn a_kv_compare_and_set_of_two_whole_values_is_taken() {
    let app = Upstream::start("app").await;
    let weir = hostile(&app, "kv = true").await;
    let (status, _, body) = send(&weir, "/kv-swap?key=k&bytes=1048576").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "ok true 1048576 b");
}
