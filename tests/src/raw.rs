//! HTTP/1.1 as raw bytes, for tests that must see exactly what went over a connection: a
//! client that writes bytes and reads until the connection closes, and a reader of the
//! responses in what it read.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Where `needle` starts in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `bytes` to `addr` and reads until the connection closes, for at most `within`.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    out
}

/// One response read off a raw connection.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How [`responses`] finds where a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// As RFC 9112 says: no body for a 1xx, 204 or 304, then chunked coding before
    /// `Content-Length`.
    Rfc,
    /// As a client that trusts `Content-Length` would: it before chunked coding (to show
    /// what such a client would make of a response that carries both).
    LengthFirst,
}

/// The responses in `bytes`, in order (a body without a length runs to the end), and what is
/// left over that is not a whole response.
pub fn responses(mut bytes: &[u8], framing: Framing) -> (Vec<Response>, Vec<u8>) {
    let mut responses = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let Some(status) = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let rest = &bytes[end + 4..];
        let length = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        let bodiless = status == 304
            || status == 204
            || (framing == Framing::Rfc && (100..200).contains(&status));
        let by_length = length.filter(|_| framing == Framing::LengthFirst || !chunked);
        if bodiless {
            bytes = rest;
        } else if let Some(len) = by_length {
            if rest.len() < len {
                return (responses, bytes.to_vec());
            }
            response.body = rest[..len].to_vec();
            bytes = &rest[len..];
        } else if chunked {
            let Some((body, after)) = chunks(rest) else {
                return (responses, bytes.to_vec());
            };
            response.body = body;
            bytes = after;
        } else {
            response.body = rest.to_vec();
            bytes = &[];
        }
        responses.push(response);
    }
    (responses, bytes.to_vec())
}

/// A chunked body at the start of `bytes` (trailers skipped), and what follows it; `None` if
/// it is not all there.
fn chunks(mut at: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut body = Vec::new();
    loop {
        let line = find(at, b"\r\n")?;
        let size = std::str::from_utf8(&at[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())?;
        at = &at[line + 2..];
        if size == 0 {
            let trailers_end = find(at, b"\r\n")?;
            return Some((body, &at[trailers_end + 2..]));
        }
        if at.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&at[..size]);
        at = &at[size + 2..];
    }
}
