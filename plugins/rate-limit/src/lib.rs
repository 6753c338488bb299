//! `rate-limit`: at most N requests per window per key (client address, a header, the
//! consumer an auth plugin set, or the route), counted in the host's shared `kv` so every
//! instance and worker thread shares one count. See the README for every key.
//!
//! # The algorithm: a sliding window of slot counters
//!
//! Each window is cut into `slots` slots (10 by default; a 10 s window has 1 s slots), and
//! each slot is one `kv` counter, created with a TTL of one window plus one slot. A request
//! reads the older slots of the window, then one `increment-within` (weir:plugin 0.3.4) adds
//! it to the current slot only if
//!
//! ```text
//! used = (the current slot, this request included) + (the full slots before it) + (the
//!        oldest slot, weighted by how much of it is still inside the window)
//! ```
//!
//! stays within `requests`, atomically in the store. A refused request is counted nowhere,
//! so refusals do not consume the quota (Envoy's and Kong's behaviour), and there is nothing
//! to take back (except the increments of earlier limits when a later one refuses).
//!
//! Why this one: the store makes `increment-within` atomic, so concurrent requests on one
//! key never overshoot within a slot, on one weir or many sharing Redis: with 4 clients on a
//! 100-per-10-s key, exactly 100 pass. Unlike a fixed window it does not let 2× the limit
//! through across a window edge; its only approximation is the oldest slot's weighting, which
//! is off by at most one slot's count at the window's trailing edge. `algorithm = "gcra"`
//! (with `compare-and-set`) is the other choice: a burst, then one request per interval.
//!
//! # Fewer store reads: settled slots are remembered
//!
//! A slot is *settled* once it is two or more slots old, or is the previous slot and the
//! current one is [`settle_ms`] old (a tenth of a slot, at most a second): only requests
//! that read the clock inside a slot write it, and by then those calls have finished. Each
//! instance keeps the counts of settled slots it has read, so a request costs one
//! `increment-within`, plus one `get` of the previous slot in the first tenth of a slot (it
//! may still see late writes), instead of `slots + 1` store calls. Counts are remembered per
//! key; all are forgotten when more than [`MAX_SETTLED`] keys are held.
//!
//! # Headers without a response hook
//!
//! The `RateLimit-*` headers describe the window as this request's admission saw it (this
//! request included). `on_request` leaves them for the response
//! (`Request::set_response_header`, weir:plugin 0.3.1), so the filter is called once per
//! request, not twice (Kong's and Envoy's limiters also compute them when they decide).
//!
//! # Refusals as a metric
//!
//! Each refusal is counted in `weir_plugin_<plugin>_refusals_total{limit="..."}`
//! (weir:plugin 0.3.3), under the limit that refused it — the one `Retry-After` waits for —
//! named by its `name` or as `REQUESTS/WINDOW`: one series per configured limit.

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::time::{Duration, UNIX_EPOCH};

use sha2::Digest as _;
use weir_plugin::metrics::Counter;
use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What requests are counted by: `client`, `header`, `consumer` or `route`.
    #[serde(default = "default_key")]
    pub key: String,
    /// The header counted by, for `key = "header"`.
    #[serde(default)]
    pub header: Option<String>,
    /// The header an auth plugin puts the consumer in, for `key = "consumer"`.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// How requests are counted: `sliding-window` (slot counters) or `gcra` (a theoretical
    /// arrival time per key, kept with compare-and-set).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Slots per window (`sliding-window`): more is smoother; each settled slot is read once
    /// per instance.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Send `RateLimit-*` headers on every response.
    #[serde(default = "yes")]
    pub headers: bool,
    /// Let requests through (and log) when the `kv` store fails, instead of answering 503.
    #[serde(default = "yes")]
    pub fault_tolerant: bool,
    /// The limits; a request must fit every one.
    pub limits: Vec<LimitConfig>,
}

/// One limit: `requests` per `window`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests admitted per window.
    pub requests: u32,
    /// The window, like `1s`, `10s`, `1h`.
    pub window: String,
    /// The limit's name in the refusals metric; `REQUESTS/WINDOW` (`10/1s`) if absent.
    #[serde(default)]
    pub name: Option<String>,
}

fn default_key() -> String {
    "client".into()
}
fn default_consumer_header() -> String {
    "x-consumer-id".into()
}
fn default_algorithm() -> String {
    "sliding-window".into()
}
fn default_slots() -> u32 {
    10
}
fn yes() -> bool {
    true
}

/// What requests are counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyBy {
    Client,
    Header(String),
    Consumer(String),
    Route,
}

/// How requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    SlidingWindow,
    Gcra,
}

/// A store change a request made, taken back if a later limit refuses it.
#[derive(Debug)]
enum Taken {
    /// A slot counter incremented by one.
    Slot(String),
    /// A GCRA arrival time moved forward by `interval_us`.
    Arrival { key: String, interval_us: u64 },
}

#[derive(Debug)]
struct Limit {
    requests: u32,
    window_ms: u64,
    slot_ms: u64,
    /// The `limit` label of the refusals it makes.
    name: String,
}

/// The filter.
#[derive(Debug)]
pub struct RateLimit {
    key: KeyBy,
    algorithm: Algorithm,
    slots: u32,
    headers: bool,
    fault_tolerant: bool,
    limits: Vec<Limit>,
    policy: String,
    /// Refusals by limit; `None` if weir refused the declaration (logged at configure).
    refusals: Option<Counter>,
    /// Counts of settled slots by key, one ring of places per limit ([`Settled`]; see the
    /// module docs).
    settled: RefCell<weir_plugin::hash::HashMap<String, Vec<Settled>>>,
    /// Whether the last store call failed (for logging the change, not every failure).
    store_down: Cell<bool>,
}

/// The counts of one limit's settled slots for one key, `slots` places: slot `s`'s
/// `(s, count)` at `s % slots`, until a later slot takes its place (a place holding another
/// slot does not know `s`).
type Settled = Vec<(u64, u64)>;

/// The longest header value counted by itself; a longer one counts by its SHA-256.
const MAX_KEY_VALUE: usize = 256;

/// Keys whose settled counts one instance remembers before it forgets them all.
const MAX_SETTLED: usize = 1024;

/// One limit's state for the current request.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// Which limit (its index in the config).
    index: usize,
    limit: u32,
    used: u64,
    /// Milliseconds until the oldest counted request leaves the window.
    reset_ms: u64,
    /// Milliseconds until one more request would be admitted (0 if it is now).
    retry_ms: u64,
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<RateLimit, String> {
        let key = match config.key.as_str() {
            "client" => KeyBy::Client,
            "route" => KeyBy::Route,
            "consumer" => KeyBy::Consumer(config.consumer_header.to_ascii_lowercase()),
            "header" => KeyBy::Header(
                config
                    .header
                    .ok_or("key = \"header\" needs header = \"NAME\"")?
                    .to_ascii_lowercase(),
            ),
            other => {
                return Err(format!(
                    "key {other:?}: must be client, header, consumer or route"
                ));
            }
        };
        let algorithm = match config.algorithm.as_str() {
            "sliding-window" => Algorithm::SlidingWindow,
            "gcra" => Algorithm::Gcra,
            other => {
                return Err(format!(
                    "algorithm {other:?}: must be sliding-window or gcra"
                ));
            }
        };
        if !(1..=60).contains(&config.slots) {
            return Err(format!("slots = {}: must be 1 to 60", config.slots));
        }
        if config.limits.is_empty() {
            return Err("no limits".into());
        }
        let mut limits = Vec::new();
        for (i, limit) in config.limits.iter().enumerate() {
            let window = humantime::parse_duration(&limit.window)
                .map_err(|e| format!("limits[{i}].window {:?}: {e}", limit.window))?;
            let window_ms = window.as_millis() as u64;
            if window_ms < u64::from(config.slots) || limit.requests == 0 {
                return Err(format!(
                    "limits[{i}]: requests must be at least 1 and window at least {} ms",
                    config.slots
                ));
            }
            limits.push(Limit {
                requests: limit.requests,
                window_ms,
                slot_ms: window_ms / u64::from(config.slots),
                name: limit
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", limit.requests, limit.window)),
            });
        }
        let policy = limits
            .iter()
            .map(|l| format!("{};w={}", l.requests, l.window_ms.div_ceil(1000)))
            .collect::<Vec<_>>()
            .join(", ");
        // A metric weir refuses (another plugin's name, say) costs the metric, not the limiter.
        let refusals = Counter::declare(
            "refusals",
            "Requests refused with 429, by the limit that refused them.",
            &["limit"],
        )
        .map_err(|e| weir_plugin::log::warn!("rate-limit: no refusals metric: {e}"))
        .ok();
        Ok(RateLimit {
            key,
            algorithm,
            slots: config.slots,
            headers: config.headers,
            fault_tolerant: config.fault_tolerant,
            limits,
            policy,
            refusals,
            settled: RefCell::default(),
            store_down: Cell::new(false),
        })
    }

    fn hooks(&self) -> Hooks {
        // The `RateLimit-*` headers are left for the response by `on_request`.
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let key = self.key_of(request);
        let now = now_ms();
        // What was counted, to give back if a limit refuses: empty, and not allocated, with
        // one limit that admits.
        let mut taken = Vec::new();
        let mut refused: Option<Usage> = None;
        let mut tightest: Option<Usage> = None;
        for (i, limit) in self.limits.iter().enumerate() {
            let took = match self.algorithm {
                Algorithm::SlidingWindow => {
                    let slot = store_key(i, now / limit.slot_ms, &key);
                    self.take(i, limit, &slot, &key, now)
                        .map(|(usage, counted)| (usage, counted.then_some(Taken::Slot(slot))))
                }
                Algorithm::Gcra => take_gcra(i, limit, &key, now_us()),
            };
            let (usage, counted) = match took {
                Ok(took) => took,
                Err(e) => return self.store_failed(&e, &taken),
            };
            if let Some(counted) = counted {
                // The last limit's count is given back only if an earlier one refused.
                if i + 1 < self.limits.len() || refused.is_some() {
                    taken.push(counted);
                }
            } else {
                refused = Some(match refused {
                    Some(r) if r.retry_ms >= usage.retry_ms => r,
                    _ => usage,
                });
            }
            tightest = Some(pick_tightest(tightest, usage));
        }
        if self.store_down.replace(false) {
            weir_plugin::log::info!("rate-limit store answers again; limiting");
        }
        let Some(refused) = refused else {
            if let Some(usage) = tightest.filter(|_| self.headers) {
                let mut digits = Default::default();
                for (name, value) in self.rate_headers(usage, &mut digits) {
                    request.set_response_header(name, value);
                }
            }
            return Action::Continue;
        };
        give_back(&taken);
        if let Some(refusals) = &self.refusals {
            refusals.inc(&[&self.limits[refused.index].name]);
        }
        let retry_after = refused.retry_ms.div_ceil(1000).max(1);
        let mut reply = Reply::json(
            429,
            &serde_json::json!({ "message": "API rate limit exceeded" }),
        )
        .header("retry-after", retry_after.to_string());
        if self.headers {
            let shown = Usage {
                used: u64::from(refused.limit),
                ..refused
            };
            let mut digits = Default::default();
            for (name, value) in self.rate_headers(shown, &mut digits) {
                reply = reply.header(name, value);
            }
        }
        reply.into()
    }
}

impl RateLimit {
    /// The value requests are counted by; a missing header or consumer counts by client.
    fn key_of(&self, request: &Request) -> String {
        let client = || {
            let addr = request.client_addr();
            let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
            joined(&["c:", ip])
        };
        match &self.key {
            KeyBy::Client => client(),
            KeyBy::Route => joined(&["r:", request.route()]),
            KeyBy::Header(name) | KeyBy::Consumer(name) => match request.header(name) {
                // A long value counts by its digest: the store's keys are at most 1 KiB, and a
                // key the store refuses must not read as a store outage (which
                // `fault_tolerant` lets through).
                Some(value) if value.len() > MAX_KEY_VALUE => {
                    let digest = sha2::Sha256::digest(value.as_bytes());
                    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    joined(&["d:", &hex])
                }
                Some(value) if !value.is_empty() => joined(&["h:", value]),
                _ => client(),
            },
        }
    }

    /// Counts this request against limit `index` (in its current slot's counter `slot`) if
    /// it fits, and returns the usage including it and whether it was counted. The older
    /// slots are read first; then one `increment-within` (weir:plugin 0.3.4) adds the request
    /// to the current slot only if the window stays within the limit, atomically in the
    /// store, so a refused request leaves nothing to take back and concurrent requests on
    /// other instances (with a Redis store) never see it counted.
    fn take(
        &self,
        index: usize,
        limit: &Limit,
        slot: &str,
        key: &str,
        now: u64,
    ) -> Result<(Usage, bool), weir_plugin::kv::KvError> {
        let into_slot = now % limit.slot_ms;
        // counts[j] is slot `now / slot_ms - j`; counts[0], the current slot, comes last.
        let mut counts = self.older_counts(index, limit, key, now)?;
        let oldest_share = 1.0 - into_slot as f64 / limit.slot_ms as f64;
        let oldest = counts[counts.len() - 1];
        let older: u64 = counts[1..counts.len() - 1].iter().sum::<u64>()
            + (oldest as f64 * oldest_share).ceil() as u64;
        let room = i64::from(limit.requests) - i64::try_from(older).unwrap_or(i64::MAX);
        let ttl = Duration::from_millis(limit.window_ms + limit.slot_ms);
        let bounded = weir_plugin::kv::increment_within(slot, 1, room, Some(ttl))?;
        // A refused request is shown as the one over the limit it would have been.
        counts[0] = bounded.value.max(0) as u64 + u64::from(!bounded.applied);
        Ok((self.usage(index, limit, now, &counts), bounded.applied))
    }

    /// The counts of limit `index`'s slots before the current one, oldest last, after a 0
    /// for the current slot: settled slots (see the module docs) from what this instance
    /// remembers or else the store, the previous slot from the store until it settles.
    fn older_counts(
        &self,
        index: usize,
        limit: &Limit,
        key: &str,
        now: u64,
    ) -> Result<Vec<u64>, weir_plugin::kv::KvError> {
        let slot = now / limit.slot_ms;
        let previous_settled = now % limit.slot_ms >= settle_ms(limit.slot_ms);
        let read = |store_key: &str| -> Result<u64, weir_plugin::kv::KvError> {
            let value = weir_plugin::kv::get(store_key)?;
            Ok(value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0))
        };
        let mut unremembered = Settled::new();
        let mut settled = self.settled.borrow_mut();
        if settled.len() >= MAX_SETTLED && !settled.contains_key(key) {
            settled.clear();
        }
        // One look-up a request; the key is copied only when it is first kept.
        let limits = settled
            .entry_ref(key)
            .or_insert_with(|| vec![vec![(u64::MAX, 0); self.slots as usize]; self.limits.len()]);
        // A list per limit; if not, read without remembering.
        let known = limits.get_mut(index).unwrap_or(&mut unremembered);
        // counts[j] is slot `slot - j`; the oldest (j = slots) is only partly in the window.
        let mut counts = Vec::with_capacity(self.slots as usize + 1);
        counts.push(0);
        for j in 1..=u64::from(self.slots) {
            let Some(s) = slot.checked_sub(j) else {
                counts.push(0);
                continue;
            };
            let remember = j >= 2 || previous_settled;
            let at = (s % u64::from(self.slots)) as usize;
            let count = match known.get(at) {
                Some(&(held, count)) if remember && held == s => count,
                _ => {
                    let count = read(&store_key(index, s, key))?;
                    if let Some(place) = known.get_mut(at).filter(|_| remember) {
                        *place = (s, count);
                    }
                    count
                }
            };
            counts.push(count);
        }
        Ok(counts)
    }

    /// Limit `index`'s usage from its slot counts (current first, oldest last).
    fn usage(&self, index: usize, limit: &Limit, now: u64, counts: &[u64]) -> Usage {
        let into_slot = now % limit.slot_ms;
        let oldest_share = 1.0 - into_slot as f64 / limit.slot_ms as f64;
        let full: u64 = counts[..counts.len() - 1].iter().sum();
        let oldest = counts[counts.len() - 1];
        let used = full + (oldest as f64 * oldest_share).ceil() as u64;

        // When the oldest counted slots leave the window, their requests stop counting.
        // Slot `slot - j` leaves entirely at the end of slot `slot - j + slots`.
        let leaves_in = |j: u64| (u64::from(self.slots) - j + 1) * limit.slot_ms - into_slot;
        let mut reset_ms = 0;
        let mut retry_ms = 0;
        let excess = used.saturating_sub(u64::from(limit.requests).saturating_sub(1));
        let mut dropped = 0;
        for j in (0..counts.len() as u64).rev() {
            let count = counts[j as usize];
            if count == 0 {
                continue;
            }
            if reset_ms == 0 {
                reset_ms = leaves_in(j);
            }
            dropped += count;
            if excess > 0 && dropped >= excess {
                retry_ms = leaves_in(j);
                break;
            }
        }
        Usage {
            index,
            limit: limit.requests,
            used,
            reset_ms,
            retry_ms,
        }
    }

    /// The `RateLimit-*` headers for `usage`, the numbers written into `digits`.
    fn rate_headers<'a>(
        &'a self,
        usage: Usage,
        digits: &'a mut [itoa::Buffer; 3],
    ) -> [(&'static str, &'a str); 4] {
        let remaining = u64::from(usage.limit).saturating_sub(usage.used);
        let [limit, left, reset] = digits;
        [
            ("ratelimit-limit", limit.format(usage.limit)),
            ("ratelimit-remaining", left.format(remaining)),
            (
                "ratelimit-reset",
                reset.format(usage.reset_ms.div_ceil(1000)),
            ),
            ("ratelimit-policy", &self.policy),
        ]
    }

    /// A store call failed. When the store is down (`Unavailable`), the request passes
    /// (`fault_tolerant`) or gets 503, logged when the store starts failing and when it
    /// answers again, not per request (a Redis outage would otherwise write a line for every
    /// request). A full quota, or `kv` not granted, gets 503 whatever `fault_tolerant` says:
    /// passing would turn limiting off for everyone — a client sending new keys (header
    /// values, addresses) fast enough would fill the quota on purpose. That line is written
    /// each time; weir holds back repeats of a plugin's line for 10 s. Any other error (Redis
    /// out of memory, a replica after a failover) is the store's, as `Unavailable` is.
    fn store_failed(&self, error: &weir_plugin::kv::KvError, taken: &[Taken]) -> Action {
        give_back(taken);
        // weir's quota errors say `quota:` first; any other failure (Redis out of memory,
        // a replica after a failover) is the store's.
        let outage = match error {
            weir_plugin::kv::KvError::AccessDenied => false,
            weir_plugin::kv::KvError::Invalid(why) => !why.starts_with("quota:"),
            weir_plugin::kv::KvError::Unavailable(_) => true,
        };
        let pass = outage && self.fault_tolerant;
        if !outage {
            weir_plugin::log::error!(
                "rate-limit cannot count: {error}; such requests get 503 (kv = {{ max_keys = N }} in this plugin's NAME.toml sizes the quota: see its README)"
            );
        } else if !self.store_down.replace(true) {
            let outcome = if pass {
                "requests pass unlimited (fault_tolerant)"
            } else {
                "requests get 503"
            };
            weir_plugin::log::warn!("rate-limit store failed: {error}; {outcome} until it answers");
        }
        if pass {
            Action::Continue
        } else {
            Reply::text(503, "rate limit store unavailable\n")
                .header("retry-after", "1")
                .into()
        }
    }
}

/// `{index}:{slot}:{key}`: the store key of limit `index`'s counter for `slot`. Built by hand,
/// as [`joined`] is: this runs on every request, and `format!` costs more than the rest of
/// the key's work together.
fn store_key(index: usize, slot: u64, key: &str) -> String {
    let mut index_text = itoa::Buffer::new();
    let mut slot_text = itoa::Buffer::new();
    joined(&[
        index_text.format(index),
        ":",
        slot_text.format(slot),
        ":",
        key,
    ])
}

/// `parts` in one string, allocated once.
fn joined(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

/// The usage with the fewest requests left.
fn pick_tightest(current: Option<Usage>, next: Usage) -> Usage {
    let left = |u: &Usage| u64::from(u.limit).saturating_sub(u.used);
    match current {
        Some(c) if left(&c) <= left(&next) => c,
        _ => next,
    }
}

/// Takes back what a refused request counted against the limits before the one that
/// refused it.
fn give_back(taken: &[Taken]) {
    for taken in taken {
        match taken {
            Taken::Slot(key) => {
                let _ = weir_plugin::kv::increment(key, -1, None);
            }
            Taken::Arrival { key, interval_us } => {
                for _ in 0..GCRA_TRIES {
                    let Ok(stored) = weir_plugin::kv::get(key) else {
                        return;
                    };
                    let Some(tat) = stored.as_deref().and_then(parse_u64) else {
                        break;
                    };
                    let earlier = tat.saturating_sub(*interval_us).to_string();
                    let ttl = Duration::from_micros(tat.saturating_sub(now_us()));
                    match weir_plugin::kv::compare_and_set(
                        key,
                        stored.as_deref(),
                        earlier.as_bytes(),
                        Some(ttl),
                    ) {
                        Ok(false) => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}

/// Compare-and-set attempts a GCRA admission makes before it gives up on a key other
/// requests keep changing.
const GCRA_TRIES: usize = 16;

/// Counts a request against limit `index` by GCRA: the key's stored *theoretical arrival
/// time* (TAT, in µs) moves forward by one emission interval (`window / requests`) per
/// admitted request, and a request is admitted while the TAT stays at most one window ahead
/// of now, so a burst of `requests` passes at once, then one per interval. The TAT is read,
/// and written back with `compare-and-set` (weir:plugin 0.3.4): a concurrent admission on
/// any instance makes the set fail, and the request reads and tries again, so no admission
/// is lost or doubled. Returns the usage and, if admitted, what to take back.
fn take_gcra(
    index: usize,
    limit: &Limit,
    key: &str,
    now: u64,
) -> Result<(Usage, Option<Taken>), weir_plugin::kv::KvError> {
    let window = limit.window_ms * 1000;
    let interval = (window / u64::from(limit.requests)).max(1);
    let mut index_text = itoa::Buffer::new();
    let store = joined(&["g", index_text.format(index), ":", key]);
    let usage = |ahead: u64, admitted: bool| {
        // Requests still "in" the window: how far ahead the TAT is, in intervals.
        let used = ahead.div_ceil(interval);
        Usage {
            index,
            limit: limit.requests,
            used: if admitted {
                used.min(u64::from(limit.requests))
            } else {
                u64::from(limit.requests) + 1
            },
            reset_ms: ahead.div_ceil(1000),
            // One more fits once the TAT is within a window of now.
            retry_ms: if admitted {
                0
            } else {
                (ahead + interval).saturating_sub(window).div_ceil(1000)
            },
        }
    };
    let mut ahead = 0;
    for _ in 0..GCRA_TRIES {
        let stored = weir_plugin::kv::get(&store)?;
        let tat = stored.as_deref().and_then(parse_u64).unwrap_or(0).max(now);
        ahead = tat - now;
        let next = tat + interval;
        if next - now > window {
            return Ok((usage(ahead, false), None));
        }
        let next_text = next.to_string();
        let ttl = Duration::from_micros(next - now);
        if weir_plugin::kv::compare_and_set(
            &store,
            stored.as_deref(),
            next_text.as_bytes(),
            Some(ttl),
        )? {
            let taken = Taken::Arrival {
                key: store,
                interval_us: interval,
            };
            return Ok((usage(next - now, true), Some(taken)));
        }
    }
    // Every attempt lost to a concurrent admission: the key is at its busiest; refuse this
    // one rather than spin.
    Ok((usage(ahead, false), None))
}

fn parse_u64(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// How far into a slot the previous slot is settled: a tenth of a slot, from 1 ms to a
/// second. Late writes to it come from requests that read the clock inside it and had not yet
/// incremented: microseconds later on one weir, a Redis round trip later with Redis, and
/// later by the clock skew between weirs that share one Redis (keep them within this by NTP).
/// A count remembered before a late write lands misses it until the slot leaves the window.
fn settle_ms(slot_ms: u64) -> u64 {
    (slot_ms / 10).clamp(1, 1000)
}

fn now_ms() -> u64 {
    now_us() / 1000
}

fn now_us() -> u64 {
    weir_plugin::clock::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

weir_plugin::export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_plugin::testing::{self, Harness, TestRequest};

    use super::{RateLimit, joined, store_key};

    #[test]
    fn keys_are_built_as_format_would() {
        assert_eq!(store_key(0, 177_000_123, "h:alice"), "0:177000123:h:alice");
        assert_eq!(store_key(12, 0, ""), "12:0:");
        assert_eq!(joined(&["c:", "10.0.0.1"]), "c:10.0.0.1");
        assert_eq!(joined(&[]), "");
    }

    fn limiter(config: &str) -> Harness<RateLimit> {
        Harness::new(config).expect("valid config")
    }

    /// Moves the mock clock to the start of a slot boundary-free second, so tests do not
    /// depend on where in a slot they start.
    fn align(ms: u64) {
        let now = super::now_ms();
        testing::advance(Duration::from_millis(ms - now % ms));
    }

    #[test]
    fn the_limit_is_exact_and_refusals_carry_retry_after_and_headers() {
        let rl = limiter("[[limits]]\nrequests = 3\nwindow = \"10s\"");
        align(1000);
        for left in ["2", "1", "0"] {
            let request = TestRequest::get("/");
            let forwarded = rl.request(request).forwarded();
            let response = rl.response(&forwarded, 200, &[]).response();
            assert_eq!(response.header_value("ratelimit-remaining"), Some(left));
            assert_eq!(response.header_value("ratelimit-limit"), Some("3"));
            assert_eq!(response.header_value("ratelimit-policy"), Some("3;w=10"));
        }
        let reply = rl.request(TestRequest::get("/")).reply();
        assert_eq!(reply.status, 429);
        // The slot leaves the window fully one slot after the window: 11 s.
        assert_eq!(reply.header_value("retry-after"), Some("11"));
        assert_eq!(reply.header_value("ratelimit-remaining"), Some("0"));
        // Refusals do not consume: after the window, three more pass.
        testing::advance(Duration::from_secs(11));
        for _ in 0..3 {
            rl.request(TestRequest::get("/")).forwarded();
        }
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let rl = limiter("[[limits]]\nrequests = 4\nwindow = \"4s\"\n");
        align(1000);
        // Two requests at t=0, two at t=2: the limit is reached.
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).forwarded();
        testing::advance(Duration::from_secs(2));
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).forwarded();
        let reply = rl.request(TestRequest::get("/")).reply();
        assert_eq!(
            reply.header_value("retry-after"),
            Some("3"),
            "t=0's slot leaves at t=4.4"
        );
        // At t=4.4 the first two have left the window: two more fit, not four.
        testing::advance(Duration::from_millis(2400));
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).reply();
    }

    /// Settled slots are read from the store once per instance: a request costs two store
    /// calls, not `slots + 1`, and still counts every slot.
    #[test]
    fn settled_slots_are_read_once_and_still_counted() {
        let rl = limiter("[[limits]]\nrequests = 1000\nwindow = \"10s\"");
        align(1000);
        let exchange = || {
            let request = TestRequest::get("/");
            let forwarded = rl.request(request).forwarded();
            rl.response(&forwarded, 200, &[]).response()
        };
        // One request in each of the window's ten slots, then two in the eleventh.
        for _ in 0..10 {
            exchange();
            testing::advance(Duration::from_secs(1));
        }
        exchange();
        let before = testing::kv_calls();
        let response = exchange();
        assert_eq!(testing::kv_calls() - before, 2, "a read + increment-within");
        // 2 in the current slot + 9 full slots + the oldest slot (still wholly inside).
        assert_eq!(response.header_value("ratelimit-remaining"), Some("988"));
    }

    /// The previous slot is read from the store until a tenth of a slot has passed, so a late
    /// write to it still counts; from then on it is remembered like the older ones.
    #[test]
    fn the_previous_slot_is_remembered_once_it_settles() {
        let rl = limiter("[[limits]]\nrequests = 1000\nwindow = \"10s\"");
        align(1000);
        let exchange = || {
            let before = testing::kv_calls();
            let forwarded = rl.request(TestRequest::get("/")).forwarded();
            let response = rl.response(&forwarded, 200, &[]).response();
            let left = response
                .header_value("ratelimit-remaining")
                .map(str::to_owned);
            (testing::kv_calls() - before, left)
        };
        // Past a tenth of a slot, every older slot is remembered from the first request on.
        testing::advance(Duration::from_millis(600));
        assert_eq!(
            exchange().0,
            11,
            "nine settled slots, the previous one, the increment"
        );
        let previous = super::now_ms() / 1000;
        testing::advance(Duration::from_millis(430));
        assert_eq!(
            exchange(),
            (2, Some("998".into())),
            "the previous slot read"
        );
        // A request that read the clock in the previous slot writes it late.
        let late = store_key(0, previous, "c:127.0.0.1");
        weir_plugin::kv::increment(&late, 1, None).expect("the mock store");
        testing::advance(Duration::from_millis(60));
        assert_eq!(
            exchange(),
            (2, Some("996".into())),
            "read again: the late write counts"
        );
        testing::advance(Duration::from_millis(20));
        assert_eq!(exchange(), (2, Some("995".into())), "read and remembered");
        assert_eq!(exchange(), (1, Some("994".into())), "remembered");
        testing::advance(Duration::from_secs(1));
        assert_eq!(
            exchange(),
            (2, Some("993".into())),
            "a new previous slot is read"
        );
    }

    /// Remembered counts have one place per slot of the window: a slot a window later takes
    /// the place of one that has left it, and is read from the store, never taken for it.
    #[test]
    fn remembered_counts_wrap_around_the_window() {
        let rl = limiter("[[limits]]\nrequests = 1000\nwindow = \"10s\"");
        align(1000);
        let exchange = || {
            let forwarded = rl.request(TestRequest::get("/")).forwarded();
            rl.response(&forwarded, 200, &[]).response()
        };
        // Slot k gets k + 2 requests, for two and a half windows.
        for k in 0..25_u64 {
            let before = testing::kv_calls();
            exchange();
            // The first request reads the nine settled slots; each slot after, one more.
            let reads = if k == 0 { 9 } else { 1 };
            assert_eq!(testing::kv_calls() - before, 2 + reads, "slot {k}");
            for _ in 0..k {
                exchange();
            }
            let before = testing::kv_calls();
            let response = exchange();
            assert_eq!(testing::kv_calls() - before, 2, "slot {k}: all remembered");
            // This slot, the nine before it, and the oldest (wholly inside at the slot's
            // start): slots k - 10 to k, slot i holding i + 2.
            let used: u64 = (k.saturating_sub(10)..=k).map(|i| i + 2).sum();
            let remaining = (1000 - used).to_string();
            assert_eq!(
                response.header_value("ratelimit-remaining"),
                Some(remaining.as_str()),
                "slot {k}"
            );
            testing::advance(Duration::from_secs(1));
        }
    }

    #[test]
    fn remembered_counts_are_forgotten_all_at_once_past_the_most_keys() {
        let rl = limiter("key = \"consumer\"\n[[limits]]\nrequests = 1000\nwindow = \"10s\"");
        align(1000);
        let from = |user: &str| {
            let request = TestRequest::get("/").header("x-consumer-id", user);
            rl.request(request).forwarded();
        };
        let calls = |user: &str| {
            let before = testing::kv_calls();
            from(user);
            testing::kv_calls() - before
        };
        // A fresh key reads its nine settled slots, the previous one, and increments.
        testing::advance(Duration::from_secs(20));
        assert_eq!(calls("alice"), 11);
        assert_eq!(calls("alice"), 2, "settled slots remembered");
        // Keys up to the most remembered keep alice's counts ...
        for i in 1..super::MAX_SETTLED {
            from(&format!("user-{i}"));
        }
        assert_eq!(calls("alice"), 2);
        // ... and one more forgets every key's, which are read again.
        from("one-too-many");
        assert_eq!(calls("alice"), 11);
    }

    #[test]
    fn keys_separate_clients_headers_consumers_and_routes() {
        let by_client = limiter("[[limits]]\nrequests = 1\nwindow = \"1m\"");
        by_client
            .request(TestRequest::get("/").client("10.0.0.1:1"))
            .forwarded();
        by_client
            .request(TestRequest::get("/").client("10.0.0.1:2"))
            .reply();
        by_client
            .request(TestRequest::get("/").client("[::1]:2"))
            .forwarded();

        let by_consumer = limiter("key = \"consumer\"\n[[limits]]\nrequests = 1\nwindow = \"1m\"");
        let as_user = |u: &str| TestRequest::get("/").header("x-consumer-id", u);
        by_consumer.request(as_user("alice")).forwarded();
        by_consumer.request(as_user("alice")).reply();
        by_consumer.request(as_user("bob")).forwarded();

        let by_route = limiter("key = \"route\"\n[[limits]]\nrequests = 1\nwindow = \"1m\"");
        by_route
            .request(TestRequest::get("/").route("a").client("1.1.1.1:1"))
            .forwarded();
        by_route
            .request(TestRequest::get("/").route("a").client("2.2.2.2:1"))
            .reply();
        by_route
            .request(TestRequest::get("/").route("b"))
            .forwarded();
    }

    #[test]
    fn every_limit_must_fit_and_a_refusal_gives_back_all_increments() {
        let rl = limiter(
            "[[limits]]\nrequests = 2\nwindow = \"1s\"\n[[limits]]\nrequests = 3\nwindow = \"1h\"",
        );
        align(1000);
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).forwarded();
        let reply = rl.request(TestRequest::get("/")).reply();
        assert_eq!(reply.header_value("retry-after"), Some("2"));
        testing::advance(Duration::from_millis(1100));
        // The refused request did not count against the hour: one more fits, then the hour
        // is full.
        let request = TestRequest::get("/");
        let forwarded = rl.request(request).forwarded();
        let response = rl.response(&forwarded, 200, &[]).response();
        assert_eq!(response.header_value("ratelimit-limit"), Some("3"));
        assert_eq!(response.header_value("ratelimit-remaining"), Some("0"));
        testing::advance(Duration::from_secs(1));
        let reply = rl.request(TestRequest::get("/")).reply();
        assert!(
            reply
                .header_value("retry-after")
                .expect("retry-after")
                .parse::<u64>()
                .expect("seconds")
                > 3000
        );
    }

    /// The headers are left by the request hook: weir calls the filter once per request.
    #[test]
    fn headers_are_left_for_the_response_by_the_request_hook() {
        let rl = limiter("[[limits]]\nrequests = 5\nwindow = \"10s\"");
        assert!(rl.hooks().on_request && !rl.hooks().on_response);
        let forwarded = rl.request(TestRequest::get("/")).forwarded();
        assert_eq!(forwarded.response_changes.len(), 4);
        assert_eq!(
            forwarded.header_value("ratelimit-limit"),
            None,
            "not upstream"
        );

        let quiet = limiter("headers = false\n[[limits]]\nrequests = 5\nwindow = \"10s\"");
        let forwarded = quiet.request(TestRequest::get("/")).forwarded();
        assert!(forwarded.response_changes.is_empty());
        let response = quiet.response(&forwarded, 200, &[]).response();
        assert_eq!(response.header_value("ratelimit-limit"), None);
    }

    /// Refusals are counted per limit: by its name, or `REQUESTS/WINDOW`; a request refused
    /// by both counts once, for the limit it must wait for.
    #[test]
    fn refusals_are_counted_by_the_limit_that_refused() {
        let rl = limiter(
            "[[limits]]\nrequests = 1\nwindow = \"1s\"\n[[limits]]\nrequests = 5\nwindow = \"1h\"",
        );
        align(1000);
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).reply();
        rl.request(TestRequest::get("/")).reply();
        assert_eq!(
            testing::metric("refusals_total", &[("limit", "1/1s")]),
            Some(2.0)
        );
        assert_eq!(
            testing::metric("refusals_total", &[("limit", "5/1h")]),
            None
        );

        let rl = limiter(
            "[[limits]]\nrequests = 2\nwindow = \"1s\"\n[[limits]]\nrequests = 2\nwindow = \"1h\"\nname = \"hourly\"",
        );
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).forwarded();
        // Both limits are full; the hour is the longer wait.
        rl.request(TestRequest::get("/")).reply();
        assert_eq!(
            testing::metric("refusals_total", &[("limit", "hourly")]),
            Some(1.0)
        );
        assert_eq!(
            testing::metric("refusals_total", &[("limit", "2/1s")]),
            None
        );
        assert_eq!(testing::metric_errors(), 0);
    }

    #[test]
    fn a_refused_request_costs_one_store_write_less_and_counts_nothing() {
        let rl = limiter("[[limits]]\nrequests = 2\nwindow = \"10s\"");
        align(1000);
        rl.request(TestRequest::get("/")).forwarded();
        rl.request(TestRequest::get("/")).forwarded();
        let before = testing::kv_calls();
        assert_eq!(rl.request(TestRequest::get("/")).reply().status, 429);
        assert_eq!(
            testing::kv_calls() - before,
            2,
            "a read and an increment-within that refuses: nothing to give back"
        );
    }

    #[test]
    fn gcra_passes_a_burst_then_one_per_interval() {
        let rl = limiter("algorithm = \"gcra\"\n[[limits]]\nrequests = 4\nwindow = \"4s\"");
        align(1000);
        for left in ["3", "2", "1", "0"] {
            let request = TestRequest::get("/");
            let forwarded = rl.request(request).forwarded();
            let response = rl.response(&forwarded, 200, &[]).response();
            assert_eq!(response.header_value("ratelimit-remaining"), Some(left));
        }
        let reply = rl.request(TestRequest::get("/")).reply();
        assert_eq!(reply.status, 429);
        // One interval (1 s) frees one request.
        assert_eq!(reply.header_value("retry-after"), Some("1"));
        testing::advance(Duration::from_millis(999));
        assert_eq!(rl.request(TestRequest::get("/")).reply().status, 429);
        testing::advance(Duration::from_millis(1));
        rl.request(TestRequest::get("/")).forwarded();
        assert_eq!(rl.request(TestRequest::get("/")).reply().status, 429);
        // After a quiet window the whole burst is back.
        testing::advance(Duration::from_secs(4));
        for _ in 0..4 {
            rl.request(TestRequest::get("/")).forwarded();
        }
        assert_eq!(rl.request(TestRequest::get("/")).reply().status, 429);
    }

    #[test]
    fn gcra_gives_back_when_a_later_limit_refuses() {
        let rl = limiter(
            "algorithm = \"gcra\"\n[[limits]]\nrequests = 10\nwindow = \"10s\"\n[[limits]]\nrequests = 1\nwindow = \"1s\"",
        );
        align(1000);
        rl.request(TestRequest::get("/")).forwarded();
        for _ in 0..5 {
            assert_eq!(rl.request(TestRequest::get("/")).reply().status, 429);
        }
        // The refusals by the 1/1s limit took nothing from the 10/10s one: 9 seconds of one
        // request each pass, then the 10/10s limit is the one that is full.
        for _ in 0..9 {
            testing::advance(Duration::from_secs(1));
            rl.request(TestRequest::get("/")).forwarded();
        }
        testing::advance(Duration::from_millis(500));
        let reply = rl.request(TestRequest::get("/")).reply();
        assert_eq!(reply.status, 429, "10 in 9.5 s");
    }

    #[test]
    fn a_failing_store_is_logged_once_and_lets_requests_through_if_tolerant() {
        for (tolerant, status) in [(true, None), (false, Some(503))] {
            testing::reset();
            let rl = limiter(&format!(
                "fault_tolerant = {tolerant}\n[[limits]]\nrequests = 1\nwindow = \"10s\""
            ));
            testing::fail_kv(Some("no answer from Redis within 5ms"));
            for _ in 0..20 {
                let outcome = rl.request(TestRequest::get("/"));
                match status {
                    None => {
                        outcome.forwarded();
                    }
                    Some(status) => assert_eq!(outcome.reply().status, status),
                }
            }
            let failing = |logs: &[(weir_plugin::log::Level, String)]| {
                logs.iter()
                    .filter(|(_, line)| line.contains("store failed"))
                    .count()
            };
            assert_eq!(
                failing(&testing::logs()),
                1,
                "one line, not one per request"
            );
            testing::fail_kv(None);
            rl.request(TestRequest::get("/")).forwarded();
            assert!(
                testing::logs()
                    .iter()
                    .any(|(_, line)| line.contains("answers again")),
                "{:?}",
                testing::logs()
            );
        }
    }

    /// A full kv quota is not an outage to wait out: clients sending new keys (here, new
    /// header values) fill it on purpose, so the limiter refuses what it cannot count rather
    /// than letting everyone through, `fault_tolerant` or not. Clients it counts already are
    /// limited as before.
    #[test]
    fn a_full_quota_refuses_new_keys_instead_of_turning_limiting_off() {
        for algorithm in ["sliding-window", "gcra"] {
            testing::reset();
            let rl = limiter(&format!(
                "key = \"header\"\nheader = \"x-key\"\nalgorithm = \"{algorithm}\"\n[[limits]]\nrequests = 2\nwindow = \"10s\""
            ));
            align(1000);
            let from = |key: &str| TestRequest::get("/").header("x-key", key);
            rl.request(from("known")).forwarded();
            // "known"'s one counter is all the quota holds.
            testing::kv_max_keys(Some(1));
            for i in 0..20 {
                let reply = rl.request(from(&format!("new-{i}"))).reply();
                assert_eq!(reply.status, 503, "{algorithm}: new-{i}");
            }
            rl.request(from("known")).forwarded();
            assert_eq!(rl.request(from("known")).reply().status, 429, "{algorithm}");
            let said = testing::logs()
                .iter()
                .any(|(_, line)| line.contains("cannot count") && line.contains("quota"));
            assert!(said, "{algorithm}: {:?}", testing::logs());
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let cases = [
            ("limits = []", "no limits"),
            (
                "key = \"ip\"\n[[limits]]\nrequests = 1\nwindow = \"1s\"",
                "must be client",
            ),
            (
                "key = \"header\"\n[[limits]]\nrequests = 1\nwindow = \"1s\"",
                "needs header",
            ),
            ("[[limits]]\nrequests = 0\nwindow = \"1s\"", "at least 1"),
            ("[[limits]]\nrequests = 1\nwindow = \"soon\"", "window"),
        ];
        for (config, want) in cases {
            let err = Harness::<RateLimit>::new(config).expect_err(config);
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
