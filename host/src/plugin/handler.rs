//! Handler plugins: standard `wasi:http` `proxy`-world components that produce a route's
//! response themselves. weir runs them with wasmtime-wasi-http, so any component exporting
//! `wasi:http/incoming-handler` runs unchanged.
//!
//! What a handler is granted, beyond what a filter gets:
//! - `wasi:http/outgoing-handler`, where every request is intercepted: its authority names a
//!   *cluster* (`http://users/profile/7` goes to cluster `users`), and only clusters listed in
//!   the plugin's `clusters = [...]` are reachable. The host sends the request with that
//!   cluster's load balancing, retries and circuit breaking, through [`Outbound`]; anything
//!   else is refused with `HTTP-request-denied`. Nothing leaves weir any other way.
//! - its `[config]` as JSON in the environment variable `WEIR_CONFIG` (the proxy world has
//!   no config interface; environment variables are what every guest language can read).
//!
//! Each request gets a fresh instance (wasi:http instances are not reused, as in
//! `wasmtime serve` and Spin). The handler's `deadline` bounds the whole call, waiting on
//! sub-requests included; its response body is read whole (at most [`MAX_RESPONSE_BYTES`]).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{
    RequestOptions, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::breaker::{Admit, Breaker};
use super::memory::{Limits, MemoryBudget};
use super::outbound::{Outbound, OutboundError};
use super::{CallError, ManualClock, PluginInfo, budget};
use crate::body::ClientBody;
use crate::error::BoxError;
use crate::metrics::FailureKind;

/// The largest response body a handler may produce.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// The largest request body a handler may send to a cluster.
const MAX_OUTBOUND_BODY_BYTES: usize = 1 << 20;

/// The request body handed to a handler.
#[derive(Debug)]
pub enum HandlerBody {
    /// Streamed from the client.
    Stream(ClientBody),
    /// Already read (by body hooks).
    Full(Bytes),
}

/// A loaded handler plugin.
pub struct Handler {
    /// Name, file, hash, settings and load facts.
    pub info: PluginInfo,
    pub(super) config_json: String,
    pub(super) clock: Option<Arc<ManualClock>>,
    pub(super) pre: ProxyPre<HandlerState>,
    /// The clusters its outgoing requests may reach (`clusters` in `NAME.toml`).
    pub(super) granted: Arc<[String]>,
    /// The memory all plugins' instances draw from.
    pub(super) memory: Arc<MemoryBudget>,
    /// Its share of the instance pool: one permit per running instance (`max_instances`).
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    /// Stops calling it after failures in a row.
    pub(super) breaker: Breaker,
    /// Keeps the epoch thread ticking; each call's task holds a clone, so a guest still
    /// running after its plugin was unloaded is still stopped at its deadline.
    pub(super) ticking: Arc<()>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.info.name)
            .field("hash", &self.info.hash)
            .finish_non_exhaustive()
    }
}

/// What a handler instance's `Store` carries.
pub(super) struct HandlerState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    pub(super) limits: Limits,
    /// The call's share of time (`plugin::budget`).
    budget: budget::CallBudget,
}

impl WasiView for HandlerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HandlerState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Intercepts every outgoing request: granted clusters only, sent through [`Outbound`].
struct OutboundHooks {
    granted: Arc<[String]>,
    outbound: Arc<dyn Outbound>,
}

type WasiResponse = http::Response<wasmtime_wasi_http::WasiBody>;
type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
        _: IoFuture,
    ) -> Box<dyn Future<Output = Result<(WasiResponse, IoFuture), wasmtime_wasi_http::Error>> + Send>
    {
        use wasmtime_wasi_http::Error;
        let cluster = request
            .uri()
            .host()
            .filter(|host| self.granted.iter().any(|g| g == host))
            .map(str::to_owned);
        let outbound = self.outbound.clone();
        Box::new(async move {
            // The body is read first, even for a request about to be refused: dropped unread,
            // it would reach the guest as a reset stream while it still writes it, and the
            // guest could report that instead of the refusal (a race the runtime's yields
            // make likely).
            let (mut parts, body) = request.into_parts();
            let body = Limited::new(body, MAX_OUTBOUND_BODY_BYTES)
                .collect()
                .await
                .map_err(|_| Error::HttpRequestBodySize(None))?
                .to_bytes();
            let Some(cluster) = cluster else {
                return Err(Error::HttpRequestDenied);
            };
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            parts.uri = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
            let sent = outbound.send(cluster, http::Request::from_parts(parts, body));
            let timeout = options.and_then(|o| o.first_byte_timeout);
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, sent)
                    .await
                    .map_err(|_| Error::HttpResponseTimeout)?,
                None => sent.await,
            };
            let response = result.map_err(|e| match e {
                OutboundError::UnknownCluster(_) => Error::DestinationNotFound,
                OutboundError::Connect(_) => Error::ConnectionRefused,
                OutboundError::Timeout => Error::HttpResponseTimeout,
                OutboundError::Failed(why) => Error::InternalError(Some(why)),
            })?;
            let response = response.map(|b| b.map_err(Error::from).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

impl Handler {
    /// Runs the handler for one request on a fresh instance; returns its whole response.
    /// `outbound` sends its sub-requests.
    pub async fn handle(
        &self,
        request: http::Request<HandlerBody>,
        outbound: Arc<dyn Outbound>,
    ) -> Result<http::Response<Bytes>, CallError> {
        let deadline = self.info.settings.deadline;
        let probe = match self.breaker.admit() {
            Admit::Call => false,
            Admit::Probe => true,
            Admit::Refuse => {
                return Err(self.info.error(
                    FailureKind::BreakerOpen,
                    format_args!(
                        "not called: its breaker is open after {} failed calls in a row",
                        self.info.settings.breaker.failures
                    ),
                ));
            }
        };
        let Ok(Ok(slot)) = tokio::time::timeout(deadline, self.slots.clone().acquire_owned()).await
        else {
            return Err(self.info.error(
                FailureKind::Overloaded,
                format_args!(
                    "all {} of its instances (max_instances) stayed busy for {}",
                    self.info.settings.max_instances,
                    humantime::format_duration(deadline)
                ),
            ));
        };
        let outcome = self.run(request, outbound, slot).await;
        match &outcome {
            Ok(_) => {
                if self.breaker.succeeded() {
                    tracing::info!(
                        plugin = &*self.info.name,
                        "plugin breaker closed: a probe call succeeded"
                    );
                }
            }
            Err(_) => {
                if self.breaker.failed(probe) {
                    tracing::warn!(
                        plugin = &*self.info.name,
                        "plugin breaker opened: its calls failed in a row; its routes answer without calling it until a probe call succeeds"
                    );
                }
            }
        }
        outcome
    }

    /// One request on a fresh instance, which holds `slot` until the guest returns.
    async fn run(
        &self,
        request: http::Request<HandlerBody>,
        outbound: Arc<dyn Outbound>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<http::Response<Bytes>, CallError> {
        let error = |why: String| self.info.error(FailureKind::Trap, format_args!("{why}"));
        let deadline = self.info.settings.deadline;
        let wasi = super::wasi_builder(self.clock.as_ref())
            .env("WEIR_CONFIG", &self.config_json)
            .build();
        let limits = Limits::new(self.info.settings.memory_limit, self.memory.clone());
        let state = HandlerState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks {
                granted: self.granted.clone(),
                outbound,
            },
            limits,
            budget: budget::CallBudget::default(),
        };
        let mut store = wasmtime::Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|store| {
            budget::on_tick(store, |state: &mut HandlerState| &mut state.budget)
        });
        store.data_mut().budget.reset(deadline);
        store.set_epoch_deadline(1);

        let (parts, body) = request.into_parts();
        let body = match body {
            HandlerBody::Stream(body) => body.map_err(stream_error).boxed_unsync(),
            HandlerBody::Full(bytes) => Full::new(bytes)
                .map_err(wasmtime_wasi_http::Error::from)
                .boxed_unsync(),
        };
        let request = http::Request::from_parts(parts, body);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(
                wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
                request,
            )
            .map_err(|e| error(format!("{e:#}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| error(format!("{e:#}")))?;
        let pre = self.pre.clone();
        let ticking = self.ticking.clone();
        // The guest may go on writing the body after it has sent the head, so it runs on its
        // own task; the task ends when the guest returns (or is dropped with the store).
        let task = tokio::spawn(async move {
            let _ticking = ticking;
            let _slot = slot;
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await
        });
        let abort = task.abort_handle();
        let run = async {
            let response = match receiver.await {
                Ok(Ok(response)) => response,
                Ok(Err(code)) => {
                    return Err(format!("the handler answered with an error: {code:?}"));
                }
                Err(_) => {
                    let why = match task.await {
                        Ok(Ok(())) => "the handler returned without sending a response".to_owned(),
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(e) => format!("the handler task failed: {e}"),
                    };
                    return Err(why);
                }
            };
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the handler's response body: {e}"))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(why)) => Err(error(why)),
            Err(_) => {
                // The guest may be waiting (a WASI sleep): it ends now, not when it wakes.
                abort.abort();
                Err(error(format!(
                    "the handler did not finish within its deadline of {}",
                    humantime::format_duration(deadline)
                )))
            }
        }
    }
}

/// A client's body failing mid-stream, as wasi:http tells the guest.
fn stream_error(error: BoxError) -> wasmtime_wasi_http::Error {
    match error.downcast::<hyper::Error>() {
        Ok(hyper) => wasmtime_wasi_http::Error::from(*hyper),
        Err(other) => wasmtime_wasi_http::Error::InternalError(Some(other.to_string())),
    }
}

/// A linker for handlers: WASI as filters get it (nothing granted) plus `wasi:http`.
pub(super) fn linker(
    engine: &wasmtime::Engine,
) -> wasmtime::Result<wasmtime::component::Linker<HandlerState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Whether a component is a `wasi:http` handler (exports `wasi:http/incoming-handler`).
pub(super) fn is_handler(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@"))
}
