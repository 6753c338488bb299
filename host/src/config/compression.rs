//! A route's `compression = { ... }`: which codings weir may compress its responses with, in
//! the order it prefers them, and which responses are worth it.

use serde::Serialize;
use toml::Spanned;

use super::model::RawCompression;
use super::validate::Checker;

/// The response types compressed by default: text and the structured formats sent as text.
/// Images, video, archives and fonts other than SVG are compressed already; event streams
/// must not wait for a block to fill.
const DEFAULT_TYPES: [&str; 8] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/xml",
    "image/svg+xml",
];

/// Bodies smaller than this are not compressed by default (a coded small body can be larger
/// than the plain one, and costs the CPU anyway).
const DEFAULT_MIN_BYTES: u64 = 1024;

/// A coding weir compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Algorithm {
    /// `zstd` (RFC 8878).
    #[serde(rename = "zstd")]
    Zstd,
    /// `br` (Brotli, RFC 7932).
    #[serde(rename = "br")]
    Brotli,
    /// `gzip` (RFC 1952).
    #[serde(rename = "gzip")]
    Gzip,
}

impl Algorithm {
    /// The name in `Accept-Encoding` and `Content-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
        }
    }
}

/// `compression = { algorithms = [...], min_bytes = 1024, types = [...] }` of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compression {
    /// The codings weir may use, most preferred first (a client's higher q-value wins).
    pub algorithms: Vec<Algorithm>,
    /// Responses with a smaller `Content-Length` are sent as they are.
    pub min_bytes: u64,
    /// Media types compressed (`text/*` matches every text type); others are sent as they are.
    pub types: Vec<String>,
}

pub(super) fn compression(
    check: &mut Checker<'_>,
    route: &str,
    raw: &Spanned<RawCompression>,
) -> Compression {
    let section = raw.get_ref();
    let mut algorithms = Vec::new();
    for name in section.algorithms.iter().flatten() {
        let algorithm = match name.get_ref().as_str() {
            "zstd" => Algorithm::Zstd,
            "br" => Algorithm::Brotli,
            "gzip" => Algorithm::Gzip,
            other => {
                check.error(
                    name,
                    format!("route \"{route}\": compression algorithm {other:?} is not one of zstd, br, gzip"),
                );
                continue;
            }
        };
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    if section.algorithms.as_ref().is_some_and(Vec::is_empty) {
        check.error(
            raw,
            format!("route \"{route}\": compression.algorithms is empty; remove compression to turn it off"),
        );
    }
    if section.algorithms.is_none() {
        algorithms = vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip];
    }
    let types: Vec<String> = match &section.types {
        Some(types) => types
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect(),
        None => DEFAULT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
    };
    // A type that can match no response (a typo such as "json", or "*/*") would turn
    // compression off for what it meant, without a word.
    for t in types.iter().filter(|t| !is_media_range(t)) {
        check.error(
            raw,
            format!("route \"{route}\": compression type {t:?} is not a media type like \"application/json\" or a range like \"text/*\""),
        );
    }
    if types.is_empty() {
        check.error(
            raw,
            format!(
                "route \"{route}\": compression.types is empty; remove compression to turn it off"
            ),
        );
    }
    Compression {
        algorithms,
        min_bytes: section.min_bytes.unwrap_or(DEFAULT_MIN_BYTES),
        types,
    }
}

/// `type/subtype` or `type/*`, each part an RFC 9110 token.
fn is_media_range(text: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match text.split_once('/') {
        Some((kind, sub)) => kind != "*" && token(kind) && (sub == "*" || token(sub)),
        None => false,
    }
}
