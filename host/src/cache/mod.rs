//! A route's response cache (`cache = { ... }`): stored responses by key and variant, in
//! memory bounded by size (moka: TinyLFU admission, LRU eviction, each key expiring when no
//! variant is worth keeping), the fetches in flight that concurrent misses wait for, and
//! purging. What may be stored and for how long is `policy` (RFC 9111); what the proxy does
//! with a hit, a miss or a stale entry is `proxy/caching.rs`. Nothing here knows the proxy.

pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName};
use moka::notification::RemovalCause;
use tokio::sync::watch;

use self::policy::{Directives, KEEP_FOR_REVALIDATION};
use crate::config::Cache as CacheConfig;
use crate::metrics::{CacheLookup, CacheMetrics};

/// What the route's plugins said of a request's cache key (`request.set-cache-key` and
/// `request.add-cache-key`, contract 0.3.5), carried in the request's extensions to the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginKey {
    /// The key instead of weir's (`scheme://host/path?query`).
    pub replaced: Option<String>,
    /// Parts added after it, each after a space.
    pub added: Vec<String>,
}

/// Responses kept per key, one per variant its `Vary` selects; the oldest goes past this.
const MAX_VARIANTS: usize = 8;

/// How long requests for a key whose response could not be stored go upstream without
/// waiting for each other (Varnish's "hit-for-pass").
const PASS_FOR: Duration = Duration::from_secs(10);

/// What a stored response costs besides its body and header bytes.
const ENTRY_OVERHEAD: usize = 256;

/// One stored response: its head and body, the variant of the request it answers, and what
/// its freshness depends on.
#[derive(Debug)]
pub struct Stored {
    /// The status.
    pub status: StatusCode,
    /// The headers, as the upstream sent them (hop-by-hop ones removed, a `Date` added if
    /// it had none).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The request headers `Vary` names.
    vary: Vec<HeaderName>,
    /// Their values in the request that fetched it.
    variant: Vec<(HeaderName, Option<Vec<u8>>)>,
    /// The response's `Cache-Control`.
    pub directives: Directives,
    /// Its freshness lifetime.
    lifetime: Duration,
    /// Its age when it arrived.
    initial_age: Duration,
    /// When it arrived.
    received: Instant,
    /// What it weighs in the store.
    size: usize,
}

impl Stored {
    /// A response to store: `variant` is computed from the fetching request by
    /// `policy::variant` over `vary`.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        storable: policy::Storable,
        request: &HeaderMap,
        initial_age: Duration,
    ) -> Stored {
        let variant = policy::variant(&storable.vary, request);
        let size = ENTRY_OVERHEAD
            + body.len()
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + variant
                .iter()
                .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        Stored {
            status,
            headers,
            body,
            vary: storable.vary,
            variant,
            directives: storable.directives,
            lifetime: storable.lifetime,
            initial_age,
            received: Instant::now(),
            size,
        }
    }

    /// Its current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.received))
    }

    /// Freshness left, in seconds: negative once stale.
    pub fn ttl(&self, now: Instant) -> i64 {
        let age = self.age(now).as_secs_f64();
        (self.lifetime.as_secs_f64() - age).floor() as i64
    }

    /// Whether it is fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }

    /// Whether it went stale no more than `window` seconds before `now`.
    pub fn stale_within(&self, now: Instant, window: Option<u64>) -> bool {
        let Some(window) = window else { return false };
        !self.directives.revalidate_when_stale()
            && self.age(now) < self.lifetime.saturating_add(Duration::from_secs(window))
    }

    /// Its validators, for a conditional revalidation.
    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    /// How long from `now` it is worth keeping: while fresh, then while it may be served
    /// stale, then (with a validator) for a revalidation.
    fn keep(&self, now: Instant) -> Duration {
        let stale = if self.directives.revalidate_when_stale() {
            0
        } else {
            let d = &self.directives;
            d.stale_while_revalidate
                .unwrap_or(0)
                .max(d.stale_if_error.unwrap_or(0))
        };
        let mut keep = self.lifetime.saturating_add(Duration::from_secs(stale));
        if self.has_validator() {
            keep = keep.max(self.lifetime.saturating_add(KEEP_FOR_REVALIDATION));
        }
        keep.saturating_sub(self.age(now))
    }

    /// Whether it answers a request with `request`'s headers (its `Vary` fields match).
    fn selected_by(&self, request: &HeaderMap) -> bool {
        policy::variant(&self.vary, request) == self.variant
    }
}

/// The responses stored under one key, the newest first.
#[derive(Debug)]
struct Variants(Vec<Arc<Stored>>);

impl Variants {
    fn weight(&self, key: &str) -> u32 {
        let bytes = key.len() + self.0.iter().map(|s| s.size).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// What the store holds for a request.
#[derive(Debug)]
pub enum Found {
    /// A response for its variant, fresh or not (the caller decides with `Stored`'s clock).
    Stored(Arc<Stored>),
    /// Responses under its key, none for its variant.
    VaryMiss,
    /// Nothing under its key.
    UriMiss,
}

/// Whose turn it is to fetch a key.
#[derive(Debug)]
pub enum Turn {
    /// This request's: it fetches and stores, and the others wait until the guard drops.
    Fetch(FetchGuard),
    /// Another's: wait for it (until the receiver's sender is dropped).
    Wait(watch::Receiver<()>),
    /// No one waits for this key: it was recently not storable.
    Alone,
}

/// Held by the one request fetching a key; dropping it wakes the others.
#[derive(Debug)]
pub struct FetchGuard {
    cache: Arc<RouteCache>,
    key: String,
    id: u64,
    _wake: watch::Sender<()>,
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        self.cache
            .fetching
            .remove_if(&self.key, |_, (id, _)| *id == self.id);
        // `_wake` drops after this: waiters see the key free when they wake.
    }
}

/// A route's cache.
pub struct RouteCache {
    config: CacheConfig,
    store: moka::sync::Cache<String, Arc<Variants>>,
    /// Keys being fetched, with the channel their waiters watch.
    fetching: DashMap<String, (u64, watch::Receiver<()>)>,
    next_fetch: AtomicU64,
    /// Keys recently not storable: requests for them do not wait for each other.
    passing: moka::sync::Cache<String, ()>,
    metrics: Arc<CacheMetrics>,
}

impl Drop for RouteCache {
    /// What a cache held leaves the gauges with it (a reload that changed its settings).
    fn drop(&mut self) {
        for (key, variants) in self.store.iter() {
            self.metrics.bytes.sub(i64::from(variants.weight(&key)));
            self.metrics.entries.sub(variants.0.len() as i64);
        }
    }
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache")
            .field("config", &self.config)
            .field("keys", &self.store.entry_count())
            .finish_non_exhaustive()
    }
}

/// Each key expires when none of its variants is worth keeping.
struct Expiry;

#[expect(
    clippy::disallowed_types,
    reason = "moka's trait passes std's Instant; the cache's own clock is tokio's"
)]
impl moka::Expiry<String, Arc<Variants>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Variants>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let now = Instant::now();
        value.0.iter().map(|s| s.keep(now)).max()
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Arc<Variants>,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

impl RouteCache {
    /// An empty cache for route `route` with `config`.
    pub fn new(config: CacheConfig, metrics: CacheMetrics) -> RouteCache {
        let metrics = Arc::new(metrics);
        let listener = {
            let metrics = metrics.clone();
            move |key: Arc<String>, value: Arc<Variants>, cause: RemovalCause| {
                metrics.bytes.sub(i64::from(value.weight(&key)));
                metrics.entries.sub(value.0.len() as i64);
                if cause == RemovalCause::Size {
                    metrics.evictions.inc();
                }
            }
        };
        RouteCache {
            store: moka::sync::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(|key: &String, value: &Arc<Variants>| value.weight(key))
                .expire_after(Expiry)
                .eviction_listener(listener)
                .build(),
            fetching: DashMap::new(),
            next_fetch: AtomicU64::new(0),
            // Keys are URLs, as long as a request target may be: bounded by their bytes.
            passing: moka::sync::Cache::builder()
                .max_capacity(8 << 20)
                .weigher(|key: &String, _: &()| u32::try_from(key.len()).unwrap_or(u32::MAX))
                .time_to_live(PASS_FOR)
                .build(),
            config,
            metrics,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Counts a lookup's outcome.
    pub fn count(&self, lookup: CacheLookup) {
        self.metrics.count(lookup);
    }

    /// The response stored under `key` for a request with `request`'s headers.
    pub fn find(&self, key: &str, request: &HeaderMap) -> Found {
        let Some(variants) = self.store.get(key) else {
            return Found::UriMiss;
        };
        variants
            .0
            .iter()
            .find(|stored| stored.selected_by(request))
            .map_or(Found::VaryMiss, |stored| Found::Stored(stored.clone()))
    }

    /// Stores `stored` under `key`, replacing the response for the same variant.
    pub fn insert(&self, key: &str, stored: Stored) {
        let stored = Arc::new(stored);
        let mut variants = vec![stored.clone()];
        if let Some(old) = self.store.get(key) {
            variants.extend(
                old.0
                    .iter()
                    .filter(|s| s.variant != stored.variant)
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        let variants = Arc::new(Variants(variants));
        self.metrics.bytes.add(i64::from(variants.weight(key)));
        self.metrics.entries.add(variants.0.len() as i64);
        self.store.insert(key.to_owned(), variants);
        self.passing.invalidate(key);
    }

    /// Forgets everything stored under `key`; whether there was anything.
    pub fn remove(&self, key: &str) -> bool {
        self.store.remove(key).is_some()
    }

    /// Forgets every key starting with `prefix`; how many there were.
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        let keys: Vec<Arc<String>> = self
            .store
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with(prefix))
            .collect();
        keys.iter().filter(|key| self.remove(key)).count()
    }

    /// Whose turn it is to fetch `key`.
    pub fn turn(self: &Arc<Self>, key: &str) -> Turn {
        if self.passing.contains_key(key) {
            return Turn::Alone;
        }
        match self.fetching.entry(key.to_owned()) {
            dashmap::Entry::Occupied(fetching) => Turn::Wait(fetching.get().1.clone()),
            dashmap::Entry::Vacant(free) => {
                let (wake, waiting) = watch::channel(());
                let id = self.next_fetch.fetch_add(1, Ordering::Relaxed);
                free.insert((id, waiting));
                Turn::Fetch(FetchGuard {
                    cache: self.clone(),
                    key: key.to_owned(),
                    id,
                    _wake: wake,
                })
            }
        }
    }

    /// Notes that `key`'s response could not be stored: for a while, requests for it go
    /// upstream at once instead of waiting for each other.
    pub fn pass(&self, key: &str) {
        self.passing.insert(key.to_owned(), ());
    }
}
