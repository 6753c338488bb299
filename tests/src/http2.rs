//! HTTP/2 clients for the edge tests, over any byte stream (TCP, or TLS with ALPN `h2`):
//! the `h2` crate's client, started with weir's settings in hand ([`handshake`], [`send`]),
//! and [`Raw`], which writes any frame in any number and reads back frame by frame — what
//! no well-behaved client does, and what hyper's client would tidy away.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::DEADLINE;

/// An `h2` client connection whose handshake is done and whose peer's SETTINGS have been
/// applied (a ping's answer comes after them), so `max_concurrent_send_streams` and the
/// like say what weir advertised. The connection is not yet driven: spawn it.
pub async fn handshake<S>(io: S) -> (h2::client::SendRequest<Bytes>, h2::client::Connection<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, mut connection) = h2::client::handshake(io).await.expect("h2 handshake");
    let mut ping_pong = connection.ping_pong().expect("ping-pong");
    tokio::select! {
        _ = &mut connection => panic!("the connection ended"),
        pong = ping_pong.ping(h2::Ping::opaque()) => {
            pong.expect("pong");
        }
    }
    (client, connection)
}

/// Sends `request` without a body on `client`: the response's status, or why there is none.
pub async fn send(
    client: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
) -> Result<u16, String> {
    let client = client.clone().ready().await.map_err(|e| e.to_string())?;
    let mut client = client;
    let (response, _) = client
        .send_request(request, true)
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .map_err(|_| "no answer".to_owned())?;
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
}

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's error code.
    pub fn go_away_code(&self) -> Option<u32> {
        (self.kind == kind::GOAWAY && self.payload.len() >= 8).then(|| {
            u32::from_be_bytes([
                self.payload[4],
                self.payload[5],
                self.payload[6],
                self.payload[7],
            ])
        })
    }
}

/// `NO_ERROR` and `ENHANCE_YOUR_CALM` (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame's bytes.
pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload length");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The header block of `GET path` for `authority`. HPACK: `:method GET` and `:scheme http`
/// from the static table (its first byte, `0x82`, is the method's), `:path` and
/// `:authority` as literals with indexed names (RFC 7541 §6.2.2), short enough for one-byte
/// lengths.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (index, value) in [(0x04u8, path), (0x01, authority)] {
        let len = u8::try_from(value.len()).ok().filter(|&n| n < 127);
        block.extend_from_slice(&[index, len.expect("a short value")]);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// The HEADERS frame that opens stream `stream` with `GET path` for `authority` (no body).
pub fn get(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    encode(
        kind::HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &get_block(authority, path),
    )
}

/// A RST_STREAM frame for `stream` with error `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    encode(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A raw HTTP/2 client connection.
#[derive(Debug)]
pub struct Raw<S> {
    io: S,
    read: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// Sends the client preface and an empty SETTINGS frame.
    pub async fn start(io: S) -> Raw<S> {
        let mut raw = Raw {
            io,
            read: Vec::new(),
        };
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(encode(kind::SETTINGS, 0, 0, &[]));
        raw.write(&start).await.expect("preface");
        raw
    }

    /// Writes `bytes` (frames).
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Opens stream `stream` with `GET path` for `authority` (no body).
    pub async fn get(&mut self, stream: u32, authority: &str, path: &str) -> io::Result<()> {
        self.write(&get(stream, authority, path)).await
    }

    /// The next frame, or `None` once the server closed the connection (or reset it).
    /// Panics when nothing comes within [`DEADLINE`].
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.read.len() >= 9 {
                let len = usize::from(self.read[0]) << 16
                    | usize::from(self.read[1]) << 8
                    | usize::from(self.read[2]);
                if self.read.len() >= 9 + len {
                    let head: Vec<u8> = self.read.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout(DEADLINE, self.io.read(&mut chunk))
                .await
                .expect("a frame, or the end, in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Every frame until the server closes the connection, answering its PINGs and
    /// SETTINGS as a client must (a write that fails, on a closing connection, is ignored).
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await {
            let answer = match frame.kind {
                kind::PING if frame.flags & ACK == 0 => {
                    Some(encode(kind::PING, ACK, 0, &frame.payload))
                }
                kind::SETTINGS if frame.flags & ACK == 0 => {
                    Some(encode(kind::SETTINGS, ACK, 0, &[]))
                }
                _ => None,
            };
            if let Some(answer) = answer {
                let _ = self.write(&answer).await;
            }
            frames.push(frame);
        }
        frames
    }
}
