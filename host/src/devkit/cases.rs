//! `weir plugin test`: runs one plugin against a case file of recorded requests, with a mock
//! host around it, and reports every decision that differs from what the case expects.
//!
//! The plugin runs exactly as in the proxy — the same runtime, the same chain code that
//! checks and applies its changes — as a chain of one. What the proxy would get from the
//! outside world comes from the case file instead: the upstream's response, the responses
//! of a handler's outgoing calls (`[[outbound]]`), the wall clock (`now`) and `kv` entries
//! present before the first case. Nothing leaves the process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use crate::config::PluginLimits;
use crate::plugin::chain::{BodyStep, Chain, ChainError, RequestStep};
use crate::plugin::handler::{HandlerBody, Outbound, OutboundBody, OutboundError};
use crate::plugin::view::RequestView;
use crate::plugin::{Handler, ManualClock, Plugin, PluginRuntime, PluginSource};

/// The deadline of a plugin whose `[plugin]` sets none.
const TEST_DEADLINE: &str = "5s";

/// A case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// The plugin's settings, as in `NAME.toml`, plus the mock host's starting state.
    #[serde(default)]
    plugin: PluginSection,
    /// Answers to a handler's outgoing requests, for every case.
    #[serde(default)]
    outbound: Vec<Stub>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

/// `[plugin]`: `NAME.toml`'s keys (`config`, `max_body_bytes`, `clusters`, …), plus `now` and
/// `kv`.
#[derive(Debug, Default, Deserialize)]
struct PluginSection {
    /// The wall clock the plugin sees (RFC 3339); the real time if absent.
    now: Option<String>,
    /// `kv` entries in the plugin's namespace before the first case.
    #[serde(default)]
    kv: BTreeMap<String, String>,
    /// Everything else is `NAME.toml`.
    #[serde(flatten)]
    settings: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The wall clock for this case and the ones after it.
    now: Option<String>,
    #[serde(default)]
    request: RequestSpec,
    /// What the upstream answers, if the request gets that far.
    #[serde(default)]
    upstream: Message,
    /// Answers to a handler's outgoing requests, tried before the file's `[[outbound]]`.
    #[serde(default)]
    outbound: Vec<Stub>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RequestSpec {
    method: String,
    /// The request target: path and optional `?query`.
    path: String,
    headers: Headers,
    body: String,
    /// The client's `ip:port`.
    client: String,
    /// The matched route's name.
    route: String,
}

impl Default for RequestSpec {
    fn default() -> RequestSpec {
        RequestSpec {
            method: "GET".into(),
            path: "/".into(),
            headers: Headers::new(),
            body: String::new(),
            client: "127.0.0.1:40000".into(),
            route: "test".into(),
        }
    }
}

/// A response: the upstream's, or a stubbed outgoing call's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Message {
    status: u16,
    headers: Headers,
    body: String,
}

impl Default for Message {
    fn default() -> Message {
        Message {
            status: 200,
            headers: Headers::new(),
            body: String::new(),
        }
    }
}

/// A stubbed answer to a handler's outgoing request to `cluster` (and `path`, if given).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stub {
    cluster: String,
    /// The path and query it must ask for; any if absent.
    path: Option<String>,
    #[serde(flatten)]
    response: Message,
}

/// Header values by name; a list means the header repeats.
type Headers = BTreeMap<String, Values>;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Values {
    One(String),
    Many(Vec<String>),
}

impl Values {
    fn as_slice(&self) -> &[String] {
        match self {
            Values::One(v) => std::slice::from_ref(v),
            Values::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The status the client gets.
    status: Option<u16>,
    /// Response headers the client gets, with these exact values.
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    headers_absent: Vec<String>,
    /// The response body, exactly.
    body: Option<String>,
    /// The response body contains this.
    body_contains: Option<String>,
    /// The response body is JSON equal to this.
    body_json: Option<toml::Value>,
    /// `false`: the request must not reach the upstream; a table: it must, looking like this.
    forwarded: Option<Forwarded>,
    /// `kv` entries in the plugin's namespace after the case.
    #[serde(default)]
    kv: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Forwarded {
    Flag(bool),
    Like(ForwardedRequest),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardedRequest {
    /// Path and query as sent upstream.
    path: Option<String>,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    headers_absent: Vec<String>,
    body: Option<String>,
    body_json: Option<toml::Value>,
}

/// What happened to one request.
#[derive(Debug)]
struct Outcome {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    /// The request as it reached the upstream, if it did.
    forwarded: Option<(String, HeaderMap, Bytes)>,
    /// Why the proxy would have answered with an error, if it would.
    error: Option<String>,
    /// A handler's outgoing requests: `cluster path`.
    outbound_calls: Vec<String>,
}

/// Runs every case of `case_file` against `plugin_file`, writing a report to `out`; returns
/// whether every case passed. Fails if either file cannot be used or the plugin does not
/// load.
pub async fn run(plugin_file: &Path, case_file: &Path, out: &mut String) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(case_file)
        .with_context(|| format!("cannot read {}", case_file.display()))?;
    let cases: CaseFile =
        toml::from_str(&text).with_context(|| format!("{}", case_file.display()))?;
    if cases.cases.is_empty() {
        bail!("{}: no [[case]] to run", case_file.display());
    }
    let wasm = std::fs::read(plugin_file)
        .with_context(|| format!("cannot read {}", plugin_file.display()))?;

    let start = match &cases.plugin.now {
        Some(now) => parse_time(now).context("[plugin] now")?,
        None => SystemTime::now(),
    };
    let clock = Arc::new(ManualClock::new(start));
    // The proxy's compile cache, so a second run starts at once.
    let cache = crate::config::default_cache_dir();
    let mut runtime = PluginRuntime::new(cache.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e:#}"))?;
    runtime.use_clock(clock.clone());
    // Cases check decisions, not speed: without a `deadline` of its own, a plugin gets one
    // that a busy machine's scheduling cannot trip (it still stops a runaway loop).
    let mut settings = cases.plugin.settings.clone();
    settings
        .entry("deadline")
        .or_insert_with(|| toml::Value::String(TEST_DEADLINE.into()));
    let settings = toml::to_string(&settings).context("[plugin]")?;
    let source = PluginSource {
        file: plugin_file.to_owned(),
        wasm,
        settings: Some((case_file.to_owned(), settings)),
    };
    let plugin = runtime.load(source, &PluginLimits::default()).await?;
    let name = plugin.info().name.clone();
    for (key, value) in &cases.plugin.kv {
        runtime.kv_set(&name, key, value.clone().into_bytes());
    }
    let kind = match &plugin {
        Plugin::Handler(_) => "handler",
        Plugin::Filter(_) => "filter",
    };
    let _ = writeln!(
        out,
        "{}: {kind} ({}), {} case(s) from {}",
        plugin_file.display(),
        plugin.info().contract,
        cases.cases.len(),
        case_file.display()
    );

    let chain = match &plugin {
        Plugin::Filter(filter) => Chain::new(vec![filter.clone()]),
        Plugin::Handler(_) => Chain::default(),
    };
    let (mut passed, mut failed) = (0, 0);
    for (index, case) in cases.cases.iter().enumerate() {
        if let Some(now) = &case.now {
            clock.set(parse_time(now).with_context(|| format!("case {:?}: now", case.name))?);
        }
        let outcome = if let Plugin::Handler(handler) = &plugin {
            let stubs = case.outbound.iter().chain(&cases.outbound);
            run_handler(handler, &case.request, stubs.collect(), index).await?
        } else {
            run_filter(&chain, case, index).await?
        };
        let mut problems = check(&case.expect, &outcome);
        for (key, want) in &case.expect.kv {
            let got = runtime.kv_get(&name, key);
            if got.as_deref() != Some(want.as_bytes()) {
                problems.push(format!(
                    "kv {key:?}: expected {want:?}, got {}",
                    got.map_or_else(|| "(absent)".into(), |v| quoted(&v))
                ));
            }
        }
        if problems.is_empty() {
            passed += 1;
            let _ = writeln!(out, "  ok    {}", case.name);
        } else {
            failed += 1;
            let _ = writeln!(out, "  FAIL  {}", case.name);
            for problem in problems {
                for (i, line) in problem.lines().enumerate() {
                    let indent = if i == 0 { "        " } else { "          " };
                    let _ = writeln!(out, "{indent}{line}");
                }
            }
            if let Some(error) = &outcome.error {
                let _ = writeln!(
                    out,
                    "        (the proxy would answer {}: {error})",
                    outcome.status
                );
            }
        }
    }
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn parse_time(text: &str) -> anyhow::Result<SystemTime> {
    humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("{text:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"))
}

fn header_map(headers: &Headers) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, values) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("invalid header name {name:?}"))?;
        for value in values.as_slice() {
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("invalid value for header {name}"))?;
            map.append(name.clone(), value);
        }
    }
    Ok(map)
}

/// The request the case describes, as the proxy's parts.
fn request_parts(spec: &RequestSpec) -> anyhow::Result<http::request::Parts> {
    let method = http::Method::from_bytes(spec.method.as_bytes())
        .with_context(|| format!("invalid method {:?}", spec.method))?;
    let uri: http::Uri = spec
        .path
        .parse()
        .with_context(|| format!("invalid path {:?}", spec.path))?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = header_map(&spec.headers)?;
    if !spec.body.is_empty() && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, spec.body.len().into());
    }
    Ok(parts)
}

fn request_id(parts: &http::request::Parts, index: usize) -> HeaderValue {
    parts
        .headers
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(index + 1))
}

/// One request through a chain of the one filter, with the case's upstream behind it; the
/// same steps, in the same order, as `ProxyService::handle`.
async fn run_filter(chain: &Chain, case: &Case, index: usize) -> anyhow::Result<Outcome> {
    let context = || format!("case {:?}", case.name);
    let parts = request_parts(&case.request).with_context(context)?;
    let id = request_id(&parts, index);
    let host = parts.headers.get(http::header::HOST).cloned();
    let mut request = RequestView::new(
        parts,
        host,
        Arc::from(case.request.client.as_str()),
        Arc::from(case.request.route.as_str()),
        &id,
    );
    let mut body = case.request.body.clone().into_bytes();
    let answered = |status: u16, headers: HeaderMap, body: Vec<u8>| Outcome {
        status,
        headers,
        body: body.into(),
        forwarded: None,
        error: None,
        outbound_calls: Vec::new(),
    };
    let passed = match chain.on_request(&mut request).await {
        Ok(RequestStep::Continue { passed }) => passed,
        Ok(RequestStep::Respond { head, body, .. }) => {
            return Ok(answered(head.status.as_u16(), head.headers, body));
        }
        Err(e) => return Ok(failed(e)),
    };
    if let Some(limit) = chain.request_body_limit() {
        if body.len() > limit {
            return Ok(answered(413, HeaderMap::new(), Vec::new()));
        }
        match chain.on_request_body(&mut request, body).await {
            Ok(BodyStep::Continue(sent)) => body = sent,
            Ok(BodyStep::Respond { head, body, .. }) => {
                return Ok(answered(head.status.as_u16(), head.headers, body));
            }
            Err(e) => return Ok(failed(e)),
        }
    }
    let sent = request.parts();
    let target = sent.uri.path_and_query().map_or("/", |p| p.as_str());
    let forwarded = Some((target.to_owned(), sent.headers.clone(), Bytes::from(body)));

    let upstream = &case.upstream;
    let (mut response, ()) = http::Response::new(()).into_parts();
    response.status = http::StatusCode::from_u16(upstream.status)
        .with_context(|| format!("{}: upstream status {}", context(), upstream.status))?;
    response.headers = header_map(&upstream.headers).with_context(context)?;
    let mut response_body = upstream.body.clone().into_bytes();
    match chain.on_response(passed, &mut request, &mut response).await {
        Ok(Some(local)) => response_body = local,
        Ok(None) => {}
        Err(e) => {
            return Ok(Outcome {
                forwarded,
                ..failed(e)
            });
        }
    }
    if let Some(limit) = chain.response_body_limit(passed)
        && response_body.len() <= limit
    {
        match chain
            .on_response_body(passed, &request, &mut response, response_body)
            .await
        {
            Ok(sent) => response_body = sent,
            Err(e) => {
                return Ok(Outcome {
                    forwarded,
                    ..failed(e)
                });
            }
        }
    }
    Ok(Outcome {
        status: response.status.as_u16(),
        headers: response.headers,
        body: response_body.into(),
        forwarded,
        error: None,
        outbound_calls: Vec::new(),
    })
}

/// The proxy's answer when the chain fails.
fn failed(error: ChainError) -> Outcome {
    let status = match error {
        ChainError::Unavailable(_) => 503,
        ChainError::Failed(_) | ChainError::InvalidChange { .. } => 500,
    };
    Outcome {
        status,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        forwarded: None,
        error: Some(error.to_string()),
        outbound_calls: Vec::new(),
    }
}

/// One request to a handler, its outgoing requests answered by `stubs`.
async fn run_handler(
    plugin: &Handler,
    spec: &RequestSpec,
    stubs: Vec<&Stub>,
    index: usize,
) -> anyhow::Result<Outcome> {
    let mut parts = request_parts(spec)?;
    // wasi:http needs an authority; a client always sends one.
    if !parts.headers.contains_key(http::header::HOST) {
        parts
            .headers
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    let id = request_id(&parts, index);
    let mut request = http::Request::from_parts(
        parts,
        HandlerBody::Full(Bytes::from(spec.body.clone().into_bytes())),
    );
    request.headers_mut().insert("x-request-id", id);
    let mut answers = Vec::new();
    for stub in stubs {
        let headers = header_map(&stub.response.headers)?;
        answers.push((
            stub.cluster.clone(),
            stub.path.clone(),
            stub.response.status,
            headers,
            Bytes::from(stub.response.body.clone().into_bytes()),
        ));
    }
    let outbound = Arc::new(StubOutbound {
        answers,
        calls: Mutex::default(),
    });
    let result = plugin.handle(request, outbound.clone()).await;
    let outbound_calls = outbound.calls.lock().map(|c| c.clone()).unwrap_or_default();
    Ok(match result {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Outcome {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
                forwarded: None,
                error: None,
                outbound_calls,
            }
        }
        Err(e) => Outcome {
            status: 500,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            forwarded: None,
            error: Some(e.to_string()),
            outbound_calls,
        },
    })
}

type Answer = (String, Option<String>, u16, HeaderMap, Bytes);

/// Answers a handler's outgoing requests from the case file, and records them.
struct StubOutbound {
    answers: Vec<Answer>,
    calls: Mutex<Vec<String>>,
}

impl Outbound for StubOutbound {
    fn send(
        &self,
        cluster: String,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<OutboundBody>, OutboundError>> + Send>>
    {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("{} {cluster} {target}", request.method()));
        }
        let answer = self
            .answers
            .iter()
            .find(|(c, path, ..)| *c == cluster && path.as_ref().is_none_or(|p| *p == target));
        let result = match answer {
            Some((_, _, status, headers, body)) => {
                let mut response = http::Response::new(
                    Full::new(body.clone())
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                *response.status_mut() =
                    http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::OK);
                *response.headers_mut() = headers.clone();
                Ok(response)
            }
            None => Err(OutboundError::Connect(format!(
                "no [[outbound]] answer in the case file for {cluster} {target}"
            ))),
        };
        Box::pin(std::future::ready(result))
    }
}

/// Every way `outcome` differs from `expect`, as readable lines.
fn check(expect: &Expect, outcome: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(status) = expect.status
        && status != outcome.status
    {
        problems.push(format!("status: expected {status}, got {}", outcome.status));
    }
    check_headers(
        "response header",
        &expect.headers,
        &expect.headers_absent,
        &outcome.headers,
        &mut problems,
    );
    check_body(
        "body",
        expect.body.as_deref(),
        expect.body_json.as_ref(),
        &outcome.body,
        &mut problems,
    );
    if let Some(part) = &expect.body_contains
        && !String::from_utf8_lossy(&outcome.body).contains(part.as_str())
    {
        problems.push(format!(
            "body: expected to contain {part:?}, got {}",
            quoted(&outcome.body)
        ));
    }
    match (&expect.forwarded, &outcome.forwarded) {
        (None, _)
        | (Some(Forwarded::Flag(false)), None)
        | (Some(Forwarded::Flag(true)), Some(_)) => {}
        (Some(Forwarded::Flag(false)), Some((target, ..))) => {
            problems.push(format!(
                "forwarded: expected no upstream request, but {target} was sent"
            ));
        }
        (Some(_), None) => {
            let calls = if outcome.outbound_calls.is_empty() {
                String::new()
            } else {
                format!(" (outgoing: {})", outcome.outbound_calls.join(", "))
            };
            problems.push(format!(
                "forwarded: expected the request upstream, but the answer was {} from the plugin{calls}",
                outcome.status
            ));
        }
        (Some(Forwarded::Like(want)), Some((target, headers, body))) => {
            if let Some(path) = &want.path
                && path != target
            {
                problems.push(format!("forwarded path: expected {path:?}, got {target:?}"));
            }
            check_headers(
                "forwarded header",
                &want.headers,
                &want.headers_absent,
                headers,
                &mut problems,
            );
            check_body(
                "forwarded body",
                want.body.as_deref(),
                want.body_json.as_ref(),
                body,
                &mut problems,
            );
        }
    }
    problems
}

fn check_headers(
    what: &str,
    want: &Headers,
    absent: &[String],
    got: &HeaderMap,
    problems: &mut Vec<String>,
) {
    for (name, values) in want {
        let seen: Vec<String> = got
            .get_all(name.to_ascii_lowercase().as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if seen != values.as_slice() {
            let seen = if seen.is_empty() {
                "(absent)".to_owned()
            } else {
                format!("{seen:?}")
            };
            problems.push(format!(
                "{what} {name}: expected {:?}, got {seen}",
                values.as_slice()
            ));
        }
    }
    for name in absent {
        if let Some(value) = got.get(name.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "{what} {name}: expected absent, got {}",
                quoted(value.as_bytes())
            ));
        }
    }
}

fn check_body(
    what: &str,
    want: Option<&str>,
    want_json: Option<&toml::Value>,
    got: &[u8],
    problems: &mut Vec<String>,
) {
    if let Some(want) = want
        && want.as_bytes() != got
    {
        problems.push(format!(
            "{what}:\n  expected {want:?}\n  got      {}",
            quoted(got)
        ));
    }
    if let Some(want) = want_json {
        let want = serde_json::to_value(want).unwrap_or_default();
        match serde_json::from_slice::<serde_json::Value>(got) {
            Ok(got) if got == want => {}
            Ok(got) => problems.push(format!(
                "{what} (JSON):\n  expected {want}\n  got      {got}"
            )),
            Err(e) => problems.push(format!(
                "{what}: expected JSON {want}, got {} ({e})",
                quoted(got)
            )),
        }
    }
}

/// Bytes as a quoted string, cut at 300 characters.
fn quoted(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], bytes.len()),
        None => format!("{text:?}"),
    }
}
