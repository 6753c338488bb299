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

use http::header::HeaderValue;
use http::{Method, Version};

use crate::config::{AccessLogConfig, Config, LogFormat, LogTarget};
use crate::generation::Generation;
use crate::metrics::metrics;
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
    /// The most records a batch holds.
    limit: usize,
}

#[derive(Debug, Default)]
struct Batch {
    text: Vec<u8>,
    records: u64,
}

#[derive(Debug)]
struct Writer {
    out: Output,
    target: LogTarget,
    /// Swapped with the batch's buffer, so formatting goes on while this one is written.
    spare: Vec<u8>,
}

/// How often the writer writes what has queued.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// A buffer that grew past this during a burst is given back after it is written.
const KEEP_BYTES: usize = 1 << 20;

/// One request's record, borrowed from what the request path holds when its response ends.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The generation the request was served by (for route, cluster and endpoint names).
    pub generation: &'a Generation,
    /// When the request's head arrived.
    pub time: SystemTime,
    /// `x-request-id`.
    pub request_id: Option<&'a HeaderValue>,
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
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(config: &AccessLogConfig) -> io::Result<AccessLog> {
        let shared = Arc::new(Shared {
            batch: Mutex::default(),
            out: Mutex::new(Writer {
                out: Output::open(&config.to)?,
                target: config.to.clone(),
                spare: Vec::new(),
            }),
            reopen: AtomicBool::new(false),
            format: config.format,
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
        Cursor::write(&mut batch.text, entry.room(), |out| match format {
            LogFormat::Json => entry.write(&mut Json(out)),
            LogFormat::Text => entry.write(&mut Text(out)),
        });
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
            std::mem::swap(&mut batch.text, &mut writer.spare);
            std::mem::take(&mut batch.records)
        };
        if !writer.spare.is_empty() {
            match writer
                .out
                .write_all(&writer.spare)
                .and_then(|()| writer.out.flush())
            {
                Ok(()) => metrics().access_log_written.inc_by(records),
                Err(e) => tracing::error!(error = %e, "access log: cannot write"),
            }
            writer.spare.clear();
            writer.spare.shrink_to(KEEP_BYTES);
        }
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

/// Route, cluster and endpoint names as a generation's records write them: escaped and
/// quoted once, when the generation is built, not per request.
#[derive(Debug, Default)]
pub struct Names {
    routes: Vec<Box<[u8]>>,
    clusters: Vec<Box<[u8]>>,
    /// Per cluster, per endpoint.
    endpoints: Vec<Vec<Box<[u8]>>>,
}

impl AccessLog {
    /// The names of `config`'s routes, clusters and endpoints, formatted for this log.
    pub fn names(&self, config: &Config) -> Names {
        let format = |name: &str| {
            let mut text = Vec::new();
            Cursor::write(&mut text, escaped_room(name.len()), |out| {
                match self.shared.format {
                    LogFormat::Json => json_string(name.as_bytes(), out),
                    LogFormat::Text => text_value(name.as_bytes(), out),
                }
            });
            text.into_boxed_slice()
        };
        Names {
            routes: config.routes.iter().map(|r| format(&r.name)).collect(),
            clusters: config.clusters.iter().map(|c| format(&c.name)).collect(),
            endpoints: config
                .clusters
                .iter()
                .map(|c| {
                    c.endpoints
                        .iter()
                        .map(|e| format(e.authority.as_str()))
                        .collect()
                })
                .collect(),
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

    fn bare(bare: Option<&'a [u8]>) -> Value<'a> {
        bare.map_or(Value::Null, Value::Bare)
    }
}

/// A line format. Each field comes with what precedes its value in either format (its name,
/// and the separator before it), as constants, so each is a few stores.
trait Line {
    fn field(&mut self, json: &'static str, text: &'static str, value: Value<'_>);
    /// Seconds with microsecond precision: `0.001234`.
    fn seconds(&mut self, json: &'static str, text: &'static str, value: Option<Duration>);
    fn end(&mut self);
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
    /// [`FIXED_ROOM`]; its texts take at most [`escaped_room`].
    fn room(&self) -> usize {
        let texts = [
            self.request_id.map_or(0, |v| v.len()),
            self.trace_id.map_or(0, str::len),
            self.client.len(),
            self.method.as_str().len(),
            self.host.map_or(0, <[u8]>::len),
            self.path.len(),
            self.plugin.map_or(0, str::len),
            self.tls.map_or(0, |t| {
                t.version.len()
                    + t.server_name.as_deref().map_or(0, str::len)
                    + t.client_subject.as_deref().map_or(0, str::len)
            }),
        ];
        let names = &self.generation.log_names;
        let name = |names: &[Box<[u8]>], i: Option<usize>| {
            i.and_then(|i| names.get(i)).map_or(0, |n| n.len())
        };
        let endpoint = self
            .cluster
            .and_then(|c| names.endpoints.get(c))
            .map_or(0, |e| name(e, self.endpoint));
        FIXED_ROOM
            + texts.iter().map(|&len| escaped_room(len)).sum::<usize>()
            + name(&names.routes, self.route)
            + name(&names.clusters, self.cluster)
            + endpoint
    }

    /// The record's fields, in order.
    fn write(&self, line: &mut impl Line) {
        let names = &self.generation.log_names;
        fn name(names: &[Box<[u8]>], i: Option<usize>) -> Option<&[u8]> {
            names.get(i?).map(|n| &n[..])
        }
        let endpoints = self.cluster.and_then(|c| names.endpoints.get(c));
        let tls = self.tls;
        let mut digits = itoa::Buffer::new();
        let mut time = [0; 24];
        field!(line.field(first "time", Value::Safe(time_text(self.time, &mut time))));
        field!(line.field(
            "request_id",
            Value::text(self.request_id.map(HeaderValue::as_bytes))
        ));
        field!(
            line.field(
                "trace_id",
                self.trace_id
                    .map_or(Value::Null, |id| Value::Safe(id.as_bytes()))
            )
        );
        field!(line.field("client", Value::Safe(self.client.as_bytes())));
        // A method is a token: letters, digits and !#$%&'*+-.^_`|~
        field!(line.field("method", Value::Safe(self.method.as_str().as_bytes())));
        field!(line.field("host", Value::text(self.host)));
        field!(line.field("path", Value::Text(self.path.as_bytes())));
        field!(line.field("protocol", Value::Safe(protocol(self.version).as_bytes())));
        field!(line.field("status", Value::Bare(digits.format(self.status).as_bytes())));
        field!(line.field(
            "bytes_in",
            Value::Bare(digits.format(self.bytes_in).as_bytes())
        ));
        field!(line.field(
            "bytes_out",
            Value::Bare(digits.format(self.bytes_out).as_bytes())
        ));
        field!(line.seconds("duration", Some(self.duration)));
        field!(line.seconds("upstream_duration", self.upstream_duration));
        field!(line.field("route", Value::bare(name(&names.routes, self.route))));
        field!(line.field("cluster", Value::bare(name(&names.clusters, self.cluster))));
        field!(line.field(
            "endpoint",
            Value::bare(endpoints.and_then(|e| name(e, self.endpoint)))
        ));
        field!(line.field(
            "attempts",
            Value::Bare(digits.format(self.attempts).as_bytes())
        ));
        field!(line.field("plugin", Value::text(self.plugin.map(str::as_bytes))));
        field!(line.field(
            "incomplete",
            Value::Bare(if self.incomplete { b"true" } else { b"false" })
        ));
        field!(line.field(
            "generation",
            Value::Bare(digits.format(self.generation.number).as_bytes())
        ));
        field!(line.field(
            "tls_version",
            Value::text(tls.map(|t| t.version.as_bytes()))
        ));
        field!(
            line.field(
                "tls_sni",
                Value::text(
                    tls.and_then(|t| t.server_name.as_deref())
                        .map(str::as_bytes)
                )
            )
        );
        field!(
            line.field(
                "tls_client",
                Value::text(
                    tls.and_then(|t| t.client_subject.as_deref())
                        .map(str::as_bytes)
                )
            )
        );
        line.end();
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
    /// Appends what `write` writes to `out`, given room for at most `room` bytes.
    fn write(out: &mut Vec<u8>, room: usize, write: impl FnOnce(&mut Cursor<'_>)) {
        let start = out.len();
        out.resize(start + room, 0);
        let mut cursor = Cursor {
            room: &mut out[start..],
            len: 0,
        };
        write(&mut cursor);
        let len = cursor.len;
        out.truncate(start + len);
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

impl Line for Json<'_, '_> {
    #[inline(always)]
    fn field(&mut self, json: &'static str, _: &'static str, value: Value<'_>) {
        let out = &mut *self.0;
        out.put(json.as_bytes());
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
    fn seconds(&mut self, json: &'static str, _: &'static str, value: Option<Duration>) {
        self.0.put(json.as_bytes());
        match value {
            Some(d) => seconds(d, self.0),
            None => self.0.put(b"null"),
        }
    }

    fn end(&mut self) {
        self.0.put(b"}\n");
    }
}

/// `key=value` pairs separated by spaces; values with spaces, quotes or `=` are quoted; an
/// absent value is `-`.
struct Text<'o, 'b>(&'o mut Cursor<'b>);

impl Line for Text<'_, '_> {
    #[inline(always)]
    fn field(&mut self, _: &'static str, text: &'static str, value: Value<'_>) {
        let out = &mut *self.0;
        out.put(text.as_bytes());
        match value {
            Value::Text(text) => text_value(text, out),
            Value::Safe(bare) | Value::Bare(bare) => out.put(bare),
            Value::Null => out.put(b"-"),
        }
    }

    #[inline(always)]
    fn seconds(&mut self, _: &'static str, text: &'static str, value: Option<Duration>) {
        self.0.put(text.as_bytes());
        match value {
            Some(d) => seconds(d, self.0),
            None => self.0.put(b"-"),
        }
    }

    fn end(&mut self) {
        self.0.put(b"\n");
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

thread_local! {
    /// The latest second formatted on this thread, as `2026-12-02T20:51:37.`: a busy thread
    /// formats a date once a second.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// RFC 3339 in UTC with milliseconds: `2026-12-02T20:51:37.123Z`.
fn time_text(time: SystemTime, text: &mut [u8; 24]) -> &[u8] {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    let prefix = SECOND.with(|cached| {
        let (at, prefix) = cached.get();
        if at == second {
            return prefix;
        }
        let mut prefix = [0; 20];
        let full =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second)).to_string();
        // `2026-12-02T20:51:37Z`: the date and time, then `.` for the milliseconds.
        if let Some(date) = full.as_bytes().get(..19) {
            prefix[..19].copy_from_slice(date);
        }
        prefix[19] = b'.';
        cached.set((second, prefix));
        prefix
    });
    let ms = since.subsec_millis();
    text[..20].copy_from_slice(&prefix);
    text[20..].copy_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
    &text[..]
}

/// Seconds with microsecond precision: `0.001234`.
fn seconds(d: Duration, out: &mut Cursor<'_>) {
    let secs = d.as_secs();
    if secs < 10 {
        out.put(&[b'0' + secs as u8]);
    } else {
        out.put(itoa::Buffer::new().format(secs).as_bytes());
    }
    let mut micros = d.subsec_micros();
    let mut fraction = [b'.', 0, 0, 0, 0, 0, 0];
    for pair in fraction[1..].rchunks_exact_mut(2) {
        let two = (micros % 100) as u8;
        micros /= 100;
        pair.copy_from_slice(&[b'0' + two / 10, b'0' + two % 10]);
    }
    out.put(&fraction);
}

/// Whether any byte needs escaping in a JSON string (a control, `"`, `\\`) or is not ASCII:
/// eight bytes at a time (each test is true when some byte of the word matches; SWAR, "Bit
/// Twiddling Hacks").
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        let control = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
        let not_ascii = x & HIGH;
        let special = has_zero(x ^ (0x7f * ONES))
            | has_zero(x ^ (u64::from(b'"') * ONES))
            | has_zero(x ^ (u64::from(b'\\') * ONES));
        if control | not_ascii | special != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
}

/// A JSON string; bytes that are not UTF-8 (a header may hold them) become U+FFFD.
fn json_string(bytes: &[u8], out: &mut Cursor<'_>) {
    // The common case: printable ASCII with nothing to escape, copied at once.
    if !needs_escape(bytes) {
        out.put(b"\"");
        out.put(bytes);
        out.put(b"\"");
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    let bytes = text.as_bytes();
    out.put(b"\"");
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 | 0x7f => b"",
            _ => continue,
        };
        out.put(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.put(escape);
        }
        start = i + 1;
    }
    out.put(&bytes[start..]);
    out.put(b"\"");
}

/// A logfmt value: bare when it is safe, else a JSON-style quoted string.
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
        let mut out = Vec::new();
        Cursor::write(&mut out, escaped_room(64), write);
        String::from_utf8(out).expect("utf-8")
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
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(
            time_text(at(1_796_331_097_005), &mut text),
            b"2026-12-03T20:51:37.005Z"
        );
        // A second later on the same thread: the cached date is not reused.
        assert_eq!(
            time_text(at(1_796_331_098_999), &mut text),
            b"2026-12-03T20:51:38.999Z"
        );
        assert_eq!(time_text(at(0), &mut text), b"1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn escapes_are_found_for_every_byte_at_every_position() {
        let mut text = [b'a'; 19];
        assert!(!needs_escape(&text));
        for byte in 0..=255u8 {
            let expected = !(0x20..0x7f).contains(&byte) || byte == b'"' || byte == b'\\';
            for at in 0..text.len() {
                text[at] = byte;
                assert_eq!(needs_escape(&text), expected, "{byte:#x} at {at}");
                text[at] = b'a';
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
