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
mod host_api;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::error::Context;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};

use self::bindings::{Filter, FilterPre, types};
use self::host_api::kv::KvStore;
use self::state::PluginState;

pub use self::bindings::types::{
    HeaderOp, LocalResponse, RequestAction, RequestChanges, RequestHead, ResponseAction,
    ResponseHead,
};

/// How often the epoch advances; per-call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Idle instances kept per plugin; more are dropped when returned.
const MAX_IDLE_INSTANCES: usize = 64;
/// Instance slots in the pooling allocator, across all plugins.
const POOL_INSTANCES: u32 = 512;
/// The largest linear memory a pool slot holds, so the most `memory_limit_mb` may ask for.
const MAX_MEMORY_LIMIT: usize = 256 << 20;

/// Per-plugin limits and failure policy, from `NAME.toml`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// On a trap or limit, skip the plugin instead of answering 500.
    pub fail_open: bool,
    /// CPU time one hook call may take.
    pub deadline: Duration,
    /// Linear memory one instance may grow to.
    pub memory_limit: usize,
    /// Hook calls an instance serves before it is replaced by a fresh one.
    pub max_uses: u32,
}

impl Default for PluginSettings {
    fn default() -> PluginSettings {
        PluginSettings {
            fail_open: false,
            deadline: Duration::from_millis(50),
            memory_limit: 64 << 20,
            max_uses: 10_000,
        }
    }
}

/// The process's one wasmtime engine and linker, and the state shared by all plugins.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<PluginState>,
    kv: Arc<KvStore>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new() -> wasmtime::Result<PluginRuntime> {
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
        let engine = Engine::new(&config).context("cannot create the wasm engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("cannot link WASI")?;
        Filter::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .context("cannot link weir:plugin")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .context("cannot start the epoch thread")?;
        Ok(PluginRuntime {
            engine,
            linker,
            kv: Arc::new(KvStore::default()),
            ticker_stop,
        })
    }

    /// Compiles, links and configures the plugin in `file`. `NAME.toml` beside it (same
    /// stem) holds its settings and its `[config]`. Compiling is slow and blocks the thread:
    /// call off the request path.
    pub async fn load(&self, file: &Path) -> Result<Plugin, LoadError> {
        let fail = |e: wasmtime::Error| LoadError {
            file: file.to_owned(),
            message: format!("{e:#}"),
        };
        let bytes = std::fs::read(file).map_err(|e| fail(e.into()))?;
        let (settings, config_json) = read_settings(&file.with_extension("toml")).map_err(fail)?;
        let hash = content_hash(&bytes);
        let component = Component::new(&self.engine, &bytes)
            .context("not a valid wasm component")
            .map_err(fail)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .context("the component imports something weir does not grant (only weir:plugin@0.1.0 log and kv, and WASI clocks and random, are available)")
            .map_err(fail)?;
        let pre = FilterPre::new(pre)
            .context("the component does not export weir:plugin/http-filter@0.1.0")
            .map_err(fail)?;
        let mut plugin = Plugin {
            name: plugin_name(file).into(),
            file: file.to_owned(),
            hash,
            hooks: types::HookSet::empty(),
            settings,
            config_json,
            kv: self.kv.clone(),
            pre,
            idle: Mutex::new(Vec::new()),
        };
        // The first instance answers `hooks` and proves the config is accepted; it then
        // becomes the first idle instance.
        let mut instance = plugin.instantiate().await.map_err(|e| fail(e.into()))?;
        plugin.hooks = instance
            .filter
            .weir_plugin_http_filter()
            .call_hooks(&mut instance.store)
            .await
            .context("hooks() failed")
            .map_err(fail)?;
        plugin.checkin(instance);
        Ok(plugin)
    }

    /// Loads every `*.wasm` in `dir`, in file-name order. A file that fails to load is
    /// returned as an error with its name, so routes that need it can refuse traffic. Two
    /// files with one plugin name (`10-auth.wasm`, `20-auth.wasm`): the second is refused.
    pub async fn load_dir(&self, dir: &Path) -> Vec<(String, Result<Arc<Plugin>, LoadError>)> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugin folder");
                Vec::new()
            }
        };
        files.sort();
        let mut loaded: Vec<(String, Result<Arc<Plugin>, LoadError>)> = Vec::new();
        for file in files {
            let name = plugin_name(&file).to_owned();
            let taken = loaded
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, first)| match first {
                    Ok(plugin) => plugin.file.display().to_string(),
                    Err(e) => e.file.display().to_string(),
                });
            let result = match taken {
                Some(by) => Err(LoadError {
                    message: format!("plugin name {name:?} is already taken by {by}"),
                    file,
                }),
                None => self.load(&file).await.map(Arc::new),
            };
            loaded.push((name, result));
        }
        loaded
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
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
    #[serde(default)]
    config: toml::Table,
}

fn read_settings(path: &Path) -> wasmtime::Result<(PluginSettings, String)> {
    let file: SettingsFile = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SettingsFile::default(),
        Err(e) => return Err(wasmtime::Error::new(e).context(path.display().to_string())),
    };
    let mut settings = PluginSettings::default();
    if let Some(v) = file.fail_open {
        settings.fail_open = v;
    }
    if let Some(v) = file.deadline {
        settings.deadline = humantime::parse_duration(&v)
            .with_context(|| format!("{}: deadline {v:?}", path.display()))?;
    }
    if let Some(mb) = file.memory_limit_mb {
        if mb == 0 || mb > MAX_MEMORY_LIMIT >> 20 {
            wasmtime::bail!(
                "{}: memory_limit_mb = {mb}: must be between 1 and {}",
                path.display(),
                MAX_MEMORY_LIMIT >> 20
            );
        }
        settings.memory_limit = mb << 20;
    }
    if let Some(n) = file.max_uses {
        settings.max_uses = n.max(1);
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
    /// Limits and failure policy.
    pub settings: PluginSettings,
    config_json: String,
    kv: Arc<KvStore>,
    pre: FilterPre<PluginState>,
    idle: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

struct Instance {
    store: Store<PluginState>,
    filter: Filter,
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

    /// A fresh, configured instance.
    async fn instantiate(&self) -> Result<Instance, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            PluginState::new(self.name.clone(), self.kv.clone(), limits),
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let filter = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.error(format_args!("{e:#}")))?;
        match filter
            .weir_plugin_http_filter()
            .call_configure(&mut store, &self.config_json)
            .await
        {
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

    /// Calls `on-request` under the plugin's deadline.
    pub async fn on_request(&self, request: &RequestHead) -> Result<RequestAction, CallError> {
        let mut instance = self.checkout(&request.request_id).await?;
        let result = instance
            .filter
            .weir_plugin_http_filter()
            .call_on_request(&mut instance.store, request)
            .await;
        self.finish(instance, result)
    }

    /// Calls `on-response` under the plugin's deadline.
    pub async fn on_response(
        &self,
        request: &RequestHead,
        response: &ResponseHead,
    ) -> Result<ResponseAction, CallError> {
        let mut instance = self.checkout(&request.request_id).await?;
        let result = instance
            .filter
            .weir_plugin_http_filter()
            .call_on_response(&mut instance.store, request, response)
            .await;
        self.finish(instance, result)
    }
}
