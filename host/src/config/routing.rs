//! What a route matches besides host, path prefix and method — an exact path, a path regex,
//! header and query conditions — and where its traffic goes besides one cluster: weighted
//! `backends` (split per request, or by a key so a client stays on one) and a `mirror`.

use serde::{Serialize, Serializer};
use toml::Spanned;

use super::model::{RawBackend, RawCondition, RawMirror};
use super::validate::{Checker, ClusterConfig, ClusterRef, HashKey};

/// Regex patterns are at most this long, and compile to at most `REGEX_SIZE` bytes: a
/// route table is matched per request and must stay cheap.
pub(super) const REGEX_PATTERN_BYTES: usize = 1024;
const REGEX_SIZE: usize = 1 << 20;

/// Mirrored request bodies are at most this large by default; larger ones are not mirrored.
const DEFAULT_MIRROR_BODY_BYTES: u64 = 64 * 1024;

/// A compiled regex, compared and shown by its pattern. It must match the whole subject.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// One condition on a request header or query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// The header name (lower case) or query parameter name.
    pub name: String,
    /// What its value must be.
    #[serde(flatten)]
    pub test: Test,
}

/// What a header's or parameter's value must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Present, with any value.
    Present,
    /// Absent.
    Absent,
    /// Present, and one value is exactly this.
    Exact(String),
    /// Present, and one value matches this whole.
    Regex(Pattern),
}

impl Test {
    /// Whether the values present (none when absent) pass.
    pub fn passes<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        match self {
            Test::Present => values.next().is_some(),
            Test::Absent => values.next().is_none(),
            Test::Exact(want) => values.any(|v| v == want.as_bytes()),
            Test::Regex(pattern) => {
                values.any(|v| std::str::from_utf8(v).is_ok_and(|v| pattern.matches(v)))
            }
        }
    }
}

/// One of a route's weighted backends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// The cluster.
    #[serde(flatten)]
    pub cluster: ClusterRef,
    /// Its share: its weight over the sum of the route's weights.
    pub weight: u32,
}

/// A route's mirror: a sample of its requests copied to another cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    /// Where copies go.
    #[serde(flatten)]
    pub cluster: ClusterRef,
    /// The share of requests copied, 0 to 100.
    pub percent: f64,
    /// Requests with a larger body (or one of unknown length) are not mirrored.
    pub max_body_bytes: u64,
}

/// A compiled pattern, anchored to match whole subjects, or an error saying why not.
pub(super) fn pattern(source: &str) -> Result<Pattern, String> {
    if source.len() > REGEX_PATTERN_BYTES {
        return Err(format!(
            "the pattern is {} bytes, more than {REGEX_PATTERN_BYTES}",
            source.len()
        ));
    }
    // The pattern must stand on its own: `/a)|(?:/.*` would escape the anchoring below.
    regex::RegexBuilder::new(source)
        .size_limit(REGEX_SIZE)
        .build()
        .map_err(|e| regex_error(&e))?;
    regex::RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(REGEX_SIZE)
        .build()
        .map(|regex| Pattern {
            source: source.to_owned(),
            regex,
        })
        .map_err(|e| regex_error(&e))
}

/// A regex error in one line.
fn regex_error(e: &regex::Error) -> String {
    match e {
        // The syntax error's last line says what is wrong; the lines before draw the pattern.
        regex::Error::Syntax(text) => text
            .lines()
            .last()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_owned(),
        regex::Error::CompiledTooBig(_) => {
            format!("compiles to more than {} KiB", REGEX_SIZE >> 10)
        }
        other => other.to_string(),
    }
}

/// `headers = [...]` or `query = [...]` of route `route`; header names lower-cased.
pub(super) fn conditions(
    check: &mut Checker<'_>,
    route: &str,
    what: &str,
    raw: Option<&Vec<Spanned<RawCondition>>>,
) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for spanned in raw.into_iter().flatten() {
        let c = spanned.get_ref();
        let name = if what == "headers" {
            c.name.to_ascii_lowercase()
        } else {
            c.name.clone()
        };
        if name.is_empty()
            || (what == "headers" && http::HeaderName::from_bytes(name.as_bytes()).is_err())
        {
            check.error(
                spanned,
                format!(
                    "route \"{route}\": {what} condition name {:?} is not valid",
                    c.name
                ),
            );
            continue;
        }
        let test = match (&c.exact, &c.regex, c.present) {
            (Some(exact), None, None) => Test::Exact(exact.clone()),
            (None, Some(source), None) => {
                match pattern(source) {
                    Ok(pattern) => Test::Regex(pattern),
                    Err(why) => {
                        check.error(
                        spanned,
                        format!("route \"{route}\": {what} condition on {name}: regex {source:?}: {why}"),
                    );
                        continue;
                    }
                }
            }
            (None, None, Some(true)) => Test::Present,
            (None, None, Some(false)) => Test::Absent,
            _ => {
                check.error(
                    spanned,
                    format!("route \"{route}\": {what} condition on {name} needs exactly one of exact, regex or present"),
                );
                continue;
            }
        };
        conditions.push(Condition { name, test });
    }
    conditions
}

/// A cluster named by a route's `backends` or `mirror`.
fn cluster_ref(
    check: &mut Checker<'_>,
    route: &str,
    what: &str,
    name: &Spanned<String>,
    clusters: &[ClusterConfig],
) -> Option<ClusterRef> {
    match clusters.iter().position(|c| &c.name == name.get_ref()) {
        Some(index) => Some(ClusterRef {
            name: name.get_ref().clone(),
            index,
        }),
        None => {
            check.error(
                name,
                format!(
                    "route \"{route}\": {what} names cluster \"{}\", which is not defined",
                    name.get_ref()
                ),
            );
            None
        }
    }
}

/// `backends = [{ cluster, weight }, ...]` of route `route`.
pub(super) fn backends(
    check: &mut Checker<'_>,
    route: &str,
    raw: &Spanned<Vec<RawBackend>>,
    clusters: &[ClusterConfig],
) -> Option<Vec<Backend>> {
    let mut backends = Vec::new();
    for b in raw.get_ref() {
        let weight = b.weight.unwrap_or(1);
        if weight > 1_000_000 {
            check.error(
                &b.cluster,
                format!("route \"{route}\": a backend's weight is at most 1000000"),
            );
        }
        if let Some(cluster) = cluster_ref(check, route, "backends", &b.cluster, clusters) {
            backends.push(Backend { cluster, weight });
        }
    }
    if raw.get_ref().is_empty() {
        check.error(raw, format!("route \"{route}\": backends is empty"));
        return None;
    }
    if backends.iter().all(|b| b.weight == 0) {
        check.error(
            raw,
            format!(
                "route \"{route}\": every backend has weight 0; at least one must take traffic"
            ),
        );
        return None;
    }
    (backends.len() == raw.get_ref().len()).then_some(backends)
}

/// `split_by = "client_address" | "header:NAME" | "cookie:NAME"`: what keeps a client on
/// one of a route's backends.
pub(super) fn split_by(
    check: &mut Checker<'_>,
    route: &str,
    raw: &Spanned<String>,
) -> Option<HashKey> {
    let text = raw.get_ref();
    let key = match text.split_once(':') {
        None if text == "client_address" => Some(HashKey::ClientAddress),
        Some(("header", name)) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
            Some(HashKey::Header(name.to_ascii_lowercase()))
        }
        Some(("cookie", name)) if !name.is_empty() => Some(HashKey::Cookie(name.to_owned())),
        _ => None,
    };
    if key.is_none() {
        check.error(
            raw,
            format!("route \"{route}\": split_by {text:?} is not one of client_address, header:NAME, cookie:NAME"),
        );
    }
    key
}

/// `mirror = { cluster, percent, max_body_bytes }` of route `route`.
pub(super) fn mirror(
    check: &mut Checker<'_>,
    route: &str,
    raw: &Spanned<RawMirror>,
    clusters: &[ClusterConfig],
) -> Option<Mirror> {
    let m = raw.get_ref();
    let percent = m.percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&percent) {
        check.error(
            raw,
            format!("route \"{route}\": mirror.percent must be between 0 and 100"),
        );
    }
    let cluster = cluster_ref(check, route, "mirror", &m.cluster, clusters)?;
    Some(Mirror {
        cluster,
        percent: percent.clamp(0.0, 100.0),
        max_body_bytes: m.max_body_bytes.unwrap_or(DEFAULT_MIRROR_BODY_BYTES),
    })
}
