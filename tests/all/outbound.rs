//! Filters that call services (issue 23, weir:plugin 0.3.4 `outbound`): the bundled
//! `ext-authz` asking a real authorization service, which allows, denies and stalls, and
//! `jwt-auth` taking keys from a JWKS endpoint whose keys rotate while weir runs. A filter
//! reaches only the clusters its `NAME.toml` grants.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::time::Instant;
use weir_tests::scripted::Answer;
use weir_tests::{Scripted, Upstream, Weir};

const EXT_AUTHZ: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/ext_authz.wasm"));
const JWT_AUTH: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/jwt_auth.wasm"));

/// weir in front of `app`, with a cluster `service` at `service`, and `routes`.
fn config(app: &Upstream, service: &Scripted, routes: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{app}"]

[[clusters]]
name = "service"
endpoints = ["{service}"]
retries = 0
{routes}"#,
        cache = crate::plugin_cache().display(),
        app = app.addr,
        service = service.addr,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_allows_denies_and_times_out_against_a_real_service() {
    let app = Upstream::start("app").await;
    let asked: Arc<Mutex<Vec<http::request::Parts>>> = Arc::default();
    let seen = asked.clone();
    let authz = Scripted::start(move |head| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(head.clone());
        }
        match head.headers.get("authorization").map(|v| v.as_bytes()) {
            Some(b"Bearer good") => Answer::status(200).header("x-user-id", "alice"),
            Some(b"Bearer slow") => Answer::status(200).after(Duration::from_secs(3)),
            _ => Answer::status(401)
                .header("www-authenticate", "Bearer realm=\"authz\"")
                .body("denied by authz"),
        }
    })
    .await;
    let routes = r#"
[[routes]]
name = "ungranted"
path_prefix = "/ungranted"
cluster = "app"
plugins = ["ungranted"]

[[routes]]
name = "checked"
cluster = "app"
plugins = ["ext-authz"]
"#;
    let settings = "clusters = [\"service\"]\n[config]\ncluster = \"service\"\npath_prefix = \"/check\"\nupstream_headers = [\"x-user-id\"]\ntimeout = \"300ms\"\n";
    let ungranted = "[config]\ncluster = \"service\"\n";
    let files: [(&str, &[u8]); 4] = [
        ("plugins/ext-authz.wasm", EXT_AUTHZ),
        ("plugins/ext-authz.toml", settings.as_bytes()),
        ("plugins/ungranted.wasm", EXT_AUTHZ),
        ("plugins/ungranted.toml", ungranted.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&app, &authz, routes), &files).await;

    // Allowed: the request goes on with the identity the service vouched for, not the
    // client's own claim; the service saw only the allowlisted headers.
    let (status, _, body) = weir_tests::get_with(
        &weir.url("/orders/7?full=1"),
        &[
            ("authorization", "Bearer good"),
            ("x-user-id", "mallory"),
            ("x-secret", "s"),
        ],
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app GET /orders/7"));
    let forwarded = app.requests().pop().expect("forwarded");
    assert_eq!(forwarded.headers["x-user-id"], "alice");
    let check = asked.lock().expect("asked").pop().expect("a check");
    assert_eq!(
        check.uri.path_and_query().map(|p| p.as_str()),
        Some("/check/orders/7?full=1")
    );
    assert!(
        check.headers.get("x-secret").is_none(),
        "{:?}",
        check.headers
    );
    assert!(
        check.headers.get("x-request-id").is_some(),
        "weir's request id goes along"
    );

    // Denied: the service's answer is the client's.
    let (status, headers, body) =
        weir_tests::get_with(&weir.url("/orders/7"), &[("authorization", "Bearer bad")]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"authz\"");
    assert_eq!(body, "denied by authz");

    // Stalled: refused (403, Envoy's default) at the check's 300 ms timeout, not the
    // service's 3 s.
    let started = Instant::now();
    let (status, _, _) =
        weir_tests::get_with(&weir.url("/orders/7"), &[("authorization", "Bearer slow")]).await;
    assert_eq!(status, 403);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        app.requests().len(),
        1,
        "only the allowed request reached the app"
    );

    // A plugin whose NAME.toml grants no cluster reaches none.
    let before = asked.lock().expect("asked").len();
    let (status, _, _) =
        weir_tests::get_with(&weir.url("/ungranted"), &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 403);
    assert_eq!(
        asked.lock().expect("asked").len(),
        before,
        "the service was never asked"
    );
}

/// JWK sets of HS256 keys `k1` and `k2`, as an issuer rotates them (shared with jwt-auth's
/// unit tests; the secrets are in their README).
const K1: &str = include_str!("../../plugins/jwt-auth/testdata/rotation/k1.json");
const K1_K2: &str = include_str!("../../plugins/jwt-auth/testdata/rotation/k1-k2.json");

fn token(kid: &str) -> String {
    let secret = match kid {
        "k1" => "a-test-secret-that-is-long-enough!",
        _ => "a-second-secret-rotated-in-later!!",
    };
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    let claims = serde_json::json!({"sub": kid, "exp": exp});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// The issue's bar: a token signed by a key that appeared in the JWKS after weir started is
/// accepted without a reload.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_auth_accepts_a_key_rotated_into_the_jwks_without_a_reload() {
    let app = Upstream::start("app").await;
    let published = Arc::new(Mutex::new(K1.to_owned()));
    let fetches = Arc::new(Mutex::new(0_usize));
    let (keys, counted) = (published.clone(), fetches.clone());
    let idp = Scripted::start(move |head| {
        if head.uri.path() != "/jwks" {
            return Answer::status(404);
        }
        if let Ok(mut n) = counted.lock() {
            *n += 1;
        }
        let set = keys.lock().map(|k| k.clone()).unwrap_or_default();
        Answer::status(200)
            .header("content-type", "application/json")
            .body(set)
    })
    .await;
    let routes = "\n[[routes]]\nname = \"api\"\ncluster = \"app\"\nplugins = [\"jwt-auth\"]\n";
    let settings = "clusters = [\"service\"]\nkv = true\n[config]\njwks_cluster = \"service\"\njwks_path = \"/jwks\"\njwks_refresh = \"10m\"\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/jwt-auth.wasm", JWT_AUTH),
        ("plugins/jwt-auth.toml", settings.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&app, &idp, routes), &files).await;
    let get = |token: String| {
        let url = weir.url("/me");
        async move {
            let bearer = format!("Bearer {token}");
            weir_tests::get_with(&url, &[("authorization", bearer.as_str())]).await
        }
    };
    let (status, _, body) = get(token("k1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.requests().pop().expect("forwarded").headers["x-consumer-id"],
        "k1"
    );
    let (status, _, _) = get(token("k2")).await;
    assert_eq!(status, 401, "k2 is not published yet");

    // The issuer publishes k2: weir takes it at the first token naming it (after the
    // refetch pause for unknown kids), no reload.
    *published.lock().expect("keys") = K1_K2.to_owned();
    let deadline = Instant::now() + weir_tests::DEADLINE;
    loop {
        let (status, _, _) = get(token("k2")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "k2 was never accepted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        app.requests().pop().expect("forwarded").headers["x-consumer-id"],
        "k2"
    );
    assert!(
        *fetches.lock().expect("fetches") <= 8,
        "a refetch per unknown kid per 5 s per instance, not per request: {}",
        fetches.lock().expect("fetches")
    );
}

/// `weir plugin test` answers a filter's `outbound` requests from the case file's
/// `[[outbound]]`, as it does a handler's: the bundled ext-authz's own cases pass.
#[test]
fn plugin_test_answers_a_filters_outbound_requests_from_the_case_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ext-authz.wasm"), EXT_AUTHZ).expect("write");
    let cases =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/ext-authz/cases.toml");
    std::fs::copy(&cases, dir.path().join("cases.toml")).expect("copy the cases");
    let out = std::process::Command::new(weir_tests::weir::weir_bin())
        .args(["plugin", "test", "ext-authz.wasm", "--case", "cases.toml"])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", crate::cache_home())
        .output()
        .expect("run weir plugin test");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("ok    an allowed request goes on"),
        "{report}"
    );
    assert!(report.contains("3 passed, 0 failed"), "{report}");
}
