//! The admin dashboard at `/`, in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/dashboard.mjs`, installed by `npm ci --prefix tests/browser`) loads the
//! page from a weir carrying traffic, and the test fails on any console or page error, if
//! the row of a plugin that trapped is not marked failing, if a working plugin's is, or if
//! the trap is missing from the recent errors.
//!
//! `WEIR_DASHBOARD_SCREENSHOT=PATH` keeps a screenshot of the page (`docs/dashboard.png` is
//! one), `WEIR_DASHBOARD_POLLS=N` waits for N polls of the page first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use weir_tests::{Upstream, Weir, closed_port, get_with, http1_client};

use crate::config;

const PLUGIN: &[u8] = include_bytes!(env!("TEST_PLUGIN_WASM"));
const HEADERS: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/headers.wasm"));

/// Where the browser script lives, its dependencies installed; panics with the fix when
/// they are not.
fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "Playwright is not installed: run `npm ci --prefix tests/browser`"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "Chromium is not installed: run `apt-get install chromium` (or set CHROMIUM to a browser)"
    );
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn shows_a_failing_plugin() {
    let browser = browser_dir();
    let (app, app_2) = (Upstream::start("app").await, Upstream::start("app-2").await);
    let assets = Upstream::start("assets").await;
    // An `assets` endpoint that refuses connections: ejected at its first failure, the
    // request retried on the other.
    let refused = closed_port();
    // The test plugin, as `crasher`, traps on `/trap` and answers `/deny` itself; the
    // bundled `headers` plugin works. The catch-all route runs both, `api` the crasher,
    // `static` headers.
    let extra = format!(
        r#"
[[clusters]]
name = "assets"
endpoints = ["{assets}", "{refused}"]
lb = "least_request"
connect_timeout = "1s"
outlier_detection = {{ consecutive_failures = 1, base_ejection_time = "5m" }}

[[routes]]
name = "api"
path_prefix = "/api"
methods = ["GET", "POST"]
cluster = "app"
plugins = ["crasher"]

[[routes]]
name = "static"
path_prefix = "/static"
cluster = "assets"
plugins = ["headers"]
"#,
        assets = assets.addr
    );
    let weir = Weir::start_with_files(
        &config(&[app.addr, app_2.addr], &extra),
        &[
            ("plugins/crasher.wasm", PLUGIN),
            ("plugins/headers.wasm", HEADERS),
            // A deadline no loaded machine misses: this plugin must not fail.
            (
                "plugins/headers.toml",
                b"deadline = \"10s\"\n[config.response]\nset = { \"x-frame-options\" = \"DENY\" }\n",
            ),
        ],
    )
    .await;

    let (status, headers, body) = get_with(&weir.admin_url("/"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("content-security-policy"));
    assert!(body.contains("<title>weir</title>"), "{body}");

    // The failure the page must show, before the browser opens it.
    let (status, _, _) = get_with(&weir.url("/trap"), &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    // Steady traffic while the page polls, so the rates and charts have something to show:
    // mostly answered by the upstreams, some local replies, now and then another trap.
    let proxy = weir.url("");
    let traffic = tokio::spawn(async move {
        let client = http1_client();
        let paths = [
            "/api/users",
            "/static/app.css",
            "/api/orders",
            "/",
            "/static/logo.svg",
            "/deny",
            "/api/users/7",
            "/trap",
        ];
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for path in paths.iter().cycle() {
            tick.tick().await;
            let uri = format!("{proxy}{path}").parse().expect("uri");
            // Errors are the point of some of these; the page reads the outcome.
            let _ = client.get(uri).await;
        }
    });

    let url = weir.admin_url("/");
    let script = browser.join("dashboard.mjs");
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .args([url.as_str(), "crasher", "trap", "headers"])
            .output()
            .expect("run node (is Node.js installed?)")
    });
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script did not finish")
        .expect("join");
    traffic.abort();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "the dashboard did not show the failure cleanly ({}):\n{stderr}\n{stdout}",
        output.status
    );
    println!("{stdout}");
    assert!(stdout.contains("plugin row: crasher"), "{stdout}");
}
