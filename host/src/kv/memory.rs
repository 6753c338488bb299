//! The in-memory store: one `DashMap` per process, shared by every plugin instance and
//! worker thread.
//!
//! Expiry is checked on access (an expired entry reads as absent), and expired entries are
//! swept out once as many keys have been created since the last sweep as the map then held
//! (at least [`SWEEP_AFTER`]), so a rate limiter that makes a key per time slot does not grow
//! the map forever, at an amortised constant cost per key. The read-modify-write operations
//! run under the entry's shard lock, so they are atomic across threads.
//!
//! Quotas are exact: each namespace's [`Usage`] (keys, and bytes of keys and values) is
//! changed under the entry's lock by every write, removal and sweep, and a write takes its
//! growth with a compare-and-swap that never lets a counter pass its quota, so concurrent
//! writers cannot overshoot it together. An expired entry not yet swept out still holds its
//! memory and is counted; a write that might not fit sweeps first (at most once a second per
//! namespace, so a plugin hammering a full quota does not make every call a sweep).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::{Duration, Instant};

use super::{Bounded, Exceeded, KvError, KvQuota, KvUsage, add, parse_counter, split};

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
/// The least time between two sweeps a full quota asks for, per namespace.
const QUOTA_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The longest counter, as decimal text (`-9223372036854775808`).
const MAX_COUNTER_BYTES: u64 = 20;

/// What one namespace holds, changed with every write.
#[derive(Debug, Default)]
struct Usage {
    keys: AtomicU64,
    bytes: AtomicU64,
    /// When a write last swept because the quota looked full.
    swept: Mutex<Option<Instant>>,
}

/// Adds `delta` to `counter` unless the sum would pass `max` (a decrease always applies).
fn adjust(counter: &AtomicU64, delta: i64, max: u64) -> bool {
    let step = delta.unsigned_abs();
    if delta <= 0 {
        let _ = counter.try_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            Some(n.saturating_sub(step))
        });
        return true;
    }
    counter
        .try_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            n.checked_add(step).filter(|&sum| sum <= max)
        })
        .is_ok()
}

impl Usage {
    /// Takes `keys` more keys and `bytes` more bytes (either may be negative), or nothing
    /// and which part of `quota` that would pass.
    fn take(&self, keys: i64, bytes: i64, quota: &KvQuota) -> Result<(), Exceeded> {
        if !adjust(&self.keys, keys, quota.max_keys) {
            return Err(Exceeded::Keys);
        }
        if !adjust(&self.bytes, bytes, quota.max_bytes) {
            adjust(&self.keys, -keys, u64::MAX);
            return Err(Exceeded::Bytes);
        }
        Ok(())
    }

    /// Gives back what an entry of `bytes` held.
    fn release(&self, bytes: u64) {
        adjust(&self.keys, -1, u64::MAX);
        adjust(
            &self.bytes,
            -i64::try_from(bytes).unwrap_or(i64::MAX),
            u64::MAX,
        );
    }

    /// Whether one more key of `bytes` would fit now.
    fn fits(&self, bytes: u64, quota: &KvQuota) -> bool {
        self.keys.load(Ordering::Acquire) < quota.max_keys
            && self
                .bytes
                .load(Ordering::Acquire)
                .checked_add(bytes)
                .is_some_and(|sum| sum <= quota.max_bytes)
    }
}

/// A live counter stepped by an `increment-within`: its value before and after, and whether
/// the step stays within the limit (and so is written).
struct Stepped {
    current: i64,
    next: i64,
    applied: bool,
}

impl Stepped {
    /// The counter whose text is `value`, stepped by `step` unless past `limit`.
    fn of(value: &[u8], step: i64, limit: i64) -> Result<Stepped, KvError> {
        let current = parse_counter(value)?;
        let next = add(current, step)?;
        Ok(Stepped {
            current,
            next,
            applied: next <= limit,
        })
    }

    /// The call's answer: the counter as it now is, which expires in `ttl_ms`.
    fn answer(&self, ttl_ms: Option<u64>) -> Bounded {
        Bounded {
            applied: self.applied,
            value: if self.applied {
                self.next
            } else {
                self.current
            },
            ttl_ms,
        }
    }
}

/// What an entry counts against its namespace: its key (without the namespace) and value.
fn charge(key: &str, value: &[u8]) -> u64 {
    (split(key).1.len() + value.len()) as u64
}

/// The change from `old` bytes to `new`, as a signed delta.
fn delta(old: u64, new: u64) -> i64 {
    i64::try_from(new).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(i64::MAX)
}

/// The in-memory backend.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: DashMap<String, Slot>,
    /// Keys created since the last sweep.
    created: AtomicUsize,
    /// Each namespace's usage, kept for the life of the process (a reloaded plugin keeps its
    /// keys, so it keeps its usage).
    namespaces: DashMap<String, Arc<Usage>>,
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ms))
}

impl MemoryKv {
    /// The usage of `key`'s namespace. Must not be called while an entry of the map is held
    /// by this thread in a way that a sweep could wait on (it takes no map lock itself).
    fn usage_of(&self, key: &str) -> Arc<Usage> {
        let namespace = split(key).0;
        if let Some(usage) = self.namespaces.get(namespace) {
            return usage.clone();
        }
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .clone()
    }

    /// Removes expired entries, giving back what they held. Must not be called while an
    /// entry of the map is held (it locks every shard).
    fn sweep(&self, now: Instant) {
        self.map.retain(|key, slot| {
            if slot.live(now) {
                return true;
            }
            if let Some(usage) = self.namespaces.get(split(key).0) {
                usage.release(charge(key, &slot.value));
            }
            false
        });
    }

    /// Before a write of up to `bytes` that might not fit `quota`: sweeps expired entries
    /// out, unless this namespace did less than [`QUOTA_SWEEP_EVERY`] ago. Must not be called
    /// while an entry of the map is held.
    fn make_room(&self, usage: &Usage, bytes: u64, quota: &KvQuota, now: Instant) {
        if usage.fits(bytes, quota) {
            return;
        }
        {
            let mut swept = usage.swept.lock().unwrap_or_else(|e| e.into_inner());
            if swept.is_some_and(|at| now.saturating_duration_since(at) < QUOTA_SWEEP_EVERY) {
                return;
            }
            *swept = Some(now);
        }
        self.sweep(now);
    }

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
            self.sweep(now);
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
        quota: &KvQuota,
    ) -> Result<(), KvError> {
        let now = Instant::now();
        let usage = self.usage_of(&key);
        let new = charge(&key, &value);
        self.make_room(&usage, new, quota, now);
        let slot = Slot {
            value,
            expires: expiry(now, ttl_ms),
        };
        let created = match self.map.entry(key) {
            Entry::Occupied(mut held) => {
                let old = charge(held.key(), &held.get().value);
                usage
                    .take(0, delta(old, new), quota)
                    .map_err(|e| quota.exceeded(e))?;
                held.insert(slot);
                false
            }
            Entry::Vacant(vacant) => {
                usage
                    .take(1, delta(0, new), quota)
                    .map_err(|e| quota.exceeded(e))?;
                vacant.insert(slot);
                true
            }
        };
        if created {
            self.created_one(now);
        }
        Ok(())
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(), KvError> {
        if let Some((key, slot)) = self.map.remove(key) {
            self.usage_of(&key).release(charge(&key, &slot.value));
        }
        Ok(())
    }

    /// Adds `delta` under the entry's shard lock, so concurrent increments never lose counts.
    pub(crate) fn increment(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<i64, KvError> {
        self.increment_within(key, delta, i64::MAX, ttl_ms, quota)
            .map(|bounded| bounded.value)
    }

    /// Adds `delta` if the result stays at most `limit`, under the entry's shard lock.
    pub(crate) fn increment_within(
        &self,
        key: String,
        step: i64,
        limit: i64,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<Bounded, KvError> {
        let now = Instant::now();
        if let Some(done) = self.increment_in_place(&key, step, limit, now)? {
            return Ok(done);
        }
        let usage = self.usage_of(&key);
        self.make_room(&usage, charge(&key, &[]) + MAX_COUNTER_BYTES, quota, now);
        let (bounded, created) = match self.map.entry(key) {
            Entry::Occupied(mut slot) if slot.get().live(now) => {
                let stepped = Stepped::of(&slot.get().value, step, limit)?;
                if stepped.applied {
                    let value = stepped.next.to_string().into_bytes();
                    let grown = delta(slot.get().value.len() as u64, value.len() as u64);
                    usage.take(0, grown, quota).map_err(|e| quota.exceeded(e))?;
                    slot.get_mut().value = value;
                }
                return Ok(stepped.answer(slot.get().ttl_ms(now)));
            }
            // Absent or expired: the counter starts from 0.
            entry if step > limit => {
                drop(entry);
                return Ok(Bounded {
                    applied: false,
                    value: 0,
                    ttl_ms: None,
                });
            }
            Entry::Occupied(mut slot) => {
                let value = step.to_string().into_bytes();
                let old = charge(slot.key(), &slot.get().value);
                let new = charge(slot.key(), &value);
                usage
                    .take(0, delta(old, new), quota)
                    .map_err(|e| quota.exceeded(e))?;
                slot.insert(Slot {
                    value,
                    expires: expiry(now, ttl_ms),
                });
                (step, false)
            }
            Entry::Vacant(slot) => {
                let value = step.to_string().into_bytes();
                usage
                    .take(1, delta(0, charge(slot.key(), &value)), quota)
                    .map_err(|e| quota.exceeded(e))?;
                slot.insert(Slot {
                    value,
                    expires: expiry(now, ttl_ms),
                });
                (step, true)
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

    /// [`MemoryKv::increment_within`] of a live counter whose text keeps its length (a rate
    /// limiter's usual call): written over in place under the entry's shard lock, with no
    /// change to the namespace's usage, so neither the usage nor the quota is looked at.
    /// `None`, with nothing changed, when the counter is absent or expired or its length
    /// would change: the caller takes the general path.
    fn increment_in_place(
        &self,
        key: &str,
        step: i64,
        limit: i64,
        now: Instant,
    ) -> Result<Option<Bounded>, KvError> {
        let Some(mut slot) = self.map.get_mut(key) else {
            return Ok(None);
        };
        if !slot.live(now) {
            return Ok(None);
        }
        let stepped = Stepped::of(&slot.value, step, limit)?;
        if stepped.applied {
            let mut digits = itoa::Buffer::new();
            let text = digits.format(stepped.next).as_bytes();
            if text.len() != slot.value.len() {
                return Ok(None);
            }
            slot.value.copy_from_slice(text);
        }
        Ok(Some(stepped.answer(slot.ttl_ms(now))))
    }

    /// Sets `key` if it holds `expected`, under the entry's shard lock.
    pub(crate) fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<bool, KvError> {
        let now = Instant::now();
        let usage = self.usage_of(&key);
        let new = charge(&key, &value);
        self.make_room(&usage, new, quota, now);
        let slot = Slot {
            value,
            expires: expiry(now, ttl_ms),
        };
        let created = match (self.map.entry(key), expected) {
            (Entry::Occupied(mut held), Some(expected))
                if held.get().live(now) && held.get().value == expected =>
            {
                let old = charge(held.key(), &held.get().value);
                usage
                    .take(0, delta(old, new), quota)
                    .map_err(|e| quota.exceeded(e))?;
                held.insert(slot);
                false
            }
            (Entry::Occupied(mut held), None) if !held.get().live(now) => {
                let old = charge(held.key(), &held.get().value);
                usage
                    .take(0, delta(old, new), quota)
                    .map_err(|e| quota.exceeded(e))?;
                held.insert(slot);
                false
            }
            (Entry::Vacant(vacant), None) => {
                usage
                    .take(1, delta(0, new), quota)
                    .map_err(|e| quota.exceeded(e))?;
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

    /// Live keys and their bytes per namespace (a scan: expired entries not yet swept out
    /// are left out, though they still count against the quota until they are).
    pub(crate) fn usage(&self) -> Vec<(String, KvUsage)> {
        let now = Instant::now();
        let mut by_plugin: BTreeMap<String, KvUsage> = BTreeMap::new();
        for entry in self.map.iter() {
            if !entry.value().live(now) {
                continue;
            }
            let (plugin, key) = split(entry.key());
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

    const Q: &KvQuota = &KvQuota::UNLIMITED;

    #[tokio::test(start_paused = true)]
    async fn increment_counts_and_expires() {
        let kv = MemoryKv::default();
        assert_eq!(kv.increment("k".into(), 1, Some(1000), Q).ok(), Some(1));
        assert_eq!(kv.increment("k".into(), 2, Some(1000), Q).ok(), Some(3));
        // Stored as decimal text, the way Redis stores counters.
        assert_eq!(kv.get("k"), Ok(Some(b"3".to_vec())));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(kv.get("k"), Ok(None));
        assert_eq!(kv.increment("k".into(), 5, None, Q).ok(), Some(5));
        let _ = kv.set("s".into(), b"v".to_vec(), Some(10), Q);
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
                let _ = kv.increment(format!("{slot}:{client}"), 1, Some(1000), Q);
            }
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // 10,000 keys were created; those older than a second are gone (a sweep runs after
        // at least as many creations as the map holds, so at most about twice what is live).
        assert!(kv.map.len() <= 3 * 500 + SWEEP_AFTER, "{}", kv.map.len());
        let _ = kv.set("forever".into(), b"1".to_vec(), None, Q);
        tokio::time::advance(Duration::from_secs(3600)).await;
        for client in 0..5000 {
            let _ = kv.increment(format!("late:{client}"), 1, Some(1), Q);
        }
        assert_eq!(kv.get("forever"), Ok(Some(b"1".to_vec())), "no TTL: kept");
        assert!(kv.map.len() <= 5001 + SWEEP_AFTER, "{}", kv.map.len());
    }

    #[test]
    fn increment_refuses_values_that_are_not_integers() {
        let kv = MemoryKv::default();
        let _ = kv.set("word".into(), b"hello".to_vec(), None, Q);
        assert!(matches!(
            kv.increment("word".into(), 1, None, Q),
            Err(KvError::Invalid(_))
        ));
        assert_eq!(
            kv.get("word"),
            Ok(Some(b"hello".to_vec())),
            "the value must be left alone"
        );
        let _ = kv.set("max".into(), i64::MAX.to_string().into_bytes(), None, Q);
        assert!(matches!(
            kv.increment("max".into(), 1, None, Q),
            Err(KvError::Invalid(_))
        ));
        let _ = kv.set("n".into(), b"41".to_vec(), None, Q);
        assert_eq!(kv.increment("n".into(), 1, None, Q).ok(), Some(42));
    }

    #[tokio::test(start_paused = true)]
    async fn increment_within_stops_at_the_limit_and_reports_the_ttl() {
        let kv = MemoryKv::default();
        let first = kv.increment_within("w".into(), 2, 3, Some(1000), Q);
        assert_eq!(
            first,
            Ok(Bounded {
                applied: true,
                value: 2,
                ttl_ms: Some(1000)
            })
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        let over = kv.increment_within("w".into(), 2, 3, Some(1000), Q);
        assert_eq!(
            over,
            Ok(Bounded {
                applied: false,
                value: 2,
                ttl_ms: Some(600)
            }),
            "2 + 2 > 3: left alone"
        );
        let fits = kv.increment_within("w".into(), 1, 3, Some(1000), Q);
        assert_eq!(fits.map(|b| (b.applied, b.value)), Ok((true, 3)));
        let fresh = kv.increment_within("x".into(), 5, 3, None, Q);
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
            kv.compare_and_set("c".into(), None, b"1".to_vec(), Some(100), Q),
            Ok(true)
        );
        assert_eq!(
            kv.compare_and_set("c".into(), None, b"2".to_vec(), None, Q),
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_set("c".into(), Some(b"0".to_vec()), b"2".to_vec(), None, Q),
            Ok(false)
        );
        assert_eq!(
            kv.compare_and_set("c".into(), Some(b"1".to_vec()), b"2".to_vec(), Some(100), Q),
            Ok(true)
        );
        assert_eq!(kv.get("c"), Ok(Some(b"2".to_vec())));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            kv.compare_and_set("c".into(), Some(b"2".to_vec()), b"3".to_vec(), None, Q),
            Ok(false),
            "expired: absent"
        );
        assert_eq!(
            kv.compare_and_set("c".into(), None, b"3".to_vec(), None, Q),
            Ok(true)
        );
    }

    fn quota(max_keys: u64, max_bytes: u64) -> KvQuota {
        KvQuota {
            max_keys,
            max_bytes,
            ..KvQuota::DEFAULT
        }
    }

    fn held(kv: &MemoryKv, namespace: &str) -> (u64, u64) {
        let usage = kv.usage_of(&format!("{namespace}\0"));
        (
            usage.keys.load(Ordering::Relaxed),
            usage.bytes.load(Ordering::Relaxed),
        )
    }

    /// A namespace holds at most its quota's keys and bytes, whatever the write; a refused
    /// write changes nothing; overwrites, deletes and shrinking values give room back; and
    /// another namespace in the same store is not affected.
    #[tokio::test(start_paused = true)]
    async fn a_namespace_holds_at_most_its_quota() {
        let kv = MemoryKv::default();
        let q = quota(3, 100);
        for i in 0..3 {
            assert_eq!(
                kv.set(format!("p\0k{i}"), b"0123456789".to_vec(), None, &q),
                Ok(())
            );
        }
        assert_eq!(held(&kv, "p"), (3, 3 * 12));
        let full = |r: Result<(), KvError>| matches!(r, Err(KvError::Invalid(why)) if why.contains("max_keys"));
        assert!(full(kv.set("p\0k3".into(), b"x".to_vec(), None, &q)));
        assert!(matches!(
            kv.increment("p\0n".into(), 1, None, &q),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            kv.increment_within("p\0n".into(), 1, 5, None, &q),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            kv.compare_and_set("p\0c".into(), None, b"x".to_vec(), None, &q),
            Err(KvError::Invalid(_))
        ));
        assert_eq!(kv.get("p\0k3"), Ok(None), "a refused write stores nothing");
        assert_eq!(held(&kv, "p"), (3, 36), "and takes nothing");
        // Overwriting a key is not a new key; bytes are checked on the growth only.
        assert_eq!(kv.set("p\0k0".into(), vec![b'x'; 60], None, &q), Ok(()));
        assert_eq!(held(&kv, "p"), (3, 36 - 10 + 60));
        let over = kv.set("p\0k1".into(), vec![b'x'; 60], None, &q);
        assert!(
            matches!(&over, Err(KvError::Invalid(why)) if why.contains("max_bytes")),
            "{over:?}"
        );
        assert_eq!(
            kv.get("p\0k1"),
            Ok(Some(b"0123456789".to_vec())),
            "left as it was"
        );
        // Room given back.
        assert_eq!(kv.delete("p\0k0"), Ok(()));
        assert_eq!(held(&kv, "p"), (2, 24));
        assert_eq!(kv.increment("p\0n".into(), 41, None, &q), Ok(41));
        assert_eq!(held(&kv, "p"), (3, 24 + 1 + 2));
        // Another plugin's namespace has its own quota.
        assert_eq!(kv.set("other\0k".into(), vec![b'x'; 90], None, &q), Ok(()));
        assert_eq!(held(&kv, "other"), (1, 91));
    }

    /// A counter whose text keeps its length is written over in place, and one whose text
    /// grows or shrinks (9 → 10 → 9, -1 → 0) goes through the quota: the namespace's bytes
    /// follow the text's length either way, and a growth past `max_bytes` is refused with
    /// the counter left as it was.
    #[tokio::test(start_paused = true)]
    async fn counters_change_length_through_the_quota_and_keep_it_in_place() {
        let kv = MemoryKv::default();
        let q = quota(10, 3);
        let step = |delta: i64| kv.increment("p\0n".into(), delta, Some(60_000), &q);
        assert_eq!(step(8), Ok(8));
        assert_eq!(held(&kv, "p"), (1, 2), "key `n` and one digit");
        assert_eq!(step(1), Ok(9), "in place");
        assert_eq!(held(&kv, "p"), (1, 2));
        assert_eq!(step(1), Ok(10), "grown by a digit");
        assert_eq!(held(&kv, "p"), (1, 3));
        assert_eq!(step(-1), Ok(9), "shrunk by a digit");
        assert_eq!(held(&kv, "p"), (1, 2));
        assert_eq!(step(-10), Ok(-1), "a sign is a byte");
        assert_eq!(held(&kv, "p"), (1, 3));
        assert!(
            matches!(kv.increment("p\0n".into(), -9, None, &q), Err(KvError::Invalid(why)) if why.contains("max_bytes")),
            "-10 would take a fourth byte"
        );
        assert_eq!(kv.get("p\0n"), Ok(Some(b"-1".to_vec())), "left as it was");
        // Refused by its limit, in place or not: nothing changes.
        let within = |delta, limit| kv.increment_within("p\0n".into(), delta, limit, None, &q);
        assert_eq!(within(3, 1).map(|b| (b.applied, b.value)), Ok((false, -1)));
        assert_eq!(within(1, 1).map(|b| (b.applied, b.value)), Ok((true, 0)));
        assert_eq!(within(1, 0).map(|b| (b.applied, b.value)), Ok((false, 0)));
        assert_eq!(held(&kv, "p"), (1, 2));
        assert_eq!(
            within(1, 5).map(|b| b.ttl_ms),
            Ok(Some(60_000)),
            "an in-place write keeps the expiry"
        );
        // Which writes go in place: a length kept, or a refusal; not a length changed, nor
        // an absent key.
        let now = Instant::now();
        let in_place = |key: &str, step, limit| {
            kv.increment_in_place(key, step, limit, now)
                .map(|done| done.map(|b| (b.applied, b.value)))
        };
        assert_eq!(kv.get("p\0n"), Ok(Some(b"1".to_vec())));
        assert_eq!(in_place("p\0n", 1, 5), Ok(Some((true, 2))));
        assert_eq!(in_place("p\0n", 8, 100), Ok(None), "2 + 8 is two digits");
        assert_eq!(in_place("p\0n", 8, 5), Ok(Some((false, 2))), "refused");
        assert_eq!(in_place("p\0absent", 1, 5), Ok(None));
        assert_eq!(kv.get("p\0n"), Ok(Some(b"2".to_vec())));
    }

    /// Expired keys hold memory until swept, so they count; a write that finds the quota full
    /// sweeps them out first and fits.
    #[tokio::test(start_paused = true)]
    async fn expired_keys_make_room_when_the_quota_is_full() {
        let kv = MemoryKv::default();
        let q = quota(10, u64::MAX);
        for i in 0..10 {
            let _ = kv.increment(format!("p\0slot{i}"), 1, Some(1000), &q);
        }
        assert!(matches!(
            kv.increment("p\0late".into(), 1, Some(1000), &q),
            Err(KvError::Invalid(_))
        ));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(kv.increment("p\0late".into(), 1, Some(1000), &q), Ok(1));
        assert_eq!(held(&kv, "p"), (1, 5));
    }

    /// Many threads racing for the last keys of a quota never take more than it.
    #[test]
    fn concurrent_writers_never_pass_the_quota() {
        let kv = Arc::new(MemoryKv::default());
        let q = quota(1000, u64::MAX);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build();
                    let Ok(rt) = rt else { return 0 };
                    rt.block_on(async {
                        (0..1000)
                            .filter(|i| {
                                kv.set(format!("p\0{t}:{i}"), b"v".to_vec(), None, &q)
                                    .is_ok()
                            })
                            .count()
                    })
                })
            })
            .collect();
        let stored: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(stored, 1000);
        assert_eq!(kv.map.len(), 1000);
        assert_eq!(held(&kv, "p").0, 1000);
    }
}
