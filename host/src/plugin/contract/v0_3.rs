//! `weir:plugin@0.3.x`, the current contract (`wit/`): the head hooks are given the chain's
//! views as `request` and `response` resources, lent to the store for the call, and a filter
//! that exports `request-hook` (0.3.7) answers its request hook with the response header
//! changes it leaves. A component built against an earlier 0.3 patch is served by these
//! bindings (wasmtime links `0.x.y` names semver-compatibly, ignoring the patch).

use std::mem;

use http::response;
use wasmtime::Store;
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, HasSelf, InstancePre, Lift, Linker, Resource,
    TypedFunc,
};
use wasmtime::error::Context as _;
use weir_lift::{Answer, HeaderOps};

use super::{Contract, Guest as GuestTrait, HookError, Hooks};
use crate::plugin::budget::cut_off;
use crate::plugin::state::PluginState;
use crate::plugin::view::{self, RequestView, ResponseTrailers, ResponseView};

pub(super) mod generated {
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
        // A `kv` call may wait on Redis: it parks the fiber, not the thread.
        imports: {
            "weir:plugin/types": trappable,
            "weir:plugin/kv": async,
            "weir:plugin/outbound": async,
        },
    });
}

pub(crate) use generated::weir::plugin::{kv, log, metrics, outbound, types};
use types::{BodyAction, HeaderOp, RequestAction, ResponseAction};

/// What `request-hook.on-request` answers (0.3.7): not in the bindings, which are made for
/// world `filter`, whose exports every 0.3.x filter has; `request-hook` is looked up by hand,
/// as only filters built against `filter-with-request-hook` export it. A `continue` is lifted
/// in one pass by `weir_lift` ([`Answered`]); this derived record is its type check, and the
/// generic lift of a local response (and of a plugin whose strings are not UTF-8).
#[derive(ComponentType, Lift)]
#[component(record)]
struct RequestAnswer {
    action: RequestAction,
    #[component(name = "response-headers")]
    response_headers: HeaderOps<HeaderOp>,
}

/// The answer of `request-hook.on-request`, as the chain takes it: the action, and the header
/// changes left for the response.
struct Answered(RequestAction, Vec<HeaderOp>);

impl weir_lift::RequestAnswer for Answered {
    type Checked = RequestAnswer;
    type Op = HeaderOp;

    fn proceed(headers: Vec<HeaderOp>, path: Option<String>, response: Vec<HeaderOp>) -> Answered {
        let changes = types::RequestChanges { headers, path };
        Answered(RequestAction::Continue(changes), response)
    }
}

impl From<RequestAnswer> for Answered {
    fn from(answer: RequestAnswer) -> Answered {
        Answered(answer.action, answer.response_headers.0)
    }
}

impl weir_lift::HeaderOp for HeaderOp {
    fn set(name: String, value: Vec<u8>) -> HeaderOp {
        HeaderOp::Set((name, value))
    }

    fn append(name: String, value: Vec<u8>) -> HeaderOp {
        HeaderOp::Append((name, value))
    }

    fn remove(name: String) -> HeaderOp {
        HeaderOp::Remove(name)
    }
}

/// `request-hook.on-request`, typed.
type RequestHook = TypedFunc<(Resource<RequestView>,), (Answer<Answered>,)>;

/// A linked 0.3.x filter and the patch it was built against.
pub(crate) struct Pre {
    pre: InstancePre<PluginState>,
    indices: generated::FilterIndices,
    /// `request-hook.on-request`, if the filter exports it (0.3.7).
    request_hook: Option<ComponentExportIndex>,
    patch: &'static str,
}

/// A 0.3.x instance's exports.
pub(crate) struct Guest {
    filter: generated::Filter,
    request_hook: Option<RequestHook>,
}

impl Contract for Pre {
    type Guest = Guest;
    const NAME: &'static str = "0.3.x";
    const DEPRECATED: bool = false;

    fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
        generated::Filter::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
    }

    fn link(pre: &InstancePre<PluginState>, component: &Component) -> wasmtime::Result<Pre> {
        let indices = generated::FilterIndices::new(pre)?;
        // Looked up semver-compatibly, as the bindings look up `http-filter`.
        let request_hook = component
            .get_export_index(None, "weir:plugin/request-hook@0.3.7")
            .and_then(|hook| component.get_export_index(Some(&hook), "on-request"));
        // The patch the plugin was built against, by the name of its export.
        let patch = component
            .component_type()
            .exports(pre.engine())
            .find_map(|(name, _)| match name {
                "weir:plugin/http-filter@0.3.0" => Some("0.3.0"),
                "weir:plugin/http-filter@0.3.1" => Some("0.3.1"),
                "weir:plugin/http-filter@0.3.2" => Some("0.3.2"),
                "weir:plugin/http-filter@0.3.3" => Some("0.3.3"),
                "weir:plugin/http-filter@0.3.4" => Some("0.3.4"),
                "weir:plugin/http-filter@0.3.5" => Some("0.3.5"),
                "weir:plugin/http-filter@0.3.6" => Some("0.3.6"),
                _ => None,
            })
            .unwrap_or("0.3.7");
        Ok(Pre {
            pre: pre.clone(),
            indices,
            request_hook,
            patch,
        })
    }

    fn version(&self) -> &'static str {
        self.patch
    }

    async fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Guest> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let filter = self.indices.load(&mut *store, &instance)?;
        let request_hook = self
            .request_hook
            .map(|index| instance.get_typed_func(&mut *store, index))
            .transpose()
            .context("request-hook.on-request has another type than weir:plugin@0.3.7's")?;
        Ok(Guest {
            filter,
            request_hook,
        })
    }
}

impl GuestTrait for Guest {
    /// Calls `configure`, during which (only) the plugin may declare metrics (0.3.3).
    async fn configure(
        &self,
        store: &mut Store<PluginState>,
        config_json: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        let exports = self.filter.weir_plugin_http_filter();
        store.data_mut().configuring = true;
        let bound = store.data().budget.bound();
        let configured = cut_off(bound, exports.call_configure(&mut *store, config_json)).await;
        store.data_mut().configuring = false;
        configured
    }

    async fn hooks(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Hooks> {
        let exports = self.filter.weir_plugin_http_filter();
        let head = cut_off(store.data().budget.bound(), exports.call_hooks(&mut *store)).await;
        let head = head.context("hooks() failed")?;
        let bound = store.data().budget.bound();
        let body = cut_off(bound, exports.call_body_hooks(&mut *store)).await;
        let body = body.context("body-hooks() failed")?;
        Ok(Hooks { head, body })
    }

    /// Calls `on-request-lazy`, or `request-hook.on-request` if the filter exports it
    /// (0.3.7): the view is lent to the store for the call and is back in `request` when
    /// this returns, whatever the call did. The response header changes the call left
    /// (`add-response-header-ops`, 0.3.1) are taken out of the view here, so the view holds
    /// none between calls, and those `request-hook.on-request` answered with follow them. The cache key changes it made (`set-cache-key`,
    /// `add-cache-key`, 0.3.5) stay in the view's extensions, and the method and body it
    /// staged (`set-method`, `set-body`, 0.3.6) are applied to the view, unless the call
    /// failed: then the key is put back as it was before the call and the staged changes
    /// are dropped, as its left changes are. A method and body that do not go together (a
    /// `GET` with a body) fail the call here. With `whole_heads` set, calls `on-request` with
    /// the whole head instead: nothing is lent, so nothing can be left.
    async fn on_request(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
    ) -> Result<(RequestAction, Vec<HeaderOp>), HookError> {
        let exports = self.filter.weir_plugin_http_filter();
        if store.data().whole_heads {
            // `whole_heads`: the record form, with no handle to leave changes through.
            let bound = store.data().budget.bound();
            let record = request.record();
            let call = exports.call_on_request(&mut *store, &record);
            return Ok((cut_off(bound, call).await?, Vec::new()));
        }
        let key_before = request.cache_key();
        let lent = lent_request(store)?;
        swap(store, &lent, request)?;
        let borrowed = Resource::new_borrow(lent.rep());
        let bound = store.data().budget.bound();
        let answer = match &self.request_hook {
            // 0.3.7: the changes left for the response come back with the action.
            Some(hook) => cut_off(bound, hook.call_async(&mut *store, (borrowed,)))
                .await
                .map(|(Answer(Answered(action, response)),)| (action, response)),
            None => cut_off(bound, exports.call_on_request_lazy(&mut *store, borrowed))
                .await
                .map(|action| (action, Vec::new())),
        };
        swap(store, &lent, request)?;
        // What the answer leaves joins what the call left through the import, held to the
        // same bounds in all (`RequestView::leave`).
        let room = store.data().hostcall_fuel;
        let action = answer.and_then(|(action, answered)| {
            if !answered.is_empty() {
                request.leave(answered, room).map_err(|why| {
                    wasmtime::Error::msg(format!("request-hook.on-request: {why}"))
                })?;
            }
            request.apply_staged().map_err(wasmtime::Error::msg)?;
            Ok(action)
        });
        let left = request.take_leaving();
        if action.is_err() {
            request.restore_cache_key(key_before);
            request.drop_staged();
        }
        Ok((action.map_err(handle_kept)?, left))
    }

    /// Calls `on-response-lazy`; the response's headers are moved out of `response` for the
    /// call and back, as the request is in [`Guest::on_request`]; `on-response`, with whole
    /// heads, when `whole_heads` is set.
    async fn on_response(
        &self,
        store: &mut Store<PluginState>,
        request: &mut RequestView,
        response: &mut response::Parts,
    ) -> Result<(ResponseAction, Vec<HeaderOp>), HookError> {
        let exports = self.filter.weir_plugin_http_filter();
        let bound = store.data().budget.bound();
        if store.data().whole_heads {
            let head = view::response_record(response.status, &response.headers);
            let record = request.record();
            let call = exports.call_on_response(&mut *store, &record, &head);
            return Ok((cut_off(bound, call).await?, Vec::new()));
        }
        let (lent_request, lent_response) = (lent_request(store)?, lent_response(store)?);
        swap(store, &lent_request, request)?;
        let mut view = ResponseView {
            status: response.status,
            headers: mem::take(&mut response.headers),
        };
        if let Err(e) = swap(store, &lent_response, &mut view) {
            swap(store, &lent_request, request)?;
            return Err(e);
        }
        let action = exports.call_on_response_lazy(
            &mut *store,
            Resource::new_borrow(lent_request.rep()),
            Resource::new_borrow(lent_response.rep()),
        );
        let action = cut_off(bound, action).await;
        // Back out of the table, whatever the call did: the view there is the chain's.
        let taken_back = swap(store, &lent_response, &mut view);
        response.headers = view.headers;
        swap(store, &lent_request, request)?;
        taken_back?;
        let left = request.take_leaving();
        // The request has gone upstream: a method or body set now changes nothing.
        request.drop_staged();
        Ok((action.map_err(handle_kept)?, left))
    }

    async fn on_request_body(
        &self,
        store: &mut Store<PluginState>,
        request: &RequestView,
        body: &[u8],
    ) -> wasmtime::Result<BodyAction> {
        let exports = self.filter.weir_plugin_http_filter();
        let bound = store.data().budget.bound();
        let record = request.record();
        cut_off(bound, exports.call_on_request_body(store, &record, body)).await
    }

    async fn on_response_body(
        &self,
        store: &mut Store<PluginState>,
        request: &RequestView,
        response: &response::Parts,
        body: &[u8],
    ) -> wasmtime::Result<BodyAction> {
        let exports = self.filter.weir_plugin_http_filter();
        let head = view::response_record(response.status, &response.headers);
        let bound = store.data().budget.bound();
        let record = request.record();
        // The response's trailers, if it had any, are the store's for the call
        // (`response-trailers`, 0.3.6).
        let trailers = response.extensions.get::<ResponseTrailers>();
        store.data_mut().trailers = trailers.map(|t| t.0.clone());
        let call = exports.call_on_response_body(&mut *store, &record, &head, body);
        let action = cut_off(bound, call).await;
        store.data_mut().trailers = None;
        action
    }
}

/// A lazy hook's failure, with the way out when the guest returned still holding the handle
/// it was lent: some toolchains never give it back (componentize-qjs 0.4.5), and
/// `whole_heads` calls the record forms instead.
fn handle_kept(e: wasmtime::Error) -> wasmtime::Error {
    if format!("{e:#}").contains("borrow handles still remain") {
        e.context("the hook returned holding the handle it was lent; if the plugin's toolchain cannot give it back, set whole_heads = true in its NAME.toml")
    } else {
        e
    }
}

/// The instance's `request` slot in its resource table: made (empty) by its first lazy
/// call and kept for the instance's life, so that lending a view to a call is two swaps
/// rather than a boxed table entry made and freed per call. Between calls it holds an
/// empty view: an instance in the pool keeps nothing of a request.
fn lent_request(store: &mut Store<PluginState>) -> Result<Resource<RequestView>, HookError> {
    let state = store.data_mut();
    let rep = match state.lent.request {
        Some(rep) => rep,
        None => {
            let rep = state
                .table
                .push(RequestView::placeholder())
                .map_err(|e| HookError::LostView(format!("cannot lend a view to the call: {e}")))?
                .rep();
            *state.lent.request.insert(rep)
        }
    };
    Ok(Resource::new_own(rep))
}

/// The instance's `response` slot, as [`lent_request`].
fn lent_response(store: &mut Store<PluginState>) -> Result<Resource<ResponseView>, HookError> {
    let state = store.data_mut();
    let rep = match state.lent.response {
        Some(rep) => rep,
        None => {
            let empty = ResponseView {
                status: http::StatusCode::OK,
                headers: http::HeaderMap::new(),
            };
            let rep = state
                .table
                .push(empty)
                .map_err(|e| HookError::LostView(format!("cannot lend a view to the call: {e}")))?
                .rep();
            *state.lent.response.insert(rep)
        }
    };
    Ok(Resource::new_own(rep))
}

/// Swaps `view` with what the table holds at `slot`: before a call the chain's view goes
/// in (the slot's empty one comes out), after it the two go back. (Fails only if the slot
/// is not there, a host bug: the view is then lost with the failed call, and the error says
/// so.)
fn swap<V: Send + 'static>(
    store: &mut Store<PluginState>,
    slot: &Resource<V>,
    view: &mut V,
) -> Result<(), HookError> {
    let table = &mut store.data_mut().table;
    let lent = table
        .get_mut(slot)
        .map_err(|e| HookError::LostView(format!("cannot swap a lent view: {e}")))?;
    mem::swap(lent, view);
    Ok(())
}
