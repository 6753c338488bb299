//! weir's end-to-end tests, one binary so there is one thing to link. Each module covers an
//! area; every test runs real weir processes against real upstreams on 127.0.0.1, but
//! `service`, which drives the proxy's service in memory with real plugins and no socket.

#![forbid(unsafe_code)]

mod admin;
mod balancing;
mod bundled;
mod cli;
mod edge;
mod edge_attacks;
mod errors;
mod gateway;
mod grpc;
mod hardening;
mod languages;
mod lifecycle;
mod phases;
mod plugins;
mod pooling;
mod proxying;
mod reload;
mod service;
mod tidy;

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
