//! The bridge between a [`Filter`] and the generated `weir:plugin/http-filter` exports: it
//! builds the filter at `configure`, keeps it for the instance's life, and converts requests,
//! responses and actions between the WIT types and the SDK's.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::exports::weir::plugin::http_filter::Guest;
use crate::bindings::weir::plugin::types::{
    BodyAction, BodyHookSet, HookSet, LocalResponse, Request as HostRequest, RequestAction,
    RequestChanges, RequestHead, Response as HostResponse, ResponseAction, ResponseHead,
};
use crate::http::Left;
use crate::ops::Ops;
use crate::{Action, Body, Filter, Request, Response};

/// Where an instance keeps its filter, built by `configure`: a static of the filter's own
/// type, which `export_filter!` declares, so a hook reaches it without a downcast. The macro
/// implements this for a marker type of the plugin crate's own, not for the filter, so the
/// filter may be a type of another crate.
pub trait Instance: 'static {
    /// The filter.
    type Filter: Filter;
    /// The instance's slot.
    fn slot() -> &'static FilterSlot<Self::Filter>;
}

/// The slot an instance keeps its filter in (see [`Instance`]).
#[derive(Debug)]
pub struct FilterSlot<F>(RefCell<Option<F>>);

impl<F> FilterSlot<F> {
    /// An empty slot, for a `static`.
    pub const fn new() -> FilterSlot<F> {
        FilterSlot(RefCell::new(None))
    }
}

impl<F> Default for FilterSlot<F> {
    fn default() -> Self {
        FilterSlot::new()
    }
}

// SAFETY: only on 32-bit WebAssembly without threads (the only target `export_filter!`
// declares the static on), where an instance has one thread and no two callers can ever
// reach the slot at once.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[allow(unsafe_code, reason = "a static on a target with one thread")]
unsafe impl<F> Sync for FilterSlot<F> {}

/// Implements the exports for the filter of instance `I`; named by
/// [`export_filter!`](crate::export_filter).
#[derive(Debug)]
pub struct Adapter<I>(PhantomData<I>);

impl<I: Instance> Adapter<I> {
    fn with<R>(run: impl FnOnce(&I::Filter) -> R) -> R {
        let slot = I::slot().0.borrow();
        // weir always calls `configure` first; anything else is a host bug, and a trap
        // (which fails only this call) is the right answer to it.
        let filter = slot
            .as_ref()
            .expect("configure was not called before a hook");
        run(filter)
    }
}

impl<I: Instance> Guest for Adapter<I> {
    fn hooks() -> HookSet {
        let wanted = Self::with(|filter| filter.hooks());
        let mut hooks = HookSet::empty();
        if wanted.on_request {
            hooks |= HookSet::ON_REQUEST;
        }
        if wanted.on_response {
            hooks |= HookSet::ON_RESPONSE;
        }
        hooks
    }

    fn configure(config: String) -> Result<(), String> {
        let filter = configure::<I::Filter>(&config)?;
        *I::slot().0.borrow_mut() = Some(filter);
        Ok(())
    }

    fn on_request(head: RequestHead) -> RequestAction {
        let (action, left) = Self::with(|filter| on_request(filter, Request::new(head)));
        // weir calls `on-request-lazy` unless the plugin's settings ask for whole heads
        // (`whole_heads`); this form has no handle to leave changes on.
        dropped(&left, "on-request (whole head)");
        action
    }

    fn on_response(request: RequestHead, response: ResponseHead) -> ResponseAction {
        let (request, response) = (Request::new(request), Response::new(response));
        Self::with(|filter| on_response(filter, &request, response))
    }

    /// Called by hosts older than 0.3.7 (and by hand-written hosts); weir 0.3.7 and later
    /// call `request-hook.on-request` instead.
    fn on_request_lazy(request: &HostRequest) -> RequestAction {
        let (answered, response_ops) = answer::<I>(request);
        if !response_ops.is_empty() {
            request.add_response_header_ops(&response_ops.to_header_ops());
        }
        answered.into_action()
    }

    fn on_response_lazy(request: &HostRequest, response: &HostResponse) -> ResponseAction {
        let (request, response) = (Request::lazy(request), Response::lazy(response));
        Self::with(|filter| on_response(filter, &request, response))
    }

    fn body_hooks() -> BodyHookSet {
        let wanted = Self::with(|filter| filter.hooks());
        let mut hooks = BodyHookSet::empty();
        if wanted.on_request_body {
            hooks |= BodyHookSet::ON_REQUEST_BODY;
        }
        if wanted.on_response_body {
            hooks |= BodyHookSet::ON_RESPONSE_BODY;
        }
        hooks
    }

    fn on_request_body(request: RequestHead, body: Vec<u8>) -> BodyAction {
        Self::with(|filter| on_request_body(filter, request, body))
    }

    fn on_response_body(request: RequestHead, response: ResponseHead, body: Vec<u8>) -> BodyAction {
        Self::with(|filter| on_response_body(filter, request, response, body))
    }
}

/// What a request hook on a request lent by handle decided: the request's changes as the
/// filter made them, or its own response.
#[derive(Debug)]
pub(crate) enum Answered {
    /// Go on, with these header changes and this new target, if any.
    Continue { headers: Ops, path: Option<String> },
    /// Answer with this response.
    Respond(LocalResponse),
}

impl Answered {
    /// The answer as `on-request-lazy`'s result.
    fn into_action(self) -> RequestAction {
        match self {
            Answered::Continue { headers, path } => RequestAction::Continue(RequestChanges {
                headers: headers.to_header_ops(),
                path,
            }),
            Answered::Respond(reply) => RequestAction::Respond(reply),
        }
    }
}

/// A request hook on the request lent as `request`: what it decided, and the header changes
/// the filter left for the response, which each caller passes its own way (`request-hook`'s
/// answer, `crate::answer`; or `add-response-header-ops` from `on-request-lazy`, for hosts
/// before 0.3.7). What else it left has gone through the request's handle.
pub(crate) fn answer<I: Instance>(request: &HostRequest) -> (Answered, Ops) {
    let mut lent = Request::lazy(request);
    let (answered, left) = Adapter::<I>::with(|filter| decide(filter, &mut lent));
    leave(request, &left);
    (answered, left.response_ops)
}

/// Passes on what a request hook left through the request's handle, but the response header
/// changes ([`answer`] returns those).
fn leave(request: &HostRequest, left: &Left) {
    // A key or part weir refuses (too long, a control character, a 17th part) traps
    // here, failing the call, as weir's contract says.
    if let Some(key) = &left.cache_key.replaced {
        request.set_cache_key(key);
    }
    for part in &left.cache_key.added {
        request.add_cache_key(part);
    }
    // Likewise a method weir refuses or a body over 1 MiB (0.3.6); a body the method
    // gives no meaning fails the call when it returns.
    if let Some(body) = &left.body {
        request.set_body(body);
    }
    if let Some(method) = &left.method {
        request.set_method(method);
    }
}

// The three steps below are what the host's calls run; `testing` calls them too, so unit
// tests exercise the same conversions.

/// `configure`: the host's JSON config → `F::Config` → `F`.
pub(crate) fn configure<F: Filter>(json: &str) -> Result<F, String> {
    let config: F::Config =
        serde_json::from_str(json).map_err(|e| format!("invalid [config]: {e}"))?;
    F::new(config)
}

/// A request hook: what the filter decided (its changes as it made them, or its own
/// response), and what it left through the request's handle: header changes for the
/// response and cache key changes (nothing if it answered itself: no response phase reaches
/// it, and no cache is looked up).
fn decide<F: Filter>(filter: &F, request: &mut Request<'_>) -> (Answered, Left) {
    match filter.on_request(request) {
        Action::Continue => {
            let (headers, path, left) = request.take_answer();
            (Answered::Continue { headers, path }, left)
        }
        Action::Respond(reply) => (Answered::Respond(reply.into_local()), Left::default()),
    }
}

/// `on-request` with the whole head, and the test harness's: [`decide`], its answer as the
/// WIT's `request-action`.
pub(crate) fn on_request<F: Filter>(filter: &F, mut request: Request<'_>) -> (RequestAction, Left) {
    let (answered, left) = decide(filter, &mut request);
    (answered.into_action(), left)
}

/// Says in weir's log that changes only `on_request` can make through the request's handle
/// (response header changes, the cache key, the method, the body), made where they cannot
/// be kept, were dropped (rather than dropping them silently).
fn dropped(left: &Left, hook: &str) {
    for what in left.names() {
        crate::log::log(
            crate::log::Level::Warn,
            &format!(
                "{what} made in {hook} dropped: only on_request lent the request's handle (on-request-lazy) can make them"
            ),
        );
    }
}

/// `on-response` (either form): both heads in, header changes or a replacement response out.
pub(crate) fn on_response<F: Filter>(
    filter: &F,
    request: &Request<'_>,
    mut response: Response<'_>,
) -> ResponseAction {
    match filter.on_response(request, &mut response) {
        Action::Continue => ResponseAction::Continue(response.into_ops()),
        Action::Respond(reply) => ResponseAction::Respond(reply.into_local()),
    }
}

/// `on-request-body`: the head and body in, header and body changes or a local response out.
pub(crate) fn on_request_body<F: Filter>(
    filter: &F,
    head: RequestHead,
    body: Vec<u8>,
) -> BodyAction {
    let mut request = Request::new(head);
    let mut body = Body::new(body);
    let action = filter.on_request_body(&mut request, &mut body);
    let (ops, left) = request.into_left();
    dropped(&left, "on_request_body");
    match action {
        Action::Continue => BodyAction::Continue(body.into_changes(ops)),
        Action::Respond(reply) => BodyAction::Respond(reply.into_local()),
    }
}

/// `on-response-body`: both heads and the body in, changes or a replacement response out.
pub(crate) fn on_response_body<F: Filter>(
    filter: &F,
    request: RequestHead,
    response: ResponseHead,
    body: Vec<u8>,
) -> BodyAction {
    let request = Request::new(request);
    let mut response = Response::with_body(response);
    let mut body = Body::new(body);
    match filter.on_response_body(&request, &mut response, &mut body) {
        Action::Continue => BodyAction::Continue(body.into_changes(response.into_ops())),
        Action::Respond(reply) => BodyAction::Respond(reply.into_local()),
    }
}
