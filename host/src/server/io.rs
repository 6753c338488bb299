//! A client connection's bytes as the server watches them, between TLS (when the listener
//! has it) and hyper: which protocol the client speaks (the HTTP/2 preface, or not), when
//! an HTTP/1.1 head begins (for the connection's [`Clock`]), and, on HTTP/2, the frames
//! counted against control-frame floods ([`Frames`]).
//!
//! A flood is met at the frame that crosses its budget: the bytes of that read never reach
//! h2, a GOAWAY (`ENHANCE_YOUR_CALM`) is written if everything h2 wrote so far ends at a
//! frame's end (so it cannot split one of h2's frames) and the socket takes it at once, and
//! the read fails, which ends the connection. The flood is counted in
//! `weir_downstream_h2_floods_total`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frames::{Flood, Frames, PREFACE};
use super::timeouts::Clock;

/// One listener's flood counters, one per [`Flood`] kind, resolved when it starts serving.
#[derive(Debug)]
pub(crate) struct FloodCounts([IntCounter; Flood::ALL.len()]);

impl FloodCounts {
    /// The counters of the listener at `listener` (its address, as the metric labels it).
    pub(crate) fn of(listener: &str) -> FloodCounts {
        let metrics = crate::metrics::metrics();
        FloodCounts(Flood::ALL.map(|flood| metrics.h2_flood(listener, flood.label())))
    }

    fn count(&self, flood: Flood) {
        if let Some(i) = Flood::ALL.iter().position(|&f| f == flood) {
            self.0[i].inc();
        }
    }
}

/// What the client has shown of its protocol.
#[derive(Debug)]
enum Protocol {
    /// Its first bytes so far match this many of the HTTP/2 preface's.
    Undecided(usize),
    Http1,
    Http2(Box<Frames>),
    /// A flood ended it: nothing more is read or written.
    Flooded,
}

/// A client connection, watched.
#[derive(Debug)]
pub(crate) struct ClientIo<T> {
    inner: T,
    clock: Arc<Clock>,
    protocol: Protocol,
    floods: Option<Arc<FloodCounts>>,
}

impl<T> ClientIo<T> {
    pub(crate) fn new(
        inner: T,
        clock: Arc<Clock>,
        floods: Option<Arc<FloodCounts>>,
    ) -> ClientIo<T> {
        ClientIo {
            inner,
            clock,
            protocol: Protocol::Undecided(0),
            floods,
        }
    }
}

/// Why a flooded connection was ended.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 control-frame flood ({}); connection closed", .0.label())]
struct Flooded(Flood);

impl<T: AsyncRead + AsyncWrite + Unpin> ClientIo<T> {
    /// Notes `read`, the bytes just read, for the protocol and the clock; `Err` on a flood.
    fn watch(&mut self, read: &[u8]) -> Result<(), Flood> {
        match &mut self.protocol {
            Protocol::Http1 => {
                self.clock.bytes_arrived();
                Ok(())
            }
            Protocol::Http2(frames) => frames.received(read),
            Protocol::Undecided(matched) => {
                self.clock.bytes_arrived();
                let want = &PREFACE[*matched..];
                let n = want.len().min(read.len());
                if read[..n] != want[..n] {
                    self.protocol = Protocol::Http1;
                    return Ok(());
                }
                *matched += n;
                if *matched < PREFACE.len() {
                    return Ok(());
                }
                self.clock.http2();
                let mut frames = Box::new(Frames::new());
                let result = frames.received(&read[n..]);
                self.protocol = Protocol::Http2(frames);
                result
            }
            Protocol::Flooded => Ok(()),
        }
    }

    /// Ends the connection for `flood`, with a GOAWAY if one can go out at once.
    fn flooded(&mut self, cx: &mut Context<'_>, flood: Flood) -> io::Error {
        if let Some(floods) = &self.floods {
            floods.count(flood);
        }
        if let Protocol::Http2(frames) = &self.protocol
            && frames.between_sent_frames()
        {
            let go_away = frames.go_away();
            // One try: a client that does not read its socket gets no GOAWAY, only the close.
            let inner = Pin::new(&mut self.inner);
            if let Poll::Ready(Ok(n)) = inner.poll_write(cx, &go_away)
                && n == go_away.len()
            {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        self.protocol = Protocol::Flooded;
        io::Error::new(io::ErrorKind::InvalidData, Flooded(flood))
    }

    fn closed(&self) -> Option<io::Error> {
        match self.protocol {
            Protocol::Flooded => Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "closed after an HTTP/2 control-frame flood",
            )),
            _ => None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.closed() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if let Err(flood) = this.watch(read) {
            // h2 never sees the flood's last read.
            buf.set_filled(before);
            return Poll::Ready(Err(this.flooded(cx, flood)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = this.closed() {
            return Poll::Ready(Err(e));
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        if let Protocol::Http2(frames) = &mut this.protocol {
            frames.sent(&data[..n]);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = this.closed() {
            return Poll::Ready(Err(e));
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        if let Protocol::Http2(frames) = &mut this.protocol {
            let mut left = n;
            for buf in bufs {
                if left == 0 {
                    break;
                }
                let k = left.min(buf.len());
                frames.sent(&buf[..k]);
                left -= k;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn clock() -> Arc<Clock> {
        Arc::new(Clock::new(Duration::from_secs(5), Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn a_ping_flood_ends_the_connection_with_a_go_away() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut io = ClientIo::new(server, clock(), None);
        // The preface, an empty SETTINGS, then 200 PINGs in one write.
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for _ in 0..200 {
            bytes.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
            bytes.extend_from_slice(&[0; 8]);
        }
        client.write_all(&bytes).await.expect("write");
        let mut read = vec![0; 1 << 16];
        let error = io.read(&mut read).await.expect_err("a flood");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("ping"), "{error}");
        let mut go_away = [0; 17];
        client.read_exact(&mut go_away).await.expect("GOAWAY");
        assert_eq!(go_away[3], 0x7, "a GOAWAY");
        assert_eq!(go_away[16], 0xb, "ENHANCE_YOUR_CALM");
        assert!(io.read(&mut read).await.is_err(), "ended for good");
    }

    #[tokio::test]
    async fn http1_bytes_pass_untouched_and_nothing_is_injected_mid_frame() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut io = ClientIo::new(server, clock(), None);
        client
            .write_all(b"PRI / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("write");
        let mut read = [0; 64];
        let n = io.read(&mut read).await.expect("read");
        assert_eq!(&read[..n], b"PRI / HTTP/1.1\r\nhost: a\r\n\r\n");
        assert!(matches!(io.protocol, Protocol::Http1));

        // HTTP/2, with half a frame written by weir when the flood comes: no GOAWAY.
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut io = ClientIo::new(server, clock(), None);
        client.write_all(PREFACE).await.expect("preface");
        let n = io.read(&mut read).await.expect("read");
        assert_eq!(n, PREFACE.len());
        io.write_all(&[0, 0, 4, 0, 0, 0, 0, 0, 1, 0xaa])
            .await
            .expect("half a DATA frame");
        let flood: Vec<u8> = (0..200).flat_map(|_| [0, 0, 0, 4, 0, 0, 0, 0, 0]).collect();
        client.write_all(&flood).await.expect("write");
        let error = loop {
            match io.read(&mut read).await {
                Ok(n) => assert!(n > 0, "ended without a flood"),
                Err(e) => break e,
            }
        };
        assert!(error.to_string().contains("settings"), "{error}");
        drop(io);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.expect("read");
        assert_eq!(written, [0, 0, 4, 0, 0, 0, 0, 0, 1, 0xaa]);
    }
}
