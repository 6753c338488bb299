//! A plugin call's share of time. Every epoch tick (1 ms) that finds the call running, the
//! call is charged that tick and gives its thread to the async runtime's other work: its first
//! two ticks with a plain yield, later ones by waiting four ticks, so a plugin in a loop delays
//! other requests on its thread by at most a tick at a time and gets about a fifth of the
//! thread, instead of holding it for its whole deadline.
//!
//! A call ends with `Trap::Interrupt` (a `deadline` failure) once it has been charged its
//! `deadline` in ticks. Its wall clock is bounded too, less the time it was excused — the
//! waits it gave to others, and its waits on the store and on `outbound` requests (up to
//! [`MAX_EXCUSED`] in all; each wait has its own timeout): a call that waits on anything else
//! — a WASI sleep — is cut off by a timer once that clock passes its deadline ([`cut_off`]),
//! not at its next tick, which would never come; a running call only at five deadlines, as a
//! backstop, since time the OS kept its thread from running is not the plugin's doing.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use wasmtime::{StoreContextMut, Trap, UpdateDeadline};

use super::EPOCH_TICK;

/// Ticks a call runs with only a yield between them.
const FREE_TICKS: u64 = 2;
/// Ticks a call that runs longer waits between its slices.
const BACKOFF: u32 = 4;
/// The wall-clock backstop of a running call, in deadlines.
const RUNNING_DEADLINES: u32 = 1 + BACKOFF;
/// The most waiting on the store and on `outbound` requests one call is excused, in all:
/// past it, waits count against the call's bound again, and `outbound` requests fail at
/// once, so a hook that calls in a loop cannot hold its request forever.
pub(crate) const MAX_EXCUSED: Duration = Duration::from_secs(10);
/// In [`Slack::paused`]: the call is giving its slice to others (unbounded: the wait is
/// the budget's own), not waiting on the store or `outbound`.
const YIELDING: u64 = 1 << 63;

/// Time a call is excused from its wall-clock bound. Shared (`Arc`) between the store, whose
/// tick callback and host calls add to it, and the timer of [`cut_off`], which reads it while
/// the call holds the store.
#[derive(Debug, Default)]
struct Slack {
    /// Nanoseconds excused so far: slices given to others and excused waits.
    given: AtomicU64,
    /// Of `given`, the nanoseconds of excused waits (bounded by [`MAX_EXCUSED`]).
    excused: AtomicU64,
    /// 0 while the call runs; while it waits, when the wait began (nanoseconds since the
    /// call began, plus one), with [`YIELDING`] set if it gives its slice to others.
    paused: AtomicU64,
}

/// The current call's budget; reset before each call.
#[derive(Debug)]
pub(crate) struct CallBudget {
    /// Ticks charged so far.
    charged: u64,
    /// Ticks the call may be charged.
    ticks: u64,
    /// When the call began and how long it may take besides what it is excused.
    bound: Bound,
}

/// What the wall-clock bound of the current call is made of; cheap to clone for the timer.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    started: quanta::Instant,
    deadline: Duration,
    slack: Arc<Slack>,
}

impl Default for CallBudget {
    fn default() -> CallBudget {
        CallBudget {
            charged: 0,
            ticks: 1,
            bound: Bound {
                started: quanta::Instant::now(),
                deadline: EPOCH_TICK,
                slack: Arc::default(),
            },
        }
    }
}

impl CallBudget {
    /// A fresh budget of `deadline` for the call about to begin.
    pub(crate) fn reset(&mut self, deadline: Duration) {
        self.charged = 0;
        self.ticks = ticks(deadline);
        self.bound.started = quanta::Instant::now();
        self.bound.deadline = deadline;
        let slack = &self.bound.slack;
        slack.given.store(0, Relaxed);
        slack.excused.store(0, Relaxed);
        slack.paused.store(0, Relaxed);
    }

    /// The current call's bound, for [`cut_off`].
    pub(crate) fn bound(&self) -> Bound {
        self.bound.clone()
    }

    /// Marks the start of a wait on an `outbound` request or the store: not the plugin's
    /// time. Pass what it returns to [`CallBudget::waited`] when the wait ends.
    pub(crate) fn waiting(&self) -> quanta::Instant {
        self.bound.pause(0);
        quanta::Instant::now()
    }

    /// The wait that began at `since` ended: the bound moves by it (each wait's own timeout
    /// bounds it), up to [`MAX_EXCUSED`] per call in all.
    pub(crate) fn waited(&mut self, since: quanta::Instant) {
        let slack = &self.bound.slack;
        slack.paused.store(0, Relaxed);
        let excused = since.elapsed().min(self.excusable());
        let nanos = nanos(excused);
        slack.excused.fetch_add(nanos, Relaxed);
        slack.given.fetch_add(nanos, Relaxed);
    }

    /// How much more waiting the call may be excused.
    pub(crate) fn excusable(&self) -> Duration {
        let excused = Duration::from_nanos(self.bound.slack.excused.load(Relaxed));
        MAX_EXCUSED.saturating_sub(excused)
    }
}

impl Bound {
    /// Records that the call began waiting now (`kind`: [`YIELDING`] or 0).
    fn pause(&self, kind: u64) {
        let at = nanos(self.started.elapsed()).saturating_add(1) & !YIELDING;
        self.slack.paused.store(at | kind, Relaxed);
    }

    /// How long the call may still take, or `None` once it is out of time, given
    /// `deadlines` of its deadline besides what it was excused.
    fn left(&self, deadlines: u32) -> Option<Duration> {
        let slack = &self.slack;
        let used = self.started.elapsed();
        let mut allowed = self
            .deadline
            .saturating_mul(deadlines)
            .saturating_add(Duration::from_nanos(slack.given.load(Relaxed)));
        let paused = slack.paused.load(Relaxed);
        if paused & YIELDING != 0 {
            // Giving its slice away is never held against the call; the wait is short.
            return Some(EPOCH_TICK);
        }
        if paused != 0 {
            let began = Duration::from_nanos(paused - 1);
            let excused = Duration::from_nanos(slack.excused.load(Relaxed));
            let waiting = used.saturating_sub(began);
            allowed += waiting.min(MAX_EXCUSED.saturating_sub(excused));
        }
        allowed.checked_sub(used).filter(|left| !left.is_zero())
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
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
    // A running call is held to its charged ticks; the wall clock is only a backstop here, at
    // five deadlines: a thread the OS kept from running (a starved machine) is not the
    // plugin's doing. A call that waits is held to one deadline, by `cut_off`.
    if budget.charged >= budget.ticks || budget.bound.left(RUNNING_DEADLINES).is_none() {
        return Ok(UpdateDeadline::Interrupt);
    }
    // The first ticks only yield; past them, the call waits `BACKOFF` ticks between its
    // slices, so a plugin that keeps running gets a fifth of its thread, not half of it.
    // Either way the time given is excused from the call's bound.
    let bound = budget.bound.clone();
    let backoff = (budget.charged > FREE_TICKS).then_some(EPOCH_TICK * BACKOFF);
    bound.pause(YIELDING);
    Ok(UpdateDeadline::YieldCustom(
        1,
        Box::pin(async move {
            let since = quanta::Instant::now();
            match backoff {
                Some(wait) => tokio::time::sleep(wait).await,
                None => tokio::task::yield_now().await,
            }
            let slack = &bound.slack;
            slack.given.fetch_add(nanos(since.elapsed()), Relaxed);
            slack.paused.store(0, Relaxed);
        }),
    ))
}

/// Runs `call`, cutting it off once it has waited past its bound: while the call is
/// suspended the epoch never finds it running, so a timer ends it instead. The call's
/// future is dropped, which unwinds the guest (its instance must not be used again); the
/// error is a `Trap::Interrupt`, a `deadline` failure like the tick's. Costs nothing for a
/// call that never waits: the timer is armed the first time the call is pending.
pub(crate) async fn cut_off<T>(
    bound: Bound,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let mut call = pin!(call);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = call.as_mut().poll(cx) {
            return Poll::Ready(done);
        }
        loop {
            let Some(left) = bound.left(1) else {
                let cut = wasmtime::Error::from(Trap::Interrupt)
                    .context("cut off at its deadline while it waited");
                return Poll::Ready(Err(cut));
            };
            let at = tokio::time::Instant::now() + left;
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waiting_is_excused_up_to_a_bound_per_call() {
        let (clock, mock) = quanta::Clock::mock();
        quanta::with_clock(&clock, || {
            let mut budget = CallBudget::default();
            budget.reset(50 * MS);
            let since = budget.waiting();
            mock.increment(Duration::from_secs(6));
            assert!(
                budget.bound.left(1).is_some(),
                "a wait in progress is excused"
            );
            budget.waited(since);
            assert_eq!(budget.excusable(), Duration::from_secs(4));
            let since = budget.waiting();
            mock.increment(Duration::from_secs(6));
            budget.waited(since);
            assert_eq!(budget.excusable(), Duration::ZERO, "10 s in all");
            assert_eq!(
                budget.bound.left(1),
                None,
                "the 2 s not excused spent the deadline"
            );
            budget.reset(50 * MS);
            assert_eq!(budget.excusable(), MAX_EXCUSED, "a new call starts afresh");
        });
    }

    #[test]
    fn an_unexcused_wait_counts_against_the_deadline() {
        let (clock, mock) = quanta::Clock::mock();
        quanta::with_clock(&clock, || {
            let mut budget = CallBudget::default();
            budget.reset(50 * MS);
            mock.increment(30 * MS);
            assert_eq!(budget.bound.left(1), Some(20 * MS));
            mock.increment(20 * MS);
            assert_eq!(budget.bound.left(1), None, "a sleeping call is out of time");
            budget.bound.pause(YIELDING);
            assert!(
                budget.bound.left(1).is_some(),
                "a call giving its slice away is not"
            );
        });
    }

    #[test]
    fn a_deadline_is_at_least_one_tick() {
        assert_eq!(ticks(Duration::from_micros(10)), 1);
        assert_eq!(ticks(Duration::from_millis(50)), 50);
        assert_eq!(ticks(Duration::MAX), u64::MAX);
    }

    #[tokio::test]
    async fn a_waiting_call_is_cut_off_at_its_bound_and_a_quick_one_is_not() {
        let mut budget = CallBudget::default();
        budget.reset(20 * MS);
        let quick = cut_off(budget.bound(), async { Ok(7) }).await;
        assert_eq!(quick.ok(), Some(7));
        let began = tokio::time::Instant::now();
        let slept = cut_off(budget.bound(), async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        })
        .await;
        let error = slept.expect_err("cut off");
        assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "cut at its bound, not after 10 s"
        );
    }
}
