//! A loaded filter plugin: its linked component, its pool of idle instances, and the hook
//! calls the chain makes, each on an instance checked out of the pool, under the plugin's
//! deadline and memory cap. Which contract version the component speaks is the
//! [`contract`](super::contract) seam's business; nothing here asks.

use std::sync::{Arc, Mutex};

use http::response;
use prometheus::Histogram;
use tokio::time::Instant as Clock;
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap};

use super::contract::current::types::{
    BodyAction, BodyHookSet, HeaderOp, HookSet, RequestAction, ResponseAction,
};
use super::contract::{AnyGuest, AnyPre, Guest as _, HookError, Hooks, on_guest};
use super::state::PluginState;
use super::view::RequestView;
use super::{CallError, ManualClock, PluginInfo, budget};
use crate::kv::KvStore;
use crate::metrics::{FailureKind, Held, PluginMetrics, metrics};

/// Idle instances kept per plugin; more are dropped when returned.
const MAX_IDLE_INSTANCES: usize = 64;

/// A loaded, configured filter and its pool of idle instances.
pub struct Filter {
    /// Name, file, hash, settings and load facts.
    pub info: PluginInfo,
    hooks: Hooks,
    config_json: String,
    kv: Arc<KvStore>,
    clock: Option<Arc<ManualClock>>,
    engine: Engine,
    pre: AnyPre,
    idle: Mutex<Vec<Instance>>,
    /// Calls, durations, failures and instances, as metrics.
    pub(crate) metrics: PluginMetrics,
    /// Lines the instances logged lately (held back when repeated).
    log_repeats: Arc<super::host_api::log::Repeats>,
    /// weir's own lines about this plugin's failed calls, held back the same way: a plugin
    /// that traps on every request is one line per 10 s per kind of failure, not one per
    /// request (every failure is still counted in `weir_plugin_failures_total`).
    pub(crate) failure_lines: super::host_api::log::Repeats,
    /// Keeps the epoch thread ticking while this plugin exists (see `PluginRuntime`).
    _ticking: Arc<()>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("name", &self.info.name)
            .field("hash", &self.info.hash)
            .finish_non_exhaustive()
    }
}

struct Instance {
    store: Store<PluginState>,
    guest: AnyGuest,
    uses: u32,
    /// Counted in `weir_plugin_instances` while it exists.
    _live: Held,
}

/// What [`Filter::load`] needs besides the linked component.
pub(super) struct FilterParts {
    pub(super) info: PluginInfo,
    pub(super) config_json: String,
    pub(super) kv: Arc<KvStore>,
    pub(super) clock: Option<Arc<ManualClock>>,
    pub(super) engine: Engine,
    pub(super) ticking: Arc<()>,
}

impl Filter {
    /// Configures a first instance, which answers `hooks` and proves the config is
    /// accepted, and keeps it as the first idle instance.
    pub(super) async fn load(parts: FilterParts, pre: AnyPre) -> wasmtime::Result<Filter> {
        let mut filter = Filter {
            metrics: metrics().plugin(&parts.info.name),
            info: parts.info,
            hooks: Hooks {
                head: HookSet::empty(),
                body: BodyHookSet::empty(),
            },
            config_json: parts.config_json,
            kv: parts.kv,
            clock: parts.clock,
            engine: parts.engine,
            pre,
            idle: Mutex::new(Vec::new()),
            log_repeats: Arc::default(),
            failure_lines: super::host_api::log::Repeats::default(),
            _ticking: parts.ticking,
        };
        let mut instance = filter.instantiate().await.map_err(wasmtime::Error::from)?;
        let store = &mut instance.store;
        filter.hooks = on_guest!(&instance.guest, g => g.hooks(store).await)?;
        filter.checkin(instance);
        Ok(filter)
    }

    /// Whether the contract version it was built against is deprecated.
    pub(super) fn deprecated(&self) -> bool {
        self.pre.deprecated()
    }

    /// Whether the plugin implements `on-request`.
    pub fn has_on_request(&self) -> bool {
        self.hooks.head.contains(HookSet::ON_REQUEST)
    }

    /// Whether the plugin implements `on-response`.
    pub fn has_on_response(&self) -> bool {
        self.hooks.head.contains(HookSet::ON_RESPONSE)
    }

    /// Whether the plugin implements `on-request-body`.
    pub fn has_on_request_body(&self) -> bool {
        self.hooks.body.contains(BodyHookSet::ON_REQUEST_BODY)
    }

    /// Whether the plugin implements `on-response-body`.
    pub fn has_on_response_body(&self) -> bool {
        self.hooks.body.contains(BodyHookSet::ON_RESPONSE_BODY)
    }

    /// The hooks the plugin implements, by their WIT names.
    pub fn hook_names(&self) -> Vec<&'static str> {
        let hooks = [
            (self.has_on_request(), "on-request"),
            (self.has_on_response(), "on-response"),
            (self.has_on_request_body(), "on-request-body"),
            (self.has_on_response_body(), "on-response-body"),
        ];
        hooks
            .into_iter()
            .filter_map(|(has, name)| has.then_some(name))
            .collect()
    }

    /// A fresh, configured instance.
    async fn instantiate(&self) -> Result<Instance, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.info.settings.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            PluginState::new(
                self.info.name.clone(),
                self.kv.clone(),
                self.metrics.declared.clone(),
                limits,
                self.clock.clone(),
            ),
        );
        store.limiter(|state| &mut state.limits);
        store.data_mut().granted = self.info.settings.clusters.clone().into();
        store.data_mut().log_repeats = self.log_repeats.clone();
        store.epoch_deadline_callback(|store| {
            budget::on_tick(store, |state: &mut PluginState| &mut state.budget)
        });
        store.data_mut().budget.reset(self.info.settings.deadline);
        store.set_epoch_deadline(1);
        let guest = self
            .pre
            .instantiate(&mut store)
            .await
            .map_err(|e| self.error(FailureKind::Instantiate, format_args!("{e:#}")))?;
        self.metrics.instances_created.inc();
        let live = Held::new(&self.metrics.instances);
        let configured = on_guest!(&guest, g => g.configure(&mut store, &self.config_json).await);
        match configured {
            Ok(Ok(())) => Ok(Instance {
                store,
                guest,
                uses: 0,
                _live: live,
            }),
            Ok(Err(rejected)) => Err(self.error(
                FailureKind::Instantiate,
                format_args!("configuration rejected: {rejected}"),
            )),
            Err(e) => Err(self.error(FailureKind::Instantiate, format_args!("{e:#}"))),
        }
    }

    /// A failed call, counted.
    fn error(&self, kind: FailureKind, message: std::fmt::Arguments<'_>) -> CallError {
        self.metrics.failed(kind);
        self.info.error(kind, message)
    }

    /// Counts a call of `hook` that started at `started`.
    fn timed<R>(hook: &Histogram, started: Clock, result: R) -> R {
        hook.observe(started.elapsed().as_secs_f64());
        result
    }

    /// An instance ready for one hook call for `request`: idle if one is, else fresh.
    async fn checkout(&self, request: &RequestView) -> Result<Instance, CallError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate().await?,
        };
        instance.uses += 1;
        let state = instance.store.data_mut();
        state.request_id.clear();
        state.request_id.push_str(request.request_id());
        state.trace_id = request.trace().map(|t| t.id.clone());
        if !self.info.settings.clusters.is_empty() {
            state.outbound = request.outbound().cloned();
        }
        state.budget.reset(self.info.settings.deadline);
        instance.store.set_epoch_deadline(1);
        Ok(instance)
    }

    fn checkin(&self, mut instance: Instance) {
        // An idle instance keeps no request's generation alive.
        instance.store.data_mut().outbound = None;
        if instance.uses < self.info.settings.max_uses
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            idle.push(instance);
        }
    }

    /// Returns a healthy instance to the pool; one whose call failed is dropped instead.
    fn finish<R>(&self, instance: Instance, result: Result<R, HookError>) -> Result<R, CallError> {
        match result {
            Ok(value) => {
                self.checkin(instance);
                Ok(value)
            }
            Err(HookError::Trap(e)) => Err(self.error(failure_kind(&e), format_args!("{e:#}"))),
            Err(HookError::LostView(why)) => Err(CallError {
                lost_view: true,
                ..self.error(FailureKind::Trap, format_args!("{why}"))
            }),
        }
    }

    /// Calls the request hook under the plugin's deadline. Returns the action and the
    /// response header changes the call left for the response (`add-response-header-ops`).
    /// `request` is the chain's view again when this returns, unless the error says it was
    /// lost ([`CallError::lost_view`]).
    pub async fn on_request(
        &self,
        request: &mut RequestView,
    ) -> Result<(RequestAction, Vec<HeaderOp>), CallError> {
        let started = Clock::now();
        let mut instance = self.checkout(request).await?;
        let store = &mut instance.store;
        let result = on_guest!(&instance.guest, g => g.on_request(store, request).await);
        Self::timed(
            &self.metrics.on_request,
            started,
            self.finish(instance, result),
        )
    }

    /// Calls `on-request-body` under the plugin's deadline.
    pub async fn on_request_body(
        &self,
        request: &RequestView,
        body: &[u8],
    ) -> Result<BodyAction, CallError> {
        let started = Clock::now();
        let mut instance = self.checkout(request).await?;
        let store = &mut instance.store;
        let result = on_guest!(&instance.guest, g => g.on_request_body(store, request, body).await);
        let result = self.finish(instance, result.map_err(HookError::Trap));
        Self::timed(&self.metrics.on_request_body, started, result)
    }

    /// Calls `on-response-body` under the plugin's deadline.
    pub async fn on_response_body(
        &self,
        request: &RequestView,
        response: &response::Parts,
        body: &[u8],
    ) -> Result<BodyAction, CallError> {
        let started = Clock::now();
        let mut instance = self.checkout(request).await?;
        let store = &mut instance.store;
        let result = on_guest!(
            &instance.guest,
            g => g.on_response_body(store, request, response, body).await
        );
        let result = self.finish(instance, result.map_err(HookError::Trap));
        Self::timed(&self.metrics.on_response_body, started, result)
    }

    /// Calls the response hook under the plugin's deadline, as [`Filter::on_request`].
    pub async fn on_response(
        &self,
        request: &mut RequestView,
        response: &mut response::Parts,
    ) -> Result<(ResponseAction, Vec<HeaderOp>), CallError> {
        let started = Clock::now();
        let mut instance = self.checkout(request).await?;
        let store = &mut instance.store;
        let result = on_guest!(&instance.guest, g => g.on_response(store, request, response).await);
        Self::timed(
            &self.metrics.on_response,
            started,
            self.finish(instance, result),
        )
    }

    /// What the shared `kv` store holds, per plugin namespace.
    pub fn kv_usage(&self) -> Vec<(String, super::KvUsage)> {
        self.kv.usage()
    }
}

/// How a failed call failed: the epoch deadline interrupts it; the memory cap fails a
/// `memory.grow` with the limiter's error (`trap_on_grow_failure`), which wasmtime reports
/// by its message only; anything else is a trap.
fn failure_kind(error: &wasmtime::Error) -> FailureKind {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return FailureKind::Deadline;
    }
    let memory = error
        .chain()
        .any(|cause| cause.to_string().contains("when growing memory"));
    if memory {
        FailureKind::Memory
    } else {
        FailureKind::Trap
    }
}
