//! What a handler call may make weir hold for it: the wasi:http `fields` it builds and the
//! buffers of the bodies it opens, at most [`MAX_HELD_PER_CALL`] bytes.
//!
//! wasmtime-wasi-http bounds each `fields` (128 KiB) and each body's buffer (two writes of
//! [`BODY_CHUNK_BYTES`]), and weir bounds an instance's handles (4,096): without more, one
//! call could keep thousands of `fields`, or of sub-requests' bodies written and never sent,
//! and make weir hold gigabytes. The calls that copy bytes into a `fields` (`from-list`,
//! `append`, `set`, `clone`) and those that open a body (`outgoing-request.body`,
//! `outgoing-response.body`) are wrapped here: each adds what it may make weir hold to the
//! call's account, and a call past the bound traps. The account only grows within a call,
//! so it bounds wherever those bytes went (a `fields` dropped, sent upstream as a
//! sub-request's head, or kept). What a reused instance keeps between calls is bounded
//! apart, when its call ends (`reusable`, with [`kept_fields_bytes`]).

use std::any::Any;
use std::collections::HashSet;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi_http::p2::bindings::http::types as wit;
use wasmtime_wasi_http::p2::types::{HostOutgoingRequest, HostOutgoingResponse};
use wasmtime_wasi_http::{FieldMap, WasiHttpView};

use super::HandlerState;

/// The most one handler call may make weir hold in `fields` and body buffers.
pub(super) const MAX_HELD_PER_CALL: usize = 16 << 20;

/// The most a body's stream takes in one write (wasmtime-wasi-http's default is 1 MiB); its
/// buffer holds two. A guest writes what `check-write` allows, so it sees no difference.
pub(super) const BODY_CHUNK_BYTES: usize = 256 << 10;

/// What opening a body may make weir hold before anyone reads it.
const BODY_BUFFER_BYTES: usize = 2 * BODY_CHUNK_BYTES;

/// The interface whose functions are wrapped, at the version wasmtime-wasi-http defines
/// (a guest's import of any 0.2 version resolves to it).
const TYPES: &str = "wasi:http/types@0.2.12";

/// A call's account of what it made weir hold.
#[derive(Debug, Default)]
pub(super) struct Held {
    bytes: usize,
}

impl Held {
    /// A new call's account.
    pub(super) fn reset(&mut self) {
        self.bytes = 0;
    }

    /// Adds `bytes`; past [`MAX_HELD_PER_CALL`], the call traps.
    fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_HELD_PER_CALL {
            wasmtime::bail!(
                "the handler made weir hold more than {} MiB in wasi:http fields and body buffers in one call",
                MAX_HELD_PER_CALL >> 20
            );
        }
        Ok(())
    }
}

/// Replaces wasmtime-wasi-http's definitions of the wrapped functions in `linker` (where they
/// are already defined) with ones that charge the call's account, then call them.
pub(super) fn add_to_linker(linker: &mut Linker<HandlerState>) -> wasmtime::Result<()> {
    type Cx<'a> = StoreContextMut<'a, HandlerState>;
    // The originals must be there to be replaced. Were wasmtime-wasi-http's WIT at another
    // version, defining these would make a second instance that no guest's import resolves
    // to, and leave the originals unwrapped: a name defined twice is refused while shadowing
    // is off, so a definition that is taken means they are missing.
    let probe = linker
        .instance(TYPES)?
        .func_wrap("[static]fields.from-list", |_: Cx<'_>, (): ()| Ok(()));
    wasmtime::ensure!(
        probe.is_err(),
        "wasmtime-wasi-http does not define {TYPES}, which weir's handler linker wraps"
    );
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: Cx<'_>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let bytes = entries.iter().map(|(name, value)| name.len() + value.len());
            store.data_mut().held.charge(bytes.sum())?;
            let mut http = store.data_mut().http();
            let result = wit::HostFields::from_list(&mut http, entries);
            Ok((header_result(&mut http, result)?,))
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store: Cx<'_>, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let bytes = values.iter().map(|value| name.len() + value.len()).sum();
            store.data_mut().held.charge(bytes)?;
            let mut http = store.data_mut().http();
            let result = wit::HostFields::set(&mut http, fields, name, values);
            Ok((header_result(&mut http, result)?,))
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        |mut store: Cx<'_>, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            store.data_mut().held.charge(name.len() + value.len())?;
            let mut http = store.data_mut().http();
            let result = wit::HostFields::append(&mut http, fields, name, value);
            Ok((header_result(&mut http, result)?,))
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        |mut store: Cx<'_>, (fields,): (Resource<FieldMap>,)| {
            // A clone shares its map until it changes; counted as the copy it may become.
            let bytes = fields_bytes(store.data_mut().table.get(&fields)?);
            store.data_mut().held.charge(bytes)?;
            Ok((wit::HostFields::clone(
                &mut store.data_mut().http(),
                fields,
            )?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.body",
        |mut store: Cx<'_>, (request,): (Resource<HostOutgoingRequest>,)| {
            store.data_mut().held.charge(BODY_BUFFER_BYTES)?;
            let mut http = store.data_mut().http();
            Ok((wit::HostOutgoingRequest::body(&mut http, request)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-response.body",
        |mut store: Cx<'_>, (response,): (Resource<HostOutgoingResponse>,)| {
            store.data_mut().held.charge(BODY_BUFFER_BYTES)?;
            let mut http = store.data_mut().http();
            Ok((wit::HostOutgoingResponse::body(&mut http, response)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A wrapped call's result as the guest gets it: its own error as `header-error`, a trap as
/// a trap.
fn header_result<T>(
    http: &mut wasmtime_wasi_http::WasiHttpCtxView<'_>,
    result: Result<T, wasmtime_wasi_http::p2::HeaderError>,
) -> wasmtime::Result<Result<T, wit::HeaderError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => Ok(Err(wit::Host::convert_header_error(http, e)?)),
    }
}

/// The bytes of a map's names and values.
fn fields_bytes(map: &http::HeaderMap) -> usize {
    map.iter()
        .map(|(name, value)| name.as_str().len() + value.len())
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
