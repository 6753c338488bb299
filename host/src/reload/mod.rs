//! Hot reload: rescans the plugin folder and the config file, loads what changed off the
//! request path, and swaps in a new [`Generation`] atomically.
//!
//! One task owns the [`Reloader`] and runs every rescan in turn, whether a file watch, a
//! `POST /reload`, a SIGHUP or startup asked for it. A rescan:
//! 1. re-reads the config file; a bad edit, or one that changes what only a restart can
//!    (listeners, admin, server, plugin folder or cache), is refused with its reasons and the
//!    running config stays;
//! 2. lists `*.wasm` in the plugin folder in file-name order and fingerprints each file with
//!    its `NAME.toml` (SHA-256 of both, and the limits they get);
//! 3. loads only what changed. A file whose new contents fail keeps serving its previous
//!    version; a file that never loaded is left out; a deleted file is gone;
//! 4. if anything changed, builds the next generation from the previous one and stores it.
//!
//! Startup is the same rescan with one difference: any failure stops weir from starting, so
//! it never comes up without a plugin the operator put in the folder.

mod tls;
mod watch;

pub(crate) use self::tls::TlsMaterial;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Config, PluginLimits};
use crate::generation::{Generation, Observers, PluginSlot};
use crate::metrics::metrics;
use crate::plugin::{PluginRuntime, PluginSource, plugin_name};
use crate::shutdown::Drain;
use crate::upstream::{Connector, Transports};

/// Quiet time after the last file event before a rescan starts: long enough for a copy that
/// arrives in several writes, or an editor's write-then-rename, to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A stream of events that never goes quiet still gets a rescan this often.
const MAX_DEBOUNCE: Duration = Duration::from_millis(500);

/// What one rescan did, for logs and `POST /reload`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReloadReport {
    /// The generation serving after the rescan.
    pub generation: u64,
    /// Whether a new generation was stored.
    pub changed: bool,
    /// What was refused, one line each (file or config, and why).
    pub errors: Vec<String>,
}

/// Asks the reload task for a rescan and waits for its report. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ReloadHandle(mpsc::Sender<oneshot::Sender<ReloadReport>>);

impl ReloadHandle {
    /// Rescans now; `None` if weir is shutting down.
    pub(crate) async fn reload(&self) -> Option<ReloadReport> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        rx.await.ok()
    }
}

/// One plugin file as last scanned.
#[derive(Debug)]
struct Tracked {
    slot: PluginSlot,
    /// Fingerprint of the version in `slot.serving`.
    serving: Option<[u8; 32]>,
    /// Fingerprint of contents that failed, so the same bad bytes are not retried or logged
    /// again at every rescan.
    failed: Option<[u8; 32]>,
}

impl Tracked {
    /// A file seen but not (yet) loaded.
    fn unloaded(name: String, file: PathBuf) -> Tracked {
        Tracked {
            slot: PluginSlot {
                name,
                file,
                serving: None,
                since_generation: 0,
                last_error: None,
            },
            serving: None,
            failed: None,
        }
    }
}

/// The state of the plugin folder and config across rescans.
#[derive(Debug)]
pub(crate) struct Reloader {
    config_path: PathBuf,
    runtime: Arc<PluginRuntime>,
    /// How the generations' clusters reach their endpoints.
    connector: Arc<dyn Connector>,
    /// The TLS listeners' and clusters' certificates and keys.
    tls: TlsMaterial,
    config: Arc<Config>,
    tracked: Vec<Tracked>,
    /// Files refused for a plugin name another file has, so each is logged once.
    duplicates: Vec<PathBuf>,
    number: u64,
    /// The process's access log writer and tracer, if the config asked for them at startup.
    observers: Observers,
}

impl Reloader {
    /// Loads every plugin for `config` and builds generation 1. Any plugin that fails, or a
    /// route naming a plugin that is not in the folder, is an error: weir does not start
    /// without a plugin the operator expects.
    pub(crate) async fn start(
        config_path: PathBuf,
        config: Config,
        runtime: Arc<PluginRuntime>,
        connector: Arc<dyn Connector>,
        mut tls: TlsMaterial,
        observers: Observers,
    ) -> Result<(Reloader, Generation), Vec<String>> {
        let clusters = tls.clusters_for(&config).await?;
        tls.adopt(&clusters);
        let mut reloader = Reloader {
            config_path,
            runtime,
            connector,
            tls,
            config: Arc::new(config),
            tracked: Vec::new(),
            duplicates: Vec::new(),
            number: 0,
            observers,
        };
        let mut errors = reloader.rescan_plugins(&reloader.config.clone()).await;
        errors.extend(missing_plugins(&reloader.config, &reloader.tracked));
        if !errors.is_empty() {
            return Err(errors);
        }
        reloader.number = 1;
        for t in &mut reloader.tracked {
            t.slot.since_generation = 1;
        }
        let generation = Generation::build(
            1,
            reloader.config.clone(),
            reloader.slots(),
            None,
            &reloader.transports(),
            &reloader.observers,
        );
        Ok((reloader, generation))
    }

    /// Rescans the config file and plugin folder and stores a new generation if anything
    /// changed. Whatever is refused is logged and reported; the rest applies.
    pub(crate) async fn reload(&mut self, current: &ArcSwap<Generation>) -> ReloadReport {
        let report = self.rescan(current).await;
        metrics().reloaded(report.errors.is_empty());
        report
    }

    async fn rescan(&mut self, current: &ArcSwap<Generation>) -> ReloadReport {
        let mut errors = Vec::new();
        let config = match self.reread_config().await {
            Ok(Some(config)) => match self.tls.clusters_for(&config).await {
                Ok(clusters) => {
                    self.tls.adopt(&clusters);
                    config
                }
                Err(why) => {
                    let why = format!(
                        "{}: {}; nothing was applied",
                        self.config_path.display(),
                        why.join("; ")
                    );
                    tracing::error!(error = %why, "config reload refused; the running config stays");
                    errors.push(why);
                    self.config.clone()
                }
            },
            Ok(None) => self.config.clone(),
            Err(why) => {
                tracing::error!(file = %self.config_path.display(), error = %why, "config reload refused; the running config stays");
                errors.push(why);
                self.config.clone()
            }
        };
        errors.extend(self.tls.refresh().await);
        // The access log and the tracer are the process's, started with it: compared with
        // what they were started with, not with the last config read (a change put back is
        // no change).
        let running = current.load();
        if config.access_log.as_ref() != running.access_log.as_ref().map(|l| &l.config) {
            tracing::warn!("[access_log] changed: it applies at the next restart");
        }
        if config.tracing.as_ref() != running.tracing.as_ref().map(|t| &t.config) {
            tracing::warn!("[tracing] changed: it applies at the next restart");
        }
        drop(running);
        if config.kv != self.config.kv {
            tracing::warn!("[kv] changed: it applies at the next restart");
        }
        let before: Vec<Option<[u8; 32]>> = self.tracked.iter().map(|t| t.serving).collect();
        let names_before: Vec<String> = self.tracked.iter().map(|t| t.slot.name.clone()).collect();
        errors.extend(self.rescan_plugins(&config).await);

        let config_changed = !Arc::ptr_eq(&config, &self.config);
        let plugins_changed = before != self.tracked.iter().map(|t| t.serving).collect::<Vec<_>>()
            || names_before
                != self
                    .tracked
                    .iter()
                    .map(|t| t.slot.name.clone())
                    .collect::<Vec<_>>();
        let errors_changed = self
            .tracked
            .iter()
            .zip(current.load().plugins.iter())
            .any(|(t, s)| t.slot.last_error != s.last_error);
        if !(config_changed || plugins_changed || errors_changed) {
            return ReloadReport {
                generation: self.number,
                changed: false,
                errors,
            };
        }
        self.config = config;
        self.number += 1;
        for t in &mut self.tracked {
            if t.slot.serving.is_some() && t.slot.since_generation == 0 {
                t.slot.since_generation = self.number;
            }
        }
        let previous = current.load_full();
        let next = Generation::build(
            self.number,
            self.config.clone(),
            self.slots(),
            Some(&previous),
            &self.transports(),
            &self.observers,
        );
        current.store(Arc::new(next));
        tracing::info!(
            generation = self.number,
            config_changed,
            plugins = self
                .tracked
                .iter()
                .filter(|t| t.slot.serving.is_some())
                .count(),
            "new generation serving"
        );
        ReloadReport {
            generation: self.number,
            changed: true,
            errors,
        }
    }

    /// The connector and each TLS cluster's client, for a generation's clusters.
    fn transports(&self) -> Transports {
        let mut transports = Transports::plain(self.connector.clone());
        transports.tls = self.tls.clients();
        transports
    }

    fn slots(&self) -> Vec<PluginSlot> {
        self.tracked.iter().map(|t| t.slot.clone()).collect()
    }

    /// The config file, if it changed and is valid and applicable without a restart.
    async fn reread_config(&self) -> Result<Option<Arc<Config>>, String> {
        let path = self.config_path.clone();
        let config = off_runtime(move || config::load(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let old = &*self.config;
        if config == *old {
            return Ok(None);
        }
        let mut restart_only = Vec::new();
        if config.listeners != old.listeners {
            restart_only.push("[[listeners]]");
        }
        if config.admin != old.admin {
            restart_only.push("[admin]");
        }
        if config.server != old.server {
            restart_only.push("[server]");
        }
        if (
            &config.plugins.dir,
            config.plugins.watch,
            &config.plugins.cache_dir,
        ) != (&old.plugins.dir, old.plugins.watch, &old.plugins.cache_dir)
        {
            restart_only.push("plugins.dir, plugins.watch or plugins.cache_dir");
        }
        if !restart_only.is_empty() {
            return Err(format!(
                "{}: {} changed, which takes a restart; nothing was applied",
                self.config_path.display(),
                restart_only.join(", ")
            ));
        }
        let listed = self.tracked_after_listing(&config).await?;
        let missing = missing_plugins(&config, &listed);
        if !missing.is_empty() {
            return Err(format!(
                "{}: {}; nothing was applied",
                self.config_path.display(),
                missing.join("; ")
            ));
        }
        Ok(Some(Arc::new(config)))
    }

    /// Names of plugin files now in the folder, as slots, for checking a new config's routes.
    async fn tracked_after_listing(&self, config: &Config) -> Result<Vec<Tracked>, String> {
        let dir = config.plugins.dir.clone();
        let files = off_runtime(move || list_plugin_files(&dir))
            .await
            .and_then(|listed| listed)
            .map_err(|e| format!("{}: cannot list: {e}", config.plugins.dir.display()))?;
        Ok(files
            .into_iter()
            .map(|file| Tracked::unloaded(plugin_name(&file).to_owned(), file))
            .collect())
    }

    /// Brings `tracked` up to date with the folder; returns what was refused.
    async fn rescan_plugins(&mut self, config: &Config) -> Vec<String> {
        self.runtime
            .set_memory_budget(config.plugins.memory_budget_mb);
        let mut errors = Vec::new();
        let dir = config.plugins.dir.clone();
        let files = match off_runtime(move || list_plugin_files(&dir))
            .await
            .and_then(|listed| listed)
        {
            Ok(files) => files,
            Err(e) => {
                // Nothing is known about the folder: keep every plugin as it is.
                let why = format!("{}: cannot list: {e}", config.plugins.dir.display());
                tracing::error!(error = %why, "plugin rescan failed");
                return vec![why];
            }
        };
        let mut old = std::mem::take(&mut self.tracked);
        let mut next: Vec<Tracked> = Vec::new();
        let mut duplicates = Vec::new();
        for file in files {
            let name = plugin_name(&file).to_owned();
            if let Some(first) = next.iter().find(|t| t.slot.name == name) {
                let why = format!(
                    "{}: plugin name {name:?} is already taken by {}",
                    file.display(),
                    first.slot.file.display()
                );
                if !self.duplicates.contains(&file) {
                    tracing::error!(plugin = name, error = %why, "plugin rejected");
                }
                duplicates.push(file);
                errors.push(why);
                continue;
            }
            let previous = old
                .iter()
                .position(|t| t.slot.name == name)
                .map(|i| old.swap_remove(i));
            let tracked = self
                .refresh(name, file, previous, &config.plugins.limits, &mut errors)
                .await;
            next.push(tracked);
        }
        for gone in old {
            tracing::info!(plugin = gone.slot.name, file = %gone.slot.file.display(), "plugin removed");
        }
        self.tracked = next;
        self.duplicates = duplicates;
        errors
    }

    /// One file: reuse what is loaded if unchanged, else load it.
    async fn refresh(
        &self,
        name: String,
        file: PathBuf,
        previous: Option<Tracked>,
        limits: &PluginLimits,
        errors: &mut Vec<String>,
    ) -> Tracked {
        let mut tracked = previous.unwrap_or_else(|| Tracked::unloaded(name.clone(), file.clone()));
        let (read_file, read_limits) = (file.clone(), limits.clone());
        let read = off_runtime(move || {
            read_source(&read_file).map(|source| {
                let fingerprint = fingerprint(&source, &read_limits);
                (source, fingerprint)
            })
        })
        .await
        .and_then(|read| read);
        let (source, fingerprint) = match read {
            Ok(read) => read,
            // Deleted between listing and reading: the next event rescans.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return tracked,
            Err(e) => {
                let why = format!("{}: cannot read: {e}", file.display());
                tracing::error!(plugin = name, error = %why, "plugin rejected");
                errors.push(why.clone());
                tracked.slot.last_error = Some(why);
                return tracked;
            }
        };
        if tracked.serving == Some(fingerprint) && tracked.slot.file == file {
            tracked.slot.last_error = None;
            tracked.failed = None;
            return tracked;
        }
        if tracked.failed == Some(fingerprint) {
            if let Some(why) = &tracked.slot.last_error {
                errors.push(why.clone());
            }
            return tracked;
        }
        let loaded = self.runtime.load(source, limits).await;
        metrics().plugin_loaded(&name, loaded.is_ok());
        match loaded {
            Ok(plugin) => {
                tracing::info!(
                    plugin = name,
                    file = %file.display(),
                    hash = %plugin.info().hash,
                    hooks = ?plugin.hook_names(),
                    compile_ms = plugin.info().compile_time.as_millis() as u64,
                    from_cache = plugin.info().from_cache,
                    replaced = tracked.slot.serving.is_some(),
                    "plugin loaded"
                );
                Tracked {
                    slot: PluginSlot {
                        name,
                        file,
                        serving: Some(plugin),
                        since_generation: 0,
                        last_error: None,
                    },
                    serving: Some(fingerprint),
                    failed: None,
                }
            }
            Err(e) => {
                let why = e.to_string();
                if tracked.slot.serving.is_some() {
                    tracing::error!(plugin = name, error = %why, "plugin rejected; the previous version keeps serving");
                } else {
                    tracing::error!(plugin = name, error = %why, "plugin rejected");
                }
                errors.push(why.clone());
                tracked.slot.file = file;
                tracked.slot.last_error = Some(why);
                tracked.failed = Some(fingerprint);
                tracked
            }
        }
    }
}

/// Starts the task that runs rescans: on file events (debounced) when `watch` is on, on every
/// [`ReloadHandle::reload`], and on SIGHUP. It stops when `drain` fires.
pub(crate) fn spawn(
    mut reloader: Reloader,
    current: Arc<ArcSwap<Generation>>,
    mut drain: Drain,
) -> ReloadHandle {
    let (requests_tx, mut requests) = mpsc::channel::<oneshot::Sender<ReloadReport>>(8);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let config = reloader.config.clone();
    let watcher = if config.plugins.watch {
        // One rescan once watching: catches what changed between the first load and now.
        let _ = events_tx.send(());
        start_watch(
            &config.plugins.dir,
            &reloader.config_path,
            &tls::files(&config),
            events_tx,
        )
    } else {
        None
    };
    let mut hangup = Hangup::new();
    tokio::spawn(async move {
        // Owned by the task: watching stops when the task does.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = drain.signaled() => break,
                Some(reply) = requests.recv() => {
                    let report = reloader.reload(&current).await;
                    let _ = reply.send(report);
                }
                Some(()) = events.recv() => {
                    settle(&mut events).await;
                    reloader.reload(&current).await;
                }
                () = hangup.recv() => {
                    tracing::info!(signal = "SIGHUP", "reload requested");
                    reloader.reload(&current).await;
                }
            }
        }
    });
    ReloadHandle(requests_tx)
}

/// SIGHUP, the signal operators send for a reload (as to nginx and HAProxy).
struct Hangup(Option<tokio::signal::unix::Signal>);

impl Hangup {
    fn new() -> Hangup {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Hangup(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /reload");
                Hangup(None)
            }
        }
    }

    /// Resolves at the next SIGHUP; never, if the handler could not be installed.
    async fn recv(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    self.0 = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// Waits until events stop for [`DEBOUNCE`], or [`MAX_DEBOUNCE`] has passed.
async fn settle(events: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(deadline);
        match tokio::time::timeout_at(quiet, events.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

fn start_watch(
    plugin_dir: &Path,
    config_path: &Path,
    tls_files: &[PathBuf],
    events: mpsc::UnboundedSender<()>,
) -> Option<watch::Watcher> {
    if let Err(e) = std::fs::create_dir_all(plugin_dir) {
        tracing::warn!(dir = %plugin_dir.display(), error = %e, "cannot create the plugin folder");
    }
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    // A certificate's own name, in its folder's real path: certbot's live/ names are
    // symlinks, and events name the link that changed, not its target.
    let in_real_folder = |p: &Path| match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => canonical(dir).join(name),
        _ => p.to_owned(),
    };
    let tls_files: Vec<PathBuf> = tls_files.iter().map(|p| in_real_folder(p)).collect();
    match watch::watch(
        &canonical(plugin_dir),
        &canonical(config_path),
        &tls_files,
        events,
    ) {
        Ok(watcher) => {
            tracing::info!(dir = %plugin_dir.display(), config = %config_path.display(), "watching for changes");
            Some(watcher)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; changes apply only on POST /reload");
            None
        }
    }
}

/// Runs file I/O and hashing on a blocking thread: with `worker_threads = 1` the runtime's
/// one thread also serves every request, which must not wait on a disk or a large file's
/// hash. (A failure here is the blocking task's own: it panicked or was cancelled.)
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)
}

/// `*.wasm` files in `dir`, in file-name order. A missing folder holds no plugins; a folder
/// that cannot be read is an error (the caller keeps what it has: an unreadable folder must
/// not unload a security plugin).
fn list_plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

fn read_source(file: &Path) -> std::io::Result<PluginSource> {
    let wasm = std::fs::read(file)?;
    let settings_path = file.with_extension("toml");
    let settings = match std::fs::read_to_string(&settings_path) {
        Ok(text) => Some((settings_path, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(PluginSource {
        file: file.to_owned(),
        wasm,
        settings,
    })
}

/// What decides whether a loaded plugin is still current: its bytes, its settings and the
/// global limits it was loaded under.
fn fingerprint(source: &PluginSource, limits: &PluginLimits) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(source.file.as_os_str().as_encoded_bytes());
    hash.update([0]);
    hash.update(&source.wasm);
    hash.update([0]);
    if let Some((_, text)) = &source.settings {
        hash.update(text.as_bytes());
    }
    hash.update([0]);
    hash.update(format!("{limits:?}").as_bytes());
    hash.finalize().into()
}

/// Routes that name a plugin with no file in the folder.
fn missing_plugins(config: &Config, tracked: &[Tracked]) -> Vec<String> {
    let mut missing = Vec::new();
    for route in &config.routes {
        for name in route.plugins.iter().flatten().chain(route.target.handler()) {
            if tracked.iter().all(|t| t.slot.name != *name) {
                missing.push(format!(
                    "route \"{}\" names plugin \"{name}\", which is not in {}",
                    route.name,
                    config.plugins.dir.display()
                ));
            }
        }
    }
    missing
}
