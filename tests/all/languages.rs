//! Plugins in other languages, through a real weir: the guard filter of
//! `examples/filters/<lang>/` and the profile handlers of `examples/handlers/<lang>/` (built
//! by `cargo xtask examples`), a hot-reload swap to the JavaScript filter, `weir plugin test`
//! on every example's cases, and `weir plugin new` for every language, built and tested, on
//! the current contract.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use http::StatusCode;
use weir_tests::{Upstream, Weir, get_with, weir::weir_bin};

use crate::config;

/// Each filter example's folder and the tag its `x-guard` header carries.
const FILTERS: [(&str, &str); 8] = [
    ("rust", "rust"),
    ("c", "c"),
    ("zig", "zig"),
    ("go", "go"),
    ("python", "python"),
    ("js", "javascript"),
    ("js-quickjs", "quickjs"),
    ("ts", "typescript"),
];

/// The guard built on QuickJS cannot give back the handle a lazy hook is lent
/// (componentize-qjs 0.4.5: `examples/filters/js-quickjs/guard.js`): its settings ask for
/// whole heads, as its `guard.toml` does.
fn whole_heads(lang: &str) -> bool {
    lang == "js-quickjs"
}

/// Starting weir with the JavaScript and Python plugins: a debug build compiles each in
/// seconds, and the tests share two cores.
const SLOW: Duration = Duration::from_secs(300);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A built example's bytes; fails, with the fix, if it was not built.
fn built(relative: &str) -> Vec<u8> {
    let path = examples().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the examples first: `cargo xtask examples`",
            path.display()
        )
    })
}

/// The guard's settings. The deadline is generous: a debug weir sharing two cores with
/// other tests is slow to make a Python or JavaScript instance.
fn guard_settings(deny: &str, tag: &str, whole_heads: bool) -> Vec<u8> {
    format!(
        "deadline = \"5s\"\nwhole_heads = {whole_heads}\n[config]\ndeny = [\"{deny}\"]\ntoken = \"open-sesame\"\ntag = \"{tag}\"\n"
    )
    .into_bytes()
}

fn route(name: &str, target: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\n{target}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_filter_behaves_the_same_in_every_language() {
    let upstream = Upstream::start("app").await;
    let mut routes = String::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (lang, tag) in FILTERS {
        let wasm = built(&format!("filters/{lang}/guard.wasm"));
        // `deny-…` lists the test client's network (127.0.0.1); `open-…` does not.
        for (name, deny) in [
            (format!("deny-{lang}"), "127.0.0.0/8"),
            (format!("open-{lang}"), "10.0.0.0/8"),
        ] {
            files.push((format!("plugins/{name}.wasm"), wasm.clone()));
            files.push((
                format!("plugins/{name}.toml"),
                guard_settings(deny, tag, whole_heads(lang)),
            ));
            routes.push_str(&crate::routes_through_plugins(&[&name]));
        }
    }
    // The QuickJS guard without `whole_heads`: weir calls its lazy hook, which returns still
    // holding the handle it was lent (componentize-qjs 0.4.5), and the request fails closed.
    let wasm = built("filters/js-quickjs/guard.wasm");
    files.push(("plugins/lazy-js-quickjs.wasm".to_owned(), wasm));
    let settings = guard_settings("10.0.0.0/8", "quickjs", false);
    files.push(("plugins/lazy-js-quickjs.toml".to_owned(), settings));
    routes.push_str(&crate::routes_through_plugins(&["lazy-js-quickjs"]));
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    let mut weir = Weir::start_within(&config(&[upstream.addr], &routes), &files, SLOW).await;

    for (lang, tag) in FILTERS {
        let deny = format!("/deny-{lang}/orders");
        let (status, headers, body) = get_with(&weir.url(&deny), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{lang}: no token: {body}");
        assert_eq!(headers["content-type"], "application/json", "{lang}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["error"], "client network not allowed", "{lang}");

        let wrong = [("x-guard-token", "open-sesame!")];
        let (status, _, _) = get_with(&weir.url(&deny), &wrong).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{lang}: wrong token");

        let before = upstream.requests().len();
        let right = [("x-guard-token", "open-sesame")];
        let (status, headers, body) = get_with(&weir.url(&deny), &right).await;
        assert_eq!(status, StatusCode::OK, "{lang}: right token: {body}");
        assert_eq!(headers["x-guard"], tag, "{lang}");
        let seen = upstream.requests();
        assert_eq!(seen.len(), before + 1, "{lang}: one request upstream");
        let forwarded = &seen[before];
        assert_eq!(forwarded.uri.path(), deny, "{lang}");
        assert!(
            !forwarded.headers.contains_key("x-guard-token"),
            "{lang}: the token must not reach the upstream"
        );

        let open = format!("/open-{lang}/orders");
        let (status, headers, _) = get_with(&weir.url(&open), &[]).await;
        assert_eq!(status, StatusCode::OK, "{lang}: a client outside the list");
        assert_eq!(headers["x-guard"], tag, "{lang}");
    }

    let (status, _, _) = get_with(&weir.url("/lazy-js-quickjs/orders"), &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "quickjs, lazy");
    // weir's line says what the failure was and the setting that avoids it.
    let failed = weir.wait_for_message("plugin call failed").await;
    assert_eq!(failed["plugin"], "lazy-js-quickjs");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("borrow handles still remain") && error.contains("whole_heads = true"),
        "{failed}"
    );

    // Every guard is built against the current contract. weir calls the lazy hooks (heads
    // read through handles) of all but QuickJS's, whose settings ask for whole heads.
    let (status, _, plugins) = get_with(&weir.admin_url("/plugins"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let plugins: serde_json::Value = serde_json::from_str(&plugins).expect("JSON");
    for (lang, _) in FILTERS {
        let name = format!("deny-{lang}");
        let plugin = plugins
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name.as_str()));
        let contract = plugin.map(|p| p["contract"].clone());
        assert_eq!(contract, Some(current_contract().into()), "{lang}");
        let whole = plugin.map(|p| p["whole_heads"].clone());
        assert_eq!(whole, Some(whole_heads(lang).into()), "{lang}");
    }
}

/// The version of the `weir:plugin` package in `wit/`, from `world.wit`'s `package` line.
fn current_contract() -> String {
    let world = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/world.wit");
    let text = std::fs::read_to_string(&world).expect("wit/world.wit");
    text.lines()
        .find_map(|line| line.strip_prefix("package weir:plugin@")?.strip_suffix(';'))
        .unwrap_or_else(|| panic!("no `package weir:plugin@…;` line in {}", world.display()))
        .to_owned()
}

/// Every language `weir plugin new` knows (`weir plugin new --help`).
const TEMPLATES: [&str; 8] = ["rust", "c", "go", "zig", "python", "js", "js-quickjs", "ts"];

#[test]
fn plugin_new_writes_the_current_contract_in_every_language() {
    let current = current_contract();
    let dir = tempfile::tempdir().expect("tempdir");
    for lang in TEMPLATES {
        let name = format!("x-{lang}");
        let out = weir(&["plugin", "new", "--lang", lang, &name], dir.path());
        assert!(out.status.success(), "{lang}: {}", text(&out));
        let wit = dir.path().join(&name).join("wit");
        let mut files = 0;
        for entry in std::fs::read_dir(&wit).expect("wit/ is written") {
            let path = entry.expect("entry").path();
            let source = std::fs::read_to_string(&path).expect("a WIT file");
            let package = source
                .lines()
                .find(|line| line.starts_with("package weir:plugin@"));
            assert_eq!(
                package,
                Some(format!("package weir:plugin@{current};").as_str()),
                "{lang}: {}",
                path.display()
            );
            files += 1;
        }
        // world, http-filter, types, log, kv, metrics, outbound: the whole package, not a
        // part of it.
        assert_eq!(files, 7, "{lang}: the WIT files in {}", wit.display());
        // The lazy hooks are there for the template to export.
        let filter = std::fs::read_to_string(wit.join("http-filter.wit")).expect("http-filter");
        assert!(filter.contains("on-request-lazy:"), "{lang}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_filter_replaces_another_by_hot_reload_without_failing_a_request() {
    let upstream = Upstream::start("app").await;
    let rust = built("filters/rust/guard.wasm");
    let javascript = built("filters/js/guard.wasm");
    let files: [(&str, &[u8]); 2] = [
        ("plugins/guard.wasm", &rust),
        (
            "plugins/guard.toml",
            &guard_settings("127.0.0.0/8", "before", false),
        ),
    ];
    let extra = "plugins = [\"guard\"]";
    let weir = Weir::start_within(&config(&[upstream.addr], extra), &files, SLOW).await;
    let right = [("x-guard-token", "open-sesame")];
    let (status, headers, _) = get_with(&weir.url("/x"), &right).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-guard"], "before");

    // The settings first, then the new code: each change is one reload, and every request
    // in between must be answered by a complete plugin, old or new.
    weir.write_and_rename(
        "plugins/guard.toml",
        &guard_settings("127.0.0.0/8", "after", false),
    );
    weir.write_and_rename("plugins/guard.wasm", &javascript);
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        let (status, headers, body) = get_with(&weir.url("/x"), &right).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "every request during the swap: {body}"
        );
        let (refused, _, _) = get_with(&weir.url("/x"), &[]).await;
        assert_eq!(refused, StatusCode::FORBIDDEN, "the guard never lapses");
        if headers["x-guard"] == "after" {
            let plugins = weir_tests::get_with(&weir.admin_url("/plugins"), &[])
                .await
                .2;
            if plugins.contains(&weir_sha(&javascript)) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JavaScript filter never replaced the Rust one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first 8 bytes of the SHA-256 of `bytes`, hex: the hash `/plugins` shows.
fn weir_sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn handlers_in_javascript_and_python_call_two_clusters_at_once_and_merge_the_answers() {
    let users = Upstream::start_json("users").await;
    let orders = Upstream::start_json("orders").await;
    // Neither answers until both have been asked: a handler that called one after the other
    // would never get its first answer.
    users.hold();
    orders.hold();
    let clusters = format!(
        "\n[[clusters]]\nname = \"users\"\nendpoints = [\"{}\"]\n\n[[clusters]]\nname = \"orders\"\nendpoints = [\"{}\"]\n",
        users.addr, orders.addr
    );
    let mut extra = clusters;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for lang in ["js", "python"] {
        let name = format!("profile-{lang}");
        files.push((
            format!("plugins/{name}.wasm"),
            built(&format!("handlers/{lang}/profile.wasm")),
        ));
        files.push((
            format!("plugins/{name}.toml"),
            b"clusters = [\"users\", \"orders\"]\ndeadline = \"10s\"\n".to_vec(),
        ));
        extra.push_str(&route(&name, &format!("handler = \"{name}\"")));
    }
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    let weir = Weir::start_within(&config(&[users.addr], &extra), &files, SLOW).await;

    for (asked, lang) in ["js", "python"].into_iter().enumerate() {
        let url = weir.url(&format!("/profile-{lang}/profile/7"));
        let call = tokio::spawn(async move { get_with(&url, &[]).await });
        users.wait_for_requests(asked + 1).await;
        orders.wait_for_requests(asked + 1).await;
        users.release();
        orders.release();
        let (status, headers, body) = call.await.expect("request task");
        assert_eq!(status, StatusCode::OK, "{lang}: {body}");
        assert_eq!(headers["content-type"], "application/json", "{lang}");
        let merged: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(merged["user"]["upstream"], "users", "{lang}: {merged}");
        assert_eq!(merged["user"]["path"], "/users/7", "{lang}: {merged}");
        assert_eq!(merged["orders"]["upstream"], "orders", "{lang}: {merged}");
        assert_eq!(merged["orders"]["query"], "user=7", "{lang}: {merged}");
    }
}

/// `weir ARGS` in `dir`, sharing the tests' compile cache, with the toolchains on PATH.
fn weir(args: &[&str], dir: &Path) -> Output {
    Command::new(weir_bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", crate::cache_home())
        .env("PATH", tools_path())
        .output()
        .expect("run weir")
}

/// `weir plugin test WASM --case cases.toml`, run in `dir`.
fn plugin_test(wasm: &Path, dir: &Path) -> Output {
    let wasm = wasm.display().to_string();
    weir(&["plugin", "test", &wasm, "--case", "cases.toml"], dir)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn plugin_test_passes_every_examples_cases() {
    let built_examples = [
        "filters/rust/guard.wasm",
        "filters/c/guard.wasm",
        "filters/zig/guard.wasm",
        "filters/go/guard.wasm",
        "filters/python/guard.wasm",
        "filters/js/guard.wasm",
        "filters/js-quickjs/guard.wasm",
        "filters/ts/guard.wasm",
        "handlers/python/profile.wasm",
        "handlers/js/profile.wasm",
    ];
    for example in built_examples {
        let wasm = examples().join(example);
        built(example);
        let dir = wasm.parent().expect("folder");
        let out = plugin_test(&wasm, dir);
        let report = text(&out);
        assert!(out.status.success(), "{example}:\n{report}");
        assert!(report.contains(" 0 failed"), "{example}:\n{report}");
    }
}

#[test]
fn plugin_test_fails_with_a_readable_difference_when_a_case_is_wrong() {
    built("filters/python/guard.wasm");
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = r#"
[plugin]
config = { deny = ["10.0.0.0/8"], token = "t" }

[[case]]
name = "expects the wrong status"
request = { path = "/x", client = "10.0.0.1:1000" }
expect = { status = 200, headers = { "x-guard" = "python" } }
"#;
    std::fs::write(dir.path().join("cases.toml"), cases).expect("write");
    let wasm = examples().join("filters/python/guard.wasm");
    let out = plugin_test(&wasm, dir.path());
    let report = text(&out);
    assert!(!out.status.success(), "must fail:\n{report}");
    assert!(
        report.contains("FAIL  expects the wrong status"),
        "{report}"
    );
    assert!(report.contains("status: expected 200, got 403"), "{report}");
    assert!(
        report.contains("response header x-guard: expected [\"python\"], got (absent)"),
        "{report}"
    );
    assert!(report.contains("0 passed, 1 failed"), "{report}");
}

/// The pinned toolchains' `bin` folder first, then this process's `PATH`; installs them
/// if needed (`examples/toolchains.sh`).
fn tools_path() -> std::ffi::OsString {
    let script = examples().join("toolchains.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg("--bin")
        .output()
        .expect("run toolchains.sh");
    assert!(out.status.success(), "{}", text(&out));
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut paths = vec![PathBuf::from(bin)];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH")
}

#[test]
fn plugin_new_writes_a_project_that_builds_and_passes_its_cases_in_every_language() {
    let dir = tempfile::tempdir().expect("tempdir");
    for lang in ["rust", "js", "js-quickjs", "ts", "python", "c", "zig", "go"] {
        let name = format!("hello-{lang}");
        let out = weir(&["plugin", "new", "--lang", lang, &name], dir.path());
        assert!(out.status.success(), "{lang}: {}", text(&out));
        let project = dir.path().join(&name);
        let build = Command::new("sh")
            .arg("build.sh")
            .current_dir(&project)
            .env("PATH", tools_path())
            .env("WEIR", weir_bin())
            // The Rust template shares the workspace's compiled dependencies.
            .env(
                "CARGO_TARGET_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("templates"),
            )
            .output()
            .expect("run build.sh");
        assert!(
            build.status.success(),
            "{lang}: build.sh:\n{}",
            text(&build)
        );
        let wasm = format!("{name}.wasm");
        assert!(project.join(&wasm).exists(), "{lang}: {wasm} not built");
        let out = weir(&["plugin", "test", &wasm, "--case", "cases.toml"], &project);
        assert!(out.status.success(), "{lang}: {}", text(&out));
        assert!(
            text(&out).contains("2 passed, 0 failed"),
            "{lang}: {}",
            text(&out)
        );
    }
    let out = weir(
        &["plugin", "new", "--lang", "python", "hello-python"],
        dir.path(),
    );
    assert!(!out.status.success(), "an existing folder is refused");
    assert!(text(&out).contains("already exists"), "{}", text(&out));

    // And weir serves what the Python template built, from its plugin folder.
    let wasm = std::fs::read(dir.path().join("hello-python/hello-python.wasm")).expect("wasm");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let upstream = Upstream::start("app").await;
        let files: [(&str, &[u8]); 2] = [
            ("plugins/hello-python.wasm", &wasm),
            ("plugins/hello-python.toml", b"deadline = \"5s\"\n"),
        ];
        let weir = Weir::start_within(&config(&[upstream.addr], ""), &files, SLOW).await;
        let (status, headers, _) = get_with(&weir.url("/x"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-plugin"], "hello-python");
        let (status, _, body) = get_with(&weir.url("/hello-python/ping"), &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "pong"));
    });
}

/// A trap in a case is reported with the cause the proxy logs, not only as a status.
#[test]
fn plugin_test_reports_why_the_proxy_failed_a_case() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("test.wasm");
    std::fs::write(&wasm, include_bytes!(env!("TEST_PLUGIN_WASM"))).expect("write");
    let cases =
        "[[case]]\nname = \"traps\"\nrequest = { path = \"/trap\" }\nexpect = { status = 200 }\n";
    std::fs::write(dir.path().join("cases.toml"), cases).expect("write");
    let out = plugin_test(&wasm, dir.path());
    let report = text(&out);
    assert!(!out.status.success(), "must fail:\n{report}");
    assert!(report.contains("status: expected 200, got 500"), "{report}");
    assert!(
        report.contains("(the proxy answered 500: plugin test"),
        "{report}"
    );
    assert!(report.contains("wasm trap"), "{report}");
}
