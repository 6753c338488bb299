//! The Redis store (`[kv] backend = "redis"`): every weir instance pointed at one Redis shares
//! one state, so a rate limit holds across instances and a revoked key is gone everywhere.
//!
//! - **Connections**: to one server, `connections` multiplexed connections (redis-rs's
//!   `ConnectionManager`, which pipelines concurrent calls on one socket and reconnects in the
//!   background after a failure), taken in turn. A multiplexed connection serves any number
//!   of callers at once, so there is no checkout to wait for: a few connections are the pool.
//!   To a Redis Cluster (`cluster = [...]`), redis-rs's cluster connection, which sends each
//!   key to the node that holds its slot and follows `MOVED`/`ASK` and topology changes.
//! - **Atomicity**: `get`, `set` and `delete` are one command each; `increment`,
//!   `increment_within` and `compare_and_set` are Lua scripts (`EVALSHA`, loaded on first
//!   use), which Redis runs without interleaving, on one key each (so a cluster runs each on
//!   the key's node). Every operation is one round trip.
//! - **Time**: each call gets `timeout` (a few milliseconds by default); past it the call fails
//!   as unavailable and the plugin decides. Failures in a row open the [`Breaker`], so
//!   requests stop waiting on a dead store.
//! - **Keys**: `prefix` + the plugin's namespaced key (`PLUGIN\0KEY`), so several deployments
//!   can share one Redis. On a cluster, `prefix` + `{PLUGIN\0B}\0KEY`: the hash tag puts a
//!   key in the slot of its namespace's bucket `B` (one of [`CLUSTER_BUCKETS`], by a stable
//!   hash of the key), so a namespace still spreads over the cluster's nodes.
//! - **Quotas**: every write is a Lua script that keeps its namespace's usage beside the keys,
//!   in the same slot: a hash `…\x01usage` (`keys`, `bytes`), and for keys with a TTL a
//!   sorted set `…\x01expiring` (key → when it expires, by weir's clock) and a hash
//!   `…\x01sizes` (key → what it counts), because Redis expires keys without telling anyone.
//!   Each write first settles up to 16 keys whose time has passed (checked with `PTTL`, so
//!   a skewed clock only delays the settling), and up to 1,000 more when the quota looks
//!   full; the write is refused, changing nothing, when it would still pass the quota. So the
//!   counts are exact up to expired keys not yet settled, which count until they are (as
//!   they do in memory until swept). On a cluster each of the [`CLUSTER_BUCKETS`] buckets
//!   holds an even share of the quota: a namespace is full when one bucket is, which with
//!   keys spread by a hash is within a few per cent of the whole for quotas of thousands of
//!   keys, but refuses early for tiny ones. Keys written outside weir, or by a weir before
//!   quotas (in the same layout), are not counted until weir writes or deletes them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, ScriptInvocation, Value};

use super::breaker::{Admit, Breaker};
use super::{Bounded, Exceeded, KvError, KvQuota, split};
use crate::config::RedisKvConfig;
use crate::config::kv::without_userinfo;
use crate::metrics::metrics;

/// How many buckets a namespace's keys and quota are split into on a Redis Cluster.
pub(crate) const CLUSTER_BUCKETS: u64 = 16;

/// What every script begins with: KEYS[1] is the data key, KEYS[2] to KEYS[4] the
/// namespace's (or bucket's) `usage` hash, `expiring` set and `sizes` hash; ARGV[1] is the
/// data key without the plugin's key (for settling others), ARGV[2] the plugin's key, ARGV[3]
/// weir's time in ms, ARGV[4] and ARGV[5] the quota's keys and bytes; the operation's own
/// arguments follow from ARGV[6]. A key counts `#key + #value` bytes.
const PRELUDE: &str = r"
local data, usage, expiring, sizes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, field, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_keys, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])

local function forget(f)
  local size = tonumber(redis.call('HGET', sizes, f) or '0')
  redis.call('HDEL', sizes, f)
  redis.call('ZREM', expiring, f)
  redis.call('HINCRBY', usage, 'keys', -1)
  redis.call('HINCRBY', usage, 'bytes', -size)
end

local function settle(n)
  local due = redis.call('ZRANGEBYSCORE', expiring, '-inf', now, 'LIMIT', 0, n)
  for _, f in ipairs(due) do
    local left = redis.call('PTTL', base .. f)
    if left == -2 then
      forget(f)
    elseif left == -1 then
      redis.call('ZREM', expiring, f)
      redis.call('HDEL', sizes, f)
    else
      redis.call('ZADD', expiring, now + left, f)
    end
  end
end

local function held()
  if redis.call('EXISTS', data) == 1 then
    return #field + redis.call('STRLEN', data)
  end
  if redis.call('ZSCORE', expiring, field) then
    forget(field)
  end
  return nil
end

local function refused(keys, bytes)
  settle(16)
  for attempt = 1, 2 do
    local k = tonumber(redis.call('HGET', usage, 'keys') or '0')
    local b = tonumber(redis.call('HGET', usage, 'bytes') or '0')
    local why = nil
    if keys > 0 and k + keys > max_keys then
      why = 'quota keys'
    elseif bytes > 0 and b + bytes > max_bytes then
      why = 'quota bytes'
    end
    if not why then
      return nil
    end
    if attempt == 2 then
      return why
    end
    settle(1000)
  end
end

local function record(before)
  local after = nil
  if redis.call('EXISTS', data) == 1 then
    after = #field + redis.call('STRLEN', data)
  end
  local keys = (after and 1 or 0) - (before and 1 or 0)
  local bytes = (after or 0) - (before or 0)
  if keys ~= 0 then
    redis.call('HINCRBY', usage, 'keys', keys)
  end
  if bytes ~= 0 then
    redis.call('HINCRBY', usage, 'bytes', bytes)
  end
  local left = -2
  if after then
    left = redis.call('PTTL', data)
  end
  if left >= 0 then
    redis.call('ZADD', expiring, now + left, field)
    redis.call('HSET', sizes, field, after)
  else
    redis.call('ZREM', expiring, field)
    redis.call('HDEL', sizes, field)
  end
end
";

/// Sets the key to ARGV[6], with a TTL of ARGV[7] ms ('' for none), within the quota.
const SET: &str = r"
local before = held()
local why = refused(before and 0 or 1, #field + #ARGV[6] - (before or 0))
if why then
  return redis.error_reply('ERR ' .. why)
end
if ARGV[7] ~= '' then
  redis.call('SET', data, ARGV[6], 'PX', ARGV[7])
else
  redis.call('SET', data, ARGV[6])
end
record(before)
return 1
";

/// Deletes the key and gives back what it counted.
const DELETE: &str = r"
local before = held()
if before then
  redis.call('DEL', data)
  record(before)
end
return 1
";

/// Adds ARGV[6] to the counter; ARGV[7] is the TTL in ms for a new key ('' for none).
/// Replies the new value as text (exact: Lua's numbers are doubles). Not a `MULTI`, which
/// Redis Cluster connections do not carry. Past the quota, the increment is taken back in the
/// same script, so no other client ever sees it.
const INCREMENT: &str = r"
local before = held()
redis.call('INCRBY', data, ARGV[6])
local value = redis.call('GET', data)
local why = refused(before and 0 or 1, #field + #value - (before or 0))
if why then
  if before then
    redis.call('DECRBY', data, ARGV[6])
  else
    redis.call('DEL', data)
  end
  return redis.error_reply('ERR ' .. why)
end
if not before and ARGV[7] ~= '' then
  redis.call('PEXPIRE', data, ARGV[7])
end
record(before)
return value
";

/// Adds ARGV[6] to the counter if the result stays at most ARGV[7]; ARGV[8] is the TTL in ms
/// for a new key ('' for none). Replies `{applied, value as text, pttl}`. Exact for every
/// 64-bit counter: Redis's `INCRBY` does the arithmetic (and refuses a value that is not an
/// integer, or an overflow, before changing anything), and the result is compared with the
/// limit as decimal text, never as a Lua number (a double). Over the limit or the quota, the
/// increment is taken back in the same script, so no other client ever sees it.
const INCREMENT_WITHIN: &str = r"
local function compare(a, b)
  local na, nb = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if na ~= nb then return na and -1 or 1 end
  local da, db = na and a:sub(2) or a, nb and b:sub(2) or b
  local c = 0
  if #da ~= #db then
    c = (#da < #db) and -1 or 1
  elseif da ~= db then
    c = (da < db) and -1 or 1
  end
  if na then c = -c end
  return c
end
local before = held()
redis.call('INCRBY', data, ARGV[6])
local value = redis.call('GET', data)
local function undo()
  if before then
    redis.call('DECRBY', data, ARGV[6])
  else
    redis.call('DEL', data)
  end
end
if compare(value, ARGV[7]) > 0 then
  undo()
  if not before then
    return {0, '0', -2}
  end
  return {0, redis.call('GET', data), redis.call('PTTL', data)}
end
local why = refused(before and 0 or 1, #field + #value - (before or 0))
if why then
  undo()
  return redis.error_reply('ERR ' .. why)
end
if not before and ARGV[8] ~= '' then
  redis.call('PEXPIRE', data, ARGV[8])
end
record(before)
return {1, value, redis.call('PTTL', data)}
";

/// Sets the key to ARGV[8] (TTL ARGV[9] ms, '' for none) if it holds ARGV[7] (ARGV[6] =
/// '1') or is absent (ARGV[6] = '0'), within the quota. Replies 1 if set.
const COMPARE_AND_SET: &str = r"
local before = held()
local current = redis.call('GET', data)
if ARGV[6] == '1' then
  if current ~= ARGV[7] then return 0 end
elseif current then
  return 0
end
local why = refused(before and 0 or 1, #field + #ARGV[8] - (before or 0))
if why then
  return redis.error_reply('ERR ' .. why)
end
if ARGV[9] ~= '' then
  redis.call('SET', data, ARGV[8], 'PX', ARGV[9])
else
  redis.call('SET', data, ARGV[8])
end
record(before)
return 1
";

/// Where calls go: one server's connections, taken in turn, or a cluster's connection (which
/// routes each key to its node and follows the cluster's changes).
enum Servers {
    Single(Vec<ConnectionManager>),
    Cluster(ClusterConnection),
}

/// One connection to use for a call.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis backend.
pub struct RedisKv {
    servers: Servers,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    /// The server, for log lines (without credentials).
    name: String,
    /// Whether keys carry a bucket's hash tag (a cluster).
    cluster: bool,
    set: Script,
    delete: Script,
    increment: Script,
    increment_within: Script,
    compare_and_set: Script,
}

/// Where one key and its namespace's (or bucket's) bookkeeping live.
struct Place {
    /// The key itself.
    data: Vec<u8>,
    /// `data` without the plugin's key: the start of every key of the same bucket.
    base: Vec<u8>,
    /// The bookkeeping keys' common start (`data`'s bucket, then `\x01`).
    books: Vec<u8>,
    /// The share of the quota this bucket holds: all of it but on a cluster.
    share: (u64, u64),
}

/// `whole` split over [`CLUSTER_BUCKETS`]: bucket `bucket`'s share (the remainder goes to the
/// first buckets, so the shares add up to `whole`).
fn share(whole: u64, bucket: u64) -> u64 {
    whole / CLUSTER_BUCKETS + u64::from(bucket < whole % CLUSTER_BUCKETS)
}

/// Milliseconds since the Unix epoch by this process's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a script's refusal says, as the plugin is told it.
fn refusal(error: KvError, quota: &KvQuota) -> KvError {
    match error {
        KvError::Invalid(why) if why == "quota keys" => quota.exceeded(Exceeded::Keys),
        KvError::Invalid(why) if why == "quota bytes" => quota.exceeded(Exceeded::Bytes),
        other => other,
    }
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("server", &self.name)
            .finish_non_exhaustive()
    }
}

/// A TTL for Redis, which refuses 0.
fn ttl_arg(ttl_ms: Option<u64>) -> String {
    ttl_ms.map(|ms| ms.max(1).to_string()).unwrap_or_default()
}

impl RedisKv {
    /// Connections are made lazily (and first tried at once in the background), so weir
    /// starts while Redis is down. Must be called inside the tokio runtime.
    pub(crate) fn new(config: &RedisKvConfig) -> Result<RedisKv, String> {
        let certificates = match &config.ca {
            Some(ca) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(
                    std::fs::read(ca)
                        .map_err(|e| format!("cannot read kv.ca {}: {e}", ca.display()))?,
                ),
            }),
            None => None,
        };
        let (servers, name) = if config.cluster.is_empty() {
            let connections = single(config, certificates)?;
            (Servers::Single(connections), without_userinfo(&config.url))
        } else {
            let mut builder = ClusterClientBuilder::new(config.cluster.iter().map(String::as_str))
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(config.timeout.max(Duration::from_secs(1)));
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(|e| format!("kv.cluster: {e}"))?;
            let connection = client.get_pending_async_connection_with_config(Default::default());
            let name = format!("cluster {}", without_userinfo(&config.cluster[0]));
            (Servers::Cluster(connection), name)
        };
        let kv = RedisKv {
            servers,
            next: AtomicUsize::new(0),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            breaker: Breaker::new(config.breaker_failures, config.breaker_open_for),
            name,
            cluster: !config.cluster.is_empty(),
            set: Script::new(&[PRELUDE, SET].concat()),
            delete: Script::new(&[PRELUDE, DELETE].concat()),
            increment: Script::new(&[PRELUDE, INCREMENT].concat()),
            increment_within: Script::new(&[PRELUDE, INCREMENT_WITHIN].concat()),
            compare_and_set: Script::new(&[PRELUDE, COMPARE_AND_SET].concat()),
        };
        // Connect now rather than on the first plugin call, whose timeout is a few ms.
        let count = match &kv.servers {
            Servers::Single(connections) => connections.len(),
            Servers::Cluster(_) => 1,
        };
        for _ in 0..count {
            let mut connection = kv.connection();
            let name = kv.name.clone();
            tokio::spawn(async move {
                if let Err(e) = redis::cmd("PING").query_async::<()>(&mut connection).await {
                    tracing::warn!(store = %name, error = %e, "kv store not reachable yet; calls fail until it is");
                }
            });
        }
        Ok(kv)
    }

    fn connection(&self) -> Connection {
        match &self.servers {
            Servers::Single(connections) => {
                let next = self.next.fetch_add(1, Ordering::Relaxed);
                Connection::Single(connections[next % connections.len()].clone())
            }
            Servers::Cluster(connection) => Connection::Cluster(connection.clone()),
        }
    }

    /// Where `key` (namespaced) lives, and its namespace's bookkeeping.
    fn place(&self, key: &str, quota: &KvQuota) -> Place {
        let (namespace, field) = split(key);
        let mut base = Vec::with_capacity(self.prefix.len() + namespace.len() + 8);
        base.extend_from_slice(self.prefix.as_bytes());
        let share = if self.cluster {
            let bucket = crate::balancer::hash(field.as_bytes()) % CLUSTER_BUCKETS;
            base.push(b'{');
            base.extend_from_slice(namespace.as_bytes());
            base.push(0);
            base.extend_from_slice(bucket.to_string().as_bytes());
            base.push(b'}');
            (
                share(quota.max_keys, bucket),
                share(quota.max_bytes, bucket),
            )
        } else {
            base.extend_from_slice(namespace.as_bytes());
            (quota.max_keys, quota.max_bytes)
        };
        let mut books = base.clone();
        books.push(1);
        base.push(0);
        let mut data = Vec::with_capacity(base.len() + field.len());
        data.extend_from_slice(&base);
        data.extend_from_slice(field.as_bytes());
        Place {
            data,
            base,
            books,
            share,
        }
    }

    /// `script` on `key` within `quota`, its common arguments given; the operation's own
    /// follow.
    fn invocation<'s>(
        &self,
        script: &'s Script,
        key: &str,
        quota: &KvQuota,
    ) -> ScriptInvocation<'s> {
        let place = self.place(key, quota);
        let book = |name: &[u8]| [place.books.as_slice(), name].concat();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(place.data)
            .key(book(b"usage"))
            .key(book(b"expiring"))
            .key(book(b"sizes"))
            .arg(place.base)
            .arg(split(key).1)
            .arg(now_ms())
            .arg(place.share.0)
            .arg(place.share.1);
        invocation
    }

    /// Runs one call under the breaker and the timeout.
    async fn call<T>(&self, op: impl Future<Output = RedisResult<T>>) -> Result<T, KvError> {
        let metrics = metrics();
        if self.breaker.admit() == Admit::Refuse {
            metrics
                .kv_failures
                .with_label_values(&["breaker_open"])
                .inc();
            return Err(KvError::Unavailable(
                "the Redis store is failing; its circuit breaker is open".into(),
            ));
        }
        let (reason, why) = match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(value)) => {
                self.succeeded();
                return Ok(value);
            }
            // The server answered, refusing the operation: the store itself is fine.
            Ok(Err(e)) if e.code() == Some("ERR") => {
                self.succeeded();
                return Err(KvError::Invalid(server_error(&e)));
            }
            Ok(Err(e)) => ("error", e.to_string()),
            Err(_) => (
                "timeout",
                format!(
                    "no answer from Redis within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
        };
        metrics.kv_failures.with_label_values(&[reason]).inc();
        self.breaker.failure(&self.name, &why);
        metrics
            .kv_breaker_open
            .set(i64::from(self.breaker.is_open()));
        Err(KvError::Unavailable(why))
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut connection = self.connection();
        let key = self.place(key, &KvQuota::UNLIMITED).data;
        self.call(async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut connection)
                .await
        })
        .await
    }

    pub(crate) async fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<(), KvError> {
        let mut connection = self.connection();
        let mut invocation = self.invocation(&self.set, &key, quota);
        invocation.arg(value).arg(ttl_arg(ttl_ms));
        self.call(async move { invocation.invoke_async::<()>(&mut connection).await })
            .await
            .map_err(|e| refusal(e, quota))
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut connection = self.connection();
        let invocation = self.invocation(&self.delete, key, &KvQuota::UNLIMITED);
        self.call(async move { invocation.invoke_async::<()>(&mut connection).await })
            .await
    }

    pub(crate) async fn increment(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<i64, KvError> {
        let mut connection = self.connection();
        let mut invocation = self.invocation(&self.increment, &key, quota);
        invocation.arg(delta).arg(ttl_arg(ttl_ms));
        let text = self
            .call(async move { invocation.invoke_async::<String>(&mut connection).await })
            .await
            .map_err(|e| refusal(e, quota))?;
        text.parse()
            .map_err(|_| KvError::Invalid(format!("Redis answered {text:?} for a counter")))
    }

    pub(crate) async fn increment_within(
        &self,
        key: String,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<Bounded, KvError> {
        let mut connection = self.connection();
        let mut invocation = self.invocation(&self.increment_within, &key, quota);
        invocation.arg(delta).arg(limit).arg(ttl_arg(ttl_ms));
        let (applied, value, pttl) = self
            .call(async move {
                invocation
                    .invoke_async::<(i64, String, i64)>(&mut connection)
                    .await
            })
            .await
            .map_err(|e| refusal(e, quota))?;
        let value = value
            .parse()
            .map_err(|_| KvError::Invalid(format!("Redis answered {value:?} for a counter")))?;
        Ok(Bounded {
            applied: applied == 1,
            value,
            // -1: no expiry; -2: absent (a refused first increment).
            ttl_ms: u64::try_from(pttl).ok(),
        })
    }

    pub(crate) async fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        quota: &KvQuota,
    ) -> Result<bool, KvError> {
        let mut connection = self.connection();
        let mut invocation = self.invocation(&self.compare_and_set, &key, quota);
        match expected {
            Some(expected) => invocation.arg("1").arg(expected),
            None => invocation.arg("0").arg(""),
        };
        invocation.arg(value).arg(ttl_arg(ttl_ms));
        self.call(async move { invocation.invoke_async::<i64>(&mut connection).await })
            .await
            .map(|set| set == 1)
            .map_err(|e| refusal(e, quota))
    }

    fn succeeded(&self) {
        if self.breaker.success(&self.name) {
            metrics().kv_breaker_open.set(0);
        }
    }
}

/// `connections` lazy, reconnecting connections to the one server of `config.url`.
fn single(
    config: &RedisKvConfig,
    certificates: Option<redis::TlsCertificates>,
) -> Result<Vec<ConnectionManager>, String> {
    let client = match certificates {
        Some(certificates) => redis::Client::build_with_tls(config.url.as_str(), certificates),
        None => redis::Client::open(config.url.as_str()),
    }
    .map_err(|e| format!("kv.url: {e}"))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(config.timeout.max(Duration::from_secs(1))))
        .set_max_delay(Duration::from_secs(2));
    (0..config.connections.max(1))
        .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()))
        .collect::<RedisResult<Vec<_>>>()
        .map_err(|e| format!("kv.url: {e}"))
}

/// What the server said, without redis-rs's decoration.
fn server_error(e: &RedisError) -> String {
    e.detail()
        .map(|detail| detail.trim_start_matches("ERR ").to_owned())
        .unwrap_or_else(|| e.to_string())
}
