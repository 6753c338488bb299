//! A hostile guest filter on raw `weir:plugin` bindings (the current contract), for
//! `tests/all/outbound_attacks.rs` and `tests/all/plugin_output.rs`: each request path is
//! one attempt to abuse `outbound` or `kv`, or to return output weir must refuse, and the
//! local reply's body says what the host answered, so the test can check that every defence
//! held. Parameters come percent-decoded from the query (so a test can pass
//! CR, LF and NUL bytes); a `/_b` prefix is ignored. Requests to other paths pass unchanged.
//!
//! - `/send?cluster=C&method=M&path=P&name=N&value=V&body=B&timeout=MS`: one outbound
//!   request; replies `ok STATUS LEN BODY` or `err KIND: WHY`.
//! - `/smuggle-length`: a POST whose `content-length` is shorter than its body, the rest a
//!   second request.
//! - `/smuggle-te`: a POST with `transfer-encoding: chunked` and a body that ends the chunked
//!   stream early and starts a second request.
//! - `/big-request`: a body of 1 MiB and one byte.
//! - `/aliased?count=N&bytes=B`: one outbound request with N headers whose values are all the
//!   same B bytes of the guest's memory (N views of one buffer): N × B bytes for the host to
//!   copy out of B in the guest. Its first header's name is not valid, so a host that takes
//!   the request in refuses it at once (`err invalid`), sending nothing.
//! - `/loop?cluster=C&times=N&timeout=MS`: N outbound requests in a row.
//! - `/configured`: what an outbound request made from `configure` got.
//! - `/kv-set?key=K&value=V`, `/kv-get?key=K`: the plugin's own namespace.
//! - `/kv-incr?key=K&delta=D&ttl=T`, `/kv-within?key=K&delta=D&limit=L&ttl=T`,
//!   `/kv-cas?key=K&expected=E&value=V&ttl=T` (`expected` absent: only if absent).
//! - `/log?bytes=N`: logs one line of N bytes (`x`s) at `warn`; replies `logged`.
//! - `/random?bytes=N`: one `wasi:random` `get-random-bytes` of N bytes; replies `random LEN`.
//! - `/kv-fill?from=F&count=N&bytes=B&ttl=T`: sets keys `fF` to `f(F+N-1)` to B-byte
//!   values, stopping at the first error; replies `stored S, then ERR` or `stored S`.
//! - `/kv-swap?key=K&bytes=B`: sets K to B bytes `a`, then compare-and-sets it from those B
//!   bytes to B bytes `b` (one call handing weir both values); replies `ok SET LEN FIRST`
//!   (whether it was set, and the length and first byte `get` then reads) or `err …`.
//! - `/leave?calls=N&bytes=B`: leaves the same change for the response (`x-left` set to B
//!   bytes) N times, one `add-response-header-ops` call each, and passes the request on:
//!   N × B bytes for weir to hold until the hook returns, out of B in the guest.
//!
//! Output weir must refuse (`N` from the query), with `[config] output = true`, which also
//! turns on `on-response` and both body hooks:
//! - `/out-status?code=N` answers with status N; `/out-header?bytes=N` with a header of N
//!   bytes; `/out-headers?count=N` with N headers; `/out-body?bytes=N` with an N-byte body;
//! - `/req-header?bytes=N`, `/req-headers?count=N`: the request goes on with that header
//!   set, or N headers appended;
//! - `/resp-status?code=N`, `/resp-header?bytes=N`, `/resp-headers?count=N`: the same done
//!   to the upstream's response by `on-response` (a status replaces the response);
//! - `/body-req?bytes=N`, `/body-resp?bytes=N`: a body hook replaces the request's or the
//!   response's body with N bytes; `/body-status?code=N`: `on-request-body` answers with N.

wit_bindgen::generate!({ path: "../../../wit", world: "filter" });

use std::cell::RefCell;

use exports::weir::plugin::http_filter::Guest;
use weir::plugin::kv;
use weir::plugin::log;
use weir::plugin::outbound::{self, OutboundError, OutboundRequest};
use weir::plugin::types::{
    BodyAction, BodyChanges, BodyHookSet, HeaderOp, HookSet, LocalResponse, Request, RequestAction,
    RequestChanges, RequestHead, Response, ResponseAction, ResponseHead,
};

struct Hostile;

thread_local! {
    /// What the outbound request made in `configure` got.
    static CONFIGURED: RefCell<String> = const { RefCell::new(String::new()) };
    /// `[config] output = true`: the output hooks are on.
    static OUTPUT: RefCell<bool> = const { RefCell::new(false) };
}

fn local(status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> LocalResponse {
    LocalResponse {
        status,
        headers,
        body,
    }
}

/// `count` distinct headers `x-h-I: v`.
fn many(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("x-h-{i}"), b"v".to_vec()))
        .collect()
}

/// What `path` asks the request hook to return, if it is an output path.
fn output(path: &str, query: &str) -> Option<RequestAction> {
    let n: usize = number(query, "bytes")
        .or_else(|| number(query, "count"))
        .unwrap_or(0);
    let code: u16 = number(query, "code").unwrap_or(200);
    let ops = |ops: Vec<HeaderOp>| {
        RequestAction::Continue(RequestChanges {
            headers: ops,
            path: None,
        })
    };
    Some(match path {
        "/out-status" => {
            RequestAction::Respond(local(code, Vec::new(), b"from the plugin".to_vec()))
        }
        "/out-header" => RequestAction::Respond(local(
            200,
            vec![("x-big".into(), vec![b'a'; n])],
            Vec::new(),
        )),
        "/out-headers" => RequestAction::Respond(local(200, many(n), Vec::new())),
        "/out-body" => RequestAction::Respond(local(200, Vec::new(), vec![b'b'; n])),
        "/req-header" => ops(vec![HeaderOp::Set(("x-big".into(), vec![b'a'; n]))]),
        "/req-headers" => ops(many(n).into_iter().map(HeaderOp::Append).collect()),
        _ => return None,
    })
}

/// `/leave`: the same change left for the response `calls` times, one call each (the guest
/// holds its `bytes` once).
fn leave(request: &Request, query: &str) -> RequestAction {
    let calls: usize = number(query, "calls").unwrap_or(1);
    let ops = [HeaderOp::Set((
        "x-left".into(),
        vec![b'l'; number(query, "bytes").unwrap_or(1)],
    ))];
    for _ in 0..calls {
        request.add_response_header_ops(&ops);
    }
    unchanged()
}

fn unchanged() -> RequestAction {
    RequestAction::Continue(RequestChanges {
        headers: Vec::new(),
        path: None,
    })
}

fn reply(text: String) -> RequestAction {
    RequestAction::Respond(LocalResponse {
        status: 200,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: text.into_bytes(),
    })
}

fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let (b'%', Some(b)) = (bytes[i], hex) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The decoded query parameter `name`.
fn param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

fn text(query: &str, name: &str) -> Option<String> {
    param(query, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn number<T: std::str::FromStr>(query: &str, name: &str) -> Option<T> {
    text(query, name).and_then(|v| v.parse().ok())
}

fn describe(result: Result<outbound::OutboundResponse, OutboundError>) -> String {
    match result {
        Ok(answer) => format!(
            "ok {} {} {}",
            answer.status,
            answer.body.len(),
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
        ),
        Err(OutboundError::Denied(why)) => format!("err denied: {why}"),
        Err(OutboundError::Unavailable(why)) => format!("err unavailable: {why}"),
        Err(OutboundError::Timeout) => "err timeout".into(),
        Err(OutboundError::Invalid(why)) => format!("err invalid: {why}"),
    }
}

fn request(cluster: &str, method: &str, path: &str) -> OutboundRequest {
    OutboundRequest {
        cluster: cluster.into(),
        method: method.into(),
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: None,
    }
}

fn kv_error(e: kv::Error) -> String {
    match e {
        kv::Error::AccessDenied => "err access-denied".into(),
        kv::Error::Unavailable(why) => format!("err unavailable: {why}"),
        kv::Error::Invalid(why) => format!("err invalid: {why}"),
    }
}

fn show(value: Option<Vec<u8>>) -> String {
    match value {
        Some(v) => format!("some {}", String::from_utf8_lossy(&v)),
        None => "none".into(),
    }
}

fn act(path: &str, query: &str) -> Option<String> {
    let svc = text(query, "cluster").unwrap_or_else(|| "svc".into());
    Some(match path {
        "/send" => {
            let mut call = request(
                &svc,
                &text(query, "method").unwrap_or_else(|| "GET".into()),
                &text(query, "path").unwrap_or_else(|| "/".into()),
            );
            if let (Some(name), Some(value)) = (text(query, "name"), param(query, "value")) {
                call.headers.push((name, value));
            }
            call.body = param(query, "body").unwrap_or_default();
            call.timeout_ms = number(query, "timeout");
            describe(outbound::send(&call))
        }
        "/smuggle-length" => {
            let mut call = request(&svc, "POST", "/first");
            call.headers.push(("content-length".into(), b"5".to_vec()));
            call.body =
                b"hello GET /second HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec();
            describe(outbound::send(&call))
        }
        "/smuggle-te" => {
            let mut call = request(&svc, "POST", "/first");
            call.headers
                .push(("transfer-encoding".into(), b"chunked".to_vec()));
            call.body =
                b"0\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec();
            describe(outbound::send(&call))
        }
        "/big-request" => {
            let mut call = request(&svc, "POST", "/echo");
            call.body = vec![b'x'; (1 << 20) + 1];
            describe(outbound::send(&call))
        }
        "/aliased" => {
            let count: usize = number(query, "count").unwrap_or(1);
            let bytes: usize = number(query, "bytes").unwrap_or(1);
            let mut one = vec![b'v'; bytes];
            let mut call = request(&svc, "GET", "/");
            call.headers.push(("not valid".into(), Vec::new()));
            for i in 0..count {
                // SAFETY: each view is forgotten below, never dropped: the buffer is freed
                // once, as `one`.
                let view = unsafe { Vec::from_raw_parts(one.as_mut_ptr(), bytes, bytes) };
                call.headers.push((format!("x-a{i}"), view));
            }
            let answer = describe(outbound::send(&call));
            for (_, view) in call.headers.drain(1..) {
                std::mem::forget(view);
            }
            drop(one);
            answer
        }
        "/loop" => {
            let times: u32 = number(query, "times").unwrap_or(1);
            let mut last = String::new();
            for _ in 0..times {
                let mut call = request(&svc, "GET", "/");
                call.timeout_ms = number(query, "timeout");
                last = describe(outbound::send(&call));
            }
            format!("{times} calls, last {last}")
        }
        "/configured" => CONFIGURED.with(|c| c.borrow().clone()),
        "/random" => {
            let bytes = number(query, "bytes").unwrap_or(0);
            format!("random {}", wasip2::random::random::get_random_bytes(bytes).len())
        }
        "/log" => {
            let line = "x".repeat(number(query, "bytes").unwrap_or(1));
            log::log(log::Level::Warn, &line);
            "logged".into()
        }
        "/kv-set" => {
            let key = text(query, "key").unwrap_or_default();
            let value = param(query, "value").unwrap_or_default();
            match kv::set(&key, &value, number(query, "ttl")) {
                Ok(()) => "ok".into(),
                Err(e) => kv_error(e),
            }
        }
        "/kv-fill" => {
            let from: u64 = number(query, "from").unwrap_or(0);
            let count: u64 = number(query, "count").unwrap_or(0);
            let value = vec![b'v'; number(query, "bytes").unwrap_or(1)];
            let ttl = number(query, "ttl");
            let mut stored = 0;
            for i in from..from + count {
                if let Err(e) = kv::set(&format!("f{i}"), &value, ttl) {
                    return Some(format!("stored {stored}, then {}", kv_error(e)));
                }
                stored += 1;
            }
            format!("stored {stored}")
        }
        "/kv-swap" => {
            let key = text(query, "key").unwrap_or_default();
            let bytes = number(query, "bytes").unwrap_or(1);
            let (old, new) = (vec![b'a'; bytes], vec![b'b'; bytes]);
            let swapped = kv::set(&key, &old, None)
                .and_then(|()| kv::compare_and_set(&key, Some(&old), &new, None))
                .and_then(|set| Ok((set, kv::get(&key)?)));
            match swapped {
                Ok((set, value)) => {
                    let value = value.unwrap_or_default();
                    let first = value.first().map_or('-', |&b| char::from(b));
                    format!("ok {set} {} {first}", value.len())
                }
                Err(e) => kv_error(e),
            }
        }
        "/kv-get" => match kv::get(&text(query, "key").unwrap_or_default()) {
            Ok(value) => show(value),
            Err(e) => kv_error(e),
        },
        "/kv-incr" => {
            let key = text(query, "key").unwrap_or_default();
            match kv::increment(
                &key,
                number(query, "delta").unwrap_or(1),
                number(query, "ttl"),
            ) {
                Ok(n) => format!("ok {n}"),
                Err(e) => kv_error(e),
            }
        }
        "/kv-within" => {
            let key = text(query, "key").unwrap_or_default();
            match kv::increment_within(
                &key,
                number(query, "delta").unwrap_or(1),
                number(query, "limit").unwrap_or(0),
                number(query, "ttl"),
            ) {
                Ok(b) => format!("ok {} {} {:?}", b.applied, b.value, b.ttl_ms),
                Err(e) => kv_error(e),
            }
        }
        "/kv-cas" => {
            let key = text(query, "key").unwrap_or_default();
            let value = param(query, "value").unwrap_or_default();
            match kv::compare_and_set(
                &key,
                param(query, "expected").as_deref(),
                &value,
                number(query, "ttl"),
            ) {
                Ok(set) => format!("ok {set}"),
                Err(e) => kv_error(e),
            }
        }
        _ => return None,
    })
}

impl Guest for Hostile {
    fn hooks() -> HookSet {
        if OUTPUT.with(|o| *o.borrow()) {
            HookSet::ON_REQUEST | HookSet::ON_RESPONSE
        } else {
            HookSet::ON_REQUEST
        }
    }

    fn configure(config: String) -> Result<(), String> {
        if config.replace(' ', "").contains("\"output\":true") {
            OUTPUT.with(|o| *o.borrow_mut() = true);
        }
        // `[config] cluster = "..."`: try to reach it before any request is served.
        let cluster = config
            .split('"')
            .skip_while(|part| !part.ends_with("cluster"))
            .nth(2)
            .map(str::to_owned);
        if let Some(cluster) = cluster {
            let outcome = describe(outbound::send(&request(&cluster, "GET", "/from-configure")));
            CONFIGURED.with(|c| *c.borrow_mut() = outcome);
        }
        Ok(())
    }

    fn on_request(_request: RequestHead) -> RequestAction {
        unchanged()
    }

    fn on_response(_request: RequestHead, _response: ResponseHead) -> ResponseAction {
        ResponseAction::Continue(Vec::new())
    }

    fn on_request_lazy(request: &Request) -> RequestAction {
        let path = request.path();
        let query = request.query().unwrap_or_default();
        // The second plugin's route is `/_b`: the same paths below it.
        let path = path.strip_prefix("/_b").unwrap_or(&path);
        if let Some(action) = output(path, &query) {
            return action;
        }
        if path == "/leave" {
            return leave(request, &query);
        }
        match act(path, &query) {
            Some(text) => reply(text),
            None => unchanged(),
        }
    }

    fn on_response_lazy(request: &Request, _response: &Response) -> ResponseAction {
        let query = request.query().unwrap_or_default();
        let n: usize = number(&query, "bytes")
            .or_else(|| number(&query, "count"))
            .unwrap_or(0);
        match request.path().as_str() {
            "/resp-status" => ResponseAction::Respond(local(
                number(&query, "code").unwrap_or(200),
                Vec::new(),
                b"replaced".to_vec(),
            )),
            "/resp-header" => {
                ResponseAction::Continue(vec![HeaderOp::Set(("x-big".into(), vec![b'a'; n]))])
            }
            "/resp-headers" => {
                ResponseAction::Continue(many(n).into_iter().map(HeaderOp::Append).collect())
            }
            _ => ResponseAction::Continue(Vec::new()),
        }
    }

    fn body_hooks() -> BodyHookSet {
        if OUTPUT.with(|o| *o.borrow()) {
            BodyHookSet::ON_REQUEST_BODY | BodyHookSet::ON_RESPONSE_BODY
        } else {
            BodyHookSet::empty()
        }
    }

    fn on_request_body(request: RequestHead, _body: Vec<u8>) -> BodyAction {
        let query = request.query.unwrap_or_default();
        let n: usize = number(&query, "bytes").unwrap_or(0);
        match request.path.as_str() {
            "/body-req" => BodyAction::Continue(BodyChanges {
                headers: Vec::new(),
                body: Some(vec![b'r'; n]),
            }),
            "/body-status" => BodyAction::Respond(local(
                number(&query, "code").unwrap_or(200),
                Vec::new(),
                Vec::new(),
            )),
            _ => BodyAction::Continue(BodyChanges {
                headers: Vec::new(),
                body: None,
            }),
        }
    }

    fn on_response_body(
        request: RequestHead,
        _response: ResponseHead,
        _body: Vec<u8>,
    ) -> BodyAction {
        let query = request.query.unwrap_or_default();
        let n: usize = number(&query, "bytes").unwrap_or(0);
        BodyAction::Continue(BodyChanges {
            headers: Vec::new(),
            body: (request.path == "/body-resp").then(|| vec![b's'; n]),
        })
    }
}

export!(Hostile);
