//! File watching: the only module that knows `notify`. It turns file-system events on the
//! plugin folder, the config file and the folders of the TLS certificates and keys into a
//! bare "something changed" signal; what changed is
//! worked out by the rescan, never from the events themselves (they coalesce, reorder and
//! differ between platforms).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Keeps the OS watches alive; dropping it stops them.
pub(crate) struct Watcher {
    _inner: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// Watches `plugin_dir` for `*.wasm` and `*.toml` changes, `config_file` for its own and
/// the folders of `tls_files` (certificates and keys) for any change — a secret mounted by
/// Kubernetes is replaced by swapping a `..data` link, and no event names the file —, and
/// sends `()` on `changed` for each relevant event (a rescan re-reads only what changed).
/// A TLS folder that cannot be watched is logged and skipped. Folders, not files, are watched, so an editor that writes a temporary file and
/// renames it over the original is seen.
pub(crate) fn watch(
    plugin_dir: &Path,
    config_file: &Path,
    tls_files: &[PathBuf],
    changed: mpsc::UnboundedSender<()>,
) -> notify::Result<Watcher> {
    let plugin_dir = plugin_dir.to_owned();
    let config_file = config_file.to_owned();
    let config_dir = parent(&config_file);
    let tls_dirs: BTreeSet<PathBuf> = tls_files.iter().map(|f| parent(f)).collect();
    let relevant = {
        let plugin_dir = plugin_dir.clone();
        let config_file = config_file.clone();
        let tls_dirs = tls_dirs.clone();
        move |path: &Path| {
            path == config_file
                || tls_dirs.contains(&parent(path))
                || (parent(path) == plugin_dir
                    && path.extension().is_some_and(|e| e == "wasm" || e == "toml"))
        }
    };
    let mut inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) => {
                if !matches!(event.kind, EventKind::Access(_))
                    && event.paths.iter().any(|p| relevant(p))
                {
                    let _ = changed.send(());
                }
            }
            // Lost events (queue overflow): rescan to be safe.
            Err(e) => {
                tracing::warn!(error = %e, "file watch error; rescanning");
                let _ = changed.send(());
            }
        }
    })?;
    let dirs: BTreeSet<PathBuf> = [plugin_dir, config_dir].into_iter().collect();
    for dir in &dirs {
        inner.watch(dir, RecursiveMode::NonRecursive)?;
    }
    for dir in tls_dirs.difference(&dirs) {
        if let Err(e) = inner.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a TLS folder; its files reload on SIGHUP or POST /reload");
        }
    }
    Ok(Watcher { _inner: inner })
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
