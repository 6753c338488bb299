//! `cors`: Cross-Origin Resource Sharing at the proxy. Preflights from allowed origins are
//! answered here (204), and the responses to cross-origin requests from allowed origins say
//! so (`Access-Control-Allow-Origin`, ...), so browsers let pages on those origins read them.
//! See the README for every key.
//!
//! Everything is decided in `on_request`, and the plugin has no response hook: a preflight
//! is answered locally, and for any other request the CORS headers are left for its response
//! with `Request::set_response_header` (weir:plugin 0.3.1). They depend only on the request's
//! `Origin`, and weir applies them to whichever response the client gets — the upstream's,
//! or a later plugin's refusal, which a page can then read too.
//!
//! A preflight the policy refuses (origin, method or a requested header not allowed) is
//! still answered here, with no `Access-Control-Allow-*` header: the browser then fails the
//! preflight and never sends the request. That is how Kong's `cors` answers an origin it does
//! not allow, and Envoy's with `forward_not_matching_preflights: false` (they leave the method
//! and headers to the browser, which fails the same way); a 403 would tell the browser
//! nothing more.

#![forbid(unsafe_code)]

use std::fmt;

use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Origins whose pages may read responses: `scheme://host[:port]` exactly, with one `*`
    /// for a run of host characters (`https://*.example.com`), `null`, or `*` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; `*` for any.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; `*` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers, beyond the CORS-safelisted ones, that pages may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Let pages send credentials (cookies, HTTP auth, client certificates) and read the
    /// responses to them.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may keep a preflight's answer: seconds, or a duration (`"10m"`).
    #[serde(default, deserialize_with = "seconds")]
    pub max_age: Option<u64>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}

/// `max_age` as whole seconds, from a number of seconds or a duration such as `"10m"`.
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Seconds;

    impl serde::de::Visitor<'_> for Seconds {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of seconds (600) or a duration (\"10m\")")
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Option<u64>, E> {
            Ok(Some(value))
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Option<u64>, E> {
            u64::try_from(value)
                .map(Some)
                .map_err(|_| E::custom(format!("max_age {value} is negative")))
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Option<u64>, E> {
            let duration = humantime::parse_duration(value)
                .map_err(|e| E::custom(format!("max_age {value:?}: {e}")))?;
            if duration.subsec_nanos() != 0 {
                return Err(E::custom(format!(
                    "max_age {value:?}: Access-Control-Max-Age is whole seconds"
                )));
            }
            Ok(Some(duration.as_secs()))
        }
    }

    deserializer.deserialize_any(Seconds)
}

/// Which origins may read responses.
#[derive(Debug)]
enum Origins {
    /// Any origin: `Access-Control-Allow-Origin: *` (never with credentials).
    Any,
    /// These, each answered with the request's own `Origin`.
    Listed(Vec<OriginRule>),
}

/// One allowed origin, lower case.
#[derive(Debug, PartialEq, Eq)]
enum OriginRule {
    /// This origin exactly (ASCII case aside).
    Exact(String),
    /// `prefix`, then one or more letters, digits, `-` or `.`, then `suffix`: a `*` that
    /// never stands for a scheme, a `:` before a port, or a path.
    Wildcard { prefix: String, suffix: String },
}

impl OriginRule {
    fn parse(entry: &str) -> Result<OriginRule, String> {
        let invalid = |why: &str| {
            Err(format!(
                "allow_origins: {entry:?} {why} (an origin is scheme://host[:port], like \"https://app.example.com\", \"https://*.example.com\" or \"http://localhost:8080\")"
            ))
        };
        let lower = entry.to_ascii_lowercase();
        if lower == "null" {
            return Ok(OriginRule::Exact(lower));
        }
        let Some((scheme, authority)) = lower.split_once("://") else {
            return invalid("has no scheme");
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok {
            return invalid("has no valid scheme");
        }
        if authority.contains('/') {
            return invalid("has a path: browsers send the origin without one, not even a `/`");
        }
        if authority.is_empty()
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]*_".contains(&b))
        {
            return invalid("has no valid host");
        }
        match authority.matches('*').count() {
            0 => Ok(OriginRule::Exact(lower)),
            1 => {
                let (before, after) = lower.split_once('*').unwrap_or_default();
                Ok(OriginRule::Wildcard {
                    prefix: before.to_owned(),
                    suffix: after.to_owned(),
                })
            }
            _ => invalid("has more than one `*`"),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginRule::Wildcard { prefix, suffix } => {
                let (origin, prefix, suffix) =
                    (origin.as_bytes(), prefix.as_bytes(), suffix.as_bytes());
                let Some(middle_len) = origin.len().checked_sub(prefix.len() + suffix.len()) else {
                    return false;
                };
                let (head, rest) = origin.split_at(prefix.len());
                let (middle, tail) = rest.split_at(middle_len);
                middle_len > 0
                    && head.eq_ignore_ascii_case(prefix)
                    && tail.eq_ignore_ascii_case(suffix)
                    && middle
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
            }
        }
    }
}

/// A configured list of methods or headers.
#[derive(Debug)]
enum Allowed {
    /// Anything asked for: the preflight's answer repeats what it asked.
    Any,
    /// These (methods upper case, header names lower case), and the header value listing
    /// them (`None` if there are none).
    Listed(Vec<String>, Option<String>),
}

impl Allowed {
    fn parse(list: Vec<String>, key: &str, normal: fn(&str) -> String) -> Result<Allowed, String> {
        if list.iter().any(|entry| entry == "*") {
            return Ok(Allowed::Any);
        }
        let list = list
            .iter()
            .map(|entry| check_token(entry, key).map(|()| normal(entry)))
            .collect::<Result<Vec<String>, String>>()?;
        let value = (!list.is_empty()).then(|| list.join(", "));
        Ok(Allowed::Listed(list, value))
    }
}

/// An HTTP token (a method or header name), so a bad entry is a config error rather than a
/// header weir cannot send.
fn check_token(entry: &str, key: &str) -> Result<(), String> {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={} \t";
    if entry.is_empty()
        || !entry
            .bytes()
            .all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b))
    {
        return Err(format!("{key}: {entry:?} is not a valid name"));
    }
    Ok(())
}

/// The methods a browser sends cross-origin whatever `Access-Control-Allow-Methods` says
/// (Fetch's CORS-safelisted methods).
const SAFELISTED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

/// `Vary` on a preflight's answer: it depends on what the preflight asks, not only on the
/// origin.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// The filter: the validated policy.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    methods: Allowed,
    headers: Allowed,
    expose: Option<String>,
    credentials: bool,
    max_age: Option<String>,
}

impl Filter for Cors {
    type Config = Config;

    fn new(config: Config) -> Result<Cors, String> {
        if config.allow_origins.is_empty() {
            return Err("allow_origins is empty: no origin could read a response".into());
        }
        let origins = if config.allow_origins.iter().any(|o| o == "*") {
            if config.allow_credentials {
                return Err(
                    "allow_origins = [\"*\"] with allow_credentials = true: the Fetch standard forbids `Access-Control-Allow-Origin: *` on a credentialed response, so browsers would refuse every one; list the origins (wildcards like \"https://*.example.com\" are fine)"
                        .into(),
                );
            }
            Origins::Any
        } else {
            let rules = config
                .allow_origins
                .iter()
                .map(|o| OriginRule::parse(o))
                .collect::<Result<_, _>>()?;
            Origins::Listed(rules)
        };
        let methods = Allowed::parse(config.allow_methods, "allow_methods", |m| {
            m.to_ascii_uppercase()
        })?;
        let headers = Allowed::parse(config.allow_headers, "allow_headers", |h| {
            h.to_ascii_lowercase()
        })?;
        let expose = match Allowed::parse(config.expose_headers, "expose_headers", |h| {
            h.to_ascii_lowercase()
        })? {
            Allowed::Any if config.allow_credentials => {
                return Err(
                    "expose_headers = [\"*\"] with allow_credentials = true: on a credentialed response browsers read `*` as a header named \"*\", exposing nothing; list the headers"
                        .into(),
                );
            }
            Allowed::Any => Some("*".to_owned()),
            Allowed::Listed(_, value) => value,
        };
        Ok(Cors {
            origins,
            methods,
            headers,
            expose,
            credentials: config.allow_credentials,
            max_age: config.max_age.map(|s| s.to_string()),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let Some(origin) = request
            .header("origin")
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
        else {
            // Not cross-origin (or not from a browser): nothing to say, but a cache must not
            // hand this response to a cross-origin request, nor the other way round.
            request.append_response_header("vary", "Origin");
            return Action::Continue;
        };
        let allow_origin = self.allow_origin(&origin);
        let asked_method = request
            .header("access-control-request-method")
            .filter(|m| !m.is_empty());
        if request.method() == "OPTIONS"
            && let Some(asked_method) = asked_method
        {
            let asked_headers = request.header("access-control-request-headers");
            return self
                .preflight(&origin, allow_origin, asked_method, asked_headers)
                .into();
        }

        match allow_origin {
            Some(allow_origin) => {
                request.set_response_header("access-control-allow-origin", allow_origin);
                if self.credentials {
                    request.set_response_header("access-control-allow-credentials", "true");
                }
                if let Some(expose) = &self.expose {
                    request.set_response_header("access-control-expose-headers", expose);
                }
            }
            None => {
                // The policy here is the one that holds: an upstream's own, broader answer
                // does not reach an origin this plugin refuses (as Kong's cors clears it).
                request.remove_response_header("access-control-allow-origin");
                request.remove_response_header("access-control-allow-credentials");
            }
        }
        request.append_response_header("vary", "Origin");
        Action::Continue
    }
}

impl Cors {
    /// The `Access-Control-Allow-Origin` for `origin`, if it is allowed.
    fn allow_origin<'o>(&self, origin: &'o str) -> Option<&'o str> {
        match &self.origins {
            Origins::Any => Some("*"),
            Origins::Listed(rules) => rules
                .iter()
                .any(|rule| rule.matches(origin))
                .then_some(origin),
        }
    }

    /// The answer to a preflight: the policy's headers if it allows what the preflight asks,
    /// none (the browser then refuses) otherwise.
    fn preflight(
        &self,
        origin: &str,
        allow_origin: Option<&str>,
        method: &str,
        headers: Option<&str>,
    ) -> Reply {
        let reply = Reply::new(204).header("vary", PREFLIGHT_VARY);
        let allowed = allow_origin
            .ok_or("origin not allowed")
            .and_then(|allow_origin| {
                self.check_method(method)?;
                self.check_headers(headers)?;
                Ok(allow_origin)
            });
        let allow_origin = match allowed {
            Ok(allow_origin) => allow_origin,
            Err(why) => {
                weir_plugin::log::debug!("preflight from {origin:?} for {method:?} refused: {why}");
                return reply;
            }
        };
        let mut reply = reply.header("access-control-allow-origin", allow_origin);
        if self.credentials {
            reply = reply.header("access-control-allow-credentials", "true");
        }
        let methods = match &self.methods {
            Allowed::Any => Some(method),
            Allowed::Listed(_, value) => value.as_deref(),
        };
        if let Some(methods) = methods {
            reply = reply.header("access-control-allow-methods", methods);
        }
        let headers = match &self.headers {
            Allowed::Any => headers.filter(|h| !h.trim().is_empty()),
            Allowed::Listed(_, value) => value.as_deref(),
        };
        if let Some(headers) = headers {
            reply = reply.header("access-control-allow-headers", headers);
        }
        if let Some(max_age) = &self.max_age {
            reply = reply.header("access-control-max-age", max_age);
        }
        reply
    }

    /// A safelisted method, or one listed, compared exactly as the browser compares them.
    fn check_method(&self, method: &str) -> Result<(), &'static str> {
        let allowed = match &self.methods {
            Allowed::Any => true,
            Allowed::Listed(list, _) => {
                SAFELISTED_METHODS.contains(&method) || list.iter().any(|m| m == method)
            }
        };
        allowed.then_some(()).ok_or("method not allowed")
    }

    /// Every header named in `Access-Control-Request-Headers` is listed.
    fn check_headers(&self, asked: Option<&str>) -> Result<(), &'static str> {
        let Allowed::Listed(list, _) = &self.headers else {
            return Ok(());
        };
        let allowed = asked
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .all(|name| list.iter().any(|h| h.eq_ignore_ascii_case(name)));
        allowed.then_some(()).ok_or("a request header not allowed")
    }
}

weir_plugin::export_filter!(Cors);

#[cfg(test)]
mod tests {
    use weir_plugin::Hooks;
    use weir_plugin::testing::{self, Harness, TestRequest};

    use super::{Cors, OriginRule};

    const CONFIG: &str = r#"
allow_origins = ["https://app.example.com", "https://*.example.org", "http://localhost:*"]
allow_methods = ["GET", "POST", "put", "DELETE"]
allow_headers = ["Content-Type", "authorization"]
expose_headers = ["X-Total-Count", "etag"]
allow_credentials = true
max_age = "10m"
"#;

    fn cors(config: &str) -> Harness<Cors> {
        Harness::new(config).expect("valid config")
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> TestRequest {
        let request = TestRequest::new("OPTIONS", "/api/items")
            .header("origin", origin)
            .header("access-control-request-method", method);
        match headers {
            Some(headers) => request.header("access-control-request-headers", headers),
            None => request,
        }
    }

    /// Every `Access-Control-*` header of a reply or response.
    fn cors_headers(reply: &weir_plugin::Reply) -> Vec<(String, String)> {
        reply
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-"))
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_the_policy() {
        let reply = cors(CONFIG)
            .request(preflight(
                "https://app.example.com",
                "PUT",
                Some("content-type,authorization"),
            ))
            .reply();
        assert_eq!(reply.status, 204);
        assert!(reply.body.is_empty());
        let expected = [
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "GET, POST, PUT, DELETE"),
            (
                "access-control-allow-headers",
                "content-type, authorization",
            ),
            ("access-control-max-age", "600"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(cors_headers(&reply), expected);
        assert_eq!(
            reply.header_value("vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
    }

    #[test]
    fn a_refused_preflight_gets_no_cors_headers() {
        let cors = cors(CONFIG);
        for (request, why) in [
            (preflight("https://evil.test", "GET", None), "origin"),
            (
                preflight("https://app.example.com.evil.test", "GET", None),
                "origin",
            ),
            (
                preflight("http://app.example.com", "GET", None),
                "origin (scheme)",
            ),
            (
                preflight("https://app.example.com", "PATCH", None),
                "method",
            ),
            (
                preflight("https://app.example.com", "put", None),
                "method (case, as the browser compares)",
            ),
            (
                preflight(
                    "https://app.example.com",
                    "GET",
                    Some("content-type, x-secret"),
                ),
                "header",
            ),
        ] {
            let reply = cors.request(request).reply();
            assert_eq!(reply.status, 204, "{why}");
            assert_eq!(cors_headers(&reply), [], "{why}");
            assert_eq!(
                reply.header_value("vary"),
                Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
                "{why}"
            );
        }
    }

    #[test]
    fn refusals_are_logged_at_debug_with_the_reason() {
        let cors = cors(CONFIG);
        let _ = cors.request(preflight("https://evil.test", "GET", None));
        let logs = testing::logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].0, weir_plugin::log::Level::Debug);
        assert!(logs[0].1.contains("\"https://evil.test\""), "{logs:?}");
        assert!(logs[0].1.contains("origin not allowed"), "{logs:?}");
    }

    #[test]
    fn safelisted_methods_pass_the_method_check_as_in_the_browser() {
        let cors = cors("allow_origins = [\"https://a.test\"]\nallow_methods = [\"PUT\"]\n");
        for method in ["GET", "HEAD", "POST", "PUT"] {
            let reply = cors
                .request(preflight("https://a.test", method, None))
                .reply();
            assert_eq!(
                reply.header_value("access-control-allow-origin"),
                Some("https://a.test"),
                "{method}"
            );
            assert_eq!(
                reply.header_value("access-control-allow-methods"),
                Some("PUT")
            );
        }
        let reply = cors
            .request(preflight("https://a.test", "DELETE", None))
            .reply();
        assert_eq!(reply.header_value("access-control-allow-origin"), None);
    }

    #[test]
    fn wildcard_origins_match_host_characters_only() {
        let cors = cors(CONFIG);
        for (origin, allowed) in [
            ("https://a.example.org", true),
            ("https://a.b.example.org", true),
            ("HTTPS://A.Example.ORG", true),
            ("https://example.org", false),
            ("https://.example.org", false),
            ("https://a.example.org:8443", false),
            ("http://a.example.org", false),
            ("https://evil.test/.example.org", false),
            ("https://evil.test?.example.org", false),
            ("https://a.example.org.evil.test", false),
            ("http://localhost:3000", true),
            ("http://localhost:", false),
            ("http://localhost:3000/x", false),
            ("http://localhost", false),
            ("https://app.example.com", true),
            ("https://APP.example.com", true),
            ("null", false),
        ] {
            let reply = cors.request(preflight(origin, "GET", None)).reply();
            let echoed = reply.header_value("access-control-allow-origin");
            assert_eq!(echoed, allowed.then_some(origin), "{origin}");
        }
    }

    #[test]
    fn an_actual_request_from_an_allowed_origin_gets_the_headers_on_its_response() {
        let cors = cors(CONFIG);
        let forwarded = cors
            .request(
                TestRequest::new("PUT", "/api/items/7")
                    .header("origin", "https://x.example.org")
                    .header("cookie", "session=1"),
            )
            .forwarded();
        assert_eq!(
            forwarded.header_value("origin"),
            Some("https://x.example.org"),
            "the request goes upstream as it came"
        );
        let response = cors
            .response(
                &forwarded,
                200,
                &[
                    ("access-control-allow-origin", "*"),
                    ("vary", "Accept-Encoding"),
                ],
            )
            .response();
        let expected = [
            ("access-control-allow-origin", "https://x.example.org"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-total-count, etag"),
        ];
        let mut got = cors_headers(&response);
        got.sort();
        let mut expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        expected.sort();
        assert_eq!(got, expected);
        let vary: Vec<&[u8]> = response
            .headers
            .iter()
            .filter(|(n, _)| n == "vary")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(vary, [b"Accept-Encoding".as_slice(), b"Origin".as_slice()]);
        assert_eq!(cors.hooks(), Hooks::REQUEST, "no response hook");
    }

    #[test]
    fn an_actual_request_from_another_origin_loses_any_cors_answer() {
        let cors = cors(CONFIG);
        let forwarded = cors
            .request(TestRequest::get("/").header("origin", "https://evil.test"))
            .forwarded();
        let response = cors
            .response(
                &forwarded,
                200,
                &[
                    ("access-control-allow-origin", "https://evil.test"),
                    ("access-control-allow-credentials", "true"),
                ],
            )
            .response();
        assert_eq!(cors_headers(&response), []);
        assert_eq!(response.header_value("vary"), Some("Origin"));
    }

    #[test]
    fn a_request_without_origin_passes_untouched_but_for_vary() {
        let cors = cors(CONFIG);
        let request = TestRequest::get("/").header("access-control-request-method", "GET");
        let forwarded = cors.request(request.clone()).forwarded();
        assert_eq!(forwarded.headers, request.headers);
        let response = cors
            .response(&forwarded, 200, &[("access-control-allow-origin", "*")])
            .response();
        assert_eq!(
            response.header_value("access-control-allow-origin"),
            Some("*")
        );
        assert_eq!(response.header_value("vary"), Some("Origin"));
        // An OPTIONS without Origin is not a preflight either: it goes upstream.
        let _ = cors
            .request(
                TestRequest::new("OPTIONS", "/").header("access-control-request-method", "PUT"),
            )
            .forwarded();
        // Nor is an OPTIONS with Origin but no method asked for: an actual request.
        let forwarded = cors
            .request(TestRequest::new("OPTIONS", "/").header("origin", "https://app.example.com"))
            .forwarded();
        let response = cors.response(&forwarded, 200, &[]).response();
        assert_eq!(
            response.header_value("access-control-allow-origin"),
            Some("https://app.example.com")
        );
    }

    #[test]
    fn any_origin_without_credentials_is_answered_with_a_star() {
        let cors = cors("allow_origins = [\"*\"]\nexpose_headers = [\"*\"]\n");
        let reply = cors
            .request(preflight("https://anyone.test", "DELETE", None))
            .reply();
        assert_eq!(reply.header_value("access-control-allow-origin"), Some("*"));
        assert_eq!(reply.header_value("access-control-allow-credentials"), None);
        assert_eq!(
            reply.header_value("access-control-allow-methods"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE"),
            "the default methods"
        );
        assert_eq!(reply.header_value("access-control-allow-headers"), None);
        assert_eq!(reply.header_value("access-control-max-age"), None);
        let forwarded = cors
            .request(TestRequest::get("/").header("origin", "null"))
            .forwarded();
        let response = cors.response(&forwarded, 200, &[]).response();
        assert_eq!(
            response.header_value("access-control-allow-origin"),
            Some("*")
        );
        assert_eq!(
            response.header_value("access-control-expose-headers"),
            Some("*")
        );
        assert_eq!(response.header_value("vary"), Some("Origin"));
    }

    #[test]
    fn star_methods_and_headers_repeat_what_the_preflight_asks() {
        let cors = cors(
            "allow_origins = [\"https://a.test\"]\nallow_methods = [\"*\"]\nallow_headers = [\"*\"]\nallow_credentials = true\nmax_age = 0\n",
        );
        let reply = cors
            .request(preflight(
                "https://a.test",
                "PROPFIND",
                Some("authorization,x-anything"),
            ))
            .reply();
        assert_eq!(
            reply.header_value("access-control-allow-methods"),
            Some("PROPFIND")
        );
        assert_eq!(
            reply.header_value("access-control-allow-headers"),
            Some("authorization,x-anything")
        );
        assert_eq!(reply.header_value("access-control-max-age"), Some("0"));
        let reply = cors
            .request(preflight("https://a.test", "GET", None))
            .reply();
        assert_eq!(reply.header_value("access-control-allow-headers"), None);
    }

    #[test]
    fn max_age_takes_seconds_or_a_duration() {
        for (value, seconds) in [("600", "600"), ("\"1h\"", "3600"), ("\"90s\"", "90")] {
            let cors = cors(&format!(
                "allow_origins = [\"https://a.test\"]\nmax_age = {value}\n"
            ));
            let reply = cors
                .request(preflight("https://a.test", "GET", None))
                .reply();
            assert_eq!(
                reply.header_value("access-control-max-age"),
                Some(seconds),
                "{value}"
            );
        }
    }

    #[test]
    fn origin_entries_parse_into_rules() {
        assert_eq!(
            OriginRule::parse("https://App.Example.com:8443"),
            Ok(OriginRule::Exact("https://app.example.com:8443".into()))
        );
        assert_eq!(
            OriginRule::parse("https://*.example.com"),
            Ok(OriginRule::Wildcard {
                prefix: "https://".into(),
                suffix: ".example.com".into()
            })
        );
        assert_eq!(
            OriginRule::parse("null"),
            Ok(OriginRule::Exact("null".into()))
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            (
                "allow_origins = [\"*\"]\nallow_credentials = true",
                "the Fetch standard forbids `Access-Control-Allow-Origin: *` on a credentialed response",
            ),
            (
                "allow_origins = [\"https://a.test\", \"*\"]\nallow_credentials = true",
                "allow_credentials = true",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nexpose_headers = [\"*\"]\nallow_credentials = true",
                "expose_headers = [\"*\"] with allow_credentials = true",
            ),
            ("allow_origins = []", "allow_origins is empty"),
            ("allow_methods = [\"GET\"]", "missing field `allow_origins`"),
            (
                "allow_origins = [\"https://a.test/\"]",
                "\"https://a.test/\" has a path",
            ),
            ("allow_origins = [\"a.test\"]", "\"a.test\" has no scheme"),
            (
                "allow_origins = [\"https://*.*.a.test\"]",
                "has more than one `*`",
            ),
            (
                "allow_origins = [\"*://a.test\"]",
                "\"*://a.test\" has no valid scheme",
            ),
            (
                "allow_origins = [\"https://a test\"]",
                "\"https://a test\" has no valid host",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nallow_methods = [\"GET POST\"]",
                "allow_methods: \"GET POST\" is not a valid name",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nallow_headers = [\"x:y\"]",
                "allow_headers: \"x:y\" is not a valid name",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nmax_age = -1",
                "max_age -1 is negative",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nmax_age = \"1500ms\"",
                "whole seconds",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nmax_age = \"soon\"",
                "max_age \"soon\"",
            ),
            (
                "allow_origins = [\"https://a.test\"]\nallow_origin = \"x\"",
                "unknown field `allow_origin`",
            ),
        ];
        for (config, expected) in cases {
            let error = Harness::<Cors>::new(config).err().unwrap_or_default();
            assert!(error.contains(expected), "{config}: {error}");
        }
    }
}
