//! Content codings (RFC 9110 §8.4) weir undoes so that body hooks see plain bodies: `gzip`,
//! `deflate` (zlib, or raw deflate as some servers send it), `br` and `zstd`.
//!
//! A body is decoded only when a plugin on the route has a body hook, and only whole and
//! bounded: the decoder stops one byte past the hook's `max_body_bytes`, so a small body
//! that inflates to gigabytes (a "zip bomb") costs that limit and no more.

use async_compression::tokio::bufread::{
    BrotliDecoder, DeflateDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder,
};
use http::HeaderMap;
use http::header::CONTENT_ENCODING;
use tokio::io::{AsyncRead, AsyncReadExt};

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
        // 64 MiB of zeros, about 64 KiB gzipped: stopped after the limit, not inflated.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10);
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
}
