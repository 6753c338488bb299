//! gRPC, as the proxy sees it: a request is gRPC by its content type; its `grpc-timeout`
//! bounds the upstream exchange; and what weir answers itself — its own failures, a plugin's
//! local reply — reaches a gRPC client as a gRPC error (a trailers-only response: HTTP 200,
//! `grpc-status`, `grpc-message`), as Envoy answers, never as a plain-text HTTP error that a
//! gRPC client reports as a protocol error.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::error::ErrorKind;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes weir answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Code {
    Cancelled = 1,
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether the request is a gRPC call (`application/grpc`, `application/grpc+proto`,
/// `application/grpc;…`), not gRPC-Web (`application/grpc-web…`, which answers differently).
#[inline]
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
    })
}

/// The call's `grpc-timeout` (`100m`, `5S`, …: at most 8 digits and a unit), if valid.
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for one of weir's own failures.
pub(super) fn code_for_error(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NoRoute => Code::Unimplemented,
        ErrorKind::PayloadTooLarge | ErrorKind::HeaderTooLarge | ErrorKind::UriTooLong => {
            Code::ResourceExhausted
        }
        ErrorKind::BodyTimeout => Code::DeadlineExceeded,
        ErrorKind::ClientClosed => Code::Cancelled,
        ErrorKind::UpstreamTimeout => Code::DeadlineExceeded,
        ErrorKind::NoEndpoint
        | ErrorKind::Overloaded
        | ErrorKind::UpstreamConnect
        | ErrorKind::UpstreamFailed
        | ErrorKind::PluginUnavailable => Code::Unavailable,
        ErrorKind::BadRequest | ErrorKind::PluginFailed => Code::Internal,
        // Not transient: a configuration error, which a retry would only repeat.
        ErrorKind::UnsupportedEncoding | ErrorKind::UpstreamProtocol => Code::Unimplemented,
    }
}

/// The gRPC status for an HTTP status (gRPC's "HTTP to gRPC status code mapping").
fn code_for_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A trailers-only gRPC error: HTTP 200, no body, the status in the headers.
pub(super) fn error(code: Code, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(""));
    set_error(response.headers_mut(), code, message);
    response
}

fn set_error(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(code as u8)),
    );
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
    headers.remove(header::CONTENT_LENGTH);
}

/// A plugin's local reply to a gRPC call: an HTTP error status becomes the matching gRPC
/// status (the HTTP status, as text, the message), keeping the reply's other headers.
pub(super) fn local_reply(reply: Response<ProxyBody>) -> Response<ProxyBody> {
    let status = reply.status();
    if status == StatusCode::OK {
        return reply;
    }
    let (mut parts, _body) = reply.into_parts();
    let message = format!("HTTP {status} from the proxy");
    set_error(&mut parts.headers, code_for_http(status), &message);
    parts.status = StatusCode::OK;
    Response::from_parts(parts, body::full(""))
}

/// `grpc-message` is percent-encoded UTF-8: everything outside printable ASCII, and `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_every_unit_and_refuse_nonsense() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(&GRPC_TIMEOUT, HeaderValue::from_str(v).expect("value"));
            timeout(&h)
        };
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_is_told_by_its_content_type_and_grpc_web_is_not() {
        let typed = |t: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            is_grpc(&h)
        };
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(typed(yes), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web-text",
            "application/json",
        ] {
            assert!(!typed(no), "{no}");
        }
    }

    #[test]
    fn a_local_reply_becomes_a_trailers_only_grpc_error() {
        let mut reply = Response::new(body::full("missing key\n"));
        *reply.status_mut() = StatusCode::UNAUTHORIZED;
        reply
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Key"));
        let error = local_reply(reply);
        assert_eq!(error.status(), StatusCode::OK);
        let h = error.headers();
        assert_eq!(h["grpc-status"], "16");
        assert_eq!(h["grpc-message"], "HTTP 401 Unauthorized from the proxy");
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["www-authenticate"], "Key");
        assert_eq!(percent_encode("a%b é"), "a%25b %C3%A9");
    }
}
