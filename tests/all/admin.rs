//! The admin listener: health and the effective configuration, and who may use them — the
//! bearer token (from a file or an environment variable), the `Host` check against DNS
//! rebinding, the `Origin` check against cross-site requests — and secrets redacted from
//! `/config` and `/plugins`.

use std::process::Command;

use http::{HeaderMap, Method, StatusCode};
use weir_tests::certs::Ca;
use weir_tests::weir::weir_bin;
use weir_tests::{Upstream, Weir, get_with, http1_client, read_body};

use crate::config;

/// The admin token the tests configure.
const TOKEN: &str = "t0k3n-for-the-admin-tests-5f2a";

/// The test plugin, which takes any `[config]`.
const PLUGIN: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));

/// [`config`] with `lines` added to its `[admin]` table.
fn config_with_admin(upstream: &Upstream, lines: &str, extra: &str) -> String {
    let plain = config(&[upstream.addr], extra);
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    assert!(plain.contains(admin), "{plain}");
    plain.replace(admin, &format!("{admin}{lines}\n"))
}

/// `method url` with `headers`: the status, headers and body as text.
async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    weir_tests::send_with(method, url, headers).await
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_config() {
    let upstream = Upstream::start("one").await;
    let mut weir = Weir::start(&config(&[upstream.addr], "")).await;
    let client = http1_client();

    // A loopback admin with no token serves everyone, and says so once at startup.
    let warning = weir
        .wait_for_message("the admin listener has no token")
        .await;
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("token_file")),
        "{warning}"
    );

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
    assert_eq!(config["admin"]["auth"], "open_by_default");

    let response = client
        .get(weir.admin_url("/nope").parse().expect("uri"))
        .await
        .expect("404");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Every endpoint but the dashboard page wants the token; the token never appears in what
/// the admin shows.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_a_file_guards_every_endpoint() {
    let upstream = Upstream::start("one").await;
    let config = config_with_admin(&upstream, "token_file = \"secrets/admin.token\"", "");
    let token_file = format!("{TOKEN}\n");
    let weir =
        Weir::start_with_files(&config, &[("secrets/admin.token", token_file.as_bytes())]).await;
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");

    for path in [
        "/config",
        "/healthz",
        "/plugins",
        "/clusters",
        "/metrics",
        "/errors",
        "/nope",
    ] {
        let (status, headers, body) = get_with(&weir.admin_url(path), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(
            headers["www-authenticate"], "Bearer realm=\"weir admin\"",
            "{path}"
        );
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

        let (status, headers, _) =
            get_with(&weir.admin_url(path), &[("authorization", &wrong)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .expect("ascii")
                .contains("invalid_token"),
            "{path}: {headers:?}"
        );
    }
    let (status, _, _) = send(Method::POST, &weir.admin_url("/reload"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, body) =
        get_with(&weir.admin_url("/config"), &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains(TOKEN), "the token is in /config: {body}");
    let shown: serde_json::Value = serde_json::from_str(&body).expect("json");
    let file = shown["admin"]["auth"]["bearer"]["file"]
        .as_str()
        .expect("the token's file");
    assert!(file.ends_with("secrets/admin.token"), "{file}");
    let (status, _, body) =
        get_with(&weir.admin_url("/healthz"), &[("authorization", &bearer)]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _, body) = send(
        Method::POST,
        &weir.admin_url("/reload"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The dashboard page itself holds no data: it asks for the token and sends it.
    let (status, _, body) = get_with(&weir.admin_url("/"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("token-form"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_an_environment_variable() {
    let upstream = Upstream::start("one").await;
    let config = config_with_admin(&upstream, "token_env = \"WEIR_TEST_ADMIN_TOKEN\"", "");
    let weir = Weir::start_with_env(&config, &[], &[("WEIR_TEST_ADMIN_TOKEN", TOKEN)]).await;

    let (status, _, _) = get_with(&weir.admin_url("/config"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get_with(
        &weir.admin_url("/config"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = get_with(
        &weir.admin_url("/config"),
        &[("authorization", &format!("bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("\"env\": \"WEIR_TEST_ADMIN_TOKEN\""),
        "{body}"
    );
    assert!(!body.contains(TOKEN), "the token is in /config: {body}");
}

/// A page on another origin may make a browser POST to the admin; weir refuses it by its
/// `Origin`, open admin or not, while the admin's own page and curl (no `Origin`) reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_origin_reload_is_refused() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "")).await;
    let reload = weir.admin_url("/reload");
    let own = format!("http://{}", weir.admin.expect("admin"));

    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (status, _, body) = send(Method::POST, &reload, &[("origin", origin)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}: {body}");
        assert!(body.contains("another origin"), "{body}");
    }
    let (status, _, body) = send(Method::POST, &reload, &[("origin", &own)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = send(Method::POST, &reload, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A token does not make a cross-origin request acceptable.
    let config = config_with_admin(&upstream, "token_env = \"WEIR_TEST_ADMIN_TOKEN\"", "");
    let weir = Weir::start_with_env(&config, &[], &[("WEIR_TEST_ADMIN_TOKEN", TOKEN)]).await;
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = send(
        Method::POST,
        &weir.admin_url("/reload"),
        &[
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// DNS rebinding: the attacker's name arrives as `Host`. An open admin refuses every such
/// request; one with a token, the mutating ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebinding_host_is_refused() {
    let upstream = Upstream::start("one").await;
    let config = config_with_admin(&upstream, "hosts = [\"weir-admin.internal\"]", "");
    let weir = Weir::start(&config).await;
    let port = weir.admin.expect("admin").port();
    let evil = format!("evil.example:{port}");

    for path in ["/config", "/", "/metrics"] {
        let (status, _, body) = get_with(&weir.admin_url(path), &[("host", &evil)]).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{path}: {body}");
    }
    let (status, _, _) = send(Method::POST, &weir.admin_url("/reload"), &[("host", &evil)]).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    for host in [
        format!("localhost:{port}"),
        format!("weir-admin.internal:{port}"),
    ] {
        let (status, _, body) = get_with(&weir.admin_url("/config"), &[("host", &host)]).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }

    let config = config_with_admin(&upstream, "token_env = \"WEIR_TEST_ADMIN_TOKEN\"", "");
    let weir = Weir::start_with_env(&config, &[], &[("WEIR_TEST_ADMIN_TOKEN", TOKEN)]).await;
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = send(
        Method::POST,
        &weir.admin_url("/reload"),
        &[("authorization", &bearer), ("host", &evil)],
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (status, _, _) = get_with(
        &weir.admin_url("/config"),
        &[("authorization", &bearer), ("host", &evil)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Secrets at any depth: a cluster's client key in `/config`; a plugin's keys named like
/// secrets, and the one its `NAME.toml` lists in `redact`, in `/plugins`.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_redacted() {
    let upstream = Upstream::start("one").await;
    let ca = Ca::new("admin test CA");
    let client = ca.client("weir");
    let extra = r#"
[[clusters]]
name = "secure"
endpoints = ["https://127.0.0.1:9443"]
tls = { ca = "ca.pem", client_cert = { cert = "client.pem", key = "client.key" } }
"#;
    let settings = br#"
redact = ["signing_salt"]
[config]
header = "x-api-key"
api_key = "k-1234"
[config.upstream]
clientSecret = "cs-5678"
signing_salt = "salt-9012"
region = "eu"
[[config.consumers]]
name = "alice"
keys = ["alice-key-3456"]
"#;
    let weir = Weir::start_with_files(
        &config(&[upstream.addr], extra),
        &[
            ("ca.pem", ca.pem.as_bytes()),
            ("client.pem", client.cert.as_bytes()),
            ("client.key", client.key.as_bytes()),
            ("plugins/vault.wasm", PLUGIN),
            ("plugins/vault.toml", settings),
        ],
    )
    .await;

    let (status, _, body) = get_with(&weir.admin_url("/config"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).expect("json");
    let cert = &shown["clusters"][1]["tls"]["client_cert"];
    assert_eq!(cert["key"], "[redacted]", "{cert}");
    assert!(
        cert["cert"]
            .as_str()
            .is_some_and(|c| c.ends_with("client.pem")),
        "{cert}"
    );

    let (status, _, body) = get_with(&weir.admin_url("/plugins"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for secret in ["k-1234", "cs-5678", "salt-9012", "alice-key-3456"] {
        assert!(!body.contains(secret), "{secret} is in /plugins: {body}");
    }
    let plugins: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        plugins[0]["config"],
        serde_json::json!({
            "header": "x-api-key",
            "api_key": "[redacted]",
            "upstream": {"clientSecret": "[redacted]", "signing_salt": "[redacted]", "region": "eu"},
            "consumers": [{"name": "alice", "keys": "[redacted]"}],
        })
    );
}

/// `weir check` (and so startup) refuses an admin the network could use without a token,
/// and names a token file it cannot read.
#[test]
fn check_refuses_an_unguarded_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weir.toml");
    let check = |admin: &str| {
        let config = format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[admin]\n{admin}\n");
        std::fs::write(&path, config).expect("write");
        let out = Command::new(weir_bin())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run weir check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, stderr) = check("address = \"0.0.0.0:9901\"");
    assert!(!ok);
    assert!(
        stderr.contains("weir.toml:5:11: admin address 0.0.0.0:9901 is not a loopback address, so the admin needs a token"),
        "{stderr}"
    );
    let (ok, stderr) = check("address = \"0.0.0.0:9901\"\nopen = true");
    assert!(!ok);
    assert!(
        stderr.contains("open = true is allowed only on a loopback address"),
        "{stderr}"
    );

    let (ok, stderr) = check("address = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"");
    assert!(!ok);
    let missing = dir.path().join("admin.token");
    assert!(
        stderr.contains(&format!(
            "admin token_file \"{}\": cannot read it",
            missing.display()
        )),
        "{stderr}"
    );
    std::fs::write(&missing, format!("{TOKEN}\n")).expect("write token");
    let (ok, stderr) = check("address = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"");
    assert!(ok, "{stderr}");
}
