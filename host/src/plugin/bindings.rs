//! The host's `bindgen!`s: Rust types and traits generated from `wit/` (the current
//! contract) and from each older minor version weir still loads (`wit/0.1.0/`).
//!
//! The rest of the runtime speaks only the current version's types; [`v0_1`] converts at the
//! edge (see `compat.rs`).

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        // Hooks run on a fiber and are awaited by the request's task: WASI's host functions
        // are async, and a synchronous call would have to block the runtime to run them.
        exports: { default: async },
    });
}

/// The frozen `weir:plugin@0.1.0` contract: plugins built before body hooks.
pub(crate) mod v0_1 {
    mod generated {
        wasmtime::component::bindgen!({
            path: "../wit/0.1.0",
            world: "filter",
            exports: { default: async },
        });
    }
    pub(crate) use generated::Filter;
    pub(crate) use generated::FilterPre;
    pub(crate) use generated::weir::plugin::{kv, log, types};
}

pub(crate) use generated::Filter;
pub(crate) use generated::FilterPre;
pub(crate) use generated::weir::plugin::{kv, log, types};
