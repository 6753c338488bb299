//! Active health checks: one task per cluster that has `health_check`, probing every endpoint
//! each interval (plus jitter) off the request path, and flipping its health flag after
//! `unhealthy_threshold` consecutive failures or `healthy_threshold` consecutive passes.
//! Each transition is logged once. A passing check of a healthy endpoint also ends an
//! ejection by outlier detection (the active check outranks the passive one, as in Envoy).
//! The data path only reads the flags.
//!
//! A probe is a `GET path` on a fresh connection (never a pooled one, so a half-dead pool
//! cannot hide a dead endpoint), opened as the cluster's requests' are — TLS and HTTP version
//! included —, expecting `expected_statuses` (any 2xx or 3xx by default); or, without
//! `path`, opening that connection.

use bytes::Bytes;
use http::Request;
use http::uri::Authority;
use http_body_util::Empty;
use tokio::task::{JoinHandle, JoinSet};

use crate::balancer::Endpoints;
use crate::config::{ClusterConfig, HealthCheck};
use crate::upstream::{Sender, Transport, as_http1, as_http2};

/// A cluster's running health checks; dropping it stops them.
#[derive(Debug)]
pub struct HealthChecker {
    task: JoinHandle<()>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checking `config`'s endpoints if it has a `health_check`. Needs a tokio runtime.
pub(crate) fn spawn(
    config: &ClusterConfig,
    endpoints: &Endpoints,
    transport: &Transport,
) -> Option<HealthChecker> {
    let check = config.health_check.clone()?;
    let cluster = config.name.clone();
    let targets: Vec<Authority> = config
        .endpoints
        .iter()
        .map(|e| e.authority.clone())
        .collect();
    let endpoints = endpoints.clone();
    let transport = transport.clone();
    let task = tokio::spawn(async move {
        let mut streaks = vec![Streak::default(); targets.len()];
        loop {
            let results = probe_all(&targets, &check, &transport).await;
            for (i, result) in results.into_iter().enumerate() {
                let Some(state) = endpoints.get(i) else {
                    continue;
                };
                let streak = &mut streaks[i];
                match &result {
                    Ok(()) => {
                        streak.passes += 1;
                        streak.failures = 0;
                        if state.is_healthy() && endpoints.uneject(i) {
                            tracing::info!(cluster, endpoint = %targets[i], "endpoint passed its health check; ejection ended");
                        }
                    }
                    Err(_) => {
                        streak.failures += 1;
                        streak.passes = 0;
                    }
                }
                let healthy = state.is_healthy();
                if !healthy
                    && streak.passes >= check.healthy_threshold
                    && endpoints.set_healthy(i, true)
                {
                    tracing::info!(cluster, endpoint = %targets[i], passes = streak.passes, "endpoint healthy");
                } else if healthy
                    && streak.failures >= check.unhealthy_threshold
                    && endpoints.set_healthy(i, false)
                {
                    let why = result.as_ref().err().cloned().unwrap_or_default();
                    tracing::warn!(cluster, endpoint = %targets[i], failures = streak.failures, error = %why, "endpoint unhealthy");
                }
                state.set_check_result(result.err());
            }
            let jitter = check.jitter.mul_f64(fastrand::f64());
            tokio::time::sleep(check.interval + jitter).await;
        }
    });
    Some(HealthChecker { task })
}

/// Consecutive results of one endpoint's checks.
#[derive(Debug, Clone, Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

/// Probes every target concurrently; results in target order.
async fn probe_all(
    targets: &[Authority],
    check: &HealthCheck,
    transport: &Transport,
) -> Vec<Result<(), String>> {
    let mut probes = JoinSet::new();
    for (i, target) in targets.iter().enumerate() {
        let (target, check, transport) = (target.clone(), check.clone(), transport.clone());
        probes.spawn(async move { (i, probe(&target, &check, &transport).await) });
    }
    let mut results = vec![Err("the check did not run".to_owned()); targets.len()];
    while let Some(joined) = probes.join_next().await {
        if let Ok((i, result)) = joined {
            results[i] = result;
        }
    }
    results
}

/// One check of one endpoint, bounded by the check's timeout.
async fn probe(
    target: &Authority,
    check: &HealthCheck,
    transport: &Transport,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_unbounded(target, check, transport)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(check.timeout)
        )),
    }
}

async fn probe_unbounded(
    target: &Authority,
    check: &HealthCheck,
    transport: &Transport,
) -> Result<(), String> {
    let (sender, connection) = transport.open::<Empty<Bytes>>(target, false).await?;
    let Some(path) = &check.path else {
        return Ok(());
    };
    let connection = tokio::spawn(connection);
    let mut request = Request::get(path.as_str())
        .header(http::header::HOST, target.as_str())
        .header(http::header::USER_AGENT, "weir-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = match sender {
        Sender::Http1(mut sender) => {
            as_http1(&mut request, target);
            request.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            sender.send_request(request).await
        }
        Sender::Http2(mut sender) => {
            as_http2(&mut request, target, &transport.scheme());
            sender.send_request(request).await
        }
    }
    .map_err(|e| format!("request: {e}"));
    connection.abort();
    let status = response?.status().as_u16();
    let expected = if check.expected_statuses.is_empty() {
        (200..400).contains(&status)
    } else {
        check.expected_statuses.contains(&status)
    };
    if expected {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_check_of_a_closed_port_fails_with_the_reason() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let check = HealthCheck {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            jitter: Duration::ZERO,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            expected_statuses: Vec::new(),
        };
        // A port that was just free: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let target: Authority = format!("127.0.0.1:{port}").parse().expect("authority");
        let cluster =
            crate::balancer::testing::cluster(&[(1, false)], crate::config::LbPolicy::First);
        let transport =
            crate::upstream::Transports::plain(std::sync::Arc::new(crate::upstream::TcpConnector))
                .for_cluster(&cluster);
        let result = runtime.block_on(probe(&target, &check, &transport));
        assert!(result.is_err_and(|e| e.starts_with(&format!("connecting to {target}:"))));
    }
}
