//! The guest filter of the `plugin_output` fuzz target (`fuzz/src/plugin_output.rs`): in
//! each hook it does what the request's `x-fuzz` header (a hex script) says for that
//! phase, whatever it is — invalid header names and values, any status, bodies of any
//! size — so the fuzzer drives exactly what a hostile plugin can return.
//!
//! A script is a run of ops, each a tag byte and its fields; a string or byte field is a
//! little-endian `u16` length and that many bytes (a name that is not UTF-8 is made so,
//! lossily: the contract's names are strings). Ops apply to the current phase, which starts
//! as the request phase; tag `0x80 + n` switches to phase `n` (0 request, 1 response, 2
//! request body, 3 response body). A truncated op ends the script.
//!
//! | tag | op | fields |
//! |---|---|---|
//! | 0 | set header | name, value |
//! | 1 | append header | name, value |
//! | 2 | remove header | name |
//! | 3 | set path (request phase) | path |
//! | 4 | set query (request phase; empty = none) | query |
//! | 5 | answer | status `u16`, header count `u8`, (name, value)…, body |
//! | 6 | replace the body (body phases) | body |
//! | 7 | set a header of `n` KiB | name, `n` as `u16` |
//! | 8 | append a header `n` times | name, value, `n` as `u16` |
//! | 9 | set a response header from the request phase | name, value |
//!
//! Its config's `bodies` (default true) says whether it asks for the body hooks: without
//! them weir streams bodies, with them it buffers them.

#![forbid(unsafe_code)]

use weir_plugin::{Action, Body, Filter, Hooks, Reply, Request, Response};

/// The header that carries the script, hex-encoded.
const SCRIPT: &str = "x-fuzz";

/// The filter.
#[derive(Debug)]
pub struct Ops {
    bodies: bool,
}

/// The `[config]` table.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Whether to ask for the body hooks.
    #[serde(default = "yes")]
    bodies: bool,
}

fn yes() -> bool {
    true
}

/// One op, read from the script.
enum Op {
    Set(String, Vec<u8>),
    Append(String, Vec<u8>),
    Remove(String),
    Path(String),
    Query(String),
    Answer(Reply),
    Body(Vec<u8>),
    Big(String, u16),
    Many(String, Vec<u8>, u16),
    ResponseHeader(String, Vec<u8>),
}

/// Something a phase can change: a request or a response head.
trait Head {
    fn set(&mut self, name: &str, value: &[u8]);
    fn append(&mut self, name: &str, value: &[u8]);
    fn remove(&mut self, name: &str);
}

impl Head for Request<'_> {
    fn set(&mut self, name: &str, value: &[u8]) {
        self.set_header(name, value);
    }
    fn append(&mut self, name: &str, value: &[u8]) {
        self.append_header(name, value);
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
}

impl Head for Response<'_> {
    fn set(&mut self, name: &str, value: &[u8]) {
        self.set_header(name, value);
    }
    fn append(&mut self, name: &str, value: &[u8]) {
        self.append_header(name, value);
    }
    fn remove(&mut self, name: &str) {
        self.remove_header(name);
    }
}

impl Filter for Ops {
    type Config = Config;

    fn new(config: Config) -> Result<Ops, String> {
        Ok(Ops {
            bodies: config.bodies,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            on_request: true,
            on_response: true,
            on_request_body: self.bodies,
            on_response_body: self.bodies,
        }
    }

    fn on_request(&self, request: &mut Request) -> Action {
        let ops = script(request, 0);
        run(ops, request, None, |request, op| match op {
            Op::Path(path) => request.set_path(path),
            Op::Query(query) => request.set_query((!query.is_empty()).then_some(query)),
            Op::ResponseHeader(name, value) => request.set_response_header(&name, value),
            _ => {}
        })
    }

    fn on_response(&self, request: &Request, response: &mut Response) -> Action {
        let ops = script(request, 1);
        run(ops, response, None, |_, _| {})
    }

    fn on_request_body(&self, request: &mut Request, body: &mut Body) -> Action {
        let ops = script(request, 2);
        run(ops, request, Some(body), |_, _| {})
    }

    fn on_response_body(
        &self,
        request: &Request,
        response: &mut Response,
        body: &mut Body,
    ) -> Action {
        let ops = script(request, 3);
        run(ops, response, Some(body), |_, _| {})
    }
}

/// Applies `ops` to `head` (and `body`); `other` handles the ops only one phase has.
fn run<H: Head>(
    ops: Vec<Op>,
    head: &mut H,
    mut body: Option<&mut Body>,
    mut other: impl FnMut(&mut H, Op),
) -> Action {
    for op in ops {
        match op {
            Op::Set(name, value) => head.set(&name, &value),
            Op::Append(name, value) => head.append(&name, &value),
            Op::Remove(name) => head.remove(&name),
            Op::Big(name, kib) => head.set(&name, &vec![b'a'; usize::from(kib) * 1024]),
            Op::Many(name, value, n) => (0..n).for_each(|_| head.append(&name, &value)),
            Op::Body(bytes) => {
                if let Some(body) = body.as_deref_mut() {
                    body.replace(bytes);
                }
            }
            Op::Answer(reply) => return Action::Respond(reply),
            op => other(head, op),
        }
    }
    Action::Continue
}

/// The ops of `phase` in the request's script.
fn script(request: &Request, phase: u8) -> Vec<Op> {
    let bytes = request.header_bytes(SCRIPT).map(unhex).unwrap_or_default();
    let mut reader = Reader { bytes: &bytes };
    let mut current = 0;
    let mut ops = Vec::new();
    while let Some(tag) = reader.u8() {
        if tag & 0x80 != 0 {
            current = tag & 3;
            continue;
        }
        let Some(op) = reader.op(tag) else {
            break;
        };
        if current == phase {
            ops.push(op);
        }
    }
    ops
}

fn unhex(text: &[u8]) -> Vec<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks_exact(2)
        .map_while(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

struct Reader<'b> {
    bytes: &'b [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = usize::from(self.u16()?);
        let taken = self.bytes.get(..len)?.to_vec();
        self.bytes = &self.bytes[len..];
        Some(taken)
    }

    fn string(&mut self) -> Option<String> {
        Some(String::from_utf8_lossy(&self.bytes()?).into_owned())
    }

    fn op(&mut self, tag: u8) -> Option<Op> {
        Some(match tag {
            0 => Op::Set(self.string()?, self.bytes()?),
            1 => Op::Append(self.string()?, self.bytes()?),
            2 => Op::Remove(self.string()?),
            3 => Op::Path(self.string()?),
            4 => Op::Query(self.string()?),
            5 => {
                let mut reply = Reply::new(self.u16()?);
                for _ in 0..self.u8()? {
                    let name = self.string()?;
                    reply = reply.header(&name, self.bytes()?);
                }
                Op::Answer(reply.body(self.bytes()?))
            }
            6 => Op::Body(self.bytes()?),
            7 => Op::Big(self.string()?, self.u16()?),
            8 => Op::Many(self.string()?, self.bytes()?, self.u16()?),
            9 => Op::ResponseHeader(self.string()?, self.bytes()?),
            _ => return None,
        })
    }
}

weir_plugin::export_filter!(Ops);
