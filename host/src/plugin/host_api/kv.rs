//! Implementation of the `weir:plugin/kv` interface over the process's [`Store`]
//! (`crate::kv`): each plugin's keys are prefixed with its name, so plugins cannot read each
//! other's keys, and sizes are checked before anything reaches the store.
//!
//! `kv` is a grant: a plugin whose `NAME.toml` does not say `kv = true` (or `kv = { … }`, its
//! quota) gets `access-denied` from every call, and weir says why once per loaded plugin.
//! A granted plugin's writes are held to its [`KvQuota`]: the value size and TTL here, keys
//! and bytes by the store, atomically with the write.
//!
//! The functions are async in the bindings (`contract/v0_3.rs`): a call that waits on Redis
//! parks the plugin's fiber, not a worker thread, and the wait is taken off the call's
//! wall-clock budget (`[kv] timeout` bounds it), so a store slower than the plugin's
//! `deadline` fails the store call, not the plugin.

use crate::kv::{Bounded, KvError, KvQuota, MAX_KEY_BYTES};
use crate::plugin::contract::current::kv::{self, Error, Host};
use crate::plugin::state::PluginState;

/// `key` in `plugin`'s namespace.
pub(crate) fn namespaced(plugin: &str, key: &str) -> String {
    // By hand rather than with `format!`, which costs several times more on every kv call.
    let mut namespaced = String::with_capacity(plugin.len() + 1 + key.len());
    namespaced.push_str(plugin);
    namespaced.push('\0');
    namespaced.push_str(key);
    namespaced
}

impl PluginState {
    /// When a call to a networked store began: its wait is not the plugin's running time.
    fn store_call(&self) -> Option<quanta::Instant> {
        self.kv.is_remote().then(|| self.budget.waiting())
    }

    /// The wait since `began` is taken off the call's wall-clock budget (the store's own
    /// timeout bounds it), as an `outbound` request's is.
    fn store_answered(&mut self, began: Option<quanta::Instant>) {
        if let Some(began) = began {
            self.budget.waited(began);
        }
    }

    /// The plugin's quota, or `access-denied` (said once in weir's log) if it has no grant.
    fn granted_kv(&self) -> Result<KvQuota, Error> {
        if let Some(quota) = self.kv_quota {
            return Ok(quota);
        }
        if self.log_repeats.first_time("kv denied") {
            tracing::warn!(
                plugin = &*self.plugin,
                request_id = self.request_id.as_str(),
                "plugin called kv without the grant; its calls fail with access-denied (add kv = true to its NAME.toml)"
            );
        }
        Err(Error::AccessDenied)
    }

    /// `key` namespaced, or why it may not be used.
    fn key(&self, key: &str) -> Result<String, Error> {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::Invalid(format!(
                "the key is {} bytes; at most {MAX_KEY_BYTES} are allowed",
                key.len()
            )));
        }
        Ok(namespaced(&self.plugin, key))
    }
}

/// A TTL as the plugin may have it: at most its `max_ttl` (itself at most 100 years,
/// [`crate::kv::MAX_TTL_MS`]: Redis refuses an expiry that does not fit its clock, and would
/// then have changed a counter without giving it one).
fn ttl(ttl_ms: Option<u64>, quota: &KvQuota) -> Option<u64> {
    ttl_ms.map(|ms| ms.min(quota.max_ttl_ms))
}

fn checked_value(value: &[u8], quota: &KvQuota) -> Result<(), Error> {
    if value.len() > quota.max_value_bytes {
        return Err(Error::Invalid(format!(
            "the value is {} bytes; at most {} are allowed (kv.max_value_bytes)",
            value.len(),
            quota.max_value_bytes
        )));
    }
    Ok(())
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Error {
        match e {
            KvError::Unavailable(why) => Error::Unavailable(why),
            KvError::Invalid(why) => Error::Invalid(why),
        }
    }
}

impl From<Bounded> for kv::Bounded {
    fn from(b: Bounded) -> kv::Bounded {
        kv::Bounded {
            applied: b.applied,
            value: b.value,
            ttl_ms: b.ttl_ms,
        }
    }
}

impl Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.granted_kv()?;
        let key = self.key(&key)?;
        let began = self.store_call();
        let value = self.kv.get(&key).await;
        self.store_answered(began);
        Ok(value?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        let quota = self.granted_kv()?;
        let key = self.key(&key)?;
        checked_value(&value, &quota)?;
        let began = self.store_call();
        let done = self
            .kv
            .set_quota(key, value, ttl(ttl_ms, &quota), &quota)
            .await;
        self.store_answered(began);
        Ok(done?)
    }

    async fn delete(&mut self, key: String) -> Result<(), Error> {
        self.granted_kv()?;
        let key = self.key(&key)?;
        let began = self.store_call();
        let done = self.kv.delete(&key).await;
        self.store_answered(began);
        Ok(done?)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, Error> {
        let quota = self.granted_kv()?;
        let key = self.key(&key)?;
        let began = self.store_call();
        let value = self
            .kv
            .increment_quota(key, delta, ttl(ttl_ms, &quota), &quota)
            .await;
        self.store_answered(began);
        Ok(value?)
    }

    async fn increment_within(
        &mut self,
        key: String,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<kv::Bounded, Error> {
        let quota = self.granted_kv()?;
        let key = self.key(&key)?;
        let began = self.store_call();
        let bounded = self
            .kv
            .increment_within_quota(key, delta, limit, ttl(ttl_ms, &quota), &quota)
            .await;
        self.store_answered(began);
        Ok(bounded?.into())
    }

    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, Error> {
        let quota = self.granted_kv()?;
        let key = self.key(&key)?;
        checked_value(&value, &quota)?;
        let began = self.store_call();
        let set = self
            .kv
            .compare_and_set_quota(key, expected, value, ttl(ttl_ms, &quota), &quota)
            .await;
        self.store_answered(began);
        Ok(set?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::{KvStore, MAX_TTL_MS, MAX_VALUE_BYTES};
    use crate::metrics::metrics;
    use crate::plugin::memory::{Limits, MemoryBudget};

    /// A plugin's state with `kv = true`.
    fn state(plugin: &str, store: &Arc<KvStore>) -> PluginState {
        granted(plugin, store, Some(KvQuota::DEFAULT))
    }

    fn granted(plugin: &str, store: &Arc<KvStore>, quota: Option<KvQuota>) -> PluginState {
        let mut state = PluginState::new(
            plugin.into(),
            store.clone(),
            metrics().plugin(plugin).declared,
            Limits::new(1 << 20, Arc::new(MemoryBudget::new(1 << 20))),
            None,
        );
        state.kv_quota = quota;
        state
    }

    /// Without the grant every call is `access-denied` and nothing reaches the store; the
    /// same store serves a granted plugin.
    #[tokio::test]
    async fn kv_without_the_grant_is_denied() {
        let store = Arc::new(KvStore::default());
        let mut denied = granted("ungranted", &store, None);
        let refused = |r: Result<(), Error>| matches!(r, Err(Error::AccessDenied));
        assert!(refused(Host::get(&mut denied, "k".into()).await.map(drop)));
        assert!(refused(
            Host::set(&mut denied, "k".into(), b"v".to_vec(), None).await
        ));
        assert!(refused(Host::delete(&mut denied, "k".into()).await));
        assert!(refused(
            Host::increment(&mut denied, "n".into(), 1, None)
                .await
                .map(drop)
        ));
        assert!(refused(
            Host::increment_within(&mut denied, "n".into(), 1, 5, None)
                .await
                .map(drop)
        ));
        assert!(refused(
            Host::compare_and_set(&mut denied, "c".into(), None, b"v".to_vec(), None)
                .await
                .map(drop)
        ));
        assert_eq!(store.usage(), Vec::new(), "nothing stored");
        assert!(
            !denied.log_repeats.first_time("kv denied"),
            "said once already"
        );
        let mut allowed = state("ungranted", &store);
        assert_eq!(
            Host::increment(&mut allowed, "n".into(), 1, None)
                .await
                .ok(),
            Some(1)
        );
    }

    /// A quota's value size and TTL bound the plugin's writes; its keys are counted.
    #[tokio::test(start_paused = true)]
    async fn the_quota_bounds_values_ttls_and_keys() {
        let store = Arc::new(KvStore::default());
        let quota = KvQuota {
            max_keys: 2,
            max_bytes: 1000,
            max_value_bytes: 10,
            max_ttl_ms: 1000,
        };
        let mut kv = granted("quota", &store, Some(quota));
        assert!(matches!(
            Host::set(&mut kv, "big".into(), vec![0; 11], None).await,
            Err(Error::Invalid(why)) if why.contains("max_value_bytes")
        ));
        assert!(
            Host::set(&mut kv, "a".into(), vec![0; 10], Some(u64::MAX))
                .await
                .is_ok()
        );
        let bounded = Host::increment_within(&mut kv, "b".into(), 1, 5, Some(60_000)).await;
        assert_eq!(
            bounded.ok().and_then(|b| b.ttl_ms),
            Some(1000),
            "cut to max_ttl"
        );
        assert!(matches!(
            Host::increment(&mut kv, "c".into(), 1, None).await,
            Err(Error::Invalid(why)) if why.contains("max_keys")
        ));
        tokio::time::advance(std::time::Duration::from_millis(1001)).await;
        assert_eq!(
            Host::increment(&mut kv, "c".into(), 1, None).await.ok(),
            Some(1),
            "expired keys make room"
        );
    }

    /// What reaches the store is bounded: a larger key or value is `invalid` and stores
    /// nothing, and a TTL past 100 years is cut, not refused.
    #[tokio::test]
    async fn keys_values_and_ttls_are_bounded_before_the_store() {
        let store = Arc::new(KvStore::default());
        let mut kv = state("bounds", &store);
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            Host::get(&mut kv, long_key.clone()).await,
            Err(Error::Invalid(_))
        ));
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert!(matches!(
            Host::set(&mut kv, "v".into(), big.clone(), None).await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Host::compare_and_set(&mut kv, "v".into(), None, big, None).await,
            Err(Error::Invalid(_))
        ));
        assert_eq!(
            Host::get(&mut kv, "v".into()).await.ok(),
            Some(None),
            "nothing stored"
        );
        let fits = vec![0u8; MAX_VALUE_BYTES];
        assert!(
            Host::set(&mut kv, "v".into(), fits, Some(u64::MAX))
                .await
                .is_ok()
        );
        assert_eq!(ttl(Some(u64::MAX), &KvQuota::DEFAULT), Some(MAX_TTL_MS));
        assert!(
            Host::get(&mut kv, "v".into())
                .await
                .is_ok_and(|v| v.is_some())
        );
        // Namespaced: in the same store, another plugin's `v` is another key.
        let mut other = state("bounds-other", &store);
        assert_eq!(Host::get(&mut other, "v".into()).await.ok(), Some(None));
    }
}
