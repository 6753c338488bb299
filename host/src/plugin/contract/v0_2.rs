//! `weir:plugin@0.2.0`, frozen in `wit/0.2.0/`: plugins built before the lazy hooks. Its
//! `types` are the current ones (a minor version only adds), so its hooks take the chain's
//! heads as records without a conversion; its `log` and `kv` imports are forwarded to the
//! current implementations. Deprecated (`wit/README.md`).

use http::response;
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::error::Context as _;

use super::current::types::{BodyAction, HeaderOp, RequestAction, ResponseAction};
use super::{Contract, Guest as GuestTrait, HookError, Hooks};
use crate::plugin::budget::cut_off;
use crate::plugin::state::PluginState;
use crate::plugin::view::{self, RequestView};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "filter",
        exports: { default: async },
        imports: { "weir:plugin/kv": async },
        // The same types as the current contract's (a minor version only adds), so a 0.2.0
        // hook is passed the chain's heads without a conversion.
        with: { "weir:plugin/types": crate::plugin::contract::v0_3::generated::weir::plugin::types },
    });
}

forward_imports!(generated::weir::plugin);

/// A linked 0.2.0 filter.
pub(crate) struct Pre(generated::FilterPre<PluginState>);

/// A 0.2.0 instance's exports.
pub(crate) struct Guest(generated::Filter);

impl Contract for Pre {
    type Guest = Guest;
    const NAME: &'static str = "0.2.0";
    const DEPRECATED: bool = true;

    fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
        old::log::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
        old::kv::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
        // Its types are the current ones, so its `types` instance declares nothing new.
        linker.instance("weir:plugin/types@0.2.0")?;
        Ok(())
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
        let exports = self.0.weir_plugin_http_filter();
        let bound = store.data().budget.bound();
        let head = cut_off(bound, exports.call_hooks(&mut *store)).await;
        let head = head.context("hooks() failed")?;
        let bound = store.data().budget.bound();
        let body = cut_off(bound, exports.call_body_hooks(&mut *store)).await;
        let body = body.context("body-hooks() failed")?;
        Ok(Hooks { head, body })
    }

    async fn on_request(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
    ) -> Result<(RequestAction, Vec<HeaderOp>), HookError> {
        let exports = self.0.weir_plugin_http_filter();
        let bound = store.data().budget.bound();
        let action = cut_off(bound, exports.call_on_request(store, &request.record())).await?;
        Ok((action, Vec::new()))
    }

    async fn on_response(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
        response: &mut response::Parts,
    ) -> Result<(ResponseAction, Vec<HeaderOp>), HookError> {
        let exports = self.0.weir_plugin_http_filter();
        let head = view::response_record(response.status, &response.headers);
        let bound = store.data().budget.bound();
        let action = cut_off(
            bound,
            exports.call_on_response(store, &request.record(), &head),
        )
        .await?;
        Ok((action, Vec::new()))
    }

    async fn on_request_body(
        &self,
        store: &mut Store<PluginState>,
        request: &RequestView,
        body: &[u8],
    ) -> wasmtime::Result<BodyAction> {
        let exports = self.0.weir_plugin_http_filter();
        let bound = store.data().budget.bound();
        cut_off(
            bound,
            exports.call_on_request_body(store, &request.record(), body),
        )
        .await
    }

    async fn on_response_body(
        &self,
        store: &mut Store<PluginState>,
        request: &RequestView,
        response: &response::Parts,
        body: &[u8],
    ) -> wasmtime::Result<BodyAction> {
        let exports = self.0.weir_plugin_http_filter();
        let head = view::response_record(response.status, &response.headers);
        let bound = store.data().budget.bound();
        cut_off(
            bound,
            exports.call_on_response_body(store, &request.record(), &head, body),
        )
        .await
    }
}
