//! The Redis store's circuit breaker: after `consecutive_failures` calls in a row fail (an
//! error or a timeout), calls fail at once for `open_for` instead of each waiting out its
//! timeout on a dead store; then one call is let through as a probe, and its success closes
//! the breaker. Opening and closing are logged once each, never per call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Failures in a row since the last success.
    failures: AtomicU32,
    threshold: u32,
    open_for: Duration,
    /// While open: when the next probe may go. `None` while closed.
    open_until: Mutex<Option<Instant>>,
}

/// Whether a call may go to the store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: go.
    Go,
    /// Open, and this call is the probe.
    Probe,
    /// Open: fail at once.
    Refuse,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            open_for,
            open_until: Mutex::new(None),
        }
    }

    /// Whether the next call may go. Closed costs one atomic load.
    pub(crate) fn admit(&self) -> Admit {
        if self.failures.load(Ordering::Relaxed) < self.threshold {
            return Admit::Go;
        }
        let mut open_until = self.open_until.lock().unwrap_or_else(|e| e.into_inner());
        match *open_until {
            Some(at) if Instant::now() < at => Admit::Refuse,
            _ => {
                // One probe per period: the others keep failing fast until it answers.
                *open_until = Some(Instant::now() + self.open_for);
                Admit::Probe
            }
        }
    }

    /// A call succeeded: the breaker closes. Returns whether it was open. Closed, this is one
    /// atomic load (no write to a line every thread reads).
    pub(crate) fn success(&self, store: &str) -> bool {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return false;
        }
        if self.failures.swap(0, Ordering::Relaxed) >= self.threshold {
            *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(store, "kv store answers again; circuit breaker closed");
            return true;
        }
        false
    }

    /// A call failed (not counting what the store refused as invalid).
    pub(crate) fn failure(&self, store: &str, why: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == self.threshold {
            *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + self.open_for);
            tracing::error!(
                store,
                failures,
                open_for = %humantime::format_duration(self.open_for),
                error = why,
                "kv store failing; circuit breaker open: calls fail at once until a probe succeeds"
            );
        }
    }

    /// Whether calls currently fail fast.
    pub(crate) fn is_open(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_and_probes_once_per_period() {
        let breaker = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..2 {
            assert_eq!(breaker.admit(), Admit::Go);
            breaker.failure("test", "down");
        }
        assert_eq!(breaker.admit(), Admit::Go);
        breaker.failure("test", "down");
        assert!(breaker.is_open());
        assert_eq!(breaker.admit(), Admit::Refuse);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.admit(), Admit::Probe);
        assert_eq!(breaker.admit(), Admit::Refuse, "one probe per period");
        breaker.failure("test", "still down");
        assert_eq!(breaker.admit(), Admit::Refuse);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.admit(), Admit::Probe);
        assert!(breaker.success("test"));
        assert!(!breaker.is_open());
        assert_eq!(breaker.admit(), Admit::Go);
    }
}
