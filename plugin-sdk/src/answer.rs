//! The `request-hook` export (weir:plugin 0.3.7) written against the canonical ABI by hand:
//! the answer is laid out in the plugin's memory around the strings the filter's changes
//! already hold, and kept until the next call.
//!
//! wit-bindgen's glue for this export copies each list of changes into a new allocation,
//! hands each string's allocation to the host's side, and exports a `post-return` function
//! that frees them all: two allocations and about ten frees a call, and a second entry into
//! the plugin. Here the lists are lowered into buffers the instance keeps, pointing at the
//! strings where they are; and there is no `post-return`: the host copies what it reads
//! before the call returns, and what the answer holds is dropped when the next answer
//! replaces it. So one answer's memory stays live between calls, and while the filter makes
//! the next answer both are: a filter answering with a large local body holds up to two of
//! them at once, within the instance's memory cap like any other memory. (Dropping the last
//! answer before the filter runs instead costs a second thread-local access and about 370
//! instructions a call under Cranelift, measured.)
//!
//! The layout (canonical ABI, 32-bit memory; each row a 4-byte word, a tag in the low byte of
//! its word):
//!
//! ```text
//! request-answer (32 bytes)   0 action tag (0 continue, 1 respond)
//!   continue                  4 headers ptr   8 headers len   12 path tag   16 path ptr   20 path len
//!   respond                   4 status        8 headers ptr   12 headers len  16 body ptr  20 body len
//!                            24 response-headers ptr          28 response-headers len
//! header-op (20 bytes)        0 tag (0 set, 1 append, 2 remove)  4 name ptr  8 name len
//!                            12 value ptr  16 value len (set, append)
//! header (16 bytes)           0 name ptr  4 name len  8 value ptr  12 value len
//! ```
//!
//! Natively (the SDK's tests) a word is a `usize` of 8 bytes and the layout is not the ABI's;
//! the tests read it back word by word.

#![allow(unsafe_code, reason = "a hand-written canonical ABI export")]
#![cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "natively only the tests lower an answer")
)]

use std::cell::RefCell;

use crate::adapter::{Answered, Instance};
use crate::bindings::weir::plugin::types::{LocalResponse, Request as HostRequest};
use crate::ops::{Kind, Ops};

/// One word of the answer: an address, a length, a tag or a status.
type Word = usize;

// The layout above, on the target the host reads it on.
#[cfg(target_arch = "wasm32")]
const _: () = {
    assert!(size_of::<Word>() == 4);
    assert!(size_of::<[Word; 8]>() == 32 && align_of::<[Word; 8]>() == 4);
    assert!(size_of::<[Word; 5]>() == 20 && align_of::<[Word; 5]>() == 4);
    assert!(size_of::<[Word; 4]>() == 16);
};

/// The last answer, and the memory the host reads it from.
#[derive(Debug)]
struct Answer {
    /// What the filter decided, whose strings and lists the lowered words point into.
    answered: Option<Answered>,
    /// The header changes it left for the response.
    response: Ops,
    /// `request-changes.headers`, lowered.
    request_ops: Vec<[Word; 5]>,
    /// `response-headers`, lowered.
    response_ops: Vec<[Word; 5]>,
    /// `local-response.headers`, lowered.
    reply_headers: Vec<[Word; 4]>,
    /// The `request-answer` record the export returns the address of.
    record: [Word; 8],
}

thread_local! {
    /// The instance's last answer. A wasm instance has one thread and one call at a time.
    static ANSWER: RefCell<Answer> = const {
        RefCell::new(Answer {
            answered: None,
            response: Ops::new(),
            request_ops: Vec::new(),
            response_ops: Vec::new(),
            reply_headers: Vec::new(),
            record: [0; 8],
        })
    };
}

/// `request-hook.on-request`, which `export_filter!` exports: the answer of instance `I`'s
/// filter to the request the host lent as handle `request`, as the address of its
/// `request-answer`.
///
/// Unlike wit-bindgen's glue, it does not run the module's constructors first
/// (`run_ctors_once`): every host calls `configure` before any hook (the filter does not
/// exist before it, and a hook without it traps), and `configure`'s glue runs them.
///
/// # Safety
///
/// Only as the component's export, called by the host with a handle it lent for the call.
pub unsafe fn on_request<I: Instance>(request: i32) -> *const Word {
    // SAFETY: the host lent this handle for the call. The canonical ABI has the callee drop a
    // borrowed handle before it returns, which ends the borrow (as wit-bindgen's glue does):
    // `request` is dropped at the end of this function.
    let request = unsafe { HostRequest::from_handle(request as u32) };
    let (answered, response) = crate::adapter::answer::<I>(&request);
    answer(answered, response)
}

/// Keeps `answered` and `response` as the instance's answer, replacing (and dropping) the
/// last one, and returns the address of the `request-answer` record that describes them.
pub(crate) fn answer(answered: Answered, response: Ops) -> *const Word {
    ANSWER.with(|answer| answer.borrow_mut().lower(answered, response))
}

impl Answer {
    fn lower(&mut self, answered: Answered, response: Ops) -> *const Word {
        self.response = response;
        let [ptr, len] = ops(&self.response, &mut self.response_ops);
        let [a, b, c, d, e, f] = match self.answered.insert(answered) {
            Answered::Continue { headers, path } => {
                let [hptr, hlen] = ops(headers, &mut self.request_ops);
                let [tag, pptr, plen] = match path {
                    Some(path) => [1, address(path.as_bytes()), path.len()],
                    None => [0; 3],
                };
                [0, hptr, hlen, tag, pptr, plen]
            }
            Answered::Respond(reply) => {
                let [hptr, hlen] = headers(reply, &mut self.reply_headers);
                let body = &reply.body;
                [
                    1,
                    Word::from(reply.status),
                    hptr,
                    hlen,
                    address(body),
                    body.len(),
                ]
            }
        };
        self.record = [a, b, c, d, e, f, ptr, len];
        self.record.as_ptr()
    }
}

/// `ops` lowered into `into` (kept from call to call), each name and value where `ops`
/// keeps it: the list's address and length.
fn ops(ops: &Ops, into: &mut Vec<[Word; 5]>) -> [Word; 2] {
    into.clear();
    let (text, changes) = ops.raw();
    let base = address(text);
    into.extend(changes.map(|(kind, start, name_end, end)| {
        let (name, name_len) = (base + start, name_end - start);
        match kind {
            Kind::Set => [0, name, name_len, base + name_end, end - name_end],
            Kind::Append => [1, name, name_len, base + name_end, end - name_end],
            Kind::Remove => [2, name, name_len, 0, 0],
        }
    }));
    [address(into), into.len()]
}

/// A local response's headers lowered into `into`: the list's address and length.
fn headers(reply: &LocalResponse, into: &mut Vec<[Word; 4]>) -> [Word; 2] {
    into.clear();
    into.extend(reply.headers.iter().map(|(name, value)| {
        [
            address(name.as_bytes()),
            name.len(),
            address(value),
            value.len(),
        ]
    }));
    [address(into), into.len()]
}

/// Where `items` start in memory.
fn address<T>(items: &[T]) -> Word {
    items.as_ptr() as Word
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes made as a filter makes them.
    fn made(changes: &[(Kind, &str, &[u8])]) -> Ops {
        let mut ops = Ops::new();
        for &(kind, name, value) in changes {
            ops.push(kind, name, value);
        }
        ops
    }

    /// The record's words, read back.
    fn record(at: *const Word) -> [Word; 8] {
        // SAFETY: `answer` returns the address of the thread's record, live until the next
        // answer on this thread.
        unsafe { *at.cast::<[Word; 8]>() }
    }

    /// `len` lowered items at `ptr`.
    fn items<const N: usize>(ptr: Word, len: Word) -> Vec<[Word; N]> {
        // SAFETY: the address and length of a list the record points at, live until the next
        // answer on this thread.
        unsafe { std::slice::from_raw_parts(ptr as *const [Word; N], len) }.to_vec()
    }

    fn text(ptr: Word, len: Word) -> Vec<u8> {
        // SAFETY: as `items`: a string or byte list the answer keeps.
        unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec()
    }

    #[test]
    fn a_continue_is_laid_out_with_its_changes_and_the_response_headers() {
        let changes = Answered::Continue {
            headers: made(&[
                (Kind::Remove, "X-Drop", b""),
                (Kind::Set, "x-set", b"1"),
                (Kind::Append, "x-add", b"22"),
            ]),
            path: Some("/new?q".into()),
        };
        let response = made(&[(Kind::Set, "x-out", b"yes")]);
        let r = record(answer(changes, response));
        assert_eq!(r[0], 0, "continue");
        let ops = items::<5>(r[1], r[2]);
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0][0], 2);
        assert_eq!(text(ops[0][1], ops[0][2]), b"x-drop");
        assert_eq!(ops[1][0], 0);
        assert_eq!(text(ops[1][1], ops[1][2]), b"x-set");
        assert_eq!(text(ops[1][3], ops[1][4]), b"1");
        assert_eq!(ops[2][0], 1);
        assert_eq!(text(ops[2][3], ops[2][4]), b"22");
        assert_eq!(r[3], 1, "a path");
        assert_eq!(text(r[4], r[5]), b"/new?q");
        let out = items::<5>(r[6], r[7]);
        assert_eq!(out.len(), 1);
        assert_eq!(text(out[0][1], out[0][2]), b"x-out");
        assert_eq!(text(out[0][3], out[0][4]), b"yes");
    }

    #[test]
    fn a_reply_is_laid_out_with_its_status_headers_and_body() {
        // An answer before it, whose buffers the reply's lists reuse.
        let _ = answer(
            Answered::Continue {
                headers: made(&[(Kind::Remove, "a", b"")]),
                path: None,
            },
            made(&[(Kind::Remove, "b", b"")]),
        );
        let reply = LocalResponse {
            status: 403,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: b"no\n".to_vec(),
        };
        let r = record(answer(Answered::Respond(reply), Ops::new()));
        assert_eq!(r[0], 1, "respond");
        assert_eq!(r[1], 403);
        let headers = items::<4>(r[2], r[3]);
        assert_eq!(headers.len(), 1);
        assert_eq!(text(headers[0][0], headers[0][1]), b"content-type");
        assert_eq!(text(headers[0][2], headers[0][3]), b"text/plain");
        assert_eq!(text(r[4], r[5]), b"no\n");
        assert_eq!(r[7], 0, "no response headers");
    }

    #[test]
    fn lowered_changes_point_where_their_buffer_ended_up() {
        // More changes and text than the first room: both buffers grow (move) while the
        // filter makes changes; what is lowered must point into where they are at the end.
        let changes: Vec<(Kind, String, Vec<u8>)> = (0..40)
            .map(|i| {
                let kind = [Kind::Set, Kind::Append, Kind::Remove][i % 3];
                (
                    kind,
                    format!("X-Header-{i}"),
                    vec![b'a' + (i % 26) as u8; i],
                )
            })
            .collect();
        let make = || {
            let mut ops = Ops::new();
            for (kind, name, value) in &changes {
                ops.push(*kind, name, value);
            }
            ops
        };
        let expected: Vec<_> = changes
            .iter()
            .map(|(kind, name, value)| {
                let value = if *kind == Kind::Remove {
                    &[][..]
                } else {
                    value
                };
                (name.to_ascii_lowercase().into_bytes(), value.to_vec())
            })
            .collect();
        let answered = Answered::Continue {
            headers: make(),
            path: None,
        };
        let r = record(answer(answered, make()));
        for (ptr, len) in [(r[1], r[2]), (r[6], r[7])] {
            let read: Vec<_> = items::<5>(ptr, len)
                .iter()
                .map(|op| {
                    // A `remove`'s value words are unused (zero): not an address to read.
                    let value = if op[0] == 2 {
                        Vec::new()
                    } else {
                        text(op[3], op[4])
                    };
                    (text(op[1], op[2]), value)
                })
                .collect();
            assert_eq!(read, expected);
        }
        // The next answer replaces it whole: its own words, nothing of the last one's.
        let r = record(answer(
            Answered::Continue {
                headers: made(&[(Kind::Set, "x-next", b"1")]),
                path: Some("/next".into()),
            },
            Ops::new(),
        ));
        let ops = items::<5>(r[1], r[2]);
        assert_eq!(ops.len(), 1);
        assert_eq!(text(ops[0][1], ops[0][2]), b"x-next");
        assert_eq!(text(r[4], r[5]), b"/next");
        assert_eq!(r[7], 0);
    }

    #[test]
    fn a_continue_without_a_path_says_none() {
        let changes = Answered::Continue {
            headers: Ops::new(),
            path: None,
        };
        let r = record(answer(changes, Ops::new()));
        assert_eq!((r[0], r[2], r[3], r[7]), (0, 0, 0, 0));
    }
}
