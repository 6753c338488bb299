//! Shared state beyond one process (issue 23): the Redis `kv` store against a real
//! `redis-server` started per test — it keeps the memory store's semantics, several weir
//! instances sharing it enforce one rate limit together and see each other's keys, and a
//! dead or stalled Redis costs each call at most its timeout, then nothing (the breaker),
//! with one log line each way.

use std::time::Duration;

use tokio::time::Instant;

use weir::config::{KvBackendKind, KvConfig, RedisKvConfig};
use weir::kv::{Bounded, KvError, KvStore};
use weir_tests::{DEADLINE, Redis, RedisCluster, Upstream, Weir};

const RATE_LIMIT: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/rate_limit.wasm"));

fn redis_config(url: String, timeout: Duration) -> KvConfig {
    KvConfig {
        backend: KvBackendKind::Redis(RedisKvConfig {
            url,
            cluster: Vec::new(),
            ca: None,
            prefix: "test:".into(),
            timeout,
            connections: 2,
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(1),
        }),
    }
}

/// Every operation answers the same from Redis — one server or a Redis Cluster — as from
/// memory, errors included, so a plugin tested on one behaves the same on the others.
#[tokio::test(flavor = "multi_thread")]
async fn the_redis_store_keeps_the_memory_stores_semantics() {
    let redis = Redis::start().await;
    let cluster = RedisCluster::start().await;
    let mut clustered = redis_config(String::new(), Duration::from_secs(2));
    if let KvBackendKind::Redis(config) = &mut clustered.backend {
        config.cluster = cluster.urls();
    }
    let stores = [
        ("memory", KvStore::default()),
        (
            "redis",
            KvStore::new(&redis_config(redis.url(), Duration::from_secs(2))).expect("store"),
        ),
        ("cluster", KvStore::new(&clustered).expect("cluster store")),
    ];
    for (name, kv) in &stores {
        let key = |k: &str| format!("plugin\0{k}");
        assert_eq!(kv.get(&key("absent")).await, Ok(None), "{name}");
        assert_eq!(
            kv.set(key("s"), b"v\0\xff".to_vec(), None).await,
            Ok(()),
            "{name}"
        );
        assert_eq!(
            kv.get(&key("s")).await,
            Ok(Some(b"v\0\xff".to_vec())),
            "{name}: binary-safe"
        );
        assert_eq!(kv.delete(&key("s")).await, Ok(()), "{name}");
        assert_eq!(kv.get(&key("s")).await, Ok(None), "{name}");

        assert_eq!(
            kv.increment(key("n"), 5, Some(60_000)).await,
            Ok(5),
            "{name}"
        );
        assert_eq!(kv.increment(key("n"), -2, Some(1)).await, Ok(3), "{name}");
        assert_eq!(
            kv.get(&key("n")).await,
            Ok(Some(b"3".to_vec())),
            "{name}: decimal text"
        );
        let _ = kv.set(key("word"), b"hello".to_vec(), None).await;
        assert!(
            matches!(
                kv.increment(key("word"), 1, None).await,
                Err(KvError::Invalid(_))
            ),
            "{name}"
        );
        let _ = kv
            .set(key("max"), i64::MAX.to_string().into_bytes(), None)
            .await;
        assert!(
            matches!(
                kv.increment(key("max"), 1, None).await,
                Err(KvError::Invalid(_))
            ),
            "{name}: overflow"
        );
        assert_eq!(
            kv.get(&key("max")).await,
            Ok(Some(i64::MAX.to_string().into_bytes())),
            "{name}: left alone"
        );

        let within = |delta| kv.increment_within(key("w"), delta, 3, Some(60_000));
        let first = within(2).await.expect("increment-within");
        assert_eq!((first.applied, first.value), (true, 2), "{name}");
        assert!(
            first.ttl_ms.is_some_and(|ms| ms > 50_000 && ms <= 60_000),
            "{name}: {first:?}"
        );
        let over = within(2).await.expect("increment-within");
        assert_eq!((over.applied, over.value), (false, 2), "{name}");
        assert_eq!(
            within(1).await.map(|b| (b.applied, b.value)),
            Ok((true, 3)),
            "{name}"
        );
        assert_eq!(
            kv.increment_within(key("fresh"), 5, 3, None).await,
            Ok(Bounded {
                applied: false,
                value: 0,
                ttl_ms: None
            }),
            "{name}: a refused first increment creates nothing"
        );
        assert_eq!(kv.get(&key("fresh")).await, Ok(None), "{name}");
        assert!(
            matches!(
                kv.increment_within(key("word"), 1, 10, None).await,
                Err(KvError::Invalid(_))
            ),
            "{name}"
        );

        let cas = |expected: Option<&[u8]>, value: &[u8]| {
            kv.compare_and_set(key("c"), expected.map(<[u8]>::to_vec), value.to_vec(), None)
        };
        assert_eq!(cas(None, b"1").await, Ok(true), "{name}");
        assert_eq!(cas(None, b"2").await, Ok(false), "{name}: present");
        assert_eq!(
            cas(Some(b"0"), b"2").await,
            Ok(false),
            "{name}: another value"
        );
        assert_eq!(cas(Some(b"1"), b"2").await, Ok(true), "{name}");
        assert_eq!(kv.get(&key("c")).await, Ok(Some(b"2".to_vec())), "{name}");

        // Expiry: a short TTL is gone soon after (polled, not slept on).
        let _ = kv.set(key("brief"), b"x".to_vec(), Some(30)).await;
        let deadline = Instant::now() + DEADLINE;
        while kv.get(&key("brief")).await != Ok(None) {
            assert!(Instant::now() < deadline, "{name}: the key never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Keys carry the configured prefix, so deployments can share one Redis.
    assert_eq!(redis.cli(r#"GET "test:plugin\x00c""#), "2");
    // The cluster spread the keys over its nodes by slot.
    let spread = cluster.keys_per_node();
    assert!(spread.iter().filter(|&&n| n > 0).count() >= 2, "{spread:?}");
}

/// `n` weir instances sharing `redis`, each with rate-limit (`settings`) in front of
/// `upstream`.
async fn instances(n: usize, redis: &Redis, upstream: &Upstream, settings: &str) -> Vec<Weir> {
    let kv = format!(
        "[kv]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
        redis.url()
    );
    let config = crate::config(&[upstream.addr], &kv);
    // rate-limit counts in kv, which its NAME.toml must grant.
    let settings = format!("kv = true\n{settings}");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/rate-limit.wasm", RATE_LIMIT),
        ("plugins/rate-limit.toml", settings.as_bytes()),
    ];
    let mut weirs = Vec::new();
    for _ in 0..n {
        weirs.push(Weir::start_with_files(&config, &files).await);
    }
    weirs
}

/// Sends `per_client` requests from each of `clients` concurrent clients on every instance
/// and counts the answers by status.
async fn hammer(
    weirs: &[Weir],
    clients: usize,
    per_client: usize,
) -> std::collections::BTreeMap<u16, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for weir in weirs {
        for _ in 0..clients {
            let url = weir.url("/");
            tasks.spawn(async move {
                let client = weir_tests::http1_client();
                let mut statuses = Vec::new();
                for _ in 0..per_client {
                    let response = client
                        .get(url.parse().expect("url"))
                        .await
                        .expect("an answer");
                    statuses.push(response.status().as_u16());
                }
                statuses
            });
        }
    }
    let mut counts = std::collections::BTreeMap::new();
    while let Some(statuses) = tasks.join_next().await {
        for status in statuses.expect("client task") {
            *counts.entry(status).or_default() += 1;
        }
    }
    counts
}

/// The issue's bar (200 per 10 s), with a minute's window: 4 instances, 200 per minute on one
/// key, concurrent clients on all four: 200 admitted in all, the rest 429 (the window does
/// not end during the test, however slow a loaded machine makes the 1,200 requests). Two
/// instances the same, with 600 requests.
#[tokio::test(flavor = "multi_thread")]
async fn two_and_four_instances_sharing_redis_admit_one_limit_together() {
    let redis = Redis::start().await;
    let settings = "[config]\nkey = \"route\"\nfault_tolerant = false\n[[config.limits]]\nrequests = 200\nwindow = \"1m\"\n";
    for n in [2, 4] {
        let upstream = Upstream::start("app").await;
        // Each round starts from an empty store.
        redis.cli("FLUSHALL");
        let weirs = instances(n, &redis, &upstream, settings).await;
        let counts = hammer(&weirs, 3, 100).await;
        assert_eq!(counts.get(&200), Some(&200), "{n} instances: {counts:?}");
        assert_eq!(
            counts.get(&429),
            Some(&(n * 300 - 200)),
            "{n} instances: {counts:?}"
        );
        assert_eq!(upstream.requests().len(), 200, "{n} instances");
    }
}

/// The same with GCRA (compare-and-set): a burst of `requests` passes, then one per
/// interval; with 200 an hour the interval is 18 s, so exactly the burst passes here.
#[tokio::test(flavor = "multi_thread")]
async fn four_instances_sharing_redis_admit_one_gcra_burst_together() {
    let redis = Redis::start().await;
    let upstream = Upstream::start("app").await;
    let settings = "[config]\nkey = \"route\"\nalgorithm = \"gcra\"\nfault_tolerant = false\n[[config.limits]]\nrequests = 200\nwindow = \"1h\"\n";
    let weirs = instances(4, &redis, &upstream, settings).await;
    let counts = hammer(&weirs, 3, 100).await;
    assert_eq!(counts.get(&200), Some(&200), "{counts:?}");
    assert_eq!(counts.get(&429), Some(&1000), "{counts:?}");
}

/// A key one instance writes is read by another: a 0.3.3 plugin (frozen contract, its `kv`
/// import forwarded to the async store) counting in Redis through two instances.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_written_through_one_instance_is_read_through_another() {
    let redis = Redis::start().await;
    let upstream = Upstream::start("app").await;
    let kv = format!(
        "[kv]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
        redis.url()
    );
    let config = crate::config(&[upstream.addr], &kv);
    let guest = std::fs::read(env!("TEST_PLUGIN_V0_3_3_WASM")).expect("the 0.3.3 test plugin");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/counter.wasm", &guest),
        ("plugins/counter.toml", b"kv = true\n"),
    ];
    let a = Weir::start_with_files(&config, &files).await;
    let b = Weir::start_with_files(&config, &files).await;
    let mut seen = Vec::new();
    for weir in [&a, &b, &a, &b] {
        let (status, _, body) = weir_tests::get_with(&weir.url("/count"), &[]).await;
        assert_eq!(status, 200, "{body}");
        seen.push(body);
    }
    assert_eq!(seen, ["1", "2", "3", "4"]);
    assert_eq!(redis.cli(r#"GET "weir:counter\x00count""#), "4");
}

/// Redis stalled, then killed, then back: a tolerant limiter lets requests through and a
/// strict one answers 503, each within the call timeout while the store stalls and at once
/// once the breaker is open; weir logs the breaker opening once and closing once; after the
/// restart both limit again without a reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_store_fails_fast_behind_one_breaker_line_and_recovers() {
    let mut redis = Redis::start().await;
    let upstream = Upstream::start("app").await;
    let kv = format!(
        "[kv]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"100ms\"\nbreaker = {{ consecutive_failures = 3, open_for = \"200ms\" }}\n",
        redis.url()
    );
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{addr}"]

[[routes]]
name = "strict"
path_prefix = "/strict"
cluster = "app"
plugins = ["strict"]

[[routes]]
name = "tolerant"
cluster = "app"
plugins = ["tolerant"]

{kv}"#,
        cache = crate::plugin_cache().display(),
        addr = upstream.addr,
    );
    let limits = "[[config.limits]]\nrequests = 1000\nwindow = \"1m\"\n";
    let tolerant = format!("kv = true\n[config]\nfault_tolerant = true\n{limits}");
    let strict = format!("kv = true\n[config]\nfault_tolerant = false\n{limits}");
    let files: [(&str, &[u8]); 4] = [
        ("plugins/tolerant.wasm", RATE_LIMIT),
        ("plugins/tolerant.toml", tolerant.as_bytes()),
        ("plugins/strict.wasm", RATE_LIMIT),
        ("plugins/strict.toml", strict.as_bytes()),
    ];
    let mut weir = Weir::start_with_files(&config, &files).await;
    let base = weir.url("");
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            let started = Instant::now();
            let (status, _, _) = weir_tests::get_with(&url, &[]).await;
            (status.as_u16(), started.elapsed())
        }
    };
    assert_eq!(get("/").await.0, 200);
    assert_eq!(get("/strict").await.0, 200);

    // Stalled: Redis accepts and does not answer for 2 s; each call fails at its timeout.
    let stall = redis.stall(2).await;
    let (status, took) = get("/strict").await;
    assert_eq!(status, 503, "the strict limiter cannot count: 503");
    assert!(
        took < Duration::from_secs(1),
        "a stalled store cost {took:?}, not its 100 ms timeout"
    );
    let (status, _) = get("/").await;
    assert_eq!(status, 200, "the tolerant limiter lets it through");

    // Killed: refused connections; the breaker opens after 3 failures in a row.
    let _ = stall.join();
    redis.kill();
    for _ in 0..20 {
        let (status, took) = get("/").await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(get("/strict").await.0, 503);
    }
    let opened = weir
        .wait_for_logs(|logs| {
            logs.iter()
                .any(|l| message(l).contains("circuit breaker open"))
        })
        .await;
    assert_eq!(
        opened
            .iter()
            .filter(|l| message(l).contains("circuit breaker open"))
            .count(),
        1,
        "one line for the outage, not one per request"
    );
    let metrics = weir_tests::get_with(&weir.admin_url("/metrics"), &[])
        .await
        .2;
    assert!(metrics.contains("weir_kv_breaker_open 1"), "{metrics}");
    assert!(
        metrics.contains("weir_kv_failures_total{reason=\"breaker_open\"}"),
        "{metrics}"
    );

    // Back: the next probe finds it and both limiters count again.
    redis.restart().await;
    let deadline = Instant::now() + DEADLINE;
    while get("/strict").await.0 != 200 {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = weir
        .wait_for_logs(|logs| {
            logs.iter()
                .any(|l| message(l).contains("circuit breaker closed"))
        })
        .await;
    let opened = logs
        .iter()
        .filter(|l| message(l).contains("circuit breaker open"))
        .count();
    assert_eq!(opened, 1, "{logs:?}");
    // The tolerant limiter counts again too. It answers 200 whether or not its call got
    // through, and a call on a loaded machine may still pass the 100 ms timeout just after the
    // restart: asked until its counter is in the store.
    loop {
        assert_eq!(get("/").await.0, 200);
        let counted = redis.cli("KEYS weir:*");
        if counted.contains("tolerant") {
            assert!(counted.contains("strict"), "{counted}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tolerant limiter never counted: {counted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// `rediss://` with a private CA and a password: the store is reached over TLS, verified
/// against `[kv] ca`, and authenticated; a wrong password is refused by Redis, so the
/// plugin's calls fail (it answers so) rather than reaching a store unauthenticated.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_redis_with_a_password_is_verified_and_authenticated() {
    let ca = weir_tests::certs::Ca::new("redis CA");
    let leaf = ca.server(&["localhost"], 1);
    let redis = Redis::start_tls(&leaf.cert, &leaf.key, "s3cret-pass").await;
    let upstream = Upstream::start("app").await;
    let guest = std::fs::read(env!("TEST_PLUGIN_V0_3_3_WASM")).expect("the 0.3.3 test plugin");
    let start = |password: &'static str| {
        let kv = format!(
            "[kv]\nbackend = \"redis\"\nurl = \"rediss://:{password}@localhost:{}\"\nca = \"redis-ca.pem\"\ntimeout = \"2s\"\n",
            redis.port
        );
        let config = crate::config(&[upstream.addr], &kv);
        let (guest, ca) = (guest.clone(), ca.pem.clone());
        async move {
            let files: [(&str, &[u8]); 3] = [
                ("plugins/counter.wasm", &guest),
                ("plugins/counter.toml", b"kv = true\n"),
                ("redis-ca.pem", ca.as_bytes()),
            ];
            Weir::start_with_files(&config, &files).await
        }
    };
    let weir = start("s3cret-pass").await;
    for expected in ["1", "2"] {
        let (status, _, body) = weir_tests::get_with(&weir.url("/count"), &[]).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, expected));
    }
    let intruder = start("wrong").await;
    let (_, _, body) = weir_tests::get_with(&intruder.url("/count"), &[]).await;
    assert!(body.starts_with("kv failed"), "{body}");
}
