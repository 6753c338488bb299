//! The admin listener: health and the effective configuration.

use http::StatusCode;
use weir_tests::{Upstream, Weir, http1_client, read_body};

use crate::config;

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_config() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;
    let client = http1_client();

    let response = client
        .get(weir.admin_url("/healthz").parse().expect("uri"))
        .await
        .expect("healthz");
    assert_eq!(response.status(), StatusCode::OK);

    let response = client
        .get(weir.admin_url("/config").parse().expect("uri"))
        .await
        .expect("config");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let config: serde_json::Value =
        serde_json::from_slice(&read_body(response.into_body()).await).expect("json");
    assert_eq!(config["clusters"][0]["name"], "app");
    assert_eq!(
        config["clusters"][0]["endpoints"][0]["address"],
        upstream.addr.to_string()
    );
    assert_eq!(config["clusters"][0]["connect_timeout"], "1s");
    assert_eq!(config["clusters"][0]["response_timeout"], "1m");
    assert_eq!(config["clusters"][0]["endpoints"][0]["weight"], 1);
    assert_eq!(config["clusters"][0]["lb"]["algorithm"], "round_robin");
    assert_eq!(config["routes"][0]["path_prefix"], "/");

    let response = client
        .get(weir.admin_url("/nope").parse().expect("uri"))
        .await
        .expect("404");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
