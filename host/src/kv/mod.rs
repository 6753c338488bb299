//! The store behind the plugins' `kv` interface: in this process ([`memory`], the default) or
//! in Redis ([`redis`]), chosen by `[kv]`, so several weir instances share one state.
//!
//! Keys arrive here already namespaced per plugin (`host/src/plugin/host_api/kv.rs`): the
//! plugin's name, a NUL, the plugin's key (names never hold a NUL, so the first one splits
//! them). Every operation is atomic across every caller of the store: across threads for
//! memory, across weir processes for Redis. Counters are decimal text, as Redis stores them.
//!
//! Each namespace is held to a [`KvQuota`] (keys and bytes): every write says what its
//! plugin may hold, and a write that would take the namespace past it changes nothing and
//! fails as `invalid`. Both stores keep each namespace's usage as writes happen rather than
//! count it (`memory.rs` exactly; `redis.rs` in Lua beside the keys, with its limits).

mod breaker;
mod memory;
mod redis;

use crate::config::{KvBackendKind, KvConfig};

pub use memory::MemoryKv;
pub use redis::RedisKv;

/// The longest key a plugin may use, in bytes (without weir's namespace).
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// The largest value a plugin may store, in bytes.
pub(crate) const MAX_VALUE_BYTES: usize = 1 << 20;
/// The longest TTL, in milliseconds (100 years); a longer one is cut to it.
pub(crate) const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// What one plugin's namespace may hold: the `kv` grant in its `NAME.toml`. The key and value
/// sizes and the TTL are checked before the store (`host_api/kv.rs`); keys and bytes by the
/// store, atomically with the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvQuota {
    /// Live keys (and expired ones not yet swept out, which still hold memory).
    pub max_keys: u64,
    /// Bytes of those keys (without the namespace) and their values.
    pub max_bytes: u64,
    /// The largest value one write may store (at most [`MAX_VALUE_BYTES`]).
    pub max_value_bytes: usize,
    /// The longest TTL, in milliseconds; a longer one is cut to it (at most [`MAX_TTL_MS`]).
    pub max_ttl_ms: u64,
}

impl KvQuota {
    /// What `kv = true` grants: room for a rate limiter's counters for some tens of
    /// thousands of clients, or a cache of a few thousand small documents, in a bounded
    /// share of memory (about 100 bytes of bookkeeping per key come on top of `max_bytes`).
    pub const DEFAULT: KvQuota = KvQuota {
        max_keys: 100_000,
        max_bytes: 64 << 20,
        max_value_bytes: MAX_VALUE_BYTES,
        max_ttl_ms: MAX_TTL_MS,
    };

    /// No limit but the fixed bounds: for writes that are not a plugin's (seeding a test).
    pub const UNLIMITED: KvQuota = KvQuota {
        max_keys: u64::MAX,
        max_bytes: u64::MAX,
        max_value_bytes: MAX_VALUE_BYTES,
        max_ttl_ms: MAX_TTL_MS,
    };

    /// The error a write that would pass `what` gets.
    pub(crate) fn exceeded(&self, what: Exceeded) -> KvError {
        KvError::Invalid(match what {
            Exceeded::Keys => format!(
                "quota: the plugin's kv holds {} keys, its max_keys; delete keys or let them expire",
                self.max_keys
            ),
            Exceeded::Bytes => format!(
                "quota: the write would take the plugin's kv past its max_bytes ({} bytes of keys and values)",
                self.max_bytes
            ),
        })
    }
}

/// Which part of a [`KvQuota`] a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Keys,
    Bytes,
}

/// `(namespace, key)` of a namespaced key; the namespace is empty for a key without one.
pub(crate) fn split(key: &str) -> (&str, &str) {
    key.split_once('\0').unwrap_or(("", key))
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The store could not be reached, did not answer in time, or failed.
    Unavailable(String),
    /// The operation does not fit the stored value, or the key or value is too large.
    Invalid(String),
}

/// What `increment_within` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded {
    /// Whether the delta was added.
    pub applied: bool,
    /// The counter after the call.
    pub value: i64,
    /// Milliseconds until the counter expires, if it expires.
    pub ttl_ms: Option<u64>,
}

/// What one plugin's namespace holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Live keys.
    pub keys: u64,
    /// Bytes of those keys (without the namespace) and their values.
    pub bytes: u64,
}

/// The process's store.
#[derive(Debug)]
pub enum KvStore {
    /// In this process.
    Memory(MemoryKv),
    /// In a Redis server or cluster (boxed: it is large, and there is one per process).
    Redis(Box<RedisKv>),
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore::Memory(MemoryKv::default())
    }
}

/// One operation on either backend, awaited only for Redis. The Redis operation's future is
/// boxed: held inline it would make every call's future as large as Redis's, which the
/// in-memory store's calls (a plugin's hot path, through a boxed host-call future) would
/// then allocate and move too.
macro_rules! each {
    ($store:expr, $op:ident($($arg:expr),*)) => {
        match $store {
            KvStore::Memory(memory) => memory.$op($($arg),*),
            KvStore::Redis(redis) => Box::pin(redis.$op($($arg),*)).await,
        }
    };
}

impl KvStore {
    /// The store `[kv]` asks for. A Redis store connects lazily: weir starts while Redis is
    /// down, and plugin calls fail (then fail fast, once the breaker opens) until it is up.
    pub fn new(config: &KvConfig) -> Result<KvStore, String> {
        match &config.backend {
            KvBackendKind::Memory => Ok(KvStore::default()),
            KvBackendKind::Redis(redis) => Ok(KvStore::Redis(Box::new(RedisKv::new(redis)?))),
        }
    }

    /// The value of `key`, if set and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        each!(self, get(key))
    }

    /// Sets `key`, expiring after `ttl_ms` if given.
    pub async fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), KvError> {
        self.set_quota(key, value, ttl_ms, &KvQuota::UNLIMITED)
            .await
    }

    /// [`KvStore::set`], unless the namespace would then hold more than `quota`.
    pub async fn set_quota(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<(), KvError> {
        each!(self, set(key, value, ttl_ms, quota))
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        each!(self, delete(key))
    }

    /// Adds `delta` to the counter at `key` (absent counts as 0; `ttl_ms` applies when it is
    /// created) and returns the new value.
    pub async fn increment(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        self.increment_quota(key, delta, ttl_ms, &KvQuota::UNLIMITED)
            .await
    }

    /// [`KvStore::increment`], unless the namespace would then hold more than `quota`.
    pub async fn increment_quota(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<i64, KvError> {
        each!(self, increment(key, delta, ttl_ms, quota))
    }

    /// Adds `delta` to the counter at `key` only if the result is at most `limit`.
    pub async fn increment_within(
        &self,
        key: String,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<Bounded, KvError> {
        self.increment_within_quota(key, delta, limit, ttl_ms, &KvQuota::UNLIMITED)
            .await
    }

    /// [`KvStore::increment_within`], unless the namespace would then hold more than
    /// `quota`.
    pub async fn increment_within_quota(
        &self,
        key: String,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<Bounded, KvError> {
        each!(self, increment_within(key, delta, limit, ttl_ms, quota))
    }

    /// Sets `key` to `value` only if it holds `expected` (`None`: only if absent).
    pub async fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        self.compare_and_set_quota(key, expected, value, ttl_ms, &KvQuota::UNLIMITED)
            .await
    }

    /// [`KvStore::compare_and_set`], unless the namespace would then hold more than `quota`.
    pub async fn compare_and_set_quota(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<bool, KvError> {
        each!(self, compare_and_set(key, expected, value, ttl_ms, quota))
    }

    /// Whether calls go over the network (and may wait).
    pub fn is_remote(&self) -> bool {
        matches!(self, KvStore::Redis(_))
    }

    /// Live keys and bytes per plugin namespace, for metrics (a scan at scrape time). Redis
    /// is not scanned: its own `INFO keyspace` tells an operator what it holds.
    pub fn usage(&self) -> Vec<(String, KvUsage)> {
        match self {
            KvStore::Memory(memory) => memory.usage(),
            KvStore::Redis(_) => Vec::new(),
        }
    }
}

/// A counter's text as an integer.
pub(crate) fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| KvError::Invalid("the value is not a decimal integer".into()))
}

/// `current + delta`, or why not.
pub(crate) fn add(current: i64, delta: i64) -> Result<i64, KvError> {
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::Invalid("the counter would overflow a 64-bit integer".into()))
}
