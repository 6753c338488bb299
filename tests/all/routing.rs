//! Gateway routing (issue 25, deliverables 1–3), against real upstreams: routes chosen by a
//! header, a query parameter, an exact path and a path regex, in the documented precedence;
//! `weir check` warning about a route another shadows; weighted `backends` splitting 95/5 and
//! keeping a client on one backend with `split_by`, the weights changed by a reload; and a
//! `mirror` whose copies never hold the client's answer (a held or a dead mirror cluster).

use std::collections::HashMap;
use std::process::Command;

use http::{Method, StatusCode};
use weir_tests::{Upstream, Weir, closed_port};

fn cluster(name: &str, upstream: &Upstream) -> String {
    format!(
        "[[clusters]]\nname = \"{name}\"\nendpoints = [\"{}\"]\nconnect_timeout = \"1s\"\nretries = 0\n",
        upstream.addr
    )
}

fn preamble() -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[plugins]\ncache_dir = \"{}\"\n\n",
        crate::plugin_cache().display()
    )
}

/// GET `path` with `headers`; the answering upstream's name (the first word of its body).
async fn who(weir: &Weir, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, _, body) = weir_tests::get_with(&weir.url(path), headers).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
    body.split(' ').next().unwrap_or("").to_owned()
}

/// The bar: `api-version: 2` reaches `orders-v2`, without it `orders-v1`, whatever the
/// order the routes are written in; a query parameter, an exact path and a path regex pick
/// their routes, most specific first.
#[tokio::test(flavor = "multi_thread")]
async fn headers_query_and_paths_choose_routes_by_precedence() {
    let v1 = Upstream::start("orders-v1").await;
    let v2 = Upstream::start("orders-v2").await;
    let beta = Upstream::start("beta").await;
    let one = Upstream::start("one").await;
    let exact = Upstream::start("exact").await;
    let config = format!(
        r#"{preamble}{c1}{c2}{c3}{c4}{c5}
[[routes]]
name = "v2"
path_prefix = "/orders"
headers = [{{ name = "api-version", exact = "2" }}]
cluster = "orders-v2"

[[routes]]
name = "v1"
path_prefix = "/orders"
cluster = "orders-v1"

[[routes]]
name = "beta"
path_prefix = "/orders"
query = [{{ name = "beta", present = true }}]
cluster = "beta"

[[routes]]
name = "one"
path_regex = "/orders/[0-9]+"
cluster = "one"

[[routes]]
name = "exact"
path = "/orders/42"
cluster = "exact"
"#,
        preamble = preamble(),
        c1 = cluster("orders-v1", &v1),
        c2 = cluster("orders-v2", &v2),
        c3 = cluster("beta", &beta),
        c4 = cluster("one", &one),
        c5 = cluster("exact", &exact),
    );
    let weir = Weir::start(&config).await;
    assert_eq!(
        who(&weir, "/orders", &[("api-version", "2")]).await,
        "orders-v2"
    );
    assert_eq!(who(&weir, "/orders", &[]).await, "orders-v1");
    assert_eq!(
        who(&weir, "/orders", &[("api-version", "1")]).await,
        "orders-v1"
    );
    assert_eq!(who(&weir, "/orders?beta=yes", &[]).await, "beta");
    assert_eq!(
        who(&weir, "/orders/7", &[("api-version", "2")]).await,
        "one"
    );
    assert_eq!(who(&weir, "/orders/7a", &[]).await, "orders-v1");
    assert_eq!(who(&weir, "/orders/42", &[]).await, "exact");

    // curl, as the issue's bar says it.
    let curl = |header: Option<&str>| {
        let mut command = Command::new("curl");
        command.arg("-s");
        if let Some(header) = header {
            command.args(["-H", header]);
        }
        let out = command.arg(weir.url("/orders")).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(curl(Some("api-version: 2")).starts_with("orders-v2 "));
    assert!(curl(None).starts_with("orders-v1 "));
}

/// `weir check` warns about a route that can never match, naming the route that takes its
/// requests; the config is still valid.
#[tokio::test(flavor = "multi_thread")]
async fn weir_check_warns_about_a_shadowed_route() {
    let v1 = Upstream::start("v1").await;
    let config = format!(
        "{}{}\n[[routes]]\nname = \"all\"\npath_prefix = \"/api\"\ncluster = \"v1\"\n\n[[routes]]\nname = \"dead\"\npath_prefix = \"/api\"\ncluster = \"v1\"\n",
        preamble(),
        cluster("v1", &v1)
    );
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(weir_tests::weir::weir_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("weir check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: route \"dead\" can never match: route \"all\""),
        "{stderr}"
    );
}

/// Sends `n` GETs of `path` with `headers`, 16 at a time; how many each upstream answered.
async fn tally(
    weir: &Weir,
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let client = weir_tests::http1_client();
    let mut counts = HashMap::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let mut request = http::Request::get(weir.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(weir_tests::empty()).expect("request");
        pending.push(tokio::spawn({
            let client = client.clone();
            async move {
                let response = client.request(request).await.expect("response");
                let body = weir_tests::read_body(response.into_body()).await;
                String::from_utf8_lossy(&body)
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            }
        }));
        if pending.len() == 16 || i + 1 == n {
            for task in pending.drain(..) {
                *counts.entry(task.await.expect("task")).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The bar: a 95/5 split over 10,000 requests lands 9,500 ± 200 on the first cluster. Then
/// `split_by = "header:x-user"` keeps each user on one backend, and a reload that moves all
/// the weight to v2 moves everyone.
#[tokio::test(flavor = "multi_thread")]
async fn weighted_backends_split_traffic_and_keep_a_user_on_one() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let routes = |weights: (u32, u32)| {
        format!(
            r#"{preamble}{c1}{c2}
[[routes]]
name = "split"
path_prefix = "/split"
backends = [{{ cluster = "v1", weight = {a} }}, {{ cluster = "v2", weight = {b} }}]

[[routes]]
name = "sticky"
path_prefix = "/sticky"
backends = [{{ cluster = "v1", weight = {a} }}, {{ cluster = "v2", weight = {b} }}]
split_by = "header:x-user"
"#,
            preamble = preamble(),
            c1 = cluster("v1", &v1),
            c2 = cluster("v2", &v2),
            a = weights.0,
            b = weights.1,
        )
    };
    let weir = Weir::start(&routes((95, 5))).await;
    let counts = tally(&weir, "/split", 10_000, &[]).await;
    let first = counts.get("v1").copied().unwrap_or(0);
    assert!((9_300..=9_700).contains(&first), "{counts:?}");
    assert_eq!(first + counts.get("v2").copied().unwrap_or(0), 10_000);

    // Each user always lands on the same backend; with 50/50 weights both are used.
    let weir = Weir::start(&routes((50, 50))).await;
    let mut seen = HashMap::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let counts = tally(&weir, "/sticky", 10, &[("x-user", &user)]).await;
        assert_eq!(counts.len(), 1, "{user} moved: {counts:?}");
        let backend = counts.into_keys().next().unwrap_or_default();
        *seen.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "40 users all on one backend: {seen:?}");
    // A client without the key is split by weight, not sent where the empty key falls.
    let keyless = tally(&weir, "/sticky", 40, &[]).await;
    assert_eq!(
        keyless.len(),
        2,
        "every keyless request on one backend: {keyless:?}"
    );

    // Weights reload with the config: all the weight on v2 moves everyone there.
    weir.write("weir.toml", routes((0, 1)).as_bytes());
    let (status, _, report) =
        weir_tests::send_with(Method::POST, &weir.admin_url("/reload"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let counts = tally(&weir, "/sticky", 20, &[("x-user", "user-1")]).await;
    assert_eq!(counts.get("v2"), Some(&20), "{counts:?}");
    let counts = tally(&weir, "/split", 50, &[]).await;
    assert_eq!(counts.get("v2"), Some(&50), "{counts:?}");
}

/// A mirror's copies never hold the client's answer: with the mirror cluster holding every
/// request, the client's requests are all answered while the copies wait (the copies carry
/// `Host: …-shadow` and the body); with the mirror cluster down, clients see nothing of it and
/// the failures are counted in `weir_mirror_requests_total`.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_never_holds_the_clients_answer() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start_json("shadow").await;
    shadow.hold();
    let down = closed_port();
    let config = format!(
        r#"{preamble}{c1}{c2}
[[clusters]]
name = "down"
endpoints = ["{down}"]
connect_timeout = "1s"
retries = 0

[[routes]]
name = "mirrored"
path_prefix = "/m"
cluster = "primary"
mirror = {{ cluster = "shadow", percent = 100 }}

[[routes]]
name = "to-the-dead"
path_prefix = "/d"
cluster = "primary"
mirror = {{ cluster = "down", percent = 100 }}

[[routes]]
name = "sampled"
path_prefix = "/s"
cluster = "primary"
mirror = {{ cluster = "shadow", percent = 0 }}
"#,
        preamble = preamble(),
        c1 = cluster("primary", &primary),
        c2 = cluster("shadow", &shadow),
        down = down.addr,
    );
    let weir = Weir::start(&config).await;
    for i in 0..5 {
        let request = http::Request::post(weir.url(&format!("/m/{i}")))
            .header("host", "app.test")
            .body(weir_tests::full("payload"))
            .expect("request");
        let response = weir_tests::http1_client()
            .request(request)
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = weir_tests::read_body(response.into_body()).await;
        assert!(body.starts_with(b"primary POST"), "{body:?}");
    }
    // Every copy arrived and is still held: the clients were answered without them.
    shadow.wait_for_requests(5).await;
    let copies = shadow.requests();
    assert!(
        copies
            .iter()
            .all(|r| r.headers["host"] == "app.test-shadow"),
        "{copies:?}"
    );
    shadow.release();

    for _ in 0..3 {
        let (status, _, _) = weir_tests::get_with(&weir.url("/d/x"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = weir_tests::get_with(&weir.url("/s/x"), &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
        let failed = metrics.lines().any(|l| {
            l.starts_with("weir_mirror_requests_total{")
                && l.contains("route=\"to-the-dead\"")
                && l.contains("result=\"failed\"")
                && l.ends_with(" 3")
        });
        if failed {
            assert!(
                !metrics.contains("route=\"sampled\",result=\"sent\"} 1"),
                "percent = 0 copied a request"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(shadow.requests().len(), 5, "percent = 0 copied a request");
}

/// Only small bodies of known length are mirrored (`max_body_bytes`): a larger one, or one
/// of unknown length (chunked), reaches the primary whole and is counted `skipped`, never
/// copied (or read into memory for a copy).
#[tokio::test(flavor = "multi_thread")]
async fn a_large_or_unknown_length_body_is_not_mirrored() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let config = format!(
        r#"{preamble}{c1}{c2}
[[routes]]
name = "mirrored"
cluster = "primary"
mirror = {{ cluster = "shadow", percent = 100, max_body_bytes = 16 }}
"#,
        preamble = preamble(),
        c1 = cluster("primary", &primary),
        c2 = cluster("shadow", &shadow),
    );
    let weir = Weir::start(&config).await;
    let post = |body: weir_tests::ClientBody| {
        let request = http::Request::post(weir.url("/up"))
            .body(body)
            .expect("request");
        weir_tests::http1_client().request(request)
    };
    let large = post(weir_tests::full(vec![b'x'; 17]))
        .await
        .expect("response");
    assert_eq!(large.status(), StatusCode::OK);
    // A streamed body: its length is not known when the request goes on.
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        hyper::body::Frame::data(bytes::Bytes::from_static(b"tiny")),
    )]);
    let unknown = post(http_body_util::BodyExt::boxed(
        http_body_util::StreamBody::new(stream),
    ))
    .await
    .expect("response");
    assert_eq!(unknown.status(), StatusCode::OK);
    let small = post(weir_tests::full("small")).await.expect("response");
    assert_eq!(small.status(), StatusCode::OK);

    shadow.wait_for_requests(1).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
        let skipped = metrics.lines().any(|l| {
            l.contains("result=\"skipped\"")
                && l.contains("route=\"mirrored\"")
                && l.ends_with(" 2")
        });
        if skipped {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(shadow.requests().len(), 1, "only the small body was copied");
    assert_eq!(
        primary.requests().len(),
        3,
        "every request reached the primary"
    );
}

/// A client's body that fails while weir reads it for a mirror's copy is answered as the
/// primary path answers one, from the request's body watch: a stalled upload is 408
/// (`body_read_timeout`), a client gone mid-body 499 — the client's fault, never a 400 for
/// weir's own read nor a 5xx — and neither the primary nor the shadow is sent anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_fails_while_it_is_read_for_a_mirror_is_the_clients_fault() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let config = format!(
        r#"{preamble}[server.limits]
body_read_timeout = "300ms"

{c1}{c2}
[[routes]]
name = "mirrored"
cluster = "primary"
mirror = {{ cluster = "shadow", percent = 100, max_body_bytes = 1000 }}
"#,
        preamble = preamble(),
        c1 = cluster("primary", &primary),
        c2 = cluster("shadow", &shadow),
    );
    let mut weir = Weir::start(&config).await;
    let head = "POST /up HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\n\r\n0123456789";

    // 10 of 100 bytes, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    stalled.write_all(head.as_bytes()).await.expect("head");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(weir_tests::DEADLINE, stalled.read_to_end(&mut answer))
        .await
        .expect("an answer in time");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

    // 10 of 100 bytes, then the client goes away.
    let mut gone = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    gone.write_all(head.as_bytes()).await.expect("head");
    drop(gone);

    let failed = |l: &serde_json::Value| l["fields"]["message"] == "request failed";
    let logs = weir
        .wait_for_logs(|logs| logs.iter().filter(|l| failed(l)).count() == 2)
        .await;
    let statuses: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| failed(l))
        .map(|l| &l["fields"]["status"])
        .collect();
    assert_eq!(statuses, [408, 499], "{logs:#?}");
    assert!(primary.requests().is_empty(), "the primary got nothing");
    assert!(shadow.requests().is_empty(), "the shadow got nothing");
}
