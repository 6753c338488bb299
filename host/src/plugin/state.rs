//! `PluginState`: what a plugin instance's `Store` carries — WASI with nothing granted, the
//! memory limits, and the handles host imports need.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::ManualClock;
use super::memory::Limits;
use super::outbound::Outbound;
use super::view::RequestId;
use crate::kv::{KvQuota, KvStore};
use crate::metrics::{PluginMetric, PluginMetricSet};

/// The data of one instance's `Store`.
pub(crate) struct PluginState {
    /// WASI with no preopened folders, no environment, no inherited stdio, no sockets: clocks
    /// and random numbers are all a plugin gets from it.
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// Where in `table` the lazy hooks' views are lent (`contract::v0_3`).
    pub(crate) lent: LentSlots,
    /// Call a 0.3.x filter's record forms with whole heads instead of its lazy hooks
    /// (`NAME.toml` `whole_heads`).
    pub(crate) whole_heads: bool,
    /// Memory cap for this instance, and its draw on weir's budget for all of them.
    pub(crate) limits: Limits,
    /// What one call may hand weir (`PluginSettings::hostcall_fuel`): the store's host-call
    /// fuel for each crossing, and the room for the header changes one call leaves for the
    /// response in all its `add-response-header-ops` crossings together.
    pub(crate) hostcall_fuel: usize,
    /// The plugin's name, for log lines.
    pub(crate) plugin: Arc<str>,
    /// The shared store; keys are prefixed with the plugin's name.
    pub(crate) kv: Arc<KvStore>,
    /// What its `NAME.toml` grants of `kv`: `None` denies every call (`host_api::kv`).
    pub(crate) kv_quota: Option<KvQuota>,
    /// The request the current call serves, for log lines.
    pub(crate) request_id: RequestId,
    /// The request's trace id, when it is traced, for log lines.
    pub(crate) trace_id: Option<Arc<str>>,
    /// The metrics the loaded version of the plugin declared, shared by its instances.
    pub(crate) metric_set: Arc<PluginMetricSet>,
    /// This instance's metric handles: index `i` is handle `i` (`weir:plugin/metrics`).
    pub(crate) metrics: Vec<Arc<PluginMetric>>,
    /// Whether `configure` is running: metrics are declared only then.
    pub(crate) configuring: bool,
    /// The current call's share of time (`plugin::budget`).
    pub(crate) budget: super::budget::CallBudget,
    /// The clusters this plugin's `outbound` calls may reach (`NAME.toml` `clusters`).
    pub(crate) granted: Arc<[String]>,
    /// Lines this plugin logged lately, shared by its instances (`host_api::log`).
    pub(crate) log_repeats: Arc<super::host_api::log::Repeats>,
    /// Where the current call's `outbound` requests go: set for a call on a request when the
    /// plugin is granted clusters, `None` otherwise (and in `configure`).
    pub(crate) outbound: Option<Arc<dyn Outbound>>,
    /// The trailers of the response the current `on-response-body` call holds, if it had
    /// any (`response-trailers`, 0.3.6); `None` between calls.
    pub(crate) trailers: Option<Arc<http::HeaderMap>>,
}

impl PluginState {
    pub(crate) fn new(
        plugin: Arc<str>,
        kv: Arc<KvStore>,
        metric_set: Arc<PluginMetricSet>,
        limits: Limits,
        clock: Option<Arc<ManualClock>>,
    ) -> PluginState {
        let wasi = super::wasi_builder(clock.as_ref()).build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            lent: LentSlots::default(),
            whole_heads: false,
            limits,
            hostcall_fuel: 0,
            plugin,
            kv,
            kv_quota: None,
            request_id: RequestId::default(),
            trace_id: None,
            metric_set,
            metrics: Vec::new(),
            configuring: false,
            budget: super::budget::CallBudget::default(),
            granted: Arc::from([]),
            log_repeats: Arc::default(),
            outbound: None,
            trailers: None,
        }
    }
}

/// The entries of an instance's resource table that the lazy hooks' `request` and `response`
/// are lent in: made by the instance's first call that lends one, kept for its life, empty
/// between calls.
#[derive(Debug, Default)]
pub(crate) struct LentSlots {
    /// The `request` entry's index, once made.
    pub(crate) request: Option<u32>,
    /// The `response` entry's index, once made.
    pub(crate) response: Option<u32>,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
