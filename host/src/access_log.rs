//! The access log: one record per request, handed to a writer thread through a bounded queue
//! (a full queue drops the record and counts it; a request never waits for the log) and
//! written in batches every 50 ms,
//! as a JSON line or a `key=value` line, to a file reopened on SIGUSR1 (for logrotate's
//! `mv` + signal) or to stdout/stderr.
//!
//! A record holds what the request path already has (the generation, indices, header values
//! that are reference-counted); names are looked up and text is formatted on the writer
//! thread.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::{Method, Uri, Version};

use crate::config::{AccessLogConfig, LogFormat, LogTarget};
use crate::generation::Generation;
use crate::metrics::metrics;
use crate::tls::TlsInfo;

/// The process's access log writer.
#[derive(Debug)]
pub struct AccessLog {
    queue: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    /// The configuration it was started with (a reload that changes it is reported, not
    /// applied: the writer is the process's).
    pub config: AccessLogConfig,
}

enum Message {
    Record(Box<Record>),
    /// Wakes the writer to look at the reopen flag.
    Wake,
    /// Asks the writer to write what is queued before it and say so.
    Flush(SyncSender<()>),
}

/// How often the writer writes what has queued.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// What one request left for the access log.
#[derive(Debug)]
pub struct Record {
    /// The generation the request was served by (for route, cluster and endpoint names).
    pub generation: Arc<Generation>,
    /// When the request's head arrived.
    pub time: SystemTime,
    /// `x-request-id`.
    pub request_id: Option<HeaderValue>,
    /// The W3C trace id, when the request is traced.
    pub trace_id: Option<String>,
    /// The client's address.
    pub client: SocketAddr,
    /// The request's method.
    pub method: Method,
    /// The `Host` (or HTTP/2 `:authority`).
    pub host: Option<HeaderValue>,
    /// The request target as the client sent it.
    pub uri: Uri,
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
    pub plugin: Option<Arc<str>>,
    /// The response body did not reach its end (the client went away, or the upstream
    /// failed mid-body).
    pub incomplete: bool,
    /// The TLS session, on a TLS listener.
    pub tls: Option<Arc<TlsInfo>>,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(config: &AccessLogConfig) -> io::Result<AccessLog> {
        let out = Output::open(&config.to)?;
        let (queue, receiver) = sync_channel(config.queue);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            out,
            target: config.to.clone(),
            format: config.format,
            reopen: reopen.clone(),
            line: Vec::with_capacity(512),
        };
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || writer.run(receiver))?;
        Ok(AccessLog {
            queue,
            reopen,
            config: config.clone(),
        })
    }

    /// Whether this request is one of the sampled share.
    pub fn sampled(&self) -> bool {
        self.config.sample >= 1.0 || fastrand::f64() < self.config.sample
    }

    /// Queues a record; drops (and counts) it when the writer is behind. Never blocks.
    pub fn write(&self, record: Box<Record>) {
        match self.queue.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics().access_log_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (up to a second) until the writer has written every record queued so far: at
    /// shutdown, so the last requests' records are not lost. Blocks.
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.queue.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(1));
        }
    }

    /// Asks the writer to reopen its file (after logrotate moved it) before its next record.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // The writer reopens before the next record; this wakes it when none comes.
        let _ = self.queue.try_send(Message::Wake);
    }
}

enum Output {
    Stdout(io::Stdout),
    Stderr(io::Stderr),
    File(BufWriter<File>),
}

impl Output {
    fn open(target: &LogTarget) -> io::Result<Output> {
        Ok(match target {
            LogTarget::Stdout => Output::Stdout(io::stdout()),
            LogTarget::Stderr => Output::Stderr(io::stderr()),
            LogTarget::File(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Output::File(BufWriter::with_capacity(64 * 1024, file))
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

struct Writer {
    out: Output,
    target: LogTarget,
    format: LogFormat,
    reopen: Arc<AtomicBool>,
    line: Vec<u8>,
}

impl Writer {
    /// Writes what has queued every [`WRITE_INTERVAL`] (so a busy proxy pays one `write` per
    /// batch, and senders never wake the writer), until every sender is gone.
    fn run(mut self, queue: Receiver<Message>) {
        loop {
            let gone = loop {
                match queue.try_recv() {
                    Ok(message) => self.take(message),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if let Err(e) = self.out.flush() {
                tracing::error!(error = %e, "access log: cannot write");
            }
            if gone {
                return;
            }
            std::thread::sleep(WRITE_INTERVAL);
        }
    }

    fn take(&mut self, message: Message) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            let _ = self.out.flush();
            match Output::open(&self.target) {
                Ok(out) => {
                    self.out = out;
                    tracing::info!(target = ?self.target, "access log reopened");
                }
                Err(e) => {
                    tracing::error!(error = %e, target = ?self.target, "access log: cannot reopen; still writing to the old file")
                }
            }
        }
        let record = match message {
            Message::Record(record) => record,
            Message::Wake => return,
            Message::Flush(done) => {
                let _ = self.out.flush();
                let _ = done.send(());
                return;
            }
        };
        self.line.clear();
        match self.format {
            LogFormat::Json => format_json(&record, &mut self.line),
            LogFormat::Text => format_text(&record, &mut self.line),
        }
        match self.out.write_all(&self.line) {
            Ok(()) => metrics().access_log_written.inc(),
            Err(e) => tracing::error!(error = %e, "access log: cannot write"),
        }
    }
}

/// A field's value, before it is written in one format or the other.
enum Value<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
    Number(u64),
    Seconds(Duration),
    Bool(bool),
    Null,
}

/// The record's fields in order, each with its value.
fn fields<'a>(
    record: &'a Record,
    time: &'a str,
    scratch: &'a Scratch,
) -> [(&'static str, Value<'a>); 23] {
    let generation = &record.generation;
    let config = &generation.config;
    let route = record.route.map(|i| config.routes[i].name.as_str());
    let cluster = record.cluster.map(|i| &config.clusters[i]);
    let endpoint = cluster
        .zip(record.endpoint)
        .map(|(c, e)| c.endpoints[e].authority.as_str());
    let text = |v: Option<&'a str>| v.map_or(Value::Null, Value::Text);
    let bytes = |v: Option<&'a HeaderValue>| v.map_or(Value::Null, |v| Value::Bytes(v.as_bytes()));
    let tls = record.tls.as_deref();
    [
        ("time", Value::Text(time)),
        ("request_id", bytes(record.request_id.as_ref())),
        ("trace_id", text(record.trace_id.as_deref())),
        ("client", Value::Text(&scratch.client)),
        ("method", Value::Text(record.method.as_str())),
        ("host", bytes(record.host.as_ref())),
        (
            "path",
            Value::Text(record.uri.path_and_query().map_or("/", |p| p.as_str())),
        ),
        ("protocol", Value::Text(protocol(record.version))),
        ("status", Value::Number(u64::from(record.status))),
        ("bytes_in", Value::Number(record.bytes_in)),
        ("bytes_out", Value::Number(record.bytes_out)),
        ("duration", Value::Seconds(record.duration)),
        (
            "upstream_duration",
            record.upstream_duration.map_or(Value::Null, Value::Seconds),
        ),
        ("route", text(route)),
        ("cluster", text(cluster.map(|c| c.name.as_str()))),
        ("endpoint", text(endpoint)),
        ("attempts", Value::Number(u64::from(record.attempts))),
        ("plugin", text(record.plugin.as_deref())),
        ("incomplete", Value::Bool(record.incomplete)),
        ("generation", Value::Number(generation.number)),
        ("tls_version", text(tls.map(|t| t.version))),
        ("tls_sni", text(tls.and_then(|t| t.server_name.as_deref()))),
        (
            "tls_client",
            text(tls.and_then(|t| t.client_subject.as_deref())),
        ),
    ]
}

/// Text formatted once per record, borrowed by [`fields`].
struct Scratch {
    client: String,
}

impl Scratch {
    fn new(record: &Record) -> Scratch {
        Scratch {
            client: address_text(record.client),
        }
    }
}

/// `ip:port`; an IPv4 address by hand (`Display` costs several times more).
fn address_text(address: SocketAddr) -> String {
    let SocketAddr::V4(v4) = address else {
        return address.to_string();
    };
    let mut text = String::with_capacity(21);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text.push(':');
    text.push_str(digits.format(v4.port()));
    text
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

fn time_text(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// One JSON object and a newline.
fn format_json(record: &Record, out: &mut Vec<u8>) {
    let time = time_text(record.time);
    let scratch = Scratch::new(record);
    out.push(b'{');
    for (i, (name, value)) in fields(record, &time, &scratch).into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Value::Text(text) => json_string(text.as_bytes(), out),
            Value::Bytes(bytes) => json_string(bytes, out),
            Value::Number(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            Value::Seconds(d) => seconds(d, out),
            Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Value::Null => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
}

/// `key=value` pairs separated by spaces; values with spaces, quotes or `=` are quoted; an
/// absent value is `-`.
fn format_text(record: &Record, out: &mut Vec<u8>) {
    let time = time_text(record.time);
    let scratch = Scratch::new(record);
    for (i, (name, value)) in fields(record, &time, &scratch).into_iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        match value {
            Value::Text(text) => text_value(text.as_bytes(), out),
            Value::Bytes(bytes) => text_value(bytes, out),
            Value::Number(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            Value::Seconds(d) => seconds(d, out),
            Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Value::Null => out.push(b'-'),
        }
    }
    out.push(b'\n');
}

/// Seconds with microsecond precision: `0.001234`.
fn seconds(d: Duration, out: &mut Vec<u8>) {
    let micros = d.as_micros();
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1_000_000).as_bytes());
    out.push(b'.');
    let fraction = itoa::Buffer::new()
        .format(micros % 1_000_000 + 1_000_000)
        .to_owned();
    out.extend_from_slice(&fraction.as_bytes()[1..]);
}

/// A JSON string; bytes that are not UTF-8 (a header may hold them) become U+FFFD. Runs of
/// bytes that need no escape are copied whole.
fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    // The common case: printable ASCII with nothing to escape, copied at once.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    let bytes = text.as_bytes();
    out.push(b'"');
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
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A logfmt value: bare when it is safe, else a JSON-style quoted string.
fn text_value(bytes: &[u8], out: &mut Vec<u8>) {
    let bare = !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if bare {
        out.extend_from_slice(bytes);
    } else {
        json_string(bytes, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_controls_and_invalid_utf8() {
        let mut out = Vec::new();
        json_string(b"a\"b\\c\nd\x01\xff", &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\"a\\\"b\\\\c\\nd\\u0001\u{fffd}\""
        );
    }

    #[test]
    fn text_values_are_bare_only_when_safe() {
        let mut out = Vec::new();
        text_value(b"/a/b?c", &mut out);
        out.push(b' ');
        text_value(b"a b", &mut out);
        out.push(b' ');
        text_value(b"x=1", &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "/a/b?c \"a b\" \"x=1\""
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for address in ["127.0.0.1:8080", "10.200.3.44:1", "[::1]:443"] {
            let address: SocketAddr = address.parse().expect("address");
            assert_eq!(address_text(address), address.to_string());
        }
    }

    #[test]
    fn ascii_strings_are_copied_and_others_escaped() {
        let mut out = Vec::new();
        json_string(b"/plain/path?q=1", &mut out);
        json_string("caf\u{e9}\"".as_bytes(), &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\"/plain/path?q=1\"\"caf\u{e9}\\\"\""
        );
    }

    #[test]
    fn seconds_keep_microseconds() {
        let mut out = Vec::new();
        seconds(Duration::from_micros(2_001_234), &mut out);
        assert_eq!(out, b"2.001234");
        out.clear();
        seconds(Duration::from_micros(5), &mut out);
        assert_eq!(out, b"0.000005");
    }
}
