//! The TLS material of the running listeners and clusters, as the rescans keep it: loaded
//! for each cluster a config names, re-read at every rescan, and swapped in only when its
//! files changed and are valid. A refusal is logged once per distinct reason, naming the
//! file, and the previous material keeps serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::off_runtime;
use crate::config::{CertKeyFiles, Config};
use crate::tls::{ClientTls, ServerTls, TlsError};

/// Every TLS listener's and TLS cluster's material.
#[derive(Debug, Default)]
pub(crate) struct TlsMaterial {
    listeners: Vec<Tracked<ServerTls>>,
    /// By cluster name.
    clusters: HashMap<String, Tracked<ClientTls>>,
}

#[derive(Debug)]
struct Tracked<T> {
    /// `listener ADDRESS` or `cluster "NAME"`, for logs.
    what: String,
    tls: Arc<T>,
    /// The last refusal logged, so an unchanged bad file is not logged at every rescan.
    refused: Option<String>,
}

impl<T> Tracked<T> {
    fn new(what: String, tls: Arc<T>) -> Tracked<T> {
        Tracked {
            what,
            tls,
            refused: None,
        }
    }
}

/// Something with files to re-read.
trait Refresh: Send + Sync + 'static {
    fn refresh(&self) -> Result<bool, TlsError>;
}

impl Refresh for ServerTls {
    fn refresh(&self) -> Result<bool, TlsError> {
        ServerTls::refresh(self)
    }
}

impl Refresh for ClientTls {
    fn refresh(&self) -> Result<bool, TlsError> {
        ClientTls::refresh(self)
    }
}

impl TlsMaterial {
    /// Tracks the TLS listeners (loaded before binding) as `(address, tls)`.
    pub(crate) fn with_listeners(listeners: Vec<(String, Arc<ServerTls>)>) -> TlsMaterial {
        TlsMaterial {
            listeners: listeners
                .into_iter()
                .map(|(address, tls)| Tracked::new(format!("listener {address}"), tls))
                .collect(),
            clusters: HashMap::new(),
        }
    }

    /// The TLS clients for `config`'s clusters: the ones loaded already where a cluster's TLS
    /// settings are unchanged, else loaded now. Any file that fails refuses the whole set.
    pub(crate) async fn clusters_for(
        &self,
        config: &Config,
    ) -> Result<HashMap<String, Arc<ClientTls>>, Vec<String>> {
        let mut loaded = HashMap::new();
        let mut errors = Vec::new();
        for cluster in &config.clusters {
            let Some(settings) = &cluster.tls else {
                continue;
            };
            let same = self
                .clusters
                .get(&cluster.name)
                .filter(|t| t.tls.settings() == settings && t.tls.protocol() == cluster.protocol);
            if let Some(same) = same {
                loaded.insert(cluster.name.clone(), same.tls.clone());
                continue;
            }
            let (settings, protocol) = (settings.clone(), cluster.protocol);
            match off_runtime(move || ClientTls::load(&settings, protocol)).await {
                Ok(Ok(tls)) => {
                    loaded.insert(cluster.name.clone(), Arc::new(tls));
                }
                Ok(Err(e)) => errors.push(format!("cluster \"{}\": {e}", cluster.name)),
                Err(e) => errors.push(format!("cluster \"{}\": {e}", cluster.name)),
            }
        }
        if errors.is_empty() {
            Ok(loaded)
        } else {
            Err(errors)
        }
    }

    /// Makes `clusters` (from [`clusters_for`](Self::clusters_for)) the tracked ones.
    pub(crate) fn adopt(&mut self, clusters: &HashMap<String, Arc<ClientTls>>) {
        let mut old = std::mem::take(&mut self.clusters);
        for (name, tls) in clusters {
            let tracked = match old.remove(name) {
                Some(t) if Arc::ptr_eq(&t.tls, tls) => t,
                _ => Tracked::new(format!("cluster \"{name}\""), tls.clone()),
            };
            self.clusters.insert(name.clone(), tracked);
        }
    }

    /// Each TLS cluster's client, by cluster name.
    pub(crate) fn clients(&self) -> HashMap<String, Arc<ClientTls>> {
        self.clusters
            .iter()
            .map(|(name, t)| (name.clone(), t.tls.clone()))
            .collect()
    }

    /// Re-reads every file; what changed and is valid serves new connections from now on.
    /// Returns what was refused.
    pub(crate) async fn refresh(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for t in &mut self.listeners {
            refresh_one(t, &mut errors).await;
        }
        for t in self.clusters.values_mut() {
            refresh_one(t, &mut errors).await;
        }
        errors
    }
}

async fn refresh_one<T: Refresh>(tracked: &mut Tracked<T>, errors: &mut Vec<String>) {
    let tls = tracked.tls.clone();
    let result = off_runtime(move || tls.refresh())
        .await
        .unwrap_or_else(|e| Err(TlsError(e.to_string())));
    match result {
        Ok(changed) => {
            if changed {
                tracing::info!(
                    tls = tracked.what,
                    "TLS files changed: new connections use them"
                );
            }
            tracked.refused = None;
        }
        Err(e) => {
            let why = format!("{}: {e}", tracked.what);
            if tracked.refused.as_ref() != Some(&why) {
                tracing::error!(error = %why, "TLS files refused; the previous ones keep serving");
                tracked.refused = Some(why.clone());
            }
            errors.push(why);
        }
    }
}

/// Every TLS file `config` names, to watch for changes.
pub(crate) fn files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pair = |p: &CertKeyFiles| {
        files.push(p.cert.clone());
        files.push(p.key.clone());
    };
    for listener in &config.listeners {
        if let Some(tls) = &listener.tls {
            tls.certificates.iter().for_each(&mut pair);
        }
    }
    for cluster in &config.clusters {
        if let Some(client) = cluster.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
            pair(client);
        }
    }
    for listener in &config.listeners {
        if let Some(auth) = listener.tls.as_ref().and_then(|t| t.client_auth.as_ref()) {
            files.push(auth.ca.clone());
            files.extend(auth.crl.iter().cloned());
        }
    }
    for tls in config.clusters.iter().filter_map(|c| c.tls.as_ref()) {
        files.extend(tls.ca.iter().chain(tls.pinned.iter()).cloned());
    }
    files
}
