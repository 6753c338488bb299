//! A `wasi:http` handler on raw bindings (the examples' WASI 0.2.12 WIT), for
//! `tests/all/handler_reuse.rs`. Every answer is `instance=ID uses=N` (and the same in the
//! `x-instance` and `x-uses` headers): `ID` is drawn once per instance, `N` counts the
//! requests this instance has begun, so a test sees which instance served it and how often
//! that instance was reused. What it does is chosen by the path's last segment (so any
//! route prefix works):
//!
//! - `…/count`: just that;
//! - `…/trap`: traps (a Rust panic is `unreachable`);
//! - `…/trap-mid-body`: sends its head and some of its body, then traps;
//! - `…/slow?ms=N`: waits N ms (a WASI clock) before answering;
//! - `…/keep`: sends its head and some of its body, keeps the body open in a global and
//!   returns; a later `…/leak` on the same instance would write into it;
//! - `…/leak`: writes `LEAKED` into a kept body, if it has one, and finishes it;
//! - `…/hold-body`: keeps the request's body stream, unread, in a global;
//! - `…/read-held`: answers what reading a held body gives now: `read BYTES`, `error`, or
//!   `none held`;
//! - `…/status?code=N`: answers with status N (any wasi:http accepts, up to 999);
//! - `…/headers?n=N&bytes=B`: answers with N more headers `x-h-I`, each value B bytes.
//! - `…/stream?bytes=N`: answers with N bytes of body, each `write` as large as the stream's
//!   `check-write` allows (256 KiB in weir), as a guest streaming a large
//!   response does.
//! - `…/aliased?n=N&bytes=B`: one `fields.from-list` of N headers whose values are all the
//!   same B bytes of the guest's memory (N views of one buffer): N × B bytes for the host to
//!   copy out of B; answers `from-list ok` or `from-list err …` (wasmtime-wasi-http refuses
//!   a `fields` past 128 KiB, but only once it is copied).
//! - `…/fields?count=C&n=N&bytes=B`: makes C `fields` from N headers of B bytes each (one
//!   list, made once) and holds them all until it answers `made C`, or `made K, then ERR`;
//!   with `&keep=1` it keeps them in a global after it answers.
//! - `…/bodies?count=C&bytes=B`: makes C sub-requests, never sent, writes up to B bytes into
//!   each one's body (as much as its stream takes without waiting), and holds them all until
//!   it answers `made C`, or `made K, then ERR`; with `&keep=1` it finishes their bodies and
//!   keeps the sub-requests, unsent, in a global after it answers.
//! - `…/requests?count=C&method=M&authority=A&path=P`: makes C sub-requests, never sent, each
//!   with a method of M bytes, an authority of A bytes and a path of P bytes (each left as
//!   wasi:http's default when 0), and holds them all until it answers `made C`, or
//!   `made K, then ERR`.
//! - `…/send?count=C&n=N&bytes=B&body=K&to=PATH&ms=W`: makes one sub-request head of N
//!   headers of B bytes each, then sends C sub-requests to cluster `app` at PATH, each with
//!   that head (`outgoing-request.headers` of the first, shared, never copied by the guest)
//!   and, when K > 0, a body of K bytes; keeps every answer's future, waits W ms and answers
//!   `sent C`, or `sent K, then ERR`; with `&keep=1` it keeps the futures in a global after
//!   it answers; with `&read=R` it then waits for each answer, reads R bytes of its body and
//!   one more, and holds the body until it answers (`…, read A`, A the answers read), or
//!   after, with `&keep=1`.
//! - `…/random?bytes=N`: answers `random N` after one `get-random-bytes` of N bytes.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

wit_bindgen::generate!({
    path: "../../../examples/handlers/wit",
    world: "weir:examples/handler",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, IncomingRequest, IncomingResponse, Method,
    OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

static INSTANCE: AtomicU64 = AtomicU64::new(0);
static USES: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// A response body `/keep` left open, and its stream.
    static KEPT: RefCell<Option<(OutputStream, OutgoingBody)>> = const { RefCell::new(None) };
    /// A request body `/hold-body` did not read.
    static HELD: RefCell<Option<(InputStream, IncomingBody)>> = const { RefCell::new(None) };
    /// The `fields` `/fields?keep=1` made.
    static KEPT_FIELDS: RefCell<Vec<Fields>> = const { RefCell::new(Vec::new()) };
    /// The sub-requests `/bodies?keep=1` made, their bodies finished, never sent.
    static KEPT_UNSENT: RefCell<Vec<OutgoingRequest>> = const { RefCell::new(Vec::new()) };
    /// The answers' futures `/send?keep=1` made.
    static KEPT_SENT: RefCell<Vec<FutureIncomingResponse>> = const { RefCell::new(Vec::new()) };
    /// The answers `/send?read=R&keep=1` read into, with their bodies and streams.
    static KEPT_READING: RefCell<Vec<Reading>> = const { RefCell::new(Vec::new()) };
}

/// An answer being read: its body's stream, its body and the answer (dropped in that order).
type Reading = (InputStream, IncomingBody, IncomingResponse);

struct Handler;

impl Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if INSTANCE.load(Relaxed) == 0 {
            INSTANCE.store(wasi::random::random::get_random_u64() | 1, Relaxed);
        }
        let uses = USES.fetch_add(1, Relaxed) + 1;
        let whoami = format!("instance={} uses={uses}", INSTANCE.load(Relaxed));
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let mut text = whoami.clone();
        match path.rsplit('/').next().unwrap_or_default() {
            "trap" => panic!("asked to trap"),
            "trap-mid-body" => {
                let (stream, _body) = respond_head(out, &whoami);
                write(&stream, b"partial ");
                panic!("asked to trap mid-body");
            }
            "slow" => {
                let ms: u64 = query
                    .strip_prefix("ms=")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(100);
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            }
            "keep" => {
                let (stream, body) = respond_head(out, &whoami);
                write(&stream, b"partial ");
                KEPT.with(|kept| *kept.borrow_mut() = Some((stream, body)));
                return;
            }
            "leak" => {
                if let Some((stream, body)) = KEPT.with(|kept| kept.borrow_mut().take()) {
                    write(&stream, b"LEAKED");
                    drop(stream);
                    let _ = OutgoingBody::finish(body, None);
                    text.push_str(" leaked");
                }
            }
            // A heap that only grows: 1 MiB kept for good on every request.
            "hoard" => {
                std::hint::black_box(Box::leak(vec![1u8; 1 << 20].into_boxed_slice()));
            }
            "hold-body" => {
                if let Ok(body) = request.consume()
                    && let Ok(stream) = body.stream()
                {
                    HELD.with(|held| *held.borrow_mut() = Some((stream, body)));
                }
            }
            "read-held" => {
                let held = HELD.with(|held| held.borrow_mut().take());
                text = match held {
                    None => "none held".to_owned(),
                    Some((stream, body)) => {
                        let read = read_all(&stream);
                        // A stream goes before the body it is a child of.
                        drop(stream);
                        drop(body);
                        read
                    }
                };
            }
            "status" => {
                let code = number(query, "code").unwrap_or(200);
                let response = OutgoingResponse::new(Fields::new());
                let _ = response.set_status_code(u16::try_from(code).unwrap_or(200));
                let body = response.body().expect("a body");
                ResponseOutparam::set(out, Ok(response));
                let _ = OutgoingBody::finish(body, None);
                return;
            }
            "headers" => {
                let value = vec![b'v'; number(query, "bytes").unwrap_or(1)];
                let headers: Vec<(String, Vec<u8>)> = (0..number(query, "n").unwrap_or(1))
                    .map(|i| (format!("x-h-{i}"), value.clone()))
                    .collect();
                let fields = Fields::from_list(&headers).expect("valid headers");
                let response = OutgoingResponse::new(fields);
                let body = response.body().expect("a body");
                ResponseOutparam::set(out, Ok(response));
                let _ = OutgoingBody::finish(body, None);
                return;
            }
            "stream" => {
                let (stream, body) = respond_head(out, &whoami);
                write_in_chunks(&stream, b's', number(query, "bytes").unwrap_or(0));
                let _ = stream.blocking_flush();
                drop(stream);
                let _ = OutgoingBody::finish(body, None);
                return;
            }
            "aliased" => {
                let bytes = number(query, "bytes").unwrap_or(1);
                let mut one = vec![b'v'; bytes];
                let headers: Vec<(String, Vec<u8>)> = (0..number(query, "n").unwrap_or(1))
                    .map(|i| {
                        // SAFETY: each view is forgotten below, never dropped: the buffer is
                        // freed once, as `one`.
                        let view = unsafe { Vec::from_raw_parts(one.as_mut_ptr(), bytes, bytes) };
                        (format!("x-a{i}"), view)
                    })
                    .collect();
                text = match Fields::from_list(&headers) {
                    Ok(_) => "from-list ok".to_owned(),
                    Err(e) => format!("from-list err {e:?}"),
                };
                for (_, view) in headers {
                    std::mem::forget(view);
                }
                drop(one);
            }
            "fields" => {
                let value = vec![b'v'; number(query, "bytes").unwrap_or(1)];
                let headers: Vec<(String, Vec<u8>)> = (0..number(query, "n").unwrap_or(1))
                    .map(|i| (format!("x-h-{i}"), value.clone()))
                    .collect();
                let count = number(query, "count").unwrap_or(1);
                let mut made = Vec::with_capacity(count);
                text = loop {
                    if made.len() == count {
                        break format!("made {count}");
                    }
                    match Fields::from_list(&headers) {
                        Ok(fields) => made.push(fields),
                        Err(e) => break format!("made {}, then {e:?}", made.len()),
                    }
                };
                if number(query, "keep") == Some(1) {
                    KEPT_FIELDS.with(|kept| kept.borrow_mut().extend(made));
                }
            }
            "bodies" => {
                let count = number(query, "count").unwrap_or(1);
                let bytes = number(query, "bytes").unwrap_or(1);
                let chunk = vec![b'b'; bytes.min(1 << 20)];
                let mut made = Vec::with_capacity(count);
                text = loop {
                    if made.len() == count {
                        break format!("made {count}");
                    }
                    let request = OutgoingRequest::new(Fields::new());
                    let Ok(body) = request.body() else {
                        break format!("made {}, then no body", made.len());
                    };
                    let Ok(stream) = body.write() else {
                        break format!("made {}, then no stream", made.len());
                    };
                    let mut left = bytes;
                    while left > 0 {
                        let Ok(room @ 1..) = stream.check_write() else {
                            break;
                        };
                        let n = left.min(usize::try_from(room).unwrap_or(usize::MAX));
                        if stream.write(&chunk[..n.min(chunk.len())]).is_err() {
                            break;
                        }
                        left -= n.min(chunk.len());
                    }
                    made.push((stream, body, request));
                };
                if number(query, "keep") == Some(1) {
                    for (stream, body, request) in made {
                        drop(stream);
                        let _ = OutgoingBody::finish(body, None);
                        KEPT_UNSENT.with(|kept| kept.borrow_mut().push(request));
                    }
                }
            }
            "requests" => {
                let count = number(query, "count").unwrap_or(1);
                let long = |name: &str, byte: u8| vec![byte; number(query, name).unwrap_or(0)];
                let method = String::from_utf8(long("method", b'M')).unwrap_or_default();
                let authority = String::from_utf8(long("authority", b'a')).unwrap_or_default();
                let mut path = String::from_utf8(long("path", b'p')).unwrap_or_default();
                if !path.is_empty() {
                    path.replace_range(..1, "/");
                }
                let mut made = Vec::with_capacity(count);
                text = loop {
                    if made.len() == count {
                        break format!("made {count}");
                    }
                    let request = OutgoingRequest::new(Fields::new());
                    if !method.is_empty()
                        && request.set_method(&Method::Other(method.clone())).is_err()
                    {
                        break format!("made {}, then bad method", made.len());
                    }
                    if !authority.is_empty() && request.set_authority(Some(&authority)).is_err() {
                        break format!("made {}, then bad authority", made.len());
                    }
                    if !path.is_empty() && request.set_path_with_query(Some(&path)).is_err() {
                        break format!("made {}, then bad path", made.len());
                    }
                    made.push(request);
                };
            }
            "send" => {
                let value = vec![b'v'; number(query, "bytes").unwrap_or(1)];
                let headers: Vec<(String, Vec<u8>)> = (0..number(query, "n").unwrap_or(0))
                    .map(|i| (format!("x-h-{i}"), value.clone()))
                    .collect();
                let to = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("to="))
                    .unwrap_or("/hang");
                let count = number(query, "count").unwrap_or(1);
                let body_bytes = number(query, "body").unwrap_or(0);
                let head =
                    OutgoingRequest::new(Fields::from_list(&headers).expect("valid headers"));
                let mut sent = Vec::with_capacity(count);
                text = loop {
                    if sent.len() == count {
                        break format!("sent {count}");
                    }
                    let request = OutgoingRequest::new(head.headers());
                    let _ = request.set_authority(Some("app"));
                    let _ = request.set_path_with_query(Some(to));
                    let body = if body_bytes > 0 {
                        let _ = request.set_method(&Method::Post);
                        match request.body() {
                            Ok(body) => Some(body),
                            Err(()) => break format!("sent {}, then no body", sent.len()),
                        }
                    } else {
                        None
                    };
                    let future = match outgoing_handler::handle(request, None) {
                        Ok(future) => future,
                        Err(e) => break format!("sent {}, then {e:?}", sent.len()),
                    };
                    if let Some(body) = body {
                        if let Ok(stream) = body.write() {
                            write_in_chunks(&stream, b'b', body_bytes);
                        }
                        let _ = OutgoingBody::finish(body, None);
                    }
                    sent.push(future);
                };
                let ms = u64::try_from(number(query, "ms").unwrap_or(0)).unwrap_or(0);
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                let mut reading = Vec::new();
                if let Some(read) = number(query, "read") {
                    for future in &sent {
                        future.subscribe().block();
                        let Some(Ok(Ok(response))) = future.get() else {
                            continue;
                        };
                        let Ok(body) = response.consume() else {
                            continue;
                        };
                        let Ok(stream) = body.stream() else {
                            continue;
                        };
                        let mut got = 0;
                        while got < read {
                            let Ok(chunk) = stream.blocking_read(64 << 10) else {
                                break;
                            };
                            got += chunk.len();
                        }
                        let _ = stream.blocking_read(1);
                        reading.push((stream, body, response));
                    }
                    text = format!("{text}, read {}", reading.len());
                }
                if number(query, "keep") == Some(1) {
                    KEPT_SENT.with(|kept| kept.borrow_mut().extend(sent));
                    KEPT_READING.with(|kept| kept.borrow_mut().extend(reading));
                }
            }
            "random" => {
                let bytes = number(query, "bytes").unwrap_or(1);
                let random =
                    wasi::random::random::get_random_bytes(u64::try_from(bytes).unwrap_or(0));
                text = format!("random {}", random.len());
            }
            _ => {}
        }
        let (stream, body) = respond_head(out, &whoami);
        write(&stream, text.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Sends a 200 head with `x-instance` and `x-uses`; returns the body and its stream.
fn respond_head(out: ResponseOutparam, whoami: &str) -> (OutputStream, OutgoingBody) {
    let mut headers = vec![("content-type".to_owned(), b"text/plain".to_vec())];
    for part in whoami.split(' ') {
        if let Some((name, value)) = part.split_once('=') {
            headers.push((format!("x-{name}"), value.as_bytes().to_vec()));
        }
    }
    let fields = Fields::from_list(&headers).expect("valid headers");
    let response = OutgoingResponse::new(fields);
    let body = response.body().expect("a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("a body stream");
    (stream, body)
}

/// Writes `bytes` bytes of `byte` to `stream`, each `write` as large as its `check-write`
/// allows (at most 1 MiB), waiting when it allows none, as a guest streaming a large body
/// does; stops early if the stream fails.
fn write_in_chunks(stream: &OutputStream, byte: u8, bytes: usize) {
    let chunk = vec![byte; bytes.min(1 << 20)];
    let mut left = bytes;
    while left > 0 {
        let room = match stream.check_write() {
            Ok(0) => {
                stream.subscribe().block();
                continue;
            }
            Ok(room) => usize::try_from(room).unwrap_or(usize::MAX),
            Err(_) => break,
        };
        let n = left.min(room).min(chunk.len());
        if stream.write(&chunk[..n]).is_err() {
            break;
        }
        left -= n;
    }
}

/// The number after `name=` in a query.
fn number(query: &str, name: &str) -> Option<usize> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn write(stream: &OutputStream, bytes: &[u8]) {
    let _ = stream.blocking_write_and_flush(bytes);
}

/// Everything a held body gives now.
fn read_all(stream: &InputStream) -> String {
    let mut read = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => read.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return format!("read {}", String::from_utf8_lossy(&read)),
            Err(StreamError::LastOperationFailed(_)) => return "error".to_owned(),
        }
    }
}

export!(Handler);
