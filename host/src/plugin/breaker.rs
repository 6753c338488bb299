//! A plugin's circuit breaker, one per hook: after `failures` calls in a row have failed
//! (trapped, run out of time or memory, or could not be instantiated), the hook is not called
//! for `cooldown` — its routes answer at once, fail-open or 503 — then one probe call is let
//! through, and its success closes the breaker again while its failure opens it for another
//! cooldown.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failed calls in a row that open it; 0 never opens it.
    pub failures: u32,
    /// How long it stays open before a probe call.
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> BreakerSettings {
        BreakerSettings {
            failures: 5,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// What a call may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// The breaker is closed.
    Call,
    /// The breaker is open and its cooldown over: this call is the probe.
    Probe,
    /// The breaker is open: do not call the plugin.
    Refuse,
}

/// One plugin's breaker. All atomics: read on every call.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    /// Failed calls in a row.
    failed: AtomicU32,
    /// 0 while closed; else when it opened (or its last probe began), in nanoseconds since
    /// `origin`, plus one.
    opened: AtomicU64,
    origin: quanta::Instant,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            failed: AtomicU32::new(0),
            opened: AtomicU64::new(0),
            origin: quanta::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether a call may go ahead. Past the cooldown one caller wins the probe; a probe
    /// that never reports (its request went away) lets another through a cooldown later.
    pub(crate) fn admit(&self) -> Admit {
        let opened = self.opened.load(Relaxed);
        if opened == 0 {
            return Admit::Call;
        }
        let now = self.now();
        let cooldown = u64::try_from(self.settings.cooldown.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(opened) < cooldown {
            return Admit::Refuse;
        }
        match self.opened.compare_exchange(opened, now, Relaxed, Relaxed) {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::Refuse,
        }
    }

    /// A call succeeded. Returns true if that closed the breaker.
    pub(crate) fn succeeded(&self) -> bool {
        if self.failed.load(Relaxed) != 0 {
            self.failed.store(0, Relaxed);
        }
        self.opened.load(Relaxed) != 0 && self.opened.swap(0, Relaxed) != 0
    }

    /// A call failed. Returns true if that opened the breaker (a failed probe reopens it
    /// for another cooldown and returns false).
    pub(crate) fn failed(&self, probe: bool) -> bool {
        if self.settings.failures == 0 {
            return false;
        }
        let failed = self.failed.fetch_add(1, Relaxed).saturating_add(1);
        if probe {
            self.opened.store(self.now(), Relaxed);
            return false;
        }
        failed >= self.settings.failures
            && self
                .opened
                .compare_exchange(0, self.now(), Relaxed, Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_failures_in_a_row_and_a_probe_closes_it() {
        let (clock, mock) = quanta::Clock::mock();
        quanta::with_clock(&clock, || {
            let breaker = Breaker::new(BreakerSettings {
                failures: 3,
                cooldown: Duration::from_secs(10),
            });
            assert!(!breaker.failed(false));
            assert!(!breaker.failed(false));
            assert!(
                !breaker.succeeded(),
                "a success in between starts the count again"
            );
            assert!(!breaker.failed(false));
            assert!(!breaker.failed(false));
            assert_eq!(breaker.admit(), Admit::Call);
            assert!(breaker.failed(false), "the third in a row opens it");
            assert_eq!(breaker.admit(), Admit::Refuse);
            mock.increment(Duration::from_secs(10));
            assert_eq!(breaker.admit(), Admit::Probe);
            assert_eq!(breaker.admit(), Admit::Refuse, "one probe at a time");
            assert!(!breaker.failed(true), "a failed probe keeps it open");
            assert_eq!(breaker.admit(), Admit::Refuse);
            mock.increment(Duration::from_secs(10));
            assert_eq!(breaker.admit(), Admit::Probe);
            assert!(breaker.succeeded(), "a successful probe closes it");
            assert_eq!(breaker.admit(), Admit::Call);
        });
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let (clock, mock) = quanta::Clock::mock();
        quanta::with_clock(&clock, || {
            let breaker = Breaker::new(BreakerSettings {
                failures: 1,
                cooldown: Duration::from_secs(1),
            });
            assert!(breaker.failed(false));
            mock.increment(Duration::from_secs(1));
            assert_eq!(breaker.admit(), Admit::Probe);
            mock.increment(Duration::from_secs(1));
            assert_eq!(breaker.admit(), Admit::Probe);
        });
    }

    #[test]
    fn zero_failures_never_opens_it() {
        let breaker = Breaker::new(BreakerSettings {
            failures: 0,
            cooldown: Duration::from_secs(1),
        });
        for _ in 0..100 {
            assert!(!breaker.failed(false));
        }
        assert_eq!(breaker.admit(), Admit::Call);
    }
}
