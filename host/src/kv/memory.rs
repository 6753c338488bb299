//! The in-memory store: one `DashMap` per process, shared by every plugin instance and
//! worker thread.
//!
//! Expiry is checked on access (an expired entry reads as absent), and expired entries are
//! swept out once as many keys have been created since the last sweep as the map then held
//! (at least [`SWEEP_AFTER`]), so a rate limiter that makes a key per time slot does not grow
//! the map forever, at an amortised constant cost per key. The read-modify-write operations
//! run under the entry's shard lock, so they are atomic across threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::{Duration, Instant};

use super::{Bounded, KvError, KvUsage, add, parse_counter};

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

    fn ttl_ms(&self, now: Instant) -> Option<u64> {
        self.expires.map(|at| {
            u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        })
    }
}

/// Keys created before the first sweep of expired entries.
const SWEEP_AFTER: usize = 1024;

/// The in-memory backend.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: DashMap<String, Slot>,
    /// Keys created since the last sweep.
    created: AtomicUsize,
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
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

    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let now = Instant::now();
        Ok(self
            .map
            .get(key)
            .filter(|slot| slot.live(now))
            .map(|slot| slot.value.clone()))
    }

    pub(crate) fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), KvError> {
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

    pub(crate) fn delete(&self, key: &str) -> Result<(), KvError> {
        self.map.remove(key);
        Ok(())
    }

    /// Adds `delta` under the entry's shard lock, so concurrent increments never lose counts.
    pub(crate) fn increment(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        self.increment_within(key, delta, i64::MAX, ttl_ms)
            .map(|bounded| bounded.value)
    }

    /// Adds `delta` if the result stays at most `limit`, under the entry's shard lock.
    pub(crate) fn increment_within(
        &self,
        key: String,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<Bounded, KvError> {
        let now = Instant::now();
        let (bounded, created) = match self.map.entry(key) {
            Entry::Occupied(mut slot) if slot.get().live(now) => {
                let current = parse_counter(&slot.get().value)?;
                let next = add(current, delta)?;
                let applied = next <= limit;
                if applied {
                    slot.get_mut().value = next.to_string().into_bytes();
                }
                let value = if applied { next } else { current };
                let ttl_ms = slot.get().ttl_ms(now);
                return Ok(Bounded {
                    applied,
                    value,
                    ttl_ms,
                });
            }
            // Absent or expired: the counter starts from 0.
            entry if delta > limit => {
                drop(entry);
                return Ok(Bounded {
                    applied: false,
                    value: 0,
                    ttl_ms: None,
                });
            }
            Entry::Occupied(mut slot) => {
                slot.insert(Slot {
                    value: delta.to_string().into_bytes(),
                    expires: expiry(now, ttl_ms),
                });
                (delta, false)
            }
            Entry::Vacant(slot) => {
                slot.insert(Slot {
                    value: delta.to_string().into_bytes(),
                    expires: expiry(now, ttl_ms),
                });
                (delta, true)
            }
        };
        // The entry's shard lock is released here; a sweep may take every shard.
        if created {
            self.created_one(now);
        }
        Ok(Bounded {
            applied: true,
            value: bounded,
            ttl_ms,
        })
    }

    /// Sets `key` if it holds `expected`, under the entry's shard lock.
    pub(crate) fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        let now = Instant::now();
        let slot = Slot {
            value,
            expires: expiry(now, ttl_ms),
        };
        let created = match (self.map.entry(key), expected) {
            (Entry::Occupied(mut held), Some(expected))
                if held.get().live(now) && held.get().value == expected =>
            {
                held.insert(slot);
                false
            }
            (Entry::Occupied(mut held), None) if !held.get().live(now) => {
                held.insert(slot);
                false
            }
            (Entry::Vacant(vacant), None) => {
                vacant.insert(slot);
                true
            }
            _ => return Ok(false),
        };
        if created {
            self.created_one(now);
        }
        Ok(true)
    }

    pub(crate) fn usage(&self) -> Vec<(String, KvUsage)> {
        let now = Instant::now();
        let mut by_plugin: BTreeMap<String, KvUsage> = BTreeMap::new();
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

    #[tokio::test(start_paused = true)]
    async fn increment_within_stops_at_the_limit_and_reports_the_ttl() {
        let kv = MemoryKv::default();
        let first = kv.increment_within("w".into(), 2, 3, Some(1000));
        assert_eq!(
            first,
            Ok(Bounded {
                applied: true,
                value: 2,
                ttl_ms: Some(1000)
            })
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        let over = kv.increment_within("w".into(), 2, 3, Some(1000));
        assert_eq!(
            over,
            Ok(Bounded {
                applied: false,
                value: 2,
                ttl_ms: Some(600)
            }),
            "2 + 2 > 3: left alone"
        );
        let fits = kv.increment_within("w".into(), 1, 3, Some(1000));
        assert_eq!(fits.map(|b| (b.applied, b.value)), Ok((true, 3)));
        let fresh = kv.increment_within("x".into(), 5, 3, None);
        assert_eq!(fresh.map(|b| (b.applied, b.value)), Ok((false, 0)));
        assert_eq!(
            kv.get("x"),
            Ok(None),
            "a refused first increment creates nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn compare_and_set_sets_only_over_the_expected_value() {
        let kv = MemoryKv::default();
        assert_eq!(
            kv.compare_and_set("c".into(), None, b"1".to_vec(), Some(100)),
            Ok(true)
        );
        assert_eq!(
            kv.compare_and_set("c".into(), None, b"2".to_vec(), None),
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_set("c".into(), Some(b"0".to_vec()), b"2".to_vec(), None),
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_set("c".into(), Some(b"1".to_vec()), b"2".to_vec(), Some(100)),
            Ok(true)
        );
        assert_eq!(kv.get("c"), Ok(Some(b"2".to_vec())));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            kv.compare_and_set("c".into(), Some(b"2".to_vec()), b"3".to_vec(), None),
            Ok(false),
            "expired: absent"
        );
        assert_eq!(
            kv.compare_and_set("c".into(), None, b"3".to_vec(), None),
            Ok(true)
        );
    }
}
