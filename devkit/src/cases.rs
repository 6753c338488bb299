//! `weir plugin test`: runs one plugin against a case file of recorded requests, with a mock
//! host around it, and reports every decision that differs from what the case expects.
//!
//! The plugin runs in the proxy itself: each case's request goes through weir's own
//! `ProxyService` — every phase, the same runtime and chain code, the same error answers —
//! on a route whose chain is the plugin (a filter) or whose target is the plugin (a
//! handler). What the proxy would get from the outside world comes from the case file
//! instead, through an in-memory connector: the upstream's response, the responses of a
//! handler's or a filter's outgoing calls (`[[outbound]]`); and the wall clock (`now`) and `kv` entries
//! present before the first case (`kv_entries`). Nothing leaves the process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use arc_swap::ArcSwap;
use weir::body::boxed;
use weir::config::PluginLimits;
use weir::generation::{Generation, PluginSlot};
use weir::plugin::{ManualClock, Plugin, PluginRuntime, PluginSource};
use weir::proxy::{Client, ProxyService};
use weir::upstream::{Answer, Connector, MemoryConnector, Transports};

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

/// `[plugin]`: `NAME.toml`'s keys (`config`, `max_body_bytes`, `clusters`, `kv`, …), plus
/// `now` and `kv_entries`.
#[derive(Debug, Default, Deserialize)]
struct PluginSection {
    /// The wall clock the plugin sees (RFC 3339); the real time if absent.
    now: Option<String>,
    /// `kv` entries in the plugin's namespace before the first case (the plugin still needs
    /// `kv = true` to reach them, as in its `NAME.toml`).
    #[serde(default)]
    kv_entries: BTreeMap<String, String>,
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
    /// Answers to a plugin's outgoing requests, tried before the file's `[[outbound]]`.
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
    /// The plugin's own metrics after the case: `'refusals_total{limit="a"}' = 2`.
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
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
    /// The method as sent upstream (a plugin may change it: `set-method`, weir:plugin 0.3.6).
    method: Option<String>,
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
    forwarded: Option<Forwarding>,
    /// Why the proxy answered with an error (the cause it logs), or what else went wrong.
    error: Option<String>,
    /// A handler's outgoing requests: `METHOD cluster path`.
    outbound_calls: Vec<String>,
}

/// Runs every case of `case_file` against `plugin_file`, writing a report to `out`; returns
/// whether every case passed. Fails if either file cannot be used or the plugin does not
/// load.
///
/// `failures` is where the caller's log subscriber puts the causes of the proxy's `request
/// failed` lines ([`Failures`]), so a case's report can say why the proxy answered an error.
pub async fn run(
    plugin_file: &Path,
    case_file: &Path,
    out: &mut String,
    failures: &Failures,
) -> anyhow::Result<bool> {
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
    let cache = weir::config::default_cache_dir();
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
    for (key, value) in &cases.plugin.kv_entries {
        runtime.kv_set(&name, key, value.clone().into_bytes()).await;
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

    let (mut passed, mut failed) = (0, 0);
    for (index, case) in cases.cases.iter().enumerate() {
        if let Some(now) = &case.now {
            clock.set(parse_time(now).with_context(|| format!("case {:?}: now", case.name))?);
        }
        let stubs = case.outbound.iter().chain(&cases.outbound).collect();
        failures.take();
        let mut outcome = run_case(&plugin, case, stubs, index)
            .await
            .with_context(|| format!("case {:?}", case.name))?;
        let logged = failures.take();
        if !logged.is_empty() {
            outcome.error = Some(logged.join("; "));
        }
        let mut problems = check(&case.expect, &outcome);
        for (key, want) in &case.expect.kv {
            let got = runtime.kv_get(&name, key).await;
            if got.as_deref() != Some(want.as_bytes()) {
                problems.push(format!(
                    "kv {key:?}: expected {want:?}, got {}",
                    got.map_or_else(|| "(absent)".into(), |v| quoted(&v))
                ));
            }
        }
        if !case.expect.metrics.is_empty() {
            let samples = weir::metrics::metrics().plugin_samples(&name);
            check_metrics(&case.expect.metrics, &samples, &mut problems);
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
                    "        (the proxy answered {}: {error})",
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

/// What the in-memory endpoints saw during one case.
#[derive(Debug, Default)]
struct Watched {
    /// The request as it reached the upstream.
    forwarded: Option<Forwarding>,
    /// A handler's outgoing requests: `METHOD cluster path`.
    calls: Vec<String>,
    /// Outgoing requests no `[[outbound]]` answered.
    unanswered: Vec<String>,
}

/// The request as it reached the upstream: method, path and query, headers, body.
#[derive(Debug)]
struct Forwarding {
    method: http::Method,
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A response as an in-memory endpoint sends it.
#[derive(Debug, Clone)]
struct Canned {
    status: http::StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Canned {
    fn of(message: &Message) -> anyhow::Result<Canned> {
        Ok(Canned {
            status: http::StatusCode::from_u16(message.status)
                .with_context(|| format!("status {}", message.status))?,
            headers: header_map(&message.headers)?,
            body: Bytes::from(message.body.clone().into_bytes()),
        })
    }

    fn answer(&self) -> Answer {
        let mut response = http::Response::new(boxed(Full::new(self.body.clone())));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// A cluster for every name the plugin's grant or the stubs mention (on 127.0.0.1 ports 2
/// and up: 1 is a filter's upstream), each answered from the stubs for it, in order; each
/// request is noted in `watched`.
fn stub_clusters(
    mut connector: MemoryConnector,
    config: &mut String,
    granted: &[String],
    stubs: &[&Stub],
    watched: &Arc<Mutex<Watched>>,
) -> anyhow::Result<MemoryConnector> {
    let mut clusters: Vec<&str> = granted.iter().map(String::as_str).collect();
    for stub in stubs {
        if !clusters.contains(&stub.cluster.as_str()) {
            clusters.push(&stub.cluster);
        }
    }
    for (i, cluster) in clusters.iter().enumerate() {
        let authority = format!("127.0.0.1:{}", i + 2);
        config.push_str(&cluster_section(cluster, &authority));
        // A cluster with no answer in the file refuses connections, as one with no
        // endpoint up would.
        if !stubs.iter().any(|s| s.cluster == *cluster) {
            continue;
        }
        let mut answers = Vec::new();
        for stub in stubs.iter().filter(|s| s.cluster == *cluster) {
            let canned = Canned::of(&stub.response)
                .with_context(|| format!("[[outbound]] for {}", stub.cluster))?;
            answers.push((stub.path.clone(), canned));
        }
        let (cluster_name, watched) = ((*cluster).to_owned(), watched.clone());
        connector = connector.endpoint(&authority, move |request| {
            let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(mut watched) = watched.lock() {
                let call = format!("{} {cluster_name} {target}", request.method());
                watched.calls.push(call);
            }
            let answer = answers
                .iter()
                .find(|(path, _)| path.as_ref().is_none_or(|p| p == target));
            match answer {
                Some((_, canned)) => canned.answer(),
                // No answer for this path: the connection is reset (the plugin sees a
                // failed request) and the report says why.
                None => {
                    let why = format!(
                        "no [[outbound]] answer in the case file for {cluster_name} {target}"
                    );
                    if let Ok(mut watched) = watched.lock() {
                        watched.unanswered.push(why.clone());
                    }
                    Box::pin(std::future::ready(Err(std::io::Error::other(why))))
                }
            }
        });
    }
    Ok(connector)
}

/// One case's request through the proxy, with the plugin on its route and the case's
/// upstream or `[[outbound]]` answers behind it.
async fn run_case(
    plugin: &Plugin,
    case: &Case,
    stubs: Vec<&Stub>,
    index: usize,
) -> anyhow::Result<Outcome> {
    let name = plugin.info().name.to_string();
    let watched = Arc::new(Mutex::new(Watched::default()));
    let mut connector = MemoryConnector::new();
    let mut config = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n");
    let target = match plugin {
        Plugin::Filter(_) => {
            let upstream = Canned::of(&case.upstream).context("upstream")?;
            let forwarded = watched.clone();
            connector = connector.endpoint("127.0.0.1:1", move |request| {
                let (parts, body) = request.into_parts();
                let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                if let Ok(mut watched) = forwarded.lock() {
                    watched.forwarded = Some(Forwarding {
                        method: parts.method,
                        target: target.to_owned(),
                        headers: parts.headers,
                        body,
                    });
                }
                upstream.answer()
            });
            config.push_str(&cluster_section("upstream", "127.0.0.1:1"));
            // A filter's `outbound` requests (weir:plugin 0.3.4) are answered the same way
            // as a handler's, on the ports after the upstream's.
            let granted = &plugin.info().settings.clusters;
            connector = stub_clusters(connector, &mut config, granted, &stubs, &watched)?;
            format!("cluster = \"upstream\"\nplugins = [{}]", toml_string(&name))
        }
        Plugin::Handler(handler) => {
            connector = stub_clusters(
                connector,
                &mut config,
                &handler.info.settings.clusters,
                &stubs,
                &watched,
            )?;
            format!("handler = {}\nplugins = []", toml_string(&name))
        }
    };
    config.push_str(&format!(
        "\n[[routes]]\nname = {}\n{target}\n",
        toml_string(&case.request.route)
    ));
    let config = weir::config::parse(Path::new("(weir plugin test)"), &config)
        .map_err(|e| anyhow::anyhow!("the test's proxy config: {e}"))?;
    let slot = PluginSlot {
        name,
        file: plugin.info().file.clone(),
        serving: Some(plugin.clone()),
        since_generation: 1,
        last_error: None,
    };
    let connector: Arc<dyn Connector> = Arc::new(connector);
    let generation = Generation::build(
        1,
        Arc::new(config),
        vec![slot],
        None,
        &Transports::plain(connector),
        &Default::default(),
    );
    let proxy = ProxyService::new(Arc::new(ArcSwap::from_pointee(generation)));

    let mut parts = request_parts(&case.request)?;
    // A client always sends a Host (HTTP/1.1 requires one).
    if !parts.headers.contains_key(http::header::HOST) {
        parts
            .headers
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
    let id = request_id(&parts, index);
    parts.headers.insert("x-request-id", id);
    let body = boxed(Full::new(Bytes::from(
        case.request.body.clone().into_bytes(),
    )));
    let client: std::net::SocketAddr = case
        .request
        .client
        .parse()
        .with_context(|| format!("client {:?} is not ip:port", case.request.client))?;
    let response = proxy
        .handle(http::Request::from_parts(parts, body), &Client::new(client))
        .await;
    let (parts, body) = response.into_parts();
    let (body, mut error) = match body.collect().await {
        Ok(body) => (body.to_bytes(), None),
        Err(e) => (Bytes::new(), Some(format!("the response body failed: {e}"))),
    };
    let watched = std::mem::take(&mut *watched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    if !watched.unanswered.is_empty() {
        error = Some(watched.unanswered.join("; "));
    }
    Ok(Outcome {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        forwarded: watched.forwarded,
        error,
        outbound_calls: watched.calls,
    })
}

/// A cluster of one in-memory endpoint, never retried (each case sees one attempt).
fn cluster_section(name: &str, authority: &str) -> String {
    format!(
        "\n[[clusters]]\nname = {}\nendpoints = [{}]\nretries = 0\n",
        toml_string(name),
        toml_string(authority)
    )
}

/// `text` as a TOML string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
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
        (Some(Forwarded::Flag(false)), Some(sent)) => {
            problems.push(format!(
                "forwarded: expected no upstream request, but {} was sent",
                sent.target
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
        (Some(Forwarded::Like(want)), Some(sent)) => {
            let Forwarding {
                method,
                target,
                headers,
                body,
            } = sent;
            if let Some(expected) = &want.method
                && expected != method.as_str()
            {
                problems.push(format!(
                    "forwarded method: expected {expected:?}, got {:?}",
                    method.as_str()
                ));
            }
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

/// Checks the plugin's metrics against `want`, keyed by series as `/metrics` writes them
/// without `weir_plugin_<plugin>_` (`refusals_total{limit="a"}`; the full name works too).
/// A series never updated reads 0.
fn check_metrics(
    want: &BTreeMap<String, f64>,
    samples: &[weir::metrics::PluginSample],
    problems: &mut Vec<String>,
) {
    for (series, value) in want {
        let (name, labels) = match parse_series(series) {
            Ok(parsed) => parsed,
            Err(why) => {
                problems.push(format!("metric {series}: {why}"));
                continue;
            }
        };
        let got = samples
            .iter()
            .find(|s| {
                (s.short == name || s.name == name)
                    && s.labels.len() == labels.len()
                    && s.labels.iter().all(|pair| labels.contains(pair))
            })
            .map(|s| s.value);
        if got.unwrap_or(0.0) != *value {
            let got = got.map_or_else(|| "(no such series)".to_owned(), |v| v.to_string());
            let known: Vec<String> = samples.iter().map(series_text).collect();
            let known = if known.is_empty() {
                "the plugin has no metric series".to_owned()
            } else {
                format!("series: {}", known.join(", "))
            };
            problems.push(format!(
                "metric {series}: expected {value}, got {got}\n({known})"
            ));
        }
    }
}

/// `name{a="x",b="y"}` (or a bare `name`) as the name and its label pairs.
fn parse_series(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let text = text.trim();
    let Some((name, rest)) = text.split_once('{') else {
        return Ok((text.to_owned(), Vec::new()));
    };
    let body = rest
        .strip_suffix('}')
        .ok_or("expected name{label=\"value\",...}")?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let label: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {:?}: expected =\"value\"", label.trim()));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
                None => return Err(format!("label {:?}: the value is not closed", label.trim())),
            }
        }
        labels.push((label.trim().to_owned(), value));
    }
    Ok((name.trim().to_owned(), labels))
}

/// A sample as `short{a="x"} value`, for a failing case's report.
fn series_text(sample: &weir::metrics::PluginSample) -> String {
    let labels: Vec<String> = sample
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    if labels.is_empty() {
        format!("{} {}", sample.short, sample.value)
    } else {
        format!("{}{{{}}} {}", sample.short, labels.join(","), sample.value)
    }
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

/// The causes of the `request failed` lines weir logs while a case runs: a layer for the
/// `weir-plugin` binary's log subscriber, read by [`run`] after each case.
#[derive(Debug, Clone, Default)]
pub struct Failures(Arc<Mutex<Vec<String>>>);

impl Failures {
    /// Everything recorded since the last call.
    fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Failures {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = FailureFields::default();
        event.record(&mut fields);
        if fields.message == "request failed"
            && let Ok(mut failures) = self.0.lock()
        {
            failures.push(fields.cause.unwrap_or_else(|| "no cause given".to_owned()));
        }
    }
}

/// The two fields of a `request failed` line the report needs.
#[derive(Default)]
struct FailureFields {
    message: String,
    cause: Option<String>,
}

impl tracing::field::Visit for FailureFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "cause" => self.cause = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "cause" => self.cause = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_series_is_read_as_prometheus_writes_it() {
        assert_eq!(
            parse_series("refusals_total").expect("bare"),
            ("refusals_total".to_owned(), Vec::new())
        );
        assert_eq!(
            parse_series(r#"refusals_total{limit="10/1s", kind="a \"b\""}"#).expect("labels"),
            (
                "refusals_total".to_owned(),
                pairs(&[("limit", "10/1s"), ("kind", "a \"b\"")])
            )
        );
        assert!(parse_series(r#"x{limit=10}"#).is_err());
        assert!(parse_series(r#"x{limit="10"#).is_err());
    }

    #[test]
    fn metrics_are_compared_by_name_and_label_set_and_absent_reads_zero() {
        let samples = vec![weir::metrics::PluginSample {
            name: "weir_plugin_p_refusals_total".into(),
            short: "refusals_total".into(),
            labels: pairs(&[("limit", "a"), ("kind", "b")]),
            value: 2.0,
        }];
        let want = |series: &str, value: f64| BTreeMap::from([(series.to_owned(), value)]);
        let mut problems = Vec::new();
        check_metrics(
            &want(r#"refusals_total{kind="b",limit="a"}"#, 2.0),
            &samples,
            &mut problems,
        );
        check_metrics(
            &want(r#"weir_plugin_p_refusals_total{limit="a",kind="b"}"#, 2.0),
            &samples,
            &mut problems,
        );
        check_metrics(
            &want(r#"refusals_total{limit="z",kind="b"}"#, 0.0),
            &samples,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        check_metrics(
            &want(r#"refusals_total{limit="a"}"#, 2.0),
            &samples,
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "a label set must match whole");
        assert!(
            problems[0].contains(r#"expected 2, got (no such series)"#)
                && problems[0].contains(r#"refusals_total{limit="a",kind="b"} 2"#),
            "{}",
            problems[0]
        );
    }
}
