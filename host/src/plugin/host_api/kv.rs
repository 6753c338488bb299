//! Implementation of the `weir:plugin/kv` interface over a [`KvBackend`], and the in-memory
//! backend weir ships with.
//!
//! The backend is one per process, shared by every instance of every plugin; each plugin's
//! keys are prefixed with its name, so plugins cannot read each other's keys.
//!
//! [`MemoryKv`] is a `DashMap`; expiry is checked on access (an expired entry reads as
//! absent). Another backend (Redis, say) implements [`KvBackend`]; one that waits on the
//! network should also make the `kv` import async in `bindings.rs`, so a slow store parks the
//! plugin's fiber rather than a worker thread.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::{Duration, Instant};

use crate::plugin::bindings::kv::{Error, Host};
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
}

/// The in-memory backend: one `DashMap` per process.
#[derive(Debug, Default)]
pub(crate) struct MemoryKv {
    map: DashMap<String, Slot>,
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
        self.map.insert(
            key,
            Slot {
                value,
                expires: expiry(Instant::now(), ttl_ms),
            },
        );
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
        match self.map.entry(key) {
            Entry::Occupied(mut slot) if slot.get().live(now) => {
                let current = std::str::from_utf8(&slot.get().value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Invalid("the value is not a decimal integer".into()))?;
                let next = current.checked_add(delta).ok_or_else(|| {
                    KvError::Invalid("the counter would overflow a 64-bit integer".into())
                })?;
                slot.get_mut().value = next.to_string().into_bytes();
                Ok(next)
            }
            Entry::Occupied(mut slot) => {
                slot.insert(fresh(now));
                Ok(delta)
            }
            Entry::Vacant(slot) => {
                slot.insert(fresh(now));
                Ok(delta)
            }
        }
    }
}

/// `key` in `plugin`'s namespace.
pub(crate) fn namespaced(plugin: &str, key: &str) -> String {
    format!("{plugin}\u{0}{key}")
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
