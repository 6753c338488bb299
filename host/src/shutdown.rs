//! Shutdown: the OS signals that start it and the drain signal that carries it to listeners.
//!
//! Shutdown happens in two steps. [`DrainTrigger::trigger`] tells every accept loop to stop
//! accepting; each loop closes its listener (dropping its [`Listening`], so
//! [`ListenersClosed::wait`] knows when none accepts any more), then lets its open
//! connections finish their in-flight requests, up to `server.drain_timeout`, and returns.
//! `run` returns when every loop has.

use std::future::Future;

use tokio::sync::{mpsc, watch};

/// Starts the drain. Dropping it without triggering also counts as a trigger.
#[derive(Debug)]
pub(crate) struct DrainTrigger(watch::Sender<bool>);

/// Tells one accept loop that draining has started. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Drain(watch::Receiver<bool>);

/// A connected trigger and drain signal.
pub(crate) fn channel() -> (DrainTrigger, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainTrigger(tx), Drain(rx))
}

impl DrainTrigger {
    /// Signals every [`Drain`] clone.
    pub(crate) fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Drain {
    /// Resolves once draining has started (immediately if it already has). Cancel-safe.
    pub(crate) async fn signaled(&mut self) {
        // An Err means the trigger was dropped, which also means: stop.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

/// Held by an accept loop while its listener is open. Nothing is ever sent: the channel
/// closes when the last one is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Listening(#[expect(dead_code, reason = "held, never sent on")] mpsc::Sender<()>);

/// Waits for every [`Listening`] to be dropped.
#[derive(Debug)]
pub(crate) struct ListenersClosed(mpsc::Receiver<()>);

/// A [`Listening`] to clone into each accept loop, and what waits for them all to be gone.
pub(crate) fn listening() -> (Listening, ListenersClosed) {
    let (tx, rx) = mpsc::channel(1);
    (Listening(tx), ListenersClosed(rx))
}

impl ListenersClosed {
    /// Resolves once every accept loop has closed its listener: from then on a new
    /// connection is refused by the kernel rather than queued.
    pub(crate) async fn wait(mut self) {
        let _ = self.0.recv().await;
    }
}

/// Installs the SIGINT and SIGTERM handlers now and resolves on the first of them (Ctrl-C
/// elsewhere). Call it before anything is served: until the handlers are installed, a
/// signal kills the process instead of draining it. Needs the runtime's context.
pub fn os_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        match handlers {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                }
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot install signal handlers; only Ctrl-C stops weir")
            }
        }
        if tokio::signal::ctrl_c().await.is_err() {
            // No way to be told to stop: run until killed.
            std::future::pending::<()>().await;
        }
    }
}
