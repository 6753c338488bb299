//! weir's end-to-end tests, one binary so there is one thing to link. Each module covers an
//! area; every test runs real weir processes against real upstreams on 127.0.0.1, but
//! `service`, which drives the proxy's service in memory with real plugins and no socket.

#![forbid(unsafe_code)]

mod admin;
mod balancing;
mod bundled;
mod cache;
mod cache_attacks;
mod cache_harness;
mod cache_key;
mod cli;
mod codings;
mod dashboard;
mod edge;
mod edge_attacks;
mod errors;
mod gateway;
mod gateway_rules;
mod grpc;
mod grpc_json;
mod h2_reset_attacks;
mod handler_reuse;
mod hardening;
mod kv_quotas;
mod languages;
mod lifecycle;
mod limits;
mod method_body;
mod observability;
mod observability_accounting;
mod outbound;
mod outbound_attacks;
mod phases;
mod plugin_output;
mod plugins;
mod pooling;
mod proxying;
mod reload;
mod routing;
mod sdk_answer;
mod service;
mod shared_state;
mod tidy;
mod upstream_attacks;
mod xml;

use std::net::SocketAddr;
use std::path::PathBuf;

/// One compiled-plugin cache for the whole test run, so each test plugin compiles once.
/// It is `$XDG_CACHE_HOME/weir` for [`cache_home`], so `weir plugin test` shares it.
pub fn plugin_cache() -> PathBuf {
    cache_home().join("weir")
}

/// The `XDG_CACHE_HOME` the tests give weir's commands.
pub fn cache_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cache")
}

/// The bundled key-auth plugin.
pub const KEY_AUTH: &[u8] = include_bytes!(concat!(env!("BUNDLED_PLUGINS_DIR"), "/key_auth.wasm"));

/// The bundled key-auth plugin in the plugin folder, with consumer `alice` and key `alice-key`.
pub fn key_auth_files() -> [(&'static str, &'static [u8]); 2] {
    [
        ("plugins/key-auth.wasm", KEY_AUTH),
        (
            "plugins/key-auth.toml",
            b"[config]\n[[config.consumers]]\nname = \"alice\"\nkeys = [\"alice-key\"]\n",
        ),
    ]
}

/// A config with one proxy listener, an admin listener, and cluster `app` over `endpoints`
/// served by a catch-all route; `extra` is appended (more clusters, routes, settings).
pub fn config(endpoints: &[SocketAddr], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[server]
drain_timeout = "10s"

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = [{}]
connect_timeout = "1s"

[[routes]]
name = "default"
cluster = "app"
{extra}
"#,
        endpoints.join(", "),
        cache = plugin_cache().display()
    )
}

/// Starts weir on `files` (and the catch-all [`config`]) expecting startup to fail; returns
/// the error it logged.
pub async fn startup_error(files: &[(&str, &[u8])]) -> String {
    let upstream = weir_tests::Upstream::start("one").await;
    startup_error_with(&config(&[upstream.addr], ""), files).await
}

/// [`startup_error`] with a config of the test's own.
pub async fn startup_error_with(config: &str, files: &[(&str, &[u8])]) -> String {
    let mut weir = weir_tests::Weir::spawn_with_files(config, files);
    let status = weir.wait_exit().await;
    assert!(!status.success(), "weir started with what it should refuse");
    weir.logs()
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .find(|m| m.starts_with("plugins failed to load"))
        .unwrap_or_else(|| panic!("no startup error in {:#?}", weir.logs()))
        .to_owned()
}

/// The values of header `name` in `headers`, in order, as text.
pub fn header_values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Whether the component `wasm` exports `request-hook.on-request` (weir:plugin 0.3.7): its
/// core export's name is in the binary only then.
pub fn exports_request_hook(wasm: &[u8]) -> bool {
    let name = b"weir:plugin/request-hook@0.3.7#on-request";
    wasm.windows(name.len()).any(|w| w == name)
}

/// Routes `/NAME/…` to cluster `app` through the one plugin of the same name, for each name:
/// routes to append to [`config`].
pub fn routes_through_plugins(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\ncluster = \"app\"\nplugins = [\"{name}\"]\n"
            )
        })
        .collect()
}

/// [`config`] with `server` lines added to its `[server]` and `cluster` lines to cluster
/// `app`.
pub fn config_with(endpoints: &[SocketAddr], extra: &str, server: &str, cluster: &str) -> String {
    config(endpoints, extra)
        .replace(
            "drain_timeout = \"10s\"",
            &format!("drain_timeout = \"10s\"\n{server}"),
        )
        .replace(
            "connect_timeout = \"1s\"",
            &format!("connect_timeout = \"1s\"\n{cluster}"),
        )
}

/// A TLS listener with `certificates` (file stems: `NAME.pem`, `NAME.key`) and
/// `listener_tls` (more of its `tls` table) in front of cluster `app` at `upstream`, with
/// `server` in `[server]`.
pub fn tls_config(
    upstream: SocketAddr,
    certificates: &[&str],
    listener_tls: &str,
    server: &str,
) -> String {
    let certificates: Vec<String> = certificates
        .iter()
        .map(|c| format!("{{ cert = \"{c}.pem\", key = \"{c}.key\" }}"))
        .collect();
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = {{ certificates = [{}]{listener_tls} }}

[server]
{server}

[plugins]
cache_dir = "{cache}"

[[clusters]]
name = "app"
endpoints = ["{upstream}"]
connect_timeout = "2s"

[[routes]]
name = "default"
cluster = "app"
"#,
        certificates.join(", "),
        cache = plugin_cache().display()
    )
}
