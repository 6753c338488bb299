//! Older minors on the current host. `weir:plugin@0.1.0` plugins: their imports forwarded to
//! the current implementations, and their hook arguments and results converted (0.1.0's
//! types are field-for-field the same as the current ones, so each conversion is a plain
//! move). `weir:plugin@0.2.0` plugins: their imports forwarded; their hooks take the current
//! types as they are.

use super::bindings::{kv, log, types, v0_1, v0_2};
use super::state::PluginState;

impl v0_1::types::Host for PluginState {}

/// Forwards an older minor's `log` and `kv` imports (the same functions, under that
/// version's names and types) to the current implementations.
macro_rules! forward_imports {
    ($v:ident) => {
        impl $v::log::Host for PluginState {
            fn enabled(&mut self, level: $v::log::Level) -> bool {
                log::Host::enabled(self, level.into())
            }

            fn log(&mut self, level: $v::log::Level, message: String) {
                log::Host::log(self, level.into(), message);
            }
        }

        impl From<$v::log::Level> for log::Level {
            fn from(level: $v::log::Level) -> log::Level {
                match level {
                    $v::log::Level::Trace => log::Level::Trace,
                    $v::log::Level::Debug => log::Level::Debug,
                    $v::log::Level::Info => log::Level::Info,
                    $v::log::Level::Warn => log::Level::Warn,
                    $v::log::Level::Error => log::Level::Error,
                }
            }
        }

        impl $v::kv::Host for PluginState {
            fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, $v::kv::Error> {
                kv::Host::get(self, key).map_err(From::from)
            }

            fn set(
                &mut self,
                key: String,
                value: Vec<u8>,
                ttl_ms: Option<u64>,
            ) -> Result<(), $v::kv::Error> {
                kv::Host::set(self, key, value, ttl_ms).map_err(From::from)
            }

            fn delete(&mut self, key: String) -> Result<(), $v::kv::Error> {
                kv::Host::delete(self, key).map_err(From::from)
            }

            fn increment(
                &mut self,
                key: String,
                delta: i64,
                ttl_ms: Option<u64>,
            ) -> Result<i64, $v::kv::Error> {
                kv::Host::increment(self, key, delta, ttl_ms).map_err(From::from)
            }
        }

        impl From<kv::Error> for $v::kv::Error {
            fn from(error: kv::Error) -> $v::kv::Error {
                match error {
                    kv::Error::AccessDenied => $v::kv::Error::AccessDenied,
                    kv::Error::Unavailable(why) => $v::kv::Error::Unavailable(why),
                    kv::Error::Invalid(why) => $v::kv::Error::Invalid(why),
                }
            }
        }
    };
}

forward_imports!(v0_1);
forward_imports!(v0_2);

pub(super) fn request_head(head: types::RequestHead) -> v0_1::types::RequestHead {
    v0_1::types::RequestHead {
        method: head.method,
        path: head.path,
        query: head.query,
        authority: head.authority,
        headers: head.headers,
        client_address: head.client_address,
        route: head.route,
        request_id: head.request_id,
    }
}

pub(super) fn response_head(head: types::ResponseHead) -> v0_1::types::ResponseHead {
    v0_1::types::ResponseHead {
        status: head.status,
        headers: head.headers,
    }
}

pub(super) fn hook_set(hooks: v0_1::types::HookSet) -> types::HookSet {
    let mut current = types::HookSet::empty();
    if hooks.contains(v0_1::types::HookSet::ON_REQUEST) {
        current |= types::HookSet::ON_REQUEST;
    }
    if hooks.contains(v0_1::types::HookSet::ON_RESPONSE) {
        current |= types::HookSet::ON_RESPONSE;
    }
    current
}

fn header_op(op: v0_1::types::HeaderOp) -> types::HeaderOp {
    match op {
        v0_1::types::HeaderOp::Set(h) => types::HeaderOp::Set(h),
        v0_1::types::HeaderOp::Append(h) => types::HeaderOp::Append(h),
        v0_1::types::HeaderOp::Remove(name) => types::HeaderOp::Remove(name),
    }
}

fn local_response(local: v0_1::types::LocalResponse) -> types::LocalResponse {
    types::LocalResponse {
        status: local.status,
        headers: local.headers,
        body: local.body,
    }
}

pub(super) fn request_action(action: v0_1::types::RequestAction) -> types::RequestAction {
    match action {
        v0_1::types::RequestAction::Continue(changes) => {
            types::RequestAction::Continue(types::RequestChanges {
                headers: changes.headers.into_iter().map(header_op).collect(),
                path: changes.path,
            })
        }
        v0_1::types::RequestAction::Respond(local) => {
            types::RequestAction::Respond(local_response(local))
        }
    }
}

pub(super) fn response_action(action: v0_1::types::ResponseAction) -> types::ResponseAction {
    match action {
        v0_1::types::ResponseAction::Continue(ops) => {
            types::ResponseAction::Continue(ops.into_iter().map(header_op).collect())
        }
        v0_1::types::ResponseAction::Respond(local) => {
            types::ResponseAction::Respond(local_response(local))
        }
    }
}
