//! The plugin runtime: the only module that knows wasmtime. It compiles plugin components,
//! checks them against the `weir:plugin` contract (filters) or `wasi:http` (handlers),
//! configures them, and calls them with limits.
//!
//! Lifecycle (Spin's and wasmtime's pattern):
//! - [`PluginRuntime::new`] builds the one `Engine` (pooling allocator, epoch interruption)
//!   and the two `Linker`s (filters: WASI with nothing granted, plus every contract
//!   version's `log` and `kv`; handlers: the same WASI plus `wasi:http`), once per process;
//! - [`PluginRuntime::load`] compiles a file, builds its `InstancePre`, and for a filter asks
//!   which hooks it implements and checks its config with `configure`, before it may see
//!   traffic;
//! - each hook call checks an instance out of the filter's pool (creating and configuring
//!   one if none is idle), runs the hook on a fiber awaited by the request's task, and puts
//!   the instance back afterwards. A request that is dropped mid-call drops its instance.
//!
//! What persists between requests: an instance is reused for up to `max_uses` hook calls, so
//! a plugin's own globals (statics, heap) live on between the calls that instance serves.
//! Everything the host passes — request and response heads — is passed per call and never
//! kept. An instance that traps, hits its deadline or its memory cap is dropped, never reused.
//! A handler gets a fresh instance per request, unless its `NAME.toml` says `reuse = true`:
//! then its instances are pooled the same way (`handler.rs` says what is reset between
//! requests).
//!
//! Code map: `contract/` holds one module per contract version behind one seam;
//! `filter.rs` the loaded filter and its instance pool; `handler.rs` the loaded handler and,
//! with `reuse`, its instance pool;
//! `settings.rs` `NAME.toml`; `state.rs` a filter instance's store data; `view.rs` what
//! hooks see; `host_api/` the current version's imports; `chain.rs` a route's filters.

mod breaker;
mod budget;
pub mod chain;
mod contract;
mod filter;
pub mod handler;
mod host_api;
mod memory;
pub mod outbound;
mod settings;
mod state;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use wasmtime::component::{Component, Linker};
use wasmtime::error::Context;
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    ProfilingStrategy, Trap,
};

use self::contract::AnyPre;
use self::filter::FilterParts;
use self::handler::HandlerState;
use self::state::PluginState;
use crate::config::{KvConfig, MAX_PLUGIN_MEMORY_MB, PluginLimits};
use crate::kv::KvStore;
pub use crate::kv::KvUsage;
use crate::metrics::FailureKind;

pub use self::breaker::BreakerSettings;
pub use self::contract::current::types::{
    BodyAction, BodyChanges, HeaderOp, LocalResponse, RequestAction, RequestChanges, RequestHead,
    ResponseAction, ResponseHead,
};
pub use self::filter::Filter;
pub use self::handler::Handler;
pub use self::memory::MemoryBudget;
pub use self::settings::{DEFAULT_MAX_BODY_BYTES, PluginSettings};

/// The time slice the epoch thread asks the kernel for: the shortest there is, so that it
/// wakes on time even while a worker thread is busy on its core.
const EPOCH_SLICE: Duration = Duration::from_micros(100);
/// How long the epoch thread sleeps at a time while no plugin is loaded (a load wakes it
/// at once).
const TICKER_IDLE: Duration = Duration::from_secs(1);
/// Instance slots in the pooling allocator, across all plugins.
const POOL_INSTANCES: u32 = 512;
/// The largest linear memory a pool slot holds, so the most `memory_limit_mb` may ask for.
const MAX_MEMORY_LIMIT: usize = MAX_PLUGIN_MEMORY_MB << 20;

/// What a plugin is loaded from: the bytes of `NAME.wasm` and of `NAME.toml`, if any. The
/// caller reads the files, so what is hashed is exactly what is compiled.
#[derive(Debug)]
pub struct PluginSource {
    /// The `.wasm` file, for names and messages.
    pub file: PathBuf,
    /// Its contents.
    pub wasm: Vec<u8>,
    /// The settings file beside it and its contents, if it exists.
    pub settings: Option<(PathBuf, String)>,
}

/// A loaded plugin, by kind: a filter runs in a route's chain, a handler answers a route.
#[derive(Debug, Clone)]
pub enum Plugin {
    /// A `weir:plugin` filter.
    Filter(Arc<Filter>),
    /// A `wasi:http` handler.
    Handler(Arc<Handler>),
}

impl Plugin {
    /// What every plugin has: name, file, hash, settings and load facts.
    pub fn info(&self) -> &PluginInfo {
        match self {
            Plugin::Filter(filter) => &filter.info,
            Plugin::Handler(handler) => &handler.info,
        }
    }

    /// The hooks a filter implements, by their WIT names (none for a handler).
    pub fn hook_names(&self) -> Vec<&'static str> {
        match self {
            Plugin::Filter(filter) => filter.hook_names(),
            Plugin::Handler(_) => Vec::new(),
        }
    }
}

/// What every loaded plugin has, whatever its kind.
#[derive(Debug)]
pub struct PluginInfo {
    /// The plugin's name (file stem without ordering prefix).
    pub name: Arc<str>,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Content hash of the file (first 8 bytes of SHA-256, hex).
    pub hash: String,
    /// Limits and failure policy.
    pub settings: PluginSettings,
    /// The contract the plugin was built against: a `weir:plugin` version for a filter,
    /// `wasi:http@0.2` for a handler.
    pub contract: &'static str,
    /// When this version finished loading.
    pub loaded_at: SystemTime,
    /// How long compiling (or reading from the cache) took.
    pub compile_time: Duration,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
}

impl PluginInfo {
    /// A failed call of this plugin.
    fn error(&self, kind: FailureKind, message: std::fmt::Arguments<'_>) -> CallError {
        CallError {
            plugin: self.name.clone(),
            hash: self.hash.clone(),
            kind,
            message: message.to_string(),
            lost_view: false,
        }
    }
}

/// The process's one wasmtime engine and linkers, and the state shared by all plugins.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<PluginState>,
    handler_linker: Linker<HandlerState>,
    kv: Arc<KvStore>,
    /// The memory all instances draw from (`[plugins] memory_budget_mb`).
    memory: Arc<MemoryBudget>,
    cache: Option<Cache>,
    ticker_stop: Arc<AtomicBool>,
    /// The epoch thread, to wake when a plugin is loaded or the runtime is dropped.
    ticker: std::thread::Thread,
    /// Held by every loaded plugin: while only the runtime holds it, nothing can run guest
    /// code, and the epoch thread sleeps instead of ticking 1000 times a second.
    loaded: Arc<()>,
    clock: Option<Arc<ManualClock>>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Builds the engine and linker and starts the epoch ticker. Compiled plugins are cached
    /// in `cache_dir` (wasmtime's cache: keyed by a hash of the wasm bytes, the engine's
    /// settings and wasmtime's version); if the folder cannot be used, weir runs uncached
    /// and says so.
    pub fn new(cache_dir: Option<&Path>) -> wasmtime::Result<PluginRuntime> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(MAX_MEMORY_LIMIT);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        if perf_map_requested() {
            // `perf report` names plugin functions from /tmp/perf-PID.map.
            config.profiler(ProfilingStrategy::PerfMap);
        }
        let cache = cache_dir.and_then(|dir| {
            let mut cache_config = CacheConfig::new();
            cache_config.with_directory(dir);
            match Cache::new(cache_config) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot use the plugin cache folder; compiling every plugin at each start");
                    None
                }
            }
        });
        config.cache(cache.clone());
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                // The pool reserves its address space up front (terabytes of virtual
                // memory, most never touched); a process limited in that (`ulimit -v`,
                // valgrind) cannot. Instances are then allocated per instantiation: slower
                // to create, the same to call, under the same memory limits.
                tracing::warn!(error = %format!("{e:#}"), "cannot reserve the plugin instance pool; allocating plugin instances on demand");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config).context("cannot create the wasm engine")?
            }
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("cannot link WASI")?;
        // Every contract version weir loads, each under its own package version.
        contract::add_to_linker(&mut linker).context("cannot link weir:plugin")?;

        let handler_linker = handler::linker(&engine).context("cannot link wasi:http")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let loaded = Arc::new(());
        let (ticker_engine, stop) = (engine.clone(), ticker_stop.clone());
        let plugins = Arc::downgrade(&loaded);
        let ticker = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                // A tick that comes late lets a plugin call hold its thread that much longer.
                if let Err(e) = weir_sched::request_slice(EPOCH_SLICE) {
                    tracing::debug!(error = %e, "the epoch thread keeps the default time slice");
                }
                let mut period = budget::TICK;
                while !stop.load(Ordering::Relaxed) {
                    // Only the runtime's own reference: no plugin, so no deadline to count.
                    if plugins.strong_count() <= 1 {
                        std::thread::park_timeout(TICKER_IDLE);
                        continue;
                    }
                    period = budget::epoch_period(period);
                    std::thread::sleep(period);
                    ticker_engine.increment_epoch();
                }
            })
            .context("cannot start the epoch thread")?
            .thread()
            .clone();
        Ok(PluginRuntime {
            engine,
            linker,
            handler_linker,
            kv: Arc::new(KvStore::default()),
            memory: Arc::new(MemoryBudget::new(usize::MAX)),
            cache,
            ticker_stop,
            ticker,
            loaded,
            clock: None,
        })
    }

    /// Plugins loaded from now on read the wall clock from `clock` instead of the system's
    /// (`weir plugin test` sets the time per case).
    pub fn use_clock(&mut self, clock: Arc<ManualClock>) {
        self.clock = Some(clock);
    }

    /// Sets the memory all plugin instances together may hold, in MiB (at startup and on
    /// each reload).
    pub fn set_memory_budget(&self, mb: usize) {
        self.memory.set_limit(mb.saturating_mul(1 << 20));
    }

    /// Plugins loaded from now on share the store `[kv]` configures instead of the default
    /// in-memory one. Call before loading any plugin: every plugin must share one store.
    pub fn use_kv(&mut self, kv: &KvConfig) -> Result<(), String> {
        self.kv = Arc::new(KvStore::new(kv)?);
        Ok(())
    }

    /// Stores `value` at `key` in `plugin`'s namespace of the shared `kv`, as the plugin's
    /// own `kv.set` would (for seeding a test).
    pub async fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>) {
        if let Err(e) = self
            .kv
            .set(host_api::kv::namespaced(plugin, key), value, None)
            .await
        {
            tracing::warn!(plugin, key, error = ?e, "cannot seed kv");
        }
    }

    /// The value at `key` in `plugin`'s namespace of the shared `kv`, if any.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        self.kv
            .get(&host_api::kv::namespaced(plugin, key))
            .await
            .ok()
            .flatten()
    }

    /// Compiles, links and, for a filter, configures a plugin; `limits` are the defaults its
    /// `NAME.toml` may override. Compiling runs on a thread of its own, off the request path.
    pub async fn load(
        &self,
        source: PluginSource,
        limits: &PluginLimits,
    ) -> Result<Plugin, LoadError> {
        let file = source.file;
        let fail = |e: wasmtime::Error| LoadError {
            file: file.clone(),
            message: format!("{e:#}"),
        };
        let (settings, config_json) = match &source.settings {
            Some((path, text)) => settings::read_settings(path, text, limits).map_err(fail)?,
            None => (PluginSettings::from_limits(limits), "{}".to_owned()),
        };
        let hash = content_hash(&source.wasm);
        // From here guest code may run (`configure`, `hooks`): the epoch must advance.
        let ticking = self.loaded.clone();
        self.ticker.unpark();
        let started = tokio::time::Instant::now();
        let hits_before = self.cache.as_ref().map(Cache::cache_hits);
        let component = compile(self.engine.clone(), source.wasm)
            .await
            .map_err(fail)?
            .context("not a valid wasm component")
            .map_err(fail)?;
        let compile_time = started.elapsed();
        let from_cache = match (hits_before, self.cache.as_ref()) {
            (Some(before), Some(cache)) => cache.cache_hits() > before,
            _ => false,
        };
        let info = |contract| PluginInfo {
            name: plugin_name(&file).into(),
            file: file.clone(),
            hash: hash.clone(),
            settings: settings.clone(),
            contract,
            loaded_at: SystemTime::now(),
            compile_time,
            from_cache,
        };
        if handler::is_handler(&component, &self.engine) {
            if settings.whole_heads {
                return Err(fail(wasmtime::Error::msg(
                    "whole_heads is a filter setting: a handler is given its request by wasi:http",
                )));
            }
            let pre = self
                .handler_linker
                .instantiate_pre(&component)
                .context("the handler imports something weir does not grant (wasi:http, and WASI clocks, random and environment, are available)")
                .map_err(fail)?;
            let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre)
                .context("not a wasi:http proxy component")
                .map_err(fail)?;
            return Ok(Plugin::Handler(Arc::new(Handler {
                info: info("wasi:http@0.2"),
                granted: settings.clusters.clone().into(),
                config_json,
                clock: self.clock.clone(),
                pre,
                memory: self.memory.clone(),
                slots: Arc::new(tokio::sync::Semaphore::new(settings.max_instances)),
                breaker: breaker::Breaker::new(settings.breaker),
                metrics: crate::metrics::metrics().handler(plugin_name(&file)),
                pool: Arc::new(handler::Pool::new(
                    plugin_name(&file),
                    settings.reuse,
                    settings.max_uses,
                )),
                ticking,
            })));
        }
        if settings.reuse {
            return Err(fail(wasmtime::Error::msg(
                "reuse is a handler setting: a filter's instances are always reused (max_uses bounds how often)",
            )));
        }
        if settings.host_memory.is_some() {
            return Err(fail(wasmtime::Error::msg(
                "host_memory_mb is a handler setting: what a filter's call hands weir is bounded by its max_body_bytes and [server.limits]",
            )));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .context("the component imports something weir does not grant (only weir:plugin log, kv, metrics and outbound, and WASI clocks and random, are available)")
            .map_err(fail)?;
        let pre = AnyPre::link(&pre, &component).map_err(fail)?;
        let parts = FilterParts {
            info: info(pre.version()),
            config_json,
            kv: self.kv.clone(),
            clock: self.clock.clone(),
            engine: self.engine.clone(),
            memory: self.memory.clone(),
            ticking,
        };
        let filter = Filter::load(parts, pre).await.map_err(fail)?;
        if settings.whole_heads {
            if filter.deprecated() {
                tracing::warn!(
                    plugin = &*filter.info.name,
                    contract = filter.info.contract,
                    "whole_heads has no effect: a plugin built against this weir:plugin version is always given whole heads"
                );
            } else {
                tracing::info!(
                    plugin = &*filter.info.name,
                    "whole_heads: calling on-request and on-response with whole heads, not the lazy hooks"
                );
            }
        }
        if filter.deprecated() {
            tracing::warn!(
                plugin = &*filter.info.name,
                contract = filter.info.contract,
                "plugin built against a deprecated weir:plugin version; rebuild it against the current one (wit/README.md says when support ends)"
            );
        }
        Ok(Plugin::Filter(Arc::new(filter)))
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        self.ticker.unpark();
    }
}

/// A wall clock set by hand: plugins that read the time see what it was last set to.
#[derive(Debug, Default)]
pub struct ManualClock {
    since_epoch_ns: AtomicU64,
}

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: SystemTime) -> ManualClock {
        let clock = ManualClock::default();
        clock.set(at);
        clock
    }

    /// Sets the time every plugin using this clock sees.
    pub fn set(&self, at: SystemTime) {
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.since_epoch_ns.store(nanos, Ordering::Relaxed);
    }
}

/// [`ManualClock`] as WASI's wall clock.
struct ManualWallClock(Arc<ManualClock>);

impl wasmtime_wasi::HostWallClock for ManualWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.since_epoch_ns.load(Ordering::Relaxed))
    }
}

/// Whether `WEIR_PERF_MAP` asks for a perf map of compiled plugin code (any value but `0`
/// or empty), so `perf report` can name plugin functions.
fn perf_map_requested() -> bool {
    std::env::var_os("WEIR_PERF_MAP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The most random bytes a plugin may ask for at once (`wasi:random`'s `get-random-bytes`
/// and `get-insecure-random-bytes`; past it the call traps): far more than seeding or a
/// token needs.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// WASI for a plugin instance: nothing granted, and the runtime's clock if it has one.
fn wasi_builder(clock: Option<&Arc<ManualClock>>) -> wasmtime_wasi::WasiCtxBuilder {
    // The builder's defaults grant nothing: no preopens, no env, stdio closed, every socket
    // address denied, no name lookup.
    let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
    // weir fills the whole list a `get-random-bytes` asks for before the guest takes it:
    // wasmtime-wasi's default bound, 64 MiB, would be 64 MiB of weir's memory for one call.
    builder.max_random_size(MAX_RANDOM_BYTES);
    if let Some(clock) = clock {
        builder.wall_clock(ManualWallClock(clock.clone()));
    }
    builder
}

/// Why a plugin file could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct LoadError {
    /// The plugin file.
    pub file: PathBuf,
    /// The reason, with its causes.
    pub message: String,
}

/// Why one hook call failed. The instance that failed has been dropped.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} ({hash}): {message}")]
pub struct CallError {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// The plugin file's content hash.
    pub hash: String,
    /// How the call failed.
    pub kind: FailureKind,
    /// The trap or limit, with its causes.
    pub message: String,
    /// The request or response lent to the call could not be taken back: there is nothing
    /// left to send on, so the chain fails even for a `fail_open` plugin.
    pub lost_view: bool,
}

impl CallError {
    /// Whether the plugin was not called for want of room (all its instances busy, or its
    /// breaker open): the route is unavailable (503), not failed (500).
    pub fn unavailable(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Overloaded | FailureKind::BreakerOpen
        )
    }
}

/// How a failed call failed: the epoch deadline interrupts it; the memory cap fails a
/// `memory.grow` with the limiter's error (`trap_on_grow_failure`); a call that hands weir
/// more than its host-call fuel ([`PluginSettings::hostcall_fuel`]) is output past weir's
/// bounds, refused before it is all copied. wasmtime reports the last two by their messages
/// only. Anything else is a trap.
pub(super) fn failure_kind(error: &wasmtime::Error) -> FailureKind {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return FailureKind::Deadline;
    }
    for cause in error.chain() {
        let message = cause.to_string();
        if message.contains("when growing memory") {
            return FailureKind::Memory;
        }
        if message.contains("fuel allocated for hostcalls has been exhausted") {
            return FailureKind::InvalidOutput;
        }
    }
    FailureKind::Trap
}

/// Compiles `wasm` (or reads it from the cache) on a thread of its own that ends with the
/// work, off the request path. Not tokio's blocking pool: the allocator (mimalloc) gives back
/// what a thread freed when the thread exits or allocates again, and a pooled thread would sit
/// idle holding the compiler's freed buffers, megabytes per plugin (BENCHMARKS.md, memory per
/// plugin). A thread costs tens of microseconds against milliseconds of compiling.
async fn compile(engine: Engine, wasm: Vec<u8>) -> wasmtime::Result<wasmtime::Result<Component>> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weir-compile".into())
        .spawn(move || {
            let _ = sender.send(Component::new(&engine, &wasm));
        })
        .context("cannot start a compiler thread")?;
    receiver
        .await
        .map_err(|_| wasmtime::Error::msg("the compiler thread failed"))
}

/// Whether an instance that has served its `uses`-th call (or request) well may serve again:
/// not once it has served `max_uses`, nor once its memory has outgrown it
/// ([`memory::Limits::keeps_after`]). Why it may not is counted in `retired`. Filters and
/// reused handlers alike decide here; a reused handler is first checked for what it kept of
/// its request (`handler::reusable`, counted as `held_resources` there).
fn serves_again(
    limits: &mut memory::Limits,
    uses: u32,
    max_uses: u32,
    retired: &crate::metrics::Retirements,
    plugin: &str,
) -> bool {
    if !limits.keeps_after(uses) {
        tracing::debug!(plugin, "instance retired: its memory keeps growing");
        retired.outgrown.inc();
        return false;
    }
    if uses >= max_uses {
        retired.used_up.inc();
        return false;
    }
    true
}

/// `10-auth.wasm` → `auth`: the file stem without a numeric ordering prefix.
pub fn plugin_name(file: &Path) -> &str {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    match stem.split_once('-') {
        Some((prefix, rest))
            if !prefix.is_empty()
                && prefix.bytes().all(|b| b.is_ascii_digit())
                && !rest.is_empty() =>
        {
            rest
        }
        _ => stem,
    }
}

fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
