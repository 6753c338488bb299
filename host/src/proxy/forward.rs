//! Proxy header semantics, as nginx and Envoy apply them: hop-by-hop headers removed,
//! `X-Forwarded-*` and `Via` set, `Host` passed through, a request id ensured; forwarding
//! headers believed only from trusted proxies (the client behind them read from
//! `X-Forwarded-For`), removed from anyone else; a message's framing (`Content-Length`)
//! taken from its body, never from a plugin's header change.
//!
//! These are pure functions over header maps so they can be tested without sockets.

use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::SizeHint;

/// How many names [`HOP_BY_HOP`] holds.
const HOP_BY_HOP_COUNT: usize = 6;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// de-facto `Keep-Alive` and `Proxy-Connection`. `Proxy-*` headers are removed separately.
/// `Connection` (at [`CONNECTION_AT`]) is taken out on its own by [`strip_hop_by_hop`].
/// A `const`, so that each comparison is with a known name; in `ManuallyDrop`, so that the
/// copy each use makes is not dropped name by name (122 instructions a request in the
/// profile-guided build). A `static` array cost 500 more in `release`: its names are read and
/// compared as any names would be (`bench/callgrind.sh`, BENCHMARKS.md "Session 43").
const HOP_BY_HOP: ManuallyDrop<[HeaderName; HOP_BY_HOP_COUNT]> = ManuallyDrop::new([
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
]);

/// Where `Connection` is in [`HOP_BY_HOP`] (a unit test holds it there).
const CONNECTION_AT: usize = 0;

/// Where `Transfer-Encoding` is in [`HOP_BY_HOP`] (a unit test holds it there).
const TRANSFER_ENCODING_AT: usize = 3;

/// The request id header, generated when the client sent none.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `ip` is among the `trusted` proxies.
#[inline]
pub(crate) fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    !trusted.is_empty() && trusted.iter().any(|net| net.contains(&ip))
}

/// The client behind trusted proxies: the rightmost `X-Forwarded-For` address that is not
/// itself a trusted proxy (nginx's recursive `real_ip`, Envoy's trusted hops). What a client
/// wrote itself sits left of what the first trusted proxy appended, so it is never chosen
/// while a trusted proxy stands between. `None` without the header, or at an entry that is
/// not an address before an untrusted one is found (the peer is the client then).
pub(crate) fn forwarded_client(headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let mut innermost = None;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let text = value.to_str().ok()?;
        for entry in text.rsplit(',') {
            let ip = forwarded_ip(entry.trim())?;
            if !is_trusted(ip, trusted) {
                return Some(ip);
            }
            innermost = Some(ip);
        }
    }
    innermost
}

/// An `X-Forwarded-For` entry's address: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, or with a
/// port (`1.2.3.4:5678`, `[2001:db8::1]:5678`), as some proxies write them.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            let bare = entry.strip_prefix('[')?.strip_suffix(']')?;
            bare.parse().ok()
        })
}

/// Removes what a client may not say of itself: the `identity` headers only weir's plugins
/// set (who the client is), and, unless the client is a `trusted` proxy, the forwarding
/// headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`), which weir then sets itself, so a
/// client cannot pose as someone else behind weir.
pub(crate) fn strip_untrusted(headers: &mut HeaderMap, identity: &[HeaderName], trusted: bool) {
    // One pass over the names; nothing is hashed, looked up or allocated when none of them
    // is there, which is every request of a client that does not try.
    let mut found: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if (!trusted && is_forwarding(name.as_str())) || identity.contains(name) {
            found.push(name.clone());
        }
    }
    for name in found {
        headers.remove(name);
    }
}

/// Whether a header is one of those a proxy adds to say whom it forwards for.
fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-") || name == "forwarded" || name == "x-real-ip"
}

/// Sets a message's framing from its body (`hint`), whatever plugins did to its headers:
/// `content-length` is the body's exact length when it has one (left out for an empty body
/// that had none, as a `GET` has), and absent otherwise, so hyper chunks it;
/// `transfer-encoding` is hyper's to write. A plugin's `content-length` that is not the
/// body's would make the peer wait for bytes that never come, or read the rest of the body
/// as the next message.
pub(crate) fn frame(headers: &mut HeaderMap, hint: &SizeHint) {
    headers.remove(header::TRANSFER_ENCODING);
    match hint.exact() {
        Some(0) if !headers.contains_key(header::CONTENT_LENGTH) => {}
        Some(length) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Whether a response's `content-length` describes its body: not for a `HEAD` request's,
/// nor a 1xx, 204 or 304, whose length is that of a body they do not carry.
pub(crate) fn framed_by_body(method: &Method, status: StatusCode) -> bool {
    method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// Removes hop-by-hop headers: the fixed list, every header named in `Connection`, and
/// every `Proxy-*` header. A `Content-Length` beside `Transfer-Encoding` goes too: the
/// coding framed the message (RFC 9112 §6.3), and what is passed on is framed anew from the
/// body; kept, it would cut the body short at the length it claims.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names notes which are present; most messages carry none, and most
    // of the rest only `Connection: keep-alive`, so nothing is looked up that is not there.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut any_proxy = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        } else if name.as_str().starts_with("proxy-") {
            any_proxy = true;
        }
    }
    if !any_proxy && !present.contains(&true) {
        return;
    }
    if std::mem::take(&mut present[CONNECTION_AT]) {
        remove_connection(headers);
    }
    if present[TRANSFER_ENCODING_AT] {
        headers.remove(header::CONTENT_LENGTH);
    }
    for (hop, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(hop);
        }
    }
    if any_proxy {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// Removes `Connection` and the headers it names (`close` too, should a field have that
/// name: RFC 9110 §7.6.1). The fixed names among them (`keep-alive`, `upgrade`, …) are left
/// to [`strip_hop_by_hop`], which removes them anyway.
fn remove_connection(headers: &mut HeaderMap) {
    // Taken out with its values in one look-up.
    let Entry::Occupied(entry) = headers.entry(header::CONNECTION) else {
        return;
    };
    // The usual field, `Connection: keep-alive` alone (what nginx, Apache and Node send on
    // every keep-alive response, and browsers on every HTTP/1.1 request), names no other
    // header: it goes without its value being split into options.
    if only_keep_alive(entry.iter()) {
        entry.remove();
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for value in entry.remove_entry_mult().1 {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let fixed = HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(token));
            if fixed {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
}

/// `Connection`'s values are one, `keep-alive` in any case, with no space around it.
fn only_keep_alive<'a>(mut values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    let first = values.next();
    values.next().is_none()
        && first.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
}

/// Facts about the downstream request needed to write the forwarding headers.
#[derive(Debug)]
pub(crate) struct Downstream<'a> {
    /// The client's IP address as header text: [`client_ip_value`], made once per connection.
    pub(crate) client_ip: &'a HeaderValue,
    /// The request's host as the client sent it (Host header or `:authority`).
    pub(crate) host: Option<&'a HeaderValue>,
    /// The protocol version the client spoke.
    pub(crate) version: Version,
    /// The client spoke TLS (`X-Forwarded-Proto: https`).
    pub(crate) tls: bool,
    /// The peer is a trusted proxy: its `X-Forwarded-Proto` and `X-Forwarded-Host` stand.
    pub(crate) trusted: bool,
}

/// Rewrites request headers for the upstream. Call after [`strip_hop_by_hop`].
pub(crate) fn upstream_request_headers(headers: &mut HeaderMap, downstream: &Downstream<'_>) {
    // HTTP/2 carries the host in :authority, which becomes the URI; HTTP/1.1 upstreams need
    // it back as Host, or hyper would fill in the endpoint's address.
    if let Some(host) = downstream.host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        if !(downstream.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }

    // Earlier hops' values, joined into one field, then ours (the name hashed once).
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(vacant) => {
            vacant.insert(downstream.client_ip.clone());
        }
        Entry::Occupied(mut earlier) => {
            let mut joined = Vec::new();
            for v in earlier.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(downstream.client_ip.as_bytes());
            // Written in place and handed over without a copy; the bytes came from valid
            // values.
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
                earlier.insert(value);
            }
        }
    }
    if !(downstream.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), forwarded_proto(downstream.tls));
    }
    headers.append(header::VIA, via(downstream.version));
}

/// A client's IP address as the header text `X-Forwarded-For` ends with.
pub(crate) fn client_ip_value(ip: IpAddr) -> HeaderValue {
    let text = Bytes::from(ip.to_string());
    // An address's text is digits, dots, colons and hex letters: always a valid value.
    HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The `Via` entry for a message received with `version`: `1.1 weir`, `2 weir`. Each a
/// `const`, checked as a header value when weir is compiled rather than on every request.
fn via(version: Version) -> HeaderValue {
    const HTTP_09: HeaderValue = HeaderValue::from_static("0.9 weir");
    const HTTP_10: HeaderValue = HeaderValue::from_static("1.0 weir");
    const HTTP_11: HeaderValue = HeaderValue::from_static("1.1 weir");
    const HTTP_2: HeaderValue = HeaderValue::from_static("2 weir");
    const HTTP_3: HeaderValue = HeaderValue::from_static("3 weir");
    match version {
        Version::HTTP_09 => HTTP_09,
        Version::HTTP_10 => HTTP_10,
        Version::HTTP_2 => HTTP_2,
        Version::HTTP_3 => HTTP_3,
        _ => HTTP_11,
    }
}

/// `X-Forwarded-Proto` for a client that spoke TLS or not, as [`via`]'s values are made.
fn forwarded_proto(tls: bool) -> HeaderValue {
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    if tls { HTTPS } else { HTTP }
}

/// Returns the request's id, generating and inserting one if the client sent none, and
/// whether weir made it (a UUID: text the access log need not check for escapes).
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> (HeaderValue, bool) {
    // One look-up (the name hashed once) whether the client sent one or not.
    let vacant = match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(sent) => return (sent.get().clone(), false),
        Entry::Vacant(vacant) => vacant,
    };
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // One allocation, shared by every copy (the request's, the response's, the log's),
    // where a copied slice would be moved to a second one at the first clone.
    let id = HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("-"));
    vacant.insert(id.clone());
    (id, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn headers(pairs: Pairs<'_>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    fn render(map: &HeaderMap) -> Vec<String> {
        let mut out: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("<bin>")))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn framing_is_the_bodys_whatever_the_headers_said() {
        let cases: [(Pairs<'_>, SizeHint, &[&str]); 6] = [
            // A plugin's length that is not the body's is replaced.
            (
                &[("content-length", "99")],
                SizeHint::with_exact(14),
                &["content-length: 14"],
            ),
            (
                &[("content-length", "1"), ("transfer-encoding", "chunked")],
                SizeHint::with_exact(3),
                &["content-length: 3"],
            ),
            // A body of unknown length has none: hyper chunks it.
            (&[("content-length", "5")], SizeHint::new(), &[]),
            (&[("transfer-encoding", "chunked")], SizeHint::new(), &[]),
            // An empty body that had no length gets none (a GET); one that had keeps 0.
            (&[("x-a", "1")], SizeHint::with_exact(0), &["x-a: 1"]),
            (
                &[("content-length", "7")],
                SizeHint::with_exact(0),
                &["content-length: 0"],
            ),
        ];
        for (pairs, hint, expected) in cases {
            let mut map = headers(pairs);
            frame(&mut map, &hint);
            assert_eq!(render(&map), expected, "{pairs:?}");
        }
        assert!(framed_by_body(&Method::GET, StatusCode::OK));
        assert!(!framed_by_body(&Method::HEAD, StatusCode::OK));
        assert!(!framed_by_body(&Method::GET, StatusCode::NOT_MODIFIED));
        assert!(!framed_by_body(&Method::GET, StatusCode::NO_CONTENT));
    }

    #[test]
    fn connection_is_where_strip_hop_by_hop_looks_for_it() {
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_AT], header::TRANSFER_ENCODING);
    }

    #[test]
    fn strips_hop_by_hop() {
        let cases: &[(Pairs<'_>, &[&str])] = &[
            (&[("x-a", "1")], &["x-a: 1"]),
            (
                &[("proxy-authorization", "Basic x"), ("x-a", "1")],
                &["x-a: 1"],
            ),
            (&[("keep-alive", "timeout=5")], &[]),
            // A length beside a coding: both go (RFC 9112 §6.3); a length alone stays.
            (
                &[
                    ("content-length", "5"),
                    ("transfer-encoding", "chunked"),
                    ("x-a", "1"),
                ],
                &["x-a: 1"],
            ),
            (&[("content-length", "5")], &["content-length: 5"]),
            // `Proxy-*` names of several lengths.
            (
                &[
                    ("proxy-a", "1"),
                    ("proxy-abcd", "2"),
                    ("proxy-abcdefghijk", "3"),
                    ("x-a", "1"),
                ],
                &["x-a: 1"],
            ),
            // The usual field alone; in another case, with the `Keep-Alive` it names; beside a
            // second field that names another header.
            (&[("connection", "keep-alive"), ("x-a", "1")], &["x-a: 1"]),
            (
                &[("connection", "Keep-Alive"), ("keep-alive", "timeout=5")],
                &[],
            ),
            (
                &[
                    ("connection", "keep-alive"),
                    ("connection", "x-a"),
                    ("x-a", "1"),
                ],
                &[],
            ),
            (&[("connection", "close"), ("x-a", "1")], &["x-a: 1"]),
            // A field named by a connection option is removed, `close` too (RFC 9110 §7.6.1).
            (
                &[("connection", "close"), ("close", "x"), ("x-a", "1")],
                &["x-a: 1"],
            ),
            (
                &[
                    ("connection", "Keep-Alive, TE"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("x-a", "1"),
                ],
                &["x-a: 1"],
            ),
            (
                &[
                    ("connection", "keep-alive, X-Secret , x-other"),
                    ("x-secret", "s"),
                    ("x-other", "o"),
                    ("x-keep", "k"),
                ],
                &["x-keep: k"],
            ),
            (
                &[
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("trailer", "x"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "websocket"),
                    ("proxy-authorization", "Basic x"),
                    ("proxy-connection", "keep-alive"),
                    ("authorization", "Bearer t"),
                ],
                &["authorization: Bearer t"],
            ),
            (
                &[
                    ("connection", "x-a"),
                    ("connection", "x-b"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                    ("x-c", "3"),
                ],
                &["x-c: 3"],
            ),
        ];
        for (input, expect) in cases {
            let mut map = headers(input);
            strip_hop_by_hop(&mut map);
            assert_eq!(render(&map), *expect, "input {input:?}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "2001:db8::/32"]
            .iter()
            .map(|n| n.parse().expect("net"))
            .collect();
        let client = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).expect("value"));
            }
            forwarded_client(&headers, &trusted).map(|ip| ip.to_string())
        };
        // What the client wrote (6.6.6.6) is left of the address the first proxy saw.
        assert_eq!(
            client(&["6.6.6.6, 1.2.3.4, 10.0.0.2"]).as_deref(),
            Some("1.2.3.4")
        );
        // Across header lines, the last line is the innermost.
        assert_eq!(
            client(&["6.6.6.6", "1.2.3.4", "10.1.1.1"]).as_deref(),
            Some("1.2.3.4")
        );
        // Ports and brackets as some proxies write them.
        assert_eq!(client(&["1.2.3.4:5678"]).as_deref(), Some("1.2.3.4"));
        assert_eq!(
            client(&["[2001:db9::1]:443, 10.0.0.1"]).as_deref(),
            Some("2001:db9::1")
        );
        assert_eq!(client(&["[2001:db9::2]"]).as_deref(), Some("2001:db9::2"));
        // Only trusted hops: the outermost of them.
        assert_eq!(client(&["10.0.0.9, 10.0.0.2"]).as_deref(), Some("10.0.0.9"));
        // Garbage before any untrusted address: the peer is the client.
        assert_eq!(client(&["1.2.3.4, unknown, 10.0.0.2"]), None);
        assert_eq!(client(&[]), None);
    }

    #[test]
    fn an_untrusted_peers_forwarding_headers_and_anyones_identity_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forward", "kept"),
            ("accept", "*/*"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let identity = [HeaderName::from_static("x-consumer")];
        let mut trusted = headers.clone();
        trusted.append(&identity[0], HeaderValue::from_static("forged"));
        strip_untrusted(&mut headers, &identity, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-forward"]);
        // From a trusted proxy, only the identity header goes.
        strip_untrusted(&mut trusted, &identity, true);
        let mut left: Vec<&str> = trusted.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "accept",
                "forwarded",
                "x-forward",
                "x-forwarded-for",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert!(is_trusted(
            "10.2.3.4".parse().expect("ip"),
            &["10.0.0.0/8".parse().expect("net")]
        ));
        assert!(!is_trusted("10.2.3.4".parse().expect("ip"), &[]));
    }

    #[test]
    fn forwarding_headers() {
        let host = HeaderValue::from_static("api.example.com");
        let client_ip = client_ip_value("10.0.0.1".parse().expect("ip"));
        let h2 = Downstream {
            client_ip: &client_ip,
            host: Some(&host),
            version: Version::HTTP_2,
            tls: false,
            trusted: false,
        };
        let cases: &[(Pairs<'_>, &Downstream<'_>, &[&str])] = &[
            (
                &[],
                &h2,
                &[
                    "host: api.example.com",
                    "via: 2 weir",
                    "x-forwarded-for: 10.0.0.1",
                    "x-forwarded-host: api.example.com",
                    "x-forwarded-proto: http",
                ],
            ),
            (
                &[
                    ("host", "api.example.com"),
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "2.2.2.2"),
                    ("via", "1.0 edge"),
                ],
                &Downstream {
                    version: Version::HTTP_11,
                    ..h2
                },
                &[
                    "host: api.example.com",
                    "via: 1.0 edge",
                    "via: 1.1 weir",
                    "x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1",
                    "x-forwarded-host: api.example.com",
                    "x-forwarded-proto: http",
                ],
            ),
        ];
        for (input, downstream, expect) in cases {
            let mut map = headers(input);
            upstream_request_headers(&mut map, downstream);
            assert_eq!(render(&map), *expect, "input {input:?}");
        }
    }

    #[test]
    fn the_constant_values_say_the_version_and_the_scheme() {
        let versions = [
            (Version::HTTP_09, "0.9 weir"),
            (Version::HTTP_10, "1.0 weir"),
            (Version::HTTP_11, "1.1 weir"),
            (Version::HTTP_2, "2 weir"),
            (Version::HTTP_3, "3 weir"),
        ];
        for (version, said) in versions {
            assert_eq!(via(version), said);
        }
        assert_eq!(forwarded_proto(true), "https");
        assert_eq!(forwarded_proto(false), "http");
    }

    #[test]
    fn client_ip_values() {
        for ip in ["10.0.0.1", "::1", "2001:db8::7"] {
            assert_eq!(client_ip_value(ip.parse().expect("ip")), ip);
        }
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut map = headers(&[("x-request-id", "abc")]);
        assert_eq!(
            ensure_request_id(&mut map),
            ("abc".parse().expect("id"), false)
        );
        let mut map = HeaderMap::new();
        let (id, ours) = ensure_request_id(&mut map);
        assert!(ours);
        assert_eq!(id.len(), 36);
        assert!(
            id.as_bytes()
                .iter()
                .all(|&b| b == b'-' || b.is_ascii_hexdigit())
        );
        assert_eq!(map.get("x-request-id"), Some(&id));
        assert_ne!(ensure_request_id(&mut HeaderMap::new()).0, id);
    }
}
