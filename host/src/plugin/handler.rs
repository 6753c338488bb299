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
//! Each request gets a fresh instance by default, as in `wasmtime serve` and Spin for
//! wasi:http 0.2. With `reuse = true` in `NAME.toml`, instances are pooled as filters' are:
//! one request at a time on an instance, up to `max_uses` requests, at most `max_instances`
//! idle or busy. wasi:http 0.2 says nothing against calling `incoming-handler.handle` again
//! on an instance (wasmtime's own `ProxyHandler` does it); whether the guest's toolchain
//! copes is the guest's business, which is why it is opt-in. What belongs to one request is
//! host resources in the store's table — the incoming request and its body, the response
//! outparam, the response body, sub-requests' futures — which the guest must have dropped or
//! finished by the time `handle` returns: an instance that still holds any is discarded (so
//! a body the guest kept open ends there, as it does when a fresh instance's store is
//! dropped, and no later request's call can write into it). The same for a trap, a
//! deadline, an error response or a response not read to its end. `WasiHttpCtx` holds no
//! per-request state; the `Outbound` a request's sub-requests go through is set per call
//! and cleared when the instance goes idle.
//!
//! The handler's `deadline` bounds the whole call, waiting on sub-requests included; its
//! response body is read whole (at most [`MAX_RESPONSE_BYTES`]).

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::{
    RequestOptions, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::breaker::{Admit, Breaker};
use super::chain::OutputLimits;
use super::memory::{Limits, MemoryBudget};
use super::outbound::{Outbound, OutboundError};
use super::{CallError, ManualClock, PluginInfo, budget};
use crate::body::ClientBody;
use crate::error::BoxError;
use crate::metrics::{FailureKind, HandlerMetrics, Held, Retirements, Tick, metrics};

mod hold;

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
    /// Requests, failures, instances and breaker, as metrics.
    pub(super) metrics: HandlerMetrics,
    /// Idle instances, when it reuses them (`reuse = true`).
    pub(super) pool: Arc<Pool>,
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

/// A handler's idle instances (`reuse = true`; always empty otherwise).
pub(super) struct Pool {
    /// Whether instances go back to the pool after a request.
    reuse: bool,
    /// Requests an instance serves before it is dropped.
    max_uses: u32,
    idle: Mutex<Vec<Instance>>,
    /// Wakes a request waiting for an instance when one goes idle.
    returned: Notify,
    /// Instances dropped after requests that did not fail, by reason.
    retired: Retirements,
    /// The handler's name, for logs.
    plugin: Arc<str>,
}

impl Pool {
    /// The pool of handler `plugin`.
    pub(super) fn new(plugin: &str, reuse: bool, max_uses: u32) -> Pool {
        Pool {
            reuse,
            max_uses,
            idle: Mutex::default(),
            returned: Notify::new(),
            retired: metrics().retirements(plugin),
            plugin: plugin.into(),
        }
    }

    fn take(&self) -> Option<Instance> {
        self.idle.lock().ok()?.pop()
    }

    /// Keeps an instance that served a request well, unless it has served its `max_uses` or
    /// its memory has grown most of the way to its cap since its first request.
    fn put_back(&self, mut instance: Instance) {
        let limits = &mut instance.store.data_mut().limits;
        if !super::serves_again(
            limits,
            instance.uses,
            self.max_uses,
            &self.retired,
            &self.plugin,
        ) {
            return;
        }
        // An idle instance keeps no request's generation alive.
        instance.store.data_mut().hooks.outbound = None;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(instance);
        }
        self.returned.notify_one();
    }
}

/// An instance kept between requests.
struct Instance {
    store: Store<HandlerState>,
    proxy: Proxy,
    /// Requests it has served.
    uses: u32,
    /// Its place among the handler's `max_instances`, freed when it is dropped.
    slot: OwnedSemaphorePermit,
}

/// What a request runs on: an idle instance, or a slot for a fresh one.
enum Ready {
    Idle(Instance),
    Fresh(OwnedSemaphorePermit),
}

/// The most host resources an idle instance may keep handles to. A garbage-collected guest
/// drops a request's handles at its next collection, not when `handle` returns (the Python
/// and JavaScript examples keep 3 and 18 after each request); one that never does is
/// replaced before its table grows without end.
const MAX_KEPT_RESOURCES: usize = 1024;

/// The most handles an instance may hold at once, idle or in a request (wasmtime's default
/// is 100,000; past it the guest traps): each is a table entry of weir's, and what the bytes
/// behind them may hold is bounded apart (`hold`). It is four times what an idle instance
/// may keep ([`MAX_KEPT_RESOURCES`]), so a garbage-collected guest near that still has room
/// for its request.
const MAX_HANDLES: usize = 4 * MAX_KEPT_RESOURCES;

/// The most the `fields` an idle instance keeps may hold (a request's headers, say, kept by a
/// garbage-collected guest until its next collection).
const MAX_KEPT_FIELDS_BYTES: usize = 1 << 20;

/// Whether an instance whose `handle` returned may serve another request: it holds no
/// response, sub-request or body it has not finished or sent (its own, or a sub-request's it
/// is still writing), no sub-request still waiting for its answer, not too many other
/// handles, and not too much in `fields`. What else a request left in the table — its head,
/// its sub-requests' answers — the guest may only read, and their bodies and their streams
/// were cut ([`Lent`], [`cut_streams`]).
fn reusable(store: &mut Store<HandlerState>) -> Result<(), &'static str> {
    use wasmtime_wasi_http::p2::body::HostOutgoingBody;
    use wasmtime_wasi_http::p2::types::{
        HostFutureIncomingResponse, HostOutgoingRequest, HostOutgoingResponse, HostResponseOutparam,
    };
    let table = &mut store.data_mut().table;
    let mut kept = 0;
    for (_, entry) in table.iter_mut() {
        let entry: &dyn std::any::Any = entry;
        if entry.is::<HostOutgoingBody>() {
            return Err("it kept a body open (its response's or a sub-request's)");
        }
        if entry.is::<HostOutgoingResponse>() || entry.is::<HostResponseOutparam>() {
            return Err("it kept a response it did not send");
        }
        if entry.is::<HostOutgoingRequest>() {
            return Err("it kept a sub-request it did not send");
        }
        // In flight, a sub-request holds its head, its body and a connection (`hold`) for
        // as long as the cluster takes, charged to the call that sent it only. (`Pending`
        // stays until the guest polls it: a task that finished holds only the answer, whose
        // body is cut.)
        if let Some(HostFutureIncomingResponse::Pending(task)) = entry.downcast_ref()
            && !task.is_finished()
        {
            return Err("it kept a sub-request in flight");
        }
        kept += 1;
    }
    if kept > MAX_KEPT_RESOURCES {
        return Err("it keeps too many handles");
    }
    if hold::kept_fields_bytes(table) > MAX_KEPT_FIELDS_BYTES {
        return Err("it keeps too much in fields");
    }
    Ok(())
}

/// A body behind a switch the host keeps: cut, it ends with an error for whoever holds it.
type Switch = Arc<Mutex<Option<WasiBody>>>;

/// The bodies one request lent a reused instance — the client's, and its sub-requests'
/// answers —, cut when the request ends. A guest may still hold handles to them (see
/// [`MAX_KEPT_RESOURCES`]): cut, they hold no client or upstream connection, and a later
/// request's call reads nothing from them.
#[derive(Clone, Default)]
struct Lent(Arc<Mutex<Vec<Switch>>>);

impl Lent {
    fn lend(&self, body: WasiBody) -> WasiBody {
        let switch = Arc::new(Mutex::new(Some(body)));
        if let Ok(mut lent) = self.0.lock() {
            lent.push(switch.clone());
        }
        LentBody(switch).boxed_unsync()
    }

    /// Cuts every body lent so far.
    fn cut(&self) {
        let lent = self.0.lock().map(|mut lent| std::mem::take(&mut *lent));
        for switch in lent.unwrap_or_default() {
            if let Ok(mut body) = switch.lock() {
                body.take();
            }
        }
    }
}

/// Empties the streams of the bodies a reused instance keeps (see [`Lent`]) once their
/// request is over. A stream keeps what the guest has not read of the frame it last took, up
/// to hyper's read buffer (about 400 KiB, held whole by the slice), which cutting its body
/// does not reach: a guest that reads 20 answers into and keeps them made weir hold 10 MB
/// more at every request. Each becomes a [`CutStream`], as reading its body would now fail.
fn cut_streams(table: &mut ResourceTable) {
    use std::any::Any;
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynInputStream;
    use wasmtime_wasi_http::p2::body::HostIncomingBody;
    let bodies: Vec<u32> = table
        .iter_mut()
        .filter(|(_, entry)| (&**entry as &dyn Any).is::<HostIncomingBody>())
        .map(|(index, _)| index)
        .collect();
    // A body's stream is its child; children are found by address, as the table lends them.
    let mut streams = std::collections::HashSet::new();
    for body in bodies {
        let body = Resource::<HostIncomingBody>::new_borrow(body);
        if let Ok(children) = table.iter_children(&body) {
            streams.extend(children.map(|child| std::ptr::from_ref(child).cast::<()>()));
        }
    }
    if streams.is_empty() {
        return;
    }
    for (_, entry) in table.iter_mut() {
        let at = std::ptr::from_ref(&*entry).cast::<()>();
        let entry: &mut dyn Any = entry;
        if streams.contains(&at)
            && let Some(stream) = entry.downcast_mut::<DynInputStream>()
        {
            *stream = Box::new(CutStream);
        }
    }
}

/// A lent body's stream once its request is over: every read fails, as the body's would.
struct CutStream;

impl wasmtime_wasi::p2::InputStream for CutStream {
    fn read(&mut self, _: usize) -> wasmtime_wasi::p2::StreamResult<Bytes> {
        Err(wasmtime_wasi::p2::StreamError::LastOperationFailed(
            wasmtime::format_err!("the request this body belonged to is over"),
        ))
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CutStream {
    /// Ready at once, to fail.
    async fn ready(&mut self) {}
}

/// A lent body as the guest reads it.
struct LentBody(Switch);

impl hyper::body::Body for LentBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let Ok(mut body) = self.0.lock() else {
            return std::task::Poll::Ready(None);
        };
        match body.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(
                Some("the request this body belonged to is over".to_owned()),
            )))),
        }
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
    /// What the call made weir hold in `fields`, sub-requests and body buffers.
    held: hold::Held,
    /// Counted in `weir_plugin_instances` once instantiated, until the store is dropped.
    live: Option<Held>,
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
    /// The current request's way to the clusters; `None` while the instance is idle.
    outbound: Option<Arc<dyn Outbound>>,
    /// Where a reused instance's sub-requests' answers are lent (`None`: a fresh instance,
    /// dropped with its answers).
    lent: Option<Lent>,
}

type WasiBody = wasmtime_wasi_http::WasiBody;
type WasiResponse = http::Response<WasiBody>;
type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        hold::BODY_CHUNK_BYTES
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
        let lent = self.lent.clone();
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
            let (Some(cluster), Some(outbound)) = (cluster, outbound) else {
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
            let response = response.map(|b| {
                let body = b.map_err(Error::from).boxed_unsync();
                match &lent {
                    Some(lent) => lent.lend(body),
                    None => body,
                }
            });
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

impl Handler {
    /// Runs the handler for one request; returns its whole response. `outbound` sends its
    /// sub-requests.
    /// Its answer is refused (a failed call, `invalid_output`) if weir would not send it:
    /// a status outside 200–599, or a head past `limits`, as a filter's local reply.
    pub async fn handle(
        &self,
        request: http::Request<HandlerBody>,
        outbound: Arc<dyn Outbound>,
        limits: OutputLimits,
    ) -> Result<http::Response<Bytes>, CallError> {
        let probe = match self.breaker.admit() {
            Admit::Call => false,
            Admit::Probe => true,
            Admit::Refuse => {
                return Err(self.error(
                    FailureKind::BreakerOpen,
                    format_args!(
                        "not called: its breaker is open after {} failed calls in a row",
                        self.info.settings.breaker.failures
                    ),
                ));
            }
        };
        let started = Tick::now();
        let ready = self.checkout().await?;
        let outcome = self
            .run(request, outbound, ready)
            .await
            .and_then(|response| {
                let why = checked(&response, limits).err();
                why.map_or(Ok(response), |why| {
                    let error = format_args!("invalid output: {why}");
                    Err(self.error(FailureKind::InvalidOutput, error))
                })
            });
        self.metrics.handle.observe(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(_) => {
                if self.breaker.succeeded() {
                    self.metrics.instances.breaker_open.set(0);
                    tracing::info!(
                        plugin = &*self.info.name,
                        "plugin breaker closed: a probe call succeeded"
                    );
                }
            }
            Err(_) => {
                if self.breaker.failed(probe) {
                    self.metrics.instances.breaker_open.set(1);
                    tracing::warn!(
                        plugin = &*self.info.name,
                        "plugin breaker opened: its calls failed in a row; its routes answer without calling it until a probe call succeeds"
                    );
                }
            }
        }
        outcome
    }

    /// An idle instance if there is one, else a slot for a fresh one; when all
    /// `max_instances` are busy, the first one freed or returned within the deadline.
    async fn checkout(&self) -> Result<Ready, CallError> {
        let deadline = self.info.settings.deadline;
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Registered before looking, so an instance returned in between still wakes us.
            let returned = self.pool.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(instance) = self.pool.take() {
                return Ok(Ready::Idle(instance));
            }
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => {
                    if let Ok(slot) = slot {
                        return Ok(Ready::Fresh(slot));
                    }
                }
                () = &mut returned => continue,
                () = tokio::time::sleep_until(until) => {}
            }
            return Err(self.error(
                FailureKind::Overloaded,
                format_args!(
                    "all {} of its instances (max_instances) stayed busy for {}",
                    self.info.settings.max_instances,
                    humantime::format_duration(deadline)
                ),
            ));
        }
    }

    /// A store for a fresh instance.
    fn new_store(&self) -> Store<HandlerState> {
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
                outbound: None,
                lent: self.pool.reuse.then(Lent::default),
            },
            limits,
            budget: budget::CallBudget::default(),
            held: hold::Held::new(
                self.info
                    .settings
                    .host_memory
                    .unwrap_or(hold::DEFAULT_HELD_PER_CALL),
            ),
            live: None,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.set_hostcall_fuel(self.info.settings.hostcall_fuel());
        store.set_max_component_handles(MAX_HANDLES);
        store.epoch_deadline_callback(|mut store| budget::on_tick(&mut store.data_mut().budget));
        store
    }

    /// One request on `ready`'s instance (a fresh one for a slot), which is busy until the
    /// guest returns, then goes back to the pool if the handler reuses instances and the
    /// request went well.
    async fn run(
        &self,
        request: http::Request<HandlerBody>,
        outbound: Arc<dyn Outbound>,
        ready: Ready,
    ) -> Result<http::Response<Bytes>, CallError> {
        let error = |(kind, why): (FailureKind, String)| self.error(kind, format_args!("{why}"));
        let trap = |why: String| error((FailureKind::Trap, why));
        let deadline = self.info.settings.deadline;
        let (mut store, proxy, uses, slot) = match ready {
            Ready::Idle(instance) => (
                instance.store,
                Some(instance.proxy),
                instance.uses,
                instance.slot,
            ),
            Ready::Fresh(slot) => (self.new_store(), None, 0, slot),
        };
        store.data_mut().hooks.outbound = Some(outbound);

        let (parts, body) = request.into_parts();
        let body = match body {
            HandlerBody::Stream(body) => body.map_err(stream_error).boxed_unsync(),
            HandlerBody::Full(bytes) => Full::new(bytes)
                .map_err(wasmtime_wasi_http::Error::from)
                .boxed_unsync(),
        };
        let lent = store.data().hooks.lent.clone();
        let body = match &lent {
            Some(lent) => lent.lend(body),
            None => body,
        };
        let request = http::Request::from_parts(parts, body);
        let (sender, receiver) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(
                wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
                request,
            )
            .map_err(|e| trap(format!("{e:#}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| trap(format!("{e:#}")))?;
        // Sent once the response was read whole: only then may the instance serve again.
        let (served, verdict) = oneshot::channel::<()>();
        // Why the guest failed, sent before its store is dropped: a guest failing after it
        // sent its head ends its body with the store, which wasmtime-wasi-http reads as the
        // body's end, so the body read whole is checked against this.
        let (failing, mut failed) = oneshot::channel::<(FailureKind, String)>();
        let pool = self.pool.reuse.then(|| self.pool.clone());
        let pre = self.pre.clone();
        let ticking = self.ticking.clone();
        let name = self.info.name.clone();
        let (instances, created) = (
            self.metrics.instances.live.clone(),
            self.metrics.instances.created.clone(),
        );
        // The guest may go on writing the body after it has sent the head, so it runs on its
        // own task; the task ends when the guest returns (or is dropped with the store).
        let task = tokio::spawn(async move {
            let _ticking = ticking;
            // The call's time begins when its task first runs, not when it was queued: on a
            // busy thread a task waits its turn for milliseconds, which would be charged as
            // running (a long call: the fine tick, and waits between its slices).
            store.data_mut().budget.reset(deadline);
            store.data_mut().held.reset();
            store.set_epoch_deadline(1);
            let bound = store.data().budget.bound();
            let call = async {
                let proxy = match proxy {
                    Some(proxy) => proxy,
                    None => {
                        let proxy = pre.instantiate_async(&mut store).await?;
                        created.inc();
                        store.data_mut().live = Some(Held::new(&instances));
                        proxy
                    }
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, out)
                    .await?;
                Ok(proxy)
            };
            // A guest waiting (a WASI sleep) after it answered is stopped at its deadline
            // too, rather than holding its slot.
            let proxy = match budget::cut_off(bound, call).await {
                Ok(proxy) => proxy,
                Err(e) => {
                    let _ = failing.send((super::failure_kind(&e), format!("{e:#}")));
                    return Err(e);
                }
            };
            // Dropping the store (here, or where the task is aborted) ends any body the guest
            // kept open; an instance is kept only if it holds nothing of this request.
            let (Some(pool), Some(lent)) = (pool, lent) else {
                return Ok(());
            };
            lent.cut();
            cut_streams(&mut store.data_mut().table);
            if let Err(why) = reusable(&mut store) {
                tracing::debug!(plugin = &*name, why, "handler instance not reused");
                pool.retired.held.inc();
            } else if verdict.await.is_ok() {
                pool.put_back(Instance {
                    store,
                    proxy,
                    uses: uses + 1,
                    slot,
                });
            }
            Ok::<(), wasmtime::Error>(())
        });
        let abort = task.abort_handle();
        let run = async {
            let response = match receiver.await {
                Ok(Ok(response)) => response,
                Ok(Err(code)) => {
                    let why = format!("the handler answered with an error: {code:?}");
                    return Err((FailureKind::Trap, why));
                }
                Err(_) => {
                    // The task waits for this verdict before it returns: refuse it first.
                    drop(served);
                    return Err(match task.await {
                        Ok(Ok(())) => (
                            FailureKind::Trap,
                            "the handler returned without sending a response".to_owned(),
                        ),
                        Ok(Err(e)) => (super::failure_kind(&e), format!("{e:#}")),
                        Err(e) => (FailureKind::Trap, format!("the handler task failed: {e}")),
                    });
                }
            };
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await;
            let reading = |e| format!("reading the handler's response body: {e}");
            let body = match body {
                // Past weir's bound: output weir does not take, whatever the guest did next
                // (it may fail writing to the body weir stopped reading).
                Err(e) if e.is::<LengthLimitError>() => {
                    return Err((FailureKind::InvalidOutput, reading(e)));
                }
                // Ended by a failure, not by the guest: only the part written before it.
                _ if let Ok(failure) = failed.try_recv() => return Err(failure),
                Err(e) => return Err((FailureKind::Trap, reading(e))),
                Ok(body) => body.to_bytes(),
            };
            // Failing to send only means the instance is not being kept.
            let _ = served.send(());
            Ok(http::Response::from_parts(parts, body))
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => Err(error(failure)),
            Err(_) => {
                // The guest may be waiting (a WASI sleep): it ends now, not when it wakes.
                abort.abort();
                Err(error((
                    FailureKind::Deadline,
                    format!(
                        "the handler did not finish within its deadline of {}",
                        humantime::format_duration(deadline)
                    ),
                )))
            }
        }
    }

    /// A failed request, counted.
    fn error(&self, kind: FailureKind, message: std::fmt::Arguments<'_>) -> CallError {
        self.metrics.instances.failed(kind);
        self.info.error(kind, message)
    }
}

/// Whether weir sends a handler's answer with this head: held to a filter's local reply's
/// rules (wasi:http lets a guest write any status up to 999, and any number of headers).
fn checked(response: &http::Response<Bytes>, limits: OutputLimits) -> Result<(), String> {
    OutputLimits::status(response.status().as_u16())?;
    let headers = response.headers();
    limits.count(headers.len(), "headers")?;
    headers
        .iter()
        .try_for_each(|(name, value)| limits.header_size(name, name.as_str().len() + value.len()))
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
    hold::add_to_linker(&mut linker)?;
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
