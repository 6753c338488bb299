//! Implementation of the `weir:plugin/kv` interface over the process's [`Store`]
//! (`crate::kv`): each plugin's keys are prefixed with its name, so plugins cannot read each
//! other's keys, and sizes are checked before anything reaches the store.
//!
//! The functions are async in the bindings (`contract/v0_3.rs`): a call that waits on Redis
//! parks the plugin's fiber, not a worker thread, and the wait is taken off the call's
//! wall-clock budget (`[kv] timeout` bounds it), so a store slower than the plugin's
//! `deadline` fails the store call, not the plugin.

use crate::kv::{Bounded, KvError, MAX_KEY_BYTES, MAX_TTL_MS, MAX_VALUE_BYTES};
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

/// A TTL as every store takes it: at most [`MAX_TTL_MS`] (Redis refuses an expiry that does
/// not fit its clock, and would then have changed a counter without giving it one).
fn ttl(ttl_ms: Option<u64>) -> Option<u64> {
    ttl_ms.map(|ms| ms.min(MAX_TTL_MS))
}

fn checked_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::Invalid(format!(
            "the value is {} bytes; at most {MAX_VALUE_BYTES} are allowed",
            value.len()
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
        let key = self.key(&key)?;
        let began = self.store_call();
        let value = self.kv.get(&key).await;
        self.store_answered(began);
        Ok(value?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        let key = self.key(&key)?;
        checked_value(&value)?;
        let began = self.store_call();
        let done = self.kv.set(key, value, ttl(ttl_ms)).await;
        self.store_answered(began);
        Ok(done?)
    }

    async fn delete(&mut self, key: String) -> Result<(), Error> {
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
        let key = self.key(&key)?;
        let began = self.store_call();
        let value = self.kv.increment(key, delta, ttl(ttl_ms)).await;
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
        let key = self.key(&key)?;
        let began = self.store_call();
        let bounded = self
            .kv
            .increment_within(key, delta, limit, ttl(ttl_ms))
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
        let key = self.key(&key)?;
        checked_value(&value)?;
        let began = self.store_call();
        let set = self
            .kv
            .compare_and_set(key, expected, value, ttl(ttl_ms))
            .await;
        self.store_answered(began);
        Ok(set?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::plugin::memory::{Limits, MemoryBudget};

    use super::*;
    use crate::kv::KvStore;
    use crate::metrics::metrics;

    fn state(plugin: &str, store: &Arc<KvStore>) -> PluginState {
        PluginState::new(
            plugin.into(),
            store.clone(),
            metrics().plugin(plugin).declared,
            Limits::new(usize::MAX, Arc::new(MemoryBudget::new(usize::MAX))),
            None,
        )
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
        assert_eq!(ttl(Some(u64::MAX)), Some(MAX_TTL_MS));
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
