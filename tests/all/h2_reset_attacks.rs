//! Attacks on the HTTP/2 premature-reset bound (`server/frames.rs`: `Unanswered` and
//! `Counts::reset`), over h2c to weir with upstream `app`: a client that has weir send a
//! request upstream and then has it cancelled within a second, before weir's answer began
//! (by its own RST_STREAM or by a stream error h2 answers with one), must be closed (GOAWAY
//! `ENHANCE_YOUR_CALM`, `weir_downstream_h2_floods_total{frame="rst_stream"}`) once its
//! premature resets pass 250 before 500 streams, or half of its streams after; a client that
//! cancels now and then, or resets streams weir has answered, must not be.
//!
//! Each attack opens streams in batches of 50 on `/slow` (which answers only when released),
//! waits until the upstream has every request of the batch, then ends them all in one write
//! followed by a PING, and reads up to the PING's answer (the batch was taken) or the
//! connection's end. Written by a reviewer who did not write the bound; two of these failed
//! against its first version (e1c5749), each says how.

use tokio::net::TcpStream;
use weir_tests::http2::{
    self, CANCEL, END_HEADERS, END_STREAM, NO_ERROR, Raw, get_block, kind, rst_stream,
};
use weir_tests::{Upstream, Weir};

/// The CONTINUATION frame type.
const CONTINUATION: u8 = 0x9;
/// HPACK: `:method POST` from the static table.
const POST: u8 = 0x83;

/// `GET /slow` on `stream`, ending the stream.
fn slow(stream: u32) -> Vec<u8> {
    http2::get(stream, "a.test", "/slow")
}

/// WINDOW_UPDATE on `stream` that takes its send window past 2^31 − 1: a stream error
/// (FLOW_CONTROL_ERROR) on which h2 resets the stream itself, and weir drops the request it
/// had sent upstream.
fn overflow_window(stream: u32) -> Vec<u8> {
    http2::encode(
        kind::WINDOW_UPDATE,
        0,
        stream,
        &0x7fff_ffffu32.to_be_bytes(),
    )
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The PING was answered: the connection goes on.
    Open,
    /// GOAWAY with this error code.
    GoAway(Option<u32>),
    /// Closed without a GOAWAY.
    Closed,
}

/// A raw client connection to `weir`, counting what reaches `app`.
struct Client<'a> {
    app: &'a Upstream,
    raw: Raw<TcpStream>,
    pings: u8,
}

impl<'a> Client<'a> {
    async fn connect(weir: &Weir, app: &'a Upstream) -> Client<'a> {
        let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
        Client {
            app,
            raw: Raw::start(tcp).await,
            pings: 0,
        }
    }

    /// Writes `frames`, which open `n` streams, and waits until the upstream has them all
    /// (nothing was reset yet: the connection cannot end here).
    async fn open(&mut self, frames: &[u8], n: usize) {
        let seen = self.app.requests().len();
        self.raw.write(frames).await.expect("open streams");
        self.app.wait_for_requests(seen + n).await;
    }

    /// Writes `frames` and a PING as one piece; the PING's answer, or the connection's end.
    async fn settle(&mut self, mut frames: Vec<u8>) -> End {
        self.pings = self.pings.wrapping_add(1);
        let payload = [self.pings; 8];
        frames.extend(http2::encode(kind::PING, 0, 0, &payload));
        if self.raw.write(&frames).await.is_err() {
            return End::Closed;
        }
        self.until_ping(&payload).await
    }

    async fn until_ping(&mut self, payload: &[u8; 8]) -> End {
        loop {
            match self.raw.next().await {
                Some(f) if f.kind == kind::PING && f.flags & http2::ACK != 0 => {
                    if f.payload == payload {
                        return End::Open;
                    }
                }
                Some(f) if f.kind == kind::GOAWAY => return End::GoAway(f.go_away_code()),
                Some(_) => {}
                None => return End::Closed,
            }
        }
    }

    /// Up to `batches` batches of 50 streams (ids `stride` apart, from `first`): each opened
    /// with `open`, and once upstream ended with `end(i, stream)` (`i`: its place in the
    /// batch). The batches that went by, and how the last one ended.
    async fn batches(
        &mut self,
        batches: u32,
        first: u32,
        stride: u32,
        open: impl Fn(u32) -> Vec<u8>,
        end: impl Fn(usize, u32) -> Vec<u8>,
    ) -> (u32, End) {
        let mut next = first;
        for batch in 0..batches {
            let streams: Vec<u32> = (0..50).map(|i| next + stride * i).collect();
            next += stride * 50;
            let heads: Vec<u8> = streams.iter().flat_map(|&s| open(s)).collect();
            self.open(&heads, streams.len()).await;
            let ends = streams
                .iter()
                .enumerate()
                .flat_map(|(i, &s)| end(i, s))
                .collect();
            let ended = self.settle(ends).await;
            if ended != End::Open {
                return (batch, ended);
            }
        }
        (batches, End::Open)
    }
}

/// Requests to `path` the upstream has received.
fn upstream_saw(app: &Upstream, path: &str) -> usize {
    app.requests()
        .iter()
        .filter(|r| r.uri.path() == path)
        .count()
}

/// `weir_downstream_h2_floods_total{frame="rst_stream"}` on weir's proxy listener.
async fn rst_floods(weir: &Weir) -> f64 {
    let (_, _, metrics) = weir_tests::get_with(&weir.admin_url("/metrics"), &[]).await;
    let listener = weir.proxy.to_string();
    let labels = [("listener", listener.as_str()), ("frame", "rst_stream")];
    weir_tests::metric(&metrics, "weir_downstream_h2_floods_total", &labels).unwrap_or(0.0)
}

async fn start() -> (Upstream, Weir) {
    let app = Upstream::start("app").await;
    let weir = Weir::start(&crate::config_with(&[app.addr], "", "", "")).await;
    (app, weir)
}

/// Rapid reset of streams weir has already taken (CVE-2023-44487 as proxies met it): the
/// `h2` crate bounds streams reset before weir took them, not those reset once their
/// requests are on their way upstream, which cost the upstream a request each and are never
/// bounded by `h2_max_streams`. One h2c connection resets each batch once the upstream has
/// it: it is sent GOAWAY (`ENHANCE_YOUR_CALM`) and closed in its sixth batch, at its 251st
/// premature reset, counted as an `rst_stream` flood, with 300 of its requests upstream
/// (without the bound it goes on through 40 batches, 2,000 requests). A client on another
/// connection is served throughout.
#[tokio::test(flavor = "multi_thread")]
async fn streams_reset_once_weir_has_sent_them_upstream_close_the_connection() {
    let app = Upstream::start("app").await;
    let (weir, other) = crate::limits::weir_and_an_h2_client(&app).await;
    let mut client = Client::connect(&weir, &app).await;
    let (batch, ended) = client
        .batches(40, 1, 2, slow, |_, s| rst_stream(s, CANCEL))
        .await;
    assert_eq!(
        (ended, batch),
        (End::GoAway(Some(http2::ENHANCE_YOUR_CALM)), 5),
        "the connection went on (or ended otherwise)"
    );
    assert_eq!(upstream_saw(&app, "/slow"), 300, "requests upstream");
    assert_eq!(rst_floods(&weir).await, 1.0);
    let get = crate::limits::get_ok();
    assert_eq!(http2::send(&other, get).await, Ok(200), "the other client");
}

/// A stream opened by `open`, then reset.
type Variant = (
    &'static str,
    u32,
    fn(u32) -> Vec<u8>,
    fn(usize, u32) -> Vec<u8>,
);

/// Rapid reset dressed up: reset codes other than CANCEL (and undefined ones), stream ids
/// that skip thousands, requests whose HEADERS do not end the stream, header blocks split
/// over CONTINUATION frames, PRIORITY frames around each stream, and trailers before the
/// reset. Each connection is still sent GOAWAY (`ENHANCE_YOUR_CALM`) in its sixth batch, at
/// its 251st premature reset, with exactly 300 requests upstream, and counted as an
/// `rst_stream` flood (without the bound every one goes on through 12 batches, 600
/// requests).
#[tokio::test(flavor = "multi_thread")]
async fn disguised_rapid_resets_are_closed_at_the_251st() {
    let (app, weir) = start().await;
    let variants: [Variant; 6] = [
        ("reset codes", 2, slow, |i, s| {
            let codes = [NO_ERROR, 0x1, 0x2, 0x7, CANCEL, 0xb, 0xdead_beef, u32::MAX];
            rst_stream(s, codes[i % codes.len()])
        }),
        ("ids 2,000 apart", 2_000, slow, |_, s| rst_stream(s, CANCEL)),
        (
            "HEADERS without END_STREAM",
            2,
            |s| http2::encode(kind::HEADERS, END_HEADERS, s, &get_block("a.test", "/slow")),
            |_, s| rst_stream(s, CANCEL),
        ),
        (
            "HEADERS and two CONTINUATIONs",
            2,
            |s| {
                let b = get_block("a.test", "/slow");
                let mut f = http2::encode(kind::HEADERS, END_STREAM, s, &b[..3]);
                f.extend(http2::encode(CONTINUATION, 0, s, &b[3..7]));
                f.extend(http2::encode(CONTINUATION, END_HEADERS, s, &b[7..]));
                f
            },
            |_, s| rst_stream(s, CANCEL),
        ),
        (
            "PRIORITY before and after",
            2,
            |s| {
                let priority = http2::encode(kind::PRIORITY, 0, s, &[0, 0, 0, 0, 16]);
                let mut f = priority.clone();
                f.extend(slow(s));
                f.extend(priority);
                f
            },
            |_, s| rst_stream(s, CANCEL),
        ),
        (
            "trailers, then the reset",
            2,
            |s| {
                let head = get_block("a.test", "/slow");
                let mut f = http2::encode(kind::HEADERS, END_HEADERS, s, &head);
                // Trailers: `x: y`, a literal without indexing.
                let trailers = [0x00, 0x01, b'x', 0x01, b'y'];
                f.extend(http2::encode(
                    kind::HEADERS,
                    END_HEADERS | END_STREAM,
                    s,
                    &trailers,
                ));
                f
            },
            |_, s| rst_stream(s, CANCEL),
        ),
    ];
    for (n, (name, stride, open, end)) in variants.into_iter().enumerate() {
        let before = upstream_saw(&app, "/slow");
        let mut client = Client::connect(&weir, &app).await;
        let (batches, ended) = client.batches(12, 1, stride, open, end).await;
        assert_eq!(
            (batches, ended),
            (5, End::GoAway(Some(http2::ENHANCE_YOUR_CALM))),
            "{name}: the connection went on (or ended otherwise)"
        );
        let upstream = upstream_saw(&app, "/slow") - before;
        assert_eq!(upstream, 300, "{name}: requests that reached the upstream");
        assert_eq!(rst_floods(&weir).await, (n + 1) as f64, "{name}: counted");
    }
}

/// Past 500 streams the share decides: a client that first opens 1,000 streams and resets
/// one in five (200 premature resets) may then reset whole batches only until its premature
/// resets are more than half of its streams — at the 26th reset of its 13th such batch
/// (826 > 1,650 / 2), with 850 of its reset requests upstream. Without the bound it goes on
/// through all 20.
#[tokio::test(flavor = "multi_thread")]
async fn past_500_streams_more_than_half_reset_is_closed() {
    let (app, weir) = start().await;
    let mut client = Client::connect(&weir, &app).await;
    // 20 batches of 10 requests reset and 40 answered at once.
    for batch in 0..20u32 {
        let first = 100 * batch + 1;
        let slow_ids: Vec<u32> = (0..10).map(|i| first + 2 * i).collect();
        let mut heads: Vec<u8> = slow_ids.iter().flat_map(|&s| slow(s)).collect();
        heads.extend((10..50).flat_map(|i| http2::get(first + 2 * i, "a.test", "/fast")));
        client.open(&heads, 50).await;
        let resets = slow_ids
            .iter()
            .flat_map(|&s| rst_stream(s, CANCEL))
            .collect();
        assert_eq!(client.settle(resets).await, End::Open, "batch {batch}");
    }
    assert_eq!(upstream_saw(&app, "/slow"), 200);
    let (batches, ended) = client
        .batches(20, 2001, 2, slow, |_, s| rst_stream(s, CANCEL))
        .await;
    assert_eq!(
        (batches, ended),
        (12, End::GoAway(Some(http2::ENHANCE_YOUR_CALM))),
        "the connection went on (or ended otherwise)"
    );
    assert_eq!(upstream_saw(&app, "/slow"), 200 + 650);
    assert_eq!(rst_floods(&weir).await, 1.0);
}

/// The `h2` crate's client, 4,000 requests in rounds of 100 held upstream, cancelling one in
/// four once the upstream has it (its RST_STREAM(CANCEL), sometimes followed by a
/// RST_STREAM(STREAM_CLOSED) when weir's answer crosses it) and reading the other answers to
/// their end: never closed, never counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_cancelling_one_request_in_four_is_served() {
    let (app, weir) = start().await;
    let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
    let (client, connection) = http2::handshake(tcp).await;
    let connection = tokio::spawn(connection);
    let mut answered = 0;
    for round in 0..40 {
        let seen = app.requests().len();
        let mut responses = Vec::new();
        for _ in 0..100 {
            let mut ready = client.clone().ready().await.expect("ready");
            let request = http::Request::get("http://a.test/slow")
                .body(())
                .expect("request");
            let (response, _) = ready.send_request(request, true).expect("send");
            responses.push(response);
        }
        app.wait_for_requests(seen + 100).await;
        // Every fourth is dropped: cancelled.
        let kept: Vec<_> = responses
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| (i % 4 != 0).then_some(r))
            .collect();
        app.release();
        for response in kept {
            let response = tokio::time::timeout(weir_tests::DEADLINE, response)
                .await
                .expect("an answer in time")
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("the body");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            answered += 1;
        }
    }
    assert_eq!(answered, 3000);
    assert!(!connection.is_finished(), "the connection ended");
    assert_eq!(rst_floods(&weir).await, 0.0);
}

/// A stream error the client provokes on a stream weir has sent upstream (here a
/// WINDOW_UPDATE that overflows the stream's window) has h2 reset the stream itself
/// (RST_STREAM FLOW_CONTROL_ERROR) and weir drop the upstream request, as a reset would: it
/// is a premature reset too. Half of each batch so ended, half reset: closed with at most
/// 300 requests upstream. (The first version of the bound counted only the client's own
/// RST_STREAMs: 40 batches, 2,000 requests upstream, every one abandoned within
/// milliseconds, and the connection never closed.)
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_streams_through_stream_errors_is_bounded_too() {
    let (app, weir) = start().await;
    let mut client = Client::connect(&weir, &app).await;
    let (batches, ended) = client
        .batches(40, 1, 2, slow, |i, s| {
            if i % 2 == 0 {
                overflow_window(s)
            } else {
                rst_stream(s, CANCEL)
            }
        })
        .await;
    let upstream = upstream_saw(&app, "/slow");
    assert!(
        ended == End::GoAway(Some(http2::ENHANCE_YOUR_CALM)) && upstream <= 300,
        "{upstream} requests upstream, each abandoned at once, in {batches} batches; the \
         connection ended: {ended:?}"
    );
}

/// A reset of a stream weir has begun to answer is not premature (Envoy, whose rule this
/// follows, counts a reset only if it came before the response's headers were sent), nor is
/// a second reset of one stream. The first version of the bound counted both, and closed
/// these clients, which do nothing like rapid reset, at their 251st such stream however
/// slowly they went:
/// - the `h2` crate's client reading each response's head and dropping its body (what
///   `http2::send` in these tests does; hyper's and reqwest's clients do the same when a
///   response is dropped unread): RST_STREAM(CANCEL) — and at times a second one,
///   STREAM_CLOSED, for the same stream, which is counted twice;
/// - a client that resets each stream with RST_STREAM(NO_ERROR) once its whole response has
///   arrived while its own request was not yet ended — grpc-go's client does this for every
///   streaming call the server ends first (`operateHeaders`: "if client received END_STREAM
///   from server while stream was still active, send RST_STREAM").
#[tokio::test(flavor = "multi_thread")]
async fn resets_of_streams_weir_has_answered_are_not_premature() {
    let (app, weir) = start().await;

    // The h2 crate's client: 400 downloads of 100 kB, one after the other, each dropped
    // after its head.
    let tcp = TcpStream::connect(weir.proxy).await.expect("connect");
    let (client, connection) = http2::handshake(tcp).await;
    tokio::spawn(connection);
    let mut heads = 0;
    for _ in 0..400 {
        let request = http::Request::get("http://a.test/download/100000")
            .body(())
            .expect("request");
        if http2::send(&client, request).await != Ok(200) {
            break;
        }
        heads += 1;
    }

    // grpc-go's client: 400 calls whose requests are not ended, each answered in full, then
    // reset with NO_ERROR.
    let mut raw = Client::connect(&weir, &app).await;
    let mut calls = 0;
    'calls: for i in 0..400u32 {
        let stream = 2 * i + 1;
        let mut head = get_block("a.test", "/download/10");
        head[0] = POST;
        let open = http2::encode(kind::HEADERS, END_HEADERS, stream, &head);
        if raw.raw.write(&open).await.is_err() {
            break;
        }
        loop {
            match raw.raw.next().await {
                Some(f)
                    if f.stream == stream
                        && f.flags & END_STREAM != 0
                        && matches!(f.kind, kind::HEADERS | kind::DATA) =>
                {
                    break;
                }
                Some(f) if f.kind == kind::GOAWAY => break 'calls,
                Some(_) => {}
                None => break 'calls,
            }
        }
        if raw.settle(rst_stream(stream, NO_ERROR)).await != End::Open {
            break;
        }
        calls += 1;
    }

    assert_eq!(
        (heads, calls, rst_floods(&weir).await),
        (400, 400, 0.0),
        "(heads taken by the h2 client, calls made by the grpc-go-like client, floods counted)"
    );
}

/// `POST /slow` on `stream` with `expect: 100-continue`, its body not begun.
fn post_expecting_continue(stream: u32) -> Vec<u8> {
    let mut head = get_block("a.test", "/slow");
    head[0] = POST;
    // A literal header with a new name, not indexed (RFC 7541 §6.2.2).
    head.extend_from_slice(&[0x00, 6]);
    head.extend_from_slice(b"expect");
    head.push(12);
    head.extend_from_slice(b"100-continue");
    http2::encode(kind::HEADERS, END_HEADERS, stream, &head)
}

/// Requests that expect `100 Continue` and are reset before their bodies begin are reset
/// prematurely: closed with at most 300 upstream. (The bound takes any HEADERS frame of
/// weir's as the answer begun, and cannot tell an interim `100` from a final status by the
/// frame's head. hyper sent the client no `100` here — weir reads a body only as the
/// upstream takes it — as a reading of every frame weir wrote showed; should that change,
/// the resets after it would not count, and this test would fail.)
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_after_100_continue_is_still_premature() {
    let (app, weir) = start().await;
    let mut client = Client::connect(&weir, &app).await;
    let (batches, ended) = client
        .batches(40, 1, 2, post_expecting_continue, |_, s| {
            rst_stream(s, CANCEL)
        })
        .await;
    let upstream = upstream_saw(&app, "/slow");
    assert!(
        ended == End::GoAway(Some(http2::ENHANCE_YOUR_CALM)) && upstream <= 300,
        "{upstream} requests upstream in {batches} batches; the connection ended: {ended:?}"
    );
    assert_eq!(rst_floods(&weir).await, 1.0);
}
