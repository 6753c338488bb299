//! `path`: a request target under every `[server.path_normalization]` policy, through the
//! normaliser the proxy runs before routing. Asserts, besides no panic, what the README
//! promises of the result:
//! - it starts with `/`, and normalising it again changes nothing (idempotent);
//! - no `.` or `..` segment is left;
//! - with `merge_slashes`, no `//`;
//! - every escape left is upper-case hex and not of an unreserved character;
//! - with `encoded_slashes = "reject"` (the default), a path with `%2F`, `%5C` or `\` is
//!   refused; with `"decode"`, none is left;
//! - the request's URI gets exactly that path, and its query unchanged.

use weir::config::{EncodedSlashes, PathNormalization};
use weir::fuzzing::{normalize_path, normalize_request};

/// Normalises the path in `input` and checks the result. The first byte is the policy (bit
/// 0 set: no `merge_slashes`; bits 1-2: `encoded_slashes` 0 `reject`, 1 `decode`, else
/// `keep`), so a byte 0 is the default policy; the rest is the request target after its
/// first `/`.
pub fn run(input: &[u8]) {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let policy = PathNormalization {
        merge_slashes: flags & 1 == 0,
        encoded_slashes: match (flags >> 1) & 3 {
            0 => EncodedSlashes::Reject,
            1 => EncodedSlashes::Decode,
            _ => EncodedSlashes::Keep,
        },
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    // Only what a client can send: a target hyper accepts as an origin-form URI.
    let target = format!("/{rest}");
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    let raw = uri.path();
    let normal = match normalize_path(raw, &policy) {
        Ok(normal) => normal.into_owned(),
        Err(_) => {
            check_request(&uri, &policy, None);
            return;
        }
    };
    assert!(
        normal.starts_with('/'),
        "{raw:?} -> {normal:?}: not absolute"
    );
    let again = normalize_path(&normal, &policy);
    assert_eq!(
        again.as_deref(),
        Ok(normal.as_str()),
        "{raw:?} -> {normal:?}: not idempotent"
    );
    assert!(
        !normal.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} -> {normal:?}: a dot segment is left"
    );
    if policy.merge_slashes {
        assert!(
            !normal.contains("//"),
            "{raw:?} -> {normal:?}: `//` is left"
        );
    }
    check_escapes(raw, &normal);
    let slashes = has_encoded_slash(raw);
    match policy.encoded_slashes {
        EncodedSlashes::Reject => assert!(
            !slashes,
            "{raw:?} -> {normal:?}: an encoded slash or backslash was not refused"
        ),
        EncodedSlashes::Decode => assert!(
            !has_encoded_slash(&normal),
            "{raw:?} -> {normal:?}: an encoded slash or backslash is left"
        ),
        EncodedSlashes::Keep => {}
    }
    check_request(&uri, &policy, Some(&normal));
}

/// `proxy::path::apply` on a request for `uri`: refused exactly when the path is, and
/// otherwise the normal path with the query as it came.
fn check_request(uri: &http::Uri, policy: &PathNormalization, normal: Option<&str>) {
    let Ok(mut request) = http::Request::builder().uri(uri.clone()).body(()) else {
        return;
    };
    let result = normalize_request(&mut request, policy);
    match normal {
        None => assert!(
            result.is_err(),
            "{uri}: the path is refused, the request not"
        ),
        Some(normal) => {
            assert_eq!(result, Ok(()), "{uri}: the path is {normal:?}");
            assert_eq!(request.uri().path(), normal, "{uri}");
            assert_eq!(
                request.uri().query(),
                uri.query(),
                "{uri}: the query changed"
            );
        }
    }
}

/// Every `%` in `normal` starts an upper-case escape of a character that is not unreserved.
fn check_escapes(raw: &str, normal: &str) {
    let bytes = normal.as_bytes();
    for (i, _) in normal.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            hex.len() == 2
                && hex
                    .iter()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
            "{raw:?} -> {normal:?}: escape at {i} is not upper-case hex"
        );
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        assert!(
            value.is_some_and(|v| !(v.is_ascii_alphanumeric() || b"-._~".contains(&v))),
            "{raw:?} -> {normal:?}: escape at {i} is of an unreserved character"
        );
    }
}

/// Whether `path` holds `\`, `%2F` or `%5C` (any case).
fn has_encoded_slash(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains('\\') || lower.contains("%2f") || lower.contains("%5c")
}
