//! Hardening (issue 22), what exists of it: no spelling of a path or of a host reaches a route
//! other than the one its normal form names, so a route's auth cannot be walked around, over
//! HTTP/1.1 (written raw, so no client tidies the path or the Host first) and HTTP/2, and a
//! host that is not one is refused before any route; a client's own identity headers
//! (`x-consumer-id`) never reach a plugin or an upstream, not even from a trusted proxy; and
//! forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) are believed only from
//! trusted proxies, so a client can neither pose as another address to a rate limit nor to
//! the upstream. (Limits and blame are in `limits.rs`.)

use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::{DEADLINE, Upstream, Weir, http2_client, read_body};

/// `/private` behind key-auth, everything else open, one upstream answering `NAME METHOD PATH`.
async fn private_and_open() -> (Upstream, Weir) {
    private_and_open_with("").await
}

/// [`private_and_open`] with `server` in `[server]`.
async fn private_and_open_with(server: &str) -> (Upstream, Weir) {
    let upstream = Upstream::start("app").await;
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[server]
{server}

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{addr}"]

[[routes]]
name = "private"
path_prefix = "/private"
cluster = "app"
plugins = ["key-auth"]

[[routes]]
name = "open"
cluster = "app"
plugins = []
"#,
        addr = upstream.addr,
        cache = crate::plugin_cache().display()
    );
    let files = crate::key_auth_files();
    let weir = Weir::start_with_files(&config, &files).await;
    (upstream, weir)
}

/// The spellings of `/private/file` an attacker tries.
const VARIANTS: [&str; 14] = [
    "/private/file",
    "/%70rivate/file",
    "/privat%65/file",
    "//private/file",
    "/./private/file",
    "/x/../private/file",
    "/%2e/private/file",
    "/%2E%2E/private/file",
    "/public/../private/file",
    "/public/%2e%2e/private/file",
    "/%2fprivate/file",
    "/private%2f../file",
    "/public/..%2fprivate/file",
    "/public\\..\\private/file",
];

/// One raw HTTP/1.1 request for `target`; the status code.
async fn raw_status(weir: &Weir, target: &str, key: Option<&str>) -> u16 {
    let key = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    let head = format!("GET {target} HTTP/1.1\r\nhost: app.test\r\n{key}connection: close\r\n\r\n");
    raw_exchange(weir, &head).await.0
}

/// Writes `head`, a whole bodiless HTTP/1.1 request as raw bytes (no client checks or tidies
/// it), and reads until weir closes the connection: the status code and the answer as text.
async fn raw_exchange(weir: &Weir, head: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_path_reaches_the_open_route_over_http1() {
    let (upstream, weir) = private_and_open().await;
    for target in VARIANTS {
        let status = raw_status(&weir, target, None).await;
        assert!(
            [400, 401, 404].contains(&status),
            "{target}: {status} without a key"
        );
    }
    assert!(
        upstream.requests().is_empty(),
        "the upstream saw {:?}",
        upstream
            .requests()
            .iter()
            .map(|r| r.uri.to_string())
            .collect::<Vec<_>>()
    );
    // With the key, a spelling that normalises cleanly reaches the upstream as the normal path.
    assert_eq!(
        raw_status(&weir, "/%70rivate/./x/../file", Some("alice-key")).await,
        200
    );
    assert_eq!(upstream.requests()[0].uri, "/private/file");
    // Escaped slashes are refused before routing (the default policy).
    assert_eq!(
        raw_status(&weir, "/%2fprivate/file", Some("alice-key")).await,
        400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_path_reaches_the_open_route_over_http2() {
    let (upstream, weir) = private_and_open().await;
    let client = http2_client();
    for target in VARIANTS {
        // A backslash is not a valid URI character for the client's parser: raw HTTP/1.1 only.
        let Ok(uri) = format!("http://{}{target}", weir.proxy).parse::<http::Uri>() else {
            continue;
        };
        let response = tokio::time::timeout(DEADLINE, client.get(uri))
            .await
            .expect("in time")
            .expect("response");
        let status = response.status();
        let _ = read_body(response.into_body()).await;
        assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::UNAUTHORIZED,
                StatusCode::NOT_FOUND
            ]
            .contains(&status),
            "{target}: {status} without a key over HTTP/2"
        );
    }
    assert!(upstream.requests().is_empty());
}

/// Host `api.test` behind key-auth (cluster `api`), every other host open ([`crate::config`]'s
/// catch-all, no plugins, to cluster `app` at `open`); each upstream answers `NAME METHOD PATH`.
async fn api_host_and_open() -> (Upstream, Upstream, Weir) {
    let api = Upstream::start("api").await;
    let open = Upstream::start("open").await;
    // The catch-all's `plugins` first: `extra` goes on in its table.
    let extra = format!(
        r#"plugins = []

[[clusters]]
name = "api"
endpoints = ["{}"]

[[routes]]
name = "api"
host = "api.test"
cluster = "api"
plugins = ["key-auth"]
"#,
        api.addr
    );
    let config = crate::config(&[open.addr], &extra);
    let weir = Weir::start_with_files(&config, &crate::key_auth_files()).await;
    (api, open, weir)
}

/// The spellings of the host `api.test` an attacker tries: another case, a port (an empty
/// one too), the trailing dot of a fully-qualified name, and these together.
const HOST_VARIANTS: [&str; 9] = [
    "api.test",
    "API.TEST",
    "Api.Test:8080",
    "api.test.",
    "api.test.:80",
    "api.test:",
    "API.test.:",
    "aPi.TeSt.:65535",
    "api.test:080",
];

/// Hosts that are not hosts: a port out of range or not a number, a space, two ports, an
/// IPv6 literal left open; some in upper case or with a trailing dot, so the full check (not
/// only the one-pass path) is the one to refuse them.
const MALFORMED_HOSTS: [&str; 8] = [
    "api.test:99999",
    "api.test:65536",
    "api.test:8a",
    "api test",
    "api.test:80:80",
    "[::1",
    "API.TEST.:99999",
    "Api.Test:8a",
];

/// A raw HTTP/1.1 `GET /x` with `host` as its Host header, and `key` as its API key if any.
fn get_for_host(host: &str, key: Option<&str>) -> String {
    let key = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    format!("GET /x HTTP/1.1\r\nhost: {host}\r\n{key}connection: close\r\n\r\n")
}

/// Routes are chosen by the normal form of the host (lower case, no port, no trailing dot):
/// every spelling of `api.test`, in `Host` or as an absolute-form target's authority, must
/// meet the key-auth of `api.test`'s route. A spelling left un-normalised (by the one-pass
/// host path or the full check behind it) matches no host route and falls through to the
/// open catch-all beside it, no key asked.
#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_host_reaches_the_open_route_over_http1() {
    let (api, open, weir) = api_host_and_open().await;
    // The catch-all is there to fall into: another host reaches it with no key.
    let (status, text) = raw_exchange(&weir, &get_for_host("open.test", None)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("open GET /x"), "{text}");
    for host in HOST_VARIANTS {
        let (status, text) = raw_exchange(&weir, &get_for_host(host, None)).await;
        assert_eq!(status, 401, "Host {host:?} without a key: {text}");
        // Absolute form: the target's authority is the host, whatever Host says.
        let head =
            format!("GET http://{host}/x HTTP/1.1\r\nhost: open.test\r\nconnection: close\r\n\r\n");
        let (status, text) = raw_exchange(&weir, &head).await;
        assert_eq!(status, 401, "GET http://{host}/x without a key: {text}");
    }
    assert_eq!(
        open.requests().len(),
        1,
        "a spelling of api.test reached the open route: {:?}",
        open.requests()
            .iter()
            .map(|r| r.headers.get("host").cloned())
            .collect::<Vec<_>>()
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    // With the key, every spelling is api.test's.
    for host in HOST_VARIANTS {
        let (status, text) = raw_exchange(&weir, &get_for_host(host, Some("alice-key"))).await;
        assert_eq!(status, 200, "Host {host:?} with the key: {text}");
        assert!(text.ends_with("api GET /x"), "Host {host:?}: {text}");
    }
    assert_eq!(api.requests().len(), HOST_VARIANTS.len());
    assert_eq!(open.requests().len(), 1);
}

/// The same over HTTP/2, where the host is the `:authority` pseudo-header.
#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_host_reaches_the_open_route_over_http2() {
    let (api, open, weir) = api_host_and_open().await;
    let stream = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    for host in HOST_VARIANTS {
        for (key, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("alice-key"), StatusCode::OK),
        ] {
            let mut request = http::Request::get(format!("http://{host}/x"));
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            let request = request.body(weir_tests::empty()).expect("request");
            let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
                .await
                .expect("in time")
                .expect("response");
            let status = response.status();
            let body = read_body(response.into_body()).await;
            assert_eq!(
                status, expected,
                ":authority {host:?}, key {key:?}: {body:?}"
            );
        }
    }
    assert!(
        open.requests().is_empty(),
        "a spelling of api.test reached the open route: {:?}",
        open.requests()
            .iter()
            .map(|r| r.uri.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        api.requests().len(),
        HOST_VARIANTS.len(),
        "only with the key"
    );
}

/// A Host that is not one is refused (400) before routing, in any case and with or without a
/// key: it reaches neither the open catch-all, where a host no route names would otherwise
/// fall, nor the protected route. (Were the one-pass host path to take a port past 65535 or
/// not a number, or the full check to let one through, the request would be routed.)
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_host_is_refused_before_any_route() {
    let (api, open, weir) = api_host_and_open().await;
    for host in MALFORMED_HOSTS {
        for key in [None, Some("alice-key")] {
            let (status, text) = raw_exchange(&weir, &get_for_host(host, key)).await;
            assert_eq!(status, 400, "Host {host:?}, key {key:?}: {text}");
        }
    }
    assert!(
        open.requests().is_empty() && api.requests().is_empty(),
        "a malformed host was routed: open {:?}, api {:?}",
        open.requests(),
        api.requests()
    );
    // The same weir routes a well-formed host.
    let (status, text) =
        raw_exchange(&weir, &get_for_host("api.test:8080", Some("alice-key"))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(api.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_pose_as_a_consumer_on_any_route() {
    let (upstream, weir) = private_and_open().await;
    // On a route without plugins: the forged identity never reaches the upstream.
    let (status, _, _) = weir_tests::get_with(
        &weir.url("/open"),
        &[("x-consumer-id", "admin"), ("x-consumer", "admin")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("a request");
    assert!(seen.headers.get("x-consumer-id").is_none(), "{seen:?}");
    assert!(seen.headers.get("x-consumer").is_none(), "{seen:?}");
    // Behind key-auth: the consumer is the key's, whatever the client said.
    let (status, _, _) = weir_tests::get_with(
        &weir.url("/private/file"),
        &[("x-consumer-id", "admin"), ("x-api-key", "alice-key")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("a request");
    let consumers: Vec<_> = seen.headers.get_all("x-consumer-id").iter().collect();
    assert_eq!(consumers, ["alice"]);
}

/// A trusted proxy passes on what its client wrote: its forwarding headers are believed, but
/// who the client is, only weir's plugins say, so `x-consumer-id` and `x-consumer` that come
/// through it are removed as anyone's are (were they kept for a trusted peer, every client
/// behind the load balancer could name itself `admin`), while its `X-Forwarded-For` is kept
/// and extended with the peer.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_cannot_pass_on_a_clients_identity() {
    let (upstream, weir) = private_and_open_with("trusted_proxies = [\"127.0.0.1/32\"]").await;
    let forged = [
        ("x-consumer-id", "admin"),
        ("x-consumer", "admin"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
    ];
    // On a route without plugins.
    let (status, _, _) = weir_tests::get_with(&weir.url("/open"), &forged).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("a request");
    assert!(seen.headers.get("x-consumer-id").is_none(), "{seen:?}");
    assert!(seen.headers.get("x-consumer").is_none(), "{seen:?}");
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(
        xff,
        ["1.2.3.4, 127.0.0.1"],
        "the trusted proxy's X-Forwarded-For is kept, extended with the peer"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    // Behind key-auth: the key's consumer alone, and no `x-consumer` (key-auth sets none).
    let mut with_key = forged.to_vec();
    with_key.push(("x-api-key", "alice-key"));
    let (status, _, _) = weir_tests::get_with(&weir.url("/private/file"), &with_key).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.requests().pop().expect("a request");
    let consumers: Vec<_> = seen.headers.get_all("x-consumer-id").iter().collect();
    assert_eq!(consumers, ["alice"], "{seen:?}");
    assert!(seen.headers.get("x-consumer").is_none(), "{seen:?}");
}

const RATE_LIMIT: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/rate_limit.wasm"));

/// rate-limit by client address (3 a minute) on every route; `trusted` is the
/// `trusted_proxies` line, if any.
async fn limited_by_client(trusted: &str) -> (Upstream, Weir) {
    let upstream = Upstream::start("app").await;
    let settings =
        "kv = true\n[config]\nkey = \"client\"\n[[config.limits]]\nrequests = 3\nwindow = \"1m\"\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/rate-limit.wasm", RATE_LIMIT),
        ("plugins/rate-limit.toml", settings.as_bytes()),
    ];
    let config = crate::config(&[upstream.addr], "")
        .replace("[server]\n", &format!("[server]\n{trusted}\n"));
    let weir = Weir::start_with_files(&config, &files).await;
    (upstream, weir)
}

/// The statuses of `n` GETs, each with the headers `headers(i)` gives.
async fn statuses(
    weir: &Weir,
    n: usize,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let owned = headers(i);
        let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, _) = weir_tests::get_with(&weir.url("/"), &pairs).await;
        statuses.push(status.as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_client_cannot_pose_as_another_address() {
    let (upstream, weir) = limited_by_client("").await;
    // A new address in every request's forwarding headers: still one client, limited as one.
    let forged = statuses(&weir, 5, |i| {
        vec![
            ("x-forwarded-for", format!("1.2.3.{i}")),
            ("x-real-ip", format!("1.2.3.{i}")),
            ("forwarded", format!("for=1.2.3.{i}")),
            ("x-forwarded-proto", "https".to_owned()),
            ("x-forwarded-host", "evil.test".to_owned()),
        ]
    })
    .await;
    assert_eq!(forged, [200, 200, 200, 429, 429]);
    // The upstream never sees what the client forged: only weir's own forwarding headers.
    for seen in upstream.requests() {
        let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["127.0.0.1"], "{seen:?}");
        assert!(seen.headers.get("x-real-ip").is_none(), "{seen:?}");
        assert!(seen.headers.get("forwarded").is_none(), "{seen:?}");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_eq!(seen.headers["x-forwarded-host"], weir.proxy.to_string());
    }
}

/// rate-limit counts each client in its kv namespace, whose quota is bounded. A client that
/// can choose its key (here a header; an IPv6 client has a /64 of addresses) fills the quota
/// with keys of its own; its next key cannot be stored. Before session 47 that failure
/// counted as a store outage, which `fault_tolerant` (the default) lets through: the key was
/// never counted, so every request with it passed, unlimited. Now such a request gets 503,
/// and a client counted before the quota filled is limited as before.
#[tokio::test(flavor = "multi_thread")]
async fn filling_the_rate_limit_quota_does_not_lift_the_limit() {
    let upstream = Upstream::start("app").await;
    let settings = "kv = { max_keys = 20 }\n[config]\nkey = \"header\"\nheader = \"x-api-key\"\n[[config.limits]]\nrequests = 3\nwindow = \"1m\"\n";
    let files: [(&str, &[u8]); 2] = [
        ("plugins/rate-limit.wasm", RATE_LIMIT),
        ("plugins/rate-limit.toml", settings.as_bytes()),
    ];
    let mut weir = Weir::start_with_files(&crate::config(&[upstream.addr], ""), &files).await;
    let key = |k: String| move |_| vec![("x-api-key", k.clone())];
    assert_eq!(
        statuses(&weir, 4, key("known".into())).await,
        [200, 200, 200, 429]
    );
    // One new key a request until the quota is full: the first ones are counted, then the
    // store refuses new keys.
    let flood = statuses(&weir, 40, |i| vec![("x-api-key", format!("junk-{i}"))]).await;
    let refused = flood.iter().filter(|&&s| s == 503).count();
    assert!(
        refused >= 20 && flood.iter().all(|&s| s == 200 || s == 503),
        "{flood:?}"
    );
    // A key the quota has no room for: never counted, so never let through either.
    assert_eq!(statuses(&weir, 5, key("fresh".into())).await, [503; 5]);
    assert_eq!(statuses(&weir, 1, key("known".into())).await, [429]);
    let line = weir.wait_for_message("rate-limit cannot count").await;
    assert!(line.to_string().contains("quota"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_client_is_the_one_it_names() {
    let (upstream, weir) = limited_by_client("trusted_proxies = [\"127.0.0.1/32\"]").await;
    // The trusted proxy (this test, from 127.0.0.1) appended the client it saw; what that
    // client wrote itself (6.6.6.6, left of it) is not believed.
    let client = |ip: &'static str| {
        move |_| {
            vec![
                ("x-forwarded-for", format!("6.6.6.6, {ip}")),
                ("x-forwarded-proto", "https".to_owned()),
            ]
        }
    };
    assert_eq!(
        statuses(&weir, 4, client("1.1.1.1")).await,
        [200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&weir, 2, client("2.2.2.2")).await,
        [200, 200],
        "another client behind the same proxy has its own budget"
    );
    let seen = upstream.requests().pop().expect("a request");
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(
        xff,
        ["6.6.6.6, 2.2.2.2, 127.0.0.1"],
        "extended with the peer"
    );
    assert_eq!(
        seen.headers["x-forwarded-proto"], "https",
        "the trusted proxy's scheme stands"
    );
}

/// A listener behind a load balancer that speaks the PROXY protocol: the client is whom the
/// header names (what the upstream is told, and what a trusted-proxy check would see); a
/// connection without a header is closed unanswered.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_protocol_listener_takes_the_client_from_the_header() {
    let upstream = Upstream::start("app").await;
    let config = crate::config(&[upstream.addr], "").replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nproxy_protocol = true\n\n[admin]",
    );
    assert!(config.contains("proxy_protocol = true"), "{config}");
    let weir = Weir::start(&config).await;

    let exchange = |bytes: &'static [u8]| async move {
        let mut stream = tokio::net::TcpStream::connect(weir.proxy)
            .await
            .expect("connect");
        stream.write_all(bytes).await.expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
            .await
            .expect("an answer in time")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = exchange(
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\nGET / HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 6.6.6.6\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.requests().pop().expect("a request");
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(
        xff,
        ["203.0.113.7"],
        "the header's client, not the peer or what it wrote"
    );

    // Version 2 (binary), as AWS NLB and HAProxy send it: TCP over IPv6 from 2001:db8::7.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([0x21, 0x21, 0, 36]); // PROXY command, TCP over IPv6, 36 address bytes
    v2.extend([0x20, 0x01, 0x0d, 0xb8]);
    v2.extend([0; 11]);
    v2.push(7); // source 2001:db8::7
    v2.extend([0; 15]);
    v2.push(1); // destination ::1
    v2.extend(51234_u16.to_be_bytes());
    v2.extend(80_u16.to_be_bytes());
    v2.extend(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n");
    let v2: &'static [u8] = Box::leak(v2.into_boxed_slice());
    let answer = exchange(v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.requests().pop().expect("a request");
    assert_eq!(seen.headers["x-forwarded-for"], "2001:db8::7");

    // No header: not HTTP to this listener.
    let answer = exchange(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n").await;
    assert_eq!(answer, "", "closed without an answer");
    assert_eq!(upstream.requests().len(), 2);
}

const AGGREGATE: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/aggregate.wasm"));

/// A route whose `plugins` names a handler (a `wasi:http` component, say a wrong file named
/// like the auth plugin) cannot run it as a filter; it refuses traffic (503) rather than
/// passing requests the operator meant a plugin to see.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_named_in_a_routes_plugins_is_not_silently_skipped() {
    let upstream = Upstream::start("app").await;
    let config = crate::config(&[upstream.addr], "plugins = [\"auth\"]\n");
    let files: [(&str, &[u8]); 1] = [("plugins/auth.wasm", AGGREGATE)];
    let weir = Weir::start_with_files(&config, &files).await;
    let (status, _, body) = weir_tests::get_with(&weir.url("/private"), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        upstream.requests().is_empty(),
        "the request went through unchecked"
    );
}
