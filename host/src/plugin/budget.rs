//! A plugin call's share of time. Every epoch tick (1 ms) that finds the call running, the
//! call is charged that tick and gives its thread to the async runtime's other work: its first
//! two ticks with a plain yield, later ones by waiting four ticks, so a plugin in a loop delays
//! other requests on its thread by at most a tick at a time and gets about a fifth of the
//! thread, instead of holding it for its whole deadline. It traps (`Trap::Interrupt`, a
//! `deadline` failure) once it has been charged its `deadline` in ticks (its own running time;
//! time given to others is not charged), or once five times its deadline has passed on the
//! wall clock since the call began (room for the waits; a call that waits itself — a WASI
//! sleep, a slow host call — is cut off at its next tick after that).

use std::time::Duration;

use wasmtime::{StoreContextMut, UpdateDeadline};

use super::EPOCH_TICK;

/// Ticks a call runs with only a yield between them.
const FREE_TICKS: u64 = 2;
/// Ticks a call that runs longer waits between its slices.
const BACKOFF: u32 = 4;
/// The wall-clock bound, in deadlines: room for the backoff's waits.
const WALL_DEADLINES: u32 = 1 + BACKOFF;
/// The most waiting on the store and on `outbound` requests one call is excused, in all:
/// past it, waits count against the wall-clock bound again, and `outbound` requests fail at
/// once, so a hook that calls in a loop cannot hold its request forever.
pub(crate) const MAX_EXCUSED: Duration = Duration::from_secs(10);

/// The current call's budget; reset before each call.
#[derive(Debug)]
pub(crate) struct CallBudget {
    /// Ticks charged so far.
    charged: u64,
    /// Ticks the call may be charged.
    ticks: u64,
    /// When the call began.
    started: quanta::Instant,
    /// The wall-clock bound.
    wall: Duration,
    /// Waiting excused so far (see [`MAX_EXCUSED`]).
    excused: Duration,
}

impl Default for CallBudget {
    fn default() -> CallBudget {
        CallBudget {
            charged: 0,
            ticks: 1,
            started: quanta::Instant::now(),
            wall: EPOCH_TICK,
            excused: Duration::ZERO,
        }
    }
}

impl CallBudget {
    /// Time the call spent waiting on an `outbound` request or the store is not the
    /// plugin's: the wall bound moves by it (each wait's own timeout bounds it), up to
    /// [`MAX_EXCUSED`] per call in all.
    pub(crate) fn waited(&mut self, for_: Duration) {
        let excused = for_.min(MAX_EXCUSED.saturating_sub(self.excused));
        self.excused += excused;
        self.started += excused;
    }

    /// How much more waiting the call may be excused.
    pub(crate) fn excusable(&self) -> Duration {
        MAX_EXCUSED.saturating_sub(self.excused)
    }

    /// A fresh budget of `deadline` for the call about to begin.
    pub(crate) fn reset(&mut self, deadline: Duration) {
        self.charged = 0;
        self.ticks = ticks(deadline);
        self.started = quanta::Instant::now();
        self.wall = deadline.saturating_mul(WALL_DEADLINES);
        self.excused = Duration::ZERO;
    }
}

/// `deadline` in epoch ticks, at least one.
pub(crate) fn ticks(deadline: Duration) -> u64 {
    u64::try_from(deadline.as_micros() / EPOCH_TICK.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The epoch callback of a plugin's store: charge the tick, then yield or trap.
pub(crate) fn on_tick<T>(
    mut store: StoreContextMut<'_, T>,
    budget: impl Fn(&mut T) -> &mut CallBudget,
) -> wasmtime::Result<UpdateDeadline> {
    let budget = budget(store.data_mut());
    budget.charged += 1;
    if budget.charged >= budget.ticks || budget.started.elapsed() >= budget.wall {
        return Ok(UpdateDeadline::Interrupt);
    }
    // The first ticks only yield; past them, the call waits `BACKOFF` ticks between its
    // slices, so a plugin that keeps running gets a fifth of its thread, not half of it.
    if budget.charged <= FREE_TICKS {
        return Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ));
    }
    Ok(UpdateDeadline::YieldCustom(
        1,
        Box::pin(tokio::time::sleep(EPOCH_TICK * BACKOFF)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_excused_up_to_a_bound_per_call() {
        let mut budget = CallBudget::default();
        budget.reset(Duration::from_millis(50));
        budget.waited(Duration::from_secs(6));
        assert_eq!(budget.excusable(), Duration::from_secs(4));
        budget.waited(Duration::from_secs(6));
        assert_eq!(budget.excusable(), Duration::ZERO, "10 s in all");
        budget.reset(Duration::from_millis(50));
        assert_eq!(budget.excusable(), MAX_EXCUSED, "a new call starts afresh");
    }

    #[test]
    fn a_deadline_is_at_least_one_tick() {
        assert_eq!(ticks(Duration::from_micros(10)), 1);
        assert_eq!(ticks(Duration::from_millis(50)), 50);
        assert_eq!(ticks(Duration::MAX), u64::MAX);
    }
}
