//! Connection caps for one cluster: a connector that opens at most `max_connections` at once
//! and lets at most `max_pending` connects wait for a free slot; one more fails at once with
//! [`PendingOverflow`], which the client turns into a 503 (circuit breaking, as Envoy's
//! `max_connections` and `max_pending_requests`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Too many requests are already waiting for a connection.
#[derive(Debug, thiserror::Error)]
#[error("{0} requests already wait for a connection (max_pending)")]
pub struct PendingOverflow(pub usize);

/// [`HttpConnector`] with caps on open and waiting connections.
#[derive(Debug, Clone)]
pub(super) struct LimitedConnector {
    inner: HttpConnector,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_pending: usize,
}

impl LimitedConnector {
    /// Connects waiting for a free slot now.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub(super) fn open(&self, max_connections: usize) -> usize {
        max_connections - self.slots.available_permits()
    }

    pub(super) fn new(inner: HttpConnector, max_connections: usize, max_pending: usize) -> Self {
        LimitedConnector {
            inner,
            slots: Arc::new(Semaphore::new(max_connections)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_pending,
        }
    }
}

/// Counts one connect waiting for a slot until dropped (also when the wait is cancelled).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for LimitedConnector {
    type Response = LimitedStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<LimitedStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let (slots, waiting, max_pending) =
            (self.slots.clone(), self.waiting.clone(), self.max_pending);
        Box::pin(async move {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let before = waiting.fetch_add(1, Ordering::Relaxed);
                    let _waiting = Waiting(waiting);
                    if before >= max_pending {
                        return Err(Box::new(PendingOverflow(before)) as BoxError);
                    }
                    slots.acquire_owned().await?
                }
            };
            let stream = inner.call(uri).await?;
            Ok(LimitedStream {
                inner: stream,
                _permit: permit,
            })
        })
    }
}

/// A connection holding one of the cluster's connection slots until it closes.
#[derive(Debug)]
pub(super) struct LimitedStream {
    inner: TokioIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connection for LimitedStream {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl Read for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Write for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
