//! Hot reload through a real weir: plugins added, replaced, renamed over, half-written,
//! garbage and deleted while clients keep sending requests; the config file reloaded; and the
//! admin `/plugins` and `POST /reload` endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::Value;
use weir_tests::{DEADLINE, Upstream, Weir, empty, http1_client, read_body};

use crate::config;

const PLUGIN: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));

/// What one request through weir came back with.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: StatusCode,
    /// `x-plugin-version`, set by the test plugin from its config.
    version: Option<String>,
    /// Whether the test plugin's response hook ran.
    filtered: bool,
    body: String,
}

async fn fetch(url: &str) -> Result<Seen, String> {
    let request = Request::get(url).body(empty()).map_err(|e| e.to_string())?;
    let response = http1_client()
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, version, filtered) = (
        response.status(),
        header("x-plugin-version"),
        header("x-plugin-response").is_some(),
    );
    let body = String::from_utf8_lossy(&read_body(response.into_body()).await).into_owned();
    Ok(Seen {
        status,
        version,
        filtered,
        body,
    })
}

/// Polls `url` until a response satisfies `done`; returns how long that took. Panics at the
/// test deadline with the last response.
async fn until(url: &str, done: impl Fn(&Seen) -> bool) -> Duration {
    let started = tokio::time::Instant::now();
    let mut last = None;
    while started.elapsed() < DEADLINE {
        let seen = fetch(url).await;
        if seen.as_ref().is_ok_and(&done) {
            return started.elapsed();
        }
        last = Some(seen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met before the deadline; last response: {last:?}");
}

/// Clients that send requests back to back until stopped, keeping every failure.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut sent, mut failures) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        match fetch(&url).await {
                            Ok(seen) if seen.status == StatusCode::OK => {}
                            Ok(seen) => failures.push(format!("{seen:?}")),
                            Err(e) => failures.push(e),
                        }
                    }
                    (sent, failures)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients; returns how many requests they sent and every failure.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut sent, mut failures) = (0, Vec::new());
        for task in self.tasks {
            let (n, f) = task.await.expect("client task");
            sent += n;
            failures.extend(f);
        }
        (sent, failures)
    }
}

fn version(v: &str) -> String {
    format!("[config]\nversion = \"{v}\"\n")
}

fn has_version(v: &'static str) -> impl Fn(&Seen) -> bool {
    move |s| s.status == StatusCode::OK && s.version.as_deref() == Some(v)
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_changes_apply_under_load_without_a_failed_request() {
    let upstream = Upstream::start("one").await;
    let mut weir = Weir::start(&config(&[upstream.addr], "")).await;
    let url = weir.url("/hello");
    // Each change must show within a second. That is the reload path's time; compiling is
    // measured by bench/reload-latency.sh, so the cache gets these bytes first.
    crate::bundled::warm_cache(&weir, PLUGIN, "").await;
    let within_a_second = |took: Duration, what: &str| {
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    };
    assert!(!fetch(&url).await.expect("response").filtered);
    let load = Load::start(url.clone(), 2);

    // Add: settings first, then the plugin.
    weir.write("plugins/10-test.toml", version("v1").as_bytes());
    weir.write("plugins/10-test.wasm", PLUGIN);
    within_a_second(until(&url, has_version("v1")).await, "add");

    // Replace its settings in place, then as an editor does (temp file, rename).
    weir.write("plugins/10-test.toml", version("v2").as_bytes());
    within_a_second(until(&url, has_version("v2")).await, "replace");
    weir.write_and_rename("plugins/10-test.toml", version("v3").as_bytes());
    within_a_second(until(&url, has_version("v3")).await, "rename over");

    // Garbage beside it: rejected with its reason, every request still served by v3.
    weir.write("plugins/broken.wasm", b"\0asm garbage");
    let line = weir.wait_for_message("plugin rejected").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.wasm") && e.contains("not a valid wasm component")),
        "{line}"
    );
    assert!(has_version("v3")(&fetch(&url).await.expect("response")));

    // A copy that arrives in two writes: the first half is refused and v3 keeps serving;
    // once the rest lands, the new version goes live.
    weir.write("plugins/10-test.wasm", &PLUGIN[..PLUGIN.len() / 2]);
    weir.wait_for_message("plugin rejected; the previous version keeps serving")
        .await;
    assert!(has_version("v3")(&fetch(&url).await.expect("response")));
    weir.write("plugins/10-test.toml", version("v4").as_bytes());
    weir.write("plugins/10-test.wasm", PLUGIN);
    within_a_second(until(&url, has_version("v4")).await, "completed copy");

    // Delete: the default chain runs without it.
    weir.remove("plugins/10-test.wasm");
    let gone = until(&url, |s| s.status == StatusCode::OK && !s.filtered).await;
    within_a_second(gone, "delete");

    let (sent, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:#?}",
        failures.len()
    );
    assert!(sent > 20, "the load sent only {sent} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_plugin_a_route_names_closes_the_route_until_it_returns() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "plugins = [\"test\"]\n");
    let weir = Weir::start_with_files(&config, &[("plugins/10-test.wasm", PLUGIN)]).await;
    let url = weir.url("/hello");
    assert!(fetch(&url).await.expect("response").filtered);

    weir.remove("plugins/10-test.wasm");
    until(&url, |s| {
        s.status == StatusCode::SERVICE_UNAVAILABLE && s.body == "plugin unavailable\n"
    })
    .await;
    weir.write("plugins/10-test.wasm", PLUGIN);
    until(&url, |s| s.status == StatusCode::OK && s.filtered).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn config_file_reloads_and_a_bad_edit_changes_nothing() {
    let (one, two) = (Upstream::start("one").await, Upstream::start("two").await);
    let mut weir = Weir::start(&config(&[one.addr], "")).await;
    let url = weir.url("/hello");
    let load = Load::start(url.clone(), 2);
    let text = std::fs::read_to_string(weir.dir().join("weir.toml")).expect("config");

    // A valid edit: the cluster moves to the other upstream.
    let moved = text.replace(&one.addr.to_string(), &two.addr.to_string());
    weir.write_and_rename("weir.toml", moved.as_bytes());
    until(&url, |s| s.body.starts_with("two ")).await;

    // A syntax error: refused with its line and column; still served by "two".
    weir.write("weir.toml", format!("{moved}\n[[routes]\n").as_bytes());
    let line = weir.wait_for_message("config reload refused").await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("weir.toml:") && e.contains("1 configuration error")),
        "{line}"
    );
    // A change only a restart can apply: refused, saying so.
    let relisten = moved.replacen("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\"", 1);
    weir.write("weir.toml", relisten.as_bytes());
    weir.wait_for_logs(|logs| {
        logs.iter().any(|l| {
            l["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("[[listeners]] changed, which takes a restart"))
        })
    })
    .await;
    assert!(
        fetch(&url)
            .await
            .expect("response")
            .body
            .starts_with("two ")
    );

    let (sent, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:#?}",
        failures.len()
    );
}

async fn admin(weir: &Weir, method: &str, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(weir.admin_url(path))
        .body(empty())
        .expect("request");
    let response = http1_client().request(request).await.expect("admin");
    let status = response.status();
    let body = read_body(response.into_body()).await;
    (status, serde_json::from_slice(&body).expect("json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_plugins_and_post_reload_rescans() {
    let upstream = Upstream::start("one").await;
    // Watching off: only POST /reload applies changes.
    let config = config(&[upstream.addr], "").replace("[plugins]\n", "[plugins]\nwatch = false\n");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/10-test.toml", b"[config]\nversion = \"v1\"\n"),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let url = weir.url("/hello");

    let (status, plugins) = admin(&weir, "GET", "/plugins").await;
    assert_eq!(status, StatusCode::OK);
    let first = &plugins[0];
    assert_eq!(first["name"], "test");
    assert_eq!(first["status"], "serving");
    assert!(
        first["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("plugins/10-test.wasm"))
    );
    assert_eq!(first["hash"].as_str().map(str::len), Some(16));
    assert_eq!(
        first["hooks"],
        serde_json::json!(["on-request", "on-response"])
    );
    assert_eq!(first["generation"], 1);
    assert!(
        first["loaded_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(first["last_error"].is_null());

    weir.write("plugins/10-test.toml", version("v2").as_bytes());
    assert!(has_version("v1")(&fetch(&url).await.expect("response")));
    let (status, report) = admin(&weir, "POST", "/reload").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["changed"].clone(), report["generation"].clone()),
        (true.into(), 2.into())
    );
    assert!(has_version("v2")(&fetch(&url).await.expect("response")));

    // Nothing changed: no new generation.
    let (_, report) = admin(&weir, "POST", "/reload").await;
    assert_eq!(
        (report["changed"].clone(), report["generation"].clone()),
        (false.into(), 2.into())
    );

    // A bad file: 422 naming it; the rest still serves; /plugins shows why.
    weir.write("plugins/broken.wasm", b"garbage");
    let (status, report) = admin(&weir, "POST", "/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        report["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("broken.wasm")),
        "{report}"
    );
    assert!(has_version("v2")(&fetch(&url).await.expect("response")));
    let (_, plugins) = admin(&weir, "GET", "/plugins").await;
    // File-name order: "10-test.wasm" sorts before "broken.wasm".
    assert_eq!(plugins[0]["generation"], 2);
    let broken = &plugins[1];
    assert_eq!(
        (broken["name"].clone(), broken["status"].clone()),
        ("broken".into(), "failed".into())
    );
    assert!(
        broken["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid wasm component"))
    );

    // SIGHUP rescans too, as nginx and HAProxy reload on it.
    weir.write("plugins/10-test.toml", version("v3").as_bytes());
    weir.signal(nix::sys::signal::Signal::SIGHUP);
    until(&url, has_version("v3")).await;

    let response = http1_client()
        .get(weir.admin_url("/reload").parse().expect("uri"))
        .await
        .expect("admin");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// A plugin folder that cannot be read (here: a file where the folder was) is an error for
/// the rescan, not an empty folder: every plugin keeps serving, so a security filter is
/// never dropped by a failed listing.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_plugin_folder_keeps_every_plugin() {
    let upstream = Upstream::start("one").await;
    let config = config(&[upstream.addr], "").replace("[plugins]\n", "[plugins]\nwatch = false\n");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/10-test.wasm", PLUGIN),
        ("plugins/10-test.toml", b"[config]\nversion = \"v1\"\n"),
    ];
    let weir = Weir::start_with_files(&config, &files).await;
    let url = weir.url("/hello");
    assert!(has_version("v1")(&fetch(&url).await.expect("response")));

    let dir = weir.dir().join("plugins");
    std::fs::rename(&dir, weir.dir().join("plugins.moved")).expect("move the folder");
    std::fs::write(&dir, b"not a folder").expect("a file in its place");
    let (status, report) = admin(&weir, "POST", "/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{report}");
    assert_eq!(report["changed"], false, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("cannot list"), "{report}");
    let seen = fetch(&url).await.expect("response");
    assert!(has_version("v1")(&seen) && seen.filtered, "{seen:?}");
    let (_, plugins) = admin(&weir, "GET", "/plugins").await;
    assert_eq!(plugins[0]["status"], "serving", "{plugins}");
}
