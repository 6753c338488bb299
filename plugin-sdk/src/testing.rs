//! Unit-test a filter natively with `cargo test`, through the same conversions weir's calls
//! go through, against a mock host (kv, log, clock, metrics) that is private to the test's
//! thread.
//!
//! ```
//! use weir_plugin::testing::{Harness, TestRequest};
//! use weir_plugin::{Action, Filter, NoConfig, Request};
//!
//! struct Tag;
//!
//! impl Filter for Tag {
//!     type Config = NoConfig;
//!     fn new(_: NoConfig) -> Result<Tag, String> {
//!         Ok(Tag)
//!     }
//!     fn on_request(&self, request: &mut Request) -> Action {
//!         request.set_header("x-tag", "yes");
//!         Action::Continue
//!     }
//! }
//!
//! let tag = Harness::<Tag>::new("").expect("config accepted");
//! let forwarded = tag.request(TestRequest::get("/")).forwarded();
//! assert_eq!(forwarded.header_value("x-tag"), Some("yes"));
//! ```

use std::time::Duration;

use crate::Filter;
use crate::Reply;
use crate::adapter;
use crate::bindings::weir::plugin::types::{
    BodyAction, HeaderOp, LocalResponse, RequestAction, RequestHead, ResponseAction, ResponseHead,
};
use crate::http::{Request, Response};
use crate::log::Level;
use crate::mock;

/// A configured filter, ready to be called like weir would.
#[derive(Debug)]
pub struct Harness<F> {
    filter: F,
}

impl<F: Filter> Harness<F> {
    /// Configures the filter from the body of its `[config]` table, written as in
    /// `NAME.toml` (without the `[config]` line). Resets this thread's mock host.
    pub fn new(config_toml: &str) -> Result<Harness<F>, String> {
        let table: toml::Table = toml::from_str(config_toml).map_err(|e| e.to_string())?;
        let json = serde_json::to_string(&table).map_err(|e| e.to_string())?;
        Harness::from_json(&json)
    }

    /// Configures the filter from the JSON weir would pass. Resets this thread's mock host.
    pub fn from_json(json: &str) -> Result<Harness<F>, String> {
        reset();
        // Metrics are declared while the filter is built, as in weir's `configure`.
        mock::with(|host| host.configuring = true);
        let filter = adapter::configure::<F>(json);
        mock::with(|host| host.configuring = false);
        Ok(Harness { filter: filter? })
    }

    /// Runs `on_request`, as weir would for `request`. The forwarded request carries the
    /// header changes the filter left for the response (`response_changes`), which
    /// [`Harness::response`] applies; what it made of the response cache key is
    /// [`cache_key`] until the next request.
    ///
    /// The forwarded request also carries the method the filter set
    /// ([`Request::set_method`](crate::Request::set_method)) and, in
    /// [`TestRequest::body`], the body it gave ([`Request::set_body`](crate::Request::set_body)),
    /// with `content-length` set and `transfer-encoding` and `content-encoding` removed, as
    /// weir sends them.
    ///
    /// Panics, saying why, if the filter gave a cache key weir refuses (over 1,024 bytes, a
    /// control character, more than 16 parts), a method weir refuses (not an HTTP token,
    /// over 32 bytes, `CONNECT`) or a body weir refuses (over 1 MiB, or not empty on a
    /// `GET`, `HEAD`, `DELETE` or `TRACE`): weir fails such a call (500, or the plugin
    /// skipped if it is `fail_open`).
    #[track_caller]
    pub fn request(&self, request: TestRequest) -> RequestOutcome {
        let head = request.head();
        let view = Request::new(head).with_tls(request.tls.as_deref().cloned());
        mock::with(|host| host.cache_key = Default::default());
        let (action, left) = adapter::on_request(&self.filter, view);
        match action {
            RequestAction::Continue(changes) => {
                let method = left.method.as_deref().unwrap_or(&request.method);
                let checked =
                    mock::rewrite::check(method, left.method.is_some(), left.body.as_deref())
                        .and_then(|()| mock::cache_key::record(left.cache_key));
                if let Err(why) = checked {
                    panic!(
                        "weir would fail this call (500, or the plugin skipped if it is fail_open): {why}"
                    );
                }
                let mut forwarded = request;
                if let Some(method) = left.method {
                    forwarded.method = method;
                }
                if let Some(body) = left.body {
                    forwarded.headers.retain(|(n, _)| {
                        !matches!(
                            n.as_str(),
                            "content-length" | "transfer-encoding" | "content-encoding"
                        )
                    });
                    let bodiless = matches!(
                        forwarded.method.as_str(),
                        "GET" | "HEAD" | "DELETE" | "TRACE"
                    );
                    if !(body.is_empty() && bodiless) {
                        let length = body.len().to_string().into_bytes();
                        forwarded.headers.push(("content-length".into(), length));
                    }
                    forwarded.body = Some(body);
                }
                apply(&mut forwarded.headers, changes.headers);
                forwarded.response_changes.extend(
                    left.response_ops
                        .to_header_ops()
                        .into_iter()
                        .map(HeaderChange::from),
                );
                if let Some(target) = changes.path {
                    let (path, query) = match target.split_once('?') {
                        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                        None => (target, None),
                    };
                    forwarded.path = path;
                    forwarded.query = query;
                }
                RequestOutcome::Forwarded(forwarded)
            }
            RequestAction::Respond(local) => RequestOutcome::Responded(reply(local)),
        }
    }

    /// The response phase for `request` answered with `status` and `headers`, as weir
    /// runs it at this filter's place: the header changes the filter left on `request` in
    /// `on_request` (pass the forwarded request to see them), then `on_response` if the
    /// filter asks for it.
    pub fn response(
        &self,
        request: &TestRequest,
        status: u16,
        headers: &[(&str, &str)],
    ) -> ResponseOutcome {
        let mut headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        apply(
            &mut headers,
            request.response_changes.iter().cloned().map(HeaderOp::from),
        );
        if !self.filter.hooks().on_response {
            return ResponseOutcome::Passed(Reply {
                status,
                headers,
                body: Vec::new(),
            });
        }
        let head = ResponseHead {
            status,
            headers: headers.clone(),
        };
        let request = Request::new(request.head()).with_tls(request.tls.as_deref().cloned());
        match adapter::on_response(&self.filter, &request, Response::new(head)) {
            ResponseAction::Continue(ops) => {
                apply(&mut headers, ops);
                ResponseOutcome::Passed(Reply {
                    status,
                    headers,
                    body: Vec::new(),
                })
            }
            ResponseAction::Respond(local) => ResponseOutcome::Replaced(reply(local)),
        }
    }

    /// Runs `on_request_body` with `body`, as weir would after the request phase. On
    /// [`BodyOutcome::Continued`], the reply holds the request's headers (changes applied,
    /// `content-length` set if the body was replaced) and the body that goes on; its status
    /// is 0.
    pub fn request_body(&self, request: &TestRequest, body: &[u8]) -> BodyOutcome {
        let action = adapter::on_request_body(&self.filter, request.head(), body.to_vec());
        body_outcome(0, request.headers.clone(), body, action)
    }

    /// Runs `on_response_body` for `request` answered with `status`, `headers` and `body`
    /// (and no trailers).
    pub fn response_body(
        &self,
        request: &TestRequest,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> BodyOutcome {
        self.response_body_with_trailers(request, status, headers, body, &[])
    }

    /// Runs `on_response_body` as [`Harness::response_body`] does, for a response that
    /// ended with `trailers` after its body ([`Response::trailer`](crate::Response::trailer)
    /// reads them).
    ///
    /// ```
    /// # use weir_plugin::testing::{Harness, TestRequest};
    /// # use weir_plugin::{Action, Body, Filter, Hooks, NoConfig, Reply, Request, Response};
    /// # struct Status;
    /// # impl Filter for Status {
    /// #     type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Status, String> { Ok(Status) }
    /// #     fn hooks(&self) -> Hooks { Hooks { on_response_body: true, ..Hooks::NONE } }
    /// #     fn on_response_body(&self, _: &Request, response: &mut Response, _: &mut Body) -> Action {
    /// #         match response.trailer("grpc-status") {
    /// #             Some(code) if code != "0" => Reply::new(502).into(),
    /// #             _ => Action::Continue,
    /// #         }
    /// #     }
    /// # }
    /// let harness = Harness::<Status>::new("").expect("config");
    /// let request = TestRequest::new("POST", "/echo.Echo/Unary");
    /// let failed = harness
    ///     .response_body_with_trailers(&request, 200, &[], b"...", &[("grpc-status", "14")])
    ///     .responded();
    /// assert_eq!(failed.status, 502);
    /// ```
    pub fn response_body_with_trailers(
        &self,
        request: &TestRequest,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> BodyOutcome {
        let headers = header_list(headers);
        let head = ResponseHead {
            status,
            headers: headers.clone(),
        };
        mock::with(|host| host.trailers = header_list(trailers));
        let action = adapter::on_response_body(&self.filter, request.head(), head, body.to_vec());
        mock::with(|host| host.trailers.clear());
        body_outcome(status, headers, body, action)
    }

    /// The filter itself.
    pub fn filter(&self) -> &F {
        &self.filter
    }

    /// The hooks the filter asks weir to call, as weir would ask after configuring it.
    pub fn hooks(&self) -> crate::Hooks {
        self.filter.hooks()
    }
}

/// What `on_request` did.
#[derive(Debug, Clone)]
#[must_use]
pub enum RequestOutcome {
    /// The request goes upstream like this (changes applied).
    Forwarded(TestRequest),
    /// The filter answered it.
    Responded(Reply),
}

impl RequestOutcome {
    /// The forwarded request; panics if the filter answered instead.
    #[track_caller]
    pub fn forwarded(self) -> TestRequest {
        match self {
            RequestOutcome::Forwarded(r) => r,
            RequestOutcome::Responded(reply) => {
                panic!("the filter answered {} instead of forwarding", reply.status)
            }
        }
    }

    /// The filter's reply; panics if it forwarded the request instead.
    #[track_caller]
    pub fn reply(self) -> Reply {
        match self {
            RequestOutcome::Responded(reply) => reply,
            RequestOutcome::Forwarded(r) => {
                panic!("the filter forwarded {} instead of answering", r.path)
            }
        }
    }
}

/// What `on_response` did.
#[derive(Debug, Clone)]
#[must_use]
pub enum ResponseOutcome {
    /// The response passes, with these status and headers (changes applied).
    Passed(Reply),
    /// The filter replaced it.
    Replaced(Reply),
}

impl ResponseOutcome {
    /// The response as it goes on, whether passed or replaced.
    pub fn response(self) -> Reply {
        match self {
            ResponseOutcome::Passed(r) | ResponseOutcome::Replaced(r) => r,
        }
    }
}

/// What a body hook did.
#[derive(Debug, Clone)]
#[must_use]
pub enum BodyOutcome {
    /// The message goes on like this: headers and body as weir would send them.
    Continued(Reply),
    /// The filter answered (request body) or replaced the response (response body).
    Responded(Reply),
}

impl BodyOutcome {
    /// The message as it goes on; panics if the filter answered instead.
    #[track_caller]
    pub fn continued(self) -> Reply {
        match self {
            BodyOutcome::Continued(r) => r,
            BodyOutcome::Responded(reply) => {
                panic!("the filter answered {} instead of going on", reply.status)
            }
        }
    }

    /// The filter's answer; panics if it went on instead.
    #[track_caller]
    pub fn responded(self) -> Reply {
        match self {
            BodyOutcome::Responded(r) => r,
            BodyOutcome::Continued(_) => panic!("the filter went on instead of answering"),
        }
    }
}

fn body_outcome(
    status: u16,
    mut headers: Vec<(String, Vec<u8>)>,
    body: &[u8],
    action: BodyAction,
) -> BodyOutcome {
    match action {
        BodyAction::Continue(changes) => {
            apply(&mut headers, changes.headers);
            let body = match changes.body {
                Some(new) => {
                    headers.retain(|(n, _)| n != "content-length");
                    headers.push(("content-length".into(), new.len().to_string().into_bytes()));
                    new
                }
                None => body.to_vec(),
            };
            BodyOutcome::Continued(Reply {
                status,
                headers,
                body,
            })
        }
        BodyAction::Respond(local) => BodyOutcome::Responded(reply(local)),
    }
}

/// Headers as the WIT records carry them, names in lower case.
fn header_list(headers: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

/// A request to feed a filter; built like `TestRequest::get("/path?q=1").header("a", "b")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRequest {
    /// The method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
    /// The authority (`Host`).
    pub authority: Option<String>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's address.
    pub client_addr: String,
    /// The matched route's name.
    pub route: String,
    /// The request id.
    pub request_id: String,
    /// The client connection's TLS; `None` (plain HTTP) unless set with [`TestRequest::tls`].
    pub tls: Option<Box<crate::Tls>>,
    /// The header changes the filter left for the response, in order (filled in on the
    /// request [`Harness::request`] forwards).
    pub response_changes: Vec<HeaderChange>,
    /// The body the filter gave the request instead of the client's
    /// ([`Request::set_body`](crate::Request::set_body)), on the request [`Harness::request`]
    /// forwards; `None` if it gave none.
    pub body: Option<Vec<u8>>,
}

/// One header change, as a filter makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    /// Replace every value of the header with this one.
    Set(String, Vec<u8>),
    /// Add a value.
    Append(String, Vec<u8>),
    /// Remove every value.
    Remove(String),
}

impl From<HeaderOp> for HeaderChange {
    fn from(op: HeaderOp) -> HeaderChange {
        match op {
            HeaderOp::Set((name, value)) => HeaderChange::Set(name, value),
            HeaderOp::Append((name, value)) => HeaderChange::Append(name, value),
            HeaderOp::Remove(name) => HeaderChange::Remove(name),
        }
    }
}

impl From<HeaderChange> for HeaderOp {
    fn from(change: HeaderChange) -> HeaderOp {
        match change {
            HeaderChange::Set(name, value) => HeaderOp::Set((name, value)),
            HeaderChange::Append(name, value) => HeaderOp::Append((name, value)),
            HeaderChange::Remove(name) => HeaderOp::Remove(name),
        }
    }
}

impl TestRequest {
    /// A request with `method` for `target` (path and optional `?query`).
    pub fn new(method: &str, target: &str) -> TestRequest {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        TestRequest {
            method: method.to_owned(),
            path,
            query,
            authority: Some("example.test".into()),
            headers: Vec::new(),
            client_addr: "127.0.0.1:50000".into(),
            route: "default".into(),
            request_id: "test-request".into(),
            tls: None,
            response_changes: Vec::new(),
            body: None,
        }
    }

    /// The request as if the client had connected over TLS: `version` (`TLSv1.3`), the
    /// name it asked for, and the subject of a client certificate weir verified.
    pub fn tls(
        mut self,
        version: &str,
        server_name: Option<&str>,
        client_subject: Option<&str>,
    ) -> TestRequest {
        self.tls = Some(Box::new(crate::Tls {
            version: version.to_owned(),
            server_name: server_name.map(str::to_owned),
            client_subject: client_subject.map(str::to_owned),
        }));
        self
    }

    /// A `GET` for `target`.
    pub fn get(target: &str) -> TestRequest {
        TestRequest::new("GET", target)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Sets the client address.
    pub fn client(mut self, addr: &str) -> TestRequest {
        self.client_addr = addr.to_owned();
        self
    }

    /// Sets the route name.
    pub fn route(mut self, route: &str) -> TestRequest {
        self.route = route.to_owned();
        self
    }

    /// The first value of header `name` (any case) as text.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn head(&self) -> RequestHead {
        RequestHead {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            authority: self.authority.clone(),
            headers: self.headers.clone(),
            client_address: self.client_addr.clone(),
            route: self.route.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// Applies header changes the way weir does: set replaces every value, append adds one,
/// remove drops all.
fn apply(headers: &mut Vec<(String, Vec<u8>)>, ops: impl IntoIterator<Item = HeaderOp>) {
    for op in ops {
        match op {
            HeaderOp::Set((name, value)) => {
                headers.retain(|(n, _)| *n != name);
                headers.push((name, value));
            }
            HeaderOp::Append((name, value)) => headers.push((name, value)),
            HeaderOp::Remove(name) => headers.retain(|(n, _)| *n != name),
        }
    }
}

fn reply(local: LocalResponse) -> Reply {
    Reply {
        status: local.status,
        headers: local.headers,
        body: local.body,
    }
}

/// Clears this thread's mock host: kv, logs, clock (back to the real time).
pub fn reset() {
    mock::with(|host| *host = mock::MockHost::default());
}

/// Moves the mock clock forward, so kv entries with a TTL expire.
pub fn advance(by: Duration) {
    mock::with(|host| host.now += by);
}

/// How many `kv` operations the filter made on this thread since the last reset. In weir
/// each one is a call out of the sandbox, so this is the number to keep low on a hot path.
pub fn kv_calls() -> usize {
    mock::with(|host| host.kv_calls)
}

/// Makes every `kv` operation on this thread fail as the host's do when the store is down
/// (`KvError::Unavailable(why)`), until `None` or the next reset: for testing what a filter
/// does without its store (a Redis outage in weir).
pub fn fail_kv(why: Option<&str>) {
    mock::with(|host| host.kv_down = why.map(str::to_owned));
}

/// Gives this thread's mock `kv` a `max_keys` quota, as `kv = { max_keys = N }` in
/// `NAME.toml` gives weir's: a write that would create a key past `max` live ones fails as
/// weir's does (`KvError::Invalid`, its text starting `quota:`), until `None` or the next
/// reset. For testing what a filter does when its namespace is full.
pub fn kv_max_keys(max: Option<usize>) {
    mock::with(|host| host.kv_max_keys = max);
}

/// Answers the filter's `outbound` calls to `cluster` with `method` and `path` (a path
/// without a query matches any query) with this response, until the next reset; a later
/// stub for the same call replaces it. A call no stub answers fails as `Unavailable`.
pub fn stub_outbound(
    cluster: &str,
    method: &str,
    path: &str,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let answer = crate::outbound::Answer {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    stub(cluster, method, path, Ok(answer));
}

/// Makes the filter's `outbound` calls to `cluster` with `method` and `path` fail with
/// `error` (a timeout, an unreachable service), until the next reset.
pub fn fail_outbound(
    cluster: &str,
    method: &str,
    path: &str,
    error: crate::outbound::OutboundError,
) {
    stub(cluster, method, path, Err(error));
}

fn stub(
    cluster: &str,
    method: &str,
    path: &str,
    answer: Result<crate::outbound::Answer, crate::outbound::OutboundError>,
) {
    mock::with(|host| {
        host.outbound_stubs.push(mock::outbound::Stub {
            cluster: cluster.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            answer,
        })
    });
}

/// The `outbound` calls the filter made on this thread since the last reset, in order.
pub fn outbound_calls() -> Vec<crate::outbound::Call> {
    mock::with(|host| host.outbound_calls.clone())
}

/// What the filter made of the response cache key of the last request [`Harness::request`]
/// ran on this thread ([`Request::set_cache_key`](crate::Request::set_cache_key),
/// [`Request::add_cache_key`](crate::Request::add_cache_key)), as weir would keep it for
/// the route's cache; empty if it changed nothing or answered the request itself.
///
/// ```
/// # use weir_plugin::testing::{self, CacheKey};
/// # fn check() {
/// assert_eq!(
///     testing::cache_key(),
///     CacheKey { replaced: None, added: vec!["tenant-a".into()] }
/// );
/// assert_eq!(
///     testing::cache_key().key("http://example.test/a"),
///     "http://example.test/a tenant-a"
/// );
/// # }
/// ```
pub fn cache_key() -> CacheKey {
    mock::with(|host| CacheKey {
        replaced: host.cache_key.replaced.clone(),
        added: host.cache_key.added.clone(),
    })
}

/// A request's response cache key as a filter left it ([`cache_key`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheKey {
    /// The key instead of weir's, if the filter set one.
    pub replaced: Option<String>,
    /// The parts added after the key, in order.
    pub added: Vec<String>,
}

impl CacheKey {
    /// The whole key the route's cache would use, given weir's own key for the request
    /// (`scheme://host/path?query`): the key the filter set, or `own`, then each part after
    /// a space.
    pub fn key(&self, own: &str) -> String {
        let mut key = self.replaced.as_deref().unwrap_or(own).to_owned();
        for part in &self.added {
            key.push(' ');
            key.push_str(part);
        }
        key
    }
}

/// Every line logged on this thread since the last reset.
pub fn logs() -> Vec<(Level, String)> {
    mock::with(|host| host.logs.clone())
}

/// Sets the level below which the mock log drops lines (default: everything is kept).
pub fn set_log_level(level: Level) {
    mock::with(|host| host.level = level);
}

/// The value of a metric's series as weir would export it after the calls so far on this
/// thread ([`metrics`](crate::metrics)): a counter by its exported name (with `_total`), a
/// gauge by its name, a histogram's `NAME_count` and `NAME_sum`; `labels` are every label's
/// name and value. `None` if the series was never updated.
///
/// ```
/// # use weir_plugin::testing;
/// # fn check() {
/// assert_eq!(testing::metric("refusals_total", &[("limit", "10/1s")]), Some(2.0));
/// # }
/// ```
pub fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    mock::metrics::value(name, labels)
}

/// Metric updates on this thread that weir would have ignored (and counted in
/// `weir_plugin_metric_errors_total`): an unknown handle, the wrong number of label values,
/// a histogram value that is not finite; and those past 1,000 series, which go to the
/// `_overflow` series.
pub fn metric_errors() -> usize {
    mock::with(|host| host.metric_errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Body, Hooks, NoConfig, Response};

    /// Keys the cache per tenant, drops `utm` from the key, answers `/local` itself, and gives
    /// a part weir refuses when asked to.
    struct Keyed;

    impl Filter for Keyed {
        type Config = NoConfig;

        fn new(_: NoConfig) -> Result<Keyed, String> {
            Ok(Keyed)
        }

        fn hooks(&self) -> Hooks {
            Hooks {
                on_request_body: true,
                ..Hooks::REQUEST
            }
        }

        fn on_request(&self, request: &mut Request) -> Action {
            if let Some(tenant) = request.header("x-tenant").map(str::to_owned) {
                request.add_cache_key(&tenant);
            }
            if request.query() == Some("utm=x") {
                request.set_cache_key("first");
                request.set_cache_key(&format!("http://example.test{}", request.path()));
            }
            if let Some(bad) = request.header("x-bad") {
                let part = match bad {
                    "long" => "p".repeat(1025),
                    "newline" => "a\nb".to_owned(),
                    _ => String::new(),
                };
                request.add_cache_key(&part);
            }
            if request.path() == "/local" {
                return Reply::new(204).into();
            }
            Action::Continue
        }

        fn on_request_body(&self, request: &mut Request, _body: &mut Body) -> Action {
            request.add_cache_key("too-late");
            Action::Continue
        }
    }

    fn keyed() -> Harness<Keyed> {
        Harness::new("").expect("config")
    }

    #[test]
    fn cache_key_changes_are_recorded_per_request() {
        let filter = keyed();
        let _ = filter
            .request(TestRequest::get("/a?utm=x").header("x-tenant", "t1"))
            .forwarded();
        let key = cache_key();
        assert_eq!(
            key,
            CacheKey {
                replaced: Some("http://example.test/a".into()),
                added: vec!["t1".into()],
            }
        );
        assert_eq!(
            key.key("http://example.test/a?utm=x"),
            "http://example.test/a t1"
        );

        // The next request starts from nothing.
        let _ = filter.request(TestRequest::get("/b")).forwarded();
        assert_eq!(cache_key(), CacheKey::default());
        assert_eq!(
            cache_key().key("http://example.test/b"),
            "http://example.test/b"
        );

        // A filter that answers leaves no key: no cache is looked up.
        let _ = filter
            .request(TestRequest::get("/local").header("x-tenant", "t1"))
            .reply();
        assert_eq!(cache_key(), CacheKey::default());
    }

    #[test]
    #[should_panic(expected = "add-cache-key: the part is 1025 bytes (at most 1024)")]
    fn a_part_weir_refuses_fails_the_call() {
        let _ = keyed().request(TestRequest::get("/").header("x-bad", "long"));
    }

    #[test]
    #[should_panic(expected = "add-cache-key: the part has a control character at byte 1")]
    fn a_control_character_fails_the_call() {
        let _ = keyed().request(TestRequest::get("/").header("x-bad", "newline"));
    }

    /// Turns `GET /search?q=...` into a POST with a JSON body, gives a body without changing
    /// the method for `/lazy`, and a method or body weir refuses when asked to; reads its
    /// trailers in the response body hook.
    struct Rewriting;

    impl Filter for Rewriting {
        type Config = NoConfig;

        fn new(_: NoConfig) -> Result<Rewriting, String> {
            Ok(Rewriting)
        }

        fn hooks(&self) -> Hooks {
            Hooks {
                on_request_body: true,
                on_response_body: true,
                ..Hooks::REQUEST
            }
        }

        fn on_request(&self, request: &mut Request) -> Action {
            match request.path() {
                "/search" => {
                    let term = request.query_param("q").unwrap_or_default();
                    request.set_body(format!("{{\"q\":\"{term}\"}}"));
                    request.set_method("POST");
                    // Reads see the new method at once.
                    let seen = request.method().to_owned();
                    request.set_header("x-seen-method", seen);
                    request.set_header("content-type", "application/json");
                }
                "/lazy" => request.set_body("no method"),
                "/empty" => request.set_body(""),
                "/bad-method" => request.set_method("GE T"),
                "/connect" => request.set_method("CONNECT"),
                "/huge" => {
                    request.set_method("PUT");
                    request.set_body(vec![b'x'; (1 << 20) + 1]);
                }
                _ => {}
            }
            Action::Continue
        }

        fn on_request_body(&self, request: &mut Request, _body: &mut Body) -> Action {
            request.set_method("PATCH");
            Action::Continue
        }

        fn on_response_body(&self, _: &Request, response: &mut Response, _: &mut Body) -> Action {
            let seen: Vec<String> = response
                .trailers()
                .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v)))
                .collect();
            response.set_header("x-trailers", seen.join(","));
            match response.trailer("Grpc-Status") {
                Some(code) if code != "0" => Reply::new(502).into(),
                _ => Action::Continue,
            }
        }
    }

    fn rewriting() -> Harness<Rewriting> {
        Harness::new("").expect("config")
    }

    #[test]
    fn a_method_and_a_body_set_in_on_request_go_upstream() {
        let forwarded = rewriting()
            .request(
                TestRequest::get("/search?q=weir")
                    .header("content-length", "0")
                    .header("content-encoding", "gzip"),
            )
            .forwarded();
        assert_eq!(forwarded.method, "POST");
        assert_eq!(forwarded.body.as_deref(), Some(&br#"{"q":"weir"}"#[..]));
        assert_eq!(forwarded.header_value("x-seen-method"), Some("POST"));
        assert_eq!(forwarded.header_value("content-length"), Some("12"));
        assert_eq!(forwarded.header_value("content-encoding"), None);
        assert_eq!(
            forwarded.header_value("content-type"),
            Some("application/json")
        );
        // An empty body on a GET sends none.
        let empty = rewriting().request(TestRequest::get("/empty")).forwarded();
        assert_eq!(empty.body.as_deref(), Some(&b""[..]));
        assert_eq!(empty.header_value("content-length"), None);
        // A request the filter leaves alone has no body of the filter's.
        let other = rewriting().request(TestRequest::get("/other")).forwarded();
        assert_eq!((other.method.as_str(), other.body), ("GET", None));
    }

    #[test]
    #[should_panic(expected = "set-body: a GET request's content has no meaning")]
    fn a_body_on_a_get_fails_the_call() {
        let _ = rewriting().request(TestRequest::get("/lazy"));
    }

    #[test]
    fn a_body_on_a_method_with_content_is_sent() {
        let forwarded = rewriting()
            .request(TestRequest::new("POST", "/lazy"))
            .forwarded();
        assert_eq!(forwarded.body.as_deref(), Some(&b"no method"[..]));
    }

    #[test]
    #[should_panic(expected = "set-method: \"GE T\" is not an HTTP method")]
    fn a_method_that_is_not_a_token_fails_the_call() {
        let _ = rewriting().request(TestRequest::get("/bad-method"));
    }

    #[test]
    #[should_panic(expected = "set-method: CONNECT opens a tunnel")]
    fn connect_fails_the_call() {
        let _ = rewriting().request(TestRequest::get("/connect"));
    }

    #[test]
    #[should_panic(expected = "set-body: the body is 1048577 bytes (at most 1048576)")]
    fn a_body_over_a_mebibyte_fails_the_call() {
        let _ = rewriting().request(TestRequest::get("/huge"));
    }

    #[test]
    fn a_method_set_in_a_body_hook_is_dropped_with_a_warning() {
        let _ = rewriting()
            .request_body(&TestRequest::new("POST", "/"), b"x")
            .continued();
        assert!(
            logs()
                .iter()
                .any(|(level, line)| *level == Level::Warn && line.contains("set_method")),
            "{:?}",
            logs()
        );
    }

    #[test]
    fn the_response_body_hook_reads_the_trailers() {
        let harness = rewriting();
        let request = TestRequest::new("POST", "/");
        let failed = harness
            .response_body_with_trailers(
                &request,
                200,
                &[],
                b"message",
                &[("grpc-status", "14"), ("grpc-message", "down")],
            )
            .responded();
        assert_eq!(failed.status, 502);
        let ok = harness
            .response_body_with_trailers(&request, 200, &[], b"m", &[("grpc-status", "0")])
            .continued();
        assert_eq!(ok.header_value("x-trailers"), Some("grpc-status=0"));
        // None after the call, and none for a response without.
        let none = harness.response_body(&request, 200, &[], b"m").continued();
        assert_eq!(none.header_value("x-trailers"), Some(""));
    }

    #[test]
    fn changes_made_in_the_body_hook_are_dropped_with_a_warning() {
        let filter = keyed();
        let request = TestRequest::get("/");
        let _ = filter.request_body(&request, b"body").continued();
        assert!(
            logs()
                .iter()
                .any(|(level, line)| *level == Level::Warn && line.contains("cache key")),
            "{:?}",
            logs()
        );
    }
}
