//! Observability through a real weir: `GET /metrics` parsed by the Prometheus Python client's
//! own parser (`tests/observability/parse_metrics.py`) after requests through a plugin that
//! fails in each way, a plugin's own metrics (and `weir plugin test` checking them), the
//! recent errors list, and the access log — one JSON record per
//! request with every field, `mv` + SIGUSR1 starting a new file without losing a record, a
//! route that opts out, the text format, hostile request bytes kept inside their JSON
//! strings, a full log dropping and counting records without failing a request, and responses
//! without a body logged once, complete.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use weir_tests::{DEADLINE, Upstream, Weir, get_with};

use crate::config;

const PLUGIN: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Value,
    value: f64,
}

/// The admin listener's `/metrics`, through the Prometheus client's parser (which fails the
/// test on anything that is not valid exposition text).
async fn scrape(weir: &Weir) -> Vec<Sample> {
    let (status, headers, text) = get_with(&weir.admin_url("/metrics"), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("observability/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus-client: .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let output = child.wait_with_output().expect("parser ran");
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            Sample {
                name: v["name"].as_str().expect("name").to_owned(),
                labels: v["labels"].clone(),
                value: v["value"].as_f64().expect("value"),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include every pair of `labels`, if any.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels[*k] == *v))
        .map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_plugin_failures_by_kind_and_hook_durations() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start_with_files(
        &config(&[upstream.addr], ""),
        &[
            ("plugins/10-test.wasm", PLUGIN),
            (
                "plugins/10-test.toml",
                // No breaker, so each of the 100 traps is a call (`plugins::` tests it).
                b"deadline = \"100ms\"\nmemory_limit_mb = 16\nkv = true\nbreaker = { failures = 0 }\n",
            ),
        ],
    )
    .await;
    let paths = std::iter::repeat_n("/trap", 100)
        .chain(["/loop", "/hog", "/bad-header", "/deny", "/count"])
        .chain(["/ok"; 3]);
    let mut expected_5xx = 0.0;
    for path in paths {
        let (status, _, _) = get_with(&weir.url(path), &[]).await;
        if status.is_server_error() {
            expected_5xx += 1.0;
        }
    }
    assert_eq!(expected_5xx, 103.0, "trap ×100, loop, hog, bad-header");

    // A response is counted when its body has gone out, which can be just after the client
    // has it: scrape until the last one is in.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let samples = loop {
        let samples = scrape(&weir).await;
        let all = value(
            &samples,
            "weir_request_duration_seconds_count",
            &[("route", "default")],
        );
        if all == Some(108.0) || tokio::time::Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let route = |class| {
        value(
            &samples,
            "weir_requests_total",
            &[("route", "default"), ("method", "GET"), ("class", class)],
        )
    };
    assert_eq!(route("5xx"), Some(expected_5xx));
    assert_eq!(route("4xx"), Some(1.0), "the plugin's 403");
    assert_eq!(route("2xx"), Some(4.0), "/count and /ok ×3");
    let failures = |kind| {
        value(
            &samples,
            "weir_plugin_failures_total",
            &[("plugin", "test"), ("kind", kind)],
        )
    };
    assert_eq!(failures("trap"), Some(100.0));
    assert_eq!(failures("deadline"), Some(1.0));
    assert_eq!(failures("memory"), Some(1.0));
    assert_eq!(failures("invalid_output"), Some(1.0));
    assert_eq!(failures("instantiate"), Some(0.0));
    let hook = [("plugin", "test"), ("hook", "on-request")];
    assert_eq!(
        value(&samples, "weir_plugin_hook_duration_seconds_count", &hook),
        Some(108.0)
    );
    let le = [("plugin", "test"), ("hook", "on-request"), ("le", "+Inf")];
    assert_eq!(
        value(&samples, "weir_plugin_hook_duration_seconds_bucket", &le),
        Some(108.0)
    );
    assert_eq!(
        value(
            &samples,
            "weir_plugin_local_replies_total",
            &[("plugin", "test")]
        ),
        Some(2.0),
        "/deny and /count"
    );
    assert_eq!(
        value(
            &samples,
            "weir_upstream_duration_seconds_count",
            &[("cluster", "app")]
        ),
        Some(3.0)
    );
    let endpoint = upstream.addr.to_string();
    assert_eq!(
        value(
            &samples,
            "weir_endpoint_healthy",
            &[("cluster", "app"), ("endpoint", &endpoint)]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "weir_plugin_loads_total",
            &[("plugin", "test"), ("result", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&samples, "weir_generation", &[]), Some(1.0));
    assert_eq!(value(&samples, "weir_requests_in_flight", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "weir_kv_keys", &[("plugin", "test")]),
        Some(1.0)
    );
    // Trapped, timed-out and hogging instances were dropped; the pool is what remains.
    assert!(
        value(
            &samples,
            "weir_plugin_instances_created_total",
            &[("plugin", "test")]
        )
        .is_some_and(|n| n >= 4.0)
    );
    // No label holds request data: the paths clients sent appear nowhere.
    assert!(
        samples
            .iter()
            .all(|s| !s.labels.to_string().contains("/trap")),
        "a label carries a request path"
    );

    // The failures are listed, newest first, with what failed.
    let (status, _, errors) = get_with(&weir.admin_url("/errors"), &[]).await;
    assert_eq!(status, 200);
    let errors: Value = serde_json::from_str(&errors).expect("JSON");
    let errors = errors.as_array().expect("a list");
    assert_eq!(errors.len(), 50, "the list keeps the latest 50");
    assert_eq!(errors[0]["kind"], "PluginFailed", "{:?}", errors[0]);
    assert_eq!(errors[0]["route"], "default");
    assert_eq!(errors[0]["plugin"], "test");
    assert!(
        errors[0]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("plugin test")),
        "{:?}",
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off() {
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&config(&[upstream.addr], "[metrics]\nenabled = false\n")).await;
    assert_eq!(get_with(&weir.url("/"), &[]).await.0, 200);
    let (status, _, body) = get_with(&weir.admin_url("/metrics"), &[]).await;
    assert_eq!(status, 404, "{body}");
}

const RATE_LIMIT: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/rate_limit.wasm"));
const JWT_AUTH: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/jwt_auth.wasm"));

/// A plugin's own metrics (`weir:plugin/metrics`, 0.3.3) in `/metrics`: the bundled
/// rate-limit counts each refusal under the limit that refused it, as
/// `weir_plugin_rate_limit_refusals_total{limit}` (the plugin's `-` made `_`).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_own_metrics_are_exported_with_its_name() {
    let upstream = Upstream::start("one").await;
    let settings = r#"
kv = true

[config]
key = "route"
headers = false

[[config.limits]]
requests = 3
window = "1m"
name = "per-minute"

[[config.limits]]
requests = 1000
window = "1h"
"#;
    let weir = Weir::start_with_files(
        &config(&[upstream.addr], ""),
        &[
            ("plugins/rate-limit.wasm", RATE_LIMIT),
            ("plugins/rate-limit.toml", settings.as_bytes()),
        ],
    )
    .await;
    let mut refused = 0;
    for _ in 0..10 {
        let (status, _, _) = get_with(&weir.url("/"), &[]).await;
        if status == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 7);
    // The count is made before the plugin's reply leaves: no wait needed.
    let samples = scrape(&weir).await;
    let refusals = "weir_plugin_rate_limit_refusals_total";
    assert_eq!(
        value(&samples, refusals, &[("limit", "per-minute")]),
        Some(7.0)
    );
    assert_eq!(value(&samples, refusals, &[("limit", "1000/1h")]), None);
    let errors: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == "weir_plugin_metric_errors_total" && s.labels["plugin"] == "rate-limit"
        })
        .map(|s| s.value)
        .collect();
    assert_eq!(errors, [0.0; 4], "no update was refused, of any kind");
}

/// `weir plugin test` checks a case's `metrics`: the bundled jwt-auth's refusals by reason,
/// a passing and a failing case.
#[test]
fn plugin_test_checks_a_plugins_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("jwt-auth.wasm");
    std::fs::write(&wasm, JWT_AUTH).expect("write");
    let cases = r#"
[plugin.config]
keys = [{ algorithm = "HS256", secret = "a-test-secret-that-is-long-enough!" }]

[[case]]
name = "no token"
expect = { status = 401, metrics = { 'refusals_total{reason="missing"}' = 1 } }

[[case]]
name = "garbage, counted after the first"
request = { headers = { authorization = "Bearer not.a.token" } }
expect = { status = 401, metrics = { 'refusals_total{reason="missing"}' = 1, 'weir_plugin_jwt_auth_refusals_total{reason="malformed"}' = 1, 'refusals_total{reason="expired"}' = 0 } }

[[case]]
name = "expects the wrong count"
expect = { status = 401, metrics = { 'refusals_total{reason="missing"}' = 5 } }
"#;
    std::fs::write(dir.path().join("cases.toml"), cases).expect("write");
    let out = Command::new(weir_tests::weir::weir_bin())
        .args(["plugin", "test", "jwt-auth.wasm", "--case", "cases.toml"])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", crate::cache_home())
        .output()
        .expect("run weir plugin test");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a case must fail:\n{report}");
    assert!(report.contains("ok    no token"), "{report}");
    assert!(
        report.contains("ok    garbage, counted after the first"),
        "{report}"
    );
    assert!(
        report.contains(r#"metric refusals_total{reason="missing"}: expected 5, got 2"#),
        "{report}"
    );
    assert!(
        report.contains(r#"refusals_total{reason="malformed"} 1"#),
        "the report lists the series: {report}"
    );
    assert!(report.contains("2 passed, 1 failed"), "{report}");
}

/// The JSON records in `path`, if it exists.
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls until `count()` reaches `n`, or the deadline.
async fn until_count(n: usize, count: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let seen = count();
        if seen >= n || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FIELDS: [&str; 23] = [
    "time",
    "request_id",
    "trace_id",
    "client",
    "method",
    "host",
    "path",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "duration",
    "upstream_duration",
    "route",
    "cluster",
    "endpoint",
    "attempts",
    "plugin",
    "incomplete",
    "generation",
    "tls_version",
    "tls_sni",
    "tls_client",
];

#[tokio::test(flavor = "multi_thread")]
async fn access_log_writes_every_request_and_reopens_on_sigusr1() {
    let upstream = Upstream::start("one").await;
    let extra = r#"
[[routes]]
name = "quiet"
path_prefix = "/quiet"
cluster = "app"
access_log = false

[access_log]
path = "access.log"
"#;
    let mut weir = Weir::start(&config(&[upstream.addr], extra)).await;
    let log = weir.dir().join("access.log");
    let rotated = weir.dir().join("access.log.1");

    for i in 0..500 {
        let (status, _, _) = get_with(&weir.url(&format!("/first/{i}?q=1")), &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(until_count(500, || records(&log).len()).await, 500);
    std::fs::rename(&log, &rotated).expect("mv");
    weir.signal(Signal::SIGUSR1);
    weir.wait_for_message("access log reopened").await;
    for i in 0..500 {
        let (status, _, _) = get_with(&weir.url(&format!("/second/{i}")), &[]).await;
        assert_eq!(status, 200);
        get_with(&weir.url("/quiet"), &[]).await;
    }
    let (status, _, _) = get_with(&weir.url("/second/posted"), &[("x-test", "1")]).await;
    assert_eq!(status, 200);
    assert_eq!(until_count(501, || records(&log).len()).await, 501);

    let old = records(&rotated);
    let new = records(&log);
    assert_eq!(old.len(), 500, "the first 500, all in the moved file");
    assert_eq!(new.len(), 501, "the rest in the new file; /quiet never");
    assert!(
        old.iter()
            .all(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/first/")))
    );
    assert!(new.iter().all(|r| {
        r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/second/"))
    }));

    let record = &old[7];
    let keys: Vec<&str> = record
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = FIELDS.to_vec();
    expected.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, expected, "{record}");
    assert_eq!(record["path"], "/first/7?q=1");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["status"], 200);
    assert_eq!(record["protocol"], "HTTP/1.1");
    assert_eq!(record["route"], "default");
    assert_eq!(record["cluster"], "app");
    assert_eq!(record["endpoint"], upstream.addr.to_string());
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["incomplete"], false);
    assert_eq!(record["host"], weir.proxy.to_string());
    assert_eq!(record["plugin"], Value::Null);
    assert_eq!(record["tls_version"], Value::Null);
    assert!(
        record["bytes_out"].as_u64().is_some_and(|n| n > 0),
        "{record}"
    );
    assert!(
        record["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
    assert!(
        record["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    assert!(record["duration"].as_f64().is_some_and(|d| d > 0.0));
    assert!(
        record["upstream_duration"]
            .as_f64()
            .is_some_and(|d| d > 0.0)
    );
    assert!(
        record["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_text_format_names_each_field_and_counts_body_bytes() {
    let upstream = Upstream::start("one").await;
    let extra = "[access_log]\npath = \"access.log\"\nformat = \"text\"\n";
    let mut weir = Weir::start(&config(&[upstream.addr], extra)).await;
    let client = weir_tests::http1_client();
    let request = http::Request::post(weir.url("/upload"))
        .body(weir_tests::full(vec![b'x'; 1234]))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    weir_tests::read_body(response.into_body()).await;
    let log = weir.dir().join("access.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Shutdown writes what is queued before weir exits: no poll needed.
    weir.signal(Signal::SIGTERM);
    assert!(weir.wait_exit().await.success());
    assert_eq!(lines().len(), 1);
    let line = &lines()[0];
    for field in [
        "method=POST",
        "path=/upload",
        "status=200",
        "bytes_in=1234",
        "route=default",
        "cluster=app",
        "plugin=-",
        "protocol=HTTP/1.1",
    ] {
        assert!(line.contains(field), "{field} not in {line}");
    }
}

/// `fields` chooses a record's fields and their order, in either format: a JSON record has
/// those keys and no others (no client address, no query string where the operator left
/// them out), a text line those `key=value` pairs in that order.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_fields_choose_what_each_record_holds() {
    let upstream = Upstream::start("one").await;
    for format in ["json", "text"] {
        let extra = format!(
            "[access_log]\npath = \"access.log\"\nformat = \"{format}\"\n\
             fields = [\"status\", \"method\", \"route\", \"bytes_out\", \"duration\"]\n"
        );
        let mut weir = Weir::start(&config(&[upstream.addr], &extra)).await;
        let (status, _, _) = get_with(&weir.url("/private?token=secret"), &[]).await;
        assert_eq!(status, 200);
        // Shutdown writes what is queued before weir exits.
        weir.signal(Signal::SIGTERM);
        assert!(weir.wait_exit().await.success());
        let log = weir.dir().join("access.log");
        let text = std::fs::read_to_string(&log).expect("access log");
        assert!(
            !text.contains("secret") && !text.contains("127.0.0.1"),
            "{text}"
        );
        if format == "json" {
            let records = records(&log);
            assert_eq!(records.len(), 1, "{text}");
            let record = records[0].as_object().expect("an object");
            // serde_json's map is sorted by key: the order is read off the line itself.
            let fields = ["status", "method", "route", "bytes_out", "duration"];
            assert_eq!(record.len(), fields.len(), "{text}");
            let at: Vec<_> = fields
                .iter()
                .map(|f| text.find(&format!("\"{f}\":")).expect("the field"))
                .collect();
            assert!(at.is_sorted(), "{text}");
            assert_eq!(record["status"], 200);
            assert_eq!(record["method"], "GET");
            assert_eq!(record["route"], "default");
            assert!(
                record["bytes_out"].as_u64().is_some_and(|n| n > 0),
                "{text}"
            );
            assert!(record["duration"].as_f64().is_some(), "{text}");
        } else {
            let line = text.lines().next().expect("a line");
            assert_eq!(text.lines().count(), 1, "{text}");
            let keys: Vec<_> = line
                .split(' ')
                .map(|pair| pair.split_once('=').expect("key=value").0)
                .collect();
            assert_eq!(
                keys,
                ["status", "method", "route", "bytes_out", "duration"],
                "{line}"
            );
            assert!(
                line.starts_with("status=200 method=GET route=default "),
                "{line}"
            );
        }
    }
}

/// `request_header:NAME` in `fields` logs that header as the client sent it, escaped where
/// it needs to be, and `null` (text: `-`) when the client sent none.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_records_the_request_headers_fields_chose() {
    let upstream = Upstream::start("one").await;
    let agent = r#"weir-test/1.0 (say "hi")"#;
    for format in ["json", "text"] {
        let extra = format!(
            "[access_log]\npath = \"access.log\"\nformat = \"{format}\"\n\
             fields = [\"status\", \"request_header:user-agent\", \"request_header:referer\"]\n"
        );
        let mut weir = Weir::start(&config(&[upstream.addr], &extra)).await;
        let (status, _, _) = get_with(&weir.url("/"), &[("user-agent", agent)]).await;
        assert_eq!(status, 200);
        weir.signal(Signal::SIGTERM);
        assert!(weir.wait_exit().await.success());
        let log = weir.dir().join("access.log");
        let text = std::fs::read_to_string(&log).expect("access log");
        if format == "json" {
            let records = records(&log);
            assert_eq!(records.len(), 1, "{text}");
            assert_eq!(records[0]["request_header:user-agent"], agent, "{text}");
            assert!(records[0]["request_header:referer"].is_null(), "{text}");
            assert_eq!(records[0].as_object().map(|o| o.len()), Some(3), "{text}");
        } else {
            assert_eq!(
                text,
                "status=200 request_header:user-agent=\"weir-test/1.0 (say \\\"hi\\\")\" \
                 request_header:referer=-\n"
            );
        }
    }
}

/// A client's header stays inside its own field whatever it holds, over HTTP/1.1 and
/// HTTP/2: quotes, a backslash, a tab, bytes that are not UTF-8, `key=value` text trying to
/// add a field, an empty value, a header sent twice (its first value is the one logged), a
/// name longer than a prefix's block, and a value near the head limit that triples when
/// escaped (it fits the room its record reserves; past it, weir's debug build panics on the
/// record and a release build cuts it).
#[tokio::test(flavor = "multi_thread")]
async fn access_log_request_headers_stay_in_their_fields_whatever_a_client_sends() {
    let upstream = Upstream::start("one").await;
    let long_name = "x-a-header-name-longer-than-a-prefix-block";
    let names = [
        "user-agent",
        "x-dup",
        "x-empty",
        "x-long",
        long_name,
        "referer",
    ];
    let agent: &[u8] = b"a\" status=500 x=\"\t\xff\\";
    let long = vec![0xff; 60 * 1024];
    // What each record holds, in the order of `names` (`None`: absent).
    let lossy = |v: &[u8]| Some(String::from_utf8_lossy(v).into_owned());
    let h1 = [
        lossy(agent),
        lossy(b"first"),
        lossy(b""),
        lossy(&long),
        lossy(b"v"),
        None,
    ];
    // Spaces and `=` alone, which a bare text value would let through as a field.
    let h2_agent: &[u8] = b"h2 client status=500";
    let h2_long: &[u8] = b"\xfe\"q\"";
    let h2 = [
        lossy(h2_agent),
        lossy(b"one"),
        None,
        lossy(h2_long),
        None,
        None,
    ];
    for format in ["json", "text"] {
        let fields: Vec<_> = names
            .iter()
            .map(|n| format!("\"request_header:{n}\""))
            .collect();
        let extra = format!(
            "[access_log]\npath = \"access.log\"\nformat = \"{format}\"\n\
             fields = [\"status\", {}]\n",
            fields.join(", ")
        );
        // One header may take the whole head (`head_bytes`, 64 KiB).
        let limits = "[server.limits]\nheader_bytes = 65536";
        let toml = crate::config_with(&[upstream.addr], &extra, limits, "");
        let mut weir = Weir::start(&toml).await;

        let mut head = b"GET / HTTP/1.1\r\nhost: h.test\r\nuser-agent: ".to_vec();
        head.extend_from_slice(agent);
        head.extend_from_slice(b"\r\nx-dup: first\r\nx-dup: second\r\nx-empty:\r\nx-long: ");
        head.extend_from_slice(&long);
        head.extend_from_slice(
            format!("\r\n{long_name}: v\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        let status = raw_request(weir.proxy, &head).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");

        let mut request = http::Request::get(weir.url("/h2"));
        let headers = request.headers_mut().expect("headers");
        let value = http::HeaderValue::from_bytes(h2_agent).expect("a value");
        headers.insert(http::header::USER_AGENT, value);
        headers.append("x-dup", http::HeaderValue::from_static("one"));
        headers.append("x-dup", http::HeaderValue::from_static("two"));
        let value = http::HeaderValue::from_bytes(h2_long).expect("a value");
        headers.insert("x-long", value);
        let request = request.body(weir_tests::empty()).expect("request");
        let response = weir_tests::http2_client().request(request).await;
        let response = response.expect("an HTTP/2 response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        weir_tests::read_body(response.into_body()).await;

        // Shutdown writes what is queued before weir exits.
        weir.signal(Signal::SIGTERM);
        assert!(weir.wait_exit().await.success());
        let log = weir.dir().join("access.log");
        let text = std::fs::read_to_string(&log).expect("access log");
        assert_eq!(text.lines().count(), 2, "{text}");
        if format == "json" {
            let records = records(&log);
            for (record, expected) in records.iter().zip([&h1, &h2]) {
                let record = record.as_object().expect("an object");
                assert_eq!(record.len(), 1 + names.len(), "{record:?}");
                assert_eq!(record["status"], 200);
                for (name, value) in names.iter().zip(expected) {
                    let logged = &record[&format!("request_header:{name}")];
                    let value = value.as_deref().map_or(Value::Null, Value::from);
                    assert_eq!(*logged, value, "{name}");
                }
            }
        } else {
            // The exact lines: each value bare, `-`, or one JSON string.
            for (line, expected) in text.lines().zip([&h1, &h2]) {
                let mut want = "status=200".to_owned();
                for (name, value) in names.iter().zip(expected) {
                    let value = match value {
                        None => "-".to_owned(),
                        Some(v) if v == "first" || v == "one" || v == "v" => v.clone(),
                        Some(v) => serde_json::to_string(v).expect("JSON"),
                    };
                    want += &format!(" request_header:{name}={value}");
                }
                assert!(line == want, "{line}\nis not\n{want}");
            }
        }
    }
}

/// `[access_log]` applies at restart: a reload that changes it says so, and one that puts
/// back what weir started with does not (the log is compared with what it was started with,
/// not with the last config read).
#[tokio::test(flavor = "multi_thread")]
async fn an_access_log_change_put_back_is_not_reported() {
    let upstream = Upstream::start("one").await;
    let started = config(&[upstream.addr], "[access_log]\npath = \"access.log\"\n")
        .replace("[plugins]\n", "[plugins]\nwatch = false\n");
    let changed = started.replace(
        "path = \"access.log\"\n",
        "path = \"access.log\"\nfields = [\"status\"]\n",
    );
    assert_ne!(started, changed);
    let mut weir = Weir::start(&started).await;
    let is = |prefix: &'static str| {
        move |l: &Value| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        }
    };
    let reported = is("[access_log] changed");
    let requested = is("reload requested");

    weir.write("weir.toml", changed.as_bytes());
    weir.signal(Signal::SIGHUP);
    weir.wait_for_message("[access_log] changed").await;

    // Put back, then reloaded twice: the second reload starts only once the first is done,
    // so when it is requested, whatever the first said has been logged.
    weir.write("weir.toml", started.as_bytes());
    weir.signal(Signal::SIGHUP);
    weir.wait_for_logs(|logs| logs.iter().filter(|l| requested(l)).count() >= 2)
        .await;
    weir.signal(Signal::SIGHUP);
    let logs = weir
        .wait_for_logs(|logs| logs.iter().filter(|l| requested(l)).count() >= 3)
        .await;
    let reports = logs.iter().filter(|l| reported(l)).count();
    assert_eq!(reports, 1, "{logs:#?}");
}

/// A response with no body is over when its head is written: hyper drops such a body without
/// polling it, and the request is settled then — logged once, complete, with no bytes out.
#[tokio::test(flavor = "multi_thread")]
async fn responses_without_a_body_are_logged_once_and_complete() {
    let upstream = Upstream::start("one").await;
    let empty = Upstream::start_with_status("empty", 204).await;
    let extra = format!(
        r#"
[[clusters]]
name = "empty"
endpoints = ["{}"]

[[routes]]
name = "empty"
path_prefix = "/empty"
cluster = "empty"

[access_log]
path = "access.log"
"#,
        empty.addr
    );
    let mut weir = Weir::start(&config(&[upstream.addr], &extra)).await;
    let (status, _, body) =
        weir_tests::send_with(http::Method::HEAD, &weir.url("/head"), &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, ""));
    let (status, _, body) = get_with(&weir.url("/empty"), &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (204, ""));
    // Shutdown writes what is queued before weir exits.
    weir.signal(Signal::SIGTERM);
    assert!(weir.wait_exit().await.success());
    let records = records(&weir.dir().join("access.log"));
    let seen: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["method"].as_str(),
                r["path"].as_str(),
                r["status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("HEAD"), Some("/head"), Some(200)),
            (Some("GET"), Some("/empty"), Some(204))
        ]
    );
    for record in &records {
        assert_eq!(record["incomplete"], false, "{record}");
        assert_eq!(record["bytes_out"], 0, "{record}");
        assert!(record["duration"].as_f64().is_some_and(|d| d > 0.0));
    }
}

/// Sends `head` (a whole HTTP/1.1 request head) on a fresh connection; the status line.
async fn raw_request(addr: SocketAddr, head: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_request_bytes_stay_inside_their_json_strings() {
    let upstream = Upstream::start("one").await;
    let extra = "[access_log]\npath = \"access.log\"\n";
    let weir = Weir::start(&config(&[upstream.addr], extra)).await;
    // A request id (passed through as the client sent it) that tries to close its string and
    // add fields, with a tab, a non-UTF-8 byte and a backslash; a query with a backslash
    // (hyper refuses a `"` in the target itself, and weir a `Host` that is not a host name).
    let id: &[u8] = b"x\",\"status\":1,\"a\":\"\t\xff\\";
    let mut head = b"GET /p?q=\\ HTTP/1.1\r\nhost: h.test\r\nx-request-id: ".to_vec();
    head.extend_from_slice(id);
    head.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    let status = raw_request(weir.proxy, &head).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let log = weir.dir().join("access.log");
    assert_eq!(until_count(1, || records(&log).len()).await, 1);
    // Each line parses as one JSON object (`records` fails the test otherwise), with the
    // hostile text inside its own field.
    let record = &records(&log)[0];
    assert_eq!(
        record.as_object().map(|o| o.len()),
        Some(FIELDS.len()),
        "{record}"
    );
    assert_eq!(record["status"], 200);
    assert_eq!(record["path"], "/p?q=\\");
    assert_eq!(record["host"], "h.test");
    assert_eq!(
        record["request_id"],
        "x\",\"status\":1,\"a\":\"\t\u{fffd}\\"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_access_log_drops_and_counts_records_without_failing_requests() {
    let upstream = Upstream::start("one").await;
    // Room for one record between two writes (every 50 ms): a burst overflows it.
    let extra = "[access_log]\npath = \"access.log\"\nqueue = 1\n";
    let mut weir = Weir::start(&config(&[upstream.addr], extra)).await;
    let url = weir.url("/burst");
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    let (status, _, _) = get_with(&url, &[]).await;
                    assert_eq!(status, 200, "a full log never fails a request");
                }
            })
        })
        .collect();
    for task in burst {
        task.await.expect("client");
    }
    let counted = |samples: &[Sample], name| value(samples, name, &[]).unwrap_or(0.0) as usize;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (written, dropped) = loop {
        let samples = scrape(&weir).await;
        let written = counted(&samples, "weir_access_log_records_total");
        let dropped = counted(&samples, "weir_access_log_dropped_total");
        if written + dropped >= 400 || tokio::time::Instant::now() > deadline {
            break (written, dropped);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        written + dropped,
        400,
        "every record written or counted as dropped"
    );
    assert!(dropped > 0, "400 requests in a burst overflow a queue of 1");
    weir.signal(Signal::SIGTERM);
    assert!(weir.wait_exit().await.success());
    assert_eq!(records(&weir.dir().join("access.log")).len(), written);
}

/// A test OTLP/HTTP collector: keeps every JSON export body it receives, answers `{}`.
struct OtlpReceiver {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                assert_eq!(request.uri().path(), "/v1/traces");
                                let body = request.into_body().collect().await?.to_bytes();
                                let export: Value =
                                    serde_json::from_slice(&body).expect("OTLP JSON");
                                kept.lock().expect("lock").push(export);
                                let mut response = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"{}"),
                                ));
                                response.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, hyper::Error>(response)
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        OtlpReceiver {
            addr,
            bodies,
            _server: server,
        }
    }

    /// Every span received so far for trace `trace_id`.
    fn spans(&self, trace_id: &str) -> Vec<Value> {
        let bodies = self.bodies.lock().expect("lock");
        bodies
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .filter(|span| span["traceId"].as_str() == Some(trace_id))
            .collect()
    }
}

fn traced_config(endpoints: &str, receiver: SocketAddr, sample: f64) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = [{endpoints}]
lb = "first"
retries = 1
connect_timeout = "1s"

[[routes]]
name = "default"
cluster = "app"

[tracing]
endpoint = "http://{receiver}"
protocol = "http/json"
sample = {sample:?}
flush_interval = "50ms"

[access_log]
path = "access.log"
"#,
        cache = crate::plugin_cache().display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_continues_the_clients_with_a_span_per_hook_and_per_upstream_attempt() {
    let receiver = OtlpReceiver::start().await;
    let down = weir_tests::closed_port();
    let upstream = Upstream::start("one").await;
    let endpoints = format!("\"{}\", \"{}\"", down.addr, upstream.addr);
    let weir = Weir::start_with_files(
        &traced_config(&endpoints, receiver.addr, 1.0),
        &[("plugins/10-test.wasm", PLUGIN)],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_parent}-01");
    let (status, _, _) = get_with(
        &weir.url("/hello"),
        &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(status, 200);

    // The server span, two hook spans (on-request, on-response), two attempts (the first
    // endpoint refuses the connection, the second answers).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let spans = loop {
        let spans = receiver.spans(trace_id);
        if spans.len() >= 5 || tokio::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let named = |name: &str| {
        spans
            .iter()
            .filter(|s| s["name"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let server = &named("GET default")[0];
    assert_eq!(server["kind"], 2, "SERVER");
    assert_eq!(server["parentSpanId"], client_parent);
    let server_id = server["spanId"].as_str().expect("span id");
    for hook in ["plugin test on-request", "plugin test on-response"] {
        let hook_span = &named(hook)[0];
        assert_eq!(hook_span["parentSpanId"], server_id, "{hook}");
        assert_eq!(hook_span["kind"], 1, "INTERNAL");
    }
    let attempts = named("GET app");
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    assert!(
        attempts
            .iter()
            .all(|a| a["parentSpanId"] == server_id && a["kind"] == 3)
    );
    let failed = attempts
        .iter()
        .find(|a| a["status"]["code"] == 2)
        .expect("the refused attempt's span has an error status");
    let answered = attempts
        .iter()
        .find(|a| a["spanId"] != failed["spanId"])
        .expect("the second attempt");

    // The endpoint that answered was told the trace and its own attempt's span as parent.
    let seen = &upstream.requests()[0].headers;
    assert_eq!(
        seen["traceparent"],
        format!(
            "00-{trace_id}-{}-01",
            answered["spanId"].as_str().expect("id")
        )
    );
    assert_eq!(seen["tracestate"], "vendor=1");

    // The access log names the trace.
    let log = weir.dir().join("access.log");
    assert_eq!(until_count(1, || records(&log).len()).await, 1);
    assert_eq!(records(&log)[0]["trace_id"], trace_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_request_still_passes_a_trace_upstream() {
    let receiver = OtlpReceiver::start().await;
    let upstream = Upstream::start("one").await;
    let weir = Weir::start(&traced_config(
        &format!("\"{}\"", upstream.addr),
        receiver.addr,
        0.0,
    ))
    .await;
    let (status, _, _) = get_with(&weir.url("/"), &[]).await;
    assert_eq!(status, 200);
    let seen = upstream.requests()[0].headers["traceparent"]
        .to_str()
        .expect("text")
        .to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!((parts[0], parts[3]), ("00", "00"), "not sampled: {seen}");
    assert_eq!(parts[1].len(), 32);
    let log = weir.dir().join("access.log");
    assert_eq!(until_count(1, || records(&log).len()).await, 1);
    assert_eq!(records(&log)[0]["trace_id"], parts[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_log_lines_carry_the_trace_id() {
    let receiver = OtlpReceiver::start().await;
    let upstream = Upstream::start("one").await;
    let mut weir = Weir::start_with_files(
        &traced_config(&format!("\"{}\"", upstream.addr), receiver.addr, 1.0),
        &crate::key_auth_files(),
    )
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let (status, _, _) = get_with(
        &weir.url("/"),
        &[("traceparent", &traceparent), ("x-api-key", "wrong")],
    )
    .await;
    assert_eq!(status, 401);
    let line = weir.wait_for_message("invalid API key").await;
    assert_eq!(line["trace_id"], trace_id, "{line}");
}

/// A request whose client goes away before its answer began — an HTTP/1.1 connection closed,
/// an HTTP/2 stream reset — while weir waits on the upstream: counted, logged and no longer in
/// flight, with nginx's status for it, 499, and `incomplete`. (They were neither counted nor
/// logged, and `weir_requests_in_flight` kept them for ever: after 200 streams reset it read
/// 200.)
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_client_goes_away_before_its_answer_is_logged_as_499() {
    use tokio::io::AsyncWriteExt;
    use weir_tests::http2::{self, Raw};

    let upstream = Upstream::start("app").await;
    let weir = Weir::start(&config(
        &[upstream.addr],
        "[access_log]\npath = \"access.log\"\n",
    ))
    .await;

    let mut http1 = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    http1
        .write_all(b"GET /slow?over=1 HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .expect("request");
    upstream.wait_for_requests(1).await;
    drop(http1);

    let tcp = tokio::net::TcpStream::connect(weir.proxy)
        .await
        .expect("connect");
    let mut h2 = Raw::start(tcp).await;
    h2.get(1, "a.test", "/slow?over=2").await.expect("request");
    upstream.wait_for_requests(2).await;
    h2.write(&http2::rst_stream(1, http2::CANCEL))
        .await
        .expect("reset");

    let log = weir.dir().join("access.log");
    let logged = until_count(2, || records(&log).len()).await;
    assert_eq!(logged, 2, "records of the two requests");
    for record in records(&log) {
        assert_eq!(
            (
                record["status"].as_u64(),
                record["incomplete"].as_bool(),
                record["route"].as_str(),
                record["cluster"].as_str(),
                record["bytes_out"].as_u64(),
            ),
            (Some(499), Some(true), Some("default"), Some("app"), Some(0)),
            "{record}"
        );
    }
    let paths: Vec<_> = records(&log)
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(paths.len(), 2);
    assert!(paths.contains(&"/slow?over=1".to_owned()), "{paths:?}");
    assert!(paths.contains(&"/slow?over=2".to_owned()), "{paths:?}");

    let samples = scrape(&weir).await;
    assert_eq!(value(&samples, "weir_requests_in_flight", &[]), Some(0.0));
    let labels = [("route", "default"), ("method", "GET"), ("class", "4xx")];
    assert_eq!(
        value(&samples, "weir_requests_total", &labels),
        Some(2.0),
        "counted as 4xx"
    );
}
