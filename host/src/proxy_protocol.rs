//! The PROXY protocol (HAProxy's; v1 text and v2 binary, parsed by the `ppp` crate) on a
//! listener that enables it: the load balancer in front of weir sends, before the
//! connection's own bytes, the address of the client it is forwarding. That address is then
//! the connection's peer, for everything that asks who the client is.
//!
//! Every connection to such a listener must start with a header (as HAProxy's
//! `accept-proxy` and Envoy's listener filter require): enable it only where nothing but the
//! load balancer can connect. A v2 `LOCAL` header (the balancer's own health check) or a v1
//! `UNKNOWN` keeps the real peer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The longest header taken: a v1 line is at most 107 bytes; a v2 header is 16 bytes and
/// its addresses (216 for UNIX sockets), plus whatever TLVs the balancer adds.
const MAX_HEADER: usize = 4096;

/// Reads the PROXY header at the start of `stream`: the client it names (`None` for a
/// `LOCAL` or `UNKNOWN` header), and the bytes read past it, which belong to the connection.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(Option<SocketAddr>, Bytes)> {
    let mut buffer = Vec::with_capacity(512);
    loop {
        if buffer.len() >= MAX_HEADER {
            return Err(invalid("a PROXY protocol header longer than 4096 bytes"));
        }
        let read = stream.read_buf(&mut buffer).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside its PROXY protocol header",
            ));
        }
        let header = HeaderResult::parse(&buffer);
        if header.is_incomplete() {
            continue;
        }
        let (client, length) = match header {
            HeaderResult::V1(Ok(header)) => (v1_client(&header.addresses), header.header.len()),
            HeaderResult::V2(Ok(header)) => (v2_client(&header), header.len()),
            HeaderResult::V1(Err(e)) => return Err(invalid(format!("PROXY protocol v1: {e}"))),
            HeaderResult::V2(Err(e)) => return Err(invalid(format!("PROXY protocol v2: {e}"))),
        };
        let mut rest = Bytes::from(buffer);
        rest.advance(length.min(rest.len()));
        return Ok((client, rest));
    }
}

fn v1_client(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// A connection whose first bytes were read ahead (past a PROXY header) and are read again
/// before the rest.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    ahead: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(inner: T, ahead: Bytes) -> Rewind<T> {
        Rewind { ahead, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// `AsyncWrite` for a read-side wrapper `$ty<T>` whose writes go straight to its `inner`
/// stream (`Rewind`).
macro_rules! write_through {
    ($ty:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

write_through!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> io::Result<(Option<SocketAddr>, Bytes)> {
        let mut stream = bytes;
        read_header(&mut stream).await
    }

    #[tokio::test]
    async fn a_v1_header_names_the_client_and_keeps_what_follows() {
        let (client, rest) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n")
                .await
                .expect("a header");
        assert_eq!(client, Some("203.0.113.7:51234".parse().expect("addr")));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let (client, rest) = read(b"PROXY UNKNOWN\r\nX").await.expect("a header");
        assert_eq!((client, &rest[..]), (None, &b"X"[..]));
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_local_keeps_the_peer() {
        let proxied = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:4000".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::1]:443".parse::<SocketAddr>().expect("addr"),
            ),
        )
        .build()
        .expect("a v2 header");
        let mut bytes = proxied.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (client, rest) = read(&bytes).await.expect("a header");
        assert_eq!(client, Some("[2001:db8::7]:4000".parse().expect("addr")));
        assert_eq!(&rest[..], b"\x16\x03\x01");

        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .expect("a v2 header");
        assert_eq!(read(&local).await.expect("a header").0, None);
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234",
            b"",
        ] {
            assert!(
                read(bytes).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let endless = vec![b'P'; 8192];
        assert!(read(&endless).await.is_err());
    }
}
