//! The bundled `cors` and `ip-restriction` plugins through a real weir: preflights and actual
//! requests sent with the headers a browser sends, from allowed and refused origins, with
//! credentials; allow and deny rules for IPv4 and IPv6 clients, named by a trusted proxy's
//! `X-Forwarded-For` or connected over IPv6 loopback; and configs refused at load.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, StatusCode};
use weir_tests::scripted::Answer;
use weir_tests::{DEADLINE, Scripted, Upstream, Weir, get_with, send_with};

use crate::config;

const CORS: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/cors.wasm"));
const IP_RESTRICTION: &[u8] =
    include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/ip_restriction.wasm"));

const CORS_TOML: &str = r#"
[config]
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST", "PUT", "DELETE"]
allow_headers = ["authorization", "content-type", "x-request-id"]
expose_headers = ["x-total-count"]
allow_credentials = true
max_age = "10m"
"#;

/// What Chromium sends with a preflight from a page on `origin` about to `fetch` with
/// `method` and the non-safelisted `headers` (lower case, sorted, comma-separated).
fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut sent = vec![
        ("accept", "*/*"),
        ("origin", origin),
        ("access-control-request-method", method),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-dest", "empty"),
        ("referer", "https://app.example.com/"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
        ),
    ];
    if !headers.is_empty() {
        sent.push(("access-control-request-headers", headers));
    }
    sent
}

async fn options(weir: &Weir, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
    let (status, headers, body) =
        send_with(Method::OPTIONS, &weir.url("/api/items"), headers).await;
    assert_eq!(body, "", "a preflight's answer has no body");
    (status, headers)
}

/// Every `Access-Control-*` header, name and value, in order.
fn cors_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("access-control-"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect()
}

/// Every value of `Vary`, each comma-separated name on its own.
fn vary(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_owned())
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// A preflight from an allowed origin is answered by weir (the upstream never sees it); the
/// request the browser then sends goes upstream as it came, and its response tells the
/// browser the page may read it, with credentials.
#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_a_browsers_preflight_and_marks_the_actual_response() {
    let upstream = Upstream::start("app").await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/cors.wasm", CORS),
        ("plugins/cors.toml", CORS_TOML.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    let asked = preflight(
        "https://app.example.com",
        "PUT",
        "authorization,content-type",
    );
    let (status, headers) = options(&weir, &asked).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        cors_headers(&headers),
        pairs(&[
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "GET, POST, PUT, DELETE"),
            (
                "access-control-allow-headers",
                "authorization, content-type, x-request-id"
            ),
            ("access-control-max-age", "600"),
        ])
    );
    assert_eq!(
        vary(&headers),
        [
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers"
        ]
    );
    // A subdomain the wildcard covers, at any depth.
    let asked = preflight("https://eu.api.example.org", "DELETE", "");
    let (status, headers) = options(&weir, &asked).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://eu.api.example.org"
    );
    assert!(upstream.requests().is_empty(), "preflights stay in weir");

    // The request itself, as the page's `fetch(url, {method: "PUT", credentials: "include"})`
    // sends it.
    let (status, headers, _) = send_with(
        Method::PUT,
        &weir.url("/api/items/7"),
        &[
            ("origin", "https://app.example.com"),
            ("content-type", "application/json"),
            ("authorization", "Bearer t0ken"),
            ("cookie", "session=s3cret"),
            ("sec-fetch-mode", "cors"),
            ("referer", "https://app.example.com/items"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cors_headers(&headers),
        pairs(&[
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-total-count"),
        ])
    );
    assert_eq!(vary(&headers), ["Origin"]);
    let seen = upstream
        .requests()
        .pop()
        .expect("the upstream saw the request");
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.headers["origin"], "https://app.example.com");
    assert_eq!(seen.headers["cookie"], "session=s3cret");
    assert_eq!(upstream.requests().len(), 1);
}

/// A preflight from an origin, for a method or with a header the policy does not allow is
/// answered without any `Access-Control-Allow-*` header (the browser then refuses), never
/// forwarded; an actual request from another origin loses the upstream's own CORS answer;
/// a request without `Origin` passes untouched but for `Vary`.
#[tokio::test(flavor = "multi_thread")]
async fn cors_refuses_other_origins_methods_and_headers() {
    // An upstream with a CORS answer of its own, broader than the policy.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let upstream = Scripted::start(move |head| {
        record
            .lock()
            .expect("lock")
            .push(format!("{} {}", head.method, head.uri));
        Answer::status(200)
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-credentials", "true")
            .header("vary", "Accept-Encoding")
            .body("ok")
    })
    .await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/cors.wasm", CORS),
        ("plugins/cors.toml", CORS_TOML.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    for (asked, why) in [
        (preflight("https://evil.test", "GET", ""), "another origin"),
        (
            preflight("https://app.example.com.evil.test", "GET", ""),
            "an origin that only starts like an allowed one",
        ),
        (
            preflight("http://app.example.com", "GET", ""),
            "the allowed host over another scheme",
        ),
        (
            preflight("https://example.org", "GET", ""),
            "the wildcard's parent domain",
        ),
        (
            preflight("https://app.example.com", "PATCH", ""),
            "a method not allowed",
        ),
        (
            preflight("https://app.example.com", "PUT", "content-type,x-debug"),
            "a header not allowed",
        ),
    ] {
        let (status, headers) = options(&weir, &asked).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{why}");
        assert_eq!(cors_headers(&headers), [], "{why}");
        assert_eq!(
            vary(&headers),
            [
                "Origin",
                "Access-Control-Request-Method",
                "Access-Control-Request-Headers"
            ],
            "{why}"
        );
    }
    assert!(
        seen.lock().expect("lock").is_empty(),
        "no preflight went upstream"
    );

    // The actual request from another origin reaches the upstream (CORS protects what a page
    // may read, not what reaches the server), but its answer says nothing a browser would let
    // the page read.
    let (status, headers, body) = get_with(
        &weir.url("/api/items"),
        &[("origin", "https://evil.test"), ("sec-fetch-mode", "cors")],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(cors_headers(&headers), []);
    assert_eq!(vary(&headers), ["Accept-Encoding", "Origin"]);

    // No Origin: untouched, the upstream's own headers included; Vary says it depended.
    let (status, headers, _) = get_with(&weir.url("/api/items"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cors_headers(&headers),
        pairs(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
        ])
    );
    assert_eq!(vary(&headers), ["Accept-Encoding", "Origin"]);
    assert_eq!(
        *seen.lock().expect("lock"),
        ["GET /api/items", "GET /api/items"]
    );
}

/// `cors` first in the chain: preflights, which carry no credentials, are answered before
/// key-auth would refuse them, and key-auth's 401 to the actual request carries the CORS
/// headers, so the page can read why it was refused.
#[tokio::test(flavor = "multi_thread")]
async fn cors_before_auth_answers_preflights_and_marks_the_refusals() {
    let upstream = Upstream::start("app").await;
    let [key_auth, key_auth_toml] = crate::key_auth_files();
    let files: [(&str, &[u8]); 4] = [
        ("plugins/10-cors.wasm", CORS),
        ("plugins/10-cors.toml", CORS_TOML.as_bytes()),
        ("plugins/20-key-auth.wasm", key_auth.1),
        ("plugins/20-key-auth.toml", key_auth_toml.1),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;

    let asked = preflight("https://app.example.com", "GET", "x-request-id");
    let (status, headers) = options(&weir, &asked).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );

    let (status, headers, body) = get_with(
        &weir.url("/api/items"),
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("No API key found in request"), "{body}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(vary(&headers), ["Origin"]);
    assert!(upstream.requests().is_empty());
}

/// Any origin without credentials is answered `*`; with credentials, `*` is refused at load
/// (the Fetch standard forbids it), and weir does not start.
#[tokio::test(flavor = "multi_thread")]
async fn cors_any_origin_is_a_star_but_never_with_credentials() {
    let upstream = Upstream::start("app").await;
    let any = "[config]\nallow_origins = [\"*\"]\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/cors.wasm", CORS),
        ("plugins/cors.toml", any.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let (status, headers) = options(&weir, &preflight("https://anyone.test", "PUT", "")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers.get("access-control-allow-credentials").is_none());
    let (status, headers, _) = get_with(&weir.url("/"), &[("origin", "https://anyone.test")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["access-control-allow-origin"], "*");
    drop(weir);

    let credentialed = "[config]\nallow_origins = [\"*\"]\nallow_credentials = true\n";
    let error = crate::startup_error_with(
        &config(&[upstream.addr], ""),
        &[
            ("plugins/cors.wasm", CORS),
            ("plugins/cors.toml", credentialed.as_bytes()),
        ],
    )
    .await;
    assert!(
        error.contains("cors.wasm")
            && error.contains("allow_origins = [\"*\"] with allow_credentials = true")
            && error.contains("the Fetch standard forbids"),
        "{error}"
    );
}

const IP_RULES_TOML: &str = r#"
[config]
allow = ["127.0.0.1", "198.51.100.0/24", "2001:db8::/32"]
deny = ["198.51.100.66", "2001:db8::bad"]
"#;

/// weir behind a load balancer at 127.0.0.1 (`trusted_proxies`), so the `X-Forwarded-For`
/// a test sends names the client, with `ip-restriction` set to `settings`.
async fn behind_a_trusted_proxy(upstream: &Upstream, settings: &str) -> Weir {
    let config = config(&[upstream.addr], "").replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    let files: [(&str, &[u8]); 2] = [
        ("plugins/ip-restriction.wasm", IP_RESTRICTION),
        ("plugins/ip-restriction.toml", settings.as_bytes()),
    ];
    Weir::start_with_files(&config, &files).await
}

/// The status of a GET through `weir` from the client `forwarded_for` names (`None`: the
/// proxy itself, 127.0.0.1).
async fn status_for(weir: &Weir, forwarded_for: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = forwarded_for
        .map(|xff| ("x-forwarded-for", xff))
        .into_iter()
        .collect();
    let (status, headers, body) = get_with(&weir.url("/"), &headers).await;
    if status == StatusCode::FORBIDDEN {
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, r#"{"message":"Your IP address is not allowed"}"#);
    }
    status.as_u16()
}

/// Allow and deny by the client a trusted proxy names, IPv4 and IPv6: deny wins, anything
/// outside `allow` is refused, an IPv4-mapped IPv6 client is its IPv4 address, and a client
/// cannot hide behind an address it writes itself into the header.
#[tokio::test(flavor = "multi_thread")]
async fn ip_rules_apply_to_the_client_a_trusted_proxy_names() {
    let upstream = Upstream::start("app").await;
    let weir = behind_a_trusted_proxy(&upstream, IP_RULES_TOML).await;
    for (client, expected) in [
        (None, 200),
        (Some("203.0.113.7"), 403),
        (Some("198.51.100.5"), 200),
        (Some("198.51.100.66"), 403),
        (Some("2001:db8::1"), 200),
        (Some("[2001:db8::2]:4711"), 200),
        (Some("2001:db8::bad"), 403),
        (Some("2001:db9::1"), 403),
        (Some("::ffff:198.51.100.5"), 200),
        (Some("::ffff:203.0.113.7"), 403),
        // The proxy appends the client it saw; what the client wrote left of it is not
        // believed, either way.
        (Some("203.0.113.7, 2001:db8::1"), 200),
        (Some("2001:db8::1, 203.0.113.7"), 403),
    ] {
        assert_eq!(status_for(&weir, client).await, expected, "{client:?}");
    }
    let forwarded: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        forwarded,
        [
            "127.0.0.1",
            "198.51.100.5, 127.0.0.1",
            "2001:db8::1, 127.0.0.1",
            "[2001:db8::2]:4711, 127.0.0.1",
            "::ffff:198.51.100.5, 127.0.0.1",
            "203.0.113.7, 2001:db8::1, 127.0.0.1",
        ],
        "only the allowed clients reached the upstream"
    );

    // Each refusal counted by the rule that refused it.
    let (_, _, metrics) = get_with(&weir.admin_url("/metrics"), &[]).await;
    for line in [
        "weir_plugin_ip_restriction_refusals_total{rule=\"deny\"} 2",
        "weir_plugin_ip_restriction_refusals_total{rule=\"allow\"} 4",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

/// Without `trusted_proxies`, `X-Forwarded-For` is the client's own claim: the rules see the
/// connection's address, whatever the header says.
#[tokio::test(flavor = "multi_thread")]
async fn ip_rules_ignore_what_an_untrusted_client_claims() {
    let upstream = Upstream::start("app").await;
    let files: [(&str, &[u8]); 2] = [
        ("plugins/ip-restriction.wasm", IP_RESTRICTION),
        ("plugins/ip-restriction.toml", IP_RULES_TOML.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config(&[upstream.addr], ""), &files).await;
    let denied = "[config]\ndeny = [\"127.0.0.0/8\"]\n";
    let weir_denying = Weir::start_with_files(
        &config(&[upstream.addr], ""),
        &[
            ("plugins/ip-restriction.wasm", IP_RESTRICTION),
            ("plugins/ip-restriction.toml", denied.as_bytes()),
        ],
    )
    .await;
    // Allowed as 127.0.0.1, whatever it claims to be.
    assert_eq!(status_for(&weir, Some("203.0.113.7")).await, 200);
    // Denied as 127.0.0.1, whatever allowed address it claims to be.
    assert_eq!(status_for(&weir_denying, Some("198.51.100.5")).await, 403);
    assert_eq!(status_for(&weir_denying, Some("2001:db8::1")).await, 403);
}

/// A client connected over IPv6 (weir on `[::1]`) is matched by its IPv6 address, and one on
/// the same weir's IPv4 listener by its IPv4 one; new rules apply on reload.
#[tokio::test(flavor = "multi_thread")]
async fn ip_rules_for_ipv4_and_ipv6_peers() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let upstream = Upstream::start("app").await;
    let config = config(&[upstream.addr], "").replace(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"[::1]:0\"\n",
    );
    assert_eq!(config.matches("[[listeners]]").count(), 2, "{config}");
    let only_v6 = "[config]\nallow = [\"::1/128\"]\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/ip-restriction.wasm", IP_RESTRICTION),
        ("plugins/ip-restriction.toml", only_v6.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let v6 = ipv6_listener(&weir);
    let v4 = weir.proxy;
    assert_eq!(statuses(v4, v6).await, (403, 200));

    // Deny the IPv6 loopback instead: the next requests see the new rules.
    weir.write(
        "plugins/ip-restriction.toml",
        b"[config]\ndeny = [\"::1\"]\n",
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while statuses(v4, v6).await != (200, 403) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new rules never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The statuses of a GET over the IPv4 and over the IPv6 listener.
async fn statuses(v4: SocketAddr, v6: SocketAddr) -> (u16, u16) {
    let (over_v4, _, _) = get_with(&format!("http://{v4}/"), &[]).await;
    let (over_v6, _, _) = get_with(&format!("http://{v6}/"), &[]).await;
    (over_v4.as_u16(), over_v6.as_u16())
}

/// The address of weir's IPv6 proxy listener, from its `listening` log line.
fn ipv6_listener(weir: &Weir) -> SocketAddr {
    weir.logs()
        .iter()
        .filter(|l| l["fields"]["message"] == "listening" && l["fields"]["kind"] != "admin")
        .filter_map(|l| l["fields"]["address"].as_str()?.parse::<SocketAddr>().ok())
        .find(SocketAddr::is_ipv6)
        .expect("an IPv6 listener")
}

/// An entry that is not an address or CIDR range stops weir at startup, named with its list
/// and place; at a reload, it is refused and the previous rules keep serving.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_cidrs_are_refused_at_load() {
    let upstream = Upstream::start("app").await;
    let broken = "[config]\nallow = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\n";
    let error = crate::startup_error_with(
        &config(&[upstream.addr], ""),
        &[
            ("plugins/ip-restriction.wasm", IP_RESTRICTION),
            ("plugins/ip-restriction.toml", broken.as_bytes()),
        ],
    )
    .await;
    assert!(
        error.contains("ip-restriction.wasm")
            && error.contains("allow[1]: \"10.0.0.300/8\" is not an IP address or CIDR range"),
        "{error}"
    );

    let mut weir = behind_a_trusted_proxy(&upstream, IP_RULES_TOML).await;
    weir.write(
        "plugins/ip-restriction.toml",
        b"[config]\ndeny = [\"203.0.113.0/33\"]\n",
    );
    let line = weir
        .wait_for_message("plugin rejected; the previous version keeps serving")
        .await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("deny[0]") && e.contains("203.0.113.0/33")),
        "{line}"
    );
    assert_eq!(status_for(&weir, Some("203.0.113.7")).await, 403);
    assert_eq!(status_for(&weir, Some("198.51.100.5")).await, 200);
}
