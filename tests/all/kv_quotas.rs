//! `kv` is a grant, and a granted namespace has a quota (issue 22): a plugin whose `NAME.toml`
//! does not say `kv` is refused every call (and weir says why once), and a plugin writing keys
//! in a loop or oversized values is stopped at its quota — in memory and in Redis — while
//! another plugin's `kv` keeps working. The guest is `tests/plugins/hostile_outbound`, loaded
//! twice: `hostile` on every route but `/_b`, `hostile-b` there.

use tokio::time::{Duration, Instant};
use weir_tests::{DEADLINE, Redis, Upstream, Weir};

/// `hostile`'s quota in the tests that fill it.
/// (A deadline long enough for 1,500 writes in one call on a slow machine: the loop is the
/// attack, the quota its defence.)
const QUOTA: &str =
    "deadline = \"10s\"\nkv = { max_keys = 1000, max_bytes = 100000, max_value_bytes = 1024 }";

/// `hostile-b`'s settings in those tests: the default quota.
const B: &str = "deadline = \"10s\"\nkv = true\n";

async fn two_plugins(app: &Upstream, hostile: &str, hostile_b: &str, extra: &str) -> Weir {
    let wasm =
        std::fs::read(env!("TEST_PLUGIN_HOSTILE_OUTBOUND_WASM")).expect("the hostile plugin");
    let routes = format!(
        "{extra}\n[[routes]]\nname = \"b\"\npath_prefix = \"/_b\"\ncluster = \"app\"\nplugins = [\"hostile-b\"]\n"
    );
    // The default route (from `config`) runs every plugin; give it `hostile` only.
    let config = crate::config(&[app.addr], &routes).replace(
        "name = \"default\"\ncluster = \"app\"\n",
        "name = \"default\"\ncluster = \"app\"\nplugins = [\"hostile\"]\n",
    );
    let files: [(&str, &[u8]); 4] = [
        ("plugins/hostile.wasm", &wasm),
        ("plugins/hostile.toml", hostile.as_bytes()),
        ("plugins/hostile-b.wasm", &wasm),
        ("plugins/hostile-b.toml", hostile_b.as_bytes()),
    ];
    Weir::start_with_files(&config, &files).await
}

/// What the plugin answered to `path`.
async fn ask(weir: &Weir, path: &str) -> String {
    let (status, _, body) = weir_tests::get_with(&weir.url(path), &[]).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_is_denied_without_the_grant_and_works_with_it() {
    let app = Upstream::start("app").await;
    let mut weir = two_plugins(&app, "", "kv = true\n", "").await;
    for path in [
        "/kv-set?key=a&value=1",
        "/kv-get?key=a",
        "/kv-incr?key=n",
        "/kv-within?key=n&limit=5",
        "/kv-cas?key=c&value=1",
    ] {
        assert_eq!(ask(&weir, path).await, "err access-denied", "{path}");
    }
    assert_eq!(ask(&weir, "/_b/kv-set?key=a&value=1").await, "ok");
    assert_eq!(ask(&weir, "/_b/kv-get?key=a").await, "some 1");
    assert_eq!(ask(&weir, "/_b/kv-incr?key=n").await, "ok 1");
    // Why, said once for five denied calls.
    let line = weir
        .wait_for_message("plugin called kv without the grant")
        .await;
    assert_eq!(line["plugin"], "hostile");
    let said = weir
        .logs()
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("plugin called kv without the grant"))
        })
        .count();
    assert_eq!(said, 1);
}

/// `kv = false`, and a grant that is not one, are refused or denied as they say.
#[tokio::test(flavor = "multi_thread")]
async fn a_kv_grant_must_be_true_false_or_a_quota() {
    let app = Upstream::start("app").await;
    let weir = two_plugins(&app, "kv = false\n", "kv = { max_keys = 5 }\n", "").await;
    assert_eq!(
        ask(&weir, "/kv-set?key=a&value=1").await,
        "err access-denied"
    );
    assert_eq!(ask(&weir, "/_b/kv-set?key=a&value=1").await, "ok");
    for bad in [
        "kv = \"yes\"\n",
        "kv = { max_key = 5 }\n",
        "kv = { max_keys = 0 }\n",
        "kv = { max_value_bytes = 1048577 }\n",
        "kv = { max_ttl = \"soon\" }\n",
    ] {
        let wasm =
            std::fs::read(env!("TEST_PLUGIN_HOSTILE_OUTBOUND_WASM")).expect("the hostile plugin");
        let files: [(&str, &[u8]); 2] = [
            ("plugins/hostile.wasm", &wasm),
            ("plugins/hostile.toml", bad.as_bytes()),
        ];
        let mut weir = Weir::spawn_with_files(&crate::config(&[app.addr], ""), &files);
        let status = weir.wait_exit().await;
        assert!(!status.success(), "{bad}: startup must fail");
        let said = weir
            .logs()
            .iter()
            .any(|l| l.to_string().contains("hostile.toml: kv"));
        assert!(said, "{bad}: {:?}", weir.logs());
    }
}

/// A plugin writing keys in a loop and oversized values is stopped at its quota, changing
/// nothing past it, while the other plugin's `kv` keeps working; what the store holds for it
/// stays within `max_bytes`.
async fn the_quota_holds(weir: &Weir) {
    let filled = ask(weir, "/kv-fill?from=0&count=1500").await;
    assert!(
        filled.starts_with("stored 1000, then err invalid: quota:") && filled.contains("max_keys"),
        "{filled}"
    );
    assert_eq!(ask(weir, "/kv-get?key=f1000").await, "none");
    // Overwriting is not a new key: values grow until the bytes run out.
    let grown = ask(weir, "/kv-fill?from=0&count=1000&bytes=1024").await;
    let stored: usize = grown
        .strip_prefix("stored ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    // 1,000 keys of 2 to 4 bytes and a 1-byte value each, then 1 KiB values: 100,000 bytes
    // hold about 93 of those.
    assert!((80..100).contains(&stored), "{grown}");
    assert!(grown.contains("max_bytes"), "{grown}");
    let value = "x".repeat(1025);
    let oversized = ask(weir, &format!("/kv-set?key=big&value={value}")).await;
    assert!(oversized.contains("max_value_bytes"), "{oversized}");
    // The other plugin, in the same store, is not affected.
    assert_eq!(
        ask(weir, "/_b/kv-fill?from=0&count=2000").await,
        "stored 2000"
    );
    assert_eq!(ask(weir, "/_b/kv-get?key=f1999").await, "some v");
    assert_eq!(
        ask(weir, "/kv-get?key=f999").await,
        "some v",
        "what it has is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_filling_its_kv_stops_at_its_quota_in_memory() {
    let app = Upstream::start("app").await;
    let weir = two_plugins(&app, QUOTA, B, "").await;
    the_quota_holds(&weir).await;
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{plugin=\"hostile\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(gauge("weir_kv_keys"), 1000, "{metrics}");
    assert!(gauge("weir_kv_bytes") <= 100_000, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_filling_its_kv_stops_at_its_quota_in_redis() {
    let redis = Redis::start().await;
    let app = Upstream::start("app").await;
    let kv = format!(
        "[kv]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\nprefix = \"q:\"\n",
        redis.url()
    );
    let weir = two_plugins(&app, QUOTA, B, &kv).await;
    the_quota_holds(&weir).await;
    // What Redis holds for it, by its own count and by weir's bookkeeping.
    let keys = redis.cli(r#"EVAL "return #redis.call('KEYS', ARGV[1])" 0 "q:hostile\x00*""#);
    assert_eq!(keys, "1000");
    assert_eq!(redis.cli(r#"HGET "q:hostile\x01usage" keys"#), "1000");
    let bytes: u64 = redis
        .cli(r#"HGET "q:hostile\x01usage" bytes"#)
        .parse()
        .unwrap_or(u64::MAX);
    assert!(bytes <= 100_000, "{bytes}");
}

/// Keys that expire give their room back, though Redis expires them without telling weir.
#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_give_their_room_back_in_redis() {
    let redis = Redis::start().await;
    let app = Upstream::start("app").await;
    let kv = format!(
        "[kv]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"2s\"\n",
        redis.url()
    );
    let weir = two_plugins(&app, "kv = { max_keys = 100 }\n", "kv = true\n", &kv).await;
    let filled = ask(&weir, "/kv-fill?from=0&count=150&ttl=3000").await;
    assert!(
        filled.starts_with("stored 100, then err invalid"),
        "{filled}"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let more = ask(&weir, "/kv-fill?from=1000&count=100").await;
        if more == "stored 100" {
            break;
        }
        assert!(Instant::now() < deadline, "no room came back: {more}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full = ask(&weir, "/kv-set?key=one-more&value=1").await;
    assert!(full.contains("max_keys"), "{full}");
}
