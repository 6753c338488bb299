//! Implementation of the `weir:plugin/kv` interface over a [`KvBackend`], and the in-memory
//! backend weir ships with.
//!
//! The backend is one per process, shared by every instance of every plugin; each plugin's
//! keys are prefixed with its name, so plugins cannot read each other's keys.
//!
//! [`MemoryKv`] is a `DashMap`; expiry is checked on access (an expired entry reads as
//! absent), and expired entries are swept out once as many keys have been created since the
//! last sweep as the map then held (at least [`SWEEP_AFTER`]), so a rate limiter that makes a
//! key per time slot does not grow the map forever, at an amortised constant cost per key.
//!
//! Another backend (Redis, say) implements [`KvBackend`]; one that waits on the network
//! should also make the `kv` import async in the current contract's bindings macro
//! (`contract/v0_3.rs`), so a slow store parks the plugin's fiber rather than a worker
//! thread.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::{Duration, Instant};

use crate::plugin::contract::current::kv::{Error, Host};
use crate::plugin::state::PluginState;

/// A value and when it expires.
#[derive(Debug)]
struct Slot {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// Why a backend operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KvError {
    /// The backend could not be reached or failed.
    #[expect(
        dead_code,
        reason = "the in-memory backend never fails; networked backends will"
    )]
    Unavailable(String),
    /// The operation does not fit the stored value.
    Invalid(String),
}

/// A store behind the `kv` interface. Keys arrive already namespaced per plugin. Counters
/// are decimal text; `increment` must be atomic across every caller.
pub(crate) trait KvBackend: Send + Sync + std::fmt::Debug {
    /// The value of `key`, if set and not expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Sets `key`, expiring after `ttl_ms` if given.
    fn set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Adds `delta` to the counter at `key` (absent counts as 0; `ttl_ms` applies when it
    /// is created) and returns the new value.
    fn increment(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError>;
    /// Live keys and their bytes per plugin namespace, for metrics (a scan: called at
    /// scrape time, not per request). A backend that cannot tell returns nothing.
    fn usage(&self) -> Vec<(String, KvUsage)>;
}

/// What one plugin's namespace holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Live keys.
    pub keys: u64,
    /// Bytes of those keys (without the namespace) and their values.
    pub bytes: u64,
}

/// Keys created before the first sweep of expired entries.
const SWEEP_AFTER: usize = 1024;

/// The in-memory backend: one `DashMap` per process.
#[derive(Debug, Default)]
pub(crate) struct MemoryKv {
    map: DashMap<String, Slot>,
    /// Keys created since the last sweep.
    created: AtomicUsize,
}

impl MemoryKv {
    /// Counts a created key; sweeps expired entries when enough have been created. Must not
    /// be called while an entry of the map is held (the sweep locks every shard).
    fn created_one(&self, now: Instant) {
        let created = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        if created < SWEEP_AFTER {
            return; // the common case: no need to count the map (that reads every shard)
        }
        // What the map held at the last sweep: sweep once as many keys have been created.
        let held = self.map.len().saturating_sub(created);
        if created >= SWEEP_AFTER.max(held) {
            self.created.store(0, Ordering::Relaxed);
            self.map.retain(|_, slot| slot.live(now));
        }
    }
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

impl KvBackend for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let now = Instant::now();
        Ok(self
            .map
            .get(key)
            .filter(|slot| slot.live(now))
            .map(|slot| slot.value.clone()))
    }

    fn set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        let now = Instant::now();
        let slot = Slot {
            value,
            expires: expiry(now, ttl_ms),
        };
        if self.map.insert(key, slot).is_none() {
            self.created_one(now);
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.map.remove(key);
        Ok(())
    }

    /// Adds `delta` under the entry's shard lock, so concurrent increments never lose counts.
    fn increment(&self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        let now = Instant::now();
        let fresh = |now| Slot {
            value: delta.to_string().into_bytes(),
            expires: expiry(now, ttl_ms),
        };
        let counted = match self.map.entry(key) {
            Entry::Occupied(mut slot) if slot.get().live(now) => {
                let current = std::str::from_utf8(&slot.get().value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Invalid("the value is not a decimal integer".into()))?;
                let next = current.checked_add(delta).ok_or_else(|| {
                    KvError::Invalid("the counter would overflow a 64-bit integer".into())
                })?;
                slot.get_mut().value = next.to_string().into_bytes();
                return Ok(next);
            }
            Entry::Occupied(mut slot) => {
                slot.insert(fresh(now));
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(fresh(now));
                true
            }
        };
        // The entry's shard lock is released here; a sweep may take every shard.
        if counted {
            self.created_one(now);
        }
        Ok(delta)
    }

    fn usage(&self) -> Vec<(String, KvUsage)> {
        let now = Instant::now();
        let mut by_plugin: std::collections::BTreeMap<String, KvUsage> = Default::default();
        for entry in self.map.iter() {
            if !entry.value().live(now) {
                continue;
            }
            let (plugin, key) = entry.key().split_once('\0').unwrap_or(("", entry.key()));
            let usage = match by_plugin.get_mut(plugin) {
                Some(usage) => usage,
                None => by_plugin.entry(plugin.to_owned()).or_default(),
            };
            usage.keys += 1;
            usage.bytes += (key.len() + entry.value().value.len()) as u64;
        }
        by_plugin.into_iter().collect()
    }
}

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
    fn key(&self, key: &str) -> String {
        namespaced(&self.plugin, key)
    }
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Error {
        match e {
            KvError::Unavailable(why) => Error::Unavailable(why),
            KvError::Invalid(why) => Error::Invalid(why),
        }
    }
}

impl Host for PluginState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.kv.get(&self.key(&key))?)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        Ok(self.kv.set(self.key(&key), value, ttl_ms)?)
    }

    fn delete(&mut self, key: String) -> Result<(), Error> {
        Ok(self.kv.delete(&self.key(&key))?)
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, Error> {
        Ok(self.kv.increment(self.key(&key), delta, ttl_ms)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn increment_counts_and_expires() {
        let kv = MemoryKv::default();
        assert_eq!(kv.increment("k".into(), 1, Some(1000)).ok(), Some(1));
        assert_eq!(kv.increment("k".into(), 2, Some(1000)).ok(), Some(3));
        // Stored as decimal text, the way Redis stores counters.
        assert_eq!(kv.get("k"), Ok(Some(b"3".to_vec())));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(kv.get("k"), Ok(None));
        assert_eq!(kv.increment("k".into(), 5, None).ok(), Some(5));
        let _ = kv.set("s".into(), b"v".to_vec(), Some(10));
        assert_eq!(kv.get("s"), Ok(Some(b"v".to_vec())));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(kv.get("s"), Ok(None));
    }

    /// Keys with a TTL (a rate limiter's slot counters) do not accumulate once expired.
    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_swept_as_new_ones_arrive() {
        let kv = MemoryKv::default();
        for slot in 0..20 {
            for client in 0..500 {
                let _ = kv.increment(format!("{slot}:{client}"), 1, Some(1000));
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // 10,000 keys were created; those older than a second are gone (a sweep runs after
        // at least as many creations as the map holds, so at most about twice what is live).
        assert!(kv.map.len() <= 3 * 500 + SWEEP_AFTER, "{}", kv.map.len());
        let _ = kv.set("forever".into(), b"1".to_vec(), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        for client in 0..5000 {
            let _ = kv.increment(format!("late:{client}"), 1, Some(1));
        }
        assert_eq!(kv.get("forever"), Ok(Some(b"1".to_vec())), "no TTL: kept");
        assert!(kv.map.len() <= 5001 + SWEEP_AFTER, "{}", kv.map.len());
    }

    #[test]
    fn increment_refuses_values_that_are_not_integers() {
        let kv = MemoryKv::default();
        let _ = kv.set("word".into(), b"hello".to_vec(), None);
        assert!(matches!(
            kv.increment("word".into(), 1, None),
            Err(KvError::Invalid(_))
        ));
        assert_eq!(
            kv.get("word"),
            Ok(Some(b"hello".to_vec())),
            "the value must be left alone"
        );
        let _ = kv.set("max".into(), i64::MAX.to_string().into_bytes(), None);
        assert!(matches!(
            kv.increment("max".into(), 1, None),
            Err(KvError::Invalid(_))
        ));
        let _ = kv.set("n".into(), b"41".to_vec(), None);
        assert_eq!(kv.increment("n".into(), 1, None).ok(), Some(42));
    }
}
