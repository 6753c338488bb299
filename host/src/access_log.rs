//! The access log: one line per request, formatted on the request's own thread when its
//! response ends and appended to a shared batch (bounded: past `queue` records the record is
//! dropped and counted; a request never waits for the disk). A writer thread writes the batch
//! every 50 ms, as JSON lines or `key=value` lines, to a file reopened on SIGUSR1 (for
//! logrotate's `mv` + signal) or to stdout/stderr.
//!
//! Formatting where the request ends costs less than handing a record to the writer: nothing
//! is allocated or reference-counted per request, and the request's header bytes are let go
//! at once (hyper reuses its read buffer only when nothing else holds a piece of it).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Version};

use crate::config::{AccessLogConfig, Config, LogField, LogFormat, LogItem, LogTarget};
use crate::generation::Generation;
use crate::metrics::{Tick, metrics};
use crate::tls::TlsInfo;

/// The process's access log.
#[derive(Debug)]
pub struct AccessLog {
    shared: Arc<Shared>,
    /// The configuration it was started with (a reload that changes it is reported, not
    /// applied: the writer is the process's).
    pub config: AccessLogConfig,
}

/// What the request threads and the writer share.
#[derive(Debug)]
struct Shared {
    /// Lines formatted and not yet written.
    batch: Mutex<Batch>,
    /// The output and the writer's second buffer; held while a batch is written.
    out: Mutex<Writer>,
    /// SIGUSR1 came: reopen the file after writing what is queued.
    reopen: AtomicBool,
    format: LogFormat,
    /// The fields `fields` chose, each with what precedes it; `None`: every field (the fast
    /// paths, [`Entry::write_json`] and [`Entry::write`]).
    fields: Option<Box<[Chosen]>>,
    /// The request headers `fields` chose, in their order: what each request keeps a copy of.
    request_headers: Box<[http::HeaderName]>,
    /// Room a chosen record needs beyond [`Entry::room`] ([`Chosen::room`]).
    chosen_room: usize,
    /// The most records a batch holds.
    limit: usize,
}

/// A field of a record whose fields were chosen, and what precedes its value in either
/// format: `{"name":` (the first) or `,"name":` in JSON, `name=` or ` name=` in text.
#[derive(Debug)]
struct Chosen {
    field: ChosenField,
    json: Prefix,
    text: Prefix,
}

/// What a chosen field writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChosenField {
    Field(LogField),
    /// The request header at this index of [`Entry::request_headers`].
    RequestHeader(usize),
}

impl Chosen {
    /// The fields `fields` chose, or `None` for every field in the usual order (the same
    /// bytes, by the full record's faster path).
    fn unless_all(fields: &[LogItem]) -> Option<Box<[Chosen]>> {
        let all = LogField::ALL.map(LogItem::Field);
        (!fields.is_empty() && fields != all).then(|| Chosen::list(fields))
    }

    fn list(fields: &[LogItem]) -> Box<[Chosen]> {
        debug_assert!(
            fields
                .iter()
                .enumerate()
                .all(|(i, f)| !fields[..i].contains(f)),
            "a field chosen twice would overrun the record's room"
        );
        let mut headers = 0;
        let chosen = fields.iter().enumerate().map(|(i, item)| {
            let name = item.name();
            let (json, text) = if i == 0 {
                (format!("{{\"{name}\":"), format!("{name}="))
            } else {
                (format!(",\"{name}\":"), format!(" {name}="))
            };
            let field = match item {
                LogItem::Field(field) => ChosenField::Field(*field),
                LogItem::RequestHeader(_) => {
                    headers += 1;
                    ChosenField::RequestHeader(headers - 1)
                }
            };
            Chosen {
                field,
                json: Prefix::new(&json),
                text: Prefix::new(&text),
            }
        });
        chosen.collect()
    }

    /// Room a record of `chosen` needs beyond [`Entry::room`] (whose [`FIXED_ROOM`] is for
    /// the record's own fields, not for headers): each field's prefix, in the format with
    /// the longer one (a header's name has no bound), and room for `null` (text: `-`), the
    /// value of a header the client did not send, which [`Entry::room`] does not count.
    fn room(chosen: &[Chosen]) -> usize {
        let absent = b"null".len();
        chosen
            .iter()
            .map(|c| c.json.text.len().max(c.text.text.len()) + absent)
            .sum()
    }
}

/// What precedes a chosen field's value. Most (every field's: the longest,
/// `,"upstream_duration":`, is 21 bytes) fit a block of fixed size, copied whole (a few
/// moves, where a copy of its own length is a `memcpy` call), then the line goes on after
/// its length; a longer one (a request header's) is copied by its length.
#[derive(Debug)]
struct Prefix {
    block: [u8; PREFIX_BLOCK],
    text: Box<[u8]>,
}

const PREFIX_BLOCK: usize = 32;

impl Prefix {
    fn new(text: &str) -> Prefix {
        let mut block = [0; PREFIX_BLOCK];
        let len = text.len().min(PREFIX_BLOCK);
        block[..len].copy_from_slice(&text.as_bytes()[..len]);
        Prefix {
            block,
            text: text.as_bytes().into(),
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    lines: Lines,
    records: u64,
}

#[derive(Debug)]
struct Writer {
    out: Output,
    target: LogTarget,
    /// Swapped with the batch's lines, so formatting goes on while these are written.
    spare: Lines,
}

/// Formatted lines, in a buffer kept at its full length: the room a line is written into is
/// zeroed once, when the buffer grows, not for every line (a `Vec` would have to be resized
/// to the room, then truncated, for each).
#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
    /// The bytes of `buf` that hold lines; the rest is room (zeroes, or bytes of lines
    /// already written).
    len: usize,
}

impl Lines {
    /// Appends what `write` writes, given room for at most `room` bytes.
    fn push(&mut self, room: usize, write: impl FnOnce(&mut Cursor<'_>)) {
        let end = self.len + room;
        if self.buf.len() < end {
            // Doubling: a busy interval zeroes its room a few times, not once a line.
            self.buf.resize(end.max(2 * self.buf.len()), 0);
        }
        let mut cursor = Cursor {
            room: &mut self.buf[self.len..end],
            len: 0,
        };
        write(&mut cursor);
        self.len += cursor.len;
    }

    fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Forgets the lines. A buffer past [`KEEP_BYTES`] is given back, down to twice what its
    /// lines took, only once they took less than a quarter of it (a burst has passed): a log
    /// that fills more than [`KEEP_BYTES`] in every interval keeps its buffer, instead of
    /// growing it again, zeroing the new room and faulting its pages in, every interval.
    fn clear(&mut self) {
        let used = std::mem::take(&mut self.len);
        if self.buf.len() > KEEP_BYTES && used < self.buf.len() / 4 {
            self.buf.truncate((2 * used).max(KEEP_BYTES));
            self.buf.shrink_to_fit();
        }
    }

    /// The lines, as an owned buffer of their length.
    fn into_vec(mut self) -> Vec<u8> {
        self.buf.truncate(self.len);
        self.buf
    }
}

/// How often the writer writes what has queued.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// A buffer is kept at least this large; one that grew past it is given back once a burst is
/// over ([`Lines::clear`]).
const KEEP_BYTES: usize = 1 << 20;

/// One request's record, borrowed from what the request path holds when its response ends.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The generation the request was served by (for route, cluster and endpoint names).
    pub generation: &'a Generation,
    /// When the request's head arrived: the reading the request's duration is timed from
    /// (the record's wall-clock time is derived from it).
    pub time: Tick,
    /// `x-request-id`.
    pub request_id: Option<&'a HeaderValue>,
    /// weir made the request id (a UUID: nothing in it needs escaping).
    pub request_id_is_ours: bool,
    /// The W3C trace id, when the request is traced.
    pub trace_id: Option<&'a str>,
    /// The client's address, `ip:port`.
    pub client: &'a str,
    /// The request's method.
    pub method: &'a Method,
    /// The `Host` (or HTTP/2 `:authority`).
    pub host: Option<&'a [u8]>,
    /// The request target's path and query as the client sent them.
    pub path: &'a str,
    /// The client's HTTP version.
    pub version: Version,
    /// The response status.
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Head of the request to the end of the response body.
    pub duration: Duration,
    /// The first attempt to the upstream response head, retries included.
    pub upstream_duration: Option<Duration>,
    /// The route's index in the generation.
    pub route: Option<usize>,
    /// The cluster's index.
    pub cluster: Option<usize>,
    /// The endpoint of the last attempt, by index in the cluster.
    pub endpoint: Option<usize>,
    /// Attempts sent to endpoints.
    pub attempts: u32,
    /// The plugin that answered the request itself, if one did.
    pub plugin: Option<&'a str>,
    /// The response body did not reach its end (the client went away, or the upstream
    /// failed mid-body).
    pub incomplete: bool,
    /// The TLS session, on a TLS listener.
    pub tls: Option<&'a TlsInfo>,
    /// The request headers `fields` chose, in their order ([`AccessLog::request_headers`]).
    pub request_headers: &'a [Option<Bytes>],
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(config: &AccessLogConfig) -> io::Result<AccessLog> {
        let fields = config.fields.as_deref().unwrap_or_default();
        let chosen = config.fields.as_deref().and_then(Chosen::unless_all);
        let shared = Arc::new(Shared {
            batch: Mutex::default(),
            out: Mutex::new(Writer {
                out: Output::open(&config.to)?,
                target: config.to.clone(),
                spare: Lines::default(),
            }),
            reopen: AtomicBool::new(false),
            format: config.format,
            chosen_room: chosen.as_deref().map_or(0, Chosen::room),
            fields: chosen,
            request_headers: fields
                .iter()
                .filter_map(|item| match item {
                    LogItem::RequestHeader(name) => Some(name.clone()),
                    LogItem::Field(_) => None,
                })
                .collect(),
            limit: config.queue,
        });
        let writer = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_every_interval(writer))?;
        Ok(AccessLog {
            shared,
            config: config.clone(),
        })
    }

    /// Copies of the request headers `fields` chose, in their order (none when it chose
    /// none): copied, not kept as hyper's values, which would keep the connection's read
    /// buffer from being reused until the response ends.
    pub fn request_headers(&self, headers: &http::HeaderMap) -> Vec<Option<Bytes>> {
        let names = &self.shared.request_headers;
        if names.is_empty() {
            // The usual case: not even an empty iterator's collecting.
            return Vec::new();
        }
        names
            .iter()
            .map(|name| {
                let value = headers.get(name)?;
                Some(Bytes::copy_from_slice(value.as_bytes()))
            })
            .collect()
    }

    /// Whether this request is one of the sampled share.
    pub fn sampled(&self) -> bool {
        self.config.sample >= 1.0 || fastrand::f64() < self.config.sample
    }

    /// Formats `entry` into the batch; drops (and counts) it when the writer is behind.
    /// Never waits for the disk: the lock is held only to format one line or to swap buffers.
    pub fn write(&self, entry: &Entry<'_>) {
        let shared = &*self.shared;
        let mut batch = lock(&shared.batch);
        if batch.records >= shared.limit as u64 {
            drop(batch);
            metrics().access_log_dropped.inc();
            return;
        }
        batch.records += 1;
        let format = shared.format;
        match &shared.fields {
            None => batch.lines.push(entry.room(), |out| match format {
                LogFormat::Json => entry.write_json(out),
                LogFormat::Text => entry.write(&mut Text(out)),
            }),
            Some(fields) => {
                batch
                    .lines
                    .push(entry.room() + shared.chosen_room, |out| match format {
                        LogFormat::Json => entry.write_chosen(fields, &mut Json(out)),
                        LogFormat::Text => entry.write_chosen(fields, &mut Text(out)),
                    })
            }
        }
    }

    /// Writes every record formatted so far: at shutdown, so the last requests' records are
    /// not lost. Blocks on the disk.
    pub fn flush(&self) {
        self.shared.write_batch();
    }

    /// Reopens the file (after logrotate moved it) once what is queued is written: within
    /// [`WRITE_INTERVAL`].
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
    }
}

/// A lock whose holder panicked still guards plain bytes: go on with them.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: writes the batch every [`WRITE_INTERVAL`] (one `write` per batch on a
/// busy proxy; request threads never wake it) until the log is gone.
fn write_every_interval(shared: Weak<Shared>) {
    loop {
        std::thread::sleep(WRITE_INTERVAL);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.write_batch();
    }
}

impl Shared {
    /// Takes the batch and writes it, then reopens the file if SIGUSR1 asked: records
    /// formatted before the signal was seen go to the old file.
    fn write_batch(&self) {
        let mut writer = lock(&self.out);
        let writer = &mut *writer;
        let records = {
            let mut batch = lock(&self.batch);
            std::mem::swap(&mut batch.lines, &mut writer.spare);
            std::mem::take(&mut batch.records)
        };
        if records > 0 {
            match writer
                .out
                .write_all(writer.spare.text())
                .and_then(|()| writer.out.flush())
            {
                Ok(()) => metrics().access_log_written.inc_by(records),
                Err(e) => tracing::error!(error = %e, "access log: cannot write"),
            }
        }
        // Even after an interval without records: a buffer grown in a burst is given back
        // once traffic stops, not kept at its peak while the log is idle.
        writer.spare.clear();
        if self.reopen.swap(false, Ordering::AcqRel) {
            match Output::open(&writer.target) {
                Ok(out) => {
                    writer.out = out;
                    tracing::info!(target = ?writer.target, "access log reopened");
                }
                Err(e) => {
                    tracing::error!(error = %e, target = ?writer.target, "access log: cannot reopen; still writing to the old file")
                }
            }
        }
    }
}

#[derive(Debug)]
enum Output {
    Stdout(io::Stdout),
    Stderr(io::Stderr),
    /// Unbuffered: each batch is one `write`.
    File(File),
}

impl Output {
    fn open(target: &LogTarget) -> io::Result<Output> {
        Ok(match target {
            LogTarget::Stdout => Output::Stdout(io::stdout()),
            LogTarget::Stderr => Output::Stderr(io::stderr()),
            LogTarget::File(path) => {
                Output::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        })
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout(out) => out.write_all(line),
            Output::Stderr(out) => out.write_all(line),
            Output::File(out) => out.write_all(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(out) => out.flush(),
            Output::Stderr(out) => out.flush(),
            Output::File(out) => out.flush(),
        }
    }
}

/// The pieces of a generation's records that are the same from one request to the next,
/// formatted once, when the generation is built, by the same code that writes any record's
/// fields (so they read the same): each route's field, each cluster's and endpoint's, and
/// the end of a record in the usual case. A record is then a few copies where it was a field
/// at a time.
#[derive(Debug, Default)]
pub struct Names {
    /// Per route: `,"route":"name"`.
    routes: Vec<Box<[u8]>>,
    /// `,"route":null`.
    no_route: Box<[u8]>,
    /// Per cluster: per endpoint `,"cluster":"name","endpoint":"host:port"`, then the
    /// cluster's with no endpoint.
    clusters: Vec<Vec<Box<[u8]>>>,
    /// `,"cluster":null,"endpoint":null`.
    no_cluster: Box<[u8]>,
    /// From `plugin` to the end of the line, for a record no plugin answered, whose response
    /// ended, on a connection without TLS (empty when there is no access log).
    tail: Box<[u8]>,
    /// The longest route piece, the longest cluster piece and the tail, together.
    room: usize,
}

impl Names {
    fn route(&self, route: Option<usize>) -> &[u8] {
        route
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.no_route)
    }

    fn cluster(&self, cluster: Option<usize>, endpoint: Option<usize>) -> &[u8] {
        let Some(endpoints) = cluster.and_then(|c| self.clusters.get(c)) else {
            return &self.no_cluster;
        };
        // The last is the cluster's piece without an endpoint.
        let i = endpoint.map_or(endpoints.len() - 1, |e| e.min(endpoints.len() - 1));
        &endpoints[i]
    }
}

impl AccessLog {
    /// The pieces of generation `generation`'s records (of `config`), formatted for this log.
    pub fn names(&self, config: &Config, generation: u64) -> Names {
        let format = self.shared.format;
        let piece = |room: usize, write: &dyn Fn(&mut dyn Line<'_>)| -> Box<[u8]> {
            let mut text = Lines::default();
            text.push(FIXED_ROOM + room, |out| match format {
                LogFormat::Json => write(&mut Json(out)),
                LogFormat::Text => write(&mut Text(out)),
            });
            text.into_vec().into_boxed_slice()
        };
        let route = |name: Option<&str>| {
            let room = escaped_room(name.map_or(0, str::len));
            piece(room, &|line| route_field(line, name.map(str::as_bytes)))
        };
        let cluster = |cluster: Option<&str>, endpoint: Option<&str>| {
            let room = escaped_room(cluster.map_or(0, str::len))
                + escaped_room(endpoint.map_or(0, str::len));
            piece(room, &|line| {
                cluster_fields(
                    line,
                    cluster.map(str::as_bytes),
                    endpoint.map(str::as_bytes),
                );
            })
        };
        let routes: Vec<_> = config.routes.iter().map(|r| route(Some(&r.name))).collect();
        let clusters: Vec<Vec<_>> = config
            .clusters
            .iter()
            .map(|c| {
                let endpoints = c.endpoints.iter().map(|e| e.authority.as_str());
                endpoints
                    .map(Some)
                    .chain([None])
                    .map(|e| cluster(Some(&c.name), e))
                    .collect()
            })
            .collect();
        let tail = piece(0, &|line| {
            tail_fields(line, None, false, generation, None);
            line.end();
        });
        let longest = |pieces: &mut dyn Iterator<Item = &Box<[u8]>>| {
            pieces.map(|p| p.len()).max().unwrap_or(0)
        };
        let no_route = route(None);
        let no_cluster = cluster(None, None);
        let room = longest(&mut routes.iter().chain([&no_route]))
            + longest(&mut clusters.iter().flatten().chain([&no_cluster]))
            + tail.len();
        Names {
            routes,
            no_route,
            clusters,
            no_cluster,
            tail,
            room,
        }
    }
}

/// A field's value.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// Text, escaped as its format needs.
    Text(&'a [u8]),
    /// Text that never needs escaping (a time, an address, a method): quoted in JSON.
    Safe(&'a [u8]),
    /// A number, a boolean, or text already escaped for the format: written as is.
    Bare(&'a [u8]),
    /// Not known.
    Null,
}

impl<'a> Value<'a> {
    fn text(text: Option<&'a [u8]>) -> Value<'a> {
        text.map_or(Value::Null, Value::Text)
    }
}

/// A line format: where it writes, whether it is JSON, how it writes a value and how it ends
/// a line. Each field comes with what precedes its value in either format (its name, and the
/// separator before it), as constants, so each is a few stores; the format picks its own.
/// (`'b`: the room's.)
trait Line<'b> {
    fn out(&mut self) -> &mut Cursor<'b>;
    /// JSON, or else text: constant for each format, so the choice is compiled away.
    fn is_json(&self) -> bool;
    fn value(&mut self, value: Value<'_>);
    /// Seconds with microsecond precision: `0.001234`.
    fn seconds_value(&mut self, value: Option<Duration>);
    fn end(&mut self);

    #[inline(always)]
    fn field(&mut self, json: &'static str, text: &'static str, value: Value<'_>) {
        let name = if self.is_json() { json } else { text };
        self.out().put(name.as_bytes());
        self.value(value);
    }

    #[inline(always)]
    fn seconds(&mut self, json: &'static str, text: &'static str, value: Option<Duration>) {
        let name = if self.is_json() { json } else { text };
        self.out().put(name.as_bytes());
        self.seconds_value(value);
    }

    /// A chosen field ([`Entry::write_chosen`]).
    #[inline(always)]
    fn chosen(&mut self, chosen: &Chosen, value: Value<'_>) {
        let name = if self.is_json() {
            &chosen.json
        } else {
            &chosen.text
        };
        self.out().put_prefix(name);
        self.value(value);
    }

    /// A chosen field in seconds.
    #[inline(always)]
    fn chosen_seconds(&mut self, chosen: &Chosen, value: Option<Duration>) {
        let name = if self.is_json() {
            &chosen.json
        } else {
            &chosen.text
        };
        self.out().put_prefix(name);
        self.seconds_value(value);
    }

    /// Fields already formatted for this format (`Names`' pieces).
    #[inline(always)]
    fn piece(&mut self, piece: &[u8]) {
        self.out().put(piece);
    }
}

/// `line.field` with the name's two prefixes: `{"name":` (the first) or `,"name":` in JSON,
/// `name=` or ` name=` in text.
macro_rules! field {
    ($line:ident . $method:ident(first $name:literal, $value:expr)) => {
        $line.$method(concat!("{\"", $name, "\":"), concat!($name, "="), $value)
    };
    ($line:ident . $method:ident($name:literal, $value:expr)) => {
        $line.$method(
            concat!(",\"", $name, "\":"),
            concat!(" ", $name, "="),
            $value,
        )
    };
}

/// The most a field's text can grow when escaped (`\u0001` for each byte) and quoted.
fn escaped_room(len: usize) -> usize {
    6 * len + 2
}

impl Entry<'_> {
    /// Room enough for the record in either format: its names, numbers and punctuation fit in
    /// [`FIXED_ROOM`], its generation's pieces in `Names::room`; its texts take at most
    /// [`escaped_room`].
    fn room(&self) -> usize {
        let texts = [
            self.request_id.map_or(0, |v| v.len()),
            self.trace_id.map_or(0, str::len),
            self.client.len(),
            self.method.as_str().len(),
            self.host.map_or(0, <[u8]>::len),
            self.path.len(),
        ];
        let headers = self.request_headers.iter().flatten().map(|v| v.len());
        let texts: usize = texts.into_iter().chain(headers).map(escaped_room).sum();
        let mut room = FIXED_ROOM + self.generation.log_names.room + texts;
        if !self.usual_tail() {
            let tls = self.tls.map_or(0, |t| {
                escaped_room(t.version.len())
                    + escaped_room(t.server_name.as_deref().map_or(0, str::len))
                    + escaped_room(t.client_subject.as_deref().map_or(0, str::len))
            });
            room += escaped_room(self.plugin.map_or(0, str::len)) + tls;
        }
        room
    }

    /// The record ends as most do, with the generation's `Names::tail`.
    fn usual_tail(&self) -> bool {
        self.plugin.is_none() && !self.incomplete && self.tls.is_none()
    }

    /// The record's fields, in order.
    #[inline(always)]
    fn write<'b>(&self, line: &mut impl Line<'b>) {
        let names = &self.generation.log_names;
        let mut digits = Digits::default();
        let time = record_time(self.time);
        field!(line.field(first "time", Value::Safe(&time)));
        let request_id = match self.request_id {
            Some(id) if self.request_id_is_ours => Value::Safe(id.as_bytes()),
            id => Value::text(id.map(HeaderValue::as_bytes)),
        };
        field!(line.field("request_id", request_id));
        let trace_id = self.trace_id.map(str::as_bytes);
        field!(line.field("trace_id", trace_id.map_or(Value::Null, Value::Safe)));
        field!(line.field("client", Value::Safe(self.client.as_bytes())));
        // A method is a token: letters, digits and !#$%&'*+-.^_`|~
        field!(line.field("method", Value::Safe(self.method.as_str().as_bytes())));
        field!(line.field("host", Value::text(self.host)));
        field!(line.field("path", Value::Text(self.path.as_bytes())));
        field!(line.field("protocol", Value::Safe(protocol(self.version).as_bytes())));
        let status = number(u64::from(self.status), &mut digits);
        field!(line.field("status", Value::Bare(status)));
        field!(line.field("bytes_in", Value::Bare(number(self.bytes_in, &mut digits))));
        field!(line.field(
            "bytes_out",
            Value::Bare(number(self.bytes_out, &mut digits))
        ));
        field!(line.seconds("duration", Some(self.duration)));
        field!(line.seconds("upstream_duration", self.upstream_duration));
        line.piece(names.route(self.route));
        line.piece(names.cluster(self.cluster, self.endpoint));
        let attempts = number(u64::from(self.attempts), &mut digits);
        field!(line.field("attempts", Value::Bare(attempts)));
        if self.usual_tail() && !names.tail.is_empty() {
            line.piece(&names.tail);
        } else {
            let number = self.generation.number;
            tail_fields(line, self.plugin, self.incomplete, number, self.tls);
            line.end();
        }
    }

    /// The record's `fields`, in their order: what `fields` in `[access_log]` chose. Each
    /// field's value is what [`Entry::write`] writes for it (the test
    /// `chosen_fields_are_written_as_in_the_full_record` holds them equal).
    fn write_chosen<'b>(&self, fields: &[Chosen], line: &mut impl Line<'b>) {
        let mut digits = Digits::default();
        let config = &self.generation.config;
        let cluster = self.cluster.and_then(|c| config.clusters.get(c));
        let tls = self.tls;
        for chosen in fields {
            let field = match chosen.field {
                ChosenField::Field(field) => field,
                ChosenField::RequestHeader(i) => {
                    let value = self.request_headers.get(i).and_then(Option::as_deref);
                    line.chosen(chosen, Value::text(value));
                    continue;
                }
            };
            let value = match field {
                LogField::Time => {
                    line.chosen(chosen, Value::Safe(&record_time(self.time)));
                    continue;
                }
                LogField::RequestId => match self.request_id {
                    Some(id) if self.request_id_is_ours => Value::Safe(id.as_bytes()),
                    id => Value::text(id.map(HeaderValue::as_bytes)),
                },
                LogField::TraceId => self
                    .trace_id
                    .map_or(Value::Null, |id| Value::Safe(id.as_bytes())),
                LogField::Client => Value::Safe(self.client.as_bytes()),
                LogField::Method => Value::Safe(self.method.as_str().as_bytes()),
                LogField::Host => Value::text(self.host),
                LogField::Path => Value::Text(self.path.as_bytes()),
                LogField::Protocol => Value::Safe(protocol(self.version).as_bytes()),
                LogField::Status => Value::Bare(number(u64::from(self.status), &mut digits)),
                LogField::BytesIn => Value::Bare(number(self.bytes_in, &mut digits)),
                LogField::BytesOut => Value::Bare(number(self.bytes_out, &mut digits)),
                LogField::Duration => {
                    line.chosen_seconds(chosen, Some(self.duration));
                    continue;
                }
                LogField::UpstreamDuration => {
                    line.chosen_seconds(chosen, self.upstream_duration);
                    continue;
                }
                LogField::Route => Value::text(
                    self.route
                        .and_then(|r| config.routes.get(r))
                        .map(|r| r.name.as_bytes()),
                ),
                LogField::Cluster => Value::text(cluster.map(|c| c.name.as_bytes())),
                LogField::Endpoint => Value::text(
                    cluster
                        .zip(self.endpoint)
                        .and_then(|(c, e)| c.endpoints.get(e))
                        .map(|e| e.authority.as_str().as_bytes()),
                ),
                LogField::Attempts => Value::Bare(number(u64::from(self.attempts), &mut digits)),
                LogField::Plugin => Value::text(self.plugin.map(str::as_bytes)),
                LogField::Incomplete => {
                    Value::Bare(if self.incomplete { b"true" } else { b"false" })
                }
                LogField::Generation => Value::Bare(number(self.generation.number, &mut digits)),
                LogField::TlsVersion => Value::text(tls.map(|t| t.version.as_bytes())),
                LogField::TlsSni => Value::text(
                    tls.and_then(|t| t.server_name.as_deref())
                        .map(str::as_bytes),
                ),
                LogField::TlsClient => Value::text(
                    tls.and_then(|t| t.client_subject.as_deref())
                        .map(str::as_bytes),
                ),
            };
            line.chosen(chosen, value);
        }
        line.end();
    }

    /// [`Entry::write`] in JSON, the same bytes in fewer copies: each run of constants between
    /// two values (a closing quote, the next name, an opening quote) is one. The test
    /// `json_records_are_the_fields_in_json` holds the two equal.
    #[inline(always)]
    fn write_json(&self, out: &mut Cursor<'_>) {
        let names = &self.generation.log_names;
        let mut digits = Digits::default();
        out.put(b"{\"time\":\"");
        out.put(&record_time(self.time));
        match self.request_id {
            Some(id) if self.request_id_is_ours => {
                out.put(b"\",\"request_id\":\"");
                out.put(id.as_bytes());
                out.put(b"\",\"trace_id\":");
            }
            Some(id) => {
                out.put(b"\",\"request_id\":");
                json_string(id.as_bytes(), out);
                out.put(b",\"trace_id\":");
            }
            None => out.put(b"\",\"request_id\":null,\"trace_id\":"),
        }
        match self.trace_id {
            Some(id) => {
                out.put(b"\"");
                out.put(id.as_bytes());
                out.put(b"\",\"client\":\"");
            }
            None => out.put(b"null,\"client\":\""),
        }
        out.put(self.client.as_bytes());
        out.put(b"\",\"method\":\"");
        out.put(self.method.as_str().as_bytes());
        out.put(b"\",\"host\":");
        match self.host {
            Some(host) => json_string(host, out),
            None => out.put(b"null"),
        }
        out.put(b",\"path\":");
        json_string(self.path.as_bytes(), out);
        out.put(json_protocol(self.version).as_bytes());
        out.put(number(u64::from(self.status), &mut digits));
        out.put(b",\"bytes_in\":");
        out.put(number(self.bytes_in, &mut digits));
        out.put(b",\"bytes_out\":");
        out.put(number(self.bytes_out, &mut digits));
        out.put(b",\"duration\":");
        seconds(self.duration, out);
        match self.upstream_duration {
            Some(d) => {
                out.put(b",\"upstream_duration\":");
                seconds(d, out);
            }
            None => out.put(b",\"upstream_duration\":null"),
        }
        out.put(names.route(self.route));
        out.put(names.cluster(self.cluster, self.endpoint));
        out.put(b",\"attempts\":");
        out.put(number(u64::from(self.attempts), &mut digits));
        if self.usual_tail() && !names.tail.is_empty() {
            out.put(&names.tail);
        } else {
            let line = &mut Json(out);
            let number = self.generation.number;
            tail_fields(line, self.plugin, self.incomplete, number, self.tls);
            line.end();
        }
    }
}

/// `route`'s field.
#[inline(always)]
fn route_field<'b, L: Line<'b> + ?Sized>(line: &mut L, route: Option<&[u8]>) {
    field!(line.field("route", Value::text(route)));
}

/// `cluster`'s and `endpoint`'s fields.
#[inline(always)]
fn cluster_fields<'b, L: Line<'b> + ?Sized>(
    line: &mut L,
    cluster: Option<&[u8]>,
    endpoint: Option<&[u8]>,
) {
    field!(line.field("cluster", Value::text(cluster)));
    field!(line.field("endpoint", Value::text(endpoint)));
}

/// The fields from `plugin` on.
#[inline(always)]
fn tail_fields<'b, L: Line<'b> + ?Sized>(
    line: &mut L,
    plugin: Option<&str>,
    incomplete: bool,
    generation: u64,
    tls: Option<&TlsInfo>,
) {
    field!(line.field("plugin", Value::text(plugin.map(str::as_bytes))));
    field!(line.field(
        "incomplete",
        Value::Bare(if incomplete { b"true" } else { b"false" })
    ));
    let mut digits = Digits::default();
    let generation = number(generation, &mut digits);
    field!(line.field("generation", Value::Bare(generation)));
    let version = tls.map(|t| t.version.as_bytes());
    field!(line.field("tls_version", Value::text(version)));
    let sni = tls.and_then(|t| t.server_name.as_deref());
    field!(line.field("tls_sni", Value::text(sni.map(str::as_bytes))));
    let subject = tls.and_then(|t| t.client_subject.as_deref());
    field!(line.field("tls_client", Value::text(subject.map(str::as_bytes))));
}

/// Room for a number's digits: up to four from [`PAIRS`], more from `itoa`.
#[derive(Default)]
struct Digits {
    short: [u8; 4],
    long: itoa::Buffer,
}

/// `n` in decimal (a status, a byte count, attempts): up to four digits two at a time from
/// [`PAIRS`], longer with `itoa`.
#[inline(always)]
fn number(n: u64, digits: &mut Digits) -> &[u8] {
    match n {
        0..10 => {
            digits.short[0] = b'0' + n as u8;
            &digits.short[..1]
        }
        10..10_000 => {
            let n = n as u32;
            let [a, b] = pair(n / 100);
            let [c, d] = pair(n);
            digits.short = [a, b, c, d];
            // Without the leading zeros.
            let zeros = match n {
                0..100 => 2,
                100..1000 => 1,
                _ => 0,
            };
            &digits.short[zeros..]
        }
        _ => digits.long.format(n).as_bytes(),
    }
}

/// Room for a record's field names, separators, numbers, times and nulls: 23 names (under 20
/// bytes each with their punctuation), seven numbers of at most 20 digits, two durations of at
/// most 27 characters, a time of 26, and so on, with a wide margin.
const FIXED_ROOM: usize = 1024;

/// Where a line is written: into room reserved for it beforehand, so each piece is a bounds
/// check and a copy, not a capacity check and a length update of a `Vec` in memory.
struct Cursor<'b> {
    room: &'b mut [u8],
    len: usize,
}

impl Cursor<'_> {
    /// `prefix`, its whole block copied when the room has space for it (it always has: a
    /// record's room is at least [`FIXED_ROOM`] more than its texts).
    #[inline(always)]
    fn put_prefix(&mut self, prefix: &Prefix) {
        let len = prefix.text.len();
        match self.room.get_mut(self.len..self.len + PREFIX_BLOCK) {
            Some(room) if len <= PREFIX_BLOCK => {
                room.copy_from_slice(&prefix.block);
                self.len += len;
            }
            _ => self.put(&prefix.text),
        }
    }

    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.room.get_mut(self.len..end) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len = end;
            }
            // The room is reserved for the longest record; should it be short, the line is
            // cut rather than overrun.
            None => debug_assert!(false, "access log record longer than its room"),
        }
    }
}

/// One JSON object per line.
struct Json<'o, 'b>(&'o mut Cursor<'b>);

impl<'b> Line<'b> for Json<'_, 'b> {
    #[inline(always)]
    fn out(&mut self) -> &mut Cursor<'b> {
        self.0
    }

    #[inline(always)]
    fn is_json(&self) -> bool {
        true
    }

    #[inline(always)]
    fn value(&mut self, value: Value<'_>) {
        let out = &mut *self.0;
        match value {
            Value::Text(text) => json_string(text, out),
            Value::Safe(text) => {
                out.put(b"\"");
                out.put(text);
                out.put(b"\"");
            }
            Value::Bare(bare) => out.put(bare),
            Value::Null => out.put(b"null"),
        }
    }

    #[inline(always)]
    fn seconds_value(&mut self, value: Option<Duration>) {
        match value {
            Some(d) => seconds(d, self.0),
            None => self.0.put(b"null"),
        }
    }

    #[inline(always)]
    fn end(&mut self) {
        self.0.put(b"}\n");
    }
}

/// `key=value` pairs separated by spaces; values with spaces, quotes or `=` are quoted; an
/// absent value is `-`.
struct Text<'o, 'b>(&'o mut Cursor<'b>);

impl<'b> Line<'b> for Text<'_, 'b> {
    #[inline(always)]
    fn out(&mut self) -> &mut Cursor<'b> {
        self.0
    }

    #[inline(always)]
    fn is_json(&self) -> bool {
        false
    }

    #[inline(always)]
    fn value(&mut self, value: Value<'_>) {
        let out = &mut *self.0;
        match value {
            Value::Text(text) => text_value(text, out),
            Value::Safe(bare) | Value::Bare(bare) => out.put(bare),
            Value::Null => out.put(b"-"),
        }
    }

    #[inline(always)]
    fn seconds_value(&mut self, value: Option<Duration>) {
        match value {
            Some(d) => seconds(d, self.0),
            None => self.0.put(b"-"),
        }
    }

    #[inline(always)]
    fn end(&mut self) {
        self.0.put(b"\n");
    }
}

/// A protocol's name, and in JSON its field with the name of `status` after it (one copy
/// in [`Entry::write_json`]): both from one list.
macro_rules! protocols {
    ($($version:ident => $name:literal,)* _ => $other:literal) => {
        fn protocol(version: Version) -> &'static str {
            match version {
                $(Version::$version => $name,)*
                _ => $other,
            }
        }

        fn json_protocol(version: Version) -> &'static str {
            match version {
                $(Version::$version => concat!(",\"protocol\":\"", $name, "\",\"status\":"),)*
                _ => concat!(",\"protocol\":\"", $other, "\",\"status\":"),
            }
        }
    };
}

protocols! {
    HTTP_09 => "HTTP/0.9",
    HTTP_10 => "HTTP/1.0",
    HTTP_11 => "HTTP/1.1",
    HTTP_2 => "HTTP/2",
    HTTP_3 => "HTTP/3",
    _ => "HTTP"
}

/// How long a thread's reading of the system clock stands for it, in nanoseconds: a record's
/// time is derived from the counter reading its request's duration is timed from, the system
/// clock read about once a second per thread (as nginx caches its time).
const CLOCK_READ_EVERY: u64 = 1_000_000_000;

/// A thread's clock for records, and the latest time it formatted: cells a record reads
/// one at a time (a `Cell` of the whole would copy it in and out for each record).
struct RecordClock {
    /// A counter reading, and the Unix time then in nanoseconds: the latest system clock
    /// reading on this thread (none yet: `None`).
    read: Cell<Option<Tick>>,
    unix: Cell<u64>,
    /// The latest millisecond formatted, and its text: a busy thread formats each
    /// millisecond's time once, and a date once a second.
    millis: Cell<u64>,
    text: Cell<[u8; 24]>,
}

thread_local! {
    static CLOCK: RecordClock = const {
        RecordClock {
            read: Cell::new(None),
            unix: Cell::new(0),
            millis: Cell::new(u64::MAX),
            text: Cell::new([0; 24]),
        }
    };
}

/// The time of the counter reading `at` (taken on any thread, about now), as RFC 3339 in
/// UTC with milliseconds: `2026-12-02T20:51:37.123Z`.
#[inline]
fn record_time(at: Tick) -> [u8; 24] {
    CLOCK.with(|clock| {
        // The usual case: a request that started after this thread last read the system
        // clock, less than a second after, in the millisecond formatted last.
        let since_read = clock.read.get().filter(|&read| at >= read);
        let nanos = match since_read.map(|read| read.nanos_until(at)) {
            Some(since) if since < CLOCK_READ_EVERY => clock.unix.get() + since,
            _ => unix_nanos(clock, at),
        };
        let millis = nanos / 1_000_000;
        if millis != clock.millis.get() {
            let mut text = clock.text.get();
            time_text(millis, clock.millis.get(), &mut text);
            clock.text.set(text);
            clock.millis.set(millis);
        }
        clock.text.get()
    })
}

/// The Unix time of `at` in nanoseconds, for a reading before the thread's latest system
/// clock reading, or a second or more from it (reading the system clock again).
#[cold]
fn unix_nanos(clock: &RecordClock, at: Tick) -> u64 {
    let read = match clock.read.get() {
        Some(read) if read.nanos_until(at).max(at.nanos_until(read)) < CLOCK_READ_EVERY => read,
        _ => {
            let since = SystemTime::now().duration_since(UNIX_EPOCH);
            let unix = u64::try_from(since.unwrap_or_default().as_nanos()).unwrap_or(0);
            let read = Tick::now();
            clock.read.set(Some(read));
            clock.unix.set(unix);
            read
        }
    };
    let unix = clock.unix.get();
    if at >= read {
        unix + read.nanos_until(at)
    } else {
        unix.saturating_sub(at.nanos_until(read))
    }
}

/// Makes `text`, the time `last` (Unix milliseconds) as RFC 3339, the time `millis`: only its
/// milliseconds when both are in the same second.
fn time_text(millis: u64, last: u64, text: &mut [u8; 24]) {
    let second = millis / 1000;
    if second != last / 1000 {
        let date = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second));
        // `2026-12-02T20:51:37Z`: the date and time, then `.` for the milliseconds.
        if let Some(date) = date.to_string().as_bytes().get(..19) {
            text[..19].copy_from_slice(date);
        }
        text[19] = b'.';
    }
    let ms = (millis % 1000) as u16;
    text[20..].copy_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// The numbers 0 to 99 as two digits each.
const PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut n = 0;
    while n < 100 {
        pairs[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    pairs
};

/// `n % 100` as two digits.
#[inline(always)]
fn pair(n: u32) -> [u8; 2] {
    PAIRS[(n % 100) as usize]
}

/// Seconds with microsecond precision: `0.001234`.
#[inline(always)]
fn seconds(d: Duration, out: &mut Cursor<'_>) {
    out.put(number(d.as_secs(), &mut Digits::default()));
    let micros = d.subsec_micros();
    let [a, b] = pair(micros / 10_000);
    let [c, d] = pair(micros / 100);
    let [e, f] = pair(micros);
    out.put(&[b'.', a, b, c, d, e, f]);
}

/// Whether any byte needs escaping in a JSON string (a control, `"`, `\\`) or is not ASCII:
/// eight bytes at a time (each test is true when some byte of the word matches; SWAR, "Bit
/// Twiddling Hacks"), the last word overlapping the one before it.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let word_needs = |word: &[u8; 8]| {
        let x = u64::from_le_bytes(*word);
        let control = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
        let not_ascii = x & HIGH;
        let special = has_zero(x ^ (0x7f * ONES))
            | has_zero(x ^ (u64::from(b'"') * ONES))
            | has_zero(x ^ (u64::from(b'\\') * ONES));
        control | not_ascii | special != 0
    };
    if bytes.len() < 8 {
        return bytes
            .iter()
            .any(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\');
    }
    let (words, rest) = bytes.as_chunks::<8>();
    if words.iter().any(word_needs) {
        return true;
    }
    !rest.is_empty() && bytes.last_chunk().is_some_and(word_needs)
}

/// A JSON string; bytes that are not UTF-8 (a header may hold them) become U+FFFD.
///
/// Inlined, as everything that writes to a [`Cursor`] is: a cursor no call takes stays in
/// registers, where one whose address a call takes is stored and reloaded around every byte
/// written (bytes may alias anything).
#[inline(always)]
fn json_string(bytes: &[u8], out: &mut Cursor<'_>) {
    // The common case: printable ASCII with nothing to escape, copied at once.
    if needs_escape(bytes) {
        out.put(&escaped_json(bytes));
    } else {
        out.put(b"\"");
        out.put(bytes);
        out.put(b"\"");
    }
}

/// [`json_string`] for text that needs escaping.
#[cold]
fn escaped_json(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::with_capacity(escaped_room(text.len()));
    out.push(b'"');
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&hex);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
    out
}

/// A logfmt value: bare when it is safe, else a JSON-style quoted string.
#[inline(always)]
fn text_value(bytes: &[u8], out: &mut Cursor<'_>) {
    let bare = !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if bare {
        out.put(bytes);
    } else {
        json_string(bytes, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `write` writes, given room for the longest escape of 64 bytes.
    fn written(write: impl FnOnce(&mut Cursor<'_>)) -> String {
        let mut out = Lines::default();
        out.push(escaped_room(64), write);
        String::from_utf8(out.into_vec()).expect("utf-8")
    }

    /// Calls `check` with records of every kind: weir's request id and a client's, escapes,
    /// HTTP/0.9 to HTTP/2, TLS, no route, an endpoint the cluster does not have.
    /// The log is in `format` (the generation's pieces are written for it).
    fn each_sample_entry(format: &str, check: impl Fn(&Entry<'_>)) {
        use crate::generation::{Generation, Observers};
        use crate::tls::TlsInfo;
        use crate::upstream::{TcpConnector, Transports};
        let config = crate::config::parse(
            std::path::Path::new("weir.toml"),
            &(r#"
[[listeners]]
address = "127.0.0.1:0"
[access_log]
path = "stderr"
format = ""#
                .to_owned()
                + format
                + r#""
[[clusters]]
name = "app"
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
[[routes]]
name = "all"
cluster = "app"
"#),
        )
        .expect("config");
        let log = AccessLog::start(config.access_log.as_ref().expect("a log")).expect("log");
        let observers = Observers {
            access_log: Some(Arc::new(log)),
            tracing: None,
        };
        let transports = Transports::plain(Arc::new(TcpConnector));
        let generation = Generation::build(
            7,
            Arc::new(config),
            Vec::new(),
            None,
            &transports,
            &observers,
        );
        let ours = HeaderValue::from_static("0b6f0c5e-8a3c-4c5e-9b1e-2f3a4b5c6d7e");
        let theirs = HeaderValue::from_bytes(b"id \"with\" quotes\t\xff").expect("header");
        let tls = TlsInfo {
            server_name: Some("a.example".into()),
            version: "TLSv1.3",
            client_subject: Some("CN=alice,O=\"Example\"".into()),
        };
        let usual = Entry {
            generation: &generation,
            time: Tick::now(),
            request_id: Some(&ours),
            request_id_is_ours: true,
            trace_id: None,
            client: "127.0.0.1:50000",
            method: &Method::GET,
            host: Some(b"example.com"),
            path: "/a/b?c=d",
            version: Version::HTTP_11,
            status: 200,
            bytes_in: 0,
            bytes_out: 1024,
            duration: Duration::from_micros(1_234),
            upstream_duration: Some(Duration::from_micros(987)),
            route: Some(0),
            cluster: Some(0),
            endpoint: Some(1),
            attempts: 1,
            plugin: None,
            incomplete: false,
            tls: None,
            request_headers: &[],
        };
        let post = Method::POST;
        let entries = [
            Entry { ..usual },
            Entry {
                request_id: Some(&theirs),
                request_id_is_ours: false,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                method: &post,
                host: Some(b"caf\xc3\xa9\"\xff"),
                path: "/\u{e9}\\\"x\ny",
                version: Version::HTTP_2,
                status: 0,
                bytes_in: 12_345_678_901,
                bytes_out: 7,
                duration: Duration::from_secs(12),
                upstream_duration: None,
                route: None,
                cluster: None,
                endpoint: None,
                attempts: 12,
                plugin: Some("jwt-\"auth"),
                incomplete: true,
                tls: Some(&tls),
                ..usual
            },
            Entry {
                request_id: None,
                host: None,
                version: Version::HTTP_10,
                status: 1000,
                endpoint: None,
                tls: Some(&tls),
                ..usual
            },
            Entry {
                version: Version::HTTP_09,
                cluster: Some(0),
                endpoint: Some(99),
                status: 503,
                ..usual
            },
        ];
        entries.iter().for_each(check);
    }

    /// What `write` writes for `entry`, given its room.
    fn record(entry: &Entry<'_>, write: impl FnOnce(&mut Cursor<'_>)) -> String {
        let mut line = Lines::default();
        line.push(entry.room(), write);
        String::from_utf8(line.into_vec()).expect("utf-8")
    }

    #[test]
    fn json_records_are_the_fields_in_json() {
        each_sample_entry("json", |entry| {
            let fields = record(entry, |out| entry.write(&mut Json(out)));
            let fast = record(entry, |out| entry.write_json(out));
            assert_eq!(fast, fields);
            let record: serde_json::Value = serde_json::from_str(&fast).expect("JSON");
            assert_eq!(record.as_object().map(|o| o.len()), Some(23), "{fast}");
        });
    }

    fn items(fields: &[LogField]) -> Vec<LogItem> {
        fields.iter().copied().map(LogItem::Field).collect()
    }

    #[test]
    fn every_field_in_the_usual_order_takes_the_full_records_path() {
        assert!(Chosen::unless_all(&items(&LogField::ALL)).is_none());
        assert!(Chosen::unless_all(&items(&LogField::ALL[..22])).is_some());
        let mut reversed = LogField::ALL;
        reversed.reverse();
        assert!(Chosen::unless_all(&items(&reversed)).is_some());
        let mut and_a_header = items(&LogField::ALL);
        and_a_header.push(LogItem::RequestHeader(http::header::USER_AGENT));
        assert!(Chosen::unless_all(&and_a_header).is_some());
        // `/config` shows each as `fields` names it.
        for item in and_a_header {
            let serialized = serde_json::to_value(&item).expect("a name");
            assert_eq!(serialized.as_str(), Some(&*item.name()));
        }
    }

    #[test]
    fn chosen_request_headers_are_written_escaped_or_null() {
        let long = http::HeaderName::from_static("x-a-header-name-longer-than-a-prefix-block");
        let chosen = Chosen::list(&[
            LogItem::Field(LogField::Status),
            LogItem::RequestHeader(http::header::USER_AGENT),
            LogItem::RequestHeader(http::header::REFERER),
            LogItem::RequestHeader(long.clone()),
        ]);
        let agent = Bytes::from_static(b"curl/8 \"quoted\" \xff");
        let values = [Some(agent), None, Some(Bytes::from_static(b"v"))];
        each_sample_entry("json", |entry| {
            let entry = Entry {
                request_headers: &values,
                ..*entry
            };
            let mut line = Lines::default();
            line.push(entry.room() + Chosen::room(&chosen), |out| {
                entry.write_chosen(&chosen, &mut Json(out));
            });
            let line = String::from_utf8(line.into_vec()).expect("utf-8");
            let record: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(
                record["request_header:user-agent"], "curl/8 \"quoted\" \u{fffd}",
                "{line}"
            );
            assert!(record["request_header:referer"].is_null(), "{line}");
            assert_eq!(record[format!("request_header:{long}")], "v", "{line}");
            assert_eq!(record.as_object().map(|o| o.len()), Some(4), "{line}");
        });
    }

    /// An access log of `entry`'s format that chose `fields`.
    fn log_of(entry: &Entry<'_>, fields: Vec<LogItem>) -> AccessLog {
        let config = entry.generation.config.access_log.as_ref();
        let mut config = config.expect("a log").clone();
        config.fields = Some(fields);
        AccessLog::start(&config).expect("log")
    }

    /// What `log` makes of `entry` through [`AccessLog::write`]: the room it reserves, the
    /// path it takes. Taken from the batch before the writer thread can write it.
    fn logged(log: &AccessLog, entry: &Entry<'_>) -> String {
        // The writer takes `out` before the batch: while it is held, the batch stays.
        let _writer = lock(&log.shared.out);
        log.write(entry);
        let mut batch = lock(&log.shared.batch);
        let text = String::from_utf8(batch.lines.text().to_vec()).expect("utf-8");
        batch.lines.clear();
        batch.records = 0;
        text
    }

    /// A text line's `key=value` pairs, read strictly: a bare value runs to the next space,
    /// a quoted one is a JSON string; `-` is `None`. Panics on anything else, or on a line
    /// that is not one line.
    fn logfmt(line: &str) -> Vec<(String, Option<String>)> {
        let body = line.strip_suffix('\n').expect("a line ends with a newline");
        assert!(!body.contains('\n'), "one line: {line:?}");
        let mut pairs = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').expect("key=value");
            assert!(!key.contains([' ', '"']), "a key: {key:?} in {line:?}");
            let (value, after) = if after.starts_with('"') {
                let mut end = 1;
                let bytes = after.as_bytes();
                while bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                let value: String = serde_json::from_str(&after[..=end]).expect("JSON string");
                (Some(value), &after[end + 1..])
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                let value = &after[..end];
                assert!(
                    !value.is_empty() && !value.contains(['"', '=', '\\']),
                    "{value:?} in {line:?}"
                );
                ((value != "-").then(|| value.to_owned()), &after[end..])
            };
            pairs.push((key.to_owned(), value));
            assert!(after.is_empty() || after.starts_with(' '), "{line:?}");
            rest = after.strip_prefix(' ').unwrap_or(after);
            assert!(!rest.starts_with(' '), "one space between pairs: {line:?}");
        }
        pairs
    }

    /// Without a chosen header a request copies nothing: an empty `Vec`, which allocates
    /// nothing (the cost `fields` adds to a log that chose no header).
    #[test]
    fn request_headers_are_copied_only_when_chosen() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("curl/8.5.0"),
        );
        each_sample_entry("json", |entry| {
            let every = entry.generation.access_log.as_deref().expect("a log");
            assert!(every.config.fields.is_none());
            let some = log_of(entry, items(&[LogField::Status, LogField::Path]));
            for log in [every, &some] {
                let copies = log.request_headers(&headers);
                assert_eq!(copies.capacity(), 0, "nothing allocated");
            }
            let chosen = [LogItem::RequestHeader(http::header::USER_AGENT)];
            let copies = log_of(entry, chosen.to_vec()).request_headers(&headers);
            assert_eq!(copies, [Some(Bytes::from_static(b"curl/8.5.0"))]);
        });
    }

    /// Whatever bytes a client's header holds, its value stays inside its own field: one
    /// JSON object, or one line of exactly the chosen `key=value` pairs, the value read back
    /// as the client sent it (bytes that are not UTF-8 as U+FFFD).
    #[test]
    fn request_header_values_cannot_forge_fields_or_lines() {
        let fields = vec![
            LogItem::RequestHeader(http::header::USER_AGENT),
            LogItem::Field(LogField::Status),
            LogItem::RequestHeader(http::header::REFERER),
        ];
        let mut values: Vec<Vec<u8>> = (0..=255u8)
            .map(|b| [b"a".as_slice(), &[b], b" status=500 ", &[b], b"z"].concat())
            .collect();
        values.extend([
            b"".to_vec(),
            b"Mozilla/5.0 (X11; Linux x86_64) status".to_vec(),
            b"\" status=500 request_header:referer=\"x".to_vec(),
            b"\"}\n{\"status\":500,\"x\":\"".to_vec(),
            b"a\r\nstatus=500".to_vec(),
            b"\\".to_vec(),
            b"=".to_vec(),
            b"\t".to_vec(),
            b"caf\xc3\xa9 \xff\xfe".to_vec(),
        ]);
        for format in ["json", "text"] {
            each_sample_entry(format, |entry| {
                let log = log_of(entry, fields.clone());
                for value in &values {
                    let headers = [Some(Bytes::from(value.clone())), None];
                    let entry = Entry {
                        request_headers: &headers,
                        ..*entry
                    };
                    let line = logged(&log, &entry);
                    let sent = String::from_utf8_lossy(value).into_owned();
                    if format == "json" {
                        assert!(line.ends_with("}\n"), "{line:?}");
                        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
                        let record: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(&line).expect("JSON");
                        let keys: Vec<_> = record.keys().map(String::as_str).collect();
                        assert_eq!(
                            keys,
                            [
                                "request_header:referer",
                                "request_header:user-agent",
                                "status"
                            ],
                            "{line:?}"
                        );
                        assert_eq!(record["request_header:user-agent"], sent.as_str());
                        assert!(record["request_header:referer"].is_null(), "{line:?}");
                        assert_eq!(record["status"], u64::from(entry.status), "{line:?}");
                    } else {
                        let status = entry.status.to_string();
                        assert_eq!(
                            logfmt(&line),
                            [
                                ("request_header:user-agent".to_owned(), Some(sent)),
                                ("status".to_owned(), Some(status)),
                                ("request_header:referer".to_owned(), None),
                            ],
                            "{line:?}"
                        );
                    }
                }
            });
        }
    }

    /// A long header value, escaped at its longest (a control byte is six), fits the room
    /// the record reserves ([`Entry::room`] counts each value the request carries).
    #[test]
    fn a_long_request_header_fits_its_records_room() {
        let fields = vec![
            LogItem::RequestHeader(http::header::USER_AGENT),
            LogItem::Field(LogField::Status),
        ];
        let long = Bytes::from(vec![0x01; 20_000]);
        for format in ["json", "text"] {
            each_sample_entry(format, |entry| {
                let log = log_of(entry, fields.clone());
                let headers = [Some(long.clone())];
                let entry = Entry {
                    request_headers: &headers,
                    ..*entry
                };
                let line = logged(&log, &entry);
                assert!(line.len() > 6 * long.len(), "{}", line.len());
                assert!(line.ends_with('\n'), "the whole line");
                if format == "json" {
                    let record: serde_json::Value = serde_json::from_str(&line).expect("JSON");
                    let value = record["request_header:user-agent"].as_str();
                    assert_eq!(value.map(str::len), Some(long.len()));
                } else {
                    let pairs = logfmt(&line);
                    assert_eq!(pairs[0].1.as_ref().map(String::len), Some(long.len()));
                }
            });
        }
    }

    /// Every chosen header the client did not send still takes room (`null`, `-`): a record
    /// of many, all absent, fits the room it reserves, in either format.
    #[test]
    fn many_absent_request_headers_fit_their_records_room() {
        let names: Vec<_> = (0..1000)
            .map(|i| http::HeaderName::try_from(format!("h{i}")).expect("a name"))
            .collect();
        let fields: Vec<_> = names.iter().cloned().map(LogItem::RequestHeader).collect();
        let headers = vec![None; names.len()];
        for format in ["json", "text"] {
            each_sample_entry(format, |entry| {
                let log = log_of(entry, fields.clone());
                let entry = Entry {
                    request_headers: &headers,
                    ..*entry
                };
                let line = logged(&log, &entry);
                if format == "json" {
                    let record: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(&line).expect("JSON");
                    assert_eq!(record.len(), names.len(), "{line}");
                    assert!(record.values().all(serde_json::Value::is_null), "{line}");
                } else {
                    let pairs = logfmt(&line);
                    assert_eq!(pairs.len(), names.len(), "{line}");
                    assert!(pairs.iter().all(|(_, v)| v.is_none()), "{line}");
                }
            });
        }
    }

    #[test]
    fn a_prefix_is_copied_by_its_length_when_the_room_is_short() {
        let prefix = Prefix::new(",\"upstream_duration\":");
        let mut room = [0u8; 25];
        let mut cursor = Cursor {
            room: &mut room,
            len: 0,
        };
        cursor.put_prefix(&prefix);
        assert_eq!(&cursor.room[..cursor.len], b",\"upstream_duration\":");
        let mut room = [b'x'; 64];
        let mut cursor = Cursor {
            room: &mut room,
            len: 3,
        };
        cursor.put_prefix(&prefix);
        assert_eq!(cursor.len, 3 + 21);
        assert_eq!(&cursor.room[3..cursor.len], b",\"upstream_duration\":");
    }

    #[test]
    fn chosen_fields_are_written_as_in_the_full_record() {
        let all = Chosen::list(&items(&LogField::ALL));
        let some_fields = [
            LogField::Status,
            LogField::Path,
            LogField::Endpoint,
            LogField::Time,
            LogField::TlsSni,
            LogField::UpstreamDuration,
        ];
        let some = Chosen::list(&items(&some_fields));
        each_sample_entry("text", |entry| {
            // Every field, in the usual order: the full record's bytes.
            let full = record(entry, |out| entry.write(&mut Text(out)));
            let chosen = record(entry, |out| entry.write_chosen(&all, &mut Text(out)));
            assert_eq!(chosen, full);
            // A few, in another order.
            let text = record(entry, |out| entry.write_chosen(&some, &mut Text(out)));
            let status = format!("status={} path=", entry.status);
            assert!(text.starts_with(&status) && text.ends_with('\n'), "{text}");
            let at: Vec<_> = [" endpoint=", " time=", " tls_sni=", " upstream_duration="]
                .iter()
                .map(|name| text.find(name))
                .collect();
            assert!(at.iter().all(Option::is_some) && at.is_sorted(), "{text}");
            let names = text.matches('=').count() - entry.path.matches('=').count();
            assert_eq!(names, 6, "{text}");
        });
        each_sample_entry("json", |entry| {
            let full = record(entry, |out| entry.write(&mut Json(out)));
            let chosen = record(entry, |out| entry.write_chosen(&all, &mut Json(out)));
            assert_eq!(chosen, full);

            // A few, in another order: those, in that order, each as the full record has it.
            let full: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&full).expect("JSON");
            let line = record(entry, |out| entry.write_chosen(&some, &mut Json(out)));
            assert!(line.ends_with("}\n"), "{line}");
            let chosen: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&line).expect("JSON");
            let names: Vec<_> = some_fields.iter().map(|f| f.name()).collect();
            let order: Vec<_> = names
                .iter()
                .map(|n| line.find(&format!("\"{n}\":")))
                .collect();
            assert!(order.iter().all(Option::is_some), "{line}");
            assert!(order.is_sorted(), "{line}");
            assert_eq!(chosen.keys().count(), names.len(), "{line}");
            for name in names {
                assert_eq!(chosen.get(name), full.get(name), "{name} in {line}");
            }
        });
    }

    #[test]
    fn json_strings_escape_quotes_controls_and_invalid_utf8() {
        assert_eq!(
            written(|out| json_string(b"a\"b\\c\nd\x01\xff", out)),
            "\"a\\\"b\\\\c\\nd\\u0001\u{fffd}\""
        );
    }

    #[test]
    fn text_values_are_bare_only_when_safe() {
        let line = written(|out| {
            text_value(b"/a/b?c", out);
            out.put(b" ");
            text_value(b"a b", out);
            out.put(b" ");
            text_value(b"x=1", out);
        });
        assert_eq!(line, "/a/b?c \"a b\" \"x=1\"");
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds_across_seconds() {
        let mut text = [0; 24];
        let mut last = u64::MAX;
        let mut time = |millis| {
            time_text(millis, last, &mut text);
            last = millis;
            String::from_utf8(text.to_vec()).expect("utf-8")
        };
        assert_eq!(time(1_796_331_097_005), "2026-12-03T20:51:37.005Z");
        // In the same second: the date is kept, the milliseconds change.
        assert_eq!(time(1_796_331_097_999), "2026-12-03T20:51:37.999Z");
        // A second later: the date is made again.
        assert_eq!(time(1_796_331_098_000), "2026-12-03T20:51:38.000Z");
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn record_times_follow_the_system_clock() {
        let system = || {
            let since = SystemTime::now().duration_since(UNIX_EPOCH);
            since.expect("after 1970").as_millis() as u64
        };
        let unix_millis = |at: Tick| {
            let text = String::from_utf8(record_time(at).to_vec()).expect("utf-8");
            let time = humantime::parse_rfc3339(&text).expect("RFC 3339");
            let since = time.duration_since(UNIX_EPOCH).expect("after 1970");
            since.as_millis() as u64
        };
        // A reading with the system time just before and after it: the record's time is
        // between them, within a few ms (the counter and the system clock are scaled apart).
        let read = || (system(), Tick::now(), system());
        // `slack` ms either side: the counter's scale is calibrated against the system
        // clock once, by quanta, and a loaded machine can leave it about 1 % off (a CI run
        // saw 8 ms over a second), so a reading placed back from a later clock read is off
        // by up to that share of the distance.
        let near_within = |(from, _, to): (u64, Tick, u64), time: u64, slack: u64| {
            assert!(
                from - slack <= time && time <= to + slack,
                "{time} not in {from}..={to} (± {slack} ms)"
            );
        };
        let near = |reading, time| near_within(reading, time, 5);
        let first = read();
        near(first, unix_millis(first.1));
        // A second on: the clock is read again; then a reading from before that, placed
        // back from it.
        std::thread::sleep(Duration::from_nanos(CLOCK_READ_EVERY));
        let before = read();
        std::thread::sleep(Duration::from_millis(30));
        let now = read();
        near(now, unix_millis(now.1));
        near(before, unix_millis(before.1));
        // And the first reading, seconds before the clock's.
        let back = now.0 - first.2;
        near_within(first, unix_millis(first.1), 5 + back / 100);
    }

    #[test]
    fn numbers_are_their_decimal_digits() {
        let mut digits = Digits::default();
        let cases = [9999, 10_000, 65_535, 12_345_678_901, u64::MAX];
        for n in cases.into_iter().chain(0..2000) {
            assert_eq!(number(n, &mut digits), n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn lines_reuse_their_room() {
        let mut lines = Lines::default();
        lines.push(16, |out| out.put(b"first line\n"));
        lines.push(16, |out| out.put(b"second\n"));
        assert_eq!(lines.text(), b"first line\nsecond\n");
        lines.clear();
        lines.push(16, |out| out.put(b"third\n"));
        assert_eq!(lines.text(), b"third\n");
    }

    #[test]
    fn a_busy_log_keeps_its_buffer_and_gives_it_back_after_a_burst() {
        let line = [b'x'; 1000];
        let fill = |lines: &mut Lines, bytes: usize| {
            for _ in 0..bytes / line.len() {
                lines.push(line.len(), |out| out.put(&line));
            }
        };
        let mut lines = Lines::default();
        // Every interval fills more than KEEP_BYTES: the buffer grows once, then stays.
        fill(&mut lines, 3 * KEEP_BYTES / 2);
        let grown = lines.buf.len();
        assert!(grown > KEEP_BYTES);
        lines.clear();
        assert_eq!(lines.buf.len(), grown);
        fill(&mut lines, 3 * KEEP_BYTES / 2);
        lines.clear();
        assert_eq!(lines.buf.len(), grown, "regrown for the same load");
        // Traffic falls from a bigger burst: an interval that fills less than a quarter
        // gives back all but twice what it used.
        fill(&mut lines, 6 * KEEP_BYTES);
        lines.clear();
        fill(&mut lines, 1_000_000);
        lines.clear();
        assert_eq!(lines.buf.len(), 2_000_000);
        // The burst is over: a quiet interval, or one with no records at all, gives the
        // buffer back.
        fill(&mut lines, 10_000);
        lines.clear();
        assert_eq!(lines.buf.len(), KEEP_BYTES);
        fill(&mut lines, 3 * KEEP_BYTES / 2);
        lines.clear();
        lines.clear();
        assert_eq!(lines.buf.len(), KEEP_BYTES);
        assert_eq!(lines.text(), b"");
    }

    #[test]
    fn escapes_are_found_for_every_byte_at_every_position() {
        // Shorter than a word, words only, and words with an overlapping last one.
        for len in [1, 7, 8, 16, 19] {
            let mut text = vec![b'a'; len];
            assert!(!needs_escape(&text));
            for byte in 0..=255u8 {
                let expected = !(0x20..0x7f).contains(&byte) || byte == b'"' || byte == b'\\';
                for at in 0..text.len() {
                    text[at] = byte;
                    assert_eq!(needs_escape(&text), expected, "{byte:#x} at {at} of {len}");
                    text[at] = b'a';
                }
            }
        }
    }

    #[test]
    fn ascii_strings_are_copied_and_others_escaped() {
        let line = written(|out| {
            json_string(b"/plain/path?q=1", out);
            json_string("caf\u{e9}\"".as_bytes(), out);
        });
        assert_eq!(line, "\"/plain/path?q=1\"\"caf\u{e9}\\\"\"");
    }

    #[test]
    fn seconds_keep_microseconds() {
        let cases = [
            (2_001_234, "2.001234"),
            (5, "0.000005"),
            (0, "0.000000"),
            (12_345_678_901, "12345.678901"),
            (9_999_999, "9.999999"),
        ];
        for (micros, text) in cases {
            assert_eq!(
                written(|out| seconds(Duration::from_micros(micros), out)),
                text
            );
        }
    }

    #[test]
    fn the_worst_escape_fits_its_room_exactly() {
        let controls = [0x01u8; 64];
        let line = written(|out| json_string(&controls, out));
        assert_eq!(line.len(), escaped_room(64));
        assert!(line.starts_with("\"\\u0001\\u0001"));
    }
}
