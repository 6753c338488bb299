//! One path for the whole request, normalised once, before routing: the router, the plugins
//! and the upstream all see the same one, so no spelling of a path can reach a route other
//! than the one its normal form names (`/%70rivate`, `//private`, `/x/../private` are all
//! `/private`). The steps, in order:
//! 1. percent-escapes: an escaped unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded;
//!    any other escape is kept, its hex digits upper-cased; a malformed escape is refused;
//! 2. an escaped slash or backslash (`%2F`, `%5C`) and a literal backslash follow
//!    `encoded_slashes`: refused (the default, as Envoy can), decoded to `/`, or kept as they
//!    are (then they are not separators);
//! 3. runs of slashes become one (`merge_slashes`, on by default);
//! 4. dot segments are removed (RFC 3986 §5.2.4); a path climbing above the root stops there.
//!
//! `apply` puts the normal form in the request's URI (the query untouched); the rest are pure
//! functions over the path text, tested without a request.

use std::borrow::Cow;

use http::Request;
use http::uri::{PathAndQuery, Uri};

use crate::config::{EncodedSlashes, PathNormalization};
use crate::error::{ErrorKind, ProxyError};

/// Normalises the request's path in place; a path that cannot be is a 400.
#[inline]
pub(crate) fn apply<B>(
    request: &mut Request<B>,
    policy: &PathNormalization,
) -> Result<(), ProxyError> {
    let normal = match normalize(request.uri().path(), policy) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(normal)) => normal,
        Err(e) => return Err(ProxyError::new(ErrorKind::BadRequest).with_cause(e)),
    };
    let uri = request.uri();
    let target = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(target)
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest).with_cause(e))?,
    );
    *request.uri_mut() =
        Uri::from_parts(parts).map_err(|e| ProxyError::new(ErrorKind::BadRequest).with_cause(e))?;
    Ok(())
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `%` not followed by two hex digits.
    #[error("a malformed percent-escape in the path")]
    BadEscape,
    /// An escaped slash or a backslash, with `encoded_slashes = "reject"`.
    #[error(
        "an escaped slash or a backslash in the path (server.path_normalization.encoded_slashes = \"reject\")"
    )]
    EncodedSlash,
}

/// The normal form of `path` (the path alone, no query); borrowed when it is already normal.
pub(crate) fn normalize<'p>(
    path: &'p str,
    policy: &PathNormalization,
) -> Result<Cow<'p, str>, PathError> {
    if is_plain(path, policy.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, policy.encoded_slashes)?;
    let merged = if policy.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    Ok(Cow::Owned(remove_dot_segments(&merged)))
}

/// Whether nothing in `path` needs a step: no escape, no backslash, no dot segment and (when
/// merging) no empty segment. The common case, checked in one pass.
#[inline]
fn is_plain(path: &str, merge_slashes: bool) -> bool {
    let bytes = path.as_bytes();
    let mut previous = b'/';
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if merge_slashes && previous == b'/' && i > 0 => return false,
            b'.' if previous == b'/' => {
                // `/.` or `/..` as a whole segment.
                let rest = &bytes[i..];
                let segment = rest.split(|&c| c == b'/').next().unwrap_or(rest);
                if segment == b"." || segment == b".." {
                    return false;
                }
            }
            _ => {}
        }
        previous = b;
    }
    true
}

/// Step 1 and 2: escapes decoded or kept, slashes and backslashes by the policy.
fn decode(path: &str, slashes: EncodedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' => match slashes {
                        EncodedSlashes::Reject => return Err(PathError::EncodedSlash),
                        EncodedSlashes::Decode => out.push('/'),
                        EncodedSlashes::Keep => push_escape(&mut out, value),
                    },
                    v if is_unreserved(v) => out.push(v as char),
                    v => push_escape(&mut out, v),
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EncodedSlashes::Reject => return Err(PathError::EncodedSlash),
                    EncodedSlashes::Decode => out.push('/'),
                    EncodedSlashes::Keep => out.push('\\'),
                }
                i += 1;
            }
            _ => {
                // Copy up to the next byte that needs a look; the path is valid UTF-8 (it
                // came from a `Uri`) and `%` and `\` are ASCII, so this splits on boundaries.
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(value >> 4)] as char);
    out.push(HEX[usize::from(value & 15)] as char);
}

/// RFC 3986's unreserved characters: the ones whose escapes mean the same as the character.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 3: `//` → `/`.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

/// Step 4: RFC 3986 §5.2.4, on an absolute path: `.` segments go, `..` removes the segment
/// before it (never above the root). A path that ended in a dot segment keeps its trailing
/// slash (`/a/b/..` → `/a/`).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(slashes: EncodedSlashes, merge_slashes: bool) -> PathNormalization {
        PathNormalization {
            merge_slashes,
            encoded_slashes: slashes,
        }
    }

    #[test]
    fn every_spelling_of_a_path_normalises_to_it() {
        let policy = PathNormalization::default();
        for (raw, normal) in [
            ("/private", "/private"),
            ("/private/", "/private/"),
            ("/%70rivate", "/private"),
            ("/privat%65", "/private"),
            ("/%70%72%69%76%61%74%65", "/private"),
            ("//private", "/private"),
            ("///private//x", "/private/x"),
            ("/./private", "/private"),
            ("/x/../private", "/private"),
            ("/%2e/private", "/private"),
            ("/%2E%2E/private", "/private"),
            ("/public/../private", "/private"),
            ("/../../private", "/private"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/", "/"),
            ("/a%20b%3a", "/a%20b%3A"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a.b/..c/.d", "/a.b/..c/.d"),
            ("/~user/%7Euser", "/~user/~user"),
        ] {
            assert_eq!(normalize(raw, &policy).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        let policy = PathNormalization::default();
        for plain in ["/", "/api/v1/users", "/a.b/c..d/.e", "/x/y/"] {
            assert!(
                matches!(normalize(plain, &policy), Ok(Cow::Borrowed(p)) if p == plain),
                "{plain}"
            );
        }
    }

    #[test]
    fn escaped_slashes_and_backslashes_follow_the_policy() {
        for raw in [
            "/%2fprivate",
            "/%2Fprivate",
            "/private%2f..",
            "/a%5Cb",
            "/a\\b",
        ] {
            assert_eq!(
                normalize(raw, &PathNormalization::default()),
                Err(PathError::EncodedSlash),
                "{raw}"
            );
        }
        let decode = with(EncodedSlashes::Decode, true);
        assert_eq!(normalize("/%2fprivate", &decode).as_deref(), Ok("/private"));
        assert_eq!(normalize("/private%2f..", &decode).as_deref(), Ok("/"));
        assert_eq!(normalize("/a\\..\\b", &decode).as_deref(), Ok("/b"));
        let keep = with(EncodedSlashes::Keep, true);
        assert_eq!(normalize("/a%2fb", &keep).as_deref(), Ok("/a%2Fb"));
        assert_eq!(normalize("/a%2f..", &keep).as_deref(), Ok("/a%2F.."));
    }

    #[test]
    fn malformed_escapes_are_refused_and_slashes_merge_only_when_asked() {
        for raw in ["/%", "/%2", "/%zz", "/a%g0"] {
            assert_eq!(
                normalize(raw, &PathNormalization::default()),
                Err(PathError::BadEscape),
                "{raw}"
            );
        }
        let unmerged = with(EncodedSlashes::Reject, false);
        assert_eq!(normalize("//a//b", &unmerged).as_deref(), Ok("//a//b"));
        assert_eq!(normalize("//a/../b", &unmerged).as_deref(), Ok("//b"));
    }
}
