//! Attacks on the response cache (docs/design/response-cache.md) through a real weir, by
//! someone who wants to poison or abuse a shared cache: unkeyed inputs the upstream reflects,
//! host and path spellings, the plugin key's space separator, web cache deception, request
//! smuggling and response desync, conditional, `HEAD` and `Range` requests, hop-by-hop
//! headers, numbers that overflow, memory and lock abuse, auth and purge, and upstream
//! failures. Each test fails if the defence it attacks is removed.
//!
//! Upstreams are scripted (`Scripted`, hyper) or raw TCP (`RawOrigin`, for answers no HTTP
//! library would write); clients are hyper's or raw TCP (for requests no HTTP library would
//! write). Every request sends `Host: cache.test` unless it says otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use weir_tests::raw::{self, Framing, find};
use weir_tests::scripted::Answer;
use weir_tests::{ClientBody, DEADLINE, Weir, http1_client, metric};

use crate::cache_harness::{HOST, Origin, Reply, config, header, route, target, try_request};

/// The admin token of the purge test.
const TOKEN: &str = "cache-attacks-admin-t0ken";

/// The SDK test guest that adds `x-tenant` to the cache key (tests/plugins/cache_key).
const CACHE_KEY: &[u8] = include_bytes!(env!("TEST_PLUGIN_CACHE_KEY_WASM"));

// ---------------------------------------------------------------------------------------
// Harness: config, a scripted origin, a raw origin, clients.
// ---------------------------------------------------------------------------------------

/// The catch-all route `cached` with `cache = {}`.
fn cached_route() -> String {
    route("cached", "cache = {}")
}

/// `method path` on weir's proxy listener with `headers` and `body` (`Host: cache.test`
/// unless `headers` name a host); an error if the exchange fails (weir closed the
/// connection, say).
async fn try_send_body(
    weir: &Weir,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: ClientBody,
) -> Result<Reply, String> {
    try_request(&http1_client(), method, &weir.url(path), headers, body).await
}

async fn try_send(
    weir: &Weir,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    try_send_body(weir, method, path, headers, weir_tests::empty()).await
}

async fn send(weir: &Weir, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_send(weir, method.clone(), path, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} {headers:?}: {e}"))
}

async fn get(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(weir, Method::GET, path, headers).await
}

/// GETs `path` every 100 ms while the answer is a fresh hit; returns the first that is not.
async fn get_once_stale(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> Reply {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = get(weir, path, headers).await;
        if !reply.is_fresh_hit() {
            return reply;
        }
        assert!(Instant::now() < deadline, "{path} never went stale");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// weir's panics, from its log: each `panicked at` line, the message after it, and the first
/// of weir's own frames in the backtrace.
fn panics(weir: &Weir) -> Vec<String> {
    let lines: Vec<String> = weir
        .logs()
        .iter()
        .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
        .collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("panicked at") {
            continue;
        }
        let message = lines.get(i + 1).cloned().unwrap_or_default();
        let frame = lines[i + 1..]
            .iter()
            .take_while(|l| !l.contains("panicked at"))
            .find(|l| l.contains(" weir::"))
            .map_or_else(String::new, |l| l.trim().to_owned());
        found.push(format!("{} | {message} | {frame}", line.trim()));
    }
    found
}

/// Writes `bytes` to `addr` and reads until the connection closes (at most 10 s).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw::exchange(addr, bytes, Duration::from_secs(10)).await
}

/// The responses in `bytes`, framed as RFC 9112 says, and what is left over.
fn parse_responses(bytes: &[u8]) -> (Vec<raw::Response>, Vec<u8>) {
    raw::responses(bytes, Framing::Rfc)
}

/// `GET path` as raw text with `Host: cache.test`; `close` adds `Connection: close`.
fn raw_get(path: &str, close: bool) -> String {
    let close = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{close}\r\n")
}

// ---- Raw TCP origin ---------------------------------------------------------------------

/// One request as the raw origin read it.
#[derive(Debug, Clone)]
struct RawRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the raw origin writes for one request, and whether it closes the connection after.
struct RawAnswer {
    bytes: Vec<u8>,
    close: bool,
}

impl RawAnswer {
    fn keep(bytes: impl Into<Vec<u8>>) -> RawAnswer {
        RawAnswer {
            bytes: bytes.into(),
            close: false,
        }
    }

    fn close(bytes: impl Into<Vec<u8>>) -> RawAnswer {
        RawAnswer {
            bytes: bytes.into(),
            close: true,
        }
    }
}

/// `200` with `headers` (each line without its CRLF) and `body`, framed by `Content-Length`.
fn raw_ok(headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
    for line in headers {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

type RawScript = dyn Fn(&RawRequest, usize) -> RawAnswer + Send + Sync;

/// An upstream on raw TCP: it reads HTTP/1.1 requests (keep-alive) and writes whatever bytes
/// the script returns.
struct RawOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawOrigin {
    /// Answers each request with `answer(request, n)`, `n` the number of earlier requests
    /// for the same target.
    async fn start(
        answer: impl Fn(&RawRequest, usize) -> RawAnswer + Send + Sync + 'static,
    ) -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
        let script: Arc<RawScript> = Arc::new(answer);
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_raw(stream, script.clone(), record.clone()));
            }
        });
        RawOrigin { addr, seen, task }
    }

    fn count(&self, target: &str) -> usize {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|r| r.target == target)
            .count()
    }
}

async fn serve_raw(
    mut stream: TcpStream,
    script: Arc<RawScript>,
    seen: Arc<Mutex<Vec<RawRequest>>>,
) {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        let n = {
            let mut seen = seen.lock().expect("seen");
            let n = seen.iter().filter(|r| r.target == request.target).count();
            seen.push(request.clone());
            n
        };
        let answer = script(&request, n);
        if stream.write_all(&answer.bytes).await.is_err() {
            return;
        }
        if answer.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads more bytes into `buffer`; `None` at the end of the stream.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buffer.extend_from_slice(&chunk[..n]);
    Some(())
}

/// The position of the next CRLF in `buffer`, reading as needed.
async fn line_end(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = find(buffer, b"\r\n") {
            return Some(at);
        }
        read_more(stream, buffer).await?;
    }
}

/// Reads until `buffer` holds at least `len` bytes.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, len: usize) -> Option<()> {
    while buffer.len() < len {
        read_more(stream, buffer).await?;
    }
    Some(())
}

/// The next request on the connection (its body by `Content-Length` or chunked).
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<RawRequest> {
    let end = loop {
        if let Some(at) = find(buffer, b"\r\n\r\n") {
            break at;
        }
        read_more(stream, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    buffer.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = RawRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        fill(stream, buffer, len).await?;
        request.body = buffer.drain(..len).collect();
    } else if request
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let at = line_end(stream, buffer).await?;
            let size_text = String::from_utf8_lossy(&buffer[..at]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buffer.drain(..at + 2);
            if size == 0 {
                loop {
                    let at = line_end(stream, buffer).await?;
                    buffer.drain(..at + 2);
                    if at == 0 {
                        break;
                    }
                }
                break;
            }
            fill(stream, buffer, size + 2).await?;
            request.body.extend(buffer.drain(..size));
            buffer.drain(..2);
        }
    }
    Some(request)
}

// ---------------------------------------------------------------------------------------
// Unkeyed inputs
// ---------------------------------------------------------------------------------------

/// An upstream that reflects forwarding headers into a stored page: a client's forged
/// `X-Forwarded-Host`, `X-Forwarded-Proto`, `X-Forwarded-Prefix`, `X-Forwarded-Port`,
/// `Forwarded` and `X-Real-IP` never reach it (weir strips them from untrusted peers and
/// writes its own), so the page stored on the attacker's miss and served to the victim
/// carries only weir's values.
#[tokio::test(flavor = "multi_thread")]
async fn forged_forwarding_headers_never_reach_a_stored_page() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!(
                "#{n} xfh={} xfp={} xfprefix={} xfport={} fwd={} realip={}",
                header(head, "x-forwarded-host"),
                header(head, "x-forwarded-proto"),
                header(head, "x-forwarded-prefix"),
                header(head, "x-forwarded-port"),
                header(head, "forwarded"),
                header(head, "x-real-ip"),
            ))
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;

    let attack = get(
        &weir,
        "/home",
        &[
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-port", "6666"),
            ("forwarded", "for=6.6.6.6;host=evil.test;proto=https"),
            ("x-real-ip", "6.6.6.6"),
        ],
    )
    .await;
    assert!(attack.was_stored(), "{attack:?}");
    let victim = get(&weir, "/home", &[]).await;
    assert!(victim.is_fresh_hit(), "{victim:?}");
    let page = victim.text();
    assert_eq!(
        page, "#0 xfh=cache.test xfp=http xfprefix= xfport= fwd= realip=",
        "the stored page reflects what the attacker forged"
    );
    for head in origin.all() {
        let text = format!("{:?}", head.headers);
        assert!(
            !text.contains("evil") && !text.contains("6.6.6.6") && !text.contains("6666"),
            "a forged header reached the upstream: {text}"
        );
    }
}

/// Behind a trusted proxy (a TLS-terminating load balancer), weir passes the proxy's
/// `X-Forwarded-Proto` and `X-Forwarded-Host` to the upstream, which answers by them: a
/// plain-HTTP visitor gets a redirect to HTTPS, an HTTPS visitor the page, each host its
/// own page. The key must tell them apart, as the design says the scheme is keyed for
/// ("keeps a plain-HTTP listener's redirect to HTTPS from being served to HTTPS clients"):
/// otherwise one plain-HTTP request stores a redirect every HTTPS visitor then loops on.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_forwarded_scheme_and_host_are_keyed() {
    let origin = Origin::start(|head, _| {
        let host = header(head, "x-forwarded-host");
        if header(head, "x-forwarded-proto") == "https" {
            Answer::status(200)
                .header("cache-control", "max-age=60")
                .body(format!("secure page of {host}"))
        } else {
            Answer::status(301)
                .header("cache-control", "max-age=60")
                .header("location", &format!("https://{host}/login"))
        }
    })
    .await;
    let weir = Weir::start(&config(
        origin.addr(),
        "",
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &cached_route(),
    ))
    .await;

    // The load balancer forwards a plain-HTTP visitor (the attacker, or anyone).
    let plain = get(
        &weir,
        "/login",
        &[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "shop.test"),
        ],
    )
    .await;
    assert_eq!(plain.status, StatusCode::MOVED_PERMANENTLY, "{plain:?}");
    // Then an HTTPS visitor of the same host: the page, not the redirect to itself.
    let secure = get(
        &weir,
        "/login",
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.test"),
        ],
    )
    .await;
    assert_eq!(
        (secure.status, secure.text().as_str()),
        (StatusCode::OK, "secure page of shop.test"),
        "an HTTPS visitor got the plain-HTTP visitor's stored redirect (a redirect loop): \
         the trusted X-Forwarded-Proto the upstream answered by is not in the key: {secure:?}"
    );
    // And another host behind the same balancer gets its own page.
    let other = get(
        &weir,
        "/login",
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "other.test"),
        ],
    )
    .await;
    assert_eq!(
        other.text(),
        "secure page of other.test",
        "one host's stored page served for another: the trusted X-Forwarded-Host the upstream \
         answered by is not in the key: {other:?}"
    );
}

/// Host spellings: `A.TEST` shares `a.test`'s entry (hosts are case-insensitive); a port or
/// a trailing dot may make a key of its own but never serves another host's page; the
/// absolute-form target's host wins over `Host` for the key as for routing; and hosts that
/// could splice into the key (`/`, a space, userinfo, two `Host`s) are refused.
#[tokio::test(flavor = "multi_thread")]
async fn host_spellings_never_serve_one_hosts_page_for_another() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("for {} #{n}", header(head, "host")))
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    // The host a body was fetched for, normalised as the router does.
    let normal = |host: &str| {
        let host = host.to_ascii_lowercase();
        let host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        host.trim_end_matches('.').to_owned()
    };
    let body_host = |body: &str| -> String {
        let host = body
            .strip_prefix("for ")
            .and_then(|b| b.split(' ').next())
            .unwrap_or("");
        normal(host)
    };

    let a = get(&weir, "/h", &[("host", "a.test")]).await;
    assert!(a.was_stored(), "{a:?}");
    let upper = get(&weir, "/h", &[("host", "A.TEST")]).await;
    assert!(upper.is_fresh_hit(), "A.TEST is a.test, one key: {upper:?}");
    assert_eq!(upper.text(), a.text());
    for host in [
        "a.test:80",
        "a.test.",
        "A.Test.:8080",
        "b.test",
        "B.TEST:80",
    ] {
        let reply = get(&weir, "/h", &[("host", host)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}: {reply:?}");
        assert_eq!(
            body_host(&reply.text()),
            normal(host),
            "Host {host} was served another host's page: {reply:?}"
        );
    }

    // Absolute form: the target's host is the request's host, for the key as for the upstream.
    for (target, host, expected) in [
        ("http://b.test/h", "a.test", "b.test"),
        ("http://a.test/h", "b.test", "a.test"),
        ("http://c.test/h", "a.test", "c.test"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let raw = raw_exchange(weir.proxy, request.as_bytes()).await;
        let (responses, _) = parse_responses(&raw);
        let [response] = responses.as_slice() else {
            panic!(
                "{target} with Host {host}: {}",
                String::from_utf8_lossy(&raw)
            );
        };
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(
            body_host(&response.text()),
            expected,
            "GET {target} with Host {host}: {response:?}"
        );
    }

    // Hosts that are not hosts.
    let before = origin.all().len();
    for host_lines in [
        "Host: a.test/h",
        "Host: a b.test",
        "Host: x@a.test",
        "Host: a.test\r\nHost: b.test",
        "Host: a.test:80:80",
    ] {
        let request = format!("GET /h HTTP/1.1\r\n{host_lines}\r\nConnection: close\r\n\r\n");
        let raw = raw_exchange(weir.proxy, request.as_bytes()).await;
        let (responses, _) = parse_responses(&raw);
        assert!(
            responses.first().is_some_and(|r| r.status == 400),
            "{host_lines:?}: {}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert_eq!(
        origin.all().len(),
        before,
        "a refused host reached the upstream"
    );
    // The stored pages are intact.
    let a = get(&weir, "/h", &[("host", "a.test")]).await;
    assert!(
        a.is_fresh_hit() && body_host(&a.text()) == "a.test",
        "{a:?}"
    );
    let b = get(&weir, "/h", &[("host", "b.test")]).await;
    assert!(
        b.is_fresh_hit() && body_host(&b.text()) == "b.test",
        "{b:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Path confusion and the plugin key
// ---------------------------------------------------------------------------------------

/// Every spelling of a path shares the entry of its normal form and is answered with the
/// resource that form names; query spellings stay apart (`?` and an encoded `?` never meet
/// the query they look like); escaped slashes are refused. And dot segments cannot carry a
/// request past the auth of the route its normal form names, warm entry or not.
#[tokio::test(flavor = "multi_thread")]
async fn path_spellings_share_the_normal_forms_entry_and_nothing_else() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)))
    })
    .await;
    let routes = format!(
        "\n[[routes]]\nname = \"private\"\npath_prefix = \"/private\"\ncluster = \"app\"\nplugins = [\"key-auth\"]\ncache = {{}}\n{}",
        route("public", "plugins = []\ncache = {}")
    );
    let weir = Weir::start_with_files(
        &config(origin.addr(), "", "", &routes),
        &crate::key_auth_files(),
    )
    .await;

    let spellings = [
        ("/pub/x", "/pub/x"),
        ("/pub/./x", "/pub/x"),
        ("/pub/y/../x", "/pub/x"),
        ("//pub//x", "/pub/x"),
        ("/%70ub/x", "/pub/x"),
        ("/pub/y/%2e%2e/x", "/pub/x"),
        ("/pub/%2E/x", "/pub/x"),
        ("/../pub/x", "/pub/x"),
        ("/pub/x?a=1", "/pub/x?a=1"),
        ("/pub/x%3Fa=1", "/pub/x%3Fa=1"),
        ("/pub/x?", "/pub/x?"),
        ("/pub/x?a=1&a=2", "/pub/x?a=1&a=2"),
        ("/pub/x?a=2&a=1", "/pub/x?a=2&a=1"),
        ("/pub/y/..%3Fa=1", "/pub/y/..%3Fa=1"),
    ];
    for round in 0..2 {
        for (spelling, normal) in spellings {
            let reply = get(&weir, spelling, &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{spelling}: {reply:?}");
            let served = reply.text();
            assert_eq!(
                served.split(" #").next(),
                Some(normal),
                "round {round}: {spelling} was answered with another resource: {reply:?}"
            );
        }
    }
    assert_eq!(origin.count("/pub/x"), 1, "one entry for every spelling");
    // An escaped slash is refused: it could name one path to the router and another to the
    // upstream.
    for spelling in ["/pub%2Fx", "/pub%5cx", "/private%2Fdata"] {
        let reply = get(&weir, spelling, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{spelling}: {reply:?}"
        );
    }

    // alice warms the private entry; dot segments from the public side do not reach it.
    let alice = get(&weir, "/private/data", &[("x-api-key", "alice-key")]).await;
    assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
    for spelling in [
        "/private/data",
        "/pub/../private/data",
        "/pub/%2e%2e/private/data",
        "//private/data",
        "/%70rivate/data",
    ] {
        for (method, extra) in [
            (Method::GET, None),
            (Method::HEAD, None),
            (Method::GET, Some(("cache-control", "only-if-cached"))),
            (Method::GET, Some(("x-api-key", "wrong-key"))),
        ] {
            let headers: Vec<(&str, &str)> = extra.into_iter().collect();
            let reply = send(&weir, method.clone(), spelling, &headers).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {spelling} {headers:?} skipped key-auth: {reply:?}"
            );
            assert!(!reply.text().contains("/private"), "{reply:?}");
        }
    }
    assert_eq!(origin.count("/private/data"), 1);
}

/// The plugin key's separator is a space: a request target cannot hold one (a literal space
/// is a 400, `%20` stays escaped), so no URL's key equals another URL's key with a tenant's
/// part (`http://cache.test/page a`), and a tenant whose name has a space keeps its own copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_space_in_the_target_cannot_forge_a_tenants_key() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!(
                "{} for tenant [{}] #{n}",
                target(head),
                header(head, "x-tenant")
            ))
    })
    .await;
    let routes = route("keyed", "plugins = [\"keyed\"]\ncache = {}");
    let weir = Weir::start_with_files(
        &config(origin.addr(), "", "", &routes),
        &[("plugins/keyed.wasm", CACHE_KEY)],
    )
    .await;

    let tenant = get(&weir, "/page", &[("x-tenant", "a")]).await;
    assert!(tenant.was_stored(), "{tenant:?}");
    assert!(tenant.text().starts_with("/page for tenant [a]"));

    // A literal space in the target, or a tab: refused before any key is made.
    let before = origin.all().len();
    for line in [
        "GET /page a HTTP/1.1",
        "GET /page\ta HTTP/1.1",
        "GET /page?x a HTTP/1.1",
    ] {
        let request = format!("{line}\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        let raw = raw_exchange(weir.proxy, request.as_bytes()).await;
        let (responses, _) = parse_responses(&raw);
        assert!(
            responses.first().is_some_and(|r| r.status == 400),
            "{line:?}: {}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert_eq!(origin.all().len(), before);

    // Escaped spaces stay escaped: keys of their own, never tenant a's copy.
    for spelling in ["/page%20a", "/page?%20a", "/page?+a"] {
        let reply = get(&weir, spelling, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(
            !reply.text().contains("tenant [a]"),
            "{spelling} was answered with tenant a's copy of /page: {reply:?}"
        );
    }
    // A tenant name with a space is a tenant of its own.
    let spaced = get(&weir, "/page", &[("x-tenant", "a b")]).await;
    assert!(
        spaced.text().contains("tenant [a b]"),
        "tenant `a b` got another's copy: {spaced:?}"
    );
    let again = get(&weir, "/page", &[("x-tenant", "a")]).await;
    assert!(
        again.is_fresh_hit() && again.text() == tenant.text(),
        "{again:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Web cache deception and credentials
// ---------------------------------------------------------------------------------------

/// Web cache deception: a private page under a static-looking name (`/account/x.css`) is
/// never stored when the upstream marks it `private`, gives no freshness, sets a cookie,
/// answers a request with `Authorization` without `public`; and when it varies on `Cookie`
/// or `Authorization`, the victim's copy is kept for the victim's credentials only.
#[tokio::test(flavor = "multi_thread")]
async fn private_pages_under_static_names_never_reach_another_client() {
    let origin = Origin::start(|head, n| {
        let who = format!(
            "cookie[{}] auth[{}] #{n}",
            header(head, "cookie"),
            header(head, "authorization")
        );
        let answer = Answer::status(200)
            .header("content-type", "text/css")
            .body(format!("secret {who}"));
        match head.uri.path() {
            "/account/private.css" => answer.header("cache-control", "private, max-age=600"),
            "/account/private-qualified.css" => {
                answer.header("cache-control", "max-age=600, private=\"set-cookie\"")
            }
            "/account/no-freshness.css" => {
                answer.header("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT")
            }
            "/account/cookie.css" => answer
                .header("cache-control", "public, max-age=600")
                .header("set-cookie", "session=fresh; HttpOnly"),
            "/account/authorized.css" => answer.header("cache-control", "max-age=600"),
            "/account/vary-cookie.css" => answer
                .header("cache-control", "max-age=600")
                .header("vary", "Cookie"),
            "/account/vary-auth.css" => answer
                .header("cache-control", "public, max-age=600")
                .header("vary", "Accept-Encoding, Authorization"),
            _ => answer.header("cache-control", "no-store"),
        }
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    let by_cookie: &[(&str, &str)] = &[("cookie", "session=victim")];
    let by_token: &[(&str, &str)] = &[("authorization", "Bearer victim-token")];
    let attackers: [&[(&str, &str)]; 3] = [
        &[],
        &[("cookie", "session=attacker")],
        &[("authorization", "Bearer attacker-token")],
    ];
    for (path, victim) in [
        ("/account/private.css", by_cookie),
        ("/account/private-qualified.css", by_cookie),
        ("/account/no-freshness.css", by_cookie),
        ("/account/cookie.css", by_cookie),
        ("/account/authorized.css", by_token),
        ("/account/vary-cookie.css", by_cookie),
        ("/account/vary-auth.css", by_token),
    ] {
        let first = get(&weir, path, victim).await;
        assert!(first.text().contains("victim"), "{path}: {first:?}");
        for attacker in attackers {
            let reply = get(&weir, path, attacker).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
            assert!(
                !reply.text().contains("victim"),
                "{path}: the victim's page was served to {attacker:?}: {reply:?}"
            );
        }
    }
    // Where storing was allowed, the victim's own copy is a hit for the victim alone.
    for (path, victim) in [
        ("/account/vary-cookie.css", by_cookie),
        ("/account/vary-auth.css", by_token),
    ] {
        let again = get(&weir, path, victim).await;
        assert!(
            again.is_fresh_hit() && again.text().contains("victim"),
            "{path}: {again:?}"
        );
    }
}

/// An auth filter that takes `Authorization` off the request before it goes upstream
/// (key-auth's default `hide_credentials`, jwt-auth's `strip_token`) must not make the
/// response to an authenticated request shareable: RFC 9111 §3.5 forbids a shared cache to
/// store a response to a request with `Authorization` unless the response says `public`,
/// `s-maxage` or `must-revalidate`, and the client did send one. Here alice's profile
/// (`max-age=60`, nothing more) must not be served to bob.
#[tokio::test(flavor = "multi_thread")]
async fn a_filter_that_strips_authorization_does_not_make_the_answer_shareable() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!(
                "profile of {} (authorization [{}]) #{n}",
                header(head, "x-consumer-id"),
                header(head, "authorization"),
            ))
    })
    .await;
    let key_auth_toml: &[u8] = b"[config]\nheader = \"authorization\"\n\
        [[config.consumers]]\nname = \"alice\"\nkeys = [\"alice-key\"]\n\
        [[config.consumers]]\nname = \"bob\"\nkeys = [\"bob-key\"]\n";
    let routes = route("cached", "plugins = [\"key-auth\"]\ncache = {}");
    let weir = Weir::start_with_files(
        &config(origin.addr(), "", "", &routes),
        &[
            ("plugins/key-auth.wasm", crate::KEY_AUTH),
            ("plugins/key-auth.toml", key_auth_toml),
        ],
    )
    .await;

    let alice = get(&weir, "/me", &[("authorization", "alice-key")]).await;
    assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
    assert!(
        alice
            .text()
            .starts_with("profile of alice (authorization [])")
    );
    let nobody = get(&weir, "/me", &[]).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED, "{nobody:?}");
    let bob = get(&weir, "/me", &[("authorization", "bob-key")]).await;
    assert_eq!(bob.status, StatusCode::OK, "{bob:?}");
    assert!(
        bob.text().starts_with("profile of bob"),
        "bob was served alice's profile: the response to a request that came with \
         Authorization was stored because key-auth removed the header before the cache \
         looked (alice's answer: {:?}); bob's: {bob:?}",
        alice.member()
    );
}

// ---------------------------------------------------------------------------------------
// Smuggling and desync
// ---------------------------------------------------------------------------------------

/// Request smuggling into the cache: CL.TE, TE.CL, two `Content-Length`s, an obfuscated
/// `Transfer-Encoding`, a `GET` whose body is a request. Whatever weir makes of each, no key
/// ends up holding the answer to another request: afterwards, every path involved is
/// answered with its own resource.
#[tokio::test(flavor = "multi_thread")]
async fn smuggled_requests_never_fill_another_key() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)))
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    let smuggled = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");

    let mut attacks = Vec::new();
    // CL.TE: a front that reads Content-Length sees one request; TE ends the body at `0`.
    let inner = smuggled("/s/victim1");
    let body = format!("0\r\n\r\n{inner}");
    attacks.push(format!(
        "GET /s/a HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    ));
    // TE.CL: a chunk that holds a request, Content-Length covering only its size line.
    let inner = smuggled("/s/victim2");
    attacks.push(format!(
        "GET /s/b HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    ));
    // Two Content-Lengths.
    let inner = smuggled("/s/victim3");
    attacks.push(format!(
        "GET /s/c HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    ));
    // Obfuscated Transfer-Encodings.
    for te in [
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding:\tchunked\r\nTransfer-Encoding: identity",
        " Transfer-Encoding: chunked",
    ] {
        let inner = smuggled("/s/victim4");
        attacks.push(format!(
            "GET /s/d HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n{te}\r\n\r\n{inner}",
            inner.len()
        ));
    }
    // A fat GET whose body is a request (the body belongs to the GET).
    let inner = smuggled("/s/victim5");
    attacks.push(format!(
        "GET /s/e HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    ));
    for attack in &attacks {
        // Then a request of the attacker's own on the same connection, closing it.
        let payload = format!("{attack}{}", raw_get("/s/after", true));
        let raw = raw_exchange(weir.proxy, payload.as_bytes()).await;
        let (responses, _) = parse_responses(&raw);
        for response in &responses {
            if response.status == 200 {
                let text = response.text();
                let path = text.split(" #").next().unwrap_or("");
                assert!(
                    path.starts_with("/s/"),
                    "{attack:?}: an answer that is no resource: {response:?}"
                );
            }
        }
    }
    // Every key holds its own resource.
    for path in [
        "/s/a",
        "/s/b",
        "/s/c",
        "/s/d",
        "/s/e",
        "/s/after",
        "/s/victim1",
        "/s/victim2",
        "/s/victim3",
        "/s/victim4",
        "/s/victim5",
    ] {
        let reply = get(&weir, path, &[]).await;
        assert_eq!(
            reply.text().split(" #").next(),
            Some(path),
            "the entry for {path} holds another request's answer: {reply:?}"
        );
    }
}

/// Pipelined requests on one connection are each answered, in order, and each stored under
/// its own key.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_each_stored_under_their_own_key() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)))
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    let order = ["/pl/1", "/pl/2", "/pl/1", "/pl/3", "/pl/2"];
    let mut payload = String::new();
    for (i, path) in order.iter().enumerate() {
        payload.push_str(&raw_get(path, i == order.len() - 1));
    }
    let raw = raw_exchange(weir.proxy, payload.as_bytes()).await;
    let (responses, rest) = parse_responses(&raw);
    assert_eq!(
        responses.len(),
        order.len(),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    for (path, response) in order.iter().zip(&responses) {
        assert_eq!(response.text(), format!("{path} #0"), "{response:?}");
    }
    for path in ["/pl/1", "/pl/2", "/pl/3"] {
        let reply = get(&weir, path, &[]).await;
        assert!(reply.is_fresh_hit(), "{reply:?}");
        assert_eq!(reply.text(), format!("{path} #0"));
        assert_eq!(origin.count(path), 1, "{path}");
    }
}

/// Response desync from the upstream: its first answer is followed, on the same connection,
/// by a second response nobody asked for. weir must not take those bytes as the answer to
/// its next request on that connection and store them under that request's key.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_an_upstream_sends_past_its_answer_never_fill_the_next_key() {
    let origin = RawOrigin::start(|request, _| {
        let mut bytes = raw_ok(&["Cache-Control: max-age=60"], request.target.as_bytes());
        if request.target == "/d/1" {
            bytes.extend_from_slice(&raw_ok(&["Cache-Control: max-age=600"], b"POISON"));
        }
        RawAnswer::keep(bytes)
    })
    .await;
    let weir = Weir::start(&config(origin.addr, "", "", &cached_route())).await;
    let first = get(&weir, "/d/1", &[]).await;
    assert_eq!(first.text(), "/d/1", "{first:?}");
    for path in ["/d/2", "/d/3", "/d/2", "/d/3"] {
        let reply = get(&weir, path, &[]).await;
        assert_eq!(
            reply.text(),
            path,
            "the upstream's unasked-for bytes were taken (and stored) as the answer: {reply:?}"
        );
    }
}

/// An upstream answer with both `Transfer-Encoding: chunked` and `Content-Length` is framed
/// by the chunks (RFC 9112 §6.3, and hyper reads it so), and an intermediary must remove the
/// `Content-Length` before forwarding it. The stored copy must not keep it either: served
/// from the store, its `Content-Length` (5) would frame a 49-byte body — a panic in hyper's
/// debug builds, and in release a response whose last 44 bytes the client reads as the
/// answer to its next request (here, a forged `POISON` page).
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_answer_never_keeps_a_content_length_that_the_chunks_overrode() {
    let smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";
    let mut chunk = b"12345".to_vec();
    chunk.extend_from_slice(smuggled);
    let body = chunk.clone();
    let origin = RawOrigin::start(move |request, _| {
        if request.target == "/tecl" {
            let mut bytes = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(&chunk);
            bytes.extend_from_slice(b"\r\n0\r\n\r\n");
            RawAnswer::keep(bytes)
        } else {
            RawAnswer::keep(raw_ok(&["Cache-Control: max-age=60"], request.target.as_bytes()))
        }
    })
    .await;
    let weir = Weir::start(&config(origin.addr, "", "", &cached_route())).await;

    // The miss, the hit, and a request of the client's own after them on one connection.
    let payload = format!(
        "{}{}{}",
        raw_get("/tecl", false),
        raw_get("/tecl", false),
        raw_get("/next", true)
    );
    let raw = raw_exchange(weir.proxy, payload.as_bytes()).await;
    let (responses, rest) = parse_responses(&raw);
    let shown = String::from_utf8_lossy(&raw);
    assert_eq!(
        responses.len(),
        3,
        "three requests, three answers; got {shown:?} (weir's panics: {:?})",
        panics(&weir)
    );
    for response in &responses[..2] {
        assert_eq!(response.status, 200, "{shown:?}");
        assert_eq!(
            response.body, body,
            "the answer to /tecl is not the chunked body: {shown:?}"
        );
        if let Some(length) = response.header("content-length") {
            assert_eq!(length, body.len().to_string(), "{shown:?}");
        }
    }
    assert_eq!(responses[2].text(), "/next", "{shown:?}");
    assert!(rest.is_empty(), "{shown:?}");
}

/// A body the upstream cuts short (fewer bytes than its `Content-Length`, chunks without
/// their last) is never stored: the next request goes upstream and gets the whole body.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_upstream_body_is_never_stored() {
    let whole = vec![b'w'; 100];
    let origin = RawOrigin::start(move |request, n| match (request.target.as_str(), n) {
        ("/trunc/length", 0) => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 100\r\n\r\n".to_vec();
            bytes.extend_from_slice(&[b't'; 50]);
            RawAnswer::close(bytes)
        }
        ("/trunc/chunked", 0) => {
            let mut bytes = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n".to_vec();
            bytes.extend_from_slice(&[b't'; 50]);
            bytes.extend_from_slice(b"\r\n");
            RawAnswer::close(bytes)
        }
        _ => RawAnswer::keep(raw_ok(&["Cache-Control: max-age=60"], &whole)),
    })
    .await;
    let weir = Weir::start(&config(origin.addr, "", "", &cached_route())).await;
    for path in ["/trunc/length", "/trunc/chunked"] {
        // The cut answer: an error, or a 502, but never a stored 200.
        if let Ok(reply) = try_send(&weir, Method::GET, path, &[]).await {
            assert!(
                reply.status != StatusCode::OK || reply.body.len() != 50,
                "{path}: the cut body was passed as a whole answer: {reply:?}"
            );
            assert!(!reply.was_stored(), "{path}: {reply:?}");
        }
        let next = get(&weir, path, &[]).await;
        assert_eq!(next.status, StatusCode::OK, "{path}: {next:?}");
        assert_eq!(
            next.body.len(),
            100,
            "{path}: the truncated body was stored and served: {next:?}"
        );
        assert!(next.body.iter().all(|b| *b == b'w'), "{path}: {next:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Conditional, HEAD, Range
// ---------------------------------------------------------------------------------------

/// What a client's `If-None-Match`, `HEAD` or `Range` makes of a cold key never becomes the
/// entry: a `304`, an empty body or a `206` stored would be served to every later client.
/// An upstream that answers `206` or `304` to a plain `GET` is not stored either.
#[tokio::test(flavor = "multi_thread")]
async fn conditional_head_and_range_requests_never_store_a_partial_answer() {
    const BODY: &str = "0123456789";
    let origin = Origin::start(|head, n| {
        let path = head.uri.path();
        if (path == "/unasked-206" || path == "/unasked-304") && n == 0 {
            return if path == "/unasked-206" {
                Answer::status(206)
                    .header("cache-control", "max-age=60")
                    .header("content-range", "bytes 0-1/10")
                    .body("01")
            } else {
                Answer::status(304)
                    .header("cache-control", "max-age=60")
                    .header("etag", "\"v1\"")
            };
        }
        if !header(head, "range").is_empty() {
            return Answer::status(206)
                .header("cache-control", "max-age=60")
                .header("content-range", "bytes 0-1/10")
                .body("01");
        }
        if header(head, "if-none-match").contains("v1") || header(head, "if-none-match") == "*" {
            return Answer::status(304)
                .header("cache-control", "max-age=60")
                .header("etag", "\"v1\"");
        }
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .body(BODY)
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    let whole = |reply: &Reply, what: &str| {
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, BODY),
            "{what}: {reply:?}"
        );
    };

    // Range on a cold key, then on a warm one: passed through, never stored.
    let range = get(&weir, "/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT, "{range:?}");
    let plain = get(&weir, "/r", &[]).await;
    whole(&plain, "after a ranged miss");
    assert!(plain.was_stored(), "{plain:?}");
    let range = get(&weir, "/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT, "{range:?}");
    let hit = get(&weir, "/r", &[]).await;
    whole(&hit, "after a ranged request on a warm key");
    assert!(hit.is_fresh_hit(), "{hit:?}");

    // A client's conditions on a cold key: answered 304, but the entry is the whole body.
    for (path, condition) in [("/c1", "\"v1\""), ("/c2", "*"), ("/c3", "W/\"v1\"")] {
        let conditional = get(&weir, path, &[("if-none-match", condition)]).await;
        assert_eq!(
            conditional.status,
            StatusCode::NOT_MODIFIED,
            "{conditional:?}"
        );
        let later = get(&weir, path, &[]).await;
        whole(&later, &format!("{path} after If-None-Match: {condition}"));
        assert!(later.is_fresh_hit(), "{later:?}");
    }

    // HEAD on a cold key: no body for it, the whole body for the GET after it.
    let head = send(&weir, Method::HEAD, "/h", &[]).await;
    assert_eq!(head.status, StatusCode::OK, "{head:?}");
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "10", "{head:?}");
    let later = get(&weir, "/h", &[]).await;
    whole(&later, "GET after a HEAD miss");
    assert!(later.is_fresh_hit(), "{later:?}");

    // An upstream that answers 206 or 304 to a plain GET: passed on, not stored.
    for path in ["/unasked-206", "/unasked-304"] {
        let odd = get(&weir, path, &[]).await;
        assert!(!odd.was_stored(), "{path}: {odd:?}");
        let later = get(&weir, path, &[]).await;
        whole(&later, &format!("{path}, second request"));
        assert_eq!(origin.count(path), 2, "{path}");
    }
}

/// Hop-by-hop headers of an upstream's answer (`Connection` and what it names, `Keep-Alive`,
/// `Upgrade`, `Proxy-*`, `Transfer-Encoding`) are not stored and replayed: a hit carries none
/// of them and the client's connection stays usable for the next request. An upstream's
/// `Age` counts: a hit is as old as the upstream said plus its time in the store.
#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_not_replayed_from_the_store() {
    let origin = RawOrigin::start(|_, _| {
        RawAnswer::close(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nAge: 30\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=1\r\nUpgrade: h2c\r\nProxy-Connection: close\r\nProxy-Authenticate: Basic\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let weir = Weir::start(&config(origin.addr, "", "", &cached_route())).await;
    let payload = format!(
        "{}{}{}",
        raw_get("/hop", false),
        raw_get("/hop", false),
        raw_get("/hop", true)
    );
    let raw = raw_exchange(weir.proxy, payload.as_bytes()).await;
    let (responses, _) = parse_responses(&raw);
    let shown = String::from_utf8_lossy(&raw);
    assert_eq!(responses.len(), 3, "{shown}");
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(
            (response.status, response.text().as_str()),
            (200, "body"),
            "{shown}"
        );
        for name in [
            "x-hop",
            "keep-alive",
            "upgrade",
            "proxy-connection",
            "proxy-authenticate",
        ] {
            assert!(
                response.header(name).is_none(),
                "answer {i} carries {name}: {shown}"
            );
        }
        if i < 2 {
            assert!(
                response.header("connection").is_none(),
                "answer {i} carries the upstream's Connection: {shown}"
            );
        }
        let age: u64 = response
            .header("age")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        assert!(
            age >= 30,
            "answer {i}: Age {age} below the upstream's 30: {shown}"
        );
    }
    assert_eq!(origin.count("/hop"), 1);
}

// ---------------------------------------------------------------------------------------
// Numbers that overflow
// ---------------------------------------------------------------------------------------

/// weir with a cached catch-all route before an upstream that answers every request `200`
/// `/n` with its target as the body and `headers`, `delay` after the request; each of two
/// GETs of `/n` must be answered whole, and weir must go on serving (`/other`, stored and
/// then hit, with plain headers).
async fn assert_survives(headers: &[(&str, &str)], delay: Duration) {
    let owned: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let origin = Origin::start(move |head, _| {
        if head.uri.path() != "/n" {
            return Answer::status(200)
                .header("cache-control", "max-age=60")
                .body(target(head).to_owned());
        }
        let mut answer = Answer::status(200)
            .body(target(head).to_owned())
            .after(delay);
        for (name, value) in &owned {
            answer = answer.header(name, value);
        }
        answer
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    let mut failures = Vec::new();
    for path in ["/n", "/n", "/other", "/other"] {
        match try_send(&weir, Method::GET, path, &[]).await {
            Ok(reply) if reply.status == StatusCode::OK && reply.text() == path => {}
            Ok(reply) => failures.push(format!("GET {path}: {reply:?}")),
            Err(e) => failures.push(format!("GET {path}: {e}")),
        }
    }
    let panics = panics(&weir);
    assert!(
        failures.is_empty() && panics.is_empty(),
        "with upstream headers {headers:?}: failed requests {failures:#?}; weir's panics {panics:#?}"
    );
}

/// Numbers past what `u64` holds (`max-age=99999999999999999999`, RFC 9111 §1.2.2), far
/// `Expires`, and a `Vary` of hundreds of names: answered, no panic.
#[tokio::test(flavor = "multi_thread")]
async fn overflowing_numbers_and_huge_vary_lists_are_answered() {
    assert_survives(
        &[("cache-control", "max-age=99999999999999999999")],
        Duration::ZERO,
    )
    .await;
    assert_survives(
        &[
            (
                "cache-control",
                "max-age=99999999999999999999, stale-if-error=99999999999999999999",
            ),
            ("etag", "\"e\""),
        ],
        Duration::ZERO,
    )
    .await;
    assert_survives(
        &[
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("etag", "\"e\""),
        ],
        Duration::ZERO,
    )
    .await;
    assert_survives(
        &[
            ("cache-control", "max-age=60"),
            ("age", "99999999999999999999"),
        ],
        Duration::ZERO,
    )
    .await;
    let vary = (0..400)
        .map(|i| format!("x-v{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert_survives(
        &[("cache-control", "max-age=60"), ("vary", &vary)],
        Duration::ZERO,
    )
    .await;
}

/// `max-age` of 2^64 − 1 seconds parses; with a validator, the entry's keep time (the
/// lifetime plus 10 minutes for a revalidation) must not overflow.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_max_age_with_a_validator_is_answered() {
    assert_survives(
        &[
            ("cache-control", "max-age=18446744073709551615"),
            ("etag", "\"e\""),
        ],
        Duration::ZERO,
    )
    .await;
}

/// A `stale-while-revalidate` (or `stale-if-error`) window of 2^64 − 1 seconds must not
/// overflow when added to the lifetime.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_stale_window_is_answered() {
    assert_survives(
        &[(
            "cache-control",
            "max-age=60, stale-while-revalidate=18446744073709551615",
        )],
        Duration::ZERO,
    )
    .await;
}

/// An upstream `Age` of 2^64 − 1 seconds must not overflow when the time the upstream took
/// to answer (here over a second) is added to it (RFC 9111 §4.2.3's `corrected_age_value`).
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_age_is_answered() {
    assert_survives(
        &[
            ("cache-control", "max-age=60"),
            ("age", "18446744073709551615"),
        ],
        Duration::from_millis(1100),
    )
    .await;
}

/// Entries whose `max-age` is 2^64 − 1 (with a validator) are bounded by `max_bytes` like any
/// other: twenty 3,000-byte answers in a 16 KiB cache leave at most five served from it. (The
/// overflow above panics inside the store's insert, after the entry is in its map but before
/// the store's size policy learns of it: such entries are then never evicted.)
#[tokio::test(flavor = "multi_thread")]
async fn entries_with_the_largest_max_age_stay_within_max_bytes() {
    let origin = Origin::start(|head, _| {
        if head.uri.path() != "/huge" {
            return Answer::status(200)
                .header("cache-control", "max-age=60")
                .body("poke");
        }
        Answer::status(200)
            .header("cache-control", "max-age=18446744073709551615")
            .header("etag", "\"e\"")
            .body("x".repeat(3000))
    })
    .await;
    let routes = route(
        "cached",
        "cache = { max_bytes = 16384, max_object_bytes = 4096 }",
    );
    let weir = Weir::start(&config(origin.addr(), "", "", &routes)).await;
    for i in 0..20 {
        let path = format!("/huge?n={i}");
        // The first may fail (the panic); the second is then answered from the store.
        let _ = try_send(&weir, Method::GET, &path, &[]).await;
        let _ = try_send(&weir, Method::GET, &path, &[]).await;
    }
    for i in 0..50 {
        let _ = get(&weir, &format!("/poke?n={i}"), &[]).await;
    }
    let mut hits = Vec::new();
    for i in 0..20 {
        let path = format!("/huge?n={i}");
        if let Ok(reply) = try_send(&weir, Method::GET, &path, &[]).await
            && reply.is_hit()
        {
            hits.push(path);
        }
    }
    let text = weir.metrics().await;
    let stored = metric(&text, "weir_cache_stored_bytes", &[("route", "cached")]);
    assert!(
        hits.len() <= 5,
        "{} entries of 3,000 bytes are served from a 16 KiB cache ({hits:?}); \
         weir_cache_stored_bytes = {stored:?}; weir's panics: {:#?}",
        hits.len(),
        panics(&weir)
    );
}

// ---------------------------------------------------------------------------------------
// Resource abuse
// ---------------------------------------------------------------------------------------

/// Hundreds of distinct keys (a cache-busting query per request) never hold more than
/// `max_bytes`: `weir_cache_stored_bytes` comes back under it, and each answer is its own
/// resource.
#[tokio::test(flavor = "multi_thread")]
async fn distinct_keys_never_hold_more_than_max_bytes() {
    const MAX: f64 = 65_536.0;
    let origin = Origin::start(|head, _| {
        let mut body = target(head).to_owned();
        body.push(' ');
        body.push_str(&"k".repeat(1500));
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(body)
    })
    .await;
    let routes = route(
        "cached",
        "cache = { max_bytes = 65536, max_object_bytes = 4096 }",
    );
    let weir = Weir::start(&config(origin.addr(), "", "", &routes)).await;
    let weir = Arc::new(weir);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let weir = weir.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let path = format!("/bust?n={worker}-{i}");
                let reply = get(&weir, &path, &[]).await;
                assert!(
                    reply.text().starts_with(&format!("{path} ")),
                    "{path}: {reply:?}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    // The store may evict in its own time: each look comes after another request to it.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let _ = get(&weir, "/bust?n=poke", &[]).await;
        let text = weir.metrics().await;
        let stored = metric(&text, "weir_cache_stored_bytes", &[("route", "cached")])
            .unwrap_or_else(|| panic!("no stored bytes: {text}"));
        if stored <= MAX {
            assert!(stored > 0.0, "nothing stored at all: {text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} bytes stored, over max_bytes = {MAX}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A chunked answer (no `Content-Length`) larger than `max_object_bytes` is passed to the
/// client whole and byte for byte, and not stored; nor does a `HEAD` of it store an empty
/// body.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_answer_over_max_object_bytes_is_passed_whole_and_not_stored() {
    const LEN: usize = 3 * 1024 * 1024;
    let pattern: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let body = pattern.clone();
    let origin = RawOrigin::start(move |_, _| {
        let mut bytes =
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for chunk in body.chunks(64 * 1024) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        RawAnswer::keep(bytes)
    })
    .await;
    let routes = route("cached", "cache = { max_object_bytes = 1048576 }");
    let weir = Weir::start(&config(origin.addr, "", "", &routes)).await;
    for i in 0..2 {
        let reply = get(&weir, "/big", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), LEN, "request {i}: the answer was cut");
        assert!(reply.body == pattern, "request {i}: the bytes differ");
        assert!(
            !reply.was_stored() && !reply.is_hit(),
            "{:?}",
            reply.headers
        );
    }
    let head = send(&weir, Method::HEAD, "/big", &[]).await;
    assert_eq!(head.status, StatusCode::OK, "{head:?}");
    let after = get(&weir, "/big", &[]).await;
    assert_eq!(after.body.len(), LEN, "a HEAD left an empty entry behind");
    assert_eq!(origin.count("/big"), 4, "each request went upstream");
}

/// A slow upstream and 200 clients asking for the same key: the first fetch hangs, and
/// `lock_timeout` (300 ms) frees the 199 waiting behind it, who go upstream themselves and
/// are answered long before the hanging fetch ends.
#[tokio::test(flavor = "multi_thread")]
async fn lock_timeout_frees_two_hundred_waiters_behind_a_hanging_fetch() {
    let origin = Origin::start(|_, n| {
        let answer = Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("#{n}"));
        if n == 0 {
            answer.after(Duration::from_secs(15))
        } else {
            answer
        }
    })
    .await;
    let routes = route("cached", "cache = { lock_timeout = \"300ms\" }");
    let weir = Arc::new(Weir::start(&config(origin.addr(), "", "", &routes)).await);
    let hanging = {
        let weir = weir.clone();
        tokio::spawn(async move { try_send(&weir, Method::GET, "/slow", &[]).await })
    };
    let deadline = Instant::now() + DEADLINE;
    while origin.count("/slow") == 0 {
        assert!(Instant::now() < deadline, "the first fetch never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let waiters: Vec<_> = (0..199)
        .map(|_| {
            let weir = weir.clone();
            tokio::spawn(async move { get(&weir, "/slow", &[]).await })
        })
        .collect();
    for waiter in waiters {
        let reply = waiter.await.expect("waiter");
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_ne!(
            reply.text(),
            "#0",
            "a waiter got the hanging fetch: {reply:?}"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the waiters took {took:?}: lock_timeout did not free them"
    );
    assert!(!hanging.is_finished(), "the hanging fetch ended early");
    hanging.abort();
}

/// A key's `Vary` variants are capped at 8: an attacker cycling the varied header keeps at
/// most 8 copies (`weir_cache_entries`), each variant is answered with its own copy, and
/// the newest stay hits.
#[tokio::test(flavor = "multi_thread")]
async fn at_most_eight_variants_are_kept_and_each_answers_its_own() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("vary", "X-V")
            .body(format!("variant {} #{n}", header(head, "x-v")))
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    for v in 0..30 {
        let value = format!("v{v}");
        let reply = get(&weir, "/vary", &[("x-v", value.as_str())]).await;
        assert!(
            reply.text().starts_with(&format!("variant {value} ")),
            "{value} was answered with another variant: {reply:?}"
        );
    }
    // The gauge follows the store's own bookkeeping: each look comes after another request.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = weir.metrics().await;
        let entries = metric(&text, "weir_cache_entries", &[("route", "cached")])
            .unwrap_or_else(|| panic!("no entries: {text}"));
        if entries <= 8.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{entries} variants kept: {text}");
        let _ = get(&weir, "/poke", &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let newest = get(&weir, "/vary", &[("x-v", "v29")]).await;
    assert!(newest.is_fresh_hit() && newest.text().starts_with("variant v29 "));
    let oldest = get(&weir, "/vary", &[("x-v", "v0")]).await;
    assert!(!oldest.is_hit(), "{oldest:?}");
    assert!(oldest.text().starts_with("variant v0 "), "{oldest:?}");
    let none = get(&weir, "/vary", &[]).await;
    assert!(none.text().starts_with("variant  #"), "{none:?}");
}

/// Collapsed misses never share what only one client may have: while a slow fetch for
/// alice is in flight, waiters for the same key get neither her `Set-Cookie` answer (not
/// storable) nor her variant (`Vary: X-User`); each gets its own.
#[tokio::test(flavor = "multi_thread")]
async fn collapsed_waiters_never_get_another_clients_answer() {
    let origin = Origin::start(|head, _| {
        let user = header(head, "x-user").to_owned();
        let answer = Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("for {user}"))
            .after(Duration::from_millis(500));
        if head.uri.path() == "/session" {
            answer.header("set-cookie", &format!("session={user}"))
        } else {
            answer.header("vary", "X-User")
        }
    })
    .await;
    let weir = Arc::new(Weir::start(&config(origin.addr(), "", "", &cached_route())).await);
    for path in ["/session", "/varied"] {
        let spawn = |user: String| {
            let weir = weir.clone();
            tokio::spawn(
                async move { (user.clone(), get(&weir, path, &[("x-user", &user)]).await) },
            )
        };
        let first = spawn("alice".to_owned());
        let deadline = Instant::now() + DEADLINE;
        while origin.count(path) == 0 {
            assert!(
                Instant::now() < deadline,
                "{path}: the first fetch never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let waiters: Vec<_> = (0..10).map(|i| spawn(format!("user{}", i % 3))).collect();
        for task in std::iter::once(first).chain(waiters) {
            let (user, reply) = task.await.expect("request");
            assert_eq!(
                reply.text(),
                format!("for {user}"),
                "{path}: {user} got another client's answer: {reply:?}"
            );
            let cookie = reply.header("set-cookie");
            assert!(
                cookie.is_empty() || cookie == format!("session={user}"),
                "{path}: {user} got another client's cookie: {reply:?}"
            );
        }
    }
}

/// One client's `Cache-Control: no-cache, no-store` asks that its own answer not be stored;
/// it says nothing about the entry everyone else shares (RFC 9111 §5.2.1.5: "the no-store
/// request directive does not apply to the already stored response"). The entry stays, and
/// the clients after it are hits: no client can evict a hot key at will and, with it, switch
/// off the collapsing of the misses that follow (a stampede on the upstream on demand).
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_no_store_does_not_evict_the_shared_entry() {
    let origin = Origin::start(|_, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("hot #{n}"))
            .after(Duration::from_millis(if n == 0 { 0 } else { 300 }))
    })
    .await;
    let weir = Arc::new(Weir::start(&config(origin.addr(), "", "", &cached_route())).await);
    assert!(get(&weir, "/hot", &[]).await.was_stored());
    let attack = get(&weir, "/hot", &[("cache-control", "no-cache, no-store")]).await;
    assert_eq!(attack.status, StatusCode::OK, "{attack:?}");
    assert_eq!(origin.count("/hot"), 2, "no-cache goes upstream");
    // Ten clients at once after it.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let weir = weir.clone();
            tokio::spawn(async move { get(&weir, "/hot", &[]).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("request").member());
    }
    assert_eq!(
        origin.count("/hot"),
        2,
        "after one client's `no-cache, no-store` (answered {:?}), {} more requests reached \
         the upstream for a fresh key: {answers:#?}",
        attack.member(),
        origin.count("/hot") - 2
    );
}

// ---------------------------------------------------------------------------------------
// Purge, failures
// ---------------------------------------------------------------------------------------

/// Purging is the admin listener's, behind its token: `POST /cache/purge` on the proxy
/// listener is just a request to the upstream and purges nothing; on the admin listener
/// without the token it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn purging_is_out_of_a_clients_reach() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)))
    })
    .await;
    let weir = Weir::start_with_files(
        &config(
            origin.addr(),
            "token_file = \"admin.token\"",
            "",
            &cached_route(),
        ),
        &[("admin.token", TOKEN.as_bytes())],
    )
    .await;
    assert!(get(&weir, "/kept", &[]).await.was_stored());

    for body in [
        r#"{"key": "http://cache.test/kept"}"#,
        r#"{"route": "cached", "prefix": "http://"}"#,
    ] {
        let reply = try_send_body(
            &weir,
            Method::POST,
            "/cache/purge",
            &[("content-type", "application/json")],
            weir_tests::full(body),
        )
        .await
        .expect("proxy purge");
        assert!(
            !reply.text().contains("purged"),
            "the proxy listener purged: {reply:?}"
        );
    }
    assert!(origin.count("/cache/purge") >= 1, "went to the upstream");
    let kept = get(&weir, "/kept", &[]).await;
    assert!(kept.is_fresh_hit(), "{kept:?}");

    let admin = http1_client();
    for token in [None, Some("wrong"), Some("")] {
        let mut builder = Request::post(weir.admin_url("/cache/purge"))
            .header("content-type", "application/json");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let response = admin
            .request(
                builder
                    .body(weir_tests::full(r#"{"prefix": "http://"}"#))
                    .expect("request"),
            )
            .await
            .expect("admin");
        assert!(
            response.status().is_client_error(),
            "{token:?}: {}",
            response.status()
        );
    }
    let kept = get(&weir, "/kept", &[]).await;
    assert!(kept.is_fresh_hit(), "{kept:?}");
}

/// `stale-if-error` serves a stale copy only to the request it answers: another variant of
/// the key, or another key, gets the upstream's failure, never that copy.
#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_never_answers_with_another_variant_or_key() {
    let origin = Origin::start(|head, n| {
        if target(head) == "/sie" && n == 0 {
            Answer::status(200)
                .header("cache-control", "max-age=1, stale-if-error=60")
                .header("vary", "X-V")
                .body(format!("variant {}", header(head, "x-v")))
        } else {
            Answer::status(503).body("down")
        }
    })
    .await;
    let weir = Weir::start(&config(origin.addr(), "", "", &cached_route())).await;
    let a = get(&weir, "/sie", &[("x-v", "a")]).await;
    assert!(a.was_stored(), "{a:?}");
    let stale = get_once_stale(&weir, "/sie", &[("x-v", "a")]).await;
    assert_eq!(
        (stale.status, stale.text().as_str()),
        (StatusCode::OK, "variant a"),
        "{stale:?}"
    );
    assert!(stale.cache_status().contains("stale-if-error"), "{stale:?}");
    for (path, headers) in [
        ("/sie", vec![("x-v", "b")]),
        ("/sie", vec![]),
        ("/sie?x", vec![("x-v", "a")]),
        ("/sie-other", vec![("x-v", "a")]),
    ] {
        let reply = get(&weir, path, &headers).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "down"),
            "{path} {headers:?} was answered with another request's stale copy: {reply:?}"
        );
    }
}

/// Garbage from the upstream on a revalidation is an upstream failure: never stored, never
/// sent; the stale copy is not served without `stale-if-error`, and a later good answer
/// replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_revalidation_is_never_stored() {
    let origin = RawOrigin::start(|_, n| match n {
        0 => RawAnswer::keep(raw_ok(
            &["Cache-Control: max-age=1", "ETag: \"g1\""],
            b"good",
        )),
        1 | 2 => RawAnswer::close(b"NOT HTTP AT ALL\r\nX: y\r\n\r\nPOISON".to_vec()),
        _ => RawAnswer::keep(raw_ok(
            &["Cache-Control: max-age=60", "ETag: \"g2\""],
            b"fresh",
        )),
    })
    .await;
    let weir = Weir::start(&config(origin.addr, "", "", &cached_route())).await;
    assert!(get(&weir, "/g", &[]).await.was_stored());
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let reply = get(&weir, "/g", &[]).await;
        assert!(
            !reply.text().contains("POISON") && !reply.text().contains("NOT HTTP"),
            "garbage was sent: {reply:?}"
        );
        seen.push((reply.status, reply.text()));
        if reply.text() == "fresh" {
            break;
        }
        assert!(
            reply.status == StatusCode::BAD_GATEWAY
                || (reply.status == StatusCode::OK && reply.text() == "good"),
            "{reply:?}"
        );
        if reply.status == StatusCode::OK {
            assert!(
                reply.is_fresh_hit(),
                "stale served without stale-if-error: {reply:?}"
            );
        }
        assert!(Instant::now() < deadline, "never refreshed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hit = get(&weir, "/g", &[]).await;
    assert!(hit.is_fresh_hit() && hit.text() == "fresh", "{hit:?}");
}

/// A "fat GET": a `GET` whose body the upstream reads (as many frameworks do for form
/// bodies) is answered by that body, which is not in the key. Stored, it would serve the
/// attacker's content to everyone asking for the URL; a `GET` with a body must not fill the
/// cache (or its body must not reach the upstream).
#[tokio::test(flavor = "multi_thread")]
async fn a_fat_gets_body_never_reaches_a_stored_page() {
    let origin = RawOrigin::start(|request, n| {
        let body = if request.body.is_empty() {
            "nobody".to_owned()
        } else {
            String::from_utf8_lossy(&request.body).into_owned()
        };
        RawAnswer::keep(raw_ok(
            &["Cache-Control: max-age=60"],
            format!("{} with q={body} #{n}", request.method).as_bytes(),
        ))
    })
    .await;
    let weir = Weir::start(&config(origin.addr, "", "", &cached_route())).await;
    let attack = try_send_body(
        &weir,
        Method::GET,
        "/search",
        &[("content-type", "application/x-www-form-urlencoded")],
        weir_tests::full("<script>evil()</script>"),
    )
    .await
    .expect("fat GET");
    assert_eq!(attack.status, StatusCode::OK, "{attack:?}");
    let victim = get(&weir, "/search", &[]).await;
    assert!(
        !victim.text().contains("evil"),
        "the attacker's GET body was stored and served to the victim ({}): {victim:?}",
        attack.member()
    );
}
