//! The edge: TLS listeners (SNI, ALPN, reload, client certificates, the HTTPS redirect),
//! TLS and HTTP/2 to upstreams, and WebSocket upgrades, with real clients — curl, openssl,
//! rustls, a WebSocket client — against real weir processes. Certificates are made in the
//! test by a private CA (`weir_tests::certs`).

use std::process::Command;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{StatusCode, Version};
use tokio_tungstenite::tungstenite::{self, Message};
use weir_tests::certs::{self, Ca};
use weir_tests::{DEADLINE, Upstream, Weir};

use crate::plugin_cache;

/// Runs a command to completion; its stdout, or a failure with its stderr.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_gets_http2_and_http11_over_tls_and_sni_picks_each_name_its_certificate() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let (a, b) = (
        ca.server(&["a.test"], 1),
        ca.server(&["b.test", "*.b.test"], 2),
    );
    let files = certs::leaf_files(&[("a", &a), ("b", &b)]);
    let config = crate::tls_config(upstream.addr, &["a", "b"], "", "");
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    let port = weir.proxy.port();
    let ca_file = weir.dir().join("ca-for-curl.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write ca");

    for (version, flag) in [("2", "--http2"), ("1.1", "--http1.1")] {
        for name in ["a.test", "b.test", "x.b.test"] {
            let out = run(Command::new("curl")
                .args(["-sS", flag, "--cacert"])
                .arg(&ca_file)
                .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
                .args(["-w", "\n%{http_version} %{http_code}"])
                .arg(format!("https://{name}:{port}/api/x")));
            assert!(
                out.ends_with(&format!("\n{version} 200")),
                "{name} {flag}: {out}"
            );
            assert!(out.starts_with("app GET /api/x"), "{out}");
        }
    }
    // The upstream was told the client spoke HTTPS.
    let seen = upstream.requests();
    assert!(
        seen.iter()
            .all(|r| r.headers["x-forwarded-proto"] == "https"),
        "{seen:?}"
    );

    // openssl sees each name's own certificate; no SNI gets the first (the default).
    for (name, subject) in [
        (Some("a.test"), "a.test"),
        (Some("b.test"), "b.test"),
        (None, "a.test"),
    ] {
        let mut s_client = Command::new("sh");
        let sni = name.map_or("-noservername".to_owned(), |n| format!("-servername {n}"));
        s_client.arg("-c").arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} {sni} </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ));
        let out = run(&mut s_client);
        assert!(
            out.contains(&format!("CN = {subject}")) || out.contains(&format!("CN={subject}")),
            "{name:?}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_certificates_serve_new_handshakes_without_a_failed_request_and_garbage_changes_nothing()
 {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let (first, second) = (
        ca.server(&["site.test"], 100),
        ca.server(&["site.test"], 200),
    );
    let files = certs::leaf_files(&[("site", &first)]);
    let config = crate::tls_config(upstream.addr, &["site"], "", "");
    let mut weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    // Full handshakes every time: a resumed session shows the certificate it began with.
    let mut client = (*ca.client_config(&[b"http/1.1"])).clone();
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    let addr = weir.proxy;

    // A client loop on new connections, counting failures, until it has seen `want`.
    let looping = |want: Vec<u8>, client: Arc<rustls::ClientConfig>| async move {
        let started = tokio::time::Instant::now();
        let mut failures = Vec::new();
        let mut requests = 0;
        loop {
            requests += 1;
            match certs::https_get(addr, "site.test", client.clone(), "/loop").await {
                Ok(answer) if answer.status == StatusCode::OK => {
                    if answer.certificate == want {
                        return (requests, failures, started.elapsed());
                    }
                }
                Ok(answer) => failures.push(format!("status {}", answer.status)),
                Err(e) => failures.push(e),
            }
            assert!(
                started.elapsed() < DEADLINE,
                "never saw the new certificate"
            );
        }
    };
    let running = tokio::spawn(looping(certs::der(&second.cert), client.clone()));
    // The key first, then the certificate: between the two the pair does not match, and
    // that is refused while the old pair keeps serving.
    weir.write_and_rename("site.key", second.key.as_bytes());
    weir.write_and_rename("site.pem", second.cert.as_bytes());
    let (requests, failures, took) = running.await.expect("client loop");
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!("the new certificate served after {took:?}, {requests} requests, none failed");

    // Garbage in the certificate file: refused, logged with the file's name; the second
    // certificate keeps serving.
    weir.write_and_rename("site.pem", b"-----BEGIN CERTIFICATE-----\ngarbage\n");
    let refused = weir
        .wait_for_logs(|logs| {
            logs.iter().any(|l| {
                l["fields"]["message"] == "TLS files refused; the previous ones keep serving"
                    && l["fields"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("site.pem"))
            })
        })
        .await;
    assert!(!refused.is_empty());
    for _ in 0..5 {
        let answer = certs::https_get(addr, "site.test", client.clone(), "/after")
            .await
            .expect("still serving");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.certificate, certs::der(&second.cert));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_listener_can_send_every_client_to_https() {
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
redirect_to_https = {{ port = 8443 }}

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["127.0.0.1:9"]

[[routes]]
name = "default"
cluster = "app"
"#,
        cache = plugin_cache().display()
    );
    let weir = Weir::start(&config).await;
    let (status, headers, _) =
        weir_tests::get_with(&weir.url("/a/b?c=d"), &[("host", "example.test")]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "https://example.test:8443/a/b?c=d");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_required_when_configured() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let clients = Ca::new("client CA");
    let server = ca.server(&["m.test"], 1);
    let alice = clients.client("alice");
    let mut files = certs::leaf_files(&[("m", &server), ("alice", &alice)]);
    files.push(("clients.pem".into(), clients.pem.as_bytes().to_vec()));
    files.push(("ca.pem".into(), ca.pem.as_bytes().to_vec()));
    let config = crate::tls_config(
        upstream.addr,
        &["m"],
        ", client_auth = { ca = \"clients.pem\", required = true }",
        "",
    );
    files.push((
        "plugins/tls.wasm".into(),
        std::fs::read(env!("TEST_PLUGIN_V0_3_2_WASM")).expect("the 0.3.2 test plugin"),
    ));
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    let port = weir.proxy.port();
    let curl = |with_cert: bool, path: &str| {
        let mut command = Command::new("curl");
        command
            .current_dir(weir.dir())
            .args(["-sS", "--cacert", "ca.pem"])
            .args(["--resolve", &format!("m.test:{port}:127.0.0.1")]);
        if with_cert {
            command.args(["--cert", "alice.pem", "--key", "alice.key"]);
        }
        command.arg(format!("https://m.test:{port}{path}"));
        command.output().expect("curl")
    };
    let refused = curl(false, "/");
    assert!(
        !refused.status.success(),
        "a client without a certificate got through"
    );
    let accepted = curl(true, "/app");
    assert_eq!(String::from_utf8_lossy(&accepted.stdout), "app GET /app");
    // A plugin on the 0.3.2 contract (frozen in wit/0.3.2, so this also proves a 0.3.2
    // plugin runs unchanged on the 0.3.7 host) is told the verified client's subject.
    let told = curl(true, "/tls");
    assert_eq!(
        String::from_utf8_lossy(&told.stdout),
        "TLSv1.3 m.test CN=alice"
    );
}

/// `client_auth.crl`: a client certificate its CA revoked is refused at the handshake while
/// another from the same CA gets through; a CRL file that is not one fails `weir check`
/// naming the file.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_client_certificates_are_refused() {
    let upstream = Upstream::start("app").await;
    let ca = Ca::new("weir test CA");
    let clients = Ca::new("client CA");
    let server = ca.server(&["m.test"], 1);
    let alice = clients.client_numbered("alice", 10);
    let mallory = clients.client_numbered("mallory", 11);
    let mut files = certs::leaf_files(&[("m", &server), ("alice", &alice), ("mallory", &mallory)]);
    files.push(("clients.pem".into(), clients.pem.as_bytes().to_vec()));
    files.push(("ca.pem".into(), ca.pem.as_bytes().to_vec()));
    files.push(("revoked.pem".into(), clients.crl(&[11]).into_bytes()));
    let config = crate::tls_config(
        upstream.addr,
        &["m"],
        ", client_auth = { ca = \"clients.pem\", required = true, crl = \"revoked.pem\" }",
        "",
    );
    let weir = Weir::start_with_files(&config, &certs::as_refs(&files)).await;
    let port = weir.proxy.port();
    let curl = |who: &str| {
        Command::new("curl")
            .current_dir(weir.dir())
            .args(["-sS", "--cacert", "ca.pem"])
            .args(["--resolve", &format!("m.test:{port}:127.0.0.1")])
            .args([
                "--cert",
                &format!("{who}.pem"),
                "--key",
                &format!("{who}.key"),
            ])
            .arg(format!("https://m.test:{port}/app"))
            .output()
            .expect("curl")
    };
    let alice = curl("alice");
    assert_eq!(
        String::from_utf8_lossy(&alice.stdout),
        "app GET /app",
        "{}",
        String::from_utf8_lossy(&alice.stderr)
    );
    let mallory = curl("mallory");
    assert!(
        !mallory.status.success() && mallory.stdout.is_empty(),
        "a revoked certificate got through: {mallory:?}"
    );

    // A CRL file that holds no CRL is refused by `weir check`, naming the file.
    std::fs::write(weir.dir().join("revoked.pem"), clients.pem.as_bytes()).expect("write");
    let check = Command::new(weir_tests::weir::weir_bin())
        .args(["check", "--config"])
        .arg(weir.dir().join("weir.toml"))
        .output()
        .expect("weir check");
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{said}");
    assert!(said.contains("revoked.pem"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_verifies_against_the_cluster_ca_and_negotiates_http2() {
    let ca = Ca::new("upstream CA");
    let leaf = ca.server(&["backend.test"], 7);
    let upstream = Upstream::start_tls("secure", leaf.server_config(&[b"h2", b"http/1.1"])).await;
    let stranger = Ca::new("someone else");
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "trusted"
endpoints = ["https://{addr}"]
tls = {{ ca = "upstream-ca.pem", sni = "backend.test" }}

[[clusters]]
name = "untrusted"
endpoints = ["https://{addr}"]
tls = {{ ca = "other-ca.pem", sni = "backend.test" }}
retries = 0

[[clusters]]
name = "pinned"
endpoints = ["https://{addr}"]
protocol = "http1"
tls = {{ pinned = "backend.pem", sni = "backend.test" }}

[[routes]]
name = "trusted"
path_prefix = "/trusted"
cluster = "trusted"

[[routes]]
name = "untrusted"
path_prefix = "/untrusted"
cluster = "untrusted"

[[routes]]
name = "pinned"
path_prefix = "/pinned"
cluster = "pinned"
"#,
        addr = upstream.addr,
        cache = plugin_cache().display()
    );
    let files: [(&str, &[u8]); 3] = [
        ("upstream-ca.pem", ca.pem.as_bytes()),
        ("other-ca.pem", stranger.pem.as_bytes()),
        ("backend.pem", leaf.cert.as_bytes()),
    ];
    let mut weir = Weir::start_with_files(&config, &files).await;

    let (status, _, body) = weir_tests::get_with(&weir.url("/trusted/a"), &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "secure GET /trusted/a")
    );
    let (status, _, body) = weir_tests::get_with(&weir.url("/pinned/b"), &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "secure GET /pinned/b")
    );
    let versions: Vec<Version> = upstream.requests().iter().map(|r| r.version).collect();
    // auto over TLS: ALPN chose HTTP/2; the pinned cluster asked for HTTP/1.1.
    assert_eq!(versions, [Version::HTTP_2, Version::HTTP_11]);

    let (status, _, _) = weir_tests::get_with(&weir.url("/untrusted/c"), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let logs = weir
        .wait_for_logs(|logs| {
            logs.iter()
                .any(|l| l["fields"]["message"] == "request failed")
        })
        .await;
    let failed = logs
        .iter()
        .find(|l| l["fields"]["message"] == "request failed")
        .expect("a failure line");
    let cause = failed["fields"]["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("TLS handshake") && cause.contains("UnknownIssuer"),
        "{failed}"
    );
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_cluster_speaks_http2_over_one_shared_connection() {
    let upstream = Upstream::start("h2c").await;
    let config = crate::config(&[upstream.addr], "").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nprotocol = \"h2c\"",
    );
    let weir = Weir::start(&config).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = weir.url(&format!("/many/{i}"));
        tasks.spawn(async move { weir_tests::get_with(&url, &[]).await });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, _, body) = done.expect("request");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|r| r.version == Version::HTTP_2));
    // Every request on streams of few connections, not one connection each.
    let clusters = weir.clusters().await;
    let open = clusters[0]["open_connections"].as_u64();
    assert!(open.is_some_and(|n| n <= 2), "{clusters}");
}

/// A WebSocket echo server on 127.0.0.1:0 (tungstenite's server side): answers every text
/// message with `echo: MESSAGE`.
pub(crate) async fn websocket_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let reply = format!("echo: {text}");
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The next message on `ws`, within the deadline.
async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a message in time")
        .expect("a message")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_passes_key_auth_and_echoes_both_ways() {
    let echo = websocket_echo().await;
    let files = crate::key_auth_files();
    let weir = Weir::start_with_files(&crate::config(&[echo], ""), &files).await;
    let url = format!("ws://{}/chat", weir.proxy);

    // Without a key, key-auth refuses the handshake like any request.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected a 401, got {other:?}"),
    }

    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).expect("request");
    request
        .headers_mut()
        .insert("x-api-key", http::HeaderValue::from_static("alice-key"));
    let (mut ws, response) =
        tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .expect("in time")
            .expect("handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "second message", "third"] {
        ws.send(Message::text(text)).await.expect("send");
        let reply = next_message(&mut ws).await;
        assert_eq!(reply, Message::text(format!("echo: {text}")));
    }
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_is_closed_after_the_upgrade_idle_timeout() {
    let echo = websocket_echo().await;
    let config = crate::config_with(&[echo], "", "upgrade_idle_timeout = \"300ms\"", "");
    let weir = Weir::start(&config).await;
    let url = format!("ws://{}/idle", weir.proxy);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("handshake");
    ws.send(Message::text("before")).await.expect("send");
    let reply = ws.next().await.expect("message").expect("ok");
    assert_eq!(reply, Message::text("echo: before"));
    // Silent both ways: weir closes the tunnel, and the client's stream ends.
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel stayed open");
}

/// A WebSocket over HTTP/2 through `weir`: an HTTP/2 client (cleartext, prior knowledge) on
/// one connection, and the RFC 8441 extended CONNECT to `/chat` it opened on it, after an
/// `OPTIONS warm` so that weir's SETTINGS have arrived.
pub(crate) async fn websocket_over_http2(
    weir: &Weir,
    warm: &str,
) -> (
    hyper::client::conn::http2::SendRequest<weir_tests::ClientBody>,
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let tcp = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    // A first exchange, so weir's SETTINGS (extended CONNECT enabled) have arrived.
    let _ = sender
        .send_request(
            http::Request::options(format!("http://{}{warm}", weir.proxy))
                .body(weir_tests::empty())
                .expect("request"),
        )
        .await;

    // RFC 8441: CONNECT with :protocol websocket; weir asks the endpoint in HTTP/1.1.
    let mut request = http::Request::connect(format!("http://{}/chat", weir.proxy))
        .header("sec-websocket-version", "13")
        .body(weir_tests::empty())
        .expect("request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let stream = hyper::upgrade::on(&mut response).await.expect("upgraded");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(stream), Role::Client, None).await;
    (sender, ws)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_http2_reaches_an_http11_endpoint() {
    let echo = websocket_echo().await;
    let weir = Weir::start(&crate::config(&[echo], "")).await;
    let (_sender, mut ws) = websocket_over_http2(&weir, "/warm").await;
    for text in ["over", "http/2"] {
        ws.send(Message::text(text)).await.expect("send");
        let reply = next_message(&mut ws).await;
        assert_eq!(reply, Message::text(format!("echo: {text}")));
    }
}

/// A WebSocket over HTTP/2 is a stream kept open: its connection outlives `idle_timeout`
/// while the tunnel is open (other connections, idle meanwhile, are closed), and is sent
/// GOAWAY and closed once the tunnel has closed.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_tunnel_keeps_its_connection_past_the_idle_timeout() {
    let echo = websocket_echo().await;
    let config = crate::config_with(&[echo], "", "idle_timeout = \"300ms\"", "");
    let weir = Weir::start(&config).await;
    let (sender, mut ws) = websocket_over_http2(&weir, "/warm").await;
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(next_message(&mut ws).await, Message::text("echo: before"));

    // Two connections that say nothing after their preface, closed in turn at the idle
    // timeout: the tunnel's connection has been quiet twice that long.
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(weir.proxy)
            .await
            .expect("connect");
        let frames = weir_tests::http2::Raw::start(tcp)
            .await
            .until_closed()
            .await;
        assert!(
            frames
                .iter()
                .any(|f| f.go_away_code() == Some(weir_tests::http2::NO_ERROR)),
            "{frames:?}"
        );
    }
    ws.send(Message::text("after")).await.expect("send");
    assert_eq!(next_message(&mut ws).await, Message::text("echo: after"));
    assert!(!sender.is_closed(), "the tunnel's connection was closed");

    // The tunnel closed, the connection is idle: closed in its turn.
    ws.close(None).await.expect("close");
    drop(ws);
    let started = tokio::time::Instant::now();
    while !sender.is_closed() {
        assert!(
            started.elapsed() < DEADLINE,
            "still open after the tunnel closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weir_presents_its_client_certificate_and_health_checks_speak_tls() {
    let ca = Ca::new("upstream CA");
    let weirs = Ca::new("proxies");
    let leaf = ca.server(&["mtls.test"], 9);
    let upstream =
        Upstream::start_tls("mtls", leaf.server_config_requiring(&weirs, &[b"http/1.1"])).await;
    let proxy_cert = weirs.client("weir-proxy");
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "with-cert"
endpoints = ["https://{addr}"]
tls = {{ ca = "ca.pem", sni = "mtls.test", client_cert = {{ cert = "proxy.pem", key = "proxy.key" }} }}
health_check = {{ path = "/healthz", interval = "100ms", unhealthy_threshold = 1 }}

[[clusters]]
name = "without"
endpoints = ["https://{addr}"]
tls = {{ ca = "ca.pem", sni = "mtls.test" }}
retries = 0

[[routes]]
name = "with"
path_prefix = "/with"
cluster = "with-cert"

[[routes]]
name = "without"
path_prefix = "/without"
cluster = "without"
"#,
        addr = upstream.addr,
        cache = plugin_cache().display()
    );
    let files: [(&str, &[u8]); 3] = [
        ("ca.pem", ca.pem.as_bytes()),
        ("proxy.pem", proxy_cert.cert.as_bytes()),
        ("proxy.key", proxy_cert.key.as_bytes()),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let (status, _, body) = weir_tests::get_with(&weir.url("/with/x"), &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "mtls GET /with/x")
    );
    let (status, _, _) = weir_tests::get_with(&weir.url("/without/y"), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // The health check reached the endpoint through the same TLS, certificate included.
    let started = tokio::time::Instant::now();
    while !upstream
        .requests()
        .iter()
        .any(|r| r.uri.path() == "/healthz")
    {
        assert!(started.elapsed() < DEADLINE, "no health check arrived");
        upstream
            .wait_for_requests(upstream.requests().len() + 1)
            .await;
    }
    let clusters = weir.clusters().await;
    assert_eq!(clusters[0]["endpoints"][0]["healthy"], true, "{clusters}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_an_open_websocket_and_exits_when_it_closes() {
    let echo = websocket_echo().await;
    // The drain timeout is long: weir exiting before it means it saw the tunnel close.
    let config =
        crate::config(&[echo], "").replace("drain_timeout = \"10s\"", "drain_timeout = \"60s\"");
    let mut weir = Weir::start(&config).await;
    let url = format!("ws://{}/drain", weir.proxy);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("handshake");
    weir.signal(nix::sys::signal::Signal::SIGTERM);
    weir.wait_for_message("draining").await;
    // Draining: no new connections, and the open tunnel still carries messages.
    ws.send(Message::text("still here")).await.expect("send");
    let reply = next_message(&mut ws).await;
    assert_eq!(reply, Message::text("echo: still here"));
    assert!(
        tokio::net::TcpStream::connect(weir.proxy).await.is_err(),
        "a draining weir accepted a new connection"
    );
    // The client closes its WebSocket: the tunnel ends, and weir with it.
    ws.close(None).await.expect("close");
    drop(ws);
    let status = weir.wait_exit().await;
    assert!(status.success(), "{status:?}");
    let logs = weir.logs();
    assert!(
        !logs
            .iter()
            .any(|l| l["fields"]["message"] == "drain timed out; closing remaining connections"),
        "weir waited for the drain timeout instead of the tunnel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_at_the_connection_cap_share_the_http2_connection_when_it_opens() {
    // One connection allowed: the first request opens it; the others, arriving meanwhile,
    // wait at the cap and must be woken to share it, not left to time out.
    let upstream = Upstream::start_with_delay("h2c", std::time::Duration::from_millis(300)).await;
    let config = crate::config(&[upstream.addr], "").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nprotocol = \"h2c\"\nmax_connections = 1\nresponse_timeout = \"5s\"\nretries = 0",
    );
    let weir = Weir::start(&config).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let url = weir.url(&format!("/wait/{i}"));
        tasks.spawn(async move { weir_tests::get_with(&url, &[]).await });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, _, body) = done.expect("request");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(weir.clusters().await[0]["open_connections"], 1);
}
