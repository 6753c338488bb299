//! Deadlines a connection reuses from one request to the next.
//!
//! A new tokio [`Sleep`] per request costs an allocation, an insertion into the runtime's
//! timer wheel and a removal when the request ends. So each connection keeps its idle
//! sleeps, one set per kind of deadline, and every request takes one back: the upstream
//! response timeout through [`Timers::deadline`]. A kind's deadlines only move later, so a
//! reused sleep is left filed under its old deadline and filed again only when that comes
//! round (see [`Deadline`]). (A connection's own timeouts, header read and idle, share one
//! sleep in its task: `server::timeouts`.)

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Idle sleeps kept per set: an HTTP/2 connection's concurrent requests each hold one.
const MAX_IDLE: usize = 8;

/// One connection's idle sleeps for one kind of deadline.
#[derive(Default)]
pub(crate) struct Timers {
    idle: Mutex<Vec<Pin<Box<Sleep>>>>,
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers").finish_non_exhaustive()
    }
}

impl Timers {
    /// A deadline `limit` from now, on an idle sleep if there is one. Callers race it
    /// against their future in their own `select!` (a helper taking the future would move
    /// it once more: about 280 instructions per proxied request).
    pub(crate) fn deadline(&self, limit: Duration) -> Deadline<&Timers> {
        Deadline::new(self, Instant::now() + limit)
    }

    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.idle.lock().ok()?.pop()
    }

    fn put(&self, sleep: Pin<Box<Sleep>>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(sleep);
        }
    }
}

/// A future that completes at its deadline; its sleep goes back to its [`Timers`] when
/// dropped.
///
/// The sleep is not moved to each new deadline: it stays filed under an earlier one, and
/// when that comes round and the real deadline is later, it is filed again under the real
/// one. So a connection's sleep is re-filed about once per limit, not once per request (an
/// idle one whose old deadline comes round wakes the connection's task once, for nothing).
pub(crate) struct Deadline<T: Deref<Target = Timers>> {
    home: T,
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T: Deref<Target = Timers>> Deadline<T> {
    fn new(home: T, at: Instant) -> Deadline<T> {
        let sleep = match home.take() {
            Some(mut sleep) => {
                // Filed too late for this deadline: file it earlier now.
                if sleep.deadline() > at {
                    sleep.as_mut().reset(at);
                }
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        Deadline {
            home,
            at,
            sleep: Some(sleep),
        }
    }
}

// The sleep is pinned in its own box; nothing else is pinned.
impl<T: Deref<Target = Timers>> Unpin for Deadline<T> {}

impl<T: Deref<Target = Timers>> Future for Deadline<T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        let Some(sleep) = &mut self.sleep else {
            return Poll::Ready(());
        };
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= at {
                return Poll::Ready(());
            }
            // It fired at a deadline an earlier request set: file it under this one.
            sleep.as_mut().reset(at);
        }
    }
}

impl<T: Deref<Target = Timers>> Drop for Deadline<T> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            self.home.put(sleep);
        }
    }
}

/// The upstream did not answer within the limit (its deadline came first).
#[derive(Debug)]
pub(crate) struct TimedOut(pub(crate) Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no response within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_its_time_and_its_sleep_is_reused() {
        let timers = Timers::default();
        let started = Instant::now();
        timers.deadline(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // The fired sleep went back and is moved to the new deadline.
        assert_eq!(timers.idle.lock().map(|v| v.len()).ok(), Some(1));
        timers.deadline(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        assert_eq!(timers.idle.lock().map(|v| v.len()).ok(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_sleep_filed_earlier_completes_only_at_the_new_deadline() {
        let timers = Timers::default();
        // Registered in the wheel for t+1s, then put back unfired.
        {
            let mut deadline = std::pin::pin!(timers.deadline(Duration::from_secs(1)));
            assert!(futures_poll_once(deadline.as_mut()).await.is_pending());
        }
        // Moved to t+10s: nothing completes at t+1s.
        let started = Instant::now();
        let late = timeout(
            &timers,
            Duration::from_secs(10),
            std::future::pending::<()>(),
        );
        assert!(late.await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_sleep_filed_later_is_moved_to_an_earlier_deadline() {
        let timers = Timers::default();
        {
            let mut deadline = std::pin::pin!(timers.deadline(Duration::from_secs(10)));
            assert!(futures_poll_once(deadline.as_mut()).await.is_pending());
        }
        let started = Instant::now();
        let early = timeout(
            &timers,
            Duration::from_secs(1),
            std::future::pending::<()>(),
        );
        assert!(early.await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_passes_the_output_through_before_the_deadline() {
        let timers = Timers::default();
        let output = timeout(&timers, Duration::from_secs(1), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            7
        })
        .await;
        assert_eq!(output.ok(), Some(7));
        let late = timeout(
            &timers,
            Duration::from_secs(1),
            tokio::time::sleep(Duration::from_secs(2)),
        )
        .await;
        assert_eq!(
            late.err().map(|e| e.to_string()).as_deref(),
            Some("no response within 1s")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_idle_sleeps_are_kept() {
        let timers = Timers::default();
        let held: Vec<_> = (0..MAX_IDLE + 3)
            .map(|_| timers.deadline(Duration::from_secs(1)))
            .collect();
        drop(held);
        assert_eq!(timers.idle.lock().map(|v| v.len()).ok(), Some(MAX_IDLE));
    }

    /// `future`, or `TimedOut` at `limit`, as the upstream client races them.
    async fn timeout<F: Future>(
        timers: &Timers,
        limit: Duration,
        future: F,
    ) -> Result<F::Output, TimedOut> {
        let deadline = timers.deadline(limit);
        tokio::select! {
            biased;
            output = future => Ok(output),
            () = deadline => Err(TimedOut(limit)),
        }
    }

    /// Polls `future` once.
    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }
}
