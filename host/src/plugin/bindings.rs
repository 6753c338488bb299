//! The host's `bindgen!`s: Rust types and traits generated from `wit/` (the current
//! contract) and from each older minor version weir still loads (`wit/0.2.0/`,
//! `wit/0.1.0/`).
//!
//! The rest of the runtime speaks only the current version's types. 0.2.0's records are
//! mapped onto the current ones (a minor version only adds, so they are the same types);
//! [`v0_1`] converts at the edge (see `compat.rs`).

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        // Hooks run on a fiber and are awaited by the request's task: WASI's host functions
        // are async, and a synchronous call would have to block the runtime to run them.
        exports: { default: async },
        // The heads a lazy hook reads live in the store's resource table for the call.
        with: {
            "weir:plugin/types.request": crate::plugin::view::RequestView,
            "weir:plugin/types.response": crate::plugin::view::ResponseView,
        },
        // A handle that is not in the table is a host bug: the call traps.
        imports: { "weir:plugin/types": trappable },
    });
}

/// The frozen `weir:plugin@0.2.0` contract: plugins built before the lazy hooks.
pub(crate) mod v0_2 {
    mod generated {
        wasmtime::component::bindgen!({
            path: "../wit/0.2.0",
            world: "filter",
            exports: { default: async },
            // The same types as the current contract's (a minor version only adds), so a
            // 0.2.0 hook is passed the chain's heads without a conversion.
            with: { "weir:plugin/types": crate::plugin::bindings::generated::weir::plugin::types },
        });
    }
    pub(crate) use generated::Filter;
    pub(crate) use generated::FilterPre;
    pub(crate) use generated::weir::plugin::{kv, log};
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
