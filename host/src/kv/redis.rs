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
//! - **Keys**: `prefix` + the plugin's namespaced key, so several deployments can share one
//!   Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value};

use super::breaker::{Admit, Breaker};
use super::{Bounded, KvError};
use crate::config::RedisKvConfig;
use crate::config::kv::without_userinfo;
use crate::metrics::metrics;

/// Adds ARGV[1] to the counter at KEYS[1]; ARGV[2] is the TTL in ms for a new key ('' for
/// none). Replies the new value as text (exact: Lua's numbers are doubles). Not a `MULTI`,
/// which Redis Cluster connections do not carry.
const INCREMENT: &str = r"
local created = redis.call('EXISTS', KEYS[1]) == 0
redis.call('INCRBY', KEYS[1], ARGV[1])
if created and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('GET', KEYS[1])
";

/// Adds ARGV[1] to the counter at KEYS[1] if the result stays at most ARGV[2]; ARGV[3] is the
/// TTL in ms for a new key ('' for none). Replies `{applied, value as text, pttl}`. Exact for
/// every 64-bit counter: Redis's `INCRBY` does the arithmetic (and refuses a value that is
/// not an integer, or an overflow, before changing anything), and the result is compared
/// with the limit as decimal text, never as a Lua number (a double). Over the limit, the
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
local created = redis.call('EXISTS', KEYS[1]) == 0
redis.call('INCRBY', KEYS[1], ARGV[1])
local value = redis.call('GET', KEYS[1])
if compare(value, ARGV[2]) > 0 then
  if created then
    redis.call('DEL', KEYS[1])
    return {0, '0', -2}
  end
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
end
if created and ARGV[3] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {1, value, redis.call('PTTL', KEYS[1])}
";

/// Sets KEYS[1] to ARGV[3] (TTL ARGV[4] ms, '' for none) if it holds ARGV[2] (ARGV[1] = '1')
/// or is absent (ARGV[1] = '0'). Replies 1 if set.
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
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
    increment: Script,
    increment_within: Script,
    compare_and_set: Script,
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
            increment: Script::new(INCREMENT),
            increment_within: Script::new(INCREMENT_WITHIN),
            compare_and_set: Script::new(COMPARE_AND_SET),
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

    fn key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
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
        let key = self.key(key);
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
    ) -> Result<(), KvError> {
        let mut connection = self.connection();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&key)).arg(value);
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms.max(1));
        }
        self.call(async move { cmd.query_async::<()>(&mut connection).await })
            .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut connection = self.connection();
        let key = self.key(key);
        self.call(async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut connection)
                .await
        })
        .await
    }

    pub(crate) async fn increment(
        &self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        let mut connection = self.connection();
        let mut invocation = self.increment.prepare_invoke();
        invocation
            .key(self.key(&key))
            .arg(delta)
            .arg(ttl_arg(ttl_ms));
        let text = self
            .call(async move { invocation.invoke_async::<String>(&mut connection).await })
            .await?;
        text.parse()
            .map_err(|_| KvError::Invalid(format!("Redis answered {text:?} for a counter")))
    }

    pub(crate) async fn increment_within(
        &self,
        key: String,
        delta: i64,
        limit: i64,
        ttl_ms: Option<u64>,
    ) -> Result<Bounded, KvError> {
        let mut connection = self.connection();
        let mut invocation = self.increment_within.prepare_invoke();
        invocation
            .key(self.key(&key))
            .arg(delta)
            .arg(limit)
            .arg(ttl_arg(ttl_ms));
        let (applied, value, pttl) = self
            .call(async move {
                invocation
                    .invoke_async::<(i64, String, i64)>(&mut connection)
                    .await
            })
            .await?;
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
    ) -> Result<bool, KvError> {
        let mut connection = self.connection();
        let mut invocation = self.compare_and_set.prepare_invoke();
        invocation.key(self.key(&key));
        match expected {
            Some(expected) => invocation.arg("1").arg(expected),
            None => invocation.arg("0").arg(""),
        };
        invocation.arg(value).arg(ttl_arg(ttl_ms));
        self.call(async move { invocation.invoke_async::<i64>(&mut connection).await })
            .await
            .map(|set| set == 1)
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
