//! A route's `cache = { ... }`: how much of its upstream's responses weir keeps in memory,
//! the largest one it keeps, and how long a request waits for another's fetch of its key.

use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::model::RawCache;
use super::validate::Checker;

/// A route's stored responses take at most this much memory by default.
const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Responses larger than this are passed on and not stored, by default.
const DEFAULT_MAX_OBJECT_BYTES: u64 = 1 << 20;

/// How long a request waits for another request's fetch of its key, by default (nginx's
/// `proxy_cache_lock_timeout`).
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// `cache = { max_bytes, max_object_bytes, lock_timeout }` of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cache {
    /// The memory for the route's stored responses, heads and bodies counted.
    pub max_bytes: u64,
    /// A response larger than this is passed on and not stored.
    pub max_object_bytes: u64,
    /// How long a request waits for another's fetch of the same key before going upstream.
    #[serde(serialize_with = "super::validate::human")]
    pub lock_timeout: Duration,
}

pub(super) fn cache(check: &mut Checker<'_>, route: &str, raw: &Spanned<RawCache>) -> Cache {
    let section = raw.get_ref();
    let max_bytes = match &section.max_bytes {
        Some(n) if *n.get_ref() == 0 => {
            check.error(
                n,
                format!("route \"{route}\": cache.max_bytes must be at least 1; remove cache to turn it off"),
            );
            DEFAULT_MAX_BYTES
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_BYTES,
    };
    let max_object_bytes = match &section.max_object_bytes {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > max_bytes => {
            check.error(
                n,
                format!("route \"{route}\": cache.max_object_bytes must be between 1 and max_bytes ({max_bytes})"),
            );
            max_bytes
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_OBJECT_BYTES.min(max_bytes),
    };
    Cache {
        max_bytes,
        max_object_bytes,
        lock_timeout: section.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT),
    }
}
