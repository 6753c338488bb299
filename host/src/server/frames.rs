//! HTTP/2 frame accounting for one client connection, against control-frame floods: the frame
//! heads the client sends and weir writes are counted, and a client whose control frames go
//! far beyond what its requests explain is found at the frame that crosses its budget.
//!
//! The `h2` crate bounds the floods that cost memory: streams reset before weir accepted them
//! (rapid reset), streams weir had to reset, CONTINUATION frames, header lists, and empty or
//! tiny DATA frames. It bounds nothing of the rest, which cost only CPU: a client that reads
//! its answers may send PING or SETTINGS frames, each answered, or PRIORITY and WINDOW_UPDATE
//! frames, each processed, as fast as its link goes. The budgets, Envoy's for the first two:
//! - PRIORITY: 100 per stream the client opened, plus 100
//!   (Envoy's `max_inbound_priority_frames_per_stream`);
//! - WINDOW_UPDATE: 5 + 2 × (streams opened + 10 × DATA frames weir sent)
//!   (`max_inbound_window_update_frames_per_data_frame_sent`): a client grants window as it
//!   reads what weir sends;
//! - PING, SETTINGS, RST_STREAM, GOAWAY and frame types HTTP/2 does not define, together:
//!   100, plus 2 per stream opened and per DATA frame sent, plus 10 per second of the
//!   connection's life. gRPC clients ping to measure bandwidth while data flows, and to keep
//!   a quiet stream alive; browsers reset streams they no longer need.
//!
//! The `h2` crate's rapid-reset bound counts only streams the client reset before weir took
//! them. A client that waits until weir has taken each stream (and sent its request
//! upstream) before resetting it is bounded here, as Envoy bounds it: a stream reset less
//! than a second after it opened and before weir began its answer is reset prematurely,
//! whether the client reset it or made h2 reset it (a stream error it provoked, such as a
//! window overflow). A connection whose premature resets pass 250 before it has opened 500
//! streams, or half its streams after that, is a flood. A client that cancels what it no
//! longer needs now and then, cancels long-lived streams, or resets a stream once its answer
//! has begun (as a client that reads only a response's head does, or grpc-go's once a call
//! is over), is not.
//!
//! Only the 9-byte frame heads are read. A payload is skipped by its length, so a frame costs
//! a few integer operations and nothing is allocated but the list of streams not yet
//! answered; the clock is read once per read that opens or resets a stream, once per write
//! in which h2 resets an unanswered one, and for a control frame past its work-based budget.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The client connection preface (RFC 9113 §3.4), before its first frame.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

/// PRIORITY frames allowed per stream opened, and before any.
const PRIORITY_PER_STREAM: u64 = 100;
/// WINDOW_UPDATE frames allowed per DATA frame sent (times two, as Envoy counts).
const WINDOW_UPDATES_PER_DATA_FRAME: u64 = 10;
/// Control frames allowed before any work.
const CONTROL_BASE: u64 = 100;
/// Control frames allowed per stream opened and per DATA frame sent.
const CONTROL_PER_WORK: u64 = 2;
/// Control frames allowed per second of the connection's life.
const CONTROL_PER_SECOND: u64 = 10;
/// A stream reset this soon after it opened, before its answer began, is reset prematurely
/// (Envoy's `premature_reset_min_stream_lifetime_seconds`).
const PREMATURE: Duration = Duration::from_secs(1);
/// The most unanswered streams remembered (far above `h2_max_streams`, which h2 holds the
/// client to): past it the oldest is forgotten.
const UNANSWERED_MAX: usize = 4096;
/// Streams opened before the share of premature resets decides (Envoy's
/// `premature_reset_total_stream_count`); before that, half as many premature resets do.
const PREMATURE_STREAMS: u64 = 500;

/// The frame type whose flood closed a connection: the `frame` label of
/// `weir_downstream_h2_floods_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flood {
    Priority,
    WindowUpdate,
    Ping,
    Settings,
    RstStream,
    Other,
}

impl Flood {
    /// Every kind, in metric-label order.
    pub(crate) const ALL: [Flood; 6] = [
        Flood::Priority,
        Flood::WindowUpdate,
        Flood::Ping,
        Flood::Settings,
        Flood::RstStream,
        Flood::Other,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Flood::Priority => "priority",
            Flood::WindowUpdate => "window_update",
            Flood::Ping => "ping",
            Flood::Settings => "settings",
            Flood::RstStream => "rst_stream",
            Flood::Other => "other",
        }
    }

    fn of(kind: u8) -> Flood {
        match kind {
            PRIORITY => Flood::Priority,
            WINDOW_UPDATE => Flood::WindowUpdate,
            PING => Flood::Ping,
            SETTINGS => Flood::Settings,
            RST_STREAM => Flood::RstStream,
            _ => Flood::Other,
        }
    }
}

/// The counts of one HTTP/2 connection, from its first frame after the preface.
#[derive(Debug)]
pub(crate) struct Frames {
    inbound: Heads,
    outbound: Heads,
    counts: Counts,
}

/// What a connection's frames have added up to.
#[derive(Debug)]
struct Counts {
    started: Instant,
    /// HEADERS frames from the client: streams it opened (and trailers).
    streams: u64,
    /// DATA frames weir wrote.
    data_sent: u64,
    priority: u64,
    window_updates: u64,
    control: u64,
    /// The highest stream the client opened, for a GOAWAY.
    last_stream: u32,
    /// Streams the client opened (HEADERS on a new stream; trailers are not counted).
    opened: u64,
    /// Streams reset prematurely.
    premature: u64,
    unanswered: Unanswered,
    /// A flood found in what weir wrote (h2's own resets), reported at the next read.
    flood: Option<Flood>,
}

/// The client's streams weir has not begun to answer, each with when it opened, in the
/// order opened, which is the order of their ids.
#[derive(Debug, Default)]
struct Unanswered(VecDeque<(u32, Instant)>);

impl Unanswered {
    fn opened(&mut self, stream: u32, now: Instant) {
        if self.0.len() == UNANSWERED_MAX {
            self.0.pop_front();
        }
        self.0.push_back((stream, now));
    }

    /// Forgets `stream` (answered, or reset), and says when it opened if it was here.
    fn take(&mut self, stream: u32) -> Option<Instant> {
        let i = self.0.binary_search_by_key(&stream, |&(s, _)| s).ok()?;
        self.0.remove(i).map(|(_, opened)| opened)
    }
}

impl Frames {
    /// Counts for a connection whose preface has just been read.
    pub(crate) fn new() -> Frames {
        let now = Instant::now();
        Frames {
            inbound: Heads::default(),
            outbound: Heads::default(),
            counts: Counts {
                started: now,
                streams: 0,
                data_sent: 0,
                priority: 0,
                window_updates: 0,
                control: 0,
                last_stream: 0,
                opened: 0,
                premature: 0,
                unanswered: Unanswered::default(),
                flood: None,
            },
        }
    }

    /// Counts the frames in `bytes` the client sent; `Err` names the kind of frame that
    /// went over its budget, and the connection must end: nothing after it is counted.
    pub(crate) fn received(&mut self, bytes: &[u8]) -> Result<(), Flood> {
        if let Some(flood) = self.counts.flood {
            return Err(flood);
        }
        // The clock, read once for the frames of one read, and only if one needs it.
        let mut now = None;
        self.inbound
            .feed(bytes, |head| self.counts.received(head, &mut now))
    }

    /// Counts the frames in `bytes` weir wrote; a flood they show (streams h2 reset) ends
    /// the connection at its next read.
    pub(crate) fn sent(&mut self, bytes: &[u8]) {
        let counts = &mut self.counts;
        let mut now = None;
        let _ = self.outbound.feed(bytes, |head| {
            match head.kind {
                DATA => counts.data_sent += 1,
                // Its answer began.
                HEADERS => {
                    counts.unanswered.take(head.stream);
                }
                // h2 reset a stream (a stream error the client provoked, or one past
                // `h2_max_streams`).
                RST_STREAM => {
                    if let Err(flood) = counts.reset(head.stream, &mut now) {
                        counts.flood = Some(flood);
                    }
                }
                _ => {}
            }
            Ok::<(), Flood>(())
        });
    }

    /// Whether everything weir wrote ends at a frame's end, so a frame of weir's own may
    /// follow without splitting one of h2's.
    pub(crate) fn between_sent_frames(&self) -> bool {
        self.outbound.at_boundary()
    }

    /// A GOAWAY frame saying `ENHANCE_YOUR_CALM`, naming the last stream the client opened.
    pub(crate) fn go_away(&self) -> [u8; 17] {
        let mut frame = [0u8; 17];
        // Length 8, type GOAWAY (7), no flags, stream 0.
        frame[2] = 8;
        frame[3] = 0x7;
        frame[9..13].copy_from_slice(&self.counts.last_stream.to_be_bytes());
        // ENHANCE_YOUR_CALM (RFC 9113 §7).
        frame[13..17].copy_from_slice(&0xbu32.to_be_bytes());
        frame
    }
}

impl Counts {
    fn received(&mut self, head: Head, now: &mut Option<Instant>) -> Result<(), Flood> {
        match head.kind {
            DATA | CONTINUATION => Ok(()),
            HEADERS => {
                self.streams += 1;
                if head.stream > self.last_stream {
                    self.last_stream = head.stream;
                    self.opened += 1;
                    let now = *now.get_or_insert_with(Instant::now);
                    self.unanswered.opened(head.stream, now);
                }
                Ok(())
            }
            RST_STREAM => {
                self.reset(head.stream, now)?;
                self.control(head.kind)
            }
            PRIORITY => {
                self.priority += 1;
                let allowed = PRIORITY_PER_STREAM.saturating_mul(1 + self.streams);
                if self.priority > allowed {
                    return Err(Flood::Priority);
                }
                Ok(())
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let work = self
                    .streams
                    .saturating_add(WINDOW_UPDATES_PER_DATA_FRAME.saturating_mul(self.data_sent));
                if self.window_updates > 5u64.saturating_add(work.saturating_mul(2)) {
                    return Err(Flood::WindowUpdate);
                }
                Ok(())
            }
            kind => self.control(kind),
        }
    }

    /// Notes that `stream` was reset, by the client or by h2; `Err` when that makes the
    /// premature resets a flood.
    fn reset(&mut self, stream: u32, now: &mut Option<Instant>) -> Result<(), Flood> {
        let Some(opened) = self.unanswered.take(stream) else {
            return Ok(());
        };
        let now = *now.get_or_insert_with(Instant::now);
        if now.saturating_duration_since(opened) >= PREMATURE {
            return Ok(());
        }
        self.premature += 1;
        if self.premature.saturating_mul(2) > self.opened.max(PREMATURE_STREAMS) {
            return Err(Flood::RstStream);
        }
        Ok(())
    }

    /// Counts a control frame of `kind` against the budget they share.
    fn control(&mut self, kind: u8) -> Result<(), Flood> {
        self.control += 1;
        let work = self.streams.saturating_add(self.data_sent);
        let earned = CONTROL_BASE.saturating_add(work.saturating_mul(CONTROL_PER_WORK));
        if self.control <= earned {
            return Ok(());
        }
        // Past what the work explains: what time has earned.
        let seconds = self.started.elapsed().as_secs();
        if self.control > earned.saturating_add(seconds.saturating_mul(CONTROL_PER_SECOND)) {
            return Err(Flood::of(kind));
        }
        Ok(())
    }
}

/// A frame head: what is counted of a frame.
#[derive(Debug, Clone, Copy)]
struct Head {
    kind: u8,
    stream: u32,
}

/// Frame heads read out of a byte stream that arrives in pieces.
#[derive(Debug, Default)]
struct Heads {
    /// The part of a head read so far.
    head: [u8; 9],
    have: usize,
    /// Payload bytes still to skip.
    skip: usize,
}

impl Heads {
    /// Reads the heads in `bytes`, calling `each` on every complete one, until it fails.
    fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(Head) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = &self.head;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            each(Head { kind: h[3], stream })?;
        }
        Ok(())
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A frame of `kind` on `stream` with `len` payload bytes (zeros).
    fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.resize(9 + len, 0);
        f
    }

    fn frames(kind: u8, n: usize) -> Vec<u8> {
        let len = match kind {
            PRIORITY => 5,
            WINDOW_UPDATE | RST_STREAM => 4,
            PING => 8,
            _ => 0,
        };
        (0..n).flat_map(|_| frame(kind, 0, 1, len)).collect()
    }

    /// Feeds `bytes` one piece of `piece` bytes at a time, as reads may cut them.
    fn receive_in_pieces(counts: &mut Frames, bytes: &[u8], piece: usize) -> Result<(), Flood> {
        bytes.chunks(piece).try_for_each(|b| counts.received(b))
    }

    #[tokio::test(start_paused = true)]
    async fn each_kind_of_control_frame_has_its_budget() {
        // (frame type, frames a fresh connection may send, what a flood is called)
        let table = [
            (PRIORITY, 100, Flood::Priority),
            (WINDOW_UPDATE, 5, Flood::WindowUpdate),
            (PING, 100, Flood::Ping),
            (SETTINGS, 100, Flood::Settings),
            (RST_STREAM, 100, Flood::RstStream),
            (0x7, 100, Flood::Other),
            (0xfa, 100, Flood::Other),
        ];
        for (kind, allowed, flood) in table {
            for piece in [1, 7, 9, 4096] {
                let mut counts = Frames::new();
                let within = frames(kind, allowed);
                assert_eq!(
                    receive_in_pieces(&mut counts, &within, piece),
                    Ok(()),
                    "{flood:?} in {piece}-byte pieces"
                );
                assert_eq!(
                    counts.received(&frames(kind, 1)),
                    Err(flood),
                    "{flood:?}: one more"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_and_time_earn_budget() {
        let mut counts = Frames::new();
        // Three streams opened: 100 more PRIORITY each, 2 more WINDOW_UPDATE, 2 more pings.
        let headers: Vec<u8> = [1u32, 3, 5]
            .iter()
            .flat_map(|&s| frame(HEADERS, 0x4, s, 20))
            .collect();
        assert_eq!(counts.received(&headers), Ok(()));
        assert_eq!(counts.received(&frames(PRIORITY, 400)), Ok(()));
        assert_eq!(counts.counts.last_stream, 5);

        // 1,000 DATA frames sent, in writes that cut frames anywhere: 20,000 more
        // WINDOW_UPDATEs and 2,000 more control frames.
        let data: Vec<u8> = (0..1000).flat_map(|_| frame(DATA, 0, 1, 100)).collect();
        for piece in data.chunks(1000) {
            counts.sent(piece);
        }
        assert!(counts.between_sent_frames());
        counts.sent(&frame(DATA, 0, 1, 100)[..50]);
        assert!(!counts.between_sent_frames(), "mid-frame");
        counts.sent(&frame(DATA, 0, 1, 100)[50..]);
        assert_eq!(counts.counts.data_sent, 1001);
        let window_updates = 5 + 2 * (3 + 10 * 1001);
        assert_eq!(
            counts.received(&frames(WINDOW_UPDATE, window_updates)),
            Ok(())
        );
        let pings = 100 + 2 * (3 + 1001);
        assert_eq!(counts.received(&frames(PING, pings as usize)), Ok(()));
        // (A flood ends the connection: nothing is counted after it.)
        assert_eq!(counts.received(&frames(PRIORITY, 1)), Err(Flood::Priority));

        // A quiet stream's keepalive pings: ten a second for ever.
        let mut counts = Frames::new();
        assert_eq!(counts.received(&frames(PING, 100)), Ok(()));
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(counts.received(&frames(PING, 10)), Ok(()));
        }
        assert_eq!(counts.received(&frames(PING, 1)), Err(Flood::Ping));
    }

    #[test]
    fn data_headers_and_continuations_are_not_limited_here() {
        let mut counts = Frames::new();
        let bulk: Vec<u8> = (0..10_000)
            .flat_map(|i| {
                let mut f = frame(HEADERS, 0, 2 * i + 1, 10);
                f.extend(frame(CONTINUATION, 0x4, 2 * i + 1, 10));
                f.extend(frame(DATA, 0x1, 2 * i + 1, 300));
                f
            })
            .collect();
        assert_eq!(counts.received(&bulk), Ok(()));
    }

    /// HEADERS opening `stream` (client streams: odd ids).
    fn open(stream: u32) -> Vec<u8> {
        frame(HEADERS, 0x5, stream, 10)
    }

    /// RST_STREAM (CANCEL) for `stream`.
    fn reset(stream: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, 4)
    }

    #[tokio::test(start_paused = true)]
    async fn streams_reset_as_soon_as_weir_takes_them_are_a_flood() {
        // Each stream opened, taken (weir reads its HEADERS), then reset: 250 pass, the 251st
        // reset is more than half of the 500 streams the share waits for.
        let mut counts = Frames::new();
        for i in 0..250 {
            let stream = 2 * i + 1;
            assert_eq!(counts.received(&open(stream)), Ok(()), "stream {stream}");
            assert_eq!(counts.received(&reset(stream)), Ok(()), "stream {stream}");
        }
        assert_eq!(counts.received(&open(501)), Ok(()));
        assert_eq!(counts.received(&reset(501)), Err(Flood::RstStream));

        // Past 500 streams, the share: half may be reset at once, not more.
        let mut counts = Frames::new();
        let opened: Vec<u8> = (0..600).flat_map(|i| open(2 * i + 1)).collect();
        assert_eq!(counts.received(&opened), Ok(()));
        let resets: Vec<u8> = (0..300).flat_map(|i| reset(4 * i + 1)).collect();
        assert_eq!(counts.received(&resets), Ok(()));
        assert_eq!(counts.received(&reset(3)), Err(Flood::RstStream));
    }

    #[tokio::test(start_paused = true)]
    async fn resets_of_older_streams_and_now_and_then_are_not() {
        // Streams reset once they are past a second (long gRPC calls cancelled).
        let mut counts = Frames::new();
        for round in 0..4 {
            let first = 2 * 1000 * round + 1;
            let opened: Vec<u8> = (0..1000).flat_map(|i| open(first + 2 * i)).collect();
            assert_eq!(counts.received(&opened), Ok(()));
            tokio::time::advance(2 * PREMATURE).await;
            let resets: Vec<u8> = (0..1000).flat_map(|i| reset(first + 2 * i)).collect();
            assert_eq!(counts.received(&resets), Ok(()), "round {round}");
        }
        assert_eq!(counts.counts.premature, 0);

        // A browser's cancelled fetches: one stream in four reset at once, for 10,000.
        let mut counts = Frames::new();
        for i in 0..10_000 {
            let stream = 2 * i + 1;
            assert_eq!(counts.received(&open(stream)), Ok(()));
            if i % 4 == 0 {
                assert_eq!(counts.received(&reset(stream)), Ok(()), "stream {stream}");
            }
            if i % 100 == 0 {
                tokio::time::advance(Duration::from_millis(30)).await;
            }
        }
        assert_eq!(counts.counts.premature, 2500);

        // A reset of a stream the client never opened is no premature reset (h2 refuses it).
        let mut counts = Frames::new();
        assert_eq!(counts.received(&reset(9)), Ok(()));
        assert_eq!(counts.counts.premature, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_is_premature_within_a_second_and_before_the_answer_began() {
        let mut counts = Frames::new();
        assert_eq!(counts.received(&open(1)), Ok(()));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(counts.received(&reset(1)), Ok(()));
        assert_eq!(counts.counts.premature, 1, "999 ms old");

        assert_eq!(counts.received(&open(3)), Ok(()));
        tokio::time::advance(PREMATURE).await;
        assert_eq!(counts.received(&reset(3)), Ok(()));
        assert_eq!(counts.counts.premature, 1, "a second old");

        // weir's answer began (its HEADERS): a reset is no longer premature (a client that
        // reads only the head, grpc-go's RST_STREAM(NO_ERROR) after a call).
        assert_eq!(counts.received(&open(5)), Ok(()));
        counts.sent(&frame(HEADERS, 0x4, 5, 10));
        assert_eq!(counts.received(&reset(5)), Ok(()));
        assert_eq!(counts.counts.premature, 1, "answered");

        // A stream reset twice (CANCEL, then STREAM_CLOSED) is one reset.
        assert_eq!(counts.received(&open(7)), Ok(()));
        assert_eq!(counts.received(&reset(7)), Ok(()));
        assert_eq!(counts.received(&reset(7)), Ok(()));
        assert_eq!(counts.counts.premature, 2, "stream 7 once");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_h2_resets_before_weir_answers_count_too() {
        // A stream error the client provokes (a window overflow, say) has h2 reset the
        // stream: as premature as the client's own reset. The flood is found in what weir
        // wrote, and ends the connection at its next read.
        let mut counts = Frames::new();
        for i in 0..251 {
            let stream = 2 * i + 1;
            assert_eq!(counts.received(&open(stream)), Ok(()), "stream {stream}");
            counts.sent(&reset(stream));
        }
        assert_eq!(counts.counts.premature, 251);
        assert_eq!(counts.received(&frames(PING, 1)), Err(Flood::RstStream));
    }

    #[test]
    fn a_go_away_names_the_last_stream_and_enhance_your_calm() {
        let mut counts = Frames::new();
        assert_eq!(counts.received(&frame(HEADERS, 0x5, 7, 3)), Ok(()));
        assert_eq!(
            counts.go_away(),
            [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0xb]
        );
    }
}
