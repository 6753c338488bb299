//! Load-balancing algorithms through a real weir, against real upstreams: weighted round
//! robin, least request, random, consistent hash and first, each by the share of requests
//! every upstream received.

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use weir_tests::{Upstream, Weir, empty, http1_client, read_body};

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
        fast_share > 0.7,
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
