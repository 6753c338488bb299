//! The one `bindgen!` of the host: Rust types and traits generated from `wit/`.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        // Hooks run on a fiber and are awaited by the request's task: WASI's host functions
        // are async, and a synchronous call would have to block the runtime to run them.
        exports: { default: async },
    });
}

pub(crate) use generated::Filter;
pub(crate) use generated::FilterPre;
pub(crate) use generated::weir::plugin::{kv, log, types};
