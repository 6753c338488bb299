//! The API-gateway example (`examples/gateway/`) as shipped: its config and plugin settings,
//! with the bundled plugins, in front of two real upstreams. Every bar of the phase-plugins
//! issue is checked here, through the example a user runs.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use weir_tests::{Upstream, Weir};

/// The example's HS256 secret (examples/gateway/plugins/jwt-auth.toml).
const SECRET: &str = "weir-example-secret-of-32-bytes!";

const PLUGINS: [(&str, &str); 5] = [
    ("jwt-auth", "jwt_auth"),
    ("rate-limit", "rate_limit"),
    ("rewrite", "rewrite"),
    ("transform", "transform"),
    ("aggregate", "aggregate"),
];

fn example(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/gateway")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn token(sub: &str, exp_from_now: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let claims = serde_json::json!({"sub": sub, "exp": now + exp_from_now});
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
}

async fn get(
    weir: &Weir,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    weir_tests::get_with(&weir.url(path), &headers).await
}

/// Starts the example gateway against `users` and `orders`: the example's own files, with
/// the ports replaced by ones the test owns.
async fn gateway(users: &Upstream, orders: &Upstream) -> Weir {
    let config = String::from_utf8(example("weir.toml"))
        .expect("UTF-8")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:9001", &users.addr.to_string())
        .replace("127.0.0.1:9002", &orders.addr.to_string())
        + &format!(
            "\n[plugins]\ncache_dir = \"{}\"\n",
            crate::plugin_cache().display()
        );
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, stem) in PLUGINS {
        let wasm = PathBuf::from(env!("BUNDLED_PLUGINS_DIR")).join(format!("{stem}.wasm"));
        files.push((
            format!("plugins/{name}.wasm"),
            std::fs::read(&wasm).expect("built plugin"),
        ));
        files.push((
            format!("plugins/{name}.toml"),
            example(&format!("plugins/{name}.toml")),
        ));
    }
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    Weir::start_with_files(&config, &files).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_gateway_runs_every_phase() {
    let users = Upstream::start_json("users").await;
    let orders = Upstream::start_json("orders").await;
    let weir = gateway(&users, &orders).await;

    // auth: no token, then an expired one.
    let (status, headers, _) = get(&weir, "/v1/users/7", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"weir\"");
    let (status, headers, _) = get(&weir, "/v1/users/7", Some(&token("user-7", -60))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers["www-authenticate"].to_str().expect("text");
    assert!(challenge.contains("token expired"), "{challenge}");
    assert!(users.requests().is_empty());

    // A valid token: the consumer goes upstream, the path is rewritten, the response's
    // upstream-only field is removed and Content-Length describes what is sent.
    let good = token("user-7", 300);
    let (status, headers, body) = get(&weir, "/v1/users/7", Some(&good)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = users.requests().pop().expect("users saw the request");
    assert_eq!(seen.uri, "/users/7");
    assert_eq!(seen.headers["x-consumer-id"], "user-7");
    assert_eq!(seen.headers["x-gateway-route"], "users");
    assert!(seen.headers.get("authorization").is_none(), "strip_token");
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["path"], "/users/7");
    assert!(json.get("secret").is_none(), "{body}");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert_eq!(headers["ratelimit-limit"], "100");

    let (status, _, _) = get(&weir, "/v1/orders?user=7", Some(&good)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        orders.requests().pop().expect("orders").uri,
        "/orders?user=7"
    );

    // aggregate: one document from both clusters, fetched at once.
    let (status, _, body) = get(&weir, "/dashboard/7", Some(&good)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let merged: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(merged["profile"]["upstream"], "users");
    assert_eq!(merged["profile"]["path"], "/users/7");
    assert_eq!(merged["profile"]["consumer"], "user-7");
    assert_eq!(merged["orders"]["upstream"], "orders");
    assert_eq!(merged["orders"]["query"], "user=7");
    assert!(
        merged["profile"].get("secret").is_none(),
        "transform ran on the handler's answer"
    );

    // rate limit: a fresh consumer gets 100 in the window, and the 101st is refused.
    let burst = token("burst", 300);
    for i in 0..100 {
        let (status, _, body) = get(&weir, "/v1/users/1", Some(&burst)).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let (status, headers, _) = get(&weir, "/v1/users/1", Some(&burst)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("numeric Retry-After");
    assert!((1..=11).contains(&retry), "Retry-After {retry}");
    // Another consumer is not affected.
    assert_eq!(
        get(&weir, "/v1/users/1", Some(&good)).await.0,
        StatusCode::OK
    );
}
