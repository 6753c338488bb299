//! The `weir:plugin` contract versions weir loads, behind one seam. Each version is a module
//! that owns its generated bindings and its conversions and implements [`Contract`] (the linked
//! component) and [`Guest`] (an instance's exports); the `contracts!` list below is the only
//! place that names them all.
//!
//! The rest of the runtime speaks the current version's types ([`current`]) and calls a
//! filter through [`AnyPre`] and `on_guest!`, never matching on a version. Adding a version
//! is a new module and a line in the list; retiring one is deleting both.

use std::future::Future;

use http::response;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre, Linker};

use super::state::PluginState;
use super::view::RequestView;
use current::types::{BodyAction, BodyHookSet, HeaderOp, HookSet, RequestAction, ResponseAction};

/// Forwards an older minor's `log` and `kv` imports (the same functions, under that version's
/// names and types) to the current implementations. Defined before the version modules so
/// they can use it.
macro_rules! forward_imports {
    ($v:path) => {
        use $crate::plugin::contract::current::{kv, log};
        use $v as old;

        impl old::log::Host for PluginState {
            fn enabled(&mut self, level: old::log::Level) -> bool {
                log::Host::enabled(self, level.into())
            }

            fn log(&mut self, level: old::log::Level, message: String) {
                log::Host::log(self, level.into(), message);
            }
        }

        impl From<old::log::Level> for log::Level {
            fn from(level: old::log::Level) -> log::Level {
                match level {
                    old::log::Level::Trace => log::Level::Trace,
                    old::log::Level::Debug => log::Level::Debug,
                    old::log::Level::Info => log::Level::Info,
                    old::log::Level::Warn => log::Level::Warn,
                    old::log::Level::Error => log::Level::Error,
                }
            }
        }

        impl old::kv::Host for PluginState {
            async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, old::kv::Error> {
                kv::Host::get(self, key).await.map_err(From::from)
            }

            async fn set(
                &mut self,
                key: String,
                value: Vec<u8>,
                ttl_ms: Option<u64>,
            ) -> Result<(), old::kv::Error> {
                kv::Host::set(self, key, value, ttl_ms)
                    .await
                    .map_err(From::from)
            }

            async fn delete(&mut self, key: String) -> Result<(), old::kv::Error> {
                kv::Host::delete(self, key).await.map_err(From::from)
            }

            async fn increment(
                &mut self,
                key: String,
                delta: i64,
                ttl_ms: Option<u64>,
            ) -> Result<i64, old::kv::Error> {
                kv::Host::increment(self, key, delta, ttl_ms)
                    .await
                    .map_err(From::from)
            }
        }

        impl From<kv::Error> for old::kv::Error {
            fn from(error: kv::Error) -> old::kv::Error {
                match error {
                    kv::Error::AccessDenied => old::kv::Error::AccessDenied,
                    kv::Error::Unavailable(why) => old::kv::Error::Unavailable(why),
                    kv::Error::Invalid(why) => old::kv::Error::Invalid(why),
                }
            }
        }
    };
}

mod v0_1;
mod v0_2;
pub(crate) mod v0_3;

/// The current contract (`wit/`): the types the host's imports, the chain and the views use.
pub(crate) use v0_3 as current;

/// Which hooks a filter implements, as it answered at load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hooks {
    /// `on-request` and `on-response`.
    pub(crate) head: HookSet,
    /// `on-request-body` and `on-response-body`.
    pub(crate) body: BodyHookSet,
}

/// Why a hook call failed.
#[derive(Debug)]
pub(crate) enum HookError {
    /// The guest trapped or hit a limit: the instance must not be used again.
    Trap(wasmtime::Error),
    /// The request or response lent to the call could not be taken back, so it is lost.
    LostView(String),
}

impl From<wasmtime::Error> for HookError {
    fn from(e: wasmtime::Error) -> HookError {
        HookError::Trap(e)
    }
}

/// One contract version's linked filter component (its generated `FilterPre`).
pub(crate) trait Contract: Sized + Send + Sync {
    /// An instance's exports.
    type Guest: Guest;
    /// The versions this module loads, for messages (`"0.3.x"`).
    const NAME: &'static str;
    /// Whether a plugin built against this version is warned about at load: its support is
    /// scheduled to end (`wit/README.md`).
    const DEPRECATED: bool;

    /// Links this version's imports into the runtime's one filter linker.
    fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()>;

    /// The component as this version's filter; fails if it does not export this version's
    /// `http-filter`.
    fn link(pre: &InstancePre<PluginState>, component: &Component) -> wasmtime::Result<Self>;

    /// The exact version the component was built against, as the admin API reports it.
    fn version(&self) -> &'static str;

    /// A fresh instance in `store`.
    fn instantiate(
        &self,
        store: &mut Store<PluginState>,
    ) -> impl Future<Output = wasmtime::Result<Self::Guest>> + Send;
}

/// What the runtime calls on a filter instance, whatever version it was built against. Each
/// call runs under the store's epoch deadline.
pub(crate) trait Guest: Send + Sync {
    /// `configure`: `Ok(Err(why))` is the plugin refusing its configuration.
    fn configure(
        &self,
        store: &mut Store<PluginState>,
        config_json: &str,
    ) -> impl Future<Output = wasmtime::Result<Result<(), String>>> + Send;

    /// `hooks` and, where the version has them, `body-hooks`.
    fn hooks(
        &self,
        store: &mut Store<PluginState>,
    ) -> impl Future<Output = wasmtime::Result<Hooks>> + Send;

    /// The request hook. Returns the action and the response header changes the call left
    /// for the response (none before 0.3.1). `request` is the chain's view whatever
    /// happens, unless the error is [`HookError::LostView`].
    fn on_request(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
    ) -> impl Future<Output = Result<(RequestAction, Vec<HeaderOp>), HookError>> + Send;

    /// The response hook, with the request as it was sent on; as [`Guest::on_request`].
    fn on_response(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
        response: &mut response::Parts,
    ) -> impl Future<Output = Result<(ResponseAction, Vec<HeaderOp>), HookError>> + Send;

    /// The request body hook (a version without body hooks never declares it).
    fn on_request_body(
        &self,
        store: &mut Store<PluginState>,
        request: &RequestView,
        body: &[u8],
    ) -> impl Future<Output = wasmtime::Result<BodyAction>> + Send;

    /// The response body hook.
    fn on_response_body(
        &self,
        store: &mut Store<PluginState>,
        request: &RequestView,
        response: &response::Parts,
        body: &[u8],
    ) -> impl Future<Output = wasmtime::Result<BodyAction>> + Send;
}

/// The registry: an enum over every version's `Contract` and `Guest`, and `on_guest!`, which
/// runs an expression on an instance's guest whatever its version. Versions are tried in the
/// order listed, so the current one comes first. (`$d` is a literal `$` for the macro this
/// one defines.)
macro_rules! contracts {
    ($($variant:ident => $module:ident),+ $(,)?) => {
        contracts!(@with ($) $($variant => $module),+);
    };
    (@with ($d:tt) $($variant:ident => $module:ident),+) => {
        /// A filter's linked component, whatever version it was built against.
        pub(crate) enum AnyPre {
            $($variant($module::Pre),)+
        }

        /// A filter instance's exports, whatever version it was built against.
        pub(crate) enum AnyGuest {
            $($variant(<$module::Pre as Contract>::Guest),)+
        }

        /// `on_guest!(guest, g => EXPR)`: `EXPR` with `g` bound to the instance's [`Guest`]
        /// of its own version. A hook call's future is then awaited by the caller itself:
        /// a wrapper future over the versions would be one more level to move on every
        /// call.
        macro_rules! on_guest {
            ($d guest:expr, $d g:ident => $d body:expr) => {
                match $d guest {
                    $($crate::plugin::contract::AnyGuest::$variant($d g) => $d body,)+
                }
            };
        }
        pub(crate) use on_guest;

        /// Links every version's imports into the filter linker.
        pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
            $(<$module::Pre as Contract>::add_to_linker(linker)?;)+
            Ok(())
        }

        impl AnyPre {
            /// The component as the first version whose `http-filter` it exports.
            pub(crate) fn link(
                pre: &InstancePre<PluginState>,
                component: &Component,
            ) -> wasmtime::Result<AnyPre> {
                let mut newest_error = None;
                $(
                    match <$module::Pre as Contract>::link(pre, component) {
                        Ok(linked) => return Ok(AnyPre::$variant(linked)),
                        Err(e) => {
                            newest_error.get_or_insert(e);
                        }
                    }
                )+
                let names = [$(<$module::Pre as Contract>::NAME),+].join(", ");
                let why = format!("the component does not export weir:plugin/http-filter ({names})");
                Err(match newest_error {
                    Some(e) => e.context(why),
                    None => wasmtime::Error::msg(why),
                })
            }

            /// The exact version the component was built against.
            pub(crate) fn version(&self) -> &'static str {
                match self {
                    $(AnyPre::$variant(pre) => pre.version(),)+
                }
            }

            /// Whether the version's support is scheduled to end.
            pub(crate) fn deprecated(&self) -> bool {
                match self {
                    $(AnyPre::$variant(_) => <$module::Pre as Contract>::DEPRECATED,)+
                }
            }

            /// A fresh instance in `store`.
            pub(crate) async fn instantiate(
                &self,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<AnyGuest> {
                match self {
                    $(AnyPre::$variant(pre) => pre.instantiate(store).await.map(AnyGuest::$variant),)+
                }
            }
        }
    };
}

contracts! {
    V0_3 => v0_3,
    V0_2 => v0_2,
    V0_1 => v0_1,
}
