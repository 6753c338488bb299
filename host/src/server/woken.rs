//! [`Woken`]: a future polled again only once its own waker has fired, for the branches of a
//! connection's `select!` that are almost never ready (the drain signal, the idle check).
//!
//! A connection's task is woken for every read and write; a `select!` then polls every
//! branch, and a waiting `watch` receiver or `Sleep` costs a mutex or timer check each time
//! (about 450 instructions a request for the drain signal alone, callgrind). Wrapped, such a
//! branch costs two atomic operations until its own wake-up comes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

pin_project_lite::pin_project! {
    /// `inner`, polled only when its waker fired since its last poll (and on the first).
    pub(super) struct Woken<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
        waker: Waker,
    }
}

/// The waker `inner` is polled with: notes that it fired, then wakes the task.
#[derive(Debug, Default)]
struct Flag {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F> Woken<F> {
    pub(super) fn new(inner: F) -> Woken<F> {
        let flag = Arc::new(Flag {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Woken {
            inner,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// The wrapped future, to change (a sleep reset to a new deadline): it is polled at the
    /// next poll whatever its waker did.
    pub(super) fn inner_mut(self: Pin<&mut Self>) -> Pin<&mut F> {
        let this = self.project();
        this.flag.fired.store(true, Ordering::Relaxed);
        this.inner
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake-up between the two still wakes the task.
        this.flag.task.register(cx.waker());
        if !this.flag.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking through the waker it was given.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().expect("lock") = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let probe = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        };
        let mut woken = std::pin::pin!(Woken::new(probe));
        let task = Arc::new(Flag::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);

        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "the first poll reaches it");
        // The task is polled for other reasons: the inner future is left alone.
        for _ in 0..3 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        // Its own wake-up wakes the task, and the next poll reaches it.
        ready.store(true, Ordering::SeqCst);
        let waker = inner_waker
            .lock()
            .expect("lock")
            .take()
            .expect("registered");
        waker.wake();
        assert!(task.fired.load(Ordering::SeqCst), "the task was woken");
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_changed_inner_future_is_polled_at_the_next_poll() {
        let polls = Arc::new(AtomicUsize::new(0));
        let probe = Probe {
            polls: polls.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            waker: Arc::default(),
        };
        let mut woken = std::pin::pin!(Woken::new(probe));
        let task_waker = Waker::from(Arc::new(Flag::default()));
        let mut cx = Context::from_waker(&task_waker);
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        let _changed = woken.as_mut().inner_mut();
        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
