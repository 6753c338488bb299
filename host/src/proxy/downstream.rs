//! The host a client's request asks for (Host, or the URI's authority), and its normalised
//! form for routing: part of the downstream phase, which `proxy()` begins with.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Request, Version};

use super::bad_request;
use crate::config::Limits;
use crate::error::{ErrorKind, ProxyError};

/// Refuses a request target longer than `uri_bytes` (414) or a header, name and value, longer
/// than `header_bytes` (431). hyper already bounds the whole head and the header count.
#[inline]
pub(super) fn check_limits<B>(request: &Request<B>, limits: &Limits) -> Result<(), ProxyError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > limits.uri_bytes {
        return Err(ProxyError::new(ErrorKind::UriTooLong).with_cause(format!(
            "the request target is {target} bytes; server.limits.uri_bytes is {}",
            limits.uri_bytes
        )));
    }
    for (name, value) in request.headers() {
        let size = name.as_str().len() + value.len();
        if size > limits.header_bytes {
            return Err(
                ProxyError::new(ErrorKind::HeaderTooLarge).with_cause(format!(
                    "header {name} is {size} bytes; server.limits.header_bytes is {}",
                    limits.header_bytes
                )),
            );
        }
    }
    Ok(())
}

/// The host the client asked for: the request target's authority when it has one (HTTP/2's
/// `:authority`, or HTTP/1.1's absolute form, which wins over a different `Host`: RFC 9112
/// §3.2.2, so `Host` is rewritten to it), else the Host header. HTTP/1.1 requires exactly one
/// Host header (RFC 9112 §3.2); an HTTP/2 request whose `host` differs from its `:authority`
/// is malformed (RFC 9113 §8.3.1).
#[inline]
pub(super) fn request_host<B>(request: &mut Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (host, another) = (hosts.next(), hosts.next());
    if another.is_some() {
        return Err(bad_request("more than one Host header"));
    }
    let Some(authority) = request.uri().authority() else {
        return match host {
            Some(host) => Ok(Some(host.clone())),
            None if request.version() == Version::HTTP_11 => {
                Err(bad_request("HTTP/1.1 request without Host"))
            }
            None => Ok(None),
        };
    };
    let target = HeaderValue::from_str(authority.as_str())
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest).with_cause(e))?;
    if host.is_some_and(|host| *host != target) {
        if request.version() == Version::HTTP_2 {
            return Err(bad_request("the host header differs from :authority"));
        }
        request.headers_mut().insert(header::HOST, target.clone());
    }
    Ok(Some(target))
}

/// Lower-cases the host and drops its port and trailing dot, for route matching. A host
/// that is not a DNS name, an IP address or an IPv6 literal in brackets (RFC 3986's
/// `reg-name` characters), or a port that is not a number up to 65535, is refused.
#[inline]
pub(super) fn normalize_host(value: &HeaderValue) -> Result<Cow<'_, str>, ProxyError> {
    match plain_host(value.as_bytes()) {
        Some(host) => Ok(Cow::Borrowed(host)),
        None => checked_host(value),
    }
}

/// The usual host, a lower-case name or address with or without a port, checked in one pass
/// over its bytes: what [`checked_host`] would make of it, or `None` for anything else (upper
/// case, a trailing dot, an IPv6 literal, or an error), which it is left to.
fn plain_host(bytes: &[u8]) -> Option<&str> {
    let end = bytes
        .iter()
        .position(|&b| !LOWER_REG_NAME[usize::from(b)])
        .unwrap_or(bytes.len());
    let (host, port) = bytes.split_at(end);
    if let Some(digits) = port.strip_prefix(b":") {
        let in_range = digits.len() < 5 || (digits.len() == 5 && digits <= b"65535".as_slice());
        if !in_range || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    if host.is_empty() || host.ends_with(b".") {
        return None;
    }
    std::str::from_utf8(host).ok()
}

/// The bytes of a `reg-name` that need no lower-casing ([`is_reg_name`] but upper case).
static LOWER_REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_reg_name(b as u8) && !(b as u8).is_ascii_uppercase();
        b += 1;
    }
    table
};

/// [`normalize_host`] for any host: IPv6 literals, upper case, a trailing dot, and the
/// reason a malformed one is refused.
#[cold]
fn checked_host(value: &HeaderValue) -> Result<Cow<'_, str>, ProxyError> {
    let text = value
        .to_str()
        .map_err(|_| bad_request("Host is not ASCII"))?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        // [v6]:port
        let end = rest
            .find(']')
            .ok_or_else(|| bad_request("malformed IPv6 Host"))?;
        let literal = &rest[..end];
        if !literal
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return Err(bad_request("malformed IPv6 Host"));
        }
        let port = match &rest[end + 1..] {
            "" => None,
            after => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad_request("malformed IPv6 Host"))?,
            ),
        };
        (&text[..end + 2], port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if !host.bytes().all(is_reg_name) {
            return Err(bad_request("malformed Host"));
        }
        (host, port)
    };
    // An empty port is allowed (RFC 3986 §3.2.3).
    if let Some(port) = port.filter(|p| !p.is_empty())
        && (port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().map_or(true, |p| p > 65_535))
    {
        return Err(bad_request("malformed port in Host"));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(bad_request("empty Host"));
    }
    Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// A character of RFC 3986's `reg-name`: unreserved, `%` of a percent-encoding, or a
/// sub-delimiter.
const fn is_reg_name(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_authority_wins_over_host_and_must_match_it_over_http2() {
        let request = |version, uri: &str, host: Option<&str>| {
            let mut builder = Request::builder().version(version).uri(uri);
            if let Some(host) = host {
                builder = builder.header(header::HOST, host);
            }
            builder.body(()).expect("request")
        };
        // HTTP/1.1 absolute form: the target wins, and Host is rewritten to it.
        let mut absolute = request(Version::HTTP_11, "http://b.test/x", Some("a.test"));
        let host = request_host(&mut absolute).expect("a host");
        assert_eq!(host, Some(HeaderValue::from_static("b.test")));
        assert_eq!(absolute.headers()[header::HOST], "b.test");
        // HTTP/2: a host header that differs from :authority is malformed.
        let mut h2 = request(Version::HTTP_2, "http://b.test/x", Some("a.test"));
        assert!(request_host(&mut h2).is_err());
        let mut h2 = request(Version::HTTP_2, "http://b.test/x", Some("b.test"));
        assert_eq!(
            request_host(&mut h2).expect("a host"),
            Some(HeaderValue::from_static("b.test"))
        );
        // Origin form: Host, exactly one, required for HTTP/1.1.
        let mut origin = request(Version::HTTP_11, "/x", Some("a.test"));
        assert_eq!(
            request_host(&mut origin).expect("a host"),
            Some(HeaderValue::from_static("a.test"))
        );
        let mut none = request(Version::HTTP_11, "/x", None);
        assert!(request_host(&mut none).is_err());
        let mut two = request(Version::HTTP_11, "/x", Some("a.test"));
        two.headers_mut()
            .append(header::HOST, HeaderValue::from_static("b.test"));
        assert!(request_host(&mut two).is_err());
    }

    #[test]
    fn host_normalization() {
        let cases = [
            ("api.example.com", Some("api.example.com")),
            ("API.Example.COM:8080", Some("api.example.com")),
            ("example.com.", Some("example.com")),
            ("[::1]:8080", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1", None),
            (":80", None),
            ("a.test:abc", None),
            ("a.test/x", None),
            ("a.test:99999", None),
            ("a.test:123456", None),
            ("a b.test", None),
            ("a@b.test", None),
            ("[::1]x", None),
            ("[::g]:80", None),
            ("a.test:", Some("a.test")),
            ("a.test:65535", Some("a.test")),
        ];
        for (input, expect) in cases {
            let value = HeaderValue::from_static(input);
            let got = normalize_host(&value).ok().map(Cow::into_owned);
            assert_eq!(got.as_deref(), expect, "{input}");
        }
    }

    /// The one-pass path takes only hosts the full check takes, and makes of them what it
    /// makes: every string of up to four bytes from an alphabet of the bytes that matter,
    /// and longer ports.
    #[test]
    fn the_plain_host_path_agrees_with_the_full_check() {
        let alphabet: &[u8] = b"aZ0.:-_[]%@ \x7f\x80";
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=4 {
            let mut next = Vec::new();
            for input in inputs.iter().filter(|i| i.len() == len - 1) {
                for &b in alphabet {
                    let mut longer = input.clone();
                    longer.push(b);
                    next.push(longer);
                }
            }
            inputs.extend(next);
        }
        for port in ["6553", "65535", "65536", "99999", "00080", "123456", "0"] {
            inputs.push(format!("a.test:{port}").into_bytes());
            inputs.push(format!("A.test:{port}").into_bytes());
        }
        let mut plain = 0;
        for input in &inputs {
            let Ok(value) = HeaderValue::from_bytes(input) else {
                continue;
            };
            let full = checked_host(&value).ok().map(Cow::into_owned);
            if let Some(host) = plain_host(input) {
                plain += 1;
                assert_eq!(Some(host), full.as_deref(), "{input:?}");
            }
            let got = normalize_host(&value).ok().map(Cow::into_owned);
            assert_eq!(got, full, "{input:?}");
        }
        // The fast path is taken, not just never wrong.
        assert!(plain > 1_000, "{plain}");
    }
}
