//! The Redis store (`[kv] backend = "redis"`): every weir instance pointed at one Redis shares
//! one state, so a rate limit holds across instances and a revoked key is gone everywhere.
//!
//! - **Connections**: `connections` multiplexed connections (redis-rs's `ConnectionManager`,
//!   which pipelines concurrent calls on one socket and reconnects in the background after a
//!   failure), taken in turn. A multiplexed connection serves any number of callers at once,
//!   so there is no checkout to wait for: a few connections are the pool.
//! - **Atomicity**: `get`, `set` and `delete` are one command each; `increment` is one
//!   `MULTI` transaction (`SET NX PX` then `INCRBY`, so the TTL applies only to a new key and
//!   the count stays an exact 64-bit integer); `increment_within` and `compare_and_set` are Lua
//!   scripts (`EVALSHA`, loaded on first use), which Redis runs without interleaving. Every
//!   operation is one round trip.
//! - **Time**: each call gets `timeout` (a few milliseconds by default); past it the call fails
//!   as unavailable and the plugin decides. Failures in a row open the [`Breaker`], so
//!   requests stop waiting on a dead store.
//! - **Keys**: `prefix` + the plugin's namespaced key, so several deployments can share one
//!   Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};

use super::breaker::{Admit, Breaker};
use super::{Bounded, KvError};
use crate::config::RedisKvConfig;
use crate::config::kv::without_userinfo;
use crate::metrics::metrics;

/// Adds ARGV[1] to the counter at KEYS[1] if the result stays at most ARGV[2]; ARGV[3] is the
/// TTL in ms for a new key ('' for none). Replies `{applied, value, pttl}`. Lua numbers are
/// doubles: counters beyond ±2^53 are not exact here (the memory backend's are).
const INCREMENT_WITHIN: &str = r"
local current = redis.call('GET', KEYS[1])
local n = 0
if current then
  if not string.match(current, '^-?%d+$') then
    return redis.error_reply('ERR the value is not a decimal integer')
  end
  n = tonumber(current)
end
if n + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return {0, n, redis.call('PTTL', KEYS[1])}
end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if not current and ARGV[3] ~= '' then
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

/// The Redis backend.
pub struct RedisKv {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    /// The server, for log lines (without credentials).
    name: String,
    increment_within: Script,
    compare_and_set: Script,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("server", &self.name)
            .field("connections", &self.connections.len())
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
        let client = match &config.ca {
            Some(ca) => {
                let root_cert = std::fs::read(ca)
                    .map_err(|e| format!("cannot read kv.ca {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    config.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
            None => redis::Client::open(config.url.as_str()),
        }
        .map_err(|e| format!("kv.url: {e}"))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(config.timeout.max(Duration::from_secs(1))))
            .set_max_delay(Duration::from_secs(2));
        let connections = (0..config.connections.max(1))
            .map(|_| {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            })
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| format!("kv.url: {e}"))?;
        let name = without_userinfo(&config.url);
        // Connect now rather than on the first plugin call, whose timeout is a few ms.
        for connection in &connections {
            let mut connection = connection.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if let Err(e) = redis::cmd("PING").query_async::<()>(&mut connection).await {
                    tracing::warn!(store = %name, error = %e, "kv store not reachable yet; calls fail until it is");
                }
            });
        }
        Ok(RedisKv {
            connections,
            next: AtomicUsize::new(0),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            breaker: Breaker::new(config.breaker_failures, config.breaker_open_for),
            name,
            increment_within: Script::new(INCREMENT_WITHIN),
            compare_and_set: Script::new(COMPARE_AND_SET),
        })
    }

    fn connection(&self) -> ConnectionManager {
        let next = self.next.fetch_add(1, Ordering::Relaxed);
        self.connections[next % self.connections.len()].clone()
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
        let key = self.key(&key);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(ms) = ttl_ms {
            // Creates the key with its TTL only if it is absent; INCRBY then counts from 0.
            pipe.cmd("SET")
                .arg(&key)
                .arg(0)
                .arg("NX")
                .arg("PX")
                .arg(ms.max(1))
                .ignore();
        }
        pipe.cmd("INCRBY").arg(&key).arg(delta);
        self.call(async move {
            pipe.query_async::<(i64,)>(&mut connection)
                .await
                .map(|(value,)| value)
        })
        .await
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
                    .invoke_async::<(i64, i64, i64)>(&mut connection)
                    .await
            })
            .await?;
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

/// What the server said, without redis-rs's decoration.
fn server_error(e: &RedisError) -> String {
    e.detail()
        .map(|detail| detail.trim_start_matches("ERR ").to_owned())
        .unwrap_or_else(|| e.to_string())
}
