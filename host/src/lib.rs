//! weir: a programmable HTTP reverse proxy, load balancer and API gateway.
//!
//! The crate map, in the order a request meets it:
//! - [`server`](crate::server): accept loop, hyper HTTP/1.1 + HTTP/2 per connection, drain;
//! - [`proxy`]: [`ProxyService::handle`](proxy::ProxyService::handle) runs the phases of one
//!   request top-down; `proxy::fail` turns every error into a response;
//! - [`router`]: host/path/method → route; [`balancer`]: route's cluster → endpoint;
//! - [`upstream`]: pooled keep-alive client to endpoints;
//! - [`generation`]: the immutable snapshot (config, router, clusters) the data path reads;
//! - [`config`]: loading and validating the TOML file; `admin`: the admin listener;
//! - `shutdown`: signals and the drain.
//!
//! [`run`] wires them together; `main.rs` only parses the command line and calls it.

#![forbid(unsafe_code)]

mod admin;
pub mod balancer;
pub mod body;
pub mod config;
pub mod error;
pub mod generation;
pub mod plugin;
pub mod proxy;
pub mod router;
mod server;
pub mod shutdown;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::HostError;
use crate::generation::Generation;
use crate::plugin::PluginRuntime;
use crate::proxy::ProxyService;

/// Runs weir with `config` until `shutdown` resolves, then drains and returns.
///
/// Every listener is bound before any serves, so a bad address fails startup as a whole.
/// Each bound address is logged as `listening` with its `kind` (`proxy` or `admin`) and the
/// real `address` (useful with port 0).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), HostError> {
    // Plugins compile before any listener binds, so `listening` means ready to serve.
    // The runtime is kept alive for the whole run: it owns the engine's epoch ticker.
    let runtime =
        PluginRuntime::new().map_err(|e| HostError::PluginRuntime(format!("{e:#}").into()))?;
    // Startup only: compiling blocks this thread, and nothing is served yet.
    let plugins = runtime.load_dir(&config.plugins.dir).await;
    for (name, loaded) in &plugins {
        match loaded {
            Ok(p) => {
                tracing::info!(plugin = name, file = %p.file.display(), hash = %p.hash, "plugin loaded")
            }
            Err(e) => {
                tracing::error!(plugin = name, error = %e, "plugin rejected; routes that use it answer 503")
            }
        }
    }
    let mut proxy_listeners = Vec::new();
    for l in &config.listeners {
        proxy_listeners.push(bind(l.address, "proxy").await?);
    }
    let admin_listener = match &config.admin {
        Some(admin) => Some(bind(admin.address, "admin").await?),
        None => None,
    };

    let settings = config.server.clone();
    let generation = Arc::new(ArcSwap::from_pointee(Generation::build(config, &plugins)));
    let (trigger, drain) = shutdown::channel();
    let mut tasks = JoinSet::new();

    let proxy = ProxyService::new(generation.clone());
    for listener in proxy_listeners {
        let proxy = proxy.clone();
        let make_service = move |peer: SocketAddr| {
            let proxy = proxy.clone();
            service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
            })
        };
        tasks.spawn(server::serve(
            listener,
            settings.clone(),
            make_service,
            drain.clone(),
        ));
    }
    if let Some(listener) = admin_listener {
        tasks.spawn(server::serve(
            listener,
            settings.clone(),
            admin::service(generation.clone()),
            drain.clone(),
        ));
    }

    shutdown.await;
    tracing::info!(drain_timeout = ?settings.drain_timeout, "draining: no new connections, finishing in-flight requests");
    trigger.trigger();
    while tasks.join_next().await.is_some() {}
    drop(runtime);
    tracing::info!("stopped");
    Ok(())
}

async fn bind(address: SocketAddr, kind: &'static str) -> Result<TcpListener, HostError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| HostError::Bind { address, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| HostError::Bind { address, source })?;
    tracing::info!(kind, %address, "listening");
    Ok(listener)
}
