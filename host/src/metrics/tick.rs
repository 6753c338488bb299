//! Readings of the CPU's time-stamp counter, for the durations metrics and the access log
//! record: a request's, its upstream exchange's.
//!
//! A [`Tick`] is the counter as read (`quanta::Clock::raw`: `rdtsc`, or the monotonic clock
//! where there is no usable TSC), scaled to nanoseconds only when two are subtracted. Where
//! `quanta::Instant::now` scales every reading and first looks for a thread's mock clock,
//! this is a few instructions a reading. Nothing waits on it: timeouts use `tokio::time`.

use std::sync::LazyLock;
use std::time::Duration;

/// The process's clock, calibrated against the monotonic clock once (by quanta, for every
/// clock of the process) at the first reading.
static CLOCK: LazyLock<quanta::Clock> = LazyLock::new(quanta::Clock::new);

/// The process's first reading asked for by [`Tick::since_start`].
static START: LazyLock<Tick> = LazyLock::new(Tick::now);

/// A reading of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

impl Tick {
    /// Reads the counter.
    #[inline]
    pub fn now() -> Tick {
        Tick(CLOCK.raw())
    }

    /// The time from this reading to now.
    #[inline]
    pub fn elapsed(self) -> Duration {
        self.until(Tick::now())
    }

    /// The time from this reading to `later`, or zero if `later` is not later.
    #[inline]
    pub fn until(self, later: Tick) -> Duration {
        Duration::from_nanos(self.nanos_until(later))
    }

    /// [`Tick::until`] in nanoseconds.
    #[inline]
    pub fn nanos_until(self, later: Tick) -> u64 {
        CLOCK.delta_as_nanos(self.0, later.0)
    }

    /// Nanoseconds from the process's first such reading to this one: a plain number that
    /// grows with time, to keep in an atomic (a rate gate's next free moment, a deadline).
    #[inline]
    pub fn since_start(self) -> u64 {
        START.nanos_until(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_measure_time_in_order() {
        let start = Tick::now();
        std::thread::sleep(Duration::from_millis(20));
        let end = Tick::now();
        assert!(start < end);
        let took = start.until(end);
        // Slept at least 20 ms; a loaded machine may add any amount, a wrong scale a factor.
        assert!(took >= Duration::from_millis(19), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(end.until(start), Duration::ZERO);
        assert!(start.elapsed() >= took);
        assert!(end.since_start() >= start.since_start());
    }
}
