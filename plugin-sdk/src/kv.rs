//! The host's key-value store: shared by every instance of this plugin and every weir
//! worker, namespaced to this plugin, with expiry and atomic counters.
//!
//! ```
//! use std::time::Duration;
//!
//! // Count requests per client over a minute.
//! let hits = weir_plugin::kv::increment("hits:10.0.0.7", 1, Some(Duration::from_secs(60)))?;
//! assert_eq!(hits, 1);
//! assert_eq!(weir_plugin::kv::get("hits:10.0.0.7")?, Some(b"1".to_vec()));
//! # Ok::<(), weir_plugin::kv::KvError>(())
//! ```
//!
//! The store is a grant: weir lets a plugin use it only if its `NAME.toml` says `kv = true`
//! (or `kv = { max_keys = …, max_bytes = …, max_value_bytes = …, max_ttl = "…" }`, its
//! quota); otherwise every call is [`KvError::AccessDenied`]. A write past the quota changes
//! nothing and is [`KvError::Invalid`], its text naming the limit.
//!
//! Outside wasm (in `cargo test`) these functions use the SDK's in-memory mock host.

use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// This plugin may not use the store: its `NAME.toml` does not grant `kv`.
    AccessDenied,
    /// The store could not be reached or failed.
    Unavailable(String),
    /// The operation does not fit the stored value (increment of a non-integer), a size
    /// bound, or the plugin's quota; the text says which.
    Invalid(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::AccessDenied => f.write_str("kv access denied"),
            KvError::Unavailable(why) => write!(f, "kv unavailable: {why}"),
            KvError::Invalid(why) => write!(f, "kv: {why}"),
        }
    }
}

impl std::error::Error for KvError {}

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// The value of `key`, if set and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    imp::get(key)
}

/// Sets `key` to `value`, expiring after `ttl` if given.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
    imp::set(key, value, ttl_ms(ttl))
}

/// Removes `key`.
pub fn delete(key: &str) -> Result<(), KvError> {
    imp::delete(key)
}

/// Adds `delta` to the counter at `key` (absent or expired counts as 0) and returns the new
/// value, atomically across every instance. `ttl` sets the expiry when the key is created.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
    imp::increment(key, delta, ttl_ms(ttl))
}

/// What [`increment_within`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded {
    /// Whether the delta was added.
    pub applied: bool,
    /// The counter after the call: with the delta if it was applied, unchanged if not (0 for
    /// a counter that does not exist).
    pub value: i64,
    /// Time until the counter expires, if it exists and expires.
    pub ttl: Option<Duration>,
}

/// Adds `delta` to the counter at `key` only if the result is at most `limit`, atomically
/// across every instance and, with weir's Redis store, every weir process, in one round trip
/// (weir:plugin 0.3.4). `ttl` sets the expiry when the key is created. A counter that admits
/// at most `limit`, with nothing to take back when it is full:
///
/// ```
/// use std::time::Duration;
/// use weir_plugin::kv;
///
/// let minute = Some(Duration::from_secs(60));
/// assert!(kv::increment_within("quota:alice", 1, 2, minute)?.applied);
/// assert!(kv::increment_within("quota:alice", 1, 2, minute)?.applied);
/// let full = kv::increment_within("quota:alice", 1, 2, minute)?;
/// assert!(!full.applied);
/// assert_eq!(full.value, 2);
/// # Ok::<(), weir_plugin::kv::KvError>(())
/// ```
pub fn increment_within(
    key: &str,
    delta: i64,
    limit: i64,
    ttl: Option<Duration>,
) -> Result<Bounded, KvError> {
    imp::increment_within(key, delta, limit, ttl_ms(ttl))
}

/// Sets `key` to `value` only if it holds `expected` now (`None`: only if it is absent or
/// expired), atomically (weir:plugin 0.3.4); returns whether it was set. On `false` another
/// caller changed the value first: read it again, recompute, and retry.
pub fn compare_and_set(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<bool, KvError> {
    imp::compare_and_set(key, expected, value, ttl_ms(ttl))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::KvError;
    use crate::bindings::weir::plugin::kv;

    fn error(e: kv::Error) -> KvError {
        match e {
            kv::Error::AccessDenied => KvError::AccessDenied,
            kv::Error::Unavailable(why) => KvError::Unavailable(why),
            kv::Error::Invalid(why) => KvError::Invalid(why),
        }
    }

    pub(super) fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        kv::get(key).map_err(error)
    }

    pub(super) fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        kv::set(key, value, ttl_ms).map_err(error)
    }

    pub(super) fn delete(key: &str) -> Result<(), KvError> {
        kv::delete(key).map_err(error)
    }

    pub(super) fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        kv::increment(key, delta, ttl_ms).map_err(error)
    }

    pub(super) fn increment_within(
        key: &str,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<super::Bounded, KvError> {
        kv::increment_within(key, delta, limit, ttl_ms)
            .map(|b| super::Bounded {
                applied: b.applied,
                value: b.value,
                ttl: b.ttl_ms.map(std::time::Duration::from_millis),
            })
            .map_err(error)
    }

    pub(super) fn compare_and_set(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        kv::compare_and_set(key, expected, value, ttl_ms).map_err(error)
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::mock::kv as imp;
