//! Content codings (RFC 9110 §8.4): undone so that body hooks see plain bodies, and applied
//! to the responses of routes with `compression`.
//!
//! Decoding (`gzip`, `deflate` — zlib, or raw deflate as some servers send it —, `br`,
//! `zstd`): only when a plugin on the route has a body hook, and only whole and bounded: the
//! decoder stops one byte past the hook's `max_body_bytes`, so a small body that inflates to
//! gigabytes (a "zip bomb") costs that limit and no more.
//!
//! Encoding (`zstd`, `br`, `gzip`): the coding is negotiated from the client's
//! `Accept-Encoding` q-values (ties go to the route's order), and only for responses worth
//! it (not `HEAD`, 204, 206 or 304; not coded already; no `Cache-Control: no-transform`; a
//! listed type; not known to be under `min_bytes`). Such a response varies by
//! `Accept-Encoding` whether or not this client gets it coded, so `Vary` says so. The body is
//! compressed as it streams, in blocks; a strong `ETag` becomes weak and `Content-Length`
//! goes (the coded length is not known until the end).

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, DeflateDecoder, GzipDecoder, GzipEncoder, ZlibDecoder,
    ZstdDecoder, ZstdEncoder,
};
use futures_util::TryStreamExt as _;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY};
use http::{HeaderMap, HeaderValue, StatusCode, response};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::ProxyBody;
use crate::config::{Algorithm, Compression};
use crate::error::BoxError;
use crate::metrics::Compressed;

/// A content coding weir decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The coding's name in `Content-Encoding`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// `Content-Encoding` names a coding weir does not decode, or several.
    #[error("content-encoding {0:?} is not one weir decodes (gzip, deflate, br, zstd)")]
    Unsupported(String),
    /// The decoded body is larger than the limit.
    #[error("the decoded body is larger than {0} bytes")]
    TooLarge(usize),
    /// The bytes are not valid for the coding.
    #[error("the body is not valid {0}: {1}")]
    Corrupt(&'static str, std::io::Error),
}

/// The coding of a body with these headers: `None` for none (absent or `identity`).
pub(crate) fn of(headers: &HeaderMap) -> Result<Option<Coding>, DecodeError> {
    let mut codings = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    let Some(first) = codings.next() else {
        return Ok(None);
    };
    let coding = match first.to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Coding::Gzip,
        "deflate" => Coding::Deflate,
        "br" => Coding::Brotli,
        "zstd" => Coding::Zstd,
        _ => return Err(DecodeError::Unsupported(first.to_owned())),
    };
    match codings.next() {
        // Several codings, one over the other: rare enough not to undo.
        Some(_) => Err(DecodeError::Unsupported(
            headers
                .get(CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned(),
        )),
        None => Ok(Some(coding)),
    }
}

/// `bytes` decoded from `coding`, if the result is at most `limit` bytes.
pub(crate) async fn decode(
    coding: Coding,
    bytes: &[u8],
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    match coding {
        Coding::Gzip => bounded(GzipDecoder::new(bytes), coding, limit).await,
        Coding::Brotli => bounded(BrotliDecoder::new(bytes), coding, limit).await,
        Coding::Zstd => bounded(ZstdDecoder::new(bytes), coding, limit).await,
        // RFC 9110's `deflate` is the zlib format; some servers send raw deflate instead.
        Coding::Deflate => match bounded(ZlibDecoder::new(bytes), coding, limit).await {
            Err(DecodeError::Corrupt(..)) => {
                bounded(DeflateDecoder::new(bytes), coding, limit).await
            }
            decoded => decoded,
        },
    }
}

/// Reads `decoder` to its end, failing past `limit` bytes.
async fn bounded(
    decoder: impl AsyncRead + Unpin,
    coding: Coding,
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    let mut decoded = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(cap)
        .read_to_end(&mut decoded)
        .await
        .map_err(|e| DecodeError::Corrupt(coding.name(), e))?;
    if decoded.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(decoded)
}

/// The coding to compress with for a client that sent `accept` (its `Accept-Encoding`):
/// the route's algorithm with the highest q-value, ties to the route's order; `None` when
/// the client takes none of them.
pub(crate) fn negotiate(
    accept: Option<&HeaderValue>,
    algorithms: &[Algorithm],
) -> Option<Algorithm> {
    let accept = accept?.to_str().ok()?;
    let q_of = |name: &str| -> Option<f32> {
        let mut any = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case(name) {
                return Some(q);
            }
            if coding == "*" {
                any = Some(q);
            }
        }
        any
    };
    let mut best: Option<(Algorithm, f32)> = None;
    for &algorithm in algorithms {
        let Some(q) = q_of(algorithm.name()).filter(|q| *q > 0.0) else {
            continue;
        };
        if best.is_none_or(|(_, b)| q > b) {
            best = Some((algorithm, q));
        }
    }
    best.map(|(algorithm, _)| algorithm)
}

/// Whether a response (to a `HEAD` request if `head`) may be compressed at all under
/// `config`, for whichever client.
pub(crate) fn compressible(head: bool, parts: &response::Parts, config: &Compression) -> bool {
    let status = parts.status;
    if head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    let headers = &parts.headers;
    if !matches!(of(headers), Ok(None)) {
        return false;
    }
    let no_transform = headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    if no_transform {
        return false;
    }
    let small = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n < config.min_bytes);
    if small {
        return false;
    }
    // Compared without a lower-cased copy: the configured types are lower case already.
    let Some(media) = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
    else {
        return false;
    };
    config.types.iter().any(|t| match t.strip_suffix("/*") {
        Some(kind) => media
            .split('/')
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case(kind)),
        None => media.eq_ignore_ascii_case(t),
    })
}

/// Makes a strong `ETag` weak: the body is another representation of the resource now (coded
/// or decoded by weir), so byte-for-byte equality with the upstream's no longer holds.
pub(crate) fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers.get(ETAG)
        && !etag.as_bytes().starts_with(b"W/")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
    {
        headers.insert(ETAG, weak);
    }
}

/// Adds `Accept-Encoding` to the response's `Vary`, unless it says so already (or `*`).
pub(crate) fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    let named = headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|f| f.trim() == "*" || f.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !named {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// The response compressed with `algorithm` as its body streams; its bytes before and
/// after are counted in `counted` (the route's `weir_compression_bytes_total`).
pub(crate) fn compress(
    mut parts: response::Parts,
    body: ProxyBody,
    algorithm: Algorithm,
    counted: &Compressed,
) -> (response::Parts, ProxyBody) {
    let Compressed {
        plain: plain_bytes,
        coded: coded_bytes,
    } = counted.clone();
    let headers = &mut parts.headers;
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(algorithm.name()));
    headers.remove(CONTENT_LENGTH);
    weaken_etag(headers);
    let plain = StreamReader::new(
        body.into_data_stream()
            .map_ok(move |chunk| {
                plain_bytes.inc_by(chunk.len() as u64);
                chunk
            })
            .map_err(|e| std::io::Error::other(e.to_string())),
    );
    // Levels: nginx's gzip default (1) is cheap and weak; these are the usual web settings.
    let coded: ProxyBody = match algorithm {
        Algorithm::Gzip => stream(
            GzipEncoder::with_quality(plain, Level::Precise(5)),
            coded_bytes,
        ),
        Algorithm::Brotli => stream(
            BrotliEncoder::with_quality(plain, Level::Precise(4)),
            coded_bytes,
        ),
        Algorithm::Zstd => stream(
            ZstdEncoder::with_quality(plain, Level::Precise(3)),
            coded_bytes,
        ),
    };
    (parts, coded)
}

/// An encoder's output as a response body, its bytes counted in `coded_bytes`.
fn stream(
    encoder: impl AsyncRead + Send + 'static,
    coded_bytes: prometheus::IntCounter,
) -> ProxyBody {
    let frames = ReaderStream::new(encoder)
        .map_ok(move |chunk| {
            coded_bytes.inc_by(chunk.len() as u64);
            Frame::data(chunk)
        })
        .map_err(|e| -> BoxError { Box::new(e) });
    ProxyBody::Coded(StreamBody::new(frames).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http::HeaderValue;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = encoder.write_all(bytes);
        encoder.finish().unwrap_or_default()
    }

    fn headers(coding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_str(coding).unwrap_or(HeaderValue::from_static("?")),
        );
        headers
    }

    #[test]
    fn codings_are_read_from_the_header() {
        assert!(matches!(of(&HeaderMap::new()), Ok(None)));
        assert!(matches!(of(&headers("identity")), Ok(None)));
        assert!(matches!(of(&headers("GZip")), Ok(Some(Coding::Gzip))));
        assert!(matches!(of(&headers("br")), Ok(Some(Coding::Brotli))));
        assert!(matches!(
            of(&headers("compress")),
            Err(DecodeError::Unsupported(_))
        ));
        assert!(matches!(
            of(&headers("gzip, br")),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn a_body_is_decoded_within_its_limit_and_a_bomb_is_stopped_at_it() {
        let text = br#"{"name":"ann","secret":"s"}"#;
        let decoded = decode(Coding::Gzip, &gzip(text), 1024).await;
        assert_eq!(decoded.ok().as_deref(), Some(&text[..]));
        // 64 MiB of zeros in well under 1 MiB gzipped: stopped after the limit, not inflated.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        assert!(matches!(
            decode(Coding::Gzip, &bomb, 1 << 20).await,
            Err(DecodeError::TooLarge(_))
        ));
        assert!(matches!(
            decode(Coding::Gzip, b"not gzip at all", 1024).await,
            Err(DecodeError::Corrupt(..))
        ));
    }

    #[tokio::test]
    async fn deflate_is_zlib_or_raw() {
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = zlib.write_all(b"zlib body");
        let zlib = zlib.finish().unwrap_or_default();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = raw.write_all(b"raw body");
        let raw = raw.finish().unwrap_or_default();
        assert_eq!(
            decode(Coding::Deflate, &zlib, 64).await.ok().as_deref(),
            Some(&b"zlib body"[..])
        );
        assert_eq!(
            decode(Coding::Deflate, &raw, 64).await.ok().as_deref(),
            Some(&b"raw body"[..])
        );
    }

    #[test]
    fn the_highest_q_value_wins_and_ties_go_to_the_route() {
        let all = [Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];
        let pick = |accept: &str| {
            negotiate(
                Some(&HeaderValue::from_str(accept).unwrap_or(HeaderValue::from_static(""))),
                &all,
            )
        };
        assert_eq!(
            pick("gzip, br"),
            Some(Algorithm::Brotli),
            "a tie: the route prefers br"
        );
        assert_eq!(pick("gzip;q=1, br;q=0.5"), Some(Algorithm::Gzip));
        assert_eq!(pick("zstd;q=0, gzip;q=0.1"), Some(Algorithm::Gzip));
        assert_eq!(pick("*"), Some(Algorithm::Zstd));
        assert_eq!(pick("*;q=0.2, br;q=0"), Some(Algorithm::Zstd));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("deflate"), None);
        assert_eq!(negotiate(None, &all), None);
        assert_eq!(pick("br"), Some(Algorithm::Brotli));
        assert_eq!(
            negotiate(Some(&HeaderValue::from_static("br")), &[Algorithm::Gzip]),
            None
        );
    }
}
