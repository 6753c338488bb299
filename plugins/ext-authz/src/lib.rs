//! `ext-authz`: asks an authorization service about each request, as Envoy's `ext_authz`
//! (HTTP service) does, with an `outbound` request (weir:plugin 0.3.4) to a cluster the
//! plugin's `NAME.toml` grants. See the README for every key.
//!
//! The check request has the client request's method, `path_prefix` followed by its path
//! and query, the request headers named in `headers` (an allowlist: nothing else of the
//! client's reaches the service) and no body. The service's answer decides:
//! - **2xx**: the request goes on, with the answer's headers named in `upstream_headers`
//!   set on it (an identity the service vouches for, such as `x-user-id`); others are
//!   dropped.
//! - **anything else**: that answer is the client's response — its status, its headers but
//!   hop-by-hop ones, and its body — so a 401 with `WWW-Authenticate` or a 302 to a login
//!   page reaches the client as the service wrote it.
//! - **no answer** (unreachable, or not within `timeout`): `failure_mode_allow = true` lets
//!   the request through unchecked; otherwise the client gets `status_on_error` (403 by
//!   default, as Envoy). Logged when failures start and when the service answers again, not
//!   per request.

#![forbid(unsafe_code)]

use std::cell::Cell;
use std::time::Duration;

use weir_plugin::outbound::{Call, OutboundError};
use weir_plugin::{Action, Filter, Hooks, Reply, Request};

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The authorization service's cluster (also listed in `NAME.toml`'s `clusters`).
    pub cluster: String,
    /// Put before the request's path in the check request.
    #[serde(default)]
    pub path_prefix: String,
    /// Request headers sent to the service (any case); nothing else of the request is.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// Headers of a 2xx answer set on the request sent upstream.
    #[serde(default)]
    pub upstream_headers: Vec<String>,
    /// How long the check may take, like `200ms`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Let requests through unchecked when the service does not answer.
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// The status a request gets when the service does not answer (and
    /// `failure_mode_allow` is off).
    #[serde(default = "default_status_on_error")]
    pub status_on_error: u16,
}

fn default_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_timeout() -> String {
    "200ms".into()
}
fn default_status_on_error() -> u16 {
    403
}

/// Headers of the service's answer never passed to the client (RFC 9110 §7.6.1, and the
/// framing weir sets itself).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-request-id",
];

/// The filter.
#[derive(Debug)]
pub struct ExtAuthz {
    cluster: String,
    path_prefix: String,
    headers: Vec<String>,
    upstream_headers: Vec<String>,
    timeout: Duration,
    failure_mode_allow: bool,
    status_on_error: u16,
    /// Whether the last check got no answer (logged on the change, not per request).
    failing: Cell<bool>,
}

impl Filter for ExtAuthz {
    type Config = Config;

    fn new(config: Config) -> Result<ExtAuthz, String> {
        if config.cluster.is_empty() {
            return Err("cluster is empty".into());
        }
        if !config.path_prefix.is_empty() && !config.path_prefix.starts_with('/') {
            return Err(format!(
                "path_prefix {:?} must start with /",
                config.path_prefix
            ));
        }
        let timeout = humantime::parse_duration(&config.timeout)
            .map_err(|e| format!("timeout {:?}: {e}", config.timeout))?;
        if timeout.is_zero() {
            return Err("timeout must be more than 0".into());
        }
        // The answer weir gives in the service's place: a final status, as every local
        // reply must be (weir refuses a 1xx one, which would turn each refusal into a 500).
        if !(200..=599).contains(&config.status_on_error) {
            return Err(format!(
                "status_on_error {} is not a final HTTP status (200 to 599)",
                config.status_on_error
            ));
        }
        let lower =
            |names: Vec<String>| names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        Ok(ExtAuthz {
            cluster: config.cluster,
            path_prefix: config.path_prefix.trim_end_matches('/').to_owned(),
            headers: lower(config.headers),
            upstream_headers: lower(config.upstream_headers),
            timeout,
            failure_mode_allow: config.failure_mode_allow,
            status_on_error: config.status_on_error,
            failing: Cell::new(false),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let mut target = String::with_capacity(self.path_prefix.len() + request.path().len());
        target.push_str(&self.path_prefix);
        target.push_str(request.path());
        if let Some(query) = request.query() {
            target.push('?');
            target.push_str(query);
        }
        let mut call = Call::new(request.method(), &self.cluster, &target).timeout(self.timeout);
        // Every value of an allowlisted header, as the app will get them all (HTTP/2
        // clients send each cookie as a field of its own).
        for (name, value) in request.headers() {
            if self
                .headers
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
            {
                call = call.header(name, value);
            }
        }
        let answer = match call.send() {
            Ok(answer) => answer,
            Err(e) => return self.no_answer(request, &e),
        };
        if self.failing.replace(false) {
            weir_plugin::log::info!("ext-authz: {} answers again", self.cluster);
        }
        if (200..300).contains(&answer.status) {
            for name in &self.upstream_headers {
                match answer.headers.iter().find(|(n, _)| n == name) {
                    Some((_, value)) => request.set_header(name, value),
                    // Never the client's own: only what the service vouches for goes on.
                    None => request.remove_header(name),
                }
            }
            return Action::Continue;
        }
        let mut reply = Reply::new(answer.status).body(answer.body);
        for (name, value) in &answer.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                reply = reply.header(name, value);
            }
        }
        reply.into()
    }
}

impl ExtAuthz {
    /// The service gave no answer: let the request through or refuse it, as configured. A
    /// request let through carries none of `upstream_headers`: only the service vouches for
    /// those, and it said nothing.
    fn no_answer(&self, request: &mut Request, error: &OutboundError) -> Action {
        if !self.failing.replace(true) {
            let outcome = if self.failure_mode_allow {
                "requests pass unchecked (failure_mode_allow)".to_owned()
            } else {
                format!("requests get {}", self.status_on_error)
            };
            weir_plugin::log::warn!(
                "ext-authz: no answer from {}: {error}; {outcome} until it answers",
                self.cluster
            );
        }
        if self.failure_mode_allow {
            for name in &self.upstream_headers {
                request.remove_header(name);
            }
            return Action::Continue;
        }
        Reply::json(
            self.status_on_error,
            &serde_json::json!({ "message": "authorization service unavailable" }),
        )
        .into()
    }
}

weir_plugin::export_filter!(ExtAuthz);

#[cfg(test)]
mod tests {
    use weir_plugin::outbound::OutboundError;
    use weir_plugin::testing::{self, Harness, TestRequest};

    use super::ExtAuthz;

    fn authz(extra: &str) -> Harness<ExtAuthz> {
        let config = format!(
            "cluster = \"authz\"\npath_prefix = \"/check\"\nupstream_headers = [\"x-user-id\"]\n{extra}"
        );
        Harness::new(&config).expect("valid config")
    }

    #[test]
    fn a_2xx_lets_the_request_through_with_the_headers_the_service_vouches_for() {
        let authz = authz("");
        testing::stub_outbound(
            "authz",
            "GET",
            "/check/orders/7",
            200,
            &[("x-user-id", "alice"), ("x-other", "dropped")],
            b"",
        );
        let request = TestRequest::get("/orders/7?full=1")
            .header("authorization", "Bearer t")
            .header("x-user-id", "mallory")
            .header("x-secret", "not for the service");
        let forwarded = authz.request(request).forwarded();
        assert_eq!(forwarded.header_value("x-user-id"), Some("alice"));
        assert_eq!(forwarded.header_value("x-other"), None);
        let calls = testing::outbound_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].path, "/check/orders/7?full=1");
        assert_eq!(calls[0].method, "GET");
        let sent: Vec<&str> = calls[0].headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            sent,
            ["authorization"],
            "only the allowlisted headers go to the service"
        );
    }

    #[test]
    fn anything_else_is_the_answer_as_the_service_wrote_it() {
        let authz = authz("");
        testing::stub_outbound(
            "authz",
            "POST",
            "/check/pay",
            401,
            &[
                ("www-authenticate", "Bearer realm=\"pay\""),
                ("connection", "close"),
            ],
            b"no",
        );
        let reply = authz.request(TestRequest::new("POST", "/pay")).reply();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header_value("www-authenticate"),
            Some("Bearer realm=\"pay\"")
        );
        assert_eq!(reply.header_value("connection"), None);
        assert_eq!(reply.body, b"no");
    }

    #[test]
    fn no_answer_refuses_or_allows_as_configured_and_is_logged_once() {
        for (extra, status) in [
            ("", Some(403)),
            ("failure_mode_allow = true", None),
            ("status_on_error = 503", Some(503)),
        ] {
            let authz = authz(extra);
            testing::fail_outbound("authz", "GET", "/check/x", OutboundError::Timeout);
            for _ in 0..3 {
                let outcome = authz.request(TestRequest::get("/x"));
                match status {
                    Some(status) => assert_eq!(outcome.reply().status, status, "{extra}"),
                    None => {
                        outcome.forwarded();
                    }
                }
            }
            let lines = testing::logs()
                .iter()
                .filter(|(_, line)| line.contains("no answer from authz"))
                .count();
            assert_eq!(lines, 1, "{extra}");
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        for (config, why) in [
            ("cluster = \"\"", "cluster is empty"),
            (
                "cluster = \"a\"\npath_prefix = \"check\"",
                "must start with /",
            ),
            ("cluster = \"a\"\ntimeout = \"soon\"", "timeout"),
            (
                "cluster = \"a\"\nstatus_on_error = 42",
                "not a final HTTP status",
            ),
            (
                "cluster = \"a\"\nstatus_on_error = 101",
                "not a final HTTP status",
            ),
        ] {
            let error = Harness::<ExtAuthz>::new(config).expect_err(config);
            assert!(error.contains(why), "{config}: {error}");
        }
    }
}
