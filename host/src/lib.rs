//! weir: a programmable HTTP reverse proxy, load balancer and API gateway.
//!
//! The crate map, in the order a request meets it:
//! - [`server`](crate::server): accept loop, TLS handshake ([`tls`]), hyper HTTP/1.1 +
//!   HTTP/2 per connection, drain;
//! - [`proxy`]: [`ProxyService::handle`](proxy::ProxyService::handle) runs the phases of one
//!   request top-down; `proxy::fail` turns every error into a response;
//! - [`router`]: host/path/method → route; [`balancer`]: route's cluster → endpoint;
//! - [`upstream`]: pooled HTTP/1.1 and HTTP/2 connections to endpoints, plain or TLS;
//! - [`generation`]: the immutable snapshot (config, router, clusters, plugin chains) the
//!   data path reads; `reload`: rescans the plugin folder and config file and swaps in the
//!   next generation; [`plugin`]: the wasm runtime (the only module that knows wasmtime);
//! - [`config`]: loading and validating the TOML file; `admin`: the admin listener;
//! - `shutdown`: signals and the drain.
//!
//! [`run`] wires them together; `main.rs` only parses the command line and calls it.

#![forbid(unsafe_code)]

pub mod access_log;
mod admin;
pub mod balancer;
pub mod body;
pub mod cache;
mod coding;
pub mod config;
pub mod endpoints;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod health;
pub mod kv;
pub mod metrics;
pub mod pace;
pub mod plugin;
pub mod proxy;
mod proxy_protocol;
mod redirect;
mod reload;
pub mod router;
mod server;
pub mod shutdown;
mod timer;
pub mod tls;
pub mod trace;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::error::HostError;
use crate::generation::Observers;
use crate::plugin::PluginRuntime;
use crate::proxy::{Client, ProxyService};
use crate::reload::{Reloader, TlsMaterial};
use crate::server::Accepted;
use crate::tls::ServerTls;
use crate::trace::Tracing;
use crate::upstream::{Connector, TcpConnector};

/// Runs weir with `config`, read from `config_path`, until `shutdown` resolves, then drains
/// and returns.
///
/// Plugins load before any listener binds, so `listening` means ready to serve; a plugin that
/// fails to load stops startup. Every listener is bound before any serves, so a bad address
/// fails startup as a whole. Each bound address is logged as `listening` with its `kind`
/// (`proxy` or `admin`) and the real `address` (useful with port 0).
pub async fn run(
    config_path: &Path,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, HostError> {
    // The runtime lives for the whole run: it owns the engine's epoch ticker.
    let mut runtime = PluginRuntime::new(config.plugins.cache_dir.as_deref())
        .map_err(|e| HostError::PluginRuntime(format!("{e:#}").into()))?;
    runtime
        .use_kv(&config.kv)
        .map_err(|e| HostError::PluginRuntime(e.into()))?;
    let runtime = Arc::new(runtime);
    let settings = config.server.clone();
    let listener_configs = config.listeners.clone();
    let admin_config = config.admin.clone();
    let connector: Arc<dyn Connector> = Arc::new(TcpConnector);
    let mut listener_tls = Vec::new();
    for l in &listener_configs {
        let tls = match &l.tls {
            Some(tls) => {
                Some(Arc::new(ServerTls::load(tls).map_err(|e| {
                    HostError::Tls(format!("listener {}: {e}", l.address))
                })?))
            }
            None => None,
        };
        listener_tls.push(tls);
    }
    let material = TlsMaterial::with_listeners(
        listener_configs
            .iter()
            .zip(&listener_tls)
            .filter_map(|(l, tls)| Some((l.address.to_string(), tls.clone()?)))
            .collect(),
    );
    let access_log = match &config.access_log {
        Some(log) => {
            Some(Arc::new(AccessLog::start(log).map_err(|e| {
                HostError::AccessLog(format!("{:?}: {e}", log.to))
            })?))
        }
        None => None,
    };
    if let Some(log) = &access_log {
        reopen_on_sigusr1(log.clone());
    }
    let tracer = match &config.tracing {
        Some(tracing) => {
            Some(Arc::new(Tracing::start(tracing).map_err(|e| {
                HostError::Tracing(format!("{}: {e}", tracing.endpoint))
            })?))
        }
        None => None,
    };
    let observers = Observers {
        access_log: access_log.clone(),
        tracing: tracer.clone(),
    };
    let (reloader, first) = Reloader::start(
        config_path.to_owned(),
        config,
        runtime.clone(),
        connector,
        material,
        observers,
    )
    .await
    .map_err(HostError::Plugins)?;

    // Watching starts before `listening`, so no change made after that is missed.
    let generation = Arc::new(ArcSwap::from_pointee(first));
    let (trigger, drain) = shutdown::channel();
    let (listening, listeners_closed) = shutdown::listening();
    let reload = reload::spawn(reloader, generation.clone(), drain.clone());

    let mut proxy_listeners = Vec::new();
    for l in &listener_configs {
        proxy_listeners.push(bind(l.address, "proxy").await?);
    }
    let admin_listener = match &admin_config {
        Some(admin) => Some(bind(admin.address, "admin").await?),
        None => None,
    };
    let mut tasks = JoinSet::new();

    let proxy = ProxyService::new(generation.clone());
    for ((listener, tls), listener_config) in proxy_listeners
        .into_iter()
        .zip(listener_tls)
        .zip(&listener_configs)
    {
        let proxy = proxy.clone();
        let redirect = listener_config.redirect_to_https;
        let make_service = move |accepted: Accepted| {
            let client = Client::accepted(accepted);
            let client = match redirect {
                Some(port) => client.redirecting(port),
                None => client,
            };
            proxy.clone().for_connection(client)
        };
        let watched = generation.clone();
        let refused = server::RefusedHeads(Arc::new(move |peer, status| {
            proxy::refused_head(&watched.load(), peer, status);
        }));
        tasks.spawn(server::serve(
            listener,
            server::Accept {
                tls,
                proxy_protocol: listener_config.proxy_protocol,
                refused: Some(refused),
            },
            settings.clone(),
            make_service,
            drain.clone(),
            listening.clone(),
        ));
    }
    if let Some(listener) = admin_listener {
        tasks.spawn(server::serve(
            listener,
            server::Accept::default(),
            settings.clone(),
            admin::service(generation.clone(), reload),
            drain.clone(),
            listening.clone(),
        ));
    }

    drop(listening);

    shutdown.await;
    trigger.trigger();
    // Said once it is true: every listener closed.
    listeners_closed.wait().await;
    tracing::info!(drain_timeout = ?settings.drain_timeout, "draining: no new connections, finishing in-flight requests");
    while tasks.join_next().await.is_some() {}
    if let Some(log) = access_log.clone() {
        // The last requests' records reach the file before weir exits.
        let _ = tokio::task::spawn_blocking(move || log.flush()).await;
    }
    if let Some(tracer) = tracer {
        // The last spans go out before weir exits (the exporter blocks, off the runtime).
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
    drop(runtime);
    tracing::info!("stopped");
    Ok(Stopped { access_log })
}

/// What outlives [`run`]: the access log, to flush once more with [`Stopped::finish`] after
/// the caller has dropped the async runtime. Requests still open when the drain timed out
/// are settled (499, incomplete) only then, as the runtime drops their connections' tasks.
#[derive(Debug)]
#[must_use = "finish it after dropping the runtime, or the last requests' records are lost"]
pub struct Stopped {
    access_log: Option<Arc<AccessLog>>,
}

impl Stopped {
    /// Writes what the runtime's last tasks left in the access log.
    pub fn finish(self) {
        if let Some(log) = self.access_log {
            log.flush();
        }
    }
}

/// Reopens the access log's file at every SIGUSR1 (logrotate moves the file, then signals).
fn reopen_on_sigusr1(log: Arc<AccessLog>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::user_defined1()) {
        Ok(mut signals) => {
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    log.reopen();
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1; the access log will not be reopened")
        }
    }
}

/// Connections the kernel queues for a listener before weir accepts them: a burst of new
/// clients (TLS handshakes arriving together) waits here rather than being dropped and
/// retried a second later. nginx's default is 511; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(address: SocketAddr, kind: &'static str) -> Result<TcpListener, HostError> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let listener = socket
        .and_then(|socket| {
            // As std and tokio's own bind do: a restarted weir can bind while the previous
            // one's connections linger in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .map_err(|source| HostError::Bind { address, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| HostError::Bind { address, source })?;
    tracing::info!(kind, %address, "listening");
    Ok(listener)
}
