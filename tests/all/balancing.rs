//! Load-balancing algorithms through a real weir, against real upstreams: weighted round
//! robin, least request, random, consistent hash and first, each by the share of requests
//! every upstream received.

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use weir_tests::{Upstream, Weir, closed_port, empty, http1_client, read_body};

/// weir with one cluster `app` over `endpoints` (TOML values) and a catch-all route.
fn config(endpoints: &[String], cluster_extra: &str) -> String {
    let base = crate::config(&[], "");
    base.replace(
        "endpoints = []",
        &format!("endpoints = [{}]\n{cluster_extra}", endpoints.join(", ")),
    )
}

/// Sends `total` GETs from `clients` concurrent clients; counts the answering upstream (the
/// first word of each body). With `header = Some((name, keys))`, each request carries
/// `name: key-N` for N cycling through `0..keys`.
async fn spread(
    weir: &Weir,
    total: usize,
    clients: usize,
    header: Option<(&str, usize)>,
) -> HashMap<String, usize> {
    let per_client = total / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = weir.url("/spread");
        let header = header.map(|(name, keys)| (name.to_owned(), keys));
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen = Vec::new();
            for i in 0..per_client {
                let mut request = Request::get(&url);
                if let Some((name, keys)) = &header {
                    let key = format!("key-{}", (c * per_client + i) % keys);
                    request = request.header(name.as_str(), key);
                }
                let response = client
                    .request(request.body(empty()).expect("request"))
                    .await
                    .expect("response");
                assert!(response.status().is_success(), "{}", response.status());
                let body = read_body(response.into_body()).await;
                let text = String::from_utf8_lossy(&body);
                seen.push(text.split(' ').next().unwrap_or("").to_owned());
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for upstream in t.await.expect("client") {
            *counts.entry(upstream).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_round_robin_is_three_to_one() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let endpoints = [
        format!("{{ address = \"{}\", weight = 3 }}", a.addr),
        format!("\"{}\"", b.addr),
    ];
    let weir = Weir::start(&config(&endpoints, "")).await;
    let counts = spread(&weir, 4000, 8, None).await;
    // Smooth weighted round robin is exact over every 4 requests.
    assert_eq!((counts["a"], counts["b"]), (3000, 1000), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_request_prefers_the_fast_endpoint() {
    let slow = Upstream::start_with_delay("slow", Duration::from_millis(40)).await;
    let fast = Upstream::start("fast").await;
    let endpoints = [format!("\"{}\"", slow.addr), format!("\"{}\"", fast.addr)];
    let weir = Weir::start(&config(&endpoints, "lb = \"least_request\"")).await;
    let counts = spread(&weir, 400, 16, None).await;
    let fast_share = counts.get("fast").copied().unwrap_or(0) as f64 / 400.0;
    // Round robin would give each half; the slow one holds requests longer, so it loses.
    assert!(
        fast_share > 0.8,
        "fast endpoint got {fast_share:.2}: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_spreads_by_weight() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let endpoints = [format!("\"{}\"", a.addr), format!("\"{}\"", b.addr)];
    let weir = Weir::start(&config(&endpoints, "lb = \"random\"")).await;
    let counts = spread(&weir, 2000, 8, None).await;
    // Expected 1000 each; 5 standard deviations is about 112.
    assert!((850..=1150).contains(&counts["a"]), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn first_sends_everything_to_the_first_endpoint() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let endpoints = [format!("\"{}\"", a.addr), format!("\"{}\"", b.addr)];
    let weir = Weir::start(&config(&endpoints, "lb = \"first\"")).await;
    let counts = spread(&weir, 200, 4, None).await;
    assert_eq!(counts.get("a"), Some(&200), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let upstreams = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    let extra = "lb = \"consistent_hash\"\nhash_key = \"header:x-user\"";
    let weir = Weir::start(&config(&endpoints, extra)).await;
    spread(&weir, 600, 6, Some(("x-user", 30))).await;
    // Each of the 30 keys must have gone to exactly one upstream, and every upstream got keys.
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, u) in upstreams.iter().enumerate() {
        let requests = u.requests();
        assert!(!requests.is_empty(), "upstream {i} got no keys");
        for r in requests {
            let key = r.headers["x-user"].to_str().expect("ascii").to_owned();
            let previous = owner.insert(key.clone(), i);
            assert!(
                previous.is_none_or(|p| p == i),
                "{key} went to two upstreams"
            );
        }
    }
    assert_eq!(owner.len(), 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_hides_a_dead_endpoint_unless_the_body_was_streamed() {
    let alive = Upstream::start("alive").await;
    let dead = closed_port();
    // `first` sends everything to the dead endpoint first, so every request needs its retry.
    let endpoints = [format!("\"{dead}\""), format!("\"{}\"", alive.addr)];
    let weir = Weir::start(&config(&endpoints, "lb = \"first\"")).await;

    // A connect failure is safe to retry for any method: a small body was held in memory
    // and goes to the next endpoint. A body too large to hold was streamed into the failed
    // attempt and cannot be sent again: 502.
    let post = |body: Vec<u8>| {
        let url = weir.url("/upload");
        async move {
            let response = http1_client()
                .request(
                    Request::post(url)
                        .body(weir_tests::full(body))
                        .expect("request"),
                )
                .await
                .expect("response");
            let status = response.status();
            let answer = read_body(response.into_body()).await;
            (status, String::from_utf8_lossy(&answer).into_owned())
        }
    };
    // The retried attempt carries the whole body: `/upload` answers its length and SHA-256.
    let (len, hex) = weir_tests::hash_body(weir_tests::full("payload")).await;
    assert_eq!(
        post(b"payload".to_vec()).await,
        (http::StatusCode::OK, format!("{len} {hex}"))
    );
    assert_eq!(
        post(vec![b'x'; 100 << 10]).await.0,
        http::StatusCode::BAD_GATEWAY
    );

    // One client, so failures arrive in a known order.
    let counts = spread(&weir, 50, 1, None).await;
    assert_eq!(counts.get("alive"), Some(&50), "{counts:?}");
    // Outlier detection (on by default: 5 failures in a row) ejected the dead endpoint after
    // the two POSTs and three GETs, so only those three needed their retry.
    let state = weir.clusters().await;
    assert_eq!(state[0]["endpoints"][0]["failed_requests"], 5);
    assert!(
        state[0]["endpoints"][0]["ejected_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 20_000)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_zero_turns_retrying_off() {
    let alive = Upstream::start("alive").await;
    let dead = closed_port();
    let endpoints = [format!("\"{dead}\""), format!("\"{}\"", alive.addr)];
    let weir = Weir::start(&config(&endpoints, "lb = \"first\"\nretries = 0")).await;
    let response = http1_client()
        .get(weir.url("/x").parse().expect("uri"))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
}

/// Polls `/clusters` until endpoint `i` of the first cluster has `healthy == want`; returns
/// how long that took.
async fn until_health(weir: &Weir, i: usize, want: bool) -> Duration {
    let started = tokio::time::Instant::now();
    while weir.clusters().await[0]["endpoints"][i]["healthy"] != serde_json::Value::Bool(want) {
        assert!(
            started.elapsed() < weir_tests::DEADLINE,
            "endpoint {i} never became healthy={want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// The bar, shortened: one of three endpoints dies under a GET load and comes back.
/// No client sees an error; `/clusters` shows it unhealthy within two check intervals and
/// healthy again after the healthy threshold.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_endpoint_is_ejected_without_client_errors_and_readmitted() {
    let interval = Duration::from_millis(300);
    let mut upstreams = vec![
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    let extra = "health_check = { path = \"/health\", interval = \"300ms\", timeout = \"250ms\", \
                 jitter = \"0ms\", healthy_threshold = 2, unhealthy_threshold = 2 }";
    let weir = Weir::start(&config(&endpoints, extra)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (weir.url("/load"), stop.clone());
        load.push(tokio::spawn(async move {
            let client = http1_client();
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                match client.get(url.parse().expect("uri")).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = read_body(r.into_body()).await;
                    }
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (sent, failed)
        }));
    }

    tokio::time::sleep(interval).await;
    let victim = upstreams.remove(1);
    let addr = victim.addr;
    drop(victim);
    let took = until_health(&weir, 1, false).await;
    assert!(
        took <= 2 * interval + Duration::from_secs(1),
        "unhealthy after {took:?}"
    );
    let state = weir.clusters().await;
    assert!(
        state[0]["endpoints"][1]["last_check_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("connecting to {addr}:"))),
        "{state}"
    );

    // Back on the same address: healthy again after two passing checks.
    let back = Upstream::restart_at(addr, "b").await;
    let took = until_health(&weir, 1, true).await;
    assert!(
        took <= 3 * interval + Duration::from_secs(1),
        "healthy after {took:?}"
    );
    // And it takes traffic again at once: a passing check ended any ejection by outlier
    // detection (whose 30 s would outlast this test's deadline).
    back.wait_for_requests(1).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    for task in load {
        let (s, f) = task.await.expect("client");
        sent += s;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:?}",
        failed.len()
    );
    assert!(sent > 50, "the load sent only {sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_cookie_round_trip_and_failover() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let endpoints = [format!("\"{}\"", a.addr), format!("\"{}\"", b.addr)];
    let weir = Weir::start(&config(
        &endpoints,
        "sticky = { cookie = \"srv\", ttl = \"10m\" }",
    ))
    .await;
    let get = |cookie: Option<String>| {
        let url = weir.url("/s");
        async move {
            let mut request = Request::get(url);
            if let Some(c) = cookie {
                request = request.header("cookie", format!("theme=dark; {c}"));
            }
            let response = http1_client()
                .request(request.body(empty()).expect("request"))
                .await
                .expect("response");
            assert!(response.status().is_success(), "{}", response.status());
            let set = response
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let body = read_body(response.into_body()).await;
            (
                String::from_utf8_lossy(&body)
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                set,
            )
        }
    };
    let (first, set) = get(None).await;
    let set = set.expect("the first response sets the cookie");
    assert!(
        set.starts_with("srv=") && set.contains("Max-Age=600") && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(
        !set.contains(&a.addr.to_string()) && !set.contains(&b.addr.to_string()),
        "the cookie names the address: {set}"
    );
    let cookie = set.split(';').next().expect("pair").to_owned();
    for _ in 0..10 {
        let (upstream, set_again) = get(Some(cookie.clone())).await;
        assert_eq!(upstream, first, "the cookie did not stick");
        assert_eq!(set_again, None, "an honoured cookie is not set again");
    }

    // The stuck endpoint dies: the request fails over and re-sticks to the other.
    if first == "a" {
        drop(a);
    } else {
        drop(b);
    }
    let (upstream, set) = get(Some(cookie.clone())).await;
    assert_ne!(upstream, first);
    let new_cookie = set
        .expect("failover re-sticks")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    assert_ne!(new_cookie, cookie);
    assert_eq!(get(Some(new_cookie)).await.0, upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_requests_answers_503_at_once_and_recovers() {
    let upstream = Upstream::start("one").await;
    let endpoints = [format!("\"{}\"", upstream.addr)];
    let weir = Weir::start(&config(&endpoints, "max_requests = 2")).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = weir.url("/slow");
            tokio::spawn(async move {
                let response = http1_client()
                    .get(url.parse().expect("uri"))
                    .await
                    .expect("response");
                response.status()
            })
        })
        .collect();
    upstream.wait_for_requests(2).await;
    let response = http1_client()
        .get(weir.url("/fast").parse().expect("uri"))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        read_body(response.into_body()).await,
        "upstream overloaded\n"
    );
    assert_eq!(weir.clusters().await[0]["rejected_requests"], 1);

    upstream.release();
    for t in slow {
        assert!(t.await.expect("slow request").is_success());
    }
    let response = http1_client()
        .get(weir.url("/fast").parse().expect("uri"))
        .await
        .expect("response");
    assert!(response.status().is_success());
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_on_statuses_retries_idempotent_requests_and_opted_in_routes() {
    let failing = Upstream::start_with_status("failing", 503).await;
    let ok = Upstream::start("ok").await;
    let endpoints = [format!("\"{}\"", failing.addr), format!("\"{}\"", ok.addr)];
    let cluster =
        "lb = \"first\"\nretry_on_statuses = [503]\noutlier_detection = { enabled = false }";
    let mut config = config(&endpoints, cluster);
    config.push_str(
        "\n[[routes]]\nname = \"opted-in\"\npath_prefix = \"/opted\"\ncluster = \"app\"\nretry_non_idempotent = true\n",
    );
    let weir = Weir::start(&config).await;
    let send = |method: &'static str, path: &'static str| {
        let url = weir.url(path);
        async move {
            let request = Request::builder()
                .method(method)
                .uri(url)
                .body(weir_tests::full("x"))
                .expect("request");
            http1_client()
                .request(request)
                .await
                .expect("response")
                .status()
        }
    };
    assert_eq!(send("GET", "/a").await, http::StatusCode::OK);
    // POST is not idempotent: the 503 is the answer.
    assert_eq!(
        send("POST", "/a").await,
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    // Unless the route opts in.
    assert_eq!(send("POST", "/opted").await, http::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_try_timeout_is_retried_for_gets_and_request_timeout_bounds_the_whole() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let endpoints = [format!("\"{}\"", a.addr), format!("\"{}\"", b.addr)];
    let cluster = "response_timeout = \"200ms\"\nrequest_timeout = \"5s\"";
    let weir = Weir::start(&config(&endpoints, cluster)).await;
    let response = http1_client()
        .get(weir.url("/hang").parse().expect("uri"))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
    // The first attempt timed out on one endpoint and the retry went to the other.
    assert_eq!((a.requests().len(), b.requests().len()), (1, 1));

    let cluster = "response_timeout = \"2s\"\nrequest_timeout = \"300ms\"";
    let weir = Weir::start(&config(&endpoints, cluster)).await;
    let started = tokio::time::Instant::now();
    let response = http1_client()
        .get(weir.url("/hang").parse().expect("uri"))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "request_timeout did not apply"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_and_max_pending_cap_the_upstream_side() {
    let upstream = Upstream::start("one").await;
    let endpoints = [format!("\"{}\"", upstream.addr)];
    let weir = Weir::start(&config(&endpoints, "max_connections = 1\nmax_pending = 1")).await;
    let slow = |path: &'static str| {
        let url = weir.url(path);
        tokio::spawn(async move {
            http1_client()
                .get(url.parse().expect("uri"))
                .await
                .expect("response")
                .status()
        })
    };
    // One request holds the only connection; a second waits for it.
    let first = slow("/slow");
    upstream.wait_for_requests(1).await;
    let second = slow("/slow");
    let started = tokio::time::Instant::now();
    while weir.clusters().await[0]["pending_requests"] != 1 {
        assert!(
            started.elapsed() < weir_tests::DEADLINE,
            "the second request never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(weir.clusters().await[0]["open_connections"], 1);
    // A third has nowhere to wait: 503 at once.
    let response = http1_client()
        .get(weir.url("/third").parse().expect("uri"))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        read_body(response.into_body()).await,
        "upstream overloaded\n"
    );

    upstream.release();
    assert!(first.await.expect("first").is_success());
    // The second got the connection when the first finished (and may need a release too).
    upstream.wait_for_requests(2).await;
    upstream.release();
    assert!(second.await.expect("second").is_success());
    // Overload is not the endpoint's fault: it was not ejected.
    assert!(weir.clusters().await[0]["endpoints"][0]["ejected_for_ms"].is_null());
}
