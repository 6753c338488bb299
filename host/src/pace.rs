//! A lock-free rate gate: at most a rate of events a second, a few at once (the generic cell
//! rate algorithm, one atomic). It spaces out work that would otherwise come in bursts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::Tick;

/// Admits events at `per_second`, up to `burst` at once after a quiet spell.
#[derive(Debug)]
pub struct Pace {
    /// When the gate is next free ([`Tick::since_start`]).
    next: AtomicU64,
    /// Nanoseconds between events.
    spacing: u64,
    /// Nanoseconds of credit a quiet gate may save up: `burst` events' worth.
    credit: u64,
}

impl Pace {
    /// A gate for `per_second` events (at least 1), `burst` (at least 1) at once.
    pub fn new(per_second: u64, burst: u64) -> Pace {
        let spacing = 1_000_000_000 / per_second.max(1);
        Pace {
            next: AtomicU64::new(0),
            spacing,
            credit: spacing.saturating_mul(burst.max(1) - 1),
        }
    }

    /// Whether an event may happen now; if so, it is counted.
    pub fn admit(&self) -> bool {
        self.admit_at(Tick::now().since_start())
    }

    /// Admits nothing from now on: for tests of what a gate's refusal does.
    #[cfg(test)]
    pub(crate) fn close(&self) {
        self.next.store(u64::MAX / 2, Relaxed);
    }

    fn admit_at(&self, now: u64) -> bool {
        let floor = now.saturating_sub(self.credit);
        let mut next = self.next.load(Relaxed);
        loop {
            let from = next.max(floor);
            if from > now {
                return false;
            }
            match self
                .next
                .compare_exchange_weak(next, from + self.spacing, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => next = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_then_one_per_spacing() {
        let pace = Pace::new(1_000, 3);
        let start = 10 * MS;
        let admitted = (0..10).filter(|_| pace.admit_at(start)).count();
        assert_eq!(admitted, 3, "the burst");
        assert!(!pace.admit_at(start + MS / 2), "none before the spacing");
        assert!(pace.admit_at(start + MS));
        assert!(!pace.admit_at(start + MS));
        // A quiet second saves up no more than the burst.
        let later = start + 1_000 * MS;
        let admitted = (0..10).filter(|_| pace.admit_at(later)).count();
        assert_eq!(admitted, 3);
    }
}
