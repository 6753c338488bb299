//! The plugin runtime: the only module that knows wasmtime. It compiles filter components,
//! checks them against the `weir:plugin` contract, configures them, and calls their hooks
//! with limits.
//!
//! Lifecycle (Spin's and wasmtime's pattern):
//! - [`PluginRuntime::new`] builds the one `Engine` (pooling allocator, epoch interruption)
//!   and `Linker` (WASI with nothing granted, plus `log` and `kv`), once per process;
//! - [`PluginRuntime::load`] compiles a file, builds its `InstancePre`, asks which hooks it
//!   implements and checks its config with `configure`, before it may see traffic;
//! - each hook call checks an instance out of the plugin's pool (creating and configuring
//!   one if none is idle), runs the hook on a fiber awaited by the request's task, and puts
//!   the instance back afterwards. A request that is dropped mid-call drops its instance.
//!
//! What persists between requests: an instance is reused for up to `max_uses` hook calls, so
//! a plugin's own globals (statics, heap) live on between the calls that instance serves.
//! Everything the host passes — request and response heads — is passed per call and never
//! kept. An instance that traps, hits its deadline or its memory cap is dropped, never reused.

mod bindings;
pub mod chain;
mod compat;
pub mod handler;
mod host_api;
mod state;
pub mod view;

use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::response;
use serde::Deserialize;
use wasmtime::component::{Component, HasSelf, Linker, Resource};
use wasmtime::error::Context;
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    ProfilingStrategy, Store, StoreLimitsBuilder,
};

use self::bindings::{Filter, FilterPre, types, v0_1, v0_2};
use self::handler::{Handler, HandlerBody, HandlerState, Outbound};
use self::host_api::kv::{KvBackend, MemoryKv};
use self::state::PluginState;
use self::view::{RequestView, ResponseView};
use crate::config::{MAX_PLUGIN_MEMORY_MB, PluginLimits};

pub use self::bindings::types::{
    BodyAction, BodyChanges, HeaderOp, LocalResponse, RequestAction, RequestChanges, RequestHead,
    ResponseAction, ResponseHead,
};

/// How often the epoch advances; per-call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// How long the epoch thread sleeps at a time while no plugin is loaded (a load wakes it
/// at once).
const TICKER_IDLE: Duration = Duration::from_secs(1);
/// Idle instances kept per plugin; more are dropped when returned.
const MAX_IDLE_INSTANCES: usize = 64;
/// Instance slots in the pooling allocator, across all plugins.
const POOL_INSTANCES: u32 = 512;
/// The largest linear memory a pool slot holds, so the most `memory_limit_mb` may ask for.
const MAX_MEMORY_LIMIT: usize = MAX_PLUGIN_MEMORY_MB << 20;
/// The largest body a body hook sees unless the plugin's `max_body_bytes` says otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Per-plugin limits and failure policy: the global [`PluginLimits`], overridden by the
/// plugin's own `NAME.toml`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// On a trap or limit, skip the plugin instead of answering 500.
    pub fail_open: bool,
    /// CPU time one hook call may take.
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_limit: usize,
    /// Hook calls an instance serves before it is replaced by a fresh one.
    pub max_uses: u32,
    /// The largest body its body hooks are given.
    pub max_body_bytes: usize,
    /// For a handler: the clusters its outgoing requests may reach.
    pub clusters: Vec<String>,
}

impl PluginSettings {
    fn from_limits(limits: &PluginLimits) -> PluginSettings {
        PluginSettings {
            fail_open: false,
            deadline: limits.deadline,
            memory_limit: limits.memory_limit_mb << 20,
            max_uses: limits.max_uses,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            clusters: Vec::new(),
        }
    }
}

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

/// The process's one wasmtime engine and linker, and the state shared by all plugins.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<PluginState>,
    handler_linker: Linker<HandlerState>,
    kv: Arc<dyn KvBackend>,
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
        Filter::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .context("cannot link weir:plugin")?;
        // Older minors keep loading: their imports are linked under their own versions.
        // 0.2.0's types are the current ones, so its `types` instance declares nothing new.
        v0_2::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .context("cannot link weir:plugin/log@0.2.0")?;
        v0_2::kv::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .context("cannot link weir:plugin/kv@0.2.0")?;
        linker
            .instance("weir:plugin/types@0.2.0")
            .context("cannot link weir:plugin/types@0.2.0")?;
        v0_1::Filter::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .context("cannot link weir:plugin@0.1.0")?;

        let handler_linker = handler::linker(&engine).context("cannot link wasi:http")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let loaded = Arc::new(());
        let (ticker_engine, stop) = (engine.clone(), ticker_stop.clone());
        let plugins = Arc::downgrade(&loaded);
        let ticker = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Only the runtime's own reference: no plugin, so no deadline to count.
                    if plugins.strong_count() <= 1 {
                        std::thread::park_timeout(TICKER_IDLE);
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
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
            kv: Arc::new(MemoryKv::default()),
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

    /// Stores `value` at `key` in `plugin`'s namespace of the shared `kv`, as the plugin's
    /// own `kv.set` would (for seeding a test).
    pub fn kv_set(&self, plugin: &str, key: &str, value: Vec<u8>) {
        if let Err(e) = self
            .kv
            .set(host_api::kv::namespaced(plugin, key), value, None)
        {
            tracing::warn!(plugin, key, error = ?e, "cannot seed kv");
        }
    }

    /// The value at `key` in `plugin`'s namespace of the shared `kv`, if any.
    pub fn kv_get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        self.kv
            .get(&host_api::kv::namespaced(plugin, key))
            .ok()
            .flatten()
    }

    /// Compiles, links and configures a plugin; `limits` are the defaults its `NAME.toml`
    /// may override. Compiling runs on a blocking thread, off the request path.
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
            Some((path, text)) => read_settings(path, text, limits).map_err(fail)?,
            None => (PluginSettings::from_limits(limits), "{}".to_owned()),
        };
        let hash = content_hash(&source.wasm);
        // From here guest code may run (`configure`, `hooks`): the epoch must advance.
        let ticking = self.loaded.clone();
        self.ticker.unpark();
        let started = tokio::time::Instant::now();
        let hits_before = self.cache.as_ref().map(Cache::cache_hits);
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &source.wasm))
            .await
            .map_err(|e| {
                fail(wasmtime::Error::msg(format!(
                    "the compiler thread failed: {e}"
                )))
            })?
            .context("not a valid wasm component")
            .map_err(fail)?;
        let from_cache = match (hits_before, self.cache.as_ref()) {
            (Some(before), Some(cache)) => cache.cache_hits() > before,
            _ => false,
        };
        let compile_time = started.elapsed();
        if handler::is_handler(&component, &self.engine) {
            let pre = self
                .handler_linker
                .instantiate_pre(&component)
                .context("the handler imports something weir does not grant (wasi:http, and WASI clocks, random and environment, are available)")
                .map_err(fail)?;
            let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre)
                .context("not a wasi:http proxy component")
                .map_err(fail)?;
            let granted = settings.clusters.clone().into();
            return Ok(Plugin {
                name: plugin_name(&file).into(),
                file,
                hash,
                hooks: types::HookSet::empty(),
                body_hooks: types::BodyHookSet::empty(),
                settings,
                config_json,
                kv: self.kv.clone(),
                clock: self.clock.clone(),
                pre: Pre::Handler(Handler {
                    pre,
                    granted,
                    ticking: ticking.clone(),
                }),
                idle: Mutex::new(Vec::new()),
                loaded_at: SystemTime::now(),
                compile_time,
                from_cache,
                _ticking: ticking,
            });
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .context("the component imports something weir does not grant (only weir:plugin log and kv, and WASI clocks and random, are available)")
            .map_err(fail)?;
        let pre = match FilterPre::new(pre.clone()) {
            Ok(current) => Pre::Current(current, current_patch(&component, &self.engine)),
            Err(current_error) => match v0_2::FilterPre::new(pre.clone()) {
                Ok(old) => Pre::V0_2(old),
                Err(_) => match v0_1::FilterPre::new(pre) {
                    Ok(old) => Pre::V0_1(old),
                    Err(_) => {
                        return Err(fail(current_error.context(
                            "the component does not export weir:plugin/http-filter (0.3.x, 0.2.0 or 0.1.0)",
                        )));
                    }
                },
            },
        };
        let mut plugin = Plugin {
            name: plugin_name(&file).into(),
            file: file.clone(),
            hash,
            hooks: types::HookSet::empty(),
            body_hooks: types::BodyHookSet::empty(),
            settings,
            config_json,
            kv: self.kv.clone(),
            clock: self.clock.clone(),
            pre,
            idle: Mutex::new(Vec::new()),
            loaded_at: SystemTime::now(),
            compile_time,
            from_cache,
            _ticking: ticking,
        };
        // The first instance answers `hooks` and proves the config is accepted; it then
        // becomes the first idle instance.
        let mut instance = plugin.instantiate().await.map_err(|e| fail(e.into()))?;
        let store = &mut instance.store;
        let (hooks, body_hooks) = match &instance.filter {
            Guest::Current(filter) => {
                let exports = filter.weir_plugin_http_filter();
                let hooks = exports.call_hooks(&mut *store).await;
                let hooks = hooks.context("hooks() failed").map_err(fail)?;
                let body = exports.call_body_hooks(&mut *store).await;
                (hooks, body.context("body-hooks() failed").map_err(fail)?)
            }
            Guest::V0_2(filter) => {
                let exports = filter.weir_plugin_http_filter();
                let hooks = exports.call_hooks(&mut *store).await;
                let hooks = hooks.context("hooks() failed").map_err(fail)?;
                let body = exports.call_body_hooks(&mut *store).await;
                (hooks, body.context("body-hooks() failed").map_err(fail)?)
            }
            Guest::V0_1(filter) => {
                let hooks = filter.weir_plugin_http_filter().call_hooks(store).await;
                let hooks = hooks.context("hooks() failed").map_err(fail)?;
                (compat::hook_set(hooks), types::BodyHookSet::empty())
            }
        };
        plugin.hooks = hooks;
        plugin.body_hooks = body_hooks;
        plugin.checkin(instance);
        Ok(plugin)
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

/// WASI for a plugin instance: nothing granted, and the runtime's clock if it has one.
fn wasi_builder(clock: Option<&Arc<ManualClock>>) -> wasmtime_wasi::WasiCtxBuilder {
    // The builder's defaults grant nothing: no preopens, no env, stdio closed, every socket
    // address denied, no name lookup.
    let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
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
    /// The trap or limit, with its causes.
    pub message: String,
    /// The request or response lent to the call could not be taken back: there is nothing
    /// left to send on, so the chain fails even for a `fail_open` plugin.
    pub lost_view: bool,
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

/// `NAME.toml`: host settings at the top level, the plugin's own config under `[config]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    fail_open: Option<bool>,
    deadline: Option<String>,
    memory_limit_mb: Option<usize>,
    max_uses: Option<u32>,
    max_body_bytes: Option<usize>,
    clusters: Option<Vec<String>>,
    #[serde(default)]
    config: toml::Table,
}

fn read_settings(
    path: &Path,
    text: &str,
    limits: &PluginLimits,
) -> wasmtime::Result<(PluginSettings, String)> {
    let file: SettingsFile = toml::from_str(text).with_context(|| format!("{}", path.display()))?;
    let mut settings = PluginSettings::from_limits(limits);
    if let Some(v) = file.fail_open {
        settings.fail_open = v;
    }
    if let Some(v) = file.deadline {
        settings.deadline = humantime::parse_duration(&v)
            .with_context(|| format!("{}: deadline {v:?}", path.display()))?;
    }
    if let Some(mb) = file.memory_limit_mb {
        if !(1..=MAX_PLUGIN_MEMORY_MB).contains(&mb) {
            wasmtime::bail!(
                "{}: memory_limit_mb = {mb}: must be between 1 and {MAX_PLUGIN_MEMORY_MB}",
                path.display(),
            );
        }
        settings.memory_limit = mb << 20;
    }
    if let Some(n) = file.max_uses {
        settings.max_uses = n.max(1);
    }
    if let Some(n) = file.max_body_bytes {
        settings.max_body_bytes = n;
    }
    if let Some(clusters) = file.clusters {
        settings.clusters = clusters;
    }
    Ok((settings, serde_json::to_string(&file.config)?))
}

/// A loaded, configured plugin and its pool of idle instances.
pub struct Plugin {
    /// The plugin's name (file stem without ordering prefix).
    pub name: Arc<str>,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Content hash of the file (first 8 bytes of SHA-256, hex).
    pub hash: String,
    hooks: types::HookSet,
    body_hooks: types::BodyHookSet,
    /// Limits and failure policy.
    pub settings: PluginSettings,
    config_json: String,
    kv: Arc<dyn KvBackend>,
    clock: Option<Arc<ManualClock>>,
    pre: Pre,
    idle: Mutex<Vec<Instance>>,
    /// When this version finished loading.
    pub loaded_at: SystemTime,
    /// How long compiling (or reading from the cache) took.
    pub compile_time: Duration,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// Keeps the epoch thread ticking while this plugin exists (see `PluginRuntime`).
    _ticking: Arc<()>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Which 0.3.x `weir:plugin/http-filter` a component exports: "0.3.0" for a plugin built
/// before 0.3.1, else the current "0.3.1".
fn current_patch(component: &Component, engine: &wasmtime::Engine) -> &'static str {
    let old = component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name == "weir:plugin/http-filter@0.3.0");
    if old { "0.3.0" } else { "0.3.1" }
}

/// A plugin's linked component, by the contract version it was built against.
enum Pre {
    /// 0.3.x: the current contract, or a plugin built against an earlier patch of it
    /// (served by semver-compatible linking); the version it names is kept for reports.
    Current(FilterPre<PluginState>, &'static str),
    V0_2(v0_2::FilterPre<PluginState>),
    V0_1(v0_1::FilterPre<PluginState>),
    Handler(Handler),
}

/// An instance's exports, by contract version.
enum Guest {
    Current(Filter),
    V0_2(v0_2::Filter),
    V0_1(v0_1::Filter),
}

struct Instance {
    store: Store<PluginState>,
    filter: Guest,
    uses: u32,
}

impl Plugin {
    /// Whether the plugin implements `on-request`.
    pub fn has_on_request(&self) -> bool {
        self.hooks.contains(types::HookSet::ON_REQUEST)
    }

    /// Whether the plugin implements `on-response`.
    pub fn has_on_response(&self) -> bool {
        self.hooks.contains(types::HookSet::ON_RESPONSE)
    }

    /// Whether the plugin implements `on-request-body`.
    pub fn has_on_request_body(&self) -> bool {
        self.body_hooks
            .contains(types::BodyHookSet::ON_REQUEST_BODY)
    }

    /// Whether the plugin implements `on-response-body`.
    pub fn has_on_response_body(&self) -> bool {
        self.body_hooks
            .contains(types::BodyHookSet::ON_RESPONSE_BODY)
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

    fn engine(&self) -> &Engine {
        match &self.pre {
            Pre::Current(pre, _) => pre.engine(),
            Pre::V0_2(pre) => pre.engine(),
            Pre::V0_1(pre) => pre.engine(),
            Pre::Handler(handler) => handler.pre.engine(),
        }
    }

    /// Whether the plugin is a `wasi:http` handler rather than a filter.
    pub fn is_handler(&self) -> bool {
        matches!(self.pre, Pre::Handler(_))
    }

    /// Runs a handler plugin for one request; `outbound` sends its sub-requests.
    pub async fn handle(
        &self,
        request: http::Request<HandlerBody>,
        outbound: Arc<dyn Outbound>,
    ) -> Result<http::Response<bytes::Bytes>, CallError> {
        let Pre::Handler(handler) = &self.pre else {
            return Err(self.error(format_args!("a filter cannot answer a route by itself")));
        };
        let call = handler::CallContext {
            config_json: &self.config_json,
            memory_limit: self.settings.memory_limit,
            deadline: self.settings.deadline,
            outbound,
            clock: self.clock.clone(),
        };
        handler
            .handle(request, call, |why| self.error(format_args!("{why}")))
            .await
    }

    /// The `weir:plugin` version the plugin was built against.
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Pre::Current(_, version) => version,
            Pre::V0_2(_) => "0.2.0",
            Pre::V0_1(_) => "0.1.0",
            Pre::Handler(_) => "wasi:http@0.2",
        }
    }

    /// A fresh, configured instance.
    async fn instantiate(&self) -> Result<Instance, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            self.engine(),
            PluginState::new(
                self.name.clone(),
                self.kv.clone(),
                limits,
                self.clock.clone(),
            ),
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let instantiated = match &self.pre {
            Pre::Current(pre, _) => pre.instantiate_async(&mut store).await.map(Guest::Current),
            Pre::V0_2(pre) => pre.instantiate_async(&mut store).await.map(Guest::V0_2),
            Pre::V0_1(pre) => pre.instantiate_async(&mut store).await.map(Guest::V0_1),
            Pre::Handler(_) => {
                return Err(self.error(format_args!("a handler has no filter hooks")));
            }
        };
        let filter = instantiated.map_err(|e| self.error(format_args!("{e:#}")))?;
        let configured = match &filter {
            Guest::Current(f) => {
                let exports = f.weir_plugin_http_filter();
                exports.call_configure(&mut store, &self.config_json).await
            }
            Guest::V0_2(f) => {
                let exports = f.weir_plugin_http_filter();
                exports.call_configure(&mut store, &self.config_json).await
            }
            Guest::V0_1(f) => {
                let exports = f.weir_plugin_http_filter();
                exports.call_configure(&mut store, &self.config_json).await
            }
        };
        match configured {
            Ok(Ok(())) => Ok(Instance {
                store,
                filter,
                uses: 0,
            }),
            Ok(Err(rejected)) => {
                Err(self.error(format_args!("configuration rejected: {rejected}")))
            }
            Err(e) => Err(self.error(format_args!("{e:#}"))),
        }
    }

    fn deadline_ticks(&self) -> u64 {
        (self.settings.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    fn error(&self, message: std::fmt::Arguments<'_>) -> CallError {
        CallError {
            plugin: self.name.clone(),
            hash: self.hash.clone(),
            message: message.to_string(),
            lost_view: false,
        }
    }

    /// A failure that lost a lent view (see [`CallError::lost_view`]).
    fn lost_view(&self, message: std::fmt::Arguments<'_>) -> CallError {
        CallError {
            lost_view: true,
            ..self.error(message)
        }
    }

    /// An instance ready for one hook call for `request_id`: idle if one is, else fresh.
    async fn checkout(&self, request_id: &str) -> Result<Instance, CallError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate().await?,
        };
        instance.uses += 1;
        let state = instance.store.data_mut();
        state.request_id.clear();
        state.request_id.push_str(request_id);
        instance.store.set_epoch_deadline(self.deadline_ticks());
        Ok(instance)
    }

    fn checkin(&self, instance: Instance) {
        if instance.uses < self.settings.max_uses
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            idle.push(instance);
        }
    }

    /// Returns a healthy instance to the pool; one whose call failed is dropped instead.
    fn finish<R>(&self, instance: Instance, result: wasmtime::Result<R>) -> Result<R, CallError> {
        match result {
            Ok(value) => {
                self.checkin(instance);
                Ok(value)
            }
            Err(e) => Err(self.error(format_args!("{e:#}"))),
        }
    }

    /// Calls `on-request` under the plugin's deadline. A 0.3.x plugin reads `request`
    /// through a handle (`on-request-lazy`); the view is lent to its store for the call and
    /// is back in `request` when this returns, whatever the call did. Older plugins are
    /// given the request's WIT record. Returns the action and the response header changes
    /// the call left (`add-response-header-ops`, 0.3.1): they are taken out of the view
    /// here, so the view holds none between calls.
    pub async fn on_request(
        &self,
        request: &mut RequestView,
    ) -> Result<(RequestAction, Vec<HeaderOp>), CallError> {
        let mut instance = self.checkout(request.request_id()).await?;
        let store = &mut instance.store;
        let result = match &instance.filter {
            Guest::Current(f) => {
                let exports = f.weir_plugin_http_filter();
                let lent = self.lend(store, mem::replace(request, RequestView::placeholder()))?;
                let borrowed = Resource::new_borrow(lent.rep());
                let action = exports.call_on_request_lazy(&mut *store, borrowed).await;
                *request = self.take_back(store, lent)?;
                let left = request.take_leaving();
                action.map(|action| (action, left))
            }
            Guest::V0_2(f) => {
                let exports = f.weir_plugin_http_filter();
                let action = exports.call_on_request(store, &request.record()).await;
                action.map(|action| (action, Vec::new()))
            }
            Guest::V0_1(f) => {
                let exports = f.weir_plugin_http_filter();
                let old = compat::request_head(request.record());
                let action = exports.call_on_request(store, &old).await;
                action.map(|action| (compat::request_action(action), Vec::new()))
            }
        };
        self.finish(instance, result)
    }

    /// Calls `on-request-body` under the plugin's deadline. Only plugins that declared it
    /// (so only 0.2.0 and later) are called; they take the request's WIT record.
    pub async fn on_request_body(
        &self,
        request: &RequestView,
        body: &[u8],
    ) -> Result<BodyAction, CallError> {
        let mut instance = self.checkout(request.request_id()).await?;
        let store = &mut instance.store;
        let head = request.record();
        let result = match &instance.filter {
            Guest::Current(f) => {
                let exports = f.weir_plugin_http_filter();
                exports.call_on_request_body(store, &head, body).await
            }
            Guest::V0_2(f) => {
                let exports = f.weir_plugin_http_filter();
                exports.call_on_request_body(store, &head, body).await
            }
            Guest::V0_1(_) => Ok(unchanged_body()),
        };
        self.finish(instance, result)
    }

    /// Calls `on-response-body` under the plugin's deadline, with both WIT records.
    pub async fn on_response_body(
        &self,
        request: &RequestView,
        response: &response::Parts,
        body: &[u8],
    ) -> Result<BodyAction, CallError> {
        let mut instance = self.checkout(request.request_id()).await?;
        let store = &mut instance.store;
        let head = request.record();
        let response = view::response_record(response.status, &response.headers);
        let result = match &instance.filter {
            Guest::Current(f) => {
                let exports = f.weir_plugin_http_filter();
                exports
                    .call_on_response_body(store, &head, &response, body)
                    .await
            }
            Guest::V0_2(f) => {
                let exports = f.weir_plugin_http_filter();
                exports
                    .call_on_response_body(store, &head, &response, body)
                    .await
            }
            Guest::V0_1(_) => Ok(unchanged_body()),
        };
        self.finish(instance, result)
    }

    /// Calls `on-response` under the plugin's deadline; a 0.3.x plugin reads both heads
    /// through handles, as in [`Plugin::on_request`] (the response's headers are moved out
    /// of `response` for the call and back). Also returns the response header changes the
    /// call left through its `request` handle.
    pub async fn on_response(
        &self,
        request: &mut RequestView,
        response: &mut response::Parts,
    ) -> Result<(ResponseAction, Vec<HeaderOp>), CallError> {
        let mut instance = self.checkout(request.request_id()).await?;
        let store = &mut instance.store;
        let result = match &instance.filter {
            Guest::Current(f) => {
                let exports = f.weir_plugin_http_filter();
                let lent_request =
                    self.lend(store, mem::replace(request, RequestView::placeholder()))?;
                let view = ResponseView {
                    status: response.status,
                    headers: mem::take(&mut response.headers),
                };
                let lent_response = match self.lend(store, view) {
                    Ok(lent) => lent,
                    Err(e) => {
                        *request = self.take_back(store, lent_request)?;
                        return Err(e);
                    }
                };
                let action = exports
                    .call_on_response_lazy(
                        &mut *store,
                        Resource::new_borrow(lent_request.rep()),
                        Resource::new_borrow(lent_response.rep()),
                    )
                    .await;
                response.headers = self.take_back(store, lent_response)?.headers;
                *request = self.take_back(store, lent_request)?;
                let left = request.take_leaving();
                action.map(|action| (action, left))
            }
            Guest::V0_2(f) => {
                let exports = f.weir_plugin_http_filter();
                let head = view::response_record(response.status, &response.headers);
                let action = exports
                    .call_on_response(store, &request.record(), &head)
                    .await;
                action.map(|action| (action, Vec::new()))
            }
            Guest::V0_1(f) => {
                let exports = f.weir_plugin_http_filter();
                let (request, response) = (
                    compat::request_head(request.record()),
                    compat::response_head(view::response_record(
                        response.status,
                        &response.headers,
                    )),
                );
                let action = exports.call_on_response(store, &request, &response).await;
                action.map(|action| (compat::response_action(action), Vec::new()))
            }
        };
        self.finish(instance, result)
    }

    /// Puts a view (moved out of the chain) into the store's resource table for one call.
    /// (Pushing fails only on a table of 2^32 entries; the view is then lost with the
    /// failed call, and the error says so.)
    fn lend<V: Send + 'static>(
        &self,
        store: &mut Store<PluginState>,
        view: V,
    ) -> Result<Resource<V>, CallError> {
        let table = &mut store.data_mut().table;
        table
            .push(view)
            .map_err(|e| self.lost_view(format_args!("cannot lend a view to the call: {e}")))
    }

    /// Takes a lent view back out of the table after the call.
    fn take_back<V: Send + 'static>(
        &self,
        store: &mut Store<PluginState>,
        lent: Resource<V>,
    ) -> Result<V, CallError> {
        let table = &mut store.data_mut().table;
        table
            .delete(lent)
            .map_err(|e| self.lost_view(format_args!("cannot take back a lent view: {e}")))
    }
}

fn unchanged_body() -> BodyAction {
    BodyAction::Continue(BodyChanges {
        headers: Vec::new(),
        body: None,
    })
}
