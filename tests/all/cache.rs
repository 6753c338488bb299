//! The response cache (docs/design/response-cache.md) through a real weir, in front of a
//! scripted upstream that counts what reaches it, with real clients (hyper, curl): what is
//! stored and what is not, how hits, misses, variants and collapsed misses are marked in
//! `Cache-Status`, revalidation with `ETag` and `Last-Modified`, `stale-while-revalidate` and
//! `stale-if-error`, clients' own conditional requests, that request filters (auth) still run
//! before a hit and response filters after it, purging on the admin listener, the metrics,
//! eviction past `max_bytes`, `lock_timeout`, and a cache kept or emptied across reloads.
//!
//! Every request sends `Host: cache.test`, so the keys are `http://cache.test/PATH`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, StatusCode};
use tokio::time::Instant;
use weir_tests::scripted::Answer;
use weir_tests::{DEADLINE, Weir, http1_client, metric, read_body};

use crate::cache_harness::{HttpClient, Origin, Reply, config, header, request, route, target};

const TRANSFORM: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/transform.wasm"));
const HEADERS: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/headers.wasm"));

/// The admin token of the purge test.
const TOKEN: &str = "purge-t0k3n-for-the-cache-tests";

/// weir with a cached route in front of an [`Origin`], and a client.
struct Cached {
    weir: Weir,
    origin: Origin,
    client: HttpClient,
}

impl Cached {
    /// weir on `config(origin, "", "", routes)` with `files`.
    async fn start(origin: Origin, routes: &str, files: &[(&str, &[u8])]) -> Cached {
        Cached::start_with_admin(origin, "", routes, files).await
    }

    async fn start_with_admin(
        origin: Origin,
        admin: &str,
        routes: &str,
        files: &[(&str, &[u8])],
    ) -> Cached {
        let weir = Weir::start_with_files(&config(origin.addr(), admin, "", routes), files).await;
        Cached {
            weir,
            origin,
            client: http1_client(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }

    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(&self.client, method, &self.weir.url(path), headers).await
    }

    /// GETs `path` every 100 ms while the answer is a fresh hit; returns the first that is
    /// not (the stored response went stale). Panics at the deadline.
    async fn get_once_stale(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let reply = self.get(path, headers).await;
            if !reply.is_fresh_hit() {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never went stale: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/metrics` of the admin listener.
    async fn metrics(&self) -> String {
        self.weir.metrics().await
    }
}

/// Asserts `reply` was fetched for a key with no entry and stored: `fwd=uri-miss` and
/// `stored` in weir's `Cache-Status` member. (The exact member, `weir; fwd=uri-miss; stored`
/// in the spec, is checked by the bar tests.)
fn assert_stored_miss(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}");
    let params = reply.params();
    assert!(
        params.first().is_some_and(|p| p == "fwd=uri-miss")
            && params.iter().any(|p| p == "stored")
            && !params.iter().any(|p| p == "hit" || p == "collapsed"),
        "{what}: not a stored uri-miss: {reply:?}"
    );
}

/// Asserts `reply` is a fresh hit: `Cache-Status` exactly `weir; hit; ttl=N` with
/// `0 <= N <= max_ttl`, and an `Age` in whole seconds.
fn assert_hit(reply: &Reply, max_ttl: i64, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {reply:?}");
    let status = reply.cache_status();
    let ttl = status
        .strip_prefix("weir; hit; ttl=")
        .and_then(|t| t.parse::<i64>().ok());
    assert!(
        ttl.is_some_and(|t| (0..=max_ttl).contains(&t)),
        "{what}: Cache-Status {status:?} is not `weir; hit; ttl=N` with N in 0..={max_ttl}"
    );
    let age = reply.header("age");
    assert!(
        age.parse::<u64>().is_ok(),
        "{what}: a hit has Age in seconds, got {age:?}: {reply:?}"
    );
}

/// GETs `path` twice with `headers`: the first is fetched and stored, the second a hit with
/// the same body; the upstream got one request.
async fn assert_stored(cached: &Cached, path: &str, headers: &[(&str, &str)]) {
    let before = cached.origin.count(path);
    let first = cached.get(path, headers).await;
    assert_eq!(first.status, StatusCode::OK, "{path}: {first:?}");
    assert_stored_miss(&first, path);
    let second = cached.get(path, headers).await;
    assert_hit(&second, 60, path);
    assert_eq!(second.text(), first.text(), "{path}");
    assert_eq!(
        cached.origin.count(path),
        before + 1,
        "{path}: the upstream's requests"
    );
}

/// GETs `path` twice with `headers`: both reach the upstream (whose bodies start with
/// `PATH #N`) and neither is marked `stored`.
async fn assert_not_stored(cached: &Cached, path: &str, headers: &[(&str, &str)]) {
    let before = cached.origin.count(path);
    for i in before..before + 2 {
        let reply = cached.get(path, headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        assert!(
            reply.text().starts_with(&format!("{path} #{i}")),
            "{path}: answered from the store: {:?}",
            reply.text()
        );
        let status = reply.cache_status();
        assert!(
            !status.contains("stored") && !reply.params().iter().any(|p| p == "hit"),
            "{path}: {status}"
        );
    }
    assert_eq!(
        cached.origin.count(path),
        before + 2,
        "{path}: the upstream's requests"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut decoded)
        .expect("gunzip");
    decoded
}

/// `t` as an HTTP date (IMF-fixdate).
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let days = i64::try_from(secs / 86_400).expect("days");
    let rem = secs % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        [usize::try_from(days % 7).expect("weekday")];
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][usize::try_from(month - 1).expect("month")];
    format!(
        "{weekday}, {day:02} {name} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A `Last-Modified` a day ago.
fn a_day_ago() -> String {
    http_date(SystemTime::now() - Duration::from_secs(86_400))
}

/// Waits until `done` holds, checking every 20 ms; panics with `what` at the deadline.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not before the deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bar: with `cache = {}` and `Cache-Control: max-age=60` from the upstream, 1,000
/// sequential GETs reach the upstream once; the first is marked `fwd=uri-miss; stored`, the
/// rest are hits with `Age` and a `ttl` in `Cache-Status`.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_gets_reach_the_upstream_once() {
    let origin = Origin::start(|_, _| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("content-type", "text/plain")
            .body("the page")
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;

    let first = cached.get("/page", &[]).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (StatusCode::OK, "the page")
    );
    assert_eq!(
        first.header("cache-status"),
        "weir; fwd=uri-miss; fwd-status=200; stored"
    );
    for i in 1..1000 {
        let reply = cached.get("/page", &[]).await;
        assert_eq!(reply.text(), "the page", "request {i}");
        assert_hit(&reply, 60, &format!("request {i}"));
    }
    assert_eq!(cached.origin.count("/page"), 1, "the upstream's requests");
    assert_eq!(cached.origin.all().len(), 1);
}

/// The bar: with `Vary: Accept-Encoding`, a gzip client and an identity client each get
/// their own variant, every time, from two upstream requests; the second variant's first
/// request is a `fwd=vary-miss`.
#[tokio::test(flavor = "multi_thread")]
async fn vary_keeps_one_variant_per_accept_encoding() {
    let plain = "a body that is worth compressing, again and again. ".repeat(40);
    let body = plain.clone();
    let origin = Origin::start(move |head, _| {
        let answer = Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding")
            .header("content-type", "text/plain");
        if header(head, "accept-encoding").contains("gzip") {
            answer
                .header("content-encoding", "gzip")
                .body(gzip(body.as_bytes()))
        } else {
            answer.body(body.clone())
        }
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    let gzip_client = [("accept-encoding", "gzip")];
    let identity_client = [("accept-encoding", "identity")];

    let first = cached.get("/v", &gzip_client).await;
    assert_eq!(
        first.cache_status(),
        "weir; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(first.header("content-encoding"), "gzip");
    assert_eq!(gunzip(&first.body), plain.as_bytes());
    let second = cached.get("/v", &identity_client).await;
    assert_eq!(
        second.cache_status(),
        "weir; fwd=vary-miss; fwd-status=200; stored"
    );
    assert_eq!(second.header("content-encoding"), "");
    assert_eq!(second.text(), plain);

    for i in 0..10 {
        let zipped = cached.get("/v", &gzip_client).await;
        assert_hit(&zipped, 60, &format!("gzip {i}"));
        assert_eq!(zipped.header("content-encoding"), "gzip", "gzip {i}");
        assert_eq!(gunzip(&zipped.body), plain.as_bytes(), "gzip {i}");
        let unzipped = cached.get("/v", &identity_client).await;
        assert_hit(&unzipped, 60, &format!("identity {i}"));
        assert_eq!(
            unzipped.header("content-encoding"),
            "",
            "identity {i}: {unzipped:?}"
        );
        assert_eq!(unzipped.text(), plain, "identity {i}");
    }
    let asked: Vec<String> = cached
        .origin
        .requests("/v")
        .iter()
        .map(|h| header(h, "accept-encoding").to_owned())
        .collect();
    assert_eq!(asked, ["gzip", "identity"], "the upstream's requests");
}

/// The bar: 100 concurrent requests for one cold key send one request upstream (which
/// answers after a delay); all 100 get the body, the waiters marked `collapsed`.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_collapse_into_one_upstream_request() {
    // Long enough that all 100 requests are in weir before the answer, on a loaded machine.
    let origin = Origin::start(|_, _| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body("worth the wait")
            .after(Duration::from_secs(3))
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    let url = cached.weir.url("/cold");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (cached.client.clone(), url.clone());
            tokio::spawn(async move { request(&client, Method::GET, &url, &[]).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let reply = task.await.expect("request task");
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "worth the wait")
        );
        statuses.push(reply.cache_status());
    }
    assert_eq!(cached.origin.count("/cold"), 1, "the upstream's requests");
    let stored = statuses
        .iter()
        .filter(|s| s.starts_with("weir; fwd=uri-miss;") && s.ends_with("; stored"))
        .count();
    // `weir; fwd=uri-miss; fwd-status=200; collapsed`.
    let collapsed = statuses
        .iter()
        .filter(|s| s.contains("fwd=uri-miss") && s.contains("collapsed") && !s.contains("hit"))
        .count();
    let mut kinds = std::collections::BTreeMap::new();
    for status in &statuses {
        *kinds.entry(status.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        (stored, collapsed),
        (1, 99),
        "Cache-Status values: {kinds:#?}"
    );
}

/// Each directive against the real upstream: what is stored and what is not, and how
/// requests that are not looked up are marked.
#[tokio::test(flavor = "multi_thread")]
async fn directives_decide_what_is_stored() {
    let origin = Origin::start(|head, n| {
        let path = head.uri.path().to_owned();
        let ok = Answer::status(200).header("content-type", "text/plain");
        let answer = match path.as_str() {
            "/s-maxage" => ok.header("cache-control", "max-age=0, s-maxage=60"),
            "/expires" => {
                let now = SystemTime::now();
                ok.header("date", &http_date(now))
                    .header("expires", &http_date(now + Duration::from_secs(60)))
            }
            "/no-store" => ok.header("cache-control", "max-age=60, no-store"),
            "/private" => ok.header("cache-control", "private, max-age=60"),
            "/authorized-public" => ok.header("cache-control", "public, max-age=60"),
            "/cookie" => ok
                .header("cache-control", "max-age=60")
                .header("set-cookie", &format!("session={n}; HttpOnly")),
            "/heuristic" => ok.header("last-modified", &a_day_ago()),
            "/vary-star" => ok.header("cache-control", "max-age=60").header("vary", "*"),
            "/missing" => Answer::status(404).header("cache-control", "max-age=60"),
            "/broken" => Answer::status(500).header("cache-control", "max-age=60"),
            _ => ok.header("cache-control", "max-age=60"),
        };
        let body = format!("{} #{n}", target(head));
        if path == "/big" {
            answer.body(format!("{body}\n{}", "x".repeat(4096)))
        } else {
            answer.body(body)
        }
    })
    .await;
    let routes = route("cached", "cache = { max_object_bytes = 1024 }");
    let cached = Cached::start(origin, &routes, &[]).await;

    // s-maxage wins over max-age for a shared cache; Expires minus Date is freshness.
    assert_stored(&cached, "/s-maxage", &[]).await;
    assert_stored(&cached, "/expires", &[]).await;

    // Never stored: no-store, private, Set-Cookie, no explicit freshness, Vary: *.
    assert_not_stored(&cached, "/no-store", &[]).await;
    assert_not_stored(&cached, "/private", &[]).await;
    assert_not_stored(&cached, "/cookie", &[]).await;
    assert_not_stored(&cached, "/heuristic", &[]).await;
    assert_not_stored(&cached, "/vary-star", &[]).await;

    // The request's no-store: not stored; the next request without it is a plain miss.
    assert_not_stored(
        &cached,
        "/request-no-store",
        &[("cache-control", "no-store")],
    )
    .await;
    let after = cached.get("/request-no-store", &[]).await;
    assert_stored_miss(&after, "miss");

    // Authorization: stored only when the response says public.
    let bearer = [("authorization", "Bearer t0k3n")];
    assert_not_stored(&cached, "/authorized", &bearer).await;
    assert_stored(&cached, "/authorized-public", &bearer).await;

    // Larger than max_object_bytes: passed on whole, not stored.
    assert_not_stored(&cached, "/big", &[]).await;
    let big = cached.get("/big", &[]).await;
    assert_eq!(big.body.len(), "/big #2\n".len() + 4096, "passed on whole");

    // POST is not looked up, and leaves nothing for a GET.
    for i in 0..2 {
        let reply = cached.send(Method::POST, "/post", &[]).await;
        assert_eq!(reply.text(), format!("/post #{i}"));
        assert_eq!(
            reply.params().first().map(String::as_str),
            Some("fwd=method"),
            "{reply:?}"
        );
    }
    let get = cached.get("/post", &[]).await;
    assert_stored_miss(&get, "miss");
    assert_eq!(cached.origin.count("/post"), 3);

    // Range bypasses a stored entry.
    assert_stored(&cached, "/range", &[]).await;
    let ranged = cached.get("/range", &[("range", "bytes=0-3")]).await;
    assert_eq!(
        ranged.params().first().map(String::as_str),
        Some("fwd=bypass"),
        "{ranged:?}"
    );
    assert_eq!(cached.origin.count("/range"), 2);

    // A 404 with freshness is stored; a 500 is not (not a status the spec lists).
    for (path, status, stored) in [("/missing", 404, true), ("/broken", 500, false)] {
        for i in 0..2 {
            let reply = cached.get(path, &[]).await;
            assert_eq!(reply.status, status, "{path}: {reply:?}");
            let hit = reply.params().iter().any(|p| p == "hit");
            assert_eq!(hit, stored && i == 1, "{path} #{i}: {reply:?}");
        }
        let expected = if stored { 1 } else { 2 };
        assert_eq!(cached.origin.count(path), expected, "{path}");
    }

    // The request's no-cache goes upstream even though the entry is fresh.
    assert_stored(&cached, "/request-no-cache", &[]).await;
    let forced = cached
        .get("/request-no-cache", &[("cache-control", "no-cache")])
        .await;
    assert!(forced.cache_status().contains("fwd=request"), "{forced:?}");
    assert_eq!(forced.text(), "/request-no-cache #1");
    assert_eq!(cached.origin.count("/request-no-cache"), 2);
}

/// A stale entry is revalidated with its validator: `If-None-Match` for an `ETag`,
/// `If-Modified-Since` for a `Last-Modified`; a `304` (with a new max-age) serves the stored
/// body with `200` and refreshes the entry; a `200` replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn stale_entries_are_revalidated_with_their_validators() {
    let modified = a_day_ago();
    let last_modified = modified.clone();
    let origin = Origin::start(move |head, n| match head.uri.path() {
        "/etag" if header(head, "if-none-match") == "\"e1\"" => Answer::status(304)
            .header("cache-control", "max-age=60")
            .header("etag", "\"e1\""),
        "/etag" => Answer::status(200)
            .header("cache-control", "max-age=1")
            .header("etag", "\"e1\"")
            .body(format!("etag body #{n}")),
        "/last-modified" if !header(head, "if-modified-since").is_empty() => {
            Answer::status(304).header("cache-control", "max-age=60")
        }
        "/last-modified" => Answer::status(200)
            .header("cache-control", "max-age=1")
            .header("last-modified", &last_modified)
            .body(format!("dated body #{n}")),
        _ if n == 0 => Answer::status(200)
            .header("cache-control", "max-age=1")
            .header("etag", "\"r1\"")
            .body("old"),
        _ => Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("etag", "\"r2\"")
            .body("new"),
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    for path in ["/etag", "/last-modified", "/replace"] {
        let first = cached.get(path, &[]).await;
        assert_stored_miss(&first, path);
    }

    // ETag: If-None-Match, a 304, the stored body.
    let revalidated = cached.get_once_stale("/etag", &[]).await;
    assert_eq!(
        (revalidated.status, revalidated.text().as_str()),
        (StatusCode::OK, "etag body #0"),
        "{revalidated:?}"
    );
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{revalidated:?}"
    );
    let asked = cached.origin.requests("/etag");
    assert_eq!(asked.len(), 2);
    assert_eq!(header(&asked[1], "if-none-match"), "\"e1\"");
    // The 304's max-age=60 applies from now on.
    let refreshed = cached.get("/etag", &[]).await;
    assert_hit(&refreshed, 60, "after the 304");
    assert!(refreshed.ttl().is_some_and(|t| t > 1), "{refreshed:?}");
    assert_eq!(refreshed.text(), "etag body #0");
    assert_eq!(cached.origin.count("/etag"), 2);

    // Last-Modified: If-Modified-Since with its value.
    let revalidated = cached.get_once_stale("/last-modified", &[]).await;
    assert_eq!(
        (revalidated.status, revalidated.text().as_str()),
        (StatusCode::OK, "dated body #0"),
        "{revalidated:?}"
    );
    assert!(
        revalidated
            .cache_status()
            .contains("fwd=stale; fwd-status=304"),
        "{revalidated:?}"
    );
    let asked = cached.origin.requests("/last-modified");
    assert_eq!(asked.len(), 2);
    assert_eq!(header(&asked[1], "if-modified-since"), modified);
    assert_hit(
        &cached.get("/last-modified", &[]).await,
        60,
        "after the 304",
    );
    assert_eq!(cached.origin.count("/last-modified"), 2);

    // A 200 to the revalidation replaces the entry.
    let replaced = cached.get_once_stale("/replace", &[]).await;
    assert_eq!(replaced.text(), "new", "{replaced:?}");
    assert!(
        replaced.cache_status().contains("fwd=stale")
            && replaced.cache_status().contains("fwd-status=200"),
        "{replaced:?}"
    );
    assert_eq!(
        header(&cached.origin.requests("/replace")[1], "if-none-match"),
        "\"r1\""
    );
    let after = cached.get("/replace", &[]).await;
    assert_hit(&after, 60, "the replacement");
    assert_eq!(after.text(), "new");
    assert_eq!(after.header("etag"), "\"r2\"");
    assert_eq!(cached.origin.count("/replace"), 2);
}

/// `no-cache` with an `ETag` is stored but revalidated on every request: the upstream sees
/// each one, conditional, and its `304` serves the stored body.
#[tokio::test(flavor = "multi_thread")]
async fn no_cache_revalidates_every_request() {
    let origin = Origin::start(|head, n| {
        if header(head, "if-none-match") == "\"n1\"" {
            Answer::status(304)
                .header("cache-control", "no-cache")
                .header("etag", "\"n1\"")
        } else {
            Answer::status(200)
                .header("cache-control", "no-cache")
                .header("etag", "\"n1\"")
                .body(format!("no-cache body #{n}"))
        }
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;

    let first = cached.get("/nc", &[]).await;
    assert_stored_miss(&first, "miss");
    for i in 1..4 {
        let reply = cached.get("/nc", &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "no-cache body #0"),
            "request {i}: {reply:?}"
        );
        assert!(
            reply.cache_status().contains("fwd-status=304"),
            "request {i}: {reply:?}"
        );
        let asked = cached.origin.requests("/nc");
        assert_eq!(asked.len(), i + 1, "request {i} reached the upstream");
        assert_eq!(header(&asked[i], "if-none-match"), "\"n1\"", "request {i}");
    }
}

/// A client's own conditional request is answered by weir: `304` when `If-None-Match`
/// matches the stored `ETag` (weakly) or `If-Modified-Since` is not before its
/// `Last-Modified`, `200` otherwise; on a miss it is not forwarded (weir needs the whole
/// response) and is answered from what was stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_conditional_request_is_answered_from_the_store() {
    let modified = a_day_ago();
    let last_modified = modified.clone();
    let origin = Origin::start(move |head, _| {
        // An upstream that honoured the condition would leave weir nothing to store.
        if !header(head, "if-none-match").is_empty()
            || !header(head, "if-modified-since").is_empty()
        {
            return Answer::status(304).header("etag", "\"c1\"");
        }
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("etag", "\"c1\"")
            .header("last-modified", &last_modified)
            .body("conditional body")
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;

    // A cold key: the condition is not forwarded; the client still gets its 304.
    let first = cached.get("/c", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED, "{first:?}");
    let asked = cached.origin.requests("/c");
    assert_eq!(asked.len(), 1);
    assert_eq!(
        header(&asked[0], "if-none-match"),
        "",
        "forwarded: {:?}",
        asked[0]
    );
    let whole = cached.get("/c", &[]).await;
    assert_hit(&whole, 60, "the stored whole response");
    assert_eq!(whole.text(), "conditional body");

    let earlier = http_date(SystemTime::now() - Duration::from_secs(2 * 86_400));
    for (headers, expected) in [
        (vec![("if-none-match", "\"c1\"")], StatusCode::NOT_MODIFIED),
        (
            vec![("if-none-match", "W/\"c1\"")],
            StatusCode::NOT_MODIFIED,
        ),
        (
            vec![("if-none-match", "\"x\", \"c1\"")],
            StatusCode::NOT_MODIFIED,
        ),
        (vec![("if-none-match", "\"other\"")], StatusCode::OK),
        (
            vec![("if-modified-since", modified.as_str())],
            StatusCode::NOT_MODIFIED,
        ),
        (
            vec![("if-modified-since", earlier.as_str())],
            StatusCode::OK,
        ),
        // If-None-Match decides when both are sent.
        (
            vec![
                ("if-none-match", "\"other\""),
                ("if-modified-since", modified.as_str()),
            ],
            StatusCode::OK,
        ),
    ] {
        let reply = cached.get("/c", &headers).await;
        assert_eq!(reply.status, expected, "{headers:?}: {reply:?}");
        if expected == StatusCode::NOT_MODIFIED {
            assert!(reply.body.is_empty(), "{headers:?}");
            assert_eq!(reply.header("etag"), "\"c1\"", "{headers:?}");
        } else {
            assert_eq!(reply.text(), "conditional body", "{headers:?}");
        }
    }
    assert_eq!(cached.origin.count("/c"), 1, "the upstream's requests");
}

/// `stale-while-revalidate`: once stale, a request is answered at once with the stale body
/// while one revalidation runs in the background; later requests get what it fetched.
#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_answers_stale_and_refreshes_behind() {
    let origin = Origin::start(|_, n| {
        if n == 0 {
            Answer::status(200)
                .header("cache-control", "max-age=1, stale-while-revalidate=30")
                .header("etag", "\"v1\"")
                .body("v1")
        } else {
            // Slow: had weir waited for it, the client would get v2.
            Answer::status(200)
                .header("cache-control", "max-age=60")
                .header("etag", "\"v2\"")
                .body("v2")
                .after(Duration::from_secs(1))
        }
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    assert_stored_miss(&cached.get("/swr", &[]).await, "miss");

    let stale = cached.get_once_stale("/swr", &[]).await;
    assert_eq!(
        (stale.status, stale.text().as_str()),
        (StatusCode::OK, "v1"),
        "{stale:?}"
    );
    let status = stale.cache_status();
    assert!(
        status.starts_with("weir; hit; ttl=")
            && status.ends_with("; detail=stale-while-revalidate")
            && stale.ttl().is_some_and(|t| t <= 0),
        "{status}"
    );
    until("the background revalidation reached the upstream", || {
        cached.origin.count("/swr") == 2
    })
    .await;
    let revalidation = &cached.origin.requests("/swr")[1];
    assert_eq!(header(revalidation, "if-none-match"), "\"v1\"");

    // While it is in flight: stale answers, no second revalidation.
    for i in 0..5 {
        let reply = cached.get("/swr", &[]).await;
        if reply.text() == "v1" {
            assert!(
                reply
                    .cache_status()
                    .contains("detail=stale-while-revalidate"),
                "request {i}: {reply:?}"
            );
        } else {
            assert_eq!(reply.text(), "v2", "request {i}");
        }
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = cached.get("/swr", &[]).await;
        if reply.text() == "v2" {
            assert_hit(&reply, 60, "the refreshed entry");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed: {reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cached.origin.count("/swr"), 2, "the upstream's requests");
}

/// `stale-if-error`: once stale, an upstream `503`, and then no upstream at all (connections
/// refused), are answered with the stale response; `must-revalidate` and `proxy-revalidate`
/// forbid it, and their clients get the error.
#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_serves_stale_unless_revalidation_is_required() {
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let origin = Origin::start(move |head, _| {
        // No pooled connection outlives the server.
        if fail.load(Ordering::SeqCst) {
            return Answer::status(503)
                .header("connection", "close")
                .body("upstream down");
        }
        let control = match head.uri.path() {
            "/must" => "max-age=1, stale-if-error=60, must-revalidate",
            "/proxy" => "max-age=1, stale-if-error=60, proxy-revalidate",
            _ => "max-age=1, stale-if-error=60",
        };
        Answer::status(200)
            .header("connection", "close")
            .header("cache-control", control)
            .body(format!("{} body", head.uri.path()))
    })
    .await;
    let mut cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    for path in ["/sie", "/must", "/proxy"] {
        let first = cached.get(path, &[]).await;
        assert_stored_miss(&first, path);
    }
    failing.store(true, Ordering::SeqCst);

    // The upstream answers 503.
    let stale = cached.get_once_stale("/sie", &[]).await;
    assert_eq!(
        (stale.status, stale.text().as_str()),
        (StatusCode::OK, "/sie body"),
        "{stale:?}"
    );
    let status = stale.cache_status();
    assert!(
        status.contains("fwd=stale")
            && status.contains("fwd-status=503")
            && status.contains("detail=stale-if-error"),
        "{status}"
    );
    assert_eq!(cached.origin.count("/sie"), 2, "it did ask the upstream");
    for path in ["/must", "/proxy"] {
        let reply = cached.get_once_stale(path, &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "upstream down"),
            "{path}: {reply:?}"
        );
    }

    // No upstream: connections refused.
    let _refusing = cached.origin.stop().await;
    let stale = cached.get("/sie", &[]).await;
    assert_eq!(
        (stale.status, stale.text().as_str()),
        (StatusCode::OK, "/sie body"),
        "{stale:?}"
    );
    assert!(
        stale.cache_status().contains("detail=stale-if-error"),
        "{stale:?}"
    );
    for path in ["/must", "/proxy"] {
        let reply = cached.get(path, &[]).await;
        assert!(reply.status.is_server_error(), "{path}: {reply:?}");
        assert_ne!(reply.text(), format!("{path} body"), "{path}");
    }
}

/// `must-revalidate` forbids `stale-while-revalidate` too: a stale request waits for the
/// revalidation and gets what it fetched.
#[tokio::test(flavor = "multi_thread")]
async fn must_revalidate_forbids_stale_while_revalidate() {
    let origin = Origin::start(|_, n| {
        Answer::status(200)
            .header(
                "cache-control",
                "max-age=1, stale-while-revalidate=30, must-revalidate",
            )
            .body(format!("v{n}"))
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    assert_stored_miss(&cached.get("/m", &[]).await, "miss");
    let reply = cached.get_once_stale("/m", &[]).await;
    assert_eq!(reply.text(), "v1", "{reply:?}");
    assert!(!reply.cache_status().contains("detail="), "{reply:?}");
    assert_eq!(cached.origin.count("/m"), 2);
}

/// Auth is never skipped by a hit: with key-auth before the cache, a keyed request fills
/// it, a request without a key (or with a wrong one) still gets 401, a keyed one a hit. What
/// key-auth vouched for (its consumer header) makes the request authenticated: an answer is
/// stored only if it says it may be shared (`public` here); one that does not (`/mine`) is
/// never stored, so alice's answer never reaches bob.
#[tokio::test(flavor = "multi_thread")]
async fn a_hit_does_not_skip_key_auth() {
    let origin = Origin::start(|head, n| {
        let shared = if target(head) == "/data" {
            "public, "
        } else {
            ""
        };
        Answer::status(200)
            .header("cache-control", &format!("{shared}max-age=60"))
            .body(format!(
                "private data for {} #{n}",
                header(head, "x-consumer-id")
            ))
    })
    .await;
    let routes = route("cached", "plugins = [\"key-auth\"]\ncache = {}");
    let cached = Cached::start(origin, &routes, &crate::key_auth_files()).await;
    let keyed = [("x-api-key", "alice-key")];

    let first = cached.get("/data", &keyed).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (StatusCode::OK, "private data for alice #0")
    );
    assert_stored_miss(&first, "miss");

    let anonymous = cached.get("/data", &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
    assert!(!anonymous.text().contains("private data"), "{anonymous:?}");
    let wrong = cached.get("/data", &[("x-api-key", "mallory-key")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
    assert!(!wrong.text().contains("private data"), "{wrong:?}");

    let hit = cached.get("/data", &keyed).await;
    assert_hit(&hit, 60, "the keyed request");
    assert_eq!(hit.text(), "private data for alice #0");
    assert_eq!(cached.origin.count("/data"), 1);

    for _ in 0..2 {
        let mine = cached.get("/mine", &keyed).await;
        assert_eq!(mine.status, StatusCode::OK);
        assert!(!mine.cache_status().contains("stored"), "{mine:?}");
    }
    assert_eq!(
        cached.origin.count("/mine"),
        2,
        "an authenticated answer was stored"
    );
}

/// Response filters run on hits, on the upstream's response as stored: `transform` sets a
/// header from each client's own request, removes an upstream header and a JSON field, and
/// `headers` appends one value (once, not once per filter run so far); every hit has its own
/// `x-request-id`.
#[tokio::test(flavor = "multi_thread")]
async fn response_filters_run_on_every_hit() {
    let origin = Origin::start(|_, _| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .header("content-type", "application/json")
            .header("x-internal", "upstream-only")
            .body(r#"{"name":"ann","secret":"s3cret"}"#)
    })
    .await;
    let transform = "[config.response.headers]\nremove = [\"x-internal\"]\nset = { \"x-org\" = \"{header.x-org}\", \"x-request-echo\" = \"{request_id}\" }\n[config.response.json]\nremove = [\"secret\"]\n";
    let headers = "[config.response]\nappend = { \"x-appended\" = \"once\" }\n";
    let files: [(&str, &[u8]); 4] = [
        ("plugins/transform.wasm", TRANSFORM),
        ("plugins/transform.toml", transform.as_bytes()),
        ("plugins/headers.wasm", HEADERS),
        ("plugins/headers.toml", headers.as_bytes()),
    ];
    let routes = route(
        "cached",
        "plugins = [\"headers\", \"transform\"]\ncache = {}",
    );
    let cached = Cached::start(origin, &routes, &files).await;

    let mut ids = Vec::new();
    for (i, org) in ["org-a", "org-b", "org-c"].into_iter().enumerate() {
        let reply = cached.get("/profile", &[("x-org", org)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{org}: {reply:?}");
        if i == 0 {
            assert_stored_miss(&reply, "miss");
        } else {
            assert_hit(&reply, 60, org);
        }
        assert_eq!(reply.header("x-org"), org, "{org}: {reply:?}");
        assert_eq!(reply.header("x-internal"), "", "{org}: {reply:?}");
        let appended: Vec<&str> = reply
            .headers
            .get_all("x-appended")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(appended, ["once"], "{org}: {reply:?}");
        let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
        assert_eq!(json, serde_json::json!({"name": "ann"}), "{org}");
        let id = reply.header("x-request-id").to_owned();
        assert!(!id.is_empty(), "{org}: {reply:?}");
        assert_eq!(
            reply.header("x-request-echo"),
            id,
            "{org}: transform saw this request's id"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every answer has its own request id: {ids:?}");
    assert_eq!(cached.origin.count("/profile"), 1);
}

/// `POST /cache/purge` on the admin listener, behind its token: a key (every variant with
/// it), a prefix, every route's cache when no route is named; the answer counts the keys
/// removed, and the next request for a purged key goes upstream.
#[tokio::test(flavor = "multi_thread")]
async fn purge_by_key_and_prefix_on_the_admin_listener() {
    let origin = Origin::start(|head, n| {
        let answer = Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)));
        if head.uri.path() == "/p/v" {
            answer.header("vary", "accept-encoding")
        } else {
            answer
        }
    })
    .await;
    let cached = Cached::start_with_admin(
        origin,
        "token_file = \"admin.token\"",
        &route("cached", "cache = {}"),
        &[("admin.token", TOKEN.as_bytes())],
    )
    .await;
    let purge = |body: &'static str, token: Option<&'static str>| {
        let client = cached.client.clone();
        let url = cached.weir.admin_url("/cache/purge");
        async move {
            let mut builder = Request::post(url).header("content-type", "application/json");
            if let Some(token) = token {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
            let response = client
                .request(builder.body(weir_tests::full(body)).expect("request"))
                .await
                .expect("purge");
            let status = response.status();
            let text = String::from_utf8_lossy(&read_body(response.into_body()).await).into_owned();
            (status, text)
        }
    };
    let purged = |answer: (StatusCode, String)| -> u64 {
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        let json: serde_json::Value = serde_json::from_str(&answer.1).expect("JSON");
        json["purged"]
            .as_u64()
            .unwrap_or_else(|| panic!("no purged count: {json}"))
    };
    let keys = ["/p/a", "/p/b", "/p/c?x=1", "/q/d"];
    for path in keys {
        assert_stored(&cached, path, &[]).await;
    }
    for coding in ["gzip", "identity"] {
        let reply = cached.get("/p/v", &[("accept-encoding", coding)]).await;
        assert!(reply.cache_status().ends_with("; stored"), "{reply:?}");
    }

    // Without the token: refused, nothing purged.
    let (status, _) = purge(
        r#"{"route": "cached", "key": "http://cache.test/p/a"}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_hit(
        &cached.get("/p/a", &[]).await,
        60,
        "/p/a after a refused purge",
    );

    // One key.
    let n = purged(
        purge(
            r#"{"route": "cached", "key": "http://cache.test/p/a"}"#,
            Some(TOKEN),
        )
        .await,
    );
    assert_eq!(n, 1);
    assert_stored_miss(&cached.get("/p/a", &[]).await, "miss");
    assert_eq!(cached.origin.count("/p/a"), 2);
    assert_hit(
        &cached.get("/p/b", &[]).await,
        60,
        "/p/b after purging /p/a",
    );
    let n = purged(
        purge(
            r#"{"route": "cached", "key": "http://cache.test/nope"}"#,
            Some(TOKEN),
        )
        .await,
    );
    assert_eq!(n, 0);
    let n = purged(
        purge(
            r#"{"route": "cached", "key": "http://cache.test/p/c?x=1"}"#,
            Some(TOKEN),
        )
        .await,
    );
    assert_eq!(n, 1, "a key with its query");
    assert_stored(&cached, "/p/c?x=1", &[]).await;

    // A prefix: /p/a, /p/b, /p/c?x=1 and /p/v (two variants, one key); /q/d stays.
    assert_eq!(cached.origin.count("/p/c?x=1"), 2);
    let n = purged(
        purge(
            r#"{"route": "cached", "prefix": "http://cache.test/p/"}"#,
            Some(TOKEN),
        )
        .await,
    );
    assert_eq!(n, 4);
    for path in ["/p/a", "/p/b", "/p/c?x=1"] {
        let reply = cached.get(path, &[]).await;
        assert_stored_miss(&reply, &format!("{path} after the prefix purge"));
    }
    for coding in ["gzip", "identity"] {
        let reply = cached.get("/p/v", &[("accept-encoding", coding)]).await;
        assert!(
            reply.cache_status().contains("miss"),
            "{coding} variant after the prefix purge: {reply:?}"
        );
    }
    assert_eq!(cached.origin.count("/p/v"), 4);
    assert_hit(
        &cached.get("/q/d", &[]).await,
        60,
        "/q/d after the prefix purge",
    );

    // No route: every route's cache.
    let n = purged(purge(r#"{"key": "http://cache.test/q/d"}"#, Some(TOKEN)).await);
    assert_eq!(n, 1);
    assert_stored_miss(&cached.get("/q/d", &[]).await, "miss");

    // Exactly one of key and prefix.
    for body in [
        r#"{"route": "cached", "key": "http://cache.test/q/d", "prefix": "http://cache.test/"}"#,
        r#"{"route": "cached"}"#,
    ] {
        let (status, text) = purge(body, Some(TOKEN)).await;
        assert!(status.is_client_error(), "{body}: {status} {text}");
    }
    assert_hit(
        &cached.get("/q/d", &[]).await,
        60,
        "/q/d after refused purges",
    );
}

/// `/metrics` counts lookups by route and result (hits, misses, bypasses, revalidations)
/// and shows the entries and bytes stored, which a purge takes back to zero.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_lookups_and_stored_bytes() {
    let origin = Origin::start(|head, _| {
        if head.uri.path().starts_with("/stale") {
            if header(head, "if-none-match") == "\"s1\"" {
                return Answer::status(304).header("cache-control", "max-age=60");
            }
            return Answer::status(200)
                .header("cache-control", "max-age=1")
                .header("etag", "\"s1\"")
                .body("stale body");
        }
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body("m".repeat(1000))
    })
    .await;
    let routes = format!(
        "\n[[routes]]\nname = \"revalidated\"\npath_prefix = \"/stale\"\ncluster = \"app\"\ncache = {{}}\n{}",
        route("cached", "cache = {}")
    );
    let cached = Cached::start(origin, &routes, &[]).await;

    let first = cached.get("/m", &[]).await;
    assert_stored_miss(&first, "miss");
    for _ in 0..3 {
        assert_hit(&cached.get("/m", &[]).await, 60, "/m");
    }
    let ranged = cached.get("/m", &[("range", "bytes=0-9")]).await;
    assert_eq!(
        ranged.params().first().map(String::as_str),
        Some("fwd=bypass"),
        "{ranged:?}"
    );
    assert_stored_miss(&cached.get("/stale", &[]).await, "miss");
    let revalidated = cached.get_once_stale("/stale", &[]).await;
    assert!(
        revalidated.cache_status().contains("fwd-status=304"),
        "{revalidated:?}"
    );

    let text = cached.metrics().await;
    let lookups = |route: &str, result: &str| {
        metric(
            &text,
            "weir_cache_lookups_total",
            &[("route", route), ("result", result)],
        )
    };
    assert_eq!(lookups("cached", "hit"), Some(3.0), "{text}");
    assert_eq!(lookups("cached", "miss"), Some(1.0), "{text}");
    assert_eq!(lookups("cached", "bypass"), Some(1.0), "{text}");
    assert_eq!(lookups("revalidated", "revalidated"), Some(1.0), "{text}");
    let stored = metric(&text, "weir_cache_stored_bytes", &[("route", "cached")])
        .unwrap_or_else(|| panic!("no weir_cache_stored_bytes for cached: {text}"));
    assert!(
        (1000.0..64.0 * 1024.0).contains(&stored),
        "one 1000-byte body and its headers: {stored}"
    );
    assert_eq!(
        metric(&text, "weir_cache_entries", &[("route", "cached")]),
        Some(1.0),
        "{text}"
    );

    let purge = Request::post(cached.weir.admin_url("/cache/purge"))
        .body(weir_tests::full(
            r#"{"route": "cached", "prefix": "http://cache.test/"}"#,
        ))
        .expect("request");
    let response = cached.client.request(purge).await.expect("purge");
    assert_eq!(response.status(), StatusCode::OK);
    let text = cached.metrics().await;
    assert_eq!(
        metric(&text, "weir_cache_entries", &[("route", "cached")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "weir_cache_stored_bytes", &[("route", "cached")]),
        Some(0.0),
        "{text}"
    );
}

/// A `HEAD` after a stored `GET` is answered from the store, without a body; a `HEAD` miss
/// is forwarded as a `GET`, stored, and answered without the body (nginx's
/// `proxy_cache_convert_head`), so the next `GET` is a hit.
#[tokio::test(flavor = "multi_thread")]
async fn head_is_answered_from_the_get_entry() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)))
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;

    assert_stored(&cached, "/h", &[]).await;
    let head = cached.send(Method::HEAD, "/h", &[]).await;
    assert_hit(&head, 60, "HEAD");
    assert!(head.body.is_empty(), "{head:?}");
    let length = head.header("content-length");
    assert!(
        length.is_empty() || length == "/h #0".len().to_string(),
        "{head:?}"
    );
    assert_eq!(cached.origin.count("/h"), 1);

    let cold = cached.send(Method::HEAD, "/cold", &[]).await;
    assert_eq!(cold.status, StatusCode::OK);
    assert!(cold.body.is_empty(), "{cold:?}");
    assert_eq!(
        cold.cache_status(),
        "weir; fwd=uri-miss; fwd-status=200; stored"
    );
    let get = cached.get("/cold", &[]).await;
    assert_hit(&get, 60, "GET after a HEAD miss");
    assert_eq!(get.text(), "/cold #0");
    let methods: Vec<Method> = cached
        .origin
        .requests("/cold")
        .into_iter()
        .map(|h| h.method)
        .collect();
    assert_eq!(methods, [Method::GET]);
}

/// `only-if-cached` in the request: `504` on a miss, without asking the upstream; a hit
/// otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn only_if_cached_is_504_on_a_miss() {
    let origin = Origin::start(|head, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("{} #{n}", target(head)))
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    assert_stored(&cached, "/h", &[]).await;
    let missed = cached
        .get("/never", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(missed.status, StatusCode::GATEWAY_TIMEOUT, "{missed:?}");
    assert_eq!(cached.origin.count("/never"), 0);
    let hit = cached
        .get("/h", &[("cache-control", "only-if-cached")])
        .await;
    assert_hit(&hit, 60, "only-if-cached on a stored key");
    assert_eq!(hit.text(), "/h #0");
}

/// `curl -s -D -`, a real client, twice: the second answer is a hit with `Age`.
#[tokio::test(flavor = "multi_thread")]
async fn curl_sees_the_hit() {
    let origin = Origin::start(|_, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("for curl #{n}"))
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    let url = cached.weir.url("/curl");
    let curl = || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-D", "-", url.as_str()])
            .output()
            .expect("curl");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        (head.to_lowercase(), body.to_owned())
    };
    let (head, body) = curl();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("\r\ncache-status: weir; fwd=uri-miss;"),
        "{head}"
    );
    assert_eq!(body, "for curl #0");
    let (head, body) = curl();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\ncache-status: weir; hit; ttl="), "{head}");
    assert!(head.contains("\r\nage: "), "{head}");
    assert_eq!(body, "for curl #0");
    assert_eq!(cached.origin.count("/curl"), 1);
}

/// A route's cache outlives a reload that leaves its `cache` settings alone, and starts
/// empty after one that changes them.
#[tokio::test(flavor = "multi_thread")]
async fn the_cache_outlives_reloads_that_leave_its_settings_alone() {
    let origin = Origin::start(|_, n| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("kept #{n}"))
    })
    .await;
    let mut cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    assert_stored(&cached, "/r", &[]).await;
    let text = std::fs::read_to_string(cached.weir.dir().join("weir.toml")).expect("config");

    let generation = |n: u64| {
        move |logs: &[serde_json::Value]| {
            logs.iter().any(|l| {
                l["fields"]["message"] == "new generation serving" && l["fields"]["generation"] == n
            })
        }
    };
    // Another route is added: the entry stays.
    let added = format!(
        "{text}\n[[routes]]\nname = \"other\"\npath_prefix = \"/other\"\ncluster = \"app\"\n"
    );
    cached.weir.write_and_rename("weir.toml", added.as_bytes());
    cached.weir.wait_for_logs(generation(2)).await;
    let kept = cached.get("/r", &[]).await;
    assert_hit(&kept, 60, "after a reload that added a route");
    assert_eq!(kept.text(), "kept #0");

    // A setting of the cluster that changes no response: the entry stays too (the spec keeps
    // the cache whenever its settings are unchanged).
    let other = added.replace("connect_timeout = \"1s\"", "connect_timeout = \"2s\"");
    assert_ne!(other, added);
    cached.weir.write_and_rename("weir.toml", other.as_bytes());
    cached.weir.wait_for_logs(generation(3)).await;
    let kept = cached.get("/r", &[]).await;
    assert_hit(&kept, 60, "after a reload that changed connect_timeout");
    assert_eq!(kept.text(), "kept #0");

    // The cache's settings change: it starts empty.
    let resized = other.replace("cache = {}", "cache = { max_bytes = 1048576 }");
    assert_ne!(resized, other);
    cached
        .weir
        .write_and_rename("weir.toml", resized.as_bytes());
    cached.weir.wait_for_logs(generation(4)).await;
    let fresh = cached.get("/r", &[]).await;
    assert_stored_miss(&fresh, "after a reload that changed cache");
    assert_eq!(fresh.text(), "kept #1");
}

/// Past `max_bytes`, entries go (the most used one stays), the stored bytes stay within the
/// limit, and `weir_cache_evictions_total` counts them.
#[tokio::test(flavor = "multi_thread")]
async fn entries_are_evicted_past_max_bytes() {
    let origin = Origin::start(|_, _| {
        Answer::status(200)
            .header("cache-control", "max-age=60")
            .body("e".repeat(4000))
    })
    .await;
    let routes = route(
        "cached",
        "cache = { max_bytes = 10000, max_object_bytes = 5000 }",
    );
    let cached = Cached::start(origin, &routes, &[]).await;
    // Two 4000-byte entries fit; a third does not.
    assert_stored(&cached, "/e1", &[]).await;
    assert_stored(&cached, "/e2", &[]).await;
    for _ in 0..3 {
        assert_hit(&cached.get("/e1", &[]).await, 60, "/e1");
    }
    let third = cached.get("/e3", &[]).await;
    assert_eq!(third.text().len(), 4000);

    // The store may evict in its own time: each look is after another request to it.
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        assert_hit(&cached.get("/e1", &[]).await, 60, "the most used entry");
        let text = cached.metrics().await;
        if metric(&text, "weir_cache_evictions_total", &[("route", "cached")])
            .is_some_and(|n| n >= 1.0)
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no eviction counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stored = metric(&text, "weir_cache_stored_bytes", &[("route", "cached")])
        .unwrap_or_else(|| panic!("no stored bytes: {text}"));
    assert!(stored <= 10_000.0, "{stored} bytes stored: {text}");
    let entries = metric(&text, "weir_cache_entries", &[("route", "cached")])
        .unwrap_or_else(|| panic!("no entries: {text}"));
    assert!(entries <= 2.0, "{entries} entries: {text}");
    assert_hit(&cached.get("/e1", &[]).await, 60, "the most used entry");
    assert_eq!(cached.origin.count("/e1"), 1);
}

/// A miss that could not be stored sends its waiters upstream themselves (none of them
/// `collapsed`), and for a while after, requests for that key go upstream at once without
/// waiting for each other.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_on_a_miss_that_cannot_be_stored_go_upstream() {
    let origin = Origin::start(|_, n| {
        Answer::status(200)
            .header("cache-control", "no-store")
            .body(format!("unstored #{n}"))
            .after(Duration::from_secs(1))
    })
    .await;
    let cached = Cached::start(origin, &route("cached", "cache = {}"), &[]).await;
    let url = cached.weir.url("/unstored");
    let spawn = || {
        let (client, url) = (cached.client.clone(), url.clone());
        tokio::spawn(async move { request(&client, Method::GET, &url, &[]).await })
    };
    let tasks: Vec<_> = (0..5).map(|_| spawn()).collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let reply = task.await.expect("request");
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(reply.text().starts_with("unstored #"), "{reply:?}");
        statuses.push(reply.cache_status());
    }
    assert_eq!(cached.origin.count("/unstored"), 5, "each went upstream");

    // Now two at once both reach the upstream while both are still waiting for it.
    let (one, two) = (spawn(), spawn());
    until("both requests reached the upstream", || {
        cached.origin.count("/unstored") == 7
    })
    .await;
    assert!(
        !one.is_finished() && !two.is_finished(),
        "one request waited for the other's fetch"
    );
    for task in [one, two] {
        assert_eq!(task.await.expect("request").status, StatusCode::OK);
    }
    // Each fetched its own answer: none was answered with another's fetch.
    for status in &statuses {
        assert!(
            !status.contains("collapsed") && !status.contains("stored"),
            "{statuses:#?}"
        );
    }
}

/// `lock_timeout`: a request waiting for another's slow fetch of its key goes upstream
/// itself once the timeout passes, without waiting for that fetch.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_goes_upstream_after_lock_timeout() {
    let origin = Origin::start(|_, n| {
        let answer = Answer::status(200)
            .header("cache-control", "max-age=60")
            .body(format!("slow #{n}"));
        if n == 0 {
            answer.after(Duration::from_secs(4))
        } else {
            answer
        }
    })
    .await;
    let routes = route("cached", "cache = { lock_timeout = \"300ms\" }");
    let cached = Cached::start(origin, &routes, &[]).await;
    let url = cached.weir.url("/slow");
    let spawn = || {
        let (client, url) = (cached.client.clone(), url.clone());
        tokio::spawn(async move { request(&client, Method::GET, &url, &[]).await })
    };
    let first = spawn();
    until("the first fetch reached the upstream", || {
        cached.origin.count("/slow") == 1
    })
    .await;
    let second = spawn();
    until("the waiter went upstream itself", || {
        cached.origin.count("/slow") == 2
    })
    .await;
    assert!(
        !first.is_finished(),
        "the waiter went upstream only after the first fetch finished"
    );
    let second = second.await.expect("second");
    assert_eq!(second.text(), "slow #1", "{second:?}");
    let first = first.await.expect("first");
    assert_eq!(first.text(), "slow #0", "{first:?}");
}
