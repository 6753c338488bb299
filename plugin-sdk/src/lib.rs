//! Write [weir](https://example.invalid/weir) filter plugins in Rust.
//!
//! A filter is a type that implements [`Filter`] and is exported with [`export_filter!`].
//! weir builds it from the plugin's `[config]` table (deserialised into
//! [`Filter::Config`]), then calls [`Filter::on_request`] for every request and
//! [`Filter::on_response`] for every response on the routes that use the plugin.
//!
//! ```
//! use weir_plugin::{Action, Filter, Request, Reply};
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     /// Requests without this header are refused.
//!     required: String,
//! }
//!
//! struct RequireHeader(Config);
//!
//! impl Filter for RequireHeader {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(RequireHeader(config))
//!     }
//!
//!     fn on_request(&self, request: &mut Request) -> Action {
//!         if request.header(&self.0.required).is_none() {
//!             return Reply::text(400, "missing header\n").into();
//!         }
//!         request.set_header("x-checked-by", "require-header");
//!         Action::Continue
//!     }
//! }
//!
//! weir_plugin::export_filter!(RequireHeader);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate is a `cdylib`) and
//! copy `target/wasm32-wasip2/release/NAME.wasm` into weir's plugin folder.
//!
//! # What lives between requests
//!
//! weir reuses an instance for many requests (up to the plugin's `max_uses`). The value
//! [`Filter::new`] returned, and any statics, persist across those requests; nothing the host
//! passes in (requests, responses) is kept unless your code keeps it. Each instance has its
//! own memory: state shared by every instance and every worker belongs in [`kv`]; counts
//! for operators to watch belong in [`metrics`], which weir exports on `GET /metrics`.
//!
//! # Testing
//!
//! With the `testing` feature, [`testing`] runs a filter natively, through the same code the
//! host calls, against a mock host: `cargo test` needs no wasm target and no weir.

#![deny(missing_docs)]
// Only the generated bindings may use `unsafe` (the canonical ABI's glue); see `bindings`.
#![deny(unsafe_code)]

// Lets the generated bindings name this crate the same way inside and outside it.
extern crate self as weir_plugin;

mod adapter;
#[cfg(not(feature = "without-request-hook"))]
mod answer;
#[doc(hidden)]
#[allow(unsafe_code, reason = "wit-bindgen output: the canonical ABI's glue")]
pub mod bindings;
pub mod clock;
pub mod hash;
#[cfg(feature = "allocator")]
mod heap;
mod http;
pub mod kv;
pub mod log;
pub mod metrics;
mod mock;
mod ops;
pub mod outbound;
#[cfg(feature = "testing")]
pub mod testing;

/// The plugin's heap (see `heap`). Off with the `allocator` feature (on by default), for a
/// plugin that sets its own `#[global_allocator]`.
#[cfg(all(
    feature = "allocator",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: heap::PluginHeap = heap::PluginHeap::new();

pub use crate::http::{Action, Body, Reply, Request, Response, Tls};
pub use serde::Deserialize;

/// The config of a filter that takes none: an empty `[config]`, or none at all. Unknown
/// keys are refused, so a typo in `NAME.toml` is an error rather than ignored.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Which hooks a filter implements. weir calls only these, so a filter that leaves one out
/// costs nothing on that phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// [`Filter::on_request`] is called.
    pub on_request: bool,
    /// [`Filter::on_response`] is called.
    pub on_response: bool,
    /// [`Filter::on_request_body`] is called: weir buffers request bodies for it.
    pub on_request_body: bool,
    /// [`Filter::on_response_body`] is called: weir buffers response bodies for it.
    pub on_response_body: bool,
}

impl Hooks {
    /// No hooks; the base for `Hooks { on_request_body: true, ..Hooks::NONE }`.
    pub const NONE: Hooks = Hooks {
        on_request: false,
        on_response: false,
        on_request_body: false,
        on_response_body: false,
    };
    /// Only `on_request`.
    pub const REQUEST: Hooks = Hooks {
        on_request: true,
        ..Hooks::NONE
    };
    /// Only `on_response`.
    pub const RESPONSE: Hooks = Hooks {
        on_response: true,
        ..Hooks::NONE
    };
    /// Both head hooks, no body hooks.
    pub const BOTH: Hooks = Hooks {
        on_request: true,
        on_response: true,
        ..Hooks::NONE
    };
}

/// A weir filter. Every hook has a default that does nothing; implement the ones you need
/// and say which in [`Filter::hooks`].
pub trait Filter: Sized + 'static {
    /// The plugin's `[config]` table from `NAME.toml`, deserialised with serde. Use
    /// [`NoConfig`] for none.
    type Config: serde::de::DeserializeOwned;

    /// Builds the filter from its config, once per instance, before any request. An `Err`
    /// rejects the config: weir logs the message and the plugin never sees traffic.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The hooks weir should call, asked once after [`Filter::new`]. Defaults to both head
    /// hooks; name only the ones this filter (with this config) needs, to save a host
    /// crossing per request on the others. Body hooks are off unless named here: a body hook
    /// makes weir buffer whole bodies.
    fn hooks(&self) -> Hooks {
        Hooks::BOTH
    }

    /// Called for each request before it goes upstream. Change it through `request`, then
    /// return [`Action::Continue`], or answer it yourself with [`Action::Respond`] (the
    /// upstream is not called; response hooks of filters already passed still run).
    fn on_request(&self, request: &mut Request) -> Action {
        let _ = request;
        Action::Continue
    }

    /// Called for each response on its way back (from upstream or from a local reply), in
    /// reverse chain order. Change its headers through `response`, or replace it with
    /// [`Action::Respond`].
    fn on_response(&self, request: &Request, response: &mut Response) -> Action {
        let _ = (request, response);
        Action::Continue
    }

    /// Called with the whole request body, after every filter's `on_request`, if
    /// [`Filter::hooks`] names it. Change the body through `body` and headers through
    /// `request` (path and query changes are not applied in this phase), or answer. weir
    /// refuses a body larger than the plugin's `max_body_bytes` with 413 before this runs,
    /// and sets `content-length` to the length of what it sends.
    fn on_request_body(&self, request: &mut Request, body: &mut Body) -> Action {
        let _ = (request, body);
        Action::Continue
    }

    /// Called with the whole response body, after every filter's `on_response`, in reverse
    /// chain order, if [`Filter::hooks`] names it. A body larger than `max_body_bytes` is
    /// sent on untouched without calling this (weir logs a warning).
    fn on_response_body(
        &self,
        request: &Request,
        response: &mut Response,
        body: &mut Body,
    ) -> Action {
        let _ = (request, response, body);
        Action::Continue
    }
}

/// Exports a [`Filter`] as the plugin's `weir:plugin/http-filter` implementation (and its
/// `request-hook`, weir:plugin 0.3.7). Use it once, at the crate root of a `cdylib`; the
/// filter may be a type of another crate. It exports only when building for wasm, so the
/// same crate also builds natively for `cargo test`. A plugin instance has one thread: the
/// SDK builds plugins for `wasm32-wasip2`, not for wasm targets with threads.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        /// Where this plugin's instance keeps its filter (see `weir_plugin`'s `Instance`).
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        struct __WeirPluginInstance;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static SLOT: $crate::__private::FilterSlot<$filter> =
                $crate::__private::FilterSlot::new();
            impl $crate::__private::Instance for __WeirPluginInstance {
                type Filter = $filter;
                fn slot() -> &'static $crate::__private::FilterSlot<$filter> {
                    &SLOT
                }
            }
        };
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __WeirPluginExport = $crate::__private::Adapter<__WeirPluginInstance>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::export_world!(__WeirPluginExport);
        $crate::__weir_export_request_hook!();
    };
}

/// The `request-hook` export (`answer`), and its type added to the component's.
#[doc(hidden)]
#[macro_export]
#[cfg(not(feature = "without-request-hook"))]
macro_rules! __weir_export_request_hook {
    () => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__private::export_hook_world!(__WeirPluginExport);

            #[unsafe(export_name = "weir:plugin/request-hook@0.3.7#on-request")]
            unsafe extern "C" fn __weir_request_hook(request: i32) -> *const usize {
                // SAFETY: the component's export, called by the host with a lent handle.
                unsafe { $crate::__private::on_request::<__WeirPluginInstance>(request) }
            }
        };
    };
}

/// Without `request-hook` (the `without-request-hook` feature): nothing.
#[doc(hidden)]
#[macro_export]
#[cfg(feature = "without-request-hook")]
macro_rules! __weir_export_request_hook {
    () => {};
}

#[doc(hidden)]
pub mod __private {
    pub use crate::adapter::{Adapter, FilterSlot, Instance};
    #[cfg(not(feature = "without-request-hook"))]
    pub use crate::answer::on_request;
    pub use crate::bindings::export as export_world;
    #[cfg(not(feature = "without-request-hook"))]
    pub use crate::bindings::hook::export as export_hook_world;
    pub use wit_bindgen;
}
