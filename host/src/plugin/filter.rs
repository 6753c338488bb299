//! A loaded filter plugin: its linked component, its pool of idle instances, and the hook
//! calls the chain makes, each on an instance checked out of the pool, under the plugin's
//! deadline and memory cap. Which contract version the component speaks is the
//! [`contract`](super::contract) seam's business; nothing here asks.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use http::response;
use prometheus::Histogram;
use tokio::time::Instant as Clock;
use wasmtime::{Engine, Store};

use super::breaker::{Admit, Breaker};
use super::contract::current::types::{
    BodyAction, BodyHookSet, HeaderOp, HookSet, RequestAction, ResponseAction,
};
use super::contract::{AnyGuest, AnyPre, Guest as _, HookError, Hooks, on_guest};
use super::memory::{Limits, MemoryBudget};
use super::state::PluginState;
use super::view::{RequestId, RequestView};
use super::{CallError, ManualClock, PluginInfo, budget};
use crate::kv::KvStore;
use crate::metrics::{FailureKind, Held, PluginMetrics, Tick, metrics};

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
    /// Boxed, so a checkout and a checkin move a pointer, not the instance.
    #[expect(
        clippy::vec_box,
        reason = "a call holds its instance by the box it was made in: popped, pushed and passed around without moving the instance"
    )]
    idle: Mutex<Vec<Box<Instance>>>,
    /// Its share of the instance pool: `max_instances` at once, idle or in a call.
    slots: Arc<Slots>,
    /// The memory all plugins' instances draw from.
    memory: Arc<MemoryBudget>,
    /// Per hook, stops calling it after failures in a row: a plugin failing in one hook is
    /// still called in the others.
    breakers: [Breaker; 4],
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
    /// The hook of the current call, and whether the call is its breaker's probe.
    hook: Hook,
    probe: bool,
    /// Counted in `weir_plugin_instances` while it exists.
    _live: Held,
    /// Its place in the plugin's share of the pool, freed when it is dropped.
    _slot: Slot,
}

/// A hook, as the index of its breaker.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Request,
    RequestBody,
    ResponseBody,
    Response,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Request => "on-request",
            Hook::RequestBody => "on-request-body",
            Hook::ResponseBody => "on-response-body",
            Hook::Response => "on-response",
        }
    }
}

/// The instances a plugin may have at once, and the wait for one when all are taken.
#[derive(Debug)]
struct Slots {
    max: usize,
    live: AtomicUsize,
    /// Calls waiting for an instance: only then is returning one worth a wake-up.
    waiting: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// One instance's place in [`Slots`].
#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Slots {
    fn take(self: &Arc<Slots>) -> Option<Slot> {
        self.live
            .try_update(SeqCst, SeqCst, |live| (live < self.max).then_some(live + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// An instance went idle or away: wakes a call waiting for one, if any.
    fn freed(&self) {
        if self.waiting.load(SeqCst) != 0 {
            self.freed.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, SeqCst);
        self.0.freed();
    }
}

/// What [`Filter::load`] needs besides the linked component.
pub(super) struct FilterParts {
    pub(super) info: PluginInfo,
    pub(super) config_json: String,
    pub(super) kv: Arc<KvStore>,
    pub(super) clock: Option<Arc<ManualClock>>,
    pub(super) engine: Engine,
    pub(super) memory: Arc<MemoryBudget>,
    pub(super) ticking: Arc<()>,
}

impl Filter {
    /// Configures a first instance, which answers `hooks` and proves the config is
    /// accepted, and keeps it as the first idle instance.
    pub(super) async fn load(parts: FilterParts, pre: AnyPre) -> wasmtime::Result<Filter> {
        let mut filter = Filter {
            metrics: metrics().plugin(&parts.info.name),
            slots: Arc::new(Slots {
                max: parts.info.settings.max_instances,
                live: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                freed: tokio::sync::Notify::new(),
            }),
            memory: parts.memory,
            breakers: [(); 4].map(|()| Breaker::new(parts.info.settings.breaker)),
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
        let slot = filter
            .slots
            .take()
            .ok_or_else(|| wasmtime::Error::msg("no instance slot for a new plugin"))?;
        let mut instance = filter
            .instantiate(slot)
            .await
            .map_err(wasmtime::Error::from)?;
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

    /// A fresh, configured instance in `slot`.
    async fn instantiate(&self, slot: Slot) -> Result<Box<Instance>, CallError> {
        let limits = Limits::new(self.info.settings.memory_limit, self.memory.clone());
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
        let fuel = self.info.settings.hostcall_fuel();
        store.set_hostcall_fuel(fuel);
        store.data_mut().hostcall_fuel = fuel;
        store.data_mut().granted = self.info.settings.clusters.clone().into();
        store.data_mut().kv_quota = self.info.settings.kv;
        store.data_mut().whole_heads = self.info.settings.whole_heads;
        store.data_mut().log_repeats = self.log_repeats.clone();
        store.epoch_deadline_callback(|mut store| budget::on_tick(&mut store.data_mut().budget));
        store.data_mut().budget.reset(self.info.settings.deadline);
        store.set_epoch_deadline(1);
        let bound = store.data().budget.bound();
        let guest = budget::cut_off(bound, self.pre.instantiate(&mut store))
            .await
            .map_err(|e| self.error(FailureKind::Instantiate, format_args!("{e:#}")))?;
        self.metrics.instances.created.inc();
        let live = Held::new(&self.metrics.instances.live);
        let configured = on_guest!(&guest, g => g.configure(&mut store, &self.config_json).await);
        match configured {
            Ok(Ok(())) => Ok(Box::new(Instance {
                store,
                guest,
                uses: 0,
                hook: Hook::Request,
                probe: false,
                _live: live,
                _slot: slot,
            })),
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

    /// Counts a call of `hook` that started at `started` (read from the TSC: a few
    /// instructions, where the system clock is a call).
    fn timed<R>(hook: &Histogram, started: Tick, result: R) -> R {
        hook.observe(started.elapsed().as_secs_f64());
        result
    }

    /// An instance ready for one hook call for `request`: idle if one is, else fresh if the
    /// plugin's share of the pool has room, else the first one freed within its deadline.
    /// Refused at once while the hook's breaker is open.
    async fn checkout(
        &self,
        request: &RequestView,
        hook: Hook,
    ) -> Result<Box<Instance>, CallError> {
        let probe = match self.breakers[hook as usize].admit() {
            Admit::Call => false,
            Admit::Probe => true,
            Admit::Refuse => {
                return Err(self.error(
                    FailureKind::BreakerOpen,
                    format_args!(
                        "{} not called: its breaker is open after {} failed calls in a row",
                        hook.name(),
                        self.info.settings.breaker.failures
                    ),
                ));
            }
        };
        let instance = match self.idle() {
            Some(instance) => Ok(instance),
            None => self.fresh_or_freed().await,
        };
        let mut instance = match instance {
            Ok(instance) => instance,
            Err(e) => {
                if e.kind != FailureKind::Overloaded {
                    self.breaker_failed(hook, probe);
                }
                return Err(e);
            }
        };
        instance.hook = hook;
        instance.probe = probe;
        instance.uses += 1;
        let state = instance.store.data_mut();
        state.request_id.clone_from(request.request_id_handle());
        state.trace_id = request.trace().map(|t| t.id.clone());
        if !self.info.settings.clusters.is_empty() {
            state.outbound = request.outbound().cloned();
        }
        state.budget.reset(self.info.settings.deadline);
        instance.store.set_epoch_deadline(1);
        Ok(instance)
    }

    fn idle(&self) -> Option<Box<Instance>> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// A fresh instance if the plugin's share has room; else waits, up to the plugin's
    /// deadline, for an instance to go idle or away.
    async fn fresh_or_freed(&self) -> Result<Box<Instance>, CallError> {
        if let Some(slot) = self.slots.take() {
            return self.instantiate(slot).await;
        }
        let until = Clock::now() + self.info.settings.deadline;
        self.slots.waiting.fetch_add(1, SeqCst);
        let waited = async {
            loop {
                let freed = self.slots.freed.notified();
                if let Some(instance) = self.idle() {
                    return Ok(instance);
                }
                if let Some(slot) = self.slots.take() {
                    return self.instantiate(slot).await;
                }
                if tokio::time::timeout_at(until, freed).await.is_err() {
                    return Err(self.error(
                        FailureKind::Overloaded,
                        format_args!(
                            "all {} of its instances (max_instances) stayed busy for {}",
                            self.slots.max,
                            humantime::format_duration(self.info.settings.deadline)
                        ),
                    ));
                }
            }
        }
        .await;
        self.slots.waiting.fetch_sub(1, SeqCst);
        waited
    }

    fn checkin(&self, mut instance: Box<Instance>) {
        // An idle instance keeps no request's generation, nor its id, alive.
        let state = instance.store.data_mut();
        state.outbound = None;
        state.request_id = RequestId::default();
        // One whose memory keeps growing is replaced before it reaches its cap.
        let limits = &mut state.limits;
        let max_uses = self.info.settings.max_uses;
        if !super::serves_again(
            limits,
            instance.uses,
            max_uses,
            &self.metrics.retired,
            &self.info.name,
        ) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            idle.push(instance);
            drop(idle);
            self.slots.freed();
        }
    }

    /// Returns a healthy instance to the pool; one whose call failed is dropped instead.
    /// Either way the breaker hears of it.
    fn finish<R>(
        &self,
        instance: Box<Instance>,
        result: Result<R, HookError>,
    ) -> Result<R, CallError> {
        let (hook, probe) = (instance.hook, instance.probe);
        match result {
            Ok(value) => {
                self.checkin(instance);
                if self.breakers[hook as usize].succeeded() {
                    self.metrics.instances.breaker_open.dec();
                    tracing::info!(
                        plugin = &*self.info.name,
                        hook = hook.name(),
                        "plugin breaker closed: a probe call succeeded"
                    );
                }
                Ok(value)
            }
            Err(HookError::Trap(e)) => {
                drop(instance);
                self.breaker_failed(hook, probe);
                Err(self.error(super::failure_kind(&e), format_args!("{e:#}")))
            }
            Err(HookError::LostView(why)) => {
                drop(instance);
                self.breaker_failed(hook, probe);
                Err(CallError {
                    lost_view: true,
                    ..self.error(FailureKind::Trap, format_args!("{why}"))
                })
            }
        }
    }

    /// A call of `hook` failed: counts it towards opening the hook's breaker.
    fn breaker_failed(&self, hook: Hook, probe: bool) {
        if self.breakers[hook as usize].failed(probe) {
            self.metrics.instances.breaker_open.inc();
            let settings = self.info.settings.breaker;
            tracing::warn!(
                plugin = &*self.info.name,
                hook = hook.name(),
                failures = settings.failures,
                cooldown = %humantime::format_duration(settings.cooldown),
                "plugin breaker opened: its calls failed in a row; its routes answer without calling it until a probe call succeeds"
            );
        }
    }

    /// Calls the request hook under the plugin's deadline. Returns the action and the
    /// response header changes the call left for the response (`add-response-header-ops`,
    /// or with its answer from `request-hook`, 0.3.7).
    /// `request` is the chain's view again when this returns, unless the error says it was
    /// lost ([`CallError::lost_view`]).
    pub async fn on_request(
        &self,
        request: &mut RequestView,
    ) -> Result<(RequestAction, Vec<HeaderOp>), CallError> {
        let started = Tick::now();
        let mut instance = self.checkout(request, Hook::Request).await?;
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
        let started = Tick::now();
        let mut instance = self.checkout(request, Hook::RequestBody).await?;
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
        let started = Tick::now();
        let mut instance = self.checkout(request, Hook::ResponseBody).await?;
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
        let started = Tick::now();
        let mut instance = self.checkout(request, Hook::Response).await?;
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
