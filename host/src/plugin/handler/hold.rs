//! What a handler call may make weir hold for it: the wasi:http `fields` it builds, the
//! heads of its sub-requests and the buffers of the bodies it opens, sends and reads, at
//! most its `host_memory_mb` (`PluginSettings::host_memory`, [`DEFAULT_HELD_PER_CALL`]
//! unless its `NAME.toml` says otherwise).
//!
//! wasmtime-wasi-http bounds each `fields` (128 KiB) and each body's buffer (two writes of
//! [`BODY_CHUNK_BYTES`]), and weir bounds an instance's handles (4,096): without more, one
//! call could keep thousands of `fields`, of sub-requests' methods and authorities (which
//! nothing bounds but the host-call fuel of the call that sets them), or of sub-requests'
//! bodies written and never sent, and make weir hold gigabytes. The calls that copy bytes
//! into a `fields` (`from-list`, `append`, `set`, `clone`) or into a sub-request's head
//! (`set-method`, `set-authority`, `set-path-with-query`), those that open a body
//! (`outgoing-request.body`, `outgoing-response.body`), the one that sends a sub-request
//! (`outgoing-handler.handle`, which copies its head, shared with any number of others
//! through `outgoing-request.headers` at no charge, and has weir read its body whole) and
//! the one that hands the guest an answer's body to read (`incoming-response.consume`) are
//! wrapped here: each adds what it may make weir hold to the call's account, and a call past
//! the bound traps. The account only grows within a call, so it bounds wherever those bytes
//! went (a `fields` dropped, sent upstream as a sub-request's head, or kept). What a reused
//! instance keeps between calls is bounded apart, when its call ends (`reusable`, with
//! [`kept_fields_bytes`]).

use std::any::Any;
use std::collections::HashSet;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler;
use wasmtime_wasi_http::p2::bindings::http::types as wit;
use wasmtime_wasi_http::p2::types::{
    HostFutureIncomingResponse, HostIncomingResponse, HostOutgoingRequest, HostOutgoingResponse,
};
use wasmtime_wasi_http::{FieldMap, RequestOptions, WasiHttpCtxView, WasiHttpView};

use super::HandlerState;

/// The most one handler call may make weir hold in `fields`, sub-requests and body buffers
/// unless its `NAME.toml` sets `host_memory_mb`: about 25 sub-requests' answers read, or 10
/// sub-requests with bodies, or 512 without.
pub(super) const DEFAULT_HELD_PER_CALL: usize = 16 << 20;

/// The most a body's stream takes in one write (wasmtime-wasi-http's default is 1 MiB); its
/// buffer holds two. A guest writes what `check-write` allows, so it sees no difference.
pub(super) const BODY_CHUNK_BYTES: usize = 256 << 10;

/// What an entry of a `fields` makes weir hold besides its name's and value's bytes: its
/// bucket in the map (name, value, hash and links, about 100 bytes), its index and its
/// name's own allocation. Without it a `fields` of 1,500 empty headers was charged its 10 KB
/// of names and held 180 KB (500 of them, 90 MB for 5 MB charged).
const ENTRY_BYTES: usize = 128;

/// What opening a body may make weir hold before anyone reads it.
const BODY_BUFFER_BYTES: usize = 2 * BODY_CHUNK_BYTES;

/// What sending a sub-request with a body may make weir hold besides its buffer: the body,
/// read whole before it is sent and kept until the cluster answers (for retries).
const SENT_BODY_BYTES: usize = super::MAX_OUTBOUND_BODY_BYTES;

/// What a sub-request in flight makes weir hold whatever its head and body: its task, its
/// connection to the cluster and that connection's buffers, kept until the guest drops its
/// answer (about 28 KiB measured; 1,000 sent in one call, 28 MB). A call may so send 512.
const SENT_REQUEST_BYTES: usize = 32 << 10;

/// What a sub-request's answer may make weir hold once the guest takes its body: as the body
/// is read, the connection's read buffer grows to hyper's bound (about 400 KiB), and the
/// guest's stream keeps what it has not read of a frame (100 answers read 2 MB into and
/// held were 53 MB of weir's memory; unread, an answer holds about 28 KiB).
const ANSWER_BODY_BYTES: usize = 640 << 10;

/// The interfaces whose functions are wrapped, at the version wasmtime-wasi-http defines
/// (a guest's import of any 0.2 version resolves to it).
const TYPES: &str = "wasi:http/types@0.2.12";
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// A call's account of what it made weir hold, and its bound.
#[derive(Debug)]
pub(super) struct Held {
    bytes: usize,
    limit: usize,
}

impl Held {
    /// An account bounded by `limit` bytes a call.
    pub(super) fn new(limit: usize) -> Held {
        Held { bytes: 0, limit }
    }

    /// A new call's account.
    pub(super) fn reset(&mut self) {
        self.bytes = 0;
    }

    /// Adds `bytes`; past the bound, the call traps.
    fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.limit {
            wasmtime::bail!(
                "the handler made weir hold more than its host_memory_mb ({} MiB) in wasi:http fields, sub-requests and body buffers in one call",
                self.limit >> 20
            );
        }
        Ok(())
    }
}

/// Replaces wasmtime-wasi-http's definitions of the wrapped functions in `linker` (where they
/// are already defined) with ones that charge the call's account, then call them.
pub(super) fn add_to_linker(linker: &mut Linker<HandlerState>) -> wasmtime::Result<()> {
    // The originals must be there to be replaced. Were wasmtime-wasi-http's WIT at another
    // version, defining these would make a second instance that no guest's import resolves
    // to, and leave the originals unwrapped: a name defined twice is refused while shadowing
    // is off, so a definition that is taken means they are missing.
    for (interface, name) in [
        (TYPES, "[static]fields.from-list"),
        (OUTGOING_HANDLER, "handle"),
    ] {
        let probe = linker
            .instance(interface)?
            .func_wrap(name, |_: Cx<'_>, (): ()| Ok(()));
        wasmtime::ensure!(
            probe.is_err(),
            "wasmtime-wasi-http does not define {interface}, which weir's handler linker wraps"
        );
    }
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: Cx<'_>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let bytes = entries.iter().map(|(name, value)| entry_bytes(name, value));
            charged(&mut store, bytes.sum(), |http| {
                let made = wit::HostFields::from_list(http, entries);
                header_result(http, made)
            })
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store: Cx<'_>, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let bytes = values.iter().map(|value| entry_bytes(&name, value)).sum();
            charged(&mut store, bytes, |http| {
                let set = wit::HostFields::set(http, fields, name, values);
                header_result(http, set)
            })
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        |mut store: Cx<'_>, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            charged(&mut store, entry_bytes(&name, &value), |http| {
                let appended = wit::HostFields::append(http, fields, name, value);
                header_result(http, appended)
            })
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        |mut store: Cx<'_>, (fields,): (Resource<FieldMap>,)| {
            // A clone shares its map until it changes; counted as the copy it may become.
            let bytes = fields_bytes(store.data_mut().table.get(&fields)?);
            charged(&mut store, bytes, |http| {
                wit::HostFields::clone(http, fields)
            })
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.body",
        |mut store: Cx<'_>, (request,): (Resource<HostOutgoingRequest>,)| {
            charged(&mut store, BODY_BUFFER_BYTES, |http| {
                wit::HostOutgoingRequest::body(http, request)
            })
        },
    )?;
    types.func_wrap(
        "[method]outgoing-response.body",
        |mut store: Cx<'_>, (response,): (Resource<HostOutgoingResponse>,)| {
            charged(&mut store, BODY_BUFFER_BYTES, |http| {
                wit::HostOutgoingResponse::body(http, response)
            })
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store: Cx<'_>, (request, method): (Resource<HostOutgoingRequest>, wit::Method)| {
            // Only an `other` method is the guest's string; the rest are wasi:http's.
            let bytes = match &method {
                wit::Method::Other(method) => method.len(),
                _ => 0,
            };
            charged(&mut store, bytes, |http| {
                wit::HostOutgoingRequest::set_method(http, request, method)
            })
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store: Cx<'_>,
         (request, authority): (Resource<HostOutgoingRequest>, Option<String>)| {
            let bytes = authority.as_ref().map_or(0, String::len);
            charged(&mut store, bytes, |http| {
                wit::HostOutgoingRequest::set_authority(http, request, authority)
            })
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-path-with-query",
        |mut store: Cx<'_>, (request, path): (Resource<HostOutgoingRequest>, Option<String>)| {
            let bytes = path.as_ref().map_or(0, String::len);
            charged(&mut store, bytes, |http| {
                wit::HostOutgoingRequest::set_path_with_query(http, request, path)
            })
        },
    )?;
    types.func_wrap(
        "[method]incoming-response.consume",
        |mut store: Cx<'_>, (response,): (Resource<HostIncomingResponse>,)| {
            charged(&mut store, ANSWER_BODY_BYTES, |http| {
                wit::HostIncomingResponse::consume(http, response)
            })
        },
    )?;
    let mut outgoing = linker.instance(OUTGOING_HANDLER)?;
    outgoing.func_wrap(
        "handle",
        |mut store: Cx<'_>,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<RequestOptions>>,
        )| {
            let bytes = sent_bytes(store.data_mut().table.get(&request)?);
            charged(&mut store, bytes, |http| {
                let sent: Result<Resource<HostFutureIncomingResponse>, _> =
                    outgoing_handler::Host::handle(http, request, options);
                match sent {
                    Ok(future) => Ok(Ok(future)),
                    Err(e) => Ok(Err(wit::Host::convert_error_code(http, e)?)),
                }
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// What sending `request` may make weir hold until the guest drops its answer: the request
/// in flight, a copy of its head (its `fields` may be shared with others, charged once when
/// made) and, if it has one, its body read whole.
fn sent_bytes(request: &HostOutgoingRequest) -> usize {
    let method = match &request.method {
        wit::Method::Other(method) => method.len(),
        _ => 0,
    };
    let strings = [&request.authority, &request.path_with_query];
    let strings: usize = strings
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum();
    let body = if request.body.is_some() {
        SENT_BODY_BYTES
    } else {
        0
    };
    SENT_REQUEST_BYTES + fields_bytes(&request.headers) + method + strings + body
}

/// A wrapped function's store.
type Cx<'a> = StoreContextMut<'a, HandlerState>;

/// Charges `bytes` to the call's account (trapping past its bound), then makes the call
/// through wasmtime-wasi-http's own definition.
fn charged<R>(
    store: &mut Cx<'_>,
    bytes: usize,
    call: impl FnOnce(&mut WasiHttpCtxView<'_>) -> wasmtime::Result<R>,
) -> wasmtime::Result<(R,)> {
    store.data_mut().held.charge(bytes)?;
    Ok((call(&mut store.data_mut().http())?,))
}

/// A wrapped call's result as the guest gets it: its own error as `header-error`, a trap as
/// a trap.
fn header_result<T>(
    http: &mut WasiHttpCtxView<'_>,
    result: Result<T, wasmtime_wasi_http::p2::HeaderError>,
) -> wasmtime::Result<Result<T, wit::HeaderError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => Ok(Err(wit::Host::convert_header_error(http, e)?)),
    }
}

/// What an entry named `name` with `value` makes weir hold in a `fields`.
fn entry_bytes(name: &str, value: &[u8]) -> usize {
    name.len() + value.len() + ENTRY_BYTES
}

/// What a map's entries make weir hold.
fn fields_bytes(map: &http::HeaderMap) -> usize {
    map.iter()
        .map(|(name, value)| entry_bytes(name.as_str(), value.as_bytes()))
        .sum()
}

/// The bytes the `fields` in `table` hold, each map once however many `fields` share it.
pub(super) fn kept_fields_bytes(table: &mut ResourceTable) -> usize {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    for (_, entry) in table.iter_mut() {
        let entry: &dyn Any = entry;
        if let Some(fields) = entry.downcast_ref::<FieldMap>() {
            let map: &http::HeaderMap = fields;
            if seen.insert(std::ptr::from_ref(map)) {
                bytes += fields_bytes(map);
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    /// The wrapped functions are where wasmtime-wasi-http defines them: were its WIT at
    /// another version, the handler linker would not build.
    #[test]
    fn the_handler_linker_wraps_wasmtime_wasi_https_own_definitions() {
        let engine = wasmtime::Engine::default();
        let linker = super::super::linker(&engine);
        assert!(linker.is_ok(), "{:?}", linker.err());
    }
}
