//! A plugin call's share of time. The epoch advances every [`TICK`] to [`MAX_TICK`]; every
//! epoch change that finds a call running charges it the time it ran since the last one (at
//! most the epoch thread's period) and gives its thread to the async runtime's other work:
//! with a plain yield until it has run [`FREE`], later by waiting [`BACKOFF`] between its
//! slices, so a plugin in a loop gets about a fifth of its thread instead of holding it for
//! its whole deadline. While a call runs past [`LONG`] the epoch advances every
//! [`FINE_TICK`], so the requests that share its thread wait at most that long for it at a
//! time. While none does, the period doubles from [`TICK`] up to [`MAX_TICK`]: a proxy whose
//! calls are all short wakes its epoch thread 250 times a second, not a thousand (each
//! wake-up preempts a busy worker: about 4 % of a core under load, 2 % idle, BENCHMARKS.md),
//! and the first slice of a call that then starts looping runs up to [`MAX_TICK`].
//! The epoch thread asks the kernel for a short time slice (`weir-sched`), so that it
//! preempts a worker thread busy in a plugin as soon as it wakes, not milliseconds later.
//!
//! A call ends with `Trap::Interrupt` (a `deadline` failure) once it has been charged its
//! `deadline`. Its wall clock is bounded too, less the time it was excused — the
//! waits it gave to others, and its waits on the store and on `outbound` requests (up to
//! [`MAX_EXCUSED`] in all; each wait has its own timeout): a call that waits on anything else
//! — a WASI sleep — is cut off by a timer once that clock passes its deadline ([`cut_off`]),
//! not at its next tick, which would never come; a running call only at five deadlines, as a
//! backstop, since time the OS kept its thread from running is not the plugin's doing (nor
//! is it charged: one epoch change charges at most a tick, however long the thread was away).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::{Trap, UpdateDeadline};

use crate::metrics::Tick;

/// How often the epoch advances once a call has stopped running long; the period then
/// doubles up to [`MAX_TICK`].
pub(crate) const TICK: Duration = Duration::from_millis(1);
/// The longest the epoch thread waits between two epoch changes: the longest a call that
/// starts looping while no other runs long holds its thread before its first yield.
const MAX_TICK: Duration = Duration::from_millis(4);
/// How often it advances while one does: the longest a call that keeps running holds its
/// thread at a time.
const FINE_TICK: Duration = Duration::from_micros(250);
/// An epoch change that finds a call running for less than this since it last resumed
/// lets it run on: it has not had its slice yet.
const MIN_SLICE: Duration = Duration::from_micros(50);
/// A call that has run this long makes the epoch advance every [`FINE_TICK`]: longer than
/// any hook of a well-behaved plugin (a JavaScript guard takes about 0.65 ms).
const LONG: Duration = Duration::from_millis(1);
/// How long the fine tick lasts after the last epoch change that found a long call running.
const FINE_FOR: Duration = Duration::from_millis(5);
/// Running time a call spends with only a yield between its slices.
const FREE: Duration = Duration::from_millis(2);
/// What a call that has run past [`FREE`] waits between its slices.
const BACKOFF: Duration = Duration::from_millis(1);
/// The wall-clock backstop of a running call, in deadlines.
const RUNNING_DEADLINES: u32 = 5;
/// The most waiting on the store and on `outbound` requests one call is excused, in all:
/// past it, waits count against the call's bound again, and `outbound` requests fail at
/// once, so a hook that calls in a loop cannot hold its request forever.
pub(crate) const MAX_EXCUSED: Duration = Duration::from_secs(10);
/// In [`Slack::paused`]: the call is giving its slice to others (unbounded: the wait is
/// the budget's own), not waiting on the store or `outbound`.
const YIELDING: u64 = 1 << 63;

/// Until when ([`Tick::since_start`]) the epoch advances every [`FINE_TICK`].
static FINE_UNTIL: AtomicU64 = AtomicU64::new(0);

/// The most one epoch change charges a call, in nanoseconds: the longer of the epoch thread's
/// current and previous periods (a tick may find a call the period after the one that
/// brought it), and at least [`TICK`] (a fine tick that comes late is charged in full).
static CHARGE_CAP: AtomicU64 = AtomicU64::new(TICK.as_nanos() as u64);

/// How long the epoch thread waits before it next advances the epoch, having waited `last`
/// before: [`FINE_TICK`] while a call runs long, else twice `last`, from [`TICK`] up to
/// [`MAX_TICK`].
pub(crate) fn epoch_period(last: Duration) -> Duration {
    let fine = Tick::now().since_start() < FINE_UNTIL.load(Relaxed);
    let next = next_period(last, fine);
    CHARGE_CAP.store(nanos(next.max(last).max(TICK)), Relaxed);
    next
}

/// The period after `last`: [`FINE_TICK`] if a call runs long, else twice `last` within
/// [`TICK`] and [`MAX_TICK`].
fn next_period(last: Duration, fine: bool) -> Duration {
    if fine {
        FINE_TICK
    } else {
        last.saturating_mul(2).clamp(TICK, MAX_TICK)
    }
}

/// A call is running long: the epoch advances every [`FINE_TICK`] for a while.
fn long_call_running() {
    let until = Tick::now().since_start().saturating_add(nanos(FINE_FOR));
    FINE_UNTIL.fetch_max(until, Relaxed);
}

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
    /// Nanoseconds the call was suspended in all (its future pending, whatever it waited
    /// on: a yield, the store, `outbound`, or a handler's own `wasi:io` poll of its
    /// outgoing requests), as [`cut_off`] sees it: what is not running time.
    suspended: AtomicU64,
}

/// The current call's budget; reset before each call.
#[derive(Debug)]
pub(crate) struct CallBudget {
    /// Running time charged so far.
    charged: Duration,
    /// The call's running time (its wall clock less the time it was suspended) at the last
    /// epoch change that found it running.
    seen: Duration,
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
            charged: Duration::ZERO,
            seen: Duration::ZERO,
            bound: Bound {
                started: quanta::Instant::now(),
                deadline: TICK,
                slack: Arc::default(),
            },
        }
    }
}

impl CallBudget {
    /// A fresh budget of `deadline` for the call about to begin.
    pub(crate) fn reset(&mut self, deadline: Duration) {
        self.charged = Duration::ZERO;
        self.seen = Duration::ZERO;
        self.bound.started = quanta::Instant::now();
        self.bound.deadline = deadline;
        let slack = &self.bound.slack;
        slack.given.store(0, Relaxed);
        slack.excused.store(0, Relaxed);
        slack.paused.store(0, Relaxed);
        slack.suspended.store(0, Relaxed);
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

    /// The call's wall clock less the time it was suspended: its running time, which is
    /// what a tick charges. Not what it was excused: a handler's wait on its own outgoing
    /// requests counts against its wall-clock bound, never as running.
    fn running(&self) -> Duration {
        let suspended = Duration::from_nanos(self.slack.suspended.load(Relaxed));
        self.started.elapsed().saturating_sub(suspended)
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
            return Some(TICK);
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

/// The epoch callback of a plugin's store: charge the time the call ran, then yield or trap.
pub(crate) fn on_tick(budget: &mut CallBudget) -> wasmtime::Result<UpdateDeadline> {
    // At most a period per epoch change: a thread the OS kept from running (a starved
    // machine) is not the plugin's doing. Time it waited unexcused (a WASI sleep) is
    // `cut_off`'s.
    let running = budget.bound.running();
    let ran = running.saturating_sub(budget.seen);
    budget.charged += ran.min(Duration::from_nanos(CHARGE_CAP.load(Relaxed)));
    budget.seen = running;
    // A running call is held to its charged time; the wall clock is only a backstop here.
    if budget.charged >= budget.bound.deadline || budget.bound.left(RUNNING_DEADLINES).is_none() {
        return Ok(UpdateDeadline::Interrupt);
    }
    // The epoch moved on while the call waited its turn, so the first check after it resumes
    // lands here at once: it runs on until the next epoch change, its slice.
    if ran < MIN_SLICE {
        return Ok(UpdateDeadline::Continue(1));
    }
    if budget.charged >= LONG {
        long_call_running();
    }
    // Until it has run `FREE` the call only yields; past that it waits between its slices,
    // so a plugin that keeps running gets a fifth of its thread, not half of it. Either way
    // the time given is excused from the call's bound.
    let bound = budget.bound.clone();
    let backoff = (budget.charged > FREE).then_some(BACKOFF);
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
/// future is dropped with the one returned, which unwinds the guest (its instance must not
/// be used again); the error is a `Trap::Interrupt`, a `deadline` failure like the tick's.
/// Each suspension is timed, from the poll that left the call pending to the next, so a
/// tick charges running time only. Costs nothing for a call that never waits: the timer is
/// armed, and the clock read, the first time the call is pending.
pub(crate) fn cut_off<T, F>(bound: Bound, call: F) -> CutOff<F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    CutOff {
        call,
        bound,
        timer: None,
        suspended_at: None,
        done: false,
    }
}

pin_project_lite::pin_project! {
    /// [`cut_off`]'s future, a struct that polls the call where it lies: an `async fn` would
    /// copy the call's future (about 350 bytes) twice on every hook call, into its locals
    /// and again to pin it (ARCHITECTURE.md, "Moves on the request path").
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct CutOff<F> {
        #[pin]
        call: F,
        bound: Bound,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        suspended_at: Option<quanta::Instant>,
        // Set once it has answered: a cut-off call must not be resumed past its deadline.
        done: bool,
    }
}

impl<T, F> Future for CutOff<F>
where
    F: Future<Output = wasmtime::Result<T>>,
{
    type Output = wasmtime::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // As an `async fn` would: polling a finished future is the caller's bug.
        assert!(!*this.done, "cut_off polled after it answered");
        if let Some(at) = this.suspended_at.take() {
            this.bound
                .slack
                .suspended
                .fetch_add(nanos(at.elapsed()), Relaxed);
        }
        if let Poll::Ready(answer) = this.call.poll(cx) {
            *this.done = true;
            return Poll::Ready(answer);
        }
        *this.suspended_at = Some(quanta::Instant::now());
        loop {
            let Some(left) = this.bound.left(1) else {
                let cut = wasmtime::Error::from(Trap::Interrupt)
                    .context("cut off at its deadline while it waited");
                *this.done = true;
                return Poll::Ready(Err(cut));
            };
            let at = tokio::time::Instant::now() + left;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A call is charged the time it ran, not the time it was suspended on anything (a
    /// handler's own `wasi:io` poll of its outgoing requests is excused from nothing, but it
    /// is not running either).
    #[tokio::test(start_paused = true)]
    async fn a_suspended_call_is_not_running() {
        let (clock, mock) = quanta::Clock::mock();
        quanta::with_clock(&clock, || {
            let mut budget = CallBudget::default();
            budget.reset(50 * MS);
            let mut polls = 0;
            let ran = mock.clone();
            // Runs 2 ms, waits, runs 3 ms.
            let call = std::future::poll_fn(move |_| {
                polls += 1;
                if polls == 1 {
                    ran.increment(2 * MS);
                    Poll::Pending
                } else {
                    ran.increment(3 * MS);
                    Poll::Ready(Ok(()))
                }
            });
            let mut call = pin!(cut_off(budget.bound(), call));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            mock.increment(30 * MS);
            assert!(matches!(call.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
            assert_eq!(
                budget.bound.running(),
                5 * MS,
                "2 ms and 3 ms, not the 30 between"
            );
            budget.reset(50 * MS);
            assert_eq!(
                budget.bound.running(),
                Duration::ZERO,
                "a new call starts afresh"
            );
        });
    }

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

    /// What an epoch change did to the call: 'c'ontinued it, 'y'ielded it or 'i'nterrupted it.
    fn tick(budget: &mut CallBudget) -> char {
        match on_tick(budget) {
            Ok(UpdateDeadline::Continue(_)) => 'c',
            Ok(UpdateDeadline::Yield(_) | UpdateDeadline::YieldCustom(..)) => 'y',
            Ok(UpdateDeadline::Interrupt) => 'i',
            Ok(_) | Err(_) => '?',
        }
    }

    #[test]
    fn a_call_is_charged_what_it_ran_at_most_a_period_at_a_time_and_gets_its_slice() {
        let (clock, mock) = quanta::Clock::mock();
        quanta::with_clock(&clock, || {
            let mut budget = CallBudget::default();
            budget.reset(10 * MS);
            mock.increment(Duration::from_micros(10));
            assert_eq!(tick(&mut budget), 'c', "a call that has barely run runs on");
            mock.increment(MS);
            assert_eq!(
                tick(&mut budget),
                'y',
                "one that ran its slice gives the thread away"
            );
            assert_eq!(budget.charged, MS + Duration::from_micros(10));
            // The thread was away for 100 ms (the OS ran something else): one period charged
            // (the epoch thread's, which another test's plugins may have lengthened).
            mock.increment(100 * MS);
            let before = Tick::now().since_start();
            assert_eq!(tick(&mut budget), 'y');
            let charged = budget.charged - MS - Duration::from_micros(10);
            assert!(
                charged >= MS && charged <= MAX_TICK,
                "charged {charged:?} for 100 ms away"
            );
            // Read from the real clock (the TSC): the fine tick lasts from now for `FINE_FOR`.
            assert!(
                FINE_UNTIL.load(Relaxed) >= before + nanos(FINE_FOR),
                "a call past `LONG` makes the epoch tick finer"
            );
            while budget.charged + MS < 10 * MS {
                mock.increment(MS);
                assert_eq!(tick(&mut budget), 'y');
            }
            mock.increment(MS);
            assert_eq!(tick(&mut budget), 'i', "charged its 10 ms deadline");
        });
    }

    #[test]
    fn the_epoch_period_doubles_to_its_longest_while_no_call_runs_long() {
        let mut periods = vec![FINE_TICK];
        for _ in 0..4 {
            periods.push(next_period(periods[periods.len() - 1], false));
        }
        assert_eq!(periods, [FINE_TICK, TICK, 2 * MS, MAX_TICK, MAX_TICK]);
        assert_eq!(next_period(MAX_TICK, true), FINE_TICK);
        // Through the shared state the epoch thread reads.
        long_call_running();
        assert_eq!(
            epoch_period(MAX_TICK),
            FINE_TICK,
            "a long call makes it fine at once"
        );
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

    /// A call cut off at its deadline is over: polled again, its future refuses instead of
    /// resuming the guest (and charging the wait a second time).
    #[tokio::test]
    #[should_panic(expected = "cut_off polled after it answered")]
    async fn a_call_cut_off_is_never_resumed() {
        let mut budget = CallBudget::default();
        budget.reset(20 * MS);
        let mut call = pin!(cut_off(budget.bound(), async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        }));
        let cut = call.as_mut().await;
        assert!(cut.is_err(), "cut off at its bound");
        let _ = call.as_mut().await;
    }
}
