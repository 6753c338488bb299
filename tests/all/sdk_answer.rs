//! The answer the Rust SDK lays out by hand for `request-hook.on-request` (weir:plugin 0.3.7,
//! `plugin-sdk/src/answer.rs`), read by a real weir: every kind of header change in the
//! request's list and in the response's, a new path or none, and local replies with and
//! without headers and a body, in turns on one instance, so each answer replaces a larger or
//! a smaller one. The guest is `tests/plugins/sdk_answer`.

use http::StatusCode;
use weir_tests::{Upstream, Weir};

use crate::header_values as values;

const SDK_ANSWER: &[u8] = include_bytes!(env!("TEST_PLUGIN_SDK_ANSWER_WASM"));

/// weir with the guest on route `/answer/`, at most one instance of it, so that every call
/// below is answered by the same instance, after the last.
async fn start(upstream: &Upstream) -> Weir {
    let config = crate::config(
        &[upstream.addr],
        &crate::routes_through_plugins(&["answer"]),
    );
    let files: [(&str, &[u8]); 2] = [
        ("plugins/answer.wasm", SDK_ANSWER),
        ("plugins/answer.toml", b"max_instances = 1\n"),
    ];
    Weir::start_with_files(&config, &files).await
}

const CLIENT_HEADERS: &[(&str, &str)] = &[("x-drop", "d"), ("x-set", "0"), ("x-add", "0")];

/// The request's changes as the upstream saw them (the last request it got).
fn assert_request_ops(upstream: &Upstream, path_and_query: &str) {
    let seen = upstream.requests();
    let last = seen.last().expect("a request upstream");
    assert_eq!(
        last.uri.path_and_query().map(|p| p.as_str()),
        Some(path_and_query)
    );
    assert_eq!(values(&last.headers, "x-drop"), Vec::<String>::new());
    assert_eq!(values(&last.headers, "x-set"), ["1"]);
    assert_eq!(values(&last.headers, "x-add"), ["0", "a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdks_answers_reach_weir_whole_call_after_call() {
    assert!(
        crate::exports_request_hook(SDK_ANSWER),
        "the SDK guest does not export request-hook, so weir would call its on-request-lazy"
    );
    let upstream = Upstream::start("app").await;
    let weir = start(&upstream).await;
    for round in 0..2 {
        // Changes in both lists, the response's set, appended, and set then removed.
        let (status, headers, body) =
            weir_tests::get_with(&weir.url("/answer/ops"), CLIENT_HEADERS).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "app GET /answer/ops"),
            "{round}"
        );
        assert_request_ops(&upstream, "/answer/ops");
        assert_eq!(values(&headers, "x-r-set"), ["s"]);
        assert_eq!(values(&headers, "x-r-add"), ["1", "2"]);
        assert_eq!(values(&headers, "x-r-gone"), Vec::<String>::new());

        // A reply with headers and a body, after a larger answer.
        let (status, headers, body) =
            weir_tests::get_with(&weir.url("/answer/reply-full"), CLIENT_HEADERS).await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(body, "short and stout\n");
        assert_eq!(values(&headers, "x-one"), ["1"]);
        assert_eq!(values(&headers, "x-two"), ["2"]);
        assert_eq!(values(&headers, "x-r-set"), Vec::<String>::new());

        // A new path, and no response header changes.
        let (status, headers, body) =
            weir_tests::get_with(&weir.url("/answer/moved"), CLIENT_HEADERS).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "app GET /elsewhere")
        );
        assert_request_ops(&upstream, "/elsewhere?from=moved");
        assert_eq!(values(&headers, "x-r-add"), Vec::<String>::new());

        // A reply with nothing in it.
        let (status, headers, body) =
            weir_tests::get_with(&weir.url("/answer/reply-bare"), CLIENT_HEADERS).await;
        assert_eq!((status, body.as_str()), (StatusCode::NO_CONTENT, ""));
        assert_eq!(values(&headers, "x-one"), Vec::<String>::new());

        // No change at all: the request as the client sent it.
        let (status, _, body) =
            weir_tests::get_with(&weir.url("/answer/plain"), CLIENT_HEADERS).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "app GET /answer/plain")
        );
        let seen = upstream.requests();
        let last = seen.last().expect("a request upstream");
        assert_eq!(values(&last.headers, "x-drop"), ["d"]);
        assert_eq!(values(&last.headers, "x-add"), ["0"]);
    }
}
