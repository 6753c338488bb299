//! The mock host used outside wasm: an in-memory kv with a settable clock, and a log that
//! keeps its lines. One per thread, so parallel tests do not share state. Driven by
//! [`testing`](crate::testing).
#![cfg_attr(
    target_arch = "wasm32",
    allow(dead_code, reason = "used only natively")
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::log::Level;

#[derive(Debug)]
pub(crate) struct MockHost {
    pub(crate) now: SystemTime,
    pub(crate) kv: HashMap<String, (Vec<u8>, Option<SystemTime>)>,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) level: Level,
    /// `kv` operations since the last reset: each is a host crossing in weir.
    pub(crate) kv_calls: usize,
}

impl Default for MockHost {
    fn default() -> MockHost {
        MockHost {
            now: SystemTime::now(),
            kv: HashMap::new(),
            logs: Vec::new(),
            level: Level::Trace,
            kv_calls: 0,
        }
    }
}

thread_local! {
    static HOST: RefCell<MockHost> = RefCell::new(MockHost::default());
}

pub(crate) fn with<R>(f: impl FnOnce(&mut MockHost) -> R) -> R {
    HOST.with(|host| f(&mut host.borrow_mut()))
}

pub(crate) mod kv {
    use super::*;
    use crate::kv::KvError;

    fn live(host: &MockHost, key: &str) -> Option<Vec<u8>> {
        host.kv
            .get(key)
            .filter(|(_, expires)| expires.is_none_or(|at| at > host.now))
            .map(|(value, _)| value.clone())
    }

    fn expiry(now: SystemTime, ttl_ms: Option<u64>) -> Option<SystemTime> {
        ttl_ms.map(|ms| now + Duration::from_millis(ms))
    }

    pub(crate) fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(with(|host| {
            host.kv_calls += 1;
            live(host, key)
        }))
    }

    pub(crate) fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        with(|host| {
            host.kv_calls += 1;
            let expires = expiry(host.now, ttl_ms);
            host.kv.insert(key.to_owned(), (value.to_vec(), expires));
        });
        Ok(())
    }

    pub(crate) fn delete(key: &str) -> Result<(), KvError> {
        with(|host| {
            host.kv_calls += 1;
            host.kv.remove(key)
        });
        Ok(())
    }

    /// The host's semantics: decimal text, absent or expired counts as 0, TTL set on create.
    pub(crate) fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        with(|host| {
            host.kv_calls += 1;
            increment_in(host, key, delta, ttl_ms)
        })
    }

    fn increment_in(
        host: &mut MockHost,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        match live(host, key) {
            Some(value) => {
                let current = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Invalid("the value is not a decimal integer".into()))?;
                let next = current.checked_add(delta).ok_or_else(|| {
                    KvError::Invalid("the counter would overflow a 64-bit integer".into())
                })?;
                if let Some(slot) = host.kv.get_mut(key) {
                    slot.0 = next.to_string().into_bytes();
                }
                Ok(next)
            }
            None => {
                let expires = expiry(host.now, ttl_ms);
                host.kv
                    .insert(key.to_owned(), (delta.to_string().into_bytes(), expires));
                Ok(delta)
            }
        }
    }
}

pub(crate) mod log {
    use super::*;

    pub(crate) fn enabled(level: Level) -> bool {
        with(|host| level >= host.level)
    }

    pub(crate) fn log(level: Level, message: &str) {
        with(|host| host.logs.push((level, message.to_owned())));
    }
}
