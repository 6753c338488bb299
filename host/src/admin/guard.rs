//! Who may use the admin listener, checked before any endpoint runs. Each of the three
//! checks stops a different attacker:
//!
//! - **the bearer token** (`[admin] token_file` or `token_env`): anyone who can connect.
//!   Every request but `GET /` (the dashboard page, which holds no data; its own requests
//!   carry the token) must send `Authorization: Bearer TOKEN`.
//! - **the `Host` check**, against DNS rebinding: a web page on `evil.example` makes its name
//!   resolve to the admin's address, and the browser, taking the admin for `evil.example`,
//!   lets the page's script read its answers. The request then says `Host: evil.example`.
//!   The admin answers only to IP addresses (an address cannot be rebound: its origin *is*
//!   that machine), `localhost` and the names in `[admin] hosts`, whatever the port. An open
//!   admin checks every request, since nothing else stands in the way; one with a token
//!   checks the mutating ones, so that a monitoring system may reach it by any name.
//! - **the `Origin` check**, against cross-site requests: any page may make a browser send a
//!   simple `POST` (a form, or `fetch` in `no-cors` mode) to the admin without asking it
//!   first, and no header of ours can stop it being sent, only answered. Browsers mark such
//!   a request with the page's `Origin`; a mutating request whose `Origin` is not the
//!   admin's own — `http://` and the `Host` it was reached by — is refused. Tools such as
//!   curl send no `Origin` and are not affected.
//!
//! The order matters only for which refusal a request gets when it fails several checks;
//! each check alone refuses it.

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, StatusCode};

use crate::config::{AdminAuth, AdminConfig};

/// Why a request was refused, each with its own status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No `Authorization: Bearer` header: 401.
    NoToken,
    /// A bearer token that is not the admin's: 401.
    WrongToken,
    /// A `Host` (or HTTP/2 `:authority`) the admin does not answer to, or none: 421.
    UnknownHost,
    /// A mutating request from a page on another origin: 403.
    CrossOrigin,
}

impl Refusal {
    /// The status, the `WWW-Authenticate` challenge if any, and the message.
    pub(super) fn answer(self) -> (StatusCode, Option<HeaderValue>, &'static str) {
        match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                Some(HeaderValue::from_static("Bearer realm=\"weir admin\"")),
                "the admin needs a token: send Authorization: Bearer TOKEN \
                 (the token of [admin] token_file or token_env)\n",
            ),
            Refusal::WrongToken => (
                StatusCode::UNAUTHORIZED,
                Some(HeaderValue::from_static(
                    "Bearer realm=\"weir admin\", error=\"invalid_token\"",
                )),
                "the bearer token is not the admin's\n",
            ),
            Refusal::UnknownHost => (
                StatusCode::MISDIRECTED_REQUEST,
                None,
                "the admin does not answer to this Host: reach it by IP address or localhost, \
                 or list the name in [admin] hosts\n",
            ),
            Refusal::CrossOrigin => (
                StatusCode::FORBIDDEN,
                None,
                "refused: a request from a page on another origin may not change the admin\n",
            ),
        }
    }
}

/// Whether `request` may reach the admin's endpoints.
pub(super) fn check<B>(admin: &AdminConfig, request: &Request<B>) -> Result<(), Refusal> {
    // GET, HEAD, OPTIONS and TRACE change nothing; anything else may (`POST /reload`).
    let mutating = !request.method().is_safe();
    let authority = authority(request);
    let token = match &admin.auth {
        AdminAuth::Bearer(token) => Some(token),
        AdminAuth::Open | AdminAuth::OpenByDefault => None,
    };
    if token.is_none() || mutating {
        match &authority {
            Some(authority) if host_allowed(admin, authority.host()) => {}
            _ => return Err(Refusal::UnknownHost),
        }
    }
    if mutating {
        let own = authority.as_ref().map(|a| format!("http://{a}"));
        let foreign = |origin: &HeaderValue| {
            own.as_ref()
                .is_none_or(|own| !origin.as_bytes().eq_ignore_ascii_case(own.as_bytes()))
        };
        if request
            .headers()
            .get_all(header::ORIGIN)
            .iter()
            .any(foreign)
        {
            return Err(Refusal::CrossOrigin);
        }
    }
    if let Some(token) = token {
        let dashboard_page = !mutating && request.uri().path() == "/";
        if !dashboard_page {
            match bearer(request) {
                None => return Err(Refusal::NoToken),
                Some(presented) if !token.matches(presented) => {
                    return Err(Refusal::WrongToken);
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// The authority the client addressed: HTTP/2's `:authority` (in the URI), else `Host`.
fn authority<B>(request: &Request<B>) -> Option<Authority> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.clone());
    }
    let host = request.headers().get(header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// Whether `host` (from an authority: an IPv6 address in brackets) is one the admin answers
/// to.
fn host_allowed(admin: &AdminConfig, host: &str) -> bool {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    unbracketed.parse::<std::net::IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || admin.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case).
fn bearer<B>(request: &Request<B>) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(b"bearer ".len())?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use http::{Method, Request};

    use super::{Refusal, check};
    use crate::config::{AdminAuth, AdminConfig, AdminToken, TokenSource};

    const TOKEN: &str = "0123456789abcdef0123";

    /// A request's method, path and headers, and what the check says of it.
    type Case<'a> = (
        Method,
        &'a str,
        &'a [(&'a str, &'a str)],
        Result<(), Refusal>,
    );

    fn admin(auth: AdminAuth) -> AdminConfig {
        AdminConfig {
            address: "127.0.0.1:9901".parse().expect("address"),
            auth,
            hosts: vec!["admin.internal".into()],
        }
    }

    fn with_token() -> AdminConfig {
        admin(AdminAuth::Bearer(AdminToken::new(
            TokenSource::Env("WEIR_ADMIN_TOKEN".into()),
            TOKEN.as_bytes(),
        )))
    }

    /// `method path` with `headers`, checked against `admin`.
    fn outcome(
        admin: &AdminConfig,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), Refusal> {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        check(admin, &request.body(()).expect("request"))
    }

    #[test]
    fn open_admin() {
        let open = admin(AdminAuth::OpenByDefault);
        let bearer = format!("Bearer {TOKEN}");
        let cases: &[Case<'_>] = &[
            (
                Method::GET,
                "/config",
                &[("host", "127.0.0.1:9901")],
                Ok(()),
            ),
            (
                Method::GET,
                "/config",
                &[("host", "localhost:1234")],
                Ok(()),
            ),
            (Method::GET, "/config", &[("host", "LOCALHOST")], Ok(())),
            (Method::GET, "/config", &[("host", "[::1]:9901")], Ok(())),
            (Method::GET, "/config", &[("host", "10.1.2.3:80")], Ok(())),
            (
                Method::GET,
                "/config",
                &[("host", "admin.internal:9901")],
                Ok(()),
            ),
            // DNS rebinding: the attacker's name, whatever the port.
            (
                Method::GET,
                "/config",
                &[("host", "evil.example:9901")],
                Err(Refusal::UnknownHost),
            ),
            (
                Method::GET,
                "/",
                &[("host", "evil.example")],
                Err(Refusal::UnknownHost),
            ),
            (
                Method::GET,
                "/config",
                &[("host", "localhost.evil.example")],
                Err(Refusal::UnknownHost),
            ),
            (Method::GET, "/config", &[], Err(Refusal::UnknownHost)),
            (
                Method::GET,
                "/config",
                &[("host", "bad host")],
                Err(Refusal::UnknownHost),
            ),
            // HTTP/2 carries the authority in the URI.
            (Method::GET, "http://127.0.0.1:9901/config", &[], Ok(())),
            (
                Method::GET,
                "http://evil.example:9901/config",
                &[],
                Err(Refusal::UnknownHost),
            ),
            // Mutating: same origin, or none (curl), but no other.
            (
                Method::POST,
                "/reload",
                &[("host", "127.0.0.1:9901")],
                Ok(()),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://127.0.0.1:9901"),
                ],
                Ok(()),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "localhost:9901"),
                    ("origin", "HTTP://LOCALHOST:9901"),
                ],
                Ok(()),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://evil.example"),
                ],
                Err(Refusal::CrossOrigin),
            ),
            (
                Method::POST,
                "/reload",
                &[("host", "127.0.0.1:9901"), ("origin", "null")],
                Err(Refusal::CrossOrigin),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://127.0.0.1:9902"),
                ],
                Err(Refusal::CrossOrigin),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "https://127.0.0.1:9901"),
                ],
                Err(Refusal::CrossOrigin),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "localhost:9901"),
                    ("origin", "http://127.0.0.1:9901"),
                ],
                Err(Refusal::CrossOrigin),
            ),
            (
                Method::DELETE,
                "/reload",
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://evil.example"),
                ],
                Err(Refusal::CrossOrigin),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "evil.example:9901"),
                    ("origin", "http://evil.example:9901"),
                ],
                Err(Refusal::UnknownHost),
            ),
            // An open admin ignores a token.
            (
                Method::GET,
                "/config",
                &[("host", "127.0.0.1"), ("authorization", &bearer)],
                Ok(()),
            ),
        ];
        for (method, path, headers, expected) in cases {
            assert_eq!(
                outcome(&open, method.clone(), path, headers),
                *expected,
                "{method} {path} {headers:?}"
            );
        }
        // `open = true` is checked the same way.
        let stated = admin(AdminAuth::Open);
        assert_eq!(
            outcome(&stated, Method::GET, "/config", &[("host", "evil.example")]),
            Err(Refusal::UnknownHost)
        );
    }

    #[test]
    fn admin_with_a_token() {
        let admin = with_token();
        let bearer = format!("Bearer {TOKEN}");
        let lower = format!("bearer {TOKEN}");
        let cases: &[Case<'_>] = &[
            (
                Method::GET,
                "/config",
                &[("host", "127.0.0.1:9901")],
                Err(Refusal::NoToken),
            ),
            (
                Method::GET,
                "/healthz",
                &[("host", "127.0.0.1:9901")],
                Err(Refusal::NoToken),
            ),
            (
                Method::GET,
                "/nope",
                &[("host", "127.0.0.1:9901")],
                Err(Refusal::NoToken),
            ),
            (
                Method::GET,
                "/config",
                &[("authorization", &bearer)],
                Ok(()),
            ),
            (Method::GET, "/config", &[("authorization", &lower)], Ok(())),
            (
                Method::GET,
                "/config",
                &[("authorization", "Bearer 0123456789abcdef012")],
                Err(Refusal::WrongToken),
            ),
            (
                Method::GET,
                "/config",
                &[("authorization", "Bearer")],
                Err(Refusal::NoToken),
            ),
            (
                Method::GET,
                "/config",
                &[("authorization", &format!("Basic {TOKEN}"))],
                Err(Refusal::NoToken),
            ),
            // Reads may come by any name when a token guards them.
            (
                Method::GET,
                "/metrics",
                &[
                    ("host", "weir-admin.monitoring"),
                    ("authorization", &bearer),
                ],
                Ok(()),
            ),
            // The dashboard page holds no data; its requests carry the token.
            (Method::GET, "/", &[("host", "127.0.0.1:9901")], Ok(())),
            (Method::HEAD, "/", &[("host", "127.0.0.1:9901")], Ok(())),
            (
                Method::POST,
                "/",
                &[("host", "127.0.0.1:9901")],
                Err(Refusal::NoToken),
            ),
            // Mutating: the token, the Host and the Origin, each on its own.
            (
                Method::POST,
                "/reload",
                &[("host", "127.0.0.1:9901"), ("authorization", &bearer)],
                Ok(()),
            ),
            (
                Method::POST,
                "/reload",
                &[("host", "127.0.0.1:9901")],
                Err(Refusal::NoToken),
            ),
            (
                Method::POST,
                "/reload",
                &[("host", "evil.example"), ("authorization", &bearer)],
                Err(Refusal::UnknownHost),
            ),
            (
                Method::POST,
                "/reload",
                &[
                    ("host", "127.0.0.1:9901"),
                    ("origin", "http://evil.example"),
                    ("authorization", &bearer),
                ],
                Err(Refusal::CrossOrigin),
            ),
        ];
        for (method, path, headers, expected) in cases {
            assert_eq!(
                outcome(&admin, method.clone(), path, headers),
                *expected,
                "{method} {path} {headers:?}"
            );
        }
    }
}
