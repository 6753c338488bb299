//! The host a client's request asks for (Host, or the URI's authority), and its normalised
//! form for routing: part of the downstream phase, which `proxy()` begins with.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Request, Version};

use super::bad_request;
use crate::error::{ErrorKind, ProxyError};

/// The host the client asked for: the Host header, or the URI authority (HTTP/2, absolute
/// form). HTTP/1.1 requires exactly one Host header (RFC 9112 §3.2).
#[inline]
pub(super) fn request_host<B>(request: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(bad_request("more than one Host header")),
        (Some(host), None) => Ok(Some(host.clone())),
        (None, _) => match request.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str())
                .map(Some)
                .map_err(|e| ProxyError::new(ErrorKind::BadRequest).with_cause(e)),
            None if request.version() == Version::HTTP_11 => {
                Err(bad_request("HTTP/1.1 request without Host"))
            }
            None => Ok(None),
        },
    }
}

/// Lower-cases the host and drops its port and trailing dot, for route matching.
#[inline]
pub(super) fn normalize_host(value: &HeaderValue) -> Result<Cow<'_, str>, ProxyError> {
    let text = value
        .to_str()
        .map_err(|_| bad_request("Host is not ASCII"))?;
    let host = if let Some(rest) = text.strip_prefix('[') {
        // [v6]:port
        let end = rest
            .find(']')
            .ok_or_else(|| bad_request("malformed IPv6 Host"))?;
        &text[..end + 2]
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => text,
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        ];
        for (input, expect) in cases {
            let value = HeaderValue::from_static(input);
            let got = normalize_host(&value).ok().map(Cow::into_owned);
            assert_eq!(got.as_deref(), expect, "{input}");
        }
    }
}
