//! A route's cache on the request path, between the request filters and the target: the
//! lookup (`before`), which answers from the store or says how to forward; and what the
//! upstream's answer does to the store (`Fill::after`): stored, refreshed by a `304`,
//! replaced by a stale response when the upstream fails, or passed on. Every answer gets
//! weir's `Cache-Status` member (RFC 9211); answers from the store get `Age`.
//!
//! The rules (RFC 9111, and where weir is stricter) are in `cache::policy` and
//! `docs/design/response-cache.md`.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, request};

use super::attempts::{self, RequestBody};
use super::forward;
use crate::body::{self, Buffered, ProxyBody};
use crate::cache::policy::{self, Conditions, Directives};
use crate::cache::{FetchGuard, Found, PluginKey, RouteCache, Stored, Turn};
use crate::error::{ErrorKind, ProxyError};
use crate::generation::Generation;
use crate::metrics::CacheLookup;
use crate::timer::Timers;

/// The name of weir's member in `Cache-Status`.
const CACHE_NAME: &str = "weir";

/// What the lookup decided.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request on a cached route and matched at once"
)]
pub(super) enum Before {
    /// Answered from the store (or `504` for `only-if-cached`).
    Answer(Response<ProxyBody>),
    /// Answered from the store, stale; the fill revalidates it behind the answer.
    AnswerAndRevalidate(Response<ProxyBody>, Fill),
    /// Go upstream; the fill says what the answer does to the store.
    Forward(Fill),
}

/// Why the request went upstream, as `Cache-Status`'s `fwd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarded {
    /// Not looked up: `Range`.
    Bypass,
    /// Not looked up: the method.
    Method,
    /// Nothing under the key.
    UriMiss,
    /// Something under the key, not for this variant.
    VaryMiss,
    /// Stored but stale: revalidated.
    Stale,
    /// Stored and fresh, but the request's directives asked for the upstream.
    Request,
}

impl Forwarded {
    fn token(self) -> &'static str {
        match self {
            Forwarded::Bypass => "bypass",
            Forwarded::Method => "method",
            Forwarded::UriMiss => "uri-miss",
            Forwarded::VaryMiss => "vary-miss",
            Forwarded::Stale => "stale",
            Forwarded::Request => "request",
        }
    }
}

/// A request gone upstream from a route with a cache, and what its answer does to the store.
pub(super) struct Fill {
    cache: Arc<RouteCache>,
    key: String,
    forwarded: Forwarded,
    /// The request's headers as forwarded, before weir's own conditions: its variant and the
    /// rules on storing (`Authorization`, `no-store`) read them.
    request: HeaderMap,
    /// The client asked `HEAD` (forwarded as `GET`, to store the body).
    head: bool,
    /// The client's own conditions, answered here.
    conditions: Conditions,
    /// The stored response this request revalidates (conditional request sent) or may fall
    /// back on (`stale-if-error`).
    stale: Option<Arc<Stored>>,
    /// The answer may be stored (not under the request's own `no-store`).
    may_store: bool,
    /// The client's request carried `Authorization`, or a plugin said who the client is: an
    /// answer is stored only if it says it may be shared (`policy::storable`).
    authenticated: bool,
    /// Held while this request fetches the key; others wait for it.
    _turn: Option<FetchGuard>,
    /// When the request went upstream.
    sent: SystemTime,
}

/// The request's key: `scheme://host/path?query`, or what plugins made of it. The scheme
/// and host are those the upstream is told (`X-Forwarded-Proto`, `X-Forwarded-Host`: weir's
/// own, or a trusted proxy's), and a trusted proxy's `Forwarded` is added to the key: an
/// upstream that answers by them (a redirect to HTTPS) is answered the same way from the
/// store.
fn key(parts: &request::Parts, scheme: &str, host: Option<&HeaderValue>) -> String {
    let plugins = parts.extensions.get::<PluginKey>();
    let told = |name: &http::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let mut key = match plugins.and_then(|p| p.replaced.clone()) {
        Some(key) => key,
        None => {
            let scheme = told(&forward::X_FORWARDED_PROTO).unwrap_or(scheme);
            let host = told(&forward::X_FORWARDED_HOST)
                .or_else(|| host.and_then(|h| h.to_str().ok()))
                .unwrap_or("");
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut key = String::with_capacity(scheme.len() + 3 + host.len() + target.len());
            key.push_str(scheme);
            key.push_str("://");
            key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
            key.push_str(target);
            key
        }
    };
    if let Some(forwarded) = told(&header::FORWARDED) {
        key.push_str(" forwarded=");
        key.push_str(forwarded);
    }
    for part in plugins.map(|p| p.added.as_slice()).unwrap_or_default() {
        key.push(' ');
        key.push_str(part);
    }
    key
}

/// What the lookup needs to know of a request besides its head as it goes upstream.
pub(super) struct Asked<'a> {
    /// The scheme the client spoke to weir.
    pub(super) scheme: &'a str,
    /// The host it asked for.
    pub(super) host: Option<&'a HeaderValue>,
    /// It carried `Authorization` (before any filter removed it) or a plugin said who the
    /// client is.
    pub(super) authenticated: bool,
    /// It has a body: a `GET` with one is not looked up or stored (an origin that reads it
    /// would answer by it, and the answer must not reach requests without it).
    pub(super) body: bool,
}

/// The lookup for a request the filters passed: an answer from the store, or how to forward
/// it. `parts` is the request as it goes upstream; a fill may add conditions to it, take the
/// client's out, or make a `HEAD` a `GET`.
pub(super) async fn before(
    cache: &Arc<RouteCache>,
    parts: &mut request::Parts,
    request: Asked<'_>,
) -> Before {
    let Asked {
        scheme,
        host,
        authenticated,
        body,
    } = request;
    let pass = |forwarded, may_store| Fill {
        cache: cache.clone(),
        key: String::new(),
        forwarded,
        request: HeaderMap::new(),
        head: false,
        conditions: Conditions::default(),
        stale: None,
        may_store,
        authenticated: false,
        _turn: None,
        sent: SystemTime::now(),
    };
    if !policy::cacheable_method(&parts.method) {
        cache.count(CacheLookup::Bypass);
        let mut fill = pass(Forwarded::Method, false);
        if policy::unsafe_method(&parts.method) {
            fill.key = key(parts, scheme, host);
        }
        return Before::Forward(fill);
    }
    if body || parts.headers.contains_key(header::RANGE) {
        cache.count(CacheLookup::Bypass);
        return Before::Forward(pass(Forwarded::Bypass, false));
    }
    let key = key(parts, scheme, host);
    let asked = Directives::of(&parts.headers);
    let head = parts.method == Method::HEAD;
    // Why this request first missed, once it waits for another's fetch: a waiter answered
    // from that fetch reports the miss, `collapsed` (RFC 9211 §2.6).
    let mut waited: Option<Forwarded> = None;
    loop {
        let now = Instant::now();
        let (forwarded, stale) = match cache.find(&key, &parts.headers) {
            Found::Stored(stored) => {
                let fresh = stored.is_fresh(now);
                let young_enough = asked
                    .max_age
                    .is_none_or(|limit| stored.age(now).as_secs() <= limit);
                if fresh && young_enough && !asked.no_cache {
                    let status = match waited {
                        Some(missed) => {
                            cache.count(CacheLookup::Collapsed);
                            let mut status = CacheStatus::forwarded(missed);
                            status.forward_status = Some(stored.status.as_u16());
                            status.collapsed = true;
                            status
                        }
                        None => {
                            cache.count(CacheLookup::Hit);
                            CacheStatus::hit(stored.ttl(now))
                        }
                    };
                    let conditions = Conditions::take(&mut parts.headers);
                    return Before::Answer(serve(&stored, now, head, &conditions, &status));
                }
                let swr = stored.directives.stale_while_revalidate;
                if !fresh && !asked.no_cache && stored.stale_within(now, swr) {
                    cache.count(CacheLookup::Stale);
                    let mut status = CacheStatus::hit(stored.ttl(now));
                    status.detail = Some("stale-while-revalidate");
                    let conditions = Conditions::take(&mut parts.headers);
                    let answer = serve(&stored, now, head, &conditions, &status);
                    // One revalidation at a time: if another request is fetching the key,
                    // its answer refreshes the entry.
                    return match cache.turn(&key) {
                        Turn::Fetch(turn) => {
                            let mut fill = fill(cache, key, Forwarded::Stale, parts, Some(stored));
                            fill._turn = Some(turn);
                            fill.head = false;
                            Before::AnswerAndRevalidate(answer, fill)
                        }
                        Turn::Wait(_) | Turn::Alone => Before::Answer(answer),
                    };
                }
                let forwarded = if fresh {
                    Forwarded::Request
                } else {
                    Forwarded::Stale
                };
                (forwarded, Some(stored))
            }
            Found::VaryMiss => (Forwarded::VaryMiss, None),
            Found::UriMiss => (Forwarded::UriMiss, None),
        };
        if asked.only_if_cached {
            cache.count(CacheLookup::Miss);
            let mut answer = Response::new(body::full("not in the cache (only-if-cached)\n"));
            *answer.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            CacheStatus::forwarded(forwarded).add_to(answer.headers_mut());
            return Before::Answer(answer);
        }
        let turn = match cache.turn(&key) {
            // After one wait, the key's fetch did not give this request its answer (another
            // variant, not storable, or the wait timed out): it goes upstream itself.
            Turn::Wait(_) if waited.is_some() => None,
            Turn::Wait(mut fetched) => {
                let timeout = cache.config().lock_timeout;
                let _ = tokio::time::timeout(timeout, fetched.changed()).await;
                waited = Some(forwarded);
                continue;
            }
            Turn::Fetch(turn) => Some(turn),
            Turn::Alone => None,
        };
        cache.count(CacheLookup::Miss);
        let mut fill = fill(cache, key, forwarded, parts, stale);
        fill._turn = turn;
        fill.may_store = !asked.no_store;
        fill.authenticated = authenticated;
        return Before::Forward(fill);
    }
}

/// The fill of a request that goes upstream to fill `key` (or refresh `stale`): the client's
/// conditions are taken out, a `HEAD` becomes a `GET`, and a stored response's validators
/// make the request conditional.
fn fill(
    cache: &Arc<RouteCache>,
    key: String,
    forwarded: Forwarded,
    parts: &mut request::Parts,
    stale: Option<Arc<Stored>>,
) -> Fill {
    let conditions = Conditions::take(&mut parts.headers);
    let request = parts.headers.clone();
    let head = parts.method == Method::HEAD;
    if head {
        parts.method = Method::GET;
    }
    if let Some(stored) = &stale {
        if let Some(etag) = stored.headers.get(header::ETAG) {
            parts.headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
            parts
                .headers
                .insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    Fill {
        cache: cache.clone(),
        key,
        forwarded,
        request,
        head,
        conditions,
        stale,
        may_store: true,
        authenticated: false,
        _turn: None,
        sent: SystemTime::now(),
    }
}

impl Fill {
    /// The client's answer from the upstream's `answer`, and what it does to the store.
    pub(super) async fn after(
        self,
        answer: Result<Response<ProxyBody>, ProxyError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if matches!(self.forwarded, Forwarded::Method | Forwarded::Bypass) {
            return self.passed_on(answer);
        }
        let now = Instant::now();
        let failed = match &answer {
            Err(_) => Some(None),
            Ok(response) => matches!(response.status().as_u16(), 500 | 502 | 503 | 504)
                .then(|| Some(response.status().as_u16())),
        };
        if let Some(status) = failed {
            if let Some(stale) = &self.stale
                && stale.stale_within(now, stale.directives.stale_if_error)
            {
                self.cache.count(CacheLookup::Stale);
                let mut cache_status = CacheStatus::forwarded(Forwarded::Stale);
                cache_status.forward_status = status;
                cache_status.detail = Some("stale-if-error");
                return Ok(serve(
                    stale,
                    now,
                    self.head,
                    &self.conditions,
                    &cache_status,
                ));
            }
            return answer.map(|response| self.not_stored(response));
        }
        let response = answer?;
        let received = SystemTime::now();
        if response.status() == StatusCode::NOT_MODIFIED
            && let Some(stale) = self.stale.clone()
        {
            return Ok(self.refreshed(&stale, &response, received, now));
        }
        let storable = if self.may_store {
            let authenticated = self.authenticated;
            policy::storable(
                &self.request,
                authenticated,
                response.status(),
                response.headers(),
            )
        } else {
            Err(policy::NotStored::NoStore)
        };
        let Ok(storable) = storable else {
            return Ok(self.not_stored(response));
        };
        let limit = self.cache.config().max_object_bytes;
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(self.not_stored(response));
        }
        let (mut head, body) = response.into_parts();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let bytes = match body::buffer(body, limit).await {
            Ok(Buffered::Whole {
                bytes,
                trailers: None,
            }) => Bytes::from(bytes),
            Ok(Buffered::Whole { bytes, .. }) => {
                // Read whole, its trailers dropped: the head says the length it now has.
                crate::plugin::chain::set_length(bytes.len(), &mut head.headers);
                return Ok(self.not_stored(Response::from_parts(head, body::full(bytes))));
            }
            Ok(Buffered::TooLarge(body)) => {
                return Ok(self.not_stored(Response::from_parts(head, body)));
            }
            Err(e) => {
                return Err(ProxyError::new(ErrorKind::UpstreamFailed).with_cause(e));
            }
        };
        forward::strip_hop_by_hop(&mut head.headers);
        // What is stored is the body read: a `Content-Length` the upstream sent beside chunks
        // (which define the body, RFC 9112 §6.3) must not be replayed with it.
        crate::plugin::chain::set_length(bytes.len(), &mut head.headers);
        if !head.headers.contains_key(header::DATE) {
            let date = httpdate::fmt_http_date(received);
            if let Ok(date) = HeaderValue::from_str(&date) {
                head.headers.insert(header::DATE, date);
            }
        }
        let age = policy::initial_age(&head.headers, self.sent, received);
        let stored = Stored::new(
            head.status,
            head.headers,
            bytes,
            storable,
            &self.request,
            age,
        );
        let mut status = CacheStatus::forwarded(self.forwarded);
        status.forward_status = Some(stored.status.as_u16());
        status.stored = true;
        let answer = serve(&stored, now, self.head, &self.conditions, &status);
        self.cache.insert(&self.key, stored);
        Ok(answer)
    }

    /// A stale response refreshed by the upstream's `304`: the head updated, stored again
    /// (or forgotten, if the new head forbids storing), and sent with the stored body.
    fn refreshed(
        self,
        stale: &Stored,
        not_modified: &Response<ProxyBody>,
        received: SystemTime,
        now: Instant,
    ) -> Response<ProxyBody> {
        let mut headers = stale.headers.clone();
        policy::freshen(&mut headers, not_modified.headers());
        let mut status = CacheStatus::forwarded(self.forwarded);
        status.forward_status = Some(304);
        // A head that now forbids storing is sent once, as a response never stored.
        let storable = policy::storable(&self.request, self.authenticated, stale.status, &headers)
            .ok()
            .filter(|_| self.may_store);
        let stored = storable.is_some();
        let storable = storable.unwrap_or(policy::Storable {
            directives: Directives::default(),
            lifetime: std::time::Duration::ZERO,
            vary: Vec::new(),
        });
        let age = policy::initial_age(not_modified.headers(), self.sent, received);
        let refreshed = Stored::new(
            stale.status,
            headers,
            stale.body.clone(),
            storable,
            &self.request,
            age,
        );
        if !stored {
            self.cache.remove(&self.key);
            return serve(&refreshed, now, self.head, &self.conditions, &status);
        }
        status.stored = true;
        self.cache.count(CacheLookup::Revalidated);
        let answer = serve(&refreshed, now, self.head, &self.conditions, &status);
        self.cache.insert(&self.key, refreshed);
        answer
    }

    /// An answer that is not stored: sent on as it is (a `200` answered `304` if the client's
    /// conditions say so), and, for a while, requests for the key do not wait for each other.
    /// A request's own `no-store` leaves the store as it was (RFC 9111 §5.2.1.5: it does not
    /// apply to what is already stored), so no client can empty a key or stop the collapsing
    /// of its misses.
    fn not_stored(self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        if self.may_store {
            if self.stale.is_some() && response.status().is_success() {
                // The stored response was replaced by one that may not be stored.
                self.cache.remove(&self.key);
            }
            self.cache.pass(&self.key);
        }
        let mut status = CacheStatus::forwarded(self.forwarded);
        status.forward_status = Some(response.status().as_u16());
        if response.status() == StatusCode::OK && self.conditions.not_modified(response.headers()) {
            let headers = policy::not_modified_headers(response.headers());
            response = Response::new(body::full(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = headers;
        } else if self.head {
            // Forwarded as a `GET`: the client asked for the head only.
            *response.body_mut() = body::full(Bytes::new());
        }
        status.add_to(response.headers_mut());
        response
    }

    /// A request that was not looked up: its answer passed on; a success for a method that
    /// changes the resource forgets what is stored for it.
    fn passed_on(
        self,
        answer: Result<Response<ProxyBody>, ProxyError>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut response = answer?;
        let status = response.status();
        if !self.key.is_empty() && (status.is_success() || status.is_redirection()) {
            self.cache.remove(&self.key);
        }
        let mut cache_status = CacheStatus::forwarded(self.forwarded);
        cache_status.forward_status = Some(status.as_u16());
        cache_status.add_to(response.headers_mut());
        Ok(response)
    }
}

/// Revalidates a stale entry behind the answer already sent (`stale-while-revalidate`): the
/// conditional request goes to the route's cluster on a task of its own, and its answer is
/// read whole into the store.
pub(super) fn revalidate_behind(
    generation: Arc<Generation>,
    cluster: usize,
    request: &request::Parts,
    request_id: HeaderValue,
    fill: Fill,
) {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = request.method.clone();
    parts.uri = request.uri.clone();
    parts.headers = request.headers.clone();
    tokio::spawn(async move {
        parts.version = http::Version::HTTP_11;
        let timers = Timers::default();
        let exchange = attempts::Exchange {
            cluster: &generation.clusters[cluster],
            parts,
            body: RequestBody::Buffered(Bytes::new()),
            hash: None,
            retry_non_idempotent: false,
            grpc: false,
            request_id: &request_id,
            timers: &timers,
            trace: None,
            body_watch: None,
        };
        let mut progress = attempts::Progress::default();
        let answer = attempts::send(exchange, &mut progress)
            .await
            .map(|answer| answer.response.map(ProxyBody::Upstream));
        match fill.after(answer).await {
            // What the fill did not store (over `max_object_bytes`) is read to its end, so
            // the connection goes back to the pool, and not held: no client waits for it.
            Ok(response) => body::drain(response.into_body()).await,
            Err(error) => tracing::debug!(%error, "background revalidation failed"),
        }
    });
}

/// The client's answer from a stored response: `200` (no body for `HEAD`) or `304` when the
/// client's conditions hold, with `Age` and `Cache-Status`.
fn serve(
    stored: &Stored,
    now: Instant,
    head: bool,
    conditions: &Conditions,
    status: &CacheStatus,
) -> Response<ProxyBody> {
    let not_modified = stored.status == StatusCode::OK && conditions.not_modified(&stored.headers);
    let (code, mut headers, body) = if not_modified {
        (
            StatusCode::NOT_MODIFIED,
            policy::not_modified_headers(&stored.headers),
            body::full(Bytes::new()),
        )
    } else if head {
        (
            stored.status,
            stored.headers.clone(),
            body::full(Bytes::new()),
        )
    } else {
        (
            stored.status,
            stored.headers.clone(),
            body::full(stored.body.clone()),
        )
    };
    headers.insert(header::AGE, HeaderValue::from(stored.age(now).as_secs()));
    status.add_to(&mut headers);
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    response
}

/// weir's member of `Cache-Status` (RFC 9211).
#[derive(Debug, Default)]
struct CacheStatus {
    hit: bool,
    forwarded: Option<Forwarded>,
    forward_status: Option<u16>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    detail: Option<&'static str>,
}

impl CacheStatus {
    fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    fn forwarded(forwarded: Forwarded) -> CacheStatus {
        CacheStatus {
            forwarded: Some(forwarded),
            ..CacheStatus::default()
        }
    }

    /// Appended after the members caches nearer the origin wrote.
    fn add_to(&self, headers: &mut HeaderMap) {
        // Written once into room for its longest form and handed to the header without a
        // copy: this is on every hit.
        let mut text = String::with_capacity(96);
        text.push_str(CACHE_NAME);
        if self.hit {
            text.push_str("; hit");
        }
        if let Some(forwarded) = self.forwarded {
            text.push_str("; fwd=");
            text.push_str(forwarded.token());
        }
        if let Some(status) = self.forward_status {
            text.push_str("; fwd-status=");
            text.push_str(itoa::Buffer::new().format(status));
        }
        if let Some(ttl) = self.ttl {
            text.push_str("; ttl=");
            text.push_str(itoa::Buffer::new().format(ttl));
        }
        if self.stored {
            text.push_str("; stored");
        }
        if self.collapsed {
            text.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            text.push_str("; detail=");
            text.push_str(detail);
        }
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(text)) {
            headers.append(CACHE_STATUS.clone(), value);
        }
    }
}

static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");
