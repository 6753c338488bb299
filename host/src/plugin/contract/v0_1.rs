//! `weir:plugin@0.1.0`, frozen in `wit/0.1.0/`: plugins built before body hooks. Its imports
//! are forwarded to the current implementations, and its hook arguments and results are
//! converted (0.1.0's types are field-for-field the current ones, so each conversion is a
//! move). Deprecated (`wit/README.md`).

use http::response;
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::error::Context as _;

use super::current::types;
use super::{Contract, Guest as GuestTrait, HookError, Hooks};
use crate::plugin::budget::cut_off;
use crate::plugin::state::PluginState;
use crate::plugin::view::{self, RequestView};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "filter",
        exports: { default: async },
        imports: { "weir:plugin/kv": async },
    });
}

forward_imports!(generated::weir::plugin);

impl old::types::Host for PluginState {}

/// A linked 0.1.0 filter.
pub(crate) struct Pre(generated::FilterPre<PluginState>);

/// A 0.1.0 instance's exports.
pub(crate) struct Guest(generated::Filter);

impl Contract for Pre {
    type Guest = Guest;
    const NAME: &'static str = "0.1.0";
    const DEPRECATED: bool = true;

    fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
        generated::Filter::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
    }

    fn link(pre: &InstancePre<PluginState>, _: &Component) -> wasmtime::Result<Pre> {
        generated::FilterPre::new(pre.clone()).map(Pre)
    }

    fn version(&self) -> &'static str {
        Self::NAME
    }

    async fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Guest> {
        self.0.instantiate_async(store).await.map(Guest)
    }
}

impl GuestTrait for Guest {
    async fn configure(
        &self,
        store: &mut Store<PluginState>,
        config_json: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        let exports = self.0.weir_plugin_http_filter();
        let bound = store.data().budget.bound();
        cut_off(bound, exports.call_configure(store, config_json)).await
    }

    async fn hooks(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Hooks> {
        let bound = store.data().budget.bound();
        let old = cut_off(bound, self.0.weir_plugin_http_filter().call_hooks(store)).await;
        let old = old.context("hooks() failed")?;
        Ok(Hooks {
            head: hook_set(old),
            body: types::BodyHookSet::empty(),
        })
    }

    async fn on_request(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
    ) -> Result<(types::RequestAction, Vec<types::HeaderOp>), HookError> {
        let exports = self.0.weir_plugin_http_filter();
        let head = request_head(request.record());
        let bound = store.data().budget.bound();
        let action = cut_off(bound, exports.call_on_request(store, &head)).await?;
        Ok((request_action(action), Vec::new()))
    }

    async fn on_response(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
        response: &mut response::Parts,
    ) -> Result<(types::ResponseAction, Vec<types::HeaderOp>), HookError> {
        let exports = self.0.weir_plugin_http_filter();
        let request = request_head(request.record());
        let response = response_head(view::response_record(response.status, &response.headers));
        let bound = store.data().budget.bound();
        let action = cut_off(bound, exports.call_on_response(store, &request, &response)).await?;
        Ok((response_action(action), Vec::new()))
    }

    /// Never called: a 0.1.0 plugin declares no body hooks.
    async fn on_request_body(
        &self,
        _: &mut Store<PluginState>,
        _: &RequestView,
        _: &[u8],
    ) -> wasmtime::Result<types::BodyAction> {
        Ok(unchanged_body())
    }

    /// Never called: a 0.1.0 plugin declares no body hooks.
    async fn on_response_body(
        &self,
        _: &mut Store<PluginState>,
        _: &RequestView,
        _: &response::Parts,
        _: &[u8],
    ) -> wasmtime::Result<types::BodyAction> {
        Ok(unchanged_body())
    }
}

fn unchanged_body() -> types::BodyAction {
    types::BodyAction::Continue(types::BodyChanges {
        headers: Vec::new(),
        body: None,
    })
}

fn request_head(head: types::RequestHead) -> old::types::RequestHead {
    old::types::RequestHead {
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

fn response_head(head: types::ResponseHead) -> old::types::ResponseHead {
    old::types::ResponseHead {
        status: head.status,
        headers: head.headers,
    }
}

fn hook_set(hooks: old::types::HookSet) -> types::HookSet {
    let mut current = types::HookSet::empty();
    if hooks.contains(old::types::HookSet::ON_REQUEST) {
        current |= types::HookSet::ON_REQUEST;
    }
    if hooks.contains(old::types::HookSet::ON_RESPONSE) {
        current |= types::HookSet::ON_RESPONSE;
    }
    current
}

fn header_op(op: old::types::HeaderOp) -> types::HeaderOp {
    match op {
        old::types::HeaderOp::Set(h) => types::HeaderOp::Set(h),
        old::types::HeaderOp::Append(h) => types::HeaderOp::Append(h),
        old::types::HeaderOp::Remove(name) => types::HeaderOp::Remove(name),
    }
}

fn local_response(local: old::types::LocalResponse) -> types::LocalResponse {
    types::LocalResponse {
        status: local.status,
        headers: local.headers,
        body: local.body,
    }
}

fn request_action(action: old::types::RequestAction) -> types::RequestAction {
    match action {
        old::types::RequestAction::Continue(changes) => {
            types::RequestAction::Continue(types::RequestChanges {
                headers: changes.headers.into_iter().map(header_op).collect(),
                path: changes.path,
            })
        }
        old::types::RequestAction::Respond(local) => {
            types::RequestAction::Respond(local_response(local))
        }
    }
}

fn response_action(action: old::types::ResponseAction) -> types::ResponseAction {
    match action {
        old::types::ResponseAction::Continue(ops) => {
            types::ResponseAction::Continue(ops.into_iter().map(header_op).collect())
        }
        old::types::ResponseAction::Respond(local) => {
            types::ResponseAction::Respond(local_response(local))
        }
    }
}
