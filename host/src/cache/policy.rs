//! HTTP caching's rules for a shared cache (RFC 9111), as pure functions over heads:
//! `Cache-Control` directives, whether a response may be stored, its freshness lifetime and
//! age, conditional requests (RFC 9110 §13) and the header update a `304` brings.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Statuses a cache understands well enough to store (with explicit freshness): RFC 9110's
/// heuristically cacheable ones but `206`, which this cache does not assemble, plus the
/// temporary redirects.
const STORABLE: [u16; 13] = [
    200, 203, 204, 300, 301, 302, 307, 308, 404, 405, 410, 414, 501,
];

/// The largest delta-seconds a directive or `Age` counts for: a larger one (or one that
/// overflows) counts as this, 68 years (RFC 9111 §1.2.2's 2^31).
pub const MAX_SECONDS: u64 = 1 << 31;

/// How long an entry with a validator is kept past going stale, for a revalidation that can
/// be answered `304` instead of the whole body again.
pub const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(600);

/// The `Cache-Control` directives this cache acts on. A directive given twice counts at its
/// most restrictive (the smaller number); a number that does not parse counts as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// The directives of every `Cache-Control` field in `headers`.
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for item in split_list(text) {
                let (name, argument) = match item.split_once('=') {
                    Some((name, argument)) => {
                        (name.trim(), Some(argument.trim().trim_matches('"')))
                    }
                    None => (item, None),
                };
                let seconds = || delta_seconds(argument).unwrap_or(0);
                let least = |slot: &mut Option<u64>, n: u64| {
                    *slot = Some(slot.map_or(n, |old| old.min(n)));
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => directives.no_store = true,
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "public" => directives.public = true,
                    "must-revalidate" => directives.must_revalidate = true,
                    "proxy-revalidate" => directives.proxy_revalidate = true,
                    "only-if-cached" => directives.only_if_cached = true,
                    "max-age" => least(&mut directives.max_age, seconds()),
                    "s-maxage" => least(&mut directives.s_maxage, seconds()),
                    "stale-while-revalidate" => {
                        least(&mut directives.stale_while_revalidate, seconds());
                    }
                    "stale-if-error" => least(&mut directives.stale_if_error, seconds()),
                    _ => {}
                }
            }
        }
        directives
    }

    /// Stale responses may not be served without revalidation: `must-revalidate`, or its
    /// shared-cache form `proxy-revalidate`. (`s-maxage` implies `proxy-revalidate` in RFC
    /// 9111 §5.2.2.10, but an explicit `stale-while-revalidate` or `stale-if-error` beside it
    /// is taken as the origin's permission, as CDNs take it.)
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate
    }
}

/// A delta-seconds value (RFC 9111 §1.2.2): digits, at most [`MAX_SECONDS`] however many;
/// `None` if it is not digits.
fn delta_seconds(text: Option<&str>) -> Option<u64> {
    let text = text?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .map_or(MAX_SECONDS, |n| n.min(MAX_SECONDS)),
    )
}

/// The items of a comma-separated list, trimmed, empty ones skipped (commas inside quotes
/// are not separators).
fn split_list(text: &str) -> impl Iterator<Item = &str> {
    let mut items = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items.into_iter().map(str::trim).filter(|s| !s.is_empty())
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
}

/// What storing a response needs to know of it.
#[derive(Debug, Clone)]
pub struct Storable {
    pub directives: Directives,
    /// The explicit freshness lifetime (`s-maxage`, `max-age`, or `Expires` − `Date`).
    pub lifetime: Duration,
    /// The request header names its `Vary` lists, lower case.
    pub vary: Vec<HeaderName>,
}

/// Whether a response to a `GET` with `request`'s headers may be stored by a shared cache,
/// and if so its freshness and `Vary` (RFC 9111 §3). `authenticated`: the client's request
/// carried `Authorization` (before any filter removed it) or a plugin vouched for who the
/// client is (an identity header); such a response is stored only with `public`,
/// `s-maxage` or `must-revalidate` (§3.5). weir adds one rule of its own: a response that
/// sets a cookie is not stored.
pub fn storable(
    request: &HeaderMap,
    authenticated: bool,
    status: StatusCode,
    response: &HeaderMap,
) -> Result<Storable, NotStored> {
    if !STORABLE.contains(&status.as_u16()) {
        return Err(NotStored::Status);
    }
    let directives = Directives::of(response);
    if directives.no_store || Directives::of(request).no_store {
        return Err(NotStored::NoStore);
    }
    if directives.private {
        return Err(NotStored::Private);
    }
    if (authenticated || request.contains_key(header::AUTHORIZATION))
        && !(directives.public || directives.s_maxage.is_some() || directives.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let vary = vary(response).ok_or(NotStored::VaryStar)?;
    let lifetime = lifetime(&directives, response);
    let validator =
        response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    let worth_it = match lifetime {
        Some(lifetime) if !lifetime.is_zero() => true,
        // Stale at once, but revalidated cheaply, or kept to answer when the upstream fails.
        Some(_) => validator || directives.stale_if_error.is_some_and(|n| n > 0),
        None => directives.no_cache && validator,
    };
    if !worth_it {
        return Err(NotStored::NoFreshness);
    }
    Ok(Storable {
        lifetime: if directives.no_cache {
            Duration::ZERO
        } else {
            lifetime.unwrap_or_default()
        },
        directives,
        vary,
    })
}

/// The header names `Vary` lists, lower case; `None` for `Vary: *`.
fn vary(response: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in response.get_all(header::VARY) {
        for item in split_list(value.to_str().unwrap_or("")) {
            if item == "*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(item.as_bytes())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The explicit freshness lifetime for a shared cache: `s-maxage`, else `max-age`, else
/// `Expires` − `Date` (an `Expires` that does not parse means already expired); `None` if
/// the response gives none.
pub fn lifetime(directives: &Directives, response: &HeaderMap) -> Option<Duration> {
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return Some(Duration::from_secs(seconds.min(MAX_SECONDS)));
    }
    let expires = response.get(header::EXPIRES)?;
    let Some(expires) = date(Some(expires)) else {
        return Some(Duration::ZERO);
    };
    let date = date(response.get(header::DATE)).unwrap_or_else(SystemTime::now);
    Some(
        expires
            .duration_since(date)
            .unwrap_or_default()
            .min(Duration::from_secs(MAX_SECONDS)),
    )
}

/// An HTTP date.
pub fn date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(value?.to_str().ok()?).ok()
}

/// The response's age when it arrived (RFC 9111 §4.2.3's `corrected_initial_age`): the
/// larger of what its `Date` says and its `Age` plus the time the request took.
pub fn initial_age(response: &HeaderMap, sent: SystemTime, received: SystemTime) -> Duration {
    let apparent = date(response.get(header::DATE))
        .and_then(|date| received.duration_since(date).ok())
        .unwrap_or_default();
    let age = response
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(Some(v)))
        .map_or(Duration::ZERO, Duration::from_secs);
    let delay = received.duration_since(sent).unwrap_or_default();
    apparent.max(age.saturating_add(delay))
}

/// The values of the `Vary` headers in a request, as the variant it selects: each name with
/// its values joined, whitespace around commas dropped (RFC 9111 §4.1 lets a cache normalise).
pub fn variant(names: &[HeaderName], request: &HeaderMap) -> Vec<(HeaderName, Option<Vec<u8>>)> {
    names
        .iter()
        .map(|name| {
            let mut values = request.get_all(name).iter().peekable();
            if values.peek().is_none() {
                return (name.clone(), None);
            }
            let mut joined = Vec::new();
            for value in values {
                for item in value.as_bytes().split(|b| *b == b',') {
                    if !joined.is_empty() {
                        joined.push(b',');
                    }
                    joined.extend_from_slice(item.trim_ascii());
                }
            }
            (name.clone(), Some(joined))
        })
        .collect()
}

/// The client's own conditions on a `GET` or `HEAD` (RFC 9110 §13.1.2, §13.1.3).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    /// Takes the conditions out of `request`: they are answered here, not forwarded.
    pub fn take(request: &mut HeaderMap) -> Conditions {
        Conditions {
            if_none_match: request.remove(header::IF_NONE_MATCH),
            if_modified_since: request.remove(header::IF_MODIFIED_SINCE),
        }
    }

    /// Whether a `200` with `headers` is answered `304` under these conditions:
    /// `If-None-Match` by weak comparison; else `If-Modified-Since` not before
    /// `Last-Modified`.
    pub fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(tags) = &self.if_none_match {
            let Some(etag) = headers.get(header::ETAG) else {
                return false;
            };
            let Ok(tags) = tags.to_str() else {
                return false;
            };
            let etag = weak(etag.as_bytes());
            return split_list(tags).any(|tag| tag == "*" || weak(tag.as_bytes()) == etag);
        }
        match (
            date(self.if_modified_since.as_ref()),
            date(headers.get(header::LAST_MODIFIED)),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }

    /// Whether there is any condition.
    pub fn is_empty(&self) -> bool {
        self.if_none_match.is_none() && self.if_modified_since.is_none()
    }
}

/// An entity tag without its weakness marker, for weak comparison.
fn weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// The `304` answer to a `200` with `headers`: every header but the body's framing.
pub fn not_modified_headers(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers
}

/// A stored head updated by a `304` (RFC 9111 §4.3.4): each field the `304` carries
/// replaces the stored one, but those describing the body, which the `304` has none of.
pub fn freshen(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let keep = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
    ];
    for name in not_modified.keys() {
        if keep.contains(name) {
            continue;
        }
        stored.remove(name);
        for value in not_modified.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
}

/// The request may be answered from the store only if the method is `GET` or `HEAD`.
pub fn cacheable_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// A method that changes the resource: a success invalidates what is stored for it
/// (RFC 9111 §4.4).
pub fn unsafe_method(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn store(request: &[(&str, &str)], response: &[(&str, &str)]) -> Result<Storable, NotStored> {
        storable(&headers(request), false, StatusCode::OK, &headers(response))
    }

    #[test]
    fn directives_parse_case_quotes_and_repeats() {
        let d = Directives::of(&headers(&[
            (
                "cache-control",
                "Max-Age=60, s-maxage=\"30\", private=\"a, b\"",
            ),
            ("cache-control", "max-age=10, stale-if-error=5, no-cache"),
        ]));
        assert_eq!(d.max_age, Some(10));
        assert_eq!(d.s_maxage, Some(30));
        assert_eq!(d.stale_if_error, Some(5));
        assert!(d.private && d.no_cache && !d.public);
        assert_eq!(
            Directives::of(&headers(&[("cache-control", "max-age=x")])).max_age,
            Some(0)
        );
    }

    #[test]
    fn a_shared_cache_prefers_s_maxage_then_max_age_then_expires() {
        let lifetime = |pairs| store(&[], pairs).map(|s| s.lifetime);
        assert_eq!(
            lifetime(&[("cache-control", "max-age=0, s-maxage=60")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            lifetime(&[("cache-control", "max-age=5")]),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            lifetime(&[
                ("date", "Wed, 02 Dec 2026 10:00:00 GMT"),
                ("expires", "Wed, 02 Dec 2026 10:02:00 GMT"),
            ]),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(lifetime(&[]).unwrap_err(), NotStored::NoFreshness);
        assert_eq!(
            lifetime(&[("expires", "0")]).unwrap_err(),
            NotStored::NoFreshness,
            "an invalid Expires is already expired"
        );
    }

    #[test]
    fn what_a_shared_cache_must_not_store() {
        let fresh = ("cache-control", "max-age=60");
        assert_eq!(
            store(&[], &[("cache-control", "max-age=60, no-store")]).unwrap_err(),
            NotStored::NoStore
        );
        assert_eq!(
            store(&[("cache-control", "no-store")], &[fresh]).unwrap_err(),
            NotStored::NoStore
        );
        assert_eq!(
            store(&[], &[("cache-control", "private, max-age=60")]).unwrap_err(),
            NotStored::Private
        );
        assert_eq!(
            store(&[("authorization", "Bearer x")], &[fresh]).unwrap_err(),
            NotStored::Authorization
        );
        assert!(
            store(
                &[("authorization", "Bearer x")],
                &[("cache-control", "public, max-age=60")]
            )
            .is_ok()
        );
        assert!(
            store(
                &[("authorization", "Bearer x")],
                &[("cache-control", "s-maxage=60")]
            )
            .is_ok()
        );
        assert_eq!(
            store(&[], &[fresh, ("set-cookie", "s=1")]).unwrap_err(),
            NotStored::SetCookie
        );
        assert_eq!(
            store(&[], &[fresh, ("vary", "accept, *")]).unwrap_err(),
            NotStored::VaryStar
        );
        assert_eq!(
            storable(
                &HeaderMap::new(),
                false,
                StatusCode::PARTIAL_CONTENT,
                &headers(&[fresh])
            )
            .unwrap_err(),
            NotStored::Status
        );
        // Stale at once is worth storing only with a validator or stale-if-error.
        assert!(store(&[], &[("cache-control", "max-age=0")]).is_err());
        assert!(store(&[], &[("cache-control", "max-age=0"), ("etag", "\"a\"")]).is_ok());
        assert!(store(&[], &[("cache-control", "no-cache"), ("etag", "\"a\"")]).is_ok());
        assert!(store(&[], &[("cache-control", "no-cache")]).is_err());
        assert_eq!(
            store(
                &[],
                &[("cache-control", "no-cache, max-age=60"), ("etag", "\"a\"")]
            )
            .map(|s| s.lifetime),
            Ok(Duration::ZERO),
            "no-cache: revalidate every time"
        );
    }

    #[test]
    fn an_authenticated_request_needs_the_responses_permission() {
        let fresh = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(
            storable(&HeaderMap::new(), true, StatusCode::OK, &fresh).unwrap_err(),
            NotStored::Authorization,
            "Authorization taken out by a filter, or an identity a plugin set"
        );
        let public = headers(&[("cache-control", "public, max-age=60")]);
        assert!(storable(&HeaderMap::new(), true, StatusCode::OK, &public).is_ok());
    }

    #[test]
    fn huge_numbers_count_as_two_to_the_thirty_first() {
        let d = Directives::of(&headers(&[(
            "cache-control",
            "max-age=18446744073709551616, stale-if-error=99999999999999999999999",
        )]));
        assert_eq!(d.max_age, Some(MAX_SECONDS));
        assert_eq!(d.stale_if_error, Some(MAX_SECONDS));
        let now = SystemTime::now();
        let age = initial_age(&headers(&[("age", "18446744073709551615")]), now, now);
        assert_eq!(age.as_secs(), MAX_SECONDS);
    }

    #[test]
    fn vary_names_and_variants_are_normalised() {
        let stored = store(
            &[],
            &[
                ("cache-control", "max-age=1"),
                ("vary", "Accept-Encoding, accept-encoding,Origin"),
            ],
        )
        .expect("storable");
        assert_eq!(stored.vary, ["accept-encoding", "origin"]);
        let a = variant(&stored.vary, &headers(&[("accept-encoding", "gzip,  br")]));
        let b = variant(
            &stored.vary,
            &headers(&[("accept-encoding", "gzip"), ("accept-encoding", "br")]),
        );
        assert_eq!(a, b);
        assert_eq!(a[1].1, None);
    }

    #[test]
    fn age_is_the_larger_of_date_and_age_plus_the_delay() {
        let now = SystemTime::now();
        let sent = now - Duration::from_secs(2);
        let date = httpdate::fmt_http_date(now - Duration::from_secs(10));
        let age = initial_age(&headers(&[("date", &date), ("age", "3")]), sent, now);
        assert_eq!(age.as_secs(), 10);
        let age = initial_age(&headers(&[("age", "30")]), sent, now);
        assert_eq!(age.as_secs(), 32);
    }

    #[test]
    fn conditions_compare_tags_weakly_and_dates_when_no_tag_is_asked() {
        let response = headers(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Wed, 02 Dec 2026 10:00:00 GMT"),
        ]);
        let mut request = headers(&[("if-none-match", "\"v0\", \"v1\"")]);
        assert!(Conditions::take(&mut request).not_modified(&response));
        assert!(request.is_empty(), "taken out of the forwarded request");
        let mut request = headers(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Wed, 02 Dec 2026 11:00:00 GMT"),
        ]);
        assert!(
            !Conditions::take(&mut request).not_modified(&response),
            "If-None-Match decides"
        );
        let mut request = headers(&[("if-modified-since", "Wed, 02 Dec 2026 11:00:00 GMT")]);
        assert!(Conditions::take(&mut request).not_modified(&response));
        let mut request = headers(&[("if-modified-since", "Wed, 02 Dec 2026 09:00:00 GMT")]);
        assert!(!Conditions::take(&mut request).not_modified(&response));
    }

    #[test]
    fn a_304_refreshes_the_head_but_not_the_body_fields() {
        let mut stored = headers(&[
            ("content-length", "5"),
            ("etag", "\"a\""),
            ("cache-control", "max-age=1"),
            ("x-old", "1"),
        ]);
        freshen(
            &mut stored,
            &headers(&[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("x-new", "2"),
            ]),
        );
        assert_eq!(stored["content-length"], "5");
        assert_eq!(stored["cache-control"], "max-age=60");
        assert_eq!(stored["x-old"], "1");
        assert_eq!(stored["x-new"], "2");
    }
}
