//! The one `bindgen!` of the host: Rust types and traits generated from `wit/`.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
    });
}

pub(crate) use generated::Filter;
pub(crate) use generated::FilterPre;
pub(crate) use generated::weir::plugin::{kv, log, types};
